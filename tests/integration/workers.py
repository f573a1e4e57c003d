"""Run real ``streamproc worker`` processes against the test's Kafka, Redis and topics."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamproc.config import Config
from streamproc.worker.metrics import scrape_path


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
    for role in ("predictions", "labels", "alerts", "incidents", "metrics", "deadletter"):
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = getattr(cfg.topics, role)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What a crashed agent or an unhandled error leaves in a worker's log: a Python traceback, or
# Faust's "[^---Agent*: ...]: Crashed reason=..." line.
CRASH_MARKS = ("Traceback", "Crashed")


class WorkerProcess:
    """One ``streamproc worker`` subprocess with its own web port.

    ``args`` go after ``streamproc worker`` (e.g. ``("--loglevel", "INFO")``).
    """

    def __init__(
        self, cfg: Config, log_dir: Path, *, args: Sequence[str] = (), **extra_env: str
    ) -> None:
        self.port = free_port()
        env = config_env(cfg, STREAMPROC_WORKER_WEB_PORT=str(self.port), **extra_env)
        self.log_path = log_dir / f"worker-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "worker", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        # (alive, /metrics text) just before stop() or kill(): what assert_healthy() judges
        self._last_words: tuple[bool, str | None] | None = None

    def metrics_text(self, names: Sequence[str] = ()) -> str:
        """``/metrics``, or only the samples ``names`` (``?name[]=...``)."""
        url = f"http://127.0.0.1:{self.port}{scrape_path(names)}"
        with urllib.request.urlopen(url, timeout=5) as r:
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

    def wait_until_judged(self, timeout: float, still_s: float = 10.0) -> float:
        """Wait for a first closed window, then until nothing moves for ``still_s``: windows
        closed, partials sent and taken, events read, labels joined, loop and batch timings
        (every window the traffic allows is judged); return the count of closed windows."""
        name = "streamproc_windows_closed_total"
        self.wait_for(lambda: self.metric(name) > 0, timeout, "a window judged")
        moving = (name, "streamproc_partials_total", "streamproc_events_total",
                  "streamproc_join_total", "streamproc_batch_seconds_count")  # fmt: skip
        before: tuple[float, ...] = ()
        while (now := tuple(self.metric(n) for n in moving)) != before:
            before = now
            time.sleep(still_s)
        return before[0]

    def tail(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return "log tail:\n" + self.log_path.read_text(errors="replace")[-3000:]

    def log_text(self, since: int = 0) -> str:
        """The log from byte ``since`` on (see :meth:`log_size`)."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def crash_report(self) -> str | None:
        """The log from its first traceback or Faust ``Crashed`` line on, if it has one."""
        text = self.log_text()
        found = [i for i in (text.find(mark) for mark in CRASH_MARKS) if i >= 0]
        if not found:
            return None
        start = text.rfind("\n", 0, min(found)) + 1
        return text[start : start + 4000]

    def assert_no_crash(self) -> None:
        """Fail at once, with the traceback, when the log shows an error or a crashed agent.

        A crashed Faust agent does not end the process: it stops consuming and the rest of the
        worker carries on, so the process being alive says nothing about its agents.
        """
        report = self.crash_report()
        if report is not None:
            raise AssertionError(f"worker on port {self.port} logged a crash:\n{report}")

    def assert_healthy(self) -> None:
        """No traceback and no crashed agent in the log, alive until the test stopped it, and
        ``/metrics`` (read just before :meth:`stop` or :meth:`kill` once stopped) exports
        ``streamproc_monitor_errors_total`` at 0."""
        self.assert_no_crash()
        alive, text = self._last_words if self._last_words else self._state()
        if not alive:
            raise AssertionError(
                f"worker on port {self.port} exited ({self.proc.returncode}) before the test "
                f"stopped it; {self.tail()}"
            )
        assert text is not None, f"worker on port {self.port}: /metrics did not answer"
        assert "streamproc_monitor_errors_total" in text, (
            f"worker on port {self.port}: /metrics does not export streamproc_monitor_errors_total"
        )
        errors = sample_sum(text, "streamproc_monitor_errors_total")
        assert errors == 0, f"streamproc_monitor_errors_total is {errors}; {self.tail()}"

    def _state(self) -> tuple[bool, str | None]:
        """Whether the process runs, and its ``/metrics`` text (``None`` if it did not answer)."""
        if self.proc.poll() is not None:
            return False, None
        try:
            return True, self.metrics_text()
        except OSError:
            return True, None

    def kill(self) -> None:
        """SIGKILL; :meth:`assert_healthy` then judges the worker as it was just before."""
        self._last_words = self._last_words or self._state()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 30 s); :meth:`assert_healthy` then judges the worker as it
        was just before."""
        stop_all([self])


def stop_all(workers: Sequence[WorkerProcess]) -> None:
    """Stop workers together (SIGTERM to each, then wait), so none is left alone for a while to
    take over the others' partitions."""
    for w in workers:
        w._last_words = w._last_words or w._state()
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)
        w._log.close()


def wait_all(
    workers: Sequence[WorkerProcess],
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    progress: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail at once when a worker exits or logs a crash.

    ``progress`` describes, on a timeout, how far things got.
    """
    deadline = time.monotonic() + timeout
    while True:
        for w in workers:
            w.assert_no_crash()
            if w.proc.poll() is not None:
                raise AssertionError(f"worker exited ({w.proc.returncode}); {w.tail()}")
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    got = f" ({progress()})" if progress else ""
    tails = "\n".join(w.tail() for w in workers)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{got};\n{tails}")


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


@dataclasses.dataclass(frozen=True)
class Produced:
    """What :func:`produce_batches` sent: how many events, and per partition the event time
    (``timestamp``) of the last event it holds."""

    events: int
    last_time: dict[int, float]

    def then(self, more: Produced) -> Produced:
        """This and ``more``, sent after it to the same topic."""
        last = dict(self.last_time)
        for p, t in more.last_time.items():
            last[p] = max(last.get(p, t), t)
        return Produced(self.events + more.events, last)


def produce_batches(
    cfg: Config,
    topic: str,
    events: Iterable[dict[str, Any]],
    batch: int,
    partitions: int = 6,
    first: int = 0,
) -> Produced:
    """Send ``events`` in order as JSON arrays of ``batch`` events, message ``n`` to partition
    ``(first + n) % partitions``: the same events give the same partitions and offsets in
    fresh topics. ``first`` continues the round robin of an earlier call."""
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20})
    last_time: dict[int, float] = {}
    count = 0
    n = first
    chunk: list[dict[str, Any]] = []

    def send() -> None:
        partition = n % partitions
        while True:
            try:
                producer.produce(topic, orjson.dumps(chunk), partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
        last_time[partition] = max(last_time.get(partition, -1e18), chunk[-1]["timestamp"])

    for event in events:
        chunk.append(event)
        count += 1
        if len(chunk) == batch:
            send()
            n, chunk = n + 1, []
    if chunk:
        send()
    assert producer.flush(60) == 0
    return Produced(count, last_time)


class TopicTail:
    """Every record of a topic from the beginning, read incrementally by one consumer."""

    def __init__(self, cfg: Config, topic: str) -> None:
        self.consumer = Consumer(
            {
                **cfg.kafka.librdkafka(),
                "group.id": f"tail-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.message.max.bytes": 16_777_216,
            }
        )
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        self.consumer.assign(self.partitions)
        self.next = {p.partition: 0 for p in self.partitions}
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        """Read up to what the topic holds now; return every record read so far."""
        highs = {
            tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            for tp in self.partitions
        }
        deadline = time.monotonic() + 30
        while any(self.next[p] < h for p, h in highs.items()) and time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error() is None:
                    self.next[msg.partition()] = msg.offset() + 1
                    self.records.append(orjson.loads(msg.value()))
        return self.records

    def close(self) -> None:
        self.consumer.close()


def topic_size(cfg: Config, topic: str) -> int:
    """How many records ``topic`` holds now (high minus low watermark, summed)."""
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": f"size-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def read_topic(cfg: Config, topic: str) -> list[dict[str, Any]]:
    """Every record ``topic`` holds now, decoded (through :func:`consume_all`)."""
    size = topic_size(cfg, topic)
    records = [orjson.loads(m.value()) for m in consume_all(cfg, topic, size, 60)]
    assert len(records) == size, f"read {len(records)} of the {size} records of {topic}"
    return records


def worker_topics(cfg: Config) -> list[str]:
    """The topics the worker group reads: predictions, labels, and the worker's internal topics
    (named ``<app_id>-...``, e.g. its keyed topic; the configured output topics excepted)."""
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": f"list-{uuid.uuid4().hex}"})
    try:
        names = consumer.list_topics(timeout=10).topics
    finally:
        consumer.close()
    outputs = {cfg.topics.alerts, cfg.topics.incidents, cfg.topics.metrics, cfg.topics.deadletter}
    inputs = [cfg.topics.predictions, cfg.topics.labels]
    internal = sorted(
        t
        for t in names
        if t.startswith(f"{cfg.worker.app_id}-") and t not in outputs and t not in inputs
    )
    return inputs + internal


def uncommitted(cfg: Config, topics: Sequence[str] | None = None) -> dict[str, int]:
    """Records the worker group (``worker.app_id``) has not committed, by ``topic:partition``
    (only partitions with some; ``topic:missing`` -> -1 for a topic that does not exist yet), of
    ``topics`` or else of every topic the group reads (:func:`worker_topics`). Reads offsets,
    joins no group."""
    topics = worker_topics(cfg) if topics is None else topics
    consumer = Consumer(
        {**cfg.kafka.librdkafka(), "group.id": cfg.worker.app_id, "enable.auto.commit": False}
    )
    behind: dict[str, int] = {}
    try:
        tps = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is not None or not meta.partitions:
                behind[f"{topic}:missing"] = -1
            tps += [TopicPartition(topic, p) for p in meta.partitions]
        for tp in consumer.committed(tps, timeout=10) if tps else []:
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            done = tp.offset if tp.offset >= 0 else low
            if high > done:
                behind[f"{tp.topic}:{tp.partition}"] = high - done
        return behind
    finally:
        consumer.close()


def worker_partitions(cfg: Config) -> set[str]:
    """Every ``topic:partition`` of :func:`worker_topics`."""
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": f"list-{uuid.uuid4().hex}"})
    try:
        out = set()
        for topic in worker_topics(cfg):
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            out |= {f"{topic}:{p}" for p in meta.partitions}
        return out
    finally:
        consumer.close()


def group_members(cfg: Config) -> list[set[str]]:
    """The members of the worker group (``worker.app_id``), each as the ``topic:partition``
    names assigned to it; empty while the group is not stable."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    group = cfg.worker.app_id
    admin = AdminClient(cfg.kafka.librdkafka())
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    if desc.state != ConsumerGroupState.STABLE:
        return []
    return [
        {f"{tp.topic}:{tp.partition}" for tp in m.assignment.topic_partitions} for m in desc.members
    ]
