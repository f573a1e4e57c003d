"""Memory per monitor: ~1,000 monitors fed through ``ModelMonitor`` offline.

Run: ``.venv/bin/python bench/memory_per_monitor.py [--monitors 1000] [--events-per-model 20000]``

A monitor is ``(model, version, segment)``. The synthetic model (``streamproc.dev.synthetic``: 20
numeric + 3 categorical features, segment dimensions ``country`` x ``device`` = 4 x 3 values)
has 1 + 4 + 3 = 8 monitors, so ``--monitors 1000`` runs 125 models, each with its own baseline
(decoded from the stored bytes of the synthetic reference profile, as the worker loads it from
Redis) and each fed the same ``--events-per-model`` predictions and their labels, in batches of
250 as the keyed topic carries them, with ``advance()`` after every 5,000 events. At the
default rate of 50 events/s of event time, 20,000 predictions span 400 s: one 300 s window
closed and the next one open, with its ticks and detectors, which is a monitor's steady state.

Reported, per monitor (``streamproc_monitors`` counts the same objects):

* **traced bytes**: ``tracemalloc`` growth over building and feeding every model, split into
  the baselines (references) and the rest (windows, sketches, detectors, clocks, alert state);
* **RSS bytes**: the growth of the process's resident set over the same work (coarser: it
  includes allocator slack and tracemalloc's own bookkeeping);
* **checkpoint bytes**: ``len(monitor_to_bytes(m))`` summed over models (what Redis holds per
  model; references excluded, as they live in the baseline).

Writes ``bench/out/memory_per_monitor-<run id>.json`` and prints a markdown table. Nothing here
asserts a size.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from streamproc.baseline import ReferenceProfile
from streamproc.config import MonitoringConfig
from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
from streamproc.monitor import (
    ModelMonitor,
    Observation,
    Outcome,
    SegRef,
    confidence_of,
    monitor_from_bytes,
    monitor_to_bytes,
    segref_from_baseline,
)

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 6  # predictions and labels partitions in topology/topics.yaml
CHUNK = 250  # observations per keyed-topic message (streamproc.monitoring.CHUNK)
ADVANCE_EVERY = 5000  # events between two advance() calls (as streamproc.tools.replay does)


def rss_bytes() -> int:
    """The resident set size of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def monitor_inputs(spec: WorkloadSpec, n_predictions: int, seed: int) -> list[list[Any]]:
    """The synthetic stream as the monitors receive it: batches of observations or outcomes.

    Predictions go round-robin over ``PARTITIONS`` sources; each label comes from the label
    partition of the same number, at its own (delayed) event time, in label-time order, and
    carries its prediction's segments, class and confidence as the join hands them on.
    """
    batches: list[list[Any]] = []
    preds: list[Observation] = []
    outs: list[Outcome] = []
    pending: dict[int, Observation] = {}
    label_offsets = [0] * PARTITIONS
    for event in Workload(spec, n_predictions, seed).events():
        v = event.value
        p = event.index % PARTITIONS
        if event.kind == "prediction":
            ob = Observation(
                p, event.index // PARTITIONS, -1, event.time, v["model_version"], v["segments"],
                v["features"], v["prediction"], confidence_of(v["scores"], None), v["latency_ms"],
            )  # fmt: skip
            pending[event.index] = ob
            preds.append(ob)
            if len(preds) == CHUNK:
                batches.append(preds)
                preds = []
        else:
            ob = pending.pop(event.index)
            outs.append(
                Outcome(
                    f"l{p}",
                    label_offsets[p],
                    -1,
                    event.time,
                    ob.model_version,
                    ob.segments,
                    ob.prediction,
                    v["label"],
                    ob.confidence,
                )
            )
            label_offsets[p] += 1
            if len(outs) == CHUNK:
                batches.append(outs)
                outs = []
    for rest in (preds, outs):
        if rest:
            batches.append(rest)
    return batches


def references(blob: bytes) -> dict[tuple[str, str], SegRef]:
    """A model's references decoded from its stored profile, as the worker builds them."""
    profile = ReferenceProfile.from_bytes(blob)
    return {
        (profile.model_version, key): segref_from_baseline(seg)
        for key, seg in profile.segments.items()
    }


def feed(m: ModelMonitor, batches: Sequence[list[Any]]) -> int:
    """Fold every batch into ``m``, advancing as the worker would; return the alerts raised."""
    alerts = 0
    since = 0
    for batch in batches:
        if isinstance(batch[0], Observation):
            m.observe(batch)
        else:
            m.observe_outcomes(batch)
        since += len(batch)
        if since >= ADVANCE_EVERY:
            alerts += len(m.advance("").alerts)
            since = 0
    alerts += len(m.advance("").alerts)
    return alerts


def build_fleet(
    n_models: int, n_fed: int, blob: bytes, batches: Sequence[list[Any]], traced: bool
) -> tuple[list[ModelMonitor], dict[str, int]]:
    """``n_models`` models: the first ``n_fed`` fed live, the rest restored from the last fed
    model's checkpoint with their own references. With ``traced`` (tracemalloc running),
    also the traced bytes of the references and of the fed models' state."""
    cfg = MonitoringConfig()
    sources = [f"p{i}" for i in range(PARTITIONS)]
    label_sources = [f"l{i}" for i in range(PARTITIONS)]

    def now() -> int:
        return tracemalloc.get_traced_memory()[0] if traced else 0

    counts = {"reference_bytes": 0, "fed_bytes": 0, "alerts": 0}
    monitors: list[ModelMonitor] = []
    template = b""
    for k in range(n_models):
        before = now()
        refs = references(blob)
        after_refs = now()
        counts["reference_bytes"] += after_refs - before
        model = f"bench-model-{k:04d}"
        if k < n_fed:
            m = ModelMonitor(model, cfg, sources, refs)
            m.outcome_clock.expect(label_sources)
            counts["alerts"] += feed(m, batches)
            gc.collect()
            counts["fed_bytes"] += now() - after_refs
            template = monitor_to_bytes(m)
        else:
            # The fed state, restored as a restarted worker holds it; only the id differs.
            m = monitor_from_bytes(template, cfg, refs)
            m.model_id = model
        monitors.append(m)
    return monitors, counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure; return the result document (see the module docstring).

    ``args`` needs ``monitors``, ``events_per_model``, ``fed_models`` and ``seed``.
    """
    spec = WorkloadSpec()
    per_model = 1 + sum(len(d.values) for d in spec.segment_dims)
    n_models = max(1, math.ceil(args.monitors / per_model))
    n_fed = max(1, min(args.fed_models, n_models))
    blob = reference_profile(spec, 30_000).to_bytes()
    batches = monitor_inputs(spec, args.events_per_model, args.seed)
    began = time.perf_counter()

    # RSS first, without tracemalloc (whose own bookkeeping would count as growth).
    gc.collect()
    rss0 = rss_bytes()
    monitors, _ = build_fleet(n_models, n_fed, blob, batches, traced=False)
    gc.collect()
    rss = rss_bytes() - rss0
    n_monitors = sum(len(m.segments) for m in monitors)
    fed_monitors = sum(len(m.segments) for m in monitors[:n_fed])
    checkpoint = sum(len(monitor_to_bytes(m)) for m in monitors)
    windows = sum(len(seg.windows) for m in monitors for seg in m.segments.values())
    del monitors
    gc.collect()

    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    monitors, counts = build_fleet(n_models, n_fed, blob, batches, traced=True)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    assert sum(len(m.segments) for m in monitors) == n_monitors
    del monitors
    refs_bytes = counts["reference_bytes"]
    return {
        "models": n_models,
        "fed_models": n_fed,
        "monitors": n_monitors,
        "monitors_per_model": per_model,
        "predictions_per_model": args.events_per_model,
        "events_per_model": sum(len(b) for b in batches),
        "open_windows": windows,
        "alerts": counts["alerts"],
        "seconds": time.perf_counter() - began,
        "traced_bytes_per_monitor": traced / n_monitors,
        "reference_bytes_per_monitor": refs_bytes / n_monitors,
        "state_bytes_per_monitor": (traced - refs_bytes) / n_monitors,
        "fed_state_bytes_per_monitor": counts["fed_bytes"] / fed_monitors,
        "rss_bytes_per_monitor": rss / n_monitors,
        "checkpoint_bytes_per_monitor": checkpoint / n_monitors,
        "traced_bytes_total": traced,
        "rss_bytes_total": rss,
        "checkpoint_bytes_total": checkpoint,
    }


def _kib(x: float) -> str:
    return f"{x / 1024:,.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table, one row per measure."""
    r = result
    n = r["monitors"]
    lines = [
        f"{n:,} monitors ({r['models']} models x {r['monitors_per_model']} monitors), "
        f"{r['predictions_per_model']:,} predictions + their labels fed to each model "
        f"({r['open_windows']:,} windows open at the end, {r['alerts']} alerts raised). "
        f"{r['fed_models']} model(s) fed live; the others restored from the fed model's "
        f"checkpoint with their own baseline ({r['seconds']:.0f} s).",
        "",
        "| measure | per monitor (KiB) | total for all monitors (MiB) |",
        "| --- | ---: | ---: |",
        f"| traced Python heap (references + state) | {_kib(r['traced_bytes_per_monitor'])} "
        f"| {r['traced_bytes_total'] / 2**20:,.1f} |",
        f"| of which references (baseline) | {_kib(r['reference_bytes_per_monitor'])} "
        f"| {r['reference_bytes_per_monitor'] * n / 2**20:,.1f} |",
        f"| of which window/detector state | {_kib(r['state_bytes_per_monitor'])} "
        f"| {r['state_bytes_per_monitor'] * n / 2**20:,.1f} |",
        f"| state of the live-fed model(s) alone | "
        f"{_kib(r['fed_state_bytes_per_monitor'])} "
        f"| {r['fed_state_bytes_per_monitor'] * n / 2**20:,.1f} |",
        f"| process RSS growth (no tracemalloc) | {_kib(r['rss_bytes_per_monitor'])} "
        f"| {r['rss_bytes_total'] / 2**20:,.1f} |",
        f"| checkpoint (`monitor_to_bytes`) | {_kib(r['checkpoint_bytes_per_monitor'])} "
        f"| {r['checkpoint_bytes_total'] / 2**20:,.1f} |",
    ]
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
    """Run, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(p)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = p.parse_args(argv)
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
