"""The reference profile: the Structs a baseline is made of, its segment keys and its bytes.

A :class:`ReferenceProfile` holds one :class:`SegmentReference` per segment key (``"all"``,
``"dim=value"``), each with a :class:`NumericReference` or :class:`CategoricalReference` per
feature and the outputs' references. This module also owns the one stringification of
categories (:func:`category_value`), the segment-key text (:func:`segment_key`,
:func:`segment_keys_of`) and the outputs of a ``prediction.v1`` event (:func:`outputs_of`),
which reference and live data share.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Literal

import msgspec
import numpy as np

from streamproc.errors import StateEncodingError, StreamprocError
from streamproc.sketch import OTHER, CategoricalSketch, NumericSketch, pack_state, unpack_state

if TYPE_CHECKING:
    from streamproc.contracts import Prediction
    from streamproc.judge.stats import CalibrationMap

__all__ = [
    "ALL",
    "DEFAULT_BINS",
    "DEFAULT_MAX_CATEGORIES",
    "DEFAULT_MAX_SEGMENT_VALUES",
    "MAGIC",
    "TASKS",
    "BaselineError",
    "CalibrationReference",
    "CategoricalReference",
    "ColumnReference",
    "LossModelReference",
    "LossTreeReference",
    "NumericReference",
    "ReconstructionReference",
    "ReferenceProfile",
    "SegmentReference",
    "Task",
    "category_value",
    "outputs_of",
    "segment_key",
    "segment_keys_of",
]

MAGIC: Final = b"SPR1"
"""Magic and format version of a stored :class:`ReferenceProfile`."""

ALL: Final = "all"
"""The segment key of all traffic."""

Task = Literal["classification", "regression"]
TASKS: Final = ("classification", "regression")
"""What a model does: predicts classes (accuracy, calibration, CBPE) or numbers (MAE, RMSE,
MAPE)."""

DEFAULT_BINS: Final = 10
DEFAULT_MAX_CATEGORIES: Final = 1000
DEFAULT_MAX_SEGMENT_VALUES: Final = 20


class BaselineError(StreamprocError):
    """A baseline could not be built, stored or read; the message says what and where."""


# -- segment keys and values --------------------------------------------------------------------


def segment_key(dim: str | None, value: str | None) -> str:
    """The key of a segment: ``"all"`` without a dimension, else ``"dim=value"``.

    Parameters
    ----------
    dim
        A segment dimension, or ``None`` for all traffic.
    value
        The dimension's value (``None`` only together with ``dim=None``).

    Raises
    ------
    ValueError
        A dimension without a value, or a value without a dimension.

    Examples
    --------
    >>> segment_key(None, None), segment_key("country", "DE")
    ('all', 'country=DE')
    """
    if dim is None:
        if value is not None:
            raise ValueError(f"segment value {value!r} without a dimension")
        return ALL
    if value is None:
        raise ValueError(f"segment dimension {dim!r} needs a value")
    return f"{dim}={value}"


def segment_keys_of(
    segments: Mapping[str, str], allowed: Mapping[str, set[str]] | None = None
) -> list[str]:
    """The segment keys an event belongs to: ``"all"``, then one per dimension (sorted).

    Parameters
    ----------
    segments
        The event's segments, dimension -> value.
    allowed
        Per dimension, the values that have a segment of their own (e.g.
        :meth:`ReferenceProfile.segment_values`). With it, only these dimensions count and a
        value outside the set maps to ``"dim=__other__"``; without it every dimension and value
        of the event counts.

    Examples
    --------
    >>> segment_keys_of({"device": "ios", "country": "DE"})
    ['all', 'country=DE', 'device=ios']
    >>> segment_keys_of({"country": "XX", "plan": "pro"}, {"country": {"DE", "FR"}})
    ['all', 'country=__other__']
    """
    keys = [ALL]
    if allowed is None:
        for dim in sorted(segments):
            value = segments[dim]
            if value is not None:
                keys.append(f"{dim}={value}")
        return keys
    for dim in sorted(allowed):
        value = segments.get(dim)
        if value is not None:
            keys.append(f"{dim}={value if value in allowed[dim] else OTHER}")
    return keys


def category_value(value: object) -> str | None:
    """A value as a category: the one stringification reference and live data share.

    Strings stay as they are; booleans become their JSON literals ``"true"``/``"false"``;
    integral numbers lose their ``.0`` (JSON ``1`` and ``1.0`` decode alike in the event
    contract); NaN, infinities and ``None`` are nulls. (A CSV column holding only
    ``true``/``false`` cells, in any case, is read as booleans.)

    Examples
    --------
    >>> [category_value(v) for v in ("DE", True, 3, 3.0, 0.5, float("nan"), None)]
    ['DE', 'true', '3', '3', '0.5', None, None]
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            return None
        if f.is_integer() and abs(f) < 2**53:
            return str(int(f))
        return repr(f)
    return str(value)


# -- the profile --------------------------------------------------------------------------------


class NumericReference(msgspec.Struct, frozen=True, kw_only=True, tag="numeric"):
    """A numeric column's reference: quantile bins and moments.

    ``probs`` has ``len(edges) + 1`` entries, the shares of the non-null values in the
    open-ended, right-closed bins of a :class:`~streamproc.sketch.NumericSketch` with these
    edges. With no non-null value, ``edges`` and ``probs`` are empty and the moments ``None``;
    ``std`` (sample, ``ddof=1``) is ``None`` under two values.
    """

    count: int
    nulls: int
    edges: list[float]
    probs: list[float]
    mean: float | None
    std: float | None
    min: float | None
    max: float | None

    @property
    def null_rate(self) -> float:
        """Share of nulls among all rows (0 for an empty reference)."""
        total = self.count + self.nulls
        return self.nulls / total if total else 0.0

    def sketch(self) -> NumericSketch:
        """An empty window sketch binned like the reference, counting values outside its range.

        Raises
        ------
        ValueError
            The reference holds no value (it has no bins).
        """
        if not self.count:
            raise ValueError("an empty numeric reference has no bins")
        return NumericSketch(
            self.edges,
            ref_min=-math.inf if self.min is None else self.min,
            ref_max=math.inf if self.max is None else self.max,
        )


class CategoricalReference(msgspec.Struct, frozen=True, kw_only=True, tag="categorical"):
    """A categorical column's reference: category -> share among the non-null values.

    Categories are ordered by descending share; ``"__other__"`` holds the values beyond the
    builder's ``max_categories`` (see :class:`~streamproc.sketch.CategoricalSketch`).
    """

    count: int
    nulls: int
    probs: dict[str, float]

    @property
    def null_rate(self) -> float:
        """Share of nulls among all rows (0 for an empty reference)."""
        total = self.count + self.nulls
        return self.nulls / total if total else 0.0

    def sketch(self, max_categories: int = DEFAULT_MAX_CATEGORIES) -> CategoricalSketch:
        """An empty window sketch with the given cap (use the profile's ``max_categories``)."""
        return CategoricalSketch(max_categories)


ColumnReference = NumericReference | CategoricalReference


class CalibrationReference(msgspec.Struct, frozen=True, kw_only=True):
    """The data of a :class:`~streamproc.stats.CalibrationMap`: accuracy per confidence bin."""

    edges: list[float]
    accuracy: list[float]
    counts: list[int]

    @property
    def bins(self) -> int:
        """Number of confidence bins."""
        return len(self.accuracy)

    def to_map(self) -> CalibrationMap:
        """The :class:`~streamproc.stats.CalibrationMap` for CBPE."""
        from streamproc.judge.stats import CalibrationMap

        return CalibrationMap(
            edges=np.asarray(self.edges, dtype=np.float64),
            accuracy=np.asarray(self.accuracy, dtype=np.float64),
            counts=np.asarray(self.counts, dtype=np.int64),
        )


class ClassPerformanceReference(msgspec.Struct, frozen=True, kw_only=True):
    """What a classifier's per-class performance figures need (see :mod:`streamproc.judge.cbpe`).

    Attributes
    ----------
    classes
        The classes scored, sorted.
    positive_class
        The class whose figures a binary model reports; ``None`` for a multiclass model
        (macro averages one-vs-rest).
    rates
        Per class, ``P(label = class | its score)`` in each bin of the fixed score grid,
        fitted (isotonic) on the whole reference's labelled rows.
    labelled
        Labelled, fully scored reference rows of the segment.
    realised
        The segment's reference figures: metric -> ``[value, lower, upper]``.
    """

    classes: list[str]
    positive_class: str | None = None
    rates: dict[str, list[float]]
    labelled: int
    realised: dict[str, list[float]] = {}


class LossTreeReference(msgspec.Struct, frozen=True, kw_only=True):
    """One regression tree of a :class:`LossModelReference`, as node arrays (node 0 the root).

    Node ``i`` splits on input ``feature[i]`` (``-1``: a leaf): a numeric input sends
    ``value <= threshold[i]`` to ``left[i]`` (nulls and non-numbers to ``right[i]``), a
    categorical one the category numbered ``threshold[i]``. ``value[i]`` is the mean loss of
    the ``count[i]`` reference rows in the node.
    """

    feature: list[int]
    threshold: list[float]
    left: list[int]
    right: list[int]
    value: list[float]
    count: list[int]


class LossModelReference(msgspec.Struct, frozen=True, kw_only=True):
    """A regression model's expected losses given its prediction and features, for the
    estimated MAE, RMSE and MAPE of unlabelled windows (see :mod:`streamproc.aggregate.losses`).

    Attributes
    ----------
    inputs
        What the trees split on: ``None`` is the prediction, a name a feature.
    categories
        Per categorical input, its categories in the order the trees number them.
    trees
        ``"abs"``, ``"sq"`` and ``"pct"``: the trees of the absolute, squared and absolute
        percentage error (the last fitted on the rows whose label is not zero).
    labelled
        Labelled reference rows the trees were fitted on (of the whole reference: every
        segment shares the model, as the per-class calibration of a classifier).
    """

    inputs: list[str | None]
    categories: dict[str, list[str]] = {}
    trees: dict[str, LossTreeReference] = {}
    labelled: int = 0


class ReconstructionReference(msgspec.Struct, frozen=True, kw_only=True):
    """A segment's PCA of its numeric features, for multivariate drift (data reconstruction).

    A row's numeric features ``features`` are standardised with ``means`` and ``stds`` (the
    features' own reference moments), nulls and non-numbers set to 0 (the reference mean), and
    clipped and rounded as :func:`streamproc.aggregate.multivariate.standardised` does; its
    reconstruction error is the squared distance between that vector ``z`` and its projection
    on the ``components`` (orthonormal rows, the leading eigenvectors of the reference's
    ``E[z zᵀ]``, as many as keep ``explained`` of its trace). ``error_mean``, ``error_std`` and
    ``error_skew`` describe the error over the ``count`` reference rows: a window's mean error
    is judged against them.
    """

    features: list[str]
    means: list[float]
    stds: list[float]
    components: list[list[float]]
    explained: float
    count: int
    error_mean: float
    error_std: float
    error_skew: float


class SegmentReference(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a segment's monitors compare with.

    Attributes
    ----------
    count
        Reference rows in the segment.
    rate_per_s
        Rows per second of event time, when the source had timestamps.
    features
        Per feature, its numeric or categorical reference.
    prediction, score, label
        Output distributions (``None`` when the source had none).
    accuracy
        Share of labelled predictions equal to their label (classification).
    mae
        Mean absolute error of labelled predictions (regression).
    calibration
        Accuracy per confidence bin on labelled rows, for CBPE.
    top1_rate
        Share of the most frequent predicted class (classification).
    class_performance
        Per-class calibration and the reference's ROC AUC, F1, precision, recall and
        specificity, when rows carried a score per class (or a binary positive-class score)
        and labels.
    task
        ``"classification"`` or ``"regression"``, as ``baseline build`` decided it; ``None`` in
        profiles stored before the task was (see :meth:`task_of`).
    rmse
        Root mean squared error of labelled predictions (regression).
    mape
        Mean absolute percentage error, ``|prediction - label| / |label|``, over the labelled
        predictions whose label is not zero (regression); ``mape_labelled`` of them.
    reconstruction
        The PCA of the numeric features and the reference's reconstruction error, for
        multivariate drift (``None``: fewer than two usable numeric features or too few
        rows, or a baseline built before it existed; the check is then skipped).
    losses
        The loss trees of a regression model with labelled reference rows, for the estimated
        MAE, RMSE and MAPE of windows without labels (``None``: a classifier, no labels, or a
        baseline built before them).
    """

    count: int
    rate_per_s: float | None = None
    features: dict[str, ColumnReference] = {}
    prediction: ColumnReference | None = None
    score: NumericReference | None = None
    label: ColumnReference | None = None
    accuracy: float | None = None
    mae: float | None = None
    calibration: CalibrationReference | None = None
    top1_rate: float | None = None
    # Added later: left out of the fingerprint while unset (see ``fingerprint_bytes``), so
    # references stored before keep theirs.
    class_performance: ClassPerformanceReference | None = None
    task: Task | None = None
    rmse: float | None = None
    mape: float | None = None
    mape_labelled: int | None = None
    reconstruction: ReconstructionReference | None = None
    losses: LossModelReference | None = None

    def task_of(self) -> Task:
        """The segment's task: the stored one, else inferred as it was decided before it was
        stored (classification figures make a classifier; an MAE or a numeric prediction, a
        regression model).

        >>> SegmentReference(count=1, task="regression").task_of()
        'regression'
        >>> old = SegmentReference(count=1, accuracy=0.9), SegmentReference(count=1, mae=2.0)
        >>> [s.task_of() for s in old]
        ['classification', 'regression']
        """
        if self.task is not None:
            return self.task
        if self.accuracy is not None or self.calibration is not None or self.top1_rate is not None:
            return "classification"
        if self.mae is not None or isinstance(self.prediction, NumericReference):
            return "regression"
        return "classification"

    def error_sd(self) -> float | None:
        """Standard deviation of the absolute error on the reference, ``sqrt(rmse² - mae²)``
        (regression with both figures), else ``None``.

        >>> SegmentReference(count=4, mae=3.0, rmse=5.0).error_sd()
        4.0
        """
        if self.mae is None or self.rmse is None:
            return None
        return math.sqrt(max(self.rmse * self.rmse - self.mae * self.mae, 0.0))

    def fingerprint_bytes(self) -> bytes:
        """The bytes a reference's fingerprint hashes: the msgpack form, without the fields
        added after the first format while they are unset, so that a profile stored before
        them has the same fingerprint once read back."""
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        for name in _LATER_FIELDS:
            if fields[name] is None:
                del fields[name]
        return msgspec.msgpack.encode(fields)


_LATER_FIELDS: Final = (
    "class_performance", "task", "rmse", "mape", "mape_labelled", "reconstruction", "losses",
)  # fmt: skip


class ReferenceProfile(msgspec.Struct, frozen=True, kw_only=True):
    """One model version's reference, per segment, with a versioned byte form.

    Attributes
    ----------
    model_id, model_version
        The model the reference describes.
    created_at
        When it was built (ISO 8601, UTC).
    source
        Where the rows came from (a file path or a topic range).
    bins
        Quantile bins asked for per numeric column (ties give fewer) and calibration bins.
    segment_dims
        The segment dimensions, in the order given.
    segments
        Segment key -> :class:`SegmentReference`; ``"all"`` is always there.
    positive_class
        The class whose probability ``score`` is (binary classifiers), or ``None`` when
        ``score`` is the confidence of the predicted class.
    max_categories, max_segment_values
        The caps used; window sketches should use the same ``max_categories``.
    """

    model_id: str
    model_version: str
    created_at: str
    source: str
    bins: int
    segment_dims: list[str]
    segments: dict[str, SegmentReference]
    positive_class: str | None = None
    max_categories: int = DEFAULT_MAX_CATEGORIES
    max_segment_values: int = DEFAULT_MAX_SEGMENT_VALUES

    @property
    def task(self) -> Task:
        """The model's task, as stored with the ``"all"`` segment (inferred for profiles stored
        before it was, see :meth:`SegmentReference.task_of`)."""
        seg = self.segments.get(ALL)
        return seg.task_of() if seg is not None else "classification"

    @property
    def rows(self) -> int:
        """Reference rows (of the ``"all"`` segment)."""
        seg = self.segments.get(ALL)
        return seg.count if seg else 0

    def segment(self, key: str) -> SegmentReference | None:
        """The reference of segment ``key`` (``"all"``, ``"country=DE"``), if there is one."""
        return self.segments.get(key)

    def segment_values(self) -> dict[str, set[str]]:
        """Per dimension, the values that have a segment of their own (not ``__other__``)."""
        out: dict[str, set[str]] = {dim: set() for dim in self.segment_dims}
        for key in self.segments:
            dim, sep, value = key.partition("=")
            if sep and dim in out and value != OTHER:
                out[dim].add(value)
        return out

    def segment_keys(self, segments: Mapping[str, str]) -> list[str]:
        """The keys of the segments an event with ``segments`` feeds (see
        :func:`segment_keys_of`); a key may lack a reference (a new value when the reference
        had no ``__other__`` segment)."""
        return segment_keys_of(segments, self.segment_values())

    def to_bytes(self) -> bytes:
        """The versioned stored form: ``b"SPR1"`` + msgpack."""
        return pack_state(MAGIC, self)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ReferenceProfile:
        """Read a profile written by :meth:`to_bytes`.

        Raises
        ------
        StateEncodingError
            Another magic or version, or a payload that is not a consistent profile.
        """
        profile = unpack_state(blob, MAGIC, cls, "ReferenceProfile")
        _check_profile(profile)
        return profile


def _check_profile(profile: ReferenceProfile) -> None:
    def bad(why: str) -> StateEncodingError:
        return StateEncodingError(f"corrupt ReferenceProfile blob: {why}")

    if ALL not in profile.segments:
        raise bad("no 'all' segment")
    for key, seg in profile.segments.items():
        columns = [*seg.features.values(), seg.prediction, seg.score, seg.label]
        for ref in columns:
            if isinstance(ref, NumericReference):
                want = len(ref.edges) + 1 if ref.count else 0
                increasing = all(np.diff(ref.edges) > 0)
                if len(ref.probs) != want or not increasing:
                    raise bad(f"segment {key!r}: bins do not match edges")
            if ref is not None and (ref.count < 0 or ref.nulls < 0):
                raise bad(f"segment {key!r}: negative counts")
        cal = seg.calibration
        if cal is not None and not len(cal.edges) + 1 == len(cal.accuracy) == len(cal.counts):
            raise bad(f"segment {key!r}: calibration bins do not match")


def outputs_of(
    event: Prediction, positive_class: str | None = None
) -> tuple[float | str | bool, float | None, float | None]:
    """``(prediction, score, confidence)`` of a ``prediction.v1`` event.

    ``confidence`` is the probability of the predicted class (``scores[prediction]``, else the
    largest score, else the event's ``confidence``). ``score`` is ``scores[positive_class]``
    when the event scores that class, otherwise the confidence: the rule a
    :class:`ReferenceProfile` states with its ``positive_class``.

    Examples
    --------
    >>> from streamproc.contracts import Prediction
    >>> e = Prediction(prediction_id="p", model_id="m", model_version="1", prediction="no",
    ...                scores={"yes": 0.3, "no": 0.7})
    >>> outputs_of(e, "yes"), outputs_of(e)
    (('no', 0.3, 0.7), ('no', 0.7, 0.7))
    """
    scores = event.scores
    confidence = confidence_of(event.prediction, scores, event.confidence)
    if scores and positive_class is not None and positive_class in scores:
        return event.prediction, scores[positive_class], confidence
    return event.prediction, confidence, confidence


def confidence_of(
    prediction: object, scores: Mapping[str, float] | None, confidence: float | None
) -> float | None:
    """The confidence of one prediction, the one rule of baselines, the live path and replay:
    the score of the predicted class (``scores[prediction]``), else the largest score (scores
    that do not name the predicted class), else the event's ``confidence``.

    The predicted class's score, not the largest one: a model whose decision threshold is not
    0.5 predicts a class whose score is not the largest, and its CBPE estimate would be biased
    if live events and the baseline's calibration disagreed on which score they mean.

    >>> confidence_of("no", {"yes": 0.55, "no": 0.45}, None)  # threshold 0.6 on "yes"
    0.45
    >>> confidence_of("maybe", {"yes": 0.8, "no": 0.2}, None), confidence_of(True, None, 0.6)
    (0.8, 0.6)
    """
    if scores:
        key = category_value(prediction)
        return scores[key] if key in scores else max(scores.values())
    return confidence
