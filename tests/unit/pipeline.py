"""The synthetic workload through the whole monitor path in one process, for unit tests.

:func:`run` cuts a seeded :class:`~streamproc.dev.synthetic.Workload` into Kafka records as
producers send them (JSON arrays of ``PER_MESSAGE`` events, messages round-robin over
``PARTITIONS`` partitions of each topic, offsets per partition) and feeds them, a consumed
batch at a time, to an :class:`~streamproc.tools.inprocess.InProcessPipeline`: the real
ingestor with an in-memory join, the aggregation stage and one judge per model. Labels, when
asked for, go after the predictions of their batch, as they would reach a worker.

Used by ``test_judge.py`` (detection delays, resolutions, restarts) and
``test_monitor_calibration.py`` (the false-alarm budget).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from streamproc.baseline import ReferenceProfile
from streamproc.config import Config, MonitoringConfig
from streamproc.contracts import Alert, MetricsRecord
from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
from streamproc.ingest.ingestor import RawMessage
from streamproc.tools.inprocess import InProcessPipeline, raw

PARTITIONS = 6
PER_MESSAGE = 100  # events per Kafka message (a JSON array)
BATCH = 1000  # events per consumed batch, per topic
MONITORING = MonitoringConfig(window_s=60.0, tick_s=2.0, lateness_s=5.0)

Edit = Callable[[int, dict[str, Any]], dict[str, Any]]  # (prediction index, event) -> event


def baseline(spec: WorkloadSpec) -> ReferenceProfile:
    """The reference: the same world, another seed, none of the injected changes."""
    return _baseline(dataclasses.replace(spec, changes=()))


@functools.cache
def _baseline(stationary: WorkloadSpec) -> ReferenceProfile:
    return reference_profile(stationary, 30_000)


@dataclass
class Run:
    """What one workload through an :class:`InProcessPipeline` raised."""

    pipe: InProcessPipeline
    work: Workload
    predictions: int = 0
    labels: int = 0

    @property
    def alerts(self) -> list[Alert]:
        return self.pipe.alerts

    @property
    def records(self) -> list[MetricsRecord]:
        return self.pipe.records

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.status == "firing"]

    def by_detector(self) -> Counter[str]:
        return Counter(f"{a.kind}/{a.detector}" for a in self.firing)

    def detections(self) -> Counter[str]:
        """Raw detector detections (a detector that fired, whether or not it alerted)."""
        return Counter(d for _, d, _, _ in self.pipe.detections)

    def monitors(self) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        """``(model_version, segment)`` of every monitor that judged a window."""
        return {(r.model_version, tuple(sorted(r.segment.items()))) for r in self.records}

    def summary(self) -> list[tuple[str, str, str | None, dict[str, str], str]]:
        """The firing alerts, readably (for assertion messages)."""
        return [(a.kind, a.detector, a.feature, a.segment, a.severity) for a in self.firing]


class Cutter:
    """Cuts events into consumed batches of records: each topic's own offsets and partitions."""

    def __init__(self, topic: str, per_message: int = PER_MESSAGE, first_offset: int = 0) -> None:
        self.topic = topic
        self.per_message = per_message
        self.offsets = [first_offset] * PARTITIONS
        self.turn = 0

    def batch(self, events: list[dict[str, Any]]) -> list[RawMessage]:
        out = []
        for i in range(0, len(events), self.per_message):
            chunk = events[i : i + self.per_message]
            p = self.turn % PARTITIONS
            self.turn += 1
            ts_ms = int(chunk[-1]["timestamp"] * 1000)
            out.append(raw(self.topic, p, self.offsets[p], orjson.dumps(chunk), ts_ms))
            self.offsets[p] += 1
        return out


def batches(
    work: Workload,
    labels: bool,
    edit: Edit | None = None,
    batch: int = BATCH,
    first_offset: int = 0,
    per_message: int = PER_MESSAGE,
    label_edit: Edit | None = None,
) -> Iterator[tuple[str, list[RawMessage], int]]:
    """``(topic, records, events)`` per consumed batch; labels after the predictions.
    ``label_edit`` rewrites a label (given its prediction's index)."""
    cut = {t: Cutter(t, per_message, first_offset) for t in ("predictions", "labels")}
    pending: dict[str, list[dict[str, Any]]] = {"predictions": [], "labels": []}

    def take() -> Iterator[tuple[str, list[RawMessage], int]]:
        for topic in ("predictions", "labels"):
            if pending[topic]:
                yield topic, cut[topic].batch(pending[topic]), len(pending[topic])
                pending[topic] = []

    if labels:
        for ev in work.events():
            value = ev.value
            if ev.kind == "prediction":
                value = edit(ev.index, value) if edit else value
                pending["predictions"].append(value)
            else:
                pending["labels"].append(label_edit(ev.index, value) if label_edit else value)
            if len(pending["predictions"]) + len(pending["labels"]) >= batch:
                yield from take()
    else:
        for i, value in enumerate(work.predictions()):
            pending["predictions"].append(edit(i, value) if edit else value)
            if len(pending["predictions"]) >= batch:
                yield from take()
    yield from take()


def shuffled(
    work: Workload,
    labels: bool,
    rng: random.Random,
    overtake: bool = False,
    per_message: int = PER_MESSAGE,
) -> Iterator[tuple[str, list[RawMessage], int]]:
    """The records of :func:`batches` consumed in another order: each batch takes a few
    messages from the heads of a few partitions of one topic. Every partition is read in offset
    order, and a label message only once every prediction message of an earlier record time
    was read (labels do not overtake their predictions), unless ``overtake``: then the labels
    topic may be read ahead of the predictions by any amount."""
    queues: dict[tuple[str, int], list[RawMessage]] = {}
    for topic, records, _ in batches(work, labels, per_message=per_message):
        for r in records:
            queues.setdefault((topic, r.partition), []).append(r)
    for q in queues.values():
        q.reverse()  # pop() takes the head

    def due(key: tuple[str, int], oldest: int | None) -> bool:
        q = queues[key]
        return bool(q) and (
            key[0] == "predictions" or overtake or oldest is None or _ms(q[-1]) <= oldest
        )

    while any(queues.values()):
        heads = [_ms(q[-1]) for (t, _), q in queues.items() if t == "predictions" and q]
        oldest = min(heads, default=None)
        ready = [key for key in queues if due(key, oldest)]
        topic = rng.choice(sorted({t for t, _ in ready}))
        parts = [key for key in ready if key[0] == topic]
        out: list[RawMessage] = []
        for key in rng.sample(parts, rng.randint(1, len(parts))):
            for _ in range(rng.randint(1, 4)):
                if due(key, oldest):
                    out.append(queues[key].pop())
        yield topic, out, sum(len(orjson.loads(r.value or b"[]")) for r in out)


def _ms(record: RawMessage) -> int:
    return record.timestamp_ms or 0


def pipeline(
    spec: WorkloadSpec,
    cfg: MonitoringConfig,
    labels: bool,
    profile: ReferenceProfile | None = None,
) -> InProcessPipeline:
    profile = profile or baseline(spec)
    return InProcessPipeline(
        Config(monitoring=cfg),
        range(PARTITIONS),
        range(PARTITIONS) if labels else (),
        baselines=lambda model: [profile] if model == profile.model_id else [],
    )


def run(
    spec: WorkloadSpec,
    n: int,
    cfg: MonitoringConfig = MONITORING,
    *,
    labels: bool = False,
    seed: int = 7,
    edit: Edit | None = None,
    restart_every: int = 0,
    redeliver: int = 0,
    shuffle: random.Random | None = None,
    overtake: bool = False,
    labels_first: bool = False,
    label_edit: Edit | None = None,
    batch: int = BATCH,
    per_message: int = PER_MESSAGE,
    finish: bool = True,
    profile: ReferenceProfile | None = None,
) -> Run:
    """``n`` events of ``spec`` through a pipeline judging against :func:`baseline`, then
    :meth:`~InProcessPipeline.finish` (unless ``finish`` is false: a pipeline mid-stream).

    ``restart_every``: every that many batches, a worker restart: the pipeline is restored from
    a snapshot (the join survives, as Redis does). Its own, taken at that commit; or with
    ``redeliver=k``, the one taken ``k`` batches before, and those ``k`` batches are fed again,
    as after a crash before their state was committed. What the first attempt emitted stays in
    the outputs (it was published): compare them with :func:`once`. ``shuffle``: consume the
    records in another order (:func:`shuffled`, with ``overtake``); ``labels_first``: every
    label message before any prediction message (a worker catching up on both topics whose
    labels consumer ran ahead). ``label_edit``: rewrite labels (:func:`batches`). ``profile``:
    the baseline, instead of :func:`baseline`.
    """
    work = Workload(spec, n, seed=seed)
    result = Run(pipeline(spec, cfg, labels, profile), work)
    pipe = result.pipe

    async def drive() -> None:
        feed: Iterable[tuple[str, list[RawMessage], int]] = (
            shuffled(work, labels, shuffle, overtake, per_message)
            if shuffle is not None
            else batches(work, labels, edit, batch, per_message=per_message, label_edit=label_edit)
        )
        if labels_first:
            feed = sorted(feed, key=lambda item: item[0] != "labels")
        snapshot = b""
        since: list[tuple[str, list[RawMessage]]] = []
        for i, (topic, records, count) in enumerate(feed, 1):
            if redeliver and restart_every and (i + redeliver - 1) % restart_every == 0:
                snapshot, since = pipe.snapshot(), []
            await pipe.feed(topic, records)
            since.append((topic, records))
            if topic == "predictions":
                result.predictions += count
            else:
                result.labels += count
            if not restart_every or i % restart_every:
                continue
            if redeliver and snapshot:
                pipe.restore(snapshot)
                for again in since:
                    await pipe.feed(*again)
            elif not redeliver:
                pipe.restore(pipe.snapshot())
        if finish:
            pipe.finish()

    asyncio.run(drive())
    return result


def once(items: list[Any]) -> list[bytes]:
    """Outputs as bytes, each first occurrence only (what a consumer deduplicating by content,
    as alert ids allow, keeps after a redelivery)."""
    return list(dict.fromkeys(encoded(items)))


def encoded(items: list[Any]) -> list[bytes]:
    """Alerts or records as bytes, every field compared."""
    return [msgspec.json.encode(x) for x in items]
