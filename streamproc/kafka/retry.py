"""Retry infrastructure calls (Redis, Kafka) with backoff: infrastructure fails, data does not."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions

from streamproc.kafka.producer import KafkaDeliveryError
from streamproc.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


TRANSIENT = (
    OSError,
    TimeoutError,
    KafkaDeliveryError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    # A Redis Cluster between a master's failure and its replica's promotion
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterUnreachableError,
)


async def retry(
    what: Callable[[], Awaitable[T]], component: str, metrics: WorkerMetrics, *, base: float = 0.2
) -> T:
    """Run ``what`` until it succeeds, backing off up to 10 s; infrastructure, not data, fails."""
    delay = base
    while True:
        try:
            return await what()
        except TRANSIENT as exc:
            metrics.infra_errors.labels(component=component).inc()
            log.warning("%s unavailable (%s); retrying in %.1fs", component, exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
