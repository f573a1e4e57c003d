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


def async_client(cfg: RedisConfig, *, python_packed: bool = False) -> AsyncClient:
    """An asyncio client of ``cfg``'s Redis (or Redis Cluster).

    ``python_packed`` packs commands with redis-py's Python packer, which passes a large value
    through as it is, where hiredis's copies the whole command into one buffer, on the event
    loop: a wide model's source checkpoint is tens of MB, and that copy alone stalled the loop
    for up to a second. (hiredis still parses the replies.) redis-py's cluster client builds its
    connections itself, so on a cluster the option has no effect.
    """
    if cfg.is_cluster:
        url, kwargs = _cluster_kwargs(cfg, AsyncClusterNode)
        return AsyncRedisCluster.from_url(url, **kwargs)
    client = aioredis.Redis.from_url(plain_url(cfg), password=cfg.password)  # aclose() closes it
    if python_packed:
        pool = client.connection_pool
        pool.connection_class = _python_packed(pool.connection_class)
    return client


def sync_client(cfg: RedisConfig) -> SyncClient:
    """A blocking client of ``cfg``'s Redis (or Redis Cluster), for the command-line tools."""
    if cfg.is_cluster:
        url, kwargs = _cluster_kwargs(cfg, ClusterNode)
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(plain_url(cfg), password=cfg.password)


def _python_packed(cls: type[Any]) -> type[Any]:
    class PythonPacked(cls):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._command_packer = None  # redis-py then packs with _pack_command_python

    PythonPacked.__name__ = PythonPacked.__qualname__ = f"PythonPacked{cls.__name__}"
    return PythonPacked
