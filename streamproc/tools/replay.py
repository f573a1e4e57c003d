"""``streamproc replay``: re-run the monitors over a topic range, offline, with a readable report.

A replay reads a range of the predictions topic (and, optionally, the labels that joined them)
and feeds it through the worker's own stages in one process
(:class:`~streamproc.tools.inprocess.InProcessPipeline`: the ingestor with an in-memory join,
the aggregation stage, one judge per model), with the same ``monitoring`` configuration and the
same references, then writes what the judges emitted to a directory:

``alerts.jsonl`` / ``metrics.jsonl``
    ``alert.v1`` / ``metrics.v1`` records, msgspec-encoded, one per line, in emission order.
``report.html``
    One self-contained page (:mod:`streamproc.tools.report`): prediction shift, features ranked by
    PSI with histograms, the worst segments, and when each signal started.

Isolation
    A replay runs in its own namespace. It reads baselines from Redis and writes nothing there;
    it reads Kafka with ``assign`` under a throw-away group id with ``enable.auto.commit`` off,
    so it commits no offset and joins no group; it never writes to ``topics.alerts``
    (``--publish`` sends the replay's alerts to another topic, and refuses the live ones).

Ranges
    ``--partition P --from-offset A --to-offset B`` (inclusive; repeat the three per partition),
    ``--from-time/--to-time`` (record time, every partition, Kafka's time index), or
    ``--from-alert ID``: the alert is looked up on ``topics.alerts`` and its
    ``source.offsets`` (partition -> [first, last]) replayed, extended back by
    ``--lookback-windows`` windows (default 3) so that the windows before the alert, and the
    detectors' history, are rebuilt too. The lookback is a time: ``window start - N x window``;
    each partition starts at the first offset whose record time is at or after it
    (``offsets_for_times``), or at the alert's own first offset when that is earlier, and never
    before the partition's low watermark.

Determinism
    Records of both topics are fed in record-time order (each partition in offset order, ties
    broken by topic, partition and offset), in batches, so the order depends on the data alone;
    a source is quiet (its windows may close) when the next record is more than
    ``idle_timeout_s`` past its last one, as a worker that read it live found it. Each model is
    judged with the reference timeline its live judge decided (``P:timeline:<model>`` in Redis:
    which baseline judged which window) when there is one, else with the stored baselines from
    its first window. ``emitted_at`` is one fixed stamp: ``--emitted-at``, else the end of the
    last window of the replayed data, never the wall clock. A replay of the offsets a worker
    processed gives back its alerts field for field, and two replays of one range write
    byte-identical ``alerts.jsonl`` and ``metrics.jsonl``. At the end every open window is
    closed; a last window that the range cuts short is judged on what it holds, without volume.

Labels
    ``--labels-topic`` reads label.v1 events over the record-time span of the predictions read,
    plus ``--label-grace`` seconds, and feeds them with the predictions in record-time order,
    so they join and count as they did in the worker.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from streamproc.baseline import NumericReference
from streamproc.baseline.reference import Reference
from streamproc.contracts import Alert, Incident, MetricsRecord, encode, event_time
from streamproc.errors import StreamprocError
from streamproc.ingest.ingestor import RawMessage
from streamproc.judge import stats
from streamproc.judge.timeline import ReferenceTimeline, TimelineState
from streamproc.kafka import ranges as kafka_ranges
from streamproc.kafka.ranges import Ranges
from streamproc.tools.inprocess import InProcessPipeline
from streamproc.tools.report import FeatureHistogram

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from streamproc.baseline import ReferenceProfile
    from streamproc.config import Config, MonitoringConfig

__all__ = [
    "EmptyRangeError",
    "OutOfRetentionError",
    "ReplayError",
    "ReplayOptions",
    "ReplayResult",
    "UnknownAlertError",
    "UnknownPartitionError",
    "apply_overrides",
    "check_publish_topic",
    "publish",
    "register_cli",
    "replay",
    "write_outputs",
]

FEED_BATCH = 200  # consecutive messages of one topic fed as one batch
BUFFER_LIMIT = 200  # messages buffered per partition before it is paused


class ReplayError(StreamprocError):
    """A replay could not run; the message says what to change."""


class UnknownPartitionError(ReplayError):
    """The topic does not exist, or has no such partition."""


class OutOfRetentionError(ReplayError):
    """The range starts before the oldest offset Kafka still holds."""


class EmptyRangeError(ReplayError):
    """The range holds no record (or no prediction of the model)."""


class UnknownAlertError(ReplayError):
    """No alert with that id on the alerts topic."""


# -- events to monitor inputs (the worker's RoutingSink builds the same) ------------------------


# -- configuration overrides --------------------------------------------------------------------


def _scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(
    cfg: MonitoringConfig, window_s: float | None = None, thresholds: Sequence[str] = ()
) -> MonitoringConfig:
    """``cfg`` with ``--window`` and ``--threshold key=value`` applied, validated.

    Keys are :class:`~streamproc.config.MonitoringConfig` fields, dotted into a
    :class:`~streamproc.config.Tiers` (``psi.warning``).

    Raises
    ------
    ReplayError
        An unknown key, a value of the wrong type, or a window that is not a multiple of
        ``tick_s``.

    Examples
    --------
    >>> from streamproc.config import MonitoringConfig
    >>> c = apply_overrides(MonitoringConfig(), 120, ["psi.warning=0.2", "min_window_count=50"])
    >>> c.window_s, c.psi.warning, c.psi.critical, c.min_window_count
    (120.0, 0.2, 0.25, 50)
    >>> apply_overrides(MonitoringConfig(), thresholds=["psi.warm=1"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamproc.tools.replay.ReplayError: --threshold psi.warm=1: unknown key psi.warm ...
    """
    from streamproc.config import MonitoringConfig

    raw = msgspec.to_builtins(cfg)
    if window_s is not None:
        raw["window_s"] = window_s
    for item in thresholds:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ReplayError(f"--threshold {item!r}: expected key=value (e.g. psi.warning=0.2)")
        path = key.strip().split(".")
        node = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict) or path[-1] not in node:
            known = sorted(raw)
            raise ReplayError(
                f"--threshold {item}: unknown key {key} (keys: {', '.join(known)}; "
                "tiers take .warning, .critical or .clear)"
            )
        node[path[-1]] = _scalar(value)
    try:
        out = msgspec.convert(raw, MonitoringConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ReplayError(f"invalid override: {exc}") from None
    ratio = out.window_s / out.tick_s
    if abs(ratio - round(ratio)) > 1e-9:
        raise ReplayError(
            f"--window {out.window_s:g} is not a multiple of monitoring.tick_s ({out.tick_s:g})"
        )
    return out


# -- Kafka ranges -------------------------------------------------------------------------------


def _consumer(cfg: Config) -> Consumer:
    # assign() only: the group id is never joined, and nothing is committed or stored.
    return kafka_ranges.consumer(
        cfg,
        "replay",
        offset_reset="error",
        fetch_bytes=max(cfg.worker.max_message_bytes, 16_777_216),
    )


@contextmanager
def _replay_errors() -> Iterator[None]:
    """A range error as the replay's own: a missing topic is an unknown partition."""
    try:
        yield
    except kafka_ranges.UnknownTopicError as exc:
        raise UnknownPartitionError(str(exc)) from None
    except kafka_ranges.RangeError as exc:
        raise ReplayError(str(exc)) from None


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    with _replay_errors():
        return kafka_ranges.partitions(consumer, topic)


def _rfc3339_ms(text: str, flag: str) -> int:
    try:
        return round(event_time(text, None) * 1000)
    except ValueError:
        raise ReplayError(f"{flag} {text!r} is not an RFC 3339 time") from None


def offset_ranges(
    consumer: Consumer, topic: str, requested: Sequence[tuple[int, int, int]], notes: list[str]
) -> Ranges:
    """Check ``(partition, from, to)`` triples against the topic; clamp ``to`` to the end.

    Raises
    ------
    UnknownPartitionError, OutOfRetentionError, EmptyRangeError
    """
    parts = _partitions(consumer, topic)
    out: Ranges = {}
    for p, first, last in requested:
        if p not in parts:
            raise UnknownPartitionError(
                f"topic {topic!r} has no partition {p} (partitions {parts[0]}..{parts[-1]})"
            )
        if p in out:
            raise ReplayError(f"partition {p} is given twice")
        if first < 0 or last < first:
            raise ReplayError(f"partition {p}: offsets {first}..{last} need 0 <= from <= to")
        low, high = kafka_ranges.watermarks(consumer, topic, p)
        if first < low:
            raise OutOfRetentionError(
                f"{topic}[{p}] offset {first} is out of retention: the oldest offset kept is "
                f"{low} (replay from --from-offset {low})"
            )
        if first >= high:
            raise EmptyRangeError(
                f"{topic}[{p}] offsets {first}..{last} hold no record: the partition ends at "
                f"offset {high - 1}"
            )
        if last >= high:
            notes.append(f"{topic}[{p}]: --to-offset {last} is past the end; read to {high - 1}")
            last = high - 1
        out[p] = (first, last)
    return out


def time_ranges(consumer: Consumer, topic: str, from_ms: int, to_ms: int) -> Ranges:
    """Per partition, the offsets of the records with a record time in ``[from_ms, to_ms)``."""
    with _replay_errors():
        return kafka_ranges.time_ranges(consumer, topic, from_ms, to_ms)


def find_alert(cfg: Config, alert_id: str, timeout_s: float) -> Alert:
    """The alert on ``topics.alerts`` whose id is ``alert_id`` (or starts with it, if unique).

    Raises
    ------
    UnknownAlertError
    """
    topic = cfg.topics.alerts
    decoder = msgspec.json.Decoder(Alert)
    consumer = _consumer(cfg)
    found: dict[str, Alert] = {}
    try:
        with _replay_errors():
            todo = kafka_ranges.retained_ranges(consumer, topic)
        # Kafka errors other than a partition's end are skipped: the scan is best effort.
        records = kafka_ranges.read(consumer, topic, todo, timeout_s, on_error=lambda _: None)
        with closing(records):
            for msg in records:
                if msg.error() is not None:  # the partition ended early
                    continue
                try:
                    alert = decoder.decode(msg.value() or b"")
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if alert.alert_id == alert_id:
                    return alert
                if alert.alert_id.startswith(alert_id):
                    found[alert.alert_id] = alert
    except kafka_ranges.StalledReadError:
        raise ReplayError(f"timed out after {timeout_s:g} s scanning {topic!r}") from None
    finally:
        consumer.close()
    if len(found) == 1 and len(alert_id) >= 8:
        return next(iter(found.values()))
    if len(found) > 1:
        raise UnknownAlertError(f"alert id {alert_id!r} is ambiguous: {', '.join(sorted(found))}")
    raise UnknownAlertError(f"no alert {alert_id!r} on {topic!r} (every retained alert was read)")


def alert_ranges(
    consumer: Consumer,
    alert: Alert,
    window_s: float,
    lookback_windows: int,
    notes: list[str],
) -> Ranges:
    """The alert's ``source.offsets``, extended back by ``lookback_windows`` windows of time."""
    topic = alert.source.topic
    if not alert.source.offsets:
        raise EmptyRangeError(f"alert {alert.alert_id} names no offsets to replay")
    parts = _partitions(consumer, topic)
    start = event_time(alert.window.start, None)
    since = math.floor(start / window_s) * window_s - lookback_windows * window_s
    requested = {int(p): (int(a), int(b)) for p, (a, b) in alert.source.offsets.items()}
    missing = sorted(set(requested) - set(parts))
    if missing:
        raise UnknownPartitionError(f"topic {topic!r} has no partition {missing[0]}")
    with _replay_errors():
        found = kafka_ranges.offsets_at(consumer, topic, sorted(requested), round(since * 1000))
    out: Ranges = {}
    for p, offset in found.items():
        first, last = requested[p]
        low, high = kafka_ranges.watermarks(consumer, topic, p)
        begin = min(first, offset) if offset >= 0 else first
        if begin < low:
            notes.append(
                f"{topic}[{p}]: the lookback reaches before the oldest offset kept; from {low}"
            )
            begin = low
        if first < low:
            raise OutOfRetentionError(
                f"{topic}[{p}] offsets {first}..{last} of alert {alert.alert_id} are "
                f"out of retention (oldest offset kept: {low})"
            )
        out[p] = (begin, min(last, high - 1))
    return out


# -- reading ------------------------------------------------------------------------------------


@dataclass
class ReadStats:
    messages: int = 0
    events: int = 0
    rejected: int = 0
    duplicates: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


class Progress:
    """Events/s and ETA on stderr: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO, every_s: float = 5.0) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every_s = 0.2 if self.tty else every_s
        self.began = time.monotonic()
        self.last = self.began

    def line(self, done: int, events: int) -> str:
        elapsed = max(time.monotonic() - self.began, 1e-9)
        rate = events / elapsed
        left = (self.total - done) * (elapsed / done) if done else math.inf
        eta = f"{left:.0f} s" if math.isfinite(left) else "?"
        return (
            f"replay: {done}/{self.total} messages ({100 * done / self.total:.0f}%), "
            f"{events} events, {rate:,.0f} events/s, ETA {eta}"
        )

    def update(self, done: int, events: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every_s:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(done, events) + ("\n" if final else ""))
        else:
            self.stream.write(self.line(done, events) + "\n")
        self.stream.flush()


def _read(
    consumer: Consumer,
    topic: str,
    ranges: Ranges,
    timeout_s: float,
    after_batch: Callable[[], tuple[list[int], list[int]]],
) -> Iterator[Message]:
    """The records of ``ranges`` as they arrive (offset order within a partition).

    After each consumed batch, ``after_batch()`` names the partitions to pause and to resume
    (flow control: a partition far ahead of the others stops being fetched). A partition that
    ends before its range does is reported by yielding its end-of-partition event.
    """
    with _replay_errors():
        yield from kafka_ranges.read(consumer, topic, ranges, timeout_s, flow=after_batch)


# -- the replay ---------------------------------------------------------------------------------


@dataclass
class ReplayOptions:
    """What to replay and how; see ``streamproc replay --help``."""

    out: Path
    topic: str | None = None
    offsets: list[tuple[int, int, int]] = field(default_factory=list)
    from_time: str | None = None
    to_time: str | None = None
    from_alert: str | None = None
    lookback_windows: int = 3
    model: str | None = None
    labels_topic: str | None = None
    label_grace_s: float = 3600.0
    window_s: float | None = None
    thresholds: list[str] = field(default_factory=list)
    baseline_version: str | None = None
    baseline_range: str | None = None
    baseline_segments: list[str] | None = None
    emitted_at: str | None = None
    publish: str | None = None
    timeout_s: float = 30.0
    measure_raw: bool = False


@dataclass
class ReplayResult:
    """What a replay emitted, and how it read."""

    alerts: list[Alert]
    metrics: list[MetricsRecord]
    histograms: list[FeatureHistogram]
    monitoring: MonitoringConfig
    topic: str
    ranges: Ranges
    stats: ReadStats
    seconds: float
    emitted_at: str
    context: list[tuple[str, str]]
    notes: list[str]
    alert: Alert | None = None
    incidents: list[Incident] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.stats.events / self.seconds if self.seconds > 0 else 0.0


class _References:
    """Each model's references: its live timeline, the stored baselines, or the overrides."""

    def __init__(self, cfg: Config, opts: ReplayOptions, topic: str) -> None:
        self.cfg = cfg
        self.opts = opts
        self.topic = topic
        self._store: Any = None
        self._client: Any = None
        self._built: dict[tuple[str, str], ReferenceProfile] = {}
        self.described: dict[str, str] = {}

    def client(self) -> Any:
        if self._client is None:
            from streamproc.redis_client import sync_client

            self._client = sync_client(self.cfg.redis)
        return self._client

    def store(self) -> Any:
        if self._store is None:
            from streamproc.baseline import BaselineStore

            self._store = BaselineStore(self.client(), self.cfg.redis.prefix)
        return self._store

    def _call(self, what: Any) -> Any:
        import redis

        try:
            return what()
        except redis.RedisError as exc:
            raise ReplayError(f"Redis at {self.cfg.redis.url}: {exc}") from None

    def _profile(self, model: str, version: str) -> ReferenceProfile:
        """The profile that stands for ``version`` under the overrides."""
        opts = self.opts
        wanted = opts.baseline_version or version
        cached = self._built.get((model, wanted))
        if cached is not None:
            return cached
        if opts.baseline_range:
            from streamproc.baseline import BaselineError, profile_from_topic

            lo, sep, hi = opts.baseline_range.partition("..")
            if not sep or not lo or not hi:
                raise ReplayError(f"--baseline-range {opts.baseline_range!r}: expected FROM..TO")
            dims = opts.baseline_segments
            if dims is None:
                stored = self._call(lambda: self.store().latest(model))
                dims = list(stored.segment_dims) if stored is not None else []
                dims = dims or list(self.cfg.monitoring.segment_dims or [])
            try:
                profile = profile_from_topic(
                    self.cfg, self.topic, model, wanted, from_time=lo, to_time=hi,
                    labels_topic=opts.labels_topic, label_grace_s=opts.label_grace_s,
                    segment_dims=dims, timeout_s=opts.timeout_s,
                )  # fmt: skip
            except BaselineError as exc:
                raise ReplayError(f"--baseline-range: {exc}") from None
            self.described[model] = f"built from {profile.source} ({profile.rows} rows)"
        else:
            found = self._call(lambda: self.store().get(model, wanted))
            if found is None:
                known = self._call(lambda: self.store().versions(model))
                raise ReplayError(
                    f"no stored baseline {model}/{wanted}; stored versions: "
                    f"{', '.join(known) or 'none'}"
                )
            profile = found
            self.described[model] = f"stored baseline {model}/{wanted} ({profile.source})"
        self._built[(model, wanted)] = profile
        return profile

    def overridden(self) -> bool:
        return bool(self.opts.baseline_version or self.opts.baseline_range)

    def baselines(self, model: str) -> list[ReferenceProfile]:
        """The stored baselines of every version (when there is no live timeline)."""
        if self.overridden():
            return []
        profiles: list[ReferenceProfile] = self._call(lambda: self.store().all_versions(model))
        self.described.setdefault(
            model,
            "stored baselines " + ", ".join(f"{model}/{p.model_version}" for p in profiles)
            if profiles
            else "none stored: monitors warm up on their first windows",
        )
        return profiles

    def for_version(self, model: str, version: str) -> ReferenceProfile | None:
        """The override profile for a version seen for the first time (``None``: none)."""
        if not self.overridden():
            return None
        profile = self._profile(model, version)
        return msgspec.structs.replace(profile, model_version=version)

    def timeline(self, pipe: InProcessPipeline, model: str) -> bool:
        """Judge ``model`` with the timeline its live judge decided, when one is stored and
        every reference it names is still in Redis."""
        if self.overridden():
            return False
        import redis

        from streamproc.publish.keys import Keys

        blob = self._call(lambda: self.client().get(Keys(self.cfg.redis.prefix).timeline(model)))
        if not blob:
            return False
        try:
            timeline = ReferenceTimeline.restore(msgspec.msgpack.decode(blob, type=TimelineState))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        from streamproc.baseline.reference import decode_reference, ref_key

        fps = sorted(timeline.fps())
        blobs = self._call(
            lambda: self.client().mget([ref_key(self.cfg.redis.prefix, fp) for fp in fps])
        ) if fps else []  # fmt: skip
        refs = [decode_reference(b) for b in blobs]
        if any(r is None for r in refs):
            return False
        for ref in refs:
            pipe.refs.put(ref)  # type: ignore[arg-type]
        del redis
        pipe.use_timeline(model, timeline)
        entries = sorted(
            (e.start, v, e.created_at) for v, es in timeline.baselines.items() for e in es
        )
        what = "; ".join(
            f"{model}/{v} "
            + (f"baseline of {c}" if c else "deleted")
            + (f" from {_iso(t)}" if t > -math.inf else "")
            for t, v, c in entries
        )
        self.described[model] = f"the live judge's timeline: {what or 'warm-up only'}"
        return True


def _iso(t: float) -> str:
    from streamproc.judge.alerts import iso

    return iso(t)


class _Best:
    """Per (model, version, segment, feature): the window histogram of its largest PSI (the
    report's charts), from the windows the judges close."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.best: dict[tuple[str, str, str, str], FeatureHistogram] = {}

    def hook(self, model: str) -> Any:
        def on_window(version: str, key: str, start: float, ref: Reference, part: Any) -> None:
            from streamproc.judge.engine import segment_of

            window = (start, start + self.window_s)
            for name in [*ref.numeric, *ref.categorical]:
                hist = _histogram(model, version, segment_of(key), window, name, ref, part)
                k = (model, version, key, name)
                if hist is not None and (k not in self.best or hist.psi > self.best[k].psi):
                    self.best[k] = hist

        return on_window


def _histogram(
    model: str,
    version: str,
    segment: dict[str, str],
    window: tuple[float, float],
    name: str,
    ref: Reference,
    part: Any,
) -> FeatureHistogram | None:
    import numpy as np

    from streamproc.contracts import Window

    w = Window(_iso(window[0]), _iso(window[1]))
    fr = ref.segment.features.get(name)
    if isinstance(fr, NumericReference):
        sk = part.numeric.get(name)
        if sk is None or sk.count < 1:
            return None
        return FeatureHistogram(
            model_id=model, model_version=version, segment=segment, feature=name, window=w,
            psi=stats.psi(ref.probs[name], sk.hist), edges=[float(e) for e in fr.edges],
            reference=[float(p) for p in fr.probs], counts=[int(c) for c in sk.hist],
        )  # fmt: skip
    csk = part.categorical.get(name)
    if fr is None or csk is None or csk.count < 1:
        return None
    counts, probs = csk.counts, fr.probs
    every = sorted(set(probs) | set(counts))
    psi = stats.psi(
        np.array([probs.get(c, 0.0) for c in every]),
        np.array([counts.get(c, 0) for c in every], dtype=float),
    )
    cats = sorted(every, key=lambda c: (-probs.get(c, 0.0), c))[:20]
    return FeatureHistogram(
        model_id=model, model_version=version, segment=segment, feature=name, window=w,
        psi=psi, categories=cats, reference=[float(probs.get(c, 0.0)) for c in cats],
        counts=[int(counts.get(c, 0)) for c in cats],
    )  # fmt: skip


def _record_span(
    consumer: Consumer, topic: str, ranges: Ranges, timeout_s: float
) -> tuple[int, int]:
    """Record times of the first and last records of the ranges (for the labels' span)."""
    with _replay_errors():
        return kafka_ranges.record_span(consumer, topic, ranges, timeout_s)


def _ranges(
    cfg: Config, consumer: Consumer, opts: ReplayOptions, topic: str, notes: list[str]
) -> tuple[Ranges, Alert | None, str]:
    """The ranges to replay, the alert they come from, and a description of them."""
    modes = sum(
        [bool(opts.offsets), bool(opts.from_time or opts.to_time), opts.from_alert is not None]
    )
    if modes != 1:
        raise ReplayError(
            "give one range: --partition/--from-offset/--to-offset, --from-time/--to-time, "
            "or --from-alert"
        )
    alert = None
    if opts.from_alert is not None:
        alert = find_alert(cfg, opts.from_alert, opts.timeout_s)
        if opts.topic is not None and opts.topic != alert.source.topic:
            raise ReplayError(
                f"alert {alert.alert_id} comes from topic {alert.source.topic!r}, "
                f"not {opts.topic!r}"
            )
        window_s = opts.window_s or cfg.monitoring.window_s
        ranges = alert_ranges(consumer, alert, window_s, opts.lookback_windows, notes)
        what = (
            f"alert {alert.alert_id} ({alert.kind} {alert.detector} on "
            f"{alert.feature or '-'}, window {alert.window.start}), offsets extended back by "
            f"{opts.lookback_windows} window(s)"
        )
    elif opts.offsets:
        ranges = offset_ranges(consumer, topic, opts.offsets, notes)
        what = "offsets"
    else:
        if not opts.from_time or not opts.to_time:
            raise ReplayError("--from-time and --to-time go together")
        lo = _rfc3339_ms(opts.from_time, "--from-time")
        hi = _rfc3339_ms(opts.to_time, "--to-time")
        if lo >= hi:
            raise ReplayError(
                f"--from-time {opts.from_time} is not before --to-time {opts.to_time}"
            )
        ranges = time_ranges(consumer, topic, lo, hi)
        what = f"record time [{opts.from_time}, {opts.to_time})"
    if not ranges:
        raise EmptyRangeError(f"the range ({what}) holds no record on {topic!r}")
    spans = ", ".join(f"{p}: {a}..{b}" for p, (a, b) in sorted(ranges.items()))
    return ranges, alert, f"{topic} partitions {{{spans}}} ({what})"


def replay(cfg: Config, opts: ReplayOptions, err: TextIO = sys.stderr) -> ReplayResult:
    """Run the replay (see the module docstring); write nothing yet.

    Raises
    ------
    ReplayError
        A bad range, override or baseline; the message says which.
    """
    mcfg = apply_overrides(cfg.monitoring, opts.window_s, opts.thresholds)
    if opts.emitted_at:
        _rfc3339_ms(opts.emitted_at, "--emitted-at")
    if opts.publish is not None:
        check_publish_topic(cfg, opts.publish)
    notes: list[str] = []
    consumer = _consumer(cfg)
    label_consumer = None
    try:
        topic = opts.topic or cfg.topics.predictions
        ranges, alert, described = _ranges(cfg, consumer, opts, topic, notes)
        if alert is not None:
            topic = alert.source.topic
        model = opts.model or (alert.model_id if alert is not None else None)
        label_ranges: Ranges = {}
        if opts.labels_topic:
            lo, hi = _record_span(consumer, topic, ranges, opts.timeout_s)
            label_consumer = _consumer(cfg)
            label_ranges = time_ranges(
                label_consumer, opts.labels_topic, lo, hi + 1 + round(opts.label_grace_s * 1000)
            )
        refs = _References(cfg, opts, topic)
        run_cfg = msgspec.structs.replace(cfg, monitoring=mcfg)
        best = _Best(mcfg.window_s)
        pipe = InProcessPipeline(
            run_cfg, sorted(ranges), sorted(label_ranges), baselines=lambda _m: (), topic=topic
        )
        stats_ = ReadStats()
        began = time.perf_counter()
        _run(
            pipe, refs, best, consumer, label_consumer, topic, ranges, label_ranges, opts,
            stats_, err,
        )  # fmt: skip
        pipe.finish()
        seconds = time.perf_counter() - began
    finally:
        consumer.close()
        if label_consumer is not None:
            label_consumer.close()
    mine = [r for r in pipe.records if model is None or r.model_id == model]
    fed = stats_.events
    if not fed or not any(model is None or m == model for m in pipe.judges):
        whose = f" of model {model!r}" if model else ""
        raise EmptyRangeError(
            f"no prediction{whose} in {described}: {stats_.messages} messages, "
            f"{stats_.rejected} rejected events"
        )
    ends = [msgspec.convert(r.window.end, str) for r in mine]
    last_end = max(ends) if ends else None
    stamp = opts.emitted_at or last_end or _iso(0.0)
    alerts = [
        msgspec.structs.replace(a, emitted_at=stamp)
        for a in pipe.alerts
        if model is None or a.model_id == model
    ]
    metrics = [msgspec.structs.replace(r, emitted_at=stamp) for r in mine]
    incidents = [
        msgspec.structs.replace(i, emitted_at=stamp)
        for i in pipe.incidents
        if model is None or i.model_id == model
    ]
    context = [("range", described)]
    context += [(f"baseline {m}", d) for m, d in sorted(refs.described.items())]
    overrides = [f"window_s={mcfg.window_s:g}"] if opts.window_s else []
    overrides += list(opts.thresholds)
    context.append(("overrides", ", ".join(overrides) or "none: the live configuration"))
    if opts.labels_topic:
        joined = int(pipe.metrics.join.labels(result="joined")._value.get())
        context.append(("labels", f"{opts.labels_topic}: {joined} joined outcomes"))
    context.append(("emitted_at", stamp))
    context += [("note", n) for n in notes]
    return ReplayResult(
        alerts=alerts,
        incidents=incidents,
        metrics=metrics,
        histograms=sorted(
            (h for h in best.best.values() if model is None or h.model_id == model),
            key=lambda h: (h.model_id, h.model_version, sorted(h.segment.items()), h.feature),
        ),
        monitoring=mcfg,
        topic=topic,
        ranges=ranges,
        stats=stats_,
        seconds=seconds,
        emitted_at=stamp,
        context=context,
        notes=notes,
        alert=alert,
    )


class _Merge:
    """The records of several partitions, released in record-time order: a record leaves
    only when every partition still being read has one buffered (so the order depends on the
    data alone); ties go to predictions, then partition, then offset."""

    def __init__(self, streams: Sequence[tuple[str, int]]) -> None:
        self.buffers: dict[tuple[str, int], deque[RawMessage]] = {s: deque() for s in streams}
        self.open = set(streams)

    def push(self, role: str, msg: RawMessage) -> None:
        self.buffers[(role, msg.partition)].append(msg)

    def end(self, role: str, partition: int) -> None:
        self.open.discard((role, partition))

    def ready(self) -> Iterator[tuple[str, RawMessage]]:
        while True:
            heads = [s for s, b in self.buffers.items() if b]
            if not heads or any(not self.buffers[s] for s in self.open):
                return
            s = min(heads, key=lambda k: _order(k[0], self.buffers[k][0]))
            yield s[0], self.buffers[s].popleft()

    def paused(self, role: str) -> set[int]:
        return {p for (r, p), b in self.buffers.items() if r == role and len(b) >= BUFFER_LIMIT}


def _order(role: str, m: RawMessage) -> tuple[int, int, int, int]:
    return (m.timestamp_ms or 0, role == "labels", m.partition, m.offset)


def _run(
    pipe: InProcessPipeline,
    refs: _References,
    best: _Best,
    consumer: Consumer,
    label_consumer: Consumer | None,
    topic: str,
    ranges: Ranges,
    label_ranges: Ranges,
    opts: ReplayOptions,
    stats_: ReadStats,
    err: TextIO,
) -> None:
    """Read both topics, merge by record time, feed the pipeline in batches."""
    streams = [("predictions", p) for p in ranges] + [("labels", p) for p in label_ranges]
    merge = _Merge(streams)
    progress = Progress(sum(b - a + 1 for a, b in ranges.values()), err)
    paused: dict[str, set[int]] = {"predictions": set(), "labels": set()}

    def flow(role: str) -> Callable[[], tuple[list[int], list[int]]]:
        def decide() -> tuple[list[int], list[int]]:
            full = merge.paused(role)
            pause, resume = sorted(full - paused[role]), sorted(paused[role] - full)
            paused[role] = full
            return pause, resume

        return decide

    readers: dict[str, Iterator[Any]] = {
        "predictions": _read(consumer, topic, ranges, opts.timeout_s, flow("predictions"))
    }
    if label_consumer is not None and label_ranges and opts.labels_topic:
        readers["labels"] = _read(
            label_consumer, opts.labels_topic, label_ranges, opts.timeout_s, flow("labels")
        )
    ends = {"predictions": ranges, "labels": label_ranges}
    batch: list[RawMessage] = []
    role_of_batch = ""

    def setup(pipe: InProcessPipeline, model: str) -> None:
        pipe.judges[model].on_window = best.hook(model)
        if not refs.timeline(pipe, model):
            for profile in refs.baselines(model):
                pipe.set_baseline(model, profile.model_version, profile)

    pipe.setup_model = setup
    pipe.version_baseline = refs.for_version

    def feed() -> None:
        nonlocal batch
        if not batch:
            return
        pipe.idle((batch[0].timestamp_ms or 0) / 1000)
        pipe.feed_sync(role_of_batch, batch)
        batch = []

    def release() -> None:
        nonlocal role_of_batch
        for role, msg in merge.ready():
            if batch and (role != role_of_batch or len(batch) >= FEED_BATCH):
                feed()
            role_of_batch = role
            batch.append(msg)

    while readers:
        for role in list(readers):
            msg = next(readers[role], None)
            if msg is None:
                del readers[role]
                for p in ends[role]:
                    merge.end(role, p)
                continue
            p = msg.partition()
            if msg.error() is not None:  # the partition ended before the range did
                merge.end(role, p)
                continue
            if role == "predictions":
                stats_.messages += 1
            ts = msg.timestamp()[1]
            stats_.first_ms = ts if stats_.first_ms is None else min(stats_.first_ms, ts)
            stats_.last_ms = ts if stats_.last_ms is None else max(stats_.last_ms, ts)
            merge.push(role, RawMessage(msg.topic(), p, msg.offset(), msg.key(), msg.value(), ts))
            if msg.offset() >= ends[role][p][1]:
                merge.end(role, p)
        release()
        m = pipe.metrics
        stats_.events = int(m.events.labels(topic="predictions", outcome="accepted")._value.get())
        progress.update(stats_.messages, stats_.events)
    merge.open.clear()
    release()
    feed()
    m = pipe.metrics
    stats_.events = int(m.events.labels(topic="predictions", outcome="accepted")._value.get())
    stats_.rejected = int(sum(s.value for s in _samples(m.deadletter)))
    stats_.duplicates = int(m.join.labels(result="duplicate")._value.get())
    progress.update(stats_.messages, stats_.events, final=True)


def _samples(counter: Any) -> list[Any]:
    return [s for metric in counter.collect() for s in metric.samples if s.name.endswith("_total")]


# -- raw read, for comparison -------------------------------------------------------------------


def measure_raw(cfg: Config, topic: str, ranges: Ranges, timeout_s: float) -> tuple[int, float]:
    """Bare confluent-kafka ``consume`` + ``orjson.loads`` of the same range: (events, seconds)."""
    import orjson

    consumer = _consumer(cfg)
    events = 0
    began = time.perf_counter()
    try:
        for msg in _read(consumer, topic, ranges, timeout_s, lambda: ([], [])):
            if msg.error() is not None:
                continue
            value = orjson.loads(msg.value())
            events += len(value) if isinstance(value, list) else 1
    finally:
        consumer.close()
    return events, time.perf_counter() - began


# -- output -------------------------------------------------------------------------------------


def write_outputs(result: ReplayResult, out: Path) -> list[Path]:
    """Write ``alerts.jsonl``, ``incidents.jsonl``, ``metrics.jsonl`` and ``report.html`` into
    ``out``."""
    from streamproc.tools.report import render_report

    out.mkdir(parents=True, exist_ok=True)
    written = []
    outputs: tuple[tuple[str, Sequence[Any]], ...] = (
        ("alerts.jsonl", result.alerts),
        ("incidents.jsonl", result.incidents),
        ("metrics.jsonl", result.metrics),
    )
    for name, records in outputs:
        path = out / name
        path.write_bytes(b"".join(encode(r) + b"\n" for r in records))
        written.append(path)
    title = "streamproc replay"
    if result.alert is not None:
        a = result.alert
        title += f" of alert {a.alert_id[:8]} ({a.model_id}/{a.model_version})"
    page = render_report(
        result.metrics,
        result.alerts,
        result.monitoring,
        result.histograms,
        result.context,
        title=title,
        incidents=result.incidents,
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    written.append(path)
    return written


def check_publish_topic(cfg: Config, topic: str) -> None:
    """Refuse to publish a replay's alerts to a live topic.

    >>> from streamproc.config import Config
    >>> check_publish_topic(Config(), "alerts")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamproc.tools.replay.ReplayError: --publish 'alerts' is the live alerts topic ...
    """
    live = {
        cfg.topics.alerts: "alerts",
        cfg.topics.incidents: "incidents",
        cfg.topics.metrics: "metrics",
        cfg.topics.predictions: "predictions",
        cfg.topics.labels: "labels",
        cfg.topics.deadletter: "deadletter",
    }
    if topic in live:
        raise ReplayError(
            f"--publish {topic!r} is the live {live[topic]} topic (topics.{live[topic]}); a "
            "replay's alerts go to a topic of their own, e.g. --publish replay-alerts"
        )


def publish(cfg: Config, topic: str, alerts: Sequence[Alert], timeout_s: float) -> None:
    """Send the replay's alerts to ``topic`` (never a live topic).

    Raises
    ------
    ReplayError
        ``topic`` is a live topic, or Kafka did not take every alert.
    """
    check_publish_topic(cfg, topic)
    from confluent_kafka import Producer

    failed: list[str] = []

    def delivered(error: Any, _msg: Any) -> None:
        if error is not None:
            failed.append(str(error))

    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20, "enable.idempotence": True})
    for a in alerts:
        producer.produce(topic, encode(a), a.model_id.encode(), on_delivery=delivered)
    left = producer.flush(timeout_s)
    if left or failed:
        raise ReplayError(
            f"--publish {topic!r}: {left} alert(s) not delivered"
            + (f"; first error: {failed[0]}" if failed else "")
        )


# -- command line -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``streamproc replay``."""
    from streamproc.config import load_config

    cfg = load_config(args.config)
    parts, froms, tos = args.partition or [], args.from_offset or [], args.to_offset or []
    if not len(parts) == len(froms) == len(tos):
        raise ReplayError("give --partition, --from-offset and --to-offset once per partition")
    opts = ReplayOptions(
        out=Path(args.out),
        topic=args.topic,
        offsets=list(zip(parts, froms, tos, strict=True)),
        from_time=args.from_time,
        to_time=args.to_time,
        from_alert=args.from_alert,
        lookback_windows=args.lookback_windows,
        model=args.model,
        labels_topic=args.labels_topic,
        label_grace_s=args.label_grace,
        window_s=args.window,
        thresholds=list(args.threshold or []),
        baseline_version=args.baseline_version,
        baseline_range=args.baseline_range,
        baseline_segments=(
            [d.strip() for d in args.baseline_segments.split(",") if d.strip()]
            if args.baseline_segments
            else None
        ),
        emitted_at=args.emitted_at,
        publish=args.publish,
        timeout_s=args.timeout,
        measure_raw=args.measure_raw,
    )
    result = replay(cfg, opts, sys.stderr)
    for note in result.notes:
        print(f"streamproc: note: {note}", file=sys.stderr)
    written = write_outputs(result, opts.out)
    if opts.publish is not None:
        publish(cfg, opts.publish, result.alerts, opts.timeout_s)
    s = result.stats
    firing = sum(a.status == "firing" for a in result.alerts)
    print(
        f"replayed {s.events} events ({s.messages} messages, {s.rejected} rejected, "
        f"{s.duplicates} duplicate ids) in {result.seconds:.2f} s: "
        f"{result.events_per_s:,.0f} events/s"
    )
    if opts.measure_raw:
        n, secs = measure_raw(cfg, result.topic, result.ranges, opts.timeout_s)
        rate = n / secs if secs > 0 else 0.0
        print(
            f"raw confluent-kafka consume + orjson of the same range: {n} events in "
            f"{secs:.2f} s: {rate:,.0f} events/s"
        )
    print(
        f"{firing} firing and {len(result.alerts) - firing} resolved alert(s), "
        f"{len(result.metrics)} metrics records"
        + (f", published to {opts.publish}" if opts.publish else "")
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``streamproc replay``."""
    p = sub.add_parser(
        "replay",
        help="re-run the monitors over a topic range, offline, into a report",
        description="Replay a range of the predictions topic through the same monitors "
        "(configuration, baselines) as the worker, in a namespace of its own: reads the "
        "baseline from Redis and nothing else, commits no offset, never writes to the live "
        "alerts topic. Writes alerts.jsonl, metrics.jsonl and report.html to --out.",
    )
    p.add_argument("--out", required=True, help="directory for alerts.jsonl, metrics.jsonl, "
                   "report.html")  # fmt: skip
    rng = p.add_argument_group("range (one of)")
    rng.add_argument("--topic", help="predictions topic (default: topics.predictions)")
    rng.add_argument("--partition", type=int, action="append", help="partition (repeatable)")
    rng.add_argument("--from-offset", type=int, action="append", help="first offset, per partition")
    rng.add_argument("--to-offset", type=int, action="append", help="last offset (inclusive)")
    rng.add_argument("--from-time", help="first record time, RFC 3339 (every partition)")
    rng.add_argument("--to-time", help="end record time (exclusive), RFC 3339")
    rng.add_argument("--from-alert", metavar="ALERT_ID", help="the offsets of this alert")
    rng.add_argument(
        "--lookback-windows", type=int, default=3,
        help="--from-alert: windows replayed before the alert's window (default 3)",
    )  # fmt: skip
    p.add_argument("--model", help="only this model_id (default: every model; the alert's)")
    p.add_argument("--labels-topic", help="join label.v1 events from this topic")
    p.add_argument(
        "--label-grace", type=float, default=3600.0,
        help="seconds of labels read past the range's last record time (default 3600)",
    )  # fmt: skip
    what = p.add_argument_group("what-if overrides")
    what.add_argument("--window", type=_positive(float), metavar="SECONDS", help="window_s")
    what.add_argument(
        "--threshold", action="append", metavar="KEY=VALUE",
        help="a monitoring setting, e.g. psi.warning=0.2 (repeatable)",
    )  # fmt: skip
    what.add_argument("--baseline-version", help="compare every version with this baseline")
    what.add_argument(
        "--baseline-range", metavar="FROM..TO",
        help="build the reference from this record-time range of the topic instead",
    )  # fmt: skip
    what.add_argument(
        "--baseline-segments", help="--baseline-range: segment dimensions (default: stored)"
    )
    p.add_argument(
        "--emitted-at", metavar="TIME",
        help="emitted_at of every record (default: the end of the last window replayed)",
    )  # fmt: skip
    p.add_argument("--publish", metavar="TOPIC", help="also send the alerts to this topic")
    p.add_argument(
        "--timeout", type=_positive(float), default=30.0, help="seconds without progress"
    )
    p.add_argument(
        "--measure-raw", action="store_true",
        help="also time a bare consume + orjson of the same range, for comparison",
    )  # fmt: skip
    p.set_defaults(func=run)


def _main() -> None:  # pragma: no cover - python -m streamproc.tools.replay
    from streamproc.cli import main

    sys.exit(main(["replay", *sys.argv[1:]]))


if __name__ == "__main__":  # pragma: no cover
    _main()
