"""``streamproc replay``: re-run the monitors over a topic range, offline, with a readable report.

A replay reads a range of the predictions topic (and, optionally, the labels that joined them)
and feeds it through the same :class:`~streamproc.monitor.ModelMonitor` the worker runs, with
the same ``monitoring`` configuration and the same baselines from Redis, then writes what the
monitors emitted to a directory:

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
    Each partition is fed in offset order, as the worker saw it. Partitions are merged message by
    message by (event time of the message's first event, partition, offset) of each partition's
    head; a head is taken only when every unfinished partition has one buffered, so the order
    depends on the data alone. ``emitted_at`` is one fixed stamp: ``--emitted-at``, else the end
    of the last window of the replayed data, never the wall clock. Two replays of one range write
    byte-identical ``alerts.jsonl`` and ``metrics.jsonl``. At the end every open window is closed
    (``advance(final=True)``); a last window that the range cuts short is judged on what it holds.

Labels
    ``--labels-topic`` reads label.v1 events over the record-time span of the predictions read,
    plus ``--label-grace`` seconds, and joins them in memory by ``prediction_id``. Each outcome is
    placed at its label's position (source ``l<partition>``, the label's offset and batch index),
    as the worker's join does, and the outcomes are fed after the predictions, per label
    partition in offset order: performance windows are judged at the end of the replay.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from streamproc.contracts import (
    Alert,
    Label,
    MetricsRecord,
    Prediction,
    Scalar,
    decode_message,
    encode,
    event_time,
)
from streamproc.errors import StreamprocError
from streamproc.kafka import ranges as kafka_ranges
from streamproc.kafka.ranges import Ranges
from streamproc.monitor import (
    ModelMonitor,
    NumRef,
    Observation,
    Outcome,
    Output,
    SegRef,
    confidence_of,
    observation_of,
    outcome_of,
    segref_from_baseline,
)
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
    "confidence_of",
    "observation_of",
    "outcome_of",
    "publish",
    "register_cli",
    "replay",
    "write_outputs",
]

ADVANCE_EVERY = 5000  # events fed between two advance() calls
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
class _Message:
    """One decoded predictions message: where it was and what it held."""

    head: float  # event time of its first accepted event
    partition: int
    offset: int
    events: list[tuple[Prediction, float, int]]  # (event, event time, index)


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

    @property
    def events_per_s(self) -> float:
        return self.stats.events / self.seconds if self.seconds > 0 else 0.0


class _References:
    """Each model's references: the stored baselines, or what the overrides ask for."""

    def __init__(self, cfg: Config, opts: ReplayOptions, topic: str) -> None:
        self.cfg = cfg
        self.opts = opts
        self.topic = topic
        self._store: Any = None
        self._built: dict[tuple[str, str], ReferenceProfile] = {}
        self.described: dict[str, str] = {}

    def store(self) -> Any:
        if self._store is None:
            import redis

            from streamproc.baseline import BaselineStore

            client = redis.Redis.from_url(self.cfg.redis.url, password=self.cfg.redis.password)
            self._store = BaselineStore(client, self.cfg.redis.key_prefix)
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

    def initial(self, model: str, version: str) -> dict[tuple[str, str], SegRef]:
        """References to create ``model``'s monitor with (its first event has ``version``)."""
        if self.overridden():
            return self.for_version(model, version)
        refs: dict[tuple[str, str], SegRef] = {}
        profiles = self._call(lambda: self.store().all_versions(model))
        for profile in profiles:
            for key, seg in profile.segments.items():
                refs[(profile.model_version, key)] = segref_from_baseline(seg)
        self.described[model] = (
            "stored baselines " + ", ".join(f"{model}/{p.model_version}" for p in profiles)
            if profiles
            else "none stored: monitors warm up on their first windows"
        )
        return refs

    def for_version(self, model: str, version: str) -> dict[tuple[str, str], SegRef]:
        profile = self._profile(model, version)
        return {(version, k): segref_from_baseline(s) for k, s in profile.segments.items()}


def _iso(t: float) -> str:
    from streamproc.judge.alerts import iso

    return iso(t)


class _Replayer:
    """Feeds decoded messages to the monitors and keeps what they emit."""

    def __init__(
        self, mcfg: MonitoringConfig, refs: _References, topic: str, partitions: Sequence[int]
    ) -> None:
        self.mcfg = mcfg
        self.refs = refs
        self.topic = topic
        self.sources = [f"p{p}" for p in partitions]
        self.monitors: dict[str, ModelMonitor] = {}
        self.versions: dict[str, set[str]] = {}
        self.alerts: list[Alert] = []
        self.metrics: list[MetricsRecord] = []
        self.fed = 0
        self.since_advance = 0
        self.max_time = -math.inf
        # (model, version, segment key, feature) -> the window histogram of its largest PSI
        self.best: dict[tuple[str, str, str, str], FeatureHistogram] = {}

    def monitor(self, model: str, version: str) -> ModelMonitor:
        m = self.monitors.get(model)
        if m is None:
            refs = self.refs.initial(model, version)
            m = self.monitors[model] = ModelMonitor(
                model, self.mcfg, self.sources, refs, self.topic
            )
            self.versions[model] = {version}
        elif version not in self.versions[model]:
            self.versions[model].add(version)
            if self.refs.overridden():
                m.references.update(self.refs.for_version(model, version))
        return m

    def feed(self, obs_by_model: Mapping[str, list[Observation]]) -> None:
        for model, obs in obs_by_model.items():
            for ob in obs:
                self.monitor(model, ob.model_version)
                self.max_time = max(self.max_time, ob.event_time)
            self.monitors[model].observe(obs)
            self.fed += len(obs)
            self.since_advance += len(obs)
        if self.since_advance >= ADVANCE_EVERY:
            self.advance()

    def feed_outcomes(self, outcomes: Mapping[str, list[Outcome]]) -> None:
        for model, ocs in sorted(outcomes.items()):
            m = self.monitors.get(model)
            if m is not None:
                m.observe_outcomes(ocs)

    def advance(self, final: bool = False) -> None:
        self.since_advance = 0
        for model in sorted(self.monitors):
            m = self.monitors[model]
            snaps = self._snapshot(m, final)
            out = m.advance("", final)
            self._keep(model, out, snaps)

    def _snapshot(self, m: ModelMonitor, final: bool) -> dict[tuple[str, str, str], Any]:
        """The sketches of the windows this advance will close, before it drops them."""
        boundary = math.inf if final else m.clock.close_until()
        snaps: dict[tuple[str, str, str], Any] = {}
        for (version, key), seg in m.segments.items():
            if seg.ref is None:
                continue
            for wstart, agg in seg.windows.items():
                if wstart + self.mcfg.window_s <= boundary:
                    snaps[(version, key, _iso(wstart))] = (seg.ref, agg)
        return snaps

    def _keep(self, model: str, out: Output, snaps: Mapping[tuple[str, str, str], Any]) -> None:
        self.alerts.extend(out.alerts)
        self.metrics.extend(out.metrics)
        for rec in out.metrics:
            key = "all" if not rec.segment else next(f"{k}={v}" for k, v in rec.segment.items())
            snap = snaps.get((rec.model_version, key, rec.window.start))
            if snap is None:
                continue
            ref, agg = snap
            for name, row in rec.features.items():
                psi = row.get("psi")
                if not isinstance(psi, int | float):
                    continue
                best = self.best.get((model, rec.model_version, key, name))
                if best is not None and best.psi >= psi:
                    continue
                hist = _histogram(model, rec, name, float(psi), ref, agg)
                if hist is not None:
                    self.best[(model, rec.model_version, key, name)] = hist


def _histogram(
    model: str, rec: MetricsRecord, name: str, psi: float, ref: SegRef, agg: Any
) -> FeatureHistogram | None:
    fr = ref.features.get(name)
    if isinstance(fr, NumRef):
        sk = agg.numeric.get(name)
        if sk is None:
            return None
        return FeatureHistogram(
            model_id=model, model_version=rec.model_version, segment=dict(rec.segment),
            feature=name, window=rec.window, psi=psi, edges=[float(e) for e in fr.edges],
            reference=[float(p) for p in fr.probs], counts=[int(c) for c in sk.hist],
        )  # fmt: skip
    csk = agg.categorical.get(name)
    if fr is None or csk is None:
        return None
    counts = csk.counts
    cats = sorted(set(fr.probs) | set(counts), key=lambda c: (-fr.probs.get(c, 0.0), c))[:20]
    return FeatureHistogram(
        model_id=model, model_version=rec.model_version, segment=dict(rec.segment), feature=name,
        window=rec.window, psi=psi, categories=cats,
        reference=[float(fr.probs.get(c, 0.0)) for c in cats],
        counts=[int(counts.get(c, 0)) for c in cats],
    )  # fmt: skip


def _decode(msg: Message, cfg: Config, model: str | None, stats: ReadStats) -> _Message:
    ts = msg.timestamp()[1]
    decoded = decode_message(
        msg.value(),
        Prediction,
        max_bytes=cfg.worker.max_message_bytes,
        max_batch=cfg.worker.max_batch_events,
    )
    stats.rejected += len(decoded.rejections)
    events = []
    for ev, idx in zip(decoded.events, decoded.indexes, strict=True):
        if model is not None and ev.model_id != model:
            continue
        events.append((ev, event_time(ev.timestamp, ts), -1 if idx is None else idx))
    head = events[0][1] if events else -math.inf
    return _Message(head, msg.partition(), msg.offset(), events)


def _read_labels(
    cfg: Config, topic: str, span_ms: tuple[int, int], model: str | None, timeout_s: float
) -> dict[str, tuple[Scalar, float, str]]:
    """``prediction_id -> (label, label event time, origin)`` of the labels in the span."""
    consumer = _consumer(cfg)
    labels: dict[str, tuple[Scalar, float, str]] = {}
    try:
        found = time_ranges(consumer, topic, *span_ms)
        if not found:
            return labels
        for msg in _read(consumer, topic, found, timeout_s, lambda: ([], [])):
            if msg.error() is not None:
                continue
            ts = msg.timestamp()[1]
            decoded = decode_message(msg.value(), Label)
            for lab, idx in zip(decoded.events, decoded.indexes, strict=True):
                if model is not None and lab.model_id not in (None, model):
                    continue
                origin = f"l{msg.partition()}:{msg.offset()}:{'' if idx is None else idx}"
                labels.setdefault(
                    lab.prediction_id, (lab.label, event_time(lab.timestamp, ts), origin)
                )
    finally:
        consumer.close()
    return labels


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
    try:
        topic = opts.topic or cfg.topics.predictions
        ranges, alert, described = _ranges(cfg, consumer, opts, topic, notes)
        if alert is not None:
            topic = alert.source.topic
        model = opts.model or (alert.model_id if alert is not None else None)
        labels: dict[str, tuple[Scalar, float, str]] = {}
        if opts.labels_topic:
            lo, hi = _record_span(consumer, topic, ranges, opts.timeout_s)
            span = (lo, hi + 1 + round(opts.label_grace_s * 1000))
            labels = _read_labels(cfg, opts.labels_topic, span, model, opts.timeout_s)
        refs = _References(cfg, opts, topic)
        rp = _Replayer(mcfg, refs, topic, sorted(ranges))
        stats = ReadStats()
        began = time.perf_counter()
        outcomes = _run(cfg, consumer, topic, ranges, opts, model, labels, rp, stats, err)
        seconds = time.perf_counter() - began
    finally:
        consumer.close()
    if not rp.fed:
        whose = f" of model {model!r}" if model else ""
        raise EmptyRangeError(
            f"no prediction{whose} in {described}: {stats.messages} messages, "
            f"{stats.rejected} rejected events"
        )
    label_sources = sorted({oc.source for ocs in outcomes.values() for oc in ocs})
    for m in rp.monitors.values():
        m.outcome_clock.expect(label_sources)
    rp.feed_outcomes(outcomes)
    rp.advance(final=True)
    stamp = opts.emitted_at or _iso((math.floor(rp.max_time / mcfg.window_s) + 1) * mcfg.window_s)
    alerts = [msgspec.structs.replace(a, emitted_at=stamp) for a in rp.alerts]
    metrics = [msgspec.structs.replace(r, emitted_at=stamp) for r in rp.metrics]
    context = [("range", described)]
    context += [(f"baseline {m}", d) for m, d in sorted(refs.described.items())]
    overrides = [f"window_s={mcfg.window_s:g}"] if opts.window_s else []
    overrides += list(opts.thresholds)
    context.append(("overrides", ", ".join(overrides) or "none: the live configuration"))
    if opts.labels_topic:
        n_out = sum(len(v) for v in outcomes.values())
        context.append(("labels", f"{opts.labels_topic}: {n_out} joined outcomes"))
    context.append(("emitted_at", stamp))
    context += [("note", n) for n in notes]
    return ReplayResult(
        alerts=alerts,
        metrics=metrics,
        histograms=sorted(
            rp.best.values(),
            key=lambda h: (h.model_id, h.model_version, sorted(h.segment.items()), h.feature),
        ),
        monitoring=mcfg,
        topic=topic,
        ranges=ranges,
        stats=stats,
        seconds=seconds,
        emitted_at=stamp,
        context=context,
        notes=notes,
        alert=alert,
    )


def _run(
    cfg: Config,
    consumer: Consumer,
    topic: str,
    ranges: Ranges,
    opts: ReplayOptions,
    model: str | None,
    labels: Mapping[str, tuple[Scalar, float, str]],
    rp: _Replayer,
    stats: ReadStats,
    err: TextIO,
) -> dict[str, list[Outcome]]:
    """Read, merge and feed; return the joined outcomes, per model, to feed last."""
    buffers: dict[int, deque[_Message]] = {p: deque() for p in ranges}
    open_parts = set(ranges)
    paused: set[int] = set()
    seen: set[str] = set()
    outcomes: dict[str, list[tuple[str, int, int, Outcome]]] = {}
    progress = Progress(sum(b - a + 1 for a, b in ranges.values()), err)

    def flow() -> tuple[list[int], list[int]]:
        pause = [p for p, b in buffers.items() if len(b) >= BUFFER_LIMIT and p not in paused]
        resume = [p for p in paused if len(buffers[p]) < BUFFER_LIMIT // 2]
        paused.update(pause)
        paused.difference_update(resume)
        return pause, resume

    def drain() -> None:
        while True:
            ready = [p for p in buffers if buffers[p]]
            if not ready or any(not buffers[p] for p in open_parts):
                return
            p = min(ready, key=lambda q: (buffers[q][0].head, q, buffers[q][0].offset))
            item = buffers[p].popleft()
            by_model: dict[str, list[Observation]] = {}
            for ev, t, idx in item.events:
                # The worker's join drops an id it has seen before (dead-lettered as a
                # duplicate); in merged order, so which copy counts depends on the data alone.
                if ev.prediction_id in seen:
                    stats.duplicates += 1
                    continue
                seen.add(ev.prediction_id)
                by_model.setdefault(ev.model_id, []).append(
                    observation_of(ev, t, item.partition, item.offset, idx)
                )
                joined = labels.get(ev.prediction_id)
                if joined is not None:
                    oc = outcome_of(ev, joined[0], joined[1], joined[2])
                    outcomes.setdefault(ev.model_id, []).append(
                        (oc.source, oc.offset, oc.index, oc)
                    )
            stats.events += sum(len(v) for v in by_model.values())
            rp.feed(by_model)

    for msg in _read(consumer, topic, ranges, opts.timeout_s, flow):
        p = msg.partition()
        if msg.error() is not None:  # the partition ended before the range did
            open_parts.discard(p)
            drain()
            continue
        stats.messages += 1
        ts = msg.timestamp()[1]
        stats.first_ms = ts if stats.first_ms is None else min(stats.first_ms, ts)
        stats.last_ms = ts if stats.last_ms is None else max(stats.last_ms, ts)
        item = _decode(msg, cfg, model, stats)
        if item.events:
            buffers[p].append(item)
        if msg.offset() >= ranges[p][1]:
            open_parts.discard(p)
        drain()
        progress.update(stats.messages, stats.events)
    open_parts.clear()
    drain()
    progress.update(stats.messages, stats.events, final=True)
    # Per label partition in offset order, as the worker's keyed topic would carry them.
    return {
        m: [oc for _, _, _, oc in sorted(items, key=lambda x: x[:3])]
        for m, items in outcomes.items()
    }


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
    """Write ``alerts.jsonl``, ``metrics.jsonl`` and ``report.html`` into ``out``."""
    from streamproc.tools.report import render_report

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in (("alerts.jsonl", result.alerts), ("metrics.jsonl", result.metrics)):
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
    streamproc.tools.replay.ReplayError: --publish 'alerts' is the live alerts topic (topics.alerts); ...
    """
    live = {
        cfg.topics.alerts: "alerts",
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

    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20})
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
