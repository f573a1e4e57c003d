"""How the local stack picks its shape and ports (no process is started)."""

from __future__ import annotations

import pytest

from streamproc.cli import build_parser
from streamproc.dev.stack import Kafka, KafkaCluster, Redis, RedisCluster, Stack
from streamproc.errors import StackError

ENV = (
    "STREAMPROC_STACK_KAFKA_PORT",
    "STREAMPROC_STACK_REDIS_PORT",
    "STREAMPROC_STACK_BROKERS",
    "STREAMPROC_STACK_REDIS_CLUSTER",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_the_default_is_the_single_node_stack() -> None:
    stack = Stack()
    assert isinstance(stack.kafka, Kafka) and isinstance(stack.redis, Redis)
    assert stack.bootstrap == "127.0.0.1:9092"
    assert stack.redis_url == "redis://127.0.0.1:6379/0"


def test_a_cluster_lists_every_broker_and_uses_the_cluster_scheme() -> None:
    stack = Stack(brokers=3, redis_cluster=3)
    assert isinstance(stack.kafka, KafkaCluster) and isinstance(stack.redis, RedisCluster)
    assert stack.bootstrap == "127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196"
    assert (
        stack.redis_url
        == "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005,127.0.0.1:7006/0"
    )
    assert stack.redis.ports == list(range(7001, 7007))


def test_the_environment_selects_the_cluster_and_its_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_STACK_BROKERS", "3")
    monkeypatch.setenv("STREAMPROC_STACK_REDIS_CLUSTER", "3")
    monkeypatch.setenv("STREAMPROC_STACK_KAFKA_PORT", "29192")
    monkeypatch.setenv("STREAMPROC_STACK_REDIS_PORT", "17101")
    stack = Stack()
    assert stack.bootstrap == "127.0.0.1:29192,127.0.0.1:29194,127.0.0.1:29196"
    assert (
        stack.redis_url
        == "redis+cluster://127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103,127.0.0.1:17104,127.0.0.1:17105,127.0.0.1:17106/0"
    )


def test_cluster_nodes_agree_on_the_quorum_and_replicate_three_times() -> None:
    kafka = KafkaCluster(29192)
    settings = [node._settings() for node in kafka.nodes]
    voters = "1@127.0.0.1:29193,2@127.0.0.1:29195,3@127.0.0.1:29197"
    assert {s["controller.quorum.voters"] for s in settings} == {voters}
    assert [s["node.id"] for s in settings] == ["1", "2", "3"]
    assert len({s["log.dirs"] for s in settings}) == 3
    for s in settings:
        assert s["default.replication.factor"] == s["offsets.topic.replication.factor"] == "3"
        assert s["min.insync.replicas"] == s["transaction.state.log.min.isr"] == "2"
        assert s["log.retention.check.interval.ms"] == "604800000"
    assert len({node.pid_file for node in kafka.nodes}) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"brokers": 2}, "--brokers"),
        ({"redis_cluster": 2}, "--redis-cluster"),
        ({"redis_cluster": 3, "redis_port": 22800}, "32768"),
    ],
)
def test_impossible_shapes_say_what_to_do(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(StackError, match=message):
        Stack(**kwargs).redis  # noqa: B018  (the Redis Cluster checks its ports when built)


def test_the_cli_takes_the_cluster_flags() -> None:
    args = build_parser().parse_args(["stack", "up", "--brokers", "3", "--redis-cluster", "3"])
    assert (args.brokers, args.redis_cluster) == (3, 3)
