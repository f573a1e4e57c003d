"""The fleet false-alarm budget: a stationary stream through every detector of a model.

The budget is at most one false alert per 10^6 stationary events for the whole model (every
feature x segment x detector). The unit test runs a short stream with labels joined through the
whole monitor path (ingest, aggregation, judging: ``tests/unit/pipeline.py``) and asserts that
nothing fires; the 10^6-event figure is measured by running this module::

    .venv/bin/python -m tests.unit.test_monitor_calibration --events 1000000

which prints the firing alerts and the raw detector detections, by detector. With the
multivariate-drift check on (every segment of the synthetic baseline has a PCA of its 20
numeric features): 0 firing alerts and 0 raw detections at 10^6 events, seeds 7 and 11.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import msgspec

from streamproc.config import MonitoringConfig
from streamproc.dev.synthetic import WorkloadSpec
from tests.unit.pipeline import MONITORING, Run, run

CFG = MONITORING


def run_with_labels(spec: WorkloadSpec, n: int, cfg: MonitoringConfig = CFG, seed: int = 7) -> Run:
    """``n`` predictions of ``spec`` and their labels, through the in-process pipeline."""
    return run(spec, n, cfg, labels=True, seed=seed)


def test_stationary_stream_with_labels_raises_no_alert_on_any_detector() -> None:
    result = run_with_labels(WorkloadSpec(rate=50.0), 15_000)
    assert len(result.monitors()) == 8  # all traffic + 4 countries + 3 devices
    # every label joined and judged: the performance detectors ran
    judged = sum(r.performance.get("labelled", 0) for r in result.records if r.segment == {})
    assert result.labels == judged == 15_000
    assert result.firing == [], result.by_detector()
    assert result.detections() == {}, result.detections()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="a monitoring setting for this run, e.g. adwin_delta=0.002")  # fmt: skip
    args = ap.parse_args(argv)
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    settings = {**msgspec.to_builtins(CFG), **overrides}
    cfg = msgspec.convert(settings, MonitoringConfig)
    started = time.perf_counter()
    result = run_with_labels(WorkloadSpec(rate=50.0), args.events, cfg, seed=args.seed)
    seconds = time.perf_counter() - started
    print(
        f"events {result.predictions}  labels {result.labels}  monitors "
        f"{len(result.monitors())}  ({seconds:.0f} s)"
    )
    print(f"firing alerts: {len(result.firing)}")
    for name, count in sorted(result.by_detector().items()):
        print(f"  {name}: {count}")
    print("raw detector detections:")
    for name, count in sorted(result.detections().items()):
        print(f"  {name}: {count}")
    for a in result.firing[:40]:
        print(f"  {a.window.start} {a.kind}/{a.detector} {a.feature} {a.segment} "
              f"{a.severity} value={a.value:.4g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
