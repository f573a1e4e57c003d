"""The fleet false-alarm budget: a stationary stream through every detector of a model.

The budget is at most one false alert per 10^6 stationary events for the whole model (every
feature x segment x detector). The unit test runs a shorter stream with labels joined and asserts
that nothing fires; the 10^6-event figure is measured by running this module::

    .venv/bin/python -m tests.unit.test_monitor_calibration --events 1000000

which prints the firing alerts and the raw detector detections, by detector.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamproc.config import MonitoringConfig
from streamproc.contracts import Alert
from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
from streamproc.monitor import ModelMonitor, Observation, Outcome, SegRef, segref_from_baseline

PARTITIONS = 6
CFG = MonitoringConfig(window_s=60.0, tick_s=2.0, lateness_s=5.0)


@dataclass
class Run:
    """What one stream through a :class:`ModelMonitor` raised."""

    alerts: list[Alert] = field(default_factory=list)
    detections: Counter[str] = field(default_factory=Counter)  # detector -> raw detections
    monitors: int = 0
    predictions: int = 0
    outcomes: int = 0

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.status == "firing"]

    def by_detector(self) -> Counter[str]:
        return Counter(f"{a.kind}/{a.detector}" for a in self.firing)


def references(spec: WorkloadSpec, n: int = 30_000) -> dict[tuple[str, str], SegRef]:
    """The baseline: the same world, another seed (as tests/unit/test_monitor.py)."""
    profile = reference_profile(spec, n)
    return {(spec.model_version, k): segref_from_baseline(s) for k, s in profile.segments.items()}


def run_with_labels(
    spec: WorkloadSpec,
    n: int,
    cfg: MonitoringConfig = CFG,
    refs: dict[tuple[str, str], SegRef] | None = None,
    seed: int = 7,
    batch: int = 500,
) -> Run:
    """Predictions and their joined labels, in event-time order, through one ModelMonitor."""
    work = Workload(spec, n, seed=seed)
    refs = references(spec) if refs is None else refs
    m = ModelMonitor(spec.model_id, cfg, [f"p{i}" for i in range(PARTITIONS)], refs)
    m.outcome_clock.expect([f"l{i}" for i in range(PARTITIONS)])
    pending: dict[str, dict] = {}
    obs: list[Observation] = []
    outs: list[Outcome] = []
    result = Run()

    def flush(final: bool = False) -> None:
        m.observe(obs)
        m.observe_outcomes(outs)
        out = m.advance("t", final=final)
        result.alerts += out.alerts
        result.detections.update(d for d, _, _ in out.detections)
        obs.clear()
        outs.clear()

    for i, ev in enumerate(work.events()):
        v = ev.value
        if ev.kind == "prediction":
            pending[v["prediction_id"]] = v
            p = ev.index % PARTITIONS
            obs.append(
                Observation(p, ev.index // PARTITIONS, -1, v["timestamp"], v["model_version"],
                            v["segments"], v["features"], v["prediction"],
                            max(v["scores"].values()), v["latency_ms"])
            )  # fmt: skip
            result.predictions += 1
        else:
            pv = pending.pop(v["prediction_id"])
            outs.append(
                Outcome(f"l{ev.index % PARTITIONS}", i, -1, ev.time, pv["model_version"],
                        pv["segments"], pv["prediction"], v["label"], max(pv["scores"].values()))
            )  # fmt: skip
            result.outcomes += 1
        if len(obs) + len(outs) >= batch:
            flush()
    flush(final=True)
    result.monitors = len(m.segments)
    return result


def test_stationary_stream_with_labels_raises_no_alert_on_any_detector() -> None:
    spec = WorkloadSpec(rate=50.0)
    result = run_with_labels(spec, 100_000)
    assert result.monitors == 8  # all traffic + 4 countries + 3 devices
    assert result.outcomes > 90_000  # labels joined: the performance detectors ran
    assert result.firing == [], result.by_detector()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="a monitoring setting for this run, e.g. adwin_delta=0.002")  # fmt: skip
    args = ap.parse_args(argv)
    import json

    import msgspec

    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    cfg = msgspec.structs.replace(CFG, **msgspec.convert(overrides, dict)) if overrides else CFG
    cfg = msgspec.convert(msgspec.to_builtins(cfg), MonitoringConfig)
    result = run_with_labels(WorkloadSpec(rate=50.0), args.events, cfg, seed=args.seed)
    print(f"events {result.predictions}  outcomes {result.outcomes}  monitors {result.monitors}")
    print(f"firing alerts: {len(result.firing)}")
    for name, count in sorted(result.by_detector().items()):
        print(f"  {name}: {count}")
    print("raw detector detections:")
    for name, count in sorted(result.detections.items()):
        print(f"  {name}: {count}")
    for a in result.firing[:40]:
        print(f"  {a.window.start} {a.kind}/{a.detector} {a.feature} {a.segment} "
              f"{a.severity} value={a.value:.4g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
