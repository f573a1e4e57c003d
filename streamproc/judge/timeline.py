"""Which reference judges what: per model version, from which window on.

Baselines are created, replaced and deleted while workers run; monitors warm up on their first
windows when there is none. A window is never judged against a reference it was not binned
with, and what judges a window is a fact recorded here, not of when a check happened to run:

- the judge *decides* where a new, replaced or deleted baseline starts (the first window that
  no source can have binned with the previous one, see
  :meth:`streamproc.judge.engine.ModelJudge.decide`) and records it here;
- a warm-up reference starts at the end of the windows it was built from;
- the judge publishes this timeline (Redis ``P:timeline:<model>``), and the aggregation stage
  bins each tick with the reference the timeline gives its window; while a change is pending
  it samples instead, and the judge bins the samples later. A replay given the same timeline
  judges every window the same way.

Segment keys follow the baseline: a dimension the baseline is segmented by has a monitor per
baseline value and ``dim=__other__`` for the rest; other dimensions get one per value seen (up
to ``max_segment_values``, see :class:`streamproc.judge.engine.ModelJudge`).

Examples
--------
>>> tl = ReferenceTimeline()
>>> tl.set_baseline("v1", float("-inf"), "s1", "2024-01-01", {"all": "a1", "country=DE": "d1"},
...                 ["country"])
True
>>> tl.select("v1", "country=DE", 10.0), tl.select("v1", "country=__other__", 10.0)
('d1', None)
>>> tl.select_raw("v1", "country=FR", 10.0)  # not in the baseline: its __other__ (none here)
>>> tl.add_warmup("v1", "country=__other__", "w1", 60.0)
>>> tl.select("v1", "country=__other__", 30.0), tl.select("v1", "country=__other__", 60.0)
(None, 'w1')
>>> tl.set_baseline("v1", 120.0, None, None, {}, [])  # deleted from the window at 120 on
True
>>> tl.select("v1", "all", 60.0), tl.select("v1", "all", 120.0), tl.stamp("v1")
('a1', None, None)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import msgspec

from streamproc.sketch import OTHER


class BaselineEntry(msgspec.Struct, array_like=True, frozen=True):
    """A baseline as applied from the window starting at ``start`` (``stamp`` is ``None``
    once deleted)."""

    start: float
    stamp: str | None  # the stored profile's digest
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
        stamp: str | None,
        created_at: str | None,
        refs: dict[str, str],
        dims: Iterable[str],
    ) -> bool:
        """Apply a baseline (``stamp=None``: deleted) from ``start``; ``False`` when it is the
        one applied already."""
        entries = self.baselines.setdefault(version, [])
        entry = BaselineEntry(start, stamp, created_at, dict(refs), sorted(dims))
        if entries and entries[-1].stamp == stamp:
            return False
        if not entries and stamp is None:
            return False
        while entries and entries[-1].start >= start:
            entries.pop()  # superseded before any window used it
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
        return entry if entry.stamp is not None else None

    def latest(self, version: str) -> BaselineEntry | None:
        """The baseline that applies last (``None``: none, or deleted)."""
        entries = self.baselines.get(version)
        return entries[-1] if entries and entries[-1].stamp is not None else None

    def stamp(self, version: str) -> str | None:
        """The digest of the baseline that applies last (``None``: none, or deleted)."""
        entries = self.baselines.get(version)
        return entries[-1].stamp if entries else None

    def decided(self, version: str) -> bool:
        """Whether any reference (baseline or warm-up) was ever decided for ``version``."""
        return bool(self.baselines.get(version) or self.warmups.get(version))

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
        """The fingerprint of the reference for monitor ``key`` at the window starting at ``t``."""
        entry = self.baseline_at(version, t)
        if entry is not None:
            fp = entry.refs.get(key)
            if fp is not None:
                return fp
        warm = self.warmups.get(version, {}).get(key)
        if warm is not None and warm.start <= t:
            return warm.fp
        return None

    def select_raw(self, version: str, raw_key: str, t: float) -> str | None:
        """:meth:`select` for a raw segment key (a value of a dimension the baseline is
        segmented by, but not one of its values, is the baseline's ``dim=__other__``)."""
        dim, sep, _ = raw_key.partition("=")
        if sep:
            entry = self.baseline_at(version, t)
            if entry is not None and dim in entry.dims and raw_key not in entry.refs:
                return entry.refs.get(f"{dim}={OTHER}")
        return self.select(version, raw_key, t)

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
