"""The detector contract and the checkpoint envelope every detector shares.

:class:`Detector` is what a monitor needs from a change detector (River's contract). A
checkpoint is ``b"SPD1"`` followed by the msgpack encoding of a Struct tagged with the detector's
kind (``"adwin"``, ``"page_hinkley"``, ``"ddm"``); each detector module declares its Struct with
:func:`checkpoint_of`, and :func:`detector_from_bytes` rebuilds whichever detector a checkpoint
holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, Union, runtime_checkable

import msgspec

from streamproc.errors import StateEncodingError
from streamproc.sketch import unpack_state

if TYPE_CHECKING:
    from streamproc.judge.detectors.adwin import ADWINDetector
    from streamproc.judge.detectors.ddm import DDMDetector
    from streamproc.judge.detectors.page_hinkley import PageHinkleyDetector

__all__ = ["MAGIC", "Detector", "checkpoint_of", "detector_from_bytes", "restore_as"]

MAGIC: Final = b"SPD1"
_D = TypeVar("_D")
_KINDS: dict[type[msgspec.Struct], Any] = {}
"""Checkpoint Struct -> the detector class it restores; filled by :func:`checkpoint_of` as the
detector modules are imported (the package imports them all)."""


@runtime_checkable
class Detector(Protocol):
    """What a monitor needs from a change detector.

    ``drift_detected`` is true for the update that detected a change and is reset by the next
    ``update`` (River semantics). ``n_detections`` counts detections over the detector's whole
    life, checkpoints included.
    """

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a change."""
        ...

    @property
    def n_detections(self) -> int:
        """Changes detected since the detector was created."""
        ...

    @property
    def estimation(self) -> float:
        """The quantity the detector tracks (a mean or an error rate)."""
        ...

    def update(self, x: float) -> None:
        """Feed one value."""
        ...

    def to_bytes(self) -> bytes:
        """The versioned checkpoint (``b"SPD1"`` + kind + hyperparameters + state)."""
        ...


def checkpoint_of(blob_type: type[msgspec.Struct]) -> Callable[[type[_D]], type[_D]]:
    """Class decorator: ``blob_type`` (a Struct tagged with the kind) is the decorated detector's
    checkpoint, rebuilt with its ``_restore(blob)`` classmethod."""

    def register(cls: type[_D]) -> type[_D]:
        _KINDS[blob_type] = cls
        return cls

    return register


def _decode_blob(blob: bytes) -> msgspec.Struct:
    # The tagged union of every kind, built at run time from the registry.
    kinds = Union[tuple(_KINDS)]  # type: ignore[valid-type]  # noqa: UP007
    return unpack_state(blob, MAGIC, kinds, "detector checkpoint")  # type: ignore[no-any-return]


def detector_from_bytes(blob: bytes) -> ADWINDetector | PageHinkleyDetector | DDMDetector:
    """Rebuild whichever detector a checkpoint holds.

    Raises
    ------
    StateEncodingError
        Not a detector checkpoint (wrong magic), another format version, an unknown kind, or an
        inconsistent state.
    """
    decoded = _decode_blob(blob)
    return _KINDS[type(decoded)]._restore(decoded)  # type: ignore[attr-defined]


def restore_as(cls: type[_D], blob: bytes) -> _D:
    """Rebuild a checkpoint as a ``cls`` detector (what ``XDetector.from_bytes`` does).

    Raises
    ------
    StateEncodingError
        As :func:`detector_from_bytes`, or the checkpoint holds another kind of detector.
    """
    decoded = _decode_blob(blob)
    owner = _KINDS[type(decoded)]
    if owner is not cls:
        raise StateEncodingError(
            f"checkpoint is of detector kind {owner.KIND!r}, expected {cls.KIND!r}"  # type: ignore[attr-defined]
        )
    return owner._restore(decoded)  # type: ignore[attr-defined]
