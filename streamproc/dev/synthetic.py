"""A seeded synthetic workload: predictions, delayed labels and injected changes with ground truth.

Used by the demo, the end-to-end tests and the benchmarks. Pure Python + numpy, no Kafka.

The world
    A :class:`WorkloadSpec` describes a binary classifier in production: numeric features
    ``f00``..``f19`` (each ``N(mu_i, sigma_i)``), categorical features ``c0``..``c2`` (a handful
    of categories at fixed probabilities), segment dimensions ``country`` (4 values) and
    ``device`` (3 values) drawn independently at unequal fixed shares (12 segments). The
    per-feature parameters come from ``spec.world_seed``, *not* from the sampling seed, so a
    reference dataset drawn with one seed and a live stream drawn with another come from the
    same distribution. :attr:`Workload.world` exposes them.

The model
    A logistic score ``p = sigmoid(intercept + sum_j coef_j * f_j + effect[c0])`` over the first
    ``spec.model_features`` numeric features and ``c0``; its scale and intercept are solved so
    that the model's accuracy is ``spec.accuracy`` (0.9) and the positive rate is
    ``spec.positive_rate`` (0.3). The positive class is ``spec.classes[0]`` (``"yes"``):
    ``prediction`` is ``"yes"`` when ``p >= 0.5`` else ``"no"``, ``scores`` is
    ``{"yes": p, "no": 1 - p}``. The true label is ``Bernoulli(p)`` (so the model is calibrated)
    and uses the same class strings. A null feature is imputed with its reference mean (a null
    category has no effect) by the model, while the label still follows the true value.

Time
    Event ``i`` (its *index*, ``0 <= i < n_events``) happens at ``epoch + i / spec.rate``
    (default 50 events per second from 2024-01-01T00:00:00Z): event time is a function of the
    index, never of the wall clock. A label for a fraction ``spec.label_fraction`` of
    predictions arrives at ``prediction time + delay``, the delay lognormal with median
    ``spec.label_delay_median_s``. Timestamps are Unix epoch seconds (floats, microseconds).

Changes
    ``spec.changes`` lists :class:`Change` objects, applied from ``start`` (an index, or an
    event time as RFC 3339 text or a ``datetime``) until ``end`` (exclusive; ``None`` = never
    reverts), to events whose segments match ``segment`` (``None`` = all traffic). Each change
    draws its randomness from its own stream, so an event a change does not touch is
    byte-identical to the same event of the stationary workload. :meth:`Workload.ground_truth`
    says when and where each change first bit.

Examples
--------
>>> spec = WorkloadSpec(changes=[MeanShift("f03", 1.0, start=5_000, segment={"country": "DE"})])
>>> first = next(generate(spec, n_events=10, seed=7))
>>> first.kind, first.time, first.index
('prediction', 1704067200.0, 0)
>>> sorted(first.value)  # doctest: +NORMALIZE_WHITESPACE
['features', 'latency_ms', 'model_id', 'model_version', 'prediction', 'prediction_id',
 'scores', 'segments', 'timestamp']
>>> first.value["prediction_id"], sorted(first.value["segments"])
('7-000000000', ['country', 'device'])
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import itertools
import math
import numbers
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from streamproc.baseline import ReferenceProfile

import numpy as np
import orjson

from streamproc.contracts import event_time

__all__ = [
    "DEFAULT_SEGMENTS",
    "AccuracyDrop",
    "Change",
    "Chunk",
    "ErrorScale",
    "Event",
    "Injection",
    "MeanShift",
    "NewCategory",
    "NullBurst",
    "PriorShift",
    "SegmentDim",
    "SegmentSilence",
    "VarianceScale",
    "Workload",
    "WorkloadSpec",
    "World",
    "generate",
    "write_reference",
]

When = int | str | datetime

TARGET_CENTRE: Final = 50.0
TARGET_SCALE: Final = 10.0
"""A regression workload's values: ``TARGET_CENTRE + TARGET_SCALE * logit``."""

# randomness streams inside one chunk: (seed, chunk, stream)
_SEGMENT_STREAM = 0
_BASE_STREAM = 1
_TARGET_STREAM = 2  # regression targets' noise (drawn only for regression workloads)
_CHANGE_STREAM = 100  # + the change's position in spec.changes


# -- changes ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Change:
    """Something that happens to the stream from ``start`` until ``end``, within ``segment``.

    Parameters
    ----------
    start : int or str or datetime
        First event affected: an event index (``int``) or an event time (RFC 3339 text or an
        aware ``datetime``; the first event at or after it).
    end : int or str or datetime or None
        First event no longer affected (the change reverts); ``None`` = it never reverts.
    segment : mapping of str to str or None
        Scope, e.g. ``{"country": "DE"}`` or ``{"country": "DE", "device": "ios"}``;
        ``None`` = all traffic.
    """

    start: When = 0
    end: When | None = None
    segment: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.segment is not None:
            object.__setattr__(self, "segment", dict(self.segment))
        self._validate()

    def _validate(self) -> None:
        pass

    @property
    def kind(self) -> str:
        """The change's class name, e.g. ``"MeanShift"``."""
        return type(self).__name__


@dataclass(frozen=True)
class MeanShift(Change):
    """Numeric ``feature`` moves by ``sigmas`` of its reference standard deviation."""

    feature: str
    sigmas: float


@dataclass(frozen=True)
class VarianceScale(Change):
    """Numeric ``feature`` spreads ``factor`` times as wide around its reference mean."""

    feature: str
    factor: float

    def _validate(self) -> None:
        if not self.factor >= 0:
            raise ValueError(f"VarianceScale factor must be >= 0, got {self.factor}")


@dataclass(frozen=True)
class NewCategory(Change):
    """A share ``share`` of categorical ``feature`` becomes the unseen value ``category``."""

    feature: str
    category: str
    share: float

    def _validate(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError(f"NewCategory share must be in (0, 1], got {self.share}")


@dataclass(frozen=True)
class NullBurst(Change):
    """``feature`` is null in a fraction ``rate`` of events (the model imputes it)."""

    feature: str
    rate: float

    def _validate(self) -> None:
        if not 0 < self.rate <= 1:
            raise ValueError(f"NullBurst rate must be in (0, 1], got {self.rate}")


@dataclass(frozen=True)
class AccuracyDrop(Change):
    """Concept drift: labels change so the model's accuracy becomes ``to_accuracy``.

    Features and scores are untouched. Below the reference accuracy ``a0``, a fraction
    ``1 - to_accuracy / a0`` of labels is set to the class the model did *not* predict; above
    it, a fraction ``(to_accuracy - a0) / (1 - a0)`` is set to the predicted class.
    """

    to_accuracy: float

    def _validate(self) -> None:
        if not 0 <= self.to_accuracy <= 1:
            raise ValueError(f"AccuracyDrop to_accuracy must be in [0, 1], got {self.to_accuracy}")


@dataclass(frozen=True)
class PriorShift(Change):
    """The true positive rate becomes ``positive_rate``; features and scores are untouched.

    The true log-odds move by a constant, solved so that the positive rate over the reference
    feature distribution equals ``positive_rate``.
    """

    positive_rate: float

    def _validate(self) -> None:
        if not 0 < self.positive_rate < 1:
            raise ValueError(
                f"PriorShift positive_rate must be in (0, 1), got {self.positive_rate}"
            )


@dataclass(frozen=True)
class ErrorScale(Change):
    """Regression workloads: the target's noise around the model's prediction is multiplied
    by ``factor`` (2: the model's absolute errors double); features and predictions are
    untouched."""

    factor: float

    def _validate(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"ErrorScale factor must be positive, got {self.factor}")


@dataclass(frozen=True)
class SegmentSilence(Change):
    """The events of ``segment`` (all traffic when ``None``) are not sent: no prediction and
    no label. Event indexes and times of the other segments are unchanged."""


# -- specification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentDim:
    """One segment dimension: its name, values and their traffic shares (summing to 1)."""

    name: str
    values: tuple[str, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.shares) or not self.values:
            raise ValueError(f"segment dimension {self.name!r}: one share per value")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"segment dimension {self.name!r}: duplicate values")
        if min(self.shares) < 0 or not math.isclose(sum(self.shares), 1.0, abs_tol=1e-9):
            raise ValueError(f"segment dimension {self.name!r}: shares must be >= 0, sum to 1")


DEFAULT_SEGMENTS = (
    SegmentDim("country", ("US", "DE", "FR", "BR"), (0.4, 0.3, 0.2, 0.1)),
    SegmentDim("device", ("ios", "android", "web"), (0.5, 0.3, 0.2)),
)


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate. The defaults are the standard demo and benchmark workload.

    Parameters
    ----------
    model_id, model_version : str
        Copied into every event.
    n_numeric, n_categorical : int
        Features ``f00``.. and ``c0``.. .
    model_features : int
        The model scores from the first ``model_features`` numeric features (and ``c0``);
        the others are noise to it.
    segment_dims : tuple of SegmentDim
        Segment dimensions, drawn independently of each other and of the features.
    classes : (str, str)
        Positive and negative class: the ``prediction``/``label`` values and ``scores`` keys.
    accuracy, positive_rate : float
        The model's accuracy and the positive-label rate the model is calibrated to.
    rate : float
        Events per second of event time.
    start_time : str
        Event time of event 0, RFC 3339.
    label_fraction : float
        Fraction of predictions that get a label.
    label_delay_median_s, label_delay_sigma : float
        Label delay: lognormal with this median (seconds) and log-space sigma (0 = fixed).
    latency_median_ms, latency_sigma : float
        ``latency_ms``: lognormal with this median and log-space sigma.
    feature_decimals : int
        Numeric feature values are rounded to this many decimals.
    changes : sequence of Change
        Injected changes, applied in list order (value changes before nulls).
    world_seed : int
        Seeds the feature distributions and the model (not the sampling).
    chunk_size : int
        Events generated per vectorised chunk; part of the randomness layout, so changing it
        changes the output.
    task : {"classification", "regression"}
        A regression workload predicts ``TARGET_CENTRE + TARGET_SCALE * logit`` of its model
        (no scores); its label is the same of the true logit plus normal noise of
        ``TARGET_SCALE * target_noise`` (scaled by :class:`ErrorScale`). The classification
        figures above (``accuracy``, ``positive_rate``) still shape the world.
    target_noise : float
        Regression: the target noise's standard deviation, in logit units.
    """

    model_id: str = "demo-churn"
    model_version: str = "1"
    n_numeric: int = 20
    n_categorical: int = 3
    model_features: int = 8
    segment_dims: tuple[SegmentDim, ...] = DEFAULT_SEGMENTS
    classes: tuple[str, str] = ("yes", "no")
    accuracy: float = 0.9
    positive_rate: float = 0.3
    rate: float = 50.0
    start_time: str = "2024-01-01T00:00:00Z"
    label_fraction: float = 1.0
    label_delay_median_s: float = 60.0
    label_delay_sigma: float = 0.5
    latency_median_ms: float = 12.0
    latency_sigma: float = 0.4
    feature_decimals: int = 4
    changes: Sequence[Change] = ()
    world_seed: int = 0
    chunk_size: int = 10_000
    task: Literal["classification", "regression"] = "classification"
    target_noise: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "changes", tuple(self.changes))
        object.__setattr__(self, "segment_dims", tuple(self.segment_dims))
        object.__setattr__(self, "classes", tuple(self.classes))
        if not 1 <= self.n_numeric <= 100 or not 0 <= self.n_categorical <= 100:
            raise ValueError("n_numeric must be in [1, 100] and n_categorical in [0, 100]")
        if not 1 <= self.model_features <= self.n_numeric:
            raise ValueError("model_features must be in [1, n_numeric]")
        if len(self.classes) != 2 or self.classes[0] == self.classes[1]:
            raise ValueError("classes must be two distinct class names")
        if not 0 < self.positive_rate < 1:
            raise ValueError("positive_rate must be in (0, 1)")
        if not max(self.positive_rate, 1 - self.positive_rate) < self.accuracy < 0.999:
            raise ValueError("accuracy must beat always predicting the majority class, < 0.999")
        if not self.rate > 0 or self.chunk_size < 1:
            raise ValueError("rate and chunk_size must be positive")
        if not 0 <= self.label_fraction <= 1:
            raise ValueError("label_fraction must be in [0, 1]")
        if min(self.label_delay_median_s, self.latency_median_ms) <= 0:
            raise ValueError("label_delay_median_s and latency_median_ms must be positive")
        if min(self.label_delay_sigma, self.latency_sigma) < 0:
            raise ValueError("label_delay_sigma and latency_sigma must be >= 0")
        event_time(self.start_time, None)  # raises ValueError on bad text
        dims = {d.name: d for d in self.segment_dims}
        if len(dims) != len(self.segment_dims):
            raise ValueError("duplicate segment dimension names")
        numeric, categorical = set(self.numeric_features), set(self.categorical_features)
        for pos, change in enumerate(self.changes):
            where = f"changes[{pos}] ({change.kind})"
            for dim, value in (change.segment or {}).items():
                if dim not in dims or value not in dims[dim].values:
                    raise ValueError(f"{where}: unknown segment {dim}={value!r}")
            feature = getattr(change, "feature", None)
            if isinstance(change, MeanShift | VarianceScale) and feature not in numeric:
                raise ValueError(f"{where}: {feature!r} is not a numeric feature")
            if isinstance(change, NewCategory) and feature not in categorical:
                raise ValueError(f"{where}: {feature!r} is not a categorical feature")
            if isinstance(change, NullBurst) and feature not in numeric | categorical:
                raise ValueError(f"{where}: unknown feature {feature!r}")
            start, end = self.index_at(change.start), self.index_at(change.end)
            if start < 0 or (end is not None and end <= start):
                raise ValueError(f"{where}: needs 0 <= start < end")

    @property
    def numeric_features(self) -> tuple[str, ...]:
        """``("f00", "f01", ...)``."""
        return tuple(f"f{i:02d}" for i in range(self.n_numeric))

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """``("c0", "c1", ...)``."""
        return tuple(f"c{i}" for i in range(self.n_categorical))

    @property
    def epoch(self) -> float:
        """Event time of event 0, Unix seconds."""
        return event_time(self.start_time, None)

    def time_of(self, index: int) -> float:
        """Event time (Unix seconds) of event ``index``.

        >>> WorkloadSpec().time_of(125)
        1704067202.5
        """
        # numpy's rounding, as for the event columns, so both agree to the last bit
        return float(np.round(self.epoch + index / self.rate, 6))

    def index_at(self, when: When | None) -> int | None:
        """The first event index at or after ``when`` (an index is returned as it is).

        >>> WorkloadSpec().index_at("2024-01-01T00:01:00Z")
        3000
        """
        if when is None:
            return None
        if isinstance(when, bool | float | np.floating):
            raise TypeError("give a start/end as an int index, RFC 3339 text or a datetime")
        if isinstance(when, numbers.Integral):
            return int(when)
        offset = (event_time(when, None) - self.epoch) * self.rate
        return max(0, math.ceil(round(offset, 6)))


# -- the world derived from the spec ---------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


@dataclass(frozen=True)
class World:
    """The fixed distributions and model a spec describes (from ``spec.world_seed``).

    Attributes
    ----------
    mean, std : dict of str to float
        Reference mean and standard deviation of each numeric feature.
    categories : dict of str to tuple of str
        Reference categories of each categorical feature, most frequent first.
    category_probs : dict of str to tuple of float
        Their probabilities.
    coefficients : dict of str to float
        The model's logit coefficient per unit of each model feature.
    category_effects : dict of str to float
        The model's logit offset per category of ``c0`` (unseen categories and nulls: 0).
    intercept : float
        The model's logit intercept.
    accuracy, positive_rate : float
        The model's accuracy and positive-label rate on the stationary stream.
    """

    mean: dict[str, float]
    std: dict[str, float]
    categories: dict[str, tuple[str, ...]]
    category_probs: dict[str, tuple[float, ...]]
    coefficients: dict[str, float]
    category_effects: dict[str, float]
    intercept: float
    accuracy: float
    positive_rate: float
    _scale: float = field(repr=False, compare=False)
    _base: float = field(repr=False, compare=False)

    @classmethod
    def from_spec(cls, spec: WorkloadSpec) -> World:
        """Draw the world for ``spec``."""
        rng = np.random.default_rng(np.random.SeedSequence(spec.world_seed))
        numeric, categorical = spec.numeric_features, spec.categorical_features
        mu = np.round(rng.uniform(-5.0, 5.0, len(numeric)), 3)
        sigma = np.round(rng.uniform(0.5, 3.0, len(numeric)), 3)
        categories: dict[str, tuple[str, ...]] = {}
        probs: dict[str, tuple[float, ...]] = {}
        for name in categorical:
            k = int(rng.integers(3, 6))
            p = np.sort(rng.dirichlet(np.full(k, 4.0)))[::-1]
            categories[name] = tuple("abcde"[:k])
            probs[name] = tuple(float(x) for x in p)
        direction = rng.standard_normal(spec.model_features)
        direction /= np.linalg.norm(direction)
        effects: dict[str, float] = {}
        if categorical:
            c0 = categorical[0]
            drawn = np.round(rng.normal(0.0, 0.5, len(categories[c0])), 3).tolist()
            effects = dict(zip(categories[c0], drawn, strict=True))
        mixture = _mixture(effects, probs[categorical[0]] if categorical else (1.0,))
        scale, base = _calibrate(*mixture, spec.accuracy, spec.positive_rate)
        coef = scale * direction / sigma[: spec.model_features]
        return cls(
            mean=dict(zip(numeric, mu.tolist(), strict=True)),
            std=dict(zip(numeric, sigma.tolist(), strict=True)),
            categories=categories,
            category_probs=probs,
            coefficients=dict(zip(numeric, coef.tolist(), strict=False)),
            category_effects=effects,
            intercept=float(base - coef @ mu[: spec.model_features]),
            accuracy=_accuracy(scale, base, *mixture),
            positive_rate=_positive_rate(scale, base, *mixture),
            _scale=scale,
            _base=base,
        )

    def prior_offset(self, positive_rate: float) -> float:
        """The log-odds shift that moves the true positive rate to ``positive_rate``.

        >>> world = World.from_spec(WorkloadSpec(positive_rate=0.3))
        >>> world.prior_offset(0.3)
        0.0
        >>> world.prior_offset(0.5) > 0
        True
        """
        probs = next(iter(self.category_probs.values()), (1.0,))
        mixture = _mixture(self.category_effects, probs)
        return _solve_base(self._scale, *mixture, positive_rate) - self._base


# The stationary logit given the c0 category k is N(base + effect_k, scale^2): integrate over a
# fixed normal grid (deterministic and exact enough, 1e-6) instead of sampling.
_GRID = np.linspace(-8.0, 8.0, 4001)
_WEIGHTS = np.exp(-0.5 * _GRID**2)
_WEIGHTS /= _WEIGHTS.sum()
Mixture = tuple[tuple[float, ...], tuple[float, ...]]


def _mixture(effects: Mapping[str, float], probs: Sequence[float]) -> Mixture:
    """The c0 logit offsets and their probabilities (one zero offset without c0)."""
    return (tuple(effects.values()) or (0.0,)), tuple(probs)


def _grid_p(scale: float, base: float, effects: tuple[float, ...]) -> np.ndarray:
    return _sigmoid(base + np.asarray(effects)[:, None] + scale * _GRID[None, :])


def _positive_rate(
    scale: float, base: float, effects: tuple[float, ...], probs: tuple[float, ...]
) -> float:
    return float(np.asarray(probs) @ (_grid_p(scale, base, effects) @ _WEIGHTS))


def _accuracy(
    scale: float, base: float, effects: tuple[float, ...], probs: tuple[float, ...]
) -> float:
    p = _grid_p(scale, base, effects)
    return float(np.asarray(probs) @ (np.maximum(p, 1.0 - p) @ _WEIGHTS))


@functools.lru_cache(maxsize=256)
def _solve_base(
    scale: float, effects: tuple[float, ...], probs: tuple[float, ...], rate: float
) -> float:
    """The base log-odds giving positive rate ``rate``: Newton's method kept in a bracket."""
    q = np.asarray(probs)
    lo, hi = -50.0, 50.0
    base = math.log(rate / (1.0 - rate))
    for _ in range(200):
        p = _grid_p(scale, base, effects)
        gap = float(q @ (p @ _WEIGHTS)) - rate
        if abs(gap) < 1e-13:
            break
        if gap < 0:
            lo = base
        else:
            hi = base
        slope = float(q @ ((p * (1.0 - p)) @ _WEIGHTS))
        step = base - gap / slope if slope > 0 else lo - 1.0
        base = step if lo < step < hi else 0.5 * (lo + hi)
    return base


@functools.lru_cache(maxsize=64)
def _calibrate(
    effects: tuple[float, ...], probs: tuple[float, ...], accuracy: float, rate: float
) -> tuple[float, float]:
    """The logit scale and base giving ``accuracy`` at positive rate ``rate`` (bisection)."""

    def acc(scale: float) -> float:
        return _accuracy(scale, _solve_base(scale, effects, probs, rate), effects, probs)

    if acc(0.0) >= accuracy:
        raise ValueError(f"accuracy {accuracy} is below what c0 alone gives ({acc(0.0):.3f})")
    lo, hi = 0.0, 60.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if acc(mid) < accuracy:
            lo = mid
        else:
            hi = mid
    scale = 0.5 * (lo + hi)
    return scale, _solve_base(scale, effects, probs, rate)


# -- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Columnar output for up to ``spec.chunk_size`` consecutive indexes (sent events only).

    Attributes
    ----------
    index : ndarray of int64
        Event indexes (silenced events are absent).
    time : ndarray of float64
        Event times, Unix seconds.
    segments : dict of str to ndarray of int
        Per dimension, the position of each event's value in ``SegmentDim.values``.
    numeric : ndarray of float64, shape (n, n_numeric)
        Numeric features as sent (rounded); NaN is null.
    categorical : ndarray of int64, shape (n, n_categorical)
        Positions in ``Workload.vocabulary[feature]``; -1 is null.
    score : ndarray of float64
        Positive-class probability (rounded to 6 decimals).
    prediction, label, labelled : ndarray of bool
        Predicted positive; true label positive; a label event is sent.
    label_time : ndarray of float64
        Event time of the label (meaningful where ``labelled``).
    latency_ms : ndarray of float64
    value, target : ndarray of float64 or None
        Regression workloads: the predicted and the true value (rounded to 4 decimals).
    """

    index: np.ndarray
    time: np.ndarray
    segments: dict[str, np.ndarray]
    numeric: np.ndarray
    categorical: np.ndarray
    score: np.ndarray
    prediction: np.ndarray
    label: np.ndarray
    labelled: np.ndarray
    label_time: np.ndarray
    latency_ms: np.ndarray
    value: np.ndarray | None = None
    target: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)


class Event(NamedTuple):
    """One element of the merged stream: a ``prediction.v1`` or ``label.v1`` dict.

    ``time`` is the event's event time (Unix seconds, equal to ``value["timestamp"]``) and
    ``index`` the index of the prediction it belongs to.
    """

    kind: Literal["prediction", "label"]
    time: float
    index: int
    value: dict[str, Any]


@dataclass(frozen=True)
class Injection:
    """Ground truth for one injected change, for a run of ``n_events`` events.

    Attributes
    ----------
    position : int
        Position of the change in ``spec.changes``.
    change : Change
    kind : str
        ``"MeanShift"``, ``"NullBurst"``, ...
    feature : str or None
    segment : dict of str to str
        Scope (empty = all traffic).
    start_index, end_index : int, int or None
        Resolved ``start``/``end`` (``end_index`` exclusive, ``None`` = never reverts).
    start_time, end_time : float, float or None
        Their event times.
    first_affected_index : int or None
        Index of the first event in scope at or after the start (the first one exposed to the
        change; for a silence, the first one not sent); ``None`` if none in the run.
    first_affected_time : float or None
    first_affected_ordinal : int or None
        How many events of the scope were *sent* before the first affected one: its position
        in the scope's own stream, the origin for detection delays counted in that segment's
        events.
    """

    position: int
    change: Change
    kind: str
    feature: str | None
    segment: dict[str, str]
    start_index: int
    end_index: int | None
    start_time: float
    end_time: float | None
    first_affected_index: int | None
    first_affected_time: float | None
    first_affected_ordinal: int | None


# -- the generator ---------------------------------------------------------------------------


class Workload:
    """Events ``0 .. n_events - 1`` of ``spec`` drawn with ``seed``.

    Every output is a pure function of ``(spec, seed)``; the first ``k`` events are the same
    whatever ``n_events`` is. ``n_events`` counts event indexes: events a
    :class:`SegmentSilence` suppresses are not sent, so fewer predictions may come out.

    Parameters
    ----------
    spec : WorkloadSpec
    n_events : int
    seed : int
        Sampling seed (>= 0); also the prefix of every ``prediction_id``.

    Examples
    --------
    >>> w = Workload(WorkloadSpec(), n_events=3, seed=1)
    >>> [p["prediction_id"] for p in w.predictions()]
    ['1-000000000', '1-000000001', '1-000000002']
    >>> [(e.kind, e.index) for e in w.events()]  # doctest: +NORMALIZE_WHITESPACE
    [('prediction', 0), ('prediction', 1), ('prediction', 2),
     ('label', 0), ('label', 2), ('label', 1)]
    """

    def __init__(self, spec: WorkloadSpec, n_events: int, seed: int) -> None:
        if n_events < 0 or seed < 0:
            raise ValueError("n_events and seed must be >= 0")
        self.spec, self.n_events, self.seed = spec, n_events, seed
        self.world = World.from_spec(spec)
        vocab = {name: list(cats) for name, cats in self.world.categories.items()}
        for change in spec.changes:
            if isinstance(change, NewCategory):
                if change.category in self.world.categories[change.feature]:
                    raise ValueError(f"{change.category!r} is already a {change.feature} category")
                if change.category not in vocab[change.feature]:
                    vocab[change.feature].append(change.category)
        self.vocabulary: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in vocab.items()}
        self._numeric = spec.numeric_features
        self._categorical = spec.categorical_features
        self._mu = np.array([self.world.mean[f] for f in self._numeric])
        self._sigma = np.array([self.world.std[f] for f in self._numeric])
        m = spec.model_features
        self._coef = np.array([self.world.coefficients[f] for f in self._numeric[:m]])
        self._cum = [np.cumsum(self.world.category_probs[name])[:-1] for name in self._categorical]
        self._seg_cum = [np.cumsum(d.shares)[:-1] for d in spec.segment_dims]
        if self._categorical:
            # positions past the reference vocabulary (new categories) and -1 (null) give 0
            base = list(self.world.category_effects.values())
            extra = len(self.vocabulary[self._categorical[0]]) - len(base) + 1
            self._effects = np.concatenate([base, np.zeros(extra)])
        self._changes = [self._resolve(change) for change in spec.changes]
        self._a0 = self.world.accuracy
        self._prior = [
            self.world.prior_offset(c.positive_rate) if isinstance(c, PriorShift) else 0.0
            for c in spec.changes
        ]
        self._cat_obj = [
            np.array([*self.vocabulary[name], None], dtype=object) for name in self._categorical
        ]
        self._feature_names = self._numeric + self._categorical
        self._segment_templates = [
            dict(zip([d.name for d in spec.segment_dims], values, strict=True))
            for values in itertools.product(*(d.values for d in spec.segment_dims))
        ]

    def _resolve(self, change: Change) -> tuple[int, int, list[tuple[int, int]]]:
        """``(start index, end index or 2**62, scope)`` of a change."""
        start = self.spec.index_at(change.start)
        end = self.spec.index_at(change.end)
        return int(start or 0), (2**62 if end is None else int(end)), self._scope(change.segment)

    def _scope(self, segment: Mapping[str, str] | None) -> list[tuple[int, int]]:
        """A segment as ``(dimension position, value position)`` pairs."""
        dims = [d.name for d in self.spec.segment_dims]
        scope = []
        for dim, value in (segment or {}).items():
            if dim not in dims or value not in self.spec.segment_dims[dims.index(dim)].values:
                raise ValueError(f"unknown segment {dim}={value!r}")
            d = dims.index(dim)
            scope.append((d, self.spec.segment_dims[d].values.index(value)))
        return scope

    # -- randomness layout ---------------------------------------------------------------

    def _rng(self, chunk: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(chunk, stream)))

    @property
    def n_chunks(self) -> int:
        """How many chunks cover ``n_events``."""
        return -(-self.n_events // self.spec.chunk_size)

    def _segments(self, k: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Indexes, segment codes and the sent mask of chunk ``k`` (all its indexes)."""
        size = self.spec.chunk_size
        lo = k * size
        n = min(size, self.n_events - lo)
        rng = self._rng(k, _SEGMENT_STREAM)
        segs = [
            np.searchsorted(cum, rng.random(size)[:n], side="right").astype(np.int64)
            for cum in self._seg_cum
        ]
        index = np.arange(lo, lo + n, dtype=np.int64)
        sent = np.ones(n, dtype=bool)
        for pos, change in enumerate(self.spec.changes):
            if isinstance(change, SegmentSilence):
                sent &= ~self._active(index, segs, pos)
        return index, segs, sent

    def _active(self, index: np.ndarray, segs: list[np.ndarray], pos: int) -> np.ndarray:
        """Which of the events ``index`` change ``spec.changes[pos]`` applies to."""
        start, end, scope = self._changes[pos]
        mask = (index >= start) & (index < end)
        for d, value in scope:
            mask &= segs[d] == value
        return mask

    # -- columnar chunks -----------------------------------------------------------------

    def chunks(self) -> Iterator[Chunk]:
        """Columnar chunks in index order: the fast path, with no per-event Python work."""
        for k in range(self.n_chunks):
            yield self._chunk(k)

    def _chunk(self, k: int) -> Chunk:
        spec, size = self.spec, self.spec.chunk_size
        index, segs, sent = self._segments(k)
        n = len(index)
        rng = self._rng(k, _BASE_STREAM)
        # Draw full-size blocks, then cut: the prefix property holds whatever n_events is.
        z = rng.standard_normal((size, len(self._numeric)))[:n]
        cat_u = rng.random((size, len(self._categorical)))[:n]
        label_u = rng.random(size)[:n]
        labelled_u = rng.random(size)[:n]
        delay_z = rng.standard_normal(size)[:n]
        latency_z = rng.standard_normal(size)[:n]

        x = self._mu + self._sigma * z
        cats = np.empty((n, len(self._categorical)), dtype=np.int64)
        for j, cum in enumerate(self._cum):
            cats[:, j] = np.searchsorted(cum, cat_u[:, j], side="right")
        null_num = np.zeros_like(x, dtype=bool)
        null_cat = np.zeros_like(cats, dtype=bool)
        prior = np.zeros(n)
        flips: list[tuple[np.ndarray, AccuracyDrop]] = []
        for pos, change in enumerate(spec.changes):
            if isinstance(change, SegmentSilence):
                continue
            active = self._active(index, segs, pos)
            if not active.any():
                continue
            u = self._rng(k, _CHANGE_STREAM + pos).random(size)[:n]
            if isinstance(change, MeanShift):
                j = self._numeric.index(change.feature)
                x[active, j] += change.sigmas * self._sigma[j]
            elif isinstance(change, VarianceScale):
                j = self._numeric.index(change.feature)
                x[active, j] = self._mu[j] + change.factor * (x[active, j] - self._mu[j])
            elif isinstance(change, NewCategory):
                j = self._categorical.index(change.feature)
                code = self.vocabulary[change.feature].index(change.category)
                cats[active & (u < change.share), j] = code
            elif isinstance(change, NullBurst):
                hit = active & (u < change.rate)
                if change.feature in self._numeric:
                    null_num[hit, self._numeric.index(change.feature)] = True
                else:
                    null_cat[hit, self._categorical.index(change.feature)] = True
            elif isinstance(change, PriorShift):
                prior[active] += self._prior[pos]
            elif isinstance(change, AccuracyDrop):
                flips.append((active & (u < self._flip_rate(change.to_accuracy)), change))

        m = spec.model_features
        x_sent = np.round(x, spec.feature_decimals)
        true_logit = self._logit(x_sent[:, :m], cats)
        x_sent[null_num] = np.nan
        cats[null_cat] = -1
        model_x = np.where(null_num[:, :m], self._mu[:m], x_sent[:, :m])
        score = np.round(_sigmoid(self._logit(model_x, cats)), 6)
        prediction = score >= 0.5
        label = label_u < _sigmoid(true_logit + prior)
        for hit, change in flips:
            if change.to_accuracy < self._a0:
                label[hit] = ~prediction[hit]
            else:
                label[hit] = prediction[hit]

        value = target = None
        if spec.task == "regression":
            noise = self._rng(k, _TARGET_STREAM).standard_normal(size)[:n] * spec.target_noise
            for pos, change in enumerate(spec.changes):
                if isinstance(change, ErrorScale):
                    noise[self._active(index, segs, pos)] *= change.factor
            value = np.round(TARGET_CENTRE + TARGET_SCALE * self._logit(model_x, cats), 4)
            target = np.round(TARGET_CENTRE + TARGET_SCALE * (true_logit + noise), 4)

        t = np.round(spec.epoch + index / spec.rate, 6)
        delay = spec.label_delay_median_s * np.exp(spec.label_delay_sigma * delay_z)
        latency = spec.latency_median_ms * np.exp(spec.latency_sigma * latency_z)
        keep = sent if not sent.all() else slice(None)
        dims = [d.name for d in spec.segment_dims]
        return Chunk(
            index=index[keep],
            time=t[keep],
            segments={name: s[keep] for name, s in zip(dims, segs, strict=True)},
            numeric=x_sent[keep],
            categorical=cats[keep],
            score=score[keep],
            prediction=prediction[keep],
            label=label[keep],
            labelled=(labelled_u < spec.label_fraction)[keep],
            label_time=np.round(t + delay, 6)[keep],
            latency_ms=np.round(latency, 3)[keep],
            value=None if value is None else value[keep],
            target=None if target is None else target[keep],
        )

    def _logit(self, x_model: np.ndarray, cats: np.ndarray) -> np.ndarray:
        logit = self.world.intercept + x_model @ self._coef
        if self._categorical:
            logit = logit + self._effects[cats[:, 0]]
        return logit

    def _flip_rate(self, to_accuracy: float) -> float:
        a0 = self._a0
        if to_accuracy < a0:
            return 1.0 - to_accuracy / a0
        return (to_accuracy - a0) / (1.0 - a0)

    # -- dict streams --------------------------------------------------------------------

    def _prediction_dicts(self, chunk: Chunk) -> Iterator[dict[str, Any]]:
        spec = self.spec
        n = len(chunk)
        nn = len(self._numeric)
        cols = np.empty((n, len(self._feature_names)), dtype=object)
        cols[:, :nn] = chunk.numeric
        nulls = np.isnan(chunk.numeric)
        if nulls.any():
            cols[:, :nn][nulls] = None
        for j, vocab in enumerate(self._cat_obj):
            cols[:, nn + j] = vocab[chunk.categorical[:, j]]
        # One segments dict per combination of values, copied per event.
        combo = np.zeros(n, dtype=np.int64)
        for dim in spec.segment_dims:
            combo = combo * len(dim.values) + chunk.segments[dim.name]
        templates = self._segment_templates
        pos, neg = spec.classes
        names, model_id, version = self._feature_names, spec.model_id, spec.model_version
        if chunk.value is not None:  # regression: a number, no scores
            return (
                {
                    "prediction_id": pid,
                    "model_id": model_id,
                    "model_version": version,
                    "timestamp": ts,
                    "features": dict(zip(names, row)),  # noqa: B905 (equal by construction)
                    "prediction": v,
                    "segments": templates[c].copy(),
                    "latency_ms": lat,
                }
                for pid, ts, row, v, c, lat in zip(
                    self._ids(chunk.index),
                    chunk.time.tolist(),
                    cols.tolist(),
                    chunk.value.tolist(),
                    combo.tolist(),
                    chunk.latency_ms.tolist(),
                    strict=True,
                )
            )
        # A generator, not a list: dicts the caller drops die young, sparing the cyclic GC.
        return (
            {
                "prediction_id": pid,
                "model_id": model_id,
                "model_version": version,
                "timestamp": ts,
                "features": dict(zip(names, row)),  # noqa: B905 (equal by construction)
                "prediction": pos if yes else neg,
                "scores": {pos: p, neg: q},
                "segments": templates[c].copy(),
                "latency_ms": lat,
            }
            for pid, ts, row, yes, p, q, c, lat in zip(
                self._ids(chunk.index),
                chunk.time.tolist(),
                cols.tolist(),
                chunk.prediction.tolist(),
                chunk.score.tolist(),
                np.round(1.0 - chunk.score, 6).tolist(),
                combo.tolist(),
                chunk.latency_ms.tolist(),
                strict=True,
            )
        )

    def _ids(self, index: np.ndarray) -> list[str]:
        prefix = f"{self.seed:x}-"
        return [f"{prefix}{i:09d}" for i in index.tolist()]

    def _label_dicts(
        self, index: np.ndarray, times: np.ndarray, label: np.ndarray
    ) -> Iterator[dict[str, Any]]:
        model_id, (pos, neg) = self.spec.model_id, self.spec.classes
        if self.spec.task == "regression":
            return (
                {"prediction_id": pid, "model_id": model_id, "timestamp": ts, "label": y}
                for pid, ts, y in zip(self._ids(index), times.tolist(), label.tolist(), strict=True)
            )
        return (
            {
                "prediction_id": pid,
                "model_id": model_id,
                "timestamp": ts,
                "label": pos if y else neg,
            }
            for pid, ts, y in zip(self._ids(index), times.tolist(), label.tolist(), strict=True)
        )

    def predictions(self) -> Iterator[dict[str, Any]]:
        """``prediction.v1`` dicts in index (= event time) order."""
        for chunk in self.chunks():
            yield from self._prediction_dicts(chunk)

    def labels(self) -> Iterator[dict[str, Any]]:
        """``label.v1`` dicts in label event-time order (ties: by prediction index)."""
        for event in self._merged(with_predictions=False):
            yield event.value

    def events(self) -> Iterator[Event]:
        """The merged stream: predictions and labels, each at its own event time.

        Ordered by ``(time, kind, index)`` with predictions before labels at equal times. A
        label always comes after its prediction (delays are positive). Labels due after the
        last prediction come at the end.
        """
        return self._merged(with_predictions=True)

    def _merged(self, with_predictions: bool) -> Iterator[Event]:
        # Labels not yet due: (time, index, label) arrays carried from chunk to chunk.
        p_time = np.empty(0)
        p_index = np.empty(0, dtype=np.int64)
        regression = self.spec.task == "regression"
        p_label = np.empty(0, dtype=np.float64 if regression else bool)
        for k in range(self.n_chunks):
            chunk = self._chunk(k)
            m = chunk.labelled
            p_time = np.concatenate([p_time, chunk.label_time[m]])
            p_index = np.concatenate([p_index, chunk.index[m]])
            truth = chunk.target if chunk.target is not None else chunk.label
            p_label = np.concatenate([p_label, truth[m]])
            # Labels before the next chunk's first index go out now; the rest wait.
            last = k == self.n_chunks - 1
            due = (
                np.ones(len(p_time), dtype=bool)
                if last
                else p_time < self.spec.time_of((k + 1) * self.spec.chunk_size)
            )
            order = np.lexsort((p_index[due], p_time[due]))
            l_time, l_index = p_time[due][order], p_index[due][order]
            l_dicts = self._label_dicts(l_index, l_time, p_label[due][order])
            p_time, p_index, p_label = p_time[~due], p_index[~due], p_label[~due]
            labels = zip(l_time.tolist(), l_index.tolist(), l_dicts, strict=True)
            if not with_predictions:
                for lt, li, value in labels:
                    yield Event("label", lt, li, value)
                continue
            # A label goes after every prediction at its time or earlier.
            slot = np.searchsorted(chunk.time, l_time, side="right").tolist()
            preds = zip(
                chunk.time.tolist(),
                chunk.index.tolist(),
                self._prediction_dicts(chunk),
                strict=True,
            )
            j = 0
            for i, (t, index, value) in enumerate(preds):
                while j < len(slot) and slot[j] <= i:
                    lt, li, lv = next(labels)
                    yield Event("label", lt, li, lv)
                    j += 1
                yield Event("prediction", t, index, value)
            for lt, li, lv in labels:
                yield Event("label", lt, li, lv)

    # -- ground truth --------------------------------------------------------------------

    def ground_truth(self) -> list[Injection]:
        """One :class:`Injection` per change in ``spec.changes``, for this run's events.

        Cheap: it draws only the segments, not the features.
        """
        first: list[int | None] = [None] * len(self.spec.changes)
        ordinal: list[int | None] = [None] * len(self.spec.changes)
        seen = [0] * len(self.spec.changes)  # sent events in scope so far
        for k in range(self.n_chunks):
            if all(f is not None for f in first):
                break
            index, segs, sent = self._segments(k)
            for pos, (start, end, scope) in enumerate(self._changes):
                if first[pos] is not None:
                    continue
                in_scope = np.ones(len(index), dtype=bool)
                for d, value in scope:
                    in_scope &= segs[d] == value
                hit = np.flatnonzero(in_scope & (index >= start) & (index < end))
                if len(hit):
                    first[pos] = int(index[hit[0]])
                    ordinal[pos] = seen[pos] + int(np.count_nonzero((in_scope & sent)[: hit[0]]))
                else:
                    seen[pos] += int(np.count_nonzero(in_scope & sent))
        out = []
        for pos, change in enumerate(self.spec.changes):
            start, end, _ = self._changes[pos]
            end_index = None if change.end is None else end
            f = first[pos]
            out.append(
                Injection(
                    position=pos,
                    change=change,
                    kind=change.kind,
                    feature=getattr(change, "feature", None),
                    segment=dict(change.segment or {}),
                    start_index=start,
                    end_index=end_index,
                    start_time=self.spec.time_of(start),
                    end_time=None if end_index is None else self.spec.time_of(end_index),
                    first_affected_index=f,
                    first_affected_time=None if f is None else self.spec.time_of(f),
                    first_affected_ordinal=ordinal[pos],
                )
            )
        return out

    def count_sent(self, segment: Mapping[str, str] | None, until: When) -> int:
        """How many events of ``segment`` (``None`` = all) were sent before ``until``.

        ``until`` is an index or an event time (RFC 3339 or ``datetime``); events at or after it
        are not counted. With :attr:`Injection.first_affected_ordinal`, this turns a detection
        time into a delay counted in the segment's own events.

        >>> w = Workload(WorkloadSpec(), n_events=1_000, seed=0)
        >>> w.count_sent(None, 250), w.count_sent(None, "2024-01-01T00:00:05Z")
        (250, 250)
        """
        stop = min(int(self.spec.index_at(until) or 0), self.n_events)
        scope = self._scope(segment)
        count = 0
        for k in range(-(-stop // self.spec.chunk_size)):
            index, segs, sent = self._segments(k)
            mask = sent & (index < stop)
            for d, value in scope:
                mask &= segs[d] == value
            count += int(np.count_nonzero(mask))
        return count

    # -- reference dataset ---------------------------------------------------------------

    @property
    def reference_columns(self) -> tuple[str, ...]:
        """Columns of :meth:`write_reference`: features, segment dimensions, outputs."""
        dims = tuple(d.name for d in self.spec.segment_dims)
        return (*self._feature_names, *dims, "prediction", "score", "label")

    def reference_rows(self) -> Iterator[dict[str, Any]]:
        """One flat row per sent prediction (see :attr:`reference_columns`).

        ``label`` is ``None`` for predictions that get no label (``label_fraction < 1``).
        """
        pos, neg = self.spec.classes
        for chunk in self.chunks():
            regression = chunk.target is not None
            truth = chunk.target if chunk.target is not None else chunk.label
            for pred, y, has in zip(
                self._prediction_dicts(chunk),
                truth.tolist(),
                chunk.labelled.tolist(),
                strict=True,
            ):
                label = y if regression else (pos if y else neg)
                yield {
                    **pred["features"],
                    **pred["segments"],
                    "prediction": pred["prediction"],
                    "score": None if regression else pred["scores"][pos],
                    "label": label if has else None,
                }

    def write_reference(
        self, csv_path: str | Path | None = None, jsonl_path: str | Path | None = None
    ) -> int:
        """Write the reference dataset as CSV and/or JSON Lines; return the row count.

        CSV: a header of :attr:`reference_columns`, empty cells for nulls. JSONL: one object
        per row with the same keys, ``null`` for nulls.
        """
        columns = self.reference_columns
        rows = 0
        with contextlib.ExitStack() as files:
            writer, jsonl = None, None
            if csv_path is not None:
                writer = csv.writer(
                    files.enter_context(open(csv_path, "w", newline="")), lineterminator="\n"
                )
                writer.writerow(columns)
            if jsonl_path is not None:
                jsonl = files.enter_context(open(jsonl_path, "wb"))
            for row in self.reference_rows():
                rows += 1
                if writer:
                    writer.writerow(["" if row[c] is None else row[c] for c in columns])
                if jsonl:
                    jsonl.write(orjson.dumps(row) + b"\n")
        return rows


# -- module-level conveniences ---------------------------------------------------------------


def generate(spec: WorkloadSpec, n_events: int, seed: int) -> Iterator[Event]:
    """The merged, event-time-ordered stream of :meth:`Workload.events`."""
    return Workload(spec, n_events, seed).events()


def write_reference(
    spec: WorkloadSpec,
    n_events: int,
    seed: int,
    csv_path: str | Path | None = None,
    jsonl_path: str | Path | None = None,
) -> int:
    """Write a reference dataset for ``streamproc baseline build --from-file``; see
    :meth:`Workload.write_reference`."""
    return Workload(spec, n_events, seed).write_reference(csv_path, jsonl_path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streamproc.dev.synthetic``: time generation, optionally write a reference."""
    parser = argparse.ArgumentParser(
        prog="python -m streamproc.dev.synthetic", description=main.__doc__
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", help="write the reference dataset as CSV here")
    parser.add_argument("--jsonl", help="write the reference dataset as JSON Lines here")
    args = parser.parse_args(argv)
    workload = Workload(WorkloadSpec(), args.events, args.seed)
    if args.csv or args.jsonl:
        rows = workload.write_reference(args.csv, args.jsonl)
        print(f"wrote {rows} reference rows")
        return 0
    began = time.perf_counter()
    n = sum(len(c) for c in workload.chunks())
    columnar = time.perf_counter() - began
    began = time.perf_counter()
    size = sum(len(orjson.dumps(e.value)) for e in workload.events())
    merged = time.perf_counter() - began
    print(f"columnar chunks: {n} events in {columnar:.2f} s ({n / columnar:,.0f}/s)")
    print(
        f"merged dicts + orjson: {n} predictions with labels in {merged:.2f} s "
        f"({n / merged:,.0f} predictions/s, {size / n:.0f} bytes/event)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())


def reference_profile(
    spec: WorkloadSpec, n_rows: int = 30_000, seed: int = 101, source: str = "synthetic reference"
) -> ReferenceProfile:
    """A baseline for ``spec``'s model: the same world, none of its injected changes.

    Segment dimensions are the spec's (``country``, ``device``); the demo, the tests and the
    benchmarks compare live traffic against it.
    """
    import dataclasses

    from streamproc.baseline import ProfileBuilder

    stationary = dataclasses.replace(spec, changes=())
    dims = [d.name for d in stationary.segment_dims]
    builder = ProfileBuilder(stationary.model_id, stationary.model_version, dims)
    features = (*stationary.numeric_features, *stationary.categorical_features)
    for row in Workload(stationary, n_rows, seed=seed).reference_rows():
        builder.add(
            {k: row[k] for k in features},
            prediction=row["prediction"],
            score=row["score"],
            label=row["label"],
            segments={d: row[d] for d in dims},
        )
    return builder.build(source)
