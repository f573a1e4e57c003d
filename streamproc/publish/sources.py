"""The aggregation stage in a worker: sources restored from Redis, partials sent to Kafka.

:class:`SourceStage` is the sink the worker's :class:`~streamproc.ingest.ingestor.Ingestor`
hands every consumed batch to (aggregation steps 2-5 of :mod:`streamproc.publish.commit`).
It also reports sources that went quiet (:meth:`SourceStage.report_idle`, from a timer), which
is how windows close when traffic stops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.aggregate.references import TimelineBook
from streamproc.aggregate.source import SourceAggregator
from streamproc.aggregate.stage import AggregateStage, Role
from streamproc.aggregate.wire import PartialsMessage, ProgressMessage, encode_message, partition_of
from streamproc.baseline.reference import ReferenceCache
from streamproc.config import Config
from streamproc.ingest.ingestor import Observed
from streamproc.ingest.join import Joined
from streamproc.kafka.producer import OutputProducer
from streamproc.kafka.retry import retry
from streamproc.offload import off_loop
from streamproc.publish.commit import Fenced, checkpoint_sources, take_ownership
from streamproc.publish.keys import Keys
from streamproc.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")
OFFLOAD_CELLS = 50_000  # feature values in one batch from which folding leaves the loop


def partials_topic(cfg: Config) -> str:
    """The internal model-keyed topic between the stages."""
    return f"{cfg.worker.app_id}-partials"


def ensure_partials_topic(cfg: Config) -> int:
    """Create the partials topic when missing; return its partition count."""
    admin = AdminClient(cfg.kafka.librdkafka())
    name = partials_topic(cfg)
    meta = admin.list_topics(timeout=30).topics.get(name)
    if meta is None or not meta.partitions:
        # Messages are packed under 512 KiB (aggregate.wire.pack); one item alone may be bigger
        # (a sample of wide rows): allow what the producer allows.
        config = {"retention.ms": str(7 * 86_400_000), "max.message.bytes": str(8_388_608)}
        rf = cfg.kafka.replication_factor
        config["min.insync.replicas"] = str(cfg.kafka.min_insync_replicas)
        topic = NewTopic(name, cfg.monitoring.partials_partitions, rf, config=config)
        for fut in admin.create_topics([topic]).values():
            try:
                fut.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
        # A topic just created may list no partitions for a moment (no leader yet): wait.
        deadline = time.monotonic() + 30
        while True:
            meta = admin.list_topics(name, timeout=30).topics.get(name)
            if meta is not None and meta.partitions and meta.error is None:
                break
            if time.monotonic() > deadline:
                raise KafkaException(f"topic {name}: created, but no partitions listed in 30 s")
            time.sleep(0.1)
    count = len(meta.partitions)
    if count != cfg.monitoring.partials_partitions:
        log.warning(
            "topic %s has %d partitions, monitoring.partials_partitions says %d: using %d",
            name, count, cfg.monitoring.partials_partitions, count,
        )  # fmt: skip
    return count


class SourceStage:
    """The worker's aggregation stage; see the module docstring.

    Parameters
    ----------
    cfg, client, output, metrics
        The configuration, an asyncio Redis client, the producer, the worker's metrics.
    partitions
        Partitions of the partials topic (progress goes to each).
    wall
        The clock (tests pass their own).
    """

    def __init__(
        self,
        cfg: Config,
        client: Any,
        output: OutputProducer,
        metrics: WorkerMetrics,
        partitions: int,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.output = output
        self.metrics = metrics
        self.partitions = partitions
        self.wall = wall
        self.keys = Keys(cfg.redis.prefix)
        self.topic = partials_topic(cfg)
        self.book = TimelineBook(cfg.monitoring, ReferenceCache())
        self.stage = AggregateStage(cfg.monitoring, self.book)
        self.models: set[str] = set()
        self.first_record_s: float | None = None  # the first record time of the deployment
        self.seen_at: dict[str, float] = {}  # wall time a source was first assigned here
        self._touched: set[str] = set()
        self._announced: dict[str, int] = {}  # source -> the store generation it announced
        self._epochs: dict[str, int] = {}  # source -> this worker's owner epoch of it
        # The predictions and labels agents and the idle timer share the sources: one at a
        # time, since folding runs in a thread, off the loop.
        self._lock = asyncio.Lock()
        self._revoked: set[str] = set()
        # Once a batch was wide (a model with many features), the heavy steps run in a thread
        # from then on; narrow traffic keeps them on the loop (a thread hop costs ~50 us).
        self._offload = False

    # -- references ------------------------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        """Re-read the judges' timelines and the baseline store's stamps when they changed
        (one ``MGET`` per batch), or every ``baseline_refresh_s``."""
        prefix = self.cfg.redis.prefix
        await self.book.refresh(self.client, prefix, self.models, self.wall(), force)

    # -- the sink ---------------------------------------------------------------------------------

    async def _off(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: in a thread once the traffic was wide, else on the loop."""
        if self._offload:
            return await off_loop(fn, *args)
        return fn(*args)

    async def restore(self, source: str) -> SourceAggregator:
        # Fence off whoever held the source before: its next checkpoint is refused.
        self._epochs[source] = await take_ownership(self.client, self.keys, f"agg:{source}")
        fields = await self.client.hgetall(self.keys.source(source))
        agg, why = SourceAggregator.restore(
            source, self.cfg.monitoring, self.book, {k.decode(): v for k, v in fields.items()}
        )
        if why:
            log.warning("aggregation: %s", why)
        self.stage.sources[source] = agg
        return agg

    async def _ensure(self, first: Mapping[str, int]) -> None:
        for source, offset in sorted(first.items()):
            agg = self.stage.sources.get(source)
            # Absent, or another worker moved the source on meanwhile: read its checkpoint.
            if agg is None or offset > agg.last_offset + 1:
                await retry(lambda s=source: self.restore(s), "redis", self.metrics)

    async def admit_labels(self, arrivals: Sequence[tuple[int, int, int, float]]) -> list[bool]:
        """Judge a labels batch's labels on their sources' clocks, before the join (see
        :meth:`AggregateStage.admit_labels`); the sources are restored first if need be."""
        async with self._lock:
            try:
                first: dict[str, int] = {}
                for partition, offset, _, _ in arrivals:
                    src = f"l{partition}"
                    first[src] = min(first.get(src, offset), offset)
                await self._ensure(first)
                self._touched |= set(first)
                return self.stage.admit_labels(arrivals)
            finally:
                self._drop_revoked()

    async def on_batch(
        self,
        role: str,
        observed: Sequence[Observed],
        joined: Sequence[Joined],
        record_ms: Mapping[int, int],
    ) -> None:
        async with self._lock:
            try:
                await self._on_batch(role, observed, joined, record_ms)
            finally:
                self._drop_revoked()

    async def _on_batch(
        self,
        role: str,
        observed: Sequence[Observed],
        joined: Sequence[Joined],
        record_ms: Mapping[int, int],
    ) -> None:
        prefix = "p" if role == "predictions" else "l"
        new = {o.event.model_id for o in observed} | {j.prediction.model_id for j in joined}
        if not new <= self.models:
            self.models |= new
            await retry(lambda: self.refresh(force=True), "redis", self.metrics)
        else:
            await retry(self.refresh, "redis", self.metrics)
        first: dict[str, int] = {}
        for o in observed:
            src = f"{prefix}{o.partition}"
            first[src] = min(first.get(src, o.offset), o.offset)
        # (A labels batch's sources were made ready by admit_labels, which moved their clocks:
        # checking them again against the offsets of the joins would restore the checkpoint.)
        for j in joined if role == "predictions" else ():
            src = f"{prefix}{j.completed_by.split(':', 1)[0]}"
            off = int(j.completed_by.split(":")[1])
            first[src] = min(first.get(src, off), off)
        await self._ensure(first)
        for partition in record_ms:
            first.setdefault(f"{prefix}{partition}", -1)
        await self._ensure({s: o for s, o in first.items() if o < 0})
        if record_ms and self.first_record_s is None:
            earliest = min(record_ms.values()) / 1000
            await self.client.set(self.keys.first_record, repr(earliest), nx=True)
            self.first_record_s = float(await self.client.get(self.keys.first_record))
        self._touched |= set(first)
        before, late_before = dict(self.stage.folded), dict(self.stage.late)
        # Quiet is measured from the records' own time (when they were produced), so a replay
        # that reads the same records finds the same silences. Folding a wide batch takes a
        # while: off the loop.
        cells = sum(len(o.event.features or ()) for o in observed) + 8 * len(joined)
        self._offload = self._offload or cells > OFFLOAD_CELLS
        if self._offload:
            await off_loop(self.stage.on_batch, role, observed, joined, record_ms)  # type: ignore[arg-type]
        else:
            self.stage.on_batch(role, observed, joined, record_ms)  # type: ignore[arg-type]
        for model, n in self.stage.folded.items():
            if n != before.get(model, 0):
                self.metrics.aggregated.labels(model=model).inc(n - before.get(model, 0))
        for model, n in self.stage.late.items():
            if n != late_before.get(model, 0):
                self.metrics.late_events.labels(model=model).inc(n - late_before.get(model, 0))
        partials, progress = await self._off(self.stage.take)
        # A baseline changed: say at once that these sources know (the judge applies the
        # change once every source does); the timer covers the others.
        gen = self.book.generation
        moved = {p.source for p in progress}
        progress += [
            a.progress()
            for n, a in sorted(self.stage.sources.items())
            if n not in moved and self._announced.get(n, 0) < gen
        ]
        for p in progress:
            self._announced[p.source] = gen
        # Encoding a wide model's partials takes a while too, and so does handing librdkafka
        # tens of MB of them (it copies): off the loop.
        blobs = await self._off(_encoded, partials) if partials else []
        await self._off(self.send, partials, progress, blobs)

    def send(
        self,
        partials: Sequence[PartialsMessage],
        progress: Sequence[ProgressMessage],
        blobs: Sequence[bytes] | None = None,
    ) -> None:
        """Produce ``partials`` (already encoded as ``blobs``, or encoded here) to their models'
        partitions, then each progress message to every partition."""
        if blobs is None:
            blobs = _encoded(partials)
        for msg, blob in zip(partials, blobs, strict=True):
            self.output.produce(
                self.topic, blob, msg.model_id.encode(), partition_of(msg.model_id, self.partitions)
            )
        if partials:
            self.metrics.partials.labels(result="sent").inc(len(partials))
        for p in progress:
            blob = encode_message(p)
            for k in range(self.partitions):
                self.output.produce(self.topic, blob, None, k)

    async def commit(self) -> None:
        """Aggregation step 5: checkpoint every source the batch touched."""
        async with self._lock:
            try:
                await self._commit()
            finally:
                self._drop_revoked()

    async def _commit(self) -> None:
        touched, self._touched = self._touched, set()
        held = [self.stage.sources[name] for name in sorted(touched) if name in self.stage.sources]
        changes = await self._off(lambda: {a.source: a.checkpoint() for a in held})
        # The other agent may have sent partials of these sources since this batch's flush:
        # a checkpoint never covers partials Kafka has not acknowledged.
        await retry(self.output.flush, "kafka", self.metrics)
        while True:
            fence = {
                self.keys.owner(f"agg:{name}"): self._epochs[name]
                for name in changes
                if name in self._epochs
            }
            try:
                write = functools.partial(
                    checkpoint_sources, self.client, self.keys, changes, fence
                )
                await retry(write, "redis", self.metrics)
                return
            except Fenced as exc:
                # Another worker restored these sources since: theirs now. What this batch
                # sent for them is a duplicate the judge drops; forget them here.
                lost = {owner.rsplit(":", 1)[1] for owner in exc.lost}
                self.metrics.fenced.labels(stage="aggregate").inc()
                log.warning(
                    "sources %s were taken over by another worker: their checkpoint is not "
                    "written", sorted(lost),
                )  # fmt: skip
                self.revoke(sorted(lost))
                changes = {n: c for n, c in changes.items() if n not in lost}

    # -- quiet sources ---------------------------------------------------------------------------

    async def report_idle(self, assigned: Mapping[str, bool]) -> int:
        """Tell the judges which of the ``assigned`` sources (name -> nothing left to read)
        have had no record for ``idle_timeout_s``, and for how long, and (when a baseline
        changed) that every assigned source knows; returns how many were idle."""
        async with self._lock:
            try:
                return await self._report_idle(assigned)
            finally:
                self._drop_revoked()

    async def _report_idle(self, assigned: Mapping[str, bool]) -> int:
        now = self.wall()
        await retry(self.refresh, "redis", self.metrics)
        gen = self.book.generation
        timeout = self.cfg.monitoring.idle_timeout_s
        if self.first_record_s is None:
            stored = await self.client.get(self.keys.first_record)
            self.first_record_s = float(stored) if stored else None
        quiet: list[ProgressMessage] = []
        partials: list[PartialsMessage] = []
        for source, caught_up in sorted(assigned.items()):
            if not caught_up:
                continue
            agg = self.stage.sources.get(source)
            if agg is None:
                agg = await retry(lambda s=source: self.restore(s), "redis", self.metrics)
            agg.notice()
            # No record yet anywhere: quiet since this worker has had the source.
            first = self.first_record_s
            if first is None:
                first = self.seen_at.setdefault(source, now)
            idle_for = agg.quiet_for(now, first)
            if idle_for >= timeout:
                partials += await self._off(agg.go_quiet)
                quiet.append(agg.progress(idle_for, now))
                self._touched.add(source)
        idle = len(quiet)
        for source in sorted(set(assigned) - {q.source for q in quiet}):
            if self._announced.get(source, 0) < gen:
                agg = self.stage.sources.get(source) or await retry(
                    lambda s=source: self.restore(s), "redis", self.metrics
                )
                agg.notice()
                quiet.append(agg.progress())
        for q in quiet:
            self._announced[q.source] = gen
        if quiet:
            # Aggregation steps 3-5 for what the silence completed.
            await self._off(self.send, partials, quiet)
            await retry(self.output.flush, "kafka", self.metrics)
            await self._commit()
        return idle

    def revoke(self, sources: Sequence[str]) -> None:
        """Partitions taken away: forget their sources (their next owner restores them); once
        the batch in progress (folding in a thread) is done, if there is one."""
        self._revoked.update(sources)
        if not self._lock.locked():
            self._drop_revoked()

    def _drop_revoked(self) -> None:
        for s in sorted(self._revoked):
            self.stage.drop(s)
            self._epochs.pop(s, None)
        self._revoked.clear()

    def roles(self) -> dict[str, Role]:
        return {s: ("predictions" if s[0] == "p" else "labels") for s in self.stage.sources}


def _encoded(partials: Sequence[PartialsMessage]) -> list[bytes]:
    return [encode_message(m) for m in partials]
