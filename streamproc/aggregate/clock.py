"""One source partition's event-time clock: which events count, which ticks are complete.

A source is one Kafka partition (``p3`` of the predictions topic, ``l0`` of the labels topic).
Its events are in offset order; their event times are roughly increasing. Everything here is a
fact of that order alone, so every reader of the partition (one worker, another worker after a
rebalance, a replay) reaches the same verdicts, however partitions interleave:

- the source's **watermark** is its newest event time so far minus ``lateness_s``;
- ``flushed_until`` is the latest tick boundary at or below the watermark: every tick that ends
  by it is **complete** for this source and its partial can be sent on;
- an event whose tick is already complete is **late**: counted, not folded in. (So a complete
  tick's partial never changes after it was sent.)

Lateness is judged event by event in offset order, whatever the batch boundaries: the verdict
for an event depends on the newest time *before* it, computed with a running maximum.

Examples
--------
>>> clock = SourceClock(tick_s=10, lateness_s=5)
>>> clock.admit(np.array([3.0, 12.0, 21.0, 4.0, 14.0])).tolist()
[True, True, True, False, True]
>>> clock.newest, clock.flushed_until, clock.late
(21.0, 10.0, 1)
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
from numpy.typing import NDArray

_NEVER = -math.inf


class ClockState(msgspec.Struct, array_like=True):
    """The stored form (part of a source's checkpoint)."""

    newest: float = _NEVER
    flushed_until: float = _NEVER
    late: int = 0


def tick_start(t: float, tick_s: float) -> float:
    """The start of the tick holding event time ``t`` (the one formula every stage uses).

    >>> tick_start(1_700_000_123.4, 10.0)
    1700000120.0
    """
    return float(math.floor(t / tick_s) * tick_s)


class SourceClock:
    """Event-time progress of one source; see the module docstring.

    Parameters
    ----------
    tick_s
        Tick length in seconds of event time (windows are whole numbers of ticks).
    lateness_s
        How far behind the source's newest event an event may be and still count.
    """

    def __init__(self, tick_s: float, lateness_s: float) -> None:
        if tick_s <= 0 or lateness_s < 0:
            raise ValueError("tick_s must be > 0 and lateness_s >= 0")
        self.tick_s = tick_s
        self.lateness_s = lateness_s
        self.newest = _NEVER
        self.flushed_until = _NEVER
        self.late = 0

    def _boundary(self, newest: float) -> float:
        if newest == _NEVER:
            return _NEVER
        return tick_start(newest - self.lateness_s, self.tick_s)

    def admit(self, times: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Judge events in offset order; return which count, and move the clock past them."""
        t = np.asarray(times, dtype=np.float64)
        if t.size == 0:
            return np.zeros(0, dtype=bool)
        before = np.maximum.accumulate(np.concatenate(([self.newest], t[:-1])))
        with np.errstate(invalid="ignore"):
            bound = np.floor((before - self.lateness_s) / self.tick_s) * self.tick_s
        bound = np.maximum(np.nan_to_num(bound, nan=_NEVER, neginf=_NEVER), self.flushed_until)
        ends = np.floor(t / self.tick_s) * self.tick_s + self.tick_s
        ok = ends > bound
        self.late += int(t.size - np.count_nonzero(ok))
        self.newest = max(self.newest, float(t.max()))
        self.flushed_until = max(self.flushed_until, self._boundary(self.newest))
        return ok

    def state(self) -> ClockState:
        return ClockState(self.newest, self.flushed_until, self.late)

    @classmethod
    def restore(cls, tick_s: float, lateness_s: float, state: ClockState) -> SourceClock:
        clock = cls(tick_s, lateness_s)
        clock.newest, clock.flushed_until, clock.late = (
            state.newest,
            state.flushed_until,
            state.late,
        )
        return clock
