"""Fold a batch into partials, column-wise: the per-event work of the whole monitor path.

A batch's accepted predictions are grouped by ``(model, version, raw segment key, tick)``; each
group's rows go into that group's :class:`~streamproc.aggregate.partials.TickPartial` with a
handful of numpy passes shared by all groups: one binning pass per numeric feature for every
group binned with the same reference, one factorisation per categorical feature. Joined
outcomes go into :class:`~streamproc.aggregate.partials.OutcomePartial` s the same way.

Folding is deterministic: a partial's integer parts (counts, histograms, fixed-point sums) are
the same however the rows were cut into batches; its moments differ at most in the last bits.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamproc.aggregate.columns import Columns, group_counts, is_number
from streamproc.aggregate.partials import (
    CONFIDENCE_EDGES,
    Z_SCALE,
    OutcomePartial,
    TickPartial,
    merge_spans,
)
from streamproc.baseline import category_value
from streamproc.baseline.reference import Reference
from streamproc.sketch import CategoricalSketch, NumericSketch

# A value beyond 65,536 reference sds is clipped there in the fixed-point sums, so that a
# group's sums of z and z² fit an int64 (int64 cumsums wrap, but their differences stay exact).
Z_CLIP = 65_536.0
MAX_OTHER_FEATURES = 50
"""Names of features outside the reference counted per partial (an upstream sending ever-new
feature names must not grow the state)."""


@dataclass
class FoldGroup:
    """The rows of a batch that go to one partial, with the reference that bins them."""

    partial: TickPartial
    ref: Reference | None
    idx: np.ndarray  # row numbers in the batch, in offset order


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


def _present(cols: Columns, rows: list[int], p: TickPartial, watched: frozenset[str]) -> None:
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
    results: dict[str, dict[int, tuple[int, int, int, int]]] = {}
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
    latency, has_latency = cols.latency()
    for gi, g in enumerate(groups):
        p, ref, idx = g.partial, g.ref, g.idx
        p.count += len(idx)
        merge_spans(p.offsets, _spans(cols, idx))
        lat = latency[idx] if has_latency is None else latency[idx][has_latency[idx]]
        if lat.size:
            p.latency.update_many(lat)
        rows = idx.tolist()
        if ref is None:
            _present(cols, rows, p, frozenset())
            _sample(cols, p, rows, sample_k)
            continue
        _present(cols, rows, p, ref.watched)
        for name in ref.numeric:
            mismatched, total, n, squares = results[name][gi]
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
        if isinstance(p.prediction, NumericSketch):
            col = cols.prediction_numbers()
            preds = col.values[idx]
            if col.number is not None:
                preds = preds[col.number[idx]]
            p.prediction.update_many(preds)
        elif p.prediction is not None:
            p.prediction.update_counts(*predictions[gi])


def prepare(partial: TickPartial, ref: Reference | None) -> None:
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


def _fold_numeric(
    cols: Columns, groups: Sequence[FoldGroup], names: list[str], gis: list[int]
) -> dict[str, dict[int, tuple[int, int, int, int]]]:
    """Numeric features ``names`` for the groups ``gis`` (a reference's groups adjacent):
    update their sketches; return per feature and group (mismatched values, fixed-point sum of
    z, count, fixed-point sum of z²). Work items are (feature, group) pairs, feature-major."""
    idx, sizes, _ = _gather(cols, groups, gis)
    numcols = [cols.numeric(name) for name in names]
    n_groups = len(gis)
    n = len(cols)
    values = np.stack([c.values for c in numcols])[:, idx].ravel()
    n_all = np.tile(sizes, len(names))
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

        def group_sums(v: np.ndarray) -> list[int]:
            cs = np.concatenate(([0], np.rint(v * Z_SCALE).astype(np.int64).cumsum()))
            return (cs[f_ends] - cs[f_ends - n_fin]).tolist()  # type: ignore[no-any-return]

        totals, squares = group_sums(z), group_sums(np.square(z))
    per_item = list(zip(mismatched, totals, n_fin.tolist(), squares, strict=True))
    return {
        name: dict(zip(gis, per_item[f * n_groups : (f + 1) * n_groups], strict=True))
        for f, name in enumerate(names)
    }


def _sample(cols: Columns, p: TickPartial, rows: list[int], k: int) -> None:
    """Keep the ``k`` rows of smallest position hash: the same whatever the order or cut."""
    sample = p.sample
    for i in rows:
        h = cols.row_hash(i)
        if len(sample) >= k and h >= sample[-1][0]:
            p.sampled_out += 1
            continue
        row = [h, dict(cols.features[i]), cols.predictions[i], cols.confidences[i]]
        bisect.insort(sample, row, key=lambda r: r[0])
        if len(sample) > k:
            sample.pop()
            p.sampled_out += 1


def fold_rows(rows: Sequence[list[Any]], partial: TickPartial, ref: Reference) -> None:
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


def fold_outcomes(
    items: Sequence[tuple[OutcomePartial, Any, Any, float | None]],
) -> None:
    """Fold ``(partial, prediction, label, confidence)`` items, one outcome each."""
    edges = CONFIDENCE_EDGES
    for p, prediction, label, confidence in items:
        p.labelled += 1
        if is_number(prediction) and is_number(label):
            p.abs_error += abs(float(prediction) - float(label))
            p.numeric_pairs += 1
        label_text = category_value(label)
        right = category_value(prediction) == label_text
        if right:
            p.correct += 1
        p.labels.update(label_text)
        if confidence is not None and 0.0 <= confidence <= 1.0:
            b = int(np.searchsorted(edges, confidence, side="left"))
            p.cal_n[b] += 1
            p.cal_conf[b] += round(confidence * Z_SCALE)
            p.cal_correct[b] += 1 if right else 0
