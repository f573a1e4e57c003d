"""Fold a batch into partials, column-wise: the per-event work of the whole monitor path.

A batch's accepted predictions are grouped by ``(model, version, raw segment key, window)``;
each group's rows go into that window's :class:`~streamproc.aggregate.partials.WindowPartial`,
and each row's count, offset and standardised sums also into the
:class:`~streamproc.aggregate.partials.TickSummary` of its tick, with a handful of numpy passes
shared by all groups: one binning pass per numeric feature for every group binned with the
same reference, one factorisation per categorical feature. Joined outcomes go into
:class:`~streamproc.aggregate.partials.OutcomePartial` s the same way.

Folding is deterministic: a partial's integer parts (counts, histograms, fixed-point sums) are
the same however the rows were cut into batches; its moments differ at most in the last bits.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamproc.aggregate.columns import Columns, group_counts, is_number
from streamproc.aggregate.losses import fold_losses, leaves_of
from streamproc.aggregate.partials import (
    CONFIDENCE_EDGES,
    MICRO_CAP,
    SAMPLE_VALUES,
    Z_SCALE,
    OutcomePartial,
    TickSummary,
    WindowPartial,
    exact_add,
    merge_spans,
    sample_prefix,
)
from streamproc.aggregate.scores import SEP, ScorePairs
from streamproc.baseline import category_value
from streamproc.baseline.profile import LossModelReference
from streamproc.baseline.reference import Reconstruction, Reference
from streamproc.sketch import CategoricalSketch, CrossMoments, NumericSketch, standardised

# A value beyond 65,536 reference sds is clipped there in the fixed-point sums, so that a
# group's sums of z and z² fit an int64 (int64 cumsums wrap, but their differences stay exact).
Z_CLIP = 65_536.0
MAX_OTHER_FEATURES = 50
"""Names of features outside the reference counted per partial (an upstream sending ever-new
feature names must not grow the state)."""


@dataclass
class FoldGroup:
    """The rows of a batch that go to one partial, with the reference that bins them, and the
    summaries of their ticks: row ``idx[i]`` is in ``summaries[codes[i]]`` (none, as for rows
    the judge bins, when ``codes`` is ``None``)."""

    partial: WindowPartial
    ref: Reference | None
    idx: np.ndarray  # row numbers in the batch, in offset order
    summaries: list[TickSummary] | None = None
    codes: np.ndarray | None = None


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stable order grouping equal ``codes``, and each run's start in it and its code."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    return order, starts, sorted_codes[starts]


def _tick_spans(cols: Columns, g: FoldGroup) -> None:
    """Counts and offsets of the group's rows into their ticks' summaries."""
    assert g.summaries is not None and g.codes is not None
    off = cols.offsets_array()[g.idx]
    part = str(cols.partition)
    if len(g.summaries) == 1:
        x = g.summaries[0]
        x.count += len(g.idx)
        if off.size:
            merge_spans(x.offsets, {part: [int(off.min()), int(off.max())]})
        return
    order, starts, codes = _runs(g.codes)
    so = off[order]
    lo, hi = np.minimum.reduceat(so, starts), np.maximum.reduceat(so, starts)
    sizes = np.diff(np.r_[starts, so.size])
    for code, n, a, b in zip(codes.tolist(), sizes.tolist(), lo.tolist(), hi.tolist(), strict=True):
        x = g.summaries[code]
        x.count += n
        merge_spans(x.offsets, {part: [a, b]})


def _gather(
    cols: Columns, groups: Sequence[FoldGroup], gis: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of groups ``gis`` end to end, each group's size and end in that array."""
    key = ("g", *gis)
    got = cols._cache.get(key)
    if got is None:
        idx = np.concatenate([groups[gi].idx for gi in gis])
        sizes = np.array([len(groups[gi].idx) for gi in gis], dtype=np.int64)
        got = cols._cache[key] = (idx, sizes, sizes.cumsum())
    return got  # type: ignore[no-any-return]


def _label_counts(
    cols: Columns,
    what: str,
    labels: Sequence[str | None],
    groups: Sequence[FoldGroup],
    gis: Sequence[int],
) -> dict[int, tuple[dict[str, int], int]]:
    """Per group of ``gis``: its labels' counts in order of first appearance, and nulls."""
    codes, names = cols.factorized(what, labels)
    idx, sizes, _ = _gather(cols, groups, gis)
    k = len(names)
    keys = np.arange(len(gis)).repeat(sizes) * k + codes[idx]
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    order = first.argsort()  # groups are contiguous, in order: by group, then appearance
    found: list[dict[str, int]] = [{} for _ in gis]
    nulls = [0] * len(gis)
    for key, n in zip(uniq[order].tolist(), counts[order].tolist(), strict=True):
        g, code = divmod(key, k)
        if code:
            found[g][names[code]] = n  # type: ignore[index]
        else:
            nulls[g] = n
    return {gi: (found[g], nulls[g]) for g, gi in enumerate(gis)}


def _spans(cols: Columns, idx: np.ndarray) -> dict[str, list[int]]:
    off = cols.offsets_array()[idx]
    if not off.size:
        return {}
    return {str(cols.partition): [int(off.min()), int(off.max())]}


def _present(cols: Columns, rows: list[int], p: WindowPartial, watched: frozenset[str]) -> None:
    """Count the rows carrying each feature into ``p.present``: every watched feature, and the
    first :data:`MAX_OTHER_FEATURES` others in offset order (so the same on any cut)."""
    feats = cols.features
    counts: dict[str, int]
    if (
        len(cols.feature_lengths()) == 1
        and rows
        and all(cols.complete(name) for name in feats[rows[0]])
    ):
        counts = dict.fromkeys(feats[rows[0]], len(rows))  # every row has the same keys
    else:
        counts = Counter()
        for i in rows:
            counts.update(feats[i].keys())
    present = p.present
    others = sum(1 for k in present if k not in watched)
    for name, n in counts.items():
        if name in present:
            present[name] += n
        elif name in watched or others < MAX_OTHER_FEATURES:
            present[name] = n
            others += name not in watched


def fold_predictions(cols: Columns, groups: Sequence[FoldGroup], sample_k: int) -> None:
    """Fold each group's rows of ``cols`` into its partial (see the module docstring)."""
    binned = [gi for gi, g in enumerate(groups) if g.ref is not None]
    # Numeric features fed to the same groups go through together: one pass for all of them.
    numeric: dict[str, list[int]] = {}
    for gi in binned:
        for name in groups[gi].ref.numeric:  # type: ignore[union-attr]
            numeric.setdefault(name, []).append(gi)
    together: dict[tuple[int, ...], list[str]] = {}
    for name, gis in numeric.items():
        together.setdefault(tuple(gis), []).append(name)
    results: dict[str, dict[int, NumericResult]] = {}
    for gis_key, names in together.items():
        # Groups binned with one reference are adjacent: one searchsorted for each run.
        gis = sorted(gis_key, key=lambda gi: groups[gi].ref.fp)  # type: ignore[union-attr]
        results.update(_fold_numeric(cols, groups, names, gis))
    scored = [gi for gi in binned if groups[gi].partial.score is not None]
    if scored:
        idx, sizes, ends = _gather(cols, groups, scored)
        conf, has = cols.confidence()
        if has is None:
            x, counts = conf[idx], sizes
        else:
            x, counts = conf[idx][has[idx]], group_counts(has[idx], sizes, ends)
        NumericSketch.update_groups(
            [groups[gi].partial.score for gi in scored],  # type: ignore[misc]
            x,
            counts,
        )
    categorical: dict[str, list[int]] = {}
    predicted: list[int] = []
    for gi in binned:
        g = groups[gi]
        for name in g.ref.categorical:  # type: ignore[union-attr]
            categorical.setdefault(name, []).append(gi)
        if isinstance(g.partial.prediction, CategoricalSketch):
            predicted.append(gi)
    label_counts = {
        name: _label_counts(cols, name, cols.labels(name), groups, gis)
        for name, gis in categorical.items()
    }
    predictions: dict[int, tuple[dict[str, int], int]] = {}
    if predicted:
        predictions = _label_counts(cols, "", cols.prediction_labels(), groups, predicted)
    leaves = _loss_leaves(cols, groups, binned)
    latency, has_latency = cols.latency()
    pairs = None
    if cols.scores is not None:
        pairs = ScorePairs(zip(cols.prediction_labels(), cols.scores, strict=True))
    if pairs is not None:
        pairs.fold_groups([g.partial.class_scores for g in groups], [g.idx for g in groups])
    for gi, g in enumerate(groups):
        p, ref, idx, summaries = g.partial, g.ref, g.idx, g.summaries
        p.count += len(idx)
        merge_spans(p.offsets, _spans(cols, idx))
        if summaries is not None:
            _tick_spans(cols, g)
        lat = latency[idx] if has_latency is None else latency[idx][has_latency[idx]]
        if lat.size:
            p.latency.update_many(lat)
        rows = idx.tolist()
        if ref is None:
            _present(cols, rows, p, frozenset())
            _sample(cols, p, rows, sample_k)
            if summaries is not None and g.codes is not None:
                if len(summaries) == 1:
                    _sample(cols, summaries[0], rows, sample_k)
                else:
                    by_code: dict[int, list[int]] = {}
                    for code, i in zip(g.codes.tolist(), rows, strict=True):
                        by_code.setdefault(code, []).append(i)
                    for code, some in by_code.items():
                        _sample(cols, summaries[code], some, sample_k)
            continue
        _present(cols, rows, p, ref.watched)
        rec = ref.reconstruction
        if rec is not None and len(idx):
            if p.mv is None:
                p.mv = CrossMoments(len(rec.features))
            p.mv.update(cross_rows(cols, rec, idx))
        for name in ref.numeric:
            mismatched, total, n, squares = results[name][gi]  # (tick sums: already in)
            if mismatched:
                p.mismatched[name] = p.mismatched.get(name, 0) + mismatched
            if n and ref.scales[name][1] > 0:
                acc = p.zsum.setdefault(name, [0, 0, 0])
                acc[0] += total
                acc[1] += n
                acc[2] += squares
        for name in ref.categorical:
            sk = p.categorical.get(name)
            if sk is None:
                sk = p.categorical[name] = CategoricalSketch()
            found, nulls = label_counts[name][gi]
            sk.update_counts(found, nulls)
        if gi in leaves:
            model, at, leaf = leaves[gi]
            where = at[idx]
            fold_losses(p.losses, model, leaf, where[where >= 0])
        if isinstance(p.prediction, NumericSketch):
            col = cols.prediction_numbers()
            preds = col.values[idx]
            if col.number is not None:
                preds = preds[col.number[idx]]
            p.prediction.update_many(preds)
        elif p.prediction is not None:
            p.prediction.update_counts(*predictions[gi])


def _loss_leaves(
    cols: Columns, groups: Sequence[FoldGroup], binned: list[int]
) -> dict[int, tuple[LossModelReference, np.ndarray, dict[str, np.ndarray]]]:
    """Per group whose reference has loss trees (a regression model's): the trees, each batch
    row's position in the leaves (-1: not a row of such a group, or no finite prediction) and
    the leaves. Rows are run down one model's trees once, whatever the groups sharing it."""
    by_model: dict[str, list[int]] = {}
    for gi in binned:
        ref = groups[gi].ref
        if ref is not None and ref.losses is not None:
            by_model.setdefault(ref.losses_key, []).append(gi)
    out: dict[int, tuple[LossModelReference, np.ndarray, dict[str, np.ndarray]]] = {}
    if not by_model:
        return out
    pred = cols.prediction_numbers().values
    for gis in by_model.values():
        model = groups[gis[0]].ref.losses  # type: ignore[union-attr]
        assert model is not None
        rows = np.unique(np.concatenate([groups[gi].idx for gi in gis]))
        rows = rows[np.isfinite(pred[rows])]
        at = np.full(len(cols), -1, dtype=np.int64)
        at[rows] = np.arange(rows.size)

        def column(name: str, rows: np.ndarray = rows) -> Any:
            if name in model.categories:  # noqa: B023 (used at once)
                labels = cols.labels(name)
                return [labels[i] for i in rows.tolist()]
            return cols.numeric(name).values[rows]

        leaf = leaves_of(model, pred[rows], column)
        for gi in gis:
            out[gi] = (model, at, leaf)
    return out


def prepare(partial: WindowPartial, ref: Reference | None) -> None:
    """Give an empty partial the sketches ``ref`` bins with (or none: it will sample)."""
    partial.fp = None if ref is None else ref.fp
    if ref is None:
        return
    for name in ref.numeric:
        partial.numeric[name] = ref.numeric_sketch(name)
    for name in ref.categorical:
        partial.categorical[name] = CategoricalSketch()
    partial.prediction = ref.prediction_sketch()
    partial.score = NumericSketch(ref.score_edges)
    rec = ref.reconstruction
    partial.mv = None if rec is None else CrossMoments(len(rec.features))


def cross_rows(cols: Columns, rec: Reconstruction, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of the batch as the fixed-point standardised vectors of the reference's PCA
    features (``len(idx) x d``; a missing, non-numeric or non-finite value counts as the
    reference mean), for :meth:`~streamproc.sketch.CrossMoments.update`."""
    values = np.stack([cols.numeric(name).values[idx] for name in rec.features], axis=1)
    return standardised(values, rec.means, rec.stds)


NumericResult = tuple[int, int, int, int]


def _fold_numeric(
    cols: Columns, groups: Sequence[FoldGroup], names: list[str], gis: list[int]
) -> dict[str, dict[int, NumericResult]]:
    """Numeric features ``names`` for the groups ``gis`` (a reference's groups adjacent):
    update their sketches and add each tick's fixed-point sums of z, counts and sums of z² to
    the groups' tick summaries; return per feature and group (mismatched values, fixed-point
    sum of z, count, fixed-point sum of z²). Work items are (feature, group) pairs,
    feature-major."""
    idx, sizes, _ = _gather(cols, groups, gis)
    numcols = [cols.numeric(name) for name in names]
    n_groups = len(gis)
    n = len(cols)
    values = np.stack([c.values for c in numcols])[:, idx].ravel()
    n_all = np.tile(sizes, len(names))
    ticked = [gi for gi in gis if groups[gi].codes is not None]
    codes = np.zeros(0, np.int64)
    if ticked:
        per_group = [
            np.zeros(len(groups[gi].idx), np.int64) if groups[gi].codes is None
            else groups[gi].codes
            for gi in gis
        ]  # fmt: skip
        codes = np.tile(np.concatenate(per_group).astype(np.int64), len(names))
    nulls: list[int] | None
    if all(c.finite is None for c in numcols):  # every value a finite number: no filtering
        nums, n_nums, nulls = values, n_all, None
        fin, n_fin = values, n_all
        mismatched = [0] * n_all.size
    else:
        ends = n_all.cumsum()

        def mask(part: str, absent: bool) -> np.ndarray:
            """The columns' ``part`` masks over the work items (``absent`` where None)."""
            fill = np.full(n, absent)
            rows = [getattr(c, part) for c in numcols]
            return np.stack([fill if m is None else m for m in rows])[:, idx].ravel()

        n_null = group_counts(mask("null", False), n_all, ends)
        is_num = mask("number", True)
        nums, n_nums = values[is_num], group_counts(is_num, n_all, ends)
        nulls = n_null.tolist()
        mismatched = (n_all - n_nums - n_null).tolist()
        is_fin = mask("finite", True)
        fin, n_fin = values[is_fin], group_counts(is_fin, n_all, ends)
        if ticked:
            codes = codes[is_fin]
    sketches = [groups[gi].partial.numeric[name] for name in names for gi in gis]
    NumericSketch.update_groups(sketches, nums, n_nums, nulls)
    # Tick sums in fixed point (micro-sd integers): exact in any order or grouping. Non-finite
    # values (counted as nulls by the sketch) stay out of them.
    scale = np.zeros(n_all.size)
    centre = np.zeros(n_all.size)
    k = 0
    for name in names:
        for gi in gis:
            mean, sd = groups[gi].ref.scales[name]  # type: ignore[union-attr]
            if sd > 0:
                centre[k], scale[k] = mean, sd
            k += 1
    totals = squares = [0] * n_all.size
    if fin.size and scale.any():
        ok = scale > 0
        sd = np.where(ok, scale, 1.0).repeat(n_fin)
        z = (fin - centre.repeat(n_fin)) / sd
        if not ok.all():
            z[~ok.repeat(n_fin)] = 0.0
        np.clip(z, -Z_CLIP, Z_CLIP, out=z)
        f_ends = n_fin.cumsum()
        zi = np.rint(z * Z_SCALE).astype(np.int64)
        zi2 = np.rint(np.square(z) * Z_SCALE).astype(np.int64)

        def group_sums(v: np.ndarray) -> list[int]:
            cs = np.concatenate(([0], v.cumsum()))
            return (cs[f_ends] - cs[f_ends - n_fin]).tolist()  # type: ignore[no-any-return]

        totals, squares = group_sums(zi), group_sums(zi2)
        if ticked:
            # Per (work item, tick): runs of one key, in a stable order (integers: exact).
            span = int(codes.max()) + 1 if codes.size else 1
            key = np.repeat(np.arange(n_all.size, dtype=np.int64), n_fin) * span + codes
            order, starts, run_keys = _runs(key)
            t_totals = np.add.reduceat(zi[order], starts)
            t_squares = np.add.reduceat(zi2[order], starts)
            t_n = np.diff(np.r_[starts, key.size])
            # Straight into the ticks' summaries: a run per (feature, group, tick) makes this
            # the fold's most repeated Python step. Features without a spread keep no sums.
            items, t_codes = np.divmod(run_keys, span)
            kept = ok[items]
            summaries = [groups[gi].summaries for gi in gis]
            for item, code, a, n_k, b in zip(
                items[kept].tolist(), t_codes[kept].tolist(), t_totals[kept].tolist(),
                t_n[kept].tolist(), t_squares[kept].tolist(), strict=True,
            ):  # fmt: skip
                ticked_in = summaries[item % n_groups]
                if ticked_in is None:
                    continue
                zsum = ticked_in[code].zsum
                name = names[item // n_groups]
                acc = zsum.get(name)
                if acc is None:
                    zsum[name] = [a, n_k, b]
                else:
                    acc[0] += a
                    acc[1] += n_k
                    acc[2] += b
    per_item = list(zip(mismatched, totals, n_fin.tolist(), squares, strict=True))
    return {
        name: dict(zip(gis, per_item[f * n_groups : (f + 1) * n_groups], strict=True))
        for f, name in enumerate(names)
    }


def _sample(cols: Columns, p: WindowPartial | TickSummary, rows: list[int], k: int) -> None:
    """Keep the ``k`` rows of smallest position hash: the same whatever the order or cut."""
    sample = p.sample
    values = p.sample_values
    if values < 0:
        values = sum(len(r[1]) + 1 for r in sample)
    for i in rows:
        h = cols.row_hash(i)
        if len(sample) >= k and h >= sample[-1][0]:
            p.sampled_out += 1
            continue
        row = [h, dict(cols.features[i]), cols.predictions[i], cols.confidences[i]]
        bisect.insort(sample, row, key=lambda r: r[0])
        values += len(row[1]) + 1
        if len(sample) > k:
            values -= len(sample.pop()[1]) + 1
            p.sampled_out += 1
    if values > SAMPLE_VALUES:  # wide rows: the sample is bounded in values too
        keep = sample_prefix(sample, k)
        p.sampled_out += len(sample) - keep
        del sample[keep:]
        values = sum(len(r[1]) + 1 for r in sample)
    p.sample_values = values


def fold_rows(rows: Sequence[list[Any]], partial: WindowPartial, ref: Reference) -> None:
    """Bin sampled rows with ``ref`` into an empty partial, as :func:`fold_predictions` would
    have binned the events they came from (the judging stage uses it for windows that were
    sampled before a reference existed)."""
    prepare(partial, ref)
    if not rows:
        return
    cols = Columns(
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [None] * len(rows),
        -1,
        [0] * len(rows),
        [0] * len(rows),
    )
    count, offsets, latency, present = (
        partial.count,
        partial.offsets,
        partial.latency,
        dict(partial.present),
    )
    fold_predictions(cols, [FoldGroup(partial, ref, np.arange(len(rows)))], len(rows))
    # Count, offsets, latency and presence were taken from the events themselves.
    partial.count, partial.offsets, partial.latency, partial.present = (
        count,
        offsets,
        latency,
        present,
    )


def tick_zsums(
    items: Sequence[tuple[Sequence[list[Any]], Reference]],
) -> list[dict[str, list[int]]]:
    """The fixed-point standardised sums (``WindowPartial.zsum``) of sampled rows, per item of
    ``(rows, reference)``, as :func:`fold_predictions` would have summed the events they came
    from: the judge's way to feed detectors a tick that was sampled. One pass per feature over
    every item's rows.
    """
    out: list[dict[str, list[int]]] = [{} for _ in items]
    rows = [r for rs, _ in items for r in rs]
    if not rows:
        return out
    n = len(rows)
    cols = Columns([r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                   [None] * n, -1, [0] * n, [0] * n)  # fmt: skip
    sizes = np.array([len(rs) for rs, _ in items], dtype=np.int64)
    ends = sizes.cumsum()
    names = sorted({name for _, ref in items for name in ref.numeric})
    for name in names:
        scales = [ref.scales[name] if name in ref.numeric else (0.0, 0.0) for _, ref in items]
        centre = np.array([m for m, _ in scales]).repeat(sizes)
        sd = np.array([d for _, d in scales]).repeat(sizes)
        col = cols.numeric(name)
        ok = sd > 0
        if col.finite is not None:
            ok &= col.finite
        z = np.where(ok, (np.nan_to_num(col.values) - centre) / np.where(sd > 0, sd, 1.0), 0.0)
        np.clip(z, -Z_CLIP, Z_CLIP, out=z)
        zi = np.rint(z * Z_SCALE).astype(np.int64)
        zi2 = np.rint(np.square(z) * Z_SCALE).astype(np.int64)
        for sums_of, v in enumerate((zi, zi2, ok.astype(np.int64))):
            cs = np.concatenate(([0], v.cumsum()))
            per = (cs[ends] - cs[ends - sizes]).tolist()
            for i, value in enumerate(per):
                if scales[i][1] > 0:
                    out[i].setdefault(name, [0, 0, 0])[(0, 2, 1)[sums_of]] = value
    for zs in out:
        for name in [k for k, v in zs.items() if v[1] == 0]:
            del zs[name]
    return out


def _finite(v: object) -> float | None:
    """A JSON number as a finite float, else ``None`` (booleans, text, NaN, overflow)."""
    if not is_number(v):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def fold_outcomes(
    outcomes: Sequence[tuple[Any, Any, float | None, Mapping[str, float] | None]],
    groups: Sequence[tuple[OutcomePartial, float, Sequence[int]]],
) -> None:
    """Fold ``(prediction, label, confidence, scores)`` outcomes into partials: each group
    ``(partial, tick, positions)`` takes the outcomes at ``positions`` (in order).

    An outcome whose prediction and label are both finite numbers adds its absolute, squared
    and (label not zero) absolute percentage error to the partial's exact sums, and its
    absolute error in millionths to its tick's."""
    edges = CONFIDENCE_EDGES.tolist()
    texts: list[str | None] = []
    right: list[int] = []
    errors: list[tuple[float, float, float | None, int] | None] = []
    cal: list[tuple[int, int] | None] = []
    pairs: list[str | None] = []
    values: list[float | None] = []  # numeric labels
    for prediction, label, confidence, scores in outcomes:
        y_num = _finite(label)
        values.append(y_num)
        label_text = category_value(label)
        texts.append(label_text)
        predicted = category_value(prediction)
        ok = int(predicted == label_text)
        right.append(ok)
        err: tuple[float, float, float | None, int] | None = None
        p_num = _finite(prediction)
        # the confusion counts feed the per-class figures, which need a score per class: an
        # outcome without them (a regression model's numbers among others) is not counted
        pairs.append(
            None
            if predicted is None or label_text is None or not scores or len(scores) < 2
            else f"{predicted}{SEP}{label_text}"
        )
        if p_num is not None and y_num is not None:
            y, e = y_num, abs(p_num - y_num)
            if math.isfinite(e * e):
                pct = e / abs(y) if y != 0 else None  # MAPE skips zero labels
                if pct is not None and not math.isfinite(pct):
                    pct = None  # a label too close to zero for a ratio: skipped like one
                err = (e, e * e, pct, min(round(e * Z_SCALE), MICRO_CAP))
        errors.append(err)
        if confidence is not None and 0.0 <= confidence <= 1.0:
            cal.append((bisect.bisect_left(edges, confidence), round(confidence * Z_SCALE)))
        else:
            cal.append(None)
    scored = ScorePairs(zip(texts, (o[3] for o in outcomes), strict=True))
    scored.fold_groups(
        [p.class_scores for p, _, _ in groups],
        [np.asarray(idx, dtype=np.int64) for _, _, idx in groups],
    )
    for p, tick, idx in groups:
        n = len(idx)
        if not n:
            continue
        correct = sum(right[i] for i in idx)
        p.labelled += n
        p.correct += correct
        t = p.ticks.get(tick)
        if t is None:
            t = p.ticks[tick] = [0, 0, 0, 0]
        t[0] += n
        t[1] += correct
        counts: dict[str, int] = {}
        nulls = 0
        for i in idx:
            text = texts[i]
            if text is None:
                nulls += 1
            else:
                counts[text] = counts.get(text, 0) + 1
            err = errors[i]
            if err is not None:
                exact_add(p.abs_error, err[0])
                exact_add(p.sq_error, err[1])
                if err[2] is not None:
                    exact_add(p.pct_error, err[2])
                    p.pct_pairs += 1
                p.numeric_pairs += 1
                t[2] += err[3]
                t[3] += 1
            c = cal[i]
            if c is not None:
                acc = p.cal.get(c[0])
                if acc is None:
                    acc = p.cal[c[0]] = [0, 0, 0]
                acc[0] += 1
                acc[1] += c[1]
                acc[2] += right[i]
            pair = pairs[i]
            if pair is not None:
                p.confusion[pair] = p.confusion.get(pair, 0) + 1
        p.labels.update_counts(counts, nulls)
        numeric = [v for v in (values[i] for i in idx) if v is not None]
        if numeric:
            p.label_values.update_many(numeric)
