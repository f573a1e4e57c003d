"""The monitoring stage in the worker: route by model, run monitors, publish, checkpoint.

Keyed processing: ingestion sends each model's share of a batch, as one :class:`MonitorInput`
message keyed by ``model_id``, to the internal topic ``<app_id>-observations``. Each model's
messages land in one partition, so every piece of a model's monitor state lives in exactly one
worker, and adding workers splits models between them without changing any result.

Commit order for one batch of the observations topic:

1. fold the inputs into each model's :class:`~streamproc.monitor.ModelMonitor` (redelivered
   observations are skipped by their source offsets) and close what the watermark allows;
2. in one Redis transaction: each touched monitor's checkpoint, the ids of the alerts it will
   publish, and an *outbox* of the alerts and metrics records to publish;
3. publish the outbox, wait for Kafka's acknowledgement, delete the outbox;
4. only then acknowledge the batch (Faust commits the offsets).

A restart resumes from the checkpoint and first publishes any outbox left behind, so outputs
are neither lost nor derived twice. What remains is the gap between Kafka's acknowledgement
and the outbox's deletion (one Redis round trip): a crash exactly there republishes that
batch's records once (alerts keep their content-derived ids, so consumers can drop them).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.config import Config
from streamproc.contracts import encode
from streamproc.errors import StateEncodingError
from streamproc.ingest.ingestor import MonitorSink, Observed
from streamproc.ingest.join import Joined, JoinRecord
from streamproc.kafka.producer import OutputProducer
from streamproc.kafka.retry import retry
from streamproc.monitor import (
    ModelMonitor,
    MonitorInput,
    Observation,
    Outcome,
    Output,
    SegRef,
    decode_input,
    encode_input,
    monitor_from_bytes,
    monitor_to_bytes,
    observation_of,
    outcome_of,
    segref_from_baseline,
)
from streamproc.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)
ALERT_MEMORY_S = 30 * 24 * 3600
CHUNK = 250  # observations per message of the keyed topic
_OUTBOX = msgspec.msgpack.Encoder()


def observations_topic(cfg: Config) -> str:
    return f"{cfg.worker.app_id}-observations"


def ensure_observations_topic(cfg: Config) -> None:
    """Create the internal keyed topic when missing."""
    admin = AdminClient(cfg.kafka.librdkafka())
    name = observations_topic(cfg)
    if name in admin.list_topics(timeout=30).topics:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                name, cfg.monitoring.observations_partitions, 1, config={"retention.ms": "86400000"}
            )
        ]
    )
    for fut in futures.values():
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def partition_count(cfg: Config, topic: str) -> int:
    meta = AdminClient(cfg.kafka.librdkafka()).list_topics(topic, timeout=30)
    t = meta.topics.get(topic)
    return len(t.partitions) if t is not None and t.partitions else 1


class RoutingSink(MonitorSink):
    """Ingestion's sink: each model's observations and outcomes to the keyed topic."""

    def __init__(self, cfg: Config, output: OutputProducer) -> None:
        self.topic = observations_topic(cfg)
        self.output = output

    async def on_predictions(self, observed: Sequence[Observed]) -> None:
        by_model: dict[str, list[Observation]] = defaultdict(list)
        for o in observed:
            by_model[o.event.model_id].append(
                observation_of(o.event, o.event_time, o.partition, o.offset, o.index)
            )
        self._send(by_model, outcomes=False)

    async def on_outcomes(self, joined: Sequence[Joined], expired: Sequence[JoinRecord]) -> None:
        by_model: dict[str, list[Outcome]] = defaultdict(list)
        for j in joined:
            by_model[j.prediction.model_id].append(
                outcome_of(j.prediction, j.label.label, j.label.event_time, j.origin)
            )
        self._send(by_model, outcomes=True)

    def _send(self, by_model: Mapping[str, Sequence[Any]], outcomes: bool) -> None:
        for model, items in by_model.items():
            for i in range(0, len(items), CHUNK):  # keep messages well under the 1 MB default
                part = list(items[i : i + CHUNK])
                chunk = (
                    MonitorInput(model, outcomes=part) if outcomes else MonitorInput(model, part)
                )
                self.output.produce(self.topic, encode_input(chunk), model.encode())


FOLD_MAX = 2_000  # observations or outcomes per engine call: larger runs cost more in GC


class _Run:
    """A model's consecutive inputs of one kind, folded in with one engine call.

    Observations and outcomes alternate as they come (both name segment values first seen,
    which can matter once a dimension's value cap is reached), so a change of kind flushes.
    """

    def __init__(self, monitor: ModelMonitor) -> None:
        self.monitor = monitor
        self.observations: list[Observation] = []
        self.outcomes: list[Outcome] = []

    def add(self, batch: MonitorInput) -> None:
        if batch.observations:
            if self.outcomes:
                self.flush()
            self.observations.extend(batch.observations)
        if batch.outcomes:
            if self.observations:
                self.flush()
            self.outcomes.extend(batch.outcomes)
        if len(self.observations) + len(self.outcomes) >= FOLD_MAX:
            self.flush()

    def flush(self) -> None:
        if self.observations:
            self.monitor.observe(self.observations)
            self.observations = []
        if self.outcomes:
            self.monitor.observe_outcomes(self.outcomes)
            self.outcomes = []


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MonitorStage:
    """Runs the monitors of the models whose observations this worker consumes."""

    def __init__(
        self,
        cfg: Config,
        client: aioredis.Redis,
        output: OutputProducer,
        metrics: WorkerMetrics,
        prediction_partitions: int,
        label_partitions: int,
        clock: Any = None,
    ) -> None:
        self.cfg = cfg
        self.redis = client
        self.output = output
        self.metrics = metrics
        self.sources = [f"p{i}" for i in range(prediction_partitions)]
        self.outcome_sources = [f"l{i}" for i in range(label_partitions)]
        self.monitors: dict[str, ModelMonitor] = {}
        self.seq: dict[str, int] = {}
        self.last_seen: dict[tuple[str, str], float] = {}
        self.wall = clock or time.time
        self.emitted_at = now_iso  # replaced in tests and replays for byte-identical output

    def _key(self, model: str, what: str) -> str:
        return f"{self.cfg.redis.key_prefix}:monitor:{model}:{what}"

    async def _references(self, model: str) -> dict[tuple[str, str], SegRef]:
        from streamproc.baseline import AsyncBaselineStore

        store = AsyncBaselineStore(self.redis, self.cfg.redis.key_prefix)
        refs: dict[tuple[str, str], SegRef] = {}
        for profile in await store.all_versions(model):
            for key, seg in profile.segments.items():
                refs[(profile.model_version, key)] = segref_from_baseline(seg)
        return refs

    async def _monitor(self, model: str) -> ModelMonitor:
        stored_seq = await self.redis.get(self._key(model, "seq"))
        seq = int(stored_seq) if stored_seq else 0
        m = self.monitors.get(model)
        if m is not None and self.seq.get(model) == seq:
            return m
        refs = await self._references(model)
        blob = await self.redis.get(self._key(model, "state")) if seq else None
        topic = self.cfg.topics.predictions
        if blob:
            m = monitor_from_bytes(blob, self.cfg.monitoring, refs, topic)
        else:
            m = ModelMonitor(model, self.cfg.monitoring, self.sources, refs, topic)
            m.outcome_clock.expect(self.outcome_sources)
        now = self.wall()
        for source in self.sources + self.outcome_sources:
            self.last_seen.setdefault((model, source), now)
        self.monitors[model] = m
        self.seq[model] = seq
        await self._replay_outbox(model)
        return m

    async def on_inputs(self, messages: Sequence[tuple[int, int, bytes]]) -> None:
        """Process one consumed batch of the keyed topic: ``(partition, offset, value)``.

        A model's consecutive messages of one kind (observations or outcomes) are folded in
        with one ``observe`` call, up to :data:`FOLD_MAX` items: the engine's per-call work is
        spread over more rows. Folding a run at once instead of message by message gives the
        same windows and alerts (moments may differ in the last bits, as they do for any other
        cut of the same stream into messages).
        """
        touched: dict[str, Output] = {}
        now = self.wall()
        runs: dict[str, _Run] = {}
        for partition, offset, blob in messages:
            try:
                batch = decode_input(blob)
            except (StateEncodingError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error(
                    "skipping undecodable keyed-topic message %s:%s: %s", partition, offset, exc
                )
                continue
            model = batch.model_id
            run = runs.get(model)
            if run is None:
                # One state check per model and batch: a batch is processed by one worker.
                m = await retry(lambda b=batch: self._monitor(b.model_id), "redis", self.metrics)
                run = runs[model] = _Run(m)
            m = run.monitor
            if offset <= m.applied.get(partition, -1):
                continue  # already folded in before a restart: its checkpoint says so
            m.applied[partition] = offset
            run.add(batch)
            seen = self.last_seen
            for p in {ob.partition for ob in batch.observations}:
                seen[(model, f"p{p}")] = now
            for source in {oc.source for oc in batch.outcomes}:
                seen[(model, source)] = now
            touched.setdefault(model, Output())
        for run in runs.values():
            run.flush()
        await self._advance(touched)

    async def tick(self) -> None:
        """Retire sources idle past the timeout so quiet partitions don't stall windows."""
        now = self.wall()
        touched: dict[str, Output] = {}
        for (model, source), seen in list(self.last_seen.items()):
            m = self.monitors.get(model)
            idle = m is not None and now - seen > self.cfg.monitoring.idle_timeout_s
            if idle and (source in m.clock.sources or source in m.outcome_clock.sources):
                m.retire(source)
                touched.setdefault(model, Output())
        if touched:
            await self._advance(touched)

    async def _advance(self, touched: dict[str, Output]) -> None:
        stamp = self.emitted_at()
        for model in sorted(touched):
            touched[model] = self.monitors[model].advance(stamp)
        alerts = [a for out in touched.values() for a in out.alerts]
        fresh = []
        if alerts:
            keys = [f"{self.cfg.redis.key_prefix}:alert:{a.alert_id}" for a in alerts]
            seen = await retry(lambda: self.redis.mget(keys), "redis", self.metrics)
            fresh = [a for a, s in zip(alerts, seen, strict=True) if s is None]
        outbox: dict[str, list[tuple[str, bytes, bytes]]] = {}
        for alert in fresh:
            outbox.setdefault(alert.model_id, []).append(
                (self.cfg.topics.alerts, alert.model_id.encode(), encode(alert))
            )
        for model, out in touched.items():
            outbox.setdefault(model, []).extend(
                (self.cfg.topics.metrics, model.encode(), encode(r)) for r in out.metrics
            )
        # Outbox: the new state and what it must publish are written in one transaction, so a
        # crash can neither lose outputs nor re-derive them from an older state.
        await retry(lambda: self._persist(touched, fresh, outbox), "redis", self.metrics)
        await self._publish(outbox)
        for model, out in touched.items():
            self._gauges(model, out)

    async def _publish(self, outbox: dict[str, list[tuple[str, bytes, bytes]]]) -> None:
        """Send outbox records, wait for Kafka, then clear the outbox."""
        if not any(outbox.values()):
            return
        for records in outbox.values():
            for topic, key, value in records:
                self.output.produce(topic, value, key)
        await retry(self.output.flush, "kafka", self.metrics)
        keys = [self._key(model, "outbox") for model in outbox]
        await retry(lambda: self.redis.delete(*keys), "redis", self.metrics)

    async def _persist(
        self,
        touched: dict[str, Output],
        fresh: list[Any],
        outbox: dict[str, list[tuple[str, bytes, bytes]]],
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for alert in fresh:
                key = f"{self.cfg.redis.key_prefix}:alert:{alert.alert_id}"
                pipe.set(key, b"1", ex=ALERT_MEMORY_S)
            for model in touched:
                seq = self.seq.get(model, 0) + 1
                pipe.set(self._key(model, "state"), monitor_to_bytes(self.monitors[model]))
                pipe.set(self._key(model, "seq"), str(seq))
                if outbox.get(model):
                    pipe.set(self._key(model, "outbox"), _OUTBOX.encode(outbox[model]))
            await pipe.execute()
        for model in touched:
            self.seq[model] = self.seq.get(model, 0) + 1

    async def _replay_outbox(self, model: str) -> None:
        """After a restart: publish what the last checkpoint owed but may not have sent."""
        blob = await self.redis.get(self._key(model, "outbox"))
        if blob:
            records = msgspec.msgpack.decode(blob, type=list[tuple[str, bytes, bytes]])
            log.warning("publishing %d records owed by %s's last checkpoint", len(records), model)
            await self._publish({model: records})

    def _gauges(self, model: str, out: Output) -> None:
        g = self.metrics
        for record in out.metrics:
            seg = ",".join(f"{k}={v}" for k, v in sorted(record.segment.items())) or "all"
            if record.count:
                g.windows_closed.labels(model=model).inc()
            for feature, row in record.features.items():
                labels = {"model": model, "feature": feature, "segment": seg}
                if row.get("psi") is not None:
                    g.feature_psi.labels(**labels).set(float(row["psi"]))  # type: ignore[arg-type]
                if row.get("js") is not None:
                    g.feature_js.labels(**labels).set(float(row["js"]))  # type: ignore[arg-type]
                if row.get("null_rate") is not None:
                    g.feature_null_rate.labels(**labels).set(float(row["null_rate"]))  # type: ignore[arg-type]
            top1 = record.outputs.get("top1_rate")
            if top1 is not None:
                g.prediction_top1_rate.labels(model=model, segment=seg).set(float(top1))
            est = record.outputs.get("estimated_accuracy")
            if est is not None:
                g.accuracy.labels(model=model, segment=seg, kind="estimated").set(float(est))
            acc = record.performance.get("accuracy")
            if acc is not None:
                g.accuracy.labels(model=model, segment=seg, kind="realized").set(float(acc))
        for detector, seg_key, _feature in out.detections:
            g.detections.labels(model=model, detector=detector, segment=seg_key).inc()
        m = self.monitors[model]
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for key, severity in m.tracker.firing():
            counts[(key.kind, severity)] += 1
        for kind in ("feature_drift", "prediction_drift", "label_drift", "performance",
                     "data_quality", "volume"):  # fmt: skip
            for severity in ("info", "warning", "critical"):
                g.alerts_firing.labels(model=model, kind=kind, severity=severity).set(
                    counts.get((kind, severity), 0)
                )
        g.late_events.labels(model=model)._value.set(m.clock.late + m.outcome_clock.late)
        g.monitors.set(sum(len(x.segments) for x in self.monitors.values()))
