"""The messages of the internal model-keyed topic ``<app_id>-partials``.

Two kinds, in one versioned byte format (``b"SPP1"`` + msgpack of a tagged union; nothing is
ever unpickled):

:class:`PartialsMessage`
    The complete ticks one source flushed for one model, keyed (and partitioned) by the model:
    every partial of one model goes to one partition of the topic, so one worker judges it.
:class:`ProgressMessage`
    A source's event-time progress, sent to every partition of the topic after the partials it
    covers, so each judge learns that no more partials of that source will come for ticks that
    end by ``flushed_until``, and whether the source has gone quiet.

Examples
--------
>>> m = ProgressMessage("p0", 120.0, 130.5, None)
>>> decode_message(encode_message(m)) == m
True
>>> partition_of("churn", 6) == partition_of("churn", 6)
True
"""

from __future__ import annotations

import zlib
from typing import Final

import msgspec

from streamproc.aggregate.partials import OutcomeState, TickState
from streamproc.errors import StateEncodingError

MAGIC: Final = b"SPP1"


class TickEntry(msgspec.Struct, array_like=True, frozen=True):
    """One complete tick of one source for one model: ``(version, raw segment key, state)``."""

    start: float
    predictions: list[tuple[str, str, TickState]] = []
    outcomes: list[tuple[str, str, OutcomeState]] = []


class PartialsMessage(msgspec.Struct, array_like=True, frozen=True, tag="partials"):
    source: str  # "p<partition>" of the predictions topic, "l<partition>" of the labels topic
    model_id: str
    ticks: list[TickEntry]


class ProgressMessage(msgspec.Struct, array_like=True, frozen=True, tag="progress"):
    source: str
    flushed_until: float  # ticks ending by here are complete for this source
    newest: float  # the newest event time the source has seen
    idle_for_s: float | None  # None while the source is active; else how long it has been quiet
    generation: int = 0  # the baseline store's change count the source's references reflect
    noticed: float = -float("inf")  # its newest event time when it noticed that count


Message = PartialsMessage | ProgressMessage
_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Message)


def encode_message(m: Message) -> bytes:
    return MAGIC + _ENC.encode(m)


def decode_message(blob: bytes) -> Message:
    """Decode one message of the topic.

    Raises
    ------
    StateEncodingError
        Another magic (e.g. a message of an older format) or a corrupt payload.
    """
    if blob[:4] != MAGIC:
        raise StateEncodingError(f"not a partials-topic message (header {blob[:4]!r})")
    try:
        return _DEC.decode(blob[4:])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StateEncodingError(f"corrupt partials-topic message: {exc}") from None


def partition_of(model_id: str, partitions: int) -> int:
    """The partition of the keyed topic that carries ``model_id``'s partials (CRC-32, stable
    across processes and versions, so every producer and judge agree)."""
    return zlib.crc32(model_id.encode()) % partitions
