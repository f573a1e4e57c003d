"""A judge loaded after the baseline store changed is offered the change at once.

A worker loads a model's judge (from its checkpoint) when the model's partials partition first
shows up in a batch: after a restart, or when a rebalance hands it the partition. The judging
stage re-reads the baseline store when the store's change counter moves. If the counter last
moved before the judge was loaded (the stage's first batch held other partitions only), the
judge must still be offered the store's baselines at once, not ``baseline_refresh_s`` later:
meanwhile the sources sample the model, and its windows are judged against warm-up references
built from them, drift included. (CI caught this as an operator sequence that failed
now and then: a baseline stored after data, then a restart, and no alert.)
"""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec
import pytest

from streamproc.baseline import BaselineStore
from streamproc.baseline.store import stamp_of
from streamproc.config import Config
from streamproc.dev.synthetic import WorkloadSpec, reference_profile
from streamproc.kafka import topics
from streamproc.kafka.producer import OutputProducer
from streamproc.publish.judging import JudgeStage, partition_of
from streamproc.publish.sources import ensure_partials_topic
from streamproc.redis_client import async_client, sync_client
from streamproc.worker.metrics import WorkerMetrics
from tests.integration.test_fault_isolation import (
    GOOD,
    MONITORING,
    PARTITIONS,
    _judge,
    _messages,
    _partials,
)

pytestmark = [pytest.mark.integration]


def test_a_judge_restored_after_the_store_changed_is_offered_its_baseline(config: Config) -> None:
    config = msgspec.structs.replace(config, monitoring=MONITORING)
    assert config.monitoring.baseline_refresh_s >= 60  # no periodic re-read during the test
    topics.apply(config, topics.load_topics(config))
    partitions = ensure_partials_topic(config)
    messages = list(_messages(_partials(config)))
    half = len(messages) // 2
    first_run = asyncio.run(_judge(config, messages[:half]))  # no baseline: warm-up
    assert first_run.judges[GOOD].timeline.stamp("1") is None

    # The operator stores a baseline, then restarts the worker, whose first batch holds only
    # partitions other than the model's (the progress every source sends to every partition).
    spec = dataclasses.replace(WorkloadSpec(rate=50.0), model_id=GOOD)
    profile = reference_profile(spec, 5_000)
    with sync_client(config.redis) as client:
        BaselineStore(client, config.redis.prefix).put(profile)
    mine = partition_of(GOOD, partitions)
    rest = messages[half:]
    first = [m for m in rest if m[0] != mine][:10]
    then = [m for m in rest if m not in first]
    assert first and any(m[0] == mine for m in then[:50])

    async def restarted() -> JudgeStage:
        client = async_client(config.redis)
        stage = JudgeStage(
            config, client, OutputProducer(config), WorkerMetrics(), PARTITIONS, 1, 6
        )
        try:
            await stage.on_messages(first)
            assert GOOD not in stage.judges
            await stage.on_messages(then[:50])
            return stage
        finally:
            await client.aclose()

    judge = asyncio.run(restarted()).judges[GOOD]
    offered = judge.pending_baselines.get("1")
    assert offered is not None, "the restored judge was not offered the stored baseline"
    assert offered.stamp == stamp_of(profile.to_bytes())
