"""Partials: mergeable state, the only thing that crosses from aggregation to judging.

The aggregation stage folds the events of one source partition into one partial per
``(model, version, raw segment key, window)``, and keeps inside it a small summary per tick
(what the detectors need). When the source's watermark passes a tick, the tick's summaries are
sent; when it passes a window, the window's partials are. The judging stage merges what every
source sent. Partials are monoids like the sketches they hold: an empty partial is the identity
and :meth:`~WindowPartial.merge` is associative, so a window merged from partials equals a
window fed every event (counts, histograms, min and max exactly; moments up to floating-point
rounding, and the published means and spreads exactly, from fixed-point sums).

:class:`WindowPartial`
    Predictions, windowed by the prediction's event time. The per-feature parts are binned and
    standardised with one reference, named by its fingerprint ``fp``. A partial built while no
    reference was known holds a sample of its rows instead (``fp`` is ``None``): the judging
    stage bins them with whatever reference the window is judged against, exactly as the
    aggregation stage would have, or builds the warm-up reference from them. When the
    reference has a PCA (multivariate drift), ``mv`` holds the window's exact cross moments
    of its features (:class:`~streamproc.sketch.CrossMoments`); windows only, not ticks.
:class:`TickSummary`
    A tick of a window partial: its count, offsets and standardised sums per feature (or, when
    the partial samples, the tick's own sample: the judge bins it to feed the detectors).
:class:`OutcomePartial`
    Joined predictions and labels, windowed by the label's event time, with labelled and correct
    counts per tick. Nothing in it depends on a reference: counts, and confidences on a fixed
    grid of :data:`CONFIDENCE_BINS` bins that any reference's calibration bins are unions of.
    Numeric outcomes add their absolute, squared and absolute percentage errors to exact sums
    (:func:`exact_add`), so MAE, RMSE and MAPE are the same however the stream was cut.

Stored form: :func:`encode_partial` / :func:`decode_partial` (and the summary and outcome
pairs) give msgspec Structs of plain values and sketch bytes; see
:mod:`streamproc.aggregate.wire` for the messages.

Examples
--------
>>> a, b = WindowPartial(), WindowPartial()
>>> a.count, b.count = 2, 3
>>> a.offsets, b.offsets = {"0": [5, 9]}, {"0": [1, 4], "1": [7, 7]}
>>> m = a.merge(b)
>>> m.count, m.offsets
(5, {'0': [1, 9], '1': [7, 7]})
>>> decode_partial(encode_partial(m)).offsets == m.offsets
True
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np

from streamproc.sketch import CategoricalSketch, CrossMoments, NumericSketch, QuantileSketch

CONFIDENCE_BINS: Final = 100
"""Confidence bins of an outcome partial: right-closed, equal width over [0, 1]."""

CONFIDENCE_EDGES: Final = np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1)[1:-1]
Z_SCALE: Final = 1_000_000
"""Fixed point of the standardised sums (of z and z²): millionths of a reference standard
deviation. Integers add up the same in any order, so detectors, and the window means and spreads
published, are the same however batches, partials and workers cut the stream."""


def moments_of(zsum: list[int], mean: float, sd: float) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN under two values) from a feature's exact
    ``[sum of z, n, sum of z²]`` and its reference's ``mean`` and ``sd``.

    >>> moments_of([2_000_000, 4, 2_000_000], 10.0, 2.0)  # z = 0, 0, 1, 1 (sd 2 around 10)
    (11.0, 1.1547005383792515)
    """
    s1, n = zsum[0] / Z_SCALE, zsum[1]
    if n <= 0:
        return math.nan, math.nan
    m = mean + sd * s1 / n
    if n < 2 or len(zsum) < 3:
        return m, math.nan
    var = (zsum[2] / Z_SCALE - s1 * s1 / n) / (n - 1)
    return m, sd * math.sqrt(max(var, 0.0))


def exact_add(parts: list[float], x: float) -> None:
    """Add ``x`` to the exact sum that ``parts`` holds, in place.

    ``parts`` is a list of non-overlapping floats whose real sum is exactly the sum of every
    value added (Shewchuk's expansion, as :func:`math.fsum` keeps it): merging two is adding
    one's parts to the other, and :func:`exact_value` rounds the exact sum once. So the result
    does not depend on the order or grouping of the additions, and no magnitude overflows
    (fixed-point integers of squared errors would, past 2**63).

    >>> a, b = [], []
    >>> for x in (1e16, 1.0, -1e16, 0.1):
    ...     exact_add(a, x)
    >>> for x in (0.1, -1e16, 1.0, 1e16):
    ...     exact_add(b, x)
    >>> exact_value(a) == exact_value(b) == 1.1, sum([1e16, 1.0, -1e16, 0.1])
    (True, 0.1)
    """
    i = 0
    for y in parts:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            parts[i] = lo
            i += 1
        x = hi
    parts[i:] = [x]


def exact_value(parts: list[float]) -> float:
    """The exact sum held by ``parts`` (see :func:`exact_add`), rounded once."""
    return math.fsum(parts)


def _add_exact(into: list[float], other: list[float]) -> None:
    for x in other:
        exact_add(into, x)


MICRO_CAP: Final = 2**53
"""Cap of one outcome's absolute error in a tick, in millionths (a tick's sum stays in int64)."""


Row = list[Any]  # [hash, features, prediction, confidence]: one sampled prediction


def merge_spans(into: dict[str, list[int]], other: dict[str, list[int]]) -> None:
    """Widen ``into``'s ``partition -> [first, last]`` offsets by ``other``'s, in place."""
    for p, (lo, hi) in other.items():
        span = into.get(p)
        if span is None:
            into[p] = [lo, hi]
        else:
            if lo < span[0]:
                span[0] = lo
            if hi > span[1]:
                span[1] = hi


def _add_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


SAMPLE_VALUES = 250_000
"""A sample (a window's or a tick's) stops at the row that brings it to this many feature
values: with 1,000 features a partial samples 250 rows, so that it stays a few MiB on the
partials topic (the rows are sent there until a reference exists). ``warmup_sample`` bounds
the rows."""


def sample_prefix(sample: list[Row], k: int) -> int:
    """How many of ``sample``'s first rows (sorted by hash) a sample keeps: at most ``k`` rows,
    up to and including the row that reaches :data:`SAMPLE_VALUES` values.

    Whether a row is kept depends only on the rows before it, so keeping the prefix piecewise
    and merging gives the same rows as keeping it once over everything. (Stopping *before*
    the row that overflows would not: a part that dropped a wide row forgets it, and a
    narrower row of larger hash from another part would then fit.)

    >>> rows = [[h, {f"x{i}": 0.0 for i in range(150_000)}, "yes", 0.9] for h in range(4)]
    >>> sample_prefix(rows, 3), sample_prefix(rows[:1], 3)
    (2, 1)
    """
    n = min(len(sample), k)
    values = 0
    for i in range(n):
        if values >= SAMPLE_VALUES:
            return i
        values += len(sample[i][1]) + 1
    return n


def merge_samples(a: list[Row], b: list[Row], k: int) -> tuple[list[Row], int]:
    """The rows of smallest hash of both (each sorted by hash) that a sample keeps
    (:func:`sample_prefix`), and how many fell out."""
    merged = a if not b else b if not a else list(heapq.merge(a, b, key=lambda r: r[0]))
    keep = sample_prefix(merged, k)
    return merged[:keep], len(merged) - keep


def add_hists(into: dict[str, dict[int, int]], other: dict[str, dict[int, int]]) -> None:
    """Add ``other``'s per-key bin counts into ``into``, in place."""
    for key, h in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = dict(h)
        else:
            for b, n in h.items():
                mine[b] = mine.get(b, 0) + n


def add_sums(into: dict[str, list[int]], other: dict[str, list[int]]) -> None:
    """Add ``other``'s per-feature fixed-point sums into ``into``, in place."""
    for name, sums in other.items():
        acc = into.setdefault(name, [0, 0, 0])
        for i, v in enumerate(sums):
            acc[i] += v


@dataclass
class TickSummary:
    """What one source saw of one monitor in one tick, for its detectors."""

    count: int = 0
    fp: str | None = None  # the reference of the standardised sums (None: none, sampled)
    zsum: dict[str, list[int]] = field(default_factory=dict)  # as WindowPartial.zsum
    offsets: dict[str, list[int]] = field(default_factory=dict)
    sample: list[Row] = field(default_factory=list)  # as WindowPartial.sample, when fp is None
    sampled_out: int = 0
    # values in ``sample`` (feature values + 1 per row), kept as rows come; -1: not known yet
    sample_values: int = field(default=-1, compare=False, repr=False)

    def absorb(self, other: TickSummary, k: int = 5000) -> TickSummary:
        """Merge ``other`` in place (same ``fp``); returns this summary."""
        if self.fp != other.fp:
            raise ValueError(f"cannot merge summaries of references {self.fp} and {other.fp}")
        self.count += other.count
        merge_spans(self.offsets, other.offsets)
        add_sums(self.zsum, other.zsum)
        if other.sample or other.sampled_out:
            self.sample, dropped = merge_samples(self.sample, other.sample, k)
            self.sample_values = -1
            self.sampled_out += other.sampled_out + dropped
        return self

    def copy(self) -> TickSummary:
        return TickSummary(
            self.count, self.fp, {k: list(v) for k, v in self.zsum.items()},
            {p: list(r) for p, r in self.offsets.items()}, list(self.sample), self.sampled_out,
        )  # fmt: skip


@dataclass
class WindowPartial:
    """What one source saw of one monitor in one window; see the module docstring."""

    count: int = 0
    offsets: dict[str, list[int]] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)  # feature -> rows carrying it
    latency: QuantileSketch = field(default_factory=QuantileSketch)
    fp: str | None = None
    numeric: dict[str, NumericSketch] = field(default_factory=dict)
    categorical: dict[str, CategoricalSketch] = field(default_factory=dict)
    mismatched: dict[str, int] = field(default_factory=dict)
    # feature -> [sum of z, n, sum of z²], z in reference sds, both sums in Z_SCALE fixed point
    zsum: dict[str, list[int]] = field(default_factory=dict)
    prediction: NumericSketch | CategoricalSketch | None = None
    score: NumericSketch | None = None
    sample: list[Row] = field(default_factory=list)  # ascending hash, when fp is None
    sampled_out: int = 0  # rows that did not fit the sample
    ticks: dict[float, TickSummary] = field(default_factory=dict)  # not sent yet (source side)
    # "predicted\x1fscored class" -> score bin -> events (see streamproc.aggregate.scores)
    class_scores: dict[str, dict[int, int]] = field(default_factory=dict)
    # values in ``sample`` (feature values + 1 per row), kept as rows come; -1: not known yet
    sample_values: int = field(default=-1, compare=False, repr=False)
    # the reference's PCA features' fixed-point cross moments (multivariate drift), if it has one
    mv: CrossMoments | None = None
    # a regression reference's loss trees: tree -> leaf -> events (see streamproc.aggregate.losses)
    losses: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def complete_sample(self) -> bool:
        """Whether ``sample`` holds every row (so it can be binned exactly later)."""
        return self.fp is None and self.sampled_out == 0

    def merge_common(self, other: WindowPartial) -> None:
        """Add ``other``'s reference-independent parts (counts, offsets, latency) in place."""
        self.count += other.count
        merge_spans(self.offsets, other.offsets)
        _add_counts(self.present, other.present)
        if other.latency.count or other.latency.nulls:
            self.latency += other.latency
        add_hists(self.class_scores, other.class_scores)

    def absorb(self, other: WindowPartial, k: int = 5000) -> WindowPartial:
        """Merge ``other`` into this partial in place (``other`` is unchanged); both must
        share ``fp`` (or both sample). Returns this partial.

        Raises
        ------
        ValueError
            The partials were built with different references.
        """
        if self.fp != other.fp:
            raise ValueError(f"cannot merge partials of references {self.fp} and {other.fp}")
        self.merge_common(other)
        for name, sk in other.numeric.items():
            mine = self.numeric.get(name)
            if mine is None:
                self.numeric[name] = sk.copy()
            else:
                mine += sk
        for name, csk in other.categorical.items():
            cmine = self.categorical.get(name)
            if cmine is None:
                self.categorical[name] = csk.copy()
            else:
                cmine += csk
        _add_counts(self.mismatched, other.mismatched)
        add_sums(self.zsum, other.zsum)
        add_hists(self.losses, other.losses)
        if other.prediction is not None:
            if self.prediction is None:
                self.prediction = other.prediction.copy()
            elif type(self.prediction) is type(other.prediction):
                self.prediction += other.prediction  # type: ignore[operator]
        if other.score is not None:
            if self.score is None:
                self.score = other.score.copy()
            else:
                self.score += other.score
        if other.sample or other.sampled_out:
            self.sample, dropped = merge_samples(self.sample, other.sample, k)
            self.sample_values = -1
            self.sampled_out += other.sampled_out + dropped
        for t, x in other.ticks.items():
            have = self.ticks.get(t)
            if have is None:
                self.ticks[t] = x.copy()
            else:
                have.absorb(x, k)
        if other.mv is not None:
            if self.mv is None:
                self.mv = other.mv.copy()
            else:
                self.mv += other.mv
        return self

    def merge(self, other: WindowPartial, k: int = 5000) -> WindowPartial:
        """A new partial equal to one fed both (see :meth:`absorb`)."""
        return self.copy().absorb(other, k)

    def copy(self) -> WindowPartial:
        return WindowPartial(
            self.count,
            {p: list(s) for p, s in self.offsets.items()},
            dict(self.present),
            self.latency.copy(),
            self.fp,
            {k: v.copy() for k, v in self.numeric.items()},
            {k: v.copy() for k, v in self.categorical.items()},
            dict(self.mismatched),
            {k: list(v) for k, v in self.zsum.items()},
            None if self.prediction is None else self.prediction.copy(),
            None if self.score is None else self.score.copy(),
            list(self.sample),
            self.sampled_out,
            {t: x.copy() for t, x in self.ticks.items()},
            {k: dict(h) for k, h in self.class_scores.items()},
            mv=None if self.mv is None else self.mv.copy(),
            losses={k: dict(h) for k, h in self.losses.items()},
        )


@dataclass
class OutcomePartial:
    """What one source saw of one monitor's joined outcomes in one window (by label time).

    ``numeric_pairs`` counts the outcomes whose prediction and label are both finite numbers;
    ``abs_error`` and ``sq_error`` hold the exact sums (:func:`exact_add`) of their absolute and
    squared errors, ``pct_error`` that of ``|error| / |label|`` over the ``pct_pairs`` of them
    whose label is not zero. A tick is ``[labelled, correct, absolute error in millionths,
    numeric pairs]``: what the error-stream detectors take.
    """

    labelled: int = 0
    correct: int = 0
    abs_error: list[float] = field(default_factory=list)
    numeric_pairs: int = 0
    labels: CategoricalSketch = field(default_factory=CategoricalSketch)
    # confidence bin -> [labelled, sum of confidence in millionths, correct]
    cal: dict[int, list[int]] = field(default_factory=dict)
    # tick -> [labelled, correct, abs error in millionths, numeric pairs]
    ticks: dict[float, list[int]] = field(default_factory=dict)
    sq_error: list[float] = field(default_factory=list)
    pct_error: list[float] = field(default_factory=list)
    pct_pairs: int = 0
    # numeric labels, for the target drift of a regression model (bucket counts merge exactly)
    label_values: QuantileSketch = field(default_factory=QuantileSketch)
    confusion: dict[str, int] = field(default_factory=dict)  # "predicted\x1flabel" -> outcomes
    # "label\x1fscored class" -> score bin -> outcomes (see streamproc.aggregate.scores)
    class_scores: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def mae(self) -> float | None:
        """Mean absolute error of the numeric outcomes (``None`` without any)."""
        return exact_value(self.abs_error) / self.numeric_pairs if self.numeric_pairs else None

    @property
    def rmse(self) -> float | None:
        """Root mean squared error of the numeric outcomes (``None`` without any)."""
        if not self.numeric_pairs:
            return None
        return math.sqrt(exact_value(self.sq_error) / self.numeric_pairs)

    @property
    def mape(self) -> float | None:
        """Mean absolute percentage error (a share) over the numeric outcomes whose label is
        not zero (``None`` without any)."""
        return exact_value(self.pct_error) / self.pct_pairs if self.pct_pairs else None

    def absorb(self, other: OutcomePartial) -> OutcomePartial:
        """Merge ``other`` in place; returns this partial."""
        self.labelled += other.labelled
        self.correct += other.correct
        _add_exact(self.abs_error, other.abs_error)
        _add_exact(self.sq_error, other.sq_error)
        _add_exact(self.pct_error, other.pct_error)
        self.numeric_pairs += other.numeric_pairs
        self.pct_pairs += other.pct_pairs
        self.labels += other.labels
        self.label_values += other.label_values
        for b, (n, conf, right) in other.cal.items():
            acc = self.cal.setdefault(b, [0, 0, 0])
            acc[0] += n
            acc[1] += conf
            acc[2] += right
        for t, values in other.ticks.items():
            acc = self.ticks.setdefault(t, [0, 0, 0, 0])
            for i, v in enumerate(values):
                acc[i] += v
        _add_counts(self.confusion, other.confusion)
        add_hists(self.class_scores, other.class_scores)
        return self

    def merge(self, other: OutcomePartial) -> OutcomePartial:
        return self.copy().absorb(other)

    def copy(self) -> OutcomePartial:
        return OutcomePartial(
            self.labelled, self.correct, list(self.abs_error), self.numeric_pairs,
            self.labels.copy(), {b: list(v) for b, v in self.cal.items()},
            {t: list(v) for t, v in self.ticks.items()}, list(self.sq_error),
            list(self.pct_error), self.pct_pairs, self.label_values.copy(),
            dict(self.confusion), {k: dict(h) for k, h in self.class_scores.items()},
        )  # fmt: skip

    def calibration(self, edges: Iterable[float]) -> tuple[list[int], list[int], list[int]]:
        """Per bin of a reference's calibration ``edges``: labelled, confidence sum
        (millionths), correct. Exact when the edges are on the fixed grid (``bins`` dividing
        100), as :func:`~streamproc.sketch.calibration_edges` gives."""
        e = np.asarray(list(edges), dtype=np.float64)
        uppers = np.append(CONFIDENCE_EDGES, np.inf)
        target = np.searchsorted(e, uppers, side="left").tolist()
        out = [[0] * (e.size + 1) for _ in range(3)]
        for b, values in self.cal.items():
            for part, v in zip(out, values, strict=True):
                part[target[b]] += v
        return out[0], out[1], out[2]


# -- stored form ----------------------------------------------------------------------------------


class SummaryState(msgspec.Struct, array_like=True, omit_defaults=True):
    count: int = 0
    fp: str | None = None
    zsum: dict[str, list[int]] = {}
    offsets: dict[str, list[int]] = {}
    sample: list[list[Any]] = []
    sampled_out: int = 0


class PartialState(msgspec.Struct, array_like=True, omit_defaults=True):
    count: int = 0
    offsets: dict[str, list[int]] = {}
    present: dict[str, int] = {}
    latency: bytes = b""
    fp: str | None = None
    numeric: dict[str, bytes] = {}
    categorical: dict[str, bytes] = {}
    mismatched: dict[str, int] = {}
    zsum: dict[str, list[int]] = {}
    prediction: bytes = b""
    score: bytes = b""
    sample: list[list[Any]] = []
    sampled_out: int = 0
    ticks: dict[float, SummaryState] = {}
    class_scores: dict[str, dict[int, int]] = {}
    mv: bytes = b""  # CrossMoments bytes (absent from partials of older versions)
    losses: dict[str, dict[int, int]] = {}  # loss tree leaf counts (idem)


class OutcomeState(msgspec.Struct, array_like=True, omit_defaults=True):
    labelled: int = 0
    correct: int = 0
    abs_error: float = 0.0  # before the exact sums: the float sum of absolute errors
    numeric_pairs: int = 0
    labels: bytes = b""
    cal: dict[int, list[int]] = {}
    ticks: dict[float, list[int]] = {}
    errors: list[list[float]] = []  # exact sums of absolute, squared, abs percentage errors
    pct_pairs: int = 0
    label_values: bytes = b""
    confusion: dict[str, int] = {}
    class_scores: dict[str, dict[int, int]] = {}


def encode_summary(t: TickSummary) -> SummaryState:
    return SummaryState(t.count, t.fp, t.zsum, t.offsets, t.sample, t.sampled_out)


def decode_summary(s: SummaryState) -> TickSummary:
    return TickSummary(
        s.count, s.fp, {k: list(v) for k, v in s.zsum.items()},
        {p: list(v) for p, v in s.offsets.items()}, [list(r) for r in s.sample], s.sampled_out,
    )  # fmt: skip


def encode_partial(p: WindowPartial) -> PartialState:
    return PartialState(
        p.count,
        p.offsets,
        p.present,
        p.latency.to_bytes() if p.latency.count or p.latency.nulls else b"",
        p.fp,
        {k: v.to_bytes() for k, v in p.numeric.items()},
        {k: v.to_bytes() for k, v in p.categorical.items()},
        p.mismatched,
        p.zsum,
        b"" if p.prediction is None else p.prediction.to_bytes(),
        b"" if p.score is None else p.score.to_bytes(),
        p.sample,
        p.sampled_out,
        {t: encode_summary(x) for t, x in p.ticks.items()},
        p.class_scores,
        b"" if p.mv is None else p.mv.to_bytes(),
        p.losses,
    )


def decode_partial(s: PartialState) -> WindowPartial:
    pred: NumericSketch | CategoricalSketch | None = None
    if s.prediction[:4] == NumericSketch.MAGIC:
        pred = NumericSketch.from_bytes(s.prediction)
    elif s.prediction:
        pred = CategoricalSketch.from_bytes(s.prediction)
    return WindowPartial(
        s.count,
        {p: list(v) for p, v in s.offsets.items()},
        dict(s.present),
        QuantileSketch.from_bytes(s.latency) if s.latency else QuantileSketch(),
        s.fp,
        {k: NumericSketch.from_bytes(v) for k, v in s.numeric.items()},
        {k: CategoricalSketch.from_bytes(v) for k, v in s.categorical.items()},
        dict(s.mismatched),
        {k: list(v) for k, v in s.zsum.items()},
        pred,
        NumericSketch.from_bytes(s.score) if s.score else None,
        [list(r) for r in s.sample],
        s.sampled_out,
        {t: decode_summary(x) for t, x in s.ticks.items()},
        {k: dict(h) for k, h in s.class_scores.items()},
        mv=CrossMoments.from_bytes(s.mv) if s.mv else None,
        losses={k: dict(h) for k, h in s.losses.items()},
    )


def encode_outcome(p: OutcomePartial) -> OutcomeState:
    errors = [p.abs_error, p.sq_error, p.pct_error] if p.numeric_pairs else []
    return OutcomeState(
        p.labelled, p.correct, 0.0, p.numeric_pairs, p.labels.to_bytes(), p.cal, p.ticks,
        errors, p.pct_pairs, p.label_values.to_bytes() if p.label_values.count else b"",
        p.confusion, p.class_scores,
    )  # fmt: skip


def decode_outcome(s: OutcomeState) -> OutcomePartial:
    """The partial of a stored outcome state. One stored before the exact sums has no errors
    (its float sum of absolute errors is dropped, with its numeric pairs): the window's MAE,
    RMSE and MAPE come from the same outcomes."""
    abs_e, sq_e, pct_e = (list(x) for x in s.errors) if s.errors else ([], [], [])
    return OutcomePartial(
        s.labelled,
        s.correct,
        abs_e,
        s.numeric_pairs if s.errors else 0,
        CategoricalSketch.from_bytes(s.labels) if s.labels else CategoricalSketch(),
        {b: list(v) for b, v in s.cal.items()},
        {t: list(v) for t, v in s.ticks.items()},
        sq_e,
        pct_e,
        s.pct_pairs,
        QuantileSketch.from_bytes(s.label_values) if s.label_values else QuantileSketch(),
        dict(s.confusion),
        {k: dict(h) for k, h in s.class_scores.items()},
    )
