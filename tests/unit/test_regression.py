"""Regression models through the whole monitor path in one process, and classifiers beside.

A regression workload (:class:`~streamproc.dev.synthetic.WorkloadSpec` ``task="regression"``)
predicts a number and gets a numeric label; from event 6,000 its errors double
(:class:`~streamproc.dev.synthetic.ErrorScale`). The windows' MAE, RMSE and MAPE are compared
with numpy on the same joined rows, and the error increase must be alerted as ``performance``.

The estimated errors of windows without labels (:mod:`streamproc.aggregate.losses`) are
checked on a simulated heteroscedastic model (errors growing with the prediction) under a
covariate shift that moves its predictions: each window's estimate must be within sampling
noise of its realised error, and the leaf counts of two windows merged must equal one window
fed both.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import msgspec
import numpy as np
import pytest

from streamproc.aggregate import losses
from streamproc.aggregate.columns import Columns
from streamproc.aggregate.fold import FoldGroup, fold_predictions, prepare
from streamproc.aggregate.partials import (
    PartialState,
    WindowPartial,
    add_hists,
    decode_partial,
    encode_partial,
)
from streamproc.baseline import ProfileBuilder, SegmentReference
from streamproc.baseline.reference import Reference
from streamproc.dev.synthetic import ErrorScale, WorkloadSpec
from tests.unit.pipeline import Run, baseline, run

START = 6_000  # the third 60 s window at 50 events/s
REGRESSION = WorkloadSpec(
    model_id="reg-price", task="regression", changes=(ErrorScale(2.0, start=START),)
)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def doubled() -> Run:
    """12,000 events; labels joined (delays around 60 s); errors double from event 6,000."""
    return run(REGRESSION, 12_000, labels=True)


def test_a_regression_models_windows_carry_mae_rmse_mape_equal_to_numpy(doubled: Run) -> None:
    r = doubled
    preds = {p["prediction_id"]: p for p in r.work.predictions()}
    by_window: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for label in r.work.labels():
        p = preds[label["prediction_id"]]
        w = label["timestamp"] // 60.0 * 60.0
        by_window[w].append((p["prediction"], label["label"]))
    records = [x for x in r.records if x.segment == {} and x.performance.get("labelled")]
    assert records
    for rec in records:
        assert "accuracy" not in rec.performance
        pairs = np.array(by_window[_epoch(rec.window.start)])
        assert rec.performance["labelled"] == len(pairs)
        err = np.abs(pairs[:, 0] - pairs[:, 1])
        nz = pairs[:, 1] != 0
        assert rec.performance["mae"] == pytest.approx(err.mean(), rel=1e-8)
        assert rec.performance["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-8)
        assert rec.performance["mape"] == pytest.approx(
            np.mean(err[nz] / np.abs(pairs[nz, 1])), rel=1e-8
        )


def test_a_regression_models_error_increase_is_alerted_as_performance(doubled: Run) -> None:
    r = doubled
    perf = [a for a in r.firing if a.kind == "performance" and a.segment == {}]
    assert {a.detector for a in perf} >= {"mae", "adwin_error"}, r.by_detector()
    assert all(_epoch(a.window.end) > START / 50.0 for a in perf), r.by_detector()
    mae = next(a for a in perf if a.detector == "mae")
    ev = mae.evidence
    assert ev["window_mae"] > 1.5 * ev["reference_mae"]
    assert ev["window_mae"] - ev["reference_mae"] > ev["noise_bound"]
    assert ev["window_rmse"] > ev["reference_rmse"]
    adwin = next(a for a in perf if a.detector == "adwin_error" and "summary" in a.evidence)
    text = adwin.evidence["summary"]
    assert text.startswith("ADWIN on the absolute-error stream: mean absolute error rose from")
    assert f"over the last {adwin.evidence['recent_labelled']} labelled events" in text
    assert adwin.evidence["recent_mae"] > adwin.evidence["reference_mae"]


def test_a_stationary_regression_model_raises_no_performance_alert() -> None:
    r = run(WorkloadSpec(model_id="reg-price", task="regression"), 12_000, labels=True)
    assert not [a for a in r.firing if a.kind in ("performance", "label_drift")], r.by_detector()
    assert any("mae" in x.performance for x in r.records)


def test_a_classifiers_metrics_have_accuracy_and_no_regression_figures() -> None:
    r = run(WorkloadSpec(), 6_000, labels=True)
    perf = [x.performance for x in r.records if x.performance.get("labelled")]
    assert perf and all("accuracy" in p for p in perf)
    assert not [p for p in perf if {"mae", "rmse", "mape"} & set(p)]
    assert not [x for x in r.records if set(ESTIMATES) & set(x.outputs)]
    assert all(s.losses is None for s in baseline(WorkloadSpec()).segments.values())


# -- estimated errors (DLE-like) ---------------------------------------------------------------

ESTIMATES = ("estimated_mae", "estimated_rmse", "estimated_mape")


def _world(n: int, shift: float, seed: int) -> dict[str, np.ndarray | list[str]]:
    """A heteroscedastic model: the label's noise grows with the prediction, more so for
    ``kind == "b"``; ``shift`` moves ``x`` (and the predictions with it) and the kinds' mix."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, n)
    kind = np.where(rng.random(n) < 0.3 + 0.4 * min(shift, 1.0), "b", "a")
    z = rng.uniform(0, 1, n)  # a feature the errors do not depend on
    pred = 50.0 + 10.0 * x
    sd = 0.05 * np.abs(pred) * np.where(kind == "b", 2.0, 1.0) + 1.0
    label = pred + rng.normal(0.0, sd)
    return {"x": x, "kind": kind.tolist(), "z": z, "prediction": pred, "label": label}


def _fit(n: int = 40_000) -> Reference:
    ref = _world(n, 0.0, seed=1)
    builder = ProfileBuilder("reg", "1")
    builder.add_columns(
        {"x": ref["x"], "kind": ref["kind"], "z": ref["z"]},
        prediction=ref["prediction"],
        label=ref["label"],
    )
    seg = builder.build("t").segments["all"]
    assert seg.task == "regression" and seg.losses is not None
    return Reference.of(seg, "baseline")


def _fed(ref: Reference, w: dict[str, np.ndarray | list[str]], rows: np.ndarray) -> WindowPartial:
    """A window partial fed ``rows`` of ``w`` through the aggregation stage's fold."""
    p = WindowPartial()
    prepare(p, ref)
    idx = rows.tolist()
    cols = Columns(
        [{"x": float(w["x"][i]), "kind": w["kind"][i], "z": float(w["z"][i])} for i in idx],
        [float(w["prediction"][i]) for i in idx],
        [None] * len(idx),
        [None] * len(idx),
        0,
        idx,
        [-1] * len(idx),
    )
    fold_predictions(cols, [FoldGroup(p, ref, np.arange(len(idx)))], 8)
    return p


def _realised(w: dict[str, np.ndarray | list[str]], rows: np.ndarray) -> dict[str, tuple]:
    """Each realised figure of ``rows`` and its standard error."""
    p, y = np.asarray(w["prediction"])[rows], np.asarray(w["label"])[rows]
    e = np.abs(p - y)
    n = e.size
    pct = e / np.abs(y)
    rmse = float(np.sqrt(np.mean(e**2)))
    return {
        "mae": (float(e.mean()), float(e.std() / np.sqrt(n))),
        "rmse": (rmse, float((e**2).std() / np.sqrt(n) / (2 * rmse))),
        "mape": (float(pct.mean()), float(pct.std() / np.sqrt(n))),
    }


@pytest.fixture(scope="module")
def fitted() -> Reference:
    return _fit()


@pytest.mark.parametrize("shift", [0.0, 0.5, 1.0, 1.5])
def test_the_estimated_errors_follow_the_realised_ones_through_a_covariate_shift(
    fitted: Reference, shift: float
) -> None:
    w = _world(6_000, shift, seed=10 + int(10 * shift))
    rows = np.arange(6_000)
    est = losses.estimate(fitted.losses, _fed(fitted, w, rows).losses)  # type: ignore[arg-type]
    for metric, (value, se) in _realised(w, rows).items():
        # within 4 standard errors of the window (plus the reference's own, ~half of it)
        assert abs(est[metric] - value) < 5.0 * se, (metric, shift, est[metric], value, se)
    if shift >= 1.0:  # the shift moved the error well beyond the reference's
        assert est["mae"] > 1.3 * fitted.segment.mae  # type: ignore[operator]


def test_a_prediction_only_estimate_would_miss_the_shift_the_trees_follow(
    fitted: Reference,
) -> None:
    """The errors depend on ``kind`` beside the prediction: the trees split on it."""
    model = fitted.losses
    assert model is not None
    used = {model.inputs[f] for t in model.trees.values() for f in t.feature if f >= 0}
    assert None in used and "kind" in used


def test_leaf_counts_of_two_windows_merged_equal_one_window_fed_both(fitted: Reference) -> None:
    w = _world(3_000, 0.7, seed=3)
    a, b = _fed(fitted, w, np.arange(1_000)), _fed(fitted, w, np.arange(1_000, 3_000))
    both = _fed(fitted, w, np.arange(3_000))
    assert a.merge(b).losses == both.losses == b.merge(a).losses
    counts: dict[str, dict[int, int]] = {}
    add_hists(counts, a.losses)
    add_hists(counts, b.losses)
    assert counts == both.losses
    assert all(sum(h.values()) == 3_000 for h in both.losses.values())
    model = fitted.losses
    assert model is not None
    assert losses.estimate(model, a.merge(b).losses) == losses.estimate(model, both.losses)
    # and the stored form carries them
    blob = msgspec.msgpack.encode(encode_partial(both))
    back = decode_partial(msgspec.msgpack.decode(blob, type=PartialState))
    assert back.losses == both.losses


def test_the_loss_trees_keep_an_older_references_fingerprint_while_unset(
    fitted: Reference,
) -> None:
    seg = msgspec.structs.replace(fitted.segment, losses=None)
    fields = {f: getattr(seg, f) for f in seg.__struct_fields__ if f != "losses"}
    for f in ("class_performance", "reconstruction"):
        if fields[f] is None:
            del fields[f]
    assert seg.fingerprint_bytes() == msgspec.msgpack.encode(fields)
    assert Reference.of(seg, "baseline").fp != fitted.fp
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(fitted.segment), type=SegmentReference)
    assert again == fitted.segment and Reference.of(again, "baseline").fp == fitted.fp


def test_a_regression_models_prediction_windows_carry_estimated_errors(doubled: Run) -> None:
    r = doubled
    windows = [x for x in r.records if x.segment == {} and x.count]
    assert windows and all(set(ESTIMATES) <= set(x.outputs) for x in windows)
    before = [x for x in windows if _epoch(x.window.end) <= REGRESSION.time_of(START)]
    labelled = [
        x.performance for x in r.records
        if x.segment == {} and x.performance.get("labelled", 0) >= 1_000
        and _epoch(x.window.end) <= REGRESSION.time_of(START)
    ]  # fmt: skip
    assert before and labelled
    # before the errors double, the estimate is the realised error within sampling noise
    est = np.mean([x.outputs["estimated_mae"] for x in before])
    real = np.mean([p["mae"] for p in labelled])
    assert est == pytest.approx(real, rel=0.1)
