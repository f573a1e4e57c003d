"""Per-class performance: realised from labels, estimated from scores (CBPE), with bands."""

from __future__ import annotations

import numpy as np
import pytest

from streamproc.aggregate.scores import fold_scores, joint_of
from streamproc.baseline import ProfileBuilder
from streamproc.dev.synthetic import MeanShift, WorkloadSpec
from streamproc.judge import cbpe
from tests.unit import pipeline


def _rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = int(y.sum())
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def _calibrated(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a calibrated model and labels drawn from them."""
    if k == 2:
        s = rng.beta(2.0, 2.0, n)
        p = np.c_[1.0 - s, s]
    else:
        p = rng.dirichlet(np.full(k, 0.7), n)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, k - 1)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_estimates_of_a_calibrated_model_agree_with_its_realised_figures(k: int) -> None:
    rng = np.random.default_rng(k)
    classes = [f"c{j}" for j in range(k)]
    names = np.array(classes, dtype=object)
    ref_p, ref_y = _calibrated(rng, 40_000, k)
    rates = {c: cbpe.fit_class_rates(ref_p[:, j], ref_y == j) for j, c in enumerate(classes)}
    positive = "c1" if k == 2 else None
    p, y = _calibrated(rng, 5_000, k)
    predicted = names[p.argmax(axis=1)]
    truth = names[y]
    est = cbpe.estimate(joint_of(predicted, classes, p), classes, positive, rates)
    confusion: dict[str, int] = {}
    for a, b in zip(predicted.tolist(), truth.tolist(), strict=True):
        confusion[f"{a}\x1f{b}"] = confusion.get(f"{a}\x1f{b}", 0) + 1
    real = cbpe.realise(confusion, joint_of(truth, classes, p), classes, positive)
    for m in cbpe.METRICS:
        value, lower, upper = est[m]
        assert lower < value < upper
        assert lower <= real[m][0] <= upper, (m, est[m], real[m])
    # the binned AUC is the rank AUC of scores rounded to the grid: within 0.005 of the exact
    exact = np.mean([_rank_auc(y == j, p[:, j]) for j in range(k)]) if k > 2 else None
    if k == 2:
        exact = _rank_auc(y == 1, p[:, 1])
    assert real["roc_auc"][0] == pytest.approx(exact, abs=0.005)
    assert est["confusion_matrix"].sum() == pytest.approx(len(y))
    assert real["confusion_matrix"].sum() == len(y)


def test_figures_of_a_confusion_matrix_are_those_of_the_positive_class_or_macro() -> None:
    cm = np.array([[50.0, 10.0], [20.0, 20.0]])  # predicted no/yes x label no/yes
    binary = cbpe.from_confusion(cm, ["no", "yes"], "yes")
    assert binary["precision"][0] == pytest.approx(20 / 40)
    assert binary["recall"][0] == pytest.approx(20 / 30)
    assert binary["specificity"][0] == pytest.approx(50 / 70)
    assert binary["f1"][0] == pytest.approx(2 * 20 / (2 * 20 + 20 + 10))
    macro = cbpe.from_confusion(cm, ["no", "yes"], None)
    assert macro["precision"][0] == pytest.approx((50 / 60 + 20 / 40) / 2)
    assert macro["recall"][0] == pytest.approx((50 / 70 + 20 / 30) / 2)
    # more rows, narrower bands
    wide, narrow = binary["recall"], cbpe.from_confusion(cm * 100, ["no", "yes"], "yes")["recall"]
    assert narrow[2] - narrow[1] < (wide[2] - wide[1]) / 5


def test_class_rates_are_monotone_in_the_score_and_fill_empty_bins() -> None:
    rng = np.random.default_rng(3)
    s = rng.random(2_000) * 0.5 + 0.25  # nothing under 0.25 or over 0.75
    y = rng.random(2_000) < s
    rates = np.asarray(cbpe.fit_class_rates(s, y))
    assert np.all(np.diff(rates) >= 0)
    assert np.isfinite(rates).all()
    assert rates[0] == rates[24] and rates[99] == rates[75]
    assert abs(rates[49] - 0.5) < 0.1


def test_rows_without_two_valid_scores_are_left_out_of_the_histograms() -> None:
    h: dict[str, dict[int, int]] = {}
    fold_scores(
        h,
        [
            ("yes", {"yes": 0.7}),  # one score: nothing to compare
            ("yes", {"yes": 1.5, "no": -0.5}),  # not probabilities
            (None, {"yes": 0.7, "no": 0.3}),  # no class
            ("no", {"yes": 0.2, "no": 0.8}),
        ],
    )
    assert h == {"no\x1fyes": {19: 1}, "no\x1fno": {79: 1}}


def test_a_baseline_with_a_score_per_class_keeps_per_class_calibration_and_figures() -> None:
    rng = np.random.default_rng(11)
    p, y = _calibrated(rng, 6_000, 3)
    classes = np.array(["a", "b", "c"], dtype=object)
    builder = ProfileBuilder("m", "1", ["region"])
    builder.add_columns(
        {"x": p[:, 0] * 10},
        prediction=classes[p.argmax(axis=1)],
        label=classes[y],
        segments={"region": np.where(rng.random(6_000) < 0.5, "eu", "us").astype(object)},
        scores={c: p[:, j] for j, c in enumerate(classes.tolist())},
    )
    profile = builder.build("test")
    cp = profile.segments["all"].class_performance
    assert cp is not None
    assert cp.classes == ["a", "b", "c"] and cp.positive_class is None
    assert cp.labelled == 6_000 and set(cp.rates) == {"a", "b", "c"}
    assert set(cp.realised) == set(cbpe.METRICS)
    accuracy = float(np.mean(p.argmax(axis=1) == y))
    assert cp.realised["accuracy"][0] == pytest.approx(accuracy, abs=1e-6)
    eu = profile.segments["region=eu"].class_performance
    assert eu is not None and eu.rates == cp.rates and eu.labelled < 6_000


def test_a_binary_baseline_from_a_positive_class_score_reports_that_class() -> None:
    builder = ProfileBuilder("m", "1")
    rng = np.random.default_rng(5)
    s = rng.random(3_000)
    label = np.where(rng.random(3_000) < s, "fraud", "ok").astype(object)
    builder.add_columns(
        {"x": s},
        prediction=np.where(s > 0.6, "fraud", "ok").astype(object),
        score=s,
        label=label,
    )
    cp = builder.build("test").segments["all"].class_performance
    assert cp is not None and cp.classes == ["fraud", "ok"] and cp.positive_class == "fraud"


def test_live_windows_carry_estimated_beside_realised_figures_within_their_bands() -> None:
    """Each window of all traffic publishes CBPE figures from its predictions' scores and the
    realised ones from its labels; the realised ones fall inside the estimate's band (a 3 sd
    band: all but a few of 4 figures x 19 windows), a feature shift included."""
    spec = WorkloadSpec(changes=(MeanShift("f00", 2.0, start=30_000),))
    run = pipeline.run(spec, 60_000, labels=True)
    est = {
        r.window.start: r.class_performance
        for r in run.records
        if not r.segment and r.class_performance and r.class_performance.source == "estimated"
    }
    real = {
        r.window.start: r.class_performance
        for r in run.records
        if not r.segment and r.class_performance and r.class_performance.source == "realised"
    }
    both = sorted(est.keys() & real.keys())
    assert len(both) >= 15
    outside = 0
    for w in both:
        e, r = est[w], real[w]
        assert e is not None and r is not None
        assert set(e.metrics) == set(cbpe.METRICS)
        for m in ("accuracy", "f1", "precision", "recall"):
            if not e.metrics[m].lower <= r.metrics[m].value <= e.metrics[m].upper:
                outside += 1
    assert outside <= 0.1 * 4 * len(both)
