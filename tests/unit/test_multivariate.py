"""Multivariate drift: the window's cross moments, the baseline's PCA, and the judge's check."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

from streamproc.baseline import ProfileBuilder, ReferenceProfile, SegmentReference
from streamproc.baseline.builder import fit_reconstruction
from streamproc.baseline.reference import Reference
from streamproc.dev.synthetic import Workload, WorkloadSpec
from streamproc.sketch import MV_SCALE, CrossMoments, standardised
from tests.unit.pipeline import run

A, B = "f10", "f11"  # noise to the model: their correlation moves no prediction
RHO = 0.8
SPEC = WorkloadSpec(rate=50.0)
WORLD = Workload(SPEC, 1, seed=1).world


def _correlated(row: dict[str, Any], rho: float) -> None:
    """Give ``B`` correlation ``rho`` with ``A`` in place; both marginals stay as they were."""
    a = (row[A] - WORLD.mean[A]) / WORLD.std[A]
    b = (row[B] - WORLD.mean[B]) / WORLD.std[B]
    row[B] = round(WORLD.mean[B] + WORLD.std[B] * (rho * a + math.sqrt(1 - rho * rho) * b), 4)


def _profile() -> ReferenceProfile:
    dims = [d.name for d in SPEC.segment_dims]
    builder = ProfileBuilder(SPEC.model_id, SPEC.model_version, dims)
    features = (*SPEC.numeric_features, *SPEC.categorical_features)
    for row in Workload(SPEC, 30_000, seed=101).reference_rows():
        _correlated(row, RHO)
        builder.add(
            {k: row[k] for k in features},
            prediction=row["prediction"],
            score=row["score"],
            label=row["label"],
            segments={d: row[d] for d in dims},
        )
    return builder.build("correlated reference")


def test_merged_cross_moments_equal_one_fed_every_row_in_any_split() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 5)) * 3.0 + 1.0
    x[rng.random(x.shape) < 0.05] = np.nan
    q = standardised(x, np.ones(5), np.full(5, 3.0))
    whole = CrossMoments(5)
    whole.update(q)
    for cuts in ([500], [1, 999], [100, 350, 700]):
        parts = []
        for lo, hi in zip([0, *cuts], [*cuts, 1000], strict=True):
            part = CrossMoments(5)
            part.update(q[lo:hi])
            parts.append(part)
        merged = parts[-1].copy()
        for part in reversed(parts[:-1]):
            merged += part
        assert merged == whole
        assert CrossMoments.from_bytes(merged.to_bytes()) == whole


def test_window_error_from_the_sketch_equals_the_mean_error_of_its_rows() -> None:
    rng = np.random.default_rng(4)
    z = rng.standard_normal((2000, 6)) @ rng.standard_normal((6, 6))
    q = standardised(z, np.zeros(6), np.ones(6))
    v = np.linalg.qr(rng.standard_normal((6, 3)))[0].T  # 3 orthonormal components
    sk = CrossMoments(6)
    sk.update(q)
    zq = q / MV_SCALE
    direct = float(np.mean(np.sum(np.square(zq - zq @ v.T @ v), axis=1)))
    assert math.isclose(sk.reconstruction_error(v), direct, rel_tol=1e-9)


def test_baseline_pca_keeps_the_correlated_direction_and_measures_its_error_out_of_sample() -> None:
    rng = np.random.default_rng(5)
    a, b, c = rng.standard_normal((3, 5000))
    cols = {"a": a, "b": RHO * a + math.sqrt(1 - RHO**2) * b, "c": c}
    builder = ProfileBuilder("m", "1")
    builder.add_columns(cols)
    rec = builder.build("test").segments["all"].reconstruction
    assert rec is not None
    comps = np.asarray(rec.components)
    assert np.allclose(comps @ comps.T, np.eye(len(comps)))
    # eigenvalues 1.8, 1, 0.2: two components keep 2.8 / 3 of the variance, 0.2 is left
    assert rec.features == ["a", "b", "c"] and len(comps) == 2
    assert abs(rec.error_mean - 0.2) < 0.02


def test_a_baseline_stored_without_a_pca_loads_keeps_its_fingerprint_and_skips_the_check() -> None:
    seg = SegmentReference(count=3)
    old = msgspec.msgpack.encode({f: getattr(seg, f) for f in seg.__struct_fields__[:-1]})
    assert msgspec.msgpack.decode(old, type=SegmentReference) == seg
    ref = Reference.of(seg, "baseline")
    assert ref.reconstruction is None
    assert Reference.from_bytes(ref.to_bytes()).fp == ref.fp
    assert fit_reconstruction({}) is None  # no numeric feature: no PCA, nothing to judge


def test_correlation_flip_with_unchanged_marginals_fires_multivariate_drift_only() -> None:
    flip_at = 18_000

    def edit(i: int, event: dict[str, Any]) -> dict[str, Any]:
        _correlated(event["features"], RHO if i < flip_at else -RHO)
        return event

    result = run(SPEC, 36_000, edit=edit, profile=_profile())
    firing = result.firing
    kinds = {(a.kind, a.detector) for a in firing}
    assert kinds == {("multivariate_drift", "reconstruction_error")}, result.by_detector()
    overall = [a for a in firing if a.segment == {}]
    assert overall, [a.segment for a in firing]
    start = overall[0].window.start
    assert start >= "2024-01-01T00:06:00", start  # the flip is at 360 s of event time
    errors = [
        (r.window.start, r.outputs["reconstruction_error"], r.outputs["reconstruction_error_upper"])
        for r in result.records
        if r.segment == {} and "reconstruction_error" in r.outputs
    ]
    before = [e for s, e, _ in errors if s < "2024-01-01T00:06:00"]
    after = [e for s, e, _ in errors if s >= "2024-01-01T00:07:00"]
    upper = errors[0][2]
    assert before and after
    assert max(before) < upper < min(after), errors
