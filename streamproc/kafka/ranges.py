"""Reading a bounded range of a topic: the one range reader of the offline tools.

``streamproc replay``, baselines built from a topic and the on-call tools all read Kafka the same
way, through this module:

- a throw-away consumer that only ``assign`` s partitions (:func:`consumer`): its random group
  id is never joined, it commits and stores no offset, and it reports each partition's end;
- the topic's partitions (:func:`partitions`) and each partition's watermarks
  (:func:`watermarks`);
- per-partition ranges (:data:`Ranges`, first and last offset, both inclusive) from record
  times (:func:`time_ranges`, :func:`offsets_at` retried while a partition answers with an
  error) or from what the topic still holds (:func:`retained_ranges`), and the record times a
  range spans (:func:`record_span`);
- the records of the ranges (:func:`read`), each partition in offset order, until each range's
  end, with pause/resume flow control.

Failures raise :class:`RangeError` (a :class:`~streamproc.errors.StreamprocError`) whose message
names the topic; a tool that words its errors its own way catches it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamproc.errors import StreamprocError

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from streamproc.config import Config

__all__ = [
    "KafkaUnavailableError",
    "RangeError",
    "Ranges",
    "StalledReadError",
    "UnknownTopicError",
    "consumer",
    "offsets_at",
    "partitions",
    "read",
    "record_span",
    "retained_ranges",
    "time_ranges",
    "watermarks",
]

Ranges = dict[int, tuple[int, int]]
"""Partition -> ``(first, last)`` offsets of a range, both inclusive."""

BATCH: Final = 2000
"""Records asked for per ``consume()`` call."""

WAIT_S: Final = 0.5
"""Longest wait of one ``consume()`` call: how often flow control and the timeout are checked."""

TIMEOUT_S: Final = 15.0
"""Default timeout of one metadata, watermark or offsets-by-time request."""


class RangeError(StreamprocError):
    """A topic range could not be resolved or read; the message names the topic."""


class UnknownTopicError(RangeError):
    """The topic does not exist (or has no partition)."""


class KafkaUnavailableError(RangeError):
    """The topic's metadata could not be read; ``cause`` is Kafka's own error."""

    def __init__(self, topic: str, cause: KafkaException) -> None:
        super().__init__(f"cannot read the metadata of topic {topic!r}: {cause}")
        self.cause = cause


class StalledReadError(RangeError):
    """A :func:`read` got no record for its timeout (or ran out of its time budget).

    Attributes
    ----------
    topic
        The topic read.
    partitions
        The partitions not read to the end of their range, sorted.
    timeout_s
        The read's timeout.
    """

    def __init__(
        self, topic: str, partitions: list[int], timeout_s: float, budget: bool = False
    ) -> None:
        what = (
            f"out of time after {timeout_s:g} s" if budget else f"no progress for {timeout_s:g} s"
        )
        super().__init__(f"{what} reading {topic!r} (partitions {partitions} not read to the end)")
        self.topic = topic
        self.partitions = partitions
        self.timeout_s = timeout_s


def consumer(cfg: Config, purpose: str, *, offset_reset: str, fetch_bytes: int) -> Consumer:
    """A throw-away consumer for :func:`read`: ``assign`` only, nothing committed or stored.

    Parameters
    ----------
    cfg
        The configuration (its ``kafka`` section).
    purpose
        Names the random group id, ``streamproc-{purpose}-{12 hex digits}``; with ``assign``
        the group is never joined.
    offset_reset
        ``auto.offset.reset``: where a partition starts when its offset is out of range.
    fetch_bytes
        ``fetch.message.max.bytes``, the first fetch size per partition.
    """
    from confluent_kafka import Consumer

    return Consumer(
        {
            **cfg.kafka.librdkafka(),
            "group.id": f"streamproc-{purpose}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": offset_reset,
            "fetch.message.max.bytes": fetch_bytes,
        }
    )


def partitions(consumer: Consumer, topic: str, timeout: float = TIMEOUT_S) -> list[int]:
    """The sorted partition ids of ``topic``, from a metadata request.

    Raises
    ------
    UnknownTopicError
        The topic does not exist.
    KafkaUnavailableError
        The metadata could not be read.
    """
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailableError(topic, exc) from None
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise UnknownTopicError(
            f"topic {topic!r} does not exist; create it with: streamproc topics apply"
        )
    return sorted(found.partitions)


def watermarks(
    consumer: Consumer, topic: str, partition: int, timeout: float = TIMEOUT_S
) -> tuple[int, int]:
    """The low and high watermarks of a partition: its oldest offset kept and its next one."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
    return int(low), int(high)


def offsets_at(
    consumer: Consumer,
    topic: str,
    parts: Iterable[int],
    ms: int,
    *,
    attempts: int = 5,
    timeout: float = TIMEOUT_S,
) -> dict[int, int]:
    """Per partition, the first offset whose record time is at or after ``ms`` (-1: none).

    ``offsets_for_times``, retried while a partition answers with an error: a per-partition
    error (e.g. a leader moving) comes back as offset -1, which would otherwise read as "no
    record after this time" and silently drop that partition from the range.

    Raises
    ------
    RangeError
        A partition still answers with an error after ``attempts`` tries.
    """
    wanted = [TopicPartition(topic, p, ms) for p in parts]
    for attempt in range(attempts):
        found = consumer.offsets_for_times(wanted, timeout)
        failed = [tp for tp in found if tp.error is not None]
        if not failed:
            return {tp.partition: tp.offset for tp in found}
        if attempt < attempts - 1:
            time.sleep(0.5 * (attempt + 1))
    tp = failed[0]
    raise RangeError(
        f"cannot look up offsets by time in {tp.topic!r} partition {tp.partition}: {tp.error}"
    )


def time_ranges(consumer: Consumer, topic: str, from_ms: int, to_ms: int) -> Ranges:
    """Per partition, the offsets of the records with a record time in ``[from_ms, to_ms)``;
    partitions without such a record are left out.

    Raises
    ------
    RangeError
        The topic is missing, or its offsets cannot be looked up by time.
    """
    parts = partitions(consumer, topic)
    starts = offsets_at(consumer, topic, parts, from_ms)
    ends = offsets_at(consumer, topic, parts, to_ms)
    out: Ranges = {}
    for p in parts:
        _, high = watermarks(consumer, topic, p)
        first = starts[p] if starts[p] >= 0 else high
        end = ends[p] if ends[p] >= 0 else high
        if first < end:
            out[p] = (first, end - 1)
    return out


def retained_ranges(
    consumer: Consumer, topic: str, since_ms: int | None = None, timeout: float = TIMEOUT_S
) -> Ranges:
    """Per partition, what the topic holds now: from the low watermark (or the first record at
    or after ``since_ms``) to the last offset; empty partitions are left out.

    Raises
    ------
    RangeError
        The topic is missing, or its offsets cannot be looked up by time.
    """
    parts = partitions(consumer, topic, timeout)
    since = (
        {} if since_ms is None else offsets_at(consumer, topic, parts, since_ms, timeout=timeout)
    )
    out: Ranges = {}
    for p in parts:
        low, high = watermarks(consumer, topic, p, timeout)
        first = since.get(p, low)
        if first < 0:  # no record at or after since_ms
            first = high
        if first < high:
            out[p] = (first, high - 1)
    return out


def record_span(
    consumer: Consumer, topic: str, ranges: Mapping[int, tuple[int, int]], timeout_s: float
) -> tuple[int, int]:
    """Record times (ms) of the earliest and latest of the ranges' first and last records.

    Raises
    ------
    RangeError
        No first or last record could be read within ``timeout_s`` per record.
    """
    stamps: list[int] = []
    for p, (first, last) in sorted(ranges.items()):
        for off in {first, last}:
            at = [TopicPartition(topic, p, off)]
            consumer.assign(at)
            consumer.resume(at)  # in case an earlier read with this consumer paused it
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                msg = consumer.poll(WAIT_S)
                if msg is not None and msg.error() is None:
                    stamps.append(msg.timestamp()[1])
                    break
            consumer.unassign()
    if not stamps:
        raise RangeError(f"could not read the record times of the range on {topic!r}")
    return min(stamps), max(stamps)


def read(
    consumer: Consumer,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    timeout_s: float,
    *,
    flow: Callable[[], tuple[list[int], list[int]]] | None = None,
    budget: bool = False,
    on_error: Callable[[KafkaError], None] | None = None,
) -> Iterator[Message]:
    """The records of ``ranges``, each partition in offset order, until each range's end.

    The partitions are assigned at their first offsets; a partition read to its last offset is
    paused, and later records of it are skipped. A partition that ends before its range does
    is done too, and its end-of-partition event is yielded so that the caller can tell
    (``msg.error()`` is set on it). The consumer is unassigned at the end.

    Parameters
    ----------
    consumer
        A consumer from :func:`consumer`, assigned nothing.
    topic
        The topic to read.
    ranges
        Partition -> ``(first, last)`` offsets, both inclusive.
    timeout_s
        How long to wait for a record before giving up (see ``budget``).
    flow
        Called before each ``consume()``; returns the partitions to pause and to resume (flow
        control: a partition far ahead of the others stops being fetched).
    budget
        Make ``timeout_s`` the time the whole read may take, rather than how long it may go
        without a record.
    on_error
        Takes a Kafka error other than a partition's end; by default it ends the read.

    Raises
    ------
    StalledReadError
        No record for ``timeout_s`` (with ``budget``: ``timeout_s`` after the read began).
    RangeError
        Kafka reported an error, and no ``on_error`` was given.
    """
    todo = {p: last for p, (first, last) in ranges.items() if first <= last}
    if not todo:
        return
    assigned = [TopicPartition(topic, p, ranges[p][0]) for p in sorted(todo)]
    consumer.assign(assigned)
    # A partition paused by an earlier read with this consumer stays paused when assigned again.
    consumer.resume(assigned)
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            if flow is not None:
                pause, resume = flow()
                if pause:
                    consumer.pause([TopicPartition(topic, q) for q in pause])
                if resume:
                    consumer.resume([TopicPartition(topic, q) for q in resume if q in todo])
            if budget and time.monotonic() > deadline:
                raise StalledReadError(topic, sorted(todo), timeout_s, budget)
            msgs = consumer.consume(num_messages=BATCH, timeout=WAIT_S)
            if not msgs:
                if time.monotonic() > deadline:
                    raise StalledReadError(topic, sorted(todo), timeout_s, budget)
                continue
            if not budget:
                deadline = time.monotonic() + timeout_s
            done = []
            for msg in msgs:
                err = msg.error()
                p = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # An end-of-partition event can still be queued from an earlier read
                        # of another topic by this consumer: it says nothing about this one.
                        if p in todo and msg.topic() == topic:
                            del todo[p]
                            done.append(p)
                            yield msg  # the partition ended before its range did
                    elif on_error is None:
                        raise RangeError(f"reading {topic!r}: {err}")
                    else:
                        on_error(err)
                    continue
                last = todo.get(p) if msg.topic() == topic else None
                if last is None or msg.offset() > last:
                    continue
                if msg.offset() == last:
                    del todo[p]
                    done.append(p)
                yield msg
            if done:  # read to its end: stop fetching it
                consumer.pause([TopicPartition(topic, q) for q in done])
    finally:
        consumer.unassign()
