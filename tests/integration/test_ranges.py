"""The one range reader against a real Kafka: ranges from record times and retention, records
until each range's end, partitions that end early, stalls, and a consumer reused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.config import Config
from streamproc.kafka import ranges

pytestmark = pytest.mark.integration

RECORDS = 20  # record i goes to partition i % 2 with record time BASE + i seconds
BASE = 1_700_000_000_000


@pytest.fixture
def topic(config: Config, unique: str) -> str:
    """A two-partition topic holding ten records per partition, one second apart."""
    name = f"t-{unique}-ranges"
    admin = AdminClient(config.kafka.librdkafka())
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(30)
    producer = Producer(config.kafka.librdkafka())
    for i in range(RECORDS):
        producer.produce(name, f"r{i}".encode(), partition=i % 2, timestamp=BASE + i * 1000)
    assert producer.flush(30) == 0
    return name


@pytest.fixture
def consumer(config: Config) -> Iterator[Consumer]:
    c = ranges.consumer(config, "test", offset_reset="error", fetch_bytes=1_048_576)
    yield c
    c.close()


def _read(consumer: Consumer, topic: str, rng: ranges.Ranges, **kw: object) -> list[tuple]:
    return [
        (m.partition(), m.offset(), m.error() is not None)
        for m in ranges.read(consumer, topic, rng, 10.0, **kw)  # type: ignore[arg-type]
    ]


def test_ranges_from_record_time_and_retention_are_inclusive_per_partition(
    consumer: Consumer, topic: str
) -> None:
    assert ranges.partitions(consumer, topic) == [0, 1]
    assert ranges.watermarks(consumer, topic, 1) == (0, 10)
    # records 4..8 by time: offsets 2..4 of partition 0 (records 4, 6, 8), 2..3 of 1 (5, 7)
    assert ranges.time_ranges(consumer, topic, BASE + 4000, BASE + 9000) == {0: (2, 4), 1: (2, 3)}
    assert ranges.time_ranges(consumer, topic, BASE + 60_000, BASE + 70_000) == {}
    assert ranges.retained_ranges(consumer, topic) == {0: (0, 9), 1: (0, 9)}
    assert ranges.retained_ranges(consumer, topic, BASE + 15_000) == {0: (8, 9), 1: (7, 9)}
    assert ranges.record_span(consumer, topic, {0: (2, 4), 1: (2, 3)}, 10.0) == (
        BASE + 4000,
        BASE + 8000,
    )


def test_read_gives_each_range_in_offset_order_and_the_end_event_of_a_short_partition(
    consumer: Consumer, topic: str
) -> None:
    got = _read(consumer, topic, {0: (8, 30), 1: (1, 3)})
    assert [(p, o) for p, o, eof in got if p == 1] == [(1, 1), (1, 2), (1, 3)]
    assert [(p, o, eof) for p, o, eof in got if p == 0] == [
        (0, 8, False),
        (0, 9, False),
        (0, 10, True),  # partition 0 ends before offset 30: its end-of-partition event
    ]


def test_a_consumer_read_again_is_not_held_by_the_partitions_its_last_read_paused(
    consumer: Consumer, topic: str
) -> None:
    assert len(_read(consumer, topic, {0: (0, 1), 1: (0, 1)})) == 4  # both paused at their end
    assert len(_read(consumer, topic, {0: (2, 3), 1: (2, 3)})) == 4
    assert len(ranges.record_span(consumer, topic, {0: (5, 5)}, 10.0)) == 2


def test_a_read_without_progress_or_out_of_its_budget_names_the_unfinished_partitions(
    consumer: Consumer, topic: str
) -> None:
    paused = ranges.read(consumer, topic, {0: (0, 9), 1: (0, 9)}, 1.0, flow=lambda: ([0, 1], []))
    began = time.monotonic()
    with pytest.raises(ranges.StalledReadError, match="no progress for 1 s") as stalled:
        list(paused)
    assert stalled.value.partitions == [0, 1] and time.monotonic() - began >= 1.0
    with pytest.raises(ranges.StalledReadError, match="out of time after 0 s"):
        list(ranges.read(consumer, topic, {1: (0, 9)}, 0.0, budget=True))


def test_an_unknown_topic_is_refused_with_the_fix(consumer: Consumer, unique: str) -> None:
    with pytest.raises(ranges.UnknownTopicError, match="streamproc topics apply"):
        ranges.partitions(consumer, f"t-{unique}-nothing")
