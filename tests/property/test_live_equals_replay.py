"""Live output = replay of the same offsets, whatever the operator does in between.

A hypothesis state machine drives the worker's own stages (the ingestor with its join, the
aggregation stage and the judging stage, each with its state in a real Redis) through random
sequences of what happens to a deployment: prediction and label batches on any partitions, in
any interleaving and batch size; a baseline created, replaced or deleted; a restart; a kill
(the process dies mid-batch at a random step of its commit order, and the next one re-reads
from the last committed offsets); silence (traffic stops, the worker catches up, time
passes); a new model version. Kafka is a list per partition here: the stages produce to it
and read from it as Faust would hand them batches.

Invariants: no exception escapes; no alert id or incident event id is published twice; and at
the end the alerts and the incident events published equal those of an in-process replay
(:class:`~streamproc.tools.inprocess.InProcessPipeline`) of the same records, fed in record-time
order, with the reference timeline the live judges decided (which baseline judges which
window), field for field but ``emitted_at``. And after every batch the judging stage takes,
each judge it holds knows the baseline store as it is: every stored version's baseline applied
or pending, every deleted one gone or pending its deletion (a judge loaded after the store's
last change included).

``STREAMPROC_PROPERTY_EXAMPLES=500`` runs many more examples than the suite's default.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from streamproc.aggregate.wire import decode_message
from streamproc.baseline import AsyncBaselineStore, BaselineStore, ProfileBuilder
from streamproc.baseline.reference import ReferenceCache
from streamproc.config import Config, load_config
from streamproc.ingest.ingestor import Ingestor, RawMessage
from streamproc.ingest.memory_join import MemoryJoin
from streamproc.judge.timeline import ReferenceTimeline, TimelineState
from streamproc.publish import judging, sources
from streamproc.publish.judging import JudgeStage
from streamproc.publish.keys import Keys
from streamproc.publish.sources import SourceStage
from streamproc.redis_client import async_client, sync_client
from streamproc.tools.inprocess import InProcessPipeline
from streamproc.worker.metrics import WorkerMetrics
from tests.conftest import Endpoints

pytestmark = pytest.mark.integration

P, L, K = 3, 2, 2  # partitions of predictions, labels, partials
MODELS = ("m1", "m2")
WINDOW_S, TICK_S, LATENESS_S, IDLE_S = 20.0, 5.0, 5.0, 30.0
EXAMPLES = int(os.environ.get("STREAMPROC_PROPERTY_EXAMPLES", "12"))


class Kill(Exception):
    """The process dies here (SIGKILL): nothing after this point of the batch happens."""


def config(endpoints: Endpoints, prefix: str) -> Config:
    return load_config(
        env={
            "STREAMPROC_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "STREAMPROC_REDIS_URL": endpoints.redis_url,
            "STREAMPROC_REDIS_KEY_PREFIX": prefix,
            "STREAMPROC_WORKER_APP_ID": prefix,
            "STREAMPROC_MONITORING_WINDOW_S": str(WINDOW_S),
            "STREAMPROC_MONITORING_TICK_S": str(TICK_S),
            "STREAMPROC_MONITORING_LATENESS_S": str(LATENESS_S),
            "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": str(IDLE_S),
            "STREAMPROC_MONITORING_MIN_WINDOW_COUNT": "10",
            "STREAMPROC_MONITORING_MIN_LABELLED_COUNT": "10",
            "STREAMPROC_MONITORING_WARMUP_MIN_ROWS": "20",
            "STREAMPROC_MONITORING_BASELINE_REFRESH_S": "1000000",
            "STREAMPROC_MONITORING_PARTIALS_PARTITIONS": str(K),
        }
    )


class Log:
    """A topic: one list of ``(value, record time ms)`` per partition."""

    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.parts: list[list[tuple[bytes, int]]] = [[] for _ in range(partitions)]

    def batch(self, p: int, first: int, n: int) -> list[RawMessage]:
        return [
            RawMessage(self.name, p, o, None, v, ts)
            for o, (v, ts) in enumerate(self.parts[p][first : first + n], start=first)
        ]


class LogOutput:
    """The stages' producer, writing into the logs; it can die in ``flush``."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.queued: list[tuple[str, int | None, bytes]] = []

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> None:
        self.queued.append((topic, partition, value))

    async def flush(self) -> None:
        queued, self.queued = self.queued, []
        crash = self.live.crash_at == "flush"
        # A dying producer may or may not have delivered what it had queued.
        delivered = not crash or self.live.rng.random() < 0.5
        if delivered:
            for topic, partition, value in queued:
                self.live.deliver(topic, partition, value)
        if crash:
            once = (self.live.cfg.topics.alerts, self.live.cfg.topics.incidents)
            if delivered and any(t in once for t, _, _ in queued):
                # Killed after Kafka took the alerts, before the outbox was deleted: the next
                # process publishes the outbox again (at-least-once, same ids, same content).
                self.live.may_repeat = True
            raise Kill


class Live:
    """The deployment: logs, committed offsets, Redis, and the current worker process."""

    def __init__(self, cfg: Config, seed: int) -> None:
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.client = async_client(cfg.redis)
        self.logs = {
            "predictions": Log(cfg.topics.predictions, P),
            "labels": Log(cfg.topics.labels, L),
            "partials": Log(sources.partials_topic(cfg), K),
        }
        self.committed = {(t, p): 0 for t, log in self.logs.items() for p in range(len(log.parts))}
        self.read = dict(self.committed)  # what the current process has read (not committed)
        self.join = MemoryJoin()  # Redis: survives every process
        self.alerts: list[dict[str, Any]] = []
        self.incidents: list[dict[str, Any]] = []
        self.wall = 1_700_000_000.0
        self.crash_at: str | None = None
        self.may_repeat = False
        self.process: dict[str, Any] | None = None
        self.silences: list[float] = []
        self.after: dict[tuple[int, int], list[tuple[int, int]]] = {}  # label msg -> predictions

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def deliver(self, topic: str, partition: int | None, value: bytes) -> None:
        if topic == self.cfg.topics.alerts:
            self.alerts.append(orjson.loads(value))
            return
        if topic == self.cfg.topics.incidents:
            self.incidents.append(orjson.loads(value))
            return
        if topic in (self.cfg.topics.metrics, self.cfg.topics.deadletter):
            return
        log = self.logs["partials"]
        assert topic == log.name and partition is not None
        log.parts[partition].append((value, round(self.wall * 1000)))

    def start(self) -> dict[str, Any]:
        if self.process is None:
            cfg, metrics = self.cfg, WorkerMetrics()
            output = LogOutput(self)
            clock: Callable[[], float] = lambda: self.wall  # noqa: E731
            src = SourceStage(cfg, self.client, output, metrics, K, wall=clock)  # type: ignore[arg-type]
            judge = JudgeStage(cfg, self.client, output, metrics, P, L, K, wall=clock)  # type: ignore[arg-type]
            judge.emitted_at = lambda: "live"
            ingestor = Ingestor(cfg, self.join, output, metrics, src)  # type: ignore[arg-type]
            self.process = {"sources": src, "judge": judge, "ingestor": ingestor}
            self.read = dict(self.committed)
        return self.process

    def step(self, topic: str, p: int, n: int, crash_at: str | None = None) -> None:
        proc = self.start()
        first = self.read[(topic, p)]
        if topic == "labels":  # not before the predictions they label were read
            ready = 0
            while ready < n and all(
                self.read[("predictions", q)] > o for q, o in self.after.get((p, first + ready), [])
            ):
                ready += 1
            n = ready
        batch = self.logs[topic].batch(p, first, n)
        if not batch:
            return
        self.crash_at = crash_at
        try:
            if topic == "predictions":
                self.run(proc["ingestor"].on_predictions(batch))
            elif topic == "labels":
                self.run(proc["ingestor"].on_labels(batch))
            else:
                msgs = [(m.partition, m.offset, m.value) for m in batch]
                self.run(proc["judge"].on_messages(msgs))
                self.assert_store_offered(proc["judge"])
        except Kill:
            self.process = None  # died mid-batch: the next process re-reads what was committed
            return
        finally:
            self.crash_at = None
        self.read[(topic, p)] = first + len(batch)

    def assert_store_offered(self, stage: JudgeStage) -> None:
        """Every judge of ``stage`` has been offered the baseline store as it is now."""
        store = AsyncBaselineStore(self.client, self.cfg.redis.prefix)
        for model, judge in stage.judges.items():
            stored = self.run(store.stamps(model))
            held = set(judge.timeline.baselines) | set(judge.pending_baselines)
            for version in sorted(held | set(stored)):
                pending = judge.pending_baselines.get(version)
                knows = pending.stamp if pending else judge.timeline.stamp(version)
                assert knows == stored.get(version), (
                    f"judge of {model} holds {knows!r} for version {version}, "
                    f"the store {stored.get(version)!r}"
                )

    def commit(self) -> None:
        """Faust's periodic commit: what the process has read so far is committed."""
        if self.process is not None:
            self.committed.update(self.read)

    def drain(self) -> None:
        """Read everything there is, until nothing moves (predictions, labels, partials)."""
        for _ in range(50):
            moved = False
            for topic, log in self.logs.items():
                for p in range(len(log.parts)):
                    self.start()
                    if self.read[(topic, p)] < len(log.parts[p]):
                        self.step(topic, p, 1000)
                        moved = True
            if not moved:
                self.commit()
                return
        raise AssertionError("the stages did not settle")

    def silence(self, gap: float) -> None:
        self.drain()
        # On a whole millisecond, and what is produced next a millisecond later: record times
        # are in ms, and a record stamped with the silence's own ms would be ambiguous.
        self.wall = math.ceil((self.wall + gap) * 1000) / 1000
        proc = self.start()
        quiet = {f"p{p}": True for p in range(P)} | {f"l{p}": True for p in range(L)}
        self.run(proc["sources"].report_idle(quiet))
        self.silences.append(self.wall)
        self.drain()
        self.wall += 0.001


class Traffic:
    """Predictions and labels of a small synthetic world with a shift halfway."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.t = 1_700_000_000.0  # event time
        self.version = {m: "v1" for m in MODELS}
        self.unlabelled: list[tuple[str, str, float, str]] = []
        self.n = 0
        self.where: dict[str, tuple[int, int]] = {}  # prediction id -> (partition, offset)

    def prediction(self, model: str) -> dict[str, Any]:
        self.t += self.rng.uniform(0.05, 0.4)
        self.n += 1
        shifted = self.n > 400
        region = self.rng.choice(["eu", "us", "apac"])
        x = self.rng.gauss(2.0 if shifted and region == "eu" else 0.0, 1.0)
        pid = f"{model}-{self.n}"
        pred = "yes" if x + self.rng.gauss(0, 1) > 0 else "no"
        self.unlabelled.append((pid, model, self.t, pred))
        return {
            "prediction_id": pid, "model_id": model, "model_version": self.version[model],
            "timestamp": round(self.t, 3), "prediction": pred,
            "scores": {"yes": 0.8 if pred == "yes" else 0.2, "no": 0.2 if pred == "yes" else 0.8},
            "features": {"x": round(x, 4), "c": self.rng.choice(["a", "b", "b", "c"])},
            "segments": {"region": region},
        }  # fmt: skip

    def label(self) -> dict[str, Any] | None:
        """A label for a random prediction sent before (labels come after their predictions:
        a label read before its prediction is joined when the prediction comes, but counted
        only if its window is still open then, which depends on timing)."""
        if not self.unlabelled:
            return None
        pid, model, t, pred = self.unlabelled.pop(self.rng.randrange(len(self.unlabelled)))
        right = self.rng.random() < (0.5 if self.n > 500 else 0.9)
        label = pred if right else ("no" if pred == "yes" else "yes")
        return {"prediction_id": pid, "model_id": model, "timestamp": round(t + 2.0, 3),
                "label": label}  # fmt: skip

    def profile(self, model: str, version: str, shift: float, seed: int) -> Any:
        rng = random.Random(seed)
        b = ProfileBuilder(model, version, ["region"])
        for _ in range(400):
            x = rng.gauss(shift, 1.0)
            pred = "yes" if x > 0 else "no"
            b.add({"x": x, "c": rng.choice(["a", "b", "b", "c"])}, prediction=pred,
                  score=0.8 if pred == "yes" else 0.2, label=pred if rng.random() < 0.9 else
                  ("no" if pred == "yes" else "yes"),
                  segments={"region": rng.choice(["eu", "us", "apac"])},
                  event_time=1_700_000_000.0 + 0.2 * _)  # fmt: skip
        return b.build(f"property test {seed}", created_at=f"2024-01-01T00:00:{seed % 60:02d}Z")


class LiveEqualsReplay(RuleBasedStateMachine):
    endpoints: Endpoints

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        prefix = f"t-prop-{uuid.uuid4().hex[:10]}"
        self.cfg = config(self.endpoints, prefix)
        self.live = Live(self.cfg, seed)
        self.traffic = Traffic(seed)
        self.store = BaselineStore(sync_client(self.cfg.redis), prefix)
        self.profiles = 0
        # Enough traffic for a few windows of each model, whatever the steps add.
        for i in range(60):
            self.produce_predictions(MODELS[i % 2], 5, 1, i % P)
        for i in range(10):
            self.produce_labels(20, i % L)

    @rule(model=st.sampled_from(MODELS), events=st.integers(1, 12), msgs=st.integers(1, 8),
          partition=st.integers(0, P - 1))  # fmt: skip
    def produce_predictions(self, model: str, events: int, msgs: int, partition: int) -> None:
        log = self.live.logs["predictions"]
        for i in range(msgs):
            batch = [self.traffic.prediction(model) for _ in range(events)]
            value = orjson.dumps(batch if events > 1 else batch[0])
            self.live.wall = max(self.live.wall, self.traffic.t)
            p = (partition + i) % P
            for e in batch:
                self.traffic.where[e["prediction_id"]] = (p, len(log.parts[p]))
            log.parts[p].append((value, round(self.live.wall * 1000)))

    @rule(n=st.integers(1, 60), partition=st.integers(0, L - 1))
    def produce_labels(self, n: int, partition: int) -> None:
        labels = [lab for lab in (self.traffic.label() for _ in range(n)) if lab is not None]
        if labels:
            self.live.wall = max(self.live.wall, self.traffic.t)
            value = orjson.dumps(labels)
            part = self.live.logs["labels"].parts[partition]
            self.live.after[(partition, len(part))] = [
                self.traffic.where[lab["prediction_id"]] for lab in labels
            ]
            part.append((value, round(self.live.wall * 1000)))

    @rule(topic=st.sampled_from(["predictions", "labels", "partials"]), p=st.integers(0, 2),
          n=st.integers(1, 8),
          crash=st.sampled_from([None] * 6 + ["flush", "checkpoint", "persist"]))  # fmt: skip
    def process(self, topic: str, p: int, n: int, crash: str | None) -> None:
        parts = len(self.live.logs[topic].parts)
        live = self.live
        if crash in ("checkpoint", "persist"):
            # Die after the batch's records were acknowledged, before its state was persisted.
            target = (
                (sources, "checkpoint_sources")
                if crash == "checkpoint"
                else (judging, "persist_judgement")
            )
            original = getattr(*target)

            async def dying(*args: Any, **kwargs: Any) -> None:
                raise Kill

            setattr(*target, dying)
            try:
                live.step(topic, p % parts, n)
            finally:
                setattr(*target, original)
            return
        live.step(topic, p % parts, n, crash)

    @rule()
    def commit(self) -> None:
        self.live.commit()

    @rule()
    def restart(self) -> None:
        self.live.commit()  # a clean stop commits what it read
        self.live.process = None

    @rule()
    def kill(self) -> None:
        self.live.process = None  # SIGKILL: what was read but not committed is read again

    @rule(model=st.sampled_from(MODELS), version=st.sampled_from(["v1", "v2"]),
          shift=st.sampled_from([0.0, 0.5]))  # fmt: skip
    def baseline_put(self, model: str, version: str, shift: float) -> None:
        self.profiles += 1
        self.store.put(self.traffic.profile(model, version, shift, self.profiles))

    @rule(model=st.sampled_from(MODELS), version=st.sampled_from(["v1", "v2"]))
    def baseline_delete(self, model: str, version: str) -> None:
        self.store.delete(model, version)

    @rule(windows=st.integers(0, 3))
    def silence(self, windows: int) -> None:
        self.live.silence(IDLE_S + 1 + windows * WINDOW_S)
        self.traffic.t = max(self.traffic.t, self.live.wall)

    @rule(model=st.sampled_from(MODELS))
    def new_version(self, model: str) -> None:
        self.traffic.version[model] = "v2"

    def teardown(self) -> None:
        live = getattr(self, "live", None)
        if live is None:
            return
        try:
            live.silence(IDLE_S + 1 + WINDOW_S)  # traffic ends: every window closes
            contents: dict[str, set[bytes]] = {}
            for a in live.alerts:
                contents.setdefault(a["alert_id"], set()).add(_comparable(a))
            assert all(len(c) == 1 for c in contents.values()), "an alert id changed content"
            if not live.may_repeat:
                assert len(live.alerts) == len(contents), "an alert id was published twice"
            for i in live.incidents:
                contents.setdefault(i["event_id"], set()).add(_comparable(i))
            assert all(len(c) == 1 for c in contents.values()), "an incident event changed"
            if not live.may_repeat:
                n = len(live.alerts) + len(live.incidents)
                assert n == len(contents), "an incident event was published twice"
            replayed, replayed_incidents = self.replay()
            got = sorted({_comparable(a) for a in live.alerts})
            assert got == replayed
            assert sorted({_comparable(i) for i in live.incidents}) == replayed_incidents
        finally:
            live.run(live.client.aclose())
            live.loop.close()

    def replay(self) -> tuple[list[bytes], list[bytes]]:
        """The same records through one in-process pipeline, in record-time order, with the
        live judges' timelines and the same silences."""
        live, cfg = self.live, self.cfg
        pipe = InProcessPipeline(cfg, range(P), range(L), emitted_at=lambda: "replay")
        keys = Keys(cfg.redis.prefix)
        for model in MODELS:
            blob = live.run(live.client.get(keys.timeline(model)))
            if blob:
                state = msgspec.msgpack.decode(blob, type=TimelineState)
                timeline = ReferenceTimeline.restore(state)
                live.run(pipe.refs.load(live.client, cfg.redis.prefix, timeline.fps()))
                pipe.use_timeline(model, timeline)
        records = []
        for topic in ("predictions", "labels"):
            for p, part in enumerate(live.logs[topic].parts):
                records += [(ts, topic, p, o, v) for o, (v, ts) in enumerate(part)]
        records.sort(key=lambda r: (r[0], r[1] == "labels", r[2], r[3]))
        silences = list(live.silences)
        for ts, topic, p, o, v in records:
            while silences and silences[0] * 1000 < ts:
                pipe.idle(silences.pop(0))
            pipe.feed_sync(topic, [RawMessage(live.logs[topic].name, p, o, None, v, ts)])
        for s in silences:
            pipe.idle(s)
        return (
            sorted(_comparable(msgspec.to_builtins(a)) for a in pipe.alerts),
            sorted(_comparable(msgspec.to_builtins(i)) for i in pipe.incidents),
        )


def _comparable(alert: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in alert.items() if k != "emitted_at"},
                        option=orjson.OPT_SORT_KEYS)  # fmt: skip


def test_live_alerts_equal_a_replay_of_the_same_offsets_whatever_the_operator_does(
    endpoints: Endpoints,
) -> None:
    LiveEqualsReplay.endpoints = endpoints
    run = LiveEqualsReplay.TestCase
    run.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    run().runTest()


def test_a_partition_resuming_after_a_silence_is_not_left_out_of_its_window(
    endpoints: Endpoints,
) -> None:
    """Found by the state machine (seed 143): every partition idle, traffic resumes on all of
    them, and the worker reads partition 0's new records, then judges their partials, before
    it reads the others'. Partition 0's progress alone must not close the window the others
    hold records for (they were idle as of the silence, not as of partition 0's records)."""
    LiveEqualsReplay.endpoints = endpoints
    state = LiveEqualsReplay()
    state.setup(seed=143)
    state.silence(windows=0)
    state.new_version(model="m1")
    state.silence(windows=0)
    state.produce_predictions(events=5, model="m1", msgs=4, partition=0)
    state.produce_predictions(events=10, model="m1", msgs=7, partition=0)
    state.process(crash=None, n=8, p=0, topic="predictions")
    state.process(crash=None, n=6, p=1, topic="partials")
    judging_stage = state.live.process["judge"]  # type: ignore[index]
    state.teardown()  # every window closes; live alerts == replay's
    assert judging_stage.metrics.partials.labels(result="late")._value.get() == 0


def test_decoding_the_partials_topic_refuses_foreign_bytes() -> None:
    from streamproc.errors import StateEncodingError

    with pytest.raises(StateEncodingError):
        decode_message(b"SPO1" + b"\x90")
    assert ReferenceCache().get(None) is None
