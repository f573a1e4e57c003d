"""Monitor engine throughput: the synthetic workload through the two-phase engine, offline.

Run: ``.venv/bin/python bench/monitor_throughput.py [--events 60000] [--batch 2000] [--repeats 3]``

The workload is :class:`streamproc.dev.synthetic.Workload` (20 numeric + 3 categorical
features, segments ``country`` x ``device``, a label for every prediction) compared against
:func:`~streamproc.dev.synthetic.reference_profile`, with the default ``monitoring``
configuration. ``--events`` events (predictions and their labels, half each) are cut, before
timing starts, into the records a worker consumes: the merged stream in event-time order, in
consumed batches of ``--batch`` events, each split by topic into JSON arrays of up to
``MESSAGE`` (100) events, messages round-robin over ``PARTITIONS`` (6) partitions of each topic.

Each pass runs in a subprocess pinned to one core and measures, with ``time.process_time``:

* **end to end**: a fresh :class:`~streamproc.tools.inprocess.InProcessPipeline` fed every
  batch (``feed``: decode, in-memory join, aggregation into window partials, the judge's
  ``add`` and ``advance``), then ``finish``. Its judge share is the CPU inside the pipeline's
  ``deliver`` and ``advance`` (merging partials into windows, statistics, detectors, alerts);
* **fold alone**: the aggregation stage by itself
  (:class:`~streamproc.aggregate.stage.AggregateStage` ``on_batch`` then ``take``) over the
  very batches of accepted predictions and completed joins the end-to-end pass's ingestor
  handed it (recorded there), binned with the same baseline.

It reports events/s (wall clock, for scale) and CPU µs/event, median of ``--repeats`` passes.
A digest of every alert, metrics record and the judges' final checkpoints is printed too: two
trees that should behave the same must print the same digest.

``--rate``, ``--reference-rows`` and ``--drift`` vary the workload: predictions per second of
event time (50), the baseline's rows (30,000), and a shift of every numeric feature by that
many standard deviations from the first event (0: none). Windows of many rows a little off
their reference are where the judge's statistics cost most.

``--baseline DIR`` also runs this script against another copy of ``streamproc`` with the same
engine API (e.g. ``git archive <commit> streamproc | tar -x -C /tmp/base``), in subprocesses
interleaved pass by pass with the current tree, and prints the after/before ratios of the
medians. Nothing here asserts a timing. Results go to
``bench/out/monitor_throughput-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson

HERE = Path(__file__).resolve().parent
PARTITIONS = 6
MESSAGE = 100  # events per Kafka message (a JSON array), as producers batch them
CREATED_AT = "2024-01-01T00:00:00Z"

Feed = list[tuple[str, list[Any]]]  # (role, consumed batch of RawMessage), in feeding order


def consumed_batches(
    events: int, batch: int, rate: float = 50.0, reference_rows: int = 30_000, drift: float = 0.0
) -> tuple[Feed, Any, Any]:
    """The workload as a worker consumes it, the configuration and the baseline."""
    from streamproc.config import Config
    from streamproc.dev.synthetic import MeanShift, Workload, WorkloadSpec, reference_profile
    from streamproc.tools.inprocess import raw

    spec = WorkloadSpec(rate=rate)
    if drift:  # every numeric feature moved, from the first event on (the baseline never is)
        spec = dataclasses.replace(
            spec, changes=tuple(MeanShift(f, drift) for f in spec.numeric_features)
        )
    # A fixed creation time: the judges' checkpoints (in the digest) name the baseline by it.
    profile = msgspec.structs.replace(
        reference_profile(spec, reference_rows), created_at=CREATED_AT
    )
    offsets = {"predictions": [0] * PARTITIONS, "labels": [0] * PARTITIONS}
    turn = {"predictions": 0, "labels": 0}
    feed: Feed = []

    def cut(chunk: list[Any]) -> None:
        for kind in ("prediction", "label"):
            role = f"{kind}s"
            evs = [e for e in chunk if e.kind == kind]
            msgs = []
            for i in range(0, len(evs), MESSAGE):
                part = evs[i : i + MESSAGE]
                p = turn[role] % PARTITIONS
                turn[role] += 1
                value = orjson.dumps([e.value for e in part])
                msgs.append(raw(role, p, offsets[role][p], value, int(part[-1].time * 1000)))
                offsets[role][p] += 1
            if msgs:
                feed.append((role, msgs))

    chunk: list[Any] = []
    for ev in Workload(spec, max(1, events // 2), seed=7).events():
        chunk.append(ev)
        if len(chunk) == batch:
            cut(chunk)
            chunk = []
    cut(chunk)
    return feed, Config(), profile


def _timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - began

    return wrapper


class _Recorder:
    """The ingestor's sink, recording what it hands the aggregation stage, then passing it on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[tuple[str, Sequence[Any], Sequence[Any], tuple[Any, ...]]] = []
        self.admitted: list[Sequence[Any]] = []  # each labels batch's arrivals, in order

    async def admit_labels(self, arrivals: Sequence[Any]) -> list[bool]:
        self.admitted.append(list(arrivals))
        return await self.inner.admit_labels(arrivals)  # type: ignore[no-any-return]

    async def on_batch(self, role: str, observed: Any, joined: Any, *rest: Any) -> None:
        self.batches.append((role, list(observed), list(joined), rest))
        await self.inner.on_batch(role, observed, joined, *rest)

    async def commit(self) -> None:
        await self.inner.commit()


def measure(
    events: int, batch: int, rate: float = 50.0, reference_rows: int = 30_000, drift: float = 0.0
) -> dict[str, Any]:
    """One pass in this process: a fresh pipeline over the whole workload, then the fold alone
    over what its ingestor handed the aggregation stage."""
    import scipy.stats  # noqa: F401  (imported lazily by the first window's verdicts)

    from streamproc.aggregate.stage import AggregateStage
    from streamproc.judge import checkpoint
    from streamproc.tools.inprocess import InProcessPipeline

    feed, cfg, profile = consumed_batches(events, batch, rate, reference_rows, drift)
    n = sum(len(orjson.loads(m.value)) for _, msgs in feed for m in msgs)
    pipe = InProcessPipeline(
        cfg, range(PARTITIONS), range(PARTITIONS), baselines=lambda _m: [profile]
    )
    recorder = _Recorder(pipe.ingestor.sink)
    pipe.ingestor.sink = recorder
    judged = [0.0]
    pipe.deliver = _timed(pipe.deliver, judged)  # type: ignore[method-assign]
    pipe.advance = _timed(pipe.advance, judged)  # type: ignore[method-assign]

    async def run() -> None:
        for role, msgs in feed:
            await pipe.feed(role, msgs)
        pipe.finish()

    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(run())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    digest = hashlib.sha256()
    enc = msgspec.json.Encoder()
    for a in pipe.alerts:
        digest.update(enc.encode(a))
    for r in pipe.records:
        digest.update(enc.encode(r))
    for model in sorted(pipe.judges):
        digest.update(checkpoint.to_bytes(pipe.judges[model]))

    # The fold alone: the recorded batches into a fresh stage binned with the same baseline.
    stage = AggregateStage(cfg.monitoring, pipe.book)
    folded = sum(len(o) + len(j) for _, o, j, _ in recorder.batches)
    fold_wall0, fold_cpu0 = time.perf_counter(), time.process_time()
    partials = 0
    admitted = iter(recorder.admitted)
    for role, observed, joined, rest in recorder.batches:
        if role == "labels":
            stage.admit_labels(next(admitted))
        stage.on_batch(role, observed, joined, *rest)  # type: ignore[arg-type]
        partials += len(stage.take()[0])
    fold_wall = time.perf_counter() - fold_wall0
    fold_cpu = time.process_time() - fold_cpu0
    return {
        "events": n,
        "events_per_s": n / wall,
        "cpu_us_per_event": cpu / n * 1e6,
        "judge_share": judged[0] / cpu,
        "judge_cpu_us_per_event": judged[0] / n * 1e6,
        "fold_events": folded,
        "fold_events_per_s": folded / fold_wall,
        "fold_cpu_us_per_event": fold_cpu / folded * 1e6,
        "fold_partials_messages": partials,
        "alerts": len(pipe.alerts),
        "records": len(pipe.records),
        "digest": digest.hexdigest()[:16],
    }


def _one_core() -> None:
    """Pin this process to one core (where the OS allows it): the figures are per core."""
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[-1]})


def _subprocess_pass(path: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__)), "--one-pass", "--events", str(args.events)]
    cmd += ["--batch", str(args.batch), "--rate", str(args.rate)]
    cmd += ["--reference-rows", str(args.reference_rows), "--drift", str(args.drift)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pass against {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _summary(name: str, passes: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(p[key] for p in passes)

    eps = [p["events_per_s"] for p in passes]
    row = {
        "tree": name,
        "events": passes[0]["events"],
        "events_per_s": statistics.median(eps),
        "events_per_s_range": [min(eps), max(eps)],
        "cpu_us_per_event": med("cpu_us_per_event"),
        "judge_share": med("judge_share"),
        "judge_cpu_us_per_event": med("judge_cpu_us_per_event"),
        "fold_events_per_s": med("fold_events_per_s"),
        "fold_cpu_us_per_event": med("fold_cpu_us_per_event"),
        "digests": sorted({p["digest"] for p in passes}),
        "alerts": passes[0]["alerts"],
        "records": passes[0]["records"],
    }
    print(
        f"{name:>9}: end to end {row['events_per_s']:>8,.0f} events/s "
        f"({min(eps):,.0f} - {max(eps):,.0f}), {row['cpu_us_per_event']:6.1f} CPU µs/event "
        f"(judge {row['judge_cpu_us_per_event']:.1f}, {row['judge_share']:.0%}); "
        f"fold alone {row['fold_events_per_s']:>9,.0f} events/s, "
        f"{row['fold_cpu_us_per_event']:5.1f} CPU µs/event; "
        f"{row['alerts']} alerts, {row['records']} records, digest {','.join(row['digests'])}"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000, help="predictions + labels (60000)")
    ap.add_argument("--batch", type=int, default=2000, help="events per consumed batch (2000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--rate", type=float, default=50.0, help="predictions per second of event time (50)"
    )
    ap.add_argument("--reference-rows", type=int, default=30_000, help="baseline rows (30000)")
    ap.add_argument(
        "--drift",
        type=float,
        default=0.0,
        help="every numeric feature shifted by this many standard deviations (0: none)",
    )
    ap.add_argument("--baseline", help="directory holding another streamproc package")
    ap.add_argument("--one-pass", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_pass:
        _one_core()
        row = measure(args.events, args.batch, args.rate, args.reference_rows, args.drift)
        print(json.dumps(row))
        return 0
    current = str(Path(__import__("streamproc").__file__).resolve().parent.parent)
    trees = {"current": current}
    if args.baseline:
        trees = {"baseline": str(Path(args.baseline).resolve()), **trees}
    print(
        f"{args.events} events (predictions + labels) in consumed batches of {args.batch}, "
        f"{args.rate:g} predictions per second of event time, a baseline of "
        f"{args.reference_rows} rows, numeric features shifted by {args.drift:g} sd, "
        f"{args.repeats} passes per tree, one core each"
    )
    for name, path in trees.items():
        print(f"  {name}: {path}")
    passes: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    for _ in range(args.repeats):
        for name, path in trees.items():  # interleaved: load drifts hit both trees alike
            passes[name].append(_subprocess_pass(path, args))
    rows = {name: _summary(name, p) for name, p in passes.items()}
    result: dict[str, Any] = {"args": vars(args), "trees": trees, "rows": rows, "passes": passes}
    if args.baseline:
        before, after = rows["baseline"], rows["current"]
        result["ratio_events_per_s"] = after["events_per_s"] / before["events_per_s"]
        result["ratio_cpu_per_event"] = before["cpu_us_per_event"] / after["cpu_us_per_event"]
        result["ratio_fold_cpu"] = before["fold_cpu_us_per_event"] / after["fold_cpu_us_per_event"]
        same = before["digests"] == after["digests"]
        print(
            f"after/before: {result['ratio_events_per_s']:.2f}x events/s, "
            f"{result['ratio_cpu_per_event']:.2f}x less CPU per event "
            f"({result['ratio_fold_cpu']:.2f}x in the fold); "
            f"outputs {'identical' if same else 'DIFFERENT'}"
        )
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    path = out / f"monitor_throughput-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
