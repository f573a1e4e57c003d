"""Pipeline throughput: ``streamproc worker`` vs a limit loop, vs itself x2, vs a bare Faust agent.

Run: ``.venv/bin/python bench/pipeline_throughput.py [--size 100000] [--repeats 3]``

The workload is :mod:`streamproc.dev.synthetic`'s standard one (20 numeric + 3 categorical
features, segment dimensions country x device = 4 x 3, scores, a label for every prediction
arriving with a lognormal delay, in label-time order, on its own topic), seeded, generated and
produced as a stream (never held in memory) the way the SDK's ``PredictionLogger`` sends it:
each event to the partition of its ``prediction_id`` (murmur2), a shape's events of one
partition packed into messages keyed by their first id. ``--size`` counts events: predictions
+ labels, half each. Each message shape gets its own *source* topics, filled once. Then,
``--repeats`` times, interleaved, every path below runs over a copy of the same contents:

* 100-event messages (``--batch``): the **limit loop** (``bench/limit_loop.py``: batched
  confluent-kafka consume, the project's decoder, a pipelined Redis join, numpy folds into
  per-tick partial sketches of the same features x segments; its CPU measured by itself),
  **worker x1** and **worker x2** (``--workers``: processes of ``streamproc worker`` in one
  consumer group);
* 1-event messages: the **bare Faust** agent (``bench/faust_bare.py``: the worker's consumer
  settings, an agent that only counts) and **worker x1**.

Every pass gets its own empty topics, consumer group, Redis key prefix (the synthetic model's
baseline stored under it) and Faust data directory, and goes:

1. start the process(es) on the *empty* topics;
2. wait until the group has settled: stable, with the expected members, every partition of
   every topic it consumes assigned (the worker's internal topics included), and that
   assignment unchanged for ``--settle`` seconds (``AdminClient.describe_consumer_groups``);
   this is start-up, reported apart;
3. copy the source topics in (partition by partition, keys, values and timestamps kept), timed
   from the first copied message;
4. poll every process's ``/metrics`` until the sum over processes of
   ``streamproc_events_total{topic,outcome="accepted"}`` reaches what was copied, for both
   topics: that poll ends the measured interval (the limit loop ends its own; the bare agent
   counts messages); the joins and dead letters must match what was produced;
5. workers only: wait until the group's committed offsets reach the end of every topic it
   consumes (the internal keyed topic too), so work the ingestion handed on is finished: the
   interval *with drain*. CPU per event with drain is what the comparisons use; the workers'
   ``streamproc_aggregated_events_total{model}`` (events each process folded into partials of
   that model, once the worker exports it) is read here, else the share is unknown.

CPU is per process, user + system from ``/proc/<pid>/stat`` at the interval's ends (all
threads); Redis's from ``INFO cpu`` (its whole use, shared with anything else using it).

JSON goes to ``bench/out/pipeline_throughput-<run id>.json``; ``bench/run_all.py`` renders it.
Topics, consumer groups, Redis keys and Faust data directories are named ``bench-<run id>-*``
and removed (each pass's right after it). Kafka and Redis come from
``STREAMPROC_KAFKA_BOOTSTRAP``/``STREAMPROC_REDIS_URL``, else the local stack. Web ports of the
processes are below 32768 (Linux hands 32768-60999 to client connections). Nothing here
asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

# Sibling scripts, and streamproc from this tree (not whichever the editable install names).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest_throughput as ib  # a sibling script, not a package

from streamproc.baseline import BaselineStore, ReferenceProfile
from streamproc.config import Config
from streamproc.dev.stack import cache_dir
from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
from streamproc.kafka import topics
from streamproc.sdk.producer import default_partition
from streamproc.worker.metrics import scrape_path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
POLL_S = 0.05
DRAIN_POLL_S = 0.2
LIMIT, BARE = "limit loop", "bare Faust"
SINGLE, BATCH = "single", "batch"
ACCEPTED = "streamproc_events_total"
AGGREGATED = "streamproc_aggregated_events_total"
LATE = "streamproc_late_events_total"
BARE_METRIC = "streamproc_bench_messages_total"
ROLES = ("predictions", "labels")


def worker_path(n: int) -> str:
    return f"worker x{n}"


def shape_name(key: str, batch: int) -> str:
    return "1 event/msg" if key == SINGLE else f"{batch} events/msg"


@dataclass
class Pass:
    """One pass of one path over a copy of one shape's source topics."""

    path: str
    processes: int
    events: int = 0  # counted in the interval (the bare agent: messages)
    seconds: float | None = None  # first copied message -> last event counted
    events_per_s: float | None = None
    cpu_s: list[float] = field(default_factory=list)  # per process, over that interval
    drain_s: float | None = None  # first copied message -> every consumed topic committed
    cpu_s_drained: list[float] = field(default_factory=list)  # per process, to drained
    redis_cpu_s: float | None = None  # redis-server, to drained (counted; the limit loop's end)
    startup_s: float | None = None  # process start -> group settled
    copy_s: float | None = None  # how long the copy took
    aggregated: dict[str, list[float]] | None = None  # model -> per process; None: not exported
    late: int | None = None  # events the workers counted late (not folded in), if exported
    reread: int = 0  # events counted beyond the input (read twice)
    check: str = "ok"
    load_before: float | None = None

    def cpu_us_per_event(self, drained: bool = True) -> float | None:
        """CPU of all processes per event, with the drain (where measured) or without."""
        cpu = self.cpu_s_drained if drained and self.cpu_s_drained else self.cpu_s
        return 1e6 * sum(cpu) / self.events if cpu and self.events else None

    def drain_extra_s(self) -> float | None:
        """How long after the last event counted the group had committed everything."""
        return None if self.drain_s is None or self.seconds is None else self.drain_s - self.seconds

    def redis_us_per_event(self) -> float | None:
        """Redis's CPU per event (its whole use in the interval)."""
        if self.redis_cpu_s is None or not self.events:
            return None
        return 1e6 * self.redis_cpu_s / self.events

    def max_share(self) -> float | None:
        """The largest share of one model's folded events done by one process (None: unknown)."""
        if not self.aggregated:
            return None
        shares = [max(v) / sum(v) for v in self.aggregated.values() if sum(v) > 0]
        return max(shares) if shares else None


@dataclass
class Row:
    """A shape and a path, with every pass."""

    shape: str
    path: str
    processes: int
    runs: list[Pass] = field(default_factory=list)

    def median(self, get: Callable[[Pass], float | None]) -> float | None:
        values = [v for v in map(get, self.runs) if v is not None]
        return statistics.median(values) if values else None

    def span(self, get: Callable[[Pass], float | None]) -> tuple[float, float] | None:
        values = [v for v in map(get, self.runs) if v is not None]
        return (min(values), max(values)) if values else None


@dataclass(frozen=True)
class Source:
    """One shape's source topics and what they hold."""

    topics: dict[str, str]  # role -> source topic
    events: dict[str, int]  # role -> events
    messages: dict[str, int]  # role -> messages
    partitions: dict[str, dict[int, int]]  # role -> partition -> high watermark

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())


def spec() -> WorkloadSpec:
    """The benchmark's workload: the standard synthetic model, stationary."""
    return WorkloadSpec()


def counting(events: Iterator[dict[str, Any]], counter: list[int]) -> Iterator[dict[str, Any]]:
    """``events`` as they come, counted into ``counter[0]``."""
    for event in events:
        counter[0] += 1
        yield event


def messages_of(
    events: Iterator[dict[str, Any]], per_message: int, partitions: int
) -> Iterator[tuple[int, bytes, bytes]]:
    """(partition, key, value) of each message, as the SDK's ``PredictionLogger`` sends them:
    each event to the partition of its ``prediction_id`` (murmur2, as Kafka's Java client),
    ``per_message`` events of one partition as one JSON array keyed by its first id.

    >>> evs = [{"prediction_id": i} for i in "abcdef"]
    >>> [(p, k, v.count(b"prediction_id")) for p, k, v in messages_of(iter(evs), 2, 2)]
    [(0, b'a', 2), (0, b'c', 2), (1, b'd', 2)]
    """
    dumps = orjson.dumps
    pending: dict[int, list[tuple[bytes, bytes]]] = {}

    def message(p: int, batch: list[tuple[bytes, bytes]]) -> tuple[int, bytes, bytes]:
        if per_message == 1:
            return p, batch[0][0], batch[0][1]
        return p, batch[0][0], b"[" + b",".join(v for _, v in batch) + b"]"

    for event in events:
        key = str(event["prediction_id"]).encode()
        p = default_partition(key, partitions)
        batch = pending.setdefault(p, [])
        batch.append((key, dumps(event)))
        if len(batch) >= per_message:
            yield message(p, batch)
            pending[p] = []
    yield from (message(p, batch) for p, batch in sorted(pending.items()) if batch)


def produce(cfg: Config, topic: str, messages: Iterator[tuple[int, bytes, bytes]]) -> int:
    """Write ``messages`` to their partitions of ``topic``, wait for Kafka; return the count."""
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20, "message.max.bytes": 8_388_608})
    n = 0
    for partition, key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, partition)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not produce every message to {topic}")
    return n


def fill(cfg: Config, size: int, per_message: int, seed: int) -> Source:
    """Create ``cfg``'s topics and produce ``size // 2`` predictions and their labels."""
    topics.apply(cfg, topics.load_topics(cfg))
    work = Workload(spec(), size // 2, seed)
    names = {role: getattr(cfg.topics, role) for role in ROLES}
    streams = {"predictions": work.predictions(), "labels": work.labels()}
    events: dict[str, int] = {}
    messages: dict[str, int] = {}
    for role in ROLES:
        counted = [0]
        batches = messages_of(
            counting(streams[role], counted), per_message, len(watermarks(cfg, names[role]))
        )
        messages[role] = produce(cfg, names[role], batches)
        events[role] = counted[0]
    highs = {role: watermarks(cfg, names[role]) for role in ROLES}
    return Source(names, events, messages, highs)


def watermarks(cfg: Config, topic: str) -> dict[int, int]:
    """Partition -> high watermark of ``topic`` (no consumer group is joined)."""
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": "bench-watermarks"})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        for attempt in range(20):  # a topic just created may not have its leaders yet
            try:
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                    for p in meta.partitions
                }
            except KafkaException as exc:
                if attempt == 19 or exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


class Copy(threading.Thread):
    """Copies a :class:`Source` into ``cfg``'s input topics: partition for partition, with
    keys, values and timestamps. ``on_first()`` runs just before the first message is sent."""

    def __init__(self, cfg: Config, source: Source, on_first: Callable[[], None]) -> None:
        super().__init__(name="bench-copy", daemon=True)
        self.cfg, self.source, self.on_first = cfg, source, on_first
        self.error: BaseException | None = None
        self.seconds: float | None = None

    def run(self) -> None:
        try:
            self._copy()
        except BaseException as exc:  # reported by the pass
            self.error = exc

    def _copy(self) -> None:
        kafka = self.cfg.kafka.librdkafka()
        consumer = Consumer(
            {**kafka, "group.id": f"{self.cfg.worker.app_id}-copy", "enable.auto.commit": False,
             "fetch.message.max.bytes": 16 * 1024 * 1024}
        )  # fmt: skip
        producer = Producer({**kafka, "linger.ms": 5, "message.max.bytes": 8_388_608})
        target = {self.source.topics[r]: getattr(self.cfg.topics, r) for r in ROLES}
        consumer.assign(
            [
                TopicPartition(self.source.topics[role], p, OFFSET_BEGINNING)
                for role in ROLES
                for p, high in self.source.partitions[role].items()
                if high > 0
            ]
        )
        left = self.source.total_messages
        started = None
        deadline = time.monotonic() + 300
        try:
            while left > 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the copy read {left} message(s) too few in 300 s")
                msgs = consumer.consume(5000, 1.0)
                if msgs and started is None:
                    self.on_first()
                    started = time.perf_counter()
                for m in msgs:
                    if m.error() is not None:
                        continue
                    args = (target[m.topic()], m.value(), m.key(), m.partition())
                    while True:
                        try:
                            producer.produce(*args, timestamp=m.timestamp()[1])
                            break
                        except BufferError:
                            producer.poll(0.05)
                    left -= 1
                producer.poll(0)
            if producer.flush(60) != 0:
                raise RuntimeError("the copy could not deliver every message")
        finally:
            consumer.close()
        if started is not None:
            self.seconds = time.perf_counter() - started


def free_port() -> int:
    """A TCP port free on loopback now, below Linux's ephemeral range (32768-60999)."""
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def command(path: str, source: Source, timeout: float) -> list[str]:
    """The command line of one process of ``path``."""
    if path == LIMIT:
        return [
            sys.executable, str(BENCH / "limit_loop.py"),
            "--predictions", str(source.events["predictions"]),
            "--labels", str(source.events["labels"]), "--timeout", str(timeout),
        ]  # fmt: skip
    if path == BARE:
        return [sys.executable, str(BENCH / "faust_bare.py")]
    return [sys.executable, "-m", "streamproc", "worker"]


class Processes:
    """``n`` processes of one path, one consumer group, each with its web port and log."""

    def __init__(
        self, n: int, cfg: Config, cmd: list[str], env: dict[str, str], log_dir: Path
    ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.logs: list[Path] = []
        for i in range(n):
            port = free_port()
            log = log_dir / f"{cfg.worker.app_id}-{i}.log"
            self.logs.append(log)
            self.urls.append(f"http://127.0.0.1:{port}")
            full = ib.worker_env(cfg, port, env)
            # streamproc from this tree, whichever one the virtualenv's editable install names
            full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
            with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
                self.procs.append(
                    subprocess.Popen(
                        cmd, env=full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT
                    )
                )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def metrics(self, names: Sequence[str] = ()) -> list[str] | None:
        """Every process's ``/metrics`` text (only the samples ``names`` where given: the
        worker then renders only those), or None while one does not answer."""
        texts = []
        for url in self.urls:
            try:
                with urllib.request.urlopen(url + scrape_path(names), timeout=5) as r:
                    texts.append(r.read().decode())
            except OSError:
                return None
        return texts

    def cpu_s(self) -> list[float] | None:
        values = [ib.process_cpu_s(p.pid) for p in self.procs]
        return None if None in values else [v for v in values if v is not None]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            ib.stop(p)

    def tail(self) -> str:
        """The end of the first process's stderr (why it failed)."""
        text = self.logs[0].with_suffix(".err").read_text(errors="replace")
        return " ".join(text.strip().splitlines()[-3:])[-400:]


def settle(
    admin: AdminClient, group: str, n: int, inputs: Sequence[str], stable_s: float,
    deadline: float, alive: Callable[[], bool],
) -> set[tuple[str, int]] | None:  # fmt: skip
    """Wait until ``group`` is stable with ``n`` members holding partitions, every partition
    of every topic it consumes (``inputs`` among them) assigned, and the assignment unchanged
    for ``stable_s``; return the assigned partitions, or None at the deadline."""
    sizes: dict[str, int] = {}
    seen: frozenset[tuple[str, frozenset[tuple[str, int]]]] | None = None
    since = 0.0
    while time.monotonic() < deadline and alive():
        now = time.monotonic()
        members = assignment(admin, group)
        ok = members is not None and len(members) == n and all(tps for _, tps in members)
        if ok and members is not None:
            held = {tp for _, tps in members for tp in tps}
            for topic in {t for t, _ in held} | set(inputs):
                if topic not in sizes:
                    meta = admin.list_topics(topic, timeout=10).topics[topic]
                    sizes[topic] = len(meta.partitions)
            ok = set(inputs) <= {t for t, _ in held} and all(
                (t, p) in held for t in {t for t, _ in held} for p in range(sizes[t])
            )
        if not ok:
            seen = None
        elif members != seen:
            seen, since = members, now
        elif now - since >= stable_s:
            return {tp for _, tps in members or () for tp in tps}
        time.sleep(0.2)
    return None


def assignment(
    admin: AdminClient, group: str
) -> frozenset[tuple[str, frozenset[tuple[str, int]]]] | None:
    """(member, its partitions) of ``group`` while it is stable, else None."""
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except KafkaException:
        return None
    if desc.state != ConsumerGroupState.STABLE:
        return None
    return frozenset(
        (
            m.member_id,
            frozenset(
                (tp.topic, tp.partition)
                for tp in (m.assignment.topic_partitions if m.assignment else [])
            ),
        )
        for m in desc.members
    )


def drained(admin: AdminClient, probe: Consumer, group: str, held: set[tuple[str, int]]) -> bool:
    """Whether ``group`` has committed the end of every partition it holds."""
    try:
        fut = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=5
        )[group]
        committed = {(tp.topic, tp.partition): tp.offset for tp in fut.result().topic_partitions}
    except KafkaException:
        return False
    for topic, partition in held:
        high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)[1]
        if high > 0 and committed.get((topic, partition), -1) < high:
            return False
    return True


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", re.M)


def per_label(text: str, name: str, label: str) -> dict[str, float]:
    """Samples of ``name`` summed by the value of ``label``.

    >>> per_label('a_total{model="m"} 3.0\\na_total{model="n"} 1.0\\n', "a_total", "model")
    {'m': 3.0, 'n': 1.0}
    """
    out: dict[str, float] = {}
    for metric, labels, value in _SAMPLE.findall(text):
        if metric == name:
            key = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get(label, "")
            out[key] = out.get(key, 0.0) + float(value)
    return out


def counted(path: str, texts: Sequence[str]) -> dict[str, float]:
    """Per input topic, what the processes counted: accepted events, or the bare messages."""
    if path == BARE:
        return {r: sum(ib.metric_sum(t, BARE_METRIC, topic=r) for t in texts) for r in ROLES}
    return {
        r: sum(ib.metric_sum(t, ACCEPTED, topic=r, outcome="accepted") for t in texts)
        for r in ROLES
    }


class Measurement:
    """One pass: start the processes, let the group settle, copy in, count, drain, stop."""

    def __init__(
        self, path: str, n: int, cfg: Config, source: Source, args: argparse.Namespace
    ) -> None:
        self.path, self.n, self.cfg, self.source = path, n, cfg, source
        self.settle_s, self.settle_timeout = args.settle, args.settle_timeout
        self.timeout = args.timeout or max(300.0, source.total_events / 300)
        self.extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
        self.result = Pass(path, n, load_before=ib.load_average())
        self.first: dict[str, Any] = {}  # at the first copied message: time, CPU, Redis CPU

    def run(self, profile: bytes, log_dir: Path) -> Pass:
        cfg = self.cfg
        topics.apply(cfg, topics.load_topics(cfg))
        self.redis = redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password)
        BaselineStore(self.redis, cfg.redis.key_prefix).put(ReferenceProfile.from_bytes(profile))
        self.admin = AdminClient(cfg.kafka.librdkafka())
        self.probe = Consumer({**cfg.kafka.librdkafka(), "group.id": f"{cfg.worker.app_id}-probe"})
        cmd = command(self.path, self.source, self.timeout)
        started = time.perf_counter()
        self.procs = Processes(self.n, cfg, cmd, self.extra_env, log_dir)
        try:
            inputs = [cfg.topics.predictions, cfg.topics.labels]
            deadline = time.monotonic() + self.settle_timeout
            held = settle(
                self.admin, cfg.worker.app_id, self.n, inputs, self.settle_s, deadline,
                self.procs.alive,
            )  # fmt: skip
            if held is None:
                why = "exited" if not self.procs.alive() else "timeout"
                self.result.check = f"{why} before the group settled: {self.procs.tail()}"
                return self.result
            self.result.startup_s = time.perf_counter() - started
            copy = Copy(cfg, self.source, self.mark_first)
            copy.start()
            if self.path == LIMIT:
                self.limit_loop(copy)
            else:
                self.faust(copy, held)
            return self.result
        finally:
            self.procs.stop()
            self.probe.close()
            self.redis.close()

    def mark_first(self) -> None:
        """Called by the copy just before it sends its first message."""
        procs = self.procs
        self.first.update(t=time.perf_counter(), cpu=procs.cpu_s(), redis=self.redis_cpu())

    def redis_cpu(self) -> float:
        return ib.redis_cpu_s(self.redis)

    def limit_loop(self, copy: Copy) -> None:
        """The limit loop ends by itself and reports its own figures."""
        r = self.result
        try:
            self.procs.procs[0].wait(self.timeout)
        except subprocess.TimeoutExpired:
            r.check = "timeout"
            return
        if self.first:
            r.redis_cpu_s = self.redis_cpu() - self.first["redis"]
        copy.join(60)
        r.copy_s = copy.seconds
        try:
            own = orjson.loads(self.procs.logs[0].read_bytes().strip().splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            r.check = f"no result: {self.procs.tail()}"
            return
        r.events, r.seconds, r.events_per_s = own["events"], own["seconds"], own["events_per_s"]
        r.cpu_s = [own["cpu_s"]] if own["cpu_s"] is not None else []
        r.check = own["check"] if copy.error is None else f"copy failed: {copy.error}"

    def faust(self, copy: Copy, held: set[tuple[str, int]]) -> None:
        """Poll the processes until they counted everything, then (workers) until drained."""
        r, procs, source = self.result, self.procs, self.source
        want = source.messages if self.path == BARE else source.events
        texts: list[str] = []
        end: dict[str, Any] | None = None
        deadline = time.monotonic() + self.timeout
        # Polled 20 times a second: only the counter it needs (a full scrape costs a worker
        # ~1 ms of CPU), so that the poll adds little to what is measured.
        while time.monotonic() < deadline and procs.alive() and copy.error is None:
            polled = procs.metrics([BARE_METRIC if self.path == BARE else ACCEPTED])
            now = time.perf_counter()
            if polled is not None:
                texts = polled
                got = counted(self.path, texts)
                if self.first and all(got[role] >= want[role] for role in ROLES):
                    end = {"t": now, "cpu": procs.cpu_s(), "redis": self.redis_cpu()}
                    break
            time.sleep(POLL_S)
        copy.join(60)
        r.copy_s = copy.seconds
        got = counted(self.path, texts) if texts else dict.fromkeys(ROLES, 0.0)
        first = self.first
        if end is None or end["cpu"] is None or not first or first["cpu"] is None:
            why = "exited" if not procs.alive() else "timeout"
            if copy.error is not None:
                why = f"copy failed: {copy.error}"
            r.check = f"{why}: " + ", ".join(f"{k} {got[k]:.0f}/{want[k]}" for k in ROLES)
            return
        total = sum(got.values())
        r.events, r.reread = int(total), int(total - sum(want.values()))
        r.seconds = end["t"] - first["t"]
        r.events_per_s = total / r.seconds if r.seconds > 0 else None
        r.cpu_s = [b - a for a, b in zip(first["cpu"], end["cpu"], strict=True)]
        r.redis_cpu_s = end["redis"] - first["redis"]
        if self.path == BARE:
            return
        texts = procs.metrics() or texts
        joined = sum(ib.metric_sum(t, "streamproc_join_total", result="joined") for t in texts)
        dead = sum(ib.metric_sum(t, "streamproc_deadletter_total") for t in texts)
        if joined != source.events["labels"] or dead:
            r.check = f"mismatch: joined {joined:.0f}/{source.events['labels']}, dead {dead:.0f}"
        self.drain(held, deadline)
        final = procs.metrics() or texts
        if any(LATE in t for t in final):
            r.late = int(sum(ib.metric_sum(t, LATE) for t in final))
        per_process = [per_label(t, AGGREGATED, "model") for t in final]
        models = sorted({m for d in per_process for m in d})
        if models:
            r.aggregated = {m: [d.get(m, 0.0) for d in per_process] for m in models}

    def drain(self, held: set[tuple[str, int]], deadline: float) -> None:
        """Wait until the group committed the end of every partition it holds."""
        r, first = self.result, self.first
        while time.monotonic() < deadline and self.procs.alive():
            if drained(self.admin, self.probe, self.cfg.worker.app_id, held):
                now, cpu = time.perf_counter(), self.procs.cpu_s()
                if cpu is not None:
                    r.drain_s = now - first["t"]
                    r.cpu_s_drained = [b - a for a, b in zip(first["cpu"], cpu, strict=True)]
                    r.redis_cpu_s = self.redis_cpu() - first["redis"]
                return
            time.sleep(DRAIN_POLL_S)
        if r.check == "ok":
            r.check = "not drained: the group's committed offsets never reached the end"


def cleanup(
    cfg: Config, topic_prefix: str, keys: Sequence[str], dirs: str, groups: Sequence[str]
) -> None:
    """Delete the topics named ``topic_prefix*``, the Redis keys matching any of the glob
    patterns ``keys``, the Faust data directories matching ``dirs``, and the consumer groups
    ``groups``."""
    admin = AdminClient(cfg.kafka.librdkafka())
    ours = [t for t in admin.list_topics(timeout=30).topics if t.startswith(topic_prefix)]
    if ours:
        for fut in admin.delete_topics(ours, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result()
    if groups:
        with contextlib.suppress(KafkaException, ValueError):
            for fut in admin.delete_consumer_groups(list(groups), request_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    fut.result()
    client = redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password)
    try:
        ib.delete_keys(client, keys)
    finally:
        client.close()
    for path in (cache_dir() / "faust").glob(dirs):
        shutil.rmtree(path, ignore_errors=True)


def num(x: float | None, fmt: str) -> str:
    """``x`` formatted, small values with 2 significant digits, None as empty."""
    if x is None:
        return ""
    return format(x, fmt) if abs(x) >= 1 else f"{x:.2g}"


def rows_table(rows: Sequence[Row]) -> str:
    """The markdown table: one row per shape and path, medians over the passes."""
    lines = [
        "| shape | path | passes | events | wall s | events/s | min - max | CPU s per process "
        "| CPU µs/event | CPU µs/event with drain | drain + s | Redis CPU µs/event "
        "| late events | max share of a model's monitor work | start-up s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: |",
    ]
    for r in rows:
        rates = r.span(lambda p: p.events_per_s)
        span = f"{rates[0]:,.0f} - {rates[1]:,.0f}" if rates else "n/a"
        per_process = " + ".join(
            f"{statistics.median(v):.2f}"
            for v in zip(*[p.cpu_s_drained or p.cpu_s for p in r.runs if p.cpu_s], strict=False)
        )
        share = ""
        if r.path.startswith("worker"):
            s = r.median(lambda p: p.max_share())
            share = "unknown" if s is None else f"{s:.2f}"
        bad = [p.check for p in r.runs if p.check != "ok"]
        path = r.path + (f" ({'; '.join(bad)})" if bad else "")
        lines.append(
            f"| {r.shape} | {path} | {len(r.runs)} | {num(r.median(lambda p: p.events), ',.0f')} "
            f"| {num(r.median(lambda p: p.seconds), '.2f')} "
            f"| {num(r.median(lambda p: p.events_per_s), ',.0f') or 'n/a'} | {span} "
            f"| {per_process} "
            f"| {num(r.median(lambda p: p.cpu_us_per_event(drained=False)), ',.1f')} "
            f"| {num(r.median(lambda p: p.cpu_us_per_event()), ',.1f')} "
            f"| {num(r.median(lambda p: p.drain_extra_s()), '.2f')} "
            f"| {num(r.median(lambda p: p.redis_us_per_event()), ',.1f')} "
            f"| {num(r.median(lambda p: p.late), ',.0f')} "
            f"| {share} | {num(r.median(lambda p: p.startup_s), '.1f')} |"
        )
    return "\n".join(lines)


@dataclass
class Comparison:
    """One acceptance figure: a ratio of two paths' medians, and its per-pass range."""

    name: str
    figure: str
    value: float | None
    span: tuple[float, float] | None
    note: str


def ratio(
    a: Row | None, b: Row | None, get: Callable[[Pass], float | None]
) -> tuple[float | None, tuple[float, float] | None]:
    """``a``'s median over ``b``'s, and the range of the pass-by-pass ratios."""
    if a is None or b is None:
        return None, None
    ma, mb = a.median(get), b.median(get)
    pairs = [
        x / y
        for x, y in ((get(p), get(q)) for p, q in zip(a.runs, b.runs, strict=False))
        if x and y
    ]
    return (ma / mb if ma and mb else None), ((min(pairs), max(pairs)) if pairs else None)


def comparisons(rows: Sequence[Row], batch: int, tolerance: float = 0.15) -> list[Comparison]:
    """The issue's three comparisons (A, B, C) from the rows of one run."""
    by = {(r.shape, r.path): r for r in rows}
    batched, single = shape_name(BATCH, batch), shape_name(SINGLE, batch)
    w1, w2 = worker_path(1), worker_path(2)
    cpu = Pass.cpu_us_per_event
    out = []
    value, span = ratio(by.get((batched, w1)), by.get((batched, LIMIT)), cpu)
    out.append(Comparison(
        "A", f"{batched}: worker x1 / limit loop, CPU µs per event", value, span,
        "the worker's CPU with drain; the limit loop's as it measures it",
    ))  # fmt: skip
    value, span = ratio(by.get((batched, w2)), by.get((batched, w1)), cpu)
    verdict = "" if value is None else (
        f"within {tolerance:.0%}" if value <= 1 + tolerance else f"more than {tolerance:.0%} over"
    )  # fmt: skip
    out.append(Comparison(
        "B", f"{batched}: worker x2 / worker x1, CPU µs per event (of the group)", value, span,
        verdict,
    ))  # fmt: skip
    row2 = by.get((batched, w2))
    share = row2.median(Pass.max_share) if row2 else None
    out.append(Comparison(
        "B", f"{batched}, worker x2: largest share of one model's monitor work in one process",
        share, row2.span(Pass.max_share) if row2 else None,
        f"unknown: the workers do not export {AGGREGATED}{{model}}" if share is None
        else "1.0: one process did all of it; 0.5: an even split",
    ))  # fmt: skip
    value, span = ratio(by.get((single, w1)), by.get((single, BARE)), lambda p: p.events_per_s)
    out.append(Comparison(
        "C", f"{single}: worker x1 events/s / bare Faust messages/s", value, span,
        "both timed from the first copied message to the last one counted",
    ))  # fmt: skip
    value, span = ratio(by.get((single, w1)), by.get((single, BARE)), cpu)
    out.append(Comparison(
        "C", f"{single}: worker x1 / bare Faust, CPU µs per event (message)", value, span,
        "what the worker spends beyond Faust's per-message path",
    ))  # fmt: skip
    return out


def comparisons_table(items: Sequence[Comparison]) -> str:
    lines = [
        "| | comparison | median | per pass, min - max | note |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for c in items:
        value = "unknown" if c.value is None else f"{c.value:.3f}"
        span = "" if c.span is None else f"{c.span[0]:.3f} - {c.span[1]:.3f}"
        lines.append(f"| {c.name} | {c.figure} | {value} | {span} | {c.note} |")
    return "\n".join(lines)


def rows_of(result: dict[str, Any]) -> list[Row]:
    """The rows of a result document (JSON) as objects."""
    return [
        Row(r["shape"], r["path"], r["processes"], [Pass(**p) for p in r["runs"]])
        for r in result["results"]
    ]


def markdown(result: dict[str, Any]) -> str:
    """The result document as markdown (used by ``bench/run_all.py``)."""
    rows = rows_of(result)
    head = (
        f"{result['events']:,} events per shape ({result['predictions']:,} predictions, "
        f"{result['labels']:,} labels), {result['repeats']} interleaved pass(es) per shape and "
        "path; medians (min - max) over the passes. Each pass: its processes started on empty "
        f"topics, the group settled ({result['settle_s']:g} s with every partition assigned), "
        "then the input copied in; wall time and CPU from the first copied message to the last "
        "event counted (every event: accepted counts summed over the processes), and for "
        "workers also to the moment the group had committed the end of every topic it "
        "consumes (with drain)."
    )
    reread = [p for row in rows for p in row.runs if p.reread]
    if reread:
        head += (
            f" In {len(reread)} pass(es) {sum(p.reread for p in reread):,} events were counted "
            "twice (read again)."
        )
    return "\n\n".join(
        [head, rows_table(rows), comparisons_table(comparisons(rows, result["batch"]))]
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``run`` reads (shared with ``bench/run_all.py``)."""
    p.add_argument("--size", type=int, default=100_000, help="events per shape (100000)")
    p.add_argument("--repeats", type=int, default=3, help="passes per shape and path (3)")
    p.add_argument("--batch", type=int, default=100, help="events per batched message (100)")
    p.add_argument("--workers", default="1,2", help="worker counts on batched messages (1,2)")
    p.add_argument("--shapes", default="batch,single", help="batch, single or both")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--settle", type=float, default=3.0, help="assignment stable for, s (3)")
    p.add_argument("--settle-timeout", type=float, default=120.0, help="for the group, s (120)")
    p.add_argument("--timeout", type=float, default=None, help="per pass, s (from --size)")
    p.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for every process (repeatable)",
    )  # fmt: skip


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(shape key, path, processes) in the order each repeat runs them."""
    shapes = [s for s in str(args.shapes).split(",") if s]
    if not shapes or set(shapes) - {BATCH, SINGLE}:
        raise ValueError("--shapes takes batch, single or both")
    counts = [int(x) for x in str(args.workers).split(",") if x]
    out: list[tuple[str, str, int]] = []
    if BATCH in shapes:
        out += [(BATCH, LIMIT, 1)] + [(BATCH, worker_path(n), n) for n in counts]
    if SINGLE in shapes:
        out += [(SINGLE, BARE, 1), (SINGLE, worker_path(1), 1)]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the source topics, run the interleaved passes, clean up; the result document."""
    if args.size < 20 or args.repeats < 1 or args.batch < 2:
        raise ValueError("--size must be >= 20, --repeats >= 1, --batch >= 2")
    steps = plan(args)
    kafka, redis_url, stack = ib.endpoints(True)
    run_id = uuid.uuid4().hex[:8]
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-{run_id}-"))
    groups: list[str] = []
    rows: dict[tuple[str, str], Row] = {}
    sources: dict[str, Source] = {}
    print(
        f"pipeline run {run_id}: {args.size:,} events per shape, {args.repeats} repeat(s), "
        f"Kafka {kafka}, Redis {redis_url}, logs in {log_dir}",
        file=sys.stderr,
    )
    began = time.perf_counter()
    try:
        profile = reference_profile(spec(), 30_000).to_bytes()
        for key in dict.fromkeys(k for k, _, _ in steps):
            cfg = ib.bench_config(kafka, redis_url, f"bench-{run_id}-{key}-src")
            sources[key] = fill(cfg, args.size, 1 if key == SINGLE else args.batch, args.seed)
        for key, path, n in steps:
            rows[(key, path)] = Row(shape_name(key, args.batch), path, n)
        print(f"  produced in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        for r in range(args.repeats):
            for key, path, n in steps:
                name = f"bench-{run_id}-{key}-{path.replace(' ', '')}-p{r}"
                groups.append(name)
                cfg = ib.bench_config(kafka, redis_url, name)
                m = Measurement(path, n, cfg, sources[key], args).run(profile, log_dir)
                # (the join's keys are hash-tagged: "{<name>:j0}:...")
                keys = [f"{name}:*", f"{{{name}:*", f"{{{name}}}*"]
                cleanup(cfg, f"{name}-", keys, name, [name])
                rows[(key, path)].runs.append(m)
                progress(key, r, m)
    finally:
        prefix = f"bench-{run_id}-"
        cleanup(
            ib.bench_config(kafka, redis_url, prefix),
            prefix, [f"{prefix}*", f"{{{prefix}*"], f"{prefix}*", groups,
        )  # fmt: skip
        if stack is not None:
            stack.down()
    ordered = list(rows.values())
    failed = any(p.check != "ok" for row in ordered for p in row.runs)
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    first = sources[steps[0][0]]
    return {
        "run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.perf_counter() - began,
        "events": first.total_events,
        "predictions": first.events["predictions"],
        "labels": first.events["labels"],
        "repeats": args.repeats,
        "batch": args.batch,
        "settle_s": args.settle,
        "worker_env": dict(kv.split("=", 1) for kv in args.worker_env),
        "failed": failed,
        "logs": None if not failed else str(log_dir),
        "results": [
            {
                "shape": row.shape,
                "path": row.path,
                "processes": row.processes,
                "median_events_per_s": row.median(lambda p: p.events_per_s),
                "median_cpu_us_per_event": row.median(Pass.cpu_us_per_event),
                "runs": [asdict(p) for p in row.runs],
            }
            for row in ordered
        ],
        "comparisons": [asdict(c) for c in comparisons(ordered, args.batch)],
    }


def progress(key: str, r: int, m: Pass) -> None:
    rate = "n/a" if m.events_per_s is None else f"{m.events_per_s:,.0f}"
    cpu = m.cpu_us_per_event()
    print(
        f"  {key:<6} {m.path:<11} pass {r + 1}: {m.events:,} events, {rate} ev/s"
        + ("" if cpu is None else f", CPU {cpu:.1f} µs/event")
        + ("" if m.startup_s is None else f", start-up {m.startup_s:.1f} s")
        + (
            ""
            if m.drain_s is None or m.seconds is None
            else f", drain +{m.drain_s - m.seconds:.2f} s"
        )
        + f", load {m.load_before or 0:.2f}, {m.check}",
        file=sys.stderr,
    )


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit``, so a stopped run still stops the processes it
    started and deletes what it created (the ``finally`` blocks run)."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the tables, write the JSON; 1 if any pass failed its check."""
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(p)
    p.add_argument("--out", type=Path, default=BENCH / "out")
    args = p.parse_args(argv)
    try:
        result = run(args)
    except ValueError as exc:
        p.error(str(exc))
    print(markdown(result))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"pipeline_throughput-{result['run_id']}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {out}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
