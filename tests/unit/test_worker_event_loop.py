"""``worker.event_loop`` decides the loop class of every loop the worker's threads create."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
import uvloop
from redis.asyncio.connection import Connection, SSLConnection

from streamproc.config import load_config
from streamproc.errors import ConfigError
from streamproc.worker.app import redis_client, use_event_loop


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def _loop_class_of_a_new_loop() -> type:
    loop = asyncio.new_event_loop()
    try:
        return type(loop)
    finally:
        loop.close()


def test_uvloop_setting_makes_new_loops_uvloop_loops() -> None:
    use_event_loop("uvloop")
    assert issubclass(_loop_class_of_a_new_loop(), uvloop.Loop)


def test_asyncio_setting_puts_back_the_standard_loop_after_uvloop() -> None:
    use_event_loop("uvloop")
    use_event_loop("asyncio")
    cls = _loop_class_of_a_new_loop()
    assert not issubclass(cls, uvloop.Loop)
    assert issubclass(cls, asyncio.BaseEventLoop)


def test_uvloop_setting_without_uvloop_installed_names_the_key_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    with pytest.raises(ConfigError, match=r"worker\.event_loop.*STREAMPROC_WORKER_EVENT_LOOP"):
        use_event_loop("uvloop")


def test_event_loop_defaults_to_uvloop_and_rejects_unknown_loops() -> None:
    assert load_config(env={}).worker.event_loop == "uvloop"
    assert load_config(env={"STREAMPROC_WORKER_EVENT_LOOP": "asyncio"}).worker.event_loop == (
        "asyncio"
    )
    with pytest.raises(ConfigError, match=r"worker\.event_loop"):
        load_config(env={"STREAMPROC_WORKER_EVENT_LOOP": "trio"})


@pytest.mark.parametrize(
    ("url", "base"),
    [("redis://127.0.0.1:6379/0", Connection), ("rediss://127.0.0.1:6380/0", SSLConnection)],
)
def test_the_stages_redis_client_sends_a_large_value_without_copying_it(
    url: str, base: type
) -> None:
    """Packing a command must not copy a tens-of-MB checkpoint on the event loop (hiredis's
    packer does); TLS URLs keep their TLS connections."""
    conn = redis_client(load_config(env={"STREAMPROC_REDIS_URL": url})).connection_pool
    made = conn.make_connection()
    assert isinstance(made, base)
    big = b"x" * 1_000_000
    packed = made.pack_commands([("HSET", "k", "f", big), ("SET", "a", "b")])
    assert any(chunk is big for chunk in packed)
    assert b"".join(packed).endswith(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\nb\r\n")


def test_the_stages_redis_client_packs_ordinary_commands_with_hiredis_as_redis_py_would() -> None:
    """A join call of hundreds of small arguments is packed by hiredis, in one buffer, to the
    very bytes redis-py's Python packer makes; what hiredis does not take goes to the latter."""
    client = redis_client(load_config(env={"STREAMPROC_REDIS_URL": "redis://h:1/0"}))
    made = client.connection_pool.make_connection()
    keys = [f"{{p:j0}}:i:pred-{i:07d}" for i in range(500)]
    values = [b"p3:120:%d|" % i + bytes(range(90)) for i in range(500)]
    join_call = ("EVALSHA", "f" * 40, 500, *keys, 3600, 1.5, "é", *values)
    commands = [join_call, ("CLIENT SETNAME", "w"), ("SET", "k", bytearray(b"v"))]
    packed = made.pack_commands(commands)
    python = made._pack_command_python
    assert b"".join(packed) == b"".join(b"".join(python(*c)) for c in commands)
    assert len(made.pack_command(*join_call)) == 1  # Python's packer cuts it every 6,000 bytes
    assert len(python(*join_call)) > 1
