"""A soak: steady traffic through 2 workers on a 3-broker Kafka and a Redis Cluster, for an hour.

Run: ``.venv/bin/python bench/soak.py [--minutes 60] [--restart-every 10] [--rate N]``
(not in CI; ``--minutes 6 --restart-every 2`` tries it).

1. Starts (or reuses) the local cluster stack: ``Stack(brokers=3, redis_cluster=3)`` on ports of
   its own (``--kafka-port``, ``--redis-port``), topics with replication factor 3.
2. Starts two ``streamproc worker`` processes in one group, stores the synthetic model's
   baseline, and measures the capacity: a backlog of ``--calibration-events`` (another model
   id, so its windows are told apart) drained by both workers. The soak's rate is half of it
   unless ``--rate`` says otherwise.
3. Sends the workload at that rate in real time (event time = now, 100 events per message,
   labels after their median delay), with a 1-sigma shift of ``f03`` in ``country=DE`` for 3 minutes
   of every 10, and restarts one worker (SIGTERM, then a new process) every
   ``--restart-every`` minutes, alternating.
4. Every minute it records each worker's RSS, the group's consumer lag (committed offsets
   against high watermarks of ``predictions`` and ``labels``), the verdict latency (a
   ``metrics.v1`` record's ``emitted_at`` minus its window's end: how long after a window's
   last event it was judged and published), the latency of each shift's first alert (from the
   shift's first event), and the Redis Cluster's memory (``used_memory`` summed over masters).
   The join's TTLs are short (5 min to wait for a label, 10 min of tombstones), so its state
   reaches a steady size within the hour instead of growing for the default 7 days.
5. At the end it stops the traffic, waits for every window to be judged, and checks that the
   events counted in the soak model's windows (segment "all", each window once) equal the
   events sent: nothing lost, nothing counted twice. It writes ``bench/soak.json``,
   ``bench/soak.png`` (matplotlib) and the "Soak" section of ``bench/RESULTS.md``.

Nothing here asserts a timing; it reports figures, and exits 1 if the exact count fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamproc.baseline import BaselineStore  # noqa: E402
from streamproc.config import Config, load_config  # noqa: E402
from streamproc.dev.stack import Stack  # noqa: E402
from streamproc.dev.synthetic import (  # noqa: E402
    MeanShift,
    Workload,
    WorkloadSpec,
    reference_profile,
)
from streamproc.kafka import topics  # noqa: E402
from streamproc.redis_client import sync_client  # noqa: E402

WORKER_ENV = {
    "STREAMPROC_MONITORING_WINDOW_S": "60",
    "STREAMPROC_MONITORING_TICK_S": "5",
    "STREAMPROC_MONITORING_LATENESS_S": "5",
    "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "30",
    "STREAMPROC_JOIN_PREDICTION_TTL_S": "300",
    "STREAMPROC_JOIN_LABEL_TTL_S": "300",
    "STREAMPROC_JOIN_DEDUPE_TTL_S": "600",
    "STREAMPROC_KAFKA_REPLICATION_FACTOR": "3",
}
SHIFT_EVERY_S, SHIFT_FOR_S = 600, 180
BATCH = 100


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


@dataclass
class Soak:
    cfg: Config
    env: dict[str, str]
    out: Path
    workers: list[Worker] = field(default_factory=list)
    started: float = 0.0
    sent: dict[str, int] = field(default_factory=lambda: {"predictions": 0, "labels": 0})
    samples: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    lags: list[tuple[float, int]] = field(default_factory=list)  # (minute, lag) every 10 s
    per_window: dict[str, int] = field(default_factory=dict)  # predictions sent per window
    stop: threading.Event = field(default_factory=threading.Event)

    def start_worker(self) -> Worker:
        port = _free_port()
        log = self.out / f"worker-{port}.log"
        env = {**self.env, "STREAMPROC_WORKER_WEB_PORT": str(port)}
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamproc", "worker"],
                env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        w = Worker(proc, port, log)
        self.workers.append(w)
        return w

    def stop_worker(self, w: Worker) -> None:
        w.proc.send_signal(signal.SIGTERM)
        try:
            w.proc.wait(60)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)
        self.workers.remove(w)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _lag(cfg: Config) -> int:
    """Messages of predictions and labels not yet committed by the workers' group."""
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": cfg.worker.app_id})
    try:
        parts = []
        for topic in (cfg.topics.predictions, cfg.topics.labels):
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p) for p in meta.partitions]
        committed = consumer.committed(parts, timeout=10)
        lag = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def _redis_memory_mib(cfg: Config) -> float:
    client = sync_client(cfg.redis)
    info = client.info("memory", target_nodes=client.PRIMARIES)  # type: ignore[call-arg]
    total = sum(v["used_memory"] for v in info.values()) if isinstance(info, dict) else 0
    client.close()
    return total / 2**20


class Records:
    """The metrics and alerts topics, read as they come (a thread)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        consumer = Consumer(
            {
                **self.cfg.kafka.librdkafka(),
                "group.id": f"soak-reader-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self.cfg.topics.metrics, self.cfg.topics.alerts])
        while not self.done.is_set():
            for m in consumer.consume(1000, 0.5):
                if m.error():
                    continue
                value = orjson.loads(m.value())
                value["_seen_at"] = time.time()
                with self.lock:
                    (self.metrics if m.topic() == self.cfg.topics.metrics else self.alerts).append(
                        value
                    )
        consumer.close()


def _send_backlog(cfg: Config, spec: WorkloadSpec, n: int) -> None:
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20, "enable.idempotence": True})
    batch: list[dict] = []
    for p in Workload(spec, n, seed=3).predictions():
        batch.append(p)
        if len(batch) == BATCH:
            producer.produce(cfg.topics.predictions, orjson.dumps(batch))
            batch = []
    if batch:
        producer.produce(cfg.topics.predictions, orjson.dumps(batch))
    producer.flush(120)


def _metric(port: int, name: str) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def calibrate(soak: Soak, n: int) -> float:
    """Events/s two workers drain from a backlog of ``n`` predictions of another model."""
    spec = WorkloadSpec(
        model_id="soak-calibration", rate=1000.0, start_time=iso(time.time() - 3600)
    )
    before = sum(_metric(w.port, "streamproc_events_total") for w in soak.workers)
    _send_backlog(soak.cfg, spec, n)
    t0 = time.monotonic()
    while True:
        done = sum(_metric(w.port, "streamproc_events_total") for w in soak.workers) - before
        if done >= n:
            return n / (time.monotonic() - t0)
        if time.monotonic() - t0 > 600:
            raise SystemExit(f"calibration: {done:.0f} of {n} events in 600 s")
        time.sleep(0.2)


def produce_live(soak: Soak, spec: WorkloadSpec, seconds: float) -> None:
    """The workload in real time: each message when its last event's time has come."""
    producer = Producer(
        {**soak.cfg.kafka.librdkafka(), "linger.ms": 20, "enable.idempotence": True}
    )
    n = int(spec.rate * seconds) // BATCH * BATCH  # no last short message of predictions
    work = Workload(spec, n, seed=11)
    pending: dict[str, list[dict]] = {"p": [], "l": []}
    topic = {"p": soak.cfg.topics.predictions, "l": soak.cfg.topics.labels}
    for event in work.events():
        if soak.stop.is_set():
            break
        kind = "p" if event.kind == "prediction" else "l"
        pending[kind].append(event.value)
        if kind == "p":
            w = iso(event.time // 60 * 60)[:19]
            soak.per_window[w] = soak.per_window.get(w, 0) + 1
        if len(pending[kind]) == BATCH:
            wait = event.time - time.time()
            if wait > 0:
                time.sleep(wait)
            producer.produce(topic[kind], orjson.dumps(pending[kind]))
            soak.sent["predictions" if kind == "p" else "labels"] += BATCH
            pending[kind] = []
            producer.poll(0)
    for kind, rest in pending.items():
        if rest:
            producer.produce(topic[kind], orjson.dumps(rest))
            soak.sent["predictions" if kind == "p" else "labels"] += len(rest)
    producer.flush(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--restart-every", type=float, default=10, help="minutes")
    ap.add_argument("--rate", type=float, help="events/s (default: half the measured capacity)")
    ap.add_argument("--calibration-events", type=int, default=200_000)
    ap.add_argument("--kafka-port", type=int, default=29392)
    ap.add_argument("--redis-port", type=int, default=17301)
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    ap.add_argument("--keep-stack", action="store_true")
    ap.add_argument(
        "--report-from", type=Path, metavar="SOAK_JSON",
        help="only write the plot and the RESULTS.md section again from a run's soak.json",
    )  # fmt: skip
    args = ap.parse_args()
    if args.report_from is not None:
        result = json.loads(args.report_from.read_text())
        plot(result, args.out / "soak.png")
        write_results(result, args.out / "RESULTS.md")
        return

    stack = Stack(
        kafka_port=args.kafka_port, redis_port=args.redis_port, brokers=3, redis_cluster=3
    )
    already = stack.started_by_us()
    stack.up()
    run_id = uuid.uuid4().hex[:8]
    logs = Path(f"/tmp/soak-{run_id}")
    logs.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(WORKER_ENV)
    env.update(
        {
            "STREAMPROC_KAFKA_BOOTSTRAP": stack.bootstrap,
            "STREAMPROC_REDIS_URL": stack.redis_url,
            "STREAMPROC_REDIS_KEY_PREFIX": f"soak-{run_id}",
            "STREAMPROC_WORKER_APP_ID": f"soak-{run_id}",
        }
    )
    for role in ("predictions", "labels", "alerts", "incidents", "metrics", "deadletter"):
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = f"soak-{run_id}-{role}"
    cfg = load_config(env=env)
    soak = Soak(cfg, env, logs)
    try:
        topics.apply(cfg, topics.load_topics(cfg))
        # A narrow label delay: the run ends when the last label is due (sigma 0.5 would keep
        # the slowest of millions waiting ~7 min).
        base = WorkloadSpec(
            model_id="soak", rate=1.0, label_delay_median_s=30.0, label_delay_sigma=0.2
        )
        BaselineStore(sync_client(cfg.redis), cfg.redis.prefix).put(
            reference_profile(base, source="soak reference")
        )
        for _ in range(2):
            soak.start_worker()
        time.sleep(20)
        records = Records(cfg)
        capacity = calibrate(soak, args.calibration_events)
        # Half the capacity in events, labels included: every prediction gets a label.
        rate = args.rate or capacity / 2 / 2
        print(f"soak {run_id}: capacity {capacity:,.0f} events/s, rate {rate:,.0f}", flush=True)
        seconds = args.minutes * 60
        start = time.time() + 5
        shifts = [
            MeanShift(
                "f03", 1.0, start=int(s * rate), end=int((s + SHIFT_FOR_S) * rate),
                segment={"country": "DE"},
            )
            for s in range(SHIFT_EVERY_S // 2, int(seconds), SHIFT_EVERY_S)
        ]  # fmt: skip
        spec = replace(base, rate=rate, start_time=iso(start), changes=tuple(shifts))
        producer = threading.Thread(target=produce_live, args=(soak, spec, seconds), daemon=True)
        soak.started = start
        producer.start()
        next_restart = start + args.restart_every * 60
        turn = 0
        time.sleep(max(0.0, start - time.time()))
        step = 0
        while producer.is_alive():
            time.sleep(10 - (time.time() - start) % 10)
            soak.lags.append((round((time.time() - start) / 60, 2), _lag(cfg)))
            step += 1
            if step % 6 == 0:
                sample(soak, records)
            if time.time() >= next_restart and producer.is_alive():
                victim = soak.workers[turn % 2 if len(soak.workers) > 1 else 0]
                turn += 1
                soak.restarts.append(time.time() - start)
                soak.stop_worker(victim)
                soak.start_worker()
                next_restart += args.restart_every * 60
        # the last windows close after idle_timeout_s without traffic
        time.sleep(90)
        sample(soak, records)
        records.done.set()
        records.thread.join(10)
        ok = report(soak, records, rate, capacity, shifts, args, run_id)
    finally:
        soak.stop.set()
        for w in list(soak.workers):
            soak.stop_worker(w)
        if not already and not args.keep_stack:
            stack.down()
    sys.exit(0 if ok else 1)


def sample(soak: Soak, records: Records) -> None:
    now = time.time()
    with records.lock:
        recent = [
            r
            for r in records.metrics
            if now - r["_seen_at"] <= 60 and r["count"] and r["model_id"] == "soak"
        ]
    latency = [parse_iso(r["emitted_at"]) - parse_iso(r["window"]["end"]) for r in recent]
    row = {
        "minute": round((now - soak.started) / 60, 1),
        "rss_mib": [round(_rss_mib(w.proc.pid), 1) for w in soak.workers],
        "lag": _lag(soak.cfg),
        "verdict_latency_s": round(max(latency), 2) if latency else None,
        "redis_mib": round(_redis_memory_mib(soak.cfg), 1),
        "sent": dict(soak.sent),
    }
    soak.samples.append(row)
    print(json.dumps(row), flush=True)


def report(
    soak: Soak,
    records: Records,
    rate: float,
    capacity: float,
    shifts: list[MeanShift],
    args: argparse.Namespace,
    run_id: str,
) -> bool:
    windows: dict[str, int] = {}
    twice = 0
    for r in records.metrics:
        if r["model_id"] != "soak" or r["segment"] or not r["count"]:
            continue  # outcome windows' records count 0 events
        start = r["window"]["start"][:19]
        if start in windows:
            twice += 1
        windows[start] = windows.get(start, 0) + r["count"]
    counted = sum(windows.values())
    # Every window of the traffic judged once, with exactly the predictions sent in it.
    wrong = {w: (n, windows.get(w)) for w, n in soak.per_window.items() if windows.get(w) != n}
    alert_latency = []
    for s in shifts:
        t0 = soak.started + s.start / rate
        hits = [
            a["_seen_at"] - t0
            for a in records.alerts
            if a.get("feature") == "f03"
            and a.get("segment") == {"country": "DE"}
            and a["status"] == "firing"
            and a["_seen_at"] >= t0
        ]
        if hits and t0 + SHIFT_FOR_S < soak.started + args.minutes * 60:
            alert_latency.append(round(min(hits), 1))
    result = {
        "run": run_id,
        "minutes": args.minutes,
        "restart_every_min": args.restart_every,
        "capacity_events_s": round(capacity),
        "rate_events_s": round(rate),
        "sent": soak.sent,
        "counted_in_windows": counted,
        "windows": len(windows),
        "windows_published_twice": twice,
        "exact": not wrong and twice == 0,
        "windows_wrong_or_missing": wrong,
        "restarts_at_min": [round(t / 60, 1) for t in soak.restarts],
        "shift_alert_latency_s": alert_latency,
        "samples": soak.samples,
        "lag_every_10s": soak.lags,
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "soak.png")
    write_results(result, args.out / "RESULTS.md")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
    return bool(result["exact"])


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["samples"]
    minutes = [r["minute"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    n = max(len(r["rss_mib"]) for r in rows)
    for i in range(n):
        axes[0].plot(minutes, [r["rss_mib"][i] if i < len(r["rss_mib"]) else None for r in rows],
                     label=f"worker slot {i + 1}")  # fmt: skip
    axes[0].set_ylabel("RSS MiB")
    axes[0].legend(loc="lower right")
    axes[1].plot(
        [m for m, _ in result["lag_every_10s"]], [lag for _, lag in result["lag_every_10s"]]
    )
    axes[1].set_ylabel("consumer lag (messages)")
    axes[2].plot(minutes, [r["verdict_latency_s"] for r in rows])
    axes[2].set_ylabel("verdict latency s (max/min)")
    axes[3].plot(minutes, [r["redis_mib"] for r in rows])
    axes[3].set_ylabel("Redis used MiB")
    axes[3].set_xlabel("minute")
    for ax in axes:
        for t in result["restarts_at_min"]:
            ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    fig.suptitle(
        f"soak {result['run']}: {result['rate_events_s']:,} predictions/s + labels, 2 workers, "
        "3 brokers, Redis Cluster 3x2; dotted: worker restarts"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _recovery(lags: list[list[float]], restart: float) -> tuple[int, float] | None:
    """The peak lag in the 2 minutes after a restart, and how long after the restart the lag
    was first back at or under the most it reached in the 2 minutes before (in a live stream the
    sampled lag is never 0: it holds what is in flight)."""
    before = [lag for m, lag in lags if restart - 2 <= m < restart]
    later = [(m, lag) for m, lag in lags if restart < m <= restart + 2]
    if not before or not later:
        return None
    peak = max(lag for _, lag in later)
    back = next((m - restart for m, lag in later if lag <= max(before)), None)
    return (int(peak), back * 60) if back is not None else None


def write_results(result: dict[str, Any], path: Path) -> None:
    rows = result["samples"]
    rss = [max(r["rss_mib"]) for r in rows if r["rss_mib"]]
    half = len(rows) // 2
    lat = [r["verdict_latency_s"] for r in rows if r["verdict_latency_s"] is not None]
    lags = result["lag_every_10s"]
    after = [_recovery(lags, t) for t in result["restarts_at_min"]]
    end = result["minutes"]
    drained = next((m - end for m, lag in lags if m > end and lag == 0), None)
    section = [
        "## Soak",
        "",
        f"`bench/soak.py` run {result['run']}: {result['minutes']:g} min of steady traffic at "
        f"{result['rate_events_s']:,} predictions/s and as many labels ~30 s later (together half "
        f"the {result['capacity_events_s']:,} events/s two workers drained from a backlog of "
        "predictions on the same stack), 100 events per message, through 2 workers on a "
        "3-broker KRaft cluster (RF 3, min ISR 2) and a Redis Cluster of 3 masters with a "
        "replica each; a worker restarted every "
        f"{result['restart_every_min']:g} min (SIGTERM, then a new process), alternating. "
        "Figures per minute in `bench/soak.json`, plotted in `bench/soak.png`.",
        "",
        "| measure | value |",
        "| --- | --- |",
        "| predictions sent / counted in windows (each window once) | "
        f"{result['sent']['predictions']:,} / {result['counted_in_windows']:,} "
        f"({'exact' if result['exact'] else 'MISMATCH'}) |",
        f"| windows published twice | {result['windows_published_twice']} |",
        "| windows not judged or miscounted (window: sent, counted) | "
        + (
            ", ".join(
                f"{w}: {n:,}, {c}" for w, (n, c) in result["windows_wrong_or_missing"].items()
            )
            or "none"
        )
        + " |",
        f"| worker RSS MiB, first half max / second half max | {max(rss[:half] or [0]):.0f} / "
        f"{max(rss[half:] or [0]):.0f} |",
        f"| Redis used MiB, minute 20 / last | "
        f"{next((r['redis_mib'] for r in rows if r['minute'] >= 20), rows[0]['redis_mib'])} / "
        f"{rows[-1]['redis_mib']} |",
        f"| verdict latency s (window end to published), median / max | "
        f"{statistics.median(lat) if lat else '-'} / {max(lat) if lat else '-'} |",
        f"| first alert after each 1-sigma shift of f03 in country=DE, s | "
        f"{', '.join(map(str, result['shift_alert_latency_s'])) or '-'} |",
        f"| restarts at minute | {', '.join(map(str, result['restarts_at_min']))} |",
        "| consumer lag (messages, sampled every 10 s), median over the run / max | "
        f"{statistics.median(lag for _, lag in lags):.0f} / {max(lag for _, lag in lags)} |",
        "| after each restart: peak lag (messages), then seconds until it was back within the "
        "range of the 2 minutes before | "
        + ", ".join("-" if a is None else f"{a[0]} then {a[1]:.0f} s" for a in after)
        + " |",
        "| seconds after the traffic stopped until the lag was 0 | "
        + ("-" if drained is None else f"{drained * 60:.0f}")
        + " |",
        "",
        "![soak](soak.png)",
        "",
    ]
    text = path.read_text() if path.exists() else ""
    head, mark, tail = text.partition("## Soak\n")
    if mark:
        rest = tail.split("\n## ", 1)
        tail = "\n## " + rest[1] if len(rest) > 1 else ""
        text = head + "\n".join(section) + tail
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    path.write_text(text)


if __name__ == "__main__":
    main()
