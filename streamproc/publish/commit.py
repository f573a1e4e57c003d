"""The commit orders of the two stages, as numbered steps, in one place.

Both stages consume with Faust's ``take_events``, which acknowledges a batch (lets its offsets
be committed) only when the loop body returns; so whatever a batch changed is persisted and
published *before* the body returns. A crash anywhere before that re-reads the batch.

Aggregation (an agent on ``predictions`` or ``labels``; :mod:`streamproc.publish.sources`)

1. decode, dead-letter and join the batch (:class:`~streamproc.ingest.ingestor.Ingestor`);
2. fold it into the sources' open partials, skipping what a source's checkpoint already
   holds (its ``last_offset``), and take the ticks that became complete;
3. produce those partials (each to its model's partition of ``<app_id>-partials``), then each
   moved source's progress (to every partition), and the batch's dead letters;
4. wait for Kafka to acknowledge every record (:meth:`OutputProducer.flush`);
5. write each changed source's checkpoint to Redis (:func:`checkpoint_sources`), fenced by the
   sources' owner epochs (:func:`take_ownership`; a source another worker restored since is
   refused and forgotten);
6. return: the batch may be committed.

A crash between 4 and 5 re-folds the batch from the previous checkpoint and sends the same
complete ticks and windows again; the judge keeps the first copy of each (of each part) and
drops the other.

Judging (the agent on ``<app_id>-partials``; :mod:`streamproc.publish.judging`)

1. hand each message above its partition's applied offset to its model's judge (progress
   messages to the partition's view of the sources), then close what the sources' progress
   allows;
2. drop the alerts whose ids are already recorded as published (a restart re-derives them);
3. in one Redis transaction (:func:`persist_judgement`): every touched judge's checkpoint, each
   partition's state (sources' progress, applied offset, models, quarantine), the reference
   timelines that changed (a baseline decided, a warm-up built: the aggregation stage bins
   with them), the alert ids about to be published, messages parked for quarantined models,
   and an *outbox* of every record to publish; fenced by the partitions' owner epochs (a
   partition another worker loaded since is refused, forgotten and not published);
4. publish the outbox and wait for Kafka's acknowledgement (:func:`publish_outbox`);
5. delete the outbox;
6. return: the batch may be committed.

A restart first publishes an outbox left behind (step 4 again), so records are neither lost nor
derived twice; a crash between 4 and 5 publishes that batch's records once more, with the same
content-derived alert ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis.exceptions

from streamproc.kafka.producer import OutputProducer
from streamproc.publish.keys import Keys

ALERT_MEMORY_S = 30 * 24 * 3600
Record = tuple[str, bytes | None, bytes]  # topic, key, value
_OUTBOX = msgspec.msgpack.Encoder()
_OUTBOX_DEC = msgspec.msgpack.Decoder(list[tuple[str, bytes | None, bytes]])


class Fenced(Exception):
    """Another worker loaded some of this stage's state since this one did: the write was
    refused, and ``lost`` names the owner keys (:meth:`Keys.owner`) whose state is no longer
    this worker's."""

    def __init__(self, lost: Sequence[str]) -> None:
        super().__init__(f"state taken over by another worker: {', '.join(lost)}")
        self.lost = list(lost)


async def take_ownership(client: Any, keys: Keys, state: str) -> int:
    """Before loading ``state`` (``judgepart:<k>``, ``agg:<source>``): move its owner epoch on,
    so that every earlier holder's next write is refused (:class:`Fenced`)."""
    return int(await client.incr(keys.owner(state)))


async def _fenced_transaction(
    client: Any, fence: Mapping[str, int], write: Callable[[Any], None]
) -> None:
    """``write`` queued on one MULTI/EXEC that runs only while every owner key in ``fence``
    still holds the epoch this worker took (WATCH; a takeover in between aborts it)."""
    owners = sorted(fence)
    while True:
        async with client.pipeline(transaction=True) as pipe:
            try:
                if owners:
                    await pipe.watch(*owners)
                    # one GET each: a cluster pipeline refuses MGET (owners are few)
                    held = [await pipe.get(o) for o in owners]
                    lost = [
                        o
                        for o, v in zip(owners, held, strict=True)
                        if v is None or int(v) != fence[o]
                    ]
                    if lost:
                        raise Fenced(lost)
                    pipe.multi()
                write(pipe)
                await pipe.execute()
                return
            except redis.exceptions.WatchError:
                continue  # an owner key moved: the next round says which


async def checkpoint_sources(
    client: Any,
    keys: Keys,
    changes: Mapping[str, tuple[dict[str, bytes], list[str]]],
    fence: Mapping[str, int] | None = None,
) -> None:
    """Aggregation step 5: each source's changed fields set, its completed ticks deleted; only
    while this worker still owns them (``fence``: owner key -> epoch, else :class:`Fenced`)."""
    if not changes:
        return

    def write(pipe: Any) -> None:
        for source, (fields, gone) in sorted(changes.items()):
            key = keys.source(source)
            if fields:
                pipe.hset(key, mapping=fields)
            if gone:
                pipe.hdel(key, *gone)

    await _fenced_transaction(client, fence or {}, write)


async def persist_judgement(
    client: Any,
    keys: Keys,
    judges: Mapping[str, tuple[bytes, Mapping[str, bytes], Sequence[str]]],
    partitions: Mapping[int, bytes],
    outbox: Mapping[int, Sequence[Record]],
    alert_ids: Sequence[str],
    timelines: Mapping[str, bytes],
    parked: Mapping[str, Sequence[bytes]],
    unparked: Sequence[str],
    fence: Mapping[str, int] | None = None,
) -> None:
    """Judging step 3: everything the batch changed, in one transaction, only while this worker
    still owns the partitions (``fence``: owner key -> epoch, else :class:`Fenced`). A judge is
    its blob, its new pending cells and the names of its closed ones (``checkpoint.split``)."""

    def write(pipe: Any) -> None:
        for alert_id in alert_ids:
            pipe.set(keys.alert(alert_id), b"1", ex=ALERT_MEMORY_S)
        for model, (blob, added, gone) in sorted(judges.items()):
            pipe.set(keys.judge(model), blob)
            if gone:
                pipe.hdel(keys.judge_cells(model), *gone)
            if added:
                pipe.hset(keys.judge_cells(model), mapping=dict(added))
        for k, blob in sorted(partitions.items()):
            pipe.set(keys.partition(k), blob)
        for k, records in sorted(outbox.items()):
            if records:
                pipe.set(keys.outbox(k), _OUTBOX.encode(list(records)))
        for model, blob in sorted(timelines.items()):
            pipe.set(keys.timeline(model), blob)
        if timelines:
            pipe.incr(keys.timeline_changes)
        for model in unparked:
            pipe.delete(keys.parked(model))
        for model, blobs in sorted(parked.items()):
            if blobs:
                pipe.rpush(keys.parked(model), *blobs)

    await _fenced_transaction(client, fence or {}, write)


async def published_before(client: Any, keys: Keys, alert_ids: Sequence[str]) -> set[str]:
    """Judging step 2: which of ``alert_ids`` a previous commit recorded as published."""
    if not alert_ids:
        return set()
    seen = await client.mget([keys.alert(a) for a in alert_ids])
    return {a for a, s in zip(alert_ids, seen, strict=True) if s is not None}


async def publish_outbox(
    client: Any, keys: Keys, output: OutputProducer, outbox: Mapping[int, Sequence[Record]]
) -> None:
    """Judging steps 4 and 5: send, wait for Kafka, then forget the outbox."""
    if not any(outbox.values()):
        return
    for records in outbox.values():
        for topic, key, value in records:
            output.produce(topic, value, key)
    await output.flush()
    await client.delete(*[keys.outbox(k) for k in outbox])


async def owed_outbox(client: Any, keys: Keys, k: int) -> list[Record]:
    """What a previous commit of partition ``k`` persisted but may not have published."""
    blob = await client.get(keys.outbox(k))
    return list(_OUTBOX_DEC.decode(blob)) if blob else []
