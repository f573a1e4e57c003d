"""A worker that lost a partition to another cannot write over the new owner's state.

Every load of a partials partition (judging) or of a source (aggregation) moves an owner epoch
in Redis; every checkpoint write checks it in the same transaction. Here two stages share real
Redis and Kafka: stage A works a while, stage B takes its partitions over mid-stream (as after a
rebalance), and A, which has not noticed (a paused process, a revocation still on its way),
goes on with the next messages. A's writes are refused: Redis keeps B's state, A publishes
nothing for what it lost, counts ``streamproc_fenced_writes_total`` and forgets the partitions
(should Kafka hand it one again, it loads it afresh from the new owner's checkpoint).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from typing import Any

import msgspec
import orjson
import pytest

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.contracts import Prediction
from streamproc.contracts.decode import decode_message, event_time
from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
from streamproc.ingest.ingestor import Observed
from streamproc.kafka import topics
from streamproc.kafka.producer import OutputProducer
from streamproc.publish.judging import JudgeStage
from streamproc.publish.keys import Keys
from streamproc.publish.sources import SourceStage, ensure_partials_topic
from streamproc.redis_client import async_client, sync_client
from streamproc.worker.metrics import WorkerMetrics
from tests.integration.test_fault_isolation import (
    BAD,
    GOOD,
    MONITORING,
    PARTITIONS,
    _messages,
    _partials,
)
from tests.integration.workers import consume_all

pytestmark = [pytest.mark.integration]


def _setup(config: Config) -> Config:
    config = msgspec.structs.replace(config, monitoring=MONITORING)
    topics.apply(config, topics.load_topics(config))
    assert ensure_partials_topic(config) == 6
    with sync_client(config.redis) as client:
        store = BaselineStore(client, config.redis.prefix)
        for model in (GOOD, BAD):
            spec = dataclasses.replace(WorkloadSpec(rate=50.0), model_id=model)
            store.put(reference_profile(spec, 5_000))
    return config


def _state(config: Config) -> dict[bytes, bytes]:
    """Every judge and partition checkpoint in Redis now."""
    prefix = config.redis.prefix
    with sync_client(config.redis) as client:
        patterns = (f"{prefix}:judge:*", f"{prefix}:judgepart:*")
        keys = sorted(k for p in patterns for k in client.scan_iter(match=p, count=1000))
        return {k: client.get(k) for k in keys}


def _windows(config: Config) -> Counter[tuple[Any, ...]]:
    """How often each (model, segment, window) was published on the metrics topic."""
    return Counter(
        (r["model_id"], tuple(sorted(r["segment"].items())), r["window"]["start"])
        for m in consume_all(config, config.topics.metrics, 100_000, 8)
        for r in [orjson.loads(m.value())]
    )


def test_a_judge_that_lost_its_partitions_cannot_overwrite_the_new_owner(config: Config) -> None:
    config = _setup(config)
    messages = list(_messages(_partials(config)))
    third = len(messages) // 3

    async def scenario() -> tuple[JudgeStage, JudgeStage, dict[bytes, bytes], int]:
        clients = [async_client(config.redis) for _ in range(2)]
        a, b = (
            JudgeStage(config, c, OutputProducer(config), WorkerMetrics(), PARTITIONS, 1, 6)
            for c in clients
        )
        try:
            for i in range(0, third, 50):  # A owns every partition for a third of the stream
                await a.on_messages(messages[i : i + 50])
            assert a.parts and a.judges
            # B takes every partition over (a rebalance) and judges the next third.
            for i in range(third, 2 * third, 50):
                await b.on_messages(messages[i : i + 50])
            after_b = _state(config)
            published = sum(_windows(config).values())
            # A never noticed: it goes on with the same messages as if they were its own.
            for i in range(third, 2 * third, 50):
                await a.on_messages(messages[i : i + 50])
            return a, b, after_b, published
        finally:
            for c in clients:
                await c.aclose()

    a, b, after_b, published = asyncio.run(scenario())
    # A dropped what it lost; a later message of the same partition (Kafka handing it one
    # again) makes it load the partition afresh: B's checkpoint, everything already applied.
    assert {k: p.applied for k, p in a.parts.items()} == {k: b.parts[k].applied for k in a.parts}
    assert _state(config) == after_b, "Redis holds B's checkpoints, untouched by A"
    windows = _windows(config)
    assert sum(windows.values()) == published > 0, "A published nothing for what it lost"
    assert max(windows.values()) == 1, "each window published once"
    assert a.metrics.fenced.labels(stage="judge")._value.get() >= 1
    assert b.metrics.fenced.labels(stage="judge")._value.get() == 0


def _observed(events: list[dict[str, Any]], offset: int) -> list[Observed]:
    """One 500-event message of partition 0 at ``offset``, as the ingestor hands it on."""
    decoded = decode_message(orjson.dumps(events), Prediction)
    assert not decoded.rejections
    return [
        Observed(ev, event_time(ev.timestamp, None), 0, offset, i)
        for i, ev in enumerate(decoded.events)
    ]


def test_a_source_that_was_restored_elsewhere_keeps_the_new_owners_checkpoint(
    config: Config,
) -> None:
    config = _setup(config)
    spec = dataclasses.replace(WorkloadSpec(rate=50.0), model_id=GOOD)
    events = list(Workload(spec, 3_000, seed=5).predictions())
    prefix = config.redis.prefix
    source_key = Keys(prefix).source("p0")

    async def scenario() -> tuple[SourceStage, dict[bytes, bytes], dict[bytes, bytes]]:
        clients = [async_client(config.redis) for _ in range(2)]
        a, b = (SourceStage(config, c, OutputProducer(config), WorkerMetrics(), 6) for c in clients)
        try:
            chunks = [events[i : i + 500] for i in range(0, len(events), 500)]
            await a.on_batch("predictions", _observed(chunks[0], 0), [], {0: 1})
            await a.commit()
            # B restores p0 from A's checkpoint (a rebalance) and folds the next two messages.
            for offset in (1, 2):
                await b.on_batch("predictions", _observed(chunks[offset], offset), [], {0: 2})
                await b.commit()
            with sync_client(config.redis) as sync:
                after_b = sync.hgetall(source_key)
            # A, unaware, folds the message after its own last one and commits: without the
            # fence, its checkpoint (through offset 1) would replace B's (through offset 2).
            await a.on_batch("predictions", _observed(chunks[1], 1), [], {0: 2})
            await a.commit()
            with sync_client(config.redis) as sync:
                now = sync.hgetall(source_key)
            return a, after_b, now
        finally:
            for c in clients:
                await c.aclose()

    a, after_b, now = asyncio.run(scenario())
    assert now == after_b, "Redis holds B's checkpoint of p0"
    assert a.metrics.fenced.labels(stage="aggregate")._value.get() == 1
    assert "p0" not in a.stage.sources, "A forgot the source it lost"
