"""What a judge knows of every source's progress, and how far that lets it close.

Each source (a partition of the predictions or labels topic) reports, after the partials it
flushed, how far its ticks are complete (``flushed_until``), its newest event time, and, once it
has been quiet for ``idle_timeout_s`` of wall-clock time with nothing left to read, for how long
(:class:`~streamproc.aggregate.wire.ProgressMessage`). From that:

- prediction ticks may close up to the lowest ``flushed_until`` of the prediction sources that
  are not idle (an idle source stops holding the others back, as Flink's idleness does), as
  far as the idle report speaks for: each report carries the record time it speaks for
  (``as_of``: an active source's newest record, an idle one's report time). Once an active
  source has read a record newer than an idle source's report, the idle one may have records
  of its own still unread, and it holds the others back again (at its own ``flushed_until``)
  until it reports again, idle or active. So a worker that reads one partition before another
  after a silence closes nothing a record-time-ordered replay would not have closed then;
- outcome ticks (windowed by label time, folded wherever the join completed) up to the lowest
  of every source that is not idle;
- when **every** source of a kind is idle, the stream is silent: the judge closes the windows
  holding the last events, then, as the silence lasts, the empty windows after them, so that a
  model that stopped sending is judged (``volume_drop``) instead of waiting forever.

Examples
--------
>>> from streamproc.aggregate.wire import ProgressMessage
>>> sp = SourceProgress(["p0", "p1"], ["l0"])
>>> sp.update(ProgressMessage("p0", 100.0, 110.0, None))
>>> sp.bounds().predictions  # p1 has not reported: it holds the boundary
-inf
>>> sp.update(ProgressMessage("p1", 90.0, 95.0, None))
>>> sp.bounds().predictions
90.0
>>> sp.update(ProgressMessage("p1", 90.0, 95.0, 130.0))  # p1 idle: no longer holds p0
>>> b = sp.bounds(); b.predictions, b.silent_predictions
(100.0, None)
>>> sp.update(ProgressMessage("p0", 100.0, 110.0, 125.0))
>>> sp.bounds().silent_predictions  # every prediction source idle: newest 110, quiet 125 s
(110.0, 125.0)

Idle at record time 1000, p1 holds p0 again once p0 has read a record from after that:

>>> sp.update(ProgressMessage("p1", 90.0, 95.0, 130.0, as_of=1000.0))
>>> sp.update(ProgressMessage("p0", 120.0, 126.0, None, as_of=990.0))
>>> sp.bounds().predictions  # p0's newest record is older than p1's report: p1 is idle
120.0
>>> sp.update(ProgressMessage("p0", 140.0, 146.0, None, as_of=1020.0))
>>> sp.bounds().predictions  # p1 may have records since 1000 not read yet: 140 waits
120.0
>>> sp.update(ProgressMessage("p1", 90.0, 95.0, 150.0, as_of=1025.0))  # reported again
>>> sp.bounds().predictions
140.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from streamproc.aggregate.wire import ProgressMessage


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far a judge may close, per kind (tick boundaries of event time)."""

    predictions: float
    outcomes: float  # the judge also never closes an outcome tick past ``predictions``
    silent_predictions: tuple[float, float] | None = None  # (newest event time, quiet for s)
    silent_outcomes: tuple[float, float] | None = None

    @classmethod
    def final(cls) -> Bounds:
        """Everything may close (the end of a replay)."""
        return cls(math.inf, math.inf)


class _Source(msgspec.Struct, array_like=True):
    flushed_until: float = -math.inf
    newest: float = -math.inf
    idle_for_s: float | None = None
    generation: int = 0
    noticed: float = -math.inf
    as_of: float = -math.inf  # record time its last report speaks for (ProgressMessage.as_of)


class ProgressState(msgspec.Struct, array_like=True):
    sources: dict[str, _Source] = {}
    released: tuple[float, float] = (-math.inf, -math.inf)  # SourceProgress.released


class SourceProgress:
    """See the module docstring.

    Parameters
    ----------
    prediction_sources, label_sources
        Every source expected: ``p<i>`` for each predictions partition, ``l<i>`` for each
        labels partition. One that has never reported holds its kind's boundary.
    """

    def __init__(self, prediction_sources: Iterable[str], label_sources: Iterable[str]) -> None:
        self.sources: dict[str, _Source] = {s: _Source() for s in prediction_sources}
        for s in label_sources:
            self.sources.setdefault(s, _Source())
        # The highest (predictions, outcomes) bound any state so far allowed. A report can
        # lower the bound (an idle source held again, one back from idleness), never what an
        # earlier state already allowed: a judge that takes a batch of reports at once closes
        # what it would have closed taking them one by one, as a replay does.
        self.released = (-math.inf, -math.inf)

    def update(self, msg: ProgressMessage) -> None:
        src = self.sources.setdefault(msg.source, _Source())
        # A source restored from an older checkpoint may report less than before: keep the max.
        src.flushed_until = max(src.flushed_until, msg.flushed_until)
        src.newest = max(src.newest, msg.newest)
        src.idle_for_s = msg.idle_for_s
        src.as_of = msg.as_of
        if msg.generation >= src.generation:
            src.generation, src.noticed = msg.generation, msg.noticed
        b = self.bounds()
        self.released = (
            self.released[0] if b.silent_predictions else b.predictions,
            self.released[1] if b.silent_outcomes else b.outcomes,
        )

    def _bound(self, names: list[str]) -> tuple[float, tuple[float, float] | None]:
        if not names:
            return math.inf, None
        srcs = [self.sources[n] for n in names]
        active = [s for s in srcs if s.idle_for_s is None]
        if active:
            read = max(s.as_of for s in active)
            holding = [s.flushed_until for s in srcs if s.idle_for_s is None or s.as_of < read]
            return min(holding), None
        reached = max(s.flushed_until for s in srcs)
        newest = max(s.newest for s in srcs)
        quiet = min(s.idle_for_s for s in srcs if s.idle_for_s is not None)
        return reached, (None if newest == -math.inf else (newest, quiet))

    def _current(self) -> Bounds:
        preds = sorted(n for n in self.sources if n.startswith("p"))
        p_bound, p_silent = self._bound(preds)
        o_bound, o_silent = self._bound(sorted(self.sources))
        return Bounds(p_bound, o_bound, p_silent, o_silent)

    def bounds(self) -> Bounds:
        b = self._current()
        p, o = self.released
        return Bounds(
            b.predictions if b.silent_predictions else max(p, b.predictions),
            b.outcomes if b.silent_outcomes else max(o, b.outcomes),
            b.silent_predictions,
            b.silent_outcomes,
        )

    def acknowledged(self, generation: int) -> bool:
        """Whether every source that is not idle has loaded the baseline store as of
        ``generation`` (so it samples, rather than bins, a model whose change is pending)."""
        return all(
            s.generation >= generation for s in self.sources.values() if s.idle_for_s is None
        )

    def newest(self) -> float:
        """The newest event time any source has seen."""
        return max((s.newest for s in self.sources.values()), default=-math.inf)

    def binned_until(self, generation: int) -> float:
        """The newest event time any source may have binned with a reference it had before
        noticing the baseline store's change ``generation``: what an active source had seen
        when it noticed, all an idle source has seen, and, for a source that has not noticed
        yet, at least all it has seen (it may bin newer events before it notices)."""
        return max(
            (
                s.noticed if s.idle_for_s is None and s.generation >= generation else s.newest
                for s in self.sources.values()
            ),
            default=-math.inf,
        )

    def state(self) -> ProgressState:
        return ProgressState(self.sources, self.released)

    @classmethod
    def restore(
        cls, prediction_sources: Iterable[str], label_sources: Iterable[str], state: ProgressState
    ) -> SourceProgress:
        sp = cls(prediction_sources, label_sources)
        sp.sources.update(state.sources)
        sp.released = state.released
        return sp
