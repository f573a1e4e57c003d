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

    P:p:<id>            pending prediction: a JoinRecord blob (versioned msgpack, never pickle)
    P:l:<id>            pending label: a LabelRecord blob
    P:j:<id>            tombstone of a joined or expired id: "<prediction origin>/<label origin>"
    P:due:p:<shard>     sorted set id -> deadline (Unix seconds) of pending predictions
    P:due:l:<shard>     the same for pending labels

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


# ARGV: prefix, now, deadline, key ttl, dedupe ttl, own side, other side, then
# (id, shard, origin, blob) quadruples. A stored value is "<origin>|<blob>"; a tombstone holds
# "<prediction origin>/<label origin>" (one side empty after an expiry). Returns, per id:
# 0 = pending, 1 = duplicate (another message carried the same id), 2 = redelivery (this very
# message again, e.g. after a restart), 3 = late (the other half already expired), or the other
# side's stored value when this arrival completed the join.
_ARRIVE = """
local prefix, now = ARGV[1], tonumber(ARGV[2])
local deadline, ttl, dedupe = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local mine, other = ARGV[6], ARGV[7]
local function origin_of(value)
  if not value then return nil end
  local bar = string.find(value, '|', 1, true)
  if bar then return string.sub(value, 1, bar - 1) end
  return value
end
local out = {}
for i = 8, #ARGV, 4 do
  local id, shard, origin, blob = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local tomb = prefix .. ':j:' .. id
  local own = prefix .. ':' .. mine .. ':' .. id
  local seen = redis.call('GET', tomb)
  if seen then
    local slash = string.find(seen, '/', 1, true)
    if mine == 'p' then
      seen = string.sub(seen, 1, slash - 1)
    else
      seen = string.sub(seen, slash + 1)
    end
    if seen == '' then seen = 'late' end
  else
    seen = origin_of(redis.call('GET', own))
  end
  if seen then
    if seen == origin then
      out[#out + 1] = 2
    elseif seen == 'late' then
      out[#out + 1] = 3
    else
      out[#out + 1] = 1
    end
  else
    local found = redis.call('GETDEL', prefix .. ':' .. other .. ':' .. id)
    if found then
      redis.call('ZREM', prefix .. ':due:' .. other .. ':' .. shard, id)
      local theirs = origin_of(found)
      local both = origin .. '/' .. theirs
      if mine == 'l' then both = theirs .. '/' .. origin end
      redis.call('SET', tomb, both, 'EX', dedupe)
      out[#out + 1] = found
    else
      redis.call('SET', own, origin .. '|' .. blob, 'EX', ttl)
      redis.call('ZADD', prefix .. ':due:' .. mine .. ':' .. shard, deadline, id)
      out[#out + 1] = 0
    end
  end
end
return out
"""

# ARGV: prefix, side, shard, now, limit, dedupe_ttl. Pops due ids, returns their blobs.
_SWEEP = """
local prefix, side, shard = ARGV[1], ARGV[2], ARGV[3]
local now, limit, dedupe = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local due = prefix .. ':due:' .. side .. ':' .. shard
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', due, id)
  local value = redis.call('GETDEL', prefix .. ':' .. side .. ':' .. id)
  if value then
    local bar = string.find(value, '|', 1, true)
    local origin = string.sub(value, 1, bar - 1)
    local both = origin .. '/'
    if side == 'l' then both = '/' .. origin end
    redis.call('SET', prefix .. ':j:' .. id, both, 'EX', dedupe)
    out[#out + 1] = string.sub(value, bar + 1)
  end
end
return out
"""


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
        self._arrive = client.register_script(_ARRIVE)
        self._sweep = client.register_script(_SWEEP)

    async def _arrive_batch(
        self, side: str, other: str, ttl: int, items: Sequence[tuple[str, str, bytes]], now: float
    ) -> list[int | tuple[bytes, bytes]]:
        results: list[int | bytes] = []
        deadline = now + ttl
        head = [self.prefix, now, deadline, ttl + GRACE_S, max(self.dedupe_ttl_s, 1), side, other]
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
                    args = [self.prefix, side, shard, now, limit, max(self.dedupe_ttl_s, 1)]
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
