"""The aggregation stage of one process: the sources it owns, fed batch by batch.

The ingest stage hands each consumed batch over (:meth:`AggregateStage.on_batch`) once it has
decoded, dead-lettered and joined it: the accepted predictions of a predictions partition, and
the joins that batch completed, on either topic. The stage folds them into each source's
:class:`~streamproc.aggregate.source.SourceAggregator` and collects the partials of the ticks
that became complete, to be sent on (:meth:`AggregateStage.take`). No I/O happens here: the
worker (:mod:`streamproc.publish`) and the in-process pipeline
(:mod:`streamproc.tools.inprocess`) do it, each in their own way.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

from streamproc.aggregate.source import Accepted, Completed, ReferenceLookup, SourceAggregator
from streamproc.aggregate.wire import PartialsMessage, ProgressMessage
from streamproc.config import MonitoringConfig
from streamproc.ingest.ingestor import Observed
from streamproc.ingest.join import Joined

log = logging.getLogger(__name__)
Role = Literal["predictions", "labels"]


def position(origin: str) -> tuple[int, int, int]:
    """``(partition, offset, index)`` of an origin ``"<partition>:<offset>:<index>"``.

    >>> position("3:120:"), position("l3:120:7")
    ((3, 120, -1), (3, 120, 7))
    """
    partition, offset, index = origin.lstrip("lp").split(":")
    return int(partition), int(offset), int(index) if index else -1


class AggregateStage:
    """The :class:`SourceAggregator` s of the sources this process owns."""

    def __init__(self, cfg: MonitoringConfig, refs: ReferenceLookup) -> None:
        self.cfg = cfg
        self.refs = refs
        self.sources: dict[str, SourceAggregator] = {}
        self.folded: Counter[str] = Counter()  # events folded per model, for metrics
        self.late: Counter[str] = Counter()  # events too late to fold, per model, for metrics
        self.first_record_s = math.inf  # the first record time any source had
        self._outbox: list[PartialsMessage] = []
        self._moved: set[str] = set()
        self._label_through: dict[str, int] = {}  # labels admitted, not yet folded

    def source(self, name: str) -> SourceAggregator:
        agg = self.sources.get(name)
        if agg is None:
            agg = self.sources[name] = SourceAggregator(name, self.cfg, self.refs)
        return agg

    def admit_labels(self, arrivals: Sequence[tuple[int, int, int, float]]) -> list[bool]:
        """Judge a labels batch's accepted labels, ``(partition, offset, index, event time)``
        in batch order, before they are joined; return whether each may count (see
        :meth:`SourceAggregator.admit_labels`). The batch's :meth:`on_batch` follows."""
        by_source: dict[str, list[int]] = {}
        for i, (partition, _, _, _) in enumerate(arrivals):
            by_source.setdefault(f"l{partition}", []).append(i)
        ok = [True] * len(arrivals)
        for src, where in sorted(by_source.items()):
            where.sort(key=lambda i: (arrivals[i][1], arrivals[i][2]))
            agg = self.source(src)
            offsets = [arrivals[i][1] for i in where]
            verdicts = agg.admit_labels(offsets, [arrivals[i][3] for i in where])
            for i, verdict in zip(where, verdicts, strict=True):
                ok[i] = verdict
            # Its progress is sent once the batch is folded (on_batch), not before: the
            # outcomes of these labels are folded only after the join.
            self._label_through[src] = max(self._label_through.get(src, -1), offsets[-1])
        return ok

    def on_batch(
        self,
        role: Role,
        observed: Sequence[Observed],
        joined: Sequence[Joined],
        record_ms: Mapping[int, int],
    ) -> None:
        """Fold one consumed batch: predictions by their partition, outcomes by the position
        of the message that completed them; ``record_ms``: per partition the newest record
        time the batch read."""
        prefix = "p" if role == "predictions" else "l"
        by_partition: dict[int, list[Observed]] = {}
        for ob in observed:
            got = by_partition.get(ob.partition)
            if got is None:
                got = by_partition[ob.partition] = []
            got.append(ob)
        preds: dict[str, Sequence[Accepted]] = {f"{prefix}{p}": a for p, a in by_partition.items()}
        through = {src: max(a.offset for a in acc) for src, acc in preds.items()}
        outs: dict[str, list[Completed]] = {}
        for j in joined:
            partition, offset, index = position(j.completed_by)
            src = f"{prefix}{partition}"
            outs.setdefault(src, []).append(Completed(j, offset, index))
            through[src] = max(through.get(src, -1), offset)
        if role == "labels":  # every label admitted, joined or not, is now behind its source
            for src, offset in self._label_through.items():
                through[src] = max(through.get(src, -1), offset)
            self._label_through = {}
        for partition, ms in record_ms.items():
            agg = self.source(f"{prefix}{partition}")
            agg.last_record_s = max(agg.last_record_s, ms / 1000)
            self.first_record_s = min(self.first_record_s, ms / 1000)
        for agg in self.sources.values():
            agg.notice()
        for src in sorted(through):
            agg = self.source(src)
            before = agg.shown_clock().flushed_until  # as of before its labels were admitted
            # A redelivered join comes back in its batch order; sort outcomes into offset order.
            ocs = sorted(outs.get(src, []), key=lambda c: (c.offset, c.index))
            self.folded.update(agg.fold(preds.get(src, []), ocs, through[src]))
            if agg.late:
                self.late.update(agg.late)
                agg.late.clear()
            if agg.clock.flushed_until > before:
                self._moved.add(src)
            self._outbox += agg.complete()

    def take(self) -> tuple[list[PartialsMessage], list[ProgressMessage]]:
        """The partials completed since the last call, and the progress of the sources whose
        watermark moved (to be sent after the partials)."""
        partials, self._outbox = self._outbox, []
        progress = [self.sources[s].progress() for s in sorted(self._moved)]
        self._moved = set()
        return partials, progress

    def drop(self, name: str) -> None:
        """Forget a source (its partition was revoked): its next owner restores it."""
        self.sources.pop(name, None)
        self._moved.discard(name)
