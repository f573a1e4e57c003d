"""Mergeable window sketches: what a monitor keeps per (feature, segment) while a window is open.

Every sketch here is a *monoid*: an empty sketch (:meth:`zero`) is the identity, ``a + b`` is
associative, and ``a + b`` equals one sketch fed both streams (counts, histograms, min and max
exactly; mean and variance up to floating-point rounding). Partial windows built by several
partitions or workers therefore combine into what a single worker would have built.

Sketches are mutable accumulators (``update`` / ``update_many`` change them in place, the hot
path); ``merge`` and ``+`` return a new sketch and leave both operands untouched.

Stored form
-----------
``to_bytes()`` gives a 4-byte magic -- three letters naming the type and one digit for the format
version -- followed by the msgpack encoding (msgspec) of a plain Struct holding the state. Numpy
arrays are stored as raw little-endian bytes. ``from_bytes`` refuses any other magic or version
with :class:`~streamproc.errors.StateEncodingError`; nothing is ever unpickled.

=====  ======================  ======================================
Magic  Type                    State
=====  ======================  ======================================
SPN1   :class:`NumericSketch`   bin edges, histogram, moments, range
SPC1   :class:`CategoricalSketch`  category counts, overflow, nulls
SPQ1   :class:`QuantileSketch`  log-bucket counts (DDSketch-style)
SPE1   :class:`CalibrationSketch`  per-confidence-bin count and sums
=====  ======================  ======================================

Examples
--------
>>> import numpy as np
>>> edges = reference_edges(np.arange(100.0), bins=4)
>>> edges
array([24., 49., 74.])
>>> a = NumericSketch(edges, ref_min=0.0, ref_max=99.0)
>>> a.update_many(np.array([1.0, 30.0, 60.0, np.nan]))
>>> b = NumericSketch(edges, ref_min=0.0, ref_max=99.0)
>>> b.update(120.0)
>>> both = a + b
>>> both.hist.tolist(), both.count, both.nulls, both.above_ref_max
([1, 1, 1, 1], 4, 1, 1)
>>> NumericSketch.from_bytes(both.to_bytes()) == both
True
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeVar

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamproc.errors import StateEncodingError

__all__ = [
    "OTHER",
    "CalibrationSketch",
    "CategoricalSketch",
    "NumericSketch",
    "QuantileSketch",
    "calibration_edges",
    "pack_state",
    "reference_edges",
    "unpack_state",
]

OTHER: Final = "__other__"
"""The category that counts values arriving after a :class:`CategoricalSketch` is full."""

_S = TypeVar("_S", bound=msgspec.Struct)
_N = TypeVar("_N", int, float)
_ENCODER: Final = msgspec.msgpack.Encoder()


# -- the versioned envelope ---------------------------------------------------------------------


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


def _f64_bytes(a: NDArray[np.float64]) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def _i64_bytes(a: NDArray[np.int64]) -> bytes:
    return np.ascontiguousarray(a, dtype="<i8").tobytes()


def _add(a: list[_N], b: list[_N]) -> list[_N]:
    return [x + y for x, y in zip(a, b, strict=True)]


def _array_from(raw: bytes, dtype: str, what: str) -> NDArray[np.generic]:
    if len(raw) % 8:
        raise StateEncodingError(f"corrupt {what} blob: array of {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype).astype(dtype[1:], copy=True)


def _group_sums(
    x: NDArray[np.float64], counts: NDArray[np.int64], parts: list[tuple[int, int, int]]
) -> NDArray[np.float64]:
    """``[x[s:e].sum() for s, e, _ in parts]`` (consecutive groups of ``counts`` values), bit
    for bit: numpy's pairwise summation depends on where each group starts and ends.

    Each group becomes a row of a zero-padded matrix summed with ``where=`` its own cells:
    numpy's masked reduction runs the same pairwise loop over each row's contiguous run of
    cells (pinned by tests/property/test_sketch_groups.py). Where the padding would cost more
    than the values themselves, it sums group by group.
    """
    k = len(parts)
    width = int(counts.max()) if k else 0
    if k * width > 4 * x.size + 4096:
        total = np.add.reduce  # what ndarray.sum calls, minus its Python wrapper
        return np.array([total(x[s:e]) for s, e, _ in parts], dtype=np.float64)
    cells = np.arange(width) < counts[:, None]
    padded = np.zeros((k, width))
    padded[cells] = x
    return np.add.reduce(padded, axis=1, where=cells)  # type: ignore[no-any-return]


# -- binning ------------------------------------------------------------------------------------


def reference_edges(values: ArrayLike, bins: int = 10) -> NDArray[np.float64]:
    """Inner bin edges at the reference's quantiles, for a :class:`NumericSketch`.

    Returns the distinct values among the ``1/bins, 2/bins, ..., (bins-1)/bins`` quantiles of
    the finite reference values, taken with the inverted empirical CDF so every edge is an
    observed value. As bins are right-closed, each bin up to the last edge then holds at least
    one reference value; interpolated edges could fall in a gap of the data (between a point
    mass and the next value) and leave an empty reference bin, which PSI punishes.

    Ties collapse: a feature with a heavy point mass yields fewer edges, a constant feature
    yields exactly one edge (its value), which splits the line into "at or below the constant"
    and "above it".

    Parameters
    ----------
    values
        Reference values; NaN and infinities are ignored.
    bins
        Number of quantile bins wanted (at least 1; 1 gives no edges, a single bin).

    Returns
    -------
    numpy.ndarray
        Strictly increasing float64 edges, at most ``bins - 1`` of them.

    Raises
    ------
    ValueError
        No finite value, or ``bins < 1``.

    Examples
    --------
    >>> reference_edges([1.0, 2.0, 3.0, 4.0, 5.0], bins=4)
    array([2., 3., 4.])
    >>> reference_edges([7.0] * 50, bins=10)
    array([7.])
    >>> reference_edges([0.0] * 90 + list(range(1, 11)), bins=5)
    array([0.])
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("reference_edges needs at least one finite value")
    if bins == 1:
        return np.empty(0, dtype=np.float64)
    return np.unique(np.quantile(x, np.arange(1, bins) / bins, method="inverted_cdf"))


def calibration_edges(bins: int = 10) -> NDArray[np.float64]:
    """Inner edges of ``bins`` equal-width confidence bins over [0, 1].

    Bins are right-closed like a :class:`NumericSketch`'s: ``[0, 1/B], (1/B, 2/B], ...,
    ((B-1)/B, 1]``, so a numeric sketch built with these edges counts confidences into the same
    bins as a :class:`CalibrationSketch`.

    Examples
    --------
    >>> calibration_edges(4)
    array([0.25, 0.5 , 0.75])
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    return np.linspace(0.0, 1.0, bins + 1)[1:-1]


def _check_edges(edges: ArrayLike) -> NDArray[np.float64]:
    e = np.array(edges, dtype=np.float64, copy=True)
    if e.ndim != 1:
        raise ValueError(f"edges must be 1-D, got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise ValueError("edges must be finite")
    if e.size > 1 and not np.all(np.diff(e) > 0):
        raise ValueError("edges must be strictly increasing (use reference_edges to dedupe ties)")
    e.setflags(write=False)
    return e


# -- numeric ------------------------------------------------------------------------------------


class _NumericState(msgspec.Struct, frozen=True):
    edges: bytes  # <f8
    ref_min: float
    ref_max: float
    count: int
    nulls: int
    min: float
    max: float
    mean: float
    m2: float
    hist: bytes  # <i8, len(edges) + 1
    below: int
    above: int


class NumericSketch:
    """Histogram over fixed bins plus count, nulls, min, max, mean, M2 and range violations.

    Bins are open-ended and right-closed: with edges ``e0 < e1 < ... < ek`` the ``k + 2`` bins
    are ``(-inf, e0], (e0, e1], ..., (ek, +inf)``. Mean and M2 (sum of squared deviations) are
    combined with Chan et al.'s parallel formula, so merged moments are as accurate as a single
    pass.

    Parameters
    ----------
    edges
        Inner bin edges, finite and strictly increasing (see :func:`reference_edges`).
    ref_min, ref_max
        The reference's range; values strictly below ``ref_min`` / above ``ref_max`` are counted
        in :attr:`below_ref_min` / :attr:`above_ref_max`. The defaults count nothing.

    Notes
    -----
    ``None``, NaN and +-inf count as nulls: JSON cannot carry infinities, and one of them would
    turn the mean and variance into NaN for the rest of the window.

    Examples
    --------
    >>> s = NumericSketch([0.0, 1.0], ref_min=-1.0, ref_max=2.0)
    >>> for x in (-3.0, 0.0, 0.5, 5.0, None):
    ...     s.update(x)
    >>> s.hist.tolist(), s.count, s.nulls, s.below_ref_min, s.above_ref_max
    ([2, 1, 1], 4, 1, 1, 1)
    >>> round(s.mean, 12), s.min, s.max
    (0.625, -3.0, 5.0)
    """

    __slots__ = (
        "_above",
        "_below",
        "_count",
        "_edge_list",
        "_edges",
        "_hist",
        "_m2",
        "_max",
        "_mean",
        "_min",
        "_nulls",
        "ref_max",
        "ref_min",
    )

    MAGIC: Final = b"SPN1"

    def __init__(
        self, edges: ArrayLike, ref_min: float = -math.inf, ref_max: float = math.inf
    ) -> None:
        self._edges = _check_edges(edges)
        self._edge_list = self._edges.tolist()  # bisect on a list is ~10x faster than numpy
        self.ref_min = float(ref_min)
        self.ref_max = float(ref_max)
        self._count = 0
        self._nulls = 0
        self._min = math.inf
        self._max = -math.inf
        self._mean = 0.0
        self._m2 = 0.0
        # A list, not an array: a scalar list increment costs a third of a numpy one.
        self._hist = [0] * (self._edges.size + 1)
        self._below = 0
        self._above = 0

    # state, read-only
    @property
    def edges(self) -> NDArray[np.float64]:
        """The inner bin edges (read-only array)."""
        return self._edges

    @property
    def count(self) -> int:
        """Number of non-null values."""
        return self._count

    @property
    def nulls(self) -> int:
        """Number of nulls (None, NaN, +-inf, and ``nulls=`` passed to :meth:`update_many`)."""
        return self._nulls

    @property
    def total(self) -> int:
        """``count + nulls``."""
        return self._count + self._nulls

    @property
    def min(self) -> float:
        """Smallest value, NaN when empty."""
        return self._min if self._count else math.nan

    @property
    def max(self) -> float:
        """Largest value, NaN when empty."""
        return self._max if self._count else math.nan

    @property
    def mean(self) -> float:
        """Mean of the values, NaN when empty."""
        return self._mean if self._count else math.nan

    @property
    def m2(self) -> float:
        """Sum of squared deviations from the mean."""
        return self._m2

    @property
    def variance(self) -> float:
        """Sample variance (``ddof=1``), NaN under two values."""
        return self._m2 / (self._count - 1) if self._count > 1 else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (``ddof=1``), NaN under two values."""
        return math.sqrt(self.variance) if self._count > 1 else math.nan

    @property
    def hist(self) -> NDArray[np.int64]:
        """Counts per bin, ``len(edges) + 1`` of them (a copy)."""
        return np.array(self._hist, dtype=np.int64)

    @property
    def below_ref_min(self) -> int:
        """Values strictly below ``ref_min``."""
        return self._below

    @property
    def above_ref_max(self) -> int:
        """Values strictly above ``ref_max``."""
        return self._above

    def probabilities(self) -> NDArray[np.float64]:
        """Share of non-null values per bin (the reference side of PSI, JS and KS).

        Raises
        ------
        ValueError
            The sketch holds no value.
        """
        if self._count == 0:
            raise ValueError("an empty sketch has no distribution")
        return np.array(self._hist, dtype=np.float64) / self._count

    # updates
    def update(self, x: float | None) -> None:
        """Add one value (``None``/NaN/inf count as nulls). O(log bins)."""
        if x is None or not math.isfinite(x):
            self._nulls += 1
            return
        x = float(x)
        self._count += 1
        d = x - self._mean
        self._mean += d / self._count
        self._m2 += d * (x - self._mean)
        if x < self._min:
            self._min = x
        if x > self._max:
            self._max = x
        self._hist[bisect.bisect_left(self._edge_list, x)] += 1
        if x < self.ref_min:
            self._below += 1
        elif x > self.ref_max:
            self._above += 1

    def update_many(self, values: ArrayLike, nulls: int = 0) -> None:
        """Add a batch of values, vectorised (no Python loop per value).

        Parameters
        ----------
        values
            Values; NaN, +-inf (and ``None`` in an object sequence) count as nulls.
        nulls
            Additional nulls the caller already separated out.
        """
        if nulls < 0:
            raise ValueError(f"nulls must be >= 0, got {nulls}")
        x = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(x)
        if not finite.all():
            self._nulls += int(x.size - np.count_nonzero(finite))
            x = x[finite]
        self._nulls += nulls
        n = int(x.size)
        if n == 0:
            return
        mean = float(x.mean())
        m2 = float(np.square(x - mean).sum())
        self._combine_moments(n, mean, m2)
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))
        idx = np.searchsorted(self._edges, x, side="left")
        binned = np.bincount(idx, minlength=len(self._hist)).tolist()
        self._hist = _add(self._hist, binned)
        self._below += int(np.count_nonzero(x < self.ref_min))
        self._above += int(np.count_nonzero(x > self.ref_max))

    @staticmethod
    def update_groups(
        sketches: Sequence[NumericSketch],
        values: ArrayLike,
        counts: ArrayLike,
        nulls: Sequence[int] | None = None,
    ) -> None:
        """Feed each sketch its own slice of ``values``, with a few vectorised passes for all.

        The same, bit for bit, as ``sketches[i].update_many(values[s_i:s_i + counts[i]],
        nulls[i])`` for each ``i`` in order (``s_i`` the sum of the earlier counts): many small
        groups (one per monitor and tick) cost a handful of numpy calls instead of a dozen
        each. A sketch may appear more than once; its slices are added in list order.

        Parameters
        ----------
        sketches
            The sketches to update.
        values
            Every sketch's values, concatenated in list order; NaN and +-inf count as nulls.
        counts
            How many of ``values`` belong to each sketch.
        nulls
            Additional nulls per sketch, as ``update_many``'s ``nulls``.

        Examples
        --------
        >>> a, b = NumericSketch([1.0]), NumericSketch([1.0])
        >>> NumericSketch.update_groups([a, b], np.array([0.5, 2.0, np.nan, 3.0]), [2, 2], [0, 1])
        >>> a.hist.tolist(), a.count, b.hist.tolist(), b.count, b.nulls
        ([1, 1], 2, [0, 1], 1, 2)
        """
        k = len(sketches)
        x = np.asarray(values, dtype=np.float64).ravel()
        cnt = np.asarray(counts, dtype=np.int64).ravel()
        extra = [0] * k if nulls is None else [int(v) for v in nulls]
        if cnt.size != k or len(extra) != k:
            raise ValueError(f"{k} sketches but {cnt.size} counts and {len(extra)} nulls")
        if (cnt < 0).any() or int(cnt.sum()) != x.size or any(v < 0 for v in extra):
            raise ValueError("counts must be >= 0 and add up to len(values); nulls >= 0")
        if k == 0:
            return
        ends = cnt.cumsum()
        finite = np.isfinite(x)
        if not finite.all():
            bad = np.concatenate(([0], (~finite).cumsum()))
            dropped = bad[ends] - bad[ends - cnt]
            extra = [a + b for a, b in zip(extra, dropped.tolist(), strict=True)]
            x = x[finite]
            cnt = cnt - dropped
            ends = cnt.cumsum()
        starts = ends - cnt
        n_l, s_l, e_l = cnt.tolist(), starts.tolist(), ends.tolist()
        parts = list(zip(s_l, e_l, n_l, strict=True))
        # Mean and M2 exactly as update_many computes them: numpy's pairwise sum over each
        # group's own values (a segmented or running sum would round differently).
        sums = _group_sums(x, cnt, parts)
        means = (sums / np.maximum(cnt, 1)).tolist()
        sq = np.square(x - np.array(means).repeat(cnt))
        m2s = _group_sums(sq, cnt, parts).tolist()
        lo: list[float] = []
        hi: list[float] = []
        if x.size:
            at = starts[cnt > 0]
            if x.all():
                lo = np.minimum.reduceat(x, at).tolist()
                hi = np.maximum.reduceat(x, at).tolist()
            else:  # which zero (+0.0 or -0.0) min/max keep: leave it to the same reduction
                lo = [float(x[s:e].min()) for s, e, n in parts if n]
                hi = [float(x[s:e].max()) for s, e, n in parts if n]
        # Bins: one searchsorted per run of sketches sharing edges, then one bincount for all,
        # each sketch's bins at its own offset.
        nbs = [len(sk._hist) for sk in sketches]
        first_bin = np.cumsum([0, *nbs])
        bins = np.empty(x.size, dtype=np.int64)
        i = 0
        while i < k:
            edges = sketches[i]._edge_list
            j = i + 1
            while j < k and sketches[j]._edge_list == edges:
                j += 1
            if e_l[j - 1] > s_l[i]:
                bins[s_l[i] : e_l[j - 1]] = sketches[i]._edges.searchsorted(
                    x[s_l[i] : e_l[j - 1]], side="left"
                )
            i = j
        bins += first_bin[:-1].repeat(cnt)
        flat = np.bincount(bins, minlength=int(first_bin[-1])).tolist()
        cuts = first_bin.tolist()
        hists = [flat[cuts[i] : cuts[i + 1]] for i in range(k)]
        # Out of the reference range: only groups whose min or max says so need counting.
        below = [0] * k
        above = [0] * k
        r = 0
        for i, (s, e, n) in enumerate(parts):
            if n == 0:
                continue
            sk = sketches[i]
            if lo[r] < sk.ref_min:
                below[i] = int(np.count_nonzero(x[s:e] < sk.ref_min))
            if hi[r] > sk.ref_max:
                above[i] = int(np.count_nonzero(x[s:e] > sk.ref_max))
            r += 1
        lows, highs = iter(lo), iter(hi)
        add = operator.add
        for sk, n, more_nulls, mean, m2, h, b, a in zip(
            sketches, n_l, extra, means, m2s, hists, below, above, strict=True
        ):
            sk._nulls += more_nulls
            if n == 0:
                continue
            sk._combine_moments(n, mean, m2)
            sk._min = min(sk._min, next(lows))
            sk._max = max(sk._max, next(highs))
            sk._hist = list(map(add, sk._hist, h))
            sk._below += b
            sk._above += a

    def _combine_moments(self, n: int, mean: float, m2: float) -> None:
        # Chan, Golub & LeVeque (1979). An empty side is taken verbatim: zero is an exact identity.
        na = self._count
        if na == 0:
            self._count, self._mean, self._m2 = n, mean, m2
            return
        total = na + n
        d = mean - self._mean
        self._mean += d * (n / total)
        self._m2 += m2 + d * d * (na * n / total)
        self._count = total

    # monoid
    def zero(self) -> NumericSketch:
        """An empty sketch with the same edges and reference range (the identity of ``+``)."""
        return NumericSketch(self._edges, self.ref_min, self.ref_max)

    def copy(self) -> NumericSketch:
        """An independent copy."""
        out = self.zero()
        out._set(self)
        return out

    def _set(self, other: NumericSketch) -> None:
        self._count, self._nulls = other._count, other._nulls
        self._min, self._max = other._min, other._max
        self._mean, self._m2 = other._mean, other._m2
        self._hist = list(other._hist)
        self._below, self._above = other._below, other._above

    def merge(self, other: NumericSketch) -> NumericSketch:
        """A new sketch equal to one fed both streams.

        Raises
        ------
        ValueError
            The sketches have different edges or reference ranges.
        TypeError
            ``other`` is not a NumericSketch.
        """
        if not isinstance(other, NumericSketch):
            raise TypeError(f"cannot merge NumericSketch with {type(other).__name__}")
        if not np.array_equal(self._edges, other._edges):
            raise ValueError("cannot merge NumericSketches with different edges")
        if (self.ref_min, self.ref_max) != (other.ref_min, other.ref_max):
            raise ValueError("cannot merge NumericSketches with different reference ranges")
        out = self.copy()
        out._nulls += other._nulls
        if other._count:
            out._combine_moments(other._count, other._mean, other._m2)
            out._min = min(out._min, other._min)
            out._max = max(out._max, other._max)
            out._hist = _add(out._hist, other._hist)
            out._below += other._below
            out._above += other._above
        return out

    def __add__(self, other: NumericSketch) -> NumericSketch:
        return self.merge(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NumericSketch):
            return NotImplemented
        return self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"NumericSketch(bins={len(self._hist)}, count={self._count}, nulls={self._nulls}, "
            f"mean={self.mean:.6g}, std={self.std:.6g})"
        )

    # stored form
    def _state(self) -> _NumericState:
        return _NumericState(
            edges=_f64_bytes(self._edges),
            ref_min=self.ref_min,
            ref_max=self.ref_max,
            count=self._count,
            nulls=self._nulls,
            min=self._min,
            max=self._max,
            mean=self._mean,
            m2=self._m2,
            hist=_i64_bytes(np.asarray(self._hist, dtype=np.int64)),
            below=self._below,
            above=self._above,
        )

    def to_bytes(self) -> bytes:
        """The versioned stored form (magic ``SPN1``)."""
        return pack_state(self.MAGIC, self._state())

    @classmethod
    def from_bytes(cls, blob: bytes) -> NumericSketch:
        """Rebuild a sketch from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Wrong magic or version, or a payload that is not a consistent numeric sketch.
        """
        st = unpack_state(blob, cls.MAGIC, _NumericState, "NumericSketch")
        edges = _array_from(st.edges, "<f8", "NumericSketch")
        hist = _array_from(st.hist, "<i8", "NumericSketch")
        if hist.size != edges.size + 1:
            raise StateEncodingError(
                f"corrupt NumericSketch blob: {hist.size} bins for {edges.size} edges"
            )
        if st.count < 0 or st.nulls < 0 or int(hist.sum()) != st.count or (hist < 0).any():
            raise StateEncodingError("corrupt NumericSketch blob: counts do not add up")
        try:
            out = cls(edges, st.ref_min, st.ref_max)
        except ValueError as exc:
            raise StateEncodingError(f"corrupt NumericSketch blob: {exc}") from exc
        out._count, out._nulls = st.count, st.nulls
        out._min, out._max, out._mean, out._m2 = st.min, st.max, st.mean, st.m2
        out._hist = hist.tolist()
        out._below, out._above = st.below, st.above
        return out


# -- categorical --------------------------------------------------------------------------------


class _CategoricalState(msgspec.Struct, frozen=True):
    max_categories: int
    counts: dict[str, int]
    other: int
    nulls: int


def _category_key(value: str) -> tuple[int, str]:
    # Stable across processes and versions (str hash() is salted); the string breaks ties.
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little"), value


class _Kept:
    """Heap entry ordered by *descending* key, so ``heap[0]`` is the kept category to evict."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[int, str]) -> None:
        self.key = key

    def __lt__(self, other: _Kept) -> bool:
        return self.key > other.key


class CategoricalSketch:
    """Counts per category for up to ``max_categories`` distinct categories, plus nulls.

    Exact while a feature has at most ``max_categories`` distinct values (the usual case).
    Beyond that, the categories that keep their own count are the ``max_categories`` with the
    smallest stable 64-bit hash (BLAKE2b) among all categories seen -- a "bottom-k" rule -- and
    every value of the others is counted under :data:`OTHER` (``"__other__"``), as is a literal
    ``"__other__"`` value.

    The rule depends only on the *set* of categories seen, never on arrival order, which is what
    makes merging exact: a category keeps its count in ``a + b`` if and only if it would in one
    sketch fed both streams, and its count is then complete on both sides. A first-come cap
    cannot do this (a category lumped into ``"__other__"`` by one partial sketch loses its
    identity). The price: over the cap, which categories stay named is a pseudo-random sample
    of them, not the most frequent ones.

    Parameters
    ----------
    max_categories
        Distinct categories counted individually.

    Notes
    -----
    Values must be ``str``: the caller stringifies booleans and numbers reaching a categorical
    feature, so ``True`` and ``"True"`` cannot end up as two categories by accident.

    Per-event cost is one dict lookup; only a *new* category arriving at a full sketch costs a
    hash and a heap operation (O(log max_categories)).

    Examples
    --------
    >>> s = CategoricalSketch()
    >>> s.update_many(["a", "b", "a", None])
    >>> s.counts, s.nulls, s.count, s.total
    ({'a': 2, 'b': 1}, 1, 3, 4)
    >>> tiny = CategoricalSketch(max_categories=2)
    >>> tiny.update_many(["x", "y", "z", "x"])
    >>> sorted(tiny.counts.items())  # the two smallest hashes are "x" and "z"
    [('__other__', 1), ('x', 2), ('z', 1)]
    """

    __slots__ = ("_counts", "_heap", "_nulls", "_other", "max_categories")

    MAGIC: Final = b"SPC1"

    def __init__(self, max_categories: int = 1000) -> None:
        if max_categories < 1:
            raise ValueError(f"max_categories must be >= 1, got {max_categories}")
        self.max_categories = max_categories
        self._counts: dict[str, int] = {}
        self._other = 0
        self._nulls = 0
        # Built the first time a new category meets a full sketch, then kept in step.
        self._heap: list[_Kept] | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Counts per kept category, plus ``"__other__"`` when it is non-zero (a copy)."""
        out = dict(self._counts)
        if self._other:
            out[OTHER] = self._other
        return out

    @property
    def other(self) -> int:
        """Values counted under ``"__other__"``."""
        return self._other

    @property
    def nulls(self) -> int:
        """Number of nulls."""
        return self._nulls

    @property
    def count(self) -> int:
        """Number of non-null values (``"__other__"`` included)."""
        return sum(self._counts.values()) + self._other

    @property
    def total(self) -> int:
        """``count + nulls``."""
        return self.count + self._nulls

    def probabilities(self) -> dict[str, float]:
        """Share of non-null values per category (``"__other__"`` included when non-zero).

        Raises
        ------
        ValueError
            The sketch holds no value.
        """
        n = self.count
        if n == 0:
            raise ValueError("an empty sketch has no distribution")
        return {k: v / n for k, v in self.counts.items()}

    def update(self, value: str | None) -> None:
        """Add one value; ``None`` counts as a null. O(1) for a known category."""
        if value is None:
            self._nulls += 1
            return
        c = self._counts.get(value)
        if c is not None:
            self._counts[value] = c + 1
            return
        if not isinstance(value, str):
            raise TypeError(f"categorical values must be str, got {type(value).__name__}")
        self._admit(value, 1)

    def update_many(self, values: Iterable[str | None], nulls: int = 0) -> None:
        """Add a batch of values (counted in C by :class:`collections.Counter`).

        Parameters
        ----------
        values
            Category values; ``None`` counts as a null.
        nulls
            Additional nulls the caller already separated out.
        """
        if nulls < 0:
            raise ValueError(f"nulls must be >= 0, got {nulls}")
        batch = Counter(values)
        self._nulls += nulls + batch.pop(None, 0)
        bad = [k for k in batch if not isinstance(k, str)]
        if bad:
            raise TypeError(f"categorical values must be str, got {type(bad[0]).__name__}")
        self._absorb(batch)

    def update_counts(self, counts: Mapping[str, int], nulls: int = 0) -> None:
        """Add values already counted: the same as ``update_many`` of a batch holding each
        category ``counts[c]`` times, categories first appearing in ``counts``' order.

        Examples
        --------
        >>> s = CategoricalSketch()
        >>> s.update_counts({"b": 2, "a": 1}, nulls=1)
        >>> s.counts, s.nulls
        ({'b': 2, 'a': 1}, 1)
        """
        if nulls < 0 or any(n < 1 for n in counts.values()):
            raise ValueError("counts must be >= 1 and nulls >= 0")
        bad = [k for k in counts if not isinstance(k, str)]
        if bad:
            raise TypeError(f"categorical values must be str, got {type(bad[0]).__name__}")
        self._nulls += nulls
        self._absorb(counts)

    def _absorb(self, counts: Mapping[str, int]) -> None:
        mine = self._counts
        for k, n in counts.items():
            c = mine.get(k)
            if c is not None:
                mine[k] = c + n
            else:
                self._admit(k, n)

    def _admit(self, value: str, n: int) -> None:
        """Count ``n`` values of a category not currently kept."""
        if value == OTHER:
            self._other += n
            return
        if len(self._counts) < self.max_categories:
            self._counts[value] = n
            if self._heap is not None:
                heapq.heappush(self._heap, _Kept(_category_key(value)))
            return
        if self._heap is None:
            self._heap = [_Kept(_category_key(k)) for k in self._counts]
            heapq.heapify(self._heap)
        key = _category_key(value)
        if key < self._heap[0].key:
            evicted = heapq.heapreplace(self._heap, _Kept(key))
            self._other += self._counts.pop(evicted.key[1])
            self._counts[value] = n
        else:
            self._other += n

    def zero(self) -> CategoricalSketch:
        """An empty sketch with the same cap (the identity of ``+``)."""
        return CategoricalSketch(self.max_categories)

    def copy(self) -> CategoricalSketch:
        """An independent copy."""
        out = self.zero()
        out._counts = dict(self._counts)
        out._other, out._nulls = self._other, self._nulls
        return out

    def merge(self, other: CategoricalSketch) -> CategoricalSketch:
        """A new sketch equal to one fed both streams.

        Raises
        ------
        ValueError
            The sketches have different caps.
        """
        if not isinstance(other, CategoricalSketch):
            raise TypeError(f"cannot merge CategoricalSketch with {type(other).__name__}")
        if other.max_categories != self.max_categories:
            raise ValueError("cannot merge CategoricalSketches with different max_categories")
        out = self.copy()
        out._absorb(other._counts)
        out._other += other._other
        out._nulls += other._nulls
        return out

    def __add__(self, other: CategoricalSketch) -> CategoricalSketch:
        return self.merge(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CategoricalSketch):
            return NotImplemented
        return (
            self.max_categories == other.max_categories
            and self._counts == other._counts
            and self._other == other._other
            and self._nulls == other._nulls
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"CategoricalSketch(categories={len(self._counts)}, count={self.count}, "
            f"other={self._other}, nulls={self._nulls})"
        )

    def to_bytes(self) -> bytes:
        """The versioned stored form (magic ``SPC1``); categories are written sorted."""
        return pack_state(
            self.MAGIC,
            _CategoricalState(
                self.max_categories, dict(sorted(self._counts.items())), self._other, self._nulls
            ),
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> CategoricalSketch:
        """Rebuild a sketch from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Wrong magic or version, or an inconsistent payload.
        """
        st = unpack_state(blob, cls.MAGIC, _CategoricalState, "CategoricalSketch")
        if (
            st.max_categories < 1
            or len(st.counts) > st.max_categories
            or OTHER in st.counts
            or min(st.counts.values(), default=1) < 1
            or st.other < 0
            or st.nulls < 0
        ):
            raise StateEncodingError("corrupt CategoricalSketch blob: inconsistent counts")
        out = cls(st.max_categories)
        out._counts = dict(st.counts)
        out._other, out._nulls = st.other, st.nulls
        return out


# -- quantiles ----------------------------------------------------------------------------------


class _QuantileState(msgspec.Struct, frozen=True):
    relative_accuracy: float
    min_value: float
    positive: dict[int, int]
    negative: dict[int, int]
    zero: int
    nulls: int
    sum: float
    min: float
    max: float


class QuantileSketch:
    """Mergeable quantile sketch with relative accuracy (DDSketch-style log buckets).

    A value ``x`` with ``|x| >= min_value`` lands in bucket ``ceil(log_gamma |x|)`` with
    ``gamma = (1 + a) / (1 - a)``; a bucket answers with the point whose relative distance to
    both bucket ends is ``a``. So every quantile comes back within relative error ``a`` of the
    exact lower quantile (``numpy.quantile(..., method="lower")``), and counts merge exactly.
    Magnitudes below ``min_value`` go to a zero bucket and answer 0.

    The bucket count grows with ``log(max / min)`` of the data, not with the number of values:
    latencies spanning 1 µs to 1 hour at 1 % accuracy need about 1100 buckets. No bucket is
    ever collapsed, which keeps merging exact.

    Parameters
    ----------
    relative_accuracy
        Target relative error ``a``, in (0, 1).
    min_value
        Smallest magnitude given its own bucket.

    Examples
    --------
    >>> q = QuantileSketch(relative_accuracy=0.01)
    >>> q.update_many(np.arange(1.0, 1001.0))
    >>> abs(q.quantile(0.5) - 500.0) / 500.0 <= 0.01
    True
    >>> q.quantile(0.0), q.quantile(1.0)
    (1.0, 1000.0)
    """

    __slots__ = (
        "_gamma",
        "_log_gamma",
        "_max",
        "_min",
        "_neg",
        "_nulls",
        "_pos",
        "_sum",
        "_zero",
        "min_value",
        "relative_accuracy",
    )

    MAGIC: Final = b"SPQ1"

    def __init__(self, relative_accuracy: float = 0.01, min_value: float = 1e-9) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        if not (min_value > 0.0 and math.isfinite(min_value)):
            raise ValueError(f"min_value must be positive and finite, got {min_value}")
        self.relative_accuracy = relative_accuracy
        self.min_value = min_value
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}
        self._zero = 0
        self._nulls = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def count(self) -> int:
        """Number of non-null values."""
        return sum(self._pos.values()) + sum(self._neg.values()) + self._zero

    @property
    def nulls(self) -> int:
        """Number of nulls (None, NaN, +-inf)."""
        return self._nulls

    @property
    def sum(self) -> float:
        """Sum of the values."""
        return self._sum

    @property
    def mean(self) -> float:
        """Mean of the values, NaN when empty."""
        n = self.count
        return self._sum / n if n else math.nan

    @property
    def min(self) -> float:
        """Smallest value (exact), NaN when empty."""
        return self._min if self._min <= self._max else math.nan

    @property
    def max(self) -> float:
        """Largest value (exact), NaN when empty."""
        return self._max if self._min <= self._max else math.nan

    @property
    def n_buckets(self) -> int:
        """Number of non-empty buckets (memory use is proportional to it)."""
        return len(self._pos) + len(self._neg) + (1 if self._zero else 0)

    def update(self, x: float | None) -> None:
        """Add one value; ``None``, NaN and +-inf count as nulls. O(1)."""
        if x is None or not math.isfinite(x):
            self._nulls += 1
            return
        x = float(x)
        self._sum += x
        if x < self._min:
            self._min = x
        if x > self._max:
            self._max = x
        mag = abs(x)
        if mag < self.min_value:
            self._zero += 1
            return
        store = self._pos if x > 0 else self._neg
        k = math.ceil(math.log(mag) / self._log_gamma)
        store[k] = store.get(k, 0) + 1

    def update_many(self, values: ArrayLike) -> None:
        """Add a batch of values, vectorised; NaN and +-inf count as nulls."""
        x = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(x)
        if not finite.all():
            self._nulls += int(x.size - np.count_nonzero(finite))
            x = x[finite]
        if x.size == 0:
            return
        self._sum += float(x.sum())
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))
        mag = np.abs(x)
        small = mag < self.min_value
        self._zero += int(np.count_nonzero(small))
        for store, sel in ((self._pos, (x > 0) & ~small), (self._neg, (x < 0) & ~small)):
            if not sel.any():
                continue
            keys = np.ceil(np.log(mag[sel]) / self._log_gamma).astype(np.int64)
            uniq, cnt = np.unique(keys, return_counts=True)
            for k, n in zip(uniq.tolist(), cnt.tolist(), strict=True):
                store[k] = store.get(k, 0) + n

    def _value(self, k: int) -> float:
        return 2.0 * self._gamma**k / (self._gamma + 1.0)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile, within relative error ``relative_accuracy``; NaN when empty.

        Estimates the lower quantile: the value of rank ``floor(q * (count - 1))``. Ranks 0 and
        ``count - 1`` answer the exact min and max; other estimates are clamped to them.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        n = self.count
        if n == 0:
            return math.nan
        rank = math.floor(q * (n - 1))
        if rank == 0:
            return self._min
        if rank == n - 1:
            return self._max
        seen = 0
        est = self._max
        done = False
        for k in sorted(self._neg, reverse=True):
            seen += self._neg[k]
            if seen > rank:
                est, done = -self._value(k), True
                break
        if not done:
            seen += self._zero
            if seen > rank:
                est, done = 0.0, True
        if not done:
            for k in sorted(self._pos):
                seen += self._pos[k]
                if seen > rank:
                    est = self._value(k)
                    break
        return min(max(est, self._min), self._max)

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        """Several quantiles at once (e.g. ``(0.5, 0.95, 0.99)``)."""
        return [self.quantile(q) for q in qs]

    def zero(self) -> QuantileSketch:
        """An empty sketch with the same accuracy (the identity of ``+``)."""
        return QuantileSketch(self.relative_accuracy, self.min_value)

    def copy(self) -> QuantileSketch:
        """An independent copy."""
        out = self.zero()
        out._pos, out._neg = dict(self._pos), dict(self._neg)
        out._zero, out._nulls, out._sum = self._zero, self._nulls, self._sum
        out._min, out._max = self._min, self._max
        return out

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """A new sketch holding both streams (bucket counts add exactly).

        Raises
        ------
        ValueError
            The sketches have a different ``relative_accuracy`` or ``min_value``.
        """
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"cannot merge QuantileSketch with {type(other).__name__}")
        if (self.relative_accuracy, self.min_value) != (other.relative_accuracy, other.min_value):
            raise ValueError("cannot merge QuantileSketches with different accuracy settings")
        out = self.copy()
        for mine, theirs in ((out._pos, other._pos), (out._neg, other._neg)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        out._zero += other._zero
        out._nulls += other._nulls
        out._sum += other._sum
        out._min = min(out._min, other._min)
        out._max = max(out._max, other._max)
        return out

    def __add__(self, other: QuantileSketch) -> QuantileSketch:
        return self.merge(other)

    def _state(self) -> _QuantileState:
        return _QuantileState(
            relative_accuracy=self.relative_accuracy,
            min_value=self.min_value,
            positive=dict(sorted(self._pos.items())),
            negative=dict(sorted(self._neg.items())),
            zero=self._zero,
            nulls=self._nulls,
            sum=self._sum,
            min=self._min,
            max=self._max,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"QuantileSketch(relative_accuracy={self.relative_accuracy}, count={self.count}, "
            f"buckets={self.n_buckets})"
        )

    def to_bytes(self) -> bytes:
        """The versioned stored form (magic ``SPQ1``)."""
        return pack_state(self.MAGIC, self._state())

    @classmethod
    def from_bytes(cls, blob: bytes) -> QuantileSketch:
        """Rebuild a sketch from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Wrong magic or version, or an inconsistent payload.
        """
        st = unpack_state(blob, cls.MAGIC, _QuantileState, "QuantileSketch")
        try:
            out = cls(st.relative_accuracy, st.min_value)
        except ValueError as exc:
            raise StateEncodingError(f"corrupt QuantileSketch blob: {exc}") from exc
        if (
            st.zero < 0
            or st.nulls < 0
            or any(n < 1 for n in (*st.positive.values(), *st.negative.values()))
        ):
            raise StateEncodingError("corrupt QuantileSketch blob: negative or empty buckets")
        out._pos, out._neg = dict(st.positive), dict(st.negative)
        out._zero, out._nulls, out._sum = st.zero, st.nulls, st.sum
        out._min, out._max = st.min, st.max
        return out


# -- calibration --------------------------------------------------------------------------------


class _CalibrationState(msgspec.Struct, frozen=True):
    bins: int
    count: bytes  # <i8
    sum_confidence: bytes  # <f8
    sum_correct: bytes  # <i8


class CalibrationSketch:
    """Per-confidence-bin count, sum of confidence and number correct: a mergeable ECE.

    Bins are equal-width over [0, 1] and right-closed (see :func:`calibration_edges`), the same
    bins a :class:`NumericSketch` built with ``calibration_edges(bins)`` uses.

    Parameters
    ----------
    bins
        Number of confidence bins.

    Examples
    --------
    >>> c = CalibrationSketch(bins=2)
    >>> c.update_many(np.array([0.2, 0.4, 0.9, 1.0]), np.array([0, 1, 1, 1]))
    >>> c.count.tolist(), c.accuracy.tolist()
    ([2, 2], [0.5, 1.0])
    >>> round(c.expected_calibration_error(), 6)  # (|0.6 - 1| + |1.9 - 2|) / 4
    0.125
    """

    __slots__ = ("_count", "_edge_list", "_edges", "_sum_conf", "_sum_correct", "bins")

    MAGIC: Final = b"SPE1"

    def __init__(self, bins: int = 10) -> None:
        self.bins = bins
        self._edges = calibration_edges(bins)
        self._edge_list = self._edges.tolist()
        # Lists, not arrays: scalar list updates cost a third of numpy ones.
        self._count = [0] * bins
        self._sum_conf = [0.0] * bins
        self._sum_correct = [0] * bins

    @property
    def edges(self) -> NDArray[np.float64]:
        """Inner bin edges (``calibration_edges(bins)``)."""
        return self._edges.copy()

    @property
    def count(self) -> NDArray[np.int64]:
        """Predictions per bin (a copy)."""
        return np.array(self._count, dtype=np.int64)

    @property
    def sum_confidence(self) -> NDArray[np.float64]:
        """Sum of confidences per bin (a copy)."""
        return np.array(self._sum_conf, dtype=np.float64)

    @property
    def sum_correct(self) -> NDArray[np.int64]:
        """Correct predictions per bin (a copy)."""
        return np.array(self._sum_correct, dtype=np.int64)

    @property
    def n(self) -> int:
        """Total number of labelled predictions."""
        return sum(self._count)

    @property
    def accuracy(self) -> NDArray[np.float64]:
        """Observed accuracy per bin, NaN for empty bins."""
        count = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, self.sum_correct / count, np.nan)

    @property
    def mean_confidence(self) -> NDArray[np.float64]:
        """Mean confidence per bin, NaN for empty bins."""
        count = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, self.sum_confidence / count, np.nan)

    def expected_calibration_error(self) -> float:
        """``sum_b (n_b / N) * |accuracy_b - confidence_b|``; NaN when empty."""
        n = self.n
        if n == 0:
            return math.nan
        return float(np.abs(self.sum_correct - self.sum_confidence).sum() / n)

    def update(self, confidence: float, correct: bool | int) -> None:
        """Add one labelled prediction. O(log bins).

        Raises
        ------
        ValueError
            ``confidence`` is outside [0, 1] or NaN.
        """
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        b = bisect.bisect_left(self._edge_list, confidence)
        self._count[b] += 1
        self._sum_conf[b] += confidence
        self._sum_correct[b] += 1 if correct else 0

    def update_many(self, confidences: ArrayLike, correct: ArrayLike) -> None:
        """Add a batch of labelled predictions, vectorised.

        Parameters
        ----------
        confidences
            Confidence of each prediction, in [0, 1].
        correct
            Whether each prediction was right (bool or 0/1), same length.
        """
        c = np.asarray(confidences, dtype=np.float64).ravel()
        ok = np.asarray(correct).ravel().astype(bool)
        if c.shape != ok.shape:
            raise ValueError(f"{c.size} confidences but {ok.size} correctness flags")
        if c.size == 0:
            return
        if not (np.all(c >= 0.0) and np.all(c <= 1.0)):  # also rejects NaN
            raise ValueError("confidences must be in [0, 1]")
        idx = np.searchsorted(self._edges, c, side="left")
        self._count = _add(self._count, np.bincount(idx, minlength=self.bins).tolist())
        self._sum_conf = _add(
            self._sum_conf, np.bincount(idx, weights=c, minlength=self.bins).tolist()
        )
        self._sum_correct = _add(
            self._sum_correct, np.bincount(idx[ok], minlength=self.bins).tolist()
        )

    def zero(self) -> CalibrationSketch:
        """An empty sketch with the same bins (the identity of ``+``)."""
        return CalibrationSketch(self.bins)

    def copy(self) -> CalibrationSketch:
        """An independent copy."""
        out = self.zero()
        out._count = list(self._count)
        out._sum_conf = list(self._sum_conf)
        out._sum_correct = list(self._sum_correct)
        return out

    def merge(self, other: CalibrationSketch) -> CalibrationSketch:
        """A new sketch holding both streams.

        Raises
        ------
        ValueError
            The sketches have a different number of bins.
        """
        if not isinstance(other, CalibrationSketch):
            raise TypeError(f"cannot merge CalibrationSketch with {type(other).__name__}")
        if other.bins != self.bins:
            raise ValueError("cannot merge CalibrationSketches with different bins")
        out = self.copy()
        out._count = _add(out._count, other._count)
        out._sum_conf = _add(out._sum_conf, other._sum_conf)
        out._sum_correct = _add(out._sum_correct, other._sum_correct)
        return out

    def __add__(self, other: CalibrationSketch) -> CalibrationSketch:
        return self.merge(other)

    def _state(self) -> _CalibrationState:
        return _CalibrationState(
            self.bins,
            _i64_bytes(self.count),
            _f64_bytes(self.sum_confidence),
            _i64_bytes(self.sum_correct),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CalibrationSketch):
            return NotImplemented
        return self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CalibrationSketch(bins={self.bins}, n={self.n})"

    def to_bytes(self) -> bytes:
        """The versioned stored form (magic ``SPE1``)."""
        return pack_state(self.MAGIC, self._state())

    @classmethod
    def from_bytes(cls, blob: bytes) -> CalibrationSketch:
        """Rebuild a sketch from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Wrong magic or version, or an inconsistent payload.
        """
        st = unpack_state(blob, cls.MAGIC, _CalibrationState, "CalibrationSketch")
        if st.bins < 1:
            raise StateEncodingError(f"corrupt CalibrationSketch blob: bins={st.bins}")
        count = _array_from(st.count, "<i8", "CalibrationSketch")
        conf = _array_from(st.sum_confidence, "<f8", "CalibrationSketch")
        right = _array_from(st.sum_correct, "<i8", "CalibrationSketch")
        if not count.size == conf.size == right.size == st.bins:
            raise StateEncodingError("corrupt CalibrationSketch blob: arrays do not match bins")
        if (count < 0).any() or (right < 0).any() or (right > count).any():
            raise StateEncodingError("corrupt CalibrationSketch blob: inconsistent counts")
        out = cls(st.bins)
        out._count, out._sum_conf = count.tolist(), conf.tolist()
        out._sum_correct = right.tolist()
        return out
