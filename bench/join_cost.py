"""The Redis join alone: Redis CPU per event and events/s, before vs after, in the same run.

Run: ``.venv/bin/python bench/join_cost.py [--events 100000] [--repeats 3] [--baseline-ref REF]``

"Before" is the join as of ``--baseline-ref`` (``git show`` into a temporary module; the
default, 42f567c, is the last commit of key layout 2: keys built from ARGV, one Redis only), and
"after" is the working tree's (layout 4: hash-tagged keys given in KEYS, no TTLs, a batch's new
pending ids in one queue that the sweep works through). All run the same workload
against the same Redis, pass after pass interleaved, each pass under a fresh key prefix:

* ``--events`` predictions with shuffled ids, sent in batches of ``--batch`` like one consumed
  Kafka batch; ``--label-fraction`` of them get a label, of which ``--early-fraction`` reach
  Redis before their prediction (the rest after it); 1% of the predictions come again from
  another message (duplicates) and 0.5% as the same message again (redeliveries);
* labels are sent in batches too, between prediction batches, in arrival order.

For each pass it takes the Redis server's ``INFO cpu`` (``used_cpu_sys + used_cpu_user``) and
``INFO commandstats`` (``evalsha`` microseconds) before and after, and the wall time of the
whole pass (client and server). It prints the median of each, the after/before ratios, and
checks that all implementations gave the same result counts (``pending``, ``joined``,
``duplicate``, ``redelivered``, then the expired and what is left pending) -- the run fails
otherwise. Each pass ends with the sweeps a deployment runs over those events (two hours later,
when the labels' TTL is over and what still waits is looked at again, and eight days later,
when the predictions' is), inside the measured interval. It also prints the size of a join's
tombstone (mean value bytes and ``MEMORY USAGE`` over up to 500 joined ids). Other clients of
the same Redis add to ``INFO cpu``; the ``evalsha`` column and the spread across passes show how
much.

By default the script starts its own ``redis-server`` (the one on ``PATH``, no persistence) on a
free port and stops it at the end, so that no other client of a shared Redis adds to its CPU
figures; ``--redis-url`` (or ``STREAMPROC_REDIS_URL``) uses an existing server instead. Keys are
named ``bench-join-*`` and removed after each pass. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamproc.ingest import join as after_module  # noqa: E402


@dataclass(frozen=True)
class Batch:
    side: str  # "p" or "l"
    items: list[tuple[str, str]]  # (prediction id, origin)


PHASES = (
    "arrivals",
    "sweep 2 h on (first look)",
    "sweep 8 days on (expiries, tombstones)",
    "sweep 10 days on (tombstones)",
    "deletion of what is left",
)
"""The parts of the events' life a pass measures, in order (the Redis CPU of each)."""


@dataclass
class Pass:
    impl: str
    events: int
    wall_s: float
    redis_cpu_s: float
    evalsha_us: int
    counts: dict[str, int]
    tombstone_bytes: float  # mean length of a join's tombstone value
    tombstone_memory: float  # mean MEMORY USAGE of its key (key, value and overheads)
    keys_left: int  # join keys left once every deadline and tombstone day has passed
    # Redis CPU seconds of each part of the events' life (PHASES); together about redis_cpu_s
    phases: dict[str, float] = field(default_factory=dict)


def load_before(ref: str, name: str) -> ModuleType:
    """``streamproc/join.py`` as of ``ref``, imported as ``name``."""
    for where in ("streamproc/ingest/join.py", "streamproc/join.py"):  # the layout moved
        shown = subprocess.run(
            ["git", "show", f"{ref}:{where}"], cwd=ROOT, capture_output=True, text=True
        )
        if shown.returncode == 0:
            break
    shown.check_returncode()
    source = shown.stdout
    path = Path(tempfile.mkdtemp(prefix="join-before-")) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the Structs' annotations through it
    spec.loader.exec_module(module)
    return module


def workload(
    n: int, batch: int, label_fraction: float, early_fraction: float, seed: int
) -> list[Batch]:
    """Prediction and label batches in arrival order (see the module docstring)."""
    rng = random.Random(seed)
    ids = [f"pred-{i:07d}" for i in range(n)]
    rng.shuffle(ids)
    # (arrival position, side, id, origin); a label's position is its prediction's +- a delay
    # longer than a batch, so "early" and "late" are decided by the workload, not by chance.
    arrivals: list[tuple[float, str, str, str]] = []
    for pos, pid in enumerate(ids):
        arrivals.append((pos, "p", pid, f"0:{pos}:"))
    for pos in rng.sample(range(n), int(n * 0.01)):
        arrivals.append((pos + rng.uniform(1, 5 * batch), "p", ids[pos], f"1:{pos}:"))
    for pos in rng.sample(range(n), int(n * 0.005)):
        arrivals.append((pos + rng.uniform(1, 5 * batch), "p", ids[pos], f"0:{pos}:"))
    for pos in rng.sample(range(n), int(n * label_fraction)):
        delay = rng.uniform(2 * batch, 40 * batch)
        sign = -1 if rng.random() < early_fraction else 1
        arrivals.append((pos + sign * delay, "l", ids[pos], f"{pos % 3}:{pos}:"))
    arrivals.sort(key=lambda a: a[0])
    out: list[Batch] = []
    pending: dict[str, list[tuple[str, str]]] = {"p": [], "l": []}
    for _, side, pid, origin in arrivals:
        pending[side].append((pid, origin))
        if len(pending[side]) == batch:
            out.append(Batch(side, pending[side]))
            pending[side] = []
    out += [Batch(side, items) for side, items in pending.items() if items]
    return out


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away ``redis-server`` on a free local port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not on PATH; pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def redis_cpu(client: redis.Redis) -> tuple[float, int]:
    cpu = client.info("cpu")
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), int(stats.get("usec", 0))


async def run_pass(module: ModuleType, name: str, url: str, batches: list[Batch]) -> Pass:
    prefix = f"bench-join-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(url, decode_responses=False)
    sync = redis.Redis.from_url(url)
    join = module.RedisJoin(client, prefix)
    pred = module.JoinRecord(
        "model-a", "3", 1_700_000_000.0, 0.73, 0.91, None,
        {"country": "DE", "plan": "pro"}, {"f1": 0.25, "f2": 17.0, "f3": "x"},
    )  # fmt: skip
    label = module.LabelRecord(1, 1_700_000_600.0, "model-a")
    counts: Counter[str] = Counter()
    joined: list[str] = []
    events = sum(len(b.items) for b in batches)
    await client.ping()
    # A deployment checks its layout once at start; marked here so that a shared Redis given by
    # --redis-url is not scanned.
    marker = module.layout_marker(1) if hasattr(module, "layout_marker") else module.LAYOUT
    await client.set(f"{prefix}:layout", marker)
    await join.setup()
    cpu0, us0 = redis_cpu(sync)
    t0 = time.perf_counter()
    for b in batches:
        if b.side == "p":
            results, _ = await join.add_predictions([(pid, o, pred) for pid, o in b.items])
        else:
            results, _ = await join.add_labels([(pid, o, label) for pid, o in b.items])
        counts.update(results)
        joined += [pid for (pid, _), r in zip(b.items, results, strict=True) if r == "joined"]
    wall = time.perf_counter() - t0
    cpu1, us1 = redis_cpu(sync)
    sample = [state_key(module, prefix, pid) for pid in joined[:: max(1, len(joined) // 500)]]
    size = statistics.mean(len(v) for v in sync.mget(sample)) if sample else 0.0
    memory = statistics.mean(sync.memory_usage(k, samples=0) for k in sample) if sample else 0.0
    # The rest of the events' life belongs to the cost too: the sweeps two hours on (the
    # labels' hour is over, what still waits is looked at again), eight days on (the
    # predictions' week is over) and ten days on (the last tombstones' day), then deleting
    # what is left: the keys Redis would expire by their TTLs (layouts before 4) cost about
    # what an UNLINK of them costs. Finding them (SCAN) is not measured.
    cpu2, us2 = redis_cpu(sync)
    t2 = time.perf_counter()
    end = time.time()
    phases = {PHASES[0]: cpu1 - cpu0}
    for phase, later in zip(PHASES[1:4], (2 * 3600, 8 * 24 * 3600, 10 * 24 * 3600), strict=True):
        before = redis_cpu(sync)[0]
        for _ in range(100):
            expired = await join.expire(now=end + later)
            counts["expired_prediction"] += len(expired.predictions)
            counts["expired_label"] += expired.labels
            if not expired.predictions and not expired.labels:
                break
        phases[phase] = redis_cpu(sync)[0] - before
    wall += time.perf_counter() - t2
    cpu3, us3 = redis_cpu(sync)
    counts["pending_after"] = sum(await join.pending())
    keys = [k for p in after_module.key_patterns(prefix) for k in sync.scan_iter(p, count=10_000)]
    cpu4, us4 = redis_cpu(sync)
    t4 = time.perf_counter()
    for start in range(0, len(keys), 10_000):
        sync.unlink(*keys[start : start + 10_000])
    wall += time.perf_counter() - t4
    cpu5, us5 = redis_cpu(sync)
    phases[PHASES[4]] = cpu5 - cpu4
    await client.aclose()
    sync.close()
    cpu = cpu1 - cpu0 + cpu3 - cpu2 + cpu5 - cpu4
    us = us1 - us0 + us3 - us2 + us5 - us4
    return Pass(name, events, wall, cpu, us, dict(counts), size, memory, len(keys), phases)


def state_key(module: ModuleType, prefix: str, pid: str) -> str:
    """The key of an id's join state in ``module``'s layout."""
    if hasattr(module, "layout_marker"):  # layout 4: one join shard on a single Redis
        return f"{module.shard_tag(prefix, 0)}:i:{pid}"
    if hasattr(module, "shard_tag"):  # layout 3: hash-tagged by join shard
        return f"{module.shard_tag(prefix, module.shard_of(pid))}:i:{pid}"
    return f"{prefix}:i:{pid}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label-fraction", type=float, default=0.8)
    ap.add_argument("--early-fraction", type=float, default=0.2)
    ap.add_argument("--baseline-ref", default="42f567c", help="git ref of the 'before' join.py")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--redis-url", default=os.environ.get("STREAMPROC_REDIS_URL"))
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(private_redis())
        measure(args, url)


def measure(args: argparse.Namespace, url: str) -> None:
    """Run the passes against ``url`` and print the table."""
    before = load_before(args.baseline_ref, "join_before")
    batches = workload(args.events, args.batch, args.label_fraction, args.early_fraction, args.seed)
    passes: list[Pass] = []
    for name, module in schedule(implementations(before), args.repeats):
        p = asyncio.run(run_pass(module, name, url, batches))
        passes.append(p)
        print(
            f"{name:22} {p.events:,} events  {p.events / p.wall_s:>9,.0f} ev/s  "
            f"Redis {p.redis_cpu_s / p.events * 1e6:5.2f} µs/event (cpu)  "
            f"{p.evalsha_us / p.events:5.2f} µs/event (evalsha)  tombstone "
            f"{p.tombstone_bytes:.0f} B ({p.tombstone_memory:.0f} B used)  "
            f"{p.keys_left:,} keys left  {p.counts}",
            flush=True,
        )
    names = [name for name, _ in implementations(before)]
    counts = {p.impl: p.counts for p in passes}
    if any(counts[name] != counts["before"] for name in names):
        sys.exit(f"result counts differ: {counts}")

    def med(impl: str, f: Callable[[Pass], float]) -> float:
        return statistics.median(f(p) for p in passes if p.impl == impl)

    rows: dict[str, Callable[[Pass], float]] = {
        "events/s": lambda p: p.events / p.wall_s,
        "Redis CPU µs/event (INFO cpu)": lambda p: p.redis_cpu_s / p.events * 1e6,
        **{
            f"of which {phase}": lambda p, phase=phase: p.phases[phase] / p.events * 1e6
            for phase in PHASES
        },
        "Redis µs/event in EVALSHA (commandstats)": lambda p: p.evalsha_us / p.events,
        "tombstone value bytes": lambda p: p.tombstone_bytes,
        "tombstone MEMORY USAGE bytes": lambda p: p.tombstone_memory,
    }
    print(f"\n{len(batches)} batches, {passes[0].events:,} events, medians of {args.repeats}")
    pairs = [(n, names[0]) for n in names[1:]]
    ratios = [f"{a} / {b}" for a, b in pairs]
    print("| measure | " + " | ".join(names + ratios) + " |")
    print("| --- |" + " ---: |" * (len(names) + len(pairs)))
    for label, f in rows.items():
        value = {name: med(name, f) for name in names}
        cells = [f"{value[n]:,.2f}" for n in names]
        # a part that costs the baseline next to nothing (under 0.01 µs/event) has no ratio
        cells += [f"{value[a] / value[b]:.2f}" if value[b] >= 0.01 else "-" for a, b in pairs]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for a, b in pairs:
        paired = paired_ratios(passes, a, b)
        print(
            f"\nRedis CPU {a} / {b}, pass by pass (each {a} pass against the {b} pass run next to "
            f"it, which shared the machine's state; the two take turns going first): median "
            f"{statistics.median(paired):.3f}, {min(paired):.3f} - {max(paired):.3f} over "
            f"{len(paired)}"
        )


def schedule(impls: Sequence[tuple[str, ModuleType]], repeats: int) -> list[tuple[str, ModuleType]]:
    """The passes in the order they run: one of each implementation per repeat, the order
    reversed every other repeat, so that neither side always runs on the Redis the other just
    warmed. (With the same code on both sides, one run in a fixed order gave the second pass a
    pass-by-pass median of 0.96, and one in turns 0.98, 0.86 - 1.08: a difference of a few
    percent is within this bench's noise.)"""
    out: list[tuple[str, ModuleType]] = []
    for r in range(repeats):
        out += impls[::-1] if r % 2 else impls
    return out


def paired_ratios(passes: Sequence[Pass], a: str, b: str) -> list[float]:
    """Redis CPU of each ``a`` pass over that of the ``b`` pass of the same repeat (the pass run
    next to it, whichever came first)."""
    out = []
    for i in range(0, len(passes) - 1, 2):
        pair = {p.impl: p for p in passes[i : i + 2]}
        if a in pair and b in pair:
            out.append(pair[a].redis_cpu_s / pair[b].redis_cpu_s)
    return out


def implementations(before: ModuleType) -> list[tuple[str, ModuleType]]:
    """What each pass runs: name and module."""
    return [("before", before), ("after", after_module)]


if __name__ == "__main__":
    main()
