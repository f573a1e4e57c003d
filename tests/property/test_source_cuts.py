"""A source's results depend on its own events in offset order, never on how they were cut.

One source partition may be read in batches of any size, by one worker or, after a restart or
a crash, by another from its checkpoint. Whatever the cuts:

- :class:`SourceClock` admits the same events and completes the same ticks, and never admits
  an event into a tick it had already completed (so a sent partial never changes);
- :class:`SourceAggregator` sends the same complete partials (integer parts exactly, moments to
  rounding: see ``partial_rows.py``), and a tick it sends again after a crash is the same.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.aggregate.clock import SourceClock
from streamproc.aggregate.partials import decode_outcome, decode_partial, decode_summary
from streamproc.aggregate.source import Accepted, Completed, SourceAggregator
from streamproc.aggregate.wire import PartialsMessage
from streamproc.baseline.reference import Reference
from streamproc.config import MonitoringConfig
from streamproc.contracts import Prediction
from streamproc.ingest.ingestor import Observed
from streamproc.ingest.join import Joined, JoinRecord, LabelRecord
from tests.property.partial_rows import (
    SAMPLE_K,
    Row,
    assert_same_outcome,
    assert_same_partial,
    assert_same_summary,
    reference,
    rows,
)

SETTINGS = settings(deadline=None, max_examples=60)
TICK_S, LATENESS_S = 5.0, 7.0
CFG = MonitoringConfig(window_s=60.0, tick_s=TICK_S, lateness_s=LATENESS_S, warmup_sample=SAMPLE_K)

# Event times mostly move forward, sometimes jump back (late, or late beyond lateness).
steps = st.lists(st.floats(-25.0, 6.0, allow_nan=False), min_size=1, max_size=60)


def _times(deltas: list[float]) -> list[float]:
    return np.round(1_000.0 + np.cumsum(deltas), 3).tolist()


def _cuts(n: int, data: st.DataObject) -> list[tuple[int, int]]:
    """Batches ``[lo, hi)`` covering ``0..n`` in order."""
    inner = data.draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=n), label="cuts")
    bounds = [0, *sorted(c for c in inner if 0 < c < n), n]
    return list(itertools.pairwise(bounds))


# -- SourceClock ---------------------------------------------------------------------------------


@dataclass
class ClockRun:
    verdicts: list[bool]
    flushed: list[float]  # flushed_until after each batch
    late: int
    newest: float


def _clock_run(times: list[float], cuts: list[tuple[int, int]], restore_at: set[int]) -> ClockRun:
    clock = SourceClock(TICK_S, LATENESS_S)
    verdicts: list[bool] = []
    flushed: list[float] = []
    for i, (lo, hi) in enumerate(cuts):
        before = clock.flushed_until
        ok = clock.admit(np.array(times[lo:hi])).tolist()
        for t, admitted in zip(times[lo:hi], ok, strict=True):
            # an admitted event's tick was not complete when it came
            assert not admitted or math.floor(t / TICK_S) * TICK_S + TICK_S > before
        verdicts += ok
        flushed.append(clock.flushed_until)
        if i in restore_at:
            clock = SourceClock.restore(TICK_S, LATENESS_S, clock.state())
    return ClockRun(verdicts, flushed, clock.late, clock.newest)


@SETTINGS
@given(steps, st.data())
def test_any_cut_of_a_source_admits_the_same_events_and_completes_the_same_ticks(
    deltas: list[float], data: st.DataObject
) -> None:
    times = _times(deltas)
    whole = _clock_run(times, [(0, len(times))], set())
    single = _clock_run(times, [(i, i + 1) for i in range(len(times))], set())
    cuts = _cuts(len(times), data)
    restarts = data.draw(st.sets(st.integers(0, len(cuts) - 1)), label="restarts")
    cut = _clock_run(times, cuts, restarts)
    for run in (single, cut):
        assert run.verdicts == whole.verdicts
        assert (run.late, run.newest, run.flushed[-1]) == (
            whole.late,
            whole.newest,
            whole.flushed[-1],
        )
        assert run.flushed == sorted(run.flushed)  # never moves back
    # one event at a time: the tick boundary after each event is a function of the newest event
    newest = np.maximum.accumulate(np.array(times))
    boundary = np.floor((newest - LATENESS_S) / TICK_S) * TICK_S
    assert single.flushed == boundary.tolist()
    assert whole.late == whole.verdicts.count(False)


# -- SourceAggregator ----------------------------------------------------------------------------


class Lookup:
    """One reference for every monitor, or none (the aggregator samples)."""

    generation = 0

    def __init__(self, ref: Reference | None) -> None:
        self.ref = ref

    def lookup(
        self, model_id: str, version: str, raw_key: str, tick: float | None = None
    ) -> Reference | None:
        return self.ref


@dataclass(frozen=True)
class Item:
    """One element of a message: a prediction, or an outcome completed by it."""

    kind: str  # "prediction" | "outcome"
    time: float
    row: Row
    model: str
    country: str
    label: str


items = st.builds(
    Item,
    kind=st.sampled_from(["prediction", "prediction", "outcome"]),
    time=st.just(0.0),  # set by streams()
    row=rows(),
    model=st.sampled_from(["churn", "fraud"]),
    country=st.sampled_from(["DE", "FR", "US"]),
    label=st.sampled_from(["yes", "no"]),
)


def _batch(
    source: str, messages: list[list[Item]], first: int
) -> tuple[list[Accepted], list[Completed], int]:
    """The accepted predictions and completed outcomes of messages at offsets ``first``.."""
    preds: list[Accepted] = []
    outs: list[Completed] = []
    for offset, message in enumerate(messages, first):
        for index, it in enumerate(message):
            segments = {"country": it.country}
            r = it.row
            if it.kind == "prediction" and source[0] == "p":
                scores = None if r.confidence is None else {"yes": r.confidence}
                event = Prediction(
                    prediction_id=f"{offset}-{index}", model_id=it.model, model_version="1",
                    timestamp=it.time, features=r.features, prediction=r.prediction,
                    scores=scores, segments=segments, latency_ms=r.latency_ms,
                )  # fmt: skip
                preds.append(Observed(event, it.time, int(source[1:]), offset, index))
            else:
                rec = JoinRecord(
                    it.model, "1", it.time - 60.0, r.prediction, r.confidence, None, segments
                )
                where = f"{source[1:]}:{offset}:{index}"
                joined = Joined(rec, LabelRecord(it.label, it.time), f"l{where}", False, where)
                outs.append(Completed(joined, offset, index))
    return preds, outs, first + len(messages) - 1


Sent = dict[tuple[str, float, str, str, str], Any]  # (model, start, kind, version, key)


def _aggregate(
    source: str,
    messages: list[list[Item]],
    cuts: list[tuple[int, int]],
    ref: Reference | None,
    actions: dict[int, str],
) -> tuple[Sent, int, list[float]]:
    """Fold the messages batch by batch, restarting (``restart``: from the checkpoint after
    the batch; ``crash``: from the one before it, then the batch again) where ``actions`` says.
    Returns every partial sent, the late count, and the ticks sent before the end."""
    lookup = Lookup(ref)
    agg = SourceAggregator(source, CFG, lookup)
    stored: dict[str, bytes] = {}

    def checkpoint() -> dict[str, bytes]:
        fields, gone = agg.checkpoint()
        for f in gone:
            stored.pop(f, None)
        stored.update(fields)
        return dict(stored)

    def restore(fields: dict[str, bytes]) -> SourceAggregator:
        restored, why = SourceAggregator.restore(source, CFG, lookup, fields)
        assert why is None, why
        return restored

    sent: Sent = {}

    def take(msgs: list[PartialsMessage]) -> None:
        for m in msgs:
            assert m.source == source
            for entry in m.ticks:
                for version, key, state in entry.predictions:
                    _keep(sent, (m.model_id, entry.start, "t", version, key), decode_summary(state))
                for version, key, counts in entry.outcomes:
                    _keep(sent, (m.model_id, entry.start, "u", version, key), counts)
            for window in m.windows:
                for version, key, pstate in window.predictions:
                    at = (m.model_id, window.start, "p", version, key)
                    _keep(sent, at, decode_partial(pstate))
                for version, key, ostate in window.outcomes:
                    at = (m.model_id, window.start, "o", version, key)
                    _keep(sent, at, decode_outcome(ostate))

    for i, (lo, hi) in enumerate(cuts):
        before = checkpoint()
        preds, outs, through = _batch(source, messages[lo:hi], lo)
        agg.fold(preds, outs, through)
        take(agg.complete())
        if actions.get(i) == "crash":  # died before its checkpoint: the batch comes again
            stored.clear()
            stored.update(before)
            agg = restore(before)
            agg.fold(preds, outs, through)
            take(agg.complete())
        elif actions.get(i) == "restart":
            agg = restore(checkpoint())
            agg.fold(preds, outs, through)  # a redelivery of what the checkpoint covers: skipped
            take(agg.complete())
    ticks_sent = sorted({k[1] for k in sent if k[2] in "tu"})
    late = agg.clock.late
    agg.clock.flushed_until = math.inf  # the end: everything still open
    take(agg.complete())
    return sent, late, ticks_sent


def _keep(sent: Sent, key: tuple[str, float, str, str, str], partial: Any) -> None:
    """A tick sent twice (after a crash) must be the same; the judge keeps the first."""
    if key in sent:
        _assert_same(partial, sent[key])
    else:
        sent[key] = partial


def _assert_same(got: Any, want: Any) -> None:
    if hasattr(want, "labelled"):
        assert_same_outcome(got, want)
    elif hasattr(want, "latency"):
        assert_same_partial(got, want)
    elif hasattr(want, "zsum"):
        assert_same_summary(got, want)
    else:
        assert got == want  # a tick's labelled and correct outcomes


@st.composite
def streams(draw: st.DrawFn) -> tuple[str, list[list[Item]]]:
    source = draw(st.sampled_from(["p3", "l1"]))
    n = draw(st.integers(1, 25))
    deltas = draw(st.lists(st.floats(-25.0, 6.0), min_size=n, max_size=n))
    times = iter(_times(deltas))
    messages = []
    for _ in range(n):
        size = draw(st.integers(1, 3))
        message = [draw(items) for _ in range(size)]
        t = next(times)
        messages.append([replace(it, time=t + 0.5 * j) for j, it in enumerate(message)])
    return source, messages


@settings(deadline=None, max_examples=40)
@given(streams(), st.booleans(), st.data())
def test_any_cut_restart_or_crash_of_a_source_sends_the_same_complete_partials(
    stream: tuple[str, list[list[Item]]], with_reference: bool, data: st.DataObject
) -> None:
    source, messages = stream
    ref = reference() if with_reference else None
    whole, late, ticks = _aggregate(source, messages, [(0, len(messages))], ref, {})
    cuts = _cuts(len(messages), data)
    actions = data.draw(
        st.dictionaries(st.integers(0, len(cuts) - 1), st.sampled_from(["restart", "crash"])),
        label="actions",
    )
    got, got_late, got_ticks = _aggregate(source, messages, cuts, ref, actions)
    assert got.keys() == whole.keys()
    for key, partial in whole.items():
        _assert_same(got[key], partial)
    assert got_late == late
    assert got_ticks == ticks  # the same ticks were complete before the end
    admitted = sum(p.count for k, p in whole.items() if k[2] == "p" and k[4] == "all")
    judged = sum(p.labelled for k, p in whole.items() if k[2] == "o" and k[4] == "all")
    assert admitted + judged + late == sum(len(m) for m in messages)
    _assert_ticks_add_up_to_their_windows(whole)


def _assert_ticks_add_up_to_their_windows(sent: Sent) -> None:
    """A window's partial and the summaries of its ticks count the same events and sums."""
    window_s = CFG.window_s
    from_ticks: dict[tuple[str, float, str, str], list[Any]] = {}
    for (model, start, kind, version, key), x in sent.items():
        at = (model, math.floor(start / window_s) * window_s, version, key)
        if kind == "t":
            acc = from_ticks.setdefault(at, [0, {}, 0])
            acc[0] += x.count
            for name, sums in x.zsum.items():
                have = acc[1].setdefault(name, [0, 0, 0])
                acc[1][name] = [a + b for a, b in zip(have, sums, strict=True)]
        elif kind == "u":
            acc = from_ticks.setdefault(at, [0, {}, 0])
            acc[2] += x[0]
    windows = {(m, s, v, k): x for (m, s, kind, v, k), x in sent.items() if kind == "p"}
    outcomes = {(m, s, v, k): x for (m, s, kind, v, k), x in sent.items() if kind == "o"}
    for at, (count, zsum, labelled) in from_ticks.items():
        partial, o = windows.get(at), outcomes.get(at)
        assert (count, zsum) == ((partial.count, partial.zsum) if partial else (0, {}))
        assert labelled == (o.labelled if o else 0)
