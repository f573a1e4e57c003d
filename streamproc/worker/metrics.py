"""Every Prometheus metric the worker exports, built in one object from an injected registry.

Labels are bounded by construction: topic roles, outcome and reason codes from fixed sets,
partitions. Never a prediction id or a raw feature value.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DELAY_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every ``v`` of ``values``, with one count per bucket.

    A join batch observes thousands of label delays: one by one, that is a lock and a bucket
    search each (~0.9 µs). Where prometheus_client's histogram does not have the buckets this
    relies on, it observes them one by one.

    >>> r = CollectorRegistry()
    >>> h = Histogram("d", "delay", buckets=(1, 10), registry=r)
    >>> observe_many(h, [0.5, 1.0, 3.0, 20.0])
    >>> [(s.labels.get("le"), s.value) for s in h.collect()[0].samples if s.name == "d_bucket"]
    [('1.0', 2.0), ('10.0', 3.0), ('+Inf', 4.0)]
    """
    if not values:
        return
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if (
        buckets is None
        or bounds is None
        or len(buckets) != len(bounds)
        or not hasattr(histogram, "_sum")
    ):
        for v in values:
            histogram.observe(v)
        return
    x = np.asarray(values, dtype=np.float64)
    histogram._sum.inc(float(x.sum()))  # type: ignore[attr-defined]
    # observe() counts a value in the first bucket whose bound it does not exceed; NaN in none
    counts = np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds) + 1)
    for bucket, n in zip(buckets, counts[: len(bounds)].tolist(), strict=True):
        if n:
            bucket.inc(n)


def scrape_path(names: Sequence[str] = ()) -> str:
    """The path of a ``/metrics`` scrape of the samples ``names`` alone (of all, with none):
    what :meth:`WorkerMetrics.render` reads from the query.

    >>> scrape_path(), scrape_path(["streamproc_events_total"])
    ('/metrics', '/metrics?name%5B%5D=streamproc_events_total')
    """
    return "/metrics" + ("?" + urlencode([("name[]", n) for n in names]) if names else "")


class WorkerMetrics:
    """The worker's metrics. Pass a fresh ``CollectorRegistry`` in tests.

    Examples
    --------
    >>> m = WorkerMetrics(CollectorRegistry())
    >>> m.events.labels(topic="predictions", outcome="accepted").inc(3)
    >>> b"streamproc_events_total" in m.render()
    True
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "streamproc_events", "Events read, by topic role and outcome (accepted | deadletter)",
            ["topic", "outcome"], registry=r,
        )  # fmt: skip
        self.messages = Counter(
            "streamproc_messages", "Kafka messages read, by topic role", ["topic"], registry=r
        )
        self.deadletter = Counter(
            "streamproc_deadletter", "Messages or batch elements dead-lettered, by reason code",
            ["reason"], registry=r,
        )  # fmt: skip
        self.join = Counter(
            "streamproc_join",
            "Join transitions: joined | duplicate | expired_prediction | expired_label",
            ["result"], registry=r,
        )  # fmt: skip
        self.label_delay = Histogram(
            "streamproc_label_delay_seconds", "Label event time minus prediction event time",
            buckets=DELAY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "streamproc_batch_seconds", "Processing time of one consumed batch, by topic role",
            ["topic"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "streamproc_consumer_lag", "Messages behind the partition's high watermark",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.pending = Gauge(
            "streamproc_join_pending", "Predictions or labels waiting in Redis for the other half",
            ["side"], registry=r,
        )  # fmt: skip
        self.never_labelled_ratio = Gauge(
            "streamproc_never_labelled_ratio",
            "Share of predictions whose label never came, among those resolved (joined or expired)",
            registry=r,
        )
        self.infra_errors = Counter(
            "streamproc_infrastructure_errors", "Redis or Kafka errors retried, by component",
            ["component"], registry=r,
        )  # fmt: skip

        # Monitoring (one series per monitor; segment is "all" or "dim=value", bounded by the
        # per-dimension top-K cap; feature names come from the baseline or the model's events).
        mfs = ["model", "feature", "segment"]
        self.feature_psi = Gauge(
            "streamproc_feature_psi", "PSI of the last closed window vs the reference", mfs,
            registry=r,
        )  # fmt: skip
        self.feature_js = Gauge(
            "streamproc_feature_js", "Jensen-Shannon divergence (base 2) vs the reference", mfs,
            registry=r,
        )  # fmt: skip
        self.feature_null_rate = Gauge(
            "streamproc_feature_null_rate", "Null rate of the feature in the last closed window",
            mfs, registry=r,
        )  # fmt: skip
        self.prediction_top1_rate = Gauge(
            "streamproc_prediction_top1_rate", "Share of the most frequent predicted class",
            ["model", "segment"], registry=r,
        )  # fmt: skip
        self.accuracy = Gauge(
            "streamproc_accuracy", "Accuracy per window: realized (labels) or estimated (CBPE)",
            ["model", "segment", "kind"], registry=r,
        )  # fmt: skip
        self.performance = Gauge(
            "streamproc_performance",
            "Classifier performance per window (accuracy, roc_auc, f1, precision, recall, "
            "specificity): realized (labels) or estimated (CBPE); bound: value, or the "
            "sampling-noise band's lower/upper edge",
            ["model", "segment", "metric", "kind", "bound"], registry=r,
        )  # fmt: skip
        self.regression_error = Gauge(
            "streamproc_regression_error",
            "Realized error of a regression model per label window: metric = mae | rmse | mape "
            "(mape a share, over labels that are not zero)",
            ["model", "segment", "metric"], registry=r,
        )  # fmt: skip
        self.regression_error_estimated = Gauge(
            "streamproc_regression_error_estimated",
            "Estimated error of a regression model per window of predictions, before its labels "
            "(loss trees fitted on the reference): metric = mae | rmse | mape",
            ["model", "segment", "metric"], registry=r,
        )  # fmt: skip
        self.alerts_firing = Gauge(
            "streamproc_alerts_firing", "Alerts currently firing", ["model", "kind", "severity"],
            registry=r,
        )  # fmt: skip
        self.incidents_open = Gauge(
            "streamproc_incidents_open",
            "1 per open incident (one root cause of a model: a feature, its performance, its "
            "volume...), by severity, cause and root-cause segment",
            ["model", "version", "severity", "cause", "root"], registry=r,
        )  # fmt: skip
        self.detections = Counter(
            "streamproc_detector_detections", "Drift detections by River detectors",
            ["model", "detector", "segment"], registry=r,
        )  # fmt: skip
        self.windows_closed = Counter(
            "streamproc_windows_closed", "Monitor windows closed", ["model"], registry=r
        )
        self.late_events = Counter(
            "streamproc_late_events", "Events later than the allowed lateness (not in any window)",
            ["model"], registry=r,
        )  # fmt: skip
        self.monitors = Gauge(
            "streamproc_monitors", "Monitors (model x version x segment) held by this worker",
            registry=r,
        )  # fmt: skip
        self.aggregated = Counter(
            "streamproc_aggregated_events",
            "Events (predictions and joined outcomes) this process folded into partials",
            ["model"], registry=r,
        )  # fmt: skip
        self.partials = Counter(
            "streamproc_partials",
            "Partial messages: sent by aggregation; received, late or duplicate at the judge",
            ["result"], registry=r,
        )  # fmt: skip
        self.baseline_reloads = Counter(
            "streamproc_baseline_reloads",
            "Baselines (new, changed or deleted) a running worker picked up",
            ["model"], registry=r,
        )  # fmt: skip
        self.monitor_errors = Counter(
            "streamproc_monitor_errors",
            "Exceptions while judging a model; the model is quarantined, its input kept",
            ["model"], registry=r,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "streamproc_event_loop_lag_seconds",
            "How late the event loop woke a 100 ms timer: time it was blocked (stalls)",
            buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=r,
        )  # fmt: skip
        self.loop_lag_max = Gauge(
            "streamproc_event_loop_lag_max_seconds",
            "The longest event-loop stall since the worker started", registry=r,
        )  # fmt: skip
        self.fenced = Counter(
            "streamproc_fenced_writes",
            "Checkpoint writes refused because another worker took the state over (by stage)",
            ["stage"], registry=r,
        )  # fmt: skip
        self.quarantined = Gauge(
            "streamproc_models_quarantined", "Models whose judging stopped on an error",
            registry=r,
        )  # fmt: skip
        self.stage_progress = Gauge(
            "streamproc_stage_last_progress_seconds",
            "Unix time a stage last finished a batch (predictions, labels, judge)",
            ["stage"], registry=r,
        )  # fmt: skip
        self.partition_stalls = Counter(
            "streamproc_partition_stalls",
            "Owned partitions found with input waiting at the broker and none read for "
            "worker.stall_timeout_s (by stage)",
            ["stage"], registry=r,
        )  # fmt: skip
        self.partitions_stalled = Gauge(
            "streamproc_partitions_stalled",
            "Owned partitions stalled now: input waiting at the broker, none read for "
            "worker.stall_timeout_s (by stage)",
            ["stage"], registry=r,
        )  # fmt: skip
        self.stage_pending = Gauge(
            "streamproc_stage_input_pending",
            "Messages waiting for a stage in the partitions this worker owns",
            ["stage"], registry=r,
        )  # fmt: skip

        # process_resident_memory_bytes, process_cpu_seconds_total, open fds (Linux only)
        ProcessCollector(registry=r)
        self.heap_trims = Counter(
            "streamproc_memory_trims",
            "Times the worker gave the heap's free pages back to the OS after work "
            "(worker.memory_trim_s)", registry=r,
        )  # fmt: skip
        self.heap_trimmed = Counter(
            "streamproc_memory_trimmed_bytes",
            "Resident memory the heap trims gave back to the OS", registry=r,
        )  # fmt: skip

    def render(self, names: Sequence[str] = ()) -> bytes:
        """The exposition text for ``/metrics``; with ``names`` (sample names, as
        ``/metrics?name[]=streamproc_events_total`` gives them, the convention of
        prometheus_client's own handlers) only those, without collecting the rest: a poller
        that needs one counter costs the worker less than a full scrape."""
        if names:
            return generate_latest(self.registry.restricted_registry(names))
        return generate_latest(self.registry)

    def update_never_labelled(self) -> None:
        joined = self.join.labels(result="joined")._value.get()
        expired = self.join.labels(result="expired_prediction")._value.get()
        if joined + expired:
            self.never_labelled_ratio.set(expired / (joined + expired))
