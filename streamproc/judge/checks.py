"""What is compared when a window closes: each check turns sketches into a verdict.

Every check takes the window's merged partial, the reference the window is judged against,
and a :class:`Judge` callback that records a verdict for one signal (feature, detector, kind).
Checks return the ``metrics.v1`` values they computed. Significance levels are model-wide and
split across the tests judged together (Bonferroni), see ``MonitoringConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from streamproc.aggregate import losses
from streamproc.aggregate.partials import Z_SCALE, OutcomePartial, WindowPartial, moments_of
from streamproc.baseline import (
    CategoricalReference,
    ClassPerformanceReference,
    NumericReference,
    SegmentReference,
)
from streamproc.baseline.reference import Reference
from streamproc.config import MonitoringConfig, Tiers
from streamproc.contracts import ClassPerformance, MetricBand
from streamproc.judge import cbpe, stats
from streamproc.judge.alerts import Kind, Severity, Verdict
from streamproc.sketch import CategoricalSketch, NumericSketch

Row = dict[str, float | int | None]


class Judge(Protocol):
    """Records one verdict of the window being closed."""

    def __call__(
        self,
        feature: str | None,
        detector: str,
        kind: Kind,
        severity: Severity | None,
        cleared: bool,
        value: float,
        threshold: float,
        evidence: dict[str, Any],
    ) -> None: ...


def moment(x: float) -> float:
    """A floating-point moment as published: 9 significant digits.

    Counts, histograms and every statistic computed from them are exact whatever order the
    events were merged in; sums of floats (means, spreads, errors) are not, in their last bits.
    Rounding them is what makes a replay's ``metrics.v1`` equal the worker's.

    >>> moment(0.1 + 0.2) == moment(0.3)
    True
    """
    return float(f"{x:.9g}") if math.isfinite(x) else x


def severity(value: float, tiers: Tiers, higher_is_worse: bool = True) -> Severity | None:
    """The tier ``value`` reaches, if any.

    >>> severity(0.3, Tiers(warning=0.1, critical=0.25)), severity(0.05, Tiers(warning=0.1,
    ...     critical=0.25))
    ('critical', None)
    """
    if not higher_is_worse:
        value, w, c = -value, -tiers.warning, -tiers.critical
    else:
        w, c = tiers.warning, tiers.critical
    if value >= c:
        return "critical"
    if value >= w:
        return "warning"
    return None


def psi_severity(
    psi: float, tiers: Tiers, n: int, ref_n: int, bins: int, alpha: float
) -> tuple[Severity | None, float]:
    """PSI tier, but only where the PSI is beyond what sampling alone would give.

    Under no change, ``PSI * n_eff`` (``n_eff = n m / (n + m)``) is approximately chi-squared
    with ``bins - 1`` degrees of freedom, so a small window (or a small reference) inflates PSI
    by about ``(bins - 1) / n_eff``. A tier counts only when that chance is under ``alpha``.

    >>> tiers = Tiers(warning=0.1, critical=0.25)
    >>> psi_severity(0.12, tiers, 300, 3000, 10, 1e-5)[0] is None  # 300 events: could be noise
    True
    >>> psi_severity(0.12, tiers, 5000, 30000, 10, 1e-5)[0]
    'warning'

    With an ``info`` tier, a smaller shift that is certain still counts, as ``info``:

    >>> psi_severity(0.02, Tiers(warning=0.1, critical=0.25, info=0.0), 6000, 60000, 10, 1e-5)[0]
    'info'
    """
    n_eff = n * ref_n / (n + ref_n) if ref_n else float(n)
    p = stats.chi2_sf(psi * n_eff, max(bins - 1, 1))
    sev = severity(psi, tiers)
    if sev is None and tiers.info is not None and psi >= tiers.info:
        sev = "info"
    return (sev if p < alpha else None), p


def _categorical_arrays(
    probs: Mapping[str, float], counts: Mapping[str, int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    cats = sorted(set(probs) | set(counts))
    rp = np.array([probs.get(c, 0.0) for c in cats])
    wc = np.array([counts.get(c, 0) for c in cats], dtype=float)
    return cats, rp, wc


def features(
    cfg: MonitoringConfig,
    ref: Reference,
    window: WindowPartial,
    window_events: int,
    n_tests: int,
    judge: Judge,
) -> tuple[dict[str, Row], dict[str, list[str]]]:
    """Schema, null rate and distribution checks of every feature the reference watches.

    Returns the features' ``metrics.v1`` rows and, per numeric feature, the window statistics
    over a tier (for ADWIN / Page-Hinkley escalation).
    """
    rows: dict[str, Row] = {}
    agreeing: dict[str, list[str]] = {}
    enough = window_events >= cfg.min_window_count
    alpha = cfg.psi_significance / n_tests
    specs: list[tuple[str, NumericReference | CategoricalReference]] = sorted(
        [*ref.numeric.items(), *ref.categorical.items()]
    )
    for name, fr in specs:
        row: Row = {}
        rows[name] = row
        sk: NumericSketch | CategoricalSketch | None
        if isinstance(fr, NumericReference):
            sk = window.numeric.get(name)
        else:
            sk = window.categorical.get(name)
        n, nulls, total = (sk.count, sk.nulls, sk.total) if sk is not None else (0, 0, 0)
        row.update(count=n, nulls=nulls)
        mism = window.mismatched.get(name, 0)
        missing = enough and n == 0 and mism == 0
        judge(
            name, "schema_missing", "data_quality", "critical" if missing else None,
            not missing, 1.0 if missing else 0.0, 1.0,
            {"window_events": window_events, "feature_values": n},
        )  # fmt: skip
        mism_share = mism / window_events if window_events else 0.0
        bad_type = enough and mism_share > 0.01
        expected = "number" if isinstance(fr, NumericReference) else "string"
        judge(
            name, "schema_type", "data_quality", "critical" if bad_type else None,
            not bad_type, mism_share, 0.01, {"expected": expected, "mismatched_values": mism},
        )  # fmt: skip
        if total and enough:
            rate = nulls / total
            delta = rate - fr.null_rate
            row["null_rate"] = rate
            judge(
                name, "null_rate", "data_quality", severity(delta, cfg.null_rate_delta),
                delta < cfg.null_rate_delta.clearing(), delta, cfg.null_rate_delta.warning,
                {
                    "reference_null_rate": round(fr.null_rate, 6),
                    "window_null_rate": round(rate, 6),
                    "window_values": total,
                },
            )  # fmt: skip
        if sk is None or n < cfg.min_window_count:
            continue
        if isinstance(fr, NumericReference):
            assert isinstance(sk, NumericSketch)
            mean, std = sk.mean, sk.std
            zsum = window.zsum.get(name)
            centre, sd = ref.scales[name]
            if zsum is not None and sd > 0 and zsum[1] == sk.count:
                mean, std = moments_of(zsum, centre, sd)  # exact, whatever the merge order
            agreeing[name] = _numeric(
                cfg, name, fr, ref.probs[name], sk, (mean, std), row, alpha, n_tests, judge
            )
        else:
            assert isinstance(sk, CategoricalSketch)
            _categorical(cfg, name, fr, sk, row, alpha, judge)
    return rows, agreeing


def _numeric(
    cfg: MonitoringConfig,
    name: str,
    fr: NumericReference,
    probs: np.ndarray,
    sk: NumericSketch,
    moments: tuple[float, float],
    row: Row,
    alpha: float,
    n_tests: int,
    judge: Judge,
) -> list[str]:
    n = sk.count
    mean, std = moments
    hist = sk.hist
    psi = stats.psi(probs, hist)
    js = stats.js_divergence(probs, hist)
    d, p = stats.ks_binned(probs, hist, fr.count or None)
    oor = stats.out_of_range_share(sk.below_ref_min, sk.above_ref_max, n)
    row.update(psi=psi, js=js, ks=d, ks_p=p, mean=moment(mean), std=moment(std))
    row["out_of_range"] = oor
    moved = np.argsort(-np.abs(hist / n - probs))[:3]
    evidence: dict[str, Any] = {
        "window_count": n,
        "reference_count": fr.count,
        "window_mean": round(mean, 6),
        "reference_mean": round(float(fr.mean or 0.0), 6),
        "window_std": round(std, 6),
        "reference_std": round(float(fr.std or 0.0), 6),
        "js": round(js, 6),
        "ks": round(d, 6),
        "ks_p": p,
        "out_of_range_share": round(oor, 6),
        "top_moved_bins": [
            {
                "bin": int(i),
                "reference": round(float(probs[i]), 4),
                "window": round(float(hist[i] / n), 4),
            }
            for i in moved
        ],
    }
    sev, psi_p = psi_severity(psi, cfg.psi, n, fr.count, len(probs), alpha)
    evidence["psi_p"] = psi_p
    judge(
        name, "psi", "feature_drift", sev, psi < cfg.psi.clearing(), psi, cfg.psi.warning,
        evidence,
    )  # fmt: skip
    ks_sev: Severity | None = None
    if d >= cfg.ks_effect_floor:
        if p < cfg.ks_p.critical / n_tests:
            ks_sev = "critical"
        elif p < cfg.ks_p.warning / n_tests:
            ks_sev = "warning"
    judge(
        name, "ks", "feature_drift", ks_sev, d < 0.8 * cfg.ks_effect_floor, d,
        cfg.ks_effect_floor, evidence,
    )  # fmt: skip
    # an info-level PSI does not make a detector's tick detection critical
    return [stat for stat, sv in (("psi", sev), ("ks", ks_sev)) if sv not in (None, "info")]


def _categorical(
    cfg: MonitoringConfig,
    name: str,
    fr: CategoricalReference,
    sk: CategoricalSketch,
    row: Row,
    alpha: float,
    judge: Judge,
) -> None:
    n = sk.count
    counts = sk.counts
    cats, rp, wc = _categorical_arrays(fr.probs, counts)
    psi = stats.psi(rp, wc)
    js = stats.js_divergence(rp, wc)
    chi, p, dof = stats.chi2_categorical(fr.probs, counts)
    new = stats.new_categories(fr.probs, counts)
    new_share = sum(counts[c] for c in new) / n
    row.update(psi=psi, js=js, chi2=chi, chi2_p=p, new_category_share=new_share)
    moved_cats = sorted(cats, key=lambda c: -abs(counts.get(c, 0) / n - fr.probs.get(c, 0.0)))[:3]
    evidence: dict[str, Any] = {
        "window_count": n,
        "reference_count": fr.count,
        "js": round(js, 6),
        "chi2": round(chi, 4),
        "chi2_p": p,
        "dof": dof,
        "new_categories": len(new),
        "new_category_share": round(new_share, 6),
        "top_moved_categories": [
            {
                "category_rank": i,
                "reference": round(fr.probs.get(c, 0.0), 4),
                "window": round(counts.get(c, 0) / n, 4),
            }
            for i, c in enumerate(moved_cats)
        ],
    }
    sev, psi_p = psi_severity(psi, cfg.psi, n, fr.count, len(cats), alpha)
    evidence["psi_p"] = psi_p
    judge(
        name, "psi", "feature_drift", sev, psi < cfg.psi.clearing(), psi, cfg.psi.warning,
        evidence,
    )  # fmt: skip
    judge(
        name, "new_category", "data_quality", severity(new_share, cfg.new_category_share),
        new_share < cfg.new_category_share.clearing(), new_share, cfg.new_category_share.warning,
        evidence,
    )  # fmt: skip


def multivariate(
    cfg: MonitoringConfig, ref: Reference, window: WindowPartial, n_tests: int, judge: Judge
) -> Row:
    """Multivariate drift: the window's mean reconstruction error under the reference's PCA
    (exact, from its :class:`~streamproc.sketch.CrossMoments`) against the reference's error.

    A change in how features move together (a correlation flips, marginals unchanged) moves
    the error while every per-feature test stays quiet. Fires when the error's relative change
    reaches a ``reconstruction_error`` tier and is beyond the sampling band at
    ``psi_significance / n_tests`` (:func:`~streamproc.judge.stats.mean_band`); skipped for a
    reference without a PCA (older baselines) or a window under ``min_window_count``.
    Returns the window's ``metrics.v1`` outputs: ``reconstruction_error`` and the band.
    """
    rec, mv = ref.reconstruction, window.mv
    if not cfg.multivariate or rec is None or mv is None or mv.d != len(rec.features):
        return {}
    if mv.n < cfg.min_window_count:
        return {}
    r = rec.ref
    error = mv.reconstruction_error(rec.components)
    alpha = cfg.psi_significance / n_tests
    band = stats.mean_band(error, r.error_mean, r.error_std, r.error_skew, mv.n, r.count, alpha)
    change = error / r.error_mean - 1.0 if r.error_mean > 0 else 0.0
    tiers = cfg.reconstruction_error
    sev = severity(abs(change), tiers) if band.p < alpha else None
    cleared = abs(change) < tiers.clearing() or band.p > 0.01
    if error >= r.error_mean:
        threshold = max(band.upper, r.error_mean * (1.0 + tiers.warning))
    else:
        threshold = min(band.lower, r.error_mean * (1.0 - tiers.warning))
    judge(
        None, "reconstruction_error", "multivariate_drift", sev, cleared, moment(error),
        moment(threshold),
        {
            "window_count": mv.n,
            "reconstruction_error": round(error, 6),
            "reference_error_mean": round(r.error_mean, 6),
            "reference_error_std": round(r.error_std, 6),
            "relative_change": round(change, 6),
            "band": [round(band.lower, 6), round(band.upper, 6)],
            "p": band.p,
            "features": len(rec.features),
            "components": len(r.components),
            "explained_variance": round(r.explained, 4),
        },
    )  # fmt: skip
    return {
        "reconstruction_error": moment(error),
        "reconstruction_error_reference": moment(r.error_mean),
        "reconstruction_error_lower": moment(band.lower),
        "reconstruction_error_upper": moment(band.upper),
    }


def new_features(
    cfg: MonitoringConfig,
    ref: Reference,
    present: Mapping[str, int],
    window_events: int,
    firing: Iterable[str],
    judge: Judge,
) -> None:
    """A feature the reference does not know, in at least ``new_feature_share`` of the
    window's events: a schema alert naming the feature and counting, never its values.

    Only features over the share, or already firing, are judged, so an upstream that sends
    ever-new feature names cannot grow the alert state.
    """
    known = set(ref.segment.features)
    unknown = {k: n for k, n in present.items() if k not in known}
    if cfg.features is not None:
        unknown = {k: n for k, n in unknown.items() if k in cfg.features}
    firing = set(firing)
    enough = window_events >= cfg.min_window_count
    for name in sorted(set(unknown) | firing):
        seen = unknown.get(name, 0)
        share = seen / window_events if window_events else 0.0
        over = enough and share >= cfg.new_feature_share
        if not over and name not in firing:
            continue
        judge(
            name, "new_feature", "data_quality", "warning" if over else None,
            share < 0.8 * cfg.new_feature_share, share, cfg.new_feature_share,
            {"events_with_feature": seen, "window_events": window_events},
        )  # fmt: skip


def outputs(
    cfg: MonitoringConfig,
    ref: Reference,
    window: WindowPartial,
    latency_window: WindowPartial,
    n_segments: int,
    judge: Judge,
) -> Row:
    """Latency, prediction distribution, top-1 rate and CBPE estimated accuracy."""
    out: Row = {}
    latency = latency_window.latency
    if latency.count:
        p50, p95, p99 = latency.quantiles([0.5, 0.95, 0.99])
        out.update(latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99)
        if cfg.latency_slo_ms is not None:
            over = p99 > cfg.latency_slo_ms
            judge(
                None, "latency_p99", "data_quality", "warning" if over else None, not over,
                p99, cfg.latency_slo_ms, {"p50_ms": p50, "p95_ms": p95},
            )  # fmt: skip
    pred = window.prediction
    alpha = cfg.psi_significance / max(n_segments, 1)
    cat_ref, num_ref = ref.categorical_prediction, ref.numeric_prediction
    if isinstance(pred, CategoricalSketch) and cat_ref is not None:
        if pred.count >= cfg.min_window_count:
            counts = pred.counts
            cats, rp, wc = _categorical_arrays(cat_ref.probs, counts)
            psi = stats.psi(rp, wc)
            top1 = stats.top1_rate(counts)
            ref_top1 = max(cat_ref.probs.values(), default=0.0)
            probs = wc / wc.sum()
            out.update(prediction_psi=psi, top1_rate=top1, prediction_entropy=stats.entropy(probs))
            sev, _ = psi_severity(psi, cfg.psi, pred.count, cat_ref.count, len(cats), alpha)
            judge(
                None, "psi", "prediction_drift", sev, psi < cfg.psi.clearing(), psi,
                cfg.psi.warning,
                {
                    "window_count": pred.count,
                    "top1_rate": round(top1, 4),
                    "reference_top1_rate": round(ref_top1, 4),
                },
            )  # fmt: skip
            limit = max(cfg.top1_rate, ref_top1 + 0.1)
            # Beyond the limit by more than 3 binomial standard errors: not sampling noise. A
            # model whose reference already puts over 90% on one class (fraud, churn) cannot
            # collapse further by 0.1: no limit, the check stays quiet.
            margin = 3.0 * math.sqrt(limit * (1.0 - limit) / pred.count) if limit < 1 else 0.0
            judge(
                None, "top1_rate", "prediction_drift",
                "critical" if limit < 1 and top1 > limit + margin else None,
                limit >= 1 or top1 < limit - 0.05, top1, min(limit, 1.0),
                {"window_count": pred.count, "reference_top1_rate": round(ref_top1, 4)},
            )  # fmt: skip
    elif (
        isinstance(pred, NumericSketch)
        and num_ref is not None
        and pred.count >= cfg.min_window_count
    ):
        probs_ref = np.asarray(num_ref.probs, dtype=np.float64)
        psi = stats.psi(probs_ref, pred.hist)
        out.update(prediction_psi=psi, prediction_mean=moment(pred.mean))
        sev, _ = psi_severity(psi, cfg.psi, pred.count, num_ref.count, len(probs_ref), alpha)
        judge(
            None, "psi", "prediction_drift", sev, psi < cfg.psi.clearing(), psi, cfg.psi.warning,
            {
                "window_count": pred.count,
                "window_mean": round(pred.mean, 6),
                "reference_mean": round(float(num_ref.mean or 0.0), 6),
            },
        )  # fmt: skip
    score = window.score
    if score is not None and score.count >= cfg.min_window_count:
        out["confidence_mean"] = moment(score.mean)
        cal = ref.segment.calibration
        if cal is not None and np.array_equal(score.edges, np.asarray(cal.edges)):
            out["estimated_accuracy"] = stats.cbpe_estimated_accuracy_from_counts(
                cal.to_map(), score.hist
            )
    out.update(estimated_errors(cfg, ref, window))
    return out


def estimated_errors(cfg: MonitoringConfig, ref: Reference, window: WindowPartial) -> Row:
    """``estimated_mae``, ``estimated_rmse`` and ``estimated_mape`` of a regression model's
    window of predictions, from its loss trees' leaf counts (:mod:`streamproc.aggregate.losses`);
    none without the reference's trees or under ``min_window_count`` predictions."""
    model = ref.losses
    if model is None or ref.task != "regression" or not window.losses:
        return {}
    counted = sum(next(iter(window.losses.values())).values())
    if counted < cfg.min_window_count:
        return {}
    return {f"estimated_{m}": moment(v) for m, v in losses.estimate(model, window.losses).items()}


def volume(
    cfg: MonitoringConfig,
    ref: Reference,
    count: int,
    past_counts: list[int],
    judge: Judge,
) -> list[int]:
    """Events per window against the reference rate (or the recent windows); returns the
    updated history of counts."""
    expected: float | None = None
    if ref.segment.rate_per_s:
        expected = ref.segment.rate_per_s * cfg.window_s
    elif len(past_counts) >= 2:
        expected = float(np.mean(past_counts[-6:]))
    history = [*past_counts[-11:], count]
    if not expected or expected < cfg.min_window_count:
        return history
    drop = max(0.0, 1.0 - count / expected)
    judge(
        None, "volume_drop", "volume", severity(drop, cfg.volume_drop),
        drop < cfg.volume_drop.clearing(), drop, cfg.volume_drop.warning,
        {"window_count": count, "expected_count": round(expected, 1)},
    )  # fmt: skip
    return history


def calibration(
    cfg: MonitoringConfig,
    ref: Reference,
    outcomes: OutcomePartial,
    window: tuple[float, float],
    n_segments: int,
) -> Verdict | None:
    """ECE of a label window against the reference's; ``None`` under ``ece_min_labelled``.

    Fires when the ECE is over ``ece`` and over the reference's ECE (at the window's own
    confidences) by more than ``ece_margin`` and by more than sampling noise could give
    (``ece_significance``, split across the model's segments).
    """
    cal = ref.segment.calibration
    assert cal is not None
    counts, conf_micro, correct = outcomes.calibration(cal.edges)
    n = sum(counts)
    if n < cfg.ece_min_labelled:
        return None
    conf = np.asarray(conf_micro, dtype=float) / Z_SCALE
    r = stats.calibration_excess(
        counts, conf, correct, cal.accuracy, cal.counts, cfg.ece_significance / n_segments
    )
    fire = r.ece > cfg.ece and r.excess > max(cfg.ece_margin, r.noise_bound)
    cleared = r.ece < 0.8 * cfg.ece or r.excess < cfg.ece_margin
    edges = [0.0, *cal.edges, 1.0]
    bins = [
        {
            "bin": b,
            "confidence_range": [round(edges[b], 4), round(edges[b + 1], 4)],
            "labelled": counts[b],
            "mean_confidence": round(float(conf[b]) / counts[b], 4),
            "accuracy": round(correct[b] / counts[b], 4),
            "reference_accuracy": round(float(cal.accuracy[b]), 4),
        }
        for b in range(len(counts))
        if counts[b]
    ]
    evidence = {
        "labelled": n,
        "ece": round(r.ece, 6),
        "reference_ece": round(r.reference_ece, 6),
        "excess": round(r.excess, 6),
        "noise_bound": round(r.noise_bound, 6),
        "bins": bins,
    }
    return Verdict("warning" if fire else None, cleared, round(r.ece, 6), cfg.ece, window, evidence)


def performance(
    cfg: MonitoringConfig,
    ref: Reference | None,
    o: OutcomePartial,
    window: tuple[float, float],
    n_segments: int,
    judge: Judge,
) -> Row:
    """Realised performance and label drift of a label window (judged from
    ``min_labelled_count`` labelled predictions on), by the reference's task.

    A classifier: accuracy, calibration (ECE) and the drift of its class labels. A regression
    model: MAE, RMSE and MAPE (over the labels that are not zero), an MAE increase over the
    reference's (:func:`mae_increase`) and the drift of its numeric target. Without a reference
    the task is regression when every labelled outcome was a pair of numbers that are not all
    0 and 1, else classification.
    """
    perf: Row = {"labelled": o.labelled}
    task = ref.task if ref is not None else _task_of_outcomes(o)
    if o.labelled:
        if task == "regression":
            perf.update(regression_figures(o))
        else:
            perf["accuracy"] = o.correct / o.labelled
    if ref is None or o.labelled < cfg.min_labelled_count:
        return perf
    seg = ref.segment
    if task == "regression":
        mae_increase(cfg, seg, o, n_segments, judge)
        label = seg.label
        if isinstance(label, NumericReference) and label.count and o.label_values.count:
            hist = np.asarray(o.label_values.histogram(label.edges), dtype=np.float64)
            psi = stats.psi(np.asarray(label.probs, dtype=np.float64), hist)
            perf["label_psi"] = psi
            alpha = cfg.psi_significance / max(n_segments, 1)
            n = o.label_values.count
            sev, _ = psi_severity(psi, cfg.psi, n, label.count, len(label.probs), alpha)
            judge(
                None, "psi", "label_drift", sev, psi < cfg.psi.clearing(), psi, cfg.psi.warning,
                {
                    "labelled": o.labelled,
                    "window_label_mean": round(o.label_values.mean, 6),
                    "reference_label_mean": round(float(label.mean or 0.0), 6),
                },
            )  # fmt: skip
        return perf
    acc = o.correct / o.labelled
    if seg.accuracy is not None:
        drop = seg.accuracy - acc
        judge(
            None, "accuracy", "performance", severity(drop, cfg.accuracy_drop),
            drop < cfg.accuracy_drop.clearing(), acc, seg.accuracy - cfg.accuracy_drop.warning,
            {
                "labelled": o.labelled,
                "reference_accuracy": round(seg.accuracy, 4),
                "window_accuracy": round(acc, 4),
            },
        )  # fmt: skip
    if seg.calibration is not None:
        ece = calibration(cfg, ref, o, window, n_segments)
        if ece is not None:
            perf["ece"] = ece.value
            judge(
                None, "calibration", "performance", ece.severity, ece.cleared, ece.value,
                ece.threshold, ece.evidence,
            )  # fmt: skip
    if isinstance(seg.label, CategoricalReference) and seg.label.probs:
        _, rp, wc = _categorical_arrays(seg.label.probs, o.labels.counts)
        psi = stats.psi(rp, wc)
        perf["label_psi"] = psi
        judge(
            None, "psi", "label_drift", severity(psi, cfg.psi), psi < cfg.psi.clearing(), psi,
            cfg.psi.warning, {"labelled": o.labelled},
        )  # fmt: skip
    return perf


def _class_performance(
    source: str, cp: ClassPerformanceReference, got: Mapping[str, Any], count: int
) -> ClassPerformance:
    return ClassPerformance(
        source=source,  # type: ignore[arg-type]
        classes=list(cp.classes),
        positive_class=cp.positive_class,
        count=count,
        metrics={
            m: MetricBand(*(round(float(x), 6) for x in got[m]))
            for m in cbpe.METRICS
            if m in got and all(map(math.isfinite, got[m]))
        },
        reference={m: MetricBand(*v) for m, v in cp.realised.items()},
        confusion_matrix=[[round(float(x), 3) for x in row] for row in got["confusion_matrix"]],
    )


def estimated_performance(
    cfg: MonitoringConfig, ref: Reference, window: WindowPartial
) -> ClassPerformance | None:
    """CBPE of a window of predictions (see :mod:`streamproc.judge.cbpe`): ``None`` without
    the reference's per-class calibration or under ``min_window_count`` scored events."""
    cp = ref.segment.class_performance
    if cp is None or not window.class_scores:
        return None
    scored = sum(sum(window.class_scores.get(f"{c}{cbpe.SEP}{c}", {}).values()) for c in cp.classes)
    if scored < cfg.min_window_count:
        return None
    got = cbpe.estimate(window.class_scores, cp.classes, cp.positive_class, cp.rates)
    return _class_performance("estimated", cp, got, scored) if got else None


def realised_performance(
    cfg: MonitoringConfig, ref: Reference | None, o: OutcomePartial
) -> ClassPerformance | None:
    """The same figures from a label window's outcomes; ``None`` without the reference's
    classes or under ``min_labelled_count`` outcomes."""
    cp = None if ref is None else ref.segment.class_performance
    if cp is None or o.labelled < cfg.min_labelled_count:
        return None
    got = cbpe.realise(o.confusion, o.class_scores, cp.classes, cp.positive_class)
    if not got:
        return None
    return _class_performance("realised", cp, got, int(np.sum(got["confusion_matrix"])))


def _task_of_outcomes(o: OutcomePartial) -> str:
    if not o.labelled or o.numeric_pairs < o.labelled:
        return "classification"
    return "classification" if set(o.labels.counts) <= {"0", "1"} else "regression"


def regression_figures(o: OutcomePartial) -> Row:
    """``mae``, ``rmse`` and ``mape`` (a share, over the labels that are not zero) of a label
    window, from its exact sums; none without numeric outcomes.

    >>> from streamproc.aggregate.fold import fold_outcomes
    >>> o = OutcomePartial()
    >>> fold_outcomes([(3.0, 2.0, None, None), (1.0, 0.0, None, None), (4.0, 8.0, None, None)],
    ...               [(o, 0.0, range(3))])
    >>> regression_figures(o)
    {'mae': 2.0, 'rmse': 2.44948974, 'mape': 0.5}
    """
    out: Row = {}
    if o.numeric_pairs:
        out["mae"] = moment(o.mae or 0.0)
        out["rmse"] = moment(o.rmse or 0.0)
        if o.mape is not None:
            out["mape"] = moment(o.mape)
    return out


def mae_increase(
    cfg: MonitoringConfig,
    seg: SegmentReference,
    o: OutcomePartial,
    n_segments: int,
    judge: Judge,
) -> None:
    """Judge a label window's MAE against the reference's: a ``performance`` / ``mae`` alert
    when it is over by the ``mae_increase`` relative margin and by more than sampling noise
    (the reference's spread of absolute errors over the window's ``sqrt(n)``, at
    ``mae_significance`` one-sided, split across the model's segments)."""
    mae, ref_mae, sd = o.mae, seg.mae, seg.error_sd()
    if mae is None or ref_mae is None or ref_mae <= 0 or sd is None:
        return
    from statistics import NormalDist

    n = o.numeric_pairs
    z = NormalDist().inv_cdf(1.0 - cfg.mae_significance / max(n_segments, 1))
    noise = z * sd / math.sqrt(n)
    rise = (mae - ref_mae) / ref_mae
    sev = severity(rise, cfg.mae_increase) if mae - ref_mae > noise else None
    evidence = {
        "labelled": n,
        "window_mae": round(mae, 6),
        "reference_mae": round(ref_mae, 6),
        "relative_increase": round(rise, 4),
        "noise_bound": round(noise, 6),
    }
    if o.rmse is not None:
        evidence["window_rmse"] = round(o.rmse, 6)
    if seg.rmse is not None:
        evidence["reference_rmse"] = round(seg.rmse, 6)
    judge(
        None, "mae", "performance", sev, rise < cfg.mae_increase.clearing(), round(mae, 6),
        round(ref_mae * (1.0 + cfg.mae_increase.warning), 6), evidence,
    )  # fmt: skip
