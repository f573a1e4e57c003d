"""The worker gives the heap's free pages back to the OS after work (glibc's malloc_trim)."""

from __future__ import annotations

import pytest

from streamproc.worker import memory
from streamproc.worker.memory import HeapTrimmer, resident_bytes

MB = 1 << 20


def test_a_trim_after_work_gives_back_the_pages_of_objects_freed_among_live_ones() -> None:
    trimmer = HeapTrimmer()
    if not trimmer.available or resident_bytes() is None:
        pytest.skip("no malloc_trim or /proc here (glibc on Linux only)")
    # 200 MB of objects over pymalloc's 512-byte limit (malloc's own), one in 32 kept alive: the
    # holes between the survivors are free to malloc but not to the OS, as after a backlog.
    objects = [bytes(1024) + i.to_bytes(4, "little") for i in range(200_000)]
    kept = objects[::32]
    del objects
    held = resident_bytes()
    trimmer.worked()
    released = trimmer.trim_if_worked()
    assert released is not None and released > 100 * MB, (held, released)
    assert resident_bytes() < held - 100 * MB  # type: ignore[operator]
    assert trimmer.trims == 1
    del kept  # alive until here: the holes stayed holes


def test_nothing_is_trimmed_without_work_since_the_last_trim() -> None:
    calls: list[int] = []
    trimmer = HeapTrimmer(trim=lambda pad: calls.append(pad) or 1)
    assert trimmer.trim_if_worked() is None
    trimmer.worked()
    trimmer.worked()
    assert trimmer.trim_if_worked() is not None
    assert trimmer.trim_if_worked() is None
    assert calls == [0] and trimmer.trims == 1


def test_a_c_library_without_malloc_trim_turns_trimming_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # musl and macOS: the process's C library has no malloc_trim symbol
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda _name: object())
    trimmer = HeapTrimmer()
    trimmer.worked()
    assert not trimmer.available
    assert trimmer.trim_if_worked() is None
