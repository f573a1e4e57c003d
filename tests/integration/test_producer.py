"""The producer SDK against a real Kafka: placement, batching, delivery errors, shutdown."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.config import Config
from streamproc.contracts import Label, Prediction, decode_message
from streamproc.errors import TopicError
from streamproc.kafka import topics
from streamproc.sdk.producer import PredictionLogger, default_partition

pytestmark = pytest.mark.integration


@pytest.fixture
def created(config: Config) -> Iterator[Config]:
    topics.apply(config, topics.load_topics(config))
    yield config
    AdminClient(config.kafka.librdkafka()).delete_topics(
        [s.name for s in topics.load_topics(config)]
    )


def _consume(
    config: Config, names: list[str], expected: int, kind_of: dict[str, type]
) -> list[tuple[Any, Any]]:
    """Every message on ``names`` until ``expected`` events were read (or 60 s of silence)."""
    consumer = Consumer(
        {
            **config.kafka.librdkafka(),
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(names)
    messages: list[tuple[Any, Any]] = []
    events = idle = 0
    try:
        while events < expected and idle < 60:
            batch = consumer.consume(num_messages=500, timeout=1.0)
            idle = 0 if batch else idle + 1
            for msg in batch:
                assert msg.error() is None, msg.error()
                decoded = decode_message(msg.value(), kind_of[msg.topic()])
                assert decoded.rejections == []
                messages.append((msg, decoded))
                events += len(decoded.events)
    finally:
        consumer.close()
    return messages


def test_ten_thousand_predictions_and_labels_arrive_once_each_in_their_murmur2_partition(
    created: Config,
) -> None:
    config = created
    n = 10_000
    ids = [f"pred-{uuid.uuid4()}" for _ in range(n)]
    # A linger longer than the test: every batch is cut by size, the rest by the exit flush.
    with PredictionLogger(config, batch_size=500, linger_ms=600_000) as logger:
        for i, pid in enumerate(ids):
            logger.log(
                prediction_id=pid,
                model_id="fraud",
                model_version="3",
                features={"x": float(i), "country": "DE" if i % 2 else "FR", "gap": None},
                prediction=i % 2 == 0,
                confidence=0.5,
                segments={"region": "eu"},
            )
            logger.label(prediction_id=pid, label=i % 3 == 0, model_id="fraud")
    assert (logger.delivered_events, logger.failed_events, logger.outstanding_events) == (
        2 * n,
        0,
        0,
    )

    kind_of = {config.topics.predictions: Prediction, config.topics.labels: Label}
    messages = _consume(config, list(kind_of), 2 * n, kind_of)
    counts: dict[str, Counter[str]] = {t: Counter() for t in kind_of}
    sizes: dict[tuple[str, int], list[int]] = {}
    for msg, decoded in messages:
        pids = [e.prediction_id for e in decoded.events]
        assert msg.value().startswith(b"[") and 1 <= len(pids) <= 500
        assert msg.key() == pids[0].encode()
        assert {default_partition(p, 6) for p in pids} == {msg.partition()}
        counts[msg.topic()].update(pids)
        sizes.setdefault((msg.topic(), msg.partition()), []).append(len(pids))
        for event in decoded.events:
            i = int(event.features["x"]) if isinstance(event, Prediction) else None
            if i is not None:
                assert ids[i] == event.prediction_id and event.prediction == (i % 2 == 0)
    for topic in kind_of:
        assert set(counts[topic]) == set(ids), topic
        assert max(counts[topic].values()) == 1, topic
    for (topic, partition), got in sizes.items():
        total = sum(1 for p in ids if default_partition(p, 6) == partition)
        assert got == [500] * (total // 500) + ([total % 500] if total % 500 else []), topic


def test_our_partition_is_the_one_librdkafkas_java_compatible_partitioner_picks(
    created: Config,
) -> None:
    # A single-event producer keyed by prediction_id (murmur2_random is librdkafka's
    # Java-compatible partitioner) puts each key where PredictionLogger puts its batch.
    producer = Producer({**created.kafka.librdkafka(), "partitioner": "murmur2_random"})
    placed: dict[bytes, int] = {}

    def record(err: KafkaError | None, msg: Any) -> None:
        assert err is None, err
        placed[msg.key()] = msg.partition()

    keys = [f"pred-{i}-{uuid.uuid4().hex[: i % 17]}".encode() for i in range(300)]
    for key in keys:
        producer.produce(created.topics.predictions, b"{}", key, on_delivery=record)
    assert producer.flush(30) == 0
    with PredictionLogger(created) as logger:
        assert {k: logger.partition_for(k.decode()) for k in keys} == placed
    assert len(set(placed.values())) == 6


def test_a_message_the_broker_refuses_is_reported_to_the_callback_and_counted(
    config: Config, unique: str
) -> None:
    tiny = f"t-{unique}-tiny"
    admin = AdminClient(config.kafka.librdkafka())
    futures = admin.create_topics([NewTopic(tiny, 3, 1, config={"max.message.bytes": "2000"})])
    futures[tiny].result()
    config = msgspec.structs.replace(
        config, topics=msgspec.structs.replace(config.topics, predictions=tiny)
    )
    reports: list[tuple[KafkaError | None, int]] = []
    try:
        with PredictionLogger(
            config, batch_size=500, on_delivery=lambda e, n: reports.append((e, n))
        ) as logger:
            # 100 events bound for one partition: one message of ~8 KB, over the 2000 bytes.
            pids = [f"big-{j}" for j in range(10_000) if default_partition(f"big-{j}", 3) == 0]
            for i, pid in enumerate(pids[:100]):
                logger.log(
                    prediction_id=pid,
                    model_id="m",
                    model_version="1",
                    features={"x": float(i)},
                    prediction=1.0,
                )
            assert logger.flush() == 0
            failed = [(e.code(), n) for e, n in reports if e is not None]
            assert failed and all(code == KafkaError.MSG_SIZE_TOO_LARGE for code, _ in failed)
            assert logger.failed_events == sum(n for _, n in failed) == 100
            assert logger.failed_messages == len(failed)
            assert logger.last_error is not None
            assert logger.last_error.code() == KafkaError.MSG_SIZE_TOO_LARGE
            assert logger.delivered_events == 0

            # The logger keeps working: a small message to the same topic is delivered.
            logger.log(
                prediction_id="small", model_id="m", model_version="1", features={}, prediction=1
            )
            assert logger.flush() == 0
        assert logger.delivered_events == 1 and reports[-1] == (None, 1)
    finally:
        admin.delete_topics([tiny])


def test_the_context_manager_flushes_what_is_still_lingering_on_exit(created: Config) -> None:
    ids = [f"ctx-{i}" for i in range(7)]
    with PredictionLogger(created, batch_size=500, linger_ms=600_000) as logger:
        for pid in ids:
            logger.log(
                prediction_id=pid, model_id="m", model_version="1", features={}, prediction=0
            )
        assert logger.buffered_events == 7 and logger.delivered_events == 0
    assert (logger.delivered_events, logger.outstanding_events) == (7, 0)
    assert logger.flush() == 0  # harmless once closed
    kinds = {created.topics.predictions: Prediction}
    messages = _consume(created, list(kinds), 7, kinds)
    assert sorted(e.prediction_id for _, d in messages for e in d.events) == ids


def test_lingering_events_are_sent_without_flush(created: Config) -> None:
    logger = PredictionLogger(created, batch_size=500, linger_ms=20)
    try:
        for i in range(3):
            logger.label(prediction_id=f"l{i}", label=i)
        kinds = {created.topics.labels: Label}
        messages = _consume(created, list(kinds), 3, kinds)
        assert sorted(e.prediction_id for _, d in messages for e in d.events) == ["l0", "l1", "l2"]
        assert logger.delivered_events == 3
    finally:
        logger.close()


def test_a_missing_topic_is_an_error_and_is_not_auto_created(config: Config) -> None:
    # No topics.apply: the configured topics do not exist.
    with PredictionLogger(config) as logger, pytest.raises(TopicError, match="topics apply"):
        logger.log(prediction_id="p", model_id="m", model_version="1", features={}, prediction=1)
    existing = AdminClient(config.kafka.librdkafka()).list_topics(timeout=10).topics
    assert config.topics.predictions not in existing
