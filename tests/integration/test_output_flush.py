"""``OutputProducer.flush`` against a real broker: it waits for acks, reports failures, and
costs no thread hop when nothing was produced."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.config import Config
from streamproc.kafka import topics
from streamproc.kafka.producer import KafkaDeliveryError, OutputProducer
from tests.integration.workers import consume_all

pytestmark = pytest.mark.integration


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts what is handed to it (the loop's default executor)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def applied(config: Config) -> Config:
    topics.apply(config, topics.load_topics(config))
    return config


def test_flush_waits_for_the_ack_and_skips_the_executor_when_nothing_is_pending(
    applied: Config,
) -> None:
    async def scenario() -> list[int]:
        executor = CountingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        out = OutputProducer(applied)
        hops = []
        await out.flush()  # nothing produced yet
        hops.append(executor.submitted)
        out.produce(applied.topics.deadletter, b"one record", b"k")
        await out.flush()  # must wait for the broker's acknowledgement
        hops.append(executor.submitted)
        await out.flush()  # acknowledged and reported already
        hops.append(executor.submitted)
        return hops

    assert asyncio.run(scenario()) == [0, 1, 1]
    got = [m.value() for m in consume_all(applied, applied.topics.deadletter, 1, timeout=10)]
    assert got == [b"one record"]


@pytest.fixture
def small_topic(config: Config) -> Iterator[str]:
    """A topic whose broker-side record limit (1 KiB) is far below the producer's (8 MiB)."""
    admin = AdminClient(config.kafka.librdkafka())
    name = f"{config.topics.deadletter}-small"
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "1024"})])[name].result()
    yield name
    admin.delete_topics([name])[name].result()


def test_flush_raises_for_a_record_the_broker_refused_and_then_is_clean_again(
    config: Config, small_topic: str
) -> None:
    async def scenario() -> tuple[str, int]:
        out = OutputProducer(config)
        out.produce(small_topic, os.urandom(8192))  # incompressible, so over 1 KiB on the wire
        with pytest.raises(KafkaDeliveryError) as refused:
            await out.flush()
        executor = CountingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        await out.flush()  # the failure was reported once; nothing is pending now
        return str(refused.value), executor.submitted

    message, hops = asyncio.run(scenario())
    assert "1 records failed" in message
    assert hops == 0
