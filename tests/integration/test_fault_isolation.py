"""One model's failure stays that model's: quarantined, alerted, its input kept and replayed.

The judging stage runs for real (its state in Redis, its records to Kafka) on the partials of
two models, produced by the aggregation stage from the synthetic workload. Judging one of them
raises: that model gets a ``monitor_error`` alert, ``streamproc_monitor_errors_total`` counts,
its messages are parked in Redis, and the other model's windows keep being judged. A stage
started again without the fault (a fixed release) replays the parked messages onto the model's
last checkpoint: the alert resolves and the model's windows are judged as if nothing happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson
import pytest

from streamproc.aggregate.wire import (
    PartialsMessage,
    ProgressMessage,
    decode_message,
    encode_message,
    partition_of,
)
from streamproc.baseline import BaselineStore
from streamproc.config import Config, MonitoringConfig
from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
from streamproc.judge.engine import ModelJudge
from streamproc.kafka import topics
from streamproc.kafka.producer import OutputProducer
from streamproc.publish.judging import JudgeStage
from streamproc.publish.keys import Keys
from streamproc.publish.sources import ensure_partials_topic
from streamproc.redis_client import async_client, sync_client
from streamproc.tools.inprocess import InProcessPipeline, raw
from streamproc.worker.metrics import WorkerMetrics
from tests.integration.workers import consume_all

pytestmark = [pytest.mark.integration]

PARTITIONS = 6
GOOD, BAD = "good-model", "bad-model"
EVENTS = 15_000  # per model: five minutes of event time, five windows
MONITORING = MonitoringConfig(window_s=60.0, tick_s=5.0, lateness_s=5.0)


def _partials(cfg: Config) -> list[tuple[int, bytes]]:
    """What the aggregation stage sends for two models' traffic, in order: (partition, value)."""
    pipe = InProcessPipeline(cfg, range(PARTITIONS))
    sent: list[tuple[int, bytes]] = []
    k = cfg.monitoring.partials_partitions

    def deliver(partials: list[PartialsMessage], progress: list[ProgressMessage]) -> None:
        for msg in partials:
            sent.append((partition_of(msg.model_id, k), encode_message(msg)))
        for p in progress:
            sent.extend((part, encode_message(p)) for part in range(k))

    pipe.deliver = deliver  # type: ignore[method-assign]
    offsets = [0] * PARTITIONS
    streams = []
    for seed, model in enumerate((GOOD, BAD), start=3):  # seeds prefix the prediction ids
        spec = dataclasses.replace(WorkloadSpec(rate=50.0), model_id=model)
        streams.append(list(Workload(spec, EVENTS, seed=seed).predictions()))
    for i in range(0, EVENTS, 300):  # the two models' traffic side by side, in time order
        for events in streams:
            chunk = events[i : i + 300]
            p = (i // 300) % PARTITIONS
            ms = round(chunk[-1]["timestamp"] * 1000)
            msg = raw(cfg.topics.predictions, p, offsets[p], orjson.dumps(chunk), ms)
            offsets[p] += 1
            pipe.feed_sync("predictions", [msg])
    return sent


def _messages(sent: list[tuple[int, bytes]]) -> Iterator[tuple[int, int, bytes]]:
    next_offset = [0] * 64
    for k, value in sent:
        yield k, next_offset[k], value
        next_offset[k] += 1


async def _judge(cfg: Config, messages: list[tuple[int, int, bytes]]) -> JudgeStage:
    """A judging stage (a worker process) through ``messages``, 50 at a time."""
    client = async_client(cfg.redis)
    stage = JudgeStage(cfg, client, OutputProducer(cfg), WorkerMetrics(), PARTITIONS, 1, 6)
    try:
        for i in range(0, len(messages), 50):
            await stage.on_messages(messages[i : i + 50])
    finally:
        await client.aclose()
    return stage


def _alerts(cfg: Config) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.alerts, 10_000, 8)]


def _windows(cfg: Config, model: str) -> int:
    return sum(
        1
        for m in consume_all(cfg, cfg.topics.metrics, 100_000, 8)
        if orjson.loads(m.value())["model_id"] == model
    )


def test_a_model_that_fails_is_quarantined_alone_and_replayed_once_fixed(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = msgspec.structs.replace(config, monitoring=MONITORING)
    topics.apply(config, topics.load_topics(config))
    assert ensure_partials_topic(config) == 6
    with sync_client(config.redis) as client:
        store = BaselineStore(client, config.redis.prefix)
        for model in (GOOD, BAD):  # so that every window is judged, and published
            spec = dataclasses.replace(WorkloadSpec(rate=50.0), model_id=model)
            store.put(reference_profile(spec, 5_000))
    messages = list(_messages(_partials(config)))
    bad = [
        i
        for i, (_, _, v) in enumerate(messages)
        if isinstance(m := decode_message(v), PartialsMessage) and m.model_id == BAD
    ]
    assert len(bad) >= 4
    half = bad[len(bad) // 2]  # the fault hits while the model has input before and after
    advance = ModelJudge.advance

    def failing(self: ModelJudge, *args: Any, **kwargs: Any) -> Any:
        if self.model_id == BAD:
            raise RuntimeError("judging went wrong")
        return advance(self, *args, **kwargs)

    monkeypatch.setattr(ModelJudge, "advance", failing)
    stage = asyncio.run(_judge(config, messages[:half]))
    errors = stage.metrics.monitor_errors.labels(model=BAD)._value.get()
    assert errors == 1
    assert stage.metrics.quarantined._value.get() == 1
    assert stage.metrics.monitor_errors.labels(model=GOOD)._value.get() == 0

    alerts = _alerts(config)
    fired = [a for a in alerts if a["kind"] == "monitor_error"]
    assert [(a["model_id"], a["status"], a["severity"]) for a in fired] == [
        (BAD, "firing", "critical")
    ]
    assert "RuntimeError: judging went wrong" in fired[0]["evidence"]["error"]
    assert _windows(config, GOOD) > 0, "the other model is still judged"
    assert _windows(config, BAD) == 0

    async def parked() -> int:
        client = async_client(config.redis)
        try:
            return int(await client.llen(Keys(config.redis.prefix).parked(BAD)))
        finally:
            await client.aclose()

    assert asyncio.run(parked()) > 0, "the failing model's input is kept"

    # A fixed release: the next stage replays what was parked, and the quarantine lifts.
    monkeypatch.setattr(ModelJudge, "advance", advance)
    stage = asyncio.run(_judge(config, messages[half:]))
    assert stage.metrics.quarantined._value.get() == 0
    assert asyncio.run(parked()) == 0
    statuses = [
        (a["model_id"], a["status"]) for a in _alerts(config) if a["kind"] == "monitor_error"
    ]
    assert statuses == [(BAD, "firing"), (BAD, "resolved")]
    assert _windows(config, BAD) == _windows(config, GOOD), "nothing of the model was lost"
