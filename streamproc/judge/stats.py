"""The comparisons a monitor runs when a window closes: reference vs window, all vectorised.

Inputs are what the sketches hold: reference *probabilities* per bin or category (from the
reference sketch's ``probabilities()``) and window *counts* (the window sketch's ``hist`` or
``counts``). Numeric bins must be the same on both sides, which they are when both sketches
were built with the reference's ``reference_edges``.

Small samples
-------------
Every function here computes a number for any non-empty window; whether the number is worth a
verdict is the caller's decision. :data:`DEFAULT_MIN_WINDOW_COUNT` (100 events) is the
project's default floor and :func:`enough_samples` the check, taking the floor as a parameter
so each monitor can configure it. Below it PSI and JS mostly measure sampling noise: for a
window drawn from the reference's own 10-bin distribution, PSI averages 0.23 at 50 events
(95th percentile 0.76, past the usual 0.25 "major shift" reading) and 0.09 at 100 events
(95th percentile 0.18). :func:`chi2_categorical` has its own, standard guard: categories are
pooled until every expected count reaches ``min_expected``.

Examples
--------
>>> import numpy as np
>>> ref = np.array([0.25, 0.25, 0.25, 0.25])
>>> window = np.array([10, 20, 30, 40])
>>> enough_samples(int(window.sum()))
True
>>> round(psi(ref, window), 4), round(js_divergence(ref, window), 4)
(0.2282, 0.0402)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy import stats as sst

from streamproc.sketch import OTHER, CalibrationSketch

__all__ = [
    "DEFAULT_MIN_WINDOW_COUNT",
    "CalibrationExcess",
    "CalibrationMap",
    "calibration_excess",
    "cbpe_estimated_accuracy",
    "cbpe_estimated_accuracy_from_counts",
    "chi2_categorical",
    "enough_samples",
    "entropy",
    "expected_calibration_error",
    "fit_calibration_map",
    "js_distance",
    "js_divergence",
    "ks_binned",
    "new_categories",
    "null_rate_delta",
    "out_of_range_share",
    "psi",
    "top1_rate",
    "vanished_categories",
]

DEFAULT_MIN_WINDOW_COUNT: Final = 100
"""Fewest non-null events in a window before a monitor gives a drift verdict (default)."""

_LN2: Final = math.log(2.0)


def enough_samples(count: int, min_count: int = DEFAULT_MIN_WINDOW_COUNT) -> bool:
    """Whether a window of ``count`` events is large enough for a verdict.

    Parameters
    ----------
    count
        Events in the window (non-null values for a feature).
    min_count
        The floor; :data:`DEFAULT_MIN_WINDOW_COUNT` unless the monitor configures another.

    Examples
    --------
    >>> enough_samples(99), enough_samples(100), enough_samples(20, min_count=10)
    (False, True, True)
    """
    return count >= min_count


def _probs(ref_probs: ArrayLike) -> NDArray[np.float64]:
    p = np.asarray(ref_probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("reference probabilities must be a non-empty 1-D array")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("reference probabilities must be finite and non-negative")
    if not math.isclose(float(p.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"reference probabilities must sum to 1, got {p.sum()!r}")
    return p


def _counts(window_counts: ArrayLike, size: int) -> tuple[NDArray[np.float64], float]:
    c = np.asarray(window_counts, dtype=np.float64)
    if c.shape != (size,):
        raise ValueError(f"window counts have shape {c.shape}, reference has {size} bins")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("window counts must be finite and non-negative")
    total = float(c.sum())
    if total <= 0:
        raise ValueError("the window is empty")
    return c, total


# -- numeric / binned distributions -------------------------------------------------------------


def psi(ref_probs: ArrayLike, window_counts: ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index between reference and window over the same bins.

    ``PSI = sum_i (q_i - p_i) * ln(q_i / p_i)`` with ``p`` the reference and ``q`` the window
    proportions. A bin empty on either side would make the term infinite, so both proportions
    are floored at ``eps`` first (no renormalisation): an empty bin contributes as if it held
    ``eps`` of the mass. With ``eps=1e-4`` a bin holding 10 % on one side and nothing on the
    other contributes ``0.1 * ln(1000) = 0.69``.

    Parameters
    ----------
    ref_probs
        Reference proportion per bin (sums to 1).
    window_counts
        Window count per bin.
    eps
        Floor applied to both proportions.

    Returns
    -------
    float
        PSI >= 0. Usual reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift.

    Examples
    --------
    >>> round(psi([0.5, 0.5], [30, 70]), 6)  # 0.2*ln(0.7/0.5) - 0.2*ln(0.3/0.5)
    0.16946
    >>> psi([0.5, 0.5], [50, 50])
    0.0
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    p = _probs(ref_probs)
    c, total = _counts(window_counts, p.size)
    p = np.maximum(p, eps)
    q = np.maximum(c / total, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_divergence(ref_probs: ArrayLike, window_counts: ArrayLike) -> float:
    """Jensen-Shannon *divergence* (base 2, in [0, 1]) between reference and window.

    ``JS = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``, logarithms base 2. This is
    the divergence, the square of what ``scipy.spatial.distance.jensenshannon`` returns (see
    :func:`js_distance`); our alert thresholds (0.05 warning, 0.1 critical) are on this value.
    Empty bins need no floor: ``0 * log 0 = 0``.

    Examples
    --------
    >>> js_divergence([1.0, 0.0], [0, 7])  # disjoint supports
    1.0
    >>> js_divergence([0.5, 0.5], [3, 3])
    0.0
    """
    p = _probs(ref_probs)
    c, total = _counts(window_counts, p.size)
    q = c / total
    m = 0.5 * (p + q)
    js = 0.5 * (special.rel_entr(p, m).sum() + special.rel_entr(q, m).sum()) / _LN2
    return float(min(max(js, 0.0), 1.0))


def js_distance(ref_probs: ArrayLike, window_counts: ArrayLike) -> float:
    """Jensen-Shannon distance, ``sqrt(js_divergence)`` (scipy's ``jensenshannon``, base 2).

    Examples
    --------
    >>> round(js_distance([0.5, 0.5], [1, 3]), 6)
    0.220896
    """
    return math.sqrt(js_divergence(ref_probs, window_counts))


def ks_binned(
    ref_probs: ArrayLike, window_counts: ArrayLike, ref_n: float | None = None
) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and p-value from binned reference and window.

    ``D`` is the largest gap between the reference and window CDFs *at the shared bin edges*.
    The exact statistic is a supremum over every point, so ``D`` is a lower bound on it (equal
    when every sample value is an edge) and the p-value an upper bound: binning can hide a shift
    inside a bin, never invent one.

    The p-value is the two-sided asymptotic one scipy's ``ks_2samp(method="asymp")`` uses:
    ``kstwo.sf(D, round(n_eff))`` with ``n_eff = n * m / (n + m)`` for reference size ``n``
    and window size ``m`` (computed by :func:`kstwo_sf`, as scipy does but faster in the
    tail). With ``ref_n`` unknown (``None``) or infinite the reference is
    treated as the true distribution and ``n_eff = m`` (the one-sample test).

    Parameters
    ----------
    ref_probs
        Reference proportion per bin (sums to 1).
    window_counts
        Window count per bin.
    ref_n
        Number of reference values behind ``ref_probs``, or ``None``/``inf``.

    Returns
    -------
    tuple of float
        ``(D, p_value)``.

    Examples
    --------
    >>> d, p = ks_binned([0.25, 0.25, 0.25, 0.25], [40, 30, 20, 10])
    >>> round(d, 6), p < 0.001
    (0.2, True)
    """
    p = _probs(ref_probs)
    c, m = _counts(window_counts, p.size)
    if p.size < 2:
        return 0.0, 1.0
    gaps = np.abs(np.cumsum(p)[:-1] - np.cumsum(c)[:-1] / m)
    d = float(min(gaps.max(), 1.0))
    if ref_n is None or math.isinf(ref_n):
        n_eff = m
    else:
        if not ref_n > 0:
            raise ValueError(f"ref_n must be > 0, got {ref_n}")
        n_eff = ref_n * m / (ref_n + m)
    pvalue = kstwo_sf(d, max(1, round(n_eff)))
    return d, min(max(pvalue, 0.0), 1.0)


def kstwo_sf(d: float, n: int) -> float:
    """``scipy.stats.kstwo.sf(d, n)``: the chance that the two-sided one-sample KS statistic of
    ``n`` values reaches ``d``.

    It follows scipy's choice of method (Simard and L'Ecuyer 2011) and its result, to about
    1e-10 relative, in less time where scipy's is long: in the tail (``n * d**2 >= 2.2``) of
    more than 140 values, scipy sums the ``n * (1 - d)`` terms of twice the one-sided
    Smirnov probability one by one, about 1.2 ms per 1,000 values; :func:`_smirnov_sf`
    sums them as arrays, about 15x faster. That tail is where a window of many rows lands as
    soon as it differs from its reference a little, which is how drift looks: with every
    numeric feature 0.1 sd off, 150,000 rows per window and a baseline of 100,000, the judge
    spent 2.8 s of CPU per window of the synthetic model (20 numeric features in 8 segments),
    0.24 s with this (``bench/monitor_throughput.py --drift``).

    Examples
    --------
    >>> from scipy import stats as sst
    >>> exact = float(sst.kstwo.sf(0.0125, 20_000))
    >>> abs(kstwo_sf(0.0125, 20_000) - exact) / exact < 1e-9
    True
    """
    t = n * d
    nx2 = t * d
    if n > 140 and 2.2 <= nx2 < 370.0 and 1.0 < t < n - 1 and d < 0.5:
        return min(max(2.0 * _smirnov_sf(n, d), 0.0), 1.0)
    return float(sst.kstwo.sf(d, n))


def _smirnov_sf(n: int, d: float) -> float:
    """The one-sided Smirnov probability ``P(D+_n >= d)`` (``scipy.special.smirnov(n, d)``),
    by its exact finite sum ``d * sum_j C(n, j) (1 - d - j/n)**(n - j) (d + j/n)**(j - 1)``
    over ``0 <= j <= n (1 - d)``, every term at once in logs."""
    j = np.arange(0, math.floor(n * (1.0 - d)) + 1, dtype=np.float64)
    below = np.maximum(n * (1.0 - d) - j, 0.0) / n  # 1 - d - j/n, never under 0 by rounding
    with np.errstate(divide="ignore"):  # log(0): a term of 0
        logs = (
            special.gammaln(n + 1.0)
            - special.gammaln(j + 1.0)
            - special.gammaln(n - j + 1.0)
            + (n - j) * np.log(below)
            + (j - 1.0) * np.log(d + j / n)
        )
    top = float(logs.max())
    return d * math.exp(top) * float(np.exp(logs - top).sum())


# -- categorical --------------------------------------------------------------------------------


def chi2_categorical(
    ref_probs: Mapping[str, float], window_counts: Mapping[str, int], min_expected: float = 5.0
) -> tuple[float, float, int]:
    """Pearson chi-squared goodness of fit of window counts to reference proportions.

    Expected counts are ``N * p_c`` for a window of ``N`` values. Following Cochran's rule,
    categories whose expected count is under ``min_expected`` are pooled into one bin, and so
    are categories the reference never saw (expected 0, which would otherwise divide by zero);
    if the pooled bin itself still expects fewer than ``min_expected``, the category with the
    smallest expected count joins it, until it does. Degrees of freedom are the number of bins
    left minus one. With fewer than two bins there is nothing to test: ``(0.0, 1.0, 0)``.

    Reference proportions are renormalised over the categories given.

    Parameters
    ----------
    ref_probs
        Reference proportion per category.
    window_counts
        Window count per category.
    min_expected
        Smallest expected count a bin may have.

    Returns
    -------
    tuple
        ``(statistic, p_value, dof)``.

    Raises
    ------
    ValueError
        Empty window or reference, or negative numbers.

    Examples
    --------
    >>> stat, p, dof = chi2_categorical({"a": 0.5, "b": 0.5}, {"a": 60, "b": 40})
    >>> round(stat, 6), round(p, 6), dof  # (60-50)^2/50 + (40-50)^2/50
    (4.0, 0.0455, 1)

    Rare "d" and unseen "z" are pooled (expected 4 + 0); that is under 5, so "c" (expected 6)
    joins them: bins a, b, {c, d, z} observe 90, 95, 15 against 100, 90, 10.

    >>> ref = {"a": 0.5, "b": 0.45, "c": 0.03, "d": 0.02}
    >>> stat, p, dof = chi2_categorical(ref, {"a": 90, "b": 95, "c": 5, "z": 10})
    >>> round(stat, 6), dof  # 10^2/100 + 5^2/90 + 5^2/10
    (3.777778, 2)

    A window of 100 against a reference 98 % "a" leaves one bin, nothing to test (new
    categories are :func:`new_categories`' job):

    >>> chi2_categorical({"a": 0.98, "b": 0.01, "c": 0.01}, {"a": 95, "z": 5})
    (0.0, 1.0, 0)
    """
    ref_total = float(sum(ref_probs.values()))
    n = float(sum(window_counts.values()))
    if any(v < 0 for v in ref_probs.values()) or any(v < 0 for v in window_counts.values()):
        raise ValueError("probabilities and counts must be non-negative")
    if ref_total <= 0:
        raise ValueError("the reference is empty")
    if n <= 0:
        raise ValueError("the window is empty")
    cats = list(dict.fromkeys([*ref_probs, *window_counts]))
    expected = {c: n * ref_probs.get(c, 0.0) / ref_total for c in cats}
    observed = {c: float(window_counts.get(c, 0)) for c in cats}
    regular = [c for c in cats if expected[c] >= min_expected]
    pooled = [c for c in cats if expected[c] < min_expected]
    pool_exp = sum(expected[c] for c in pooled)
    pool_obs = sum(observed[c] for c in pooled)
    if pooled and pool_obs + pool_exp > 0:
        regular.sort(key=lambda c: (expected[c], c))
        while pool_exp < min_expected and regular:
            c = regular.pop(0)
            pool_exp += expected[c]
            pool_obs += observed[c]
        obs = [observed[c] for c in regular] + [pool_obs]
        exp = [expected[c] for c in regular] + [pool_exp]
    else:
        obs = [observed[c] for c in regular]
        exp = [expected[c] for c in regular]
    if len(obs) < 2:
        return 0.0, 1.0, 0
    o = np.asarray(obs)
    e = np.asarray(exp)
    stat = float(np.sum((o - e) ** 2 / e))
    dof = len(obs) - 1
    return stat, chi2_sf(stat, dof), dof


def chi2_sf(x: float, dof: int) -> float:
    """``scipy.stats.chi2.sf(x, dof)``, the same number, by the function it calls
    (``scipy.special.chdtrc``) without its argument handling: 1 µs instead of 40, for a
    check run on every feature of every segment of every window.

    >>> from scipy import stats as sst
    >>> chi2_sf(12.3, 9) == float(sst.chi2.sf(12.3, 9)), chi2_sf(0.0, 3)
    (True, 1.0)
    """
    return float(special.chdtrc(dof, x))


def new_categories(ref: Mapping[str, float], window: Mapping[str, int]) -> list[str]:
    """Categories present in the window but absent (or 0) in the reference, sorted.

    ``"__other__"`` (sketch overflow) is never reported.

    Examples
    --------
    >>> new_categories({"a": 0.9, "b": 0.1, "c": 0.0}, {"a": 5, "c": 1, "d": 2, "e": 0})
    ['c', 'd']
    """
    return sorted(c for c, n in window.items() if n > 0 and ref.get(c, 0) <= 0 and c != OTHER)


def vanished_categories(
    ref: Mapping[str, float], window: Mapping[str, int], min_ref_prob: float = 0.01
) -> list[str]:
    """Reference categories with proportion >= ``min_ref_prob`` that the window never saw.

    A category of proportion ``p`` is missing from ``n`` independent events by chance with
    probability ``(1 - p) ** n``; pick ``min_ref_prob`` with the window size in mind
    (``p = 0.05`` over 100 events: 0.6 %).

    Examples
    --------
    >>> vanished_categories({"a": 0.5, "b": 0.45, "c": 0.05}, {"a": 7}, min_ref_prob=0.1)
    ['b']
    """
    return sorted(
        c for c, p in ref.items() if p >= min_ref_prob and window.get(c, 0) <= 0 and c != OTHER
    )


# -- data quality and output shape -------------------------------------------------------------


def null_rate_delta(ref_null_rate: float, window_nulls: int, window_total: int) -> float:
    """Window null rate minus reference null rate (positive: more nulls than usual).

    Examples
    --------
    >>> round(null_rate_delta(0.01, window_nulls=6, window_total=200), 6)
    0.02
    """
    if window_total <= 0:
        raise ValueError("the window is empty")
    return window_nulls / window_total - ref_null_rate


def out_of_range_share(below: int, above: int, count: int) -> float:
    """Share of the window's non-null values outside the reference's [min, max].

    Examples
    --------
    >>> out_of_range_share(below=3, above=2, count=200)
    0.025
    """
    if count <= 0:
        raise ValueError("the window is empty")
    return (below + above) / count


def entropy(probs: ArrayLike, base: float = 2.0) -> float:
    """Shannon entropy of a distribution given as proportions or counts (normalised first).

    Examples
    --------
    >>> entropy([0.5, 0.5]), entropy([4, 4, 4, 4]), entropy([1, 0])
    (1.0, 2.0, 0.0)
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or np.any(p < 0) or not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be a 1-D array of finite non-negative numbers")
    total = p.sum()
    if total <= 0:
        raise ValueError("the distribution is empty")
    h = float(special.entr(p / total).sum() / math.log(base))
    return h + 0.0  # turns -0.0 into 0.0


def top1_rate(counts: Mapping[str, int] | ArrayLike) -> float:
    """Share of the most frequent value (e.g. the predicted class a model collapses onto).

    Examples
    --------
    >>> top1_rate({"cat": 6, "dog": 3, "fox": 1}), top1_rate([1, 1])
    (0.6, 0.5)
    """
    values = list(counts.values()) if isinstance(counts, Mapping) else counts
    c = np.asarray(values, dtype=np.float64)
    if c.size == 0 or c.sum() <= 0:
        raise ValueError("the distribution is empty")
    return float(c.max() / c.sum())


# -- calibration and CBPE ------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanBand:
    """Where a window's mean of a per-event statistic may fall by sampling alone."""

    p: float  # two-sided: the chance of a window mean at least this far from the reference's
    lower: float  # the band at the significance asked for
    upper: float


def mean_band(
    value: float,
    mean: float,
    sd: float,
    skew: float,
    n: int,
    ref_n: int,
    alpha: float,
) -> MeanBand:
    """Is a window's mean ``value`` of ``n`` events beyond what sampling gives, for a statistic
    whose per-event ``mean``, ``sd`` and ``skew`` were measured on ``ref_n`` reference events?

    Under no change, the window mean minus the reference mean has variance
    ``sd² (1/n + 1/ref_n)`` and third cumulant ``skew sd³ (1/n² - 1/ref_n²)``; a Pearson
    type III distribution (a shifted gamma) with those three moments gives its two tails
    (a skewed statistic, like a squared reconstruction error, has a long right tail that a
    normal band would cut short). The band is centred on the reference mean.

    >>> b = mean_band(1.3, 1.0, 1.0, 2.0, 400, 10_000, 1e-4)
    >>> round(b.lower, 3), round(b.upper, 3), b.p < 1e-4
    (0.813, 1.21, True)
    >>> mean_band(1.05, 1.0, 1.0, 2.0, 400, 10_000, 1e-4).p > 0.1
    True
    """
    var = sd * sd * (1.0 / n + (1.0 / ref_n if ref_n else 0.0))
    if not var > 0:
        return MeanBand(0.0 if value != mean else 1.0, mean, mean)
    scale = math.sqrt(var)
    third = skew * sd**3 * (1.0 / n**2 - (1.0 / ref_n**2 if ref_n else 0.0))
    g = max(min(third / scale**3, 10.0), -10.0)
    dist = sst.pearson3(g, loc=mean, scale=scale)
    p = float(min(1.0, 2.0 * min(dist.sf(value), dist.cdf(value))))
    return MeanBand(p, float(dist.ppf(alpha / 2)), float(dist.isf(alpha / 2)))


def expected_calibration_error(confidences: ArrayLike, correct: ArrayLike, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width, right-closed confidence bins.

    ``ECE = sum_b (n_b / N) * |accuracy_b - mean_confidence_b|``; the same number
    :meth:`CalibrationSketch.expected_calibration_error` gives for the same data, so windows
    can be binned as they arrive and merged.

    Examples
    --------
    >>> round(expected_calibration_error([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 0]), 12)
    0.15
    """
    sketch = CalibrationSketch(bins)
    sketch.update_many(confidences, correct)
    return sketch.expected_calibration_error()


@dataclass(frozen=True)
class CalibrationExcess:
    """A window's calibration error against what the reference's calibration predicts.

    Attributes
    ----------
    ece
        The window's expected calibration error.
    reference_ece
        The ECE the reference's accuracy per bin gives at the window's own confidences (so a
        window with another confidence mix is compared like for like).
    excess
        ``ece - reference_ece``.
    noise_bound
        What ``excess`` may reach by sampling alone with probability under ``alpha``.
    """

    ece: float
    reference_ece: float
    excess: float
    noise_bound: float


def calibration_excess(
    counts: ArrayLike,
    sum_confidence: ArrayLike,
    correct: ArrayLike,
    reference_accuracy: ArrayLike,
    reference_counts: ArrayLike,
    alpha: float,
) -> CalibrationExcess:
    """Window ECE, the reference's ECE at the window's confidences, and a sampling-noise bound.

    With the model unchanged, a bin's window accuracy differs from the reference's by
    sampling noise only, with variance ``a (1 - a) (1 / n_b + 1 / m_b)`` (``a`` the reference
    accuracy, ``n_b`` and ``m_b`` the window and reference counts), and ``ece - reference_ece``
    is at most ``sum_b w_b |acc_b - a_b|``. Bounding every bin at once (Bonferroni over the
    non-empty bins, two-sided) gives ``noise_bound``: conservative, never below the truth.

    Examples
    --------
    >>> r = calibration_excess([0, 1000], [0.0, 900.0], [0, 700], [0.5, 0.9], [100, 1000], 1e-4)
    >>> round(r.ece, 3), round(r.reference_ece, 3), round(r.excess, 3)
    (0.2, 0.0, 0.2)
    >>> r.noise_bound < 0.1
    True
    """
    n = np.asarray(counts, dtype=np.float64)
    conf = np.asarray(sum_confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    ref_acc = np.asarray(reference_accuracy, dtype=np.float64)
    m = np.asarray(reference_counts, dtype=np.float64)
    total = n.sum()
    if total <= 0:
        raise ValueError("no labelled predictions")
    filled = n > 0
    w = n[filled] / total
    mean_conf = conf[filled] / n[filled]
    acc = right[filled] / n[filled]
    a = ref_acc[filled]
    ece = float((w * np.abs(acc - mean_conf)).sum())
    ref_ece = float((w * np.abs(a - mean_conf)).sum())
    with np.errstate(divide="ignore"):
        inv_m = np.where(m[filled] > 0, 1.0 / m[filled], 1.0)
    # A reference accuracy of exactly 0 or 1 still has sampling noise: floor the variance.
    var = np.maximum(a * (1.0 - a), 1.0 / (n[filled] + 1.0)) * (1.0 / n[filled] + inv_m)
    z = float(sst.norm.isf(alpha / (2.0 * int(filled.sum()))))
    bound = z * float((w * np.sqrt(var)).sum())
    return CalibrationExcess(ece, ref_ece, ece - ref_ece, bound)


def _pava(values: NDArray[np.float64], weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Weighted pool-adjacent-violators: the closest non-decreasing sequence (weighted L2)."""
    means: list[float] = []
    wsum: list[float] = []
    sizes: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        means.append(v)
        wsum.append(w)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            w2 = wsum[-2] + wsum[-1]
            means[-2] = (means[-2] * wsum[-2] + means[-1] * wsum[-1]) / w2
            wsum[-2] = w2
            sizes[-2] += sizes[-1]
            del means[-1], wsum[-1], sizes[-1]
    return np.repeat(np.asarray(means), sizes)


@dataclass(frozen=True, eq=False)
class CalibrationMap:
    """Observed accuracy per confidence bin, learned from labelled reference data (for CBPE).

    Attributes
    ----------
    edges
        Inner bin edges, right-closed bins (``calibration_edges(bins)``).
    accuracy
        Accuracy assigned to each bin.
    counts
        Reference predictions per bin.
    """

    edges: NDArray[np.float64]
    accuracy: NDArray[np.float64]
    counts: NDArray[np.int64]

    @classmethod
    def from_sketch(cls, sketch: CalibrationSketch, monotone: bool = True) -> CalibrationMap:
        """Build the map from a reference :class:`CalibrationSketch`.

        Each bin gets its observed accuracy. With ``monotone`` the accuracies are made
        non-decreasing in confidence by count-weighted pool-adjacent-violators (isotonic
        regression over bins), which removes the wiggles of sparsely populated bins. Bins the
        reference never populated take the accuracy interpolated between their populated
        neighbours (the nearest one at either end).

        Raises
        ------
        ValueError
            The sketch is empty.
        """
        counts = sketch.count
        filled = counts > 0
        if not filled.any():
            raise ValueError("cannot learn a calibration map from an empty sketch")
        acc = sketch.accuracy[filled]
        if monotone:
            acc = _pava(acc, counts[filled].astype(np.float64))
        centers = (np.arange(sketch.bins) + 0.5) / sketch.bins
        full = np.interp(centers, centers[filled], acc)
        return cls(edges=sketch.edges, accuracy=full, counts=counts)

    def accuracy_for(self, confidences: ArrayLike) -> NDArray[np.float64]:
        """Accuracy the map assigns to each confidence."""
        c = np.asarray(confidences, dtype=np.float64)
        return self.accuracy[np.searchsorted(self.edges, c, side="left")]


def fit_calibration_map(
    confidences: ArrayLike, correct: ArrayLike, bins: int = 10, monotone: bool = True
) -> CalibrationMap:
    """Learn a :class:`CalibrationMap` from labelled reference predictions.

    Examples
    --------
    >>> cmap = fit_calibration_map([0.2, 0.3, 0.8, 0.9], [0, 1, 1, 1], bins=2)
    >>> cmap.accuracy.tolist()
    [0.5, 1.0]
    """
    sketch = CalibrationSketch(bins)
    sketch.update_many(confidences, correct)
    return CalibrationMap.from_sketch(sketch, monotone=monotone)


def cbpe_estimated_accuracy(calibration_map: CalibrationMap, confidences: ArrayLike) -> float:
    """Confidence-based performance estimation: expected accuracy of unlabelled predictions.

    The mean, over the window's predictions, of the accuracy the reference showed at their
    confidence. Valid while the relation confidence -> accuracy holds (no concept drift);
    compare with realised accuracy once labels arrive.

    Examples
    --------
    >>> cmap = fit_calibration_map([0.2, 0.3, 0.8, 0.9], [0, 1, 1, 1], bins=2)
    >>> cbpe_estimated_accuracy(cmap, [0.1, 0.9, 0.95, 0.99])
    0.875
    """
    c = np.asarray(confidences, dtype=np.float64)
    if c.size == 0:
        raise ValueError("no confidences")
    return float(calibration_map.accuracy_for(c).mean())


def cbpe_estimated_accuracy_from_counts(
    calibration_map: CalibrationMap, bin_counts: ArrayLike
) -> float:
    """CBPE from binned confidences (e.g. ``NumericSketch(cmap.edges).hist`` of a window).

    Examples
    --------
    >>> cmap = fit_calibration_map([0.2, 0.3, 0.8, 0.9], [0, 1, 1, 1], bins=2)
    >>> cbpe_estimated_accuracy_from_counts(cmap, [1, 3])
    0.875
    """
    c = np.asarray(bin_counts, dtype=np.float64)
    if c.shape != calibration_map.accuracy.shape:
        raise ValueError(f"{c.size} bin counts for {calibration_map.accuracy.size} bins")
    total = c.sum()
    if total <= 0:
        raise ValueError("no confidences")
    return float((c * calibration_map.accuracy).sum() / total)
