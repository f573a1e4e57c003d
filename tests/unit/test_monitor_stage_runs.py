"""The monitor stage folds a model's consecutive keyed-topic messages with one engine call.

A run of messages folded at once must give the same alerts, windows and detector state as the
same messages folded one by one (only window moments may differ in the last bits, as for any
other cut of the stream), and observations and outcomes must reach the engine in the order
they came.
"""

from __future__ import annotations

import msgspec

from streamproc.dev.synthetic import MeanShift, Workload, WorkloadSpec
from streamproc.monitor import ModelMonitor, MonitorInput, Outcome
from streamproc.monitoring import FOLD_MAX, _Run
from tests.unit.test_monitor import CFG, PARTITIONS, observations, references

SPEC = WorkloadSpec(rate=50.0, changes=(MeanShift("f03", 1.5, start=3_000, end=9_000),))
SOURCES = [f"p{i}" for i in range(PARTITIONS)]


def _messages(n: int, size: int) -> list[MonitorInput]:
    obs = list(observations(Workload(SPEC, n, seed=5)))
    return [MonitorInput("m", obs[i : i + size]) for i in range(0, len(obs), size)]


def _outputs(m: ModelMonitor, per_batch: list[list[MonitorInput]], fold: str) -> list:
    enc = msgspec.json.Encoder()
    alerts, windows = [], []
    for batch in per_batch:
        if fold == "run":
            run = _Run(m)
            for msg in batch:
                run.add(msg)
            run.flush()
        else:
            for msg in batch:
                m.observe(msg.observations)
        out = m.advance("t")
        alerts += [enc.encode(a) for a in out.alerts]
        windows += [(r.window, r.segment, r.count) for r in out.metrics]
    out = m.advance("t", final=True)
    alerts += [enc.encode(a) for a in out.alerts]
    windows += [(r.window, r.segment, r.count) for r in out.metrics]
    return [alerts, windows]


def test_a_run_of_messages_gives_the_alerts_windows_and_detectors_of_one_by_one() -> None:
    refs = references(SPEC)
    messages = _messages(12_000, 250)
    per_batch = [messages[i : i + 7] for i in range(0, len(messages), 7)]
    one = ModelMonitor("m", CFG, SOURCES, refs)
    run = ModelMonitor("m", CFG, SOURCES, refs)
    by_message, by_run = _outputs(one, per_batch, "message"), _outputs(run, per_batch, "run")
    assert by_message[0], "the shift must raise alerts to compare"
    assert by_run == by_message
    for key, seg in one.segments.items():
        other = run.segments[key]
        assert other.ticks == seg.ticks and other.detections == seg.detections
        assert {f: d.to_bytes() for f, d in other.adwin.items()} == {
            f: d.to_bytes() for f, d in seg.adwin.items()
        }


def test_a_change_between_observations_and_outcomes_folds_what_came_first() -> None:
    m = ModelMonitor("m", CFG, SOURCES, references(SPEC))
    first = _messages(300, 300)[0]
    run = _Run(m)
    run.add(first)
    assert not m.high, "observations wait for the rest of their run"
    ob = first.observations[0]
    outcome = Outcome("l0", 0, -1, ob.event_time, ob.model_version, ob.segments, "yes", "no")
    run.add(MonitorInput("m", outcomes=[outcome]))
    assert m.high, "the observations were folded before the outcome was queued"
    assert not m.outcome_windows
    run.flush()
    assert m.outcome_windows


def test_a_run_is_folded_once_it_reaches_its_size_bound() -> None:
    m = ModelMonitor("m", CFG, SOURCES, references(SPEC))
    run = _Run(m)
    for msg in _messages(FOLD_MAX + 250, 250):
        run.add(msg)
    assert m.high and len(run.observations) < FOLD_MAX
