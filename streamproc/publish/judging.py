"""The judging stage in a worker: judges restored from Redis, verdicts published to Kafka.

:class:`JudgeStage` consumes ``<app_id>-partials`` (judging steps of
:mod:`streamproc.publish.commit`). Each partition of that topic carries the partials of the
models that hash to it and the progress of every source; the stage keeps, per partition it
owns, a :class:`~streamproc.judge.progress.SourceProgress` and the
:class:`~streamproc.judge.engine.ModelJudge` of each of its models.

Fault isolation
    An exception while judging one model quarantines that model, not the worker: an
    ``alert.v1`` of kind ``monitor_error`` names it (``streamproc_monitor_errors_total{model}``
    counts), the other models go on, and the model's messages from then on are parked in Redis
    instead of judged. Its last good checkpoint stays; when the worker restarts (a fixed
    release) or the next baseline refresh retries it, the parked messages are replayed onto it,
    and the ``monitor_error`` alert resolves. Nothing is lost.

Baselines
    Every ``baseline_refresh_s`` (and at once when the baseline store's change counter moves)
    the stage re-reads its models' baselines; a new, replaced or deleted one is applied to the
    windows not closed yet, logged, and counted (``streamproc_baseline_reloads_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from streamproc.aggregate.wire import (
    PartialsMessage,
    ProgressMessage,
    decode_message,
    partition_of,
)
from streamproc.baseline.reference import ReferenceCache, references_of
from streamproc.config import Config
from streamproc.contracts import Alert, Source, Window, encode
from streamproc.errors import StateEncodingError
from streamproc.ingest.ingestor import OFFLOAD_BYTES
from streamproc.judge import checkpoint
from streamproc.judge.alerts import AlertKey, alert_id
from streamproc.judge.engine import ModelJudge, Output
from streamproc.judge.progress import ProgressState, SourceProgress
from streamproc.kafka.producer import OutputProducer
from streamproc.kafka.retry import retry
from streamproc.offload import off_loop
from streamproc.publish.commit import (
    Fenced,
    Record,
    owed_outbox,
    persist_judgement,
    publish_outbox,
    published_before,
    take_ownership,
)
from streamproc.publish.keys import Keys
from streamproc.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)
_MAGIC = b"SPK1"


HEAVY_DETECTORS = 2_000  # feature detectors from which a model is judged in a thread


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _PartitionStored(msgspec.Struct, array_like=True):
    progress: ProgressState
    applied: int
    models: list[str]
    quarantined: dict[str, str]  # model -> what failed


@dataclass
class Partition:
    """What the stage holds for one partition of the partials topic."""

    progress: SourceProgress
    applied: int = -1
    models: set[str] = field(default_factory=set)
    quarantined: dict[str, str] = field(default_factory=dict)
    epoch: int = 0  # this worker's owner epoch of the partition (not stored with it)

    def to_bytes(self) -> bytes:
        stored = _PartitionStored(
            self.progress.state(), self.applied, sorted(self.models), self.quarantined
        )
        return _MAGIC + msgspec.msgpack.encode(stored)


class JudgeStage:
    """The worker's judging stage; see the module docstring.

    Parameters
    ----------
    cfg, client, output, metrics
        The configuration, an asyncio Redis client, the producer, the worker's metrics.
    prediction_partitions, label_partitions
        Partitions of the predictions and labels topics: the sources every judge waits for.
    partitions
        Partitions of the partials topic.
    """

    def __init__(
        self,
        cfg: Config,
        client: Any,
        output: OutputProducer,
        metrics: WorkerMetrics,
        prediction_partitions: int,
        label_partitions: int,
        partitions: int,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.output = output
        self.metrics = metrics
        self.p_sources = [f"p{i}" for i in range(prediction_partitions)]
        self.l_sources = [f"l{i}" for i in range(label_partitions)]
        self.partitions = partitions
        self.wall = wall
        self.keys = Keys(cfg.redis.prefix)
        self.refs = ReferenceCache()
        self.parts: dict[int, Partition] = {}
        self.judges: dict[str, ModelJudge] = {}
        self._cells: dict[str, set[str]] = {}  # model -> its pending cells stored in Redis
        self.emitted_at: Callable[[], str] = now_iso
        self._refreshed_at = -float("inf")
        self._changes: bytes | None = None
        # A judge was loaded (restored or new) since the last refresh: it must be offered the
        # store's baselines, even when the change counter has not moved since that refresh.
        self._judge_loaded = False
        self._stored_fps: set[str] = set()
        self._exported: dict[tuple[str, str], set[str]] = {}
        self._incident_series: dict[str, set[tuple[str, str, str, str]]] = {}
        # One batch (or quarantine retry) at a time: judging runs in a thread, off the loop.
        self._lock = asyncio.Lock()

    # -- loading ---------------------------------------------------------------------------------

    async def _partition(self, k: int, out: dict[int, list[Record]]) -> Partition:
        part = self.parts.get(k)
        if part is not None:
            return part
        # Fence off whoever held it before (a worker that has not noticed the rebalance yet):
        # its next write is refused.
        epoch = await take_ownership(self.client, self.keys, f"judgepart:{k}")
        owed = await owed_outbox(self.client, self.keys, k)
        if owed:
            log.warning("publishing %d records owed by partition %d's last commit", len(owed), k)
            await publish_outbox(self.client, self.keys, self.output, {k: owed})
        blob = await self.client.get(self.keys.partition(k))
        part = Partition(SourceProgress(self.p_sources, self.l_sources))
        if blob:
            try:
                if blob[:4] != _MAGIC:
                    raise StateEncodingError(f"header {blob[:4]!r}")
                s = msgspec.msgpack.decode(blob[4:], type=_PartitionStored)
                part = Partition(
                    SourceProgress.restore(self.p_sources, self.l_sources, s.progress),
                    s.applied,
                    set(s.models),
                    dict(s.quarantined),
                )
            except (StateEncodingError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("partials partition %d: state discarded (%s)", k, exc)
        part.epoch = epoch
        self.parts[k] = part
        for model in sorted(part.models):
            await self._judge(model, part, out)
        return part

    async def _judge(self, model: str, part: Partition, out: dict[int, list[Record]]) -> None:
        """Load ``model``'s judge from its checkpoint (a quarantined one: replay its parked
        messages onto it first, and lift the quarantine if that now works)."""
        if model in self.judges:
            return
        blob = await self.client.get(self.keys.judge(model))
        cells = await self.client.hgetall(self.keys.judge_cells(model))
        self._cells[model] = {name.decode() for name in cells}
        topic = self.cfg.topics.predictions
        if blob:
            judge, why = checkpoint.restore(
                blob, model, self.cfg.monitoring, topic, self.refs, cells
            )
            if why:
                log.warning("judging: %s", why)
        else:
            judge = ModelJudge(model, self.cfg.monitoring, topic, self.refs)
        if model not in part.quarantined:
            self.judges[model] = judge
            self._judge_loaded = True
            return
        parked = await self.client.lrange(self.keys.parked(model), 0, -1)
        try:
            for raw in parked:
                msg = decode_message(raw)
                if isinstance(msg, PartialsMessage):
                    judge.add(msg)
        except Exception as exc:  # still failing: stays quarantined
            log.error("model %s is still quarantined: %s", model, _what(exc))
            return
        log.warning("model %s: quarantine lifted, %d parked messages replayed", model, len(parked))
        reason = part.quarantined.pop(model)
        self.judges[model] = judge
        self._judge_loaded = True
        self._unparked.append(model)
        k = partition_of(model, self.partitions)
        out.setdefault(k, []).append(self._monitor_error(model, reason, "resolved"))

    # -- baselines -------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Offer every baseline change of the judged models to their judges (they decide when
        it starts once every source has noticed it, :meth:`ModelJudge.decide`): when the
        store's change counter moved, a judge was loaded, or ``baseline_refresh_s`` passed."""
        now = self.wall()
        changes = await self.client.get(self.keys.baseline_changes)
        due = now - self._refreshed_at >= self.cfg.monitoring.baseline_refresh_s
        if not (due or changes != self._changes or self._judge_loaded):
            return
        self._refreshed_at, self._changes, self._judge_loaded = now, changes, False
        from streamproc.baseline import AsyncBaselineStore

        store = AsyncBaselineStore(self.client, self.cfg.redis.prefix)
        generation = int(changes or 0)
        new_refs = []
        for model, judge in sorted(self.judges.items()):
            stored = await store.entries(model)
            known = set(judge.timeline.baselines) | set(judge.pending_baselines)
            for version in sorted(known - set(stored)):
                if judge.offer_baseline(version, None, None, {}, [], generation):
                    log.warning("model %s version %s: baseline deleted", model, version)
            for version, (stamp, p) in sorted(stored.items()):
                refs = references_of(p.segments, "baseline", judge.cfg.features)
                if judge.offer_baseline(
                    version, stamp, p.created_at, refs, list(p.segment_dims), generation
                ):
                    log.warning(
                        "model %s version %s: baseline of %s (%s) found; it applies once every "
                        "source has noticed it", model, version, p.created_at, p.source,
                    )  # fmt: skip
                    new_refs += [r for r in refs.values() if r.fp not in self._stored_fps]
        if new_refs:
            await ReferenceCache.store(self.client, self.cfg.redis.prefix, new_refs)
            self._stored_fps.update(r.fp for r in new_refs)

    def _heavy(self, model: str, judge: ModelJudge, added: dict[str, list[bytes]] | None) -> bool:
        """Whether judging ``model`` now is worth a thread (~50 us): it took big partials in
        this batch, or it holds many feature detectors (a wide model)."""
        if sum(map(len, (added or {}).get(model, ()))) > OFFLOAD_BYTES // 4:
            return True
        return sum(len(seg.detectors) for seg in judge.segments.values()) > HEAVY_DETECTORS

    def _advance(
        self, model: str, judge: ModelJudge, part: Partition, bounds: Any, stamp: str
    ) -> Output:
        progress = part.progress
        for line in judge.decide(progress.acknowledged, progress.binned_until):
            self._picked(model, line)
        return judge.advance(bounds, stamp)

    def _picked(self, model: str, what: str) -> None:
        log.warning("model %s %s", model, what)
        self.metrics.baseline_reloads.labels(model=model).inc()

    # -- a batch ---------------------------------------------------------------------------------

    async def on_messages(self, messages: Sequence[tuple[int, int, bytes]]) -> None:
        """One consumed batch of the partials topic: ``(partition, offset, value)``."""
        async with self._lock:
            await self._on_messages(messages)

    async def _on_messages(self, messages: Sequence[tuple[int, int, bytes]]) -> None:
        self._unparked: list[str] = []
        outbox: dict[int, list[Record]] = defaultdict(list)
        parked: dict[str, list[bytes]] = defaultdict(list)
        added: dict[str, list[bytes]] = defaultdict(list)
        touched: set[int] = set()
        for k in sorted({m[0] for m in messages}):
            await retry(lambda k=k: self._partition(k, outbox), "redis", self.metrics)
        for k, offset, blob in messages:
            part = self.parts.get(k)
            if part is None:
                continue  # revoked while this batch ran: its next owner reads it
            if offset <= part.applied:
                continue  # in the partition's checkpoint already
            part.applied = offset
            touched.add(k)
            try:
                msg = (  # a big one (a wide model's sample) off the loop
                    await off_loop(decode_message, blob)
                    if len(blob) > OFFLOAD_BYTES // 8
                    else decode_message(blob)
                )
            except StateEncodingError as exc:
                log.error("skipping partials message %d:%d: %s", k, offset, exc)
                continue
            if isinstance(msg, ProgressMessage):
                part.progress.update(msg)
                continue
            self.metrics.partials.labels(result="received").inc()
            model = msg.model_id
            part.models.add(model)
            if model in part.quarantined:
                parked[model].append(blob)
                continue
            await retry(lambda m=model, p=part: self._judge(m, p, outbox), "redis", self.metrics)
            judge = self.judges.get(model)
            if judge is None or self.parts.get(k) is not part:
                continue  # revoked while this batch ran
            late, dup = judge.late_partials, judge.duplicate_partials
            added[model].append(blob)
            try:
                if len(blob) > OFFLOAD_BYTES // 8:
                    await off_loop(judge.add, msg)
                else:
                    judge.add(msg)
            except Exception as exc:
                self._quarantine(model, part, exc, outbox)
                parked[model] += added.pop(model)  # this batch's, lost with the judge's memory
                continue
            if judge.late_partials > late:
                self.metrics.partials.labels(result="late").inc(judge.late_partials - late)
            if judge.duplicate_partials > dup:
                self.metrics.partials.labels(result="duplicate").inc(judge.duplicate_partials - dup)
        await retry(self.refresh, "redis", self.metrics)
        await self._judge_partitions(touched, outbox, parked, added)

    async def _judge_partitions(
        self,
        touched: set[int],
        outbox: dict[int, list[Record]],
        parked: dict[str, list[bytes]],
        added: dict[str, list[bytes]] | None = None,
    ) -> None:
        """Judging steps 1 (closing) to 5; ``added``: per model, this batch's messages it took
        (parked with the model if judging it fails now: its memory of them is lost)."""
        touched = {k for k in touched if k in self.parts}  # not what was revoked meanwhile
        fps: set[str] = set()
        for k in touched:
            for model in self.parts[k].models:
                if model in self.judges:
                    fps |= self.judges[model].needed_fps()
        unknown = await retry(
            lambda: self.refs.load(self.client, self.cfg.redis.prefix, fps),
            "redis",
            self.metrics,
        )
        for fp in unknown:
            log.warning("reference %s is not in Redis (expired?): windows binned with it are "
                        "judged on what else they hold", fp)  # fmt: skip
        stamp = self.emitted_at()
        heavy: set[str] = set()
        outputs: dict[str, Output] = {}
        timelines: dict[str, bytes] = {}
        for k in sorted(touched):
            part = self.parts.get(k)
            if part is None:
                continue  # revoked meanwhile
            bounds = part.progress.bounds()
            for model in sorted(part.models):
                judge = self.judges.get(model)
                if judge is None or model in part.quarantined:
                    continue
                before = _timeline_bytes(judge)
                try:
                    # Off the event loop: closing the windows of a wide model takes seconds,
                    # and /metrics, heartbeats and the other agents must not wait for it.
                    if self._heavy(model, judge, added):
                        heavy.add(model)
                        args = (model, judge, part, bounds, stamp)
                        out = await off_loop(self._advance, *args)
                    else:
                        out = self._advance(model, judge, part, bounds, stamp)
                except Exception as exc:
                    self._quarantine(model, part, exc, outbox)
                    parked[model] = (added or {}).get(model, []) + parked.get(model, [])
                    continue
                outputs[model] = out
                after = _timeline_bytes(judge)
                if after != before:
                    timelines[model] = after
                for version, key, _ref in out.references:
                    log.warning(
                        "model %s version %s segment %s: warm-up reference built from its "
                        "first windows", model, version, key,
                    )  # fmt: skip
        ids = [a.alert_id for out in outputs.values() for a in out.alerts]
        ids += [i.event_id for out in outputs.values() for i in out.incidents]
        seen = await retry(
            lambda: published_before(self.client, self.keys, ids), "redis", self.metrics
        )
        cfg = self.cfg
        for model, out in outputs.items():
            k = partition_of(model, self.partitions)
            key = model.encode()
            outbox[k] += [
                (cfg.topics.alerts, key, encode(a)) for a in out.alerts if a.alert_id not in seen
            ]
            outbox[k] += [
                (cfg.topics.incidents, key, encode(i))
                for i in out.incidents
                if i.event_id not in seen
            ]
            outbox[k] += [(cfg.topics.metrics, key, encode(r)) for r in out.metrics]
        alert_ids = [_id_of(r) for r in _alerts_of(outbox, cfg)]
        new_refs = [ref for out in outputs.values() for _, _, ref in out.references]
        if new_refs:
            await retry(
                lambda: ReferenceCache.store(self.client, cfg.redis.prefix, new_refs),
                "redis",
                self.metrics,
            )
        revoked = {k for k in set(touched) | set(outbox) if k not in self.parts}
        if revoked:  # while this batch ran: what it derived for them is their next owner's
            touched -= revoked
            outbox = defaultdict(list, {k: r for k, r in outbox.items() if k not in revoked})
            outputs = {m: o for m, o in outputs.items() if self._owner(m) not in revoked}
            timelines = {m: b for m, b in timelines.items() if self._owner(m) not in revoked}
            parked = defaultdict(
                list, {m: b for m, b in parked.items() if self._owner(m) not in revoked}
            )
            alert_ids = [_id_of(r) for r in _alerts_of(outbox, cfg)]
        held_judges = {
            m: self.judges[m]
            for k in touched
            for m in self.parts[k].models
            if m in self.judges and m not in self.parts[k].quarantined
        }
        partitions = {k: self.parts[k].to_bytes() for k in touched}
        held = {k: self.parts[k].epoch for k in set(touched) | set(outbox) if k in self.parts}

        def checkpoints() -> dict[str, tuple[bytes, dict[str, bytes], list[str]]]:
            return {m: checkpoint.split(j, self._cells.get(m, ())) for m, j in held_judges.items()}

        judges = await off_loop(checkpoints) if heavy else checkpoints()
        unparked = list(self._unparked)
        while True:
            fence = {self.keys.owner(f"judgepart:{k}"): e for k, e in held.items()}
            try:
                persist = functools.partial(
                    persist_judgement, self.client, self.keys, judges, partitions, outbox,
                    alert_ids, timelines, parked, unparked, fence,
                )  # fmt: skip
                await retry(persist, "redis", self.metrics)
                for m, (_, added, gone) in judges.items():
                    stored = self._cells.setdefault(m, set())
                    stored.update(added)
                    stored.difference_update(gone)
                break
            except Fenced as exc:
                # Another worker loaded these partitions since: theirs now. Forget them and
                # what this batch derived for them (the new owner re-reads it); keep the rest.
                lost = {int(owner.rsplit(":", 1)[1]) for owner in exc.lost}
                self.metrics.fenced.labels(stage="judge").inc()
                log.warning(
                    "partials partitions %s were taken over by another worker: this batch's "
                    "judgement of them is dropped", sorted(lost),
                )  # fmt: skip
                gone = {m for m in judges | timelines | parked if self._owner(m) in lost}
                gone |= {m for k in lost if k in self.parts for m in self.parts[k].models}
                self.revoke(sorted(lost))
                held = {k: e for k, e in held.items() if k not in lost}
                judges = {m: b for m, b in judges.items() if m not in gone}
                timelines = {m: b for m, b in timelines.items() if m not in gone}
                parked = defaultdict(list, {m: b for m, b in parked.items() if m not in gone})
                unparked = [m for m in unparked if m not in gone]
                partitions = {k: b for k, b in partitions.items() if k not in lost}
                outbox = defaultdict(list, {k: r for k, r in outbox.items() if k not in lost})
                outputs = {m: o for m, o in outputs.items() if m not in gone}
                alert_ids = [_id_of(r) for r in _alerts_of(outbox, cfg)]
        await retry(
            lambda: publish_outbox(self.client, self.keys, self.output, outbox),
            "kafka",
            self.metrics,
        )
        for model, out in outputs.items():
            self._gauges(model, out)
        self.metrics.quarantined.set(sum(len(p.quarantined) for p in self.parts.values()))
        self.metrics.stage_progress.labels(stage="judge").set(self.wall())

    # -- faults ----------------------------------------------------------------------------------

    def _quarantine(
        self, model: str, part: Partition, exc: BaseException, outbox: dict[int, list[Record]]
    ) -> None:
        reason = _what(exc)
        log.error(
            "model %s quarantined: judging it raised %s; its input is kept and retried after a "
            "restart or the next baseline refresh\n%s",
            model, reason, "".join(traceback.format_exception(exc)),
        )  # fmt: skip
        self.metrics.monitor_errors.labels(model=model).inc()
        part.quarantined[model] = reason
        self.judges.pop(model, None)
        k = partition_of(model, self.partitions)
        outbox[k].append(self._monitor_error(model, reason, "firing"))

    def _monitor_error(self, model: str, reason: str, status: str) -> Record:
        key = AlertKey(model, "", (), None, "monitor", "monitor_error")
        alert = Alert(
            alert_id=alert_id(key, 0.0, status, "critical") + "-" + _digest(reason),
            status=status,  # type: ignore[arg-type]
            severity="critical",
            kind="monitor_error",
            model_id=model,
            model_version="",
            feature=None,
            segment={},
            detector="monitor",
            value=1.0 if status == "firing" else 0.0,
            threshold=1.0,
            window=Window(self.emitted_at(), self.emitted_at()),
            evidence={"error": reason, "what": "judging this model failed; it is quarantined"},
            source=Source(self.cfg.topics.predictions, {}),
            emitted_at=self.emitted_at(),
        )
        return (self.cfg.topics.alerts, model.encode(), encode(alert))

    async def retry_quarantined(self) -> None:
        """Try the quarantined models again (their parked messages onto their checkpoint)."""
        async with self._lock:
            await self._retry_quarantined()

    async def _retry_quarantined(self) -> None:
        outbox: dict[int, list[Record]] = defaultdict(list)
        self._unparked = []
        for part in list(self.parts.values()):
            for model in sorted(part.quarantined):
                self.judges.pop(model, None)
                await self._judge(model, part, outbox)
        if self._unparked:
            await retry(self.refresh, "redis", self.metrics)
            touched = {partition_of(m, self.partitions) for m in self._unparked}
            await self._judge_partitions(touched, outbox, {})

    # -- metrics ---------------------------------------------------------------------------------

    def _gauges(self, model: str, out: Output) -> None:
        g = self.metrics
        for record in out.metrics:
            seg = ",".join(f"{k}={v}" for k, v in sorted(record.segment.items())) or "all"
            if record.count:
                g.windows_closed.labels(model=model).inc()
            # A window without drift figures (no events, warm-up) leaves the last window's gauges
            # as they are; otherwise only the top-K features keep their series.
            judged = {f: row for f, row in record.features.items() if _has_gauge_value(row)}
            shown = top_features(judged, self.cfg.monitoring.metrics_top_features)
            if shown:
                series_key = (model, seg)
                for feature in self._exported.get(series_key, set()) - set(shown):
                    for gauge in (g.feature_psi, g.feature_js, g.feature_null_rate):
                        with contextlib.suppress(KeyError):
                            gauge.remove(model, feature, seg)
                self._exported[series_key] = set(shown)
            for feature in shown:
                row = record.features[feature]
                labels = {"model": model, "feature": feature, "segment": seg}
                for gauge, name in (
                    (g.feature_psi, "psi"),
                    (g.feature_js, "js"),
                    (g.feature_null_rate, "null_rate"),
                ):
                    value = row.get(name)
                    if value is not None:
                        gauge.labels(**labels).set(float(value))
            top1 = record.outputs.get("top1_rate")
            if top1 is not None:
                g.prediction_top1_rate.labels(model=model, segment=seg).set(float(top1))
            est = record.outputs.get("estimated_accuracy")
            if est is not None:
                g.accuracy.labels(model=model, segment=seg, kind="estimated").set(float(est))
            acc = record.performance.get("accuracy")
            if acc is not None:
                g.accuracy.labels(model=model, segment=seg, kind="realized").set(float(acc))
            cp = record.class_performance
            if cp is not None:
                kind = "estimated" if cp.source == "estimated" else "realized"
                for metric, band in cp.metrics.items():
                    for bound in ("value", "lower", "upper"):
                        g.performance.labels(
                            model=model, segment=seg, metric=metric, kind=kind, bound=bound
                        ).set(getattr(band, bound))
            for metric in ("mae", "rmse", "mape"):  # regression models only
                value = record.performance.get(metric)
                if value is not None:
                    g.regression_error.labels(model=model, segment=seg, metric=metric).set(
                        float(value)
                    )
                value = record.outputs.get(f"estimated_{metric}")
                if value is not None:
                    g.regression_error_estimated.labels(
                        model=model, segment=seg, metric=metric
                    ).set(float(value))
        for detector, seg_key, _feature in out.detections:
            g.detections.labels(model=model, detector=detector, segment=seg_key).inc()
        judge = self.judges.get(model)
        if judge is None:
            return
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for key, severity in judge.tracker.firing():
            counts[(key.kind, severity)] += 1
        for kind in ("feature_drift", "multivariate_drift", "prediction_drift", "label_drift",
                     "performance", "data_quality", "volume"):  # fmt: skip
            for severity in ("info", "warning", "critical"):
                g.alerts_firing.labels(model=model, kind=kind, severity=severity).set(
                    counts.get((kind, severity), 0)
                )
        # one series per open incident, so that a rule pages once per root cause
        shown_incidents = {labels for labels, _ in judge.incidents.series()}
        for labels in self._incident_series.get(model, set()) - shown_incidents:
            with contextlib.suppress(KeyError):
                g.incidents_open.remove(model, *labels)
        for labels, value in judge.incidents.series():
            g.incidents_open.labels(model, *labels).set(value)
        self._incident_series[model] = shown_incidents
        g.monitors.set(sum(len(j.segments) for j in self.judges.values()))

    def _owner(self, model: str) -> int:
        return partition_of(model, self.partitions)

    def revoke(self, partitions: Sequence[int]) -> None:
        """Partitions taken away: forget them and their models (the next owner restores)."""
        for k in partitions:
            part = self.parts.pop(k, None)
            if part is not None:
                for model in part.models:
                    self.judges.pop(model, None)
                    self._cells.pop(model, None)


_GAUGED = ("psi", "js", "null_rate")


def _has_gauge_value(row: Mapping[str, Any]) -> bool:
    return any(row.get(name) is not None for name in _GAUGED)


def top_features(rows: Mapping[str, Mapping[str, Any]], k: int) -> list[str]:
    """The ``k`` most drifted features of one window's rows: by PSI, then JS, then null rate.

    What ``/metrics`` exports per (model, segment), so that its series stay bounded however
    many features a model has; the metrics topic keeps every row.

    >>> rows = {"a": {"psi": 0.01}, "b": {"psi": 0.3}, "c": {"js": 0.2}, "d": {"psi": 0.01}}
    >>> top_features(rows, 3)
    ['b', 'a', 'd']
    """

    def score(name: str) -> tuple[float, float, float, str]:
        row = rows[name]
        return (
            -float(row.get("psi") or 0.0),
            -float(row.get("js") or 0.0),
            -float(row.get("null_rate") or 0.0),
            name,
        )

    return sorted(rows, key=score)[:k]


def _alerts_of(outbox: Mapping[int, Sequence[Record]], cfg: Config) -> list[Record]:
    """The alerts and incident events of ``outbox``: what is published once, by id."""
    once = (cfg.topics.alerts, cfg.topics.incidents)
    return [r for records in outbox.values() for r in records if r[0] in once]


def _id_of(record: Record) -> str:
    fields = msgspec.json.decode(record[2])
    return str(fields.get("alert_id") or fields["event_id"])


def _timeline_bytes(judge: ModelJudge) -> bytes:
    return msgspec.msgpack.encode(judge.timeline.state())


def _what(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]
