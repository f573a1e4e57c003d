"""streamproc on a replicated Kafka (3 brokers) and a Redis Cluster (3 masters, 3 replicas).

The cluster is the project's own (``streamproc stack up --brokers 3 --redis-cluster 3`` on ports
of its own), started once for this module and stopped after it. Every scenario sends the same
traffic in two halves (predictions, and labels for a part of them); between the halves
something fails: a broker or a Redis master is killed with SIGKILL, or the worker is. Each run
must join every label exactly once (counted on the join's tombstones in Redis) and publish the
same alerts as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import orjson
import pytest
from confluent_kafka import Producer

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.dev.stack import Stack
from streamproc.dev.synthetic import (
    AccuracyDrop,
    MeanShift,
    Workload,
    WorkloadSpec,
    reference_profile,
)
from streamproc.ingest.join import key_patterns
from streamproc.kafka import topics
from streamproc.redis_client import sync_client
from tests.integration.workers import WorkerProcess, consume_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KAFKA_PORT = int(os.environ.get("STREAMPROC_TEST_CLUSTER_KAFKA_PORT", "29192"))
REDIS_PORT = int(os.environ.get("STREAMPROC_TEST_CLUSTER_REDIS_PORT", "17101"))
MONITOR_ENV = {
    "STREAMPROC_MONITORING_WINDOW_S": "60",
    "STREAMPROC_MONITORING_TICK_S": "5",
    "STREAMPROC_MONITORING_LATENESS_S": "5",
    # The traffic's end is judged after this much silence, so every run ends with every window
    # closed (a failover's pause is shorter).
    "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "45",
    "STREAMPROC_KAFKA_REPLICATION_FACTOR": "3",
}
N_EVENTS = 24_000  # 8 minutes of event time at 50 events/s: 8 windows
TRAFFIC_END = "2024-01-01T00:08:00"
SPEC = WorkloadSpec(
    rate=50.0,
    label_fraction=0.5,
    changes=(
        MeanShift("f03", 1.0, start=9_000, end=20_000, segment={"country": "DE"}),
        AccuracyDrop(0.6, start=12_000),
    ),
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Stack]:
    if os.environ.get("STREAMPROC_TEST_CLUSTER") == "0":
        pytest.skip("STREAMPROC_TEST_CLUSTER=0")
    stack = Stack(kafka_port=KAFKA_PORT, redis_port=REDIS_PORT, brokers=3, redis_cluster=3)
    # Always a fresh cluster: one left by an interrupted session may have lost a replica to a
    # failover test.
    stack.down()
    try:
        stack.up(fresh=True)
        yield stack
    finally:
        stack.down()


def _config(stack: Stack) -> Config:
    from tests.conftest import Endpoints, config_for

    cfg = config_for(Endpoints(stack.bootstrap, stack.redis_url, "cluster"), uuid.uuid4().hex[:10])
    return msgspec.structs.replace(
        cfg, kafka=msgspec.structs.replace(cfg.kafka, replication_factor=3)
    )


def _traffic() -> tuple[list[dict], list[dict]]:
    work = Workload(SPEC, N_EVENTS, seed=7)
    return list(work.predictions()), list(work.labels())


def _send(cfg: Config, first: int, last: int) -> None:
    """Predictions ``first..last-1`` of the workload, then their labels."""
    every, all_labels = _traffic()
    predictions = every[first:last]
    ids = {p["prediction_id"] for p in predictions}
    labels = [lab for lab in all_labels if lab["prediction_id"] in ids]
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20, "enable.idempotence": True})
    for topic, events in ((cfg.topics.predictions, predictions), (cfg.topics.labels, labels)):
        for n, start in enumerate(range(0, len(events), 250)):
            body = orjson.dumps(events[start : start + 250])
            producer.produce(topic, body, partition=n % 6)
    assert producer.flush(60) == 0


@dataclass
class Run:
    alerts: list[str]
    joined: int  # tombstones of a join in Redis
    pending_predictions: int
    log_tail: str = ""


Disrupt = Callable[[Config, WorkerProcess], WorkerProcess]


def _run(stack: Stack, tmp_path: Path, disrupt: Disrupt, expect: Run | None = None) -> Run:
    """The workload through one worker; ``disrupt`` runs between the halves and returns the
    worker that goes on (the same one, or a new one after a kill)."""
    cfg = _config(stack)
    report = topics.apply(cfg, topics.load_topics(cfg))
    assert len(report.created) == 6
    store = BaselineStore(sync_client(cfg.redis), cfg.redis.prefix)
    store.put(reference_profile(SPEC, source="test reference"))
    worker = WorkerProcess(cfg, tmp_path, **MONITOR_ENV)
    try:
        half = N_EVENTS // 2
        _send(cfg, 0, half)
        worker.wait_for(
            lambda: worker.metric("streamproc_windows_closed_total") >= 8 * 2, 180, "two windows"
        )
        worker = disrupt(cfg, worker)
        _send(cfg, half, N_EVENTS)

        def judged() -> bool:  # 8 monitors (all traffic, 7 segments) x 8 windows
            return len(_closed_windows(cfg)) >= 8 * 8

        worker.wait_for(judged, 400, "every window, the last ones after the idle timeout")
        worker.wait_until_judged(120, still_s=10)
        if expect is not None:
            # A failover may hold a stage back for a while; what matters is that it catches up.
            # (When they never come, the comparison after the run says which alerts differ.)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not set(expect.alerts) <= set(_alerts(cfg)):
                assert worker.proc.poll() is None, f"the worker exited; {worker.tail()}"
                time.sleep(1)
    finally:
        worker.stop()
    worker.assert_healthy()
    joined, pending = _join_state(cfg, stack)
    return Run(_alerts(cfg), joined, pending, worker.tail())


def _alerts(cfg: Config) -> list[str]:
    """The alerts about the traffic's windows, without what differs between runs (sorted; no
    id twice). After the traffic, every ``window_s`` of silence closes one more (empty) window:
    how many depends on how long a run stays up, so those are left out."""
    alerts = [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.alerts, 10**6, 3)]
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids)), "an alert was published twice"
    alerts = [a for a in alerts if a["window"]["start"] < TRAFFIC_END]
    return sorted(
        json.dumps(
            {k: v for k, v in a.items() if k not in ("emitted_at", "source")}, sort_keys=True
        )
        for a in alerts
    )


def _closed_windows(cfg: Config) -> list[tuple[str, str]]:
    records = [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.metrics, 10**6, 2)]
    return [
        (json.dumps(r["segment"], sort_keys=True), r["window"]["start"])
        for r in records
        if r["count"]
    ]


def _join_state(cfg: Config, stack: Stack) -> tuple[int, int]:
    """(joins, pending predictions) in the join's state keys, on every node of the cluster.

    A new client, from the configured URL, which names every node: it starts from one that
    answers when another is down."""
    client = sync_client(cfg.redis)
    keys = [
        k
        for pattern in key_patterns(cfg.redis.key_prefix)[:1]
        for k in client.scan_iter(match=pattern, count=5000)
        if b":i:" in k
    ]
    values = [client.get(k) for k in keys]
    joined = 0
    for v in values:
        if v.startswith(b"j"):
            pair = v[1:].split(b"|", 1)[0]
            p_origin, l_origin = pair.split(b"/")
            assert p_origin and l_origin, f"a tombstone of an expiry: {v[:60]!r}"
            joined += 1
    return joined, sum(v.startswith(b"p") for v in values)


@pytest.fixture(scope="module")
def uninterrupted(cluster: Stack, tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = _run(cluster, tmp_path_factory.mktemp("steady"), lambda _, w: w)
    assert run.alerts, "the scenario must raise alerts to compare"
    assert any('"kind": "performance"' in a for a in run.alerts), "labels must reach the judge"
    return run


def _expect_same(run: Run, uninterrupted: Run) -> None:
    labels = len(_traffic()[1])
    assert 0 < labels < N_EVENTS
    only = [a[:400] for a in run.alerts if a not in uninterrupted.alerts]
    missing = [a[:400] for a in uninterrupted.alerts if a not in run.alerts]
    counts = (run.joined, run.pending_predictions, uninterrupted.joined, labels)
    what = f"joins, pending, reference joins, labels: {counts}\nextra: {only}\nmissing: {missing}"
    assert run.joined == uninterrupted.joined == labels, f"{what}\n{run.log_tail}"
    assert run.pending_predictions == uninterrupted.pending_predictions == N_EVENTS - labels, what
    assert run.alerts == uninterrupted.alerts, f"{what}\n{run.log_tail}"


def test_a_broker_killed_mid_stream_loses_nothing_and_changes_no_alert(
    cluster: Stack, uninterrupted: Run, tmp_path: Path
) -> None:
    def kill_broker(_: Config, worker: WorkerProcess) -> WorkerProcess:
        cluster.kafka.kill(2)
        return worker

    try:
        run = _run(cluster, tmp_path, kill_broker, uninterrupted)
    finally:
        cluster.kafka.start(2)
    _expect_same(run, uninterrupted)


def test_a_redis_master_killed_mid_stream_fails_over_and_loses_nothing(
    cluster: Stack, uninterrupted: Run, tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_master(_: Config, worker: WorkerProcess) -> WorkerProcess:
        port = cluster.redis.masters()[0]
        cluster.redis.kill(port)
        killed.append(port)
        return worker

    try:
        run = _run(cluster, tmp_path, kill_master, uninterrupted)
    finally:
        for port in killed:
            cluster.redis.start(port)  # it rejoins as a replica of the promoted one
        cluster.redis.wait_ok(60)
    _expect_same(run, uninterrupted)


def test_a_worker_killed_mid_stream_on_the_cluster_resumes_where_it_committed(
    cluster: Stack, uninterrupted: Run, tmp_path: Path
) -> None:
    def kill_worker(cfg: Config, worker: WorkerProcess) -> WorkerProcess:
        worker.kill()
        return WorkerProcess(cfg, tmp_path, **MONITOR_ENV)

    run = _run(cluster, tmp_path, kill_worker, uninterrupted)
    _expect_same(run, uninterrupted)
