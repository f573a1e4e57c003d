"""ADWIN (adaptive windowing) over a real-valued stream, checkpointed through River's Rust state.

River 0.26 runs ADWIN in Rust (``river._river_rust.drift.AdaptiveWindowing``). Its
``__getstate__`` is the bincode encoding of a plain serde struct -- floats, integers and the
exponential bucket rows -- followed by the constructor arguments. :func:`_decode_adwin_rust`
parses that layout field by field into our Struct, and :func:`_encode_adwin_rust` writes it back
for the helper's ``__setstate__``, which deserialises numbers, not objects. A River release that
changes the layout fails loudly in ``to_bytes`` (the parser checks every length and the
trailing constructor arguments), and the round-trip tests pin the layout.
"""

from __future__ import annotations

import struct
from typing import Final, Self

import msgspec
import numpy as np
from river import drift

from streamproc.errors import StateEncodingError
from streamproc.judge.detectors.base import MAGIC, checkpoint_of, restore_as
from streamproc.sketch import pack_state

__all__ = ["ADWINDetector"]


class _Bucket(msgspec.Struct, array_like=True, frozen=True):
    max_size: int
    current_idx: int
    totals: list[float]
    variances: list[float]


class _ADWINParams(msgspec.Struct, frozen=True):
    delta: float
    clock: int
    max_buckets: int
    min_window_length: int
    grace_period: int


class _ADWINWindow(msgspec.Struct, frozen=True):
    """The Rust ``AdaptiveWindowing`` fields, named as in River's ``rust_src/adwin.rs``."""

    total: float
    variance: float
    width: float
    total_width: float
    n_buckets: int
    max_n_buckets: int
    tick: int
    n_detections: int  # River's own counter; it restarts with every reset, ours does not
    buckets: list[_Bucket]


class _ADWINBlob(msgspec.Struct, frozen=True, tag="adwin", tag_field="kind"):
    params: _ADWINParams
    drift_detected: bool
    n_detections: int
    window: _ADWINWindow


# -- River's Rust ADWIN state (bincode 1, little-endian, fixed-width integers) ------------------

# delta f64, clock i32, max_buckets usize, min_window_length f64, grace_period f64
_RS_HEAD: Final = struct.Struct("<diQdd")
# total, variance, width, total_width f64; n_buckets, max_n_buckets, tick, n_detections i32;
# then the u64 length of bucket_list
_RS_SCALARS: Final = struct.Struct("<ddddiiiiQ")
_RS_U64: Final = struct.Struct("<Q")
_RS_BUCKET_HEAD: Final = struct.Struct("<QQ")  # max_size, current_idx (usize)
# after the struct, the pyo3 wrapper appends its constructor arguments (__getnewargs__)
_RS_TAIL: Final = struct.Struct("<diQii")


def _adwin_layout_error(detail: str) -> StateEncodingError:
    import river

    return StateEncodingError(
        f"River {river.__version__}'s ADWIN state does not have the layout streamproc knows "
        f"({detail}); pin the river version this streamproc was tested with"
    )


def _decode_adwin_rust(raw: bytes, params: _ADWINParams) -> _ADWINWindow:
    """Parse ``AdaptiveWindowing.__getstate__()`` into named fields, checking every length."""
    try:
        delta, clock, max_buckets, mwl, grace = _RS_HEAD.unpack_from(raw, 0)
        off = _RS_HEAD.size
        *floats, n_rows = _RS_SCALARS.unpack_from(raw, off)
        off += _RS_SCALARS.size
        buckets = []
        for _ in range(n_rows):
            max_size, current_idx = _RS_BUCKET_HEAD.unpack_from(raw, off)
            off += _RS_BUCKET_HEAD.size
            arrays = []
            for _ in range(2):
                (n,) = _RS_U64.unpack_from(raw, off)
                off += _RS_U64.size
                arrays.append(np.frombuffer(raw, dtype="<f8", count=n, offset=off).tolist())
                off += 8 * n
            buckets.append(_Bucket(max_size, current_idx, arrays[0], arrays[1]))
        tail = _RS_TAIL.unpack_from(raw, off)
        off += _RS_TAIL.size
    except (struct.error, ValueError) as exc:
        raise _adwin_layout_error(str(exc)) from exc
    expected = (params.delta, params.clock, params.max_buckets)
    if off != len(raw):
        raise _adwin_layout_error(f"{len(raw) - off} unexplained trailing bytes")
    if (delta, clock, max_buckets) != expected or (mwl, grace) != (
        float(params.min_window_length),
        float(params.grace_period),
    ):
        raise _adwin_layout_error("hyperparameters at the head do not match")
    if tail != (*expected, params.min_window_length, params.grace_period):
        raise _adwin_layout_error("constructor arguments at the tail do not match")
    total, variance, width, total_width, n_buckets, max_n_buckets, tick, n_det = floats
    return _ADWINWindow(
        total, variance, width, total_width, n_buckets, max_n_buckets, tick, n_det, buckets
    )


def _encode_adwin_rust(w: _ADWINWindow, params: _ADWINParams) -> bytes:
    """Write the bincode ``AdaptiveWindowing.__setstate__`` expects, after checking invariants."""
    cap = params.max_buckets + 1
    if not w.buckets:
        raise StateEncodingError("corrupt ADWIN checkpoint: no bucket row")
    for b in w.buckets:
        if (
            b.max_size != params.max_buckets
            or not 0 <= b.current_idx <= cap
            or len(b.totals) != cap
            or len(b.variances) != cap
        ):
            raise StateEncodingError("corrupt ADWIN checkpoint: inconsistent bucket row")
    for v in (w.n_buckets, w.max_n_buckets, w.tick, w.n_detections):
        if not -(2**31) <= v < 2**31:
            raise StateEncodingError("corrupt ADWIN checkpoint: counter out of i32 range")
    parts = [
        _RS_HEAD.pack(
            params.delta,
            params.clock,
            params.max_buckets,
            float(params.min_window_length),
            float(params.grace_period),
        ),
        _RS_SCALARS.pack(
            w.total,
            w.variance,
            w.width,
            w.total_width,
            w.n_buckets,
            w.max_n_buckets,
            w.tick,
            w.n_detections,
            len(w.buckets),
        ),
    ]
    for b in w.buckets:
        parts.append(_RS_BUCKET_HEAD.pack(b.max_size, b.current_idx))
        for values in (b.totals, b.variances):
            parts.append(_RS_U64.pack(len(values)))
            parts.append(np.asarray(values, dtype="<f8").tobytes())
    parts.append(
        _RS_TAIL.pack(
            params.delta,
            params.clock,
            params.max_buckets,
            params.min_window_length,
            params.grace_period,
        )
    )
    return b"".join(parts)


@checkpoint_of(_ADWINBlob)
class ADWINDetector:
    """ADWIN (adaptive windowing) over a real-valued stream, wrapping ``river.drift.ADWIN``.

    Detects a change in the mean: it keeps the longest recent window whose two halves have
    statistically equal means and drops the older part when they stop being equal. Works on any
    bounded real stream (feature values, scores, 0/1 errors).

    Parameters
    ----------
    delta
        Significance value; smaller means fewer false alarms and later detections.
    clock
        Check for a change every ``clock`` updates.
    max_buckets
        Buckets of each size kept before merging (memory/precision trade-off).
    min_window_length
        Smallest sub-window length a cut may leave.
    grace_period
        Updates before the first check.

    Notes
    -----
    River resets ADWIN entirely on the update after a detection (the window restarts empty).

    References
    ----------
    Bifet, A. and Gavaldà, R. (2007). Learning from time-changing data with adaptive
    windowing. SIAM International Conference on Data Mining, 443-448.
    """

    KIND: Final = "adwin"

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._river = drift.ADWIN(
            delta=delta,
            clock=clock,
            max_buckets=max_buckets,
            min_window_length=min_window_length,
            grace_period=grace_period,
        )
        self._n_detections = 0

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a change."""
        return self._river.drift_detected

    @property
    def n_detections(self) -> int:
        """Changes detected since creation (River's own counter restarts at each reset)."""
        return self._n_detections

    @property
    def estimation(self) -> float:
        """Mean of the current adaptive window (0.0 when empty)."""
        return self._river.estimation

    @property
    def width(self) -> int:
        """Length of the current adaptive window."""
        return int(self._river.width)

    def update(self, x: float) -> None:
        """Feed one value. Amortised O(1), with an O(log width) check every ``clock`` updates."""
        self._river.update(x)
        if self._river.drift_detected:
            self._n_detections += 1

    def _params(self) -> _ADWINParams:
        return _ADWINParams(
            self.delta, self.clock, self.max_buckets, self.min_window_length, self.grace_period
        )

    def to_bytes(self) -> bytes:
        """The versioned checkpoint: ``b"SPD1"`` + kind + hyperparameters + window state."""
        params = self._params()
        window = _decode_adwin_rust(self._river._helper.__getstate__(), params)
        return pack_state(
            MAGIC, _ADWINBlob(params, self._river.drift_detected, self._n_detections, window)
        )

    @classmethod
    def _restore(cls, blob: _ADWINBlob) -> ADWINDetector:
        p = blob.params
        det = cls(p.delta, p.clock, p.max_buckets, p.min_window_length, p.grace_period)
        raw = _encode_adwin_rust(blob.window, p)
        helper = det._river._helper
        helper.__setstate__(raw)
        if helper.__getstate__() != raw:
            raise _adwin_layout_error("state did not survive __setstate__")
        det._river._drift_detected = blob.drift_detected
        det._n_detections = blob.n_detections
        return det

    @classmethod
    def from_bytes(cls, blob: bytes) -> Self:
        """Rebuild a detector from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Not a detector checkpoint, another version, or another kind of detector.
        """
        return restore_as(cls, blob)

    def __repr__(self) -> str:
        return (
            f"ADWINDetector(delta={self.delta!r}, clock={self.clock!r}, "
            f"max_buckets={self.max_buckets!r}, min_window_length={self.min_window_length!r}, "
            f"grace_period={self.grace_period!r})"
        )
