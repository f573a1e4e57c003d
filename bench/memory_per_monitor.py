"""Memory per monitor: ~1,000 monitors of the two-phase engine, offline.

Run: ``.venv/bin/python bench/memory_per_monitor.py [--monitors 1000] [--events-per-model 20000]``

A monitor is ``(model, version, segment)``. The synthetic model (``streamproc.dev.synthetic``: 20
numeric + 3 categorical features, segment dimensions ``country`` x ``device`` = 4 x 3 values)
has 1 + 4 + 3 = 8 monitors, so ``--monitors 1000`` is 125 models. Each has its own baseline:
the synthetic reference profile with every segment's ``count`` offset by the model's number, so
that no two models share a reference (references are shared by fingerprint, as identical
baselines would be), read back from its stored bytes as the worker reads them.

The first ``--fed-models`` (2) models are fed ``--events-per-model`` predictions and their
labels through an :class:`~streamproc.tools.inprocess.InProcessPipeline` (the worker's ingest,
aggregation and judging code; consumed batches of ``BATCH`` events per topic over ``PARTITIONS``
partitions, the models' streams interleaved by event time). At the default rate of 50 events/s
of event time, 20,000 predictions span 400 s: one 300 s window closed and the next one open,
with its ticks and detectors, which is a monitor's steady state. The state measured is what a
worker holds for its monitors then:

* **judges** (:class:`~streamproc.judge.engine.ModelJudge`: tick summaries and window partials not
  closed yet, detectors, alert state). The fed models' judges are measured live; every model's judge
  is then restored from the last fed model's checkpoint (``streamproc.judge.checkpoint``), as a
  restarted worker holds it (feeding 125 models live takes minutes);
* **references**: each model's baseline references with their prepared arrays;
* **sources' open partials**: the window partials (with their unsent tick summaries) the aggregation
  stage holds per source partition until its watermark passes the window's end, 6 prediction and 6
  label sources. The fed models' are measured live; the fleet's are the fed model's copied for every
  model, as one worker that owns every partition holds them.

Reported per monitor: the ``tracemalloc`` growth of building the restored fleet, split into
references, judges and sources (and the live-fed judges and sources alone beside them); the growth
of the process's resident set over building the same fleet without ``tracemalloc`` (coarser:
allocator slack included); and the bytes of what Redis holds: each judge's checkpoint
(``checkpoint.to_bytes``) and each source's checkpoint hash (``head`` and one field per model's open
window, ``SourceAggregator.checkpoint``), references excluded (they are stored once per
fingerprint).

Writes ``bench/out/memory_per_monitor-<run id>.json`` and prints two markdown tables. Nothing
here asserts a size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import math
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import orjson

from streamproc.aggregate.source import SourceAggregator
from streamproc.baseline import ReferenceProfile
from streamproc.baseline.reference import Reference, ReferenceCache, references_of
from streamproc.config import Config
from streamproc.dev.synthetic import Event, Workload, WorkloadSpec, reference_profile
from streamproc.ingest.ingestor import RawMessage
from streamproc.judge import checkpoint
from streamproc.judge.engine import ModelJudge
from streamproc.tools.inprocess import InProcessPipeline, raw

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 6  # predictions and labels partitions in topology/topics.yaml
MESSAGE = 100  # events per Kafka message (a JSON array)
BATCH = 1000  # events per consumed batch, per topic and fed model


def rss_bytes() -> int:
    """The resident set size of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def model_name(k: int) -> str:
    return f"bench-model-{k:04d}"


def baseline_bytes(profile: ReferenceProfile, k: int) -> bytes:
    """Model ``k``'s stored baseline: the profile with its segments' counts offset by ``k``
    (so its references' fingerprints are its own), as Redis holds it."""
    segments = {
        key: msgspec.structs.replace(seg, count=seg.count + k)
        for key, seg in profile.segments.items()
    }
    return msgspec.structs.replace(profile, model_id=model_name(k), segments=segments).to_bytes()


def prepared(refs: dict[str, Reference]) -> dict[str, Reference]:
    """``refs`` with the arrays the aggregation stage computes on first use (bins, scales,
    empty sketches), so they count as a working worker holds them."""
    for ref in refs.values():
        for name in ref.numeric:
            ref.numeric_sketch(name)
        _ = (ref.categorical, ref.watched, ref.scales, ref.probs, ref.score_edges)
    return refs


def consumed_batches(n_fed: int, n_predictions: int, seed: int) -> Iterator[tuple[str, list]]:
    """The fed models' streams as a worker consumes them: merged by event time, in batches of
    ``BATCH`` events per topic and model, JSON arrays of ``MESSAGE`` events, messages
    round-robin over ``PARTITIONS`` partitions of each topic."""
    # A seed per model: prediction ids derive from it, and the join keys on them.
    streams = [
        Workload(replace(WorkloadSpec(), model_id=model_name(k)), n_predictions, seed + k).events()
        for k in range(n_fed)
    ]
    merged: Iterator[Event] = heapq.merge(*streams, key=lambda e: (e.time, e.kind == "label"))
    offsets = {"predictions": [0] * PARTITIONS, "labels": [0] * PARTITIONS}
    turn = {"predictions": 0, "labels": 0}

    def cut(chunk: list[Event]) -> Iterator[tuple[str, list[RawMessage]]]:
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
                yield role, msgs

    chunk: list[Event] = []
    for ev in merged:
        chunk.append(ev)
        if len(chunk) == 2 * BATCH * n_fed:
            yield from cut(chunk)
            chunk = []
    yield from cut(chunk)


class Fed(msgspec.Struct, array_like=True):
    """What feeding the first models live left: their judges' and sources' checkpoints, and
    the traced size of the live state (0 when not traced)."""

    judges: dict[str, bytes]
    sources: dict[str, dict[str, bytes]]
    judge_bytes: int
    source_bytes: int
    alerts: int
    events: int
    open_windows: int
    open_ticks: int


def fed_in_subprocess(blobs: Sequence[bytes], n_predictions: int, seed: int) -> Fed:
    """:func:`feed_live` under ``tracemalloc`` in a child process, so that this one builds
    the fleet on a heap the feeding did not grow (its RSS growth would hide in freed memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in"), Path(tmp, "out")
        src.write_bytes(msgspec.msgpack.encode([n_predictions, seed, list(blobs)]))
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        cmd = [sys.executable, str(Path(__file__).resolve()), "--feed-live", str(src), str(dst)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"feeding the models live failed:\n{done.stderr[-3000:]}")
        return msgspec.msgpack.decode(dst.read_bytes(), type=Fed)


def _feed_live_main(src: Path, dst: Path) -> None:
    n_predictions, seed, blobs = msgspec.msgpack.decode(src.read_bytes())
    tracemalloc.start()
    fed = feed_live(Config(), blobs, n_predictions, seed)
    tracemalloc.stop()
    dst.write_bytes(msgspec.msgpack.encode(fed))


def feed_live(cfg: Config, blobs: Sequence[bytes], n_predictions: int, seed: int) -> Fed:
    """Feed the first ``len(blobs)`` models live; measure their judges and sources by what
    dropping them frees (under ``tracemalloc``, when it runs)."""
    profiles = {model_name(k): ReferenceProfile.from_bytes(b) for k, b in enumerate(blobs)}
    pipe = InProcessPipeline(
        cfg, range(PARTITIONS), range(PARTITIONS), baselines=lambda m: [profiles[m]]
    )
    events = 0

    async def run() -> None:
        nonlocal events
        for role, msgs in consumed_batches(len(blobs), n_predictions, seed):
            events += sum(len(orjson.loads(m.value)) for m in msgs)
            await pipe.feed(role, msgs)

    asyncio.run(run())
    if sorted(pipe.judges) != [model_name(k) for k in range(len(blobs))]:
        raise RuntimeError(f"fed {len(blobs)} models, the pipeline judged {sorted(pipe.judges)}")
    judges = {m: checkpoint.to_bytes(j) for m, j in sorted(pipe.judges.items())}
    sources = {name: agg.checkpoint()[0] for name, agg in sorted(pipe.stage.sources.items())}
    open_windows = len(
        {(m, w) for agg in pipe.stage.sources.values() for m, _, _, w, _ in agg.windows}
    )
    open_ticks = sum(
        len(agg.windows) + len(agg.outcome_windows) for agg in pipe.stage.sources.values()
    )
    alerts = len(pipe.alerts)

    def traced() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0

    before = traced()
    pipe.judges.clear()
    judge_bytes = before - traced()
    before = traced()
    pipe.stage.sources.clear()
    source_bytes = before - traced()
    return Fed(judges, sources, judge_bytes, source_bytes, alerts, events, open_windows,
               open_ticks)  # fmt: skip


def fleet_sources(fed: Fed, cfg: Config, n_models: int, lookup: Any) -> dict[str, SourceAggregator]:
    """Every source as one worker owning all partitions holds it for ``n_models`` models: the
    fed models' open windows restored from their checkpoints, the last fed model's copied for
    each of the others."""
    n_fed = len(fed.judges)
    template = model_name(n_fed - 1)
    out = {}
    for name, fields in fed.sources.items():
        agg, why = SourceAggregator.restore(name, cfg.monitoring, lookup, fields)
        if why:
            raise SystemExit(why)
        mine = [(at, p) for at, p in agg.windows.items() if at[0] == template]
        mine_o = [(at, o) for at, o in agg.outcome_windows.items() if at[0] == template]
        for j in range(n_fed, n_models):
            for at, p in mine:
                agg.windows[(model_name(j), *at[1:])] = p.copy()  # type: ignore[index]
            for oat, o in mine_o:
                agg.outcome_windows[(model_name(j), *oat[1:])] = o.copy()  # type: ignore[index]
        out[name] = agg
    return out


@dataclass
class Fleet:
    references: list[dict[str, Reference]]
    judges: list[ModelJudge]
    sources: dict[str, SourceAggregator]


def build_fleet(
    fed: Fed, cfg: Config, blobs: Sequence[bytes], measure: Callable[[], int]
) -> tuple[Fleet, dict[str, int]]:
    """References, judges and sources of every model, as a restarted worker holds them; the
    growth of ``measure()`` over building each part."""
    grown: dict[str, int] = {}
    cache = ReferenceCache()
    before = measure()
    references = []
    for blob in blobs:
        profile = ReferenceProfile.from_bytes(blob)
        refs = prepared(references_of(profile.segments, "baseline", cfg.monitoring.features))
        references.append({k: cache.put(r) for k, r in refs.items()})
        del profile
    grown["references"] = measure() - before
    before = measure()
    template_model = model_name(len(fed.judges) - 1)
    judges = []
    for k in range(len(blobs)):
        model = model_name(k)
        blob = fed.judges.get(model, fed.judges[template_model])
        j, why = checkpoint.restore(
            blob, model if model in fed.judges else template_model, cfg.monitoring,
            cfg.topics.predictions, cache,
        )  # fmt: skip
        if why:
            raise SystemExit(why)
        j.model_id = model  # the fed model's state under this model's name
        judges.append(j)
    grown["judges"] = measure() - before
    before = measure()
    sources = fleet_sources(fed, cfg, len(blobs), _NoLookup())
    grown["sources"] = measure() - before
    return Fleet(references, judges, sources), grown


class _NoLookup:
    """Restored sources bin nothing here: no reference lookups."""

    generation = 0

    def lookup(self, *_args: object) -> Reference | None:
        return None

    def by_fp(self, fp: str) -> Reference | None:
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure; return the result document (see the module docstring).

    ``args`` needs ``monitors``, ``events_per_model``, ``fed_models`` and ``seed``.
    """
    spec = WorkloadSpec()
    per_model = 1 + sum(len(d.values) for d in spec.segment_dims)
    n_models = max(1, math.ceil(args.monitors / per_model))
    n_fed = max(1, min(args.fed_models, n_models))
    cfg = Config()
    profile = reference_profile(spec, 30_000)
    blobs = [baseline_bytes(profile, k) for k in range(n_models)]
    began = time.perf_counter()

    # Live, in a child under tracemalloc: the fed models' judges and sources, by what dropping
    # them frees, and their checkpoints, which the fleet is restored from.
    fed = fed_in_subprocess(blobs[:n_fed], args.events_per_model, args.seed)
    gc.collect()

    # RSS first, without tracemalloc (whose own bookkeeping would count as growth).
    rss0 = rss_bytes()
    fleet, _ = build_fleet(fed, cfg, blobs, lambda: 0)
    gc.collect()
    rss = rss_bytes() - rss0
    # The baseline's segments are the monitors (a judge creates each at its first closed tick).
    n_monitors, fed_monitors = n_models * per_model, n_fed * per_model
    judged = sum(len(j.segments) for j in fleet.judges)
    judge_ckpt = sum(len(checkpoint.to_bytes(j)) for j in fleet.judges)
    # every open tick of the fed models (their sources' first checkpoint holds them all)
    source_ckpt = sum(len(k) + len(v) for f in fed.sources.values() for k, v in f.items())
    del fleet
    gc.collect()

    def traced() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    fleet, grown = build_fleet(fed, cfg, blobs, traced)
    tracemalloc.stop()
    assert sum(len(j.segments) for j in fleet.judges) == judged
    del fleet
    traced_total = sum(grown.values())
    return {
        "models": n_models,
        "fed_models": n_fed,
        "monitors": n_monitors,
        "monitors_per_model": per_model,
        "monitors_judged": judged,
        "predictions_per_model": args.events_per_model,
        "events_per_model": fed.events // n_fed,
        "open_windows": fed.open_windows,
        "open_partials_fed": fed.open_ticks,
        "alerts": fed.alerts,
        "seconds": time.perf_counter() - began,
        "traced_bytes_per_monitor": traced_total / n_monitors,
        "reference_bytes_per_monitor": grown["references"] / n_monitors,
        "state_bytes_per_monitor": grown["judges"] / n_monitors,
        "fed_state_bytes_per_monitor": fed.judge_bytes / fed_monitors,
        "source_bytes_per_monitor": grown["sources"] / n_monitors,
        "fed_source_bytes_per_monitor": fed.source_bytes / fed_monitors,
        "rss_bytes_per_monitor": rss / n_monitors,
        "checkpoint_bytes_per_monitor": judge_ckpt / n_monitors,
        "source_checkpoint_bytes_per_monitor": source_ckpt / fed_monitors,
        "traced_bytes_total": traced_total,
        "rss_bytes_total": rss,
        "checkpoint_bytes_total": judge_ckpt,
        "source_checkpoint_bytes_total": source_ckpt / fed_monitors * n_monitors,
    }


def _kib(x: float) -> str:
    return f"{x / 1024:,.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The result as two markdown tables: the whole fleet, then the sources' part."""
    r = result
    n = r["monitors"]

    def row(what: str, per: float, total: float | None = None) -> str:
        total = per * n if total is None else total
        return f"| {what} | {_kib(per)} | {total / 2**20:,.1f} |"

    lines = [
        f"{n:,} monitors ({r['models']} models x {r['monitors_per_model']} monitors), "
        f"{r['predictions_per_model']:,} predictions + their labels fed to each of "
        f"{r['fed_models']} model(s) live ({r['open_windows']:,} windows open at the end, "
        f"{r['open_partials_fed']:,} open partials in the sources, {r['alerts']} alerts); every "
        f"model's judge restored from the fed model's checkpoint, with its own baseline "
        f"({r['seconds']:.0f} s).",
        "",
        "| measure | per monitor (KiB) | total for all monitors (MiB) |",
        "| --- | ---: | ---: |",
        row("traced Python heap (references + judges + sources)",
            r["traced_bytes_per_monitor"], r["traced_bytes_total"]),
        row("of which references (baseline)", r["reference_bytes_per_monitor"]),
        row("of which judge state (windows, ticks, detectors, alerts)",
            r["state_bytes_per_monitor"]),
        row("judge state of the live-fed model(s) alone", r["fed_state_bytes_per_monitor"]),
        row("process RSS growth (no tracemalloc)", r["rss_bytes_per_monitor"],
            r["rss_bytes_total"]),
        row("judge checkpoint (`checkpoint.to_bytes`)", r["checkpoint_bytes_per_monitor"],
            r["checkpoint_bytes_total"]),
        "",
        "The aggregation stage's part, over its 12 sources (6 prediction and 6 label partitions):",
        "",
        "| source state | per monitor (KiB) | total for all monitors (MiB) |",
        "| --- | ---: | ---: |",
        row("open partials (in the traced heap above)", r["source_bytes_per_monitor"]),
        row("open partials of the live-fed model(s) alone", r["fed_source_bytes_per_monitor"]),
        row("source checkpoints (Redis hash fields)", r["source_checkpoint_bytes_per_monitor"],
            r["source_checkpoint_bytes_total"]),
    ]  # fmt: skip
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``run`` reads (shared with ``bench/run_all.py``)."""
    p.add_argument("--monitors", type=int, default=1000, help="monitors to build (1000)")
    p.add_argument(
        "--events-per-model", type=int, default=20_000, help="predictions fed per model (20000)"
    )
    p.add_argument(
        "--fed-models", type=int, default=2, help="models fed live; the rest restored (2)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the tables, write the JSON."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    add_arguments(p)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--feed-live", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.feed_live:
        _feed_live_main(*args.feed_live)
        return 0
    if args.monitors < 1 or args.events_per_model < 1:
        p.error("--monitors and --events-per-model must be >= 1")
    result = run(args)
    print(markdown(result))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"memory_per_monitor-{uuid.uuid4().hex[:8]}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
