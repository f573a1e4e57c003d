"""Event-time windows: lateness per source, watermark, closing, checkpoint."""

from __future__ import annotations

import pytest

from streamproc.errors import StateEncodingError
from streamproc.windows import WindowClock


def test_a_quiet_source_holds_the_watermark_until_retired() -> None:
    clock = WindowClock(size_s=60, lateness_s=0)
    clock.admit("a", 10.0)
    clock.admit("b", 500.0)
    assert clock.close_until() == 0.0
    clock.retire("a")
    assert clock.close_until() == 480.0


def test_a_declared_source_holds_the_watermark_before_its_first_event() -> None:
    clock = WindowClock(size_s=60, lateness_s=0)
    clock.expect(["a", "b"])
    clock.admit("a", 500.0)
    assert clock.close_until() == -float("inf")
    assert clock.admit("b", 1.0) is True


def test_an_event_for_a_closed_window_is_late_and_counted() -> None:
    clock = WindowClock(size_s=60, lateness_s=0)
    clock.admit("a", 200.0)
    assert clock.close_until() == 180.0
    assert clock.admit("b", 100.0) is False  # new source, but its window closed
    assert clock.late == 1
    assert clock.admit("b", 185.0) is True


def test_close_until_never_moves_back() -> None:
    clock = WindowClock(size_s=10, lateness_s=0)
    clock.admit("a", 100.0)
    assert clock.close_until() == 100.0
    clock.admit("b", 105.0)  # a new source behind: the watermark is min = 100
    clock.retire("a")
    assert clock.close_until() == 100.0


def test_checkpoint_round_trip_keeps_every_decision() -> None:
    clock = WindowClock(size_s=60, lateness_s=5)
    for src, t in [("a", 10.0), ("b", 70.0), ("a", 3.0), ("a", 130.0), ("b", 140.0)]:
        clock.admit(src, t)
    clock.close_until()
    restored = WindowClock.from_bytes(clock.to_bytes())
    for src, t in [("a", 124.0), ("b", 134.0), ("a", 90.0), ("b", 200.0)]:
        assert restored.admit(src, t) == clock.admit(src, t)
    assert restored.close_until() == clock.close_until()
    assert restored.late == clock.late


def test_foreign_bytes_are_refused() -> None:
    with pytest.raises(StateEncodingError):
        WindowClock.from_bytes(b"XXXX\x00")


@pytest.mark.parametrize(("size", "lateness"), [(0, 1), (10, -1)])
def test_bad_parameters_are_refused(size: float, lateness: float) -> None:
    with pytest.raises(ValueError, match="size_s"):
        WindowClock(size, lateness)


def test_when_every_source_is_retired_what_they_reached_still_closes_windows() -> None:
    clock = WindowClock(size_s=60, lateness_s=0)
    clock.admit("a", 130.0)
    clock.admit("b", 250.0)
    clock.retire("a")
    clock.retire("b")
    assert clock.close_until() == 240.0
