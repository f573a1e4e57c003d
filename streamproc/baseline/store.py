"""Reference profiles in Redis: :class:`BaselineStore`, :class:`AsyncBaselineStore`, the keys.

``{prefix}:baseline:{model_id}:{model_version}`` holds a profile's bytes
(:meth:`~streamproc.baseline.ReferenceProfile.to_bytes`), ``{prefix}:baselines`` (a hash) maps
each model to its latest stored version, and ``{prefix}:baselines:{model_id}`` (a set) holds all
its versions. ``{prefix}:baselines:{model_id}:stamps`` (a hash) maps each stored version to a
digest of its profile, and ``{prefix}:baselines:changes`` counts every put and delete: a running
worker reads those two to notice, cheaply, that a baseline was created, replaced or deleted.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from streamproc.baseline.profile import ReferenceProfile
from streamproc.errors import StateEncodingError

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncBaselineStore", "BaselineStore"]


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.index = f"{prefix}:baselines"

    def profile(self, model_id: str, model_version: str) -> str:
        return f"{self.prefix}:baseline:{model_id}:{model_version}"

    def versions(self, model_id: str) -> str:
        return f"{self.prefix}:baselines:{model_id}"

    def stamps(self, model_id: str) -> str:
        return f"{self.prefix}:baselines:{model_id}:stamps"

    @property
    def changes(self) -> str:
        return f"{self.prefix}:baselines:changes"


def stamp_of(blob: bytes) -> str:
    """A stored profile's identity: a digest of its bytes."""
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _profile(blob: bytes | str | None) -> ReferenceProfile | None:
    if blob is None:
        return None
    if isinstance(blob, str):
        raise StateEncodingError("baseline read back as text: use a Redis client without decode")
    return ReferenceProfile.from_bytes(blob)


class BaselineStore:
    """Reference profiles in Redis (sync client).

    ``{prefix}:baseline:{model_id}:{model_version}`` holds a profile's bytes,
    ``{prefix}:baselines`` (a hash) maps each model to its latest stored version, and
    ``{prefix}:baselines:{model_id}`` (a set) holds all its versions. A put writes all three in
    one transaction.

    Parameters
    ----------
    client
        A ``redis.Redis`` returning bytes (``decode_responses`` off).
    prefix
        The key prefix (``redis.key_prefix`` of the configuration).
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = _Keys(prefix)

    def put(self, profile: ReferenceProfile) -> str:
        """Store ``profile`` and make it its model's latest version; return its key."""
        key = self.keys.profile(profile.model_id, profile.model_version)
        blob = profile.to_bytes()
        pipe = self.client.pipeline(transaction=True)
        pipe.set(key, blob)
        pipe.hset(self.keys.index, profile.model_id, profile.model_version)
        pipe.sadd(self.keys.versions(profile.model_id), profile.model_version)
        pipe.hset(self.keys.stamps(profile.model_id), profile.model_version, stamp_of(blob))
        pipe.incr(self.keys.changes)
        pipe.execute()
        return key

    def delete(self, model_id: str, model_version: str) -> bool:
        """Delete a stored version; ``False`` when there was none. The model's latest version
        becomes the highest one left."""
        if not self.client.exists(self.keys.profile(model_id, model_version)):
            return False
        left = sorted(set(self.versions(model_id)) - {model_version})
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.profile(model_id, model_version))
        pipe.srem(self.keys.versions(model_id), model_version)
        pipe.hdel(self.keys.stamps(model_id), model_version)
        if left:
            pipe.hset(self.keys.index, model_id, left[-1])
        else:
            pipe.hdel(self.keys.index, model_id)
        pipe.incr(self.keys.changes)
        pipe.execute()
        return True

    def get(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        """The stored profile of that version, or ``None``."""
        return _profile(self.client.get(self.keys.profile(model_id, model_version)))

    def latest_version(self, model_id: str) -> str | None:
        """The version stored last for ``model_id``, or ``None``."""
        return _text(self.client.hget(self.keys.index, model_id))

    def latest(self, model_id: str) -> ReferenceProfile | None:
        """The profile stored last for ``model_id``, or ``None``."""
        version = self.latest_version(model_id)
        return None if version is None else self.get(model_id, version)

    def versions(self, model_id: str) -> list[str]:
        """Every stored version of ``model_id``, sorted."""
        return sorted(_text(v) or "" for v in self.client.smembers(self.keys.versions(model_id)))

    def all_versions(self, model_id: str) -> list[ReferenceProfile]:
        """The profiles of every stored version of ``model_id``, by version."""
        versions = self.versions(model_id)
        if not versions:
            return []
        blobs = self.client.mget([self.keys.profile(model_id, v) for v in versions])
        return [p for p in map(_profile, blobs) if p is not None]

    def models(self) -> dict[str, str]:
        """Model -> latest version, for every model with a stored baseline."""
        raw = self.client.hgetall(self.keys.index)
        return {_text(k) or "": _text(v) or "" for k, v in raw.items()}


class AsyncBaselineStore:
    """:class:`BaselineStore` for ``redis.asyncio.Redis`` (the worker's event loop)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.keys = _Keys(prefix)

    async def put(self, profile: ReferenceProfile) -> str:
        """Store ``profile`` and make it its model's latest version; return its key."""
        key = self.keys.profile(profile.model_id, profile.model_version)
        blob = profile.to_bytes()
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, blob)
            pipe.hset(self.keys.index, profile.model_id, profile.model_version)
            pipe.sadd(self.keys.versions(profile.model_id), profile.model_version)
            pipe.hset(self.keys.stamps(profile.model_id), profile.model_version, stamp_of(blob))
            pipe.incr(self.keys.changes)
            await pipe.execute()
        return key

    async def entries(self, model_id: str) -> dict[str, tuple[str, ReferenceProfile]]:
        """Version -> (digest, profile) of every stored version of ``model_id``."""
        versions = await self.versions(model_id)
        if not versions:
            return {}
        blobs = await self.client.mget([self.keys.profile(model_id, v) for v in versions])
        out = {}
        for version, blob in zip(versions, blobs, strict=True):
            profile = _profile(blob)
            if profile is not None:
                out[version] = (stamp_of(blob), profile)
        return out

    async def stamps(self, model_id: str) -> dict[str, str]:
        """Version -> digest of every stored profile of ``model_id``."""
        raw = await self.client.hgetall(self.keys.stamps(model_id))
        return {_text(k) or "": _text(v) or "" for k, v in raw.items()}

    async def generation(self) -> int:
        """How many puts and deletes the store has seen (moves with every change)."""
        return int(await self.client.get(self.keys.changes) or 0)

    async def get(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        """The stored profile of that version, or ``None``."""
        return _profile(await self.client.get(self.keys.profile(model_id, model_version)))

    async def latest_version(self, model_id: str) -> str | None:
        """The version stored last for ``model_id``, or ``None``."""
        return _text(await self.client.hget(self.keys.index, model_id))

    async def latest(self, model_id: str) -> ReferenceProfile | None:
        """The profile stored last for ``model_id``, or ``None``."""
        version = await self.latest_version(model_id)
        return None if version is None else await self.get(model_id, version)

    async def versions(self, model_id: str) -> list[str]:
        """Every stored version of ``model_id``, sorted."""
        members = await self.client.smembers(self.keys.versions(model_id))
        return sorted(_text(v) or "" for v in members)

    async def all_versions(self, model_id: str) -> list[ReferenceProfile]:
        """The profiles of every stored version of ``model_id``, by version."""
        versions = await self.versions(model_id)
        if not versions:
            return []
        blobs = await self.client.mget([self.keys.profile(model_id, v) for v in versions])
        return [p for p in map(_profile, blobs) if p is not None]
