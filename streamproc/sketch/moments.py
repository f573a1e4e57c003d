"""Exact second moments of standardised feature vectors: the window side of multivariate drift.

A :class:`CrossMoments` sketch holds, over the rows of a window, their count ``n``, the sum
``Σq`` and the upper triangle of ``Σq qᵀ`` of each row's vector ``q`` of ``d`` standardised
numeric features in fixed point (:func:`standardised`: ``z`` clipped to ``±MV_Z_CLIP`` and
rounded to ``1/MV_SCALE`` of a reference standard deviation). Every entry is an integer, so
merging (adding) sketches is exact and order-independent: a window merged from any partials
equals one fed every row.

From it, the mean squared reconstruction error of the window's rows under an orthonormal
projection ``V`` (``k x d``, the reference's principal components) is exact:

    mean over rows of ||z - Vᵀ V z||² = tr(M) - tr(V M Vᵀ),   M = Σ z zᵀ / n,

which is what :meth:`CrossMoments.reconstruction_error` returns. ``d`` is bounded by the
baseline (``ProfileBuilder(pca_max_features=64)``): the sketch holds ``1 + d + d(d+1)/2``
integers (2,145 at ``d = 64``).

Examples
--------
>>> q = standardised(np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]]),
...                  np.array([3.0, 4.0]), np.array([2.0, 2.0]))
>>> (q / MV_SCALE).tolist()
[[-1.0, -1.0], [0.0, -1.0], [1.0, 2.0]]
>>> a, b = CrossMoments(2), CrossMoments(2)
>>> a.update(q[:2]); b.update(q[2:])
>>> both = a + b
>>> one = CrossMoments(2); one.update(q)
>>> both == one, both.n
(True, 3)
>>> both.reconstruction_error(np.array([[1.0, 0.0]]))  # the second coordinate's mean z²
2.0
>>> CrossMoments.from_bytes(both.to_bytes()) == both
True
"""

from __future__ import annotations

from typing import Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from streamproc.errors import StateEncodingError
from streamproc.sketch.codec import array_from, i64_bytes, pack_state, unpack_state

MV_Z_CLIP: Final = 6.0
"""Standardised values beyond this many reference sds count as this many: one wild row moves
a window's error by a bounded amount (the reference's error is computed with the same clip)."""

MV_SCALE: Final = 1024
"""Fixed point of the standardised values: 1/1024 of a reference sd. A product of two is at
most ``(6 * 1024)²`` (< 2^26), so float64 sums of up to 2^27 rows' products are exact integers
and one matrix product per batch gives the exact ``Σq qᵀ``."""


def standardised(
    values: NDArray[np.float64], means: NDArray[np.float64], stds: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Rows of numeric features (``n x d``, NaN where a row has no finite number) as fixed-point
    standardised values: ``rint(clip((x - mean) / sd, ±MV_Z_CLIP) * MV_SCALE)``, 0 (the
    reference mean) where the value is missing. Integer-valued float64, so that products sum
    exactly.

    >>> standardised(np.array([[np.nan, 100.0]]), np.zeros(2), np.ones(2)).tolist()
    [[0.0, 6144.0]]
    """
    z = (values - means) / stds
    z[~np.isfinite(z)] = 0.0
    np.clip(z, -MV_Z_CLIP, MV_Z_CLIP, out=z)
    return np.rint(z * MV_SCALE)


class _CrossState(msgspec.Struct, frozen=True):
    d: int
    n: int
    total: bytes  # <i8, d: Σq
    products: bytes  # <i8, d(d+1)/2: the upper triangle of Σq qᵀ, row-major


class CrossMoments:
    """Count, sum and cross-product sums of ``d``-dimensional fixed-point rows (a monoid).

    Parameters
    ----------
    d
        The dimension (the baseline's PCA features).
    """

    MAGIC: Final = b"SPX1"

    __slots__ = ("d", "n", "products", "total")

    def __init__(self, d: int) -> None:
        if d < 1:
            raise ValueError(f"CrossMoments needs d >= 1, got {d}")
        self.d = d
        self.n = 0
        self.total = np.zeros(d, dtype=np.int64)
        self.products = np.zeros(d * (d + 1) // 2, dtype=np.int64)

    def update(self, q: NDArray[np.float64]) -> None:
        """Add the rows of ``q`` (``n x d``, from :func:`standardised`): one matrix product."""
        if q.ndim != 2 or q.shape[1] != self.d:
            raise ValueError(f"expected rows of {self.d} values, got shape {q.shape}")
        if not q.shape[0]:
            return
        self.n += int(q.shape[0])
        self.total += q.sum(axis=0).astype(np.int64)
        iu = np.triu_indices(self.d)
        self.products += (q.T @ q)[iu].astype(np.int64)

    def zero(self) -> CrossMoments:
        return CrossMoments(self.d)

    def copy(self) -> CrossMoments:
        out = CrossMoments(self.d)
        out.n, out.total, out.products = self.n, self.total.copy(), self.products.copy()
        return out

    def __iadd__(self, other: CrossMoments) -> CrossMoments:
        if other.d != self.d:
            raise ValueError(f"cannot merge CrossMoments of d={self.d} and d={other.d}")
        self.n += other.n
        self.total += other.total
        self.products += other.products
        return self

    def __add__(self, other: CrossMoments) -> CrossMoments:
        return self.copy().__iadd__(other)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CrossMoments)
            and other.d == self.d
            and other.n == self.n
            and np.array_equal(other.total, self.total)
            and np.array_equal(other.products, self.products)
        )

    def __repr__(self) -> str:
        return f"CrossMoments(d={self.d}, n={self.n})"

    def second_moment(self) -> NDArray[np.float64]:
        """``M = Σ z zᵀ / n`` in reference sds (zeros when empty)."""
        m = np.zeros((self.d, self.d))
        if not self.n:
            return m
        iu = np.triu_indices(self.d)
        m[iu] = self.products / (float(MV_SCALE) ** 2 * self.n)
        return m + np.triu(m, 1).T

    def reconstruction_error(self, components: NDArray[np.float64]) -> float:
        """The rows' mean squared reconstruction error under the orthonormal ``components``
        (``k x d``): ``tr(M) - tr(V M Vᵀ)``; NaN when empty."""
        if not self.n:
            return float("nan")
        m = self.second_moment()
        v = np.asarray(components, dtype=np.float64)
        kept = float(np.einsum("ij,jk,ik->", v, m, v)) if v.size else 0.0
        return max(float(np.trace(m)) - kept, 0.0)

    def to_bytes(self) -> bytes:
        """The versioned stored form (magic ``SPX1``)."""
        return pack_state(
            self.MAGIC, _CrossState(self.d, self.n, i64_bytes(self.total), i64_bytes(self.products))
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> CrossMoments:
        """Rebuild a sketch from :meth:`to_bytes` output.

        Raises
        ------
        StateEncodingError
            Wrong magic or version, or an inconsistent payload.
        """
        st = unpack_state(blob, cls.MAGIC, _CrossState, "CrossMoments")
        total = array_from(st.total, "<i8", "CrossMoments")
        products = array_from(st.products, "<i8", "CrossMoments")
        if st.d < 1 or st.n < 0 or total.size != st.d or products.size != st.d * (st.d + 1) // 2:
            raise StateEncodingError("corrupt CrossMoments blob: arrays do not match d")
        out = cls(st.d)
        out.n, out.total, out.products = st.n, total, products
        return out
