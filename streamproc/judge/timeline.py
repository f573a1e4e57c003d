"""Which reference judges what: per model version, from which event time on.

Baselines are created, replaced and deleted while workers run; monitors warm up on their first
windows when there is none. The judge never swaps a reference under a window it is judging.
Instead it keeps a *timeline*: each baseline it picks up applies from the start of the first
window it has not closed yet (``start``); each warm-up reference from the end of the windows it
was built from. A window is looked up by its start, so what judges it is a fact of the timeline
and the window, not of when a check happened to run; a replay given the same timeline judges
every window the same way.

Segment keys follow the baseline: a dimension the baseline is segmented by has a monitor per
baseline value and ``dim=__other__`` for the rest; other dimensions get one per value seen
(up to ``max_segment_values``, see :class:`streamproc.judge.engine.ModelJudge`).

Examples
--------
>>> tl = ReferenceTimeline()
>>> tl.set_baseline("v1", 0.0, "2024-01-01", {"all": "a1", "country=DE": "d1"}, {"country"})
True
>>> tl.select("v1", "country=DE", 10.0), tl.select("v1", "country=__other__", 10.0)
('d1', None)
>>> tl.add_warmup("v1", "country=__other__", "w1", 60.0)
>>> tl.select("v1", "country=__other__", 30.0), tl.select("v1", "country=__other__", 60.0)
(None, 'w1')
>>> tl.set_baseline("v1", 120.0, None, {}, set())  # deleted
True
>>> tl.select("v1", "all", 60.0), tl.select("v1", "all", 120.0)
('a1', None)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

import msgspec

from streamproc.sketch import OTHER


class BaselineEntry(msgspec.Struct, array_like=True, frozen=True):
    """A baseline as applied from ``start`` (``created_at`` is ``None`` once deleted)."""

    start: float
    created_at: str | None
    refs: dict[str, str]  # segment key -> reference fingerprint
    dims: list[str]  # the dimensions the baseline is segmented by


class WarmupEntry(msgspec.Struct, array_like=True, frozen=True):
    start: float
    fp: str


class TimelineState(msgspec.Struct, array_like=True):
    baselines: dict[str, list[BaselineEntry]] = {}
    warmups: dict[str, dict[str, WarmupEntry]] = {}  # version -> key -> entry


class ReferenceTimeline:
    """See the module docstring."""

    def __init__(self) -> None:
        self.baselines: dict[str, list[BaselineEntry]] = {}
        self.warmups: dict[str, dict[str, WarmupEntry]] = {}

    def set_baseline(
        self,
        version: str,
        start: float,
        created_at: str | None,
        refs: dict[str, str],
        dims: Iterable[str],
    ) -> bool:
        """Apply a baseline (``created_at=None``: deleted) from ``start``; ``False`` when it
        is the one already applied."""
        entries = self.baselines.setdefault(version, [])
        entry = BaselineEntry(start, created_at, dict(refs), sorted(dims))
        if entries and (entries[-1].refs, entries[-1].dims) == (entry.refs, entry.dims):
            return False
        if not entries and created_at is None:
            return False
        while entries and entries[-1].start >= start:
            entries.pop()  # superseded before any window judged it
        entries.append(entry)
        return True

    def add_warmup(self, version: str, key: str, fp: str, start: float) -> None:
        self.warmups.setdefault(version, {})[key] = WarmupEntry(start, fp)

    def baseline_at(self, version: str, t: float) -> BaselineEntry | None:
        entries = self.baselines.get(version)
        if not entries:
            return None
        i = bisect.bisect_right([e.start for e in entries], t) - 1
        if i < 0:
            return None
        entry = entries[i]
        return entry if entry.created_at is not None else None

    def latest(self, version: str) -> BaselineEntry | None:
        entries = self.baselines.get(version)
        return entries[-1] if entries and entries[-1].created_at is not None else None

    def fixed_values(self, version: str, t: float) -> dict[str, set[str]]:
        """Per dimension the baseline at ``t`` is segmented by, its values."""
        entry = self.baseline_at(version, t)
        if entry is None:
            return {}
        out: dict[str, set[str]] = {dim: set() for dim in entry.dims}
        for key in entry.refs:
            dim, sep, value = key.partition("=")
            if sep and dim in out and value != OTHER:
                out[dim].add(value)
        return out

    def select(self, version: str, key: str, t: float) -> str | None:
        """The fingerprint of the reference for segment ``key`` at event time ``t``."""
        entry = self.baseline_at(version, t)
        if entry is not None:
            fp = entry.refs.get(key)
            if fp is not None:
                return fp
        warm = self.warmups.get(version, {}).get(key)
        if warm is not None and warm.start <= t:
            return warm.fp
        return None

    def warmup_start(self, version: str, key: str) -> float:
        warm = self.warmups.get(version, {}).get(key)
        return warm.start if warm is not None else math.inf

    def fps(self) -> set[str]:
        out = {fp for es in self.baselines.values() for e in es for fp in e.refs.values()}
        out |= {w.fp for ws in self.warmups.values() for w in ws.values()}
        return out

    def state(self) -> TimelineState:
        return TimelineState(self.baselines, self.warmups)

    @classmethod
    def restore(cls, state: TimelineState) -> ReferenceTimeline:
        tl = cls()
        tl.baselines = {v: list(es) for v, es in state.baselines.items()}
        tl.warmups = {v: dict(ws) for v, ws in state.warmups.items()}
        return tl
