"""Run real ``streamproc worker`` processes against the test's Kafka, Redis and topics."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from confluent_kafka import Consumer, Producer

from streamproc.config import Config


def config_env(cfg: Config, **extra: str) -> dict[str, str]:
    """The environment that makes a worker process use ``cfg``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMPROC_") or k == "STREAMPROC_CACHE"
    }
    env.update(
        {
            "STREAMPROC_KAFKA_BOOTSTRAP": cfg.kafka.bootstrap,
            "STREAMPROC_REDIS_URL": cfg.redis.url,
            "STREAMPROC_REDIS_KEY_PREFIX": cfg.redis.key_prefix,
            "STREAMPROC_WORKER_APP_ID": cfg.worker.app_id,
        }
    )
    for role in ("predictions", "labels", "alerts", "metrics", "deadletter"):
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = getattr(cfg.topics, role)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """One ``streamproc worker`` subprocess with its own web port."""

    def __init__(self, cfg: Config, log_dir: Path, **extra_env: str) -> None:
        self.port = free_port()
        env = config_env(cfg, STREAMPROC_WORKER_WEB_PORT=str(self.port), **extra_env)
        self.log_path = log_dir / f"worker-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "worker"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if absent)."""
        try:
            text = self.metrics_text()
        except OSError:
            return 0.0
        return sample_sum(text, name, **labels)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}); {self.tail()}")
            if predicate():
                return
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; {self.tail()}")

    def tail(self) -> str:
        self._log.flush()
        return "log tail:\n" + self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def sample_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    for match in pattern.finditer(text):
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def produce(cfg: Config, topic: str, values: Iterable[bytes | tuple[bytes | None, bytes]]) -> int:
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20, "message.max.bytes": 8_388_608})
    n = 0
    for item in values:
        key, value = item if isinstance(item, tuple) else (None, item)
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    assert producer.flush(30) == 0
    return n


def consume_all(cfg: Config, topic: str, expect: int, timeout: float = 60) -> Iterator[object]:
    """Every message of ``topic`` from the beginning, until ``expect`` arrived or time ran out."""
    consumer = Consumer(
        {
            **cfg.kafka.librdkafka(),
            "group.id": f"check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 16_777_216,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < expect and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    seen += 1
                    yield msg
    finally:
        consumer.close()
