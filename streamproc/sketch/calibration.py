"""The calibration window sketch: per-confidence-bin counts and sums, a mergeable ECE.

:func:`calibration_edges` gives the equal-width confidence bins a :class:`CalibrationSketch`
counts into (and a :class:`~streamproc.sketch.NumericSketch` can share).
"""

from __future__ import annotations

import bisect
import math
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

__all__ = ["CalibrationSketch", "calibration_edges"]


def calibration_edges(bins: int = 10) -> NDArray[np.float64]:
    """Inner edges of ``bins`` equal-width confidence bins over [0, 1].

    Bins are right-closed like a :class:`~streamproc.sketch.NumericSketch`'s:
    ``[0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1]``, so a numeric sketch built with these edges
    counts confidences into the same bins as a :class:`CalibrationSketch`.

    Examples
    --------
    >>> calibration_edges(4)
    array([0.25, 0.5 , 0.75])
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    return np.linspace(0.0, 1.0, bins + 1)[1:-1]


class _CalibrationState(msgspec.Struct, frozen=True):
    bins: int
    count: bytes  # <i8
    sum_confidence: bytes  # <f8
    sum_correct: bytes  # <i8


class CalibrationSketch:
    """Per-confidence-bin count, sum of confidence and number correct: a mergeable ECE.

    Bins are equal-width over [0, 1] and right-closed (see :func:`calibration_edges`), the same
    bins a :class:`~streamproc.sketch.NumericSketch` built with ``calibration_edges(bins)``
    uses.

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
        self._count = add_lists(self._count, np.bincount(idx, minlength=self.bins).tolist())
        self._sum_conf = add_lists(
            self._sum_conf, np.bincount(idx, weights=c, minlength=self.bins).tolist()
        )
        self._sum_correct = add_lists(
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
        out._count = add_lists(out._count, other._count)
        out._sum_conf = add_lists(out._sum_conf, other._sum_conf)
        out._sum_correct = add_lists(out._sum_correct, other._sum_correct)
        return out

    def __add__(self, other: CalibrationSketch) -> CalibrationSketch:
        return self.merge(other)

    def _state(self) -> _CalibrationState:
        return _CalibrationState(
            self.bins,
            i64_bytes(self.count),
            f64_bytes(self.sum_confidence),
            i64_bytes(self.sum_correct),
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
        count = array_from(st.count, "<i8", "CalibrationSketch")
        conf = array_from(st.sum_confidence, "<f8", "CalibrationSketch")
        right = array_from(st.sum_correct, "<i8", "CalibrationSketch")
        if not count.size == conf.size == right.size == st.bins:
            raise StateEncodingError("corrupt CalibrationSketch blob: arrays do not match bins")
        if (count < 0).any() or (right < 0).any() or (right > count).any():
            raise StateEncodingError("corrupt CalibrationSketch blob: inconsistent counts")
        out = cls(st.bins)
        out._count, out._sum_conf = count.tolist(), conf.tolist()
        out._sum_correct = right.tolist()
        return out
