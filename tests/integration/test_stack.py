"""The local stack and the topic layout against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.config import Config
from streamproc.dev.stack import Stack, _pid_alive, port_open
from streamproc.kafka import topics
from streamproc.redis_client import sync_client

pytestmark = pytest.mark.integration


def test_every_topic_in_the_layout_round_trips_a_message(config: Config) -> None:
    specs = topics.load_topics(config)
    report = topics.apply(config, specs)
    assert sorted(report.created) == sorted(s.name for s in specs)
    producer = Producer(config.kafka.librdkafka())
    for spec in specs:
        producer.produce(spec.name, key=b"k", value=spec.role.encode())
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            **config.kafka.librdkafka(),
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([s.name for s in specs])
    seen: dict[str, bytes] = {}
    for _ in range(60):
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen[msg.topic()] = msg.value()
        if len(seen) == len(specs):
            break
    consumer.close()
    assert seen == {s.name: s.role.encode() for s in specs}


def test_topics_apply_twice_reports_ok_and_never_alters_a_mismatch(config: Config) -> None:
    specs = topics.load_topics(config)
    topics.apply(config, specs)
    again = topics.apply(config, specs)
    assert again.created == [] and again.mismatches == []
    assert sorted(again.ok) == sorted(s.name for s in specs)

    wider = [topics.TopicSpec(s.role, s.name, s.partitions + 2, s.config) for s in specs]
    report = topics.apply(config, wider)
    assert len(report.mismatches) == len(specs)
    assert "partitions" in report.mismatches[0]
    meta = AdminClient(config.kafka.librdkafka()).list_topics(timeout=10)
    assert all(len(meta.topics[s.name].partitions) == s.partitions for s in specs)


def test_created_topics_carry_their_retention(config: Config) -> None:
    specs = topics.load_topics(config)
    topics.apply(config, specs)
    alerts = next(s for s in specs if s.role == "alerts")
    assert alerts.config["retention.ms"] == "2592000000"
    assert topics.apply(config, specs).mismatches == []


def test_redis_round_trip(config: Config) -> None:
    client = sync_client(config.redis)
    key = f"{config.redis.prefix}:roundtrip"
    client.set(key, b"\x00\x01bytes", ex=30)
    assert client.get(key) == b"\x00\x01bytes"
    client.delete(key)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_stack_up_twice_then_down_leaves_no_process_behind(
    endpoints: object, tmp_path: Path
) -> None:
    # Its own ports, so it never touches the session's stack; the jar cache is shared.
    kafka_port, redis_port = 19392, 16399
    if port_open(kafka_port) or port_open(kafka_port + 1) or port_open(redis_port):
        pytest.skip("test ports are in use")
    env = {
        **os.environ,
        "STREAMPROC_STACK_KAFKA_PORT": str(kafka_port),
        "STREAMPROC_STACK_REDIS_PORT": str(redis_port),
    }
    first = _cli("stack", "up", env=env)
    assert first.returncode == 0, first.stderr
    assert "kafka  started" in first.stdout and "redis  started" in first.stdout
    stack = Stack(kafka_port=kafka_port, redis_port=redis_port)
    pids = [stack.kafka.our_pid(), stack.redis.our_pid()]
    assert all(pids)
    try:
        second = _cli("stack", "up", env=env)
        assert second.returncode == 0, second.stderr
        assert "kafka  already running" in second.stdout
        assert "redis  already running" in second.stdout
        assert [stack.kafka.our_pid(), stack.redis.our_pid()] == pids
        status = _cli("stack", "status", env=env).stdout
        assert f"127.0.0.1:{kafka_port}" in status and "running (pid" in status
        _create_topic(f"127.0.0.1:{kafka_port}", "left-behind")
    finally:
        down = _cli("stack", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not any(_pid_alive(p) for p in pids if p)
    assert not port_open(kafka_port) and not port_open(redis_port)
    assert "down" in _cli("stack", "status", env=env).stdout
    # A test session starts the stack fresh: nothing an earlier run left piles up.
    try:
        assert stack.up(fresh=True)["kafka"] == "started"
        topics = AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=30)
        assert "left-behind" not in topics.topics
    finally:
        stack.down()


def _create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(timeout=30)
    assert name in admin.list_topics(timeout=30).topics


def test_stack_up_on_a_port_held_by_something_else_says_what_to_do(endpoints: object) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**os.environ, "STREAMPROC_STACK_REDIS_PORT": str(port)}
        result = _cli("stack", "up", env=env)
    assert result.returncode == 2
    assert f"port {port} is in use" in result.stderr and "--redis-port" in result.stderr
