"""``streamproc demo``: the whole product on the local stack, in a few minutes, then clean up.

1. creates its own topics and Redis namespace (``demo-<run>``), so it never touches yours;
2. builds a baseline for the synthetic model ``demo-churn`` from 30,000 reference rows;
3. starts a worker (``streamproc worker``) with one-minute windows;
4. produces 18 minutes of event time of synthetic traffic (54,000 predictions and their
   delayed labels, 50 events/s, two segment dimensions) with three injected changes:
   a 1-sigma shift of ``f03`` in ``country=DE``, a new category in ``c1`` for ``device=web``,
   and, later, concept drift: accuracy falls from 90% to 70% (only the labels show it);
5. prints alerts as they arrive, as ``streamproc alerts tail`` would, and where ``/metrics`` is;
6. stops when every injected change was reported (or after ``--timeout``), then deletes what it
   created.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import orjson

from streamproc.config import Config, load_config

WINDOW_S = 60
N_EVENTS = 54_000
EXPECTED = {
    ("feature_drift", "f03", "country=DE"): "1-sigma mean shift of f03 in country=DE",
    ("data_quality", "c1", "device=web"): "new category in c1 for device=web",
    ("performance", None, "all"): "concept drift: accuracy 90% → 70%",
}


def _spec():  # type: ignore[no-untyped-def]
    from streamproc.dev.synthetic import AccuracyDrop, MeanShift, NewCategory, WorkloadSpec

    return WorkloadSpec(
        rate=50.0,
        changes=(
            MeanShift("f03", 1.0, start=12_000, end=30_000, segment={"country": "DE"}),
            NewCategory("c1", "zz", 0.05, start=21_000, end=39_000, segment={"device": "web"}),
            AccuracyDrop(0.7, start=36_000),
        ),
    )


def _demo_config(base: Config, run: str) -> tuple[Config, dict[str, str]]:
    env = {
        "STREAMPROC_KAFKA_BOOTSTRAP": base.kafka.bootstrap,
        "STREAMPROC_REDIS_URL": base.redis.url,
        "STREAMPROC_REDIS_KEY_PREFIX": f"demo-{run}",
        "STREAMPROC_WORKER_APP_ID": f"demo-{run}",
        "STREAMPROC_MONITORING_WINDOW_S": str(WINDOW_S),
        "STREAMPROC_MONITORING_TICK_S": "2",
        "STREAMPROC_MONITORING_LATENESS_S": "5",
    }
    for role in ("predictions", "labels", "alerts", "incidents", "metrics", "deadletter"):
        env[f"STREAMPROC_TOPICS_{role.upper()}"] = f"demo-{run}-{role}"
    return load_config(env=env), env


def _progress(done: int, total: int, started: float, what: str) -> None:
    width = 30
    filled = int(width * done / total)
    rate = done / max(time.monotonic() - started, 1e-6)
    bar = "█" * filled + "·" * (width - filled)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r  {what:<12} {bar} {done:>6}/{total} events  {rate:,.0f} ev/s{end}")
    sys.stderr.flush()


def _produce(cfg: Config, spec: object) -> None:
    from confluent_kafka import Producer

    from streamproc.dev.synthetic import Workload

    work = Workload(spec, N_EVENTS, seed=7)  # type: ignore[arg-type]
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20, "enable.idempotence": True})
    for topic, events, what in (
        (cfg.topics.predictions, work.predictions(), "predictions"),
        (cfg.topics.labels, work.labels(), "labels"),
    ):
        started, batch, n = time.monotonic(), [], 0
        for n, event in enumerate(events, 1):
            batch.append(event)
            if len(batch) == 250:
                producer.produce(topic, orjson.dumps(batch), partition=(n // 250) % 6)
                batch = []
                producer.poll(0)
                if n % 5000 == 0:
                    _progress(n, N_EVENTS, started, what)
        if batch:
            producer.produce(topic, orjson.dumps(batch), partition=(n // 250 + 1) % 6)
        producer.flush(30)
        _progress(N_EVENTS, N_EVENTS, started, what)


def _baseline(cfg: Config, spec: object) -> None:
    from streamproc.baseline import BaselineStore
    from streamproc.dev.synthetic import reference_profile
    from streamproc.redis_client import sync_client

    profile = reference_profile(spec, 30_000, source="demo reference (30,000 rows)")  # type: ignore[arg-type]
    client = sync_client(cfg.redis)
    BaselineStore(client, cfg.redis.prefix).put(profile)


def _incidents(cfg: Config, stop: float) -> Iterator[object]:
    """The incident events of the demo's topic as they come (``None`` when none came)."""
    from confluent_kafka import Consumer

    from streamproc.contracts import Incident

    consumer = Consumer(
        {
            **cfg.kafka.librdkafka(),
            "group.id": f"{cfg.worker.app_id}-tail",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([cfg.topics.incidents])
    try:
        while time.monotonic() < stop:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                yield None
                continue
            yield msgspec.json.decode(msg.value(), type=Incident)
    finally:
        consumer.close()


def expected_incident(key: tuple[str, str | None, str]) -> tuple[str, str | None, str]:
    """The incident an :data:`EXPECTED` change must give: ``(signal, feature, root)``.

    >>> expected_incident(("feature_drift", "f03", "country=DE"))
    ('feature', 'f03', 'country=DE')
    >>> expected_incident(("performance", None, "all"))
    ('performance', None, 'all')
    """
    kind, feature, segment = key
    signal = "feature" if kind in ("feature_drift", "data_quality") else kind
    return (signal, feature, segment)


def incident_key(incident: object) -> tuple[str, str | None, str]:
    """``(signal, feature, root)`` of an ``incident.v1`` event."""
    root = incident.root_cause.segment  # type: ignore[attr-defined]
    where = ",".join(f"{k}={v}" for k, v in sorted(root.items())) or "all"
    return (incident.cause.signal, incident.cause.feature, where)  # type: ignore[attr-defined]


def traffic_end() -> str:
    """Event time of the demo's last event (RFC 3339): its traffic stops there, which the
    worker reports, once it has been silent for ``idle_timeout_s``, as a volume incident."""
    from streamproc.judge.alerts import iso

    return iso(_spec().time_of(N_EVENTS - 1))


def summary(incidents: list[object]) -> tuple[list[str], bool]:
    """The demo's closing lines from every incident event it read, and whether each injected
    change is exactly one incident and nothing else opened one (but the volume incident of the
    traffic's end, a change too)."""
    from streamproc.tools.incident_text import latest_incidents

    latest = latest_incidents(incidents)  # type: ignore[arg-type]
    alerts = {m.alert_id for i in incidents for m in i.members if m.status == "firing"}  # type: ignore[attr-defined]
    lines = [f"{len(latest)} incident(s) for {len(EXPECTED)} injected change(s) and the end of "
             f"the traffic, grouping {len(alerts)} firing alerts:"]  # fmt: skip
    want = {expected_incident(k): text for k, text in EXPECTED.items()}
    got = [incident_key(i) for i in latest]
    end = traffic_end()
    ended = [
        k == ("volume", None, "all") and i.started_at >= end  # type: ignore[attr-defined]
        for i, k in zip(latest, got, strict=True)
    ]
    for inc, key, stop in zip(latest, got, ended, strict=True):
        mark = "injected: " + want[key] if key in want else "NOT INJECTED"
        mark = "the demo's traffic ends here" if stop else mark
        lines.append(
            f"  {inc.severity.upper():8} {inc.status:8} {inc.root_cause.summary}  [{mark}]"  # type: ignore[attr-defined]
        )
    missing = [text for key, text in want.items() if got.count(key) != 1]
    extra = [k for k, stop in zip(got, ended, strict=True) if k not in want and not stop]
    ok = not missing and not extra
    if ok:
        lines.append("Summary: every injected change was reported as one incident.")
    else:
        if missing:
            lines.append("Summary: not reported as one incident: " + "; ".join(missing))
        if extra:
            lines.append(f"Summary: {len(extra)} incident(s) no injected change explains")
    return lines, ok


def _cleanup(cfg: Config) -> None:
    from confluent_kafka.admin import AdminClient

    from streamproc.ingest.join import key_patterns
    from streamproc.publish.sources import partials_topic
    from streamproc.redis_client import sync_client

    roles = ("predictions", "labels", "alerts", "incidents", "metrics", "deadletter")
    names = [getattr(cfg.topics, r) for r in roles] + [partials_topic(cfg)]
    with contextlib.suppress(Exception):
        for fut in AdminClient(cfg.kafka.librdkafka()).delete_topics(names).values():
            fut.result(10)
    with contextlib.suppress(Exception):
        client = sync_client(cfg.redis)
        patterns = [f"{cfg.redis.prefix}:*", *key_patterns(cfg.redis.key_prefix)]
        keys = [k for p in patterns for k in client.scan_iter(p, count=5000)]
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


def run(args: argparse.Namespace) -> int:
    from streamproc.kafka import topics
    from streamproc.tools.incident_text import format_incident
    from streamproc.tools.oncall import use_colour

    base = load_config(args.config)
    run_id = uuid.uuid4().hex[:6]
    cfg, env = _demo_config(base, run_id)
    spec = _spec()
    web_port = args.web_port
    print(f"streamproc demo {run_id}: Kafka {cfg.kafka.bootstrap}, Redis {cfg.redis.url}")
    print(f"  topics demo-{run_id}-*, Redis keys demo-{run_id}:*  (deleted at the end)")
    topics.apply(cfg, topics.load_topics(cfg))
    print("  building the baseline from 30,000 reference rows ...")
    _baseline(cfg, spec)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamproc-demo-{run_id}.log"
    worker_env = {**os.environ, **env, "STREAMPROC_WORKER_WEB_PORT": str(web_port)}
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "worker"],
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    print(
        f"  worker started (pid {worker.pid}); Prometheus metrics: "
        f"http://127.0.0.1:{web_port}/metrics  (log: {log_path})"
    )
    print("  injected: " + "; ".join(EXPECTED.values()))
    events: list[object] = []
    try:
        _produce(cfg, spec)
        print("\nIncidents (as `streamproc alerts tail` prints them):\n")
        colour = use_colour(sys.stdout)
        want = {expected_incident(k) for k in EXPECTED}
        quiet_until = math.inf  # once every change has its incident: a last look for others
        for incident in _incidents(cfg, time.monotonic() + args.timeout):
            if worker.poll() is not None:
                print(f"the worker exited ({worker.returncode}); see {log_path}")
                return 1
            if incident is None:
                opened = {incident_key(e) for e in events}
                if want <= opened:
                    quiet_until = min(quiet_until, time.monotonic() + 5.0)
                if time.monotonic() > quiet_until:
                    break
                continue
            events.append(incident)
            if incident.status != "updated" or "root cause" in incident.reason:  # type: ignore[attr-defined]
                print(format_incident(incident, colour=colour), end="\n\n")  # type: ignore[arg-type]
        lines, ok = summary(events)
        print("\n".join(lines))
        return 0 if ok else 1
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(30)
        if worker.poll() is None:
            worker.kill()
        if not args.keep:
            _cleanup(cfg)
            print(f"cleaned up: demo-{run_id} topics and Redis keys")


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="a live demo on the local stack: traffic, drift, alerts")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for alerts")
    p.add_argument("--web-port", type=int, default=6066)
    p.add_argument("--keep", action="store_true", help="keep the demo's topics and Redis keys")
    p.set_defaults(func=run)
