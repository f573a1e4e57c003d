"""The monitor engine offline: the synthetic workload through ModelMonitor, no Kafka.

The same engine runs in the worker (tests/integration/test_monitoring.py drives it through Kafka
and Redis); here each scenario runs in a second, so detection delays and false alarms are pinned
on exact, seeded streams.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import msgspec
import pytest

from streamproc.config import MonitoringConfig
from streamproc.contracts import Alert
from streamproc.dev.synthetic import (
    AccuracyDrop,
    MeanShift,
    NewCategory,
    NullBurst,
    SegmentSilence,
    Workload,
    WorkloadSpec,
    reference_profile,
)
from streamproc.monitor import (
    ModelMonitor,
    Observation,
    Outcome,
    SegRef,
    monitor_from_bytes,
    monitor_to_bytes,
    segref_from_baseline,
)

PARTITIONS = 6
CFG = MonitoringConfig(window_s=60.0, tick_s=2.0, lateness_s=5.0)


def references(spec: WorkloadSpec, n: int = 30_000) -> dict[tuple[str, str], SegRef]:
    """The reference: the same world, another seed, none of the injected changes."""
    profile = reference_profile(spec, n)
    return {(spec.model_version, k): segref_from_baseline(s) for k, s in profile.segments.items()}


def observations(work: Workload) -> Iterator[Observation]:
    """Predictions spread over partitions, each partition in event-time order."""
    for i, v in enumerate(work.predictions()):
        yield Observation(
            i % PARTITIONS, i // PARTITIONS, -1, v["timestamp"], v["model_version"],
            v["segments"], v["features"], v["prediction"], max(v["scores"].values()),
            v["latency_ms"],
        )  # fmt: skip


def run(
    spec: WorkloadSpec,
    n: int,
    cfg: MonitoringConfig = CFG,
    refs: dict | None = None,
    checkpoint_every: int = 0,
) -> tuple[list[Alert], Workload, ModelMonitor]:
    work = Workload(spec, n, seed=7)
    refs = references(spec) if refs is None else refs
    sources = [f"p{i}" for i in range(PARTITIONS)]
    m = ModelMonitor(spec.model_id, cfg, sources, refs)
    m.outcome_clock.expect([f"l{i}" for i in range(PARTITIONS)])
    alerts: list[Alert] = []
    obs: list[Observation] = []
    batches = 0
    for ob in observations(work):
        obs.append(ob)
        if len(obs) >= 500:
            m.observe(obs)
            obs = []
            batches += 1
            alerts += m.advance("t").alerts
            if checkpoint_every and batches % checkpoint_every == 0:
                m = monitor_from_bytes(monitor_to_bytes(m), cfg, refs)
    m.observe(obs)
    alerts += m.advance("t", final=True).alerts
    return alerts, work, m


def firing(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.status == "firing"]


@pytest.fixture(scope="module")
def spec() -> WorkloadSpec:
    return WorkloadSpec(rate=50.0)


def test_stationary_stream_raises_no_alert(spec: WorkloadSpec) -> None:
    alerts, _, m = run(spec, 60_000)
    assert firing(alerts) == [], [(a.kind, a.detector, a.feature, a.segment) for a in alerts]
    assert len(m.segments) == 8  # all traffic + 4 countries + 3 devices


def test_one_sigma_shift_in_one_segment_fires_on_that_feature_and_segment_then_resolves() -> None:
    change = MeanShift("f03", 1.0, start=15_000, end=35_000, segment={"country": "DE"})
    s = WorkloadSpec(rate=50.0, changes=(change,))
    alerts, work, _ = run(s, 60_000)
    hits = [a for a in firing(alerts) if a.feature == "f03" and a.segment == {"country": "DE"}]
    assert hits, [(a.kind, a.detector, a.feature, a.segment) for a in firing(alerts)]
    first = min(hits, key=lambda a: a.window.end)
    truth = work.ground_truth()[0]
    delay = work.count_sent({"country": "DE"}, first.window.end) - truth.first_affected_ordinal
    assert delay <= 500, delay
    resolved = [a for a in alerts if a.status == "resolved" and a.feature == "f03"]
    assert resolved
    others = {(a.feature, tuple(a.segment.items())) for a in firing(alerts)}
    assert all(f == "f03" for f, _ in others), others


def _first_delay(alerts: list[Alert], work: Workload, segment: dict[str, str], **match) -> int:
    """Events of ``segment`` sent from the change's first event to the first matching alert."""
    hits = [
        a
        for a in firing(alerts)
        if a.segment == segment and all(getattr(a, k) == v for k, v in match.items())
    ]
    assert hits, [(a.kind, a.detector, a.feature, a.segment) for a in firing(alerts)]
    first = min(hits, key=lambda a: _epoch(a.window.end))
    truth = work.ground_truth()[0]
    return work.count_sent(segment, first.window.end) - truth.first_affected_ordinal


def test_half_sigma_shift_in_one_segment_fires_within_2000_events_of_that_segment() -> None:
    de = {"country": "DE"}
    change = MeanShift("f03", 0.5, start=15_000, end=35_000, segment=de)
    alerts, work, _ = run(WorkloadSpec(rate=50.0, changes=(change,)), 45_000)
    assert _first_delay(alerts, work, de, feature="f03") <= 2000
    others = {(a.feature, tuple(a.segment.items())) for a in firing(alerts)}
    assert all(f == "f03" for f, _ in others), others


def test_page_hinkley_flags_a_mean_shift_down_at_its_tick_and_escalates_when_psi_agrees() -> None:
    de = {"country": "DE"}
    change = MeanShift("f03", -1.0, start=15_000, end=35_000, segment=de)
    alerts, work, _ = run(WorkloadSpec(rate=50.0, changes=(change,)), 45_000)
    ph = [a for a in firing(alerts) if a.detector == "page_hinkley" and a.segment == de]
    assert ph and {a.feature for a in ph} == {"f03"}
    first = min(ph, key=lambda a: _epoch(a.window.end))
    assert first.severity == "warning" and first.kind == "feature_drift"
    assert first.value < -0.5  # the tick's mean, in reference standard deviations
    assert first.evidence["tick_events"] > 0
    assert _first_delay(alerts, work, de, detector="page_hinkley") <= 500
    critical = [a for a in ph if a.severity == "critical"]
    assert critical and set(critical[0].evidence["agreeing_statistics"]) & {"psi", "ks"}
    assert any(a.status == "resolved" and a.detector == "page_hinkley" for a in alerts)


def test_a_feature_unknown_to_the_baseline_raises_a_new_feature_alert_without_values() -> None:
    spec = WorkloadSpec(rate=50.0)
    work = Workload(spec, 30_000, seed=7)
    refs = references(spec)
    m = ModelMonitor(spec.model_id, CFG, [f"p{i}" for i in range(PARTITIONS)], refs)
    alerts: list[Alert] = []
    batch: list[Observation] = []
    for ob in observations(work):
        if 10_000 <= ob.offset * PARTITIONS + ob.partition < 20_000:
            secret = f"user-{ob.offset}"
            ob = msgspec.structs.replace(ob, features={**ob.features, "account_ref": secret})
        batch.append(ob)
        if len(batch) >= 500:
            m.observe(batch)
            batch = []
            alerts += m.advance("t").alerts
    m.observe(batch)
    alerts += m.advance("t", final=True).alerts
    new = [a for a in alerts if a.detector == "new_feature" and a.segment == {}]
    assert [a.status for a in new] == ["firing", "resolved"]
    assert new[0].feature == "account_ref" and new[0].severity == "warning"
    ev = new[0].evidence
    assert 0 < ev["events_with_feature"] <= ev["window_events"]
    assert new[0].value == ev["events_with_feature"] / ev["window_events"]
    assert "user-" not in msgspec.json.encode(new).decode()
    assert {a.detector for a in firing(alerts)} == {"new_feature"}


def test_new_category_and_null_burst_fire_data_quality_alerts() -> None:
    s = WorkloadSpec(
        rate=50.0,
        changes=(
            NewCategory("c1", "zz", 0.05, start=15_000, end=30_000),
            NullBurst("f07", 0.10, start=15_000, end=30_000),
        ),
    )
    alerts, _, _ = run(s, 45_000)
    kinds = {(a.detector, a.feature) for a in firing(alerts) if a.segment == {}}
    assert ("new_category", "c1") in kinds
    assert ("null_rate", "f07") in kinds


def test_a_silent_segment_fires_volume_within_two_windows() -> None:
    s = WorkloadSpec(rate=50.0, changes=(SegmentSilence(segment={"country": "BR"}, start=15_000),))
    alerts, work, _ = run(s, 30_000)
    hits = [a for a in firing(alerts) if a.kind == "volume" and a.segment == {"country": "BR"}]
    assert hits
    start = work.ground_truth()[0].start_time
    assert _epoch(hits[0].window.end) - start <= 2 * CFG.window_s + CFG.window_s


def test_checkpoint_restore_mid_stream_gives_identical_alerts() -> None:
    s = WorkloadSpec(rate=50.0, changes=(MeanShift("f03", 1.0, start=10_000, end=20_000),))
    refs = references(s)
    straight, _, _ = run(s, 30_000, refs=refs)
    restored, _, _ = run(s, 30_000, refs=refs, checkpoint_every=7)
    assert [a.alert_id for a in straight] == [a.alert_id for a in restored]
    assert {"adwin", "page_hinkley"} <= {a.detector for a in straight}


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_accuracy_drop_fires_performance_alert_within_1000_labelled_events() -> None:
    s = WorkloadSpec(rate=50.0, changes=(AccuracyDrop(0.7, start=15_000),))
    work = Workload(s, 30_000, seed=7)
    refs = references(s)
    m = ModelMonitor(s.model_id, CFG, [f"p{i}" for i in range(PARTITIONS)], refs)
    m.outcome_clock.expect([f"l{i}" for i in range(PARTITIONS)])
    predictions: dict[str, dict] = {}
    alerts: list[Alert] = []
    batch: list[Outcome] = []
    label_times: list[tuple[float, int]] = []  # (label time, prediction index)
    for i, ev in enumerate(work.events()):
        if ev.kind == "prediction":
            predictions[ev.value["prediction_id"]] = ev.value
            continue
        p = predictions.pop(ev.value["prediction_id"])
        label_times.append((ev.time, ev.index))
        batch.append(
            Outcome(f"l{ev.index % PARTITIONS}", i, -1, ev.time, p["model_version"],
                    p["segments"], p["prediction"], ev.value["label"], max(p["scores"].values()))
        )  # fmt: skip
        if len(batch) >= 500:
            m.observe_outcomes(batch)
            batch = []
            alerts += m.advance("t").alerts
    m.observe_outcomes(batch)
    alerts += m.advance("t", final=True).alerts
    perf = [a for a in firing(alerts) if a.kind == "performance" and a.segment == {}]
    assert {a.detector for a in perf} >= {"accuracy", "adwin_error"}
    first = min(perf, key=lambda a: a.window.end)
    end = _epoch(first.window.end)
    delay = sum(1 for t, index in label_times if index >= 15_000 and t <= end)
    assert delay <= 1000, delay
    window_alert = next(a for a in perf if a.detector == "accuracy")
    assert window_alert.value < 0.8
    assert math.isfinite(window_alert.threshold)


def test_calibration_alert_fires_when_labels_disagree_with_confidence_with_bins() -> None:
    from tests.unit.test_monitor_calibration import run_with_labels

    s = WorkloadSpec(rate=50.0, changes=(AccuracyDrop(0.7, start=15_000),))
    result = run_with_labels(s, 30_000)
    cal = [a for a in result.firing if a.detector == "calibration" and a.segment == {}]
    assert cal, result.by_detector()
    first = cal[0]
    assert first.kind == "performance" and first.value > CFG.ece
    ev = first.evidence
    assert ev["ece"] - ev["reference_ece"] > max(CFG.ece_margin, ev["noise_bound"])
    assert sum(b["labelled"] for b in ev["bins"]) == ev["labelled"] >= CFG.ece_min_labelled
    assert all(b["accuracy"] < b["mean_confidence"] for b in ev["bins"] if b["labelled"] > 200)
    assert _epoch(first.window.start) >= Workload(s, 30_000, seed=7).ground_truth()[0].start_time


def test_a_models_overrides_apply_when_its_monitor_is_built() -> None:
    spec = WorkloadSpec(rate=50.0)
    cfg = msgspec.structs.replace(CFG, models={spec.model_id: {"window_s": 30.0}})
    _, _, m = run(spec, 6_000, cfg=cfg)
    assert m.cfg.window_s == 30.0 and m.cfg.tick_s == CFG.tick_s
    other = ModelMonitor("another-model", cfg, ["p0"])
    assert other.cfg.window_s == CFG.window_s
    restored = monitor_from_bytes(monitor_to_bytes(m), cfg, references(spec))
    assert restored.cfg.window_s == 30.0


def test_an_spm1_checkpoint_without_page_hinkley_or_calibration_state_still_restores() -> None:
    s = WorkloadSpec(rate=50.0)
    refs = references(s)
    _, _, m = run(s, 6_000, refs=refs)
    blob = monitor_to_bytes(m)
    assert blob[:4] == b"SPM2"
    state = msgspec.msgpack.decode(blob[4:])
    # SPM1: a monitor had 10 fields and a segment 16 (no Page-Hinkley, no calibration counts).
    state = state[:10]
    state[6] = [seg[:16] for seg in state[6]]
    old = b"SPM1" + msgspec.msgpack.encode(state)
    restored = monitor_from_bytes(old, CFG, refs)
    assert all(not seg.page_hinkley for seg in restored.segments.values())
    assert {k: len(seg.adwin) for k, seg in restored.segments.items()} == {
        k: len(seg.adwin) for k, seg in m.segments.items()
    }
    assert monitor_to_bytes(restored)[:4] == b"SPM2"


def test_configured_features_narrow_what_is_watched() -> None:
    change = MeanShift("f03", 1.0, start=10_000, end=30_000, segment={"country": "DE"})
    s = WorkloadSpec(rate=50.0, changes=(change,))
    cfg = msgspec.structs.replace(CFG, features=["f01", "f02"])
    alerts, _, m = run(s, 30_000, cfg)
    assert firing(alerts) == [], [(a.kind, a.detector, a.feature) for a in firing(alerts)]
    assert all(set(seg.ref.features) == {"f01", "f02"} for seg in m.segments.values() if seg.ref)
    watched, _, _ = run(s, 30_000, msgspec.structs.replace(CFG, features=["f03"]))
    assert {a.feature for a in firing(watched)} == {"f03"}
