"""Reference profiles from a range of a predictions topic (:func:`profile_from_topic`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamproc.baseline.builder import ProfileBuilder
from streamproc.baseline.profile import (
    DEFAULT_BINS,
    DEFAULT_MAX_CATEGORIES,
    DEFAULT_MAX_SEGMENT_VALUES,
    BaselineError,
    ReferenceProfile,
    Task,
    outputs_of,
)
from streamproc.kafka import ranges as kafka_ranges

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from streamproc.config import Config

__all__ = ["profile_from_topic"]


def _rfc3339_ms(text: str, flag: str) -> int:
    from streamproc.contracts import event_time

    try:
        return round(event_time(text, None) * 1000)
    except ValueError:
        raise BaselineError(f"{flag} {text!r} is not an RFC 3339 time") from None


@dataclass
class _TopicRead:
    records: int = 0
    rejected: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


def _consumer(cfg: Config) -> Consumer:
    # "latest" is librdkafka's default, which this reader has always used.
    return kafka_ranges.consumer(
        cfg,
        "baseline",
        offset_reset="latest",
        fetch_bytes=max(cfg.worker.max_message_bytes, 1_048_576),
    )


@contextmanager
def _baseline_errors() -> Iterator[None]:
    """A range error as a :class:`BaselineError`."""
    try:
        yield
    except kafka_ranges.StalledReadError as exc:
        raise BaselineError(
            f"timed out after {exc.timeout_s:.0f} s reading {exc.topic!r} "
            f"(partitions {exc.partitions} not read to the end)"
        ) from None
    except kafka_ranges.RangeError as exc:
        raise BaselineError(str(exc)) from None


def _time_ranges(consumer: Consumer, topic: str, from_ms: int, to_ms: int) -> kafka_ranges.Ranges:
    """Per partition, the offsets of the records with a record time in ``[from_ms, to_ms)``."""
    with _baseline_errors():
        return kafka_ranges.time_ranges(consumer, topic, from_ms, to_ms)


def _records(
    consumer: Consumer,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    timeout_s: float,
    time_ms: tuple[int, int] | None = None,
) -> Iterator[Message]:
    """The records of ``ranges`` (partition -> ``(first, last)``), within ``time_ms``."""
    with _baseline_errors():
        for msg in kafka_ranges.read(consumer, topic, ranges, timeout_s):
            if msg.error() is not None:  # the partition ended before its range did
                continue
            ts = msg.timestamp()[1]
            if time_ms is None or time_ms[0] <= ts < time_ms[1]:
                yield msg


def profile_from_topic(
    cfg: Config,
    topic: str,
    model_id: str,
    model_version: str,
    *,
    from_time: str | None = None,
    to_time: str | None = None,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
    labels_topic: str | None = None,
    label_grace_s: float = 0.0,
    segment_dims: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    max_segment_values: int = DEFAULT_MAX_SEGMENT_VALUES,
    positive_class: str | None = None,
    task: Task | None = None,
    timeout_s: float = 30.0,
) -> ReferenceProfile:
    """Build a profile from the ``prediction.v1`` events of a topic range.

    The range is either a record-time range ``[from_time, to_time)`` (RFC 3339) over every
    partition, found with Kafka's time index, or the offsets ``from_offset..to_offset``
    (inclusive) of one ``partition``. Only events of ``model_id`` / ``model_version`` count;
    a ``prediction_id`` seen twice counts once; rejected messages are skipped. Labels are read
    from ``labels_topic`` over the same record-time range (in offset mode: the record times of
    the predictions read), extended by ``label_grace_s``, and joined by ``prediction_id``.
    ``rate_per_s`` uses the events' own time.

    The positive class, unless given, is the first of two classes in the events' ``scores``
    (the most common such first key), the convention of ``prediction.v1`` producers.

    Raises
    ------
    BaselineError
        A missing topic, an inconsistent range, a read that stalls for ``timeout_s``, or no
        event of the model in the range.
    """
    from streamproc.contracts import Label, Prediction, decode_message, event_time

    by_time = from_time is not None or to_time is not None
    by_offset = partition is not None or from_offset is not None or to_offset is not None
    if by_time == by_offset:
        raise BaselineError(
            "give either --from-time and --to-time, or --partition, --from-offset and --to-offset"
        )
    consumer = _consumer(cfg)
    try:
        window: tuple[int, int] | None = None
        if by_time:
            if from_time is None or to_time is None:
                raise BaselineError("--from-time and --to-time go together")
            window = (_rfc3339_ms(from_time, "--from-time"), _rfc3339_ms(to_time, "--to-time"))
            if window[0] >= window[1]:
                raise BaselineError(f"--from-time {from_time} is not before --to-time {to_time}")
            ranges = _time_ranges(consumer, topic, *window)
            source = f"kafka:{topic} record time [{from_time}, {to_time})"
        else:
            if partition is None or from_offset is None or to_offset is None:
                raise BaselineError("--partition, --from-offset and --to-offset go together")
            if not 0 <= from_offset <= to_offset:
                raise BaselineError(f"offsets {from_offset}..{to_offset}: need 0 <= from <= to")
            with _baseline_errors():
                parts = kafka_ranges.partitions(consumer, topic)
            if partition not in parts:
                raise BaselineError(f"topic {topic!r} has no partition {partition}")
            ranges = {partition: (from_offset, to_offset)}
            source = f"kafka:{topic} partition {partition} offsets {from_offset}..{to_offset}"
        read = _TopicRead()
        events: dict[str, tuple[Prediction, float]] = {}
        for msg in _records(consumer, topic, ranges, timeout_s, window):
            read.records += 1
            ts = msg.timestamp()[1]
            read.first_ms = ts if read.first_ms is None else min(read.first_ms, ts)
            read.last_ms = ts if read.last_ms is None else max(read.last_ms, ts)
            decoded = decode_message(
                msg.value(),
                Prediction,
                max_bytes=cfg.worker.max_message_bytes,
                max_batch=cfg.worker.max_batch_events,
            )
            read.rejected += len(decoded.rejections)
            for ev in decoded.events:
                if ev.model_id == model_id and ev.model_version == model_version:
                    events.setdefault(ev.prediction_id, (ev, event_time(ev.timestamp, ts)))
        if not events:
            raise BaselineError(
                f"no {model_id}/{model_version} prediction in {source} "
                f"({read.records} records, {read.rejected} rejected events)"
            )
        labels: dict[str, Any] = {}
        if labels_topic is not None and read.first_ms is not None and read.last_ms is not None:
            grace = round(label_grace_s * 1000)
            lo, hi = window if window is not None else (read.first_ms, read.last_ms + 1)
            span = (lo, hi + grace)
            for msg in _records(
                consumer, labels_topic, _time_ranges(consumer, labels_topic, *span), timeout_s, span
            ):
                for lab in decode_message(msg.value(), Label).events:
                    if lab.model_id in (None, model_id):
                        labels.setdefault(lab.prediction_id, lab.label)
            source += f", labels from {labels_topic}"
    finally:
        consumer.close()
    if positive_class is None:
        firsts = Counter(
            next(iter(ev.scores)) for ev, _ in events.values() if ev.scores and len(ev.scores) == 2
        )
        positive_class = firsts.most_common(1)[0][0] if firsts else None
    builder = ProfileBuilder(
        model_id,
        model_version,
        segment_dims,
        bins=bins,
        max_categories=max_categories,
        max_segment_values=max_segment_values,
        positive_class=positive_class,
        task=task,
    )
    for pid, (ev, t) in events.items():
        prediction, score, confidence = outputs_of(ev, positive_class)
        builder.add(
            ev.features,
            prediction,
            score,
            labels.get(pid),
            ev.segments,
            t,
            confidence=confidence,
            scores=ev.scores,
        )
    return builder.build(source=source)
