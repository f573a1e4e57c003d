"""Incidents: one page per root cause, with the segment and feature that explain it.

One change in a model's input fires many alerts, all true: a feature shifted in one region moves
PSI, KS, ADWIN and Page-Hinkley there, in all traffic, and in every segment of another
dimension that carries some of that region's traffic. An :class:`IncidentBook` (one per model
judge) groups them:

- **By cause.** A firing alert joins the open incident of its model version and cause: its
  feature (any detector, severity or segment), or the model's performance, volume, prediction
  or label distribution, latency. A prediction-drift or multivariate alert joins an open
  feature incident of an overlapping segment when there is one (the feature explains it), a
  label-drift alert an open performance incident. Otherwise it opens one. An incident resolves
  when its last member does; the members resolve with their own hysteresis.
- **Root cause.** Each windowed statistic of the cause (PSI, KS, null rate, new categories,
  accuracy, MAE, volume drop...) is judged in every monitored segment every window, firing or
  not. Its *strength* is how far it went past its threshold (value / threshold; for accuracy,
  the drop over the drop that warns), the mean over the incident's windows per segment. In a
  segment dimension, value ``v`` is where the change is when ``v`` is past its threshold and no
  other value of that dimension shows more than :data:`SIBLING_RATIO` of ``v``'s strength. A
  change confined to ``country=DE`` shows fully in DE and not in the other countries, and
  a third of it in every device (each carries DE's share): country localises it, device
  does not. The root is the value of every dimension that localises it (``{}``: all traffic),
  as the issue asks of a parent and its children, on strengths instead of shares because
  strengths are what every statistic has. Before any window of the incident closed (a tick
  detector opened it) the root is the leading alert's segment.

Everything is a function of the judge's verdicts and alerts in closing order, which are the
same live, in a replay and after a restart (:meth:`IncidentBook.to_bytes` is in the judge's
checkpoint), so incident and event ids derived from content are too.

Examples
--------
>>> from streamproc.judge.alerts import AlertKey, AlertTracker, Verdict
>>> book, tracker = IncidentBook("m"), AlertTracker()
>>> def judge(seg, psi, t):
...     key = AlertKey("m", "1", seg, "f1", "psi", "feature_drift")
...     verdict = Verdict("warning" if psi > 0.1 else None, psi < 0.05, psi, 0.1, (t, t + 60))
...     book.verdict(key, verdict)
...     return tracker.observe(key, verdict, "predictions", "")
>>> alerts = judge((), 0.12, 0.0) + judge((("country", "DE"),), 0.9, 0.0)
>>> alerts += judge((("country", "US"),), 0.01, 0.0)
>>> [(i.status, i.cause.feature, i.root_cause.segment) for i in book.step(alerts, 60.0, "")]
[('opened', 'f1', {'country': 'DE'})]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

import msgspec

from streamproc.contracts import (
    Alert,
    Incident,
    IncidentCause,
    IncidentMember,
    RootCause,
)
from streamproc.errors import StateEncodingError
from streamproc.judge.alerts import AlertKey, Verdict, iso

SIBLING_RATIO: Final = 0.5
"""A segment dimension localises a change at a value when no other value of it shows more
than this share of that value's strength."""

_MAGIC: Final = b"SPI1"
_RANK: Final = {"info": 1, "warning": 2, "critical": 3}
_TICK_DETECTORS: Final = frozenset({"adwin", "page_hinkley", "adwin_error"})
"""Detectors judged per tick: they join incidents, but have no window strength."""
_ALL: Final = "all"
_EXPLAINED: Final = {"prediction": "feature", "multivariate": "feature", "label": "performance"}
"""Signals another incident's cause may explain: they join an open incident of that signal."""


def cause_of(kind: str, feature: str | None) -> tuple[str, str | None]:
    """The cause an alert of ``kind`` about ``feature`` belongs to: ``(signal, feature)``.

    >>> cause_of("feature_drift", "f03"), cause_of("data_quality", "c1")
    (('feature', 'f03'), ('feature', 'c1'))
    >>> cause_of("performance", None), cause_of("data_quality", None)
    (('performance', None), ('latency', None))
    """
    if kind in ("feature_drift", "data_quality") and feature is not None:
        return ("feature", feature)
    return {
        "performance": ("performance", None),
        "volume": ("volume", None),
        "prediction_drift": ("prediction", None),
        "label_drift": ("label", None),
        "multivariate_drift": ("multivariate", None),
    }.get(kind, ("latency", None))


def strength_of(detector: str, verdict: Verdict) -> float | None:
    """How far a windowed statistic went past its threshold (1 = at it); ``None`` for tick
    detectors and statistics without a threshold to compare with.

    >>> strength_of("psi", Verdict(None, True, 0.05, 0.1, (0.0, 60.0)))
    0.5
    >>> ev = {"reference_accuracy": 0.9}
    >>> strength_of("accuracy", Verdict("warning", False, 0.8, 0.85, (0.0, 60.0), ev))
    2.0
    """
    if detector in _TICK_DETECTORS:
        return None
    value, threshold = verdict.value, verdict.threshold
    if detector == "accuracy":
        ref = verdict.evidence.get("reference_accuracy")
        if ref is None or ref - threshold <= 0:
            return None
        return round(max(ref - value, 0.0) / (ref - threshold), 6)
    if detector == "top1_rate":
        return None  # its value is a rate, its threshold a cap: no ratio of excess
    if not threshold > 0 or value != value:
        return None
    return round(max(value, 0.0) / threshold, 6)


def segment_key(segment: Iterable[tuple[str, str]]) -> str:
    """``"all"`` or ``"dim=value"`` (monitors have one dimension); several: joined by ``,``."""
    parts = [f"{d}={v}" for d, v in segment]
    return ",".join(parts) if parts else _ALL


class _Member(msgspec.Struct, array_like=True):
    key: list[str | None]  # AlertKey.text() parts: version, segment, feature, detector, kind
    alert: bytes  # the member's latest alert (JSON), as published


class _Open(msgspec.Struct, array_like=True):
    incident_id: str
    version: str
    signal: str
    feature: str | None
    started_at: str
    leading: str  # member key text
    severity: str
    revision: int
    root: dict[str, str]
    members: dict[str, _Member]  # key text -> member
    sums: dict[str, list[float]]  # segment key -> [strength sum, windows]


_ALERT_DEC = msgspec.json.Decoder(Alert)
_STATE_DEC = msgspec.msgpack.Decoder(list[_Open])


def _member(alert: Alert) -> IncidentMember:
    return IncidentMember(
        alert_id=alert.alert_id,
        status=alert.status,
        severity=alert.severity,
        kind=alert.kind,
        detector=alert.detector,
        feature=alert.feature,
        segment=alert.segment,
        window=alert.window,
        source=alert.source,
    )


def _key(alert: Alert) -> str:
    return AlertKey(
        alert.model_id,
        alert.model_version,
        tuple(sorted(alert.segment.items())),
        alert.feature,
        alert.detector,
        alert.kind,  # type: ignore[arg-type]
    ).text()


def _overlaps(a: dict[str, str], b: dict[str, str]) -> bool:
    """Two segments share traffic: no dimension where they want different values."""
    return all(b.get(d, v) == v for d, v in a.items())


class IncidentBook:
    """The open incidents of one model; see the module docstring."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.open: list[_Open] = []
        # this step's windowed strengths: (version, signal, feature) -> segment key -> strength
        self._step: dict[tuple[str, str, str | None], dict[str, float]] = {}

    def verdict(self, key: AlertKey, verdict: Verdict) -> None:
        """Note one judgement of one signal (firing or not) for the root-cause evidence."""
        s = strength_of(key.detector, verdict)
        if s is None:
            return
        signal, feature = cause_of(key.kind, key.feature)
        seg = self._step.setdefault((key.model_version, signal, feature), {})
        k = segment_key(key.segment)
        if s > seg.get(k, -1.0):
            seg[k] = s  # the strongest of the cause's statistics in that segment

    def step(self, alerts: list[Alert], t: float, emitted_at: str) -> list[Incident]:
        """Fold one closing step's alerts (a tick or a window, in closing order) and the
        verdicts noted since the last step; return the incident events they cause."""
        step, self._step = self._step, {}
        if not alerts and not self.open:
            return []
        changed: dict[str, list[str]] = {}  # incident id -> reasons, in order
        opened: set[str] = set()
        # what a feature or the performance explains joins after those have opened
        ordered = sorted(alerts, key=lambda a: cause_of(a.kind, a.feature)[0] in _EXPLAINED)
        for alert in ordered:
            key = _key(alert)
            if alert.status == "resolved":
                for inc in self.open:
                    m = inc.members.get(key)
                    if m is not None:
                        m.alert = msgspec.json.encode(alert)
                        changed.setdefault(inc.incident_id, [])
                continue
            inc = self._home(alert)
            if inc is None:
                inc = self._open(alert)
                opened.add(inc.incident_id)
                changed[inc.incident_id] = ["opened by " + _what(alert)]
                continue
            reasons = changed.setdefault(inc.incident_id, [])
            had = inc.members.get(key)
            inc.members[key] = _Member(_key_parts(alert), msgspec.json.encode(alert))
            if had is None:
                reasons.append("new member: " + _what(alert))
            elif _RANK[alert.severity] > _RANK[_ALERT_DEC.decode(had.alert).severity]:
                reasons.append("escalated: " + _what(alert))
            else:
                reasons.append("fired again: " + _what(alert))
            if _RANK[alert.severity] > _RANK[inc.severity]:
                inc.severity = alert.severity
        for inc in self.open:
            seen = step.get((inc.version, inc.signal, inc.feature))
            if seen:
                for k, s in seen.items():
                    acc = inc.sums.setdefault(k, [0.0, 0.0])
                    acc[0] += s
                    acc[1] += 1.0
            root = self._root(inc)
            if root != inc.root:
                if inc.incident_id not in opened:
                    where = segment_key(sorted(root.items()))
                    changed.setdefault(inc.incident_id, []).append(f"root cause now {where}")
                inc.root = root
        out = []
        still = []
        for inc in self.open:
            firing = any(
                _ALERT_DEC.decode(m.alert).status == "firing" for m in inc.members.values()
            )
            reasons = changed.get(inc.incident_id)
            if not firing:
                out.append(self._event(inc, "resolved", "every member resolved", t, emitted_at))
                continue
            still.append(inc)
            if reasons is None:
                continue
            if inc.incident_id in opened:
                out.append(self._event(inc, "opened", reasons[0], t, emitted_at))
            elif reasons:
                out.append(self._event(inc, "updated", "; ".join(reasons), t, emitted_at))
        self.open = still
        return out

    def _home(self, alert: Alert) -> _Open | None:
        """The open incident a firing alert belongs to, if any."""
        signal, feature = cause_of(alert.kind, alert.feature)
        for inc in self.open:
            if (inc.version, inc.signal, inc.feature) == (alert.model_version, signal, feature):
                return inc
        host = _EXPLAINED
        if signal not in host:
            return None
        k = segment_key(sorted(alert.segment.items()))
        candidates = [
            inc
            for inc in self.open
            if inc.version == alert.model_version
            and inc.signal == host[signal]
            and _overlaps(inc.root, alert.segment)
        ]
        if not candidates:
            return None

        def rank(inc: _Open) -> tuple[float, str]:
            acc = inc.sums.get(k, [0.0, 1.0])
            return (acc[0] / max(acc[1], 1.0), inc.incident_id)

        return max(candidates, key=rank)

    def _open(self, alert: Alert) -> _Open:
        signal, feature = cause_of(alert.kind, alert.feature)
        started = str(alert.evidence.get("episode_start", alert.window.start))
        key = _key(alert)
        text = f"{self.model_id}|{alert.model_version}|{signal}|{feature or ''}|{started}|{key}"
        inc = _Open(
            incident_id=hashlib.sha256(text.encode()).hexdigest()[:32],
            version=alert.model_version,
            signal=signal,
            feature=feature,
            started_at=started,
            leading=key,
            severity=alert.severity,
            revision=0,
            root=dict(alert.segment),
            members={key: _Member(_key_parts(alert), msgspec.json.encode(alert))},
            sums={},
        )
        self.open.append(inc)
        return inc

    def _root(self, inc: _Open) -> dict[str, str]:
        if not inc.sums:
            leading = inc.members.get(inc.leading)
            return dict(_ALERT_DEC.decode(leading.alert).segment) if leading else {}
        by_dim: dict[str, dict[str, float]] = {}
        for k, (total, n) in inc.sums.items():
            if k == _ALL or "," in k:
                continue
            dim, _, value = k.partition("=")
            by_dim.setdefault(dim, {})[value] = total / max(n, 1.0)
        root = {}
        for dim in sorted(by_dim):
            values = by_dim[dim]
            if len(values) < 2:
                continue
            best, top = max(values.items(), key=lambda kv: (kv[1], kv[0]))
            rest = max(s for v, s in values.items() if v != best)
            if top >= 1.0 and rest <= SIBLING_RATIO * top:
                root[dim] = best
        return root

    def _event(self, inc: _Open, status: str, reason: str, t: float, emitted_at: str) -> Incident:
        inc.revision += 1
        members = [_member(_ALERT_DEC.decode(m.alert)) for _, m in sorted(inc.members.items())]
        leading = _member(_ALERT_DEC.decode(inc.members[inc.leading].alert))
        strength = {k: round(total / max(n, 1.0), 3) for k, (total, n) in sorted(inc.sums.items())}
        event = hashlib.sha256(f"{inc.incident_id}|{inc.revision}".encode()).hexdigest()[:32]
        return Incident(
            event_id=event,
            incident_id=inc.incident_id,
            revision=inc.revision,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            severity=inc.severity,  # type: ignore[arg-type]
            model_id=self.model_id,
            model_version=inc.version,
            cause=IncidentCause(inc.signal, inc.feature),  # type: ignore[arg-type]
            root_cause=RootCause(
                segment=dict(inc.root), summary=_summary(inc, leading), strength=strength
            ),
            started_at=inc.started_at,
            leading=leading,
            members=members,
            updated_at=iso(t),
            emitted_at=emitted_at,
        )

    def firing(self) -> list[_Open]:
        """The open incidents."""
        return list(self.open)

    def series(self) -> list[tuple[tuple[str, str, str, str], int]]:
        """``/metrics`` labels ``(version, severity, cause, root)`` of each open incident and
        its value (1; several incidents with the same labels add up). Feature names and
        segment values only: never a raw feature value or an id.

        >>> from streamproc.judge.alerts import AlertKey, AlertTracker, Verdict
        >>> book, key = IncidentBook("m"), AlertKey("m", "1", (), None, "volume_drop", "volume")
        >>> verdict = Verdict("critical", False, 1.0, 0.5, (0.0, 60.0))
        >>> alerts = AlertTracker().observe(key, verdict, "", "")
        >>> _ = book.step(alerts, 60.0, "")
        >>> book.series()
        [(('1', 'critical', 'volume', 'all'), 1)]
        """
        out: dict[tuple[str, str, str, str], int] = {}
        for inc in self.open:
            cause = describe_cause(inc.signal, inc.feature)
            labels = (inc.version, inc.severity, cause, segment_key(sorted(inc.root.items())))
            out[labels] = out.get(labels, 0) + 1
        return sorted(out.items())

    def to_bytes(self) -> bytes:
        return _MAGIC + msgspec.msgpack.encode(self.open)

    @classmethod
    def from_bytes(cls, model_id: str, blob: bytes) -> IncidentBook:
        book = cls(model_id)
        if not blob:
            return book
        if blob[:4] != _MAGIC:
            raise StateEncodingError(f"not an incident-book checkpoint (header {blob[:4]!r})")
        book.open = list(_STATE_DEC.decode(blob[4:]))
        return book


def _key_parts(alert: Alert) -> list[str | None]:
    return [
        alert.model_version,
        segment_key(sorted(alert.segment.items())),
        alert.feature,
        alert.detector,
        alert.kind,
    ]


def _what(alert: Alert) -> str:
    where = segment_key(sorted(alert.segment.items()))
    return f"{alert.detector} {alert.severity} in {where}"


def describe_cause(signal: str, feature: str | None) -> str:
    """``feature f03``, ``performance``...

    >>> describe_cause("feature", "f03"), describe_cause("volume", None)
    ('feature f03', 'volume')
    """
    return f"feature {feature}" if signal == "feature" else signal


def _summary(inc: _Open, leading: IncidentMember) -> str:
    where = segment_key(sorted(inc.root.items()))
    where = "all traffic" if where == _ALL else where
    n = len(inc.members)
    return (
        f"{describe_cause(inc.signal, inc.feature)} changed in {where} since {inc.started_at}"
        f" (first: {leading.detector}; {n} alert{'s' if n != 1 else ''})"
    )
