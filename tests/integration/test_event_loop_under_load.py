"""A wide model keeps the worker busy, not deaf: /metrics answers while it is saturated.

1,000 features and 5,000 customer values (capped to ``max_segment_values`` segments) in valid
traffic, with a baseline, so every closed window is judged feature by feature in every segment.
Decoding, folding, encoding partials and judging run off the event loop (one thread), so a scrape
of ``/metrics`` is answered within a second at any time, and the worker reports its longest
event-loop stall (``streamproc_event_loop_lag_max_seconds``).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamproc.baseline import BaselineStore, ProfileBuilder
from streamproc.config import Config
from streamproc.kafka import topics
from streamproc.redis_client import sync_client
from tests.integration.workers import WorkerProcess, produce

pytestmark = pytest.mark.integration

FEATURES, CUSTOMERS, EVENTS, RATE, PER_MESSAGE = 1_000, 5_000, 4_000, 50.0, 40
T0 = 1_704_067_200.0


def _events(n: int, seed: int, t0: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n, FEATURES)), 3)
    customers = rng.integers(CUSTOMERS, size=n)
    names = [f"x{k:04d}" for k in range(FEATURES)]
    return [
        {
            "prediction_id": f"w{seed}-{j}",
            "model_id": "wide",
            "model_version": "1",
            "timestamp": t0 + j / RATE,
            "prediction": "yes" if x[j, 0] > 0 else "no",
            "scores": {"yes": 0.6, "no": 0.4} if x[j, 0] > 0 else {"yes": 0.4, "no": 0.6},
            "segments": {"customer": f"c{customers[j]}", "region": f"r{j % 4}"},
            "features": dict(zip(names, x[j].tolist(), strict=True)),
        }
        for j in range(n)
    ]


def test_metrics_answer_within_a_second_while_a_wide_model_saturates_the_worker(
    config: Config, tmp_path: Path
) -> None:
    applied = config
    topics.apply(applied, topics.load_topics(applied))
    builder = ProfileBuilder("wide", "1", segment_dims=("customer", "region"))
    for e in _events(3_000, seed=1, t0=T0 - 86_400):
        builder.add(e["features"], e["prediction"], segments=e["segments"])
    with sync_client(applied.redis) as client:
        BaselineStore(client, applied.redis.prefix).put(builder.build("test"))
    traffic = _events(EVENTS, seed=2, t0=T0)
    messages = [
        json.dumps(traffic[i : i + PER_MESSAGE]).encode() for i in range(0, EVENTS, PER_MESSAGE)
    ]
    produce(applied, applied.topics.predictions, messages)
    env = {
        "STREAMPROC_MONITORING_WINDOW_S": "20",
        "STREAMPROC_MONITORING_TICK_S": "5",
        "STREAMPROC_MONITORING_LATENESS_S": "5",
        "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "5",
    }
    worker = WorkerProcess(applied, tmp_path, **env)
    scrapes: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            started = time.monotonic()
            try:
                url = f"http://127.0.0.1:{worker.port}/metrics"
                with urllib.request.urlopen(url, timeout=30) as r:
                    r.read()
                scrapes.append(time.monotonic() - started)
            except OSError as exc:  # not listening yet
                failures.append(str(exc))
            time.sleep(0.1)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total") >= EVENTS, 300, "every event read"
        )
        # Every window of the 80 s of traffic judged: the count of closed windows with events
        # stops moving (the sources go idle 5 s after the last record).
        worker.wait_until_judged(300, still_s=10)
        stall = worker.metric("streamproc_event_loop_lag_max_seconds")
        psi = re.findall(
            r'^streamproc_feature_psi\{.*segment="([^"]*)"', worker.metrics_text(), re.M
        )
    finally:
        done.set()
        scraper.join(timeout=60)
        worker.stop()
    # Every scrape from the moment the worker listened until every window was judged.
    assert len(scrapes) >= 50, (len(scrapes), failures[-3:])
    print(f"scrapes {len(scrapes)}, slowest {max(scrapes):.3f} s; longest stall {stall:.3f} s")
    assert max(scrapes) < 1.0, sorted(scrapes)[-5:]
    assert 0 < stall < 1.0
    # The top 20 features per segment on /metrics, not 1,000.
    per_segment = Counter(psi)
    assert per_segment and max(per_segment.values()) == 20, per_segment
