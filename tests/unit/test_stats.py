"""Window-close statistics, checked against scipy and against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sst
from scipy.spatial.distance import jensenshannon

from streamproc.judge.stats import (
    DEFAULT_MIN_WINDOW_COUNT,
    CalibrationMap,
    calibration_excess,
    cbpe_estimated_accuracy,
    cbpe_estimated_accuracy_from_counts,
    chi2_categorical,
    chi2_sf,
    enough_samples,
    entropy,
    expected_calibration_error,
    fit_calibration_map,
    js_distance,
    js_divergence,
    ks_binned,
    kstwo_sf,
    new_categories,
    null_rate_delta,
    out_of_range_share,
    psi,
    top1_rate,
    vanished_categories,
)
from streamproc.sketch import CalibrationSketch, NumericSketch, reference_edges

# -- PSI ----------------------------------------------------------------------------------------


def test_psi_matches_hand_computed_value() -> None:
    ref = [0.2, 0.3, 0.5]
    window = [30, 30, 40]  # proportions 0.3, 0.3, 0.4
    by_hand = (0.3 - 0.2) * math.log(0.3 / 0.2) + 0.0 + (0.4 - 0.5) * math.log(0.4 / 0.5)
    assert psi(ref, window) == pytest.approx(by_hand, rel=1e-12)


def test_psi_floors_empty_bins_at_eps_on_both_sides() -> None:
    by_hand = (0.9 - 1.0) * math.log(0.9 / 1.0) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert psi([1.0, 0.0], [90, 10]) == pytest.approx(by_hand, rel=1e-12)
    assert psi([1.0, 0.0], [90, 10], eps=1e-3) < psi([1.0, 0.0], [90, 10])
    assert psi([0.5, 0.5, 0.0], [50, 50, 0]) == 0.0


def test_psi_is_symmetric_in_reference_and_window_proportions() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(p, q * 400) == pytest.approx(psi(q, p * 400), rel=1e-12)


@pytest.mark.parametrize(
    ("ref", "window", "message"),
    [
        ([0.5, 0.5], [1, 2, 3], "shape"),
        ([0.5, 0.5], [0, 0], "empty"),
        ([0.5, 0.6], [1, 1], "sum to 1"),
        ([1.5, -0.5], [1, 1], "non-negative"),
        ([0.5, 0.5], [-1, 3], "non-negative"),
    ],
)
def test_psi_rejects_mismatched_or_invalid_inputs(ref: list, window: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        psi(ref, window)


# -- Jensen-Shannon -----------------------------------------------------------------------------


def test_js_divergence_is_the_square_of_scipys_base2_distance() -> None:
    rng = np.random.default_rng(20)
    for _ in range(20):
        p = rng.dirichlet(np.ones(8))
        counts = rng.integers(0, 50, 8)
        counts[0] += 1
        scipy_distance = jensenshannon(p, counts / counts.sum(), base=2)
        assert js_divergence(p, counts) == pytest.approx(scipy_distance**2, rel=1e-9, abs=1e-15)
        assert js_distance(p, counts) == pytest.approx(scipy_distance, rel=1e-9, abs=1e-12)


def test_js_divergence_is_zero_for_identical_and_one_for_disjoint_distributions() -> None:
    assert js_divergence([0.2, 0.8], [20, 80]) == 0.0
    assert js_divergence([0.0, 0.0, 1.0], [3, 4, 0]) == pytest.approx(1.0, abs=1e-15)


# -- KS -----------------------------------------------------------------------------------------


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    s = NumericSketch(edges)
    s.update_many(values)
    return s.hist


def test_binned_ks_equals_scipy_two_sample_ks_when_every_value_is_an_edge() -> None:
    rng = np.random.default_rng(21)
    ref = rng.normal(0.0, 1.0, 3000)
    window = rng.normal(0.15, 1.1, 800)
    edges = np.unique(np.concatenate([ref, window]))
    d, p = ks_binned(_binned(ref, edges) / ref.size, _binned(window, edges), ref_n=ref.size)
    exact = sst.ks_2samp(ref, window, method="asymp")
    assert d == pytest.approx(exact.statistic, abs=1e-12)
    assert p == pytest.approx(exact.pvalue, rel=1e-9)


def test_binned_ks_with_unknown_reference_size_is_scipys_one_sample_test() -> None:
    window = np.random.default_rng(22).normal(0.1, 1.0, 400)
    # each value and the point just below it are edges, so both sides of every ECDF step count
    edges = np.unique(np.concatenate([window, np.nextafter(window, -np.inf)]))
    # norm.cdf at adjacent floats can step down by 1e-17; clip that rounding away
    ref_probs = np.maximum(np.diff(np.concatenate([[0.0], sst.norm.cdf(edges), [1.0]])), 0.0)
    d, p = ks_binned(ref_probs, _binned(window, edges))
    exact = sst.kstest(window, "norm", method="exact")
    assert d == pytest.approx(exact.statistic, abs=1e-12)
    assert p == pytest.approx(exact.pvalue, rel=1e-9)
    assert ks_binned(ref_probs, _binned(window, edges), ref_n=math.inf) == (d, p)


def test_coarse_binned_ks_is_a_lower_bound_on_the_exact_statistic() -> None:
    rng = np.random.default_rng(23)
    ref = rng.normal(size=5000)
    edges = reference_edges(ref, bins=20)
    for shift in (0.0, 0.1, 0.3):
        window = rng.normal(shift, 1.0, 1000)
        d, p = ks_binned(_binned(ref, edges) / ref.size, _binned(window, edges), ref_n=ref.size)
        exact = sst.ks_2samp(ref, window, method="asymp")
        assert d <= exact.statistic + 1e-12
        assert p >= exact.pvalue - 1e-12
        assert d >= exact.statistic - 0.05  # 20 quantile bins lose little


# Every branch of scipy's kstwo.sf (Simard and L'Ecuyer): n up to 140 and past it, the
# Ruben-Gambino ends, d >= 0.5, the tail of n d**2 from 2.2 (summed here) and up to 370 (0).
KSTWO_CASES = [
    (k / math.sqrt(n), n)
    for n in (1, 2, 7, 140, 141, 500, 3_000, 20_000, 100_000, 100_001)
    for k in (0.3, 0.8, 1.2, 1.48, 1.49, 2.0, 3.0, 8.0, 19.2, 19.3)
    if k / math.sqrt(n) < 1.2
] + [
    (d, n)
    for n in (141, 5_000)
    for d in (0.0, 1.0 / n, 1.2 / n, 0.49, 0.5, 0.7, (n - 1.5) / n, 1.0)
]


@pytest.mark.parametrize("dof", [1, 2, 9, 49, 199])
def test_chi2_sf_is_scipys_to_the_last_bit(dof: int) -> None:
    xs = np.concatenate([[0.0, 1e-12, 1.0, dof, 10.0 * dof, 1e4, np.inf],
                         np.random.default_rng(dof).exponential(dof, 500)])  # fmt: skip
    assert [chi2_sf(float(x), dof) for x in xs] == [float(sst.chi2.sf(x, dof)) for x in xs]


@pytest.mark.parametrize(("d", "n"), KSTWO_CASES)
def test_kstwo_sf_is_scipys_in_every_branch(d: float, n: int) -> None:
    exact = float(sst.kstwo.sf(d, n))
    assert kstwo_sf(d, n) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_kstwo_sf_in_the_tail_of_a_large_window_sums_the_terms_as_arrays() -> None:
    # n d**2 = 4: what a window of 60,000 rows 0.8% off its reference gives, p about 7e-4,
    # the case scipy takes ~70 ms for (bench/monitor_throughput.py --drift measures the cost)
    n, d = 60_000, 0.00816
    exact = float(sst.kstwo.sf(d, n))
    assert 1e-4 < exact < 1e-3
    assert kstwo_sf(d, n) == pytest.approx(exact, rel=1e-9)


def test_binned_ks_on_a_single_bin_has_nothing_to_test() -> None:
    assert ks_binned([1.0], [10]) == (0.0, 1.0)


# -- chi-squared and categories -----------------------------------------------------------------


def test_chi2_equals_scipy_chisquare_when_no_category_is_rare() -> None:
    ref = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    window = {"a": 70, "b": 70, "c": 40, "d": 20}
    stat, p, dof = chi2_categorical(ref, window)
    expected = [200 * ref[k] for k in "abcd"]
    exact = sst.chisquare([window[k] for k in "abcd"], expected)
    assert stat == pytest.approx(exact.statistic, rel=1e-12)
    assert p == pytest.approx(exact.pvalue, rel=1e-12)
    assert dof == 3


def test_chi2_pools_rare_and_unseen_categories_until_the_pool_expects_enough() -> None:
    ref = {"a": 0.5, "b": 0.45, "c": 0.03, "d": 0.02}
    window = {"a": 90, "b": 95, "c": 5, "z": 10}
    stat, p, dof = chi2_categorical(ref, window)
    # d (expected 4) and z (unseen, 0) pool to 4 < 5, so c (6) joins: {c,d,z} 15 vs 10
    exact = sst.chisquare([90, 95, 15], [100, 90, 10])
    assert (stat, dof) == (pytest.approx(exact.statistic, rel=1e-12), 2)
    assert p == pytest.approx(exact.pvalue, rel=1e-12)


def test_chi2_keeps_a_pool_that_already_expects_enough() -> None:
    ref = {"a": 0.5, "b": 0.3, "r1": 0.1, "r2": 0.1}
    window = {"a": 20, "b": 20, "r1": 3, "r2": 1, "new": 6}  # N=50: r1, r2 expect 5 each
    stat, _, dof = chi2_categorical(ref, window, min_expected=6)
    exact = sst.chisquare([20, 20, 10], [25, 15, 10])
    assert (stat, dof) == (pytest.approx(exact.statistic, rel=1e-12), 2)


def test_chi2_renormalises_reference_proportions() -> None:
    assert chi2_categorical({"a": 2.0, "b": 2.0}, {"a": 60, "b": 40}) == chi2_categorical(
        {"a": 0.5, "b": 0.5}, {"a": 60, "b": 40}
    )


def test_chi2_with_fewer_than_two_bins_has_nothing_to_test() -> None:
    assert chi2_categorical({"a": 1.0}, {"a": 100}) == (0.0, 1.0, 0)
    assert chi2_categorical({"a": 0.98, "b": 0.02}, {"a": 10}) == (0.0, 1.0, 0)


def test_chi2_rejects_empty_inputs() -> None:
    with pytest.raises(ValueError, match="window is empty"):
        chi2_categorical({"a": 1.0}, {"a": 0})
    with pytest.raises(ValueError, match="reference is empty"):
        chi2_categorical({}, {"a": 3})


def test_new_and_vanished_categories_ignore_the_overflow_bucket() -> None:
    ref = {"a": 0.6, "b": 0.3, "c": 0.05, "__other__": 0.05}
    window = {"a": 50, "d": 3, "__other__": 4, "e": 0}
    assert new_categories(ref, window) == ["d"]
    assert vanished_categories(ref, window, min_ref_prob=0.05) == ["b", "c"]
    assert vanished_categories(ref, window, min_ref_prob=0.1) == ["b"]


# -- quality and shape --------------------------------------------------------------------------


def test_null_rate_delta_and_out_of_range_share() -> None:
    assert null_rate_delta(0.05, window_nulls=30, window_total=200) == pytest.approx(0.1)
    assert null_rate_delta(0.05, window_nulls=0, window_total=200) == pytest.approx(-0.05)
    assert out_of_range_share(below=1, above=4, count=50) == 0.1
    with pytest.raises(ValueError, match="empty"):
        null_rate_delta(0.0, 0, 0)
    with pytest.raises(ValueError, match="empty"):
        out_of_range_share(0, 0, 0)


def test_entropy_matches_scipy() -> None:
    counts = np.array([5, 0, 3, 12, 1])
    assert entropy(counts) == pytest.approx(sst.entropy(counts, base=2), rel=1e-12)
    assert entropy(counts, base=math.e) == pytest.approx(sst.entropy(counts), rel=1e-12)
    with pytest.raises(ValueError, match="empty"):
        entropy([0, 0])


def test_top1_rate_is_the_share_of_the_most_frequent_value() -> None:
    assert top1_rate({"x": 1, "y": 7, "z": 2}) == 0.7
    assert top1_rate(np.array([3, 1])) == 0.75
    with pytest.raises(ValueError, match="empty"):
        top1_rate({})


def test_small_sample_guard_uses_the_floor_it_is_given() -> None:
    assert DEFAULT_MIN_WINDOW_COUNT == 100
    assert not enough_samples(DEFAULT_MIN_WINDOW_COUNT - 1)
    assert enough_samples(DEFAULT_MIN_WINDOW_COUNT)
    assert enough_samples(30, min_count=30) and not enough_samples(29, min_count=30)


# -- calibration and CBPE -----------------------------------------------------------------------


def test_expected_calibration_error_of_a_calibrated_model_is_small() -> None:
    rng = np.random.default_rng(24)
    conf = rng.uniform(0.5, 1.0, 50_000)
    correct = rng.uniform(size=conf.size) < conf
    assert expected_calibration_error(conf, correct) < 0.01
    overconfident = rng.uniform(size=conf.size) < conf - 0.2
    assert expected_calibration_error(conf, overconfident) == pytest.approx(0.2, abs=0.01)


def test_expected_calibration_error_equals_merged_sketches() -> None:
    rng = np.random.default_rng(25)
    conf = rng.uniform(size=1000)
    correct = rng.uniform(size=1000) < 0.7
    a, b = CalibrationSketch(), CalibrationSketch()
    a.update_many(conf[:400], correct[:400])
    b.update_many(conf[400:], correct[400:])
    assert (a + b).expected_calibration_error() == pytest.approx(
        expected_calibration_error(conf, correct), rel=1e-12
    )


def test_calibration_map_without_smoothing_is_the_observed_accuracy_per_bin() -> None:
    cmap = fit_calibration_map(
        [0.1, 0.1, 0.3, 0.3, 0.3, 0.8], [1, 0, 1, 1, 0, 1], bins=4, monotone=False
    )
    # bins [0, .25], (.25, .5], (.5, .75], (.75, 1]; the empty third bin is interpolated
    assert cmap.accuracy == pytest.approx([0.5, 2 / 3, (2 / 3 + 1) / 2, 1.0])
    assert cmap.counts.tolist() == [2, 3, 0, 1]


def test_monotone_calibration_map_pools_adjacent_violators_weighted_by_count() -> None:
    sketch = CalibrationSketch(bins=4)
    for b, (n, right) in enumerate([(10, 2), (10, 6), (30, 12), (10, 9)]):
        conf = (b + 0.5) / 4
        sketch.update_many(np.full(n, conf), np.arange(n) < right)
    raw = CalibrationMap.from_sketch(sketch, monotone=False)
    assert raw.accuracy == pytest.approx([0.2, 0.6, 0.4, 0.9])
    smooth = CalibrationMap.from_sketch(sketch, monotone=True)
    assert smooth.accuracy == pytest.approx([0.2, 18 / 40, 18 / 40, 0.9])


def test_calibration_map_needs_labelled_data() -> None:
    with pytest.raises(ValueError, match="empty"):
        CalibrationMap.from_sketch(CalibrationSketch())


def test_cbpe_estimates_realised_accuracy_when_the_concept_holds() -> None:
    rng = np.random.default_rng(26)

    def labelled(n: int, low: float) -> tuple[np.ndarray, np.ndarray]:
        conf = rng.uniform(low, 1.0, n)
        return conf, rng.uniform(size=n) < conf**1.5  # miscalibrated, but stably so

    cmap = fit_calibration_map(*labelled(50_000, 0.3))
    window_conf, window_correct = labelled(20_000, 0.6)  # covariate shift: more confident
    estimate = cbpe_estimated_accuracy(cmap, window_conf)
    assert estimate == pytest.approx(window_correct.mean(), abs=0.01)
    assert abs(window_conf.mean() - window_correct.mean()) > 0.05  # naive estimate is off


def test_cbpe_from_binned_confidences_equals_cbpe_from_raw_ones() -> None:
    rng = np.random.default_rng(27)
    cmap = fit_calibration_map(rng.uniform(size=2000), rng.uniform(size=2000) < 0.8)
    conf = rng.uniform(size=500)
    counts = NumericSketch(cmap.edges)
    counts.update_many(conf)
    assert cbpe_estimated_accuracy_from_counts(cmap, counts.hist) == pytest.approx(
        cbpe_estimated_accuracy(cmap, conf), rel=1e-12
    )
    with pytest.raises(ValueError, match="bins"):
        cbpe_estimated_accuracy_from_counts(cmap, [1, 2])


def _calibrated_window(
    rng: np.random.Generator, n: int, accuracy_shift: float = 0.0
) -> CalibrationSketch:
    conf = rng.uniform(0.5, 1.0, n)
    sketch = CalibrationSketch(10)
    sketch.update_many(conf, rng.random(n) < np.clip(conf - accuracy_shift, 0.0, 1.0))
    return sketch


def test_calibration_excess_stays_under_its_noise_bound_for_a_calibrated_model() -> None:
    rng = np.random.default_rng(3)
    ref = _calibrated_window(rng, 30_000)
    ref_acc = np.nan_to_num(ref.accuracy, nan=0.5)
    over = 0
    for _ in range(2000):
        w = _calibrated_window(rng, 1000)
        r = calibration_excess(
            w.count, w.sum_confidence, w.sum_correct, ref_acc, ref.count, alpha=1e-3
        )
        assert math.isclose(r.ece, w.expected_calibration_error(), abs_tol=1e-12)
        over += r.excess > r.noise_bound
    assert over <= 2  # the bound is at the 1e-3 level: 2 in 2,000 is already generous


def test_calibration_excess_exceeds_its_noise_bound_when_accuracy_falls_behind_confidence() -> None:
    rng = np.random.default_rng(4)
    ref = _calibrated_window(rng, 30_000)
    w = _calibrated_window(rng, 1000, accuracy_shift=0.15)
    r = calibration_excess(
        w.count, w.sum_confidence, w.sum_correct, ref.accuracy, ref.count, alpha=1e-4
    )
    assert r.excess > r.noise_bound and r.ece > 0.1
    assert r.reference_ece < 0.03
