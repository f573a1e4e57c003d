"""A regression model's error estimated before its labels arrive (DLE-like, streaming).

NannyML's DLE (direct loss estimation) fits a model of the loss given the model's inputs and
prediction on the reference, and averages its output over a chunk of unlabelled predictions.
Here the loss model is a **regression tree** per loss (absolute error, squared error, absolute
percentage error), fitted on the reference's labelled rows over the prediction and the
features (:func:`fit_loss_model`). Its leaves are a fixed partition of the input space, like
the prediction bins of a one-dimensional grid (a tree that only splits on the prediction *is*
such a grid), so a window of predictions keeps only integer counts of its events per leaf
(:func:`leaves_of` and :func:`fold_losses`): windows merge exactly, in any order, and a
replay computes the same figures. The estimate of a window is the mean of its leaves' reference
losses weighted by those counts (:func:`estimate`): ``estimated_mae``, ``estimated_rmse``
(the square root of the estimated mean squared error) and ``estimated_mape``.

Why a tree and not an additive model over binned inputs: the error of a regression model is
often a function of the prediction *relative to* a feature (a car's predicted price against its
price new), which no sum of one-dimensional effects represents; a tree's cells follow such
interactions. On NannyML's car-price dataset a prediction-only grid of 100 bins misses the
realised MAE by ~42 per 6,000-row chunk and an additive model over the binned features by ~49,
the trees by ~5 (NannyML's LightGBM DLE: ~9; see ``bench/RESULTS.md``).

Fitting is histogram-based and best first: numeric inputs are cut at (up to)
:data:`INPUT_BINS` quantile edges of the reference, a split sends ``value <= threshold`` left
(nulls and non-numbers right); a categorical input's split sends one category left. A split
must leave :func:`min_leaf` reference rows on each side; a tree stops at :data:`MAX_LEAVES`
leaves or :data:`MAX_DEPTH` levels.

Examples
--------
Errors that grow with the prediction, and a window whose predictions moved up:

>>> rng = np.random.default_rng(0)
>>> p = rng.uniform(10, 100, 20_000)
>>> y = p + rng.normal(0, 0.1 * p)
>>> model = fit_loss_model(p, y, {})
>>> sorted(model.trees), model.labelled
(['abs', 'pct', 'sq'], 20000)
>>> counts = {}
>>> fold_losses(counts, model, leaves_of(model, rng.uniform(60, 100, 5_000), {}))
>>> est = estimate(model, counts)
>>> round(est["mae"] / (0.1 * 80 * 0.7979), 1)  # E|N(0, s)| = 0.798 s, s = 0.1 p, E p = 80
1.0
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamproc.baseline.profile import LossModelReference, LossTreeReference

__all__ = [
    "INPUT_BINS",
    "LOSSES",
    "MAX_DEPTH",
    "MAX_INPUTS",
    "MAX_LEAVES",
    "estimate",
    "fit_loss_model",
    "fold_losses",
    "leaves_of",
    "min_leaf",
]

LOSSES: Final = ("abs", "sq", "pct")
"""The trees of a loss model: absolute error, squared error, absolute percentage error."""
INPUT_BINS: Final = 32
"""Quantile bins of a numeric input: the thresholds a split may use."""
MAX_CATEGORIES: Final = 32
"""Most frequent categories of a categorical input a split may single out."""
MAX_LEAVES: Final = 64
MAX_DEPTH: Final = 12
MAX_INPUTS: Final = 24
"""Features a loss model may split on besides the prediction (the best single splits first)."""
MAX_ROWS: Final = 200_000
"""Labelled reference rows a loss model is fitted on (a fixed sample beyond)."""

Column = NDArray[np.float64] | Sequence[str | None]


def min_leaf(n: int) -> int:
    """Reference rows each leaf keeps at least: enough for a stable mean loss.

    >>> min_leaf(1_000), min_leaf(60_000)
    (50, 240)
    """
    return max(50, n // 250)


def _numeric_codes(x: NDArray[np.float64]) -> tuple[list[float], NDArray[np.int64]]:
    finite = x[np.isfinite(x)]
    if not finite.size:
        return [], np.zeros(x.size, np.int64)
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, INPUT_BINS + 1)[1:-1]))
    edges = edges[edges < finite.max()]  # a last edge at the max would split nothing off
    return edges.tolist(), np.searchsorted(edges, x, side="left").astype(np.int64)


def _categorical_codes(x: Sequence[str | None]) -> tuple[list[str], NDArray[np.int64]]:
    counts: dict[str, int] = {}
    for v in x:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    cats = sorted(counts, key=lambda c: (-counts[c], c))[:MAX_CATEGORIES]
    index = {c: i for i, c in enumerate(cats)}
    other = len(cats)
    return cats, np.fromiter((index.get(v, other) for v in x), np.int64, len(x))  # type: ignore[arg-type]


class _Grower:
    """Best-first growth of one tree on binned inputs (``codes[:, j]`` in ``[0, width)``)."""

    def __init__(
        self, codes: NDArray[np.int64], numeric: list[bool], splits: list[int], width: int,
        leaf: int,
    ) -> None:  # fmt: skip
        self.codes = codes
        self.numeric = np.asarray(numeric, bool)
        # the bins a split may cut after (numeric) or single out (categorical)
        self.valid = np.arange(width)[None, :] < np.asarray(splits)[:, None]
        self.width = width
        self.leaf = leaf
        self.offsets = np.arange(codes.shape[1], dtype=np.int64) * width

    def best(self, rows: NDArray[np.intp], y: NDArray[np.float64]) -> tuple[float, int, int]:
        """The best split of ``rows``: (gain in squared error, input, bin), gain 0 if none."""
        n_in, w = self.codes.shape[1], self.width
        flat = (self.codes[rows] + self.offsets).ravel()
        yy = np.repeat(y[rows], n_in)
        cnt = np.bincount(flat, minlength=n_in * w).reshape(n_in, w).astype(np.float64)
        tot = np.bincount(flat, weights=yy, minlength=n_in * w).reshape(n_in, w)
        n, s = float(rows.size), float(y[rows].sum())
        # numeric: left = bins <= k; categorical: left = bin k
        left_n = np.where(self.numeric[:, None], np.cumsum(cnt, axis=1), cnt)
        left_s = np.where(self.numeric[:, None], np.cumsum(tot, axis=1), tot)
        right_n, right_s = n - left_n, s - left_s
        ok = self.valid & (left_n >= self.leaf) & (right_n >= self.leaf)
        if not ok.any():
            return 0.0, -1, -1
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = left_s**2 / left_n + right_s**2 / right_n - s * s / n
        gain = np.where(ok, gain, -np.inf)
        j, k = np.unravel_index(int(np.argmax(gain)), gain.shape)
        g = float(gain[j, k])
        return (g, int(j), int(k)) if g > 1e-12 * max(abs(s * s / n), 1.0) else (0.0, -1, -1)

    def grow(
        self, y: NDArray[np.float64], thresholds: Callable[[int, int], float]
    ) -> LossTreeReference:
        feature: list[int] = [-1]
        threshold: list[float] = [0.0]
        left: list[int] = [-1]
        right: list[int] = [-1]
        value: list[float] = [float(y.mean())]
        count: list[int] = [int(y.size)]
        root = np.arange(y.size)
        heap: list[tuple[float, int, int, int, int, NDArray[np.intp]]] = []

        def push(node: int, rows: NDArray[np.intp], depth: int) -> None:
            if depth >= MAX_DEPTH or rows.size < 2 * self.leaf:
                return
            g, j, k = self.best(rows, y)
            if j >= 0:
                heapq.heappush(heap, (-g, node, j, k, depth, rows))

        push(0, root, 0)
        leaves = 1
        while heap and leaves < MAX_LEAVES:
            _, node, j, k, depth, rows = heapq.heappop(heap)
            c = self.codes[rows, j]
            go = c <= k if self.numeric[j] else c == k
            feature[node], threshold[node] = j, thresholds(j, k)
            left[node], right[node] = len(feature), len(feature) + 1
            for side in (rows[go], rows[~go]):
                push(len(feature), side, depth + 1)
                feature.append(-1)
                threshold.append(0.0)
                left.append(-1)
                right.append(-1)
                value.append(float(y[side].mean()))
                count.append(int(side.size))
            leaves += 1
        return LossTreeReference(
            feature=feature, threshold=threshold, left=left, right=right, value=value, count=count
        )


def fit_loss_model(
    prediction: ArrayLike,
    label: ArrayLike,
    features: Mapping[str, Column],
    rows: ArrayLike | None = None,
) -> LossModelReference | None:
    """The loss trees of a regression model from its reference rows (``None`` without a row
    whose prediction and label are both finite).

    ``features`` holds each feature's column: float (NaN for nulls) for a numeric feature, a
    sequence of categories (``None`` for null) for a categorical one; ``rows`` restricts the
    fit to some rows. The absolute-percentage-error tree skips the rows whose label is zero.
    Beyond :data:`MAX_INPUTS` features, those whose best single split explains the most of the
    absolute error are kept.
    """
    p = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    use = np.arange(p.size) if rows is None else np.asarray(rows, dtype=np.intp)
    use = use[np.isfinite(p[use]) & np.isfinite(y[use])]
    if not use.size:
        return None
    if use.size > MAX_ROWS:
        use = np.sort(np.random.default_rng(0).choice(use, MAX_ROWS, replace=False))
    names: list[str | None] = [None]
    numeric = [True]
    cuts: list[list[Any]] = []
    columns: list[NDArray[np.int64]] = []
    edges, codes = _numeric_codes(p[use])
    cuts.append(edges)
    columns.append(codes)
    for name in sorted(features):
        col = features[name]
        if isinstance(col, np.ndarray) and col.dtype != object:
            e, c = _numeric_codes(np.asarray(col, dtype=np.float64)[use])
            if not e:
                continue
            cuts.append(e)
            numeric.append(True)
        else:
            values = [col[i] for i in use.tolist()]
            cats, c = _categorical_codes(values)
            if len(cats) < 2 and int((c == len(cats)).sum()) == 0:
                continue
            cuts.append(cats)
            numeric.append(False)
        names.append(name)
        columns.append(c)
    width = max(INPUT_BINS, MAX_CATEGORIES) + 1
    matrix = np.column_stack(columns)
    err = np.abs(p[use] - y[use])
    leaf = min_leaf(use.size)
    if len(names) > MAX_INPUTS + 1:  # keep the prediction and the best single splits
        gains = []
        for j in range(1, len(names)):
            sub = _Grower(matrix[:, [j]], [numeric[j]], [len(cuts[j])], width, leaf)
            gains.append((sub.best(np.arange(use.size), err)[0], j))
        keep = [0, *sorted(j for _, j in sorted(gains, reverse=True)[:MAX_INPUTS])]
        names = [names[j] for j in keep]
        numeric = [numeric[j] for j in keep]
        cuts = [cuts[j] for j in keep]
        matrix = matrix[:, keep]

    def thresholds(j: int, k: int) -> float:
        return float(cuts[j][k]) if numeric[j] else float(k)

    trees: dict[str, LossTreeReference] = {}
    truth = y[use]
    for loss in LOSSES:
        if loss == "abs":
            target, sub = err, np.arange(use.size)
        elif loss == "sq":
            target, sub = err * err, np.arange(use.size)
        else:
            sub = np.flatnonzero(truth != 0)
            if not sub.size:
                continue
            target = err[sub] / np.abs(truth[sub])
        grower = _Grower(matrix[sub], numeric, [len(c) for c in cuts], width, min_leaf(sub.size))
        trees[loss] = grower.grow(target, thresholds)
    return LossModelReference(
        inputs=names,
        categories={
            n: list(c)
            for n, c, num in zip(names, cuts, numeric, strict=True)
            if n is not None and not num
        },
        trees=trees,
        labelled=int(use.size),
    )


def leaves_of(
    model: LossModelReference,
    prediction: ArrayLike,
    features: Mapping[str, Column] | Callable[[str], Column],
) -> dict[str, NDArray[np.int64]]:
    """Each tree's leaf (node number) of each row: ``prediction`` and the model's input
    features, given as columns by name (a mapping, or a function returning a column; a missing
    feature is null)."""
    p = np.asarray(prediction, dtype=np.float64)
    n = p.size
    get = features.get if isinstance(features, Mapping) else features
    x = np.empty((n, len(model.inputs)), dtype=np.float64)
    is_cat = np.zeros(len(model.inputs) + 1, dtype=bool)  # the last: leaves' dummy input
    for j, name in enumerate(model.inputs):
        if name is None:
            x[:, j] = p
            continue
        col = get(name)
        cats = model.categories.get(name)
        if cats is None:
            x[:, j] = np.nan if col is None else np.asarray(col, dtype=np.float64)
        else:
            is_cat[j] = True
            index = {c: float(i) for i, c in enumerate(cats)}
            x[:, j] = (
                -1.0
                if col is None
                else np.fromiter(
                    (index.get(v, -1.0) for v in col),
                    np.float64,
                    n,  # type: ignore[arg-type]
                )
            )
    x = np.column_stack([x, np.zeros(n)])  # leaves read a dummy column
    rows = np.arange(n)
    out = {}
    for loss, tree in model.trees.items():
        feat = np.asarray(tree.feature, dtype=np.int64)
        feat = np.where(feat < 0, x.shape[1] - 1, feat)
        thr = np.asarray(tree.threshold, dtype=np.float64)
        left = np.asarray(tree.left, dtype=np.int64)
        right = np.asarray(tree.right, dtype=np.int64)
        internal = left >= 0
        node = np.zeros(n, dtype=np.int64)
        for _ in range(MAX_DEPTH):
            if not internal[node].any():
                break
            f = feat[node]
            v = x[rows, f]
            t = thr[node]
            go = np.where(is_cat[f], v == t, v <= t)
            nxt = np.where(go, left[node], right[node])
            node = np.where(internal[node], nxt, node)
        out[loss] = node
    return out


def fold_losses(
    into: dict[str, dict[int, int]],
    model: LossModelReference,
    leaves: Mapping[str, NDArray[np.int64]],
    rows: NDArray[np.int64] | None = None,
) -> None:
    """Add the leaf counts of ``rows`` (all when ``None``) into ``into`` (tree -> leaf ->
    events), in place."""
    for loss, leaf in leaves.items():
        got = leaf if rows is None else leaf[rows]
        if not got.size:
            continue
        counts = np.bincount(got, minlength=len(model.trees[loss].value))
        nz = np.flatnonzero(counts)
        h = into.setdefault(loss, {})
        for b, k in zip(nz.tolist(), counts[nz].tolist(), strict=True):
            h[b] = h.get(b, 0) + k


def estimate(
    model: LossModelReference, counts: Mapping[str, Mapping[int, int]]
) -> dict[str, float]:
    """``mae``, ``rmse`` and ``mape`` of a window from its leaf counts (a figure is left out
    when its tree or counts are missing)."""
    out: dict[str, float] = {}
    for loss, metric in (("abs", "mae"), ("sq", "rmse"), ("pct", "mape")):
        tree, got = model.trees.get(loss), counts.get(loss)
        if tree is None or not got:
            continue
        values = tree.value
        total = sum(got.values())
        if total <= 0:
            continue
        mean = math.fsum(values[b] * k for b, k in got.items() if b < len(values)) / total
        out[metric] = math.sqrt(max(mean, 0.0)) if loss == "sq" else mean
    return out
