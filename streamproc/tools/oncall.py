"""On-call tooling: ``streamproc alerts tail`` and ``streamproc status``.

Both read what the worker publishes (``incident.v1`` on ``topics.incidents``, ``alert.v1`` on
``topics.alerts``, ``metrics.v1`` on ``topics.metrics``) with a confluent-kafka consumer that
*assigns* partitions and never commits: they join no consumer group, move no offsets, and
cannot disturb another reader.

``alerts tail`` prints each incident event as it arrives (or, with ``--from-beginning``, every
retained one): its root cause in one line, its member alerts folded, and the command that
replays the evidence of its leading alert (:mod:`streamproc.tools.incident_text`); with
``--alerts``, each raw alert instead. ``status`` reads every retained incident event and lists
the open incidents, then the metrics of the last ``--since`` (24 h by default; the start offsets
come from ``offsets_for_times``) and every retained alert, and prints one row per monitor
(model, version, segment): its latest window, the features that drifted most by PSI, and the
alerts firing on it now.

A message that is not a valid record of its contract is skipped with a warning on stderr; the
tools never crash on data.

Examples
--------
>>> from streamproc.contracts import Source
>>> alert = Alert(
...     alert_id="3f9a2c1be0d44f6a", status="firing", severity="critical",
...     kind="feature_drift", model_id="churn", model_version="7",
...     feature="tenure_months", segment={"device": "ios", "country": "DE"}, detector="psi",
...     value=0.4127, threshold=0.25,
...     window=Window("2024-01-01T10:00:00Z", "2024-01-01T10:05:00Z"),
...     evidence={}, source=Source("predictions", {"0": [10, 20]}),
...     emitted_at="2024-01-01T10:06:00Z",
... )
>>> print(format_alert(alert))
CRITICAL FIRING  model churn/7  segment country=DE, device=ios  feature tenure_months
  feature_drift by psi: value 0.4127 vs threshold 0.25
  window 2024-01-01 10:00:00 - 10:05:00 UTC
  investigate: streamproc replay --from-alert 3f9a2c1be0d44f6a --out ./replay-3f9a2c1b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import msgspec

from streamproc.config import Config, load_config
from streamproc.contracts import (
    Alert,
    ClassPerformance,
    Incident,
    MetricsRecord,
    Window,
    encode,
)
from streamproc.errors import StreamprocError
from streamproc.kafka import ranges as kafka_ranges
from streamproc.tools.incident_text import (
    badges,
    format_incident,
    open_incidents,
    render_incidents,
)

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

__all__ = [
    "DETECTORS",
    "SEVERITIES",
    "OncallError",
    "StatusBoard",
    "StatusRow",
    "TailOptions",
    "decode_record",
    "detector_text",
    "format_alert",
    "format_incident",
    "matches",
    "parse_duration",
    "parse_time",
    "read_bounded",
    "register_cli",
    "render_table",
    "replay_command",
    "segment_text",
    "short_id",
    "status",
    "tail",
    "use_colour",
    "window_text",
]

SEVERITIES = ("info", "warning", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


class OncallError(StreamprocError):
    """The on-call tools cannot read a topic (Kafka unreachable, topic missing)."""


# -- formatting ------------------------------------------------------------------------------


def segment_text(segment: Mapping[str, str]) -> str:
    """A segment as on-call reads it: ``all``, or its dimensions sorted by name.

    >>> segment_text({})
    'all'
    >>> segment_text({"device": "ios", "country": "DE"})
    'country=DE, device=ios'
    """
    if not segment:
        return "all"
    return ", ".join(f"{k}={v}" for k, v in sorted(segment.items()))


_HEX_ID = re.compile(r"^[0-9a-fA-F-]{8,}$")


def short_id(alert_id: str) -> str:
    """Eight characters that name an alert in a directory name.

    A hexadecimal (or UUID) id gives its first eight digits, as ``git`` abbreviates a commit;
    any other id gives the first eight hex digits of its SHA-256, so the name is always safe in
    a path and distinct ids rarely collide.

    >>> short_id("3f9a2c1be0d44f6a9c")
    '3f9a2c1b'
    >>> short_id("0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6")
    '0d1e2f3a'
    >>> short_id("churn/f03 DE")
    'cf395e45'
    """
    if _HEX_ID.match(alert_id):
        digits = alert_id.replace("-", "")
        if len(digits) >= 8:
            return digits[:8].lower()
    return hashlib.sha256(alert_id.encode()).hexdigest()[:8]


def replay_command(alert_id: str) -> str:
    """The command that replays an alert's evidence into its own directory.

    >>> replay_command("3f9a2c1be0d44f6a")
    'streamproc replay --from-alert 3f9a2c1be0d44f6a --out ./replay-3f9a2c1b'
    """
    out = f"./replay-{short_id(alert_id)}"
    return f"streamproc replay --from-alert {shlex.quote(alert_id)} --out {out}"


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime (naive means UTC); ``None`` if unreadable.

    >>> parse_time("2024-01-01T10:00:00.000Z")
    datetime.datetime(2024, 1, 1, 10, 0, tzinfo=datetime.timezone.utc)
    >>> parse_time("2024-01-01T12:00:00+02:00").hour, parse_time("yesterday")
    (10, None)
    """
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _utc(text: str) -> str:
    parsed = parse_time(text)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") if parsed else text


def window_text(window: Window) -> str:
    """A window in UTC; the end's date is left out when it is the start's.

    >>> window_text(Window("2024-01-01T23:55:00Z", "2024-01-02T00:00:00Z"))
    '2024-01-01 23:55:00 - 2024-01-02 00:00:00 UTC'
    >>> window_text(Window("2024-01-01T10:00:00+01:00", "2024-01-01T10:05:00+01:00"))
    '2024-01-01 09:00:00 - 09:05:00 UTC'
    """
    start, end = parse_time(window.start), parse_time(window.end)
    if start is None or end is None:
        return f"{window.start} - {window.end}"
    end_fmt = "%H:%M:%S" if end.date() == start.date() else "%Y-%m-%d %H:%M:%S"
    return f"{start:%Y-%m-%d %H:%M:%S} - {end.strftime(end_fmt)} UTC"


def _number(x: float) -> str:
    return f"{x:.4g}"


DETECTORS = frozenset({"adwin", "page_hinkley", "adwin_error"})
"""Change detectors: their alerts say that the detector fired, not a value against a threshold."""


def _signed(x: float) -> str:
    return f"{x:+.3g}"


def detector_text(alert: Alert) -> str:
    """What a change detector saw when it fired, in on-call's words.

    >>> from streamproc.contracts import Source
    >>> a = Alert(alert_id="a", status="firing", severity="warning", kind="feature_drift",
    ...           model_id="m", model_version="1", feature="f03", segment={},
    ...           detector="adwin", value=1.3333, threshold=0.0,
    ...           window=Window("2024-01-01T10:00:00Z", "2024-01-01T10:00:10Z"),
    ...           evidence={"tick_mean_in_reference_sd": 1.3333}, source=Source("p", {}),
    ...           emitted_at="t")
    >>> detector_text(a)
    'detector fired: tick mean +1.33 sd'
    """
    ev = alert.evidence
    if isinstance(ev.get("summary"), str):  # the detector's own words (see judge.engine)
        return str(ev["summary"])
    if "tick_mean_in_reference_sd" in ev:
        return f"detector fired: tick mean {_signed(float(ev['tick_mean_in_reference_sd']))} sd"
    if "tick_error_rate" in ev:
        text = f"detector fired: tick error rate {_number(float(ev['tick_error_rate']))}"
        if "reference_error_rate" in ev:
            text += f" (reference {_number(float(ev['reference_error_rate']))})"
        return text
    if "detections_in_window" in ev:
        text = f"detector fired {ev['detections_in_window']}x in the window"
        agree = ev.get("agreeing_statistics")
        if agree:
            text += f", confirmed by {', '.join(map(str, agree))}"
        return text
    return "detector fired"


def format_alert(alert: Alert, colour: bool = False) -> str:
    """Four lines that tell on-call what moved, where, since when, and how to replay it.

    ``colour`` adds ANSI colours to the severity and to a resolved status.
    """
    severity, status = badges(alert.severity, alert.status, colour)
    head = (
        f"{severity} {status}  model {alert.model_id}/{alert.model_version}"
        f"  segment {segment_text(alert.segment)}"
    )
    if alert.feature is not None:
        head += f"  feature {alert.feature}"
    if alert.detector in DETECTORS:
        measure = detector_text(alert)
    else:
        measure = f"value {_number(alert.value)} vs threshold {_number(alert.threshold)}"
    return "\n".join(
        [
            head,
            f"  {alert.kind} by {alert.detector}: {measure}",
            f"  window {window_text(alert.window)}",
            f"  investigate: {replay_command(alert.alert_id)}",
        ]
    )


def use_colour(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """ANSI colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org).

    >>> import io
    >>> use_colour(io.StringIO(), {})
    False
    """
    env = os.environ if env is None else env
    if env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def matches(alert: Alert | Incident, severity: str | None = None, model: str | None = None) -> bool:
    """Whether an alert (or an incident) is at least ``severity`` and belongs to ``model``
    (``None``: any)."""
    if severity is not None and _RANK[alert.severity] < _RANK[severity]:
        return False
    return model is None or alert.model_id == model


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``24h``, ``7d`` or ``1h30m``.

    >>> parse_duration("24h"), parse_duration("1h30m"), parse_duration("45")
    (86400.0, 5400.0, 45.0)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    ValueError: not a duration: 'soon' (use e.g. 90s, 30m, 24h, 7d)
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 24h, 7d)") from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return seconds


# -- decoding --------------------------------------------------------------------------------

T = TypeVar("T", Alert, MetricsRecord, Incident)
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    Alert: msgspec.json.Decoder(Alert),
    MetricsRecord: msgspec.json.Decoder(MetricsRecord),
    Incident: msgspec.json.Decoder(Incident),
}
_NAMES = {Alert: "alert.v1", MetricsRecord: "metrics.v1", Incident: "incident.v1"}


def decode_record(value: bytes | None, kind: type[T]) -> T | str:
    """Decode one message value as ``kind``; on failure, return why it is not one.

    >>> decode_record(b"not json", Alert)  # doctest: +ELLIPSIS
    'invalid JSON: ...'
    >>> decode_record(b'{"schema": "alert.v1"}', Alert)
    'not alert.v1: Object missing required field `alert_id`'
    >>> decode_record(b'{"schema": "alert.v1"}', Incident).startswith("not incident.v1: ")
    True
    """
    name = _NAMES[kind]
    if not value:
        return "empty message"
    try:
        return _DECODERS[kind].decode(value)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        return f"not {name}: {exc}"
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return f"invalid JSON: {exc}"


# -- the status board -----------------------------------------------------------------------

SegmentKey = tuple[tuple[str, str], ...]
MonitorKey = tuple[str, str, SegmentKey]


def _segment_key(segment: Mapping[str, str]) -> SegmentKey:
    return tuple(sorted(segment.items()))


def _signal_key(alert: Alert) -> tuple[Any, ...]:
    # What an alert is about. A resolved alert (and an escalation) may carry a new alert_id,
    # so "is it still firing" is the latest status of the signal, not of one id.
    return (
        alert.model_id, alert.model_version, _segment_key(alert.segment),
        alert.feature, alert.detector, alert.kind,
    )  # fmt: skip


def _time_order(text: str) -> tuple[int, float, str]:
    parsed = parse_time(text)
    return (1, parsed.timestamp(), text) if parsed else (0, 0.0, text)


@dataclass(frozen=True)
class StatusRow:
    """One monitor (model, version, segment) as ``streamproc status`` shows it.

    ``window_end`` and ``count`` are ``None`` for a monitor that has firing alerts but no
    metrics record in the period read.
    """

    model_id: str
    model_version: str
    segment: dict[str, str]
    window_end: str | None
    count: int | None
    top_psi: list[tuple[str, float]]
    firing: list[Alert] = field(default_factory=list)
    # "estimated" / "realised" -> the latest window's per-class figures
    performance: dict[str, ClassPerformance] = field(default_factory=dict)

    def performance_text(self) -> str:
        """``-``, or accuracy and ROC AUC, realised with the estimate beside them.

        >>> from streamproc.contracts import MetricBand
        >>> band = MetricBand(0.9, 0.88, 0.92)
        >>> est = ClassPerformance(source="estimated", classes=["no", "yes"],
        ...     positive_class="yes", count=900, metrics={"accuracy": band}, reference={},
        ...     confusion_matrix=[])
        >>> row = StatusRow("m", "1", {}, None, None, [], performance={"estimated": est})
        >>> row.performance_text()
        'accuracy est 0.900'
        """
        est, got = self.performance.get("estimated"), self.performance.get("realised")
        parts = []
        for m in ("accuracy", "roc_auc"):
            e = est.metrics.get(m) if est else None
            r = got.metrics.get(m) if got else None
            if r is not None:
                parts.append(f"{m} {r.value:.3f}" + (f" (est {e.value:.3f})" if e else ""))
            elif e is not None:
                parts.append(f"{m} est {e.value:.3f}")
        return ", ".join(parts) or "-"

    def firing_text(self) -> str:
        """``-``, or the firing alerts counted by severity, most severe first."""
        if not self.firing:
            return "-"
        counts = {s: sum(a.severity == s for a in self.firing) for s in reversed(SEVERITIES)}
        return ", ".join(f"{n} {s}" for s, n in counts.items() if n)

    def to_json(self) -> dict[str, Any]:
        """The row as plain JSON-able data (``status --json``)."""
        return {
            "model_id": self.model_id,
            "model_version": self.model_version,
            "segment": self.segment,
            "window_end": self.window_end,
            "count": self.count,
            "top_psi": [{"feature": f, "psi": v} for f, v in self.top_psi],
            "performance": {k: msgspec.to_builtins(v) for k, v in self.performance.items()},
            "firing": [
                {
                    "alert_id": a.alert_id,
                    "severity": a.severity,
                    "kind": a.kind,
                    "feature": a.feature,
                    "detector": a.detector,
                }
                for a in self.firing
            ],
        }


class StatusBoard:
    """The latest metrics record per monitor and the latest alert per signal.

    Feed it records in topic order (``add_metrics``, ``add_alert``); ``rows`` gives the table.

    Examples
    --------
    >>> board = StatusBoard()
    >>> def record(end: str, psi: float) -> MetricsRecord:
    ...     return MetricsRecord(
    ...         model_id="churn", model_version="7", segment={}, window=Window("", end),
    ...         count=1200, reference="baseline", features={"f03": {"psi": psi}},
    ...         outputs={}, performance={}, emitted_at=end,
    ...     )
    >>> board.add_metrics(record("2024-01-01T10:10:00Z", 0.31))
    >>> board.add_metrics(record("2024-01-01T10:05:00Z", 0.02))  # older window, read later
    >>> [(r.window_end, r.top_psi) for r in board.rows()]
    [('2024-01-01T10:10:00Z', [('f03', 0.31)])]
    """

    def __init__(self) -> None:
        self._metrics: dict[MonitorKey, MetricsRecord] = {}
        self._signals: dict[tuple[Any, ...], Alert] = {}
        self._performance: dict[MonitorKey, dict[str, tuple[str, ClassPerformance]]] = {}
        self._incidents: dict[str, Incident] = {}

    def add_incident(self, incident: Incident) -> None:
        """Keep ``incident`` if it is its incident's latest event (highest revision)."""
        have = self._incidents.get(incident.incident_id)
        if have is None or incident.revision >= have.revision:
            self._incidents[incident.incident_id] = incident

    def incidents(self, model: str | None = None) -> list[Incident]:
        """The open incidents (latest event not ``resolved``), most severe first."""
        return open_incidents(self._incidents.values(), model)

    def add_metrics(self, record: MetricsRecord) -> None:
        """Keep ``record`` if its window ends later than the monitor's latest so far."""
        key = (record.model_id, record.model_version, _segment_key(record.segment))
        cp = record.class_performance
        if cp is not None:
            latest = self._performance.setdefault(key, {})
            have = latest.get(cp.source)
            if have is None or _time_order(record.window.end) >= _time_order(have[0]):
                latest[cp.source] = (record.window.end, cp)
        held = self._metrics.get(key)
        order = (_time_order(record.window.end), _time_order(record.emitted_at))
        if held is None or order >= (_time_order(held.window.end), _time_order(held.emitted_at)):
            self._metrics[key] = record

    def add_alert(self, alert: Alert) -> None:
        """Record ``alert`` as the latest word on its signal (topic order is time order)."""
        self._signals[_signal_key(alert)] = alert

    def firing(self, model: str | None = None) -> list[Alert]:
        """The alerts whose signal's latest status is ``firing``."""
        return [
            a
            for a in self._signals.values()
            if a.status == "firing" and (model is None or a.model_id == model)
        ]

    def rows(self, model: str | None = None, top: int = 3) -> list[StatusRow]:
        """One row per monitor with metrics or firing alerts, sorted by model, version, segment.

        ``top`` is how many features to list, highest PSI first (features without a PSI are
        left out).
        """
        by_monitor: dict[MonitorKey, list[Alert]] = {}
        for alert in self.firing(model):
            key = (alert.model_id, alert.model_version, _segment_key(alert.segment))
            by_monitor.setdefault(key, []).append(alert)
        keys = {k for k in self._metrics if model is None or k[0] == model} | set(by_monitor)
        rows = []
        for key in sorted(keys, key=lambda k: (k[0], k[1], k[2] != (), k[2])):
            record = self._metrics.get(key)
            firing = sorted(
                by_monitor.get(key, []), key=lambda a: (-_RANK[a.severity], a.feature or "")
            )
            rows.append(
                StatusRow(
                    model_id=key[0],
                    model_version=key[1],
                    segment=dict(key[2]),
                    window_end=record.window.end if record else None,
                    count=record.count if record else None,
                    top_psi=_top_psi(record, top) if record else [],
                    firing=firing,
                    performance={k: v for k, (_, v) in self._performance.get(key, {}).items()},
                )
            )
        return rows


def _top_psi(record: MetricsRecord, top: int) -> list[tuple[str, float]]:
    scored = [
        (name, float(stats["psi"]))
        for name, stats in record.features.items()
        if isinstance(stats.get("psi"), int | float)
    ]
    scored.sort(key=lambda fv: (-fv[1], fv[0]))
    return scored[:top]


def render_table(rows: Sequence[StatusRow]) -> str:
    """The status table, columns padded to their widest cell.

    >>> row = StatusRow("churn", "7", {"country": "DE"}, "2024-01-01T10:05:00Z", 1200,
    ...                 [("f03", 0.4127)])
    >>> print(render_table([row]))
    MODEL  VERSION  SEGMENT     WINDOW END (UTC)     EVENTS  TOP PSI     PERFORMANCE  FIRING
    churn  7        country=DE  2024-01-01 10:05:00  1200    f03: 0.413  -            -
    """
    header = [
        "MODEL", "VERSION", "SEGMENT", "WINDOW END (UTC)", "EVENTS", "TOP PSI", "PERFORMANCE",
        "FIRING",
    ]  # fmt: skip
    table = [header] + [
        [
            r.model_id,
            r.model_version,
            segment_text(r.segment),
            _utc(r.window_end) if r.window_end else "-",
            str(r.count) if r.count is not None else "-",
            ", ".join(f"{f}: {v:.3g}" for f, v in r.top_psi) or "-",
            r.performance_text(),
            r.firing_text(),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


# -- Kafka ------------------------------------------------------------------------------------


def _consumer(cfg: Config) -> Consumer:
    # A group id is required, but with assign() the consumer never joins the group; offsets
    # are neither committed nor stored.
    return kafka_ranges.consumer(cfg, "oncall", offset_reset="earliest", fetch_bytes=16_777_216)


@contextmanager
def _kafka_errors(cfg: Config, topic: str) -> Iterator[None]:
    """A missing topic or an unreachable Kafka as an :class:`OncallError` naming the fix."""
    try:
        yield
    except kafka_ranges.KafkaUnavailableError as exc:
        raise OncallError(f"cannot reach Kafka at {cfg.kafka.bootstrap}: {exc.cause}") from None
    except kafka_ranges.UnknownTopicError:
        raise OncallError(
            f"topic {topic!r} does not exist on {cfg.kafka.bootstrap}; "
            "create it with: streamproc topics apply"
        ) from None


def _partitions(consumer: Consumer, cfg: Config, topic: str, timeout: float = 10.0) -> list[int]:
    with _kafka_errors(cfg, topic):
        return kafka_ranges.partitions(consumer, topic, timeout)


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


def _is_eof(msg: Message) -> bool:
    from confluent_kafka import KafkaError

    err = msg.error()
    return err is not None and err.code() == KafkaError._PARTITION_EOF


def read_bounded(
    cfg: Config, topic: str, since_ms: int | None, timeout: float, err: TextIO
) -> Iterator[Message]:
    """Every message of ``topic`` with a record time at or after ``since_ms`` (``None``: all),
    up to the end offsets seen when the read starts; stop early, with a warning, after
    ``timeout`` seconds.
    """
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

    def warn(error: object) -> None:
        print(f"streamproc: reading {topic!r}: {error}", file=err)

    consumer = _consumer(cfg)
    try:
        with _kafka_errors(cfg, topic):
            todo = kafka_ranges.retained_ranges(consumer, topic, since_ms, timeout=10.0)
        records = kafka_ranges.read(consumer, topic, todo, timeout, budget=True, on_error=warn)
        with closing(records):
            for msg in records:
                if msg.error() is not None:  # the partition ended early
                    continue
                # offsets_for_times gives the first offset at or after since_ms; a
                # producer-set timestamp can still be older further on.
                stamp_type, stamp = msg.timestamp()
                if since_ms is None or stamp_type == TIMESTAMP_NOT_AVAILABLE or stamp >= since_ms:
                    yield msg
    except kafka_ranges.StalledReadError as exc:
        print(
            f"streamproc: stopped reading {topic!r} after {timeout:g} s; "
            f"partitions {exc.partitions} were not read to the end",
            file=err,
        )
    finally:
        consumer.close()


@dataclass
class TailOptions:
    """What ``alerts tail`` shows and when it stops."""

    severity: str | None = None
    model: str | None = None
    from_beginning: bool = False
    as_json: bool = False
    max_alerts: int | None = None
    timeout: float | None = None
    alerts: bool = False  # the raw alerts of topics.alerts instead of the incidents


def tail(cfg: Config, opts: TailOptions, out: TextIO, err: TextIO) -> int:
    """Print the incident events of ``topics.incidents`` (with ``opts.alerts``, the alerts of
    ``topics.alerts``) that match ``opts``; return how many were printed.

    Runs until ``opts.max_alerts`` were printed, ``opts.timeout`` seconds passed, or it is
    interrupted.
    """
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    topic = cfg.topics.alerts if opts.alerts else cfg.topics.incidents
    kind: type[Alert] | type[Incident] = Alert if opts.alerts else Incident
    colour = not opts.as_json and use_colour(out)
    consumer = _consumer(cfg)
    printed = 0
    try:
        start = OFFSET_BEGINNING if opts.from_beginning else OFFSET_END
        consumer.assign(
            [TopicPartition(topic, p, start) for p in _partitions(consumer, cfg, topic)]
        )
        deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
        while opts.max_alerts is None or printed < opts.max_alerts:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                break
            msg = consumer.poll(wait)
            if msg is None or _is_eof(msg):
                continue
            if msg.error() is not None:
                print(f"streamproc: reading {topic!r}: {msg.error()}", file=err)
                continue
            record = decode_record(msg.value(), kind)
            if isinstance(record, str):
                print(f"streamproc: skipped {_where(msg)}: {record}", file=err)
                continue
            if not matches(record, opts.severity, opts.model):
                continue
            if opts.as_json:
                out.write(encode(record).decode() + "\n")
            elif isinstance(record, Alert):
                out.write(format_alert(record, colour) + "\n\n")
            else:
                out.write(format_incident(record, colour) + "\n\n")
            out.flush()
            printed += 1
    finally:
        consumer.close()
    return printed


def status(
    cfg: Config,
    *,
    model: str | None,
    since_s: float,
    timeout: float,
    err: TextIO,
    now: float | None = None,
) -> StatusBoard:
    """Read all of ``topics.incidents``, ``topics.metrics`` (the last ``since_s`` seconds) and
    all of ``topics.alerts``."""
    board = StatusBoard()
    now = time.time() if now is None else now
    since_ms = int((now - since_s) * 1000)
    reads: tuple[tuple[str, type[Any], int | None], ...] = (
        # An incident (an alert) opened a week ago may still be open: read every retained one.
        (cfg.topics.incidents, Incident, None),
        (cfg.topics.metrics, MetricsRecord, since_ms),
        (cfg.topics.alerts, Alert, None),
    )
    for topic, kind, since in reads:
        skipped: list[str] = []
        try:
            for msg in read_bounded(cfg, topic, since, timeout, err):
                record = decode_record(msg.value(), kind)
                if isinstance(record, str):
                    skipped.append(f"{_where(msg)}: {record}")
                elif isinstance(record, Incident):
                    board.add_incident(record)
                elif isinstance(record, Alert):
                    board.add_alert(record)
                elif model is None or record.model_id == model:
                    board.add_metrics(record)
        except OncallError as exc:
            if kind is not Incident:
                raise
            # A deployment from before incidents (no such topic): say so, show the rest.
            print(f"streamproc: no incidents shown: {exc}", file=err)
            continue
        if skipped:
            print(
                f"streamproc: skipped {len(skipped)} invalid message(s) on {topic!r}; "
                f"first {skipped[0]}",
                file=err,
            )
    return board


# -- command line -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_tail(args: argparse.Namespace) -> int:
    """``streamproc alerts tail``."""
    cfg = load_config(args.config)
    opts = TailOptions(
        severity=args.severity,
        model=args.model,
        from_beginning=args.from_beginning,
        as_json=args.json,
        max_alerts=args.max,
        timeout=args.timeout,
        alerts=args.alerts,
    )
    try:
        tail(cfg, opts, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as a Unix filter does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


@dataclass
class WorkerStatus:
    """One worker's stages as its heartbeat (Redis ``P:worker:<id>``) last told."""

    worker: str
    age_s: float  # how long ago the heartbeat was written
    stages: dict[str, dict[str, float]]  # stage -> last_progress age, partitions, waiting
    quarantined: str

    def stalled(self, stall_s: float) -> list[str]:
        """Stages with input waiting and no batch finished for ``stall_s``."""
        return [
            st
            for st, v in sorted(self.stages.items())
            if v["waiting"] > 0 and v["since_progress_s"] > stall_s
        ]

    def line(self, stall_s: float) -> str:
        parts = []
        for st, v in sorted(self.stages.items()):
            if not v["partitions"]:
                continue
            since = v["since_progress_s"]
            ago = "never" if since == float("inf") else f"{since:.0f} s ago"
            waiting = f", {int(v['waiting'])} with input waiting" if v["waiting"] else ""
            parts.append(f"{st}: {int(v['partitions'])} partitions, last batch {ago}{waiting}")
        text = f"worker {self.worker} (seen {self.age_s:.0f} s ago): " + "; ".join(
            parts or ["idle"]
        )
        stalled = self.stalled(stall_s)
        if stalled:
            text += f"\n  STALLED: {', '.join(stalled)} (input waiting, no batch for {stall_s:g} s)"
        if self.quarantined:
            text += f"\n  QUARANTINED: {self.quarantined}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"worker": self.worker, "age_s": round(self.age_s, 1), "stages": self.stages,
                "quarantined": self.quarantined}  # fmt: skip


def workers(cfg: Config, now: float | None = None) -> list[WorkerStatus]:
    """Every worker's heartbeat of the last two minutes (``streamproc worker`` writes one
    every 10 s)."""
    import redis

    from streamproc.publish.keys import Keys
    from streamproc.redis_client import sync_client

    now = time.time() if now is None else now
    client = sync_client(cfg.redis)
    keys = Keys(cfg.redis.prefix)
    out = []
    try:
        for key in sorted(client.scan_iter(match=keys.workers, count=100)):
            raw = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
            if "at" not in raw:
                continue
            stages: dict[str, dict[str, float]] = {}
            for stage in ("predictions", "labels", "judge"):
                last = float(raw.get(f"{stage}.last_progress", "0") or 0)
                stages[stage] = {
                    "since_progress_s": round(now - last, 1) if last > 0 else float("inf"),
                    "partitions": float(raw.get(f"{stage}.partitions", "0")),
                    "waiting": float(raw.get(f"{stage}.waiting", "0")),
                }
            name = key.decode().rsplit(":", 1)[-1]
            out.append(
                WorkerStatus(name, now - float(raw["at"]), stages, raw.get("quarantined", ""))
            )
    except redis.RedisError as exc:
        print(f"streamproc: Redis at {cfg.redis.url}: {exc}", file=sys.stderr)
    finally:
        client.close()
    return out


STALL_S = 300.0  # the same threshold as the StreamprocStageStalled Prometheus rule


def run_status(args: argparse.Namespace) -> int:
    """``streamproc status``."""
    cfg = load_config(args.config)
    if args.workers:
        found = workers(cfg)
        if args.json:
            print(json.dumps([w.to_json() for w in found], separators=(",", ":")))
        else:
            print("\n".join(w.line(STALL_S) for w in found) or "no worker heartbeat in Redis")
        return 1 if any(w.stalled(STALL_S) or w.quarantined for w in found) else 0
    if not args.json:
        for w in workers(cfg):
            print(w.line(STALL_S))
    board = status(cfg, model=args.model, since_s=args.since, timeout=args.timeout, err=sys.stderr)
    rows = board.rows(args.model, top=args.top)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], separators=(",", ":")))
        return 0
    print(render_incidents(board.incidents(args.model)) + "\n")
    if rows:
        print(render_table(rows))
    else:
        scope = f" for model {args.model!r}" if args.model else ""
        print(
            f"no metrics records on {cfg.topics.metrics!r} in the last {args.since:g} s "
            f"and no firing alerts{scope}"
        )
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``alerts tail`` and ``status`` to the ``streamproc`` command line."""
    p = sub.add_parser("alerts", help="read the incidents (or the alerts) topic")
    actions = p.add_subparsers(dest="alerts_action", required=True)
    t = actions.add_parser(
        "tail",
        help="print incidents (one per root cause) as they change, with the replay command",
        description="Print the incident events published on topics.incidents: root cause in "
        "one line, member alerts folded. --alerts: every raw alert of topics.alerts instead. "
        "Joins no consumer group and commits nothing.",
    )
    t.add_argument("--alerts", action="store_true", help="the raw alerts instead of the incidents")
    t.add_argument(
        "--severity", choices=SEVERITIES, help="only incidents (alerts) of at least this severity"
    )
    t.add_argument("--model", help="only this model_id")
    t.add_argument(
        "--from-beginning", action="store_true", help="every retained event, then new ones"
    )
    t.add_argument(
        "--json", action="store_true", help="one compact incident.v1 (alert.v1) JSON per line"
    )
    t.add_argument("--max", type=_positive_int, help="stop after printing N events")
    t.add_argument("--timeout", type=_positive_float, help="stop after S seconds")
    t.set_defaults(func=run_tail)

    s = sub.add_parser(
        "status",
        help="open incidents, then per model, version and segment: latest window, top PSI, "
        "firing alerts",
        description="Read every retained incident event, the metrics of the last --since and "
        "every retained alert; print the open incidents and one row per monitor (--json: the "
        "rows only).",
    )
    s.add_argument("--model", help="only this model_id")
    s.add_argument(
        "--since", type=_duration, default=parse_duration("24h"),
        help="how far back to read metrics (e.g. 30m, 24h, 7d; default 24h)",
    )  # fmt: skip
    s.add_argument("--top", type=_positive_int, default=3, help="features listed by PSI")
    s.add_argument(
        "--timeout", type=_positive_float, default=60.0,
        help="give up reading a topic after S seconds (default 60)",
    )  # fmt: skip
    s.add_argument("--json", action="store_true", help="the rows as one JSON array")
    s.add_argument(
        "--workers", action="store_true",
        help="only the workers' stages (exit code 1 when one is stalled or a model quarantined)",
    )  # fmt: skip
    s.set_defaults(func=run_status)
