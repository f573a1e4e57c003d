"""Work too heavy for the event loop, run in the worker's one offload thread.

One thread, not ``asyncio.to_thread``'s pool: the stages (predictions, labels, judge) offload
at the same time, and several CPU-bound threads starve the event loop of the GIL (each time the
loop gives it up for I/O it waits behind all of them), so ``/metrics`` and Faust's timers go
slow. Python code does not run in parallel under the GIL anyway; one thread loses nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamproc-offload")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the offload thread, with the caller's context variables.

    >>> asyncio.run(off_loop(sum, [1, 2, 3]))
    6
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(_EXECUTOR, functools.partial(ctx.run, fn, *args))
