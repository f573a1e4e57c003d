"""The sketches' stored form: a 4-byte magic with the format version, then msgpack.

:func:`pack_state` and :func:`unpack_state` write and read the versioned envelope every stored
state in streamproc uses (sketches, detector checkpoints, reference profiles). The array helpers
turn numpy arrays into the raw little-endian bytes a state Struct holds, and back, and add the
per-bin count lists that merging sketches sums.
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from streamproc.errors import StateEncodingError

__all__ = ["add_lists", "array_from", "f64_bytes", "i64_bytes", "pack_state", "unpack_state"]

_S = TypeVar("_S", bound=msgspec.Struct)
_N = TypeVar("_N", int, float)
_ENCODER: Final = msgspec.msgpack.Encoder()


def pack_state(magic: bytes, state: msgspec.Struct) -> bytes:
    """Encode ``state`` as ``magic`` followed by its msgpack form.

    Parameters
    ----------
    magic
        Exactly 4 bytes: three identifying the type, then one ASCII digit for the format version.
    state
        A plain msgspec Struct holding the whole state.

    Returns
    -------
    bytes
        The stored form.
    """
    if len(magic) != 4:
        raise ValueError(f"magic must be 4 bytes, got {magic!r}")
    return magic + _ENCODER.encode(state)


def unpack_state(blob: bytes, magic: bytes, state_type: type[_S], what: str) -> _S:
    """Decode a blob written by :func:`pack_state`, checking magic and version first.

    Parameters
    ----------
    blob
        The stored bytes.
    magic
        The 4-byte magic this reader understands.
    state_type
        The Struct the payload must decode to (msgspec validates field types).
    what
        A human name for the state, used in error messages.

    Returns
    -------
    state_type
        The decoded state.

    Raises
    ------
    StateEncodingError
        The blob is not bytes, has another magic or another version, or its payload does not
        decode to ``state_type``.

    Examples
    --------
    >>> class Point(msgspec.Struct):
    ...     x: int
    >>> unpack_state(pack_state(b"XYZ1", Point(3)), b"XYZ1", Point, "point")
    Point(x=3)
    >>> unpack_state(b"XYZ2...", b"XYZ1", Point, "point")
    Traceback (most recent call last):
    ...
    streamproc.errors.StateEncodingError: point blob is format version 2; this streamproc reads version 1 only
    """  # noqa: E501
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise StateEncodingError(f"{what} state must be bytes, got {type(blob).__name__}")
    head = bytes(blob[:4])
    if head != magic:
        if len(head) == 4 and head[:3] == magic[:3]:
            raise StateEncodingError(
                f"{what} blob is format version {head[3:].decode('latin-1')}; "
                f"this streamproc reads version {magic[3:].decode('latin-1')} only"
            )
        raise StateEncodingError(f"not a {what} blob: expected magic {magic!r}, got {head!r}")
    try:
        return msgspec.msgpack.decode(memoryview(blob)[4:], type=state_type)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise StateEncodingError(f"corrupt {what} blob: {exc}") from exc


def f64_bytes(a: NDArray[np.float64]) -> bytes:
    """``a`` as raw little-endian float64 bytes (how a state Struct holds a float array)."""
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def i64_bytes(a: NDArray[np.int64]) -> bytes:
    """``a`` as raw little-endian int64 bytes (how a state Struct holds a count array)."""
    return np.ascontiguousarray(a, dtype="<i8").tobytes()


def add_lists(a: list[_N], b: list[_N]) -> list[_N]:
    """Element-wise sum of two equally long lists (merging per-bin counts or sums)."""
    return [x + y for x, y in zip(a, b, strict=True)]


def array_from(raw: bytes, dtype: str, what: str) -> NDArray[np.generic]:
    """A writable native-endian copy of an array stored as raw bytes of ``dtype`` (``"<f8"``,
    ``"<i8"``).

    Raises
    ------
    StateEncodingError
        ``raw`` is not a whole number of 8-byte items; ``what`` names the state in the message.
    """
    if len(raw) % 8:
        raise StateEncodingError(f"corrupt {what} blob: array of {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype).astype(dtype[1:], copy=True)
