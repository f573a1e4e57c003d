"""Every benchmark of issue #6 in one run, written to ``bench/RESULTS.md`` and JSON.

Run (from the repository root, on a quiet machine):

    .venv/bin/python bench/run_all.py --size 100000 --repeats 3

In this order, with the 1-minute load average recorded before and after each part:

1. ``bench/pipeline_throughput.py``: ``streamproc worker`` against the limit loop
   (``bench/limit_loop.py``) on 100-event messages, 2 workers against 1, and the worker
   against a bare Faust agent (``bench/faust_bare.py``) on single-event messages, ``--size``
   events per shape, ``--repeats`` interleaved passes; and the comparisons A, B and C from them;
2. ``bench/memory_per_monitor.py``: ``--monitors`` monitors fed through ``ModelMonitor``
   (reported as not run when it no longer imports);
3. ``bench/drift_quality.py`` (detection quality), when that module imports and exposes
   ``run(args) -> dict`` and ``markdown(result) -> str``; its arguments come from its own
   ``parser()`` (``--tiny`` and ``--repeats`` are passed on; ``--quality-size`` becomes its
   ``--size``), else it is reported as not run.

Writes ``--results`` (markdown: the machine, the versions, the exact command, the tables) and,
beside it, the same run as JSON (``RESULTS.json``: everything, every pass), and a copy of the
JSON as ``<out>/run_all-<run id>.json``. ``--tiny`` is the smoke size used by
``tests/integration/test_bench_smoke.py``. Nothing here asserts a timing.
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

# Sibling scripts, and streamproc from this tree (not whichever the editable install names).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline_throughput  # a sibling script, not a package

try:  # it drives streamproc.monitor directly, which a rewrite of the engine may remove
    import memory_per_monitor
except ImportError as exc:
    memory_per_monitor = None  # type: ignore[assignment]
    MEMORY_SKIPPED = f"bench/memory_per_monitor.py does not import: {exc}"

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def load_quality(path: Path = BENCH / "drift_quality.py") -> ModuleType | str:
    """``bench/drift_quality.py`` as a module, or why it cannot run: absent, not importable
    (it drives ``streamproc.monitor`` directly), or without ``run`` and ``markdown``."""
    if not path.exists():
        return "bench/drift_quality.py is absent"
    spec = importlib.util.spec_from_file_location("drift_quality", path)
    if spec is None or spec.loader is None:
        return "bench/drift_quality.py cannot be loaded"
    module = importlib.util.module_from_spec(spec)
    sys.modules["drift_quality"] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules["drift_quality"]
        return f"bench/drift_quality.py does not import: {exc}"
    if not (callable(getattr(module, "run", None)) and callable(getattr(module, "markdown", None))):
        return "bench/drift_quality.py lacks run(args) and markdown(result)"
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
        f"Every figure below, and every single pass, is in `{json_path}` (the same run; "
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
        "## Throughput: the worker against a limit loop, itself x2 and a bare Faust agent",
        "",
        pipeline_throughput.markdown(doc["pipeline"]),
        "",
        "Limit loop (`bench/limit_loop.py`): batched confluent-kafka consume, the project's "
        "decoder, one pipelined Redis join per batch, numpy folds into per-(segment key, tick) "
        "partials of the baseline's features, offsets committed; its CPU measured by itself "
        "(`time.process_time()`). Worker: `streamproc worker` with the synthetic model's "
        "baseline stored; CPU per process from `/proc` (all threads). Bare Faust "
        "(`bench/faust_bare.py`): the worker's consumer settings, an agent that only counts "
        "messages. Redis CPU is redis-server's whole use in the interval (shared with anything "
        "else using it). CPU per event moves much less than events/s when other jobs share the "
        "machine: compare it first.",
        "",
        "## Memory per monitor",
        "",
        memory_per_monitor.markdown(doc["memory"])
        if memory_per_monitor is not None and doc.get("memory")
        else f"Not run: {doc.get('memory_skipped', 'unknown')}.",
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
    if memory_per_monitor is not None:
        memory_per_monitor.add_arguments(p)
    p.add_argument("--tiny", action="store_true", help="smoke size: seconds, not minutes")
    p.add_argument("--quality-size", type=int, default=None, help="drift_quality.py --size")
    p.add_argument("--no-quality", action="store_true", help="skip bench/drift_quality.py")
    p.add_argument("--out", type=Path, default=BENCH / "out", help="JSON directory")
    p.add_argument(
        "--results", type=Path, default=BENCH / "RESULTS.md",
        help="markdown file; the JSON goes beside it (.json)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.repeats, args.settle = 2_000, 1, 2.0
        args.monitors, args.events_per_model, args.fed_models = 80, 2_000, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every part; write the JSON and the markdown; 1 if a throughput pass failed."""
    pipeline_throughput.exit_on_sigterm()
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
    if memory_per_monitor is not None:
        print("2/3 memory per monitor", file=sys.stderr)
        doc["memory"] = memory_per_monitor.run(args)
        loads["after memory"] = load_average()
    else:
        doc["memory"], doc["memory_skipped"] = None, MEMORY_SKIPPED
    quality = "--no-quality given" if args.no_quality else load_quality()
    if isinstance(quality, ModuleType):
        print("3/3 detection quality", file=sys.stderr)
        doc["quality"] = quality.run(quality_args(quality, args))
        doc["quality_markdown"] = quality.markdown(doc["quality"])
        loads["after quality"] = load_average()
    else:
        doc["quality"], doc["quality_skipped"] = None, quality
    doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["seconds"] = time.perf_counter() - began
    blob = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"run_all-{run_id}.json").write_bytes(blob)
    json_path = args.results.with_suffix(".json")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_bytes(blob)
    try:
        shown = json_path.resolve().relative_to(ROOT)
    except ValueError:
        shown = json_path
    args.results.write_text(render(doc, shown))
    print(f"wrote {args.results} and {json_path}", file=sys.stderr)
    return 1 if doc["pipeline"]["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
