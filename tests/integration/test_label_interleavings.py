"""The same predictions and labels give the same performance alerts however they arrive.

Two deployments read identical traffic (a feature shift in one country, an accuracy drop in one
device) placed differently on the partitions and read in a different order: one gets the
predictions in 100-event messages round-robin and the labels after them; the other gets the
labels first, in 100-event messages, and the predictions in 500-event messages (10 s of event
time each, twice the lateness) keyed by a hash of their first id. Both workers catch up on a
backlog, so in the second every label waits in the join for its prediction. The alerts are the
same, field for field but the replay offsets (which differ with the placement) and
``emitted_at``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from confluent_kafka import Producer

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.dev.synthetic import (
    AccuracyDrop,
    MeanShift,
    WorkloadSpec,
    generate,
    reference_profile,
)
from streamproc.kafka import topics
from streamproc.redis_client import sync_client
from tests.conftest import Endpoints, config_for
from tests.integration.test_monitoring import MONITOR_ENV
from tests.integration.workers import WorkerProcess, consume_all

pytestmark = pytest.mark.integration

SPEC = WorkloadSpec(
    rate=50.0,
    label_delay_median_s=5.0,
    changes=(
        MeanShift("f03", 1.0, start=3_000, segment={"country": "DE"}),
        AccuracyDrop(0.7, start=3_000, segment={"device": "ios"}),
    ),
)
N_EVENTS = 12_000  # four minutes of event time: four windows


def _traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    predictions: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for event in generate(SPEC, n_events=N_EVENTS, seed=5):
        (predictions if event.kind == "prediction" else labels).append(event.value)
    return predictions, labels


def _send(cfg: Config, topic: str, docs: list[dict[str, Any]], per: int, keyed: bool) -> None:
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20})
    for n, i in enumerate(range(0, len(docs), per)):
        chunk = docs[i : i + per]
        if keyed:  # by the first id of the message: the partitioner's hash places it
            producer.produce(topic, orjson.dumps(chunk), key=chunk[0]["prediction_id"].encode())
        else:
            producer.produce(topic, orjson.dumps(chunk), partition=n % 6)
    assert producer.flush(30) == 0


def _alerts(cfg: Config, tmp_path: Path, labels_first: bool) -> list[dict[str, Any]]:
    topics.apply(cfg, topics.load_topics(cfg))
    tmp_path.mkdir(parents=True, exist_ok=True)
    with sync_client(cfg.redis) as client:
        BaselineStore(client, cfg.redis.prefix).put(reference_profile(SPEC, 10_000))
    predictions, labels = _traffic()
    if labels_first:
        _send(cfg, cfg.topics.labels, labels, 100, keyed=True)
        _send(cfg, cfg.topics.predictions, predictions, 500, keyed=True)
    else:
        _send(cfg, cfg.topics.predictions, predictions, 100, keyed=False)
        _send(cfg, cfg.topics.labels, labels, 100, keyed=False)
    env = {**MONITOR_ENV, "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "5"}
    worker = WorkerProcess(cfg, tmp_path, **env)
    try:
        total = len(predictions) + len(labels)
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total") >= total, 240, "every event read"
        )
        worker.wait_until_judged(120)
        late = worker.metric("streamproc_late_events_total")
    finally:
        worker.stop()
    assert late == 0
    return [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.alerts, 10_000, 10)]


def _comparable(alert: dict[str, Any]) -> bytes:
    return msgspec.json.encode(
        {k: v for k, v in alert.items() if k not in ("source", "emitted_at")}
    )


def test_labels_read_before_or_after_their_predictions_give_the_same_alerts(
    endpoints: Endpoints, unique: str, tmp_path: Path
) -> None:
    straight = _alerts(config_for(endpoints, f"{unique}a"), tmp_path / "a", labels_first=False)
    reordered = _alerts(config_for(endpoints, f"{unique}b"), tmp_path / "b", labels_first=True)
    kinds = {(a["kind"], a["detector"]) for a in straight if a["status"] == "firing"}
    print("alerts", len(straight), len(reordered), sorted(kinds))
    assert {"feature_drift", "performance"} <= {kind for kind, _ in kinds}, kinds
    # The window after the data (closed by the 5 s idle timeout, its silence alerted) may be
    # judged before the worker stops or not, in either run: what is compared is the traffic's.
    end = SPEC.time_of(N_EVENTS)

    def of_traffic(alerts: list[dict[str, Any]]) -> list[bytes]:
        return sorted(_comparable(a) for a in alerts if _epoch(a["window"]["start"]) < end)

    assert of_traffic(reordered) == of_traffic(straight)


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
