"""Event time: each source's clock (lateness, complete ticks) and how far a judge may close.

:class:`SourceClock` judges one partition's events in offset order, whatever the batches;
:class:`SourceProgress` turns every source's reports into :class:`Bounds`. The property test
``tests/property/test_source_clock_cuts.py`` holds the clock to any cut of a source into
batches.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from streamproc.aggregate.clock import ClockState, SourceClock, tick_start
from streamproc.aggregate.wire import ProgressMessage
from streamproc.judge.progress import Bounds, ProgressState, SourceProgress

# -- SourceClock -----------------------------------------------------------------------------------


def _admit(clock: SourceClock, *times: float) -> list[bool]:
    return clock.admit(np.array(times, dtype=np.float64)).tolist()


def test_an_event_whose_tick_the_sources_watermark_passed_is_late_and_counted() -> None:
    clock = SourceClock(tick_s=10, lateness_s=5)
    assert _admit(clock, 3.0, 12.0, 21.0) == [True, True, True]
    assert clock.flushed_until == 10.0  # 21 - 5 = 16: the tick [0, 10) is complete
    assert _admit(clock, 4.0, 9.99, 10.0, 14.0) == [False, False, True, True]
    assert clock.late == 2


def test_lateness_is_judged_against_the_newest_event_before_it_not_the_batchs() -> None:
    one = SourceClock(tick_s=10, lateness_s=5)
    assert _admit(one, 4.0, 100.0, 4.0) == [True, True, False]
    other = SourceClock(tick_s=10, lateness_s=5)
    assert _admit(other, 100.0, 4.0, 4.0) == [True, False, False]
    assert (one.late, other.late) == (1, 2)


def test_events_one_by_one_or_in_one_batch_get_the_same_verdicts() -> None:
    times = [3.0, 12.0, 21.0, 4.0, 14.0, 9.0, 40.0, 30.0, 29.0, 26.0]
    batch = SourceClock(tick_s=5, lateness_s=7)
    single = SourceClock(tick_s=5, lateness_s=7)
    verdicts = _admit(batch, *times)
    assert verdicts == [_admit(single, t)[0] for t in times]
    assert verdicts == [True, True, True, False, True, False, True, True, False, False]
    assert (batch.newest, batch.flushed_until, batch.late) == (
        single.newest,
        single.flushed_until,
        single.late,
    )


def test_complete_ticks_are_whole_ticks_and_flushed_until_never_moves_back() -> None:
    clock = SourceClock(tick_s=2, lateness_s=5)
    seen = []
    for t in [10.0, 17.9, 18.0, 3.0, 19.0, 12.0, 25.5]:
        _admit(clock, t)
        seen.append(clock.flushed_until)
    assert seen == [4.0, 12.0, 12.0, 12.0, 14.0, 14.0, 20.0]
    assert all(b % 2 == 0 for b in seen)
    assert clock.newest == 25.5


def test_a_clock_without_events_has_completed_nothing() -> None:
    clock = SourceClock(tick_s=2, lateness_s=5)
    assert clock.admit(np.zeros(0)).tolist() == []
    assert clock.newest == clock.flushed_until == -math.inf and clock.late == 0


def test_zero_lateness_completes_the_tick_before_the_newest_events() -> None:
    clock = SourceClock(tick_s=10, lateness_s=0)
    assert _admit(clock, 25.0, 19.0, 20.0) == [True, False, True]
    assert clock.flushed_until == 20.0


def test_a_restored_clock_takes_every_decision_the_original_would_have() -> None:
    clock = SourceClock(tick_s=10, lateness_s=5)
    _admit(clock, 10.0, 70.0, 3.0, 130.0, 126.0)
    blob = msgspec.msgpack.encode(clock.state())
    restored = SourceClock.restore(10, 5, msgspec.msgpack.decode(blob, type=ClockState))
    later = [124.0, 134.0, 90.0, 200.0, 196.0, 189.0]
    assert _admit(restored, *later) == _admit(clock, *later)
    assert restored.state() == clock.state()
    assert clock.late == 3


@pytest.mark.parametrize(("tick", "lateness"), [(0, 1), (-2, 1), (10, -1)])
def test_bad_parameters_are_refused(tick: float, lateness: float) -> None:
    with pytest.raises(ValueError, match="tick_s"):
        SourceClock(tick, lateness)


def test_tick_start_is_the_floor_to_a_whole_tick() -> None:
    assert [tick_start(t, 2.0) for t in (0.0, 1.999, 2.0, -0.5)] == [0.0, 0.0, 2.0, -2.0]


# -- SourceProgress and Bounds ---------------------------------------------------------------------


def _report(
    sp: SourceProgress, source: str, flushed: float, newest: float, idle: float | None = None
) -> None:
    sp.update(ProgressMessage(source, flushed, newest, idle))


def test_a_source_that_has_not_reported_holds_the_boundary() -> None:
    sp = SourceProgress(["p0", "p1"], ["l0"])
    assert sp.bounds() == Bounds(-math.inf, -math.inf)
    _report(sp, "p0", 100.0, 110.0)
    assert sp.bounds().predictions == -math.inf  # p1 never reported
    _report(sp, "p1", 90.0, 96.0)
    b = sp.bounds()
    assert b.predictions == 90.0
    assert b.outcomes == -math.inf  # the label source l0 holds the outcomes
    _report(sp, "l0", 120.0, 126.0)
    assert sp.bounds() == Bounds(90.0, 90.0)


def test_prediction_sources_hold_outcomes_too_label_sources_do_not_hold_predictions() -> None:
    sp = SourceProgress(["p0"], ["l0"])
    _report(sp, "p0", 50.0, 55.0)
    _report(sp, "l0", 10.0, 15.0)
    assert sp.bounds() == Bounds(50.0, 10.0)
    _report(sp, "l0", 80.0, 85.0)
    assert sp.bounds() == Bounds(50.0, 50.0)


def test_an_idle_source_stops_holding_the_boundary_until_it_reports_again() -> None:
    sp = SourceProgress(["p0", "p1"], [])
    _report(sp, "p0", 300.0, 305.0)
    _report(sp, "p1", 100.0, 104.0, idle=130.0)
    assert sp.bounds() == Bounds(300.0, 300.0)
    _report(sp, "p1", 100.0, 104.0)  # a record again: it holds again, past what it let close
    _report(sp, "p0", 400.0, 405.0)
    assert sp.bounds() == Bounds(300.0, 300.0)
    _report(sp, "p1", 400.0, 404.0)
    assert sp.bounds() == Bounds(400.0, 400.0)


def test_an_idle_report_releases_only_up_to_the_records_it_speaks_for() -> None:
    sp = SourceProgress(["p0", "p1"], ["l0"])
    sp.update(ProgressMessage("l0", 150.0, 155.0, 60.0, as_of=1000.0))
    sp.update(ProgressMessage("p1", 100.0, 104.0, 60.0, as_of=1000.0))
    sp.update(ProgressMessage("p0", 200.0, 205.0, None, as_of=999.0))  # read before 1000
    assert sp.bounds() == Bounds(200.0, 200.0)
    # p0 reads past the idle reports: p1 and l0 may have records since, not read yet.
    sp.update(ProgressMessage("p0", 300.0, 305.0, None, as_of=1001.0))
    assert sp.bounds() == Bounds(200.0, 200.0)
    sp.update(ProgressMessage("p1", 100.0, 104.0, 61.0, as_of=1002.0))  # p1 reports again
    assert sp.bounds() == Bounds(300.0, 200.0)  # outcomes still wait for l0
    sp.update(ProgressMessage("l0", 150.0, 155.0, 62.0, as_of=1002.0))
    assert sp.bounds() == Bounds(300.0, 300.0)


def test_the_bounds_do_not_depend_on_how_reports_were_batched() -> None:
    reports = [
        ProgressMessage("p0", 200.0, 205.0, None, as_of=900.0),
        ProgressMessage("p1", 100.0, 104.0, 60.0, as_of=1000.0),
        ProgressMessage("p0", 250.0, 255.0, None, as_of=990.0),
        ProgressMessage("p1", 230.0, 234.0, None, as_of=1010.0),  # back, behind p0
        ProgressMessage("p0", 400.0, 405.0, None, as_of=1020.0),
    ]
    closed = []
    for cut in range(len(reports) + 1):  # a judge taking the first `cut` reports, then the rest
        sp = SourceProgress(["p0", "p1"], [])
        for r in reports[:cut]:
            sp.update(r)
        first = sp.bounds().predictions
        for r in reports[cut:]:
            sp.update(r)
        closed.append(max(first, sp.bounds().predictions))  # what it closed after each batch
    # p1 idle as of 1000 while p0 had read up to 990: 250 could close then, whatever the cut.
    assert closed == [250.0] * len(closed)


def test_when_every_source_is_idle_the_bounds_are_silent() -> None:
    sp = SourceProgress(["p0", "p1"], ["l0"])
    _report(sp, "p0", 100.0, 108.0, idle=125.0)
    _report(sp, "p1", 90.0, 97.0, idle=140.0)
    _report(sp, "l0", 60.0, 66.0)
    b = sp.bounds()
    # predictions: as far as the furthest source reached; newest event 108, quiet 125 s
    assert (b.predictions, b.silent_predictions) == (100.0, (108.0, 125.0))
    assert (b.outcomes, b.silent_outcomes) == (60.0, None)  # l0 is still active
    _report(sp, "l0", 60.0, 66.0, idle=200.0)
    assert sp.bounds().silent_outcomes == (108.0, 125.0)


def test_idle_sources_that_never_saw_an_event_are_not_silence() -> None:
    sp = SourceProgress(["p0"], [])
    _report(sp, "p0", -math.inf, -math.inf, idle=500.0)
    b = sp.bounds()
    assert b.silent_predictions is None and b.predictions == -math.inf


def test_an_older_report_never_moves_a_source_back() -> None:
    sp = SourceProgress(["p0"], [])
    _report(sp, "p0", 100.0, 108.0)
    _report(sp, "p0", 80.0, 86.0)  # a source restored from an older checkpoint
    assert sp.bounds().predictions == 100.0
    assert sp.sources["p0"].newest == 108.0


def test_without_label_partitions_outcomes_follow_the_prediction_sources() -> None:
    sp = SourceProgress(["p0", "p1"], [])
    _report(sp, "p0", 40.0, 45.0)
    _report(sp, "p1", 30.0, 35.0)
    assert sp.bounds() == Bounds(30.0, 30.0)


def test_progress_survives_its_stored_form() -> None:
    sp = SourceProgress(["p0", "p1"], ["l0"])
    _report(sp, "p0", 100.0, 108.0, idle=125.0)
    _report(sp, "l0", 60.0, 66.0)
    blob = msgspec.msgpack.encode(sp.state())
    state = msgspec.msgpack.decode(blob, type=ProgressState)
    restored = SourceProgress.restore(["p0", "p1"], ["l0"], state)
    assert restored.bounds() == sp.bounds()
    _report(restored, "p1", 90.0, 95.0)
    _report(sp, "p1", 90.0, 95.0)
    assert restored.bounds() == sp.bounds() == Bounds(90.0, 60.0)


def test_final_bounds_let_everything_close() -> None:
    assert Bounds.final() == Bounds(math.inf, math.inf)
