"""``streamproc smoke``: one prediction through Kafka and one key through Redis, end to end."""

from __future__ import annotations

import argparse
import time
import uuid

from streamproc.config import load_config


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, Producer

    from streamproc import contracts
    from streamproc.kafka import topics
    from streamproc.redis_client import sync_client

    cfg = load_config(args.config)
    for line in topics.apply(cfg, topics.load_topics(cfg)).lines():
        print(f"topics: {line}")
    pid = f"smoke-{uuid.uuid4().hex[:8]}"
    event = (
        b'{"prediction_id":"%s","model_id":"smoke","model_version":"1",'
        b'"features":{"x":1.5},"prediction":0.5}' % pid.encode()
    )
    producer = Producer(cfg.kafka.librdkafka())
    producer.produce(cfg.topics.predictions, key=pid.encode(), value=event)
    producer.flush(10)
    consumer = Consumer(
        {**cfg.kafka.librdkafka(), "group.id": pid, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([cfg.topics.predictions])
    start = time.monotonic()
    found = None
    while found is None and time.monotonic() - start < 30:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None and msg.key() == pid.encode():
            found = contracts.decode_message(msg.value(), contracts.Prediction)
    consumer.close()
    if found is None or not found.events:
        print("kafka: the smoke prediction did not come back within 30 s")
        return 1
    print(f"kafka: produced and consumed a valid prediction on {cfg.topics.predictions!r}")
    client = sync_client(cfg.redis)
    key = f"{cfg.redis.prefix}:smoke:{pid}"
    client.set(key, b"ok", ex=60)
    ok = client.get(key) == b"ok"
    client.delete(key)
    print("redis: round trip ok" if ok else "redis: round trip FAILED")
    return 0 if ok else 1


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("smoke", help="a prediction through Kafka and a key through Redis")
    p.set_defaults(func=run)
