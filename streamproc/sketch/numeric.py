"""The numeric window sketch: a histogram over the reference's quantile bins, plus moments.

:func:`reference_edges` picks the bin edges from reference values; a :class:`NumericSketch`
counts values into those bins and keeps count, nulls, min, max, mean, M2 and the values outside
the reference's range, mergeable and stored as ``SPN1``.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Sequence
from typing import Final

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamproc.errors import StateEncodingError
from streamproc.sketch.codec import (
    add_lists,
    array_from,
    f64_bytes,
    i64_bytes,
    pack_state,
    unpack_state,
)

__all__ = ["NumericSketch", "reference_edges"]


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


_EDGES: dict[bytes, tuple[NDArray[np.float64], list[float]]] = {}
_EDGES_CAP = 4096


def _interned_edges(raw: bytes) -> tuple[NDArray[np.float64], list[float]]:
    """Checked edges (read-only array and list) for their stored bytes, shared by every sketch
    decoded with them: partials carry the same few edge sets over and over."""
    got = _EDGES.get(raw)
    if got is None:
        e = _check_edges(array_from(raw, "<f8", "NumericSketch"))
        got = (e, e.tolist())
        if len(_EDGES) >= _EDGES_CAP:
            _EDGES.clear()
        _EDGES[raw] = got
    return got


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
        self._hist = add_lists(self._hist, binned)
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
            while j < k and (sketches[j]._edge_list is edges or sketches[j]._edge_list == edges):
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
        out = object.__new__(NumericSketch)
        out._edges, out._edge_list = self._edges, self._edge_list  # read-only, shared
        out.ref_min, out.ref_max = self.ref_min, self.ref_max
        out._count = out._nulls = out._below = out._above = 0
        out._min, out._max = math.inf, -math.inf
        out._mean = out._m2 = 0.0
        out._hist = [0] * (len(self._edge_list) + 1)
        return out

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
        out = self.copy()
        out += other
        return out

    def __add__(self, other: NumericSketch) -> NumericSketch:
        return self.merge(other)

    def __iadd__(self, other: NumericSketch) -> NumericSketch:
        """Merge ``other`` into this sketch in place (``a += b``); ``other`` is unchanged.

        >>> a, b = NumericSketch([1.0]), NumericSketch([1.0])
        >>> a.update(0.5); b.update(2.0)
        >>> a += b
        >>> a.hist.tolist(), a.count
        ([1, 1], 2)
        """
        if not isinstance(other, NumericSketch):
            raise TypeError(f"cannot merge NumericSketch with {type(other).__name__}")
        if self._edge_list is not other._edge_list and self._edge_list != other._edge_list:
            raise ValueError("cannot merge NumericSketches with different edges")
        if (self.ref_min, self.ref_max) != (other.ref_min, other.ref_max):
            raise ValueError("cannot merge NumericSketches with different reference ranges")
        self._nulls += other._nulls
        if other._count:
            self._combine_moments(other._count, other._mean, other._m2)
            self._min = min(self._min, other._min)
            self._max = max(self._max, other._max)
            self._hist = add_lists(self._hist, other._hist)
            self._below += other._below
            self._above += other._above
        return self

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
            edges=f64_bytes(self._edges),
            ref_min=self.ref_min,
            ref_max=self.ref_max,
            count=self._count,
            nulls=self._nulls,
            min=self._min,
            max=self._max,
            mean=self._mean,
            m2=self._m2,
            hist=i64_bytes(np.asarray(self._hist, dtype=np.int64)),
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
        try:
            edges, edge_list = _interned_edges(st.edges)
        except ValueError as exc:
            raise StateEncodingError(f"corrupt NumericSketch blob: {exc}") from exc
        hist = array_from(st.hist, "<i8", "NumericSketch").tolist()
        if len(hist) != len(edge_list) + 1:
            raise StateEncodingError(
                f"corrupt NumericSketch blob: {len(hist)} bins for {len(edge_list)} edges"
            )
        if st.count < 0 or st.nulls < 0 or sum(hist) != st.count or min(hist) < 0:
            raise StateEncodingError("corrupt NumericSketch blob: counts do not add up")
        out = object.__new__(cls)
        out._edges, out._edge_list = edges, edge_list
        out.ref_min, out.ref_max = float(st.ref_min), float(st.ref_max)
        out._count, out._nulls = st.count, st.nulls
        out._min, out._max, out._mean, out._m2 = st.min, st.max, st.mean, st.m2
        out._hist = hist
        out._below, out._above = st.below, st.above
        return out
