"""The Redis join behaves like a tiny in-memory model of its state machine, for any interleaving.

Random sequences of prediction batches, label batches and sweeps (with the clock moving
between them) over a few ids and a few message origins, so that joins in either order,
redeliveries (same origin), duplicates (another origin), late halves (after an expiry) and
repeats inside one batch all happen, go through :class:`streamproc.join.RedisJoin` on the real
Redis and through :class:`Model`; every result, join, expiry and pending count must agree.
The second test first runs part of the plan through the model alone and writes its state to
Redis as a worker of the key layout before would have left it, then goes on as the first.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.join import (
    SHARDS,
    JoinRecord,
    LabelRecord,
    RedisJoin,
    encode_label,
    encode_prediction,
    shard_of,
)
from tests.conftest import Endpoints

pytestmark = pytest.mark.integration

PREDICTION_TTL = 50
LABEL_TTL = 20
IDS = ["a", "b", "c", "d", "e"]
ORIGINS = ["0:1:", "0:2:", "1:1:0", "1:1:1"]


@dataclass
class Model:
    """The join's state machine in plain Python: the specification the Lua must meet."""

    pending: dict[str, dict[str, tuple[str, object, float]]] = field(
        default_factory=lambda: {"p": {}, "l": {}}
    )
    tombstones: dict[str, tuple[str, str]] = field(default_factory=dict)

    def arrive(
        self, side: str, items: list[tuple[str, str, object]], now: float
    ) -> tuple[list[str], list[tuple[object, object, str]]]:
        other = "l" if side == "p" else "p"
        ttl = PREDICTION_TTL if side == "p" else LABEL_TTL
        results, joined = [], []
        for pid, origin, rec in items:
            if pid in self.tombstones:
                seen = self.tombstones[pid][0 if side == "p" else 1] or "late"
            elif pid in self.pending[side]:
                seen = self.pending[side][pid][0]
            else:
                seen = None
            if seen is not None:
                results.append(
                    "redelivered" if seen == origin else "late" if seen == "late" else "duplicate"
                )
            elif pid in self.pending[other]:
                their_origin, theirs, _ = self.pending[other].pop(pid)
                pair = (origin, their_origin) if side == "p" else (their_origin, origin)
                self.tombstones[pid] = pair
                results.append("joined")
                if side == "p":
                    joined.append((rec, theirs, f"l{their_origin}"))
                else:
                    joined.append((theirs, rec, f"l{origin}"))
            else:
                self.pending[side][pid] = (origin, rec, now + ttl)
                results.append("pending")
        return results, joined

    def expire(self, now: float) -> tuple[list[object], int]:
        expired: dict[str, list[object]] = {"p": [], "l": []}
        for side in ("p", "l"):
            for pid, (origin, rec, deadline) in list(self.pending[side].items()):
                if deadline <= now:
                    del self.pending[side][pid]
                    self.tombstones[pid] = (origin, "") if side == "p" else ("", origin)
                    expired[side].append(rec)
        return expired["p"], len(expired["l"])


arrival = st.tuples(st.sampled_from(IDS), st.sampled_from(ORIGINS))
step = st.one_of(
    st.tuples(st.just("p"), st.lists(arrival, min_size=1, max_size=8)),
    st.tuples(st.just("l"), st.lists(arrival, min_size=1, max_size=8)),
    st.tuples(st.just("sweep"), st.just([])),
)
steps = st.lists(st.tuples(step, st.integers(min_value=0, max_value=30)), max_size=25)


def _record(kind: str, serial: int, pid: str) -> JoinRecord | LabelRecord:
    """Every arrival carries distinct content, to see which one joined or expired."""
    if kind == "p":
        return JoinRecord("m", "1", float(serial), serial % 3, segments={"s": pid})
    return LabelRecord(serial % 2, float(serial), "m")


async def _write_layout_before(client: aioredis.Redis, prefix: str, model: Model) -> None:
    """Store the model's state as a worker of the layout before would have left it in Redis:
    ``P:p:<id>``/``P:l:<id>`` = "<origin>|<blob>", ``P:j:<id>`` = tombstone, due sorted sets."""
    for pid, (p_origin, l_origin) in model.tombstones.items():
        await client.set(f"{prefix}:j:{pid}", f"{p_origin}/{l_origin}", ex=3600)
    for side, encode in (("p", encode_prediction), ("l", encode_label)):
        for pid, (origin, rec, deadline) in model.pending[side].items():
            value = origin.encode() + b"|" + encode(rec)
            await client.set(f"{prefix}:{side}:{pid}", value, ex=3600)
            await client.zadd(f"{prefix}:due:{side}:{shard_of(pid)}", {pid: deadline})


async def _check(
    redis_url: str, plan: list[tuple[tuple[str, list], int]], upgrade_after: int | None
) -> None:
    prefix = f"t-join-{uuid.uuid4().hex[:10]}"
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    join = RedisJoin(client, prefix, prediction_ttl_s=PREDICTION_TTL, label_ttl_s=LABEL_TTL)
    model = Model()
    now, serial = 1_000_000.0, 0
    if upgrade_after is None:
        # Steady state: this layout has run here for longer than old keys could live.
        await client.set(f"{prefix}:layout", "2")
    try:
        for step_no, ((kind, arrivals), advance) in enumerate(plan):
            now += advance
            if step_no == upgrade_after:
                await _write_layout_before(client, prefix, model)
            if upgrade_after is not None and step_no < upgrade_after:
                # before the upgrade only the model runs; its state then goes to Redis as above
                items = [(pid, origin, _record(kind, serial := serial + 1, pid))
                         for pid, origin in arrivals]  # fmt: skip
                model.expire(now) if kind == "sweep" else model.arrive(kind, items, now)
                continue
            if kind == "sweep":
                expired = await join.expire(now)
                want_predictions, want_labels = model.expire(now)
                key = lambda r: r.event_time  # noqa: E731 - records are unique by event_time
                assert sorted(expired.predictions, key=key) == sorted(want_predictions, key=key)
                assert expired.labels == want_labels
            else:
                items = [(pid, origin, _record(kind, serial := serial + 1, pid))
                         for pid, origin in arrivals]  # fmt: skip
                add = join.add_predictions if kind == "p" else join.add_labels
                results, joined = await add(items, now=now)
                want_results, want_joined = model.arrive(kind, items, now)
                assert results == want_results
                assert [(j.prediction, j.label, j.origin) for j in joined] == want_joined
            assert await join.pending() == (len(model.pending["p"]), len(model.pending["l"]))
    finally:
        keys = [f"{prefix}:{kind}:{pid}" for kind in "plji" for pid in IDS]
        keys += [f"{prefix}:due:{side}:{shard}" for side in "pl" for shard in range(SHARDS)]
        keys += [f"{prefix}:layout", f"{prefix}:legacy"]
        await client.unlink(*keys)
        await client.aclose()


@settings(max_examples=150, deadline=None)
@given(plan=steps)
def test_any_interleaving_of_batches_and_sweeps_matches_the_state_machine_model(
    endpoints: Endpoints, plan: list[tuple[tuple[str, list], int]]
) -> None:
    asyncio.run(_check(endpoints.redis_url, plan, upgrade_after=None))


@settings(max_examples=100, deadline=None)
@given(plan=steps, data=st.data())
def test_state_left_in_the_layout_before_joins_repeats_and_expires_like_the_model(
    endpoints: Endpoints, plan: list[tuple[tuple[str, list], int]], data: st.DataObject
) -> None:
    upgrade_after = data.draw(st.integers(min_value=0, max_value=len(plan)))
    asyncio.run(_check(endpoints.redis_url, plan, upgrade_after))
