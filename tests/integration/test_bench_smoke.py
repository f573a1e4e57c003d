"""The benchmarks end to end on tiny workloads: they run, report every table and row, and
leave nothing behind. No figure is compared with a threshold (no timing assertion)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from streamproc.config import Config
from streamproc.dev.stack import cache_dir
from streamproc.redis_client import sync_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {"single": "1 event/msg", "batch500": "500 events/msg"}
PATHS = ("consume limit", "streamproc worker")


def _bench_env(config: Config) -> dict[str, str]:
    """This environment without our settings, pointed at the test's Kafka and Redis."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMPROC_") or k == "STREAMPROC_CACHE"
    }
    env["STREAMPROC_KAFKA_BOOTSTRAP"] = config.kafka.bootstrap
    env["STREAMPROC_REDIS_URL"] = config.redis.url
    return env


def _keys_left(client: Any, prefix: str) -> list[bytes]:
    """A run's Redis keys: ``prefix*`` and, hash-tagged, ``{prefix*`` (the join's keys are
    ``{<prefix>...:j0}:i:<id>``)."""
    return [k for p in (f"{prefix}*", f"{{{prefix}*") for k in client.scan_iter(p, count=1000)]


def test_ingest_benchmark_reports_every_shape_and_path_and_leaves_nothing_behind(
    config: Config, tmp_path: Path
) -> None:
    env = _bench_env(config)
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
    client = sync_client(config.redis)
    try:
        assert _keys_left(client, prefix) == []
    finally:
        client.close()


def _tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every markdown table of ``markdown``, as rows keyed by the header's cells."""
    tables: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables.append([])
        elif not all(set(c) <= set("-: ") for c in cells):
            tables[-1].append(dict(zip(header, cells, strict=True)))
    return tables


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_run_all_writes_every_table_with_real_numbers_and_leaves_nothing_behind(
    config: Config, tmp_path: Path
) -> None:
    env = _bench_env(config)
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "bench/run_all.py", "--tiny", "--out", str(tmp_path / "out"),
         "--results", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]

    doc = json.loads(results.with_suffix(".json").read_text())
    (archived,) = (tmp_path / "out").glob("run_all-*.json")
    assert json.loads(archived.read_text()) == doc
    pipeline = doc["pipeline"]
    rows = [
        ("100 events/msg", "limit loop"), ("100 events/msg", "worker x1"),
        ("100 events/msg", "worker x2"), ("1 event/msg", "bare Faust"),
        ("1 event/msg", "worker x1"),
    ]  # fmt: skip
    assert [(r["shape"], r["path"]) for r in pipeline["results"]] == rows
    assert pipeline["events"] == pipeline["predictions"] + pipeline["labels"] == 2000
    for row in pipeline["results"]:
        (run,) = row["runs"]
        where = (row["shape"], row["path"])
        # Every event counted (none twice): the input copied in after the group settled.
        assert run["check"] == "ok" and run["events"] == 2000 and run["reread"] == 0, where
        assert run["events_per_s"] > 0 and run["seconds"] > 0, where
        assert len(run["cpu_s"]) == run["processes"] == row["processes"], where
        assert sum(run["cpu_s"]) > 0, where
        if row["path"].startswith("worker"):
            assert run["drain_s"] >= run["seconds"] and run["startup_s"] > 0, where
            assert len(run["cpu_s_drained"]) == run["processes"], where
            assert sum(run["cpu_s_drained"]) >= sum(run["cpu_s"]), where
            assert run["aggregated"] is None or all(
                len(v) == run["processes"] for v in run["aggregated"].values()
            ), where
    comparisons = {(c["name"], c["figure"]): c for c in pipeline["comparisons"]}
    assert [name for name, _ in comparisons] == ["A", "B", "B", "C", "C"]
    for (name, figure), c in comparisons.items():
        if "share" in figure:  # unknown until the workers export the counter
            assert c["value"] is None or 0 < c["value"] <= 1, c
            assert c["value"] is not None or "unknown" in c["note"], c
        else:
            assert c["value"] > 0 and c["span"][0] <= c["value"] <= c["span"][1], (name, figure)
    # The memory and quality benches drive streamproc.monitor directly: run_all reports them
    # as not run when they no longer import (while the engine is being replaced).
    memory_runs, quality_runs = _imports("memory_per_monitor"), _imports("drift_quality")
    if memory_runs:
        assert doc["memory"]["monitors"] >= 80
        for key, value in doc["memory"].items():
            if key.endswith("_bytes_per_monitor"):
                assert value > 0, key
    else:
        assert doc["memory"] is None and doc["memory_skipped"]
    assert isinstance(doc["quality"], dict) == quality_runs
    for key in ("cpu", "cores", "ram_gib"):
        assert doc["machine"][key], key
    for key in ("python", "redis", "river", "faust-streaming", "confluent-kafka", "numpy"):
        assert doc["versions"][key], key
    assert len(doc["versions"]["streamproc_commit"]) == 40

    text = results.read_text()
    assert "bench/run_all.py --tiny" in text and "RESULTS.json" in text
    for heading in ("## Machine and versions", "## Throughput", "## Memory per monitor"):
        assert heading in text
    assert "Detection quality" in text
    assert ("Not run" in text) == (not quality_runs or not memory_runs)
    tables = _tables(text)
    throughput = next(t for t in tables if t and "CPU µs/event with drain" in t[0])
    assert [(r["shape"], r["path"]) for r in throughput] == rows
    for r in throughput:
        cols = ["events", "wall s", "events/s", "CPU µs/event", "CPU µs/event with drain"]
        if r["path"] != "limit loop":
            cols.append("start-up s")
        for col in cols:
            assert _number(r[col]) > 0, (r["shape"], r["path"], col)
    compared = next(t for t in tables if t and "comparison" in t[0])
    assert [r[""] for r in compared] == ["A", "B", "B", "C", "C"]
    if memory_runs:
        per_monitor = next(t for t in tables if t and "per monitor (KiB)" in t[0])
        assert len(per_monitor) == 6
        for r in per_monitor:
            assert _number(r["per monitor (KiB)"]) > 0, r["measure"]

    run_id = pipeline["run_id"]
    prefix = f"bench-{run_id}-"
    admin = AdminClient(config.kafka.librdkafka())
    assert [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)] == []
    groups = admin.list_consumer_groups(request_timeout=10).result()
    assert [g.group_id for g in groups.valid if g.group_id.startswith(prefix)] == []
    client = sync_client(config.redis)
    try:
        assert _keys_left(client, prefix) == []
    finally:
        client.close()
    assert list((cache_dir() / "faust").glob(f"{prefix}*")) == []


def _imports(module: str) -> bool:
    """Whether ``bench/<module>.py`` imports here (``run_all`` skips it otherwise)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as run_all.py: streamproc from this tree
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=ROOT / "bench", env=env, capture_output=True
    )
    return proc.returncode == 0
