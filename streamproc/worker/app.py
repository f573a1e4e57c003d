"""The Faust worker: the wiring of the stages onto agents, timers and ``/metrics``.

Agents (one per topic, each over the partitions the group gives this worker):

- ``predictions`` and ``labels``: :class:`~streamproc.ingest.ingestor.Ingestor` decodes,
  dead-letters and joins each batch, then :class:`~streamproc.publish.sources.SourceStage`
  folds it into window partials (with per-tick summaries) and sends the complete ones on;
- ``partials``: :class:`~streamproc.publish.judging.JudgeStage` merges the partials of the models
  on its partitions, judges windows and publishes alerts and metrics.

The commit order of each is :mod:`streamproc.publish.commit`. Timers: the join's sweep, quiet
sources (so windows close when traffic stops), retrying quarantined models, each stage's
progress into Redis for ``streamproc status``, and the partition watch
(:mod:`streamproc.worker.partitions`: an owned partition with input waiting at the broker that
the consumer does not fetch makes the group rebalance, then ends the worker if it persists).

A worker never stays up with a dead stage: an unexpected exception in an agent (not a data
error, which is dead-lettered, nor Redis or Kafka being away, which is retried) is logged with
its traceback and ends the process at once, before the batch's offsets can be committed, so the
batch is read again by the restarted process or another worker. Faust's own agent crashes end
the worker too (``CrashingSupervisor``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import ssl
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode
from aiokafka.errors import ConsumerStoppedError, KafkaError
from prometheus_client import CONTENT_TYPE_LATEST

from streamproc.config import Config, KafkaConfig, load_config
from streamproc.dev.stack import cache_dir
from streamproc.errors import ConfigError
from streamproc.ingest.ingestor import Ingestor, RawMessage, check_join_layout
from streamproc.ingest.join import RedisJoin
from streamproc.kafka.producer import OutputProducer
from streamproc.kafka.retry import TRANSIENT
from streamproc.kafka.topics import partition_count
from streamproc.offload import off_loop
from streamproc.publish.judging import JudgeStage
from streamproc.publish.keys import Keys
from streamproc.publish.sources import SourceStage, ensure_partials_topic, partials_topic
from streamproc.redis_client import AsyncClient, async_client
from streamproc.worker.memory import HeapTrimmer
from streamproc.worker.metrics import WorkerMetrics
from streamproc.worker.partitions import PartitionWatch

log = logging.getLogger(__name__)
FATAL_EXIT = 70
HEARTBEAT_TTL_S = 120


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


def redis_client(cfg: Config) -> AsyncClient:
    """The stages' Redis client: it writes checkpoints of many MB (see
    :func:`streamproc.redis_client.async_client`)."""
    return async_client(cfg.redis, large_values=True)


def _raw(event: Any) -> RawMessage:
    m = event.message
    ts = m.timestamp
    return RawMessage(
        m.topic, m.partition, m.offset, m.key, m.value, int(ts * 1000) if ts is not None else None
    )


def fatal(stage: str, exc: BaseException) -> None:
    """End the process now: a stage hit a bug, and its batch must not be acknowledged."""
    log.critical(
        "stage %s failed; the worker exits so the batch is read again after a restart:\n%s",
        stage, "".join(traceback.format_exception(exc)),
    )  # fmt: skip
    logging.shutdown()
    os._exit(FATAL_EXIT)


class WorkerRuntime:
    """What the agents share: built lazily inside the event loop, on the first use."""

    def __init__(self, cfg: Config, metrics: WorkerMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.worker_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.partitions = ensure_partials_topic(cfg)
        self.prediction_partitions = partition_count(cfg, cfg.topics.predictions)
        self.label_partitions = partition_count(cfg, cfg.topics.labels)
        self._client: AsyncClient | None = None
        self._output: OutputProducer | None = None
        self._sources: SourceStage | None = None
        self._ingestor: Ingestor | None = None
        self._judges: JudgeStage | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            self._client = redis_client(self.cfg)
        return self._client

    @property
    def output(self) -> OutputProducer:
        if self._output is None:
            self._output = OutputProducer(self.cfg)
        return self._output

    @property
    def sources(self) -> SourceStage:
        if self._sources is None:
            self._sources = SourceStage(
                self.cfg, self.client, self.output, self.metrics, self.partitions
            )
        return self._sources

    @property
    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            cfg = self.cfg
            join = RedisJoin(
                self.client, cfg.redis.key_prefix, cfg.join.prediction_ttl_s,
                cfg.join.label_ttl_s, cfg.join.dedupe_ttl_s,
            )  # fmt: skip
            self._ingestor = Ingestor(cfg, join, self.output, self.metrics, self.sources)
        return self._ingestor

    @property
    def judges(self) -> JudgeStage:
        if self._judges is None:
            self._judges = JudgeStage(
                self.cfg, self.client, self.output, self.metrics, self.prediction_partitions,
                self.label_partitions, self.partitions,
            )  # fmt: skip
        return self._judges


def build_app(cfg: Config, metrics: WorkerMetrics | None = None) -> faust.App:
    """The Faust application for ``cfg``; ``streamproc worker`` runs it."""
    metrics = metrics or WorkerMetrics()
    datadir = cache_dir() / "faust" / cfg.worker.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    runtime = WorkerRuntime(cfg, metrics)
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
        topic_replication_factor=cfg.kafka.replication_factor,
        producer_acks=-1,  # all in-sync replicas
        topic_disable_leader=True,
        store="memory://",
        datadir=str(datadir),
        # An agent that crashes takes the worker down: never a live process with a dead stage.
        agent_supervisor=mode.CrashingSupervisor,
    )
    app.streamproc_runtime = runtime  # type: ignore[attr-defined]
    predictions = app.topic(cfg.topics.predictions, key_type=bytes, value_type=bytes)
    labels = app.topic(cfg.topics.labels, key_type=bytes, value_type=bytes)
    partials = app.topic(partials_topic(cfg), key_type=bytes, value_type=bytes)
    size, within = cfg.worker.batch_size, cfg.worker.batch_within_s
    last_offset: dict[Any, int] = {}
    roles = {cfg.topics.predictions: "predictions", cfg.topics.labels: "labels",
             partials_topic(cfg): "judge"}  # fmt: skip

    busy_since: dict[str, float] = {}  # agent stage -> monotonic start of the batch it is in

    heap = HeapTrimmer()

    def track(events: Any, stage: str) -> None:
        heap.worked()
        for e in events:
            last_offset[e.message.tp] = e.message.offset
        metrics.stage_progress.labels(stage=stage).set(time.time())
        seen = {e.message.tp for e in events}
        for tp in seen:
            high = app.consumer.highwater(tp)
            if high is not None and stage != "judge":
                metrics.consumer_lag.labels(topic=stage, partition=str(tp.partition)).set(
                    max(high - last_offset[tp] - 1, 0)
                )

    async def guarded(stage: str, work: Callable[[], Awaitable[Any]], batch: bool = False) -> None:
        if batch:
            busy_since[stage] = time.monotonic()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fatal(stage, exc)
        finally:
            if batch:
                busy_since.pop(stage, None)

    @app.agent(predictions, name="predictions")
    async def ingest_predictions(stream: faust.StreamT) -> None:
        async for events in stream.take_events(size, within=within):
            batch = [_raw(e) for e in events]
            await guarded(
                "predictions", lambda b=batch: runtime.ingestor.on_predictions(b), batch=True
            )
            track(events, "predictions")

    @app.agent(labels, name="labels")
    async def ingest_labels(stream: faust.StreamT) -> None:
        async for events in stream.take_events(size, within=within):
            batch = [_raw(e) for e in events]
            await guarded("labels", lambda b=batch: runtime.ingestor.on_labels(b), batch=True)
            track(events, "labels")

    @app.agent(partials, name="judge")
    async def judge(stream: faust.StreamT) -> None:
        async for events in stream.take_events(size, within=within):
            batch = [(e.message.partition, e.message.offset, e.message.value) for e in events]
            await guarded("judge", lambda b=batch: runtime.judges.on_messages(b), batch=True)
            track(events, "judge")

    # The broker's end offset of each owned partition, as the partition watch last asked it:
    # the consumer's own high-water mark only moves when it fetches the partition.
    ends: dict[Any, int] = {}

    def next_offset(tp: Any) -> int:
        """The next offset this worker reads in ``tp``: after the last record it processed, or,
        with none processed since the assignment, where the assignment's seek left it (the
        committed offset, which Faust keeps as the read offset); never before the group's
        committed offset (a batch that ended after its partition was revoked is forgotten)."""
        done = last_offset.get(tp)
        at = done + 1 if done is not None else app.consumer._read_offset.get(tp) or 0
        return max(at, app.consumer._committed_offset.get(tp) or 0)

    def assigned(role: str) -> dict[Any, bool]:
        """This worker's partitions of a topic role, each with 'nothing left to read'."""
        out = {}
        for tp in app.consumer.assignment():
            if roles.get(tp.topic) != role:
                continue
            highs = [h for h in (app.consumer.highwater(tp), ends.get(tp)) if h is not None]
            # a partition committed to its end is caught up without reading anything
            out[tp] = not highs or next_offset(tp) >= max(highs)
        return out

    watch: PartitionWatch[Any] = PartitionWatch(cfg.worker.stall_timeout_s)
    rejoined: list[float] = []  # when this worker asked the group to rebalance over a stall

    @app.timer(interval=max(1.0, cfg.worker.stall_timeout_s / 6))
    async def watch_partitions() -> None:
        await guarded("watch", check_partitions)

    async def check_partitions() -> None:
        tps = [tp for tp in app.consumer.assignment() if tp.topic in roles]
        if not tps:
            return
        try:
            ends.update(await app.consumer.highwaters(*tps))
        except ConsumerStoppedError:  # the worker is stopping
            return
        except (KafkaError, *TRANSIENT) as exc:  # a broker away, or a rebalance under way
            metrics.infra_errors.labels(component="kafka").inc()
            log.warning("partition watch: end offsets not read (%s); next try soon", exc)
            return
        now = time.monotonic()
        positions = {tp: (next_offset(tp), ends[tp]) for tp in tps if tp in ends}
        unfed: list[tuple[str, str, int, float]] = []  # stage, partition, waiting, waited
        for stall in watch.observe(now, positions):
            stage = roles[stall.partition.topic]
            metrics.partition_stalls.labels(stage=stage).inc()
            where = f"{stall.partition.topic}:{stall.partition.partition}"
            waiting = stall.end_offset - stall.next_offset
            started = busy_since.get(stage)
            if started is not None and started <= now - stall.waited_s:
                # The stage sits in one batch (retrying Redis or Kafka, which it logs): the
                # consumer is not at fault, and the stage's own stall shows in its gauges.
                log.error(
                    "partition %s: %d messages wait at the broker and none was read for %.0f s; "
                    "the %s stage has been in one batch all that time", where, waiting,
                    stall.waited_s, stage,
                )  # fmt: skip
            else:
                unfed.append((stage, where, waiting, stall.waited_s))
        for role in set(roles.values()):
            metrics.partitions_stalled.labels(stage=role).set(0)
        for tp in watch.stalled:
            metrics.partitions_stalled.labels(stage=roles[tp.topic]).inc()
        if not unfed:
            return
        if rejoined and now - rejoined[-1] < 4 * cfg.worker.stall_timeout_s:
            _, where, waiting, waited = unfed[0]
            fatal("fetch", RuntimeError(
                f"partition {where}: {waiting} messages wait at the broker and none was read "
                f"for {waited:.0f} s, again after the group rebalanced over a stall; the worker "
                "exits so the group gives its partitions to a fresh consumer"
            ))  # fmt: skip
        for stage, where, waiting, waited in unfed:
            log.error(
                "partition %s: %d messages wait at the broker and none was read for %.0f s while "
                "the %s stage waits for input: the consumer is not fetching it; asking the group "
                "to rebalance (every partition is sought to its committed offset again)", where,
                waiting, waited, stage,
            )  # fmt: skip
        rejoined.append(now)
        await request_rejoin(app)
        watch.forget()  # what still waits after the rebalance is timed anew

    @app.timer(interval=cfg.join.sweep_interval_s)
    async def sweep() -> None:
        await guarded("sweep", runtime.ingestor.sweep)

    @app.timer(interval=min(5.0, cfg.monitoring.idle_timeout_s / 4))
    async def quiet_sources() -> None:
        quiet = {}
        for role, prefix in (("predictions", "p"), ("labels", "l")):
            for tp, caught_up in assigned(role).items():
                quiet[f"{prefix}{tp.partition}"] = caught_up
        await guarded("idle", lambda: runtime.sources.report_idle(quiet))

    @app.timer(interval=max(5.0, cfg.monitoring.baseline_refresh_s))
    async def quarantine() -> None:
        await guarded("judge", runtime.judges.retry_quarantined)

    @app.task
    async def loop_lag() -> None:
        """Measure how long the event loop stays blocked: a 100 ms sleep that wakes late."""
        await watch_loop_lag(metrics)

    @app.timer(interval=10.0)
    async def heartbeat() -> None:
        async def beat() -> None:
            try:
                await write_heartbeat(runtime, assigned, metrics)
            except TRANSIENT as exc:  # Redis away (a failover): the next beat writes it
                metrics.infra_errors.labels(component="redis").inc()
                log.warning("heartbeat not written (%s); next one in 10 s", exc)

        await guarded("heartbeat", beat)

    if cfg.worker.memory_trim_s is not None and heap.available:

        @app.timer(interval=cfg.worker.memory_trim_s)
        async def trim_heap() -> None:
            async def trim() -> None:
                released = await off_loop(heap.trim_if_worked)  # ~10 ms per 200 MB freed
                if released is not None:
                    metrics.heap_trims.inc()
                    metrics.heap_trimmed.inc(released)

            await guarded("memory", trim)

    @app.on_partitions_revoked.connect
    async def on_revoked(_sender: Any, revoked: Any, **_kw: Any) -> None:
        by_role: dict[str, list[int]] = {}
        for tp in revoked:
            # another worker may read on from here: no stale position if it comes back
            last_offset.pop(tp, None)
            ends.pop(tp, None)
            role = roles.get(tp.topic)
            if role is not None:
                by_role.setdefault(role, []).append(tp.partition)
        watch.forget(revoked)
        if runtime._sources is not None:
            runtime.sources.revoke(
                [f"p{p}" for p in by_role.get("predictions", [])]
                + [f"l{p}" for p in by_role.get("labels", [])]
            )
        if runtime._judges is not None:
            runtime.judges.revoke(by_role.get("judge", []))

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            metrics.render(request.query.getall("name[]", ())),
            content_type=CONTENT_TYPE_LATEST.split(";")[0],
            headers={"X-Prometheus-Exposition": CONTENT_TYPE_LATEST},
        )  # fmt: skip

    return app


async def request_rejoin(app: faust.App) -> None:
    """Ask the consumer group to rebalance, from the consumer's own thread (aiokafka's
    coordinator is not thread-safe): every member revokes, rejoins and seeks again."""
    thread = app.consumer._thread  # type: ignore[attr-defined]

    async def rejoin() -> None:
        thread._ensure_consumer()._coordinator.request_rejoin()

    await thread.call_thread(rejoin)


async def watch_loop_lag(metrics: WorkerMetrics, interval: float = 0.1) -> None:
    """Forever: sleep ``interval`` and record how much later than asked the loop woke."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        lag = max(loop.time() - asked - interval, 0.0)
        metrics.loop_lag.observe(lag)
        if lag > worst:
            worst = lag
            metrics.loop_lag_max.set(lag)


async def write_heartbeat(
    runtime: WorkerRuntime, assigned: Callable[[str], dict[Any, bool]], metrics: WorkerMetrics
) -> None:
    """Each stage's last progress and whether input waits for it, for ``streamproc status``
    (and the pending-input gauge the stall rule reads)."""
    fields: dict[str, str] = {"at": f"{time.time():.3f}"}
    for stage in ("predictions", "labels", "judge"):
        parts = assigned(stage)
        waiting = sum(1 for caught_up in parts.values() if not caught_up)
        metrics.stage_pending.labels(stage=stage).set(waiting)
        last = metrics.stage_progress.labels(stage=stage)._value.get()
        fields[f"{stage}.last_progress"] = f"{last:.3f}"
        fields[f"{stage}.partitions"] = str(len(parts))
        fields[f"{stage}.waiting"] = str(waiting)
    if runtime._judges is not None:
        quarantined = {m: why for p in runtime.judges.parts.values()
                       for m, why in p.quarantined.items()}  # fmt: skip
        fields["quarantined"] = "; ".join(f"{m}: {w}" for m, w in sorted(quarantined.items()))
    key = Keys(runtime.cfg.redis.prefix).worker(runtime.worker_id)
    async with runtime.client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, HEARTBEAT_TTL_S)
        await pipe.execute()


def run(args: argparse.Namespace) -> int:
    """``streamproc worker``: run until SIGTERM/SIGINT."""
    cfg = load_config(args.config)
    use_event_loop(cfg.worker.event_loop)
    check_join_layout(cfg)
    tune_gc()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = build_app(cfg)
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


SWITCH_INTERVAL_S = 0.001
"""How long the offload thread may keep the GIL while the event loop waits for it (CPython's
default is 5 ms): each time the loop comes back from I/O it waits this long at most, and a
scrape of ``/metrics`` takes dozens of such trips."""

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
