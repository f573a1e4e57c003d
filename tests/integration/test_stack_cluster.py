"""The local stack's cluster mode: three KRaft brokers and a Redis Cluster, with failover."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.dev.stack import KafkaCluster, RedisCluster, Stack, _pid_alive, port_open

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Their own ports, so the test never touches another stack: brokers and controllers on
# 29192..29197, Redis nodes on 17101..17106 and their cluster bus on 27101..27106.
KAFKA_BASE, REDIS_BASE = 29192, 17101
PORTS = [*range(KAFKA_BASE, KAFKA_BASE + 6), *range(REDIS_BASE, REDIS_BASE + 6)]
PORTS += [p + 10000 for p in range(REDIS_BASE, REDIS_BASE + 6)]


def _isr_sizes(admin: AdminClient, topic: str) -> list[int]:
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    return [len(p.isrs) for p in meta.partitions.values()]


def _wait_for(check, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


def _check_kafka(kafka: KafkaCluster, bootstrap: str) -> None:
    assert kafka.brokers() == {1, 2, 3}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"t-{uuid.uuid4().hex[:10]}-replicated"
    spec = NewTopic(topic, 3, 3, config={"min.insync.replicas": "2"})
    admin.create_topics([spec])[topic].result(30)
    assert _wait_for(lambda: _isr_sizes(admin, topic) == [3, 3, 3], 30)

    kafka.kill(2)
    assert kafka.node_pids()[2] is None
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    errors: list[object] = []
    delivered: list[int] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is None:
            delivered.append(1)
        else:
            errors.append(err)

    for partition in range(3):
        producer.produce(
            topic, b"after a broker died", partition=partition, on_delivery=on_delivery
        )
    assert producer.flush(90) == 0
    assert errors == [] and len(delivered) == 3

    kafka.start(2)
    # start() returns once every node's metadata listed broker 2; a broker just back can be
    # fenced again for a moment (its first heartbeats late on a loaded machine): wait it out.
    assert _wait_for(lambda: kafka.brokers() == {1, 2, 3}, 30)


def _check_redis(cluster: RedisCluster) -> None:
    info = redis.Redis(port=REDIS_BASE).execute_command("CLUSTER", "INFO")
    assert b"cluster_state:ok" in info
    masters = cluster.masters()
    assert len(masters) == 3

    client = redis.RedisCluster(host="127.0.0.1", port=REDIS_BASE)
    client.set("stack-cluster-test", b"v")
    assert client.get("stack-cluster-test") == b"v"
    client.close()

    victim = masters[0]
    cluster.kill(victim)
    cluster.wait_ok(30)
    after = cluster.masters()
    assert len(after) == 3 and victim not in after

    cluster.start(victim)
    cluster.wait_ok(30)
    assert len(cluster.masters()) == 3


def test_cluster_stack_survives_a_broker_and_a_redis_master_dying() -> None:
    if any(port_open(p) for p in PORTS):
        pytest.skip("the cluster test's ports are in use")
    stack = Stack(kafka_port=KAFKA_BASE, redis_port=REDIS_BASE, brokers=3, redis_cluster=3)
    kafka, cluster = stack.kafka, stack.redis
    assert isinstance(kafka, KafkaCluster) and isinstance(cluster, RedisCluster)
    assert stack.bootstrap == "127.0.0.1:29192,127.0.0.1:29194,127.0.0.1:29196"
    assert (
        stack.redis_url
        == "redis+cluster://127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103,127.0.0.1:17104,127.0.0.1:17105,127.0.0.1:17106/0"
    )
    pids: list[int] = []
    try:
        assert stack.up() == {"redis": "started (6 nodes, 3 masters)", "kafka": "started (3 nodes)"}
        pids += [p for p in kafka.node_pids().values() if p]
        pids += [p for p in cluster.node_pids().values() if p]
        assert len(pids) == 9
        assert stack.up() == {"redis": "already running", "kafka": "already running"}
        _check_kafka(kafka, stack.bootstrap)
        _check_redis(cluster)
        pids += [p for p in [*kafka.node_pids().values(), *cluster.node_pids().values()] if p]
    finally:
        down = stack.down()
    assert down == {"kafka": "stopped", "redis": "stopped"}
    assert not any(_pid_alive(p) for p in pids)
    assert not any(port_open(p) for p in PORTS)
