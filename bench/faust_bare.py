"""A bare Faust agent: the worker's consumer settings, an agent that only counts messages.

Run (``bench/pipeline_throughput.py`` does, on a worker's topics and with a worker's settings):

    STREAMPROC_TOPICS_PREDICTIONS=... STREAMPROC_WORKER_WEB_PORT=26066 \\
        .venv/bin/python bench/faust_bare.py

It reads the ``STREAMPROC_*`` configuration as ``streamproc worker`` does and builds its Faust
app with the settings ``build_app`` in ``streamproc/worker/app.py`` gives the worker's (keep
the two in step): raw key and value serializers, ``consumer_auto_offset_reset="earliest"``,
``broker_max_poll_records``, ``stream_buffer_maxsize``, ``broker_commit_every`` and
``broker_commit_interval``, the session timeout and heartbeat, a 16 MiB fetch, no topic
declaration and no leader topic, the in-memory store, the event loop of ``worker.event_loop``
(uvloop by default) and the worker's garbage-collector thresholds. One agent per input topic
takes ``take_events(batch_size, within=batch_within_s)`` and adds the batch's length to a
counter; nothing is decoded, joined or produced. The counters are served at ``/metrics`` on
``worker.web_port`` as ``streamproc_bench_messages_total{topic}``, so the harness polls it as
it polls a worker. What the worker spends beyond this app's CPU per message is its own work;
what both spend is Faust's per-message path.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections.abc import Sequence
from typing import Any

import faust

from streamproc.config import Config, load_config
from streamproc.dev.stack import cache_dir

# streamproc.worker.app.GC_THRESHOLDS: young collections every 20,000 allocations.
GC_THRESHOLDS = (20_000, 20, 100)
METRIC = "streamproc_bench_messages_total"


def build_app(cfg: Config) -> faust.App:
    """The bare app for ``cfg``: the worker's consumer settings, agents that count."""
    if cfg.kafka.security_protocol != "PLAINTEXT":
        raise SystemExit("faust_bare.py speaks PLAINTEXT only (a benchmark, not a deployment)")
    size, within = cfg.worker.batch_size, cfg.worker.batch_within_s
    app = faust.App(
        cfg.worker.app_id,
        broker=[f"kafka://{b.strip()}" for b in cfg.kafka.bootstrap.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_host=cfg.worker.web_host,
        web_bind=cfg.worker.web_host,
        web_port=cfg.worker.web_port,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=size,
        stream_buffer_maxsize=max(4 * size, 4096),
        broker_commit_every=size,
        broker_commit_interval=1.0,
        broker_session_timeout=cfg.worker.session_timeout_s,
        broker_heartbeat_interval=min(3.0, cfg.worker.session_timeout_s / 3),
        consumer_max_fetch_size=16 * 1024 * 1024,
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(cache_dir() / "faust" / cfg.worker.app_id),
    )
    counts = {"predictions": 0, "labels": 0}

    def counter(role: str) -> Any:
        async def count(stream: faust.StreamT) -> None:
            async for events in stream.take_events(size, within=within):
                counts[role] += len(events)

        return count

    for role in counts:
        topic = app.topic(getattr(cfg.topics, role), key_type=bytes, value_type=bytes)
        app.agent(topic, name=role)(counter(role))

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        text = "".join(f'{METRIC}{{topic="{role}"}} {n}\n' for role, n in counts.items())
        return web.bytes(text.encode(), content_type="text/plain")

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bare app until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--config", default=None, help="YAML file, as for streamproc worker")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    if cfg.worker.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    gc.set_threshold(*GC_THRESHOLDS)
    (cache_dir() / "faust").mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(build_app(cfg), loglevel="warning", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
