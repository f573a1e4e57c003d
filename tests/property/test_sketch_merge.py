"""Sketches are monoids: a + b equals one sketch fed both streams, + is associative, zero is
the identity, and the stored form round-trips.

Tolerances: counts, histograms, min and max compare exactly. Mean and M2 are floating-point
sums taken in a different order, so they compare to 1e-9 relative, with an absolute floor of
1e-9 times the data's own scale (max |x| for the mean, sum of x^2 for M2): for near-constant
data M2 can be 1e-12 of that scale, below what any float computation of it resolves.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.sketch import (
    CalibrationSketch,
    CategoricalSketch,
    NumericSketch,
    QuantileSketch,
)

# A deadline would be a timing assertion; examples are small anyway.
SETTINGS = settings(deadline=None, max_examples=150)

value = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.integers(-5, 5).map(float),  # ties on the edges
    st.sampled_from([math.nan, math.inf]),  # nulls
)
stream = st.lists(value, max_size=60)
edges = st.lists(st.integers(-6, 6), min_size=0, max_size=6, unique=True).map(
    lambda xs: sorted(float(x) for x in xs)
)
ref_range = st.tuples(st.floats(-10, 0), st.floats(0, 10))


def numeric(e: list[float], rng: tuple[float, float], xs: list[float]) -> NumericSketch:
    s = NumericSketch(e, ref_min=rng[0], ref_max=rng[1])
    s.update_many(np.array(xs, dtype=np.float64))
    return s


def assert_same_numeric(got: NumericSketch, want: NumericSketch, xs: list[float]) -> None:
    finite = [x for x in xs if math.isfinite(x)]
    assert got.hist.tolist() == want.hist.tolist()
    assert (got.count, got.nulls, got.below_ref_min, got.above_ref_max) == (
        want.count,
        want.nulls,
        want.below_ref_min,
        want.above_ref_max,
    )
    if not finite:
        assert got == want
        return
    assert (got.min, got.max) == (want.min, want.max)
    scale = max(abs(x) for x in finite)
    assert math.isclose(got.mean, want.mean, rel_tol=1e-9, abs_tol=1e-9 * scale)
    assert math.isclose(got.m2, want.m2, rel_tol=1e-9, abs_tol=1e-9 * sum(x * x for x in finite))


# -- NumericSketch ------------------------------------------------------------------------------


@SETTINGS
@given(edges, ref_range, stream, stream)
def test_merge_of_two_numeric_sketches_equals_one_fed_both_streams(
    e: list[float], rng: tuple[float, float], xs: list[float], ys: list[float]
) -> None:
    merged = numeric(e, rng, xs) + numeric(e, rng, ys)
    assert_same_numeric(merged, numeric(e, rng, xs + ys), xs + ys)


@SETTINGS
@given(edges, ref_range, stream, stream, stream)
def test_numeric_merge_is_associative(
    e: list[float], rng: tuple[float, float], xs: list[float], ys: list[float], zs: list[float]
) -> None:
    a, b, c = (numeric(e, rng, v) for v in (xs, ys, zs))
    assert_same_numeric((a + b) + c, a + (b + c), xs + ys + zs)


@SETTINGS
@given(edges, ref_range, stream)
def test_empty_numeric_sketch_is_the_identity(
    e: list[float], rng: tuple[float, float], xs: list[float]
) -> None:
    a = numeric(e, rng, xs)
    assert a + a.zero() == a
    assert a.zero() + a == a


@SETTINGS
@given(edges, ref_range, stream, st.integers(0, 5))
def test_numeric_sketch_round_trips_through_bytes(
    e: list[float], rng: tuple[float, float], xs: list[float], nulls: int
) -> None:
    a = numeric(e, rng, xs)
    a.update_many(np.empty(0), nulls=nulls)
    blob = a.to_bytes()
    assert NumericSketch.from_bytes(blob) == a
    assert NumericSketch.from_bytes(blob).to_bytes() == blob


# -- CategoricalSketch --------------------------------------------------------------------------

category = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "f", "__other__"]))
categories = st.lists(category, max_size=40)
cap = st.integers(1, 5)


def categorical(max_categories: int, xs: list[str | None]) -> CategoricalSketch:
    s = CategoricalSketch(max_categories)
    s.update_many(xs)
    return s


@SETTINGS
@given(cap, categories, categories)
def test_merge_of_two_categorical_sketches_equals_one_fed_both_streams(
    k: int, xs: list[str | None], ys: list[str | None]
) -> None:
    assert categorical(k, xs) + categorical(k, ys) == categorical(k, xs + ys)


@SETTINGS
@given(cap, categories, categories, categories)
def test_categorical_merge_is_associative(
    k: int, xs: list[str | None], ys: list[str | None], zs: list[str | None]
) -> None:
    a, b, c = (categorical(k, v) for v in (xs, ys, zs))
    assert (a + b) + c == a + (b + c)


@SETTINGS
@given(cap, categories)
def test_empty_categorical_sketch_is_the_identity(k: int, xs: list[str | None]) -> None:
    a = categorical(k, xs)
    assert a + a.zero() == a == a.zero() + a


@SETTINGS
@given(cap, categories)
def test_categorical_sketch_round_trips_through_bytes(k: int, xs: list[str | None]) -> None:
    a = categorical(k, xs)
    blob = a.to_bytes()
    assert CategoricalSketch.from_bytes(blob) == a
    assert CategoricalSketch.from_bytes(blob).to_bytes() == blob


# -- QuantileSketch -----------------------------------------------------------------------------

latency = st.one_of(
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False),
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1e-8),  # the zero bucket
    st.just(math.nan),
)
latencies = st.lists(latency, max_size=60)


def quantiles(xs: list[float]) -> QuantileSketch:
    s = QuantileSketch(relative_accuracy=0.02)
    s.update_many(np.array(xs, dtype=np.float64))
    return s


def assert_same_quantiles(got: QuantileSketch, want: QuantileSketch, xs: list[float]) -> None:
    g, w = got._state(), want._state()
    assert (g.positive, g.negative, g.zero, g.nulls) == (w.positive, w.negative, w.zero, w.nulls)
    assert (got.min, got.max) == (want.min, want.max) or got.count == want.count == 0
    finite = [abs(x) for x in xs if math.isfinite(x)]
    assert math.isclose(got.sum, want.sum, rel_tol=1e-9, abs_tol=1e-9 * sum(finite))
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        a, b = got.quantile(q), want.quantile(q)
        assert a == b or (math.isnan(a) and math.isnan(b))


@SETTINGS
@given(latencies, latencies)
def test_merge_of_two_quantile_sketches_equals_one_fed_both_streams(
    xs: list[float], ys: list[float]
) -> None:
    assert_same_quantiles(quantiles(xs) + quantiles(ys), quantiles(xs + ys), xs + ys)


@SETTINGS
@given(latencies, latencies, latencies)
def test_quantile_merge_is_associative(xs: list[float], ys: list[float], zs: list[float]) -> None:
    a, b, c = (quantiles(v) for v in (xs, ys, zs))
    assert_same_quantiles((a + b) + c, a + (b + c), xs + ys + zs)


@SETTINGS
@given(latencies)
def test_empty_quantile_sketch_is_the_identity(xs: list[float]) -> None:
    a = quantiles(xs)
    assert a + a.zero() == a == a.zero() + a


@SETTINGS
@given(latencies)
def test_quantile_sketch_round_trips_through_bytes(xs: list[float]) -> None:
    a = quantiles(xs)
    blob = a.to_bytes()
    assert QuantileSketch.from_bytes(blob) == a
    assert QuantileSketch.from_bytes(blob).to_bytes() == blob


# -- CalibrationSketch --------------------------------------------------------------------------

labelled = st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), max_size=50)


def calibration(pairs: list[tuple[float, bool]], bins: int = 10) -> CalibrationSketch:
    s = CalibrationSketch(bins)
    s.update_many([c for c, _ in pairs], [ok for _, ok in pairs])
    return s


def assert_same_calibration(got: CalibrationSketch, want: CalibrationSketch) -> None:
    assert got.count.tolist() == want.count.tolist()
    assert got.sum_correct.tolist() == want.sum_correct.tolist()
    np.testing.assert_allclose(got.sum_confidence, want.sum_confidence, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(labelled, labelled)
def test_merge_of_two_calibration_sketches_equals_one_fed_both_streams(
    xs: list[tuple[float, bool]], ys: list[tuple[float, bool]]
) -> None:
    assert_same_calibration(calibration(xs) + calibration(ys), calibration(xs + ys))


@SETTINGS
@given(labelled, labelled, labelled)
def test_calibration_merge_is_associative(
    xs: list[tuple[float, bool]], ys: list[tuple[float, bool]], zs: list[tuple[float, bool]]
) -> None:
    a, b, c = (calibration(v) for v in (xs, ys, zs))
    assert_same_calibration((a + b) + c, a + (b + c))


@SETTINGS
@given(labelled, st.integers(1, 20))
def test_empty_calibration_sketch_is_the_identity_and_round_trips(
    xs: list[tuple[float, bool]], bins: int
) -> None:
    a = calibration(xs, bins)
    assert a + a.zero() == a == a.zero() + a
    blob = a.to_bytes()
    assert CalibrationSketch.from_bytes(blob) == a
    assert CalibrationSketch.from_bytes(blob).to_bytes() == blob
