"""Every benchmark of issue #6 in one run, written to ``bench/RESULTS.md`` and JSON.

Run (from the repository root, on a quiet machine):

    .venv/bin/python bench/run_all.py --size 100000 --repeats 3

In this order, with the 1-minute load average recorded before and after each part:

1. ``bench/pipeline_throughput.py``: the consume limit and the whole ``streamproc worker`` with
   1 and 2 processes, single-event and batched messages, ``--size`` events per shape,
   ``--repeats`` interleaved passes;
2. ``bench/memory_per_monitor.py``: ``--monitors`` monitors fed through ``ModelMonitor``;
3. ``bench/drift_quality.py`` (detection quality), when that module exists and exposes
   ``run(args) -> dict`` and ``markdown(result) -> str``; its arguments come from its own
   ``parser()`` (``--tiny`` and ``--repeats`` are passed on; ``--quality-size`` becomes its
   ``--size``), else it is reported as not run.

Writes ``<out>/run_all-<run id>.json`` (everything, every pass) and ``--results`` (markdown:
the machine, the versions, the exact command, the tables, a pointer to the JSON, and where the
throughput stands against the goal of 0.5x the consume limit per worker). ``--tiny`` is the
smoke size used by ``tests/integration/test_bench_smoke.py``. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory_per_monitor  # a sibling script, not a package
import pipeline_throughput

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

GOAL_PER_WORKER = 0.5  # issue #6: end-to-end >= 0.5x the consume limit per worker


def load_quality(path: Path = BENCH / "drift_quality.py") -> ModuleType | None:
    """``bench/drift_quality.py`` as a module, if it exists and has ``run`` and ``markdown``."""
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("drift_quality", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["drift_quality"] = module
    spec.loader.exec_module(module)
    if not (callable(getattr(module, "run", None)) and callable(getattr(module, "markdown", None))):
        return None
    return module


def quality_args(module: ModuleType, args: argparse.Namespace) -> argparse.Namespace:
    """The quality bench's arguments: its own parser's defaults, with ours passed on."""
    argv = ["--repeats", str(args.repeats)]
    if args.tiny:
        argv.append("--tiny")
    if args.quality_size is not None:
        argv += ["--size", str(args.quality_size)]
    make = getattr(module, "parser", None)
    if callable(make):
        qargs = make().parse_args(argv)
    else:
        qargs = argparse.Namespace(
            repeats=args.repeats, tiny=args.tiny, size=args.quality_size, seed=0
        )
    qargs.argv = [".venv/bin/python", "bench/drift_quality.py", *argv]
    qargs.quiet = False
    return qargs


def read_first(path: str, key: str) -> str | None:
    """The value after ``key:`` on the first matching line of a ``/proc`` file."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel."""
    mem = read_first("/proc/meminfo", "MemTotal")
    return {
        "cpu": read_first("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "platform": platform.platform(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions(redis_url: str | None) -> dict[str, Any]:
    """Python, Kafka, Redis, the libraries the figures depend on, and the git commit."""
    from streamproc.dev.stack import KAFKA_VERSION

    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        except OSError:
            return None
        return out.stdout.strip() or None

    redis_version = None
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            redis_version = client.info("server").get("redis_version")
        finally:
            client.close()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "kafka": KAFKA_VERSION if not os.environ.get("STREAMPROC_KAFKA_BOOTSTRAP") else None,
        "redis": redis_version,
        **{
            name: dist(name)
            for name in ("river", "faust-streaming", "confluent-kafka", "numpy", "uvloop")
        },
        "streamproc_commit": git("rev-parse", "HEAD"),
        "worktree_dirty": bool(dirty),
    }


def redis_url_in_use() -> str | None:
    """Redis the benchmarks use: ``STREAMPROC_REDIS_URL``, else the local stack's."""
    url = os.environ.get("STREAMPROC_REDIS_URL")
    if url:
        return url
    from streamproc.dev.stack import Stack

    return Stack().redis_url


def goal_note(pipeline: dict[str, Any]) -> str:
    """Where the worker stands against 0.5x the consume limit per worker, per shape."""
    limits: dict[str, float] = {}
    lines = []
    for r in pipeline["results"]:
        med = r["median_events_per_s"]
        if r["path"] == pipeline_throughput.LIMIT:
            limits[r["shape"]] = med
            continue
        limit = limits.get(r["shape"])
        if not med or not limit:
            lines.append(f"- {r['shape']}, {r['path']}: no figure (a pass failed)")
            continue
        per = med / limit / r["workers"]
        verdict = "meets" if per >= GOAL_PER_WORKER else "misses"
        lines.append(
            f"- {r['shape']}, {r['path']}: {per:.3f}x the limit per worker, {verdict} the "
            f"goal of {GOAL_PER_WORKER}x ({GOAL_PER_WORKER * limit * r['workers']:,.0f} "
            f"events/s would be needed, {med:,.0f} measured)"
        )
    return "\n".join(lines)


def render(doc: dict[str, Any], json_path: Path) -> str:
    """The whole ``RESULTS.md``."""
    m, v = doc["machine"], doc["versions"]
    loads = doc["load_average"]

    def load(key: str) -> str:
        x = loads.get(key)
        return "n/a" if not x else " / ".join(f"{v:.2f}" for v in x)

    out = [
        "# Benchmark results (issue #6)",
        "",
        f"Run `{doc['run_id']}`, finished {doc['finished_at']}, "
        f"took {doc['seconds'] / 60:.1f} min.",
        "",
        "```bash",
        doc["command"],
        "```",
        "",
        f"Every figure below, and every single pass, is in `{json_path}` (git-ignored; "
        "compare runs from it).",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; {m['platform']}",
        "- load average (1 / 5 / 15 min): " + "; ".join(f"{k} {load(k)}" for k in loads),
        f"- Python {v['python']}, Kafka {v['kafka'] or 'external'}, Redis {v['redis']}, "
        f"river {v['river']}, faust-streaming {v['faust-streaming']}, "
        f"confluent-kafka {v['confluent-kafka']}, numpy {v['numpy']}, uvloop {v['uvloop']}",
        f"- streamproc commit `{v['streamproc_commit']}`"
        + (" (with uncommitted changes)" if v["worktree_dirty"] else ""),
        "",
        "## Throughput: the whole worker against the consume limit",
        "",
        pipeline_throughput.markdown(doc["pipeline"]),
        "",
        "Consume limit: one confluent-kafka consumer + orjson over the same topics. Worker: "
        "`streamproc worker` with the synthetic model's baseline stored (ingest, dead letters, "
        "Redis join, keyed observations topic, monitors, alerts, checkpoints, `/metrics`), "
        "from the group's stable assignment to every worker (start-up apart) to its monitors' "
        "checkpoint covering the last observation. Redis CPU is redis-server's whole use in "
        "that time (shared with anything else using it). The one synthetic model's monitors "
        "run in one of the 2 workers.",
        "",
        "Against the goal (end-to-end >= 0.5x the consume limit per worker):",
        "",
        goal_note(doc["pipeline"]),
        "",
        "## Memory per monitor",
        "",
        memory_per_monitor.markdown(doc["memory"]),
        "",
    ]
    quality = doc.get("quality")
    text = doc.get("quality_markdown", "") if isinstance(quality, dict) else ""
    if not text.lstrip().startswith("#"):  # the quality bench may bring its own heading
        out += ["## Detection quality", ""]
    if isinstance(quality, dict):
        out.append(text)
    else:
        out.append(f"Not run: {doc.get('quality_skipped', 'bench/drift_quality.py is absent')}.")
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    pipeline_throughput.add_arguments(p)
    memory_per_monitor.add_arguments(p)
    p.add_argument("--tiny", action="store_true", help="smoke size: seconds, not minutes")
    p.add_argument("--quality-size", type=int, default=None, help="drift_quality.py --size")
    p.add_argument("--no-quality", action="store_true", help="skip bench/drift_quality.py")
    p.add_argument("--out", type=Path, default=BENCH / "out", help="JSON directory")
    p.add_argument("--results", type=Path, default=BENCH / "RESULTS.md", help="markdown file")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.repeats = 2_000, 1
        args.monitors, args.events_per_model, args.fed_models = 80, 2_000, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every part; write the JSON and the markdown; 1 if a throughput pass failed."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    run_id = uuid.uuid4().hex[:8]
    began = time.perf_counter()
    loads: dict[str, list[float] | None] = {"before": load_average()}
    doc: dict[str, Any] = {
        "run_id": run_id,
        "command": shlex.join([".venv/bin/python", "bench/run_all.py", *raw]),
        "machine": machine(),
        "versions": versions(redis_url_in_use()),
        "load_average": loads,
    }
    print("1/3 throughput", file=sys.stderr)
    doc["pipeline"] = pipeline_throughput.run(args)
    loads["after throughput"] = load_average()
    print("2/3 memory per monitor", file=sys.stderr)
    doc["memory"] = memory_per_monitor.run(args)
    loads["after memory"] = load_average()
    quality = None if args.no_quality else load_quality()
    if quality is not None:
        print("3/3 detection quality", file=sys.stderr)
        doc["quality"] = quality.run(quality_args(quality, args))
        doc["quality_markdown"] = quality.markdown(doc["quality"])
        loads["after quality"] = load_average()
    else:
        doc["quality"] = None
        doc["quality_skipped"] = (
            "--no-quality given"
            if args.no_quality
            else "bench/drift_quality.py is absent or lacks run(args) and markdown(result)"
        )
    doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["seconds"] = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"run_all-{run_id}.json"
    json_path.write_bytes(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    )
    try:
        shown = json_path.resolve().relative_to(ROOT)
    except ValueError:
        shown = json_path
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(render(doc, shown))
    print(f"wrote {args.results} and {json_path}", file=sys.stderr)
    return 1 if doc["pipeline"]["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
