"""The Faust worker: agents on the predictions and labels topics, ``/metrics`` on its web port.

Faust delivers raw bytes (its own per-record codecs are slow); the agents buffer records with
``stream.take_events`` and hand each batch to :class:`streamproc.ingest.Ingestor`, which
decodes with msgspec, joins through Redis and flushes its output. ``take_events`` acknowledges
a batch's events only after the loop body returns, and Faust commits only acknowledged offsets:
so offsets are committed after the Redis writes and produced records of their batch are done.

Commit order for one batch (see ``Ingestor``):

1. Redis join writes (atomic Lua, pipelined);
2. monitoring sink updates;
3. dead letters and sink output flushed and acknowledged by Kafka;
4. the batch's events acknowledged; Faust's commit loop commits them
   (every ``broker_commit_interval`` or ``broker_commit_every`` records).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import ssl
from collections.abc import Callable
from typing import Any

import faust
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST

from streamproc.config import Config, KafkaConfig, load_config
from streamproc.dev.stack import cache_dir
from streamproc.errors import ConfigError
from streamproc.ingest.ingestor import Ingestor, MonitorSink, RawMessage, check_join_layout
from streamproc.ingest.join import RedisJoin
from streamproc.kafka.producer import OutputProducer
from streamproc.monitoring import (
    MonitorStage,
    RoutingSink,
    ensure_observations_topic,
    observations_topic,
    partition_count,
)
from streamproc.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def broker_credentials(kafka: KafkaConfig) -> faust.auth.Credentials | None:
    """Faust (aiokafka) credentials from the same settings confluent-kafka uses."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password,
        mechanism=kafka.sasl_mechanism or "PLAIN",
        ssl_context=context,
    )


def redis_client(cfg: Config) -> aioredis.Redis:
    return aioredis.Redis.from_url(cfg.redis.url, password=cfg.redis.password)


def _raw(event: Any) -> RawMessage:
    m = event.message
    ts = m.timestamp
    return RawMessage(
        m.topic, m.partition, m.offset, m.key, m.value, int(ts * 1000) if ts is not None else None
    )


class WorkerRuntime:
    """What the agents share: built lazily inside the event loop, on the first batch."""

    def __init__(
        self, cfg: Config, metrics: WorkerMetrics, sink_factory: SinkFactory | None
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.sink_factory = sink_factory
        self._ingestor: Ingestor | None = None
        self._stage: MonitorStage | None = None
        self._output: OutputProducer | None = None

    @property
    def output(self) -> OutputProducer:
        if self._output is None:
            self._output = OutputProducer(self.cfg)
        return self._output

    @property
    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            cfg = self.cfg
            join = RedisJoin(
                redis_client(cfg),
                cfg.redis.key_prefix,
                cfg.join.prediction_ttl_s,
                cfg.join.label_ttl_s,
                cfg.join.dedupe_ttl_s,
            )
            factory = self.sink_factory or routing_sink
            sink = factory(cfg, self.output, self.metrics)
            self._ingestor = Ingestor(cfg, join, self.output, self.metrics, sink)
        return self._ingestor

    @property
    def stage(self) -> MonitorStage:
        if self._stage is None:
            cfg = self.cfg
            self._stage = MonitorStage(
                cfg,
                redis_client(cfg),
                self.output,
                self.metrics,
                partition_count(cfg, cfg.topics.predictions),
                partition_count(cfg, cfg.topics.labels),
            )
        return self._stage


def routing_sink(cfg: Config, output: OutputProducer, _metrics: WorkerMetrics) -> MonitorSink:
    return RoutingSink(cfg, output)


SinkFactory = Callable[[Config, OutputProducer, WorkerMetrics], MonitorSink]


def build_app(
    cfg: Config,
    metrics: WorkerMetrics | None = None,
    sink_factory: SinkFactory | None = None,
) -> faust.App:
    """The Faust application for ``cfg``; ``streamproc worker`` runs it."""
    metrics = metrics or WorkerMetrics()
    datadir = cache_dir() / "faust" / cfg.worker.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    runtime = WorkerRuntime(cfg, metrics, sink_factory)
    app = faust.App(
        cfg.worker.app_id,
        broker=[f"kafka://{b.strip()}" for b in cfg.kafka.bootstrap.split(",")],
        broker_credentials=broker_credentials(cfg.kafka),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_host=cfg.worker.web_host,
        web_bind=cfg.worker.web_host,
        web_port=cfg.worker.web_port,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=cfg.worker.batch_size,
        stream_buffer_maxsize=max(4 * cfg.worker.batch_size, 4096),
        broker_commit_every=cfg.worker.batch_size,
        broker_commit_interval=1.0,
        # How long a crashed worker's partitions stay unowned (Faust's default is 60 s).
        # aiokafka heartbeats from Faust's consumer thread, so a busy agent does not delay them.
        broker_session_timeout=cfg.worker.session_timeout_s,
        broker_heartbeat_interval=min(3.0, cfg.worker.session_timeout_s / 3),
        consumer_max_fetch_size=16 * 1024 * 1024,
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(datadir),
    )
    app.streamproc_runtime = runtime  # type: ignore[attr-defined]
    predictions = app.topic(cfg.topics.predictions, key_type=bytes, value_type=bytes)
    labels = app.topic(cfg.topics.labels, key_type=bytes, value_type=bytes)
    ensure_observations_topic(cfg)
    observations = app.topic(observations_topic(cfg), key_type=bytes, value_type=bytes)
    size, within = cfg.worker.batch_size, cfg.worker.batch_within_s

    def track_lag(events: Any, role: str) -> None:
        last: dict[Any, int] = {}
        for e in events:
            last[e.message.tp] = e.message.offset
        for tp, offset in last.items():
            high = app.consumer.highwater(tp)
            if high is not None:
                metrics.consumer_lag.labels(topic=role, partition=str(tp.partition)).set(
                    max(high - offset - 1, 0)
                )

    @app.agent(predictions, name="predictions")
    async def ingest_predictions(stream: faust.StreamT) -> None:
        async for events in stream.take_events(size, within=within):
            await runtime.ingestor.on_predictions([_raw(e) for e in events])
            track_lag(events, "predictions")

    @app.agent(labels, name="labels")
    async def ingest_labels(stream: faust.StreamT) -> None:
        async for events in stream.take_events(size, within=within):
            await runtime.ingestor.on_labels([_raw(e) for e in events])
            track_lag(events, "labels")

    @app.agent(observations, name="monitors")
    async def run_monitors(stream: faust.StreamT) -> None:
        async for events in stream.take_events(size, within=within):
            await runtime.stage.on_inputs(
                [(e.message.partition, e.message.offset, e.message.value) for e in events]
            )

    @app.timer(interval=cfg.join.sweep_interval_s)
    async def sweep() -> None:
        await runtime.ingestor.sweep()

    @app.timer(interval=min(5.0, cfg.monitoring.idle_timeout_s / 4))
    async def retire_idle_sources() -> None:
        await runtime.stage.tick()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            metrics.render(), content_type=CONTENT_TYPE_LATEST.split(";")[0],
            headers={"X-Prometheus-Exposition": CONTENT_TYPE_LATEST},
        )  # fmt: skip

    return app


def run(args: argparse.Namespace) -> int:
    """``streamproc worker``: run until SIGTERM/SIGINT."""
    cfg = load_config(args.config)
    use_event_loop(cfg.worker.event_loop)
    check_join_layout(cfg)
    tune_gc()
    app = build_app(cfg)
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


# Young collections every 20,000 container allocations instead of 700, and full ones 10x rarer.
GC_THRESHOLDS = (20_000, 20, 100)


def tune_gc() -> None:
    """Make the cyclic garbage collector run less often in the worker process.

    Every consumed batch allocates many short-lived containers (decoded events, the keyed
    topic's observations, their dicts) while the worker holds a large, long-lived heap (Faust,
    the monitors' state): with CPython's default thresholds (700, 10, 10) the collector kept
    re-scanning that heap and took about a fifth of the worker's CPU (measured with
    bench/pipeline_throughput.py). Nothing in the worker relies on prompt collection of cycles;
    reference counting still frees everything else at once.

    Examples
    --------
    >>> old = gc.get_threshold()
    >>> tune_gc(); gc.get_threshold() == GC_THRESHOLDS
    True
    >>> gc.set_threshold(*old)
    """
    gc.set_threshold(*GC_THRESHOLDS)


def use_event_loop(kind: str) -> None:
    """Make ``kind`` (``"uvloop"`` or ``"asyncio"``) the loop of every thread Faust starts.

    Faust spends several event-loop round trips on each message (fetch hand-over, conductor,
    stream iterator, acks); uvloop makes them cheaper (``bench/README.md``). Call this before
    the app and its worker exist: the policy decides the loops they and Faust's consumer
    thread create.

    Raises
    ------
    ConfigError
        ``"uvloop"`` was asked for but uvloop is not installed.

    Examples
    --------
    >>> use_event_loop("asyncio")
    >>> loop = asyncio.new_event_loop()
    >>> type(loop).__module__
    'asyncio.unix_events'
    >>> loop.close()
    """
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError(
                "worker.event_loop is uvloop but uvloop is not installed; install it or set "
                "STREAMPROC_WORKER_EVENT_LOOP=asyncio"
            ) from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)  # the default policy


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="run a Faust worker (ingest, join, monitor)")
    p.add_argument("--loglevel", default="WARN", choices=["DEBUG", "INFO", "WARN", "ERROR"])
    p.set_defaults(func=run)
