"""Per-class score histograms: what a window keeps for the per-class performance figures.

A window of predictions counts, per predicted class ``i`` and scored class ``j``, the events
that predicted ``i`` with a score for ``j`` in each bin of the fixed grid of
:data:`~streamproc.aggregate.partials.CONFIDENCE_BINS` bins; a window of outcomes the same
with the label in place of the prediction. Counts add up the same in any order, so these
histograms merge exactly (see :mod:`streamproc.judge.cbpe` for what is computed from them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamproc.aggregate.partials import CONFIDENCE_BINS, CONFIDENCE_EDGES

__all__ = [
    "MAX_CLASSES",
    "SEP",
    "Joint",
    "ScorePairs",
    "fold_scores",
    "joint_of",
    "score_bins",
]

Joint = Mapping[str, Mapping[int, int]]
"""``"class\\x1fscored class"`` -> score bin -> count."""

SEP: Final = "\x1f"
"""Joins the two classes of a pair key (``"predicted\\x1fscored"``, ``"predicted\\x1flabel"``)."""
MAX_CLASSES: Final = 12
"""Events scoring more classes than this are left out of the per-class figures (their
histograms would grow with the square of the classes); accuracy is still estimated."""


def score_bins(scores: ArrayLike) -> NDArray[np.int64]:
    """The grid bin of each score (right-closed, like the outcome partials' confidences).

    >>> score_bins([0.0, 0.01, 0.015, 1.0]).tolist()
    [0, 0, 1, 99]
    """
    return np.searchsorted(CONFIDENCE_EDGES, np.asarray(scores, dtype=np.float64), side="left")


class ScorePairs:
    """A batch's ``(class, scored class, score bin)`` triples, found once and counted into
    any subset of its rows (a window partial's rows of the batch) with one numpy pass.

    ``class`` is the predicted class (a window of predictions) or the label (a window of
    outcomes), as its category text; rows without at least two scores, with more than
    :data:`MAX_CLASSES`, or with a score outside [0, 1] are skipped.

    >>> pairs = ScorePairs([("yes", {"yes": 0.9, "no": 0.1}), ("no", None)])
    >>> h = {}
    >>> pairs.fold(h, np.array([0, 1]))
    >>> sorted(h.items())
    [('yes\\x1fno', {9: 1}), ('yes\\x1fyes', {89: 1})]
    """

    def __init__(self, rows: Iterable[tuple[Any, Mapping[str, float] | None]]) -> None:
        keys: dict[str, int] = {}
        signatures: dict[tuple[Any, ...], list[int]] = {}  # (class, *scored) -> key codes
        row_of: list[int] = []
        codes: list[int] = []
        values: list[Any] = []
        for r, (cls, scores) in enumerate(rows):
            if cls is None or not scores or not 2 <= len(scores) <= MAX_CLASSES:
                continue
            sig = (cls, *scores)
            found = signatures.get(sig)
            if found is None:
                found = signatures[sig] = []
                for k in scores:
                    key = f"{cls}{SEP}{k}"
                    found.append(keys.setdefault(key, len(keys)))
            codes.extend(found)
            row_of.extend([r] * len(found))
            values.extend(scores.values())
        self.keys = list(keys)
        rows_arr = np.asarray(row_of, dtype=np.int64)
        try:
            v = np.asarray(values, dtype=np.float64)
            ok = (v >= 0.0) & (v <= 1.0)  # NaN is not
        except (TypeError, ValueError):  # a score that is not a number
            ok = np.array([isinstance(x, int | float) and 0.0 <= x <= 1.0 for x in values], bool)
            v = np.array([x if o else 0.0 for x, o in zip(values, ok.tolist(), strict=True)])
        if not ok.all():  # a row with one bad score is left out whole
            bad = np.isin(rows_arr, rows_arr[~ok])
            rows_arr, v = rows_arr[~bad], v[~bad]
            codes = np.asarray(codes, dtype=np.int64)[~bad].tolist()
        self.rows = rows_arr
        self.n = int(rows_arr.max()) + 1 if rows_arr.size else 0
        self.codes = np.asarray(codes, dtype=np.int64) * CONFIDENCE_BINS + score_bins(v)

    def fold(self, into: dict[str, dict[int, int]], rows: NDArray[np.int64] | None = None) -> None:
        """Add the triples of ``rows`` (row numbers; ``None``: all) into ``into``, in place."""
        if not self.keys:
            return
        codes = self.codes
        if rows is not None:
            member = np.zeros(max(self.n, int(rows.max(initial=-1)) + 1), dtype=bool)
            member[rows] = True
            codes = codes[member[self.rows]]
        found, counts = np.unique(codes, return_counts=True)
        for code, n in zip(found.tolist(), counts.tolist(), strict=True):
            key, b = self.keys[code // CONFIDENCE_BINS], code % CONFIDENCE_BINS
            h = into.get(key)
            if h is None:
                h = into[key] = {}
            h[b] = h.get(b, 0) + n

    def fold_groups(
        self, intos: list[dict[str, dict[int, int]]], groups: list[NDArray[np.int64]]
    ) -> None:
        """:meth:`fold` of each group of rows into its own histograms, in one numpy pass (a row
        may be in several groups: a batch row is in its model's partial of every segment).

        >>> pairs = ScorePairs([("yes", {"yes": 0.9, "no": 0.1}), ("no", {"yes": 0.2, "no": 0.8})])
        >>> a, b = {}, {}
        >>> pairs.fold_groups([a, b], [np.array([0, 1]), np.array([1])])
        >>> c = {}
        >>> pairs.fold(c, np.array([1]))
        >>> b == c, sorted(k.replace(SEP, "/") for k in a)
        (True, ['no/no', 'no/yes', 'yes/no', 'yes/yes'])
        """
        if not self.keys or not groups:
            return
        rows = np.concatenate(groups)
        owner = np.repeat(np.arange(len(groups), dtype=np.int64), [len(g) for g in groups])
        # each row's triples: self.rows is ascending, so a row's triples are one run
        per_row = np.bincount(self.rows, minlength=max(self.n, int(rows.max(initial=-1)) + 1))
        first = np.concatenate(([0], per_row.cumsum()))
        n = per_row[rows]
        total = int(n.sum())
        if not total:
            return
        ends = n.cumsum()
        triple = np.repeat(first[rows] - (ends - n), n) + np.arange(total)
        width = len(self.keys) * CONFIDENCE_BINS
        found, counts = np.unique(
            np.repeat(owner, n) * width + self.codes[triple], return_counts=True
        )
        for code, c in zip(found.tolist(), counts.tolist(), strict=True):
            g, code = divmod(code, width)
            key, b = self.keys[code // CONFIDENCE_BINS], code % CONFIDENCE_BINS
            into = intos[g]
            h = into.get(key)
            if h is None:
                h = into[key] = {}
            h[b] = h.get(b, 0) + c


def fold_scores(
    into: dict[str, dict[int, int]],
    rows: Iterable[tuple[Any, Mapping[str, float] | None]],
) -> None:
    """Add ``(class, scores)`` rows into per-``"class\\x1fscored class"`` bin counts, in place
    (see :class:`ScorePairs`).

    >>> h = {}
    >>> fold_scores(h, [("no", {"yes": 0.2, "no": 0.8}), ("no", {"yes": 0.2, "no": 0.8})])
    >>> sorted(h.items())
    [('no\\x1fno', {79: 2}), ('no\\x1fyes', {19: 2})]
    """
    ScorePairs(rows).fold(into)


def joint_of(
    keys: NDArray[np.object_], classes: list[str], scores: NDArray[np.float64]
) -> dict[str, dict[int, int]]:
    """:func:`fold_scores` of many rows at once: ``keys[r]`` is row ``r``'s class (predicted or
    label), ``scores[r, j]`` its score for ``classes[j]`` (every row fully scored).

    >>> joint_of(np.array(["a", "b", "a"], dtype=object), ["a", "b"],
    ...          np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]]))
    {'a\\x1fa': {79: 1, 89: 1}, 'a\\x1fb': {9: 1, 19: 1}, 'b\\x1fa': {29: 1}, 'b\\x1fb': {69: 1}}
    """
    out: dict[str, dict[int, int]] = {}
    bins = score_bins(scores)
    for key in sorted({k for k in keys.tolist() if k is not None}):
        rows = keys == key
        for j, cls in enumerate(classes):
            counts = np.bincount(bins[rows, j], minlength=len(CONFIDENCE_EDGES) + 1)
            nz = np.flatnonzero(counts)
            out[f"{key}{SEP}{cls}"] = dict(zip(nz.tolist(), counts[nz].tolist(), strict=True))
    return out
