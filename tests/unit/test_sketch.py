"""Window sketches: binning, moments, caps, quantile accuracy, calibration bins, stored form."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from streamproc.errors import StateEncodingError
from streamproc.sketch import (
    OTHER,
    CalibrationSketch,
    CategoricalSketch,
    NumericSketch,
    QuantileSketch,
    calibration_edges,
    reference_edges,
)
from streamproc.sketch.categorical import _category_key

# -- NumericSketch ------------------------------------------------------------------------------


def test_bins_are_right_closed_and_open_ended() -> None:
    s = NumericSketch([0.0, 1.0])
    s.update_many(np.array([-1e9, 0.0, 0.5, 1.0, np.nextafter(1.0, 2.0), 1e9]))
    assert s.hist.tolist() == [2, 2, 2]


def test_scalar_and_vector_updates_agree() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, 500)
    values[::50] = np.nan
    edges = reference_edges(rng.normal(3.0, 2.0, 1000))
    one = NumericSketch(edges, ref_min=0.0, ref_max=6.0)
    for x in values.tolist():
        one.update(x)
    many = NumericSketch(edges, ref_min=0.0, ref_max=6.0)
    many.update_many(values)
    assert one.hist.tolist() == many.hist.tolist()
    assert (one.count, one.nulls, one.below_ref_min, one.above_ref_max) == (
        many.count,
        many.nulls,
        many.below_ref_min,
        many.above_ref_max,
    )
    assert (one.min, one.max) == (many.min, many.max)
    assert one.mean == pytest.approx(many.mean, rel=1e-12)
    assert one.variance == pytest.approx(many.variance, rel=1e-12)


def test_moments_match_numpy() -> None:
    values = np.random.default_rng(2).lognormal(0.0, 1.0, 10_000)
    s = NumericSketch([1.0])
    s.update_many(values[:3000])
    s.update_many(values[3000:])
    assert s.mean == pytest.approx(values.mean(), rel=1e-12)
    assert s.variance == pytest.approx(values.var(ddof=1), rel=1e-12)
    assert s.std == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert (s.min, s.max) == (values.min(), values.max())


def test_none_nan_and_infinities_count_as_nulls() -> None:
    s = NumericSketch([0.0])
    for x in (None, math.nan, math.inf, -math.inf, 1.0):
        s.update(x)
    s.update_many(np.array([np.nan, np.inf, 2.0]), nulls=3)
    s.update_many([None, 4.0])
    assert (s.count, s.nulls, s.total) == (3, 4 + 2 + 3 + 1, 13)
    assert s.mean == pytest.approx(7.0 / 3.0)


def test_out_of_range_counts_values_strictly_outside_reference_range() -> None:
    s = NumericSketch([0.0], ref_min=-1.0, ref_max=1.0)
    s.update_many(np.array([-1.5, -1.0, 0.0, 1.0, 1.5, 2.0]))
    assert (s.below_ref_min, s.above_ref_max) == (1, 2)


def test_empty_numeric_sketch_has_nan_moments_and_no_distribution() -> None:
    s = NumericSketch([0.0])
    assert math.isnan(s.mean) and math.isnan(s.variance) and math.isnan(s.min)
    with pytest.raises(ValueError, match="empty"):
        s.probabilities()


def test_variance_needs_two_values() -> None:
    s = NumericSketch([0.0])
    s.update(5.0)
    assert s.mean == 5.0 and math.isnan(s.variance) and math.isnan(s.std)


@pytest.mark.parametrize(
    "edges", [[1.0, 1.0], [2.0, 1.0], [0.0, math.inf], [[0.0, 1.0]], [math.nan]]
)
def test_edges_must_be_finite_and_strictly_increasing(edges: list) -> None:
    with pytest.raises(ValueError):
        NumericSketch(edges)


def test_edges_are_read_only() -> None:
    s = NumericSketch([0.0, 1.0])
    with pytest.raises(ValueError):
        s.edges[0] = 5.0


def test_merge_of_sketches_with_different_edges_raises_value_error() -> None:
    with pytest.raises(ValueError, match="different edges"):
        NumericSketch([0.0, 1.0]) + NumericSketch([0.0, 2.0])
    with pytest.raises(ValueError, match="reference ranges"):
        NumericSketch([0.0], ref_max=1.0) + NumericSketch([0.0], ref_max=2.0)
    with pytest.raises(TypeError):
        NumericSketch([0.0]).merge(CategoricalSketch())  # type: ignore[arg-type]


def test_merge_leaves_both_operands_untouched() -> None:
    a = NumericSketch([0.0])
    a.update_many(np.array([-1.0, 1.0]))
    b = NumericSketch([0.0])
    b.update_many(np.array([2.0, 3.0, None]))
    a_bytes, b_bytes = a.to_bytes(), b.to_bytes()
    merged = a + b
    merged.update(10.0)
    assert (a.to_bytes(), b.to_bytes()) == (a_bytes, b_bytes)


def test_probabilities_are_shares_of_non_null_values() -> None:
    s = NumericSketch([0.0, 1.0])
    s.update_many(np.array([-1.0, 0.5, 0.7, 3.0, np.nan]))
    assert s.probabilities().tolist() == [0.25, 0.5, 0.25]


# -- reference_edges ----------------------------------------------------------------------------


def test_reference_edges_split_distinct_values_into_equal_bins() -> None:
    values = np.random.default_rng(3).normal(size=1000)
    s = NumericSketch(reference_edges(values, bins=10))
    s.update_many(values)
    assert s.hist.tolist() == [100] * 10


def test_reference_edges_collapse_ties_and_constant_features() -> None:
    heavy = np.concatenate([np.zeros(700), np.arange(1.0, 301.0)])
    edges = reference_edges(heavy, bins=10)
    # the 10%..70% quantiles are all 0; every edge is an observed value
    assert edges.tolist() == [0.0, 100.0, 200.0]
    s = NumericSketch(edges)
    s.update_many(heavy)
    assert s.hist.tolist() == [700, 100, 100, 100]
    assert reference_edges(np.full(10, 4.2)).tolist() == [4.2]


def test_reference_edges_ignore_non_finite_values_and_need_one() -> None:
    assert reference_edges([np.nan, 1.0, np.inf, 3.0], bins=2).tolist() == [1.0]
    assert reference_edges([1.0, 2.0], bins=1).size == 0
    with pytest.raises(ValueError, match="finite"):
        reference_edges([np.nan])
    with pytest.raises(ValueError, match="bins"):
        reference_edges([1.0], bins=0)


# -- CategoricalSketch --------------------------------------------------------------------------


def test_sketch_is_exact_up_to_the_cap() -> None:
    s = CategoricalSketch(max_categories=3)
    for v in ["x", "y", "z", "x", None]:
        s.update(v)
    assert s.counts == {"x": 2, "y": 1, "z": 1}
    assert (s.other, s.count, s.nulls, s.total) == (0, 4, 1, 5)


def test_over_the_cap_the_smallest_stable_hashes_keep_their_counts() -> None:
    names = [f"cat{i}" for i in range(50)]
    values = [n for i, n in enumerate(names) for _ in range(i % 7 + 1)]
    s = CategoricalSketch(max_categories=5)
    s.update_many(values)
    kept = sorted(names, key=_category_key)[:5]
    assert set(s.counts) == {*kept, OTHER}
    assert all(s.counts[k] == values.count(k) for k in kept)
    assert s.other == len(values) - sum(values.count(k) for k in kept)


def test_kept_categories_do_not_depend_on_arrival_order() -> None:
    values = [str(v) for v in np.random.default_rng(12).integers(0, 40, 300)]
    forward = CategoricalSketch(max_categories=8)
    forward.update_many(values)
    backward = CategoricalSketch(max_categories=8)
    for v in reversed(values):
        backward.update(v)
    assert forward == backward
    assert forward.other > 0


def test_literal_other_value_goes_to_the_other_bucket() -> None:
    s = CategoricalSketch()
    s.update(OTHER)
    s.update_many([OTHER, "a"])
    assert s.counts == {"a": 1, OTHER: 2}


def test_scalar_and_batch_categorical_updates_agree() -> None:
    values = [str(v) for v in np.random.default_rng(4).integers(0, 30, 400)] + [None] * 7
    one = CategoricalSketch(max_categories=10)
    for v in values:
        one.update(v)
    many = CategoricalSketch(max_categories=10)
    many.update_many(values)
    assert one == many


@pytest.mark.parametrize("bad", [True, 3, 2.5])
def test_categorical_values_must_be_strings(bad: object) -> None:
    with pytest.raises(TypeError, match="str"):
        CategoricalSketch().update(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        CategoricalSketch().update_many(["a", bad])  # type: ignore[list-item]


def test_categorical_merge_requires_the_same_cap() -> None:
    with pytest.raises(ValueError, match="max_categories"):
        CategoricalSketch(3) + CategoricalSketch(4)


def test_categorical_probabilities() -> None:
    s = CategoricalSketch()
    s.update_many(["a", "b", "a", "a", None])
    assert s.probabilities() == {"a": 0.75, "b": 0.25}
    with pytest.raises(ValueError, match="empty"):
        CategoricalSketch().probabilities()


# -- QuantileSketch -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(5).lognormal(3.0, 1.5, 20_000),  # latency-like, ms
        np.random.default_rng(6).normal(0.0, 100.0, 5_000),  # negatives too
        np.concatenate([np.zeros(300), np.random.default_rng(7).exponential(2.0, 700)]),
    ],
    ids=["lognormal", "normal", "zeros"],
)
@pytest.mark.parametrize("accuracy", [0.01, 0.05])
def test_quantiles_are_within_relative_accuracy_of_exact_lower_quantiles(
    values: np.ndarray, accuracy: float
) -> None:
    s = QuantileSketch(relative_accuracy=accuracy)
    s.update_many(values)
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(s.quantile(q) - exact) <= accuracy * abs(exact) * (1 + 1e-12), q


def test_quantile_extremes_are_exact_and_empty_is_nan() -> None:
    s = QuantileSketch()
    assert math.isnan(s.quantile(0.5)) and math.isnan(s.min)
    s.update_many(np.array([3.7, 12.1, 999.3]))
    assert (s.quantile(0.0), s.quantile(1.0)) == (3.7, 999.3)
    with pytest.raises(ValueError):
        s.quantile(1.5)


def test_scalar_quantile_updates_match_batch_counts() -> None:
    values = np.random.default_rng(8).lognormal(2.0, 1.0, 2000)
    one = QuantileSketch()
    for x in values.tolist():
        one.update(x)
    many = QuantileSketch()
    many.update_many(values)
    assert one.count == many.count == 2000
    assert one.quantiles((0.5, 0.95, 0.99)) == many.quantiles((0.5, 0.95, 0.99))


def test_quantile_sketch_memory_grows_with_value_range_not_count() -> None:
    s = QuantileSketch(relative_accuracy=0.01)
    s.update_many(np.random.default_rng(9).uniform(1.0, 1000.0, 100_000))
    # log(1000) / log(1.01 / 0.99) = 345.4, so at most 346 buckets
    assert s.n_buckets <= 346
    assert (s.nulls, s.mean) == (0, pytest.approx(s.sum / 100_000))


def test_quantile_sketch_rejects_bad_settings_and_mismatched_merges() -> None:
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            QuantileSketch(relative_accuracy=bad)
    with pytest.raises(ValueError, match="accuracy"):
        QuantileSketch(0.01) + QuantileSketch(0.02)


# -- CalibrationSketch --------------------------------------------------------------------------


def _ece_by_hand(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if sel.any():
            total += sel.sum() / conf.size * abs(correct[sel].mean() - conf[sel].mean())
    return total


def test_expected_calibration_error_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(10)
    conf = rng.uniform(0.0, 1.0, 5000) ** 0.5
    correct = rng.uniform(size=5000) < conf**2
    s = CalibrationSketch(bins=10)
    s.update_many(conf, correct)
    assert s.expected_calibration_error() == pytest.approx(_ece_by_hand(conf, correct, 10))


def test_calibration_bins_are_right_closed_like_numeric_sketch_bins() -> None:
    conf = np.array([0.0, 0.1, np.nextafter(0.1, 1.0), 0.5, 0.95, 1.0])
    s = CalibrationSketch(bins=10)
    for c in conf.tolist():
        s.update(c, True)
    n = NumericSketch(calibration_edges(10))
    n.update_many(conf)
    assert s.count.tolist() == n.hist.tolist() == [2, 1, 0, 0, 1, 0, 0, 0, 0, 2]


def test_calibration_sketch_rejects_confidences_outside_unit_interval() -> None:
    s = CalibrationSketch()
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError):
            s.update(bad, True)
        with pytest.raises(ValueError):
            s.update_many([0.5, bad], [True, False])
    with pytest.raises(ValueError, match="flags"):
        s.update_many([0.5], [True, False])


def test_empty_calibration_sketch() -> None:
    s = CalibrationSketch(bins=4)
    assert math.isnan(s.expected_calibration_error())
    assert np.isnan(s.accuracy).all() and s.n == 0


# -- stored form --------------------------------------------------------------------------------


def _filled() -> list:
    rng = np.random.default_rng(11)
    n = NumericSketch(reference_edges(rng.normal(size=100)), ref_min=-2.0, ref_max=2.0)
    n.update_many(rng.normal(size=50), nulls=2)
    c = CategoricalSketch(max_categories=3)
    c.update_many(["a", "b", "c", "d", None])
    q = QuantileSketch()
    q.update_many(rng.lognormal(size=100))
    e = CalibrationSketch()
    e.update_many(rng.uniform(size=30), rng.uniform(size=30) < 0.5)
    return [n, c, q, e]


@pytest.mark.parametrize("sketch", _filled(), ids=lambda s: type(s).__name__)
def test_stored_form_starts_with_its_magic_and_round_trips(sketch: object) -> None:
    blob = sketch.to_bytes()  # type: ignore[attr-defined]
    assert blob[:4] == type(sketch).MAGIC  # type: ignore[attr-defined]
    back = type(sketch).from_bytes(blob)  # type: ignore[attr-defined]
    assert back == sketch
    assert back.to_bytes() == blob


@pytest.mark.parametrize("sketch", _filled(), ids=lambda s: type(s).__name__)
def test_reading_another_version_or_type_raises_state_encoding_error(sketch: object) -> None:
    cls = type(sketch)
    blob = sketch.to_bytes()  # type: ignore[attr-defined]
    with pytest.raises(StateEncodingError, match="version 2"):
        cls.from_bytes(blob[:3] + b"2" + blob[4:])  # type: ignore[attr-defined]
    with pytest.raises(StateEncodingError, match="expected magic"):
        cls.from_bytes(b"WHY1" + blob[4:])  # type: ignore[attr-defined]
    with pytest.raises(StateEncodingError, match="corrupt"):
        cls.from_bytes(blob[:-3])  # type: ignore[attr-defined]
    with pytest.raises(StateEncodingError, match="must be bytes"):
        cls.from_bytes("SPN1")  # type: ignore[attr-defined]
    other = next(s for s in _filled() if type(s) is not cls)
    with pytest.raises(StateEncodingError, match="expected magic"):
        cls.from_bytes(other.to_bytes())  # type: ignore[attr-defined]


def test_inconsistent_numeric_payload_is_refused() -> None:
    s = _filled()[0]
    state = msgspec.msgpack.decode(s.to_bytes()[4:])
    state["hist"] = state["hist"][:-8]  # one bin short
    with pytest.raises(StateEncodingError, match="bins"):
        NumericSketch.from_bytes(b"SPN1" + msgspec.msgpack.encode(state))
    state = msgspec.msgpack.decode(s.to_bytes()[4:])
    state["count"] += 1
    with pytest.raises(StateEncodingError, match="add up"):
        NumericSketch.from_bytes(b"SPN1" + msgspec.msgpack.encode(state))


def test_inconsistent_categorical_payload_is_refused() -> None:
    blob = msgspec.msgpack.encode(
        {"max_categories": 1, "counts": {"a": 1, "b": 2}, "other": 0, "nulls": 0}
    )
    with pytest.raises(StateEncodingError, match="inconsistent"):
        CategoricalSketch.from_bytes(b"SPC1" + blob)
