"""Generated predictions and outcomes, folded into partials, and a comparison of partials.

Shared by ``test_partials.py`` and ``test_source_cuts.py``. Rows carry everything folding
looks at: numeric features with nulls, non-numbers and huge values, a categorical feature with
unknown categories and nulls, a feature the reference does not know, a feature that is
sometimes absent, a class prediction with its scores, and a serving latency.

Tolerances (as ``test_sketch_merge.py``): every integer part (counts, histograms, offsets,
presence, fixed-point tick sums, samples, categorical counts, quantile buckets), min and max
compare exactly. Means, M2, latency sums and absolute errors are floating-point sums taken in
another order: 1e-9 relative, with an absolute floor of 1e-9 of the data's own scale.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from streamproc.aggregate.columns import Columns
from streamproc.aggregate.fold import FoldGroup, fold_outcomes, fold_predictions, prepare
from streamproc.aggregate.partials import OutcomePartial, TickSummary, WindowPartial
from streamproc.baseline.reference import Reference
from streamproc.dev.synthetic import WorkloadSpec, reference_profile
from streamproc.sketch import NumericSketch, QuantileSketch

SAMPLE_K = 8  # small, so that samples overflow and merge_samples drops rows


@functools.cache
def reference() -> Reference:
    """A baseline of a small world: numeric f00..f02, categorical c0, classes yes/no."""
    spec = WorkloadSpec(n_numeric=3, n_categorical=1, model_features=2, segment_dims=())
    return Reference.of(reference_profile(spec, 500).segments["all"], "baseline")


@dataclass(frozen=True)
class Row:
    features: dict[str, Any]
    prediction: str
    confidence: float | None
    latency_ms: float | None
    scores: dict[str, float] | None = None


number = st.one_of(
    st.floats(-10, 10, allow_nan=False),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1e13, -1e13]),  # huge: clipped in the tick sums
)
feature_value = st.one_of(number, st.none(), st.just("n/a"), st.booleans())
category = st.one_of(
    st.sampled_from(["a", "b", "c", "d", "zz", "yy"]), st.none(), st.integers(0, 2)
)


scores = st.one_of(
    st.none(),
    st.floats(0.0, 1.0).map(lambda s: {"yes": s, "no": 1.0 - s}),
    st.sampled_from([0.0, 0.01, 0.5, 1.0]).map(lambda s: {"yes": s, "no": 1.0 - s}),
)


@st.composite
def rows(draw: st.DrawFn) -> Row:
    features: dict[str, Any] = {"f00": draw(number), "f01": draw(feature_value)}
    if draw(st.booleans()):
        features["f02"] = draw(feature_value)
    features["c0"] = draw(category)
    if draw(st.integers(0, 4)) == 0:
        features[draw(st.sampled_from(["extra", "account_ref"]))] = draw(feature_value)
    confidence = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    latency = draw(st.one_of(st.none(), st.floats(0.0, 5_000.0)))
    return Row(features, draw(st.sampled_from(["yes", "no"])), confidence, latency, draw(scores))


row_lists = st.lists(rows(), max_size=25)


def fed(rows: list[Row], ref: Reference | None, first_offset: int = 0) -> WindowPartial:
    """One partial fed ``rows`` (at offsets ``first_offset``.. of partition 0) in one fold,
    all in its tick 0.0."""
    p = WindowPartial()
    prepare(p, ref)
    summary = p.ticks[0.0] = TickSummary(fp=p.fp)
    if rows:
        n = len(rows)
        cols = Columns(
            [r.features for r in rows],
            [r.prediction for r in rows],
            [r.confidence for r in rows],
            [r.latency_ms for r in rows],
            0,
            list(range(first_offset, first_offset + n)),
            [-1] * n,
            [r.scores for r in rows],
        )
        g = FoldGroup(p, ref, np.arange(n), [summary], np.zeros(n, np.int64))
        fold_predictions(cols, [g], SAMPLE_K)
    return p


outcome = st.tuples(
    st.one_of(
        st.sampled_from(["yes", "no"]), st.floats(-5, 5), st.floats(-1e9, 1e9), st.booleans()
    ),
    st.one_of(st.sampled_from(["yes", "no", "maybe"]), st.floats(-5, 5), st.integers(0, 1)),
    st.one_of(st.none(), st.floats(0.0, 1.0), st.sampled_from([0.0, 0.01, 0.5, 0.99, 1.0])),
    scores,
)
outcome_lists = st.lists(outcome, max_size=30)


def outcomes(items: list[tuple[Any, Any, float | None, Any]]) -> OutcomePartial:
    p = OutcomePartial()
    fold_outcomes(items, [(p, 0.0, range(len(items)))])
    return p


# -- comparison ----------------------------------------------------------------------------------


def _close(got: float, want: float, scale: float) -> bool:
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9 * scale)


def assert_same_numeric(got: NumericSketch, want: NumericSketch) -> None:
    assert got.hist.tolist() == want.hist.tolist()
    assert (got.count, got.nulls, got.below_ref_min, got.above_ref_max) == (
        want.count,
        want.nulls,
        want.below_ref_min,
        want.above_ref_max,
    )
    if not want.count:
        return
    assert (got.min, got.max) == (want.min, want.max)
    scale = max(abs(want.min), abs(want.max))
    assert _close(got.mean, want.mean, scale)
    assert _close(got.m2, want.m2, want.count * scale * scale)


def assert_same_quantiles(got: QuantileSketch, want: QuantileSketch) -> None:
    g, w = got._state(), want._state()
    assert (g.positive, g.negative, g.zero, g.nulls) == (w.positive, w.negative, w.zero, w.nulls)
    if want.count:
        assert (got.min, got.max) == (want.min, want.max)
        assert _close(got.sum, want.sum, want.count * max(abs(want.min), abs(want.max)))


def assert_same_summary(got: TickSummary, want: TickSummary) -> None:
    """Summaries are integers and samples: equal exactly."""
    assert got == want


def assert_same_partial(got: WindowPartial, want: WindowPartial) -> None:
    """``got`` equals ``want``: integer parts exactly, moments to rounding."""
    exact = (
        "count",
        "offsets",
        "present",
        "fp",
        "mismatched",
        "zsum",
        "categorical",
        "sample",
        "sampled_out",
        "ticks",
        "class_scores",
        "losses",
    )
    assert {k: getattr(got, k) for k in exact} == {k: getattr(want, k) for k in exact}
    assert got.numeric.keys() == want.numeric.keys()
    for name, sketch in want.numeric.items():
        assert_same_numeric(got.numeric[name], sketch)
    assert_same_quantiles(got.latency, want.latency)
    assert type(got.prediction) is type(want.prediction)
    if isinstance(want.prediction, NumericSketch):
        assert_same_numeric(got.prediction, want.prediction)  # type: ignore[arg-type]
    else:
        assert got.prediction == want.prediction
    assert (got.score is None) == (want.score is None)
    if want.score is not None and got.score is not None:
        assert_same_numeric(got.score, want.score)


def assert_same_outcome(got: OutcomePartial, want: OutcomePartial) -> None:
    exact = (
        "labelled", "correct", "numeric_pairs", "pct_pairs", "labels", "cal", "ticks",
        "confusion", "class_scores",
    )  # fmt: skip
    assert {k: getattr(got, k) for k in exact} == {k: getattr(want, k) for k in exact}
    # exact sums: the regression figures are equal, not close, however the stream was cut
    assert (got.mae, got.rmse, got.mape) == (want.mae, want.rmse, want.mape)
    edges = [-1.0, 0.0, 0.5, 2.0]
    assert got.label_values.histogram(edges) == want.label_values.histogram(edges)
