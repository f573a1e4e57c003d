"""A partition the consumer owns but does not fetch is found, shown and read after a rebalance.

A rebalance that races Faust's fetcher can leave an owned partition out of what the consumer
fetches; the consumer's own high-water mark then shows nothing waiting, and without a watch its
input would wait for ever while the worker looks healthy. The fault is injected into a real
worker process (``tests/integration/faults``): the labels partition it stops fetching holds
labels the test produced, and the worker must find that from the broker's end offsets, say so
(log, metric), have the group rebalance, and read it all; when the rebalance does not cure it,
the worker exits (so that a restart or another worker takes the partition over) rather than
stay up with input it never reads.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streamproc.config import Config
from streamproc.dev.synthetic import Workload, WorkloadSpec
from streamproc.kafka import topics
from streamproc.worker.app import FATAL_EXIT
from tests.conftest import Endpoints, config_for
from tests.integration.workers import (
    WorkerProcess,
    produce_batches,
    uncommitted,
    wait_all,
)

pytestmark = [pytest.mark.integration]

FAULTS = Path(__file__).parent / "faults"
VICTIM = 3  # the labels partition the consumer leaves out


def start(endpoints: Endpoints, tmp_path: Path, **fault: str) -> tuple[Config, WorkerProcess]:
    """A worker whose consumer leaves labels partition :data:`VICTIM` out of its fetches, once
    every prediction was read and labels were produced."""
    cfg = config_for(endpoints, f"{uuid.uuid4().hex[:8]}-unfetched")
    topics.apply(cfg, topics.load_topics(cfg))
    work = Workload(WorkloadSpec(rate=50.0), 1_200, seed=3)
    worker = WorkerProcess(
        cfg,
        tmp_path,
        PYTHONPATH=str(FAULTS),
        STREAMPROC_TEST_UNFETCHED=f"{cfg.topics.labels}:{VICTIM}",
        STREAMPROC_WORKER_STALL_TIMEOUT_S="6",
        **fault,
    )
    produce_batches(cfg, cfg.topics.predictions, work.predictions(), 50)
    wait_all(
        [worker],
        lambda: not uncommitted(cfg, [cfg.topics.predictions]),
        90,
        "every prediction read",
        lambda: str(uncommitted(cfg)),
    )
    produce_batches(cfg, cfg.topics.labels, work.labels(), 50)
    return cfg, worker


def test_a_partition_owned_but_never_fetched_is_reported_and_read_after_a_rebalance(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    cfg, worker = start(endpoints, tmp_path)
    try:
        wait_all(
            [worker],
            lambda: worker.metric("streamproc_partition_stalls_total", stage="labels") > 0,
            60,
            "the unfetched labels partition found stalled",
            lambda: str(uncommitted(cfg)),
        )
        wait_all(
            [worker],
            lambda: not uncommitted(cfg),
            60,
            "every label read after the rebalance",
            lambda: str(uncommitted(cfg)),
        )
        assert worker.metric("streamproc_partition_stalls_total", stage="labels") == 1
        assert worker.metric("streamproc_partition_stalls_total", stage="predictions") == 0
        assert worker.metric("streamproc_partitions_stalled") == 0  # none now
        log = worker.log_text()
        assert f"fault: {cfg.topics.labels}:{VICTIM} not fetched in generation" in log
        assert f"fault: {cfg.topics.labels}:{VICTIM} fetched again in generation" in log
        assert f"partition {cfg.topics.labels}:{VICTIM}: " in log
        assert "the consumer is not fetching it; asking the group to rebalance" in log
    finally:
        worker.stop()
    worker.assert_no_crash()


def test_a_partition_still_not_fetched_after_the_rebalance_ends_the_worker(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    cfg, worker = start(endpoints, tmp_path, STREAMPROC_TEST_UNFETCHED_FOREVER="1")
    try:
        worker.proc.wait(timeout=90)
    finally:
        worker.stop()
    log = worker.log_text()
    assert worker.proc.returncode == FATAL_EXIT, worker.tail()
    assert "asking the group to rebalance" in log
    assert "again after the group rebalanced over a stall; the worker exits" in log
    assert uncommitted(cfg, [cfg.topics.labels]) == {f"{cfg.topics.labels}:{VICTIM}": 4}
