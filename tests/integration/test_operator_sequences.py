"""The operator's sequences that broke the live path, end to end.

Real ``streamproc worker`` processes, Kafka and Redis, the synthetic workload, and baselines
stored the way an operator stores them (``BaselineStore.put``):

1. a baseline stored after the model's data, then a restart;
2. a baseline stored while the worker runs;
3. traffic that stops;
4. two workers in one consumer group against one worker, then a restart with nothing to read;
5. a SIGKILL in the middle of the input, then a restart.

Every test checks the alerts it expects and that no agent crashed
(:meth:`~tests.integration.workers.WorkerProcess.assert_healthy`: alive until stopped, no
traceback and no Faust ``Crashed`` in its log, ``streamproc_monitor_errors_total`` at 0); its
waits fail at once, with the traceback, when a worker's log shows a crash. Event times are the
workload's own, in 2024, so windows close as fast as data arrives, except in (3), where
wall-clock idleness is the point.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streamproc.baseline import BaselineStore
from streamproc.config import Config
from streamproc.dev.synthetic import (
    AccuracyDrop,
    MeanShift,
    NewCategory,
    Workload,
    WorkloadSpec,
    reference_profile,
)
from streamproc.kafka import topics
from streamproc.redis_client import sync_client
from tests.conftest import Endpoints, config_for
from tests.integration.workers import (
    Produced,
    TopicTail,
    WorkerProcess,
    group_members,
    produce_batches,
    read_topic,
    stop_all,
    uncommitted,
    wait_all,
    worker_partitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 50.0  # events per second of event time
WINDOW_S = 60.0
LATENESS_S = 5.0
PER_WINDOW = int(RATE * WINDOW_S)  # 3,000 events
BATCH = 250  # 5 s of event time per message: each of the 6 partitions gets two per window
PARTITIONS = 6
SEED = 7
MONITOR_ENV = {
    "STREAMPROC_MONITORING_WINDOW_S": str(WINDOW_S),
    "STREAMPROC_MONITORING_TICK_S": "5",
    "STREAMPROC_MONITORING_LATENESS_S": str(LATENESS_S),
    "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "300",
    # A partition left unfetched by a rebalance is cured well within the waits below.
    "STREAMPROC_WORKER_STALL_TIMEOUT_S": "20",
}
MODEL = WorkloadSpec().model_id
DE = {"country": "DE"}
ANDROID = {"device": "android"}
WEB = {"device": "web"}
# The model does not score from f10 or c1: their changes leave predictions and accuracy alone.
SHIFTED, CATEGORICAL = "f10", "c1"
PERFORMANCE_DETECTORS = ("accuracy", "adwin_error")


# -- helpers --------------------------------------------------------------------------------------


def store_baseline(cfg: Config, spec: WorkloadSpec, rate: bool = False) -> None:
    """What an operator does: a reference of the model's stationary world, put in Redis.

    ``rate``: make sure each segment carries its traffic rate (rows per second of event time,
    the workload's own), so a silent segment can be judged against it.
    """
    profile = reference_profile(spec, source="test reference")
    if rate:
        rows = profile.segments["all"].count
        profile = msgspec.structs.replace(
            profile,
            segments={
                key: seg
                if seg.rate_per_s
                else msgspec.structs.replace(seg, rate_per_s=seg.count * spec.rate / rows)
                for key, seg in profile.segments.items()
            },
        )
    BaselineStore(sync_client(cfg.redis), cfg.redis.prefix).put(profile)


def answers(worker: WorkerProcess) -> bool:
    try:
        worker.metrics_text()
    except OSError:
        return False
    return True


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def seg_key(segment: Mapping[str, str]) -> str:
    return json.dumps(dict(segment), sort_keys=True)


def describe(alert: Mapping[str, Any]) -> str:
    seg = ",".join(f"{k}={v}" for k, v in sorted(alert["segment"].items())) or "all"
    return (
        f"{alert['status']} {alert['severity']} {alert['kind']}/{alert['detector']} "
        f"feature={alert['feature']} segment={seg} window={alert['window']['start']}"
    )


def firing(
    alerts: Sequence[Mapping[str, Any]],
    kind: str,
    feature: str | None,
    segment: Mapping[str, str],
    detectors: Sequence[str] | None = None,
) -> list[Mapping[str, Any]]:
    return [
        a
        for a in alerts
        if a["status"] == "firing"
        and a["kind"] == kind
        and a["feature"] == feature
        and a["segment"] == segment
        and (detectors is None or a["detector"] in detectors)
    ]


def holds(monitor: Mapping[str, str], scope: Mapping[str, str]) -> bool:
    """Whether a monitor's traffic includes events of ``scope`` (all traffic and every device
    segment hold some of country=DE's events)."""
    return all(scope.get(dim, value) == value for dim, value in monitor.items())


def window_segments(event: Mapping[str, Any]) -> Iterator[str]:
    """The monitors an event feeds: all traffic and one per segment dimension."""
    yield seg_key({})
    for dim, value in event["segments"].items():
        yield seg_key({dim: value})


def watermark(*inputs: Produced) -> float:
    """How far the input's own event time lets every window close, whatever the worker's
    design: the oldest newest-event time over every partition of every input sent (predictions,
    and labels once sent), minus the lateness."""
    if any(len(sent.last_time) < PARTITIONS for sent in inputs):
        return -math.inf  # a partition without data holds the watermark
    return min(t for sent in inputs for t in sent.last_time.values()) - LATENESS_S


def closable_starts(
    events: Sequence[Mapping[str, Any]], watermark: float, window_s: float
) -> dict[float, list[Mapping[str, Any]]]:
    """The windows holding events that end at or before ``watermark``: start -> events."""
    out: dict[float, list[Mapping[str, Any]]] = {}
    for e in events:
        start = math.floor(e["timestamp"] / window_s) * window_s
        if start + window_s <= watermark:
            out.setdefault(start, []).append(e)
    return out


def closable(
    events: Sequence[Mapping[str, Any]], watermark: float, window_s: float
) -> set[tuple[str, float]]:
    """(monitor, window start) of every window of predictions that ends by ``watermark``."""
    return {
        (seg, start)
        for start, held in closable_starts(events, watermark, window_s).items()
        for e in held
        for seg in window_segments(e)
    }


def feature_windows(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """(monitor, window start) of every closed feature window with events on the metrics topic
    (outcome windows carry ``performance``)."""
    return [
        (seg_key(r["segment"]), epoch(r["window"]["start"]))
        for r in records
        if r["count"] and not r["performance"]
    ]


def outcome_windows(records: Sequence[Mapping[str, Any]]) -> set[float]:
    """Starts of the closed outcome (label) windows of all traffic."""
    return {epoch(r["window"]["start"]) for r in records if r["performance"] and r["segment"] == {}}


def comparable(cfg: Config, alerts: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """alert id -> the alert as canonical JSON without ``emitted_at``, its source topic named by
    role (each run has topics of its own); fails when one id was published with two contents."""
    roles = {cfg.topics.predictions: "<predictions>", cfg.topics.labels: "<labels>"}
    out: dict[str, str] = {}
    for a in alerts:
        assert a["source"]["topic"] in roles, a["source"]
        kept = {k: v for k, v in a.items() if k != "emitted_at"}
        kept["source"] = {**a["source"], "topic": roles[a["source"]["topic"]]}
        text = json.dumps(kept, sort_keys=True)
        assert out.setdefault(a["alert_id"], text) == text, (
            f"alert {a['alert_id']} published with two contents:\n{out[a['alert_id']]}\n{text}"
        )
    return out


def differences(expected: Mapping[str, str], got: Mapping[str, str]) -> str:
    missing = [expected[k][:300] for k in sorted(expected.keys() - got.keys())]
    extra = [got[k][:300] for k in sorted(got.keys() - expected.keys())]
    changed = [
        f"{expected[k][:300]}\n  now {got[k][:300]}"
        for k in expected
        if got.get(k, expected[k]) != expected[k]
    ]
    return f"missing: {missing}\nextra: {extra}\nchanged: {changed}"


# -- 1. a baseline stored after the data, then a restart -----------------------------------------


def test_baseline_stored_after_data_is_used_after_a_restart(config: Config, tmp_path: Path) -> None:
    # The restart falls in the middle of a window, as an operator's restart does.
    before, after = 5 * PER_WINDOW // 2, 4 * PER_WINDOW
    shift = MeanShift(SHIFTED, 1.0, start=3 * PER_WINDOW, segment=DE)
    spec = WorkloadSpec(rate=RATE, changes=(shift,))
    events = list(Workload(spec, before + after, seed=SEED).predictions())
    restart_time = spec.time_of(before)
    topics.apply(config, topics.load_topics(config))
    metrics = TopicTail(config, config.topics.metrics)
    alerts = TopicTail(config, config.topics.alerts)
    workers: list[WorkerProcess] = []
    try:
        # No baseline: the worker warms up on the model's first windows, checkpoints, stops.
        sent = produce_batches(config, config.topics.predictions, events[:before], BATCH)
        workers.append(WorkerProcess(config, tmp_path, **MONITOR_ENV))
        wait_all(
            workers,
            lambda: not uncommitted(config),
            90,
            "the first part read, monitored and committed",
            lambda: str(uncommitted(config)),
        )
        workers[0].stop()

        # The operator stores the baseline, starts the worker again, traffic goes on.
        store_baseline(config, spec)
        workers.append(WorkerProcess(config, tmp_path, **MONITOR_ENV))
        more = produce_batches(
            config, config.topics.predictions, events[before:], BATCH, first=before // BATCH
        )
        due = {
            (seg, start)
            for seg, start in closable(events, watermark(sent.then(more)), WINDOW_S)
            if start >= restart_time
        }

        def done() -> bool:
            closed = set(feature_windows(metrics.read()))
            return due <= closed and bool(firing(alerts.read(), "feature_drift", SHIFTED, DE))

        wait_all(
            workers[1:],
            done,
            90,
            f"a feature_drift alert for {SHIFTED} in country=DE and every window after the "
            "restart closed",
            lambda: (
                f"windows not closed: {sorted(due - set(feature_windows(metrics.records)))}"
                + "; alerts: "
                + ("; ".join(describe(a) for a in alerts.records) or "none")
            ),
        )
    finally:
        stop_all(workers)
        metrics.close()
        alerts.close()
    for w in workers:
        w.assert_no_crash()

    published = read_topic(config, config.topics.alerts)
    hits = firing(published, "feature_drift", SHIFTED, DE)
    assert all(epoch(a["window"]["end"]) > spec.time_of(3 * PER_WINDOW) for a in hits), hits
    unexplained = [
        describe(a)
        for a in published
        if a["status"] == "firing"
        and not (
            a["kind"] == "feature_drift" and a["feature"] == SHIFTED and holds(a["segment"], DE)
        )
    ]
    assert not unexplained, "alerts the shift does not explain:\n" + "\n".join(unexplained)
    records = read_topic(config, config.topics.metrics)
    closed = feature_windows(records)
    assert len(closed) == len(set(closed)), "a window was closed twice across the restart"
    judged = {
        (seg_key(r["segment"]), r["window"]["start"]): r["reference"]
        for r in records
        if not r["performance"] and epoch(r["window"]["start"]) >= restart_time
    }
    assert judged and set(judged.values()) == {"baseline"}, judged
    for w in workers:
        w.assert_healthy()


# -- 2. a baseline stored while the worker runs ---------------------------------------------------

REFRESH_S = 3.0


def test_baseline_stored_while_the_worker_runs_is_picked_up_and_judges_later_changes(
    config: Config, tmp_path: Path
) -> None:
    # Two stationary windows without a baseline (the monitors warm up); the baseline is stored
    # while a third stationary window trickles in, as live traffic would; the changes start
    # with the fourth window and go on for three more.
    before, changed, end = 2 * PER_WINDOW, 3 * PER_WINDOW, 6 * PER_WINDOW
    changes = (
        MeanShift(SHIFTED, 1.0, start=changed, segment=DE),
        NewCategory(CATEGORICAL, "zz", 0.05, start=changed, segment=ANDROID),
        AccuracyDrop(0.7, start=changed, segment=WEB),
    )
    spec = WorkloadSpec(rate=RATE, changes=changes)
    work = Workload(spec, end, seed=SEED)
    predictions = list(work.predictions())
    labels = list(work.labels())  # in label-time order
    changes_at = spec.time_of(changed)
    topics.apply(config, topics.load_topics(config))
    worker = WorkerProcess(
        config,
        tmp_path,
        args=("--loglevel", "INFO"),
        STREAMPROC_MONITORING_BASELINE_REFRESH_S=str(REFRESH_S),
        **MONITOR_ENV,
    )
    metrics = TopicTail(config, config.topics.metrics)
    alerts = TopicTail(config, config.topics.alerts)
    p_topic, l_topic = config.topics.predictions, config.topics.labels
    expected = {
        f"feature_drift {SHIFTED} country=DE": ("feature_drift", SHIFTED, DE, None),
        f"data_quality/new_category {CATEGORICAL} device=android": (
            "data_quality",
            CATEGORICAL,
            ANDROID,
            ("new_category",),
        ),
        "performance device=web": ("performance", None, WEB, PERFORMANCE_DETECTORS),
    }

    def missing() -> list[str]:
        got = alerts.read()
        return [name for name, (k, f, s, d) in expected.items() if not firing(got, k, f, s, d)]

    def reloads() -> float:
        return worker.metric("streamproc_baseline_reloads_total", model=MODEL)

    sent_p = Produced(0, {})
    sent_l = Produced(0, {})

    def send(until: int, labels_too: bool = True) -> None:
        """Predictions up to index ``until``, then the labels of predictions already sent."""
        nonlocal sent_p, sent_l
        chunk = predictions[sent_p.events : until]
        first = -(-sent_p.events // BATCH)
        sent_p = sent_p.then(produce_batches(config, p_topic, chunk, BATCH, first=first))
        if labels_too:
            # A label's time is after its prediction's: one before the last prediction sent
            # belongs to a prediction already sent.
            newest = predictions[until - 1]["timestamp"]
            due = [x for x in labels[sent_l.events :] if x["timestamp"] < newest]
            if until == len(predictions):
                due = labels[sent_l.events :]
            first = -(-sent_l.events // BATCH)
            sent_l = sent_l.then(produce_batches(config, l_topic, due, BATCH, first=first))

    try:
        # No baseline yet: traffic (predictions, then their labels) warms the monitors up.
        send(before, labels_too=False)
        wait_all([worker], lambda: not uncommitted(config, [p_topic]), 90, "predictions read")
        send(before)
        wait_all(
            [worker],
            lambda: not uncommitted(config),
            90,
            "the first part read, monitored and committed",
            lambda: str(uncommitted(config)),
        )

        # The operator builds the baseline while traffic goes on (a 5 s message every 0.75 s);
        # the worker must pick it up within REFRESH_S (and some slack) and say so.
        mark = worker.log_size()
        store_baseline(config, spec)
        stored = time.monotonic()
        for until in range(before + BATCH, changed + 1, BATCH):
            send(until)
            worker.assert_no_crash()
            time.sleep(0.75)
        reloads_metric = f'streamproc_baseline_reloads_total{{model="{MODEL}"}}'
        wait_all(
            [worker],
            lambda: reloads() >= 1,
            max(0.0, stored + REFRESH_S + 15 - time.monotonic()),
            f"{reloads_metric} >= 1 within {REFRESH_S:g} s (+15 s) of storing the baseline",
        )

        # Then the model's world changes, in three segments; labels once predictions are read.
        send(len(predictions), labels_too=False)
        wait_all([worker], lambda: not uncommitted(config, [p_topic]), 90, "predictions read")
        send(len(predictions))
        due = {
            (seg, start)
            for seg, start in closable(predictions, watermark(sent_p, sent_l), WINDOW_S)
            if start >= changes_at
        }
        wait_all(
            [worker],
            lambda: not missing() and due <= set(feature_windows(metrics.read())),
            90,
            "an alert for each change, and every window of the changes closed",
            lambda: (
                f"missing {missing()}; windows not closed: "
                f"{sorted(due - set(feature_windows(metrics.records)))}; alerts: "
                + "; ".join(describe(a) for a in alerts.records)
            ),
        )
        log = worker.log_text(mark)
    finally:
        worker.stop()
        metrics.close()
        alerts.close()
    worker.assert_no_crash()
    said = [
        line
        for line in log.splitlines()
        if MODEL in line and re.search(r"\bbaseline\b", line, re.IGNORECASE)
    ]
    assert said, f"no log line names {MODEL} and its baseline after it was stored:\n{log[-3000:]}"
    judged = {
        (seg_key(r["segment"]), r["window"]["start"]): r["reference"]
        for r in metrics.records
        if not r["performance"] and epoch(r["window"]["start"]) >= changes_at
    }
    assert judged and set(judged.values()) == {"baseline"}, judged
    worker.assert_healthy()


# -- 3. traffic stops ---------------------------------------------------------------------------

IDLE_WINDOW_S = 10.0
IDLE_ENV = {
    "STREAMPROC_MONITORING_WINDOW_S": str(IDLE_WINDOW_S),
    "STREAMPROC_MONITORING_TICK_S": "2",
    "STREAMPROC_MONITORING_LATENESS_S": "2",
    "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "5",
}


def feature_records_of_window(
    records: Sequence[Mapping[str, Any]], start: float
) -> list[Mapping[str, Any]]:
    """The all-traffic feature records (not performance) of the window starting at ``start``."""
    return [
        r
        for r in records
        if r["segment"] == {} and not r["performance"] and epoch(r["window"]["start"]) == start
    ]


def test_when_traffic_stops_the_last_window_is_judged_and_the_silence_alerted(
    config: Config, tmp_path: Path
) -> None:
    topics.apply(config, topics.load_topics(config))
    store_baseline(config, WorkloadSpec(rate=RATE), rate=True)
    worker = WorkerProcess(config, tmp_path, **IDLE_ENV)
    metrics = TopicTail(config, config.topics.metrics)
    alerts = TopicTail(config, config.topics.alerts)
    try:
        wait_all([worker], lambda: answers(worker), 60, "the worker's /metrics")
        # Four full windows of traffic ending now, on a window boundary; then nothing.
        end = math.floor(time.time() / IDLE_WINDOW_S) * IDLE_WINDOW_S
        n = int(4 * IDLE_WINDOW_S * RATE)
        spec = WorkloadSpec(rate=RATE, start_time=iso(end - n / RATE))
        events = list(Workload(spec, n, seed=SEED).predictions())
        produce_batches(config, config.topics.predictions, events, int(RATE))  # 1 s a message
        last_start = end - IDLE_WINDOW_S
        windows = {
            (seg, math.floor(e["timestamp"] / IDLE_WINDOW_S))
            for e in events
            for seg in window_segments(e)
        }

        def last_window(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
            return feature_records_of_window(records, last_start)

        def silence() -> list[Mapping[str, Any]]:
            return [
                a
                for a in firing(alerts.read(), "volume", None, {}, ("volume_drop",))
                if epoch(a["window"]["start"]) >= end
            ]

        wait_all(
            [worker],
            lambda: (
                bool(last_window(metrics.read()))
                and worker.metric("streamproc_windows_closed_total") >= len(windows)
                and bool(silence())
            ),
            60,
            f"the window of the last events ({iso(last_start)}) closed, "
            f"{len(windows)} windows counted closed, and a volume_drop alert for an empty window",
            lambda: (
                f"last window closed: {bool(last_window(metrics.read()))}, "
                f"windows closed: {worker.metric('streamproc_windows_closed_total'):g}, alerts: "
                + "; ".join(describe(a) for a in alerts.records)
            ),
        )
    finally:
        worker.stop()
        metrics.close()
        alerts.close()
    worker.assert_no_crash()
    (record,) = last_window(metrics.records)
    in_last = sum(1 for e in events if e["timestamp"] >= last_start)
    assert record["count"] == in_last, "the last window must be judged on all its events"
    worker.assert_healthy()


def test_a_worker_started_after_traffic_stopped_closes_the_last_window(
    config: Config, tmp_path: Path
) -> None:
    """The partitions a restarted worker gets are already read to their end: it reads nothing,
    and the silence it sees must still close the window the first worker left open."""
    topics.apply(config, topics.load_topics(config))
    store_baseline(config, WorkloadSpec(rate=RATE), rate=True)
    # The first worker waits longer than the test for silence: the restart comes first.
    first = WorkerProcess(
        config, tmp_path, **{**IDLE_ENV, "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "600"}
    )
    metrics = TopicTail(config, config.topics.metrics)
    second: WorkerProcess | None = None
    try:
        wait_all([first], lambda: answers(first), 60, "the worker's /metrics")
        end = math.floor(time.time() / IDLE_WINDOW_S) * IDLE_WINDOW_S
        n = int(3 * IDLE_WINDOW_S * RATE)
        spec = WorkloadSpec(rate=RATE, start_time=iso(end - n / RATE))
        events = list(Workload(spec, n, seed=SEED).predictions())
        produce_batches(config, config.topics.predictions, events, int(RATE))
        wait_all(
            [first],
            lambda: not uncommitted(config, [config.topics.predictions]),
            60,
            f"the first worker read and committed all {n} predictions",
        )
        first.stop()
        last_start = end - IDLE_WINDOW_S

        def last_window(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
            return feature_records_of_window(records, last_start)

        assert not last_window(metrics.read()), (
            "the first worker must stop before silence closes the window"
        )
        second = WorkerProcess(config, tmp_path, **IDLE_ENV)
        wait_all(
            [second],
            lambda: bool(last_window(metrics.read())),
            90,
            f"the last window ({iso(last_start)}) closed by the restarted worker",
        )
        read = second.metric("streamproc_messages_total", topic="predictions")
        assert read == 0, "the restarted worker must find its partitions read to their end"
    finally:
        for w in (first, second):
            if w is not None:
                w.stop()
        metrics.close()
    (record,) = last_window(metrics.records)
    assert record["count"] == sum(1 for e in events if e["timestamp"] >= last_start)
    first.assert_healthy()
    assert second is not None
    second.assert_healthy()


# -- 4 and 5. one worker, two workers, a SIGKILL: the same alerts -------------------------------

CHANGES = (
    MeanShift(SHIFTED, 1.0, start=2 * PER_WINDOW, end=4 * PER_WINDOW, segment=DE),
    NewCategory(CATEGORICAL, "zz", 0.05, start=3 * PER_WINDOW, end=5 * PER_WINDOW, segment=ANDROID),
    AccuracyDrop(0.7, start=2 * PER_WINDOW, end=4 * PER_WINDOW, segment=WEB),
)
SPEC = WorkloadSpec(rate=RATE, changes=CHANGES)
N_EVENTS = 9 * PER_WINDOW  # the changes revert by window 5: windows 5-7 clear them


@dataclasses.dataclass
class Feed:
    """The input of a run and what it must close."""

    predictions: list[dict[str, Any]]
    labels: list[dict[str, Any]]

    @classmethod
    def make(cls) -> Feed:
        work = Workload(SPEC, N_EVENTS, seed=SEED)
        return cls(list(work.predictions()), list(work.labels()))


@dataclasses.dataclass
class Run:
    """What a run published, and its workers (stopped; judged by ``assert_healthy``)."""

    cfg: Config
    alerts: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    workers: list[WorkerProcess]


def prepare(cfg: Config) -> None:
    topics.apply(cfg, topics.load_topics(cfg))
    store_baseline(cfg, SPEC)


def finish(
    cfg: Config,
    workers: Sequence[WorkerProcess],
    feed: Feed,
    predictions: Produced,
    metrics: TopicTail,
) -> None:
    """Labels once every prediction was read (a label pipeline's steady state), then wait until
    every window the input closes is closed and every message of the group is committed."""
    wait_all(
        workers,
        lambda: not uncommitted(cfg, [cfg.topics.predictions]),
        90,
        "every prediction read",
    )
    labels = produce_batches(cfg, cfg.topics.labels, feed.labels, BATCH)
    due = closable(feed.predictions, watermark(predictions, labels), WINDOW_S)
    label_starts = set(closable_starts(feed.labels, watermark(predictions, labels), WINDOW_S))

    def progress() -> str:
        closed = set(feature_windows(metrics.records))
        return (
            f"feature windows not closed: {sorted(due - closed)[:8]}, outcome windows not "
            f"closed: {sorted(label_starts - outcome_windows(metrics.records))}, "
            f"uncommitted: {uncommitted(cfg)}"
        )

    wait_all(
        workers,
        lambda: (
            due <= set(feature_windows(metrics.read()))
            and label_starts <= outcome_windows(metrics.records)
            and not uncommitted(cfg)
        ),
        90,
        "every closable window closed and every message committed",
        progress,
    )


def run_workers(cfg: Config, tmp_path: Path, n: int, feed: Feed) -> Run:
    prepare(cfg)
    predictions = produce_batches(cfg, cfg.topics.predictions, feed.predictions, BATCH)
    workers = [WorkerProcess(cfg, tmp_path, **MONITOR_ENV) for _ in range(n)]
    metrics = TopicTail(cfg, cfg.topics.metrics)
    try:
        finish(cfg, workers, feed, predictions, metrics)
    finally:
        stop_all(workers)
        metrics.close()
    for w in workers:
        w.assert_no_crash()
    alerts, records = read_topic(cfg, cfg.topics.alerts), read_topic(cfg, cfg.topics.metrics)
    return Run(cfg, alerts, records, workers)


@pytest.fixture(scope="module")
def feed() -> Feed:
    return Feed.make()


@pytest.fixture(scope="module")
def uninterrupted(
    endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory, feed: Feed
) -> Run:
    """One worker, never interrupted: the alerts the other runs must equal."""
    cfg = config_for(endpoints, f"{uuid.uuid4().hex[:8]}-one")
    run = run_workers(cfg, tmp_path_factory.mktemp("uninterrupted"), 1, feed)
    kinds = {(a["kind"], a["status"]) for a in run.alerts}
    assert {("feature_drift", "firing"), ("feature_drift", "resolved")} <= kinds, kinds
    assert ("performance", "firing") in kinds, kinds
    return run


def test_two_workers_publish_what_one_does_and_a_restart_with_nothing_to_read_adds_nothing(
    endpoints: Endpoints,
    tmp_path: Path,
    feed: Feed,
    uninterrupted: Run,
) -> None:
    one = uninterrupted
    cfg = config_for(endpoints, f"{uuid.uuid4().hex[:8]}-two")
    two = run_workers(cfg, tmp_path, 2, feed)
    expected, got = comparable(one.cfg, one.alerts), comparable(cfg, two.alerts)
    assert got == expected, differences(expected, got)
    closed = feature_windows(two.metrics)
    assert len(closed) == len(set(closed)), "a window was closed twice"

    # Both stopped; one comes back to the same group with nothing new to read. Whatever the
    # run left unchecked (a keyed message never checkpointed or committed) shows now: a
    # republished alert, a window closed again, or offsets that never reach the end.
    again = WorkerProcess(cfg, tmp_path, **MONITOR_ENV)
    try:
        wanted = worker_partitions(cfg)
        wait_all(
            [again],
            lambda: any(wanted <= m for m in group_members(cfg)),
            60,
            "the restarted worker owning every partition",
        )
        wait_all(
            [again],
            lambda: not uncommitted(cfg),
            30,
            "every message committed after the restart",
            lambda: str(uncommitted(cfg)),
        )
        time.sleep(8)  # a tick of the monitors' timer and a commit interval, and then some
        stuck = uncommitted(cfg)
    finally:
        again.stop()
    again.assert_no_crash()
    assert not stuck, f"uncommitted after the restart: {stuck}"
    alerts, records = read_topic(cfg, cfg.topics.alerts), read_topic(cfg, cfg.topics.metrics)
    new_alerts = [describe(a) for a in alerts[len(two.alerts) :]]
    assert not new_alerts, "the restart published alerts again:\n" + "\n".join(new_alerts)
    assert len(records) == len(two.metrics), (
        f"the restart published {len(records) - len(two.metrics)} metrics records again"
    )
    for w in [*one.workers, *two.workers, again]:
        w.assert_healthy()


def test_sigkill_mid_input_then_restart_publishes_the_alerts_of_an_uninterrupted_run(
    endpoints: Endpoints,
    tmp_path: Path,
    feed: Feed,
    uninterrupted: Run,
) -> None:
    one = uninterrupted
    cfg = config_for(endpoints, f"{uuid.uuid4().hex[:8]}-kill")
    prepare(cfg)
    half = N_EVENTS // 2 // BATCH * BATCH
    env = {**MONITOR_ENV, "STREAMPROC_WORKER_SESSION_TIMEOUT_S": "6"}
    metrics = TopicTail(cfg, cfg.topics.metrics)
    first = WorkerProcess(cfg, tmp_path, **env)
    workers = [first]
    try:
        # The first half is read and judged in part; the second half is arriving when the
        # worker is killed, so state, outputs and offsets are each somewhere in between.
        early = produce_batches(cfg, cfg.topics.predictions, feed.predictions[:half], BATCH)
        wait_all(
            workers,
            lambda: (
                (seg_key({}), SPEC.epoch) in feature_windows(metrics.read())
                and not uncommitted(cfg, [cfg.topics.predictions])
            ),
            90,
            "the first half read and its first window closed",
        )
        late = produce_batches(
            cfg, cfg.topics.predictions, feed.predictions[half:], BATCH, first=half // BATCH
        )
        time.sleep(0.5)
        first.kill()
        at_kill = uncommitted(cfg)
        assert at_kill, "the worker had read and committed everything before the kill"
        predictions = early.then(late)
        workers.append(WorkerProcess(cfg, tmp_path, **env))
        finish(cfg, workers[1:], feed, predictions, metrics)
    finally:
        stop_all(workers)
        metrics.close()
    for w in workers:
        w.assert_no_crash()
    expected = comparable(one.cfg, one.alerts)
    got = comparable(cfg, read_topic(cfg, cfg.topics.alerts))  # one id, one content
    assert got == expected, differences(expected, got)
    for w in [*one.workers, *workers]:
        w.assert_healthy()


def test_traffic_waiting_before_the_first_start_is_judged_in_every_window(
    config: Config, tmp_path: Path
) -> None:
    """Baseline stored, a backlog in Kafka, then the first start: the sources fold the backlog
    before the judge has decided the model's reference, so they sample it, and each window
    holds more rows than the sample keeps (``warmup_sample`` 500 of 3,000). Every window's
    features are still judged (on the uniform sample), and a shift in one of them alerts;
    they were judged on nothing, silently, when an overflowing sample was dropped."""
    shift = MeanShift(SHIFTED, 1.5, start=3 * PER_WINDOW)
    spec = WorkloadSpec(rate=RATE, changes=(shift,))
    events = list(Workload(spec, 6 * PER_WINDOW, seed=SEED).predictions())
    topics.apply(config, topics.load_topics(config))
    store_baseline(config, spec)
    produce_batches(config, config.topics.predictions, events, BATCH)
    worker = WorkerProcess(
        config, tmp_path, **MONITOR_ENV, STREAMPROC_MONITORING_WARMUP_SAMPLE="500"
    )
    try:
        worker.wait_until_judged(120)
    finally:
        worker.stop()
    worker.assert_healthy()
    records = read_topic(config, config.topics.metrics)
    judged = [r for r in records if r["segment"] == {} and r["count"] and not r["performance"]]
    assert len(judged) >= 4
    for r in judged:
        assert r["reference"] == "baseline"
        assert r["features"][SHIFTED]["count"] > 0, r["window"]
        assert "psi" in r["features"][SHIFTED], r["window"]
    alerts = read_topic(config, config.topics.alerts)
    hits = firing(alerts, "feature_drift", SHIFTED, {})
    assert hits and min(epoch(a["window"]["start"]) for a in hits) >= spec.time_of(3 * PER_WINDOW)
