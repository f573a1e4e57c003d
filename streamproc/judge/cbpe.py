"""Classification performance, realised from labels and estimated from scores (CBPE).

Every figure here comes from counts on one fixed grid of score bins (the
:data:`~streamproc.aggregate.partials.CONFIDENCE_BINS` equal-width bins over [0, 1] that
outcome partials already use), so windows merge exactly and a replay computes the same numbers:

- a **window of predictions** keeps, per predicted class ``i`` and scored class ``j``, how many
  of its events predicted ``i`` with a score for ``j`` in each bin (:func:`fold_scores`);
- a **window of outcomes** keeps the same counts with the label in place of the prediction,
  and the confusion counts of prediction against label;
- the **baseline** keeps, per class ``j``, the probability that the label is ``j`` given the
  score for ``j`` in each bin: isotonic (pool adjacent violators) over the reference's
  labelled rows (:func:`fit_class_rates`), like NannyML's CBPE calibrates each class
  one-vs-rest.

The expected confusion matrix of a window replaces each event's unknown label by those
probabilities: the expected count of (predicted ``i``, label ``j``) is the sum over the events
predicted ``i`` of ``P(label = j | score_j)``, and each row is normalised to the events it holds
(:func:`expected_confusion`). Precision, recall, specificity and F1 follow from a confusion
matrix the same way whether it is expected or counted (:func:`from_confusion`): for a binary
model those of the positive class, for a multiclass model their macro average over classes
one-vs-rest. ROC AUC comes from the score histograms split by (expected or actual) label
(:func:`binned_auc`); pairs within one bin count one half, so it is the AUC of scores rounded
to the grid (within ~0.005 of the exact one for spread-out scores).

Each figure carries a sampling-noise band, ``value ± 3`` standard errors for the window's size
(binomial for the ratios, Hanley and McNeil for the AUC, the mean of the classes' variances
over ``K²`` for a macro average): a realised figure outside the estimate's band, or an estimate
outside the reference's, is more than sampling noise.

Examples
--------
A well calibrated binary model: half its events score 0.9 for "yes", half 0.2.

>>> import numpy as np
>>> rates = {"yes": np.linspace(0.005, 0.995, 100), "no": np.linspace(0.005, 0.995, 100)}
>>> joint = {"yes\\x1fyes": {89: 50}, "yes\\x1fno": {9: 50},
...          "no\\x1fyes": {19: 50}, "no\\x1fno": {79: 50}}
>>> est = estimate(joint, ["no", "yes"], "yes", rates)
>>> round(est["precision"][0], 3), round(est["recall"][0], 3)
(0.904, 0.821)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamproc.aggregate.partials import CONFIDENCE_BINS
from streamproc.aggregate.scores import SEP, Joint, score_bins

__all__ = [
    "BAND_SIGMAS",
    "METRICS",
    "SEP",
    "binned_auc",
    "estimate",
    "expected_confusion",
    "fit_class_rates",
    "from_confusion",
    "realise",
]

BAND_SIGMAS: Final = 3.0
METRICS: Final = ("accuracy", "roc_auc", "f1", "precision", "recall", "specificity")

Band = tuple[float, float, float]  # value, lower, upper


def _dense(h: Mapping[int, int] | None) -> NDArray[np.float64]:
    out = np.zeros(CONFIDENCE_BINS, dtype=np.float64)
    if h:
        out[np.fromiter(h.keys(), np.int64)] = np.fromiter(h.values(), np.float64)
    return out


def _column(joint: Joint, classes: Sequence[str], scored: str) -> NDArray[np.float64]:
    """Events with a score for ``scored``, per bin, whatever their class."""
    out = np.zeros(CONFIDENCE_BINS, dtype=np.float64)
    for c in classes:
        out += _dense(joint.get(f"{c}{SEP}{scored}"))
    return out


def _split(key: str) -> tuple[str, str]:
    a, _, b = key.partition(SEP)
    return a, b


def fit_class_rates(scores: ArrayLike, is_class: ArrayLike) -> list[float]:
    """``P(label = class | score bin)`` on the grid: isotonic in the score, fitted by pool
    adjacent violators on the per-bin label rates weighted by their counts; a bin with no
    reference row takes the rate of the nearest bin below that has some (above, at the start).

    >>> rates = fit_class_rates([0.1, 0.2, 0.8, 0.9, 0.95], [0, 1, 0, 1, 1])
    >>> [round(rates[b], 3) for b in (9, 19, 79, 89, 94)]
    [0.0, 0.5, 0.5, 1.0, 1.0]
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_class, dtype=np.float64)
    ok = np.isfinite(s) & (s >= 0.0) & (s <= 1.0)
    bins = score_bins(s[ok])
    n = np.bincount(bins, minlength=CONFIDENCE_BINS).astype(np.float64)
    k = np.bincount(bins, weights=y[ok], minlength=CONFIDENCE_BINS)
    seen = np.flatnonzero(n)
    if not seen.size:
        return [math.nan] * CONFIDENCE_BINS
    # pool adjacent violators over the bins that hold rows
    blocks: list[list[float]] = []  # [weight, rate, first bin index into seen, last]
    for i, b in enumerate(seen.tolist()):
        blocks.append([n[b], k[b] / n[b], i, i])
        while len(blocks) > 1 and blocks[-2][1] > blocks[-1][1]:
            w2, r2, _, last = blocks.pop()
            w1, r1, first, _ = blocks.pop()
            blocks.append([w1 + w2, (w1 * r1 + w2 * r2) / (w1 + w2), first, last])
    fitted = np.empty(seen.size)
    for _, rate, first, last in blocks:
        fitted[int(first) : int(last) + 1] = rate
    at = np.searchsorted(seen, np.arange(CONFIDENCE_BINS), side="right") - 1
    return fitted[np.maximum(at, 0)].tolist()


def expected_confusion(
    joint: Joint, classes: Sequence[str], rates: Mapping[str, ArrayLike]
) -> NDArray[np.float64]:
    """The expected confusion matrix (rows predicted, columns label, in ``classes`` order) of
    a window of predictions: row ``i`` holds the events predicted ``i``, spread over the
    labels by the calibrated probabilities of their scores, normalised to the row's events.
    """
    k = len(classes)
    cm = np.zeros((k, k))
    r = {c: np.asarray(rates[c], dtype=np.float64) for c in classes if c in rates}
    for i, ci in enumerate(classes):
        events = _dense(joint.get(f"{ci}{SEP}{ci}")).sum()
        if not events:
            continue
        row = np.array(
            [
                float(_dense(joint.get(f"{ci}{SEP}{cj}")) @ r[cj]) if cj in r else 0.0
                for cj in classes
            ]
        )
        total = row.sum()
        cm[i] = row * (events / total) if total > 0 else 0.0
    return cm


def _ratio(num: float, den: float) -> tuple[float, float]:
    """A ratio and its binomial variance (NaN when the denominator is empty)."""
    if den <= 0:
        return math.nan, math.nan
    v = float(num / den)
    return v, v * (1.0 - v) / float(den)


def _one_vs_rest(cm: NDArray[np.float64], j: int) -> dict[str, tuple[float, float]]:
    tp = cm[j, j]
    fp = cm[j].sum() - tp
    fn = cm[:, j].sum() - tp
    tn = cm.sum() - tp - fp - fn
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(tp, tp + 0.5 * (fp + fn)),
    }


def _band(value: float, var: float) -> Band:
    if not math.isfinite(value):
        return (math.nan, math.nan, math.nan)
    half = BAND_SIGMAS * math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan
    return (value, max(0.0, value - half), min(1.0, value + half))


def _macro(parts: list[tuple[float, float]]) -> tuple[float, float]:
    ok = [(v, var) for v, var in parts if math.isfinite(v)]
    if not ok:
        return math.nan, math.nan
    k = len(ok)
    return sum(v for v, _ in ok) / k, sum(var for _, var in ok) / (k * k)


def from_confusion(
    cm: NDArray[np.float64], classes: Sequence[str], positive: str | None
) -> dict[str, Band]:
    """Accuracy, precision, recall, specificity and F1 of a confusion matrix (rows predicted,
    columns label): the positive class's for a binary model, else macro one-vs-rest; each as
    ``(value, lower, upper)``.

    >>> cm = np.array([[40.0, 10.0], [5.0, 45.0]])  # predicted no/yes x label no/yes
    >>> m = from_confusion(cm, ["no", "yes"], "yes")
    >>> [round(m[k][0], 3) for k in ("accuracy", "precision", "recall", "specificity")]
    [0.85, 0.9, 0.818, 0.889]
    """
    out: dict[str, Band] = {}
    total = float(cm.sum())
    if total <= 0:
        return out
    out["accuracy"] = _band(*_ratio(float(np.trace(cm)), total))
    if positive is not None and positive in classes:
        parts = {m: [v] for m, v in _one_vs_rest(cm, list(classes).index(positive)).items()}
    else:
        per = [_one_vs_rest(cm, j) for j in range(len(classes))]
        parts = {m: [p[m] for p in per] for m in per[0]} if per else {}
    for m, vs in parts.items():
        out[m] = _band(*_macro(vs))
    return out


def binned_auc(pos: ArrayLike, neg: ArrayLike) -> Band:
    """ROC AUC from per-bin (possibly expected) counts of positives and negatives in score
    order, ties within a bin counting one half, with the Hanley-McNeil band.

    >>> round(binned_auc([0, 0, 5], [5, 0, 0])[0], 3), round(binned_auc([1, 1], [1, 1])[0], 3)
    (1.0, 0.5)
    """
    p = np.asarray(pos, dtype=np.float64)
    q = np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = float(p.sum()), float(q.sum())
    if n_pos <= 0 or n_neg <= 0:
        return (math.nan, math.nan, math.nan)
    above = n_pos - np.cumsum(p)  # positives in higher bins
    a = float((q * (above + 0.5 * p)).sum() / (n_pos * n_neg))
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return _band(a, var)


def _auc(per_class: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]],
         positive: str | None) -> Band:  # fmt: skip
    if positive is not None:
        if positive not in per_class:
            return (math.nan, math.nan, math.nan)
        return binned_auc(*per_class[positive])
    bands = [binned_auc(p, q) for p, q in per_class.values()]
    v, var = _macro([(b[0], ((b[0] - b[1]) / BAND_SIGMAS) ** 2) for b in bands])
    return _band(v, var)


def estimate(
    joint: Joint, classes: Sequence[str], positive: str | None, rates: Mapping[str, ArrayLike]
) -> dict[str, Any]:
    """CBPE of a window of predictions: each of :data:`METRICS` as ``(value, lower, upper)``,
    and ``confusion_matrix`` (expected counts, rows predicted, columns label)."""
    cm = expected_confusion(joint, classes, rates)
    out: dict[str, Any] = dict(from_confusion(cm, classes, positive))
    if not out:
        return out
    per_class = {}
    for cj in classes:
        if cj not in rates:
            continue
        n = _column(joint, classes, cj)
        r = np.asarray(rates[cj], dtype=np.float64)
        per_class[cj] = (n * r, n * (1.0 - r))
    out["roc_auc"] = _auc(per_class, positive)
    out["confusion_matrix"] = cm
    return out


def realise(
    confusion: Mapping[str, int], by_label: Joint, classes: Sequence[str], positive: str | None
) -> dict[str, Any]:
    """The same figures from labels: ``confusion`` counts ``"predicted\\x1flabel"``;
    ``by_label`` is :func:`fold_scores` of ``(label, scores)``."""
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)))
    for key, n in confusion.items():
        i, j = (index.get(c) for c in _split(key))
        if i is not None and j is not None:
            cm[i, j] += n
    out: dict[str, Any] = dict(from_confusion(cm, classes, positive))
    if not out:
        return out
    per_class = {}
    for cj in classes:
        pos = _dense(by_label.get(f"{cj}{SEP}{cj}"))
        allj = sum(
            (_dense(by_label.get(f"{ci}{SEP}{cj}")) for ci in classes), np.zeros(CONFIDENCE_BINS)
        )
        per_class[cj] = (pos, allj - pos)
    out["roc_auc"] = _auc(per_class, positive)
    out["confusion_matrix"] = cm
    return out
