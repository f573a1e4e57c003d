"""Event-time tumbling windows whose contents do not depend on how sources interleave.

A monitor reads events from several sources (Kafka partitions). Each source is in its own order,
but how sources interleave depends on timing: which worker runs, how fetches line up. To make
window contents depend only on the data, lateness is judged *per source*:

- an event is **late** when its time is more than ``lateness_s`` behind the newest event time
  already seen *in its own source* (a fact of that source's order, not of the interleaving);
- the **watermark** is the minimum over sources of (newest time in the source - lateness),
  counting declared sources (:meth:`WindowClock.expect`) that have sent nothing yet;
- a window ``[start, start + size)`` **closes** once the watermark reaches its end.

An event that is not late in its source has time >= its source's newest - lateness >=
watermark, so it can never fall into a closed window: every run over the same partitions puts
the same events in the same windows. A source that stays quiet would hold the watermark back, so
:meth:`WindowClock.retire` drops it from the minimum (the worker calls it after an idle timeout);
events that later arrive for windows already closed are counted as late, not silently dropped.

Examples
--------
>>> clock = WindowClock(size_s=60, lateness_s=10)
>>> clock.expect(["p0", "p1"])
>>> clock.admit("p0", 5.0), clock.admit("p1", 50.0)
(True, True)
>>> clock.admit("p0", 130.0), clock.close_until()  # p1 still holds the watermark at 40
(True, 0.0)
>>> clock.admit("p1", 125.0), clock.close_until()  # watermark 115: [0, 60) closes
(True, 60.0)
>>> clock.admit("p0", 100.0)  # 30 s behind p0's newest event: late
False
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

from streamproc.errors import StateEncodingError

_MAGIC = b"SPW1"


class _ClockState(msgspec.Struct, array_like=True):
    size_s: float
    lateness_s: float
    newest: dict[str, float]
    closed_until: float
    late: int
    retired: float = -math.inf


class WindowClock:
    """Assigns events to tumbling windows and says which windows may close.

    Parameters
    ----------
    size_s
        Window length in seconds of event time.
    lateness_s
        How far behind its source's newest event an event may be and still count.
    """

    def __init__(self, size_s: float = 300.0, lateness_s: float = 60.0) -> None:
        if size_s <= 0 or lateness_s < 0:
            raise ValueError("size_s must be > 0 and lateness_s >= 0")
        self.size_s = size_s
        self.lateness_s = lateness_s
        self._newest: dict[str, float] = {}
        self._closed_until = -math.inf
        self._retired = -math.inf
        self.late = 0

    def window_start(self, t: float) -> float:
        """The start of the window holding event time ``t``.

        >>> WindowClock(size_s=300).window_start(1_700_000_123.4)
        1700000100.0
        """
        return float(math.floor(t / self.size_s) * self.size_s)

    def expect(self, sources: Iterable[str]) -> None:
        """Declare sources before their first event, so they hold the watermark from the start.

        Without this a source's first event could find its window already closed by the
        others, which would depend on timing; the worker declares its assigned partitions,
        replay the partitions of its range.
        """
        for source in sources:
            self._newest.setdefault(source, -math.inf)

    def admit(self, source: str, t: float) -> bool:
        """Record an event of ``source`` at time ``t``; ``False`` (and counted) if late."""
        newest = self._newest.get(source)
        if (newest is not None and t < newest - self.lateness_s) or (
            self.window_start(t) + self.size_s <= self._closed_until
        ):
            self.late += 1
            return False
        if newest is None or t > newest:
            self._newest[source] = t
        return True

    @property
    def watermark(self) -> float:
        if not self._newest:  # every source retired: what they had reached still counts
            return self._retired - self.lateness_s
        return min(self._newest.values()) - self.lateness_s

    def close_until(self) -> float:
        """The boundary below which every window is closed now (monotonic)."""
        wm = self.watermark
        if wm > -math.inf:
            self._closed_until = max(self._closed_until, self.window_start(wm))
        return self._closed_until

    def retire(self, source: str) -> None:
        """Stop waiting for a quiet source (after an idle timeout, or a revoked partition)."""
        newest = self._newest.pop(source, None)
        if newest is not None:
            self._retired = max(self._retired, newest)

    @property
    def sources(self) -> list[str]:
        return sorted(self._newest)

    def to_bytes(self) -> bytes:
        """Versioned state for checkpoints.

        >>> c = WindowClock(60, 5); _ = c.admit("a", 10.0)
        >>> WindowClock.from_bytes(c.to_bytes()).watermark
        5.0
        """
        state = _ClockState(
            self.size_s, self.lateness_s, self._newest, self._closed_until, self.late
        )
        return _MAGIC + msgspec.msgpack.encode(state)

    @classmethod
    def from_bytes(cls, blob: bytes) -> WindowClock:
        if blob[:4] != _MAGIC:
            raise StateEncodingError(f"not a window-clock checkpoint (header {blob[:4]!r})")
        state = msgspec.msgpack.decode(blob[4:], type=_ClockState)
        clock = cls(state.size_s, state.lateness_s)
        clock._newest = dict(state.newest)
        clock._closed_until = state.closed_until
        clock.late = state.late
        clock._retired = state.retired
        return clock
