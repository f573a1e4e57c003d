"""``bench/ingest_throughput.py`` end to end on a tiny workload (numbers are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from streamproc.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {"single": "1 event/msg", "batch500": "500 events/msg"}
PATHS = ("consume limit", "streamproc worker")


def test_ingest_benchmark_reports_every_shape_and_path_and_leaves_nothing_behind(
    config: Config, tmp_path: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMPROC_") or k == "STREAMPROC_CACHE"
    }
    env["STREAMPROC_KAFKA_BOOTSTRAP"] = config.kafka.bootstrap
    env["STREAMPROC_REDIS_URL"] = config.redis.url
    proc = subprocess.run(
        [sys.executable, "bench/ingest_throughput.py", "--events", "2000", "--repeats", "1",
         "--shapes", ",".join(SHAPES), "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]

    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith(("| shape", "| ---"))
    ]
    assert [(r[0], r[1]) for r in rows] == [(s, p) for s in SHAPES.values() for p in PATHS]
    for shape, path, events, runs, *_ in rows:
        assert (events, runs) == ("2,000", "1"), (shape, path)

    (report,) = tmp_path.glob("ingest_throughput-*.json")
    doc = json.loads(report.read_text())
    assert doc["events"] == 2000
    runs = [run for result in doc["results"] for run in result["runs"]]
    assert len(runs) == len(SHAPES) * len(PATHS)
    assert all(run["check"] == "ok" and run["events"] == 2000 for run in runs)

    prefix = f"bench-{doc['run_id']}-"
    topics = AdminClient(config.kafka.librdkafka()).list_topics(timeout=10).topics
    assert [t for t in topics if t.startswith(prefix)] == []
    client = redis.Redis.from_url(config.redis.url)
    try:
        assert list(client.scan_iter(f"{prefix}*", count=1000)) == []
    finally:
        client.close()
