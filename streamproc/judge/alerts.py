"""Alert lifecycle: one ``firing`` per episode, one ``resolved`` after K clear windows.

A monitor judges every signal it watches (a feature's PSI, a detector, the volume...) once per
closed window or detector tick and hands the :class:`Verdict` to an :class:`AlertTracker`:

- not firing, and the verdict has a severity → emit ``firing``; the episode starts here;
- firing, and the severity rises (warning → critical) → emit ``firing`` again at the new
  severity (same episode, new id); lower or equal severities emit nothing (dedupe);
- firing, and the value is below the *clearing* threshold (hysteresis: lower than the firing
  threshold) for ``clear_after`` consecutive verdicts → emit ``resolved``.

Alert ids are a hash of what the alert describes (monitor, feature, detector, the episode's
first window, status and severity), never of when it was computed, so a restart or a replay that
sees the same data publishes the same ids, and a consumer can drop repeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from streamproc.contracts import Alert, Source, Window
from streamproc.errors import StateEncodingError

Severity = Literal["info", "warning", "critical"]
Kind = Literal[
    "feature_drift",
    "prediction_drift",
    "multivariate_drift",
    "label_drift",
    "performance",
    "data_quality",
    "volume",
    "monitor_error",
]
_RANK = {None: 0, "info": 1, "warning": 2, "critical": 3}
_MAGIC = b"SPA1"


@dataclass(frozen=True, slots=True)
class AlertKey:
    """What an alert is about: one signal of one monitor."""

    model_id: str
    model_version: str
    segment: tuple[tuple[str, str], ...]
    feature: str | None
    detector: str
    kind: Kind

    def text(self) -> str:
        seg = ",".join(f"{k}={v}" for k, v in self.segment)
        return "|".join(
            [self.model_id, self.model_version, seg, self.feature or "", self.detector, self.kind]
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """One judgement of a signal over one window."""

    severity: Severity | None
    cleared: bool
    value: float
    threshold: float
    window: tuple[float, float]
    evidence: dict[str, Any] = field(default_factory=dict)
    offsets: dict[str, list[int]] = field(default_factory=dict)


def iso(t: float) -> str:
    """Event time as RFC 3339 UTC with milliseconds.

    >>> iso(1704067200.0)
    '2024-01-01T00:00:00.000Z'
    """
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_id(key: AlertKey, episode_start: float, status: str, severity: str) -> str:
    """A stable id from what the alert describes.

    >>> k = AlertKey("m", "1", (("country", "DE"),), "f03", "psi", "feature_drift")
    >>> alert_id(k, 0.0, "firing", "warning") == alert_id(k, 0.0, "firing", "warning")
    True
    """
    text = f"{key.text()}|{episode_start!r}|{status}|{severity}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Episode(msgspec.Struct, array_like=True):
    start: float
    severity: str
    clear_streak: int = 0


class _TrackerState(msgspec.Struct, array_like=True):
    clear_after: int
    episodes: dict[str, _Episode]


class AlertTracker:
    """Turns verdicts into firing/resolved alerts with dedupe and hysteresis.

    Examples
    --------
    >>> t = AlertTracker(clear_after=2)
    >>> k = AlertKey("m", "1", (), "x", "psi", "feature_drift")
    >>> hot = Verdict("warning", False, 0.2, 0.1, (0.0, 60.0))
    >>> cold = Verdict(None, True, 0.01, 0.1, (60.0, 120.0))
    >>> [a.status for a in t.observe(k, hot, "topic", "t")]
    ['firing']
    >>> t.observe(k, hot, "topic", "t"), t.observe(k, cold, "topic", "t")
    ([], [])
    >>> [a.status for a in t.observe(k, cold, "topic", "t")]
    ['resolved']
    """

    def __init__(self, clear_after: int = 3) -> None:
        self.clear_after = clear_after
        self._episodes: dict[str, _Episode] = {}
        self._keys: dict[str, AlertKey] = {}

    def firing(self) -> list[tuple[AlertKey, str]]:
        """The keys firing now, with their severity."""
        return [(self._keys[k], e.severity) for k, e in self._episodes.items() if k in self._keys]

    def observe(self, key: AlertKey, verdict: Verdict, topic: str, emitted_at: str) -> list[Alert]:
        """Fold one verdict in; return the alerts it causes (none, one firing, or one resolved)."""
        text = key.text()
        self._keys[text] = key
        episode = self._episodes.get(text)
        if episode is None:
            if verdict.severity is None:
                return []
            episode = self._episodes[text] = _Episode(verdict.window[0], verdict.severity)
            return [self._alert(key, episode, "firing", verdict, topic, emitted_at)]
        if verdict.cleared and verdict.severity is None:
            episode.clear_streak += 1
            if episode.clear_streak >= self.clear_after:
                del self._episodes[text]
                return [self._alert(key, episode, "resolved", verdict, topic, emitted_at)]
            return []
        episode.clear_streak = 0
        if _RANK[verdict.severity] > _RANK[episode.severity]:
            episode.severity = verdict.severity  # type: ignore[assignment]
            return [self._alert(key, episode, "firing", verdict, topic, emitted_at)]
        return []

    def resolve_where(
        self, match: Callable[[AlertKey], bool], verdict: Verdict, topic: str, emitted_at: str
    ) -> list[Alert]:
        """Resolve every firing episode whose key ``match`` es, at once: its monitor is gone
        (a model version retired), so no verdict will ever clear it.

        >>> t = AlertTracker()
        >>> k = AlertKey("m", "1", (), "x", "psi", "feature_drift")
        >>> _ = t.observe(k, Verdict("warning", False, 0.2, 0.1, (0.0, 60.0)), "t", "e")
        >>> gone = Verdict(None, True, 0.0, 0.1, (60.0, 120.0), {"reason": "retired"})
        >>> [a.status for a in t.resolve_where(lambda k: k.model_version == "1", gone, "t", "e")]
        ['resolved']
        """
        out = []
        for text in sorted(self._episodes):
            key = self._keys.get(text)
            if key is not None and match(key):
                episode = self._episodes.pop(text)
                out.append(self._alert(key, episode, "resolved", verdict, topic, emitted_at))
        return out

    def _alert(
        self,
        key: AlertKey,
        episode: _Episode,
        status: Literal["firing", "resolved"],
        verdict: Verdict,
        topic: str,
        emitted_at: str,
    ) -> Alert:
        evidence = dict(verdict.evidence)
        evidence["episode_start"] = iso(episode.start)
        return Alert(
            alert_id=alert_id(key, episode.start, status, episode.severity),
            status=status,
            severity=episode.severity,  # type: ignore[arg-type]
            kind=key.kind,
            model_id=key.model_id,
            model_version=key.model_version,
            feature=key.feature,
            segment=dict(key.segment),
            detector=key.detector,
            value=float(verdict.value),
            threshold=float(verdict.threshold),
            window=Window(iso(verdict.window[0]), iso(verdict.window[1])),
            evidence=evidence,
            source=Source(topic, {p: list(r) for p, r in sorted(verdict.offsets.items())}),
            emitted_at=emitted_at,
        )

    def to_bytes(self) -> bytes:
        keys = {k: [*[v for v in _key_fields(key)]] for k, key in self._keys.items()}
        state = _TrackerState(self.clear_after, self._episodes)
        return _MAGIC + msgspec.msgpack.encode([state, keys])

    @classmethod
    def from_bytes(cls, blob: bytes) -> AlertTracker:
        if blob[:4] != _MAGIC:
            raise StateEncodingError(f"not an alert-tracker checkpoint (header {blob[:4]!r})")
        state_raw, keys = msgspec.msgpack.decode(blob[4:])
        state = msgspec.convert(state_raw, _TrackerState)
        tracker = cls(state.clear_after)
        tracker._episodes = dict(state.episodes)
        tracker._keys = {k: _key_from(v) for k, v in keys.items()}
        return tracker


def _key_fields(key: AlertKey) -> list[Any]:
    return [
        key.model_id,
        key.model_version,
        [list(p) for p in key.segment],
        key.feature,
        key.detector,
        key.kind,
    ]


def _key_from(v: list[Any]) -> AlertKey:
    return AlertKey(v[0], v[1], tuple((a, b) for a, b in v[2]), v[3], v[4], v[5])
