"""The Redis join behaves like a tiny in-memory model of its state machine, for any interleaving.

Random sequences of prediction batches, label batches and sweeps (with the clock moving
between them) over a few ids and a few message origins, so that joins in either order,
redeliveries (same origin), duplicates (another origin), late halves (after an expiry) and
repeats inside one batch all happen, go through :class:`streamproc.join.RedisJoin` on the real
Redis and through :class:`Model`; every result, join, expiry and pending count must agree,
and once the clock has passed every deadline and tombstone, the sweeps leave no key behind.
Some batches are sent twice in a row with the same origins, as ``ingest.retry`` does after a
Redis timeout: the second run must hand back the same joins (outcomes are at-least-once).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.config import RedisConfig
from streamproc.ingest.join import (
    JoinRecord,
    LabelRecord,
    RedisJoin,
    encode_label,
    encode_prediction,
    key_patterns,
    layout_marker,
    shard_of,
    shard_tag,
)
from streamproc.redis_client import async_client
from tests.conftest import Endpoints

pytestmark = pytest.mark.integration

PREDICTION_TTL = 50
LABEL_TTL = 20
RECHECK = 15  # below both TTLs: ids still pending at their check move to a wait queue
DEDUPE = 25  # tombstones are forgotten (by a sweep) within a plan's time
IDS = ["a", "b", "c", "d", "e"]
ORIGINS = ["0:1:", "0:2:", "1:1:0", "1:1:1"]


@dataclass
class Model:
    """The join's state machine in plain Python: the specification the Lua must meet."""

    pending: dict[str, dict[str, tuple[str, object, float]]] = field(
        default_factory=lambda: {"p": {}, "l": {}}
    )
    # id -> (prediction origin, label origin, side that completed the join or "" after an
    # expiry, the other side's record)
    tombstones: dict[str, tuple[str, str, str, object]] = field(default_factory=dict)
    forget_at: dict[str, float] = field(default_factory=dict)  # id -> when a sweep forgets it

    def arrive(
        self, side: str, items: list[tuple[str, str, object]], now: float
    ) -> tuple[list[str], list[tuple[object, object, str, bool]]]:
        other = "l" if side == "p" else "p"
        ttl = PREDICTION_TTL if side == "p" else LABEL_TTL
        results, joined = [], []
        for pid, origin, rec in items:
            if pid in self.tombstones:
                p_origin, l_origin, completer, kept = self.tombstones[pid]
                seen = (p_origin if side == "p" else l_origin) or "late"
                if completer == side and seen == origin:
                    # the completing half again: its join comes again
                    results.append("redelivered")
                    pair = (rec, kept) if side == "p" else (kept, rec)
                    joined.append((*pair, f"l{l_origin}", True))
                    continue
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
                self.tombstones[pid] = (*pair, side, theirs)
                self.forget_at[pid] = now + DEDUPE
                results.append("joined")
                if side == "p":
                    joined.append((rec, theirs, f"l{their_origin}", False))
                else:
                    joined.append((theirs, rec, f"l{origin}", False))
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
                    pair = (origin, "") if side == "p" else ("", origin)
                    self.tombstones[pid] = (*pair, "", None)
                    self.forget_at[pid] = now + DEDUPE
                    expired[side].append(rec)
        for pid, when in list(self.forget_at.items()):
            if when <= now:
                del self.tombstones[pid], self.forget_at[pid]
        return expired["p"], len(expired["l"])


arrival = st.tuples(st.sampled_from(IDS), st.sampled_from(ORIGINS))
step = st.one_of(
    st.tuples(st.just("p"), st.lists(arrival, min_size=1, max_size=8), st.booleans()),
    st.tuples(st.just("l"), st.lists(arrival, min_size=1, max_size=8), st.booleans()),
    st.tuples(st.just("sweep"), st.just([]), st.just(False)),
)
# (kind, arrivals, sent twice as a retry does), seconds the clock moves before the step
Plan = list[tuple[tuple[str, list[tuple[str, str]], bool], int]]
steps = st.lists(st.tuples(step, st.integers(min_value=0, max_value=30)), max_size=25)


def _record(kind: str, serial: int, pid: str) -> JoinRecord | LabelRecord:
    """Every arrival carries distinct content, to see which one joined or expired."""
    if kind == "p":
        return JoinRecord("m", "1", float(serial), serial % 3, segments={"s": pid})
    return LabelRecord(serial % 2, float(serial), "m")


def _client(redis_url: str) -> Any:
    """A client of database 9 of a single Redis: the SCANs below then see this module's keys,
    not the millions the rest of a session leaves in database 0 (a cluster has one database)."""
    parts = urlsplit(redis_url)
    if parts.scheme in ("redis", "rediss"):
        redis_url = urlunsplit(parts._replace(path="/9"))
    return async_client(RedisConfig(url=redis_url))


async def _join_keys(client: Any, prefix: str) -> list[bytes]:
    """Every join key under ``prefix``."""
    return [k for p in key_patterns(prefix) async for k in client.scan_iter(p, count=10_000)]


async def _assert_swept(client: Any, prefix: str) -> None:
    """Only the layout marker and the counters, at zero, are left under ``prefix``."""
    left = {k.decode() for k in await _join_keys(client, prefix)}
    counters = {k for k in left if k.rsplit(":", 2)[-2] == "queued"}
    assert left - counters == {f"{prefix}:layout"}
    assert {await client.get(k) for k in counters} <= {b"0"}


async def _drop(client: Any, prefix: str) -> None:
    keys = await _join_keys(client, prefix)
    if keys:
        await client.unlink(*keys)
    await client.aclose()


def _join(client: Any, prefix: str) -> RedisJoin:
    return RedisJoin(
        client,
        prefix,
        prediction_ttl_s=PREDICTION_TTL,
        label_ttl_s=LABEL_TTL,
        dedupe_ttl_s=DEDUPE,
        recheck_s=RECHECK,
    )


async def _check(redis_url: str, plan: Plan) -> None:
    prefix = f"t-join-{uuid.uuid4().hex[:10]}"
    client = _client(redis_url)
    join = _join(client, prefix)
    model = Model()
    now, serial = 1_000_000.0, 0
    # Marked up front: setup() would otherwise SCAN the shared Redis for old keys per example.
    await client.set(f"{prefix}:layout", layout_marker(join.shards))
    try:
        for (kind, arrivals, retried), advance in plan:
            now += advance
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
                first = None
                for _ in range(2 if retried else 1):
                    results, joined = await add(items, now=now)
                    got = [(j.prediction, j.label, j.origin, j.again) for j in joined]
                    want_results, want_joined = model.arrive(kind, items, now)
                    assert results == want_results
                    assert got == want_joined
                    if first is None:
                        first = got
                    else:
                        # the retry hands back every join of the first run, marked "again"
                        assert [g[:3] for g in got] == [f[:3] for f in first]
                        assert all(g[3] for g in got)
                        assert "joined" not in results and "pending" not in results
            assert await join.pending() == (len(model.pending["p"]), len(model.pending["l"]))
        # Whatever the plan left, two sweeps end it (expiry, then forgetting the tombstones):
        # only the layout marker and the zeroed counters may remain, nothing grows for ever.
        for later in (PREDICTION_TTL, PREDICTION_TTL + DEDUPE):
            await join.expire(now + later)
        await _assert_swept(client, prefix)
    finally:
        await _drop(client, prefix)


@settings(max_examples=150, deadline=None)
@given(plan=steps)
def test_any_interleaving_of_batches_retries_and_sweeps_matches_the_state_machine_model(
    endpoints: Endpoints, plan: Plan
) -> None:
    asyncio.run(_check(endpoints.redis_url, plan))


def test_a_retried_batch_hands_back_every_join_it_completed(endpoints: Endpoints) -> None:
    """The case of the incident, pinned: labels join, the client times out, the batch runs
    again with the same origins; every join must come back, none counted as a second join."""
    plan: Plan = [
        (("p", [(pid, "0:1:") for pid in IDS], False), 0),
        (("l", [(pid, f"1:{n}:") for n, pid in enumerate(IDS)], True), 1),
        (("p", [(pid, "0:1:") for pid in IDS], True), 1),  # the predictions' batch again too
    ]
    asyncio.run(_check(endpoints.redis_url, plan))


def test_an_id_pending_again_after_its_tombstone_is_gone_waits_for_its_own_deadline(
    endpoints: Endpoints,
) -> None:
    """An id still pending at its first look waits for its deadline; it joins, its tombstone is
    forgotten, and the same message arrives again (a re-read): that new pending arrival must
    not expire at the first arrival's deadline."""
    plan: Plan = [
        (("p", [("a", "0:1:")], False), 0),  # deadline 50
        (("sweep", [], False), RECHECK),  # first look: "a" waits
        (("l", [("a", "1:1:")], False), 1),  # joined at 16, tombstone forgotten at 41
        (("sweep", [], False), DEDUPE),
        (("p", [("a", "0:1:")], False), 1),  # pending again, deadline 92
        (("sweep", [], False), PREDICTION_TTL - RECHECK - DEDUPE - 2),  # at 50: nothing due
        (("sweep", [], False), 42),  # at 92: it expires
    ]
    asyncio.run(_check(endpoints.redis_url, plan))


# what the layout tests find stored
OLD_PREDICTION = JoinRecord("m", "1", 1.0, 0, segments={"s": "a"})
OLD_LABEL = LabelRecord(1, 2.0, "m")


def _fresh(redis_url: str) -> tuple[str, Any]:
    """A prefix of its own, and a client."""
    return f"t-join-{uuid.uuid4().hex[:10]}", _client(redis_url)


def test_join_state_left_by_layout_3_is_read_as_it_is(endpoints: Endpoints) -> None:
    """A deployment upgraded from layout 3 (16 shards, every pending id in a due set with a
    TTL): its pending ids still join and expire, are counted, and nothing is left after."""

    async def check() -> None:
        prefix, client = _fresh(endpoints.redis_url)
        now, prediction, label = 1_000_000.0, OLD_PREDICTION, OLD_LABEL
        try:
            # What layout 3 wrote: "{P:jS}:i:<id>" with a TTL and an entry in "{P:jS}:due:<side>"
            await client.set(f"{prefix}:layout", b"3")
            for pid, side, blob, ttl in [
                ("a", "p", encode_prediction(prediction), PREDICTION_TTL),
                ("b", "p", encode_prediction(prediction), PREDICTION_TTL),
                ("c", "l", encode_label(label), LABEL_TTL),
            ]:
                tag = shard_tag(prefix, shard_of(pid, 16))
                await client.set(f"{tag}:i:{pid}", f"{side}0:{ord(pid)}:|".encode() + blob, ex=7200)
                await client.zadd(f"{tag}:due:{side}", {f"{tag}:i:{pid}": now + ttl})
            join = _join(client, prefix)
            assert await join.pending() == (2, 1)
            assert await client.get(f"{prefix}:layout") == layout_marker(16)
            results, joined = await join.add_labels([("a", "1:5:", label)], now=now + 1)
            assert results == ["joined"] and joined[0].prediction == prediction
            assert await join.pending() == (1, 1)
            # and an id new since the upgrade, on the same 16 shards
            results, _ = await join.add_predictions([("d", "0:9:", prediction)], now=now + 1)
            assert results == ["pending"] and await join.pending() == (2, 1)
            expired = await join.expire(now + LABEL_TTL)
            assert (expired.predictions, expired.labels) == ([], 1)
            expired = await join.expire(now + 1 + PREDICTION_TTL)
            assert expired.predictions == [prediction, prediction]
            assert await join.pending() == (0, 0)
            await join.expire(now + 1 + PREDICTION_TTL + DEDUPE)
            await _assert_swept(client, prefix)
        finally:
            await _drop(client, prefix)

    asyncio.run(check())


def test_join_state_left_by_layout_4_is_read_as_it_is(endpoints: Endpoints) -> None:
    """A deployment upgraded from layout 4, whose ids still pending at their first look wait in
    a due set (outside the counter): they still join, expire and are counted, the ids queued
    under it still get their first look, and nothing is left after."""

    async def check() -> None:
        prefix, client = _fresh(endpoints.redis_url)
        now, prediction, label = 1_000_000.0, OLD_PREDICTION, OLD_LABEL
        try:
            # What layout 4 left on one shard: "a" and "b" waiting in the due set (their
            # first look done, so no longer counted), "c" still in its arrival queue (counted).
            await client.set(f"{prefix}:layout", b"4/1")
            tag = shard_tag(prefix, 0)
            deadline = now + PREDICTION_TTL
            for pid in "ab":
                value = f"p0:{ord(pid)}:|".encode() + encode_prediction(prediction)
                await client.set(f"{tag}:i:{pid}", value)
                await client.zadd(f"{tag}:due:p", {f"{tag}:i:{pid}": deadline})
            await client.set(f"{tag}:i:c", b"p0:99:|" + encode_prediction(prediction))
            queue = f"{tag}:q:p:{deadline!r}"
            await client.rpush(queue, f"{tag}:i:c")
            await client.zadd(f"{tag}:check:p", {queue: now + RECHECK})
            await client.set(f"{tag}:queued:p", 1)
            join = _join(client, prefix)
            assert await join.pending() == (3, 0)
            assert await client.get(f"{prefix}:layout") == layout_marker(1)
            results, joined = await join.add_labels([("a", "1:5:", label)], now=now + 1)
            assert results == ["joined"] and joined[0].prediction == prediction
            assert await join.pending() == (2, 0)
            # "c" has its first look and waits; "d", new, has its own queue
            results, _ = await join.add_predictions([("d", "0:9:", prediction)], now=now + 1)
            assert results == ["pending"]
            assert (await join.expire(now + RECHECK)).predictions == []
            assert await join.pending() == (3, 0)
            expired = await join.expire(now + PREDICTION_TTL)
            assert expired.predictions == [prediction, prediction]  # "b" and "c"
            assert await join.pending() == (1, 0)
            expired = await join.expire(now + 1 + PREDICTION_TTL)
            assert expired.predictions == [prediction]  # "d"
            assert await join.pending() == (0, 0)
            await join.expire(now + 1 + PREDICTION_TTL + DEDUPE)
            await _assert_swept(client, prefix)
        finally:
            await _drop(client, prefix)

    asyncio.run(check())
