"""Ingest throughput: the ``streamproc worker`` against the consume limit, on the same topics.

Run: ``.venv/bin/python bench/ingest_throughput.py [--events 100000] [--repeats 3]``

For each message shape (one event per message, JSON arrays of 100 and of 500 events) the
script fills its own freshly created topics once, then, ``--repeats`` times and on the same
topic contents, measures:

* **consume limit**: a bare confluent-kafka consumer that decodes every message with orjson;
  events/s from the first message received to the last event decoded;
* **streamproc worker**: a real ``streamproc worker`` subprocess (Faust ingest, Redis join,
  dead-letter producer) with a fresh consumer group and Redis key prefix; events/s between the
  first and the last change of ``streamproc_events_total`` seen by polling its ``/metrics``
  every 50 ms (so start-up is excluded). After the last event the worker's join and
  dead-letter counters are checked against what was produced (column ``check``).

The workload: ``--events`` events per shape, of which ``--bad-fraction`` are predictions that
fail the schema (dead-lettered), the rest predictions and labels for ``--label-fraction`` of
them (shuffled, so some labels wait for their prediction). It prints a markdown table (median,
min-max, spread = (max - min) / median, worker/limit = ratio of the medians, and the CPU the
worker process and redis-server spent per event, which noise from other jobs moves less than
events/s) and writes every pass to ``bench/out/ingest_throughput-<run id>.json``.

It uses ``STREAMPROC_KAFKA_BOOTSTRAP``/``STREAMPROC_REDIS_URL`` when both are set, otherwise
the local stack (``streamproc stack up``; reused when already running, and stopped at the end
only if this run started it, unless ``--keep-stack``). Topics are named ``bench-<run id>-*``
and deleted at the end, with the consumer groups and the Redis keys of the run. Worker
settings can be varied with ``--worker-env STREAMPROC_WORKER_BATCH_SIZE=500`` (repeatable).
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
import redis
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from streamproc.config import Config, load_config
from streamproc.dev.stack import Stack, cache_dir
from streamproc.kafka import topics

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.05
LIMIT = "consume limit"
WORKER = "streamproc worker"


@dataclass(frozen=True)
class Shape:
    """How events are packed into Kafka messages."""

    name: str
    per_message: int  # 1 = a bare event object; n > 1 = JSON arrays of up to n events


SHAPES = {
    "single": Shape("1 event/msg", 1),
    "batch100": Shape("100 events/msg", 100),
    "batch500": Shape("500 events/msg", 500),
}


@dataclass(frozen=True)
class Workload:
    """The events of one run; the same for every shape, only packed differently."""

    predictions: list[bytes]
    labels: list[bytes]
    n_bad: int
    n_joined: int

    @property
    def events(self) -> int:
        return len(self.predictions) + len(self.labels)


@dataclass
class Measurement:
    """One timed pass over a shape's topics."""

    events_per_s: float | None
    seconds: float | None
    events: int
    check: str = "ok"
    worker_cpu_us_per_event: float | None = None  # the worker process, all threads
    redis_cpu_us_per_event: float | None = None  # redis-server, whatever else uses it too
    load_before: float | None = None  # 1-minute load average when the pass started
    startup_s: float | None = None  # worker: from process start to its first event counted


@dataclass
class Row:
    """One line of the table: a shape and a path, with every pass measured."""

    shape: str
    path: str
    runs: list[Measurement] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [m.events_per_s for m in self.runs if m.events_per_s is not None]

    def median(self) -> float | None:
        rates = self.rates()
        return statistics.median(rates) if rates else None

    def median_of(self, attr: str) -> float | None:
        values = [getattr(m, attr) for m in self.runs if getattr(m, attr) is not None]
        return statistics.median(values) if values else None


def make_workload(n_events: int, label_fraction: float, bad_fraction: float, seed: int) -> Workload:
    """Encoded prediction and label events: ``n_events`` in all, shuffled with ``seed``.

    >>> w = make_workload(1000, 0.8, 0.01, seed=1)
    >>> (w.events, w.n_bad, len(w.labels) == w.n_joined)
    (1000, 10, True)
    """
    rng = random.Random(seed)
    n_bad = round(n_events * bad_fraction)
    good = n_events - n_bad
    n_pred = round(good / (1 + label_fraction))
    n_label = good - n_pred
    preds = [
        orjson.dumps(
            {
                "prediction_id": f"p{i}",
                "model_id": "m",
                "model_version": "1",
                "timestamp": 1_700_000_000 + i,
                "features": {"x": i % 7, "plan": "a" if i % 2 else "b"},
                "prediction": (i % 10) / 10,
                "segments": {"country": "DE" if i % 3 else "FR"},
            }
        )
        for i in range(n_pred)
    ]
    # Valid JSON that fails the schema (no model_id): dead-lettered, one event each.
    preds += [orjson.dumps({"prediction_id": f"bad{i}", "prediction": 1}) for i in range(n_bad)]
    rng.shuffle(preds)
    labelled = rng.sample(range(n_pred), n_label)
    labels = [
        orjson.dumps({"prediction_id": f"p{i}", "timestamp": 1_700_000_500 + i, "label": i % 2})
        for i in labelled
    ]
    return Workload(preds, labels, n_bad, n_label)


def pack(events: Sequence[bytes], per_message: int) -> Iterator[bytes]:
    """Message values: each event alone, or JSON arrays of ``per_message`` events.

    >>> list(pack([b'{"a":1}', b'{"a":2}', b'{"a":3}'], 2))
    [b'[{"a":1},{"a":2}]', b'[{"a":3}]']
    """
    if per_message == 1:
        yield from events
        return
    for i in range(0, len(events), per_message):
        yield b"[" + b",".join(events[i : i + per_message]) + b"]"


def produce(cfg: Config, topic: str, values: Iterator[bytes]) -> int:
    """Write ``values`` to ``topic`` and wait for every acknowledgement; return the count."""
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20, "message.max.bytes": 8_388_608})
    n = 0
    for value in values:
        while True:
            try:
                producer.produce(topic, value=value)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not produce every message to {topic}")
    return n


def bench_config(kafka: str, redis_url: str, name: str) -> Config:
    """A configuration whose topics, consumer group and Redis prefix are all named ``name``."""
    env = {
        "STREAMPROC_KAFKA_BOOTSTRAP": kafka,
        "STREAMPROC_REDIS_URL": redis_url,
        "STREAMPROC_REDIS_KEY_PREFIX": name,
        "STREAMPROC_WORKER_APP_ID": name,
    }
    for role in topics.ROLES:
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = f"{name}-{role}"
    return load_config(env=env)


def measure_limit(cfg: Config, expected: int, group: str, timeout: float) -> Measurement:
    """A bare confluent-kafka consumer decoding every message of both input topics."""
    consumer = Consumer(
        {
            **cfg.kafka.librdkafka(),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 16_777_216,
        }
    )
    consumer.subscribe([cfg.topics.predictions, cfg.topics.labels])
    loads = orjson.loads
    load = load_average()
    seen = 0
    first: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while seen < expected and time.monotonic() < deadline:
            msgs = consumer.consume(10_000, 0.5)
            if msgs and first is None:
                first = time.perf_counter()
            for msg in msgs:
                if msg.error() is not None:
                    continue
                doc = loads(msg.value())
                seen += len(doc) if isinstance(doc, list) else 1
        last = time.perf_counter()
    finally:
        consumer.close()
    if seen < expected or first is None:
        return Measurement(None, None, seen, f"timeout: {seen}/{expected} events", load_before=load)
    seconds = last - first
    rate = expected / seconds if seconds > 0 else None
    return Measurement(rate, seconds, expected, load_before=load)


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", re.M)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``.

    >>> text = 'x_total{a="1",b="2"} 3.0\\nx_total{a="2",b="2"} 4.0\\ny 1.0\\n'
    >>> metric_sum(text, "x_total", b="2"), metric_sum(text, "x_total", a="1")
    (7.0, 3.0)
    """
    total = 0.0
    for metric, raw_labels, value in _SAMPLE.findall(text):
        if metric != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def free_port() -> int:
    """A TCP port free on loopback right now (for the worker's web server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(cfg: Config, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The environment that points a worker at ``cfg``'s servers, topics and identity."""
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
            "STREAMPROC_WORKER_WEB_PORT": str(port),
        }
    )
    for role in topics.ROLES:
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = getattr(cfg.topics, role)
    env.update(extra)
    return env


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds redis-server has used since it started (``INFO cpu``)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def load_average() -> float | None:
    """The machine's 1-minute load average, where the platform has one."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measure_worker(
    cfg: Config, work: Workload, extra_env: dict[str, str], timeout: float, log_dir: Path
) -> Measurement:
    """Run ``streamproc worker`` until it counted every event; time first to last event."""
    port = free_port()
    log_path = log_dir / f"{cfg.worker.app_id}.log"
    url = f"http://127.0.0.1:{port}/metrics"
    expected = work.events
    load = load_average()
    rclient = redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password)
    with open(log_path, "wb") as log, contextlib.closing(rclient):
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "worker"],
            env=worker_env(cfg, port, extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            first: tuple[float, float, float | None, float] | None = None
            cpu_end: float | None = None
            redis_end = 0.0
            last: float | None = None
            text = ""
            count = 0.0
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        text = r.read().decode()
                except OSError:
                    time.sleep(POLL_S)
                    continue
                now = time.perf_counter()
                count = metric_sum(text, "streamproc_events_total")
                if count > 0 and first is None:
                    first = (now, count, process_cpu_s(proc.pid), redis_cpu_s(rclient))
                if count >= expected:
                    last = now
                    cpu_end, redis_end = process_cpu_s(proc.pid), redis_cpu_s(rclient)
                    break
                time.sleep(POLL_S)
            if last is None or first is None:
                why = "exited" if proc.poll() is not None else "timeout"
                return Measurement(
                    None, None, int(count), f"{why}: {count:.0f}/{expected}", load_before=load
                )
            joined = metric_sum(text, "streamproc_join_total", result="joined")
            dead = metric_sum(text, "streamproc_deadletter_total")
            check = "ok"
            if joined != work.n_joined or dead != work.n_bad or count != expected:
                check = (
                    f"mismatch: joined {joined:.0f}/{work.n_joined}, "
                    f"dead letters {dead:.0f}/{work.n_bad}, events {count:.0f}/{expected}"
                )
            seconds = last - first[0]
            counted = expected - first[1]
            rate = counted / seconds if seconds > 0 else None
            cpu = None
            if counted > 0 and cpu_end is not None and first[2] is not None:
                cpu = 1e6 * (cpu_end - first[2]) / counted
            redis_us = 1e6 * (redis_end - first[3]) / counted if counted > 0 else None
            return Measurement(
                rate, seconds, expected, check, cpu, redis_us, load, first[0] - started
            )
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker, and SIGKILL it if it is not gone after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cleanup(cfg: Config, run_id: str, groups: list[str]) -> None:
    """Delete the run's topics (the worker's own too), consumer groups, Redis keys and the
    Faust data directories of its workers."""
    prefix = f"bench-{run_id}-"
    admin = AdminClient(cfg.kafka.librdkafka())
    ours = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if ours:
        for fut in admin.delete_topics(ours, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result()
    if groups:
        with contextlib.suppress(KafkaException, ValueError):
            for fut in admin.delete_consumer_groups(groups, request_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    fut.result()
    client = redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password)
    try:
        delete_keys(client, [f"{prefix}*", f"{{{prefix}*"])
    finally:
        client.close()
    for path in (cache_dir() / "faust").glob(f"{prefix}*"):
        shutil.rmtree(path, ignore_errors=True)


def delete_keys(client: redis.Redis, patterns: Sequence[str]) -> int:
    """Unlink every key matching one of the glob ``patterns``; return how many. A run's keys
    under a prefix ``P`` are ``P*`` and, hash-tagged, ``{P*`` (the join's ``{P:jS}:...``
    among them): both must be named, or a run leaves its join state behind."""
    n = 0
    batch: list[bytes] = []
    for pattern in patterns:
        for key in client.scan_iter(pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                n += client.unlink(*batch)
                batch.clear()
    if batch:
        n += client.unlink(*batch)
    return n


def fmt_rate(x: float | None) -> str:
    """``12,345`` or ``n/a``."""
    return "n/a" if x is None else f"{x:,.0f}"


def table(rows: list[Row], events: int) -> str:
    """The markdown report: one row per shape and path."""
    lines = [
        "| shape | path | events | runs | events/s (median) | min - max | spread | worker/limit "
        "| worker CPU µs/event | Redis CPU µs/event |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    limits = {r.shape: r.median() for r in rows if r.path == LIMIT}

    def us(x: float | None) -> str:
        return "" if x is None else f"{x:,.1f}"

    for r in rows:
        rates = r.rates()
        med = r.median()
        span = f"{fmt_rate(min(rates))} - {fmt_rate(max(rates))}" if rates else "n/a"
        spread = f"{(max(rates) - min(rates)) / med:.0%}" if rates and med else "n/a"
        ratio = ""
        if r.path == WORKER:
            limit = limits.get(r.shape)
            ratio = f"{med / limit:.3f}" if med and limit else "n/a"
        bad = [m.check for m in r.runs if m.check != "ok"]
        path = r.path + (f" ({'; '.join(bad)})" if bad else "")
        lines.append(
            f"| {r.shape} | {path} | {events:,} | {len(r.runs)} | {fmt_rate(med)} | {span} "
            f"| {spread} | {ratio} | {us(r.median_of('worker_cpu_us_per_event'))} "
            f"| {us(r.median_of('redis_cpu_us_per_event'))} |"
        )
    return "\n".join(lines)


def environment(extra_env: dict[str, str]) -> dict[str, Any]:
    """What the figures depend on: interpreter, machine, commit, library versions."""

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        commit = described.stdout.strip() or None
    except OSError:
        commit = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": commit,
        "worker_env": extra_env,
        **{
            dist: version(dist)
            for dist in (
                "faust-streaming",
                "aiokafka",
                "confluent-kafka",
                "redis",
                "hiredis",
                "uvloop",
            )
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--events", type=int, default=100_000, help="events per shape (100000)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per shape and path (3)")
    p.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}"
    )
    p.add_argument("--label-fraction", type=float, default=0.8)
    p.add_argument("--bad-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=900.0, help="per timed pass, seconds")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the worker (repeatable)",
    )
    p.add_argument("--keep-stack", action="store_true", help="leave a stack we started running")
    args = p.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    if args.events < 10 or args.repeats < 1:
        p.error("--events must be >= 10 and --repeats >= 1")
    if not (0 <= args.label_fraction <= 1 and 0 <= args.bad_fraction < 1):
        p.error("--label-fraction must be in [0, 1] and --bad-fraction in [0, 1)")
    return args


def endpoints(keep_stack: bool) -> tuple[str, str, Stack | None]:
    """Kafka and Redis from the environment, else the local stack; and the stack to stop."""
    kafka = os.environ.get("STREAMPROC_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("STREAMPROC_REDIS_URL")
    if kafka and redis_url:
        return kafka, redis_url, None
    stack = Stack()
    already = stack.started_by_us() or (stack.kafka.answers() and stack.redis.answers())
    stack.up()
    return stack.bootstrap, stack.redis_url, None if already or keep_stack else stack


def with_identity(cfg: Config, name: str) -> Config:
    """``cfg`` (same topics) with its own consumer group and Redis key prefix."""
    return msgspec.structs.replace(
        cfg,
        worker=msgspec.structs.replace(cfg.worker, app_id=name),
        redis=msgspec.structs.replace(cfg.redis, key_prefix=name),
    )


def progress(key: str, path: str, r: int, m: Measurement) -> None:
    cpu = m.worker_cpu_us_per_event
    print(
        f"  {key:<9} {path:<18} pass {r + 1}: {fmt_rate(m.events_per_s)} ev/s"
        + ("" if cpu is None else f", worker CPU {cpu:.1f} µs/event")
        + ("" if m.startup_s is None else f", start-up {m.startup_s:.1f} s")
        + f", load {m.load_before or 0:.2f}, {m.check}",
        file=sys.stderr,
    )


def report(args: argparse.Namespace, run_id: str, work: Workload, rows: list[Row]) -> Path:
    """Write every pass as JSON; return the file."""
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"ingest_throughput-{run_id}.json"
    doc = {
        "run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "events": work.events,
        "repeats": args.repeats,
        "label_fraction": args.label_fraction,
        "bad_fraction": args.bad_fraction,
        "environment": environment(dict(kv.split("=", 1) for kv in args.worker_env)),
        "results": [
            {
                "shape": row.shape,
                "path": row.path,
                "median_events_per_s": row.median(),
                "median_worker_cpu_us_per_event": row.median_of("worker_cpu_us_per_event"),
                "median_redis_cpu_us_per_event": row.median_of("redis_cpu_us_per_event"),
                "runs": [asdict(m) for m in row.runs],
            }
            for row in rows
        ],
    }
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 1 if any pass failed its check."""
    args = parse_args(argv)
    extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
    keys = args.shapes.split(",")
    kafka, redis_url, stack = endpoints(args.keep_stack)
    run_id = uuid.uuid4().hex[:8]
    work = make_workload(args.events, args.label_fraction, args.bad_fraction, args.seed)
    groups: list[str] = []
    rows: dict[tuple[str, str], Row] = {}
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-{run_id}-"))
    print(
        f"run {run_id}: {work.events:,} events per shape, {args.repeats} repeat(s), "
        f"Kafka {kafka}, Redis {redis_url}, worker logs in {log_dir}",
        file=sys.stderr,
    )
    try:
        shape_cfg: dict[str, Config] = {}
        for key in keys:
            cfg = bench_config(kafka, redis_url, f"bench-{run_id}-{key}")
            topics.apply(cfg, topics.load_topics(cfg))
            per_message = SHAPES[key].per_message
            produce(cfg, cfg.topics.predictions, pack(work.predictions, per_message))
            produce(cfg, cfg.topics.labels, pack(work.labels, per_message))
            shape_cfg[key] = cfg
            rows[(key, LIMIT)] = Row(SHAPES[key].name, LIMIT)
            rows[(key, WORKER)] = Row(SHAPES[key].name, WORKER)
        # Interleaved, so that a noisy minute on the machine hits every shape and path alike.
        for r in range(args.repeats):
            for key, cfg in shape_cfg.items():
                group = f"bench-{run_id}-{key}-limit-{r}"
                groups.append(group)
                m = measure_limit(cfg, work.events, group, args.timeout)
                rows[(key, LIMIT)].runs.append(m)
                progress(key, LIMIT, r, m)
                name = f"bench-{run_id}-{key}-w{r}"
                groups.append(name)
                m = measure_worker(with_identity(cfg, name), work, extra_env, args.timeout, log_dir)
                rows[(key, WORKER)].runs.append(m)
                progress(key, WORKER, r, m)
    finally:
        cleanup(bench_config(kafka, redis_url, f"bench-{run_id}"), run_id, groups)
        if stack is not None:
            stack.down()
    ordered = list(rows.values())
    print(table(ordered, work.events))
    print(f"\nwrote {report(args, run_id, work, ordered)}", file=sys.stderr)
    failed = any(m.check != "ok" for row in ordered for m in row.runs)
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
