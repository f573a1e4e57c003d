"""Ingestion end to end: real worker processes, real Kafka, real Redis."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
import redis

from streamproc import topics
from streamproc.config import Config
from tests.integration.workers import WorkerProcess, consume_all, produce

pytestmark = pytest.mark.integration


def _prediction(i: int, **extra: object) -> dict:
    return {
        "prediction_id": f"p{i}",
        "model_id": "m",
        "model_version": "1",
        "timestamp": 1_700_000_000 + i,
        "features": {"x": i % 7, "plan": "a" if i % 2 else "b"},
        "prediction": (i % 10) / 10,
        "segments": {"country": "DE" if i % 3 else "FR"},
        **extra,
    }


def _label(i: int) -> dict:
    return {"prediction_id": f"p{i}", "timestamp": 1_700_000_500 + i, "label": i % 2}


def _batches(docs: list[dict], size: int) -> list[bytes]:
    return [json.dumps(docs[i : i + size]).encode() for i in range(0, len(docs), size)]


@pytest.fixture
def applied(config: Config) -> Config:
    topics.apply(config, topics.load_topics(config))
    return config


@pytest.mark.slow
def test_100k_shuffled_predictions_and_labels_give_exact_join_counts(
    applied: Config, tmp_path: Path
) -> None:
    rng = random.Random(7)
    n = 100_000
    labelled = [i for i in range(n) if i % 10 != 0]  # 10% never labelled
    dup_predictions = rng.sample(range(n), 500)
    dup_labels = rng.sample(labelled, 300)
    early = set(rng.sample(labelled, 20_000))  # these labels are on Kafka before predictions

    preds = [_prediction(i) for i in range(n)] + [_prediction(i) for i in dup_predictions]
    rng.shuffle(preds)
    labels_early = [_label(i) for i in labelled if i in early]
    labels_late = [_label(i) for i in labelled if i not in early] + [_label(i) for i in dup_labels]
    rng.shuffle(labels_late)

    produce(applied, applied.topics.labels, _batches(labels_early, 250))
    worker = WorkerProcess(applied, tmp_path)
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total", topic="labels") >= len(labels_early),
            120, "early labels",
        )  # fmt: skip
        produce(applied, applied.topics.predictions, _batches(preds, 500))
        produce(applied, applied.topics.labels, _batches(labels_late, 250))
        total = len(preds) + len(labels_early) + len(labels_late)
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total") >= total, 300, "all events"
        )
        m = worker.metric
        assert m("streamproc_join_total", result="joined") == len(labelled)
        assert m("streamproc_join_total", result="duplicate") == len(dup_predictions) + len(
            dup_labels
        )
        assert m("streamproc_events_total", topic="predictions", outcome="accepted") == n
        assert m("streamproc_events_total", topic="labels", outcome="accepted") == len(labelled)
        assert m("streamproc_deadletter_total", reason="duplicate:prediction_id") == 500
        assert m("streamproc_deadletter_total", reason="duplicate:label") == 300
        assert m("streamproc_label_delay_seconds_count") == len(labelled)
        worker.wait_for(
            lambda: m("streamproc_join_pending", side="prediction") == n - len(labelled),
            30, "pending gauge",
        )  # fmt: skip
        assert m("streamproc_join_pending", side="label") == 0
    finally:
        worker.stop()


def test_predictions_never_labelled_expire_and_count(applied: Config, tmp_path: Path) -> None:
    produce(
        applied, applied.topics.predictions, _batches([_prediction(i) for i in range(300)], 100)
    )
    produce(applied, applied.topics.labels, _batches([_label(i) for i in range(100)], 100))
    worker = WorkerProcess(
        applied,
        tmp_path,
        STREAMPROC_JOIN_PREDICTION_TTL_S="2",
        STREAMPROC_JOIN_SWEEP_INTERVAL_S="1",
    )
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_join_total", result="expired_prediction") >= 200,
            60, "expiry",
        )  # fmt: skip
        assert worker.metric("streamproc_join_total", result="joined") == 100
        assert worker.metric("streamproc_join_total", result="expired_prediction") == 200
        assert worker.metric("streamproc_never_labelled_ratio") == pytest.approx(200 / 300)
    finally:
        worker.stop()


BAD_INPUTS: list[tuple[bytes, str]] = [
    (b'{"prediction_id": "b1", "model_id": "m", "model_version": "1", "prediction"',
     "invalid_json"),
    (b'{"prediction_id": 5, "model_id": "m", "model_version": "1", "prediction": 1}',
     "schema:prediction_id:wrong_type"),
    (b'{"model_id": "m", "model_version": "1", "prediction": 1}', "schema:prediction_id:missing"),
    (b'{"prediction_id": "b2", "model_id": "m", "model_version": "1", "prediction": NaN}',
     "non_finite_number"),
    (b'{"prediction_id": "b3", "model_id": "m", "model_version": "1", "prediction": 1,'
     b' "features": {"x": Infinity}}', "non_finite_number"),
    (b'{"prediction_id": "b4", "model_id": "m", "model_version": "1", "prediction": 1,'
     b' "features": {"x": {"deep": [{"deeper": [1, {"a": null}]}]}}}',
     "schema:features:wrong_type"),
    (b'{"prediction_id": "b5", "model_id": "m", "model_version": "1", "prediction": "' +
     b"x" * (5 * 1024 * 1024) + b'"}', "too_large"),
    (b"\xff\xfe\x00garbage", "not_utf8"),
    (b"", "empty"),
    (b"[]", "empty_batch"),
    (json.dumps(_prediction(1)).encode(), "duplicate:prediction_id"),  # p1 repeated, below
]  # fmt: skip


def test_bad_inputs_land_in_deadletter_with_reason_and_bytes_while_good_traffic_flows(
    applied: Config, tmp_path: Path
) -> None:
    good = [json.dumps(_prediction(i)).encode() for i in range(200)]
    mixed_batch = json.dumps(
        [_prediction(1000), {"prediction_id": "b6", "prediction": 1}, _prediction(1001)]
    ).encode()
    values = [*good[:100], *(v for v, _ in BAD_INPUTS), mixed_batch, *good[100:]]
    produce(applied, applied.topics.predictions, [(b"key", v) for v in values])

    worker = WorkerProcess(applied, tmp_path)
    try:
        # 202 accepted events + 12 dead letters (11 bad messages, 1 bad batch element)
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total", topic="predictions") >= 214,
            120, "all messages",
        )  # fmt: skip
        assert worker.metric("streamproc_messages_total", topic="predictions") == len(values)
        accepted = worker.metric("streamproc_events_total", topic="predictions", outcome="accepted")
        assert accepted == 202  # 200 singles + 2 good elements of the mixed batch
        assert worker.proc.poll() is None, "the worker must not crash on data"
    finally:
        worker.stop()

    expected = [*BAD_INPUTS, (mixed_batch, "schema:model_id:missing")]
    letters = [
        json.loads(m.value())
        for m in consume_all(applied, applied.topics.deadletter, len(expected))
    ]
    assert sorted(d["error"]["code"] for d in letters) == sorted(reason for _, reason in expected)
    by_value = {base64.b64decode(d["value_b64"]): d for d in letters}
    for value, reason in BAD_INPUTS:
        letter = by_value[value]
        assert letter["error"]["code"] == reason
        assert letter["topic"] == applied.topics.predictions
        assert letter["key_b64"] == base64.b64encode(b"key").decode()
        assert letter["error"]["message"]
    batch_letter = next(d for d in letters if d["error"]["code"] == "schema:model_id:missing")
    assert batch_letter["batch_index"] == 1
    assert json.loads(base64.b64decode(batch_letter["value_b64"]))["prediction_id"] == "b6"


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_joins_every_labelled_prediction_exactly_once(
    applied: Config, tmp_path: Path
) -> None:
    n = 30_000
    preds = [json.dumps(_prediction(i)).encode() for i in range(n)]
    labels = [json.dumps(_label(i)).encode() for i in range(n) if i % 5]
    produce(applied, applied.topics.predictions, preds)
    produce(applied, applied.topics.labels, labels)

    first = WorkerProcess(applied, tmp_path)
    first.wait_for(
        lambda: first.metric("streamproc_join_total", result="joined") >= 3_000, 120, "progress"
    )
    first.kill()
    done_before = first.log_path.read_text(errors="replace")
    assert "Traceback" not in done_before

    second = WorkerProcess(applied, tmp_path)
    try:
        second.wait_for(
            lambda: second.metric("streamproc_join_pending", side="label") == 0
            and second.metric("streamproc_join_pending", side="prediction") == n - len(labels)
            and second.metric("streamproc_events_total") > 0,
            180, "the rest of the stream",
        )  # fmt: skip
        assert second.metric("streamproc_join_total", result="duplicate") == 0
    finally:
        second.stop()

    client = redis.Redis.from_url(applied.redis.url)
    prefix = applied.redis.key_prefix
    # One state key per id (see streamproc/join.py): "j" tombstone, "p"/"l" pending.
    states = client.mget(list(client.scan_iter(f"{prefix}:i:*", count=5000)))
    assert len(states) == n
    tombstones = [v[1:] for v in states if v.startswith(b"j")]
    assert len(tombstones) == len(labels)
    # Each tombstone names both halves' origins: joined once, by exactly one arrival.
    assert all(
        v.count(b"/") == 1 and not v.startswith(b"/") and not v.endswith(b"/") for v in tombstones
    )
    assert [v for v in states if v.startswith(b"l")] == []
    assert sum(v.startswith(b"p") for v in states) == n - len(labels)
    assert list(consume_all(applied, applied.topics.deadletter, 1, timeout=3)) == []


def test_compressed_producer_traffic_is_read(applied: Config, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    codecs = ["lz4", "zstd", "snappy", "gzip"]
    for n, codec in enumerate(codecs):
        producer = Producer({**applied.kafka.librdkafka(), "compression.type": codec})
        docs = [_prediction(i) for i in range(n * 1000, (n + 1) * 1000)]
        for value in _batches(docs, 100):
            producer.produce(applied.topics.predictions, value=value)
        assert producer.flush(10) == 0
    worker = WorkerProcess(applied, tmp_path)
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total", topic="predictions") >= 4000,
            60, "compressed batches",
        )  # fmt: skip
        assert worker.metric("streamproc_events_total", outcome="accepted") == 4000
    finally:
        worker.stop()
