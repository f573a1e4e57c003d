"""observe_many: a batch of label delays lands in the histogram as one by one; a scrape of some
names renders those alone."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from streamproc.worker.metrics import DELAY_BUCKETS, WorkerMetrics, observe_many


def _samples(h: Histogram) -> list[tuple[str, str | None, float]]:
    return [
        (s.name, s.labels.get("le"), s.value)
        for s in h.collect()[0].samples
        if not s.name.endswith("_created")
    ]


def _pair() -> tuple[Histogram, Histogram]:
    a, b = CollectorRegistry(), CollectorRegistry()
    return (
        Histogram("d", "delay", buckets=DELAY_BUCKETS, registry=a),
        Histogram("d", "delay", buckets=DELAY_BUCKETS, registry=b),
    )


def test_a_batch_counts_every_bucket_as_observing_each_value_does() -> None:
    rng = np.random.default_rng(7)
    bounds = [float(b) for b in DELAY_BUCKETS]
    # on the bounds, either side of them, below the first, past the last, over three batches
    values = [*bounds, *(b + 1e-9 for b in bounds), *(b - 1e-9 for b in bounds), 0.0, 1e9]
    values += rng.exponential(3600.0, 2_000).tolist()
    one_by_one, batched = _pair()
    for v in values:
        one_by_one.observe(v)
    for part in (values[:10], values[10:11], values[11:]):
        observe_many(batched, part)
    observe_many(batched, [])
    got, want = _samples(batched), _samples(one_by_one)
    assert [(n, le) for n, le, _ in got] == [(n, le) for n, le, _ in want]
    for (_, le, g), (_, _, w) in zip(got, want, strict=True):
        assert math.isclose(g, w, rel_tol=1e-12), le  # the sum adds in another order
    assert dict((n, v) for n, _, v in want)["d_count"] == len(values)  # it compares something


def test_a_histogram_without_the_expected_internals_is_observed_one_by_one() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, v: float) -> None:
            self.seen.append(v)

    plain = Plain()
    observe_many(plain, [3.0, 1.0])  # type: ignore[arg-type]
    assert plain.seen == [3.0, 1.0]


def test_a_scrape_of_named_samples_renders_those_alone() -> None:
    m = WorkerMetrics()
    m.events.labels(topic="predictions", outcome="accepted").inc(3)
    m.join.labels(result="joined").inc()
    full = m.render().decode()
    assert "streamproc_join_total" in full and "process_cpu_seconds_total" in full
    some = m.render(["streamproc_events_total"]).decode()
    samples = [line for line in some.splitlines() if not line.startswith("#")]
    assert samples == ['streamproc_events_total{outcome="accepted",topic="predictions"} 3.0']
    both = m.render(["streamproc_events_total", "streamproc_join_total"]).decode()
    assert 'streamproc_join_total{result="joined"} 1.0' in both
    assert "process_cpu_seconds_total" not in both
