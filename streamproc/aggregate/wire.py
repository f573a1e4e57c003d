"""The messages of the internal model-keyed topic ``<app_id>-partials``.

Two kinds, in one versioned byte format (``b"SPP2"`` + msgpack of a tagged union; nothing is
ever unpickled; ``SPP1`` carried tick partials):

:class:`PartialsMessage`
    The complete ticks (their summaries) or windows (their partials) one source flushed for one
    model, keyed (and partitioned) by the model: every partial of one model goes to one
    partition of the topic, so one worker judges it. :func:`pack` keeps each message under
    :data:`MESSAGE_BYTES`, splitting a tick's or a window's items into numbered parts if need be.
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

from streamproc.aggregate.partials import OutcomeState, PartialState, SummaryState
from streamproc.errors import StateEncodingError

MAGIC: Final = b"SPP2"
MESSAGE_BYTES: Final = 512 * 1024
"""Target size of a partials message: well under Kafka's default 1 MiB ``max.message.bytes``.
An item larger than it (a big sample) goes alone in its message."""


class TickEntry(msgspec.Struct, array_like=True, frozen=True):
    """One complete tick of one source for one model, for the detectors: per
    ``(version, raw segment key)`` the tick's summary, and labelled and correct outcomes."""

    start: float
    predictions: list[tuple[str, str, SummaryState]] = []
    outcomes: list[tuple[str, str, list[int]]] = []
    part: int = 0  # parts of one tick from one source are told apart by this


class WindowEntry(msgspec.Struct, array_like=True, frozen=True):
    """One complete window of one source for one model: ``(version, raw segment key, state)``."""

    start: float
    predictions: list[tuple[str, str, PartialState]] = []
    outcomes: list[tuple[str, str, OutcomeState]] = []
    part: int = 0


class PartialsMessage(msgspec.Struct, array_like=True, frozen=True, tag="partials"):
    source: str  # "p<partition>" of the predictions topic, "l<partition>" of the labels topic
    model_id: str
    ticks: list[TickEntry] = []
    windows: list[WindowEntry] = []


class ProgressMessage(msgspec.Struct, array_like=True, frozen=True, tag="progress"):
    source: str
    flushed_until: float  # ticks ending by here are complete for this source
    newest: float  # the newest event time the source has seen
    idle_for_s: float | None  # None while the source is active; else how long it has been quiet
    generation: int = 0  # the baseline store's change count the source's references reflect
    noticed: float = -float("inf")  # its newest event time when it noticed that count
    # The record time the report speaks for: while active, the source's newest record; while
    # idle, the report's own time (the source had nothing left to read then).
    as_of: float = -float("inf")


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


def pack(
    source: str,
    model_id: str,
    ticks: list[TickEntry],
    windows: list[WindowEntry],
    limit: int = MESSAGE_BYTES,
) -> list[PartialsMessage]:
    """``ticks`` then ``windows`` of one source and model in messages of about ``limit`` bytes
    at most: entries packed in order, an entry too big for one message split into parts.

    The split depends on the entries alone, so a source that sends them again (after a crash)
    sends the same parts.

    >>> big = [("1", f"k={i}", SummaryState(i)) for i in range(1000)]
    >>> msgs = pack("p0", "m", [TickEntry(0.0, big), TickEntry(5.0)], [], limit=2000)
    >>> [(t.start, t.part) for m in msgs for t in m.ticks][-3:]
    [(0.0, 8), (0.0, 9), (5.0, 0)]
    >>> sum(len(t.predictions) for m in msgs for t in m.ticks)
    1000
    >>> max(len(encode_message(m)) for m in msgs) <= 2000
    True
    """
    out: list[PartialsMessage] = []
    batch_t: list[TickEntry] = []
    batch_w: list[WindowEntry] = []
    head = 32 + len(source.encode()) + len(model_id.encode())  # the message's own fields
    limit -= head
    used = 0

    def flush() -> None:
        nonlocal batch_t, batch_w, used
        if batch_t or batch_w:
            out.append(PartialsMessage(source, model_id, batch_t, batch_w))
        batch_t, batch_w, used = [], [], 0

    for entry in [*ticks, *windows]:
        sizes_p = [len(_ENC.encode(it)) for it in entry.predictions]
        sizes_o = [len(_ENC.encode(it)) for it in entry.outcomes]
        size = 32 + sum(sizes_p) + sum(sizes_o)
        if used + size > limit:
            flush()
        if size <= limit:
            (batch_t if isinstance(entry, TickEntry) else batch_w).append(entry)  # type: ignore[arg-type]
            used += size
            continue
        # one entry over the limit: its items in parts, each part a message of its own
        kind = type(entry)
        part, preds, outs, used = 0, [], [], 32
        items = [(0, it, n) for it, n in zip(entry.predictions, sizes_p, strict=True)]
        items += [(1, it, n) for it, n in zip(entry.outcomes, sizes_o, strict=True)]
        for i, (side, it, n) in enumerate(items):
            (preds if side == 0 else outs).append(it)
            used += n
            last = i == len(items) - 1
            if last or used + items[i + 1][2] > limit:
                piece = kind(entry.start, preds, outs, part)  # type: ignore[arg-type]
                if isinstance(piece, TickEntry):
                    out.append(PartialsMessage(source, model_id, [piece]))
                else:
                    out.append(PartialsMessage(source, model_id, [], [piece]))
                part, preds, outs, used = part + 1, [], [], 32
        used = 0
    flush()
    return out


def partition_of(model_id: str, partitions: int) -> int:
    """The partition of the keyed topic that carries ``model_id``'s partials (CRC-32, stable
    across processes and versions, so every producer and judge agree)."""
    return zlib.crc32(model_id.encode()) % partitions
