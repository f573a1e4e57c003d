"""Ingestion end to end: real worker processes, real Kafka, real Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import redis
import redis.exceptions
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from streamproc.aggregate.source import ALL, SourceAggregator
from streamproc.aggregate.wire import PartialsMessage, decode_message
from streamproc.baseline.reference import Reference
from streamproc.config import Config
from streamproc.ingest.ingestor import Ingestor, RawMessage
from streamproc.ingest.join import Joined, JoinRecord, LabelRecord, RedisJoin
from streamproc.kafka import topics
from streamproc.kafka.producer import OutputProducer
from streamproc.publish.keys import Keys
from streamproc.publish.sources import SourceStage, ensure_partials_topic, partials_topic
from streamproc.redis_client import async_client, sync_client
from streamproc.worker.metrics import WorkerMetrics
from tests.integration.workers import (
    WorkerProcess,
    config_env,
    consume_all,
    free_port,
    produce,
    sample_sum,
)

pytestmark = pytest.mark.integration


def _prediction(i: int, **extra: object) -> dict:
    return {
        "prediction_id": f"p{i}",
        "model_id": "m",
        "model_version": "1",
        "timestamp": 1_700_000_000 + i,
        "features": {"x": i % 7, "plan": "a" if i % 2 else "b"},
        "prediction": (i % 10) / 10,
        "segments": {"country": "DE" if i % 3 else "FR"},
        **extra,
    }


LABEL_T0 = 1_700_000_500  # a label's event time is LABEL_T0 + i (see _label)


def _label(i: int) -> dict:
    return {"prediction_id": f"p{i}", "timestamp": LABEL_T0 + i, "label": i % 2}


def _batches(docs: list[dict], size: int) -> list[bytes]:
    return [json.dumps(docs[i : i + size]).encode() for i in range(0, len(docs), size)]


@pytest.fixture
def applied(config: Config) -> Config:
    topics.apply(config, topics.load_topics(config))
    return config


def _one_second_ticks(cfg: Config) -> Config:
    """``cfg`` with ``tick_s=1``: labels are a second apart, so each joined outcome is alone in
    its tick and a tick's ``labelled`` count names it (see :func:`_folded_outcomes`)."""
    return msgspec.structs.replace(
        cfg, monitoring=msgspec.structs.replace(cfg.monitoring, tick_s=1.0)
    )


def _partials_on_topic(cfg: Config) -> list[bytes]:
    """Every message of the partials topic, read up to its current end."""
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})  # fmt: skip
    topic = partials_topic(cfg)
    values: list[bytes] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        left = {p for p, end in ends.items() if end > 0}
        while left:
            for msg in consumer.consume(1000, 5):
                assert msg.error() is None, msg.error()
                values.append(msg.value())
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
    finally:
        consumer.close()
    return values


class _NoReferences:
    """The references a source's checkpoint is restored with, to be read only: none."""

    generation = 0

    def lookup(self, *_args: object) -> Reference | None:
        return None

    def by_fp(self, fp: str) -> Reference | None:
        return None


def _folded_outcomes(cfg: Config) -> tuple[Counter[tuple[str, float]], int]:
    """Joined outcomes folded into partials, per source and tick of label time: the ``labelled``
    count of the ``all`` segment's outcome partials, summed over the complete ticks on the
    partials topic (each source's tick counted once, its first copy, as the judge keeps it)
    and the open ticks of every source's checkpoint in Redis; and how many copies of a tick
    the topic holds beyond the first (a source sends a tick again only after a crash)."""
    folded: Counter[tuple[str, float]] = Counter()
    sent: set[tuple[str, str, float]] = set()
    again = 0
    for value in _partials_on_topic(cfg):
        msg = decode_message(value)
        if not isinstance(msg, PartialsMessage):
            continue  # progress
        for entry in msg.ticks:
            if not entry.outcomes:
                continue
            if (msg.source, msg.model_id, entry.start) in sent:
                again += 1
                continue
            sent.add((msg.source, msg.model_id, entry.start))
            for _version, key, (labelled, *_) in entry.outcomes:
                if key == ALL:
                    folded[(msg.source, entry.start)] += labelled
    client = sync_client(cfg.redis)
    try:
        for key in client.scan_iter(Keys(cfg.redis.prefix).source("*"), count=1000):
            source = key.decode().rsplit(":", 1)[1]
            if not re.fullmatch(r"[pl]\d+", source):  # not a source's checkpoint
                continue
            fields = {k.decode(): v for k, v in client.hgetall(key).items()}
            agg, why = SourceAggregator.restore(source, cfg.monitoring, _NoReferences(), fields)
            assert why is None, why
            for (_model, _version, k, _window), partial in agg.outcome_windows.items():
                if k == ALL:
                    for t, (labelled, *_) in partial.ticks.items():
                        folded[(source, t)] += labelled
    finally:
        client.close()
    return +folded, again


class _ScriptRanThenTimedOut(RedisJoin):
    """The real join whose first call of each side runs in Redis and then loses its reply,
    as when the client's socket times out after the script executed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.lost: set[str] = set()

    async def _lose_first(self, side: str) -> None:
        if side not in self.lost:
            self.lost.add(side)
            raise redis.exceptions.TimeoutError("Timeout writing to socket")

    async def add_predictions(
        self, items: Sequence[tuple[str, str, JoinRecord]], now: float | None = None
    ) -> tuple[list, list[Joined]]:
        got = await super().add_predictions(items, now)
        await self._lose_first("p")
        return got

    async def add_labels(
        self, items: Sequence[tuple[str, str, LabelRecord]], now: float | None = None
    ) -> tuple[list, list[Joined]]:
        got = await super().add_labels(items, now)
        await self._lose_first("l")
        return got


def _raw(cfg: Config, topic: str, expect: int) -> list[RawMessage]:
    return [
        RawMessage(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1])
        for m in consume_all(cfg, topic, expect)
    ]


async def _ingest(cfg: Config, join_type: type[RedisJoin], run: str) -> WorkerMetrics:
    """One worker's ingestion (real Redis join, real Kafka producer, the worker's aggregation
    stage: sources checkpointed in Redis, partials produced to Kafka) over everything on the
    predictions topic, then the labels topic, in one batch each."""
    metrics = WorkerMetrics(CollectorRegistry())
    client = async_client(cfg.redis)
    output = OutputProducer(cfg)
    join = join_type(client, cfg.redis.key_prefix, cfg.join.prediction_ttl_s,
                     cfg.join.label_ttl_s, cfg.join.dedupe_ttl_s)  # fmt: skip
    sink = SourceStage(cfg, client, output, metrics, ensure_partials_topic(cfg))
    ingestor = Ingestor(cfg, join, output, metrics, sink)
    try:
        preds = _raw(cfg, cfg.topics.predictions, 200)
        labels = _raw(cfg, cfg.topics.labels, 151)
        if run in ("both", "predictions"):
            await ingestor.on_predictions(preds)
        if run in ("both", "labels"):
            await ingestor.on_labels(labels)
        elif run == "join only":  # died after the join in Redis, before anything was produced
            items = [(json.loads(m.value)["prediction_id"], f"{m.partition}:{m.offset}:",
                      LabelRecord(json.loads(m.value)["label"], 0.0)) for m in labels]  # fmt: skip
            await join.add_labels(items)
    finally:
        await client.aclose()
    return metrics


def _produce_predictions_and_labels(cfg: Config) -> Counter[tuple[str, float]]:
    """200 predictions, then 151 labels; return the outcomes the labels complete, by the source
    that completes each (its label's partition) and its label's tick."""
    ensure_partials_topic(cfg)
    produce(cfg, cfg.topics.predictions, [json.dumps(_prediction(i)).encode() for i in range(200)])
    # 150 labels join; one has no prediction and stays pending.
    labels = [_label(i) for i in range(150)] + [{**_label(0), "prediction_id": "nobody"}]
    produce(cfg, cfg.topics.labels, [json.dumps(d).encode() for d in labels])
    return Counter(
        (f"l{m.partition}", float(json.loads(m.value)["timestamp"]))
        for m in _raw(cfg, cfg.topics.labels, 151)
        if json.loads(m.value)["prediction_id"] != "nobody"
    )


def _join_count(metrics: WorkerMetrics, result: str) -> float:
    return sample_sum(metrics.render().decode(), "streamproc_join_total", result=result)


def test_a_batch_retried_after_a_redis_timeout_emits_every_outcome_once(applied: Config) -> None:
    """The script joined the labels in Redis, the reply was lost, ``ingest.retry`` ran the
    batch again: every outcome must still be folded into partials, once."""
    cfg = _one_second_ticks(applied)
    expected = _produce_predictions_and_labels(cfg)
    metrics = asyncio.run(_ingest(cfg, _ScriptRanThenTimedOut, "both"))

    assert sum(expected.values()) == len(expected) == 150
    # the attempt that timed out folded nothing; the retry folded each outcome once
    assert _folded_outcomes(cfg) == (expected, 0)
    assert (
        sample_sum(
            metrics.render().decode(), "streamproc_infrastructure_errors_total", component="redis"
        )
        == 2
    )
    # They joined in the lost attempt and came back as redeliveries; this process emitted
    # those joins, so it counts them as joined (a dashboard's joined rate stays true).
    assert _join_count(metrics, "joined") == 150
    assert _join_count(metrics, "redelivered") == 151 + 200
    assert _join_count(metrics, "duplicate") == 0


def test_a_crash_between_the_join_and_the_produce_loses_no_outcome(applied: Config) -> None:
    """A worker joined the labels in Redis and died before producing; the next one reads the
    same batch again (its offsets were never committed) and must fold every outcome, once."""
    cfg = _one_second_ticks(applied)
    expected = _produce_predictions_and_labels(cfg)
    asyncio.run(_ingest(cfg, RedisJoin, "predictions"))
    asyncio.run(_ingest(cfg, RedisJoin, "join only"))
    assert _folded_outcomes(cfg) == (Counter(), 0)

    metrics = asyncio.run(_ingest(cfg, RedisJoin, "labels"))
    assert sum(expected.values()) == len(expected) == 150
    assert _folded_outcomes(cfg) == (expected, 0)
    assert _join_count(metrics, "redelivered") == 151
    assert _join_count(metrics, "joined") == 150
    # the first join under a fresh prefix marked its key layout
    assert sync_client(cfg.redis).get(f"{cfg.redis.key_prefix}:layout") == b"5/1"


def test_a_batch_read_again_after_its_checkpoint_folds_no_outcome_twice(applied: Config) -> None:
    """A worker folded the labels, sent the complete ticks and checkpointed its sources, then
    died before its offsets were committed; the next one reads the batch again: the join
    hands every outcome back (a redelivery of the completing half), and the sources'
    checkpoints say they were folded already."""
    cfg = _one_second_ticks(applied)
    expected = _produce_predictions_and_labels(cfg)
    asyncio.run(_ingest(cfg, RedisJoin, "both"))
    assert _folded_outcomes(cfg) == (expected, 0)

    metrics = asyncio.run(_ingest(cfg, RedisJoin, "labels"))
    assert _join_count(metrics, "redelivered") == 151
    assert _join_count(metrics, "joined") == 150  # handed to the sink again
    assert _folded_outcomes(cfg) == (expected, 0)  # and neither folded nor sent again


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        (
            "p:p42",
            "0:7:|SPJ1",
            "earlier key layout under prefix '{prefix}' (e.g. '{prefix}:p:p42'",
        ),
        (
            "i:p42",
            "p0:7:|SPJ1",
            "earlier key layout under prefix '{prefix}' (e.g. '{prefix}:i:p42'",
        ),
        (
            "j:p42",
            "0:7:/0:9:",
            "earlier key layout under prefix '{prefix}' (e.g. '{prefix}:j:p42'",
        ),
        ("layout", "1", "{prefix}:layout says Redis holds join state of key layout '1'"),
    ],
)
def test_a_worker_refuses_to_start_on_join_state_of_another_key_layout(
    config: Config, key: str, value: str, said: str
) -> None:
    prefix = config.redis.key_prefix
    client = sync_client(config.redis)
    client.set(f"{prefix}:{key}", value, ex=600)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "streamproc", "worker"],
            env=config_env(config, STREAMPROC_WORKER_WEB_PORT=str(free_port())),
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        left = client.get(f"{prefix}:layout")  # the worker must not have marked the prefix
    finally:
        client.delete(f"{prefix}:{key}")
    assert left == (b"1" if key == "layout" else None)
    assert done.returncode == 2, done.stderr[-2000:]
    assert said.format(prefix=prefix) in done.stderr
    # what to do: drain with the version that wrote it, or the exact command deleting it
    assert "drain it with the streamproc version that wrote it" in done.stderr
    assert f"for p in '{{{prefix}:j*' '{prefix}:[plji]:*' '{prefix}:due:*' {prefix}:layout" in (
        done.stderr
    )
    assert "--scan --pattern" in done.stderr and "unlink" in done.stderr


@pytest.mark.slow
def test_100k_shuffled_predictions_and_labels_give_exact_join_counts(
    applied: Config, tmp_path: Path
) -> None:
    rng = random.Random(7)
    n = 100_000
    labelled = [i for i in range(n) if i % 10 != 0]  # 10% never labelled
    dup_predictions = rng.sample(range(n), 500)
    dup_labels = rng.sample(labelled, 300)
    early = set(rng.sample(labelled, 20_000))  # these labels are on Kafka before predictions

    preds = [_prediction(i) for i in range(n)] + [_prediction(i) for i in dup_predictions]
    rng.shuffle(preds)
    labels_early = [_label(i) for i in labelled if i in early]
    labels_late = [_label(i) for i in labelled if i not in early] + [_label(i) for i in dup_labels]
    rng.shuffle(labels_late)

    produce(applied, applied.topics.labels, _batches(labels_early, 250))
    worker = WorkerProcess(applied, tmp_path)
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total", topic="labels") >= len(labels_early),
            120, "early labels",
        )  # fmt: skip
        produce(applied, applied.topics.predictions, _batches(preds, 500))
        produce(applied, applied.topics.labels, _batches(labels_late, 250))
        total = len(preds) + len(labels_early) + len(labels_late)
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total") >= total, 300, "all events"
        )
        m = worker.metric
        assert m("streamproc_join_total", result="joined") == len(labelled)
        assert m("streamproc_join_total", result="duplicate") == len(dup_predictions) + len(
            dup_labels
        )
        assert m("streamproc_events_total", topic="predictions", outcome="accepted") == n
        assert m("streamproc_events_total", topic="labels", outcome="accepted") == len(labelled)
        assert m("streamproc_deadletter_total", reason="duplicate:prediction_id") == 500
        assert m("streamproc_deadletter_total", reason="duplicate:label") == 300
        assert m("streamproc_label_delay_seconds_count") == len(labelled)
        worker.wait_for(
            lambda: m("streamproc_join_pending", side="prediction") == n - len(labelled),
            30, "pending gauge",
        )  # fmt: skip
        assert m("streamproc_join_pending", side="label") == 0
    finally:
        worker.stop()


def test_predictions_never_labelled_expire_and_count(applied: Config, tmp_path: Path) -> None:
    produce(
        applied, applied.topics.predictions, _batches([_prediction(i) for i in range(300)], 100)
    )
    produce(applied, applied.topics.labels, _batches([_label(i) for i in range(100)], 100))
    worker = WorkerProcess(
        applied,
        tmp_path,
        STREAMPROC_JOIN_PREDICTION_TTL_S="2",
        STREAMPROC_JOIN_SWEEP_INTERVAL_S="1",
    )
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_join_total", result="expired_prediction") >= 200,
            60, "expiry",
        )  # fmt: skip
        assert worker.metric("streamproc_join_total", result="joined") == 100
        assert worker.metric("streamproc_join_total", result="expired_prediction") == 200
        assert worker.metric("streamproc_never_labelled_ratio") == pytest.approx(200 / 300)
    finally:
        worker.stop()


BAD_INPUTS: list[tuple[bytes, str]] = [
    (b'{"prediction_id": "b1", "model_id": "m", "model_version": "1", "prediction"',
     "invalid_json"),
    (b'{"prediction_id": 5, "model_id": "m", "model_version": "1", "prediction": 1}',
     "schema:prediction_id:wrong_type"),
    (b'{"model_id": "m", "model_version": "1", "prediction": 1}', "schema:prediction_id:missing"),
    (b'{"prediction_id": "b2", "model_id": "m", "model_version": "1", "prediction": NaN}',
     "non_finite_number"),
    (b'{"prediction_id": "b3", "model_id": "m", "model_version": "1", "prediction": 1,'
     b' "features": {"x": Infinity}}', "non_finite_number"),
    (b'{"prediction_id": "b4", "model_id": "m", "model_version": "1", "prediction": 1,'
     b' "features": {"x": {"deep": [{"deeper": [1, {"a": null}]}]}}}',
     "schema:features:wrong_type"),
    (b'{"prediction_id": "b5", "model_id": "m", "model_version": "1", "prediction": "' +
     b"x" * (5 * 1024 * 1024) + b'"}', "too_large"),
    (b"\xff\xfe\x00garbage", "not_utf8"),
    (b"[" * 1000 + b"]" * 1000, "too_deep"),  # ~2 KB, ~1,000 levels: a RecursionError inside
    (b'{"prediction_id": "b7", "model_id": "m", "model_version": "1", "prediction": "\\ud800"}',
     "schema:prediction:invalid_unicode"),
    (b'{"prediction_id": "b8", "model_id": "m", "model_version": "1", "prediction": 1,'
     b' "features": null}', "schema:features:not_an_object"),
    (b"", "empty"),
    (b"[]", "empty_batch"),
    (json.dumps(_prediction(1)).encode(), "duplicate:prediction_id"),  # p1 repeated, below
]  # fmt: skip


def test_bad_inputs_land_in_deadletter_with_reason_and_bytes_while_good_traffic_flows(
    applied: Config, tmp_path: Path
) -> None:
    good = [json.dumps(_prediction(i)).encode() for i in range(200)]
    mixed_batch = json.dumps(
        [_prediction(1000), {"prediction_id": "b6", "prediction": 1}, _prediction(1001)]
    ).encode()
    values = [*good[:100], *(v for v, _ in BAD_INPUTS), mixed_batch, *good[100:]]
    produce(applied, applied.topics.predictions, [(b"key", v) for v in values])

    worker = WorkerProcess(applied, tmp_path)
    try:
        # 202 accepted events + a dead letter per bad message and 1 for a bad batch element
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total", topic="predictions")
            >= 202 + len(BAD_INPUTS) + 1,
            120, "all messages",
        )  # fmt: skip
        assert worker.metric("streamproc_messages_total", topic="predictions") == len(values)
        accepted = worker.metric("streamproc_events_total", topic="predictions", outcome="accepted")
        assert accepted == 202  # 200 singles + 2 good elements of the mixed batch
        assert worker.proc.poll() is None, "the worker must not crash on data"
    finally:
        worker.stop()

    expected = [*BAD_INPUTS, (mixed_batch, "schema:model_id:missing")]
    letters = [
        json.loads(m.value())
        for m in consume_all(applied, applied.topics.deadletter, len(expected))
    ]
    assert sorted(d["error"]["code"] for d in letters) == sorted(reason for _, reason in expected)
    by_value = {base64.b64decode(d["value_b64"]): d for d in letters}
    for value, reason in BAD_INPUTS:
        letter = by_value[value]
        assert letter["error"]["code"] == reason
        assert letter["topic"] == applied.topics.predictions
        assert letter["key_b64"] == base64.b64encode(b"key").decode()
        assert letter["error"]["message"]
    batch_letter = next(d for d in letters if d["error"]["code"] == "schema:model_id:missing")
    assert batch_letter["batch_index"] == 1
    assert json.loads(base64.b64decode(batch_letter["value_b64"]))["prediction_id"] == "b6"


def test_events_stamped_far_ahead_of_their_record_are_dead_lettered_and_make_nothing_late(
    applied: Config, tmp_path: Path
) -> None:
    """One producer with a clock years ahead, on the same partition as good traffic: its
    events are refused, and every good event after them is still folded (none counted late)."""
    ahead = time.time() + 10 * 365 * 86400
    values = []
    for i in range(2_000):
        values.append((b"k", json.dumps(_prediction(i)).encode()))
        if i % 10 == 5:
            bad = _prediction(100_000 + i, timestamp=ahead + i)
            values.append((b"k", json.dumps(bad).encode()))
    produce(applied, applied.topics.predictions, values)

    worker = WorkerProcess(applied, tmp_path)
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_aggregated_events_total") >= 2_000,
            120, "every good event folded",
        )  # fmt: skip
        assert worker.metric("streamproc_events_total", outcome="deadletter") == 200
        assert worker.metric("streamproc_late_events_total") == 0
        assert worker.metric("streamproc_aggregated_events_total") == 2_000
        worker.assert_healthy()
    finally:
        worker.stop()
    letters = [json.loads(m.value()) for m in consume_all(applied, applied.topics.deadletter, 200)]
    assert Counter(d["error"]["code"] for d in letters) == {"timestamp:ahead_of_record": 200}
    assert "max_future_skew_s=300" in letters[0]["error"]["message"]


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_joins_once_and_emits_every_outcome(
    applied: Config, tmp_path: Path
) -> None:
    n = 30_000
    preds = [json.dumps(_prediction(i)).encode() for i in range(n)]
    labels = [json.dumps(_label(i)).encode() for i in range(n) if i % 5]
    produce(applied, applied.topics.predictions, preds)
    produce(applied, applied.topics.labels, labels)

    # One-second ticks: each outcome alone in its tick (see _folded_outcomes).
    first = WorkerProcess(applied, tmp_path, STREAMPROC_MONITORING_TICK_S="1")
    first.wait_for(
        lambda: first.metric("streamproc_join_total", result="joined") >= 3_000, 120, "progress"
    )
    first.kill()
    done_before = first.log_path.read_text(errors="replace")
    assert "Traceback" not in done_before

    second = WorkerProcess(applied, tmp_path, STREAMPROC_MONITORING_TICK_S="1")
    try:
        second.wait_for(
            lambda: second.metric("streamproc_join_pending", side="label") == 0
            and second.metric("streamproc_join_pending", side="prediction") == n - len(labels)
            and second.metric("streamproc_events_total") > 0,
            180, "the rest of the stream",
        )  # fmt: skip
        assert second.metric("streamproc_join_total", result="duplicate") == 0
        # every batch through its last step (its offsets committed), so its outcomes are in
        # partials sent or checkpointed
        second.wait_for(lambda: _committed_to_the_end(applied), 60, "the offsets' commit")
    finally:
        second.stop()

    client = sync_client(applied.redis)
    prefix = applied.redis.key_prefix
    # One state key per id (see streamproc/ingest/join.py): "j" tombstone, "p"/"l" pending.
    ids = list(client.scan_iter(f"{{{prefix}:j*:i:*", count=5000))
    states = [client.get(k) for k in ids]  # on a Redis Cluster the keys span slots
    assert len(states) == n
    tombstones = [v[1:].split(b"|", 1) for v in states if v.startswith(b"j")]
    assert len(tombstones) == len(labels)
    # Each tombstone names both halves' origins (joined once, by exactly one arrival), then the
    # side that completed the join and the other half's blob.
    assert all(
        len(v) == 2
        and v[0].count(b"/") == 1
        and not v[0].startswith(b"/")
        and not v[0].endswith(b"/")
        and v[1][:5] in (b"pSPL1", b"lSPJ1")
        for v in tombstones
    )
    assert [v for v in states if v.startswith(b"l")] == []
    assert sum(v.startswith(b"p") for v in states) == n - len(labels)
    assert list(consume_all(applied, applied.topics.deadletter, 1, timeout=3)) == []
    # Downstream, every joined outcome was folded into partials exactly once (a tick sent
    # again after the kill counts once, as the judge keeps its first copy), in the source of
    # the message that completed its join: the tombstone's side and that side's origin.
    expected: Counter[tuple[str, float]] = Counter()
    for key, state in zip(ids, states, strict=True):
        if state.startswith(b"j"):
            origins, rest = state[1:].split(b"|", 1)
            side = rest[:1].decode()
            origin = origins.split(b"/")[0 if side == "p" else 1].decode()
            i = int(key.decode().rsplit(":p", 1)[1])
            expected[(f"{side}{origin.split(':')[0]}", float(LABEL_T0 + i))] += 1
    assert sum(expected.values()) == len(expected) == len(labels)
    assert _folded_outcomes(_one_second_ticks(applied))[0] == expected


def _committed_to_the_end(cfg: Config) -> bool:
    """Whether the worker group has committed every partition of the predictions and labels
    topics up to its end."""
    consumer = Consumer(
        {**cfg.kafka.librdkafka(), "group.id": cfg.worker.app_id, "enable.auto.commit": False}
    )
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (cfg.topics.predictions, cfg.topics.labels)
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        for tp in consumer.committed(tps, timeout=10):
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            if high > (tp.offset if tp.offset >= 0 else low):
                return False
        return True
    finally:
        consumer.close()


def test_compressed_producer_traffic_is_read(applied: Config, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    codecs = ["lz4", "zstd", "snappy", "gzip"]
    for n, codec in enumerate(codecs):
        producer = Producer({**applied.kafka.librdkafka(), "compression.type": codec})
        docs = [_prediction(i) for i in range(n * 1000, (n + 1) * 1000)]
        for value in _batches(docs, 100):
            producer.produce(applied.topics.predictions, value=value)
        assert producer.flush(10) == 0
    worker = WorkerProcess(applied, tmp_path)
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total", topic="predictions") >= 4000,
            60, "compressed batches",
        )  # fmt: skip
        assert worker.metric("streamproc_events_total", outcome="accepted") == 4000
    finally:
        worker.stop()
