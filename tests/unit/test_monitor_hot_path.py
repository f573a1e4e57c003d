"""The monitor's hot path (batch columns, grouped sketch updates) against a plain reference.

``ReferenceMonitor`` is the engine with ``observe`` folding each (monitor, window, tick) group
observation by observation, as it did before the batch columns: on the same input, cut into
the same batches, both must give the same alerts, metrics records and checkpoints, byte for
byte. The inputs include what the fast paths must not get wrong: nulls, missing and unknown
features, numbers where categories are expected and the reverse, booleans, missing
confidences and latencies, numeric predictions, redelivered and late events, warm-up.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator

import msgspec
import numpy as np
import pytest

from streamproc.config import MonitoringConfig
from streamproc.dev.synthetic import (
    MeanShift,
    NewCategory,
    NullBurst,
    Workload,
    WorkloadSpec,
)
from streamproc.monitor import (
    Z_SCALE,
    ModelMonitor,
    NumRef,
    Observation,
    Segment,
    WindowAgg,
    _is_num,
    _label,
    _row_hash,
    monitor_to_bytes,
)
from streamproc.sketch import NumericSketch
from tests.unit.test_monitor import CFG, PARTITIONS, observations, references


class ReferenceMonitor(ModelMonitor):
    """The engine as it was: each group's observations folded one Python list at a time."""

    def observe(self, observations: Iterable[Observation]) -> None:
        """Fold accepted predictions in (duplicates from redelivery are skipped).

        Events are grouped by (monitor, window, tick) first, so each sketch takes one
        update per group.
        """
        groups: dict[tuple[str, str, float, float], list[Observation]] = {}
        for ob in observations:
            source = f"p{ob.partition}"
            if not self._fresh(source, ob.offset, ob.index):
                continue
            if not self.clock.admit(source, ob.event_time):
                continue
            wstart = math.floor(ob.event_time / self.cfg.window_s) * self.cfg.window_s
            tstart = self.clock.window_start(ob.event_time)
            for key in self.keys_of(ob.segments):
                groups.setdefault((ob.model_version, key, wstart, tstart), []).append(ob)
        for (version, key, wstart, tstart), obs in groups.items():
            seg = self._segment(version, key)
            self._add(seg, self._window(seg, wstart), tstart, obs)

    def _add(self, seg: Segment, agg: WindowAgg, tstart: float, obs: list[Observation]) -> None:
        agg.count += len(obs)
        tick_offsets = seg.tick_offsets.setdefault(tstart, {})
        for offsets in (agg.offsets, tick_offsets):
            for ob in obs:
                span = offsets.get(str(ob.partition))
                if span is None:
                    offsets[str(ob.partition)] = [ob.offset, ob.offset]
                else:
                    span[0] = min(span[0], ob.offset)
                    span[1] = max(span[1], ob.offset)
        latencies = [ob.latency_ms for ob in obs if ob.latency_ms is not None]
        if latencies:
            agg.latency.update_many(np.asarray(latencies, dtype=float))
        ref = seg.ref
        if ref is None:
            for ob in obs:
                self._sample(agg, ob)
            return
        tick = seg.ticks.setdefault(tstart, {})
        for name, fr in ref.features.items():
            values = [ob.features.get(name) for ob in obs]
            if isinstance(fr, NumRef):
                nums = [v for v in values if _is_num(v)]
                nulls = sum(1 for v in values if v is None)
                if len(nums) + nulls < len(values):
                    agg.mismatched[name] = (
                        agg.mismatched.get(name, 0) + len(values) - len(nums) - nulls
                    )
                arr = np.asarray(nums, dtype=float)
                agg.numeric[name].update_many(arr, nulls)
                if arr.size and fr.std > 0:
                    # Fixed-point (micro-sd) integer sums: exact in any order or grouping, so
                    # the detector sees the same values however batches were cut.
                    acc = tick.setdefault(name, [0, 0])
                    acc[0] += int(np.rint((arr - fr.mean) / fr.std * Z_SCALE).sum())
                    acc[1] += int(arr.size)
            else:
                labels = [_label(v) for v in values if v is not None]
                agg.categorical[name].update_many(labels, len(values) - len(labels))
        for ob in obs:
            for name in ob.features.keys() - ref.features.keys():
                agg.unknown[name] = agg.unknown.get(name, 0) + 1
        if isinstance(agg.prediction, NumericSketch):
            preds = [float(ob.prediction) for ob in obs if _is_num(ob.prediction)]
            agg.prediction.update_many(np.asarray(preds, dtype=float))
        elif agg.prediction is not None:
            agg.prediction.update_many([_label(ob.prediction) for ob in obs])
        if agg.score is not None:
            conf = [ob.confidence for ob in obs if ob.confidence is not None]
            if conf:
                agg.score.update_many(np.asarray(conf, dtype=float))

    def _sample(self, agg: WindowAgg, ob: Observation) -> None:
        """Bottom-k sample by a hash of the event's position: the same whatever the order."""
        h = _row_hash(ob.partition, ob.offset, ob.index)
        k = self.cfg.warmup_sample
        if len(agg.sample) >= k and h >= agg.sample[-1][0]:
            return
        row = [h, dict(ob.features), ob.prediction, ob.confidence]
        lo, hi = 0, len(agg.sample)
        while lo < hi:
            mid = (lo + hi) // 2
            if agg.sample[mid][0] < h:
                lo = mid + 1
            else:
                hi = mid
        agg.sample.insert(lo, row)
        if len(agg.sample) > k:
            agg.sample.pop()


def _messy(
    obs: Iterable[Observation], seed: int, numeric_prediction: bool = False
) -> Iterator[Observation]:
    """The workload's observations with the data-quality problems a real stream has."""
    rng = random.Random(seed)
    for ob in obs:
        f: dict = dict(ob.features)
        roll = rng.random()
        if roll < 0.05:
            f["f01"] = rng.choice(["7.5", True, False, 3, None, "n/a"])
        elif roll < 0.08:
            f.pop("f02", None)
            f.pop("c1", None)
        elif roll < 0.10:
            f["zz_new"] = 1.0
            f["aa_new"] = "x"
        elif roll < 0.12:
            f["c0"] = rng.choice([1.0, 2.5, True, None, 7.0])
        elif roll < 0.13:
            f = {k: f[k] for k in reversed(list(f))}  # another key order
        elif roll < 0.14:
            f["f03"] = -0.0 if rng.random() < 0.5 else 0.0
        confidence = None if rng.random() < 0.05 else ob.confidence
        latency = None if rng.random() < 0.05 else ob.latency_ms
        prediction = ob.prediction
        if numeric_prediction:
            prediction = round(rng.gauss(3.0, 1.0), 3) if rng.random() > 0.02 else "bad"
        elif rng.random() < 0.01:
            prediction = rng.choice([True, 1.0])
        yield Observation(
            ob.partition, ob.offset, ob.index, ob.event_time, ob.model_version, ob.segments, f,
            prediction, confidence, latency,
        )  # fmt: skip
        if rng.random() < 0.01:  # redelivered
            yield ob
        if rng.random() < 0.005:  # late: far behind its partition
            yield Observation(
                ob.partition, ob.offset, ob.index + 1, ob.event_time - 600.0, ob.model_version,
                ob.segments, f, prediction, confidence, latency,
            )  # fmt: skip


def _cuts(n: int, sizes: list[int], seed: int) -> list[int]:
    rng = random.Random(seed)
    cuts, at = [], 0
    while at < n:
        step = rng.choice(sizes)
        cuts.append(min(step, n - at))
        at += step
    return cuts


def _run_both(obs: list[Observation], cuts: list[int], cfg: MonitoringConfig, refs: dict) -> None:
    sources = [f"p{i}" for i in range(PARTITIONS)]
    fast = ModelMonitor("m", cfg, sources, refs)
    plain = ReferenceMonitor("m", cfg, sources, refs)
    enc = msgspec.json.Encoder()
    at = 0
    for step, size in enumerate(cuts):
        batch = obs[at : at + size]
        at += size
        fast.observe(batch)
        plain.observe(batch)
        final = step == len(cuts) - 1
        a, b = fast.advance("t", final=final), plain.advance("t", final=final)
        assert [enc.encode(x) for x in a.alerts] == [enc.encode(x) for x in b.alerts]
        assert [enc.encode(x) for x in a.metrics] == [enc.encode(x) for x in b.metrics]
        assert a.detections == b.detections
        if step % 5 == 0 or final:
            assert monitor_to_bytes(fast) == monitor_to_bytes(plain), f"batch {step}"


@pytest.fixture(scope="module")
def drifting() -> tuple[WorkloadSpec, dict]:
    spec = WorkloadSpec(
        rate=50.0,
        changes=(
            MeanShift("f03", 1.0, start=4_000, end=9_000),
            NewCategory("c1", "brand-new", 0.3, start=6_000),
            NullBurst("f05", 0.4, start=3_000, end=8_000),
        ),
    )
    return spec, references(spec)


@pytest.mark.parametrize("sizes", [[2000], [1, 7, 500], [5000, 333]])
def test_batch_columns_give_byte_identical_outputs_and_checkpoints_to_the_plain_engine(
    drifting: tuple[WorkloadSpec, dict], sizes: list[int]
) -> None:
    spec, refs = drifting
    obs = list(_messy(observations(Workload(spec, 12_000, seed=7)), seed=len(sizes)))
    _run_both(obs, _cuts(len(obs), sizes, seed=sum(sizes)), CFG, refs)


def test_warm_up_and_numeric_predictions_match_the_plain_engine() -> None:
    spec = WorkloadSpec(rate=50.0)
    cfg = MonitoringConfig(
        window_s=60.0, tick_s=2.0, lateness_s=5.0, warmup_min_rows=500, warmup_sample=2000
    )
    obs = list(_messy(observations(Workload(spec, 12_000, seed=3)), 5, numeric_prediction=True))
    _run_both(obs, _cuts(len(obs), [800, 1500, 3], seed=1), cfg, {})


def test_tick_sums_do_not_depend_on_how_batches_are_cut(
    drifting: tuple[WorkloadSpec, dict],
) -> None:
    spec, refs = drifting
    obs = list(observations(Workload(spec, 6_000, seed=11)))
    ticks = []
    for size in (1, 37, 6_000):
        m = ModelMonitor("m", CFG, [f"p{i}" for i in range(PARTITIONS)], refs)
        for at in range(0, len(obs), size):
            m.observe(obs[at : at + size])  # no advance: every tick stays open
        ticks.append({k: seg.ticks for k, seg in m.segments.items()})
    assert ticks[0] == ticks[1] == ticks[2]
    assert any(t for seg_ticks in ticks[0].values() for t in seg_ticks.values())
