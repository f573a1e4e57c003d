"""The whole monitor path in one process: ingest, aggregate, judge, with nothing in between.

:class:`InProcessPipeline` runs the worker's own code for every stage (the
:class:`~streamproc.ingest.ingestor.Ingestor` with an in-memory join, the
:class:`~streamproc.aggregate.stage.AggregateStage`, one
:class:`~streamproc.judge.engine.ModelJudge` per model) and hands partials and progress from
one to the next directly instead of through Kafka and Redis. ``streamproc replay`` drives it
with the records of a topic range, tests with records they make up; both get the alerts and
``metrics.v1`` records the worker would publish for the same offsets.

Silence is measured on record time here, and only when the driver says so (:meth:`idle`): a
source whose last record is more than ``idle_timeout_s`` older than ``now`` is idle, as a worker
that read it live would have found it once caught up. A driver that feeds in record-time order
(a replay) calls it before each batch with that batch's time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec
from prometheus_client import CollectorRegistry

from streamproc.aggregate.references import TimelineBook
from streamproc.aggregate.source import SourceAggregator
from streamproc.aggregate.stage import AggregateStage
from streamproc.aggregate.wire import PartialsMessage, ProgressMessage
from streamproc.baseline import ReferenceProfile
from streamproc.baseline.reference import ReferenceCache, references_of
from streamproc.baseline.store import stamp_of
from streamproc.config import Config
from streamproc.contracts import Alert, Incident, MetricsRecord
from streamproc.errors import StateEncodingError
from streamproc.ingest.ingestor import Ingestor, Observed, RawMessage
from streamproc.ingest.join import Joined
from streamproc.ingest.memory_join import MemoryJoin
from streamproc.judge import checkpoint
from streamproc.judge.engine import Hook, ModelJudge, Output
from streamproc.judge.progress import ProgressState, SourceProgress
from streamproc.judge.timeline import ReferenceTimeline
from streamproc.worker.metrics import WorkerMetrics

Baselines = Callable[[str], Iterable[ReferenceProfile]]


class _Snapshot(msgspec.Struct, array_like=True):
    sources: dict[str, dict[str, bytes]]
    judges: dict[str, bytes]
    progress: ProgressState
    first_record_s: float


class NullOutput:
    """An output producer that keeps nothing (dead letters of a replay go nowhere)."""

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        return None

    async def flush(self) -> None:
        return None


class InProcessPipeline:
    """See the module docstring.

    Parameters
    ----------
    cfg
        The configuration (its ``monitoring``, ``join`` and ``worker`` limits are used).
    prediction_partitions, label_partitions
        The partitions fed, which are the sources every judge waits for.
    baselines
        The stored baselines of a model (called once per model, when first seen).
    topic
        The predictions topic, named in alerts' ``source``.
    """

    def __init__(
        self,
        cfg: Config,
        prediction_partitions: Iterable[int],
        label_partitions: Iterable[int] = (),
        baselines: Baselines = lambda _model: (),
        topic: str | None = None,
        emitted_at: Callable[[], str] = lambda: "",
    ) -> None:
        self.cfg = cfg
        self.topic = topic or cfg.topics.predictions
        self.refs = ReferenceCache()
        self.book = TimelineBook(cfg.monitoring, self.refs)
        self.baselines = baselines
        self.stage = AggregateStage(cfg.monitoring, self.book)
        self.join = MemoryJoin(cfg.join.prediction_ttl_s, cfg.join.label_ttl_s)
        self.metrics = WorkerMetrics(CollectorRegistry())
        self.ingestor = Ingestor(cfg, self.join, NullOutput(), self.metrics, self)  # type: ignore[arg-type]
        self.p_sources = [f"p{p}" for p in sorted(prediction_partitions)]
        self.l_sources = [f"l{p}" for p in sorted(label_partitions)]
        self.progress = SourceProgress(self.p_sources, self.l_sources)
        self.judges: dict[str, ModelJudge] = {}
        self.emitted_at = emitted_at
        self.on_window: Hook | None = None
        self.alerts: list[Alert] = []
        self.incidents: list[Incident] = []
        self.records: list[MetricsRecord] = []
        self.detections: list[tuple[str, str, str, str]] = []
        self.idle_sources: set[str] = set()
        self._source_fields: dict[str, dict[str, bytes]] = {}
        self._stored: dict[str, dict[str, str]] = {}  # model -> version -> stamp
        self.decisions: list[tuple[str, str]] = []
        self._versions: set[tuple[str, str]] = set()
        # Hooks: a model's references when it is first seen, and a version's (replay overrides)
        self.setup_model: Callable[[InProcessPipeline, str], None] | None = None
        self.version_baseline: Callable[[str, str], ReferenceProfile | None] = lambda _m, _v: None

    # -- the sink the ingestor feeds (as the worker's aggregation stage) ----------------------

    async def on_batch(
        self,
        role: str,
        observed: Sequence[Observed],
        joined: Sequence[Joined],
        record_ms: Mapping[int, int],
    ) -> None:
        for model, version in sorted({(o.event.model_id, o.event.model_version) for o in observed}):
            self.judge(model)  # a model's baselines are known before its first partial
            if (model, version) not in self._versions:
                self._versions.add((model, version))
                profile = self.version_baseline(model, version)
                if profile is not None:
                    self.set_baseline(model, version, profile)
        self.stage.on_batch(role, observed, joined, record_ms)  # type: ignore[arg-type]

    async def commit(self) -> None:
        partials, progress = self.stage.take()
        self.deliver(partials, progress)

    async def admit_labels(self, arrivals: Sequence[tuple[int, int, int, float]]) -> list[bool]:
        return self.stage.admit_labels(arrivals)

    # -- feeding -------------------------------------------------------------------------------

    def judge(self, model: str) -> ModelJudge:
        j = self.judges.get(model)
        if j is None:
            j = self.judges[model] = ModelJudge(model, self.cfg.monitoring, self.topic, self.refs)
            j.on_window = self.on_window
            self.book.set(model, j.timeline, {})
            if self.setup_model is not None:
                self.setup_model(self, model)
            else:
                for profile in self.baselines(model):
                    self.set_baseline(model, profile.model_version, profile)
        return j

    def set_baseline(self, model: str, version: str, profile: ReferenceProfile | None) -> None:
        """Store a baseline (``None``: delete it) and decide it at once: both stages of one
        process see it at the same moment, so it applies from the first window no source has
        binned with the previous one (see :meth:`ModelJudge.decide`)."""
        j = self.judge(model)
        stored = self._stored.setdefault(model, {})
        if profile is None:
            stored.pop(version, None)
            j.offer_baseline(version, None, None, {}, [], 0)
        else:
            stamp = stamp_of(profile.to_bytes())
            stored[version] = stamp
            refs = references_of(profile.segments, "baseline", j.cfg.features)
            j.offer_baseline(
                version, stamp, profile.created_at, refs, list(profile.segment_dims), 0
            )
        self.decisions += [
            (model, line) for line in j.decide(lambda _g: True, lambda _g: self._binned_until())
        ]
        self.book.set(model, j.timeline, stored)

    def _binned_until(self) -> float:
        """The newest event any source has folded: every source notices a change at once."""
        return max((a.clock.newest for a in self.stage.sources.values()), default=-math.inf)

    def use_timeline(self, model: str, timeline: ReferenceTimeline) -> None:
        """Judge ``model`` with a timeline decided elsewhere (a live worker's): which baseline
        judges which window, as it was. Its references must be in :attr:`refs`."""
        j = self.judge(model)
        j.timeline = ReferenceTimeline.restore(timeline.state())
        j.pending_baselines.clear()
        stamps = {v: s for v in j.timeline.baselines if (s := j.timeline.stamp(v)) is not None}
        self._stored[model] = stamps
        self.book.set(model, j.timeline, stamps)

    async def feed(self, role: str, messages: Sequence[RawMessage]) -> None:
        """One consumed batch of ``role`` (``"predictions"`` or ``"labels"``)."""
        if not messages:
            return
        prefix = "p" if role == "predictions" else "l"
        for m in messages:
            src = f"{prefix}{m.partition}"
            if src in self.idle_sources:
                self.idle_sources.discard(src)
                self.progress.update(self.stage.source(src).progress(None))
        if role == "predictions":
            await self.ingestor.on_predictions(messages)
        else:
            await self.ingestor.on_labels(messages)
        self.advance()

    def feed_sync(self, role: str, messages: Sequence[RawMessage]) -> None:
        asyncio.run(self.feed(role, messages))

    def deliver(
        self, partials: Sequence[PartialsMessage], progress: Sequence[ProgressMessage]
    ) -> None:
        for msg in partials:
            self.judge(msg.model_id).add(msg)
        for p in progress:
            self.progress.update(p)

    def idle(self, now_s: float, caught_up: Iterable[str] | None = None) -> None:
        """Silence: sources quiet for ``idle_timeout_s`` by ``now_s`` (record time) stop holding
        windows; ``caught_up`` limits that to the sources with nothing left to feed."""
        timeout = self.cfg.monitoring.idle_timeout_s
        allowed = None if caught_up is None else set(caught_up)
        first = self.stage.first_record_s
        if first == math.inf:
            return
        for src in self.p_sources + self.l_sources:
            if allowed is not None and src not in allowed:
                continue
            agg = self.stage.source(src)
            quiet = agg.quiet_for(now_s, first)
            if quiet >= timeout:
                self.idle_sources.add(src)
                self.deliver(agg.go_quiet(), [agg.progress(quiet, now_s)])
        self.advance()

    def advance(self, final: bool = False) -> Output:
        # At the end too, the sources' real progress says which windows were complete (their
        # volume is judged) and which the end of the input cut short.
        bounds = self.progress.bounds()
        total = Output()
        for model in sorted(self.judges):
            out = self.judges[model].advance(bounds, self.emitted_at(), final)
            self.alerts += out.alerts
            self.incidents += out.incidents
            self.records += out.metrics
            self.detections += [(model, *d) for d in out.detections]
            total.extend(out)
        return total

    # -- restarts ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Every stage's checkpoint at once (not the join's state: like Redis, it survives).

        :meth:`restore` of it is what a worker restart does: what came after must be fed again
        (the committed offsets were those of the snapshot), and nothing counts twice.
        """
        sources: dict[str, dict[str, bytes]] = {}
        for name, agg in sorted(self.stage.sources.items()):
            kept = self._source_fields.setdefault(name, {})
            fields, gone = agg.checkpoint()
            for f in gone:
                kept.pop(f, None)
            kept.update(fields)
            sources[name] = dict(kept)
        judges = {m: checkpoint.to_bytes(j) for m, j in sorted(self.judges.items())}
        stored = _Snapshot(sources, judges, self.progress.state(), self.stage.first_record_s)
        return msgspec.msgpack.encode(stored)

    def restore(self, blob: bytes) -> None:
        """Back to :meth:`snapshot`'s state (references and baselines are kept)."""
        s = msgspec.msgpack.decode(blob, type=_Snapshot)
        self.stage.sources = {}
        self._source_fields = {k: dict(v) for k, v in s.sources.items()}
        for name, fields in s.sources.items():
            agg, why = SourceAggregator.restore(name, self.cfg.monitoring, self.book, fields)
            if why:
                raise StateEncodingError(why)
            self.stage.sources[name] = agg
        judges = {}
        for model, blob_j in s.judges.items():
            j, why = checkpoint.restore(blob_j, model, self.cfg.monitoring, self.topic, self.refs)
            if why:
                raise StateEncodingError(why)
            j.on_window = self.on_window
            judges[model] = j
            self.book.set(model, j.timeline, self._stored.get(model, {}))
        self.judges = judges
        self.progress = SourceProgress.restore(self.p_sources, self.l_sources, s.progress)
        self.stage.first_record_s = s.first_record_s

    def finish(self) -> Output:
        """Close everything still open (the end of a replay): a last window cut short by the
        end of the input is judged on what it holds, without its volume."""
        for agg in self.stage.sources.values():
            agg.clock.flushed_until = math.inf
            self.deliver(agg.complete(), [])
        return self.advance(final=True)


def raw(
    topic: str, partition: int, offset: int, value: bytes, timestamp_ms: int | None
) -> RawMessage:
    """A consumed record as the ingest stage takes it (no key)."""
    return RawMessage(topic, partition, offset, None, value, timestamp_ms)
