"""Ingestion: decode and validate a batch of Kafka messages, dead-letter the bad, join the good.

This is the worker's processing core, free of Faust so that tests, replay and benchmarks drive
the same code. One call handles one consumed batch, in this order:

1. decode every message (:func:`streamproc.contracts.decode_message`); each rejected message or
   batch element becomes a ``deadletter.v1`` record with its original bytes and reason;
2. record the valid events in the Redis join (atomic, pipelined); a different message repeating
   an id is dead-lettered as ``duplicate:prediction_id`` / ``duplicate:label``;
3. hand accepted events and completed joins to the aggregation sink, including the joins a
   redelivered message had completed before (the join rebuilds them), so that an outcome lost to
   a Redis timeout retried by :func:`retry`, or to a crash before its produce, is folded now;
   the sink skips what its own checkpoint says it folded already, so nothing counts twice;
4. flush every produced record (dead letters, and the partials the sink completed) and wait for
   the broker's acknowledgement;
5. let the sink persist its state (:meth:`MonitorSink.commit`).

Only when the call returns may the caller acknowledge (commit) the batch's offsets. Redis or
Kafka failures are retried with backoff inside the call instead of raising, because a batch that
escapes with an exception would have its offsets acknowledged by Faust's ``take_events``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from streamproc.config import Config
from streamproc.contracts import (
    DeadLetter,
    DeadLetterError,
    Label,
    Prediction,
    Rejection,
    decode_message,
    encode,
    event_time,
)
from streamproc.ingest.join import (
    Expired,
    Joined,
    JoinRecord,
    JoinResult,
    LabelRecord,
    RedisJoin,
)
from streamproc.kafka.producer import OutputProducer
from streamproc.kafka.retry import retry
from streamproc.offload import off_loop
from streamproc.redis_client import async_client
from streamproc.worker.metrics import WorkerMetrics, observe_many

log = logging.getLogger(__name__)
T = TypeVar("T")
# A batch over this many bytes is decoded in a thread (~5 ms per MiB of JSON in the loop).
OFFLOAD_BYTES = 1_048_576


@dataclass(slots=True)  # one per event: frozen costs 2.4x to build
class RawMessage:
    """One consumed Kafka record, as any consumer (Faust, confluent-kafka) hands it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


@dataclass(slots=True)  # one per event: frozen costs 2.4x to build
class Observed:
    """An accepted prediction with its event time and where it came from."""

    event: Prediction
    event_time: float
    partition: int
    offset: int
    index: int = -1  # position in a batch message; -1 for a single-event message


class MonitorSink(Protocol):
    """The aggregation stage, as ingestion sees it.

    ``on_batch`` gets each consumed batch's accepted predictions (none for a labels batch), the
    joins the batch completed, and per partition the newest record time (ms) the batch read
    there; ``commit`` runs once the batch's output is acknowledged by Kafka, before its offsets
    may be committed (the sink persists its own state there).
    """

    async def on_batch(
        self,
        role: str,
        observed: Sequence[Observed],
        joined: Sequence[Joined],
        record_ms: Mapping[int, int],
    ) -> None: ...

    async def commit(self) -> None: ...

    async def admit_labels(self, arrivals: Sequence[tuple[int, int, int, float]]) -> list[bool]:
        """Whether each accepted label of a batch, ``(partition, offset, index, event time)``,
        may count (not late on its partition's clock); called before the batch is joined."""
        ...


class Join(Protocol):
    """:class:`~streamproc.ingest.join.RedisJoin`, or the in-memory one of a replay."""

    async def add_predictions(
        self, items: Sequence[tuple[str, str, JoinRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]: ...

    async def add_labels(
        self, items: Sequence[tuple[str, str, LabelRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]: ...

    async def expire(self, now: float | None = None, limit: int = 1000) -> Expired: ...

    async def pending(self) -> tuple[int, int]: ...


class NullSink:
    """A sink that drops everything (ingestion alone, or tests of the join)."""

    async def on_batch(
        self,
        role: str,
        observed: Sequence[Observed],
        joined: Sequence[Joined],
        record_ms: Mapping[int, int],
    ) -> None:
        return None

    async def commit(self) -> None:
        return None

    async def admit_labels(self, arrivals: Sequence[tuple[int, int, int, float]]) -> list[bool]:
        return [True] * len(arrivals)


def _record_ms(msgs: Sequence[RawMessage]) -> dict[int, int]:
    """Per partition, the newest record time of a batch (ms; 0 where Kafka gave none)."""
    out: dict[int, int] = {}
    for m in msgs:
        ts = m.timestamp_ms or 0
        if ts > out.get(m.partition, -1):
            out[m.partition] = ts
    return out


def check_join_layout(cfg: Config) -> None:
    """Fail fast, before a worker consumes anything, if Redis holds join state of another key
    layout under ``cfg.redis.key_prefix`` (:class:`streamproc.join.JoinLayoutError`)."""

    async def check() -> None:
        client = async_client(cfg.redis)
        try:
            await RedisJoin(client, cfg.redis.key_prefix).setup()
        finally:
            await client.aclose()

    asyncio.run(check())


# The datetimes an alert or a window can name: 1970-01-01 to 9999-12-31.
_TIME_RANGE = (0.0, 253402300799.0)


def time_rejection(
    t: float, record_ms: int | None, max_ahead_s: float | None, max_age_s: float | None
) -> tuple[str, str] | None:
    """Why an event at event time ``t`` is refused, or ``None``: its time must be a date (1970
    to 9999), at most ``max_ahead_s`` past its Kafka record's timestamp and, if ``max_age_s``
    is set, at most that much before it.

    The record's timestamp (when the producer sent it, or when the broker appended it) is the
    wall clock the event is checked against, so a replay of the same offsets refuses exactly
    what the live worker refused. A refused event moves no watermark.

    >>> time_rejection(1704067200.0, 1704067200_000, 300.0, None) is None
    True
    >>> time_rejection(4102444800.0, 1704067200_000, 300.0, None)[0]
    'timestamp:ahead_of_record'
    >>> time_rejection(1e300, None, 300.0, None)[0]
    'schema:timestamp:out_of_range'
    """
    if not _TIME_RANGE[0] <= t <= _TIME_RANGE[1]:
        return "schema:timestamp:out_of_range", f"event time {t:g} is not between 1970 and 9999"
    if record_ms is None or record_ms <= 0:
        return None
    lead = t - record_ms / 1000.0
    if max_ahead_s is not None and lead > max_ahead_s:
        return "timestamp:ahead_of_record", (
            f"event time is {lead:.0f} s ahead of its record's timestamp "
            f"(worker.max_future_skew_s={max_ahead_s:g}): a producer's clock is wrong"
        )
    if max_age_s is not None and -lead > max_age_s:
        return "timestamp:too_old", (
            f"event time is {-lead:.0f} s before its record's timestamp "
            f"(worker.max_age_s={max_age_s:g})"
        )
    return None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


class Ingestor:
    """Decode, validate, dead-letter and join consumed batches; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        join: Join,
        output: OutputProducer,
        metrics: WorkerMetrics,
        sink: MonitorSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.join = join
        self.output = output
        self.metrics = metrics
        self.sink: MonitorSink = sink or NullSink()
        self._perf = set(cfg.join.performance_features)

    def _dead_letter(self, msg: RawMessage, rejection: Rejection, role: str) -> None:
        record = DeadLetter(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key_b64=_b64(msg.key),
            value_b64=_b64(rejection.value) or "",
            batch_index=rejection.index,
            error=DeadLetterError(rejection.reason, rejection.message),
            dead_lettered_at=_now_iso(),
        )
        self.output.produce(self.cfg.topics.deadletter, encode(record), msg.key)
        self.metrics.deadletter.labels(reason=rejection.reason).inc()
        self.metrics.events.labels(topic=role, outcome="deadletter").inc()

    async def _decode_batch(self, msgs: Sequence[RawMessage], kind: type, role: str) -> list[tuple]:
        """:meth:`_decode`, in a thread when the batch is big enough to hold the event loop up
        (a few MiB of wide events take a second to decode)."""
        if sum(len(m.value or b"") for m in msgs) > OFFLOAD_BYTES:
            return await off_loop(self._decode, msgs, kind, role)
        return self._decode(msgs, kind, role)

    def _decode(self, msgs: Sequence[RawMessage], kind: type, role: str) -> list[tuple]:
        """Decoded events as ``(event, message, index, raw bytes, origin, event time)``; the
        rest dead-lettered, including events whose time :func:`time_rejection` refuses."""
        accepted = []
        worker = self.cfg.worker
        ahead, age = worker.max_future_skew_s, worker.max_age_s
        for msg in msgs:
            decoded = decode_message(
                msg.value,
                kind,
                max_bytes=worker.max_message_bytes,
                max_batch=worker.max_batch_events,
            )
            for rejection in decoded.rejections:
                self._dead_letter(msg, rejection, role)
            for ev, idx, raw in zip(decoded.events, decoded.indexes, decoded.raws, strict=True):
                t = event_time(ev.timestamp, msg.timestamp_ms)
                refused = time_rejection(t, msg.timestamp_ms, ahead, age)
                if refused is not None:
                    self._dead_letter(msg, Rejection(*refused, raw, idx), role)
                    continue
                origin = f"{msg.partition}:{msg.offset}:{'' if idx is None else idx}"
                accepted.append((ev, msg, idx, raw, origin, t))
        self.metrics.messages.labels(topic=role).inc(len(msgs))
        return accepted

    def _count_results(
        self, accepted: list[tuple], results: Sequence[str], role: str, what: str
    ) -> list[int]:
        """Dead-letter duplicates, count outcomes; return the indexes of events to observe."""
        keep = []
        for i, ((_, msg, idx, raw, _, _), result) in enumerate(zip(accepted, results, strict=True)):
            if result == "duplicate":
                self.metrics.join.labels(result="duplicate").inc()
                reason = f"duplicate:{what}"
                message = f"another message already carried this {what.replace('_', ' ')}"
                self._dead_letter(msg, Rejection(reason, message, raw, idx), role)
                continue
            if result == "late":
                self.metrics.join.labels(result=f"late_{role.rstrip('s')}").inc()
            elif result == "redelivered":
                self.metrics.join.labels(result="redelivered").inc()
            keep.append(i)
        self.metrics.events.labels(topic=role, outcome="accepted").inc(len(keep))
        return keep

    def _joined(self, joined: Sequence[Joined]) -> None:
        # A join handed back to a redelivery (``again``: after a Redis timeout or a crash
        # before its outcome was produced) is emitted by this process now, so it counts here
        # as joined too; its arrival was counted as "redelivered" already.
        if joined:
            self.metrics.join.labels(result="joined").inc(len(joined))
            observe_many(self.metrics.label_delay, [max(j.label_delay_s, 0.0) for j in joined])

    async def on_predictions(self, msgs: Sequence[RawMessage]) -> None:
        """Process one consumed batch of the predictions topic."""
        started = time.perf_counter()
        accepted = await self._decode_batch(msgs, Prediction, "predictions")
        items = []
        perf = self._perf
        for ev, _, _, _, origin, t in accepted:
            features = {k: v for k, v in ev.features.items() if k in perf} if perf else {}
            rec = JoinRecord(
                ev.model_id, ev.model_version, t, ev.prediction, ev.confidence, ev.scores,
                ev.segments, features,
            )  # fmt: skip
            items.append((ev.prediction_id, origin, rec))
        results, joined = await retry(
            lambda: self.join.add_predictions(items), "redis", self.metrics
        )
        keep = self._count_results(accepted, results, "predictions", "prediction_id")
        self._joined(joined)
        observed = [
            Observed(
                accepted[i][0],
                items[i][2].event_time,
                accepted[i][1].partition,
                accepted[i][1].offset,
                -1 if accepted[i][2] is None else accepted[i][2],
            )
            for i in keep
        ]
        await self.sink.on_batch("predictions", observed, joined, _record_ms(msgs))
        await retry(self.output.flush, "kafka", self.metrics)
        await self.sink.commit()
        self.metrics.batch_seconds.labels(topic="predictions").observe(
            time.perf_counter() - started
        )

    async def on_labels(self, msgs: Sequence[RawMessage]) -> None:
        """Process one consumed batch of the labels topic."""
        started = time.perf_counter()
        accepted = await self._decode_batch(msgs, Label, "labels")
        # Judged late or not as read, before the join: the verdict travels with a pending label.
        counts = await self.sink.admit_labels(
            [(msg.partition, msg.offset, -1 if idx is None else idx, t)
             for _, msg, idx, _, _, t in accepted]
        )  # fmt: skip
        items = [
            (ev.prediction_id, origin,
             LabelRecord(ev.label, t, ev.model_id, not ok))
            for (ev, _, _, _, origin, t), ok in zip(accepted, counts, strict=True)
        ]  # fmt: skip
        results, joined = await retry(lambda: self.join.add_labels(items), "redis", self.metrics)
        self._count_results(accepted, results, "labels", "label")
        self._joined(joined)
        await self.sink.on_batch("labels", [], joined, _record_ms(msgs))
        await retry(self.output.flush, "kafka", self.metrics)
        await self.sink.commit()
        self.metrics.batch_seconds.labels(topic="labels").observe(time.perf_counter() - started)

    async def sweep(self, now: float | None = None) -> None:
        """Expire what waited too long; expired predictions count as never labelled."""
        expired = await retry(lambda: self.join.expire(now), "redis", self.metrics)
        if expired.predictions:
            self.metrics.join.labels(result="expired_prediction").inc(len(expired.predictions))
        if expired.labels:
            self.metrics.join.labels(result="expired_label").inc(expired.labels)
        self.metrics.update_never_labelled()
        pending_p, pending_l = await retry(self.join.pending, "redis", self.metrics)
        self.metrics.pending.labels(side="prediction").set(pending_p)
        self.metrics.pending.labels(side="label").set(pending_l)
