"""Fixtures shared by every tier.

Integration tests get a real Kafka and Redis, found in this order:

1. ``STREAMPROC_KAFKA_BOOTSTRAP`` / ``STREAMPROC_REDIS_URL`` from the environment;
2. testcontainers (``apache/kafka``, ``redis``) when a Docker engine answers;
3. the project's local stack (``streamproc stack up``), started once per test session (on empty
   Kafka storage, so that earlier runs' topics do not pile up) and stopped at the end if this
   session started it.

Each test gets its own topic names and Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from streamproc.config import Config, load_config


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    redis_url: str
    how: str


def _docker_engine_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    import docker  # testcontainers depends on it

    try:
        client = docker.from_env(timeout=2)
    except Exception:  # no engine, no permission: both mean "not here"
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _containers() -> Iterator[Endpoints]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with KafkaContainer("apache/kafka:3.9.1").with_kraft() as kafka, RedisContainer() as redis:
        host = redis.get_container_host_ip()
        port = redis.get_exposed_port(6379)
        yield Endpoints(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0", "testcontainers")


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    env_kafka = os.environ.get("STREAMPROC_KAFKA_BOOTSTRAP")
    env_redis = os.environ.get("STREAMPROC_REDIS_URL")
    if env_kafka and env_redis:
        yield Endpoints(env_kafka, env_redis, "environment")
        return
    if os.environ.get("STREAMPROC_TEST_CONTAINERS") != "0" and _docker_engine_answers():
        with _containers() as found:
            yield found
        return
    from streamproc.dev.stack import Stack

    stack = Stack()
    already = stack.started_by_us() or (stack.kafka.answers() and stack.redis.answers())
    stack.up(fresh=not already)
    try:
        yield Endpoints(stack.bootstrap, stack.redis_url, "local stack")
    finally:
        if not already and os.environ.get("STREAMPROC_KEEP_STACK") != "1":
            stack.down()


@pytest.fixture
def unique() -> str:
    """A short id that names this test's topics and Redis keys."""
    return uuid.uuid4().hex[:10]


def config_for(endpoints: Endpoints, unique: str) -> Config:
    """A configuration pointing at the real servers, with topics and keys named by ``unique``."""
    env = {
        "STREAMPROC_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "STREAMPROC_REDIS_URL": endpoints.redis_url,
        "STREAMPROC_REDIS_KEY_PREFIX": f"t-{unique}",
        "STREAMPROC_WORKER_APP_ID": f"t-{unique}",
    }
    for role in ("predictions", "labels", "alerts", "incidents", "metrics", "deadletter"):
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = f"t-{unique}-{role}"
    return load_config(env=env)


@pytest.fixture
def config(endpoints: Endpoints, unique: str) -> Config:
    """A configuration pointing at the real servers, with topics and keys private to the test."""
    return config_for(endpoints, unique)
