"""The producer SDK without a broker: murmur2, batching, linger, validation, delivery accounting.

A small in-memory stand-in for confluent's Producer records what would be sent; everything
that depends on Kafka itself (partitioning by a real client, broker rejections, metadata) is
pinned against the real broker in tests/integration/test_producer.py.
"""

from __future__ import annotations

import decimal
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException

from streamproc.config import Config, load_config
from streamproc.contracts import Label, Prediction, decode_message
from streamproc.sdk.producer import (
    InvalidEvent,
    PredictionLogger,
    ProducerError,
    default_partition,
    encode_event,
    murmur2,
)

# From Kafka's own clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java.
KAFKA_UTILS_TEST = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# Computed with the Java client itself (kafka-clients 3.9.1, jshell): Utils.murmur2(key) and
# BuiltInPartitioner.partitionForKey(key, 6) and (key, 7), key = the string's UTF-8 bytes.
JAVA_CLIENT = [
    ("", 275646681, 3, 2),
    ("p-1", 1865926180, 4, 6),
    ("pred-000042", -1276026723, 5, 3),
    ("3f2a9c1e-7b7d-4c53-9d0e-5b1f7f8a2c41", 181694514, 0, 1),
    ("ü-Unicode-é", 1482982370, 2, 2),
    ("21", -973932308, 0, 3),
    ("a-little-bit-longer-string", -1486304829, 5, 0),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 5, 3),
]


@pytest.mark.parametrize(("key", "expected"), KAFKA_UTILS_TEST.items(), ids=lambda v: repr(v))
def test_murmur2_equals_kafkas_own_test_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "hash_", "p6", "p7"), JAVA_CLIENT, ids=lambda v: repr(v))
def test_partition_equals_the_java_clients_for_utf8_keys(
    key: str, hash_: int, p6: int, p7: int
) -> None:
    assert murmur2(key.encode()) == hash_
    assert (default_partition(key, 6), default_partition(key, 7)) == (p6, p7)
    assert default_partition(key.encode(), 6) == p6


def test_partition_of_a_negative_hash_is_its_low_31_bits_modulo_the_count() -> None:
    # Java's toPositive masks the sign bit; it does not take abs() (which would differ).
    assert murmur2(b"21") < 0
    assert default_partition(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7 != abs(-973932308) % 7


# -- a stand-in for confluent_kafka.Producer -------------------------------------------------


@dataclass
class Sent:
    topic: str
    partition: int
    key: bytes
    value: bytes


class FakeProducer:
    """Records messages; serves delivery reports on poll/flush, with ``fail_with`` or success."""

    def __init__(self, partitions: int = 6) -> None:
        self.partitions = partitions
        self.sent: list[Sent] = []
        self.fail_with: KafkaError | None = None
        self.raise_on_produce: BaseException | None = None
        self.hold = False  # keep delivery reports back, as a broker that does not answer
        self.polls = 0
        self.metadata_calls = 0
        self._pending: list[tuple[Callable[..., None], KafkaError | None]] = []
        self._lock = threading.Lock()

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        partition: int = -1,
        on_delivery: Callable[..., None] | None = None,
    ) -> None:
        if self.raise_on_produce is not None:
            raise self.raise_on_produce
        assert 0 <= partition < self.partitions and on_delivery is not None
        with self._lock:
            self.sent.append(Sent(topic, partition, key, value))
            self._pending.append((on_delivery, self.fail_with))

    def _serve(self) -> int:
        with self._lock:
            if self.hold:
                return 0
            pending, self._pending = self._pending, []
        for callback, err in pending:
            callback(err, None)
        return len(pending)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        served = self._serve()
        if not served:
            time.sleep(min(timeout, 0.005))
        return served

    def flush(self, timeout: float) -> int:
        self._serve()
        return len(self._pending)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.metadata_calls += 1
        meta = SimpleNamespace(error=None, partitions=dict.fromkeys(range(self.partitions)))
        return SimpleNamespace(topics={topic: meta})

    def messages(self, topic: str) -> list[Sent]:
        with self._lock:
            return [m for m in self.sent if m.topic == topic]


@pytest.fixture
def cfg() -> Config:
    return load_config(env={})


@pytest.fixture
def fake() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def make(cfg: Config, fake: FakeProducer) -> Iterator[Callable[..., PredictionLogger]]:
    made: list[PredictionLogger] = []

    def _make(**kwargs: Any) -> PredictionLogger:
        kwargs.setdefault("linger_ms", 60_000)
        logger = PredictionLogger(cfg, producer=kwargs.pop("producer", fake), **kwargs)
        made.append(logger)
        return logger

    yield _make
    for logger in made:
        logger.close(timeout=1.0)


def _log(logger: PredictionLogger, pid: str, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "prediction_id": pid,
        "model_id": "fraud",
        "model_version": "3",
        "features": {"amount": 12.5, "country": "DE", "new": True, "missing": None},
        "prediction": 0.25,
        "timestamp": 1_704_067_200.0,
    }
    fields.update(overrides)
    logger.log(**fields)


def _events(message: Sent, kind: type[Any] = Prediction) -> list[Any]:
    decoded = decode_message(message.value, kind)
    assert decoded.rejections == []
    return decoded.events


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


# -- batching --------------------------------------------------------------------------------


def test_a_group_is_sent_as_one_array_when_it_reaches_batch_size(
    make: Callable[..., PredictionLogger], fake: FakeProducer, cfg: Config
) -> None:
    fake.partitions = 1
    logger = make(batch_size=3)
    for i in range(7):
        _log(logger, f"p{i}")
    sent = fake.messages(cfg.topics.predictions)
    assert [[e.prediction_id for e in _events(m)] for m in sent] == [
        ["p0", "p1", "p2"],
        ["p3", "p4", "p5"],
    ]
    assert all(m.value.startswith(b"[") for m in sent)
    assert logger.buffered_events == 1
    assert logger.flush() == 0
    last = fake.messages(cfg.topics.predictions)[-1]
    assert [e.prediction_id for e in _events(last)] == ["p6"] and last.value.startswith(b"[")
    assert logger.delivered_events == 7


def test_each_message_holds_only_events_of_its_partition_keyed_by_the_first_one(
    make: Callable[..., PredictionLogger], fake: FakeProducer, cfg: Config
) -> None:
    logger = make(batch_size=1000)
    ids = [f"pred-{i:05d}" for i in range(300)]
    for pid in ids:
        _log(logger, pid)
    assert fake.sent == []
    assert logger.flush() == 0
    sent = fake.messages(cfg.topics.predictions)
    assert sorted(m.partition for m in sent) == sorted({default_partition(p, 6) for p in ids})
    seen = []
    for message in sent:
        pids = [e.prediction_id for e in _events(message)]
        assert {default_partition(p, 6) for p in pids} == {message.partition}
        assert message.key == pids[0].encode()
        assert default_partition(message.key, 6) == message.partition
        seen += pids
    assert sorted(seen) == ids
    # Within a partition, events keep the order they were logged in.
    for message in sent:
        pids = [e.prediction_id for e in _events(message)]
        assert pids == sorted(pids)


def test_predictions_and_labels_go_to_their_own_topics(
    make: Callable[..., PredictionLogger], fake: FakeProducer, cfg: Config
) -> None:
    logger = make(batch_size=10)
    _log(logger, "p1")
    logger.label(prediction_id="p1", label=True, model_id="fraud", timestamp=1_704_067_300.0)
    logger.flush()
    (label_message,) = fake.messages(cfg.topics.labels)
    (label,) = _events(label_message, Label)
    assert (label.prediction_id, label.label, label.model_id) == ("p1", True, "fraud")
    assert label_message.partition == default_partition("p1", 6)
    assert [e.prediction_id for e in _events(fake.messages(cfg.topics.predictions)[0])] == ["p1"]


def test_batch_size_one_sends_each_event_alone_as_a_plain_object(
    make: Callable[..., PredictionLogger], fake: FakeProducer, cfg: Config
) -> None:
    logger = make(batch_size=1)
    for i in range(3):
        _log(logger, f"p{i}")
    sent = fake.messages(cfg.topics.predictions)
    assert [m.value[:1] for m in sent] == [b"{"] * 3
    assert [m.key for m in sent] == [b"p0", b"p1", b"p2"]
    assert [msgspec.json.decode(m.value, type=Prediction).prediction_id for m in sent] == [
        "p0",
        "p1",
        "p2",
    ]


def test_linger_zero_sends_at_once(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=500, linger_ms=0)
    _log(logger, "p1")
    assert len(fake.sent) == 1 and logger.buffered_events == 0


def test_no_message_exceeds_max_message_bytes_and_no_event_is_lost(
    make: Callable[..., PredictionLogger], fake: FakeProducer, cfg: Config
) -> None:
    fake.partitions = 1
    logger = make(batch_size=500, max_message_bytes=1000)
    for i in range(40):
        _log(logger, f"p{i:03d}")
    logger.flush()
    sent = fake.messages(cfg.topics.predictions)
    assert len(sent) > 1
    assert max(len(m.value) for m in sent) <= 1000
    assert [e.prediction_id for m in sent for e in _events(m)] == [f"p{i:03d}" for i in range(40)]


def test_a_lingering_group_is_sent_by_the_background_thread_without_flush(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=500, linger_ms=20)
    _log(logger, "p1")
    _log(logger, "p2")
    assert _wait_until(lambda: logger.delivered_events == 2)
    assert sorted(e.prediction_id for m in fake.sent for e in _events(m)) == ["p1", "p2"]
    assert logger.buffered_events == 0


def test_a_group_younger_than_linger_stays_while_the_thread_runs(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=500, linger_ms=600_000)
    _log(logger, "p1")
    polls = fake.polls
    assert _wait_until(lambda: fake.polls >= polls + 5)
    assert fake.sent == [] and logger.buffered_events == 1


def test_concurrent_loggers_threads_send_every_event_exactly_once(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=50, linger_ms=5)

    def work(t: int) -> None:
        for i in range(500):
            _log(logger, f"t{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert logger.flush() == 0
    seen = [e.prediction_id for m in fake.sent for e in _events(m)]
    assert sorted(seen) == sorted(f"t{t}-{i}" for t in range(4) for i in range(500))
    assert logger.delivered_events == 2000
    assert max(len(_events(m)) for m in fake.sent) <= 50
    # Per producing thread, the order within a partition is the order of logging.
    for message in fake.sent:
        per_thread: dict[str, list[int]] = {}
        for e in _events(message):
            t, i = e.prediction_id.split("-")
            per_thread.setdefault(t, []).append(int(i))
        assert all(v == sorted(v) for v in per_thread.values())


# -- timestamps ------------------------------------------------------------------------------


def test_a_missing_timestamp_is_stamped_with_the_current_epoch_seconds(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=1)
    before = time.time()
    _log(logger, "p1", timestamp=None)
    logger.label(prediction_id="p1", label=0)
    after = time.time()
    stamps = [msgspec.json.decode(m.value)["timestamp"] for m in fake.sent]
    assert all(isinstance(s, float) and before <= s <= after for s in stamps)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (datetime(2024, 1, 1, tzinfo=UTC), 1_704_067_200.0),
        (datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), 1_704_067_200.0),
        (datetime(2024, 1, 1), 1_704_067_200.0),  # naive: UTC, as the worker reads it
        (1_704_067_200.5, 1_704_067_200.5),
        (1_704_067_200, 1_704_067_200),
    ],
    ids=["aware-utc", "aware-plus-one", "naive", "float", "int"],
)
def test_datetimes_are_sent_as_epoch_seconds(
    make: Callable[..., PredictionLogger], fake: FakeProducer, given: Any, expected: float
) -> None:
    logger = make(batch_size=1)
    _log(logger, "p1", timestamp=given)
    assert msgspec.json.decode(fake.sent[0].value)["timestamp"] == expected


# -- validation ------------------------------------------------------------------------------

BAD_PREDICTIONS = [
    ({"prediction_id": ""}, "prediction_id", "schema:prediction_id:bad_length"),
    ({"prediction_id": "x" * 513}, "prediction_id", "schema:prediction_id:bad_length"),
    ({"prediction_id": 42}, "prediction_id", "schema:prediction_id:wrong_type"),
    ({"model_id": None}, "model_id", "schema:model_id:wrong_type"),
    ({"model_version": ""}, "model_version", "schema:model_version:bad_length"),
    ({"features": [1.0, 2.0]}, "features", "schema:features:not_an_object"),
    ({"features": None}, "features", "schema:features:not_an_object"),
    ({"features": {"x": [1.0]}}, "features", "schema:features:wrong_type"),
    ({"features": {"x": {"nested": 1}}}, "features", "schema:features:wrong_type"),
    ({"features": {"x": float("nan")}}, "features['x']", "non_finite_number"),
    ({"features": {"x": np.float32("inf")}}, "features['x']", "non_finite_number"),
    ({"features": {"x": 1 + 2j}}, "features['x']", "schema:features:wrong_type"),
    ({"prediction": None}, "prediction", "schema:prediction:wrong_type"),
    ({"prediction": [0.1, 0.9]}, "prediction", "schema:prediction:wrong_type"),
    ({"prediction": float("-inf")}, "prediction", "non_finite_number"),
    ({"scores": {"fraud": 1.5}}, "scores", "schema:scores:out_of_range"),
    ({"scores": {"fraud": "high"}}, "scores", "schema:scores:wrong_type"),
    ({"scores": {"fraud": float("nan")}}, "scores['fraud']", "non_finite_number"),
    ({"confidence": -0.1}, "confidence", "schema:confidence:out_of_range"),
    ({"confidence": float("nan")}, "confidence", "non_finite_number"),
    ({"segments": {"country": 49}}, "segments", "schema:segments:wrong_type"),
    ({"latency_ms": -3.0}, "latency_ms", "schema:latency_ms:out_of_range"),
    ({"latency_ms": float("inf")}, "latency_ms", "non_finite_number"),
    ({"timestamp": True}, "timestamp", "schema:timestamp:wrong_type"),
    ({"timestamp": "yesterday"}, "timestamp", "schema:timestamp:invalid"),
    ({"timestamp": float("nan")}, "timestamp", "non_finite_number"),
    ({"features": {"blob": "x" * 2_000_000}}, "$", "too_large"),
]


@pytest.mark.parametrize(
    ("patch", "field", "reason"), BAD_PREDICTIONS, ids=[r[1] + ":" + r[2] for r in BAD_PREDICTIONS]
)
def test_a_bad_prediction_raises_naming_the_field_and_the_workers_reason(
    make: Callable[..., PredictionLogger],
    fake: FakeProducer,
    patch: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    logger = make(batch_size=1)
    with pytest.raises(InvalidEvent) as caught:
        _log(logger, "p1", **patch)
    err = caught.value
    assert (err.field, err.reason, err.kind) == (field, reason, "prediction")
    assert field in str(err) and reason in str(err)
    assert isinstance(err, ValueError)
    assert fake.sent == [] and logger.outstanding_events == 0


BAD_LABELS = [
    ({"label": None}, "label", "schema:label:wrong_type"),
    ({"label": {"a": 1}}, "label", "schema:label:wrong_type"),
    ({"label": float("nan")}, "label", "non_finite_number"),
    ({"prediction_id": ""}, "prediction_id", "schema:prediction_id:bad_length"),
    ({"model_id": ""}, "model_id", "schema:model_id:bad_length"),
    ({"timestamp": float("inf")}, "timestamp", "non_finite_number"),
]


@pytest.mark.parametrize(
    ("patch", "field", "reason"), BAD_LABELS, ids=[r[1] + ":" + r[2] for r in BAD_LABELS]
)
def test_a_bad_label_raises_naming_the_field_and_the_workers_reason(
    make: Callable[..., PredictionLogger],
    fake: FakeProducer,
    patch: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    logger = make(batch_size=1)
    fields: dict[str, Any] = {"prediction_id": "p1", "label": 1, **patch}
    with pytest.raises(InvalidEvent) as caught:
        logger.label(**fields)
    assert (caught.value.field, caught.value.reason, caught.value.kind) == (field, reason, "label")
    assert fake.sent == []


def test_invalid_event_survives_pickling_with_its_fields() -> None:
    # Model servers running workers in subprocesses get the exception back through pickle.
    import pickle

    with pytest.raises(InvalidEvent) as caught:
        encode_event(Label, {"prediction_id": "p1", "label": None})
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.field, again.reason, str(again)) == (
        "label",
        caught.value.reason,
        str(caught.value),
    )


def test_schema_reasons_equal_the_workers_for_the_same_json() -> None:
    # The same event written as JSON by hand and sent to the worker's decoder.
    base = {"prediction_id": "p1", "model_id": "m", "model_version": "1", "prediction": 0.5}
    for patch, _field, reason in BAD_PREDICTIONS:
        if reason in ("non_finite_number", "too_large") or "j)" in repr(patch):
            continue
        with pytest.raises(InvalidEvent) as caught:
            encode_event(Prediction, {**base, **patch})
        raw = msgspec.json.encode({**base, **patch})
        assert [r.reason for r in decode_message(raw, Prediction).rejections] == [reason]
        assert caught.value.reason == reason


def test_numpy_scalars_and_decimals_are_sent_as_plain_numbers(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=1)
    _log(
        logger,
        "p1",
        features={
            "a": np.float64(1.5),
            "b": np.int64(3),
            "c": np.bool_(True),
            "d": np.str_("x"),
            "e": decimal.Decimal("2.25"),
        },
        prediction=np.float32(0.5),
        confidence=np.float64(0.9),
    )
    event = msgspec.json.decode(fake.sent[0].value, type=Prediction)
    assert event.features == {"a": 1.5, "b": 3.0, "c": True, "d": "x", "e": 2.25}
    assert (event.prediction, event.confidence) == (0.5, 0.9)


def test_a_numpy_array_is_not_taken_for_a_scalar(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=1)
    with pytest.raises(InvalidEvent) as caught:
        _log(logger, "p1", features={"x": np.array([1.0])})
    assert caught.value.field == "features['x']" and "ndarray" in caught.value.detail


def test_validate_false_skips_checks_but_still_refuses_an_oversized_event(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=1, validate=False, max_message_bytes=1000)
    _log(logger, "p1", confidence=7.0)  # the worker will dead-letter this one
    assert decode_message(fake.sent[0].value, Prediction).rejections[0].reason == (
        "schema:confidence:out_of_range"
    )
    with pytest.raises(InvalidEvent) as caught:
        _log(logger, "p2", features={"blob": "x" * 2000})
    assert caught.value.reason == "too_large"


# -- delivery accounting ---------------------------------------------------------------------


def test_failed_deliveries_reach_the_callback_and_the_counters(
    cfg: Config, fake: FakeProducer, make: Callable[..., PredictionLogger]
) -> None:
    reports: list[tuple[KafkaError | None, int]] = []
    logger = make(batch_size=4, on_delivery=lambda err, n: reports.append((err, n)))
    fake.partitions = 1
    fake.fail_with = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    for i in range(6):
        _log(logger, f"p{i}")
    assert logger.flush() == 0
    fake.fail_with = None
    _log(logger, "p6")
    assert logger.flush() == 0
    assert [(e.code() if e else None, n) for e, n in reports] == [
        (KafkaError.MSG_SIZE_TOO_LARGE, 4),
        (KafkaError.MSG_SIZE_TOO_LARGE, 2),
        (None, 1),
    ]
    assert (logger.failed_events, logger.failed_messages, logger.delivered_events) == (6, 2, 1)
    assert logger.last_error is not None
    assert logger.last_error.code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_without_a_callback_failures_are_logged(
    make: Callable[..., PredictionLogger], fake: FakeProducer, caplog: pytest.LogCaptureFixture
) -> None:
    logger = make(batch_size=1)
    fake.fail_with = KafkaError(KafkaError._MSG_TIMED_OUT)
    with caplog.at_level(logging.ERROR, logger="streamproc.sdk.producer"):
        _log(logger, "p1")
        logger.flush()
    assert logger.failed_events == 1
    assert any(
        "1 events" in r.getMessage() and "timed out" in r.getMessage() for r in caplog.records
    )


def test_a_produce_error_fails_the_message_and_refreshes_the_partition_count(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    reports: list[tuple[KafkaError | None, int]] = []
    logger = make(batch_size=2, on_delivery=lambda err, n: reports.append((err, n)))
    _log(logger, "p1")
    assert fake.metadata_calls == 1
    fake.raise_on_produce = KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
    logger.flush()
    assert [(e.code() if e else None, n) for e, n in reports] == [
        (KafkaError._UNKNOWN_PARTITION, 1)
    ]
    assert logger.outstanding_events == 0 and logger.failed_messages == 1
    fake.raise_on_produce = None
    fake.partitions = 9
    _log(logger, "p2")
    assert fake.metadata_calls == 2
    assert logger.partition_for("p2") == default_partition("p2", 9)


def test_the_partition_count_is_cached(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=10)
    for i in range(100):
        _log(logger, f"p{i}")
    assert fake.metadata_calls == 1


def test_flush_returns_the_events_whose_delivery_is_not_known(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=500)
    fake.hold = True
    for i in range(5):
        _log(logger, f"p{i}")
    assert logger.buffered_events == 5
    assert logger.flush(timeout=0.1) == 5
    assert (logger.buffered_events, logger.in_flight_events) == (0, 5)
    fake.hold = False
    assert logger.flush() == 0 and logger.delivered_events == 5


def test_a_raising_callback_is_logged_and_the_thread_keeps_sending(
    make: Callable[..., PredictionLogger], fake: FakeProducer, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(err: KafkaError | None, n: int) -> None:
        raise RuntimeError("callback bug")

    logger = make(batch_size=500, linger_ms=5, on_delivery=explode)
    with caplog.at_level(logging.ERROR, logger="streamproc.sdk.producer"):
        _log(logger, "p1")
        assert _wait_until(lambda: logger.delivered_events == 1)
        _log(logger, "p2")
        assert _wait_until(lambda: logger.delivered_events == 2)
    assert any("on_delivery callback raised" in r.getMessage() for r in caplog.records)


# -- lifecycle and arguments -----------------------------------------------------------------


def test_close_flushes_stops_the_thread_and_refuses_more_events(
    make: Callable[..., PredictionLogger], fake: FakeProducer
) -> None:
    logger = make(batch_size=500)
    _log(logger, "p1")
    assert logger.close() == 0
    assert logger.delivered_events == 1
    polls = fake.polls
    time.sleep(0.05)
    assert fake.polls == polls  # the linger thread has stopped
    with pytest.raises(ProducerError, match="closed"):
        _log(logger, "p2")
    assert logger.close() == 0


def test_the_context_manager_flushes_on_exit(cfg: Config, fake: FakeProducer) -> None:
    with PredictionLogger(cfg, producer=fake, linger_ms=60_000) as logger:
        _log(logger, "p1")
        logger.label(prediction_id="p1", label=1)
        assert fake.sent == []
    assert len(fake.sent) == 2 and logger.delivered_events == 2


@pytest.mark.parametrize("batch_size", [0, 10_001])
def test_a_batch_size_the_worker_would_refuse_is_an_error(
    cfg: Config, fake: FakeProducer, batch_size: int
) -> None:
    with pytest.raises(ValueError, match="max_batch_events"):
        PredictionLogger(cfg, producer=fake, batch_size=batch_size)


def test_messages_stay_below_librdkafkas_message_max_bytes_with_room_for_the_key(
    cfg: Config, fake: FakeProducer
) -> None:
    fake.partitions = 1
    limit = 10_000
    with PredictionLogger(cfg, producer=fake, settings={"message.max.bytes": limit}) as logger:
        for i in range(200):
            _log(logger, f"p{i:03d}")
    assert len(fake.sent) > 1
    # The key may be a 512-character prediction_id: up to 2 KiB of UTF-8.
    assert max(len(m.value) for m in fake.sent) + 2048 < limit
    assert logger.delivered_events == 200
