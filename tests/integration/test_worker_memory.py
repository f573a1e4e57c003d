"""A real worker exports its memory and gives the heap back after a burst, only after work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from streamproc.config import Config
from streamproc.dev.synthetic import WorkloadSpec, generate
from streamproc.kafka import topics
from streamproc.worker.memory import HeapTrimmer
from tests.integration.workers import WorkerProcess, produce

pytestmark = pytest.mark.integration

TRIMS = "streamproc_memory_trims_total"
BATCHES = "streamproc_stage_last_progress_seconds"  # moves with every batch of any stage


def test_the_worker_trims_its_heap_after_a_burst_and_not_while_idle(
    config: Config, tmp_path: Path
) -> None:
    if not HeapTrimmer().available:
        pytest.skip("no malloc_trim in this C library (glibc only)")
    topics.apply(config, topics.load_topics(config))
    spec = WorkloadSpec(model_id="burst", rate=50.0)
    events = list(generate(spec, n_events=30_000, seed=3))
    predictions = [e.value for e in events if e.kind == "prediction"]
    labels = [e.value for e in events if e.kind == "label"]
    worker = WorkerProcess(config, tmp_path, STREAMPROC_WORKER_MEMORY_TRIM_S="1")
    try:
        worker.wait_for(
            lambda: worker.metric("process_resident_memory_bytes") > 0, 120,
            "the worker's /metrics with its resident memory",
        )  # fmt: skip
        time.sleep(3)  # three trim periods with nothing to read
        assert worker.metric(TRIMS) == 0

        def batches(docs: list[dict[str, object]]) -> list[bytes]:
            return [json.dumps(docs[i : i + 500]).encode() for i in range(0, len(docs), 500)]

        produce(config, config.topics.predictions, batches(predictions))
        produce(config, config.topics.labels, batches(labels))
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total") >= len(events), 180,
            "the worker to read every event",
        )  # fmt: skip
        worker.wait_for(lambda: worker.metric(TRIMS) >= 1, 30, "a heap trim after the burst")
        assert "\nstreamproc_memory_trimmed_bytes_total " in worker.metrics_text()

        # Once no batch comes any more, neither does a trim.
        deadline = time.monotonic() + 120
        while True:
            before = worker.metric(BATCHES)
            time.sleep(2)  # the trim of the batches before this, if any
            quiet, trims = worker.metric(BATCHES), worker.metric(TRIMS)
            time.sleep(4)
            if worker.metric(BATCHES) == quiet == before:
                assert worker.metric(TRIMS) == trims
                break
            assert time.monotonic() < deadline, "the worker never stopped processing batches"
    finally:
        worker.stop()
    worker.assert_healthy()
