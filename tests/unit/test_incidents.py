"""Incidents: each injected change is one incident, rooted where it was injected.

Seeded workloads with other segment dimensions, features and change kinds than the demo's run
through the whole monitor path in one process (:mod:`tests.unit.pipeline`); the incident layer
must turn their dozens of true alerts into one incident per change, name the injected segment
and feature, and open nothing else. The same records consumed in another order, or with
restarts and crashes in between, give the same incident events.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from streamproc.baseline import ProfileBuilder, ReferenceProfile
from streamproc.config import MonitoringConfig
from streamproc.contracts import Alert, Incident, IncidentCause
from streamproc.dev.synthetic import (
    AccuracyDrop,
    Change,
    MeanShift,
    NewCategory,
    NullBurst,
    SegmentDim,
    SegmentSilence,
    VarianceScale,
    Workload,
    WorkloadSpec,
)
from streamproc.judge.alerts import AlertKey, AlertTracker, Verdict
from streamproc.judge.incidents import IncidentBook, cause_of, strength_of
from tests.unit import pipeline

CFG = MonitoringConfig(window_s=60.0, tick_s=2.0, lateness_s=5.0)
REGION_TIER = (
    SegmentDim("region", ("apac", "emea", "amer"), (0.25, 0.35, 0.4)),
    SegmentDim("tier", ("free", "pro", "enterprise"), (0.6, 0.3, 0.1)),
)
N = 30_000  # 10 minutes of event time at 50 events/s

WORKLOADS = {
    # two unrelated changes at the same time in two places: two incidents
    "shift and nulls at once, region x tier": WorkloadSpec(
        model_id="m-a",
        segment_dims=REGION_TIER,
        n_numeric=16,
        n_categorical=2,
        changes=(
            MeanShift("f12", 0.8, start=9000, end=24_000, segment={"region": "apac"}),
            NullBurst("f14", 0.2, start=9000, end=24_000, segment={"tier": "pro"}),
        ),
    ),
    "new category and a regional accuracy drop": WorkloadSpec(
        model_id="m-b",
        segment_dims=REGION_TIER,
        n_numeric=12,
        n_categorical=3,
        changes=(
            NewCategory("c2", "zz", 0.1, start=9000, end=21_000, segment={"tier": "enterprise"}),
            AccuracyDrop(0.7, start=15_000, segment={"region": "emea"}),
        ),
    ),
    "all traffic, and a country going silent": WorkloadSpec(
        model_id="m-c",
        n_numeric=10,
        n_categorical=1,
        changes=(
            VarianceScale("f09", 2.0, start=9000, end=21_000),
            SegmentSilence(start=15_000, end=24_000, segment={"country": "FR"}),
        ),
    ),
    "a change confined to one cell of two dimensions": WorkloadSpec(
        model_id="m-d",
        n_numeric=14,
        n_categorical=1,
        changes=(MeanShift("f11", 1.5, start=9000, segment={"country": "US", "device": "ios"}),),
    ),
}


NAMES = {  # another team's feature names for a 12-numeric, 2-categorical model
    **{f"f{i:02d}": n for i, n in enumerate(
        ["tenure_months", "balance", "logins_7d", "tickets_30d", "age", "avg_basket",
         "days_since_order", "discount_rate", "sessions_30d", "refunds_90d", "nps", "latency"]
    )},
    "c0": "plan",
    "c1": "channel",
}  # fmt: skip


def renamed(spec: WorkloadSpec) -> tuple[ReferenceProfile, pipeline.Edit]:
    """``spec``'s baseline and predictions with the features called by :data:`NAMES`."""
    stationary = dataclasses.replace(spec, changes=())
    dims = [d.name for d in spec.segment_dims]
    builder = ProfileBuilder(spec.model_id, spec.model_version, dims)
    for row in Workload(stationary, 30_000, seed=101).reference_rows():
        builder.add(
            {NAMES[k]: row[k] for k in NAMES},
            prediction=row["prediction"],
            score=row["score"],
            label=row["label"],
            segments={d: row[d] for d in dims},
        )

    def edit(_index: int, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "features": {NAMES[k]: v for k, v in event["features"].items()}}

    return builder.build("renamed reference"), edit


def test_another_teams_feature_names_and_dimensions_get_the_same_one_incident_per_change() -> None:
    spec = WorkloadSpec(
        model_id="m-e",
        segment_dims=(
            SegmentDim("market", ("uk", "fr", "es", "it"), (0.4, 0.3, 0.2, 0.1)),
            SegmentDim("app", ("v1", "v2"), (0.7, 0.3)),
        ),
        n_numeric=12,
        n_categorical=2,
        changes=(
            MeanShift("f05", 1.0, start=9000, end=24_000, segment={"market": "es"}),
            NewCategory("c1", "partner", 0.2, start=12_000, segment={"app": "v2"}),
        ),
    )
    profile, edit = renamed(spec)
    run = pipeline.run(spec, N, CFG, labels=True, edit=edit, profile=profile)
    final = latest(run.pipe.incidents)
    got = sorted(
        (i.cause.feature, tuple(sorted(i.root_cause.segment.items()))) for i in final.values()
    )
    assert got == [("avg_basket", (("market", "es"),)), ("channel", (("app", "v2"),))], [
        i.root_cause.summary for i in final.values()
    ]


def expected_cause(change: Change) -> tuple[str, str | None]:
    """The cause an injected change must be reported as."""
    if isinstance(change, SegmentSilence):
        return ("volume", None)
    if isinstance(change, AccuracyDrop):
        return ("performance", None)
    return ("feature", change.feature)  # type: ignore[attr-defined]


def latest(incidents: Sequence[Incident]) -> dict[str, Incident]:
    """Each incident's latest event."""
    out: dict[str, Incident] = {}
    for i in incidents:
        if i.incident_id not in out or i.revision > out[i.incident_id].revision:
            out[i.incident_id] = i
    return out


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_each_injected_change_is_one_incident_rooted_at_its_segment_and_feature(
    name: str,
) -> None:
    spec = WORKLOADS[name]
    run = pipeline.run(spec, N, CFG, labels=True)
    final = latest(run.pipe.incidents)
    got = sorted(
        ((i.cause.signal, i.cause.feature), tuple(sorted(i.root_cause.segment.items())))
        for i in final.values()
    )
    want = sorted(
        (expected_cause(c), tuple(sorted((c.segment or {}).items()))) for c in spec.changes
    )
    assert got == want, [i.root_cause.summary for i in final.values()]
    # they replace many alerts, and every firing alert is a member of one of them
    members = {m.alert_id for i in run.pipe.incidents for m in i.members}
    assert {a.alert_id for a in run.firing} <= members
    assert len(run.firing) >= 2 * len(final)


def test_the_demo_workload_pages_three_incidents_instead_of_dozens_of_alerts() -> None:
    from streamproc.dev import demo
    from streamproc.dev.demo import N_EVENTS, _spec

    run = pipeline.run(_spec(), N_EVENTS, CFG, labels=True)
    final = latest(run.pipe.incidents)
    got = {
        (i.cause.signal, i.cause.feature, tuple(i.root_cause.segment.items()))
        for i in final.values()
    }
    assert got == {
        ("feature", "f03", (("country", "DE"),)),
        ("feature", "c1", (("device", "web"),)),
        ("performance", None, ()),
    }
    assert len(run.firing) > 10 * len(final)
    assert sum(1 for i in run.pipe.incidents if i.status == "opened") == 3
    lines, ok = demo.summary(list(run.pipe.incidents))
    assert ok, lines
    assert lines[0].startswith("3 incident(s) for 3 injected change(s) and the end of the")
    assert lines[-1] == "Summary: every injected change was reported as one incident."
    # an incident no change explains, or a change without one, fails the demo
    assert not demo.summary(list(run.pipe.incidents)[:1])[1]
    # but the volume incident of the traffic's end is the demo stopping, not a false one
    volume = IncidentCause("volume", None)
    some = run.pipe.incidents[0]
    stopped = msgspec.structs.replace(
        some, incident_id="end", cause=volume, started_at="2024-01-01T00:18:00.000Z",
        root_cause=msgspec.structs.replace(some.root_cause, segment={}),
    )  # fmt: skip
    lines, ok = demo.summary([*run.pipe.incidents, stopped])
    assert ok and "[the demo's traffic ends here]" in lines[-2], lines
    early = msgspec.structs.replace(stopped, started_at="2024-01-01T00:10:00.000Z")
    assert not demo.summary([*run.pipe.incidents, early])[1]


def test_incident_events_are_the_same_whatever_the_consumption_order_and_restarts() -> None:
    spec = WORKLOADS["shift and nulls at once, region x tier"]
    straight = pipeline.run(spec, 20_000, CFG, labels=True)
    shuffled = pipeline.run(spec, 20_000, CFG, labels=True, shuffle=random.Random(3))
    restarted = pipeline.run(spec, 20_000, CFG, labels=True, restart_every=5)
    crashed = pipeline.run(spec, 20_000, CFG, labels=True, restart_every=7, redeliver=3)
    want = pipeline.once(straight.pipe.incidents)
    assert want, "the workload opened no incident"
    for other in (shuffled, restarted, crashed):
        assert sorted(pipeline.once(other.pipe.incidents)) == sorted(want)
    ids = [i.event_id for i in straight.pipe.incidents]
    assert len(ids) == len(set(ids))


# -- the book on hand-made verdicts -----------------------------------------------------------


def _seg(text: str) -> tuple[tuple[str, str], ...]:
    if text == "all":
        return ()
    dim, _, value = text.partition("=")
    return ((dim, value),)


class Judge:
    """Feeds verdicts to a tracker and a book as a judge does, one closing step at a time."""

    def __init__(self) -> None:
        self.book = IncidentBook("m")
        self.tracker = AlertTracker(clear_after=1)
        self.events: list[Incident] = []
        self.t = 0.0

    def window(self, values: dict[tuple[str, str, str, str], float]) -> list[Incident]:
        """One window: ``(segment, feature, detector, kind) -> value`` against threshold 1."""
        alerts: list[Alert] = []
        for (seg, feature, detector, kind), value in sorted(values.items()):
            key = AlertKey("m", "1", _seg(seg), feature or None, detector, kind)  # type: ignore[arg-type]
            sev = "warning" if value > 1.0 else None
            verdict = Verdict(sev, value < 0.8, value, 1.0, (self.t, self.t + 60.0))  # type: ignore[arg-type]
            self.book.verdict(key, verdict)
            alerts += self.tracker.observe(key, verdict, "predictions", "")
        self.t += 60.0
        out = self.book.step(alerts, self.t, "")
        self.events += out
        return out


def test_two_features_moving_in_two_segments_at_once_are_two_incidents() -> None:
    j = Judge()
    quiet = {
        (s, f, "psi", "feature_drift"): 0.2
        for s in ("all", "region=a", "region=b")
        for f in ("x", "y")
    }
    j.window(quiet)
    out = j.window(
        {
            **quiet,
            ("region=a", "x", "psi", "feature_drift"): 5.0,
            ("all", "x", "psi", "feature_drift"): 2.0,
            ("region=b", "y", "psi", "feature_drift"): 4.0,
        }
    )
    assert sorted((i.status, i.cause.feature, i.root_cause.segment["region"]) for i in out) == [
        ("opened", "x", "a"),
        ("opened", "y", "b"),
    ]
    resolved = j.window(quiet)
    assert sorted(i.status for i in resolved) == ["resolved", "resolved"]
    assert {i.incident_id for i in resolved} == {i.incident_id for i in out}


def test_a_change_in_every_value_of_a_dimension_is_rooted_at_all_traffic() -> None:
    j = Judge()
    hot = {(s, "x", "ks", "feature_drift"): 3.0 for s in ("all", "region=a", "region=b")}
    (opened,) = j.window(hot)
    assert opened.root_cause.segment == {}
    assert "all traffic" in opened.root_cause.summary
    assert len(opened.members) == 3


def test_prediction_drift_joins_the_feature_incident_that_explains_it() -> None:
    j = Judge()
    (opened,) = j.window(
        {
            ("region=a", "x", "psi", "feature_drift"): 5.0,
            ("region=b", "x", "psi", "feature_drift"): 0.1,
            ("region=a", "", "psi", "prediction_drift"): 2.0,
        }
    )
    assert (opened.cause.signal, opened.cause.feature) == ("feature", "x")
    assert sorted(m.kind for m in opened.members) == ["feature_drift", "prediction_drift"]


def test_the_book_restores_from_its_bytes_and_goes_on_the_same() -> None:
    a, b = Judge(), Judge()
    hot = {
        ("region=a", "x", "psi", "feature_drift"): 5.0,
        ("region=b", "x", "psi", "feature_drift"): 0.1,
    }
    a.window(hot)
    b.window(hot)
    b.book = IncidentBook.from_bytes("m", b.book.to_bytes())
    more = {**hot, ("all", "x", "ks", "feature_drift"): 2.0}
    assert msgspec.json.encode(a.window(more)) == msgspec.json.encode(b.window(more))


def test_causes_and_strengths_of_the_detectors() -> None:
    assert cause_of("volume", None) == ("volume", None)
    assert cause_of("multivariate_drift", None) == ("multivariate", None)
    assert strength_of("adwin", Verdict("warning", False, 1.0, 0.0, (0.0, 1.0))) is None
    assert strength_of("ks", Verdict(None, True, 0.05, 0.1, (0.0, 60.0))) == 0.5
