"""The prediction-label join through Redis, as an explicit state machine.

A prediction and its label meet by ``prediction_id`` in either arrival order::

    prediction arrives ─▶ PENDING_PREDICTION ──label arrives──▶ JOINED
                                 └──────── TTL passes ────────▶ EXPIRED (never labelled)
    label arrives ──────▶ PENDING_LABEL ─────prediction arrives─▶ JOINED
                                 └──────── TTL passes ────────▶ EXPIRED (label without prediction)

Every transition runs inside one Lua script, so it is atomic: two workers, a redelivery after a
crash, or a duplicate event can never join the same prediction twice. A prediction or label that
arrives again while pending, or after its join, is reported as ``duplicate`` and changes nothing.
After a join (or expiry) a tombstone remains for ``dedupe_ttl_s`` to recognise late
repeats. Each arrival carries its origin (partition, offset, batch index), so a redelivery of the
very same message (after a crash, before its offset was committed) is ``redelivered`` and
harmless, while a different message repeating an id is a ``duplicate``.

**Outcomes are at-least-once.** The half that completed a join may be processed again with its
own origin: the script ran but the client timed out and ``ingest.retry`` re-ran the batch, or the
process died between the join in Redis and the outcome's produce to Kafka. So the tombstone keeps
the other half's blob and which side completed the join, and that side's redelivery returns the
:class:`Joined` record again (result ``redelivered``, the record in the joined list, marked
``again``); the ingest emits it like a fresh join. Nothing is lost to a Redis timeout or a crash;
an outcome is emitted twice only if the process dies after its produce was acknowledged and
before the batch's offsets were committed. The other half's redelivery (it was only pending
when first processed, so it emitted nothing) stays ``redelivered`` without a record: the
outcome is the completing half's batch's to emit. The cost is the other half's blob kept in the
tombstone for ``dedupe_ttl_s``, no more than the pending value it replaces: with a prediction
of two segments and three features, ~100 bytes of value instead of ~17 (``MEMORY USAGE`` ~200
instead of ~120 bytes per joined id, ``bench/join_cost.py``). A joined tombstone left by a
worker of layout 2 before this (no blob) makes such a redelivery plain ``redelivered``.

Keys (``P`` is the configured prefix, ``S`` a join shard from the id's CRC-32: 0-15 on a Redis
Cluster, 0 alone on a single Redis)::

    {P:jS}:i:<id>       an id's state, one of
                          "p<origin>|<blob>"  pending prediction: a JoinRecord blob (versioned
                                              msgpack, never pickle)
                          "l<origin>|<blob>"  pending label: a LabelRecord blob
                          "j<prediction origin>/<label origin>|<side><blob>"  tombstone of a
                                              join: the side that completed it ("p" or "l")
                                              and the other side's blob
                          "j<prediction origin>/<label origin>"  tombstone of an expiry (the
                                              expired side's origin only, the other empty)
    {P:jS}:q:p:<D>      queue (list) of the state keys of the predictions that went pending
                        with deadline D (Unix seconds) in one script call (or several at once)
    {P:jS}:q:p:<D>:w    wait queue: the ids of that queue still pending at its first look,
                        each followed by the value its key held then
    {P:jS}:check:p      sorted set: queue -> when the sweep first looks at its ids (a wait
                        queue: D)
    {P:jS}:queued:p     how many ids in queues are still pending (a counter, for ``pending()``)
    {P:jS}:due:p        sorted set: state key -> deadline, of ids still pending at their first
                        look under layout 4 (which waited there): drained, no longer written
    {P:jS}:...:l        the same five for pending labels
    {P:jS}:q:x:<T>      queue of the tombstones made in one call, to forget at T
    {P:jS}:check:x      sorted set: tombstone queue -> T
    P:layout            "<layout>/<shards>": ``LAYOUT`` and how many join shards

The braces are a Redis Cluster hash tag: every key of a shard lives in one slot, so a script
call (one shard's part of a batch) touches one slot and runs on Redis Cluster as on a single
Redis. The scripts receive the keys they write in KEYS; the sweep also reads the keys its queues
and sets name, which share their slot. On a cluster a batch is split by shard and pipelined
(redis-py's cluster pipeline sends each node its shards' calls); a single Redis has one shard,
so a batch is one call per ``CHUNK`` events (a call costs Redis about as much as ten events).

:meth:`RedisJoin.setup` (run by the worker before it consumes, and by the first call of a
:class:`RedisJoin`) checks ``P:layout``: it sets it under a prefix without one, unless keys of
an earlier layout (``P:p:<id>``, ``P:l:<id>``, ``P:j:<id>`` of layout 1, ``P:i:<id>`` of
layout 2) are found, and fails with :class:`JoinLayoutError` when they are, or when
``P:layout`` names another version: the scripts read this layout only (streamproc is
unreleased). The message says how to drain or delete the old keys. Layout 3 (the keys above
without queues, 16 shards, TTLs on every key) reads as this one with every pending id past its
check, and layout 4 (the keys above, with a due set instead of wait queues) as it is: their
marker is moved on in place.

**The sweep ends every key; no key has a TTL.** Deadlines are wall-clock (they bound how long
Redis keeps state, not event time). Most ids are pending briefly, a label comes within minutes
or hours, so a new pending id is appended to its call's queue (one RPUSH per call) instead of
given a sorted-set entry and a TTL, which cost Redis about as much again as the id's own SET
and as much once more to remove on the join (``bench/join_cost.py``). The sweep looks at a queue
once its check time has come (``recheck_s`` after the arrivals, or sooner if their deadline or
``dedupe_ttl_s`` is): it drops the ids joined since, expires those past their deadline, and
appends the ones still pending, each with the value it holds, to the queue's wait queue, which
it looks at on the deadline: an id whose key still holds that very value expires (anything else
there joined meanwhile, or is a later arrival of the id with a queue of its own). A sorted-set
entry per waiting id, as layout 4 kept, cost Redis more to add, to range over and to remove
(each join tried to), and more memory. A tombstone goes into its
call's tombstone queue and is deleted ``dedupe_ttl_s`` later. So the state of an event lives
until the sweep after its end: while no worker runs, nothing is deleted (nor lost). When a
deployment is retired, delete its keys (the command is in :class:`JoinLayoutError`'s message
and the README).
"""

from __future__ import annotations

import shlex
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError

from streamproc.contracts import Scalar
from streamproc.errors import StateEncodingError, StreamprocError

JoinResult = Literal["pending", "joined", "duplicate", "redelivered", "late"]

_MAGIC_PREDICTION = b"SPJ1"
_MAGIC_LABEL = b"SPL1"
CLUSTER_SHARDS = 16  # join shards on a Redis Cluster; a single Redis has one
RECHECK_S = 3600  # a pending id's first look by the sweep (see RedisJoin)
SWEEP_LIMIT = 5000  # ids one sweep call looks at: a few ms of Redis time
SWEEP_ROUNDS = 50
CHUNK = 500
CHUNKS_PER_ROUND_TRIP = 20  # 10,000 events: tens of ms of Redis time per round trip
LAYOUT = b"5"
LAYOUT_3 = b"3"  # read as it is (16 shards): layouts 4 and 5 only add keys to it
LAYOUT_4 = b"4"  # read as it is: its due sets drain, layout 5 writes wait queues instead


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
    """A label as the join keeps it. ``late``: its labels partition's clock had passed its
    event time when it was read (decided there, before the join, so that the verdict is the
    same whichever side of the join arrives first; a pending label carries it)."""

    label: Scalar
    event_time: float
    model_id: str | None = None
    late: bool = False


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


@dataclass(slots=True)  # one per event: frozen costs 2.4x to build
class Joined:
    """A prediction with its label: what the monitoring stage receives."""

    prediction: JoinRecord
    label: LabelRecord
    origin: str = ""  # the label's arrival: "l<partition>:<offset>:<index>"
    again: bool = False  # rebuilt from the tombstone for a redelivery of the completing half
    completed_by: str = ""  # the completing arrival's "<partition>:<offset>:<index>"

    @property
    def label_delay_s(self) -> float:
        return self.label.event_time - self.prediction.event_time


@dataclass(frozen=True, slots=True)
class Expired:
    """What a sweep found past its deadline."""

    predictions: list[JoinRecord]  # never labelled
    labels: int  # labels whose prediction never came


# KEYS: this shard's check set of the arriving side, this call's queue of new pending ids
# ("{P:jS}:q:<side>:<deadline>"), the arriving side's count of pending ids, the other side's
# due set (of layouts 3 and 4) and its count, the check set of tombstones to forget and this
# call's queue of them ("{P:jS}:q:x:<when>"), then one state key per event. ARGV: check time of
# the new pending ids, when to forget the tombstones, own side, other side, "1" if an id comes
# twice in this call (else "0"), then per event the value a pending arrival stores,
# "<side><origin>|<blob>" (built by the client, so the script concatenates nothing for a plain
# arrival). Returns, per event: 0 = pending, 1 = duplicate (another message carried the same
# id), 2 = redelivery (this very message again, e.g. after a restart), 3 = late (the other half
# already expired), the other side's stored value "<side><origin>|<blob>" as it was when this
# arrival completed the join, or {other side's origin, its blob} when this is a
# redelivery of the arrival that completed it (the outcome is rebuilt from the tombstone: see
# "at-least-once" in the module docstring).
#
# Redis spends such a script's time mostly on the calls it makes per event (a redis.call, its
# arguments and reply converted each way) and on what a key costs to create: a TTL, a
# sorted-set entry. So the script makes no call per event: it reads every key with one MGET,
# keeps what it changes in a table (only when an id comes twice in one call), writes with one
# MSET, and appends the new pending ids and the new tombstones to this call's two queues with
# one RPUSH each. No key has a TTL: the sweep, which works through the queues, ends every one.
# Each string the script makes costs Redis a copy and a hash: a joining arrival makes its
# tombstone in one concatenation and hands back the value it read as it is (a sixth off the
# Redis CPU of a joining label, 3.75 -> 3.09 µs, measured interleaved with the version before).
_ARRIVE = """
local check, forget = ARGV[1], ARGV[2]
local mine, other = ARGV[3], ARGV[4]
local find, sub, call = string.find, string.sub, redis.call
local STEP = 800
local FIRST = 8
local n = #KEYS - FIRST + 1
-- one command with a key and many members, in calls of at most `width` members; their sum
local function batched(command, key, items, width)
  local total = 0
  for i = 1, #items, width do
    total = total + call(command, key, unpack(items, i, math.min(i + width - 1, #items)))
  end
  return total
end
local vals
if n <= STEP then
  vals = call('MGET', unpack(KEYS, FIRST, #KEYS))
else
  vals = {}
  for i = FIRST, #KEYS, STEP do
    local got = call('MGET', unpack(KEYS, i, math.min(i + STEP - 1, #KEYS)))
    for j = 1, #got do vals[i + j - FIRST] = got[j] end
  end
end
-- state[key]: "p<origin>|<blob>", "l<origin>|<blob>", "j<p origin>/<l origin>[|<side><blob>]"
-- or false
local state = {}
local repeats = ARGV[5] == '1'
-- (counted here: `#t` searches the table each time)
local writes, adds, joins = {}, {}, {}
local nw, na, nj = 0, 0, 0
local out = {}
for k = 1, n do
  local key, value = KEYS[k + FIRST - 1], ARGV[k + 5]
  local s = vals[k]
  if repeats and state[key] ~= nil then s = state[key] end
  if not s then
    writes[nw + 1], writes[nw + 2] = key, value
    nw = nw + 2
    na = na + 1
    adds[na] = key
    out[k] = 0
    if repeats then state[key] = value end
  else
    local tag = sub(s, 1, 1)
    local origin = sub(value, 2, find(value, '|', 2, true) - 1)
    local seen, rest, again = false, false, false
    if tag == 'j' then
      local slash = find(s, '/', 2, true)
      local bar = find(s, '|', slash + 1, true)
      local p_origin, l_origin
      if bar then
        l_origin = sub(s, slash + 1, bar - 1)
        rest = sub(s, bar + 1)
      else
        l_origin = sub(s, slash + 1)
      end
      p_origin = sub(s, 2, slash - 1)
      if mine == 'p' then seen = p_origin else seen = l_origin end
      if seen == '' then seen = 'late' end
      if rest and sub(rest, 1, 1) == mine and seen == origin then
        -- the completing half again: hand back the other half to rebuild the outcome
        local theirs = l_origin
        if mine == 'l' then theirs = p_origin end
        out[k] = {theirs, sub(rest, 2)}
        again = true
      end
    elseif tag == mine then
      local bar = find(s, '|', 2, true)
      if bar then seen = sub(s, 2, bar - 1) else seen = sub(s, 2) end
    end
    if again then
      -- nothing changes
    elseif seen then
      if seen == origin then
        out[k] = 2
      elseif seen == 'late' then
        out[k] = 3
      else
        out[k] = 1
      end
    else
      -- tag == other: this arrival completes the join
      local bar = find(s, '|', 2, true)
      local theirs = sub(s, 2, bar - 1)
      local t
      if mine == 'p' then
        t = 'j' .. origin .. '/' .. theirs .. '|p' .. sub(s, bar + 1)
      else
        t = 'j' .. theirs .. '/' .. origin .. '|l' .. sub(s, bar + 1)
      end
      writes[nw + 1], writes[nw + 2] = key, t
      nw = nw + 2
      nj = nj + 1
      joins[nj] = key
      out[k] = s
      if repeats then state[key] = t end
    end
  end
end
for i = 1, nw, 2 * STEP do
  call('MSET', unpack(writes, i, math.min(i + 2 * STEP - 1, nw)))
end
if na > 0 then
  batched('RPUSH', KEYS[2], adds, STEP)
  call('ZADD', KEYS[1], check, KEYS[2])
  call('INCRBY', KEYS[3], na)
end
if nj > 0 then
  batched('RPUSH', KEYS[7], joins, STEP)
  call('ZADD', KEYS[6], forget, KEYS[7])
  -- the other halves were in a queue or a wait queue (counted), or in a due set of layout 3 or 4
  local indexed = 0
  if call('EXISTS', KEYS[4]) == 1 then indexed = batched('ZREM', KEYS[4], joins, STEP) end
  if indexed < nj then call('DECRBY', KEYS[5], nj - indexed) end
end
return out
"""

# KEYS: a shard's check set, due set and count of pending ids, of one side, then the shard's
# check set of tombstones to forget and this call's queue of them. ARGV: side, now, limit, when
# to forget this call's tombstones. Works through the queues whose check time has come, in that
# order (each named by its ids' deadline). An arrival queue ("...:q:<side>:<deadline>") is its
# ids' first look: an id since joined is dropped, one still pending expires if its deadline has
# passed, else goes on with the value it holds to the wait queue "<queue>:w", looked at on the
# deadline, where it expires only if its key still holds that very value (not, say, a new
# arrival of the id after its join's tombstone was forgotten). Then pops due ids from the due
# set (layout 4's waits: an entry per id, removed by its join). An expiry turns the pending
# value into a tombstone with one side empty. Returns {how many entries it looked at (at most
# limit: when it is limit, more may be due), then the expired blobs}. Every key is in the sets'
# slot.
_SWEEP = """
local check, due, counter, forgets, forget_queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local side = ARGV[1]
local now, limit, forget = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local find, sub, match, call = string.find, string.sub, string.match, redis.call
local STEP = 800
local function batched(command, key, items, width)
  for i = 1, #items, width do
    call(command, key, unpack(items, i, math.min(i + width - 1, #items)))
  end
end
local out = {0}
local writes, gone = {}, {}
local counted = 0
local function expire(key, value)
  local bar = find(value, '|', 2, true)
  local origin = sub(value, 2, bar - 1)
  local both = origin .. '/'
  if side == 'l' then both = '/' .. origin end
  writes[#writes + 1] = key
  writes[#writes + 1] = 'j' .. both
  gone[#gone + 1] = key
  out[#out + 1] = sub(value, bar + 1)
end
local budget = limit
for _, queue in ipairs(call('ZRANGEBYSCORE', check, '-inf', now, 'LIMIT', 0, limit)) do
  if budget <= 1 then break end
  if sub(queue, -2) == ':w' then
    -- (key, value) pairs waiting for their deadline, which has come
    local got = call('LPOP', queue, budget - budget % 2)
    if got then
      budget = budget - #got
      local keys = {}
      for i = 1, #got, 2 do keys[#keys + 1] = got[i] end
      for i = 1, #keys, STEP do
        local vals = call('MGET', unpack(keys, i, math.min(i + STEP - 1, #keys)))
        for j = 1, #vals do
          local k = i + j - 1
          if vals[j] == got[2 * k] then
            expire(keys[k], vals[j])
            counted = counted + 1
          end
        end
      end
    end
  else
    local deadline = tonumber(match(queue, ':([^:]+)$'))
    local keys = call('LPOP', queue, budget)
    if keys then
      budget = budget - #keys
      local wait = {}
      for i = 1, #keys, STEP do
        local vals = call('MGET', unpack(keys, i, math.min(i + STEP - 1, #keys)))
        for j = 1, #vals do
          local value = vals[j]
          if value and sub(value, 1, 1) == side then
            if deadline <= now then
              expire(keys[i + j - 1], value)
              counted = counted + 1
            else
              wait[#wait + 1] = keys[i + j - 1]
              wait[#wait + 1] = value
            end
          end
        end
      end
      if #wait > 0 then
        batched('RPUSH', queue .. ':w', wait, 2 * STEP)
        call('ZADD', check, deadline, queue .. ':w')
      end
    end
  end
  if call('LLEN', queue) == 0 then call('ZREM', check, queue) end
end
if counted > 0 then call('DECRBY', counter, counted) end
if budget > 0 and call('EXISTS', due) == 1 then
  local keys = call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, budget)
  budget = budget - #keys
  for i = 1, #keys, STEP do
    call('ZREM', due, unpack(keys, i, math.min(i + STEP - 1, #keys)))
    local vals = call('MGET', unpack(keys, i, math.min(i + STEP - 1, #keys)))
    for j = 1, #vals do
      if vals[j] and sub(vals[j], 1, 1) == side then expire(keys[i + j - 1], vals[j]) end
    end
  end
end
for i = 1, #writes, 2 * STEP do
  call('MSET', unpack(writes, i, math.min(i + 2 * STEP - 1, #writes)))
end
if #gone > 0 then
  batched('RPUSH', forget_queue, gone, STEP)
  call('ZADD', forgets, forget, forget_queue)
end
out[1] = limit - budget
return out
"""

# KEYS: a shard's check set of tombstones to forget. ARGV: now, limit. Deletes the tombstones
# of the queues whose time has come (a tombstone never changes, so each entry is one key to
# delete). Returns how many it deleted (at most limit: when it is limit, more may be due).
_FORGET = """
local check = KEYS[1]
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local call = redis.call
local budget = limit
for _, queue in ipairs(call('ZRANGEBYSCORE', check, '-inf', now, 'LIMIT', 0, limit)) do
  if budget <= 0 then break end
  local keys = call('LPOP', queue, budget)
  if keys then
    budget = budget - #keys
    for i = 1, #keys, 800 do call('UNLINK', unpack(keys, i, math.min(i + 799, #keys))) end
  end
  if call('LLEN', queue) == 0 then call('ZREM', check, queue) end
end
return limit - budget
"""


class JoinLayoutError(StreamprocError):
    """Redis holds join state of another key layout than this version reads."""


def shard_of(prediction_id: str, shards: int) -> int:
    return zlib.crc32(prediction_id.encode()) % shards


def layout_marker(shards: int) -> bytes:
    """What ``P:layout`` holds: the layout and how many join shards its keys are spread over.

    >>> layout_marker(16)
    b'5/16'
    """
    return b"%s/%d" % (LAYOUT, shards)


def shard_tag(prefix: str, shard: int) -> str:
    """The hash-tagged head of a join shard's keys.

    >>> shard_tag("streamproc", 3)
    '{streamproc:j3}'
    """
    return f"{{{prefix}:j{shard}}}"


def key_patterns(prefix: str) -> list[str]:
    """SCAN patterns of every join key under ``prefix``, of this layout and the ones before."""
    escaped = _glob_escape(prefix)
    return [f"{{{escaped}:j*", *(f"{escaped}:{tail}" for tail in ("[plji]:*", "due:*", "layout"))]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _is_cluster(client: object) -> bool:
    return isinstance(client, AsyncRedisCluster)


def _delete_command(client: aioredis.Redis | AsyncRedisCluster, prefix: str) -> str:
    """The shell command that deletes every join key under ``prefix`` (no password in it); on a
    cluster, one loop per primary node."""
    if _is_cluster(client):
        nodes = [(n.host, n.port) for n in client.get_primaries()]  # type: ignore[union-attr]
        wheres = [f"-c -h {host} -p {port}" for host, port in nodes]
    else:
        kw = client.connection_pool.connection_kwargs  # type: ignore[union-attr]
        host, port, db = kw.get("host", "127.0.0.1"), kw.get("port", 6379), kw.get("db", 0)
        wheres = [f"-h {host} -p {port} -n {db}"]
    patterns = " ".join(shlex.quote(p) for p in key_patterns(prefix))
    per_call = 1 if _is_cluster(client) else 500  # a cluster's UNLINK takes keys of one slot
    return "; ".join(
        f'for p in {patterns}; do redis-cli {where} --scan --pattern "$p" '
        f"| xargs -r -d '\\n' -n {per_call} redis-cli {where} unlink; done"
        for where in wheres
    )


async def ensure_layout(
    client: aioredis.Redis | AsyncRedisCluster, prefix: str, shards: int
) -> int:
    """Mark ``prefix`` as holding this key layout over ``shards`` join shards, or fail if it
    holds another; return the number of shards its state is spread over.

    Under a prefix without ``P:layout`` it looks once for keys of the layouts before (one SCAN
    pass, stopping at the first hit) and sets ``P:layout`` if there are none. Layout 3 (16
    shards, no queues) reads as this one with every pending id past its check, and layout 4
    (due sets instead of wait queues) as it is: their marker is moved on in place, so that a
    worker of an earlier layout then fails fast at its start instead of leaving keys it does
    not know unswept.

    Raises
    ------
    JoinLayoutError
        ``P:layout`` names another version, or keys of a layout before exist; the message
        says what was found and how to drain or delete it.
    """
    marker = f"{prefix}:layout"
    found = await client.get(marker)  # first: a cluster client then knows its nodes
    fix = (
        "Either drain it with the streamproc version that wrote it (its worker, until no such "
        "key is left: pending predictions live up to join.prediction_ttl_s, tombstones "
        "join.dedupe_ttl_s), or delete the join state under the prefix, losing its pending "
        "joins and tombstones (add -a/--tls as your Redis needs): "
        + _delete_command(client, prefix)
    )
    if found is None:
        async for key in client.scan_iter(match=f"{_glob_escape(prefix)}:[plji]:*", count=1000):
            raise JoinLayoutError(
                f"Redis holds join state of an earlier key layout under prefix {prefix!r} "
                f"(e.g. {key.decode(errors='replace')!r}) and no {marker}; this version reads "
                f"only layout {LAYOUT.decode()} (keys {shard_tag(prefix, 0)}:i:<id> ...). {fix}"
            )
        await client.set(marker, layout_marker(shards), nx=True)
        found = await client.get(marker)
    if found == LAYOUT_3:
        await client.set(marker, layout_marker(CLUSTER_SHARDS))
        found = layout_marker(CLUSTER_SHARDS)
    elif found is not None and found.partition(b"/")[0] == LAYOUT_4:
        found = LAYOUT + found[len(LAYOUT_4) :]
        await client.set(marker, found)
    version, _, spread = (found or b"").partition(b"/")
    if version != LAYOUT or not spread.isdigit() or int(spread) < 1:
        raise JoinLayoutError(
            f"{marker} says Redis holds join state of key layout "
            f"{version.decode(errors='replace')!r} under prefix {prefix!r}; this version reads "
            f"only layout {LAYOUT.decode()}. {fix}"
        )
    return int(spread)


_RESULT: dict[int, JoinResult] = {0: "pending", 1: "duplicate", 2: "redelivered", 3: "late"}


class RedisJoin:
    """Joins predictions and labels by id through Redis, atomically and in pipelined batches.

    Parameters
    ----------
    client
        An asyncio Redis client (``decode_responses=False``), or an asyncio Redis Cluster
        client.
    prefix
        Key prefix; one per deployment (the config's ``redis.key_prefix``).
    prediction_ttl_s, label_ttl_s
        How long a prediction waits for its label, and a label for its prediction.
    dedupe_ttl_s
        How long a joined or expired id is remembered to recognise redeliveries.
    recheck_s
        When the sweep first looks at a pending id (at its deadline if that comes sooner): one
        still pending then moves to its queue's wait queue until its deadline.
    """

    def __init__(
        self,
        client: aioredis.Redis | AsyncRedisCluster,
        prefix: str,
        prediction_ttl_s: int = 7 * 24 * 3600,
        label_ttl_s: int = 3600,
        dedupe_ttl_s: int = 24 * 3600,
        recheck_s: int = RECHECK_S,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.prediction_ttl_s = prediction_ttl_s
        self.label_ttl_s = label_ttl_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.recheck_s = recheck_s
        self._ready = False
        self._arrive = client.register_script(_ARRIVE)
        self._sweep = client.register_script(_SWEEP)
        self._forget = client.register_script(_FORGET)
        # A cluster spreads the state over slots; a single Redis takes a batch in one call per
        # chunk (a call costs Redis ~20 µs on its own, as much as ten events).
        self._spread(CLUSTER_SHARDS if _is_cluster(client) else 1)

    def _spread(self, shards: int) -> None:
        self.shards = shards
        tags = [shard_tag(self.prefix, shard) for shard in range(shards)]
        self._tags = tags
        self._state_key = [f"{tag}:i:" for tag in tags]
        self._due = {side: [f"{tag}:due:{side}" for tag in tags] for side in "pl"}
        self._check = {side: [f"{tag}:check:{side}" for tag in tags] for side in "plx"}
        self._queued = {side: [f"{tag}:queued:{side}" for tag in tags] for side in "pl"}

    async def setup(self) -> None:
        """Check (once) that Redis holds this key layout under the prefix; see
        :func:`ensure_layout`, which raises :class:`JoinLayoutError` otherwise. On a cluster
        it also loads the scripts on every node (a cluster pipeline does not)."""
        if not self._ready:
            shards = await ensure_layout(self.client, self.prefix, self.shards)
            if shards != self.shards:  # e.g. layout 3's 16 on a single Redis
                self._spread(shards)
            if _is_cluster(self.client):
                await self._load_scripts()
            self._ready = True

    async def _load_scripts(self) -> None:
        cluster: AsyncRedisCluster = self.client  # type: ignore[assignment]
        for script in (self._arrive, self._sweep, self._forget):
            await cluster.execute_command(
                "SCRIPT LOAD", script.script, target_nodes=AsyncRedisCluster.ALL_NODES
            )

    async def _run(self, calls: list[tuple[object, list[str], list[object]]]) -> list[object]:
        """Run script calls ``(script, keys, args)`` pipelined; return their replies in order.

        A cluster node that does not know a script (a replica promoted after the scripts were
        loaded, a restarted node) answers NOSCRIPT without running it: the scripts are loaded
        on every node again and just those calls run again.
        """
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=keys, args=args, client=pipe)  # type: ignore[operator]
            replies = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing and _is_cluster(self.client):
            await self._load_scripts()
            again = await self._run([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _arrive_batch(
        self, side: str, other: str, ttl: int, items: Sequence[tuple[str, str, bytes]], now: float
    ) -> list[int | tuple[bytes, bytes] | list[bytes]]:
        await self.setup()
        by_shard: dict[int, list[int]] = {}
        for i, (pid, _, _) in enumerate(items):
            by_shard.setdefault(shard_of(pid, self.shards), []).append(i)
        # A check never later than the tombstone's end (dedupe_ttl_s): by the time a sweep
        # forgets this id's tombstone, its queue entry has been looked at (see expire).
        check = now + min(ttl, self.recheck_s, self.dedupe_ttl_s)
        forget = now + self.dedupe_ttl_s
        head: list[object] = [check, forget, side, other]
        mark = side.encode()
        calls: list[tuple[object, list[str], list[object]]] = []
        order: list[int] = []
        for shard, where in sorted(by_shard.items()):
            tag = self._tags[shard]
            fixed = [self._check[side][shard], f"{tag}:q:{side}:{now + ttl!r}"]
            fixed += [self._queued[side][shard], self._due[other][shard]]
            fixed += [self._queued[other][shard], *self._tombstone_keys(shard, forget)]
            state = self._state_key[shard]
            for start in range(0, len(where), CHUNK):
                part = where[start : start + CHUNK]
                ids = [items[i][0] for i in part]
                keys = fixed + [state + pid for pid in ids]
                # the script keeps a table of what it changed only when an id comes twice
                repeats = b"1" if len(set(ids)) < len(ids) else b"0"
                args = [*head, repeats]
                args += [b"%s%s|%s" % (mark, items[i][1].encode(), items[i][2]) for i in part]
                calls.append((self._arrive, keys, args))
                order += part
        results: list[int | bytes | list[bytes]] = [0] * len(items)
        # Bounded round trips: a consumed batch can hold 10^5 events, and one pipeline of
        # them all could outlast the client's socket timeout while Redis works through it.
        got: list[int | bytes | list[bytes]] = []
        step = CHUNKS_PER_ROUND_TRIP
        for first in range(0, len(calls), step):
            for chunk in await self._run(calls[first : first + step]):
                got.extend(chunk)  # type: ignore[arg-type]
        for i, reply in zip(order, got, strict=True):
            results[i] = reply
        # A joined reply is the other side's stored "<side><origin>|<blob>": keep the origin
        # and the blob. A redelivery of the completing half gets [<origin>, <blob>] (a list).
        return [tuple(r[1:].split(b"|", 1)) if isinstance(r, bytes) else r for r in results]

    async def add_predictions(
        self, items: Sequence[tuple[str, str, JoinRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]:
        """Record predictions; return each one's result and the joins they completed.

        ``items`` are ``(prediction_id, origin, record)``; the origin names the message
        (``"partition:offset:index"``) so that a redelivery of the same message is told apart
        from a different message repeating the id. A redelivery of the prediction that completed
        a join is ``redelivered`` and its join comes again, marked ``again``.
        """
        now = time.time() if now is None else now
        blobs = [(pid, origin, encode_prediction(rec)) for pid, origin, rec in items]
        raw = await self._arrive_batch("p", "l", self.prediction_ttl_s, blobs, now)
        results: list[JoinResult] = []
        joined: list[Joined] = []
        for (_, origin, rec), r in zip(items, raw, strict=True):
            if isinstance(r, int):
                results.append(_RESULT[r])
                continue
            label_origin, blob = r
            again = isinstance(r, list)
            results.append("redelivered" if again else "joined")
            label = decode_label(blob)
            joined.append(Joined(rec, label, f"l{label_origin.decode()}", again, origin))
        return results, joined

    async def add_labels(
        self, items: Sequence[tuple[str, str, LabelRecord]], now: float | None = None
    ) -> tuple[list[JoinResult], list[Joined]]:
        """Record labels; return each one's result and the joins they completed (a redelivery
        of the label that completed a join is ``redelivered``, its join comes again)."""
        now = time.time() if now is None else now
        blobs = [(pid, origin, encode_label(rec)) for pid, origin, rec in items]
        raw = await self._arrive_batch("l", "p", self.label_ttl_s, blobs, now)
        results: list[JoinResult] = []
        joined: list[Joined] = []
        for (_, origin, rec), r in zip(items, raw, strict=True):
            if isinstance(r, int):
                results.append(_RESULT[r])
                continue
            again = isinstance(r, list)
            results.append("redelivered" if again else "joined")
            joined.append(Joined(decode_prediction(r[1]), rec, f"l{origin}", again, origin))
        return results, joined

    async def expire(
        self, now: float | None = None, limit: int = SWEEP_LIMIT, rounds: int = SWEEP_ROUNDS
    ) -> Expired:
        """Move everything past its deadline to EXPIRED, and forget the tombstones past
        ``dedupe_ttl_s``; each id is reported by one caller only.

        Each (side, shard) looks at up to ``limit`` queued or due ids per script call, and is
        called again while it used its whole limit, up to ``rounds`` calls: what is left waits
        for the next sweep. A shard's tombstones are forgotten only once both its sides are
        swept up to ``now``, so that no queue still names an id whose key is gone (a check time
        is never past the tombstone's end: see ``_arrive_batch``).
        """
        now = time.time() if now is None else now
        await self.setup()
        forget = now + self.dedupe_ttl_s
        blobs: dict[str, list[bytes]] = {"p": [], "l": []}
        todo = [(side, shard) for side in "pl" for shard in range(self.shards)]
        for _ in range(rounds):
            replies = await self._run([self._sweep_call(*w, now, limit, forget) for w in todo])
            more = []
            for (side, shard), (looked, *expired) in zip(todo, replies, strict=True):
                blobs[side] += expired
                if looked >= limit:
                    more.append((side, shard))
            todo = more
            if not todo:
                break
        behind = {shard for _, shard in todo}
        todo = [("x", shard) for shard in range(self.shards) if shard not in behind]
        for _ in range(rounds):
            if not todo:
                break
            replies = await self._run([self._sweep_call(*w, now, limit, forget) for w in todo])
            todo = [w for w, looked in zip(todo, replies, strict=True) if looked >= limit]
        return Expired([decode_prediction(b) for b in blobs["p"]], len(blobs["l"]))

    def _sweep_call(
        self, side: str, shard: int, now: float, limit: int, forget: float
    ) -> tuple[object, list[str], list[object]]:
        if side == "x":
            return self._forget, [self._check["x"][shard]], [now, limit]
        keys = [self._check[side][shard], self._due[side][shard], self._queued[side][shard]]
        keys += self._tombstone_keys(shard, forget)
        return self._sweep, keys, [side, now, limit, forget]

    def _tombstone_keys(self, shard: int, forget: float) -> list[str]:
        """The shard's check set of tombstone queues, and the queue of those forgotten at
        ``forget``."""
        return [self._check["x"][shard], f"{self._tags[shard]}:q:x:{forget!r}"]

    async def pending(self) -> tuple[int, int]:
        """How many predictions and labels are waiting (for metrics)."""
        await self.setup()
        async with self.client.pipeline(transaction=False) as pipe:
            for side in "pl":
                for shard in range(self.shards):
                    pipe.zcard(self._due[side][shard])
                    pipe.get(self._queued[side][shard])
            counts = await pipe.execute()
        half = len(counts) // 2  # predictions' due sets and counters, then the labels'
        return sum(int(c or 0) for c in counts[:half]), sum(int(c or 0) for c in counts[half:])
