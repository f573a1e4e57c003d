"""Streaming change detectors over River, with checkpoints that never touch pickle.

Every detector follows River's contract (:class:`Detector`): ``update(x)`` returns nothing,
``drift_detected`` is read-only and holds for exactly one update -- the next ``update`` resets
the detector, as River does. Hyperparameters are public attributes stored as passed; state is
private. Each detector also counts its detections and exposes the quantity it tracks
(``estimation``).

Checkpoints
-----------
``to_bytes()`` writes ``b"SPD1"`` followed by the msgpack (msgspec) encoding of a tagged Struct:
the detector kind (``"adwin"``, ``"page_hinkley"``, ``"ddm"``), its hyperparameters and its full
internal state as named numbers and lists. :func:`detector_from_bytes` rebuilds any of them;
``XDetector.from_bytes`` also checks the kind.

River 0.26 runs ADWIN in Rust (``river._river_rust.drift.AdaptiveWindowing``). Its
``__getstate__`` is the bincode encoding of a plain serde struct -- floats, integers and the
exponential bucket rows -- followed by the constructor arguments. :func:`_decode_adwin_rust`
parses that layout field by field into our Struct, and :func:`_encode_adwin_rust` writes it back
for the helper's ``__setstate__``, which deserialises numbers, not objects. A River release that
changes the layout fails loudly in ``to_bytes`` (the parser checks every length and the
trailing constructor arguments), and the round-trip tests pin the layout.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> stream = np.concatenate([rng.normal(0.0, 1.0, 2000), rng.normal(1.0, 1.0, 2000)])
>>> det = ADWINDetector()
>>> detected = []
>>> for i, x in enumerate(stream.tolist()):
...     det.update(x)
...     if det.drift_detected:
...         detected.append(i)
>>> detected  # the mean moves at index 2000
[2047]
>>> restored = detector_from_bytes(det.to_bytes())
>>> restored.estimation == det.estimation, restored.n_detections
(True, 1)
"""

from __future__ import annotations

import struct
from typing import Final, Literal, Protocol, Self, TypeVar, runtime_checkable

import msgspec
import numpy as np
from river import drift

from streamproc.errors import StateEncodingError
from streamproc.sketch import pack_state, unpack_state

__all__ = [
    "ADWINDetector",
    "DDMDetector",
    "Detector",
    "PageHinkleyDetector",
    "detector_from_bytes",
]

MAGIC: Final = b"SPD1"
_D = TypeVar("_D", bound="ADWINDetector | PageHinkleyDetector | DDMDetector")


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


# -- stored form --------------------------------------------------------------------------------


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


class _PageHinkleyParams(msgspec.Struct, frozen=True):
    min_instances: int
    delta: float
    threshold: float
    alpha: float
    mode: Literal["up", "down", "both"]


class _PageHinkleyBlob(msgspec.Struct, frozen=True, tag="page_hinkley", tag_field="kind"):
    params: _PageHinkleyParams
    drift_detected: bool
    n_detections: int
    mean_n: float
    mean: float
    sum_increase: float
    sum_decrease: float
    min_increase: float
    max_decrease: float


class _DDMParams(msgspec.Struct, frozen=True):
    warm_start: int
    warning_threshold: float
    drift_threshold: float


class _DDMBlob(msgspec.Struct, frozen=True, tag="ddm", tag_field="kind"):
    params: _DDMParams
    drift_detected: bool
    warning_detected: bool
    n_detections: int
    p_n: float
    p_mean: float
    p_min: float | None
    s_min: float | None
    ps_min: float


_Blob = _ADWINBlob | _PageHinkleyBlob | _DDMBlob


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


def _decode_blob(blob: bytes) -> _Blob:
    return unpack_state(blob, MAGIC, _Blob, "detector checkpoint")  # type: ignore[arg-type]


# -- detectors ----------------------------------------------------------------------------------


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
        return _restore_as(cls, blob)

    def __repr__(self) -> str:
        return (
            f"ADWINDetector(delta={self.delta!r}, clock={self.clock!r}, "
            f"max_buckets={self.max_buckets!r}, min_window_length={self.min_window_length!r}, "
            f"grace_period={self.grace_period!r})"
        )


class PageHinkleyDetector:
    """Page-Hinkley test for a change in the mean, wrapping ``river.drift.PageHinkley``.

    Accumulates deviations from the running mean (faded by ``alpha``) and signals when the
    cumulative sum moves more than ``threshold`` away from its extreme.

    Parameters
    ----------
    min_instances
        Updates before a change can be signalled.
    delta
        Magnitude of change tolerated per update.
    threshold
        Detection threshold (lambda), in units of the stream.
    alpha
        Forgetting factor of the cumulative sums.
    mode
        ``"up"``, ``"down"`` or ``"both"``: which direction of change to signal.

    References
    ----------
    Page, E. S. (1954). Continuous inspection schemes. Biometrika 41(1/2), 100-115.
    """

    KIND: Final = "page_hinkley"

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 0.9999,
        mode: Literal["up", "down", "both"] = "both",
    ) -> None:
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._river = drift.PageHinkley(
            min_instances=min_instances, delta=delta, threshold=threshold, alpha=alpha, mode=mode
        )
        self._n_detections = 0

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a change."""
        return self._river.drift_detected

    @property
    def n_detections(self) -> int:
        """Changes detected since creation."""
        return self._n_detections

    @property
    def estimation(self) -> float:
        """Running mean of the values since the last reset."""
        return self._river._x_mean.get()

    def update(self, x: float) -> None:
        """Feed one value. O(1)."""
        self._river.update(x)
        if self._river.drift_detected:
            self._n_detections += 1

    def to_bytes(self) -> bytes:
        """The versioned checkpoint: ``b"SPD1"`` + kind + hyperparameters + state."""
        r = self._river
        return pack_state(
            MAGIC,
            _PageHinkleyBlob(
                params=_PageHinkleyParams(
                    self.min_instances, self.delta, self.threshold, self.alpha, self.mode
                ),
                drift_detected=r._drift_detected,
                n_detections=self._n_detections,
                mean_n=r._x_mean.n,
                mean=r._x_mean._mean,
                sum_increase=r._sum_increase,
                sum_decrease=r._sum_decrease,
                min_increase=r._min_increase,
                max_decrease=float(r._max_decrease),
            ),
        )

    @classmethod
    def _restore(cls, blob: _PageHinkleyBlob) -> PageHinkleyDetector:
        p = blob.params
        det = cls(p.min_instances, p.delta, p.threshold, p.alpha, p.mode)
        r = det._river
        r._drift_detected = blob.drift_detected
        r._x_mean.n = blob.mean_n
        r._x_mean._mean = blob.mean
        r._sum_increase = blob.sum_increase
        r._sum_decrease = blob.sum_decrease
        r._min_increase = blob.min_increase
        r._max_decrease = blob.max_decrease
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
        return _restore_as(cls, blob)

    def __repr__(self) -> str:
        return (
            f"PageHinkleyDetector(min_instances={self.min_instances!r}, delta={self.delta!r}, "
            f"threshold={self.threshold!r}, alpha={self.alpha!r}, mode={self.mode!r})"
        )


class DDMDetector:
    """Drift Detection Method on a 0/1 error stream, wrapping ``river.drift.binary.DDM``.

    Feed ``1`` for a wrong prediction and ``0`` for a right one (the joined prediction/label
    stream). DDM tracks the error rate ``p`` and its standard deviation ``s`` and signals when
    ``p + s`` exceeds its historical minimum by ``drift_threshold`` minimum standard deviations
    (``warning_threshold`` for a warning). It only watches for the error rate *rising*.

    Chosen over EDDM because DDM's test is on the error rate itself, which is what a label-delayed
    monitor sees; EDDM watches distances between errors and suits slow gradual drift on
    near-perfect models.

    Parameters
    ----------
    warm_start
        Updates before a change can be signalled.
    warning_threshold
        Standard deviations above the minimum for a warning.
    drift_threshold
        Standard deviations above the minimum for a detection.

    References
    ----------
    Gama, J., Medas, P., Castillo, G. and Rodrigues, P. (2004). Learning with drift detection.
    SBIA 2004, 286-295.
    """

    KIND: Final = "ddm"

    def __init__(
        self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0
    ) -> None:
        self.warm_start = warm_start
        self.warning_threshold = warning_threshold
        self.drift_threshold = drift_threshold
        self._river = drift.binary.DDM(
            warm_start=warm_start,
            warning_threshold=warning_threshold,
            drift_threshold=drift_threshold,
        )
        self._n_detections = 0

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a change."""
        return self._river.drift_detected

    @property
    def warning_detected(self) -> bool:
        """Whether the last update put the detector in its warning zone."""
        return self._river.warning_detected

    @property
    def n_detections(self) -> int:
        """Changes detected since creation."""
        return self._n_detections

    @property
    def estimation(self) -> float:
        """Error rate since the last reset."""
        return self._river._p.get()

    def update(self, x: float) -> None:
        """Feed one outcome: 1 (or True) for an error, 0 (or False) for a correct prediction."""
        self._river.update(x)
        if self._river.drift_detected:
            self._n_detections += 1

    def to_bytes(self) -> bytes:
        """The versioned checkpoint: ``b"SPD1"`` + kind + hyperparameters + state."""
        r = self._river
        return pack_state(
            MAGIC,
            _DDMBlob(
                params=_DDMParams(self.warm_start, self.warning_threshold, self.drift_threshold),
                drift_detected=r._drift_detected,
                warning_detected=r._warning_detected,
                n_detections=self._n_detections,
                p_n=r._p.n,
                p_mean=r._p._mean,
                p_min=r._p_min,
                s_min=r._s_min,
                ps_min=r._ps_min,
            ),
        )

    @classmethod
    def _restore(cls, blob: _DDMBlob) -> DDMDetector:
        p = blob.params
        det = cls(p.warm_start, p.warning_threshold, p.drift_threshold)
        r = det._river
        r._drift_detected = blob.drift_detected
        r._warning_detected = blob.warning_detected
        r._p.n = blob.p_n
        r._p._mean = blob.p_mean
        r._p_min = blob.p_min
        r._s_min = blob.s_min
        r._ps_min = blob.ps_min
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
        return _restore_as(cls, blob)

    def __repr__(self) -> str:
        return (
            f"DDMDetector(warm_start={self.warm_start!r}, "
            f"warning_threshold={self.warning_threshold!r}, "
            f"drift_threshold={self.drift_threshold!r})"
        )


_BY_BLOB: Final = {
    _ADWINBlob: ADWINDetector,
    _PageHinkleyBlob: PageHinkleyDetector,
    _DDMBlob: DDMDetector,
}


def detector_from_bytes(blob: bytes) -> ADWINDetector | PageHinkleyDetector | DDMDetector:
    """Rebuild whichever detector a checkpoint holds.

    Raises
    ------
    StateEncodingError
        Not a detector checkpoint (wrong magic), another format version, an unknown kind, or an
        inconsistent state.
    """
    decoded = _decode_blob(blob)
    return _BY_BLOB[type(decoded)]._restore(decoded)  # type: ignore[attr-defined]


def _restore_as(cls: type[_D], blob: bytes) -> _D:
    decoded = _decode_blob(blob)
    owner = _BY_BLOB[type(decoded)]
    if owner is not cls:
        raise StateEncodingError(
            f"checkpoint is of detector kind {owner.KIND!r}, expected {cls.KIND!r}"  # type: ignore[attr-defined]
        )
    return owner._restore(decoded)  # type: ignore[attr-defined]
