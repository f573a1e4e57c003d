"""The prediction-label join through Redis, as an explicit state machine.

A prediction and its label meet by ``prediction_id`` in either arrival order::

    prediction arrives ─▶ PENDING_PREDICTION ──label arrives──▶ JOINED
                                 └──────── TTL passes ────────▶ EXPIRED (never labelled)
    label arrives ──────▶ PENDING_LABEL ─────prediction arrives─▶ JOINED
                                 └──────── TTL passes ────────▶ EXPIRED (label without prediction)

Every transition runs inside one Lua script, so it is atomic: two workers, a redelivery after a
crash, or a duplicate event can never join the same prediction twice. A prediction or label that
arrives again while pending, or after its join, is reported as ``duplicate`` and changes nothing.
After a join (or expiry) a small tombstone remains for ``dedupe_ttl_s`` to recognise late
repeats. Each arrival carries its origin (partition, offset, batch index), so a redelivery of the
very same message (after a crash, before its offset was committed) is ``redelivered`` and
harmless, while a different message repeating an id is a ``duplicate``.

Keys (``P`` is the configured prefix)::

    P:i:<id>            an id's state, one of
                          "p<origin>|<blob>"  pending prediction: a JoinRecord blob (versioned
                                              msgpack, never pickle)
                          "l<origin>|<blob>"  pending label: a LabelRecord blob
                          "j<prediction origin>/<label origin>"  tombstone of a joined or
                                              expired id (one side empty after an expiry)
    P:due:p:<shard>     sorted set id -> deadline (Unix seconds) of pending predictions
    P:due:l:<shard>     the same for pending labels
    P:layout            "2" once a worker with this layout has run under the prefix
    P:legacy            present while state of the layout before may remain (see below)

The layout before kept three keys per id (``P:p:<id>``, ``P:l:<id>``, ``P:j:<id>``, the same
values without the leading letter). Whoever runs a script first under a prefix without
``P:layout`` sets it, and ``P:legacy`` for as long as keys of the layout before could live (the
longest TTL plus the grace period); while ``P:legacy`` lives the scripts also read the old keys
(and delete one when it joins), so pending state and tombstones written before an upgrade keep
joining, repeating and expiring as before. A new prefix can't be told from an upgraded one
without scanning the keyspace, so it gets the same window: reading the old keys costs Redis
about a third more CPU per event while it lasts (``bench/join_cost.py``). Where no key of the
layout before can be left (a new deployment, or all of them gone), ``DEL P:legacy`` ends the
window early. Workers of both layouts must not run at once, and a worker of the layout before
can't read this one's state.

Deadlines are wall-clock (they bound how long Redis keeps state, not event time). Each key also
carries a Redis TTL a grace period past its deadline, so state never outlives a lost sweeper.
The scripts address keys they build from ARGV, so this needs a single Redis (or a proxy that
routes by prefix), not Redis Cluster.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from streamproc.contracts import Scalar
from streamproc.errors import StateEncodingError

JoinResult = Literal["pending", "joined", "duplicate", "redelivered", "late"]

_MAGIC_PREDICTION = b"SPJ1"
_MAGIC_LABEL = b"SPL1"
SHARDS = 16
GRACE_S = 3600
CHUNK = 500


class JoinRecord(msgspec.Struct, array_like=True, frozen=True):
    """What monitoring needs of a prediction once its label arrives: no raw id, few features."""

    model_id: str
    model_version: str
    event_time: float
    prediction: Scalar
    confidence: float | None = None
    scores: dict[str, float] | None = None
    segments: dict[str, str] = {}
    features: dict[str, float | str | bool | None] = {}


class LabelRecord(msgspec.Struct, array_like=True, frozen=True):
    label: Scalar
    event_time: float
    model_id: str | None = None


_PRED_ENC = msgspec.msgpack.Encoder()
_PRED_DEC = msgspec.msgpack.Decoder(JoinRecord)
_LABEL_DEC = msgspec.msgpack.Decoder(LabelRecord)


def encode_prediction(record: JoinRecord) -> bytes:
    """Versioned bytes of a pending prediction.

    >>> rec = JoinRecord("m", "1", 1.0, 0.5, segments={"country": "DE"})
    >>> decode_prediction(encode_prediction(rec)) == rec
    True
    """
    return _MAGIC_PREDICTION + _PRED_ENC.encode(record)


def decode_prediction(blob: bytes) -> JoinRecord:
    if blob[:4] != _MAGIC_PREDICTION:
        raise StateEncodingError(f"not a pending-prediction blob (header {blob[:4]!r})")
    return _PRED_DEC.decode(blob[4:])


def encode_label(record: LabelRecord) -> bytes:
    return _MAGIC_LABEL + _PRED_ENC.encode(record)


def decode_label(blob: bytes) -> LabelRecord:
    if blob[:4] != _MAGIC_LABEL:
        raise StateEncodingError(f"not a pending-label blob (header {blob[:4]!r})")
    return _LABEL_DEC.decode(blob[4:])


@dataclass(frozen=True, slots=True)
class Joined:
    """A prediction with its label: what the monitoring stage receives."""

    prediction: JoinRecord
    label: LabelRecord
    origin: str = (
        ""  # the arrival that completed the join: "p<partition>:<offset>:<index>" or "l..."
    )

    @property
    def label_delay_s(self) -> float:
        return self.label.event_time - self.prediction.event_time


@dataclass(frozen=True, slots=True)
class Expired:
    """What a sweep found past its deadline."""

    predictions: list[JoinRecord]  # never labelled
    labels: int  # labels whose prediction never came


# Shared head of both scripts; ARGV[1] is the prefix, ARGV[8] how long state of the layout
# before may live (see the module docstring). Sets ``legacy``.
_LAYOUT = """
local prefix = ARGV[1]
if redis.call('EXISTS', prefix .. ':layout') == 0 then
  redis.call('SET', prefix .. ':legacy', '1', 'EX', ARGV[8])
  redis.call('SET', prefix .. ':layout', '2')
end
local legacy = redis.call('EXISTS', prefix .. ':legacy') == 1
"""

# ARGV: prefix, now, deadline, key ttl, dedupe ttl, own side, other side, legacy window, then
# (id, shard, origin, blob) quadruples. Returns, per id: 0 = pending, 1 = duplicate (another
# message carried the same id), 2 = redelivery (this very message again, e.g. after a restart),
# 3 = late (the other half already expired), or the other side's "<origin>|<blob>" when this
# arrival completed the join.
#
# Redis spends a script's time mostly on creating, deleting and looking up keys and sorted-set
# members, less on the per-command overhead of redis.call (a perf profile puts dictFind and key
# comparison first). So an id's whole state is one key (a join overwrites the pending value with
# its tombstone in place instead of deleting one key and creating another), the script reads
# every id's key with one MGET, keeps what it changes in a table (an id may come twice in one
# call), and sends the sorted-set updates as one command per key at the end; one SET with its
# TTL remains per event. bench/join_cost.py: ~0.7x the Redis CPU per event of three keys per id.
# While ``legacy`` holds, the keys of the layout before are read too (nothing writes them).
_ARRIVE = (
    _LAYOUT
    + """
local deadline = ARGV[3]
local ttl, dedupe = ARGV[4], ARGV[5]
local mine, other = ARGV[6], ARGV[7]
local find, sub, call = string.find, string.sub, redis.call
local STEP = 800
-- One command over many items, in slices that stay within Lua's unpack limit.
local function bulk(cmd, key, items)
  for i = 1, #items, STEP do
    local last = math.min(i + STEP - 1, #items)
    if key then
      call(cmd, key, unpack(items, i, last))
    else
      call(cmd, unpack(items, i, last))
    end
  end
end
local n = (#ARGV - 8) / 4
-- w keys per id: its state, then (legacy only) the old tombstone, own and other side.
local w = 1
if legacy then w = 4 end
local keys, vals = {}, {}
for k = 0, n - 1 do
  local id = ARGV[9 + 4 * k]
  keys[w * k + 1] = prefix .. ':i:' .. id
  if legacy then
    keys[w * k + 2] = prefix .. ':j:' .. id
    keys[w * k + 3] = prefix .. ':' .. mine .. ':' .. id
    keys[w * k + 4] = prefix .. ':' .. other .. ':' .. id
  end
end
for i = 1, #keys, STEP do
  local got = call('MGET', unpack(keys, i, math.min(i + STEP - 1, #keys)))
  for j = 1, #got do vals[i + j - 1] = got[j] end
end
-- state[id]: "p<origin>|<blob>", "l<origin>|<blob>", "j<prediction origin>/<label origin>"
-- or false; old[id]: the layout before's key still holding the other side's pending value.
local state, old = {}, {}
local adds, rems, dels = {}, {}, {}
local out = {}
for k = 0, n - 1 do
  local a = 9 + 4 * k
  local id, shard, origin = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local s = state[id]
  if s == nil then
    s = vals[w * k + 1]
    if not s and legacy then
      if vals[w * k + 2] then
        s = 'j' .. vals[w * k + 2]
      elseif vals[w * k + 3] then
        s = mine .. vals[w * k + 3]
      elseif vals[w * k + 4] then
        s = other .. vals[w * k + 4]
        old[id] = keys[w * k + 4]
      end
    end
  end
  local tag = s and sub(s, 1, 1)
  local seen = false
  if tag == 'j' then
    local slash = find(s, '/', 2, true)
    if mine == 'p' then
      seen = sub(s, 2, slash - 1)
    else
      seen = sub(s, slash + 1)
    end
    if seen == '' then seen = 'late' end
  elseif tag == mine then
    local bar = find(s, '|', 2, true)
    if bar then seen = sub(s, 2, bar - 1) else seen = sub(s, 2) end
  end
  if seen then
    if seen == origin then
      out[k + 1] = 2
    elseif seen == 'late' then
      out[k + 1] = 3
    else
      out[k + 1] = 1
    end
  elseif tag == other then
    local found = sub(s, 2)
    local bar = find(found, '|', 1, true)
    local theirs = found
    if bar then theirs = sub(found, 1, bar - 1) end
    if mine == 'p' then
      s = 'j' .. origin .. '/' .. theirs
    else
      s = 'j' .. theirs .. '/' .. origin
    end
    call('SET', keys[w * k + 1], s, 'EX', dedupe)
    if old[id] then
      dels[#dels + 1] = old[id]
      old[id] = nil
    end
    local r = rems[shard]
    if not r then r = {}; rems[shard] = r end
    r[#r + 1] = id
    out[k + 1] = found
  else
    s = mine .. origin .. '|' .. ARGV[a + 3]
    call('SET', keys[w * k + 1], s, 'EX', ttl)
    local z = adds[shard]
    if not z then z = {}; adds[shard] = z end
    z[#z + 1] = deadline
    z[#z + 1] = id
    out[k + 1] = 0
  end
  state[id] = s
end
if #dels > 0 then bulk('DEL', nil, dels) end
local due = prefix .. ':due:'
for shard, ids in pairs(rems) do bulk('ZREM', due .. other .. ':' .. shard, ids) end
for shard, scored in pairs(adds) do bulk('ZADD', due .. mine .. ':' .. shard, scored) end
return out
"""
)

# ARGV: prefix, side, shard, now, limit, dedupe_ttl, (unused), legacy window. Pops due ids,
# turns each one's pending value into a tombstone with one side empty, returns their blobs.
_SWEEP = (
    _LAYOUT
    + """
local side, shard = ARGV[2], ARGV[3]
local now, limit, dedupe = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local find, sub, call = string.find, string.sub, redis.call
local due = prefix .. ':due:' .. side .. ':' .. shard
local ids = call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for i = 1, #ids, 800 do
  call('ZREM', due, unpack(ids, i, math.min(i + 799, #ids)))
end
for _, id in ipairs(ids) do
  local key = prefix .. ':i:' .. id
  local value = call('GET', key)
  if value then
    if sub(value, 1, 1) == side then value = sub(value, 2) else value = false end
  elseif legacy then
    value = call('GETDEL', prefix .. ':' .. side .. ':' .. id)
  end
  if value then
    local bar = find(value, '|', 1, true)
    local origin = sub(value, 1, bar - 1)
    local both = origin .. '/'
    if side == 'l' then both = '/' .. origin end
    call('SET', key, 'j' .. both, 'EX', dedupe)
    out[#out + 1] = sub(value, bar + 1)
  end
end
return out
"""
)


_RESULT: dict[int, JoinResult] = {0: "pending", 1: "duplicate", 2: "redelivered", 3: "late"}


def shard_of(prediction_id: str) -> int:
    return zlib.crc32(prediction_id.encode()) % SHARDS


class RedisJoin:
    """Joins predictions and labels by id through Redis, atomically and in pipelined batches.

    Parameters
    ----------
    client
        An asyncio Redis client (``decode_responses=False``).
    prefix
        Key prefix; one per deployment (the config's ``redis.key_prefix``).
    prediction_ttl_s, label_ttl_s
        How long a prediction waits for its label, and a label for its prediction.
    dedupe_ttl_s
        How long a joined or expired id is remembered to recognise redeliveries.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        prediction_ttl_s: int = 7 * 24 * 3600,
        label_ttl_s: int = 3600,
        dedupe_ttl_s: int = 24 * 3600,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.prediction_ttl_s = prediction_ttl_s
        self.label_ttl_s = label_ttl_s
        self.dedupe_ttl_s = dedupe_ttl_s
        # How long keys of the layout before may outlive an upgrade: the longest TTL they had.
        self._legacy_window = max(prediction_ttl_s, label_ttl_s, dedupe_ttl_s) + GRACE_S
        self._arrive = client.register_script(_ARRIVE)
        self._sweep = client.register_script(_SWEEP)

    async def _arrive_batch(
        self, side: str, other: str, ttl: int, items: Sequence[tuple[str, str, bytes]], now: float
    ) -> list[int | tuple[bytes, bytes]]:
        results: list[int | bytes] = []
        deadline = now + ttl
        head = [
            self.prefix, now, deadline, ttl + GRACE_S, max(self.dedupe_ttl_s, 1), side, other,
            self._legacy_window,
        ]  # fmt: skip
        async with self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(items), CHUNK):
                argv: list[str | bytes | float | int] = list(head)
                for pid, origin, blob in items[start : start + CHUNK]:
                    argv += [pid, shard_of(pid), origin, blob]
                await self._arrive(keys=[], args=argv, client=pipe)
            for chunk in await pipe.execute():
                results.extend(chunk)
        # A joined reply is the other side's stored "<origin>|<blob>": keep both parts.
        return [tuple(r.split(b"|", 1)) if isinstance(r, bytes) else r for r in results]

    async def add_predictions(
        self, items: Sequence[tuple[str, str, JoinRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]:
        """Record predictions; return each one's result and the joins they completed.

        ``items`` are ``(prediction_id, origin, record)``; the origin names the message
        (``"partition:offset:index"``) so that a redelivery of the same message is told apart
        from a different message repeating the id.
        """
        now = time.time() if now is None else now
        blobs = [(pid, origin, encode_prediction(rec)) for pid, origin, rec in items]
        raw = await self._arrive_batch("p", "l", self.prediction_ttl_s, blobs, now)
        results: list[JoinResult] = []
        joined: list[Joined] = []
        for (_, _, rec), r in zip(items, raw, strict=True):
            if isinstance(r, tuple):
                results.append("joined")
                label_origin, blob = r
                joined.append(Joined(rec, decode_label(blob), f"l{label_origin.decode()}"))
            else:
                results.append(_RESULT[r])
        return results, joined

    async def add_labels(
        self, items: Sequence[tuple[str, str, LabelRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]:
        """Record labels; return each one's result and the joins they completed."""
        now = time.time() if now is None else now
        blobs = [(pid, origin, encode_label(rec)) for pid, origin, rec in items]
        raw = await self._arrive_batch("l", "p", self.label_ttl_s, blobs, now)
        results: list[JoinResult] = []
        joined: list[Joined] = []
        for (_, origin, rec), r in zip(items, raw, strict=True):
            if isinstance(r, tuple):
                results.append("joined")
                joined.append(Joined(decode_prediction(r[1]), rec, f"l{origin}"))
            else:
                results.append(_RESULT[r])
        return results, joined

    async def expire(self, now: float | None = None, limit: int = 1000) -> Expired:
        """Move everything past its deadline to EXPIRED; each id is reported by one caller only."""
        now = time.time() if now is None else now
        async with self.client.pipeline(transaction=False) as pipe:
            for side in ("p", "l"):
                for shard in range(SHARDS):
                    args = [
                        self.prefix, side, shard, now, limit, max(self.dedupe_ttl_s, 1), "",
                        self._legacy_window,
                    ]  # fmt: skip
                    await self._sweep(keys=[], args=args, client=pipe)
            replies = await pipe.execute()
        predictions = [decode_prediction(b) for reply in replies[:SHARDS] for b in reply]
        labels = sum(len(reply) for reply in replies[SHARDS:])
        return Expired(predictions, labels)

    async def pending(self) -> tuple[int, int]:
        """How many predictions and labels are waiting (for metrics)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for side in ("p", "l"):
                for shard in range(SHARDS):
                    pipe.zcard(f"{self.prefix}:due:{side}:{shard}")
            counts = await pipe.execute()
        return sum(counts[:SHARDS]), sum(counts[SHARDS:])
