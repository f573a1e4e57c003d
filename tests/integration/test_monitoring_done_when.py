"""Issue 4's "Done when", end to end: real Kafka, Redis and ``streamproc worker`` processes.

Two workloads go through one worker each, predictions first (arrays of 500 events,
round-robin over the six partitions), then their delayed labels:

- a stationary stream of 216,000 predictions over the 12 traffic cells (4 countries x 3
  devices), 17 of whose 18 one-minute windows close, must raise no alert at all;
- one stream with six injected changes, each in its own feature, segment and time span, must
  raise the right alert (kind, feature, segment) for each change within the delay the issue
  asks for, nothing the changes do not explain, and resolve each alert after its change reverts.

Delays are measured from the alerts themselves against the workload's ground truth
(:meth:`~streamproc.synthetic.Workload.ground_truth`): the end of the alert's ``window`` (a
detector tick or a closed window, in event time) gives the events of the segment seen before the
verdict; its ``source`` offsets, mapped back through the producer's delivery reports to the
events of each cited message, give the same count at message granularity. ``pytest -s`` prints
both.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.dev.synthetic import (
    AccuracyDrop,
    Change,
    Injection,
    MeanShift,
    NewCategory,
    NullBurst,
    SegmentSilence,
    Workload,
    WorkloadSpec,
    reference_profile,
)
from streamproc.kafka import topics
from streamproc.redis_client import sync_client
from tests.integration.workers import TopicTail, WorkerProcess, sample_sum

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 200.0  # events per second of event time
WINDOW_S = 60.0
TICK_S = 1.0
LATENESS_S = 5.0
MONITOR_ENV = {
    "STREAMPROC_MONITORING_WINDOW_S": str(WINDOW_S),
    "STREAMPROC_MONITORING_TICK_S": str(TICK_S),
    "STREAMPROC_MONITORING_LATENESS_S": str(LATENESS_S),
    "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "300",
}
PER_WINDOW = int(RATE * WINDOW_S)  # 12,000 events
BATCH = 500
PARTITIONS = 6
SEED = 7
JOIN_RESULTS = ("joined", "duplicate", "redelivered", "late_label", "late_prediction")


def at_window(k: float) -> int:
    """The index of the event ``k`` windows into the stream."""
    return round(k * PER_WINDOW)


# Detector delays count in ticks (a 1 s tick holds 60 events of a 30% segment at 200 events/s),
# window verdicts in windows.
# Each change has a feature and a segment of its own, so none can explain another's alert.
# Feature changes use features the model does not score from (f10..f19, c1), so predictions,
# scores and accuracy stay stationary. Window-level changes start on a window boundary, so
# "within one window" means in the window the change starts in; detector changes start mid-window.
SHIFT_1 = MeanShift("f10", 1.0, start=at_window(2.5), end=at_window(4.5), segment={"country": "DE"})
SHIFT_05 = MeanShift(
    "f12", 0.5, start=at_window(4.75), end=at_window(6.75), segment={"country": "US"}
)
NEW_CATEGORY = NewCategory(
    "c1", "zz", 0.05, start=at_window(3), end=at_window(5), segment={"device": "android"}
)
NULLS = NullBurst("f15", 0.1, start=at_window(5), end=at_window(7), segment={"device": "ios"})
SILENCE = SegmentSilence(start=at_window(7), end=at_window(9), segment={"country": "FR"})
ACCURACY = AccuracyDrop(0.7, start=at_window(2), end=at_window(4), segment={"device": "web"})
# The limit for each: (what is counted, limit).
LIMITS: tuple[tuple[Change, str, float], ...] = (
    (SHIFT_1, "segment events", 500),
    (SHIFT_05, "segment events", 2_000),
    (NEW_CATEGORY, "windows", 1),
    (NULLS, "windows", 1),
    (SILENCE, "windows", 2),
    (ACCURACY, "labelled events", 1_000),
)
CHANGES = tuple(change for change, _, _ in LIMITS)
# The last change reverts at window 9: windows 9, 10, 11 clear it and 12 stays open.
CHANGED_EVENTS = at_window(13)
STATIONARY_EVENTS = at_window(18)  # 17 closed windows hold 204,000 events


# -- Kafka in and out -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sent:
    """What one produced message held: event indexes (predictions only) and event times."""

    first_index: int
    last_index: int
    first_time: float
    last_time: float


def produce_batches(
    cfg: Config, topic: str, events: Iterable[dict[str, Any]], index_of: Callable[[dict], int]
) -> tuple[int, dict[tuple[int, int], Sent]]:
    """Send ``events`` as JSON arrays of :data:`BATCH`, round-robin over the partitions, in
    order; return how many events went out and, from the delivery reports, what each message
    ((partition, offset)) held."""
    producer = Producer({**cfg.kafka.librdkafka(), "linger.ms": 20})
    sent: dict[tuple[int, int], Sent] = {}
    failed: list[str] = []

    def send(batch: list[dict[str, Any]], n: int) -> None:
        what = Sent(
            index_of(batch[0]), index_of(batch[-1]), batch[0]["timestamp"], batch[-1]["timestamp"]
        )

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                sent[(msg.partition(), msg.offset())] = what

        while True:
            try:
                producer.produce(
                    topic, orjson.dumps(batch), partition=n % PARTITIONS, on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)

    batch: list[dict[str, Any]] = []
    n = count = 0
    for event in events:
        batch.append(event)
        count += 1
        if len(batch) == BATCH:
            send(batch, n)
            n, batch = n + 1, []
    if batch:
        send(batch, n)
    assert producer.flush(60) == 0 and not failed, failed[:3]
    return count, sent


@dataclasses.dataclass
class Run:
    """What one workload did in the worker."""

    work: Workload
    sent: dict[tuple[int, int], Sent]
    predictions: int
    labels: int
    alerts: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    seconds: float
    late_events: float
    join: dict[str, float]  # streamproc_join_total by result


def _index_of(event: dict[str, Any]) -> int:
    """The workload index in a prediction id (``"<seed hex>-<index>"``)."""
    return int(event["prediction_id"].rpartition("-")[2])


def _epoch_s(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def run_workload(cfg: Config, tmp_path: Path, spec: WorkloadSpec, n_events: int) -> Run:
    """Baseline in Redis, one worker, predictions then labels; wait until every window that the
    watermarks can close (all but the last) is closed, for predictions and for outcomes."""
    began = time.monotonic()
    topics.apply(cfg, topics.load_topics(cfg))
    BaselineStore(sync_client(cfg.redis), cfg.redis.prefix).put(
        reference_profile(spec, source="test reference")
    )
    work = Workload(spec, n_events, seed=SEED)
    worker = WorkerProcess(cfg, tmp_path, **MONITOR_ENV)
    metrics_tail = TopicTail(cfg, cfg.topics.metrics)
    try:
        n_predictions, sent = produce_batches(
            cfg, cfg.topics.predictions, work.predictions(), _index_of
        )
        # Labels after their predictions are in the join, as a label pipeline delivers them.
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total", topic="predictions") >= n_predictions,
            300,
            "predictions ingested",
        )
        n_labels, _ = produce_batches(cfg, cfg.topics.labels, work.labels(), _index_of)
        last_time = max(s.last_time for s in sent.values())
        feature_end = np.floor((last_time - LATENESS_S) / WINDOW_S) * WINDOW_S
        outcome_end = np.floor(last_time / WINDOW_S) * WINDOW_S

        def closed() -> bool:
            records = metrics_tail.read()
            ends = [
                (bool(r["performance"]), _epoch_s(r["window"]["end"]))
                for r in records
                if r["segment"] == {}
            ]
            return any(not o and e >= feature_end for o, e in ends) and any(
                o and e >= outcome_end for o, e in ends
            )

        worker.wait_for(
            lambda: (
                worker.metric("streamproc_events_total", topic="labels") >= n_labels and closed()
            ),
            420,
            "every label ingested and every closable window closed",
        )
        text = worker.metrics_text()
        late = sample_sum(text, "streamproc_late_events_total")
        join = {
            result: sample_sum(text, "streamproc_join_total", result=result)
            for result in JOIN_RESULTS
        }
    finally:
        worker.stop()
        metrics_tail.close()
    alerts_tail = TopicTail(cfg, cfg.topics.alerts)
    try:
        alerts = alerts_tail.read()
    finally:
        alerts_tail.close()
    return Run(
        work,
        sent,
        n_predictions,
        n_labels,
        alerts,
        metrics_tail.records,
        time.monotonic() - began,
        late,
        join,
    )


# -- ground truth vs alerts -----------------------------------------------------------------------

# Which (kind, detector) a change can cause; None = any detector of that kind.
CAUSES: dict[type[Change], set[tuple[str, str | None]]] = {
    # a shifted feature moves the joint distribution too: the reconstruction error may see it
    MeanShift: {("feature_drift", None), ("multivariate_drift", None)},
    NewCategory: {("feature_drift", "psi"), ("data_quality", "new_category")},
    NullBurst: {("data_quality", "null_rate")},
    SegmentSilence: {("volume", "volume_drop")},
    AccuracyDrop: {("performance", None), ("label_drift", "psi")},
}
# The alert that must come, (kind, detector or None for any).
EXPECTED: dict[type[Change], tuple[str, str | None]] = {
    MeanShift: ("feature_drift", None),
    NewCategory: ("data_quality", "new_category"),
    NullBurst: ("data_quality", "null_rate"),
    SegmentSilence: ("volume", "volume_drop"),
    AccuracyDrop: ("performance", None),
}


def describe(alert: dict[str, Any]) -> str:
    seg = ",".join(f"{k}={v}" for k, v in sorted(alert["segment"].items())) or "all"
    return (
        f"{alert['status']:<8} {alert['severity']:<8} {alert['kind']}/{alert['detector']} "
        f"feature={alert['feature']} segment={seg} "
        f"window={alert['window']['start'][11:19]}..{alert['window']['end'][11:19]}"
    )


def overlaps(alert_segment: dict[str, str], scope: dict[str, str]) -> bool:
    """Whether a monitor's segment holds events of the change's scope."""
    return all(scope.get(dim, value) == value for dim, value in alert_segment.items())


def explains(truth: Injection, alert: dict[str, Any], effect_end: float) -> bool:
    """Whether ``truth``'s change can have caused ``alert``: feature, kind, an overlapping
    segment, and a window between the change's first event and two windows after the last
    event it affected (``effect_end``)."""
    change = truth.change
    if not any(
        alert["kind"] == kind and detector in (None, alert["detector"])
        for kind, detector in CAUSES[type(change)]
    ):
        return False
    feature = truth.feature if alert["kind"] != "multivariate_drift" else None  # no feature
    if alert["feature"] != feature or not overlaps(alert["segment"], truth.segment):
        return False
    assert truth.first_affected_time is not None
    start, end = _epoch_s(alert["window"]["start"]), _epoch_s(alert["window"]["end"])
    return end > truth.first_affected_time and start < effect_end + 2 * WINDOW_S


def is_expected(truth: Injection, alert: dict[str, Any], effect_end: float) -> bool:
    kind, detector = EXPECTED[type(truth.change)]
    return (
        alert["status"] == "firing"
        and alert["kind"] == kind
        and detector in (None, alert["detector"])
        and alert["feature"] == truth.feature
        and alert["segment"] == truth.segment
        and explains(truth, alert, effect_end)
    )


def affected_label_times(work: Workload, truth: Injection) -> np.ndarray:
    """Label event times of the labelled predictions the change touched."""
    dims = {d.name: d for d in work.spec.segment_dims}
    times = []
    for chunk in work.chunks():
        mask = chunk.labelled & (chunk.index >= truth.start_index)
        if truth.end_index is not None:
            mask &= chunk.index < truth.end_index
        for dim, value in truth.segment.items():
            mask &= chunk.segments[dim] == dims[dim].values.index(value)
        times.append(chunk.label_time[mask])
    return np.concatenate(times)


def effect_end(work: Workload, truth: Injection) -> float:
    """Event time of the last event the change affected: for labels, the last affected label."""
    assert truth.end_time is not None
    if isinstance(truth.change, AccuracyDrop):
        return float(affected_label_times(work, truth).max())
    return truth.end_time


def measure(run: Run, truth: Injection, alert: dict[str, Any]) -> dict[str, Any]:
    """The detection delay of ``alert`` for ``truth``, in the units the issue states it in."""
    assert truth.first_affected_time is not None and truth.first_affected_ordinal is not None
    end_text = alert["window"]["end"]
    end = _epoch_s(end_text)
    row: dict[str, Any] = {
        "change": truth.kind,
        "feature": truth.feature,
        "segment": truth.segment,
        "detector": alert["detector"],
        "severity": alert["severity"],
        "alert_window": [alert["window"]["start"], end_text],
        "seconds": round(end - truth.first_affected_time, 3),
        "windows": round((end - truth.first_affected_time) / WINDOW_S, 3),
    }
    if isinstance(truth.change, AccuracyDrop):
        row["labelled_events"] = int(np.count_nonzero(affected_label_times(run.work, truth) < end))
    elif not isinstance(truth.change, SegmentSilence):
        seen = run.work.count_sent(truth.segment, end_text)
        row["segment_events"] = seen - truth.first_affected_ordinal
        cited = [run.sent[(int(p), span[1])] for p, span in alert["source"]["offsets"].items()]
        if cited:
            last = max(s.last_index for s in cited)
            row["segment_events_to_last_cited_message"] = (
                run.work.count_sent(truth.segment, last + 1) - truth.first_affected_ordinal
            )
            # The cited offsets are replayable pointers to this verdict: a cited message holds
            # events of the alert's own window.
            row["source_cites_window"] = any(
                s.first_time < end and s.last_time >= _epoch_s(alert["window"]["start"])
                for s in cited
            )
    return row


def within_limit(truth: Injection, row: dict[str, Any]) -> tuple[bool, str]:
    change, unit, limit = LIMITS[truth.position]
    assert change is truth.change
    value = {
        "segment events": row.get("segment_events"),
        "labelled events": row.get("labelled_events"),
        "windows": row["windows"],
    }[unit]
    assert value is not None
    return value <= limit, f"{value} {unit} (limit {limit:g})"


# -- the tests ------------------------------------------------------------------------------------


def _closed_feature_windows(run: Run) -> dict[str, list[dict[str, Any]]]:
    by_segment: dict[str, list[dict[str, Any]]] = {}
    for r in run.metrics:
        if not r["performance"]:
            by_segment.setdefault(json.dumps(r["segment"], sort_keys=True), []).append(r)
    return by_segment


def test_stationary_stream_of_216k_predictions_and_labels_raises_no_alert(
    config: Config, tmp_path: Path
) -> None:
    run = run_workload(config, tmp_path, WorkloadSpec(rate=RATE), STATIONARY_EVENTS)
    windows = _closed_feature_windows(run)
    judged_events = sum(r["count"] for r in windows.get("{}", []))
    outcome_windows = [r for r in run.metrics if r["performance"] and r["segment"] == {}]
    firing = [a for a in run.alerts if a["status"] == "firing"]
    counts: dict[str, int] = {}
    for a in firing:
        key = describe(a).split(" window=")[0].split(maxsplit=2)[2]
        counts[key] = counts.get(key, 0) + 1
    print(
        f"\nstationary: {run.predictions} predictions, {run.labels} labels, "
        f"{len(windows)} monitors x {min(len(v) for v in windows.values())} closed windows "
        f"({judged_events} events judged), {len(outcome_windows)} outcome windows, "
        f"{run.late_events:g} late, {len(firing)} firing alerts, {run.seconds:.0f} s; "
        f"join {run.join}"
    )
    for key, n in sorted(counts.items()):
        print(f"  {n} x {key}")
    # The run was really judged: every monitor against the baseline, every window.
    assert len(windows) == 8, sorted(windows)  # all traffic, 4 countries, 3 devices
    assert all(len(v) >= 17 for v in windows.values()), {k: len(v) for k, v in windows.items()}
    assert all(r["reference"] == "baseline" for v in windows.values() for r in v)
    assert judged_events >= 200_000
    assert run.join["joined"] == run.labels, run.join
    labelled = [(r["window"]["end"][11:19], r["performance"]["labelled"]) for r in outcome_windows]
    # Every label is judged in its label-time window: all those before the last closed one's
    # end (the windows after it wait for the predictions' watermark or their silence).
    last_end = max(_epoch_s(r["window"]["end"]) for r in outcome_windows)
    due = sum(1 for label in run.work.labels() if label["timestamp"] < last_end)
    assert sum(n for _, n in labelled) == due >= 190_000, labelled
    assert not firing, f"{len(firing)} false alarms:\n" + "\n".join(map(describe, firing))


def test_each_injected_change_alerts_in_its_segment_within_its_delay_and_resolves_after_revert(
    config: Config, tmp_path: Path
) -> None:
    spec = WorkloadSpec(rate=RATE, changes=CHANGES)
    run = run_workload(config, tmp_path, spec, CHANGED_EVENTS)
    truths = run.work.ground_truth()
    firing = [a for a in run.alerts if a["status"] == "firing"]
    resolved = [a for a in run.alerts if a["status"] == "resolved"]
    print(
        f"\nchanges: {run.predictions} predictions, {run.labels} labels, {len(firing)} firing "
        f"and {len(resolved)} resolved alerts, {run.late_events:g} late, {run.seconds:.0f} s; "
        f"join {run.join}"
    )
    for a in run.alerts:
        print("  " + describe(a))

    problems: list[str] = []
    if run.join["joined"] != run.labels:
        problems.append(f"{run.labels} labels sent, join: {run.join}")
    rows = []
    ends = {truth.position: effect_end(run.work, truth) for truth in truths}
    for truth in truths:
        name = f"{truth.kind} {truth.feature or ''} {truth.segment}"
        hits = sorted(
            (a for a in firing if is_expected(truth, a, ends[truth.position])),
            key=lambda a: a["window"]["end"],
        )
        if not hits:
            problems.append(f"{name}: no {EXPECTED[type(truth.change)]} alert")
            continue
        row = measure(run, truth, hits[0])
        ok, text = within_limit(truth, row)
        row["within_limit"] = ok
        rows.append(row)
        if not ok:
            problems.append(f"{name}: detected after {text}")
        if row.get("source_cites_window") is False:
            problems.append(f"{name}: source offsets miss the alert's window: {hits[0]}")
        if isinstance(truth.change, AccuracyDrop):
            # The realised accuracy of a labelled window, not only the error-stream detector.
            windowed = [a for a in hits if a["detector"] == "accuracy"]
            if not windowed:
                problems.append(f"{name}: no accuracy alert")
            else:
                rows.append(measure(run, truth, windowed[0]))
                if not windowed[0]["value"] < 0.8:
                    problems.append(f"{name}: window accuracy {windowed[0]['value']} >= 0.8")
        # Every alert the change caused resolves once it has reverted.
        assert truth.end_time is not None
        for a in (a for a in firing if explains(truth, a, ends[truth.position])):
            key = (a["kind"], a["detector"], a["feature"], a["segment"])
            if not any(
                (r["kind"], r["detector"], r["feature"], r["segment"]) == key
                and _epoch_s(r["window"]["start"]) >= truth.end_time
                for r in resolved
            ):
                problems.append(f"{name}: never resolved: {describe(a)}")
    print("detection delays:")
    for row in rows:
        print("  " + json.dumps(row))
    unexplained = [a for a in firing if not any(explains(t, a, ends[t.position]) for t in truths)]
    problems += [f"no change explains: {describe(a)}" for a in unexplained]
    assert not problems, "\n".join(problems)
