"""Regression models through the whole monitor path in one process, and classifiers beside.

A regression workload (:class:`~streamproc.dev.synthetic.WorkloadSpec` ``task="regression"``)
predicts a number and gets a numeric label; from event 6,000 its errors double
(:class:`~streamproc.dev.synthetic.ErrorScale`). The windows' MAE, RMSE and MAPE are compared
with numpy on the same joined rows, and the error increase must be alerted as ``performance``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import numpy as np
import pytest

from streamproc.dev.synthetic import ErrorScale, WorkloadSpec
from tests.unit.pipeline import Run, run

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
