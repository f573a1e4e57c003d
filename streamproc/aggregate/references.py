"""The references the aggregation stage bins with: the judges' decisions, nothing else.

The aggregation stage bins a tick with the reference the model's timeline (decided and
published by its judge, :mod:`streamproc.judge.timeline`) gives the tick's window. While the
baseline store holds a change the judge has not decided yet (a baseline created, replaced or
deleted), or no reference exists yet, it samples the rows instead, and the judge bins them with
whatever it decides: so the aggregation stage never commits a window to a reference the judge
would not judge it with, whenever either of them notices a change.

:meth:`TimelineBook.refresh` re-reads Redis every ``baseline_refresh_s`` and whenever the
baseline store's or the timelines' change counter moves (checked on every batch: one ``MGET``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from streamproc.baseline.reference import Reference, ReferenceCache
from streamproc.config import MonitoringConfig
from streamproc.judge.timeline import ReferenceTimeline, TimelineState

log = logging.getLogger(__name__)


def timeline_key(prefix: str, model: str) -> str:
    return f"{prefix}:timeline:{model}"


def timeline_changes_key(prefix: str) -> str:
    return f"{prefix}:timeline:changes"


class TimelineBook:
    """Per model: its judge's published timeline and the baseline store's stamps.

    Examples
    --------
    >>> book = TimelineBook(MonitoringConfig(window_s=60, tick_s=10), ReferenceCache())
    >>> book.lookup("m", "1", "all", 0.0) is None  # nothing decided: sample
    True
    >>> tl = ReferenceTimeline()
    >>> _ = tl.set_baseline("1", float("-inf"), "s1", "2024-01-01", {"all": "fp1"}, [])
    >>> book.set("m", tl, {"1": "s2"})  # the store moved on: a change is pending
    >>> book.pending("m", "1")
    True
    """

    def __init__(self, cfg: MonitoringConfig, cache: ReferenceCache) -> None:
        self.cfg = cfg
        self.cache = cache
        self.timelines: dict[str, ReferenceTimeline] = {}
        self.stored: dict[str, dict[str, str]] = {}  # model -> version -> stamp
        self.generation = 0
        self._window: dict[str, float] = {}
        self._seen: tuple[Any, Any] | None = None
        self._refreshed_at = -float("inf")

    def set(self, model: str, timeline: ReferenceTimeline, stored: dict[str, str]) -> None:
        self.timelines[model] = timeline
        self.stored[model] = dict(stored)

    def pending(self, model: str, version: str) -> bool:
        """Whether the store holds a change of ``version``'s baseline not decided yet."""
        tl = self.timelines.get(model)
        decided = tl.stamp(version) if tl is not None else None
        return self.stored.get(model, {}).get(version) != decided

    def lookup(self, model_id: str, version: str, raw_key: str, tick: float) -> Reference | None:
        tl = self.timelines.get(model_id)
        if tl is None or self.pending(model_id, version):
            return None
        window_s = self._window.get(model_id)
        if window_s is None:
            window_s = self._window[model_id] = self.cfg.for_model(model_id).window_s
        start = (tick // window_s) * window_s
        return self.cache.get(tl.select_raw(version, raw_key, start))

    async def refresh(
        self, client: Any, prefix: str, models: Iterable[str], now: float, force: bool = False
    ) -> bool:
        """Re-read what changed (see the module docstring); ``True`` if anything was read."""
        seen = tuple(
            await client.mget([f"{prefix}:baselines:changes", timeline_changes_key(prefix)])
        )
        due = now - self._refreshed_at >= self.cfg.baseline_refresh_s
        if not (force or due or seen != self._seen):
            return False
        self._seen, self._refreshed_at = seen, now
        self.generation = int(seen[0] or 0)
        models = sorted(set(models))
        async with client.pipeline(transaction=True) as pipe:
            for model in models:
                pipe.hgetall(f"{prefix}:baselines:{model}:stamps")
                pipe.get(timeline_key(prefix, model))
            replies = await pipe.execute()
        fps: set[str] = set()
        for i, model in enumerate(models):
            stamps, blob = replies[2 * i], replies[2 * i + 1]
            timeline = ReferenceTimeline()
            if blob:
                try:
                    timeline = ReferenceTimeline.restore(
                        msgspec.msgpack.decode(blob, type=TimelineState)
                    )
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("model %s: unreadable timeline in Redis (%s): sampling", model, exc)
            self.set(model, timeline, {k.decode(): v.decode() for k, v in stamps.items()})
            fps |= timeline.fps()
        unknown = await self.cache.load(client, prefix, fps)
        for fp in unknown:
            log.warning("reference %s is not in Redis: its windows are sampled", fp)
        return True
