"""Redis clients from the configuration: a single Redis or a Redis Cluster, asyncio or blocking.

Every module that talks to Redis gets its client here, so that ``redis.cluster`` (or a
``redis+cluster://`` URL) switches all of them. On a cluster, redis-py's cluster client routes
each command by its key's slot, follows ``MOVED``/``ASK`` redirections, and rediscovers the
slot map after a failover. Transactions (``WATCH``/``MULTI``) work on a cluster when their keys
share a slot: every key but the join's carries the hash tag ``{key_prefix}``
(:attr:`streamproc.config.RedisConfig.prefix`).

A cluster URL may name several nodes, ``redis+cluster://a:7000,b:7000,c:7000``: the client
starts from whichever answers, so a worker starts while one of them is down.

>>> from streamproc.config import RedisConfig
>>> plain_url(RedisConfig(url="rediss+cluster://redis-0.internal:7000"))
'rediss://redis-0.internal:7000'
>>> cluster_seeds(RedisConfig(url="redis+cluster://:pw@a:7000,b:7001,c/0"))
('redis://:pw@a:7000/0', [('b', 7001), ('c', 6379)])
"""

from __future__ import annotations

from typing import Any, TypeAlias

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode

from streamproc.config import RedisConfig

AsyncClient: TypeAlias = aioredis.Redis | AsyncRedisCluster
SyncClient: TypeAlias = redis.Redis | redis.RedisCluster


def plain_url(cfg: RedisConfig) -> str:
    """The URL without ``+cluster`` (what redis-py parses)."""
    scheme, sep, rest = cfg.url.partition("://")
    return f"{scheme.removesuffix('+cluster')}{sep}{rest}"


def cluster_seeds(cfg: RedisConfig) -> tuple[str, list[tuple[str, int]]]:
    """The URL of the first node a cluster URL names, and the ``(host, port)`` of the others."""
    scheme, sep, rest = plain_url(cfg).partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    first, *others = hosts.split(",")
    seeds = []
    for node in others:
        host, _, port = node.rpartition(":") if ":" in node else (node, "", "6379")
        seeds.append((host, int(port)))
    return f"{scheme}{sep}{userinfo}{at}{first}{slash}{tail}", seeds


def _cluster_kwargs(cfg: RedisConfig, node: type[Any]) -> tuple[str, dict[str, Any]]:
    url, seeds = cluster_seeds(cfg)
    kwargs: dict[str, Any] = {"password": cfg.password}
    if seeds:
        kwargs["startup_nodes"] = [node(host, port) for host, port in seeds]
    return url, kwargs


def async_client(cfg: RedisConfig, *, large_values: bool = False) -> AsyncClient:
    """An asyncio client of ``cfg``'s Redis (or Redis Cluster).

    ``large_values``: the client writes values of many MB (a wide model's source checkpoint is
    tens of MB). hiredis's packer copies a whole command into one buffer, on the event loop, and
    that copy alone stalled the loop for up to a second; redis-py's Python packer passes a large
    value through as it is, but packs an ordinary command at a fraction of hiredis's speed (a
    join call of 500 events: ~900 µs against ~120). So each command goes to the packer that
    suits it (:class:`SizeAwarePacker`). hiredis parses the replies either way. redis-py's
    cluster client builds its connections itself, so on a cluster the option has no effect.
    """
    if cfg.is_cluster:
        url, kwargs = _cluster_kwargs(cfg, AsyncClusterNode)
        return AsyncRedisCluster.from_url(url, **kwargs)
    client = aioredis.Redis.from_url(plain_url(cfg), password=cfg.password)  # aclose() closes it
    if large_values:
        pool = client.connection_pool
        pool.connection_class = _size_aware(pool.connection_class)
    return client


def sync_client(cfg: RedisConfig) -> SyncClient:
    """A blocking client of ``cfg``'s Redis (or Redis Cluster), for the command-line tools."""
    if cfg.is_cluster:
        url, kwargs = _cluster_kwargs(cfg, ClusterNode)
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(plain_url(cfg), password=cfg.password)


LARGE_COMMAND = 256 * 1024
"""Bytes of arguments from which a command is packed by redis-py's Python packer."""


class SizeAwarePacker:
    """Packs a command with hiredis, or with ``fallback`` (redis-py's Python packer) when its
    arguments hold more than :data:`LARGE_COMMAND` bytes or a type hiredis does not take
    (``memoryview``, ``bytearray``; redis-py's packer encodes them, or says what is wrong).

    >>> from redis.asyncio.connection import Connection
    >>> conn = Connection()
    >>> packer = SizeAwarePacker(conn._pack_command_python)
    >>> packer.pack("SET", "k", 1.5)
    [b'*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$3\\r\\n1.5\\r\\n']
    >>> big = b"x" * (LARGE_COMMAND + 1)
    >>> any(chunk is big for chunk in packer.pack("SET", "k", big))
    True
    """

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def pack(self, *args: Any) -> list[bytes]:
        size = 0
        for arg in args:
            kind = type(arg)
            if kind is bytes or kind is str:
                size += len(arg)
            elif kind is not int and kind is not float:
                return self._fallback(*args)  # type: ignore[no-any-return]
        if size > LARGE_COMMAND:
            return self._fallback(*args)  # type: ignore[no-any-return]
        # As redis-py does: a first argument "CLIENT SETNAME" is two words of the command.
        head = args[0]
        if isinstance(head, str):
            args = (*head.encode().split(), *args[1:])
        elif b" " in head:
            args = (*head.split(), *args[1:])
        return [hiredis.pack_command(args)]


def _size_aware(cls: type[Any]) -> type[Any]:
    class SizeAware(cls):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._command_packer = SizeAwarePacker(self._pack_command_python)

    SizeAware.__name__ = SizeAware.__qualname__ = f"SizeAware{cls.__name__}"
    return SizeAware
