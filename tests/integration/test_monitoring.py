"""Drift monitors end to end: synthetic traffic through Kafka, the worker, Redis, alerts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.dev.synthetic import (
    AccuracyDrop,
    ErrorScale,
    MeanShift,
    Workload,
    WorkloadSpec,
    reference_profile,
)
from streamproc.kafka import topics
from streamproc.redis_client import sync_client
from tests.integration.workers import WorkerProcess, consume_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MONITOR_ENV = {
    "STREAMPROC_MONITORING_WINDOW_S": "60",
    "STREAMPROC_MONITORING_TICK_S": "5",
    "STREAMPROC_MONITORING_LATENESS_S": "5",
    "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "300",
}
N_EVENTS = 48_000  # 16 minutes of event time at 50 events/s: 16 windows
SHIFT = MeanShift("f03", 1.0, start=12_000, end=28_000, segment={"country": "DE"})
SPEC = WorkloadSpec(rate=50.0, changes=(SHIFT,))


def _store_baseline(cfg: Config) -> None:
    client = sync_client(cfg.redis)
    BaselineStore(client, cfg.redis.prefix).put(reference_profile(SPEC, source="test reference"))


def _produce_workload(cfg: Config) -> int:
    """Predictions in batches of 500, round-robin over partitions, in event-time order."""
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20})
    batch: list[dict] = []
    n_batches = 0
    for p in Workload(SPEC, N_EVENTS, seed=7).predictions():
        batch.append(p)
        if len(batch) == 500:
            producer.produce(cfg.topics.predictions, orjson.dumps(batch), partition=n_batches % 6)
            n_batches += 1
            batch = []
    if batch:
        producer.produce(cfg.topics.predictions, orjson.dumps(batch), partition=n_batches % 6)
    assert producer.flush(30) == 0
    return N_EVENTS


def _run(cfg: Config, tmp_path: Path, workers: int) -> list[dict]:
    """The alerts of the workload through ``workers`` workers (incidents: :func:`_incidents`)."""
    topics.apply(cfg, topics.load_topics(cfg))
    _store_baseline(cfg)
    procs = [WorkerProcess(cfg, tmp_path, **MONITOR_ENV) for _ in range(workers)]
    try:
        _produce_workload(cfg)

        # 8 monitors x the windows the watermark can close (all but the last one or two).
        def windows_closed() -> float:
            return sum(w.metric("streamproc_windows_closed_total") for w in procs)

        procs[0].wait_for(lambda: windows_closed() >= 8 * 14, 240, "closed windows")
    finally:
        for w in procs:
            w.stop()
    alerts = [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.alerts, 10_000, 10)]
    return alerts


def _incidents(cfg: Config) -> list[dict]:
    return [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.incidents, 10_000, 5)]


def _comparable_incidents(events: list[dict]) -> list[str]:
    """Incident events without what differs between runs on other topics (``emitted_at``, the
    members' ``source`` topic names)."""
    out = []
    for e in events:
        e = {k: v for k, v in e.items() if k != "emitted_at"}
        e["members"] = [{k: v for k, v in m.items() if k != "source"} for m in e["members"]]
        e["leading"] = {k: v for k, v in e["leading"].items() if k != "source"}
        out.append(json.dumps(e, sort_keys=True))
    return sorted(out)


def test_shift_in_one_segment_alerts_there_only_and_resolves(
    config: Config, tmp_path: Path
) -> None:
    alerts = _run(config, tmp_path, workers=1)
    firing = [a for a in alerts if a["status"] == "firing"]
    described = [(a["kind"], a["detector"], a["feature"], a["segment"]) for a in firing]
    assert firing, "no alert for a 1-sigma shift"
    assert all(a["feature"] == "f03" for a in firing), described
    assert any(a["segment"] == {"country": "DE"} for a in firing), described
    resolved = [a for a in alerts if a["status"] == "resolved"]
    assert {a["detector"] for a in resolved} >= {a["detector"] for a in firing if a["segment"]}
    for a in alerts:
        assert a["source"]["topic"] == config.topics.predictions
        assert a["source"]["offsets"], "an alert must say which offsets to replay"
        text = json.dumps(a)
        assert "prediction_id" not in text and "-0000" not in text  # no ids leak into alerts
    assert len({a["alert_id"] for a in alerts}) == len(alerts), "an alert was published twice"
    # on-call is paged once: one incident, rooted at the shifted segment and feature, whose
    # members are every firing alert
    incidents = _incidents(config)
    by_id: dict[str, list[dict]] = {}
    for e in incidents:
        by_id.setdefault(e["incident_id"], []).append(e)
    assert len(by_id) == 1, [e["root_cause"]["summary"] for e in incidents]
    (events,) = by_id.values()
    last = max(events, key=lambda e: e["revision"])
    assert (last["cause"], last["root_cause"]["segment"]) == (
        {"signal": "feature", "feature": "f03"},
        {"country": "DE"},
    )
    assert [e["status"] for e in events].count("opened") == 1 and events[0]["status"] == "opened"
    if last["status"] == "resolved":
        assert all(m["status"] == "resolved" for m in last["members"])
    assert {m["alert_id"] for e in events for m in e["members"]} >= {a["alert_id"] for a in firing}
    assert len({e["event_id"] for e in incidents}) == len(incidents)


def test_one_and_two_workers_publish_the_same_alerts(endpoints: object, tmp_path: Path) -> None:
    from tests.conftest import Endpoints, config_for

    assert isinstance(endpoints, Endpoints)

    def cfg_for(tag: str) -> Config:
        return config_for(endpoints, f"{uuid.uuid4().hex[:8]}-{tag}")

    cfg_one, cfg_two = cfg_for("one"), cfg_for("two")
    one = _run(cfg_one, tmp_path, workers=1)
    two = _run(cfg_two, tmp_path, workers=2)

    def comparable(alerts: list[dict]) -> list[str]:
        keep = []
        for a in alerts:
            a = {k: v for k, v in a.items() if k not in ("emitted_at", "source")}
            keep.append(json.dumps(a, sort_keys=True))
        return sorted(keep)

    assert one, "the scenario must raise alerts to compare"
    a, b = comparable(one), comparable(two)
    only_one = [x[:400] for x in a if x not in b]
    only_two = [x[:400] for x in b if x not in a]
    assert a == b, f"only with one worker: {only_one}\nonly with two: {only_two}"
    incidents_one = _comparable_incidents(_incidents(cfg_one))
    assert incidents_one, "the scenario must open an incident to compare"
    assert incidents_one == _comparable_incidents(_incidents(cfg_two))


def _closed_windows(cfg: Config) -> list[tuple[str, str]]:
    """(segment, window start) of every non-empty window on the metrics topic."""
    records = [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.metrics, 10**6, 3)]
    return [
        (json.dumps(r["segment"], sort_keys=True), r["window"]["start"])
        for r in records
        if r["count"]
    ]


def test_sigkill_mid_stream_then_restart_loses_no_state_and_publishes_no_duplicate(
    config: Config, tmp_path: Path
) -> None:
    topics.apply(config, topics.load_topics(config))
    _store_baseline(config)
    _produce_workload(config)
    first = WorkerProcess(config, tmp_path, **MONITOR_ENV)
    first.wait_for(
        lambda: first.metric("streamproc_windows_closed_total") >= 8 * 6, 180, "some windows"
    )
    first.kill()
    second = WorkerProcess(config, tmp_path, **MONITOR_ENV)
    try:
        second.wait_for(lambda: len(_closed_windows(config)) >= 8 * 14, 240, "all windows")
    finally:
        second.stop()
    closed = _closed_windows(config)
    assert len(closed) == len(set(closed)), "a window was closed twice across the restart"
    alerts = [orjson.loads(m.value()) for m in consume_all(config, config.topics.alerts, 10**6, 5)]
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids)), "a restart republished an alert"
    firing = [a for a in alerts if a["status"] == "firing"]
    assert any(a["feature"] == "f03" and a["segment"] == {"country": "DE"} for a in firing)
    assert all(a["feature"] == "f03" for a in firing)
    incidents = _incidents(config)
    events = [e["event_id"] for e in incidents]
    assert len(events) == len(set(events)), "a restart republished an incident event"
    assert len({e["incident_id"] for e in incidents}) == 1, "a restart reopened the incident"
    assert sum(e["status"] == "opened" for e in incidents) == 1


def test_accuracy_drop_arrives_through_the_label_join_as_a_performance_alert(
    config: Config, tmp_path: Path
) -> None:
    spec = WorkloadSpec(rate=50.0, changes=(AccuracyDrop(0.7, start=15_000),))
    topics.apply(config, topics.load_topics(config))
    _store_baseline(config)
    work = Workload(spec, 30_000, seed=7)
    producer = Producer({**config.kafka.librdkafka(), "linger.ms": 20})

    def send(topic: str, events: Iterator[dict]) -> None:
        batch: list[dict] = []
        for n, event in enumerate(events, 1):
            batch.append(event)
            if len(batch) == 250:
                producer.produce(topic, orjson.dumps(batch), partition=(n // 250) % 6)
                batch = []
        producer.produce(topic, orjson.dumps(batch), partition=0)
        assert producer.flush(30) == 0

    worker = WorkerProcess(config, tmp_path, **MONITOR_ENV)
    # Steady state: labels come after their predictions were seen, so each join completes on
    # the label's arrival, in the order of the labels topic.
    send(config.topics.predictions, work.predictions())
    worker.wait_for(
        lambda: worker.metric("streamproc_events_total", topic="predictions") >= 30_000,
        120,
        "predictions ingested",
    )
    send(config.topics.labels, work.labels())

    def performance_alerts() -> list[dict]:
        alerts = [
            orjson.loads(m.value()) for m in consume_all(config, config.topics.alerts, 10**6, 3)
        ]
        return [a for a in alerts if a["kind"] == "performance" and a["status"] == "firing"]

    def overall(detector: str) -> list[dict]:
        return [a for a in performance_alerts() if a["segment"] == {} and a["detector"] == detector]

    try:
        worker.wait_for(lambda: bool(overall("accuracy")), 180, "an accuracy alert")
        assert worker.metric("streamproc_join_total", result="joined") > 0
        # the per-class figures reach /metrics, estimated and realised, with their bands
        for kind in ("estimated", "realized"):
            auc = {
                bound: worker.metric(
                    "streamproc_performance",
                    segment="all",
                    metric="roc_auc",
                    kind=kind,
                    bound=bound,
                )
                for bound in ("lower", "value", "upper")
            }
            assert 0.5 < auc["lower"] < auc["value"] < auc["upper"] <= 1.0, (kind, auc)
    finally:
        worker.stop()
    window = overall("accuracy")[0]
    assert window["value"] < 0.82
    assert window["evidence"]["reference_accuracy"] > 0.85
    # The drop starts 300 s into the stream: no performance alert before it, and the error
    # stream's ADWIN fires at a tick before the window verdict.
    assert min(a["window"]["start"] for a in performance_alerts()) >= "2024-01-01T00:05:00"
    early = overall("adwin_error")
    assert early and early[0]["window"]["end"] <= window["window"]["end"]

    # Realised beside estimated on the metrics topic: a concept drift (labels change, scores
    # do not) leaves the CBPE estimate at the reference's accuracy while the realised figures
    # fall out of its sampling-noise band; before the drop they agree.
    records = [
        orjson.loads(m.value()) for m in consume_all(config, config.topics.metrics, 10**6, 3)
    ]
    overall_perf = {
        (r["class_performance"]["source"], r["window"]["start"]): r["class_performance"]
        for r in records
        if r["segment"] == {} and r.get("class_performance")
    }
    estimated = {w: p for (src, w), p in overall_perf.items() if src == "estimated"}
    realised = {w: p for (src, w), p in overall_perf.items() if src == "realised"}
    assert len(estimated) >= 8 and len(realised) >= 4
    for p in estimated.values():
        assert p["positive_class"] == "yes" and p["classes"] == ["no", "yes"]
        assert set(p["metrics"]) == {"accuracy", "roc_auc", "f1", "precision", "recall",
                                     "specificity"}  # fmt: skip
        ref = p["reference"]["accuracy"]["value"]
        assert abs(p["metrics"]["accuracy"]["value"] - ref) < 0.03
    before = [w for w in realised if w < "2024-01-01T00:05:00" and w in estimated]
    after = [w for w in realised if w >= "2024-01-01T00:06:00" and w in estimated]
    assert before and after
    for w in before:
        est, got = estimated[w]["metrics"], realised[w]["metrics"]
        assert abs(est["accuracy"]["value"] - got["accuracy"]["value"]) < 0.03
        assert abs(est["roc_auc"]["value"] - got["roc_auc"]["value"]) < 0.03
    for w in after:
        assert (
            realised[w]["metrics"]["accuracy"]["value"]
            < estimated[w]["metrics"]["accuracy"]["lower"]
        )
        assert sum(map(sum, realised[w]["confusion_matrix"])) == realised[w]["count"]


def test_regression_error_doubling_alerts_performance_with_mae_and_rmse_in_metrics(
    config: Config, tmp_path: Path
) -> None:
    spec = WorkloadSpec(
        model_id="reg-price", rate=50.0, task="regression",
        changes=(ErrorScale(2.0, start=15_000),),
    )  # fmt: skip
    topics.apply(config, topics.load_topics(config))
    profile = reference_profile(spec, source="test regression reference")
    assert profile.task == "regression"
    BaselineStore(sync_client(config.redis), config.redis.prefix).put(profile)
    work = Workload(spec, 30_000, seed=7)
    producer = Producer({**config.kafka.librdkafka(), "linger.ms": 20})

    def send(topic: str, events: Iterator[dict]) -> None:
        batch: list[dict] = []
        for n, event in enumerate(events, 1):
            batch.append(event)
            if len(batch) == 250:
                producer.produce(topic, orjson.dumps(batch), partition=(n // 250) % 6)
                batch = []
        producer.produce(topic, orjson.dumps(batch), partition=0)
        assert producer.flush(30) == 0

    worker = WorkerProcess(config, tmp_path, **MONITOR_ENV)
    send(config.topics.predictions, work.predictions())
    worker.wait_for(
        lambda: worker.metric("streamproc_events_total", topic="predictions") >= 30_000,
        120,
        "predictions ingested",
    )
    send(config.topics.labels, work.labels())

    def overall(detector: str) -> list[dict]:
        alerts = [
            orjson.loads(m.value()) for m in consume_all(config, config.topics.alerts, 10**6, 3)
        ]
        return [
            a for a in alerts
            if a["kind"] == "performance" and a["status"] == "firing" and a["segment"] == {}
            and a["detector"] == detector
        ]  # fmt: skip

    try:
        worker.wait_for(lambda: bool(overall("mae")), 180, "an MAE alert")
        gauge = worker.metric("streamproc_regression_error", model="reg-price", segment="all",
                              metric="mae")  # fmt: skip
    finally:
        worker.stop()
    alert = overall("mae")[0]
    ev = alert["evidence"]
    assert ev["window_mae"] > 1.5 * ev["reference_mae"] and ev["window_rmse"] > ev["reference_rmse"]
    # errors double 300 s into the stream: nothing before it
    assert alert["window"]["start"] >= "2024-01-01T00:05:00"
    assert gauge > 0
    records = [
        orjson.loads(m.value()) for m in consume_all(config, config.topics.metrics, 10**6, 3)
    ]
    perf = [
        r["performance"] for r in records
        if r["model_id"] == "reg-price" and r["segment"] == {} and r["performance"].get("labelled")
    ]  # fmt: skip
    assert perf and all({"mae", "rmse", "mape"} <= set(p) for p in perf)
    assert not [p for p in perf if "accuracy" in p]
