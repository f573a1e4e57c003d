"""Pipeline throughput: the whole ``streamproc worker`` (1 and 2 of them) against the consume limit.

Run: ``.venv/bin/python bench/pipeline_throughput.py [--size 100000] [--repeats 3]``

The workload is :mod:`streamproc.dev.synthetic`'s standard one (20 numeric + 3 categorical
features, segment dimensions country x device = 4 x 3, scores, a label for every prediction
arriving with a lognormal delay, in label-time order, on its own topic), seeded, generated and
produced as a stream (never held in memory), so ``--size`` can go from 100k to 5M events.
``--size`` counts events on the topics: predictions + labels, half each. Each message shape
(one event per message; JSON arrays of ``--batch`` events) gets its own topics, filled once.
Then, ``--repeats`` times, interleaved shape by shape on the same topic contents:

* **consume limit**: a bare confluent-kafka consumer, orjson-decoding every message
  (``bench/ingest_throughput.py``'s ``measure_limit``);
* **worker x1**, **worker x2**: 1 or 2 ``streamproc worker`` processes in one consumer group,
  with a fresh group, Redis prefix and internal topic, and the synthetic model's baseline
  stored first: ingest, dead letters, the Redis join, the keyed observations topic, the
  monitors (windows, statistics, detectors, alerts, checkpoints) and ``/metrics``. Timed
  from the moment the consumer group is stable with every worker holding partitions (polled
  every 50 ms with the admin API, so process start and group join are start-up, shown apart;
  with 2 workers so is the rebalance when the second joins) to the moment the model's monitor
  checkpoint in Redis says it has folded in the last message of the observations topic, after
  every prediction and label was counted (``/metrics``) and joined. Events the first worker
  counted before the second joined are not in the rate; if it took everything first, the
  timing starts at its own assignment (``timed_from``). Events read again after a rebalance (at
  least once: the join recognises them as redelivered) are recorded as ``reread``. A pass
  whose joins or dead letters differ from what was produced fails its ``check``.

Reported per shape and path: events/s (median of the passes, min - max), the ratio to the
limit's median (and per worker), CPU seconds per million events of the worker processes and of
redis-server (``/proc``, ``INFO cpu``), the workers' peak RSS (``VmHWM``), start-up time.
The synthetic stream has one model, and a model's monitors live in one worker, so with 2
workers ingestion and the join are shared while the monitors run in one of them.

JSON goes to ``bench/out/pipeline_throughput-<run id>.json``. Topics, consumer groups, Redis
keys and Faust data directories are named ``bench-<run id>-*`` and removed at the end. Kafka
and Redis come from ``STREAMPROC_KAFKA_BOOTSTRAP``/``STREAMPROC_REDIS_URL``, else the local
stack. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import signal
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

import orjson
import redis
from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest_throughput as ib  # a sibling script, not a package

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
from streamproc.kafka import topics
from streamproc.monitor import monitor_from_bytes
from streamproc.monitoring import observations_topic

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.05
LIMIT = "consume limit"


def worker_path(n: int) -> str:
    return f"worker x{n}"


@dataclass
class Pass:
    """One timed pass of one path over one shape's topics."""

    events_per_s: float | None
    seconds: float | None
    events: int
    check: str = "ok"
    workers: int = 0
    worker_cpu_s: float | None = None  # all worker processes, all threads, during the pass
    redis_cpu_s: float | None = None  # redis-server, whatever else uses it too
    peak_rss_bytes: int | None = None  # the largest VmHWM among the workers
    startup_s: float | None = None  # from starting the workers to the start of the timing
    load_before: float | None = None
    reread: int = 0  # events counted twice: read again after a rebalance (at least once)
    # "every worker": from the group's stable assignment to all; "first worker": to the first
    timed_from: str = ""

    def cpu_s_per_million(self, which: str) -> float | None:
        cpu = self.worker_cpu_s if which == "worker" else self.redis_cpu_s
        return None if cpu is None or not self.events else 1e6 * cpu / self.events


@dataclass
class Row:
    """A shape and a path, with every pass."""

    shape: str
    path: str
    workers: int
    runs: list[Pass] = field(default_factory=list)

    def values(self, get: Any) -> list[float]:
        return [v for v in (get(p) for p in self.runs) if v is not None]

    def median(self, get: Any) -> float | None:
        vals = self.values(get)
        return statistics.median(vals) if vals else None


@dataclass(frozen=True)
class Produced:
    """What one shape's topics hold."""

    predictions: int
    labels: int

    @property
    def events(self) -> int:
        return self.predictions + self.labels


def spec() -> WorkloadSpec:
    """The benchmark's workload: the standard synthetic model, stationary."""
    return WorkloadSpec()


def encoded(values: Iterator[dict[str, Any]], counter: list[int]) -> Iterator[bytes]:
    """orjson-encode a stream of dicts, counting them into ``counter[0]``."""
    dumps = orjson.dumps
    for v in values:
        counter[0] += 1
        yield dumps(v)


def pack(events: Iterator[bytes], per_message: int) -> Iterator[bytes]:
    """Message values from a stream: each event alone, or JSON arrays of ``per_message``.

    >>> list(pack(iter([b"1", b"2", b"3"]), 2))
    [b'[1,2]', b'[3]']
    """
    if per_message == 1:
        yield from events
        return
    while chunk := list(itertools.islice(events, per_message)):
        yield b"[" + b",".join(chunk) + b"]"


def fill(cfg: Config, size: int, per_message: int, seed: int) -> Produced:
    """Create ``cfg``'s topics and produce ``size // 2`` predictions and their labels."""
    topics.apply(cfg, topics.load_topics(cfg))
    work = Workload(spec(), size // 2, seed)
    preds, labels = [0], [0]
    ib.produce(cfg, cfg.topics.predictions, pack(encoded(work.predictions(), preds), per_message))
    ib.produce(cfg, cfg.topics.labels, pack(encoded(work.labels(), labels), per_message))
    return Produced(preds[0], labels[0])


def rss_peak(pid: int) -> int | None:
    """``VmHWM`` of ``pid`` in bytes (Linux), else None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Workers:
    """``n`` ``streamproc worker`` processes of one consumer group, each with its web port."""

    def __init__(self, cfg: Config, n: int, log_dir: Path, extra_env: dict[str, str]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.logs = []
        for i in range(n):
            port = ib.free_port()
            log = open(log_dir / f"{cfg.worker.app_id}-{i}.log", "wb")  # noqa: SIM115
            self.logs.append(log)
            self.urls.append(f"http://127.0.0.1:{port}/metrics")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "streamproc", "worker"],
                    env=ib.worker_env(cfg, port, extra_env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=ROOT,
                )
            )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def metrics(self) -> list[str] | None:
        """Every worker's ``/metrics`` text, or None while one does not answer yet."""
        texts = []
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    texts.append(r.read().decode())
            except OSError:
                return None
        return texts

    def cpu_s(self) -> float | None:
        values = [ib.process_cpu_s(p.pid) for p in self.procs]
        return None if None in values else sum(v for v in values if v is not None)

    def peak_rss(self) -> int | None:
        values = [rss_peak(p.pid) for p in self.procs]
        return None if None in values else max(v for v in values if v is not None)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            ib.stop(p)
        for log in self.logs:
            log.close()


def highwaters(cfg: Config, topic: str) -> dict[int, int]:
    """Partition -> high watermark of ``topic`` (no consumer group is joined or created)."""
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": f"{cfg.worker.app_id}-probe"})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


def assigned_members(admin: AdminClient, group: str) -> int:
    """Members of ``group`` holding partitions while it is stable (0 while it rebalances)."""
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except KafkaException:
        return 0
    if desc.state != ConsumerGroupState.STABLE:
        return 0
    return sum(1 for m in desc.members if m.assignment and m.assignment.topic_partitions)


def monitors_done(
    client: redis.Redis, cfg: Config, model: str, high: dict[int, int], seen: list[Any]
) -> bool:
    """Whether ``model``'s checkpoint has folded in every message up to ``high``.

    ``seen`` caches ``[seq, applied]`` so the checkpoint is decoded only when it changed.
    """
    key = f"{cfg.redis.key_prefix}:monitor:{model}"
    seq = client.get(f"{key}:seq")
    if seq is None:
        return False
    if seq != seen[0]:
        blob = client.get(f"{key}:state")
        if blob is None:
            return False
        seen[0], seen[1] = seq, monitor_from_bytes(blob, cfg.monitoring).applied
    applied = seen[1]
    return all(applied.get(p, -1) >= h - 1 for p, h in high.items() if h > 0)


def measure_workers(
    cfg: Config,
    n: int,
    produced: Produced,
    profile_blob: bytes,
    extra_env: dict[str, str],
    timeout: float,
    log_dir: Path,
) -> Pass:
    """Run ``n`` workers over ``cfg``'s topics until the monitors folded everything in."""
    from streamproc.baseline import ReferenceProfile

    model = spec().model_id
    expected = produced.events
    load = ib.load_average()
    rclient = redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password)
    BaselineStore(rclient, cfg.redis.key_prefix).put(ReferenceProfile.from_bytes(profile_blob))
    started = time.perf_counter()
    workers = Workers(cfg, n, log_dir, extra_env)
    try:
        first: tuple[float, float, float | None, float] | None = None
        any_first: tuple[float, float, float | None, float] | None = None
        end: tuple[float, float | None, float] | None = None
        high: dict[int, int] | None = None
        seen: list[Any] = [None, {}]
        count = joined = 0.0
        texts: list[str] | None = None
        deadline = time.monotonic() + timeout
        admin = AdminClient(cfg.kafka.librdkafka())
        while time.monotonic() < deadline and workers.alive():
            polled = workers.metrics()
            texts = polled or texts
            if texts is not None:
                count = sum(ib.metric_sum(t, "streamproc_events_total") for t in texts)
                joined = sum(
                    ib.metric_sum(t, "streamproc_join_total", result="joined") for t in texts
                )
            now = time.perf_counter()
            if first is None:
                # The timing starts when the group is stable with every worker assigned
                # partitions: from then on they fetch. With 2 workers, the rebalance when the
                # second joins is start-up; events the first counted before it are subtracted.
                members = assigned_members(admin, cfg.worker.app_id)
                snap = (now, count, workers.cpu_s(), ib.redis_cpu_s(rclient))
                if members >= 1 and any_first is None:
                    any_first = snap
                if members >= n:
                    first = snap
            if polled is None:
                time.sleep(POLL_S)
                continue
            if count >= expected and joined >= produced.labels:
                if high is None:
                    high = highwaters(cfg, observations_topic(cfg))
                if monitors_done(rclient, cfg, model, high, seen):
                    end = (now, workers.cpu_s(), ib.redis_cpu_s(rclient))
                    # Ingestion had flushed every observation before counting its events;
                    # make sure none was still on its way when the watermarks were read.
                    if highwaters(cfg, observations_topic(cfg)) == high:
                        break
                    high, end = None, None
            time.sleep(POLL_S)
        timed_from = "every worker"
        late = first is None or (end is not None and (first[0] >= end[0] or count <= first[1]))
        if late and any_first is not None and end is not None:
            # One worker took everything before the other joined (tiny sizes): time from the
            # group's first stable assignment.
            first, timed_from = any_first, "first worker"
        if first is not None and end is not None and count <= first[1]:
            # The group was first seen stable (rebalances read as 0 members) only after
            # everything was counted: nothing is left to time. Not a figure of 0 events/s.
            return Pass(
                None, None, 0, "untimed: every event was counted before the group was stable "
                "with all workers; use a larger --size", n, load_before=load,
            )  # fmt: skip
        if first is None or end is None:
            why = "exited" if not workers.alive() else "timeout"
            return Pass(
                None, None, int(count), f"{why}: {count:.0f}/{expected} events, "
                f"{joined:.0f}/{produced.labels} joined", n, load_before=load,
            )  # fmt: skip
        peak = workers.peak_rss()
    finally:
        workers.stop()
        rclient.close()
    texts = texts or []  # the last poll's, taken when everything was counted
    dead = sum(ib.metric_sum(t, "streamproc_deadletter_total") for t in texts)
    check = "ok"
    if count < expected or joined != produced.labels or dead:
        check = f"mismatch: events {count:.0f}/{expected}, joined {joined:.0f}, dead {dead:.0f}"
    seconds = end[0] - first[0]
    counted = count - first[1]
    worker_cpu = end[1] - first[2] if end[1] is not None and first[2] is not None else None
    return Pass(
        events_per_s=counted / seconds if seconds > 0 else None,
        seconds=seconds,
        events=int(counted),
        check=check,
        workers=n,
        worker_cpu_s=worker_cpu,
        redis_cpu_s=end[2] - first[3],
        peak_rss_bytes=peak,
        startup_s=first[0] - started,
        load_before=load,
        reread=int(count - expected),
        timed_from=timed_from,
    )


def measure_limit(cfg: Config, produced: Produced, group: str, timeout: float) -> Pass:
    m = ib.measure_limit(cfg, produced.events, group, timeout)
    return Pass(m.events_per_s, m.seconds, m.events, m.check, load_before=m.load_before)


SHAPES = ("single", "batch")


def shape_name(key: str, batch: int) -> str:
    return "1 event/msg" if key == "single" else f"{batch} events/msg"


def rows_table(rows: list[Row]) -> str:
    """The markdown table: one row per shape and path."""
    lines = [
        "| shape | path | passes | events/s (median) | min - max | ratio to limit "
        "| per worker | worker CPU s / 1M events | Redis CPU s / 1M events "
        "| worker peak RSS MiB | start-up s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    limits = {r.shape: r.median(lambda p: p.events_per_s) for r in rows if r.path == LIMIT}

    def num(x: float | None, fmt: str) -> str:
        if x is None:
            return ""
        return format(x, fmt) if abs(x) >= 1 else f"{x:.2g}"  # small values keep 2 digits

    for r in rows:
        rates = r.values(lambda p: p.events_per_s)
        med = r.median(lambda p: p.events_per_s)
        span = f"{min(rates):,.0f} - {max(rates):,.0f}" if rates else "n/a"
        ratio = per = ""
        if r.path != LIMIT:
            limit = limits.get(r.shape)
            if med and limit:
                ratio, per = num(med / limit, ".3f"), num(med / limit / r.workers, ".3f")
        bad = [p.check for p in r.runs if p.check != "ok"]
        path = r.path + (f" ({'; '.join(bad)})" if bad else "")
        rss = r.median(lambda p: p.peak_rss_bytes)
        lines.append(
            f"| {r.shape} | {path} | {len(r.runs)} | {num(med, ',.0f') or 'n/a'} | {span} "
            f"| {ratio} | {per} "
            f"| {num(r.median(lambda p: p.cpu_s_per_million('worker')), ',.1f')} "
            f"| {num(r.median(lambda p: p.cpu_s_per_million('redis')), ',.1f')} "
            f"| {num(None if rss is None else rss / 2**20, ',.0f')} "
            f"| {num(r.median(lambda p: p.startup_s), '.1f')} |"
        )
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The result document as markdown (used by ``bench/run_all.py``)."""
    rows = [
        Row(r["shape"], r["path"], r["workers"], [Pass(**p) for p in r["runs"]])
        for r in result["results"]
    ]
    head = (
        f"{result['events']:,} events per shape ({result['predictions']:,} predictions, "
        f"{result['labels']:,} labels), {result['repeats']} interleaved pass(es) per shape and "
        "path; medians, min - max over the passes. CPU counts the passes' time window only."
    )
    reread = [p for row in rows for p in row.runs if p.reread]
    if reread:
        head += (
            f" In {len(reread)} pass(es) a rebalance made the group read "
            f"{sum(p.reread for p in reread):,} events again (at least once; the join "
            "recognised them as redelivered)."
        )
    return head + "\n\n" + rows_table(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``run`` reads (shared with ``bench/run_all.py``)."""
    p.add_argument("--size", type=int, default=100_000, help="events per shape (100000)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per shape and path (3)")
    p.add_argument("--batch", type=int, default=100, help="events per batched message (100)")
    p.add_argument("--workers", default="1,2", help="worker counts to run (1,2)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=None, help="per pass, s (from --size)")
    p.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the workers (repeatable)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the topics, run the interleaved passes, clean up; return the result document."""
    if args.size < 20 or args.repeats < 1 or args.batch < 2:
        raise ValueError("--size must be >= 20, --repeats >= 1, --batch >= 2")
    counts = [int(x) for x in str(args.workers).split(",")]
    extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
    timeout = args.timeout or max(300.0, args.size / 300)
    kafka, redis_url, stack = ib.endpoints(True)
    run_id = uuid.uuid4().hex[:8]
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-{run_id}-"))
    groups: list[str] = []
    rows: dict[tuple[str, str], Row] = {}
    produced: dict[str, Produced] = {}
    print(
        f"pipeline run {run_id}: {args.size:,} events per shape, {args.repeats} repeat(s), "
        f"workers {counts}, Kafka {kafka}, Redis {redis_url}, logs in {log_dir}",
        file=sys.stderr,
    )
    began = time.perf_counter()
    try:
        profile_blob = reference_profile(spec(), 30_000).to_bytes()
        cfgs: dict[str, Config] = {}
        for key in SHAPES:
            cfg = ib.bench_config(kafka, redis_url, f"bench-{run_id}-{key}")
            per_message = 1 if key == "single" else args.batch
            produced[key] = fill(cfg, args.size, per_message, args.seed)
            cfgs[key] = cfg
            name = shape_name(key, args.batch)
            rows[(key, LIMIT)] = Row(name, LIMIT, 1)
            for n in counts:
                rows[(key, worker_path(n))] = Row(name, worker_path(n), n)
        print(f"  produced in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        for r in range(args.repeats):
            for key, cfg in cfgs.items():
                group = f"bench-{run_id}-{key}-limit-{r}"
                groups.append(group)
                m = measure_limit(cfg, produced[key], group, timeout)
                rows[(key, LIMIT)].runs.append(m)
                progress(key, LIMIT, r, m)
                for n in counts:
                    name = f"bench-{run_id}-{key}-w{n}-{r}"
                    groups.append(name)
                    m = measure_workers(
                        ib.with_identity(cfg, name), n, produced[key], profile_blob,
                        extra_env, timeout, log_dir,
                    )  # fmt: skip
                    rows[(key, worker_path(n))].runs.append(m)
                    progress(key, worker_path(n), r, m)
    finally:
        ib.cleanup(ib.bench_config(kafka, redis_url, f"bench-{run_id}"), run_id, groups)
        if stack is not None:
            stack.down()
    ordered = list(rows.values())
    failed = any(p.check != "ok" for row in ordered for p in row.runs)
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    first = produced[SHAPES[0]]
    return {
        "run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.perf_counter() - began,
        "events": first.events,
        "predictions": first.predictions,
        "labels": first.labels,
        "repeats": args.repeats,
        "batch": args.batch,
        "workers": counts,
        "worker_env": extra_env,
        "failed": failed,
        "logs": None if not failed else str(log_dir),
        "results": [
            {
                "shape": row.shape,
                "path": row.path,
                "workers": row.workers,
                "median_events_per_s": row.median(lambda p: p.events_per_s),
                "runs": [asdict(p) for p in row.runs],
            }
            for row in ordered
        ],
    }


def progress(key: str, path: str, r: int, m: Pass) -> None:
    rate = "n/a" if m.events_per_s is None else f"{m.events_per_s:,.0f}"
    cpu = m.cpu_s_per_million("worker")
    print(
        f"  {key:<7} {path:<14} pass {r + 1}: {rate} ev/s"
        + ("" if cpu is None else f", worker CPU {cpu:.0f} s/1M events")
        + ("" if m.startup_s is None else f", start-up {m.startup_s:.1f} s")
        + (f", {m.reread} events re-read after a rebalance" if m.reread else "")
        + f", load {m.load_before or 0:.2f}, {m.check}",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, write the JSON; 1 if any pass failed its check."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(p)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
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
