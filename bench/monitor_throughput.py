"""Monitor engine throughput: the synthetic workload through ``ModelMonitor``, offline.

Run: ``.venv/bin/python bench/monitor_throughput.py [--events 60000] [--batch 2000] [--repeats 3]``

The workload is :class:`streamproc.synthetic.Workload` (20 numeric + 3 categorical features,
segments ``country`` x ``device``) compared against :func:`~streamproc.synthetic.
reference_profile`, with the default ``monitoring`` configuration. Its predictions become the
objects the worker's monitor stage receives: JSON-decoded ``Prediction`` s turned into
``Observation`` s by :func:`~streamproc.monitor.observation_of` (spread round-robin over 6
partitions), packed into ``MonitorInput`` messages of ``--batch`` observations and decoded
again with :func:`~streamproc.monitor.decode_input`, all before timing starts.

Each pass builds a fresh ``ModelMonitor`` and times, per batch, ``observe`` then ``advance``
(what ``MonitorStage.on_inputs`` does per message), then a final ``advance``. It reports
events/s (wall clock) and CPU µs/event (``time.process_time``), median of ``--repeats``
passes, and the CPU spent in ``observe`` alone (the rest is ``advance``: closing ticks and
windows, which this bench leaves as it is). A digest of every alert, metrics record and
the final checkpoint is printed too: two trees that should behave the same must print the
same digest.

``--baseline DIR`` also runs this script against another copy of ``streamproc`` (e.g. ``git
archive main streamproc | tar -x -C /tmp/base``), in subprocesses interleaved pass by pass with
the current tree, and prints the after/before ratios of the medians. Nothing here asserts a
timing. Results go to ``bench/out/monitor_throughput-<time>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
PARTITIONS = 6


def _inputs(events: int, batch: int) -> tuple[list[bytes], Any, Any]:
    from streamproc.config import MonitoringConfig
    from streamproc.contracts import Prediction
    from streamproc.dev.synthetic import Workload, WorkloadSpec, reference_profile
    from streamproc.monitor import MonitorInput, encode_input, observation_of, segref_from_baseline

    spec = WorkloadSpec()
    profile = reference_profile(spec, 30_000)
    refs = {(spec.model_version, k): segref_from_baseline(s) for k, s in profile.segments.items()}
    dec = msgspec.json.Decoder(Prediction)
    enc = msgspec.json.Encoder()
    obs = []
    for i, v in enumerate(Workload(spec, events, seed=7).predictions()):
        p = dec.decode(enc.encode(v))
        obs.append(observation_of(p, v["timestamp"], i % PARTITIONS, i // PARTITIONS, -1))
    blobs = [
        encode_input(MonitorInput(spec.model_id, obs[i : i + batch]))
        for i in range(0, len(obs), batch)
    ]
    return blobs, MonitoringConfig(), refs


def measure(events: int, batch: int) -> dict[str, Any]:
    """One pass in this process: a fresh monitor over the whole workload."""
    import scipy.stats  # noqa: F401  (imported lazily by the first window's verdicts)

    from streamproc.monitor import ModelMonitor, decode_input, monitor_to_bytes

    blobs, cfg, refs = _inputs(events, batch)
    batches = [decode_input(b) for b in blobs]
    m = ModelMonitor(batches[0].model_id, cfg, [f"p{i}" for i in range(PARTITIONS)], refs)
    digest = hashlib.sha256()
    enc = msgspec.json.Encoder()
    outputs = []
    observe_cpu = 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for b in batches:
        c = time.process_time()
        m.observe(b.observations)
        observe_cpu += time.process_time() - c
        outputs.append(m.advance("t"))
    outputs.append(m.advance("t", final=True))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n_alerts = 0
    for out in outputs:
        for a in out.alerts:
            digest.update(enc.encode(a))
            n_alerts += 1
        for r in out.metrics:
            digest.update(enc.encode(r))
    digest.update(monitor_to_bytes(m))
    return {
        "events": events,
        "events_per_s": events / wall,
        "cpu_us_per_event": cpu / events * 1e6,
        "observe_share": observe_cpu / cpu,
        "observe_cpu_us_per_event": observe_cpu / events * 1e6,
        "alerts": n_alerts,
        "digest": digest.hexdigest()[:16],
    }


def _subprocess_pass(path: str, events: int, batch: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, str(Path(__file__)), "--one-pass", "--events", str(events)]
    cmd += ["--batch", str(batch)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(name: str, passes: list[dict[str, Any]]) -> dict[str, Any]:
    eps = [p["events_per_s"] for p in passes]
    cpu = [p["cpu_us_per_event"] for p in passes]
    row = {
        "tree": name,
        "events_per_s": statistics.median(eps),
        "events_per_s_range": [min(eps), max(eps)],
        "cpu_us_per_event": statistics.median(cpu),
        "observe_share": statistics.median(p["observe_share"] for p in passes),
        "observe_cpu_us_per_event": statistics.median(
            p["observe_cpu_us_per_event"] for p in passes
        ),
        "digests": sorted({p["digest"] for p in passes}),
        "alerts": passes[0]["alerts"],
    }
    print(
        f"{name:>9}: {row['events_per_s']:>9,.0f} events/s ({min(eps):,.0f} - {max(eps):,.0f}), "
        f"{row['cpu_us_per_event']:6.1f} CPU µs/event "
        f"(observe {row['observe_cpu_us_per_event']:.1f}, {row['observe_share']:.0%}), "
        f"{row['alerts']} alerts, digest {','.join(row['digests'])}"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", help="directory holding another streamproc package")
    ap.add_argument("--one-pass", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_pass:
        print(json.dumps(measure(args.events, args.batch)))
        return 0
    current = str(Path(__import__("streamproc").__file__).resolve().parent.parent)
    trees = {"current": current}
    if args.baseline:
        trees = {"baseline": str(Path(args.baseline).resolve()), **trees}
    print(f"{args.events} events in batches of {args.batch}, {args.repeats} passes per tree")
    for name, path in trees.items():
        print(f"  {name}: {path}")
    passes: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    for _ in range(args.repeats):
        for name, path in trees.items():  # interleaved: load drifts hit both trees alike
            passes[name].append(_subprocess_pass(path, args.events, args.batch))
    rows = {name: _summary(name, p) for name, p in passes.items()}
    result: dict[str, Any] = {"args": vars(args), "trees": trees, "rows": rows, "passes": passes}
    if args.baseline:
        before, after = rows["baseline"], rows["current"]
        result["ratio_events_per_s"] = after["events_per_s"] / before["events_per_s"]
        result["ratio_cpu_per_event"] = before["cpu_us_per_event"] / after["cpu_us_per_event"]
        result["ratio_observe_cpu"] = (
            before["observe_cpu_us_per_event"] / after["observe_cpu_us_per_event"]
        )
        same = before["digests"] == after["digests"]
        print(
            f"after/before: {result['ratio_events_per_s']:.2f}x events/s, "
            f"{result['ratio_cpu_per_event']:.2f}x less CPU per event "
            f"({result['ratio_observe_cpu']:.2f}x in observe); "
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
