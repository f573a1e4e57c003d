"""Incidents as on-call reads them: pure functions on ``incident.v1`` events.

``alerts tail`` prints one block per incident event (:func:`format_incident`), ``status`` one
line per open incident (:func:`render_incidents`), the replay report and the demo one row per
incident of the range (:func:`latest_incidents`). An incident's latest event is the one with
the highest ``revision`` of its ``incident_id``; it is open while that event is not
``resolved``.

Examples
--------
>>> from streamproc.contracts import (
...     Incident, IncidentCause, IncidentMember, RootCause, Source, Window)
>>> def member(detector, segment, status="firing"):
...     return IncidentMember(alert_id="9b1c0e77d2a34f5e", status=status, severity="critical",
...         kind="feature_drift", detector=detector, feature="f03", segment=segment,
...         window=Window("2024-01-01T00:04:00Z", "2024-01-01T00:05:00Z"),
...         source=Source("predictions", {}))
>>> members = [member(d, s) for d in ("psi", "ks") for s in ({"country": "DE"}, {})]
>>> inc = Incident(event_id="e1", incident_id="i1", revision=2, status="updated",
...     reason="new member: ks critical in all", severity="critical", model_id="churn",
...     model_version="7", cause=IncidentCause("feature", "f03"),
...     root_cause=RootCause(segment={"country": "DE"}, summary="", strength={}),
...     started_at="2024-01-01T00:04:10.000Z", leading=members[0], members=members,
...     updated_at="2024-01-01T00:06:00.000Z", emitted_at="x")
>>> print(format_incident(inc))
CRITICAL UPDATED  model churn/7  feature f03 changed in country=DE since 2024-01-01 00:04:10 UTC
  4 alerts, 4 firing:
    psi, ks in country=DE, all
  why: new member: ks critical in all
  investigate: streamproc replay --from-alert 9b1c0e77d2a34f5e --out ./replay-9b1c0e77
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from streamproc.contracts import Incident, IncidentMember

__all__ = [
    "MAX_GROUPS",
    "MAX_REASONS",
    "MAX_SEGMENTS",
    "badges",
    "cause_text",
    "fold_members",
    "format_incident",
    "incident_summary",
    "is_open",
    "latest_incidents",
    "open_incidents",
    "render_incidents",
    "root_text",
]

MAX_SEGMENTS = 3
"""Segments named on one member line; more are counted, ``(+N)``."""
MAX_GROUPS = 4
"""Member lines per incident; more are counted."""
MAX_REASONS = 3
"""Parts of an update's reason shown; more are counted."""

_RANK = {"info": 0, "warning": 1, "critical": 2}
_COLOURS = {"info": "\033[36m", "warning": "\033[33m", "critical": "\033[1;31m"}
_RESOLVED = "\033[32m"
_RESET = "\033[0m"
# Windowed statistics first, then the detectors judged per tick (as the judge orders them).
_FIRST = ("psi", "ks", "js")
_TICK = ("adwin", "page_hinkley", "adwin_error")


def _segment(segment: Mapping[str, str]) -> str:
    if not segment:
        return "all"
    return ", ".join(f"{k}={v}" for k, v in sorted(segment.items()))


def _short(segment: Mapping[str, str]) -> str:
    """A segment without spaces, to list several on one line (``country=DE,device=ios``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(segment.items())) or "all"


def _utc(text: str) -> str:
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return text
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cause_text(incident: Incident) -> str:
    """``feature f03``, ``performance``, ``volume``...

    >>> from streamproc.contracts import IncidentCause
    >>> class I: cause = IncidentCause("feature", "f03")
    >>> cause_text(I())
    'feature f03'
    """
    c = incident.cause
    return f"feature {c.feature}" if c.signal == "feature" and c.feature else c.signal


def root_text(incident: Incident) -> str:
    """The root-cause segment: ``country=DE``, or ``all traffic``."""
    seg = incident.root_cause.segment
    return _segment(seg) if seg else "all traffic"


def incident_summary(incident: Incident) -> str:
    """What changed, where and since when, in one line (``status``, the demo, the report).

    ``feature f03 changed in country=DE since 2024-01-01 00:04:10 UTC``
    """
    return (
        f"{cause_text(incident)} changed in {root_text(incident)} "
        f"since {_utc(incident.started_at)} UTC"
    )


def _detector_order(detectors: Iterable[str]) -> list[str]:
    def key(d: str) -> tuple[int, int, str]:
        if d in _TICK:
            return (2, _TICK.index(d), d)
        return (0, _FIRST.index(d), d) if d in _FIRST else (1, 0, d)

    return sorted(set(detectors), key=key)


def fold_members(
    members: Sequence[IncidentMember],
    root: Mapping[str, str],
    max_segments: int = MAX_SEGMENTS,
    max_groups: int = MAX_GROUPS,
) -> list[str]:
    """One line per group of segments where the same detectors fired.

    Segments are ordered root first, then all traffic, then by name; groups by where the
    root is, then by size. Long lists are cut and counted.

    >>> from streamproc.contracts import IncidentMember, Source, Window
    >>> def m(detector, segment):
    ...     return IncidentMember(alert_id="a", status="firing", severity="warning",
    ...         kind="feature_drift", detector=detector, feature="f03", segment=segment,
    ...         window=Window("", ""), source=Source("p", {}))
    >>> segs = [{"country": "DE"}, {}, {"device": "ios"}, {"device": "web"}, {"country": "FR"}]
    >>> ms = [m(d, s) for d in ("adwin", "psi") for s in segs] + [m("ks", {"device": "web"})]
    >>> fold_members(ms, {"country": "DE"})
    ['psi, adwin in country=DE, all, country=FR (+1)', 'psi, ks, adwin in device=web']
    """
    by_segment: dict[str, set[str]] = {}
    order: dict[str, tuple[int, str]] = {}
    root_key = _short(root)
    for mem in members:
        k = _short(mem.segment)
        by_segment.setdefault(k, set()).add(mem.detector)
        order[k] = (0 if k == root_key else 1 if k == "all" else 2, k)
    groups: dict[tuple[str, ...], list[str]] = {}
    for k in sorted(by_segment, key=lambda s: order[s]):
        groups.setdefault(tuple(_detector_order(by_segment[k])), []).append(k)
    ranked = sorted(groups.items(), key=lambda g: (order[g[1][0]][0] > 0, -len(g[1]), g[1][0]))
    lines = []
    for detectors, segments in ranked[:max_groups]:
        shown = ", ".join(segments[:max_segments])
        more = len(segments) - max_segments
        lines.append(f"{', '.join(detectors)} in {shown}" + (f" (+{more})" if more > 0 else ""))
    if len(ranked) > max_groups:
        rest = sum(len(s) for _, s in ranked[max_groups:])
        lines.append(f"(+{_plural(rest, 'more segment')})")
    return lines


def _reason(reason: str, limit: int = MAX_REASONS) -> str:
    """An update's reason, its first ``limit`` parts.

    >>> _reason("a; b; c; d; e")
    'a; b; c (+2 more)'
    """
    parts = [p for p in reason.split("; ") if p]
    more = len(parts) - limit
    return "; ".join(parts[:limit]) + (f" (+{more} more)" if more > 0 else "")


def _replay_command(alert_id: str) -> str:
    from streamproc.tools.oncall import replay_command

    return replay_command(alert_id)


def badges(severity: str, status: str, colour: bool) -> tuple[str, str]:
    """Severity and status as a block's first words, coloured on a terminal.

    >>> badges("critical", "resolved", False)
    ('CRITICAL', 'RESOLVED')
    """
    sev, st = severity.upper(), status.upper()
    if colour:
        sev = f"{_COLOURS[severity]}{sev}{_RESET}"
        if status == "resolved":
            st = f"{_RESOLVED}{st}{_RESET}"
    return sev, st


def format_incident(incident: Incident, colour: bool = False) -> str:
    """One incident event, as ``alerts tail`` prints it: the root cause in one line, the
    members folded, the reason of an update and the replay command of the leading alert.
    """
    severity, status = badges(incident.severity, incident.status, colour)
    head = (
        f"{severity} {status}  model {incident.model_id}/{incident.model_version}  "
        f"{incident_summary(incident)}"
    )
    firing = [m for m in incident.members if m.status == "firing"]
    n = len(incident.members)
    count = f"{_plural(n, 'alert')}, {len(firing)} firing"
    if incident.status == "resolved":
        count = f"{_plural(n, 'alert')}, all resolved"
    lines = [head, f"  {count}:"]
    folded = fold_members(firing or incident.members, incident.root_cause.segment)
    lines += [f"    {line}" for line in folded]
    if incident.status == "updated" and incident.reason:
        lines.append(f"  why: {_reason(incident.reason)}")
    lines.append(f"  investigate: {_replay_command(incident.leading.alert_id)}")
    return "\n".join(lines)


def latest_incidents(events: Iterable[Incident]) -> list[Incident]:
    """Each incident's latest event (highest revision), in the order the incidents started.

    >>> from streamproc.contracts import IncidentCause
    >>> from types import SimpleNamespace as E
    >>> evs = [E(incident_id="a", revision=1, started_at="t1"),
    ...        E(incident_id="b", revision=1, started_at="t0"),
    ...        E(incident_id="a", revision=3, started_at="t1"),
    ...        E(incident_id="a", revision=2, started_at="t1")]
    >>> [(e.incident_id, e.revision) for e in latest_incidents(evs)]  # type: ignore[arg-type]
    [('b', 1), ('a', 3)]
    """
    latest: dict[str, Incident] = {}
    for ev in events:
        have = latest.get(ev.incident_id)
        if have is None or ev.revision >= have.revision:
            latest[ev.incident_id] = ev
    return sorted(latest.values(), key=lambda e: (e.started_at, e.incident_id))


def is_open(incident: Incident) -> bool:
    """Whether an incident's latest event leaves it open."""
    return incident.status != "resolved"


def open_incidents(events: Iterable[Incident], model: str | None = None) -> list[Incident]:
    """The open incidents (of ``model``), most severe first, then the oldest first."""
    found = [
        i for i in latest_incidents(events) if is_open(i) and (model is None or i.model_id == model)
    ]
    return sorted(found, key=lambda i: (-_RANK[i.severity], i.started_at, i.incident_id))


def render_incidents(incidents: Sequence[Incident]) -> str:
    """``status``'s open incidents: one line each, columns padded.

    >>> print(render_incidents([]))
    OPEN INCIDENTS: none
    """
    if not incidents:
        return "OPEN INCIDENTS: none"
    header = ["SEVERITY", "MODEL", "ROOT CAUSE", "ALERTS", "SINCE (UTC)"]
    table = [header] + [
        [
            i.severity.upper(),
            f"{i.model_id}/{i.model_version}",
            f"{cause_text(i)} in {root_text(i)}",
            f"{len(i.members)} ({sum(m.status == 'firing' for m in i.members)} firing)",
            _utc(i.started_at),
        ]
        for i in incidents
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return f"OPEN INCIDENTS: {len(incidents)}\n" + "\n".join(lines)


def to_json(incident: Incident) -> dict[str, Any]:
    """The incident.v1 record as plain JSON-able data."""
    return msgspec.to_builtins(incident)  # type: ignore[no-any-return]
