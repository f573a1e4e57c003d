"""Partitions this worker owns whose input waits at the broker but is never read.

A consumer can own a partition and still not fetch it: a rebalance that races the fetcher can
leave a partition out of what the consumer asks the broker for, and the consumer's own
high-water mark for it then stays where it was (or unknown), so nothing local shows the input
waiting. Only the broker's end offset does. :class:`PartitionWatch` compares, every few seconds,
each owned partition's next offset to read with the broker's end offset, and reports a partition
as stalled once input has waited there for ``timeout_s`` without the read position moving.

What the worker does about it is the caller's (``streamproc.worker.app``): a stage that sits in
one batch all that time is blocked on something it retries (Redis or Kafka away) and says so
itself; a stage that is free while its partition's input waits is not being fed, and the worker
asks the group to rebalance, which re-seeks every partition; a second stall after that ends the
process, so that another worker (or the restarted one) takes the partitions over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclasses.dataclass(frozen=True)
class Stall(Generic[K]):
    """A partition whose input waited ``waited_s`` with the read position at ``next_offset``."""

    partition: K
    next_offset: int
    end_offset: int
    waited_s: float


class PartitionWatch(Generic[K]):
    """Track each owned partition's read position against the broker's end offset.

    ``observe`` takes ``{partition: (next offset to read, end offset at the broker)}`` for the
    partitions owned now and returns those stalled: input waiting (end > next) and the next
    offset unchanged for at least ``timeout_s``. A partition is reported once per stall; it is
    reported again only after its position moved (or its input was all read) and it stalled anew.

    >>> watch = PartitionWatch(timeout_s=30)
    >>> watch.observe(0.0, {"labels-3": (0, 18)})
    []
    >>> watch.observe(20.0, {"labels-3": (0, 18)})
    []
    >>> watch.observe(31.0, {"labels-3": (0, 18)})
    [Stall(partition='labels-3', next_offset=0, end_offset=18, waited_s=31.0)]
    >>> watch.observe(40.0, {"labels-3": (0, 18)})  # reported once
    []
    >>> watch.observe(45.0, {"labels-3": (18, 18)})  # read: no longer waiting
    []
    >>> watch.stalled
    set()
    """

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        # partition -> (next offset when its input was first seen waiting there, since when)
        self._waiting: dict[K, tuple[int, float]] = {}
        self.stalled: set[K] = set()

    def forget(self, partitions: Iterable[K] | None = None) -> None:
        """Start over for ``partitions`` (all by default), as after they were revoked: input
        waiting there is timed again from the next :meth:`observe`.

        >>> watch = PartitionWatch(timeout_s=30)
        >>> watch.observe(0.0, {"p0": (0, 5)}), watch.observe(30.0, {"p0": (0, 5)})[0].waited_s
        ([], 30.0)
        >>> watch.forget()
        >>> watch.observe(40.0, {"p0": (0, 5)}), watch.observe(70.0, {"p0": (0, 5)})[0].waited_s
        ([], 30.0)
        """
        for partition in list(self._waiting) if partitions is None else partitions:
            self._waiting.pop(partition, None)
            self.stalled.discard(partition)

    def observe(self, now: float, positions: Mapping[K, tuple[int, int]]) -> list[Stall[K]]:
        found: list[Stall[K]] = []
        self.forget(set(self._waiting) - set(positions))  # revoked
        for partition, (next_offset, end_offset) in positions.items():
            seen = self._waiting.get(partition)
            if end_offset <= next_offset:
                self._waiting.pop(partition, None)
                self.stalled.discard(partition)
                continue
            if seen is None or seen[0] != next_offset:
                self._waiting[partition] = (next_offset, now)
                self.stalled.discard(partition)
                continue
            waited = now - seen[1]
            if waited >= self.timeout_s and partition not in self.stalled:
                self.stalled.add(partition)
                found.append(Stall(partition, next_offset, end_offset, waited))
        return found
