"""The prediction-label join's state machine in a dict: for replays and in-process tests.

:class:`MemoryJoin` answers exactly as :class:`~streamproc.ingest.join.RedisJoin` does (the
property test ``tests/property/test_join_model.py`` holds the two to the same results, joins,
expiries and pending counts for any interleaving), without Redis: a replay joins the labels of
its range with it, writing nothing anywhere.

Examples
--------
>>> import asyncio
>>> from streamproc.ingest.join import JoinRecord, LabelRecord
>>> j = MemoryJoin()
>>> p = JoinRecord("m", "1", 10.0, "yes")
>>> asyncio.run(j.add_predictions([("id1", "0:5:", p)], now=0.0))
(['pending'], [])
>>> results, joined = asyncio.run(j.add_labels([("id1", "2:9:", LabelRecord("no", 70.0))], 1.0))
>>> results, joined[0].origin, joined[0].completed_by
(['joined'], 'l2:9:', '2:9:')
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamproc.ingest.join import Expired, Joined, JoinRecord, JoinResult, LabelRecord


@dataclass
class MemoryJoin:
    """See the module docstring; TTLs as :class:`~streamproc.ingest.join.RedisJoin`'s."""

    prediction_ttl_s: float = 7 * 24 * 3600
    label_ttl_s: float = 3600
    # side -> id -> (origin, record, deadline)
    waiting: dict[str, dict[str, tuple[str, object, float]]] = field(
        default_factory=lambda: {"p": {}, "l": {}}
    )
    # id -> (prediction origin, label origin, side that completed the join or "" after an
    # expiry, the other side's record)
    tombstones: dict[str, tuple[str, str, str, object]] = field(default_factory=dict)

    def _arrive(
        self, side: str, items: Sequence[tuple[str, str, object]], now: float
    ) -> tuple[list[JoinResult], list[Joined]]:
        other = "l" if side == "p" else "p"
        ttl = self.prediction_ttl_s if side == "p" else self.label_ttl_s
        results: list[JoinResult] = []
        joined: list[Joined] = []

        def emit(pred: object, label: object, label_origin: str, again: bool, by: str) -> None:
            assert isinstance(pred, JoinRecord) and isinstance(label, LabelRecord)
            joined.append(Joined(pred, label, f"l{label_origin}", again, by))

        for pid, origin, rec in items:
            seen: str | None
            if pid in self.tombstones:
                p_origin, l_origin, completer, kept = self.tombstones[pid]
                seen = (p_origin if side == "p" else l_origin) or "late"
                if completer == side and seen == origin:
                    results.append("redelivered")  # the completing half again: its join too
                    pair = (rec, kept) if side == "p" else (kept, rec)
                    emit(*pair, l_origin, True, origin)
                    continue
            elif pid in self.waiting[side]:
                seen = self.waiting[side][pid][0]
            else:
                seen = None
            if seen is not None:
                results.append(
                    "redelivered" if seen == origin else "late" if seen == "late" else "duplicate"
                )
            elif pid in self.waiting[other]:
                their_origin, theirs, _ = self.waiting[other].pop(pid)
                pair = (origin, their_origin) if side == "p" else (their_origin, origin)
                self.tombstones[pid] = (*pair, side, theirs)
                results.append("joined")
                if side == "p":
                    emit(rec, theirs, their_origin, False, origin)
                else:
                    emit(theirs, rec, origin, False, origin)
            else:
                self.waiting[side][pid] = (origin, rec, now + ttl)
                results.append("pending")
        return results, joined

    async def add_predictions(
        self, items: Sequence[tuple[str, str, JoinRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]:
        return self._arrive("p", items, time.time() if now is None else now)

    async def add_labels(
        self, items: Sequence[tuple[str, str, LabelRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]:
        return self._arrive("l", items, time.time() if now is None else now)

    async def expire(self, now: float | None = None, limit: int = 1000) -> Expired:
        now = time.time() if now is None else now
        found: dict[str, list[object]] = {"p": [], "l": []}
        for side in ("p", "l"):
            for pid, (origin, rec, deadline) in list(self.waiting[side].items()):
                if deadline <= now:
                    del self.waiting[side][pid]
                    pair = (origin, "") if side == "p" else ("", origin)
                    self.tombstones[pid] = (*pair, "", None)
                    found[side].append(rec)
        predictions = [r for r in found["p"] if isinstance(r, JoinRecord)]
        return Expired(predictions, len(found["l"]))

    async def pending_counts(self) -> tuple[int, int]:
        return len(self.waiting["p"]), len(self.waiting["l"])

    async def pending(self) -> tuple[int, int]:  # type: ignore[no-redef]
        return await self.pending_counts()
