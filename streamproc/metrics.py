"""Every Prometheus metric the worker exports, built in one object from an injected registry.

Labels are bounded by construction: topic roles, outcome and reason codes from fixed sets,
partitions. Never a prediction id or a raw feature value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DELAY_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)


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

    def render(self) -> bytes:
        """The exposition text for ``/metrics``."""
        return generate_latest(self.registry)

    def update_never_labelled(self) -> None:
        joined = self.join.labels(result="joined")._value.get()
        expired = self.join.labels(result="expired_prediction")._value.get()
        if joined + expired:
            self.never_labelled_ratio.set(expired / (joined + expired))
