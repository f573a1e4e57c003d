"""Partials: mergeable per-tick state, the only thing that crosses from aggregation to judging.

The aggregation stage folds the events of one source partition into one partial per
``(model, version, raw segment key, tick)``; the judging stage merges the partials of every
source into windows. Both kinds are monoids like the sketches they hold: an empty partial is
the identity and :meth:`~TickPartial.merge` is associative, so a window merged from partials
equals a window fed every event (counts, histograms, min and max exactly; moments up to
floating-point rounding).

:class:`TickPartial`
    Predictions, windowed by the prediction's event time. The per-feature parts are binned and
    standardised with one reference, named by its fingerprint ``fp``. A partial built while no
    reference was known holds a sample of its rows instead (``fp`` is ``None``): the judging
    stage folds them in with whatever reference the window is judged against, exactly as the
    aggregation stage would have, or builds the warm-up reference from them.
:class:`OutcomePartial`
    Joined predictions and labels, windowed by the label's event time. Nothing in it depends on
    a reference: counts, and confidences on a fixed grid of :data:`CONFIDENCE_BINS` bins that
    any reference's calibration bins are unions of.

Stored form: :func:`encode_tick` / :func:`decode_tick` (and the outcome pair) give msgspec
Structs of plain values and sketch bytes; see :mod:`streamproc.aggregate.wire` for the messages.

Examples
--------
>>> a, b = TickPartial(), TickPartial()
>>> a.count, b.count = 2, 3
>>> a.offsets, b.offsets = {"0": [5, 9]}, {"0": [1, 4], "1": [7, 7]}
>>> m = a.merge(b)
>>> m.count, m.offsets
(5, {'0': [1, 9], '1': [7, 7]})
>>> decode_tick(encode_tick(m)).offsets == m.offsets
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

from streamproc.sketch import CategoricalSketch, NumericSketch, QuantileSketch

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


def merge_samples(a: list[Row], b: list[Row], k: int) -> tuple[list[Row], int]:
    """The ``k`` rows of smallest hash of both (each sorted by hash), and how many fell out."""
    if not b:
        return a[:k], max(len(a) - k, 0)
    if not a:
        return b[:k], max(len(b) - k, 0)
    merged = list(heapq.merge(a, b, key=lambda r: r[0]))
    return merged[:k], max(len(merged) - k, 0)


@dataclass
class TickPartial:
    """What one source saw of one monitor in one tick; see the module docstring."""

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

    @property
    def complete_sample(self) -> bool:
        """Whether ``sample`` holds every row (so it can be binned exactly later)."""
        return self.fp is None and self.sampled_out == 0

    def merge_common(self, other: TickPartial) -> None:
        """Add ``other``'s reference-independent parts (counts, offsets, latency) in place."""
        self.count += other.count
        merge_spans(self.offsets, other.offsets)
        _add_counts(self.present, other.present)
        if other.latency.count or other.latency.nulls:
            self.latency += other.latency

    def absorb(self, other: TickPartial, k: int = 5000) -> TickPartial:
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
        for name, sums in other.zsum.items():
            acc = self.zsum.setdefault(name, [0, 0, 0])
            for i, v in enumerate(sums):
                acc[i] += v
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
            self.sampled_out += other.sampled_out + dropped
        return self

    def merge(self, other: TickPartial, k: int = 5000) -> TickPartial:
        """A new partial equal to one fed both (see :meth:`absorb`)."""
        return self.copy().absorb(other, k)

    def copy(self) -> TickPartial:
        return TickPartial(
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
        )


@dataclass
class OutcomePartial:
    """What one source saw of one monitor's joined outcomes in one tick (by label time)."""

    labelled: int = 0
    correct: int = 0
    abs_error: float = 0.0
    numeric_pairs: int = 0  # outcomes whose prediction and label are both numbers (MAE)
    labels: CategoricalSketch = field(default_factory=CategoricalSketch)
    cal_n: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    cal_conf: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)  # millionths
    cal_correct: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)

    def merge(self, other: OutcomePartial) -> OutcomePartial:
        return OutcomePartial(
            self.labelled + other.labelled,
            self.correct + other.correct,
            self.abs_error + other.abs_error,
            self.numeric_pairs + other.numeric_pairs,
            self.labels.merge(other.labels),
            [a + b for a, b in zip(self.cal_n, other.cal_n, strict=True)],
            [a + b for a, b in zip(self.cal_conf, other.cal_conf, strict=True)],
            [a + b for a, b in zip(self.cal_correct, other.cal_correct, strict=True)],
        )

    def calibration(self, edges: Iterable[float]) -> tuple[list[int], list[int], list[int]]:
        """Per bin of a reference's calibration ``edges``: labelled, confidence sum
        (millionths), correct. Exact when the edges are on the fixed grid (``bins`` dividing
        100), as :func:`~streamproc.sketch.calibration_edges` gives."""
        e = np.asarray(list(edges), dtype=np.float64)
        uppers = np.append(CONFIDENCE_EDGES, np.inf)
        target = np.searchsorted(e, uppers, side="left")
        out = []
        for part in (self.cal_n, self.cal_conf, self.cal_correct):
            acc = np.zeros(e.size + 1, dtype=np.int64)
            np.add.at(acc, target, np.asarray(part, dtype=np.int64))
            out.append(acc.tolist())
        return out[0], out[1], out[2]


# -- stored form ----------------------------------------------------------------------------------


class TickState(msgspec.Struct, array_like=True, omit_defaults=True):
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


class OutcomeState(msgspec.Struct, array_like=True, omit_defaults=True):
    labelled: int = 0
    correct: int = 0
    abs_error: float = 0.0
    numeric_pairs: int = 0
    labels: bytes = b""
    cal_n: list[int] = []
    cal_conf: list[int] = []
    cal_correct: list[int] = []


def encode_tick(p: TickPartial) -> TickState:
    return TickState(
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
    )


def decode_tick(s: TickState) -> TickPartial:
    pred: NumericSketch | CategoricalSketch | None = None
    if s.prediction[:4] == NumericSketch.MAGIC:
        pred = NumericSketch.from_bytes(s.prediction)
    elif s.prediction:
        pred = CategoricalSketch.from_bytes(s.prediction)
    return TickPartial(
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
    )


def encode_outcome(p: OutcomePartial) -> OutcomeState:
    return OutcomeState(
        p.labelled,
        p.correct,
        p.abs_error,
        p.numeric_pairs,
        p.labels.to_bytes(),
        p.cal_n,
        p.cal_conf,
        p.cal_correct,
    )


def decode_outcome(s: OutcomeState) -> OutcomePartial:
    zeros = [0] * CONFIDENCE_BINS
    return OutcomePartial(
        s.labelled,
        s.correct,
        s.abs_error,
        s.numeric_pairs,
        CategoricalSketch.from_bytes(s.labels) if s.labels else CategoricalSketch(),
        list(s.cal_n) or list(zeros),
        list(s.cal_conf) or list(zeros),
        list(s.cal_correct) or list(zeros),
    )
