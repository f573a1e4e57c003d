"""Multivariate drift end to end: a correlation flip through Kafka, the worker and Redis."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.dev.synthetic import Workload
from streamproc.kafka import topics
from streamproc.redis_client import sync_client
from tests.integration.workers import WorkerProcess, consume_all
from tests.unit.test_multivariate import RHO, SPEC, _correlated, _profile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MONITOR_ENV = {
    "STREAMPROC_MONITORING_WINDOW_S": "60",
    "STREAMPROC_MONITORING_TICK_S": "5",
    "STREAMPROC_MONITORING_LATENESS_S": "5",
    "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "300",
}
N_EVENTS = 30_000  # 10 minutes at 50 events/s: 10 windows
FLIP_AT = 12_000  # 4 minutes in: the correlation of f10 and f11 goes from +0.8 to -0.8


def test_correlation_flip_through_the_worker_fires_multivariate_drift_and_no_feature_alert(
    config: Config, tmp_path: Path
) -> None:
    topics.apply(config, topics.load_topics(config))
    BaselineStore(sync_client(config.redis), config.redis.prefix).put(_profile())
    producer = Producer({**config.kafka.librdkafka(), "linger.ms": 20})
    batch: list[dict] = []
    sent = 0
    for i, p in enumerate(Workload(SPEC, N_EVENTS, seed=7).predictions()):
        _correlated(p["features"], RHO if i < FLIP_AT else -RHO)
        batch.append(p)
        if len(batch) == 500:
            producer.produce(config.topics.predictions, orjson.dumps(batch), partition=sent % 6)
            sent += 1
            batch = []
    assert producer.flush(30) == 0
    worker = WorkerProcess(config, tmp_path, **MONITOR_ENV)
    try:
        # 8 monitors x the windows the watermark can close
        worker.wait_for(
            lambda: worker.metric("streamproc_windows_closed_total") >= 8 * 8, 240, "windows"
        )
    finally:
        worker.stop()
    alerts = [orjson.loads(m.value()) for m in consume_all(config, config.topics.alerts, 10_000, 5)]
    firing = [a for a in alerts if a["status"] == "firing"]
    described = [(a["kind"], a["detector"], a["feature"], a["segment"]) for a in firing]
    assert {(k, d) for k, d, _, _ in described} == {
        ("multivariate_drift", "reconstruction_error")
    }, described
    overall = [a for a in firing if a["segment"] == {}]
    assert overall and overall[0]["window"]["start"] >= "2024-01-01T00:04:00", described
    assert overall[0]["evidence"]["reconstruction_error"] > overall[0]["evidence"]["band"][1]
    assert overall[0]["source"]["offsets"], "an alert must say which offsets to replay"
