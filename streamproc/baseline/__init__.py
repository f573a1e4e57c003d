"""Reference baselines: what every monitor compares its live windows with.

A :class:`ReferenceProfile` summarises one model version's reference traffic (its training or
validation data, a quiet range of its production topic, or the first events a monitor saw) per
*segment*: all traffic, and each value of each segment dimension on its own. For every feature
it keeps the distribution a monitor needs for PSI, JS, KS, chi², null-rate and range checks;
for the model's outputs the prediction, score and label distributions, accuracy or MAE, and a
calibration map for confidence-based performance estimation (CBPE).

Segments
    Keys are ``"all"`` and ``"dim=value"`` (``"country=DE"``): monitors run per value of one
    dimension, never per combination. Per dimension the ``max_segment_values`` most frequent
    values get their own segment and the others share ``"dim=__other__"``.
    :func:`segment_keys_of` maps an event's segments to the keys whose monitors it feeds.

Feature types
    A column whose non-null values are all numbers is numeric; anything else (booleans
    included) is categorical, its values stringified by :func:`category_value`. Numeric bins are
    :func:`~streamproc.sketch.reference_edges` quantiles, and the bin probabilities come from a
    :class:`~streamproc.sketch.NumericSketch`, so a window sketch built with
    :meth:`NumericReference.sketch` bins live values exactly as the reference was binned.

Outputs
    ``score`` is the probability of :attr:`ReferenceProfile.positive_class` when the profile
    names one (binary classifiers), otherwise the confidence of the predicted class.
    :func:`outputs_of` turns a ``prediction.v1`` event into (prediction, score, confidence) by
    that rule, for reference and live events alike.

Stored form
    ``to_bytes()`` is ``b"SPR1"`` followed by the msgpack encoding of the profile
    (:func:`~streamproc.sketch.pack_state`); nothing is ever pickled. :class:`BaselineStore`
    keeps profiles in Redis under ``{prefix}:baseline:{model_id}:{model_version}``.

Examples
--------
>>> b = ProfileBuilder("churn", "1", segment_dims=["country"], bins=4)
>>> for i in range(8):
...     b.add({"age": 20 + i, "plan": "pro" if i % 2 else "free"},
...           prediction="yes" if i < 3 else "no", score=0.9 if i < 3 else 0.2,
...           label="yes" if i < 4 else "no", segments={"country": "DE" if i < 6 else "FR"})
>>> profile = b.build(source="doctest", created_at="2024-01-01T00:00:00Z")
>>> list(profile.segments)
['all', 'country=DE', 'country=FR']
>>> age = profile.segments["all"].features["age"]
>>> age.edges, age.probs
([21.0, 23.0, 25.0], [0.25, 0.25, 0.25, 0.25])
>>> profile.segments["all"].features["plan"].probs
{'free': 0.5, 'pro': 0.5}
>>> profile.segments["all"].accuracy, profile.positive_class
(0.875, 'yes')
>>> segment_keys_of({"country": "IT", "device": "ios"}, profile.segment_values())
['all', 'country=__other__']
>>> ReferenceProfile.from_bytes(profile.to_bytes()) == profile
True
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import numbers
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from streamproc.errors import StateEncodingError, StreamprocError
from streamproc.kafka import topics
from streamproc.sketch import (
    OTHER,
    CalibrationSketch,
    CategoricalSketch,
    NumericSketch,
    pack_state,
    reference_edges,
    unpack_state,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from streamproc.config import Config
    from streamproc.contracts import Prediction
    from streamproc.judge.stats import CalibrationMap

__all__ = [
    "ALL",
    "MAGIC",
    "AsyncBaselineStore",
    "BaselineError",
    "BaselineStore",
    "CalibrationReference",
    "CategoricalReference",
    "NumericReference",
    "ProfileBuilder",
    "ReferenceProfile",
    "SegmentReference",
    "category_value",
    "describe",
    "outputs_of",
    "profile_from_file",
    "profile_from_topic",
    "read_table",
    "segment_key",
    "segment_keys_of",
]

MAGIC: Final = b"SPR1"
"""Magic and format version of a stored :class:`ReferenceProfile`."""

ALL: Final = "all"
"""The segment key of all traffic."""

DEFAULT_BINS: Final = 10
DEFAULT_MAX_CATEGORIES: Final = 1000
DEFAULT_MAX_SEGMENT_VALUES: Final = 20

FILE_TYPES: Final = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
"""Reference file suffixes :func:`profile_from_file` reads."""

RESERVED_COLUMNS: Final = ("prediction", "label", "score", "timestamp")
"""File columns that are not features (nor are ``score_<class>`` and segment columns)."""


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
        Mean absolute error of labelled predictions (numeric predictions and labels).
    calibration
        Accuracy per confidence bin on labelled rows, for CBPE.
    top1_rate
        Share of the most frequent predicted class (classification).
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


# -- turning events and columns into values -----------------------------------------------------


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
    if scores:
        key = category_value(event.prediction)
        confidence = scores[key] if key in scores else max(scores.values())
        if positive_class is not None and positive_class in scores:
            return event.prediction, scores[positive_class], confidence
        return event.prediction, confidence, confidence
    return event.prediction, event.confidence, event.confidence


_CONTAINERS: Final = (dict, list, tuple, set)


def _is_number_type(t: type) -> bool:
    return issubclass(t, numbers.Real) and not issubclass(t, bool | np.bool_)


def _column(values: Sequence[Any] | NDArray[Any]) -> NDArray[Any]:
    """A typed column: float64 (NaN = null) when every non-null value is a number, else an
    object array of category strings and ``None``."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "iuf":
            return values.astype(np.float64)
        values = values.tolist()
    else:
        values = list(values)
    types = set(map(type, values))
    nulls = type(None) in types
    types.discard(type(None))
    if types <= {float, int} or all(_is_number_type(t) for t in types):
        if not nulls:
            return np.array(values, dtype=np.float64)
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    if types <= {str}:
        return _object_array(values)
    for t in types:
        if issubclass(t, _CONTAINERS):
            raise BaselineError(
                f"a column holds a {t.__name__}; values must be numbers, strings, booleans or null"
            )
    return _object_array([category_value(v) for v in values])


def _object_array(values: Sequence[Any]) -> NDArray[np.object_]:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _as_categories(column: NDArray[Any]) -> NDArray[np.object_]:
    if column.dtype == object:
        return column
    return _object_array([category_value(v) for v in column.tolist()])


def _float_column(values: Sequence[Any] | NDArray[Any], what: str) -> NDArray[np.float64]:
    col = _column(values)
    if col.dtype == object:
        bad = next(v for v in col.tolist() if v is not None)
        raise BaselineError(f"{what} must be a number, got {bad!r}")
    return col


def _present(column: NDArray[Any]) -> NDArray[np.bool_]:
    if column.dtype == object:
        return np.asarray(np.not_equal(column, None), dtype=bool)
    return np.isfinite(column)


def _pad(values: list[Any], n: int) -> list[Any]:
    if len(values) < n:
        values.extend([None] * (n - len(values)))
    return values


@dataclass(frozen=True)
class _Factor:
    """A categorical column as codes (-1 = null) into its distinct values, for fast counting."""

    codes: NDArray[np.int64]
    values: list[str]

    @classmethod
    def of(cls, column: NDArray[np.object_]) -> _Factor:
        values = column.tolist()
        distinct = [v for v in dict.fromkeys(values) if v is not None]
        lookup: dict[str | None, int] = {v: i for i, v in enumerate(distinct)}
        lookup[None] = -1
        codes = np.fromiter(map(lookup.__getitem__, values), np.int64, len(values))
        return cls(codes, distinct)

    def counts(self, rows: NDArray[np.intp]) -> tuple[NDArray[np.int64], int]:
        """Count per value, and nulls, over ``rows``."""
        codes = self.codes[rows]
        known = codes[codes >= 0]
        return np.bincount(known, minlength=len(self.values)), int(codes.size - known.size)


Prepared = NDArray[np.float64] | _Factor


def _prepare(column: NDArray[Any]) -> Prepared:
    return _Factor.of(column) if column.dtype == object else column


# -- building -----------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Rows in columns: float64 (NaN = null) or object (str | None) arrays, all of length n."""

    n: int
    features: dict[str, NDArray[Any]]
    prediction: NDArray[Any]
    score: NDArray[np.float64]
    confidence: NDArray[np.float64]
    label: NDArray[Any]
    segments: dict[str, NDArray[np.object_]]
    event_time: NDArray[np.float64]


def _concat(pieces: Sequence[NDArray[Any]]) -> NDArray[Any]:
    if len(pieces) == 1:
        return pieces[0]
    if any(p.dtype == object for p in pieces):
        return np.concatenate([_as_categories(p) for p in pieces])
    return np.concatenate(pieces)


def _nan(n: int) -> NDArray[np.float64]:
    return np.full(n, math.nan)


def _merge_chunks(chunks: Sequence[_Chunk], dims: Sequence[str]) -> _Chunk:
    if len(chunks) == 1:
        return chunks[0]
    names = list(dict.fromkeys(name for c in chunks for name in c.features))
    return _Chunk(
        n=sum(c.n for c in chunks),
        features={
            name: _concat([c.features.get(name, _nan(c.n)) for c in chunks]) for name in names
        },
        prediction=_concat([c.prediction for c in chunks]),
        score=np.concatenate([c.score for c in chunks]),
        confidence=np.concatenate([c.confidence for c in chunks]),
        label=_concat([c.label for c in chunks]),
        segments={d: np.concatenate([c.segments[d] for c in chunks]) for d in dims},
        event_time=np.concatenate([c.event_time for c in chunks]),
    )


@dataclass
class _Pending:
    """Rows added one at a time, kept as Python lists until the next build or columnar add."""

    n: int = 0
    features: dict[str, list[Any]] = field(default_factory=dict)
    prediction: list[Any] = field(default_factory=list)
    score: list[Any] = field(default_factory=list)
    confidence: list[Any] = field(default_factory=list)
    label: list[Any] = field(default_factory=list)
    segments: dict[str, list[Any]] = field(default_factory=dict)
    event_time: list[Any] = field(default_factory=list)


class ProfileBuilder:
    """Accumulates reference rows, then builds a :class:`ReferenceProfile` from them.

    Rows come one at a time (:meth:`add`, e.g. a monitor's warm-up events) or as columns
    (:meth:`add_columns`, e.g. a file). The builder keeps the rows (quantile edges need them
    all) and can :meth:`build` any number of times, with more rows added in between.

    Parameters
    ----------
    model_id, model_version
        The model the reference describes.
    segment_dims
        Segment dimensions; other keys of an event's segments are ignored.
    bins
        Quantile bins per numeric column, and confidence bins of the calibration map.
    max_categories
        Categories counted individually per categorical column (see
        :class:`~streamproc.sketch.CategoricalSketch`).
    max_segment_values
        Values per dimension with a segment of their own; the rest share ``dim=__other__``.
    positive_class
        The class whose probability the rows' ``score`` is; inferred when ``None`` (see
        :meth:`build`).
    """

    def __init__(
        self,
        model_id: str,
        model_version: str,
        segment_dims: Sequence[str] = (),
        bins: int = DEFAULT_BINS,
        max_categories: int = DEFAULT_MAX_CATEGORIES,
        max_segment_values: int = DEFAULT_MAX_SEGMENT_VALUES,
        positive_class: str | None = None,
    ) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if max_categories < 1 or max_segment_values < 1:
            raise ValueError("max_categories and max_segment_values must be >= 1")
        dims = list(segment_dims)
        if len(set(dims)) != len(dims):
            raise ValueError(f"duplicate segment dimensions in {dims}")
        self.model_id = model_id
        self.model_version = model_version
        self.segment_dims = dims
        self.bins = bins
        self.max_categories = max_categories
        self.max_segment_values = max_segment_values
        self.positive_class = positive_class
        self._chunks: list[_Chunk] = []
        self._pending = _Pending(segments={d: [] for d in dims})

    @property
    def rows(self) -> int:
        """Rows added so far."""
        return sum(c.n for c in self._chunks) + self._pending.n

    def add(
        self,
        features: Mapping[str, Any],
        prediction: Any = None,
        score: float | None = None,
        label: Any = None,
        segments: Mapping[str, str] | None = None,
        event_time: float | None = None,
        *,
        confidence: float | None = None,
    ) -> None:
        """Add one row.

        Parameters
        ----------
        features
            Feature name -> number, string, boolean or ``None``; a feature missing from a row
            is a null there.
        prediction, label
            The model's output and the ground truth, when known.
        score
            The positive-class probability (binary) or the confidence.
        segments
            Dimension -> value; only the builder's ``segment_dims`` are used.
        event_time
            Unix seconds, for ``rate_per_s``.
        confidence
            Probability of the predicted class, for the calibration map; derived from
            ``score`` when ``None`` (see :meth:`build`).
        """
        p = self._pending
        i = p.n
        cols = p.features
        for name, value in features.items():
            col = cols.get(name)
            if col is None:
                col = cols[name] = [None] * i
            elif len(col) < i:
                col.extend([None] * (i - len(col)))
            col.append(value)
        p.prediction.append(prediction)
        p.score.append(score)
        p.confidence.append(confidence)
        p.label.append(label)
        p.event_time.append(event_time)
        segs = segments or {}
        for dim, col in p.segments.items():
            col.append(segs.get(dim))
        p.n = i + 1

    def add_columns(
        self,
        features: Mapping[str, Sequence[Any] | NDArray[Any]],
        *,
        prediction: Sequence[Any] | NDArray[Any] | None = None,
        score: Sequence[Any] | NDArray[Any] | None = None,
        confidence: Sequence[Any] | NDArray[Any] | None = None,
        label: Sequence[Any] | NDArray[Any] | None = None,
        segments: Mapping[str, Sequence[Any] | NDArray[Any]] | None = None,
        event_time: Sequence[Any] | NDArray[Any] | None = None,
    ) -> None:
        """Add many rows given as equally long columns (vectorised; what the file readers use).

        Arguments mean what they mean in :meth:`add`, one value per row; ``None`` for a whole
        column means "not known" for every row.

        Raises
        ------
        ValueError
            Columns of different lengths, or no column at all.
        """
        given = {
            **{f"feature {k!r}": v for k, v in features.items()},
            **{f"segment {k!r}": v for k, v in (segments or {}).items()},
            "prediction": prediction,
            "score": score,
            "confidence": confidence,
            "label": label,
            "event_time": event_time,
        }
        lengths = {name: len(col) for name, col in given.items() if col is not None}
        if not lengths:
            raise ValueError("add_columns needs at least one column")
        n = next(iter(lengths.values()))
        if any(length != n for length in lengths.values()):
            raise ValueError(f"columns differ in length: {lengths}")
        self._flush()

        def optional(col: Sequence[Any] | NDArray[Any] | None) -> NDArray[Any]:
            return _nan(n) if col is None else _column(col)

        segs = segments or {}
        self._chunks.append(
            _Chunk(
                n=n,
                features={name: _column(col) for name, col in features.items()},
                prediction=optional(prediction),
                score=_nan(n) if score is None else _float_column(score, "score"),
                confidence=_nan(n)
                if confidence is None
                else _float_column(confidence, "confidence"),
                label=optional(label),
                segments={
                    d: _object_array([None] * n)
                    if segs.get(d) is None
                    else _as_categories(_column(segs[d]))
                    for d in self.segment_dims
                },
                event_time=_nan(n) if event_time is None else _float_column(event_time, "time"),
            )
        )

    def _flush(self) -> None:
        p = self._pending
        if not p.n:
            return
        n = p.n
        self._chunks.append(
            _Chunk(
                n=n,
                features={name: _column(_pad(col, n)) for name, col in p.features.items()},
                prediction=_column(p.prediction),
                score=_float_column(p.score, "score"),
                confidence=_float_column(p.confidence, "confidence"),
                label=_column(p.label),
                segments={d: _as_categories(_column(col)) for d, col in p.segments.items()},
                event_time=_float_column(p.event_time, "event time"),
            )
        )
        self._pending = _Pending(segments={d: [] for d in self.segment_dims})

    def _rows(self) -> _Chunk | None:
        self._flush()
        if not self._chunks:
            return None
        merged = _merge_chunks(self._chunks, self.segment_dims)
        self._chunks = [merged]  # the next build starts from one chunk
        return merged

    def _segment_rows(self, data: _Chunk) -> dict[str, NDArray[np.intp]]:
        out: dict[str, NDArray[np.intp]] = {ALL: np.arange(data.n)}
        for dim in self.segment_dims:
            factor = _Factor.of(data.segments[dim])
            counts, _ = factor.counts(out[ALL])
            ranked = sorted(
                # a literal "__other__" value joins the overflow
                (i for i, v in enumerate(factor.values) if v != OTHER and counts[i]),
                key=lambda i: (-counts[i], factor.values[i]),
            )
            kept = ranked[: self.max_segment_values]
            for i in kept:
                out[f"{dim}={factor.values[i]}"] = np.flatnonzero(factor.codes == i)
            rest = (factor.codes >= 0) & ~np.isin(factor.codes, kept)
            if rest.any():
                out[f"{dim}={OTHER}"] = np.flatnonzero(rest)
        return out

    def _reference(self, column: Prepared, rows: NDArray[np.intp]) -> ColumnReference:
        if isinstance(column, _Factor):
            return _categorical_reference(column, rows, self.max_categories)
        return _numeric_reference(column[rows], self.bins)

    def build(self, source: str, created_at: str | None = None) -> ReferenceProfile:
        """Build the profile from every row added so far.

        Classification is assumed when predictions are categorical, or integral numbers with
        a score; accuracy, top-1 rate and the calibration map are then computed (prediction and
        label compared as :func:`category_value` strings). MAE is computed when predictions and
        labels are numeric.

        A row's confidence (for the calibration map) is its ``confidence`` when given. Otherwise
        it comes from its ``score``: with a positive class known, ``score`` is that class's
        probability, so the confidence is ``score`` where the row predicts it and
        ``1 - score`` elsewhere; without one, ``score`` is taken as the confidence itself.

        Unless given to the builder, the positive class is inferred when no row carries an
        explicit confidence and at most two classes are predicted: the class with the higher
        mean score, provided the other class's mean score is under 0.5 (confidences of a binary
        classifier never are, so a ``score`` that is already a confidence names no positive
        class); a lone predicted class counts when its mean score is at least 0.5.

        Parameters
        ----------
        source
            Where the rows came from, recorded in the profile.
        created_at
            ISO 8601 time; now (UTC) by default.

        Raises
        ------
        BaselineError
            No row was added.
        """
        data = self._rows()
        if data is None or data.n == 0:
            raise BaselineError("no rows to build a reference from")
        outputs = _Outputs.of(data, self.positive_class)
        times = data.event_time
        timed = np.isfinite(times)
        duration = None
        n_timed = int(timed.sum())
        if n_timed >= 2:
            span = float(times[timed].max() - times[timed].min())
            if span > 0:
                # n events cover n intervals of the mean gap, not n - 1
                duration = span * n_timed / (n_timed - 1)
        features = {name: _prepare(col) for name, col in data.features.items()}
        segments: dict[str, SegmentReference] = {}
        for key, rows in self._segment_rows(data).items():
            segments[key] = SegmentReference(
                count=int(rows.size),
                rate_per_s=None if duration is None else int(timed[rows].sum()) / duration,
                features={name: self._reference(col, rows) for name, col in features.items()},
                **outputs.segment(rows, self),
            )
        return ReferenceProfile(
            model_id=self.model_id,
            model_version=self.model_version,
            created_at=created_at or _now_iso(),
            source=source,
            bins=self.bins,
            segment_dims=list(self.segment_dims),
            segments=segments,
            positive_class=outputs.positive_class,
            max_categories=self.max_categories,
            max_segment_values=self.max_segment_values,
        )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _numeric_reference(column: NDArray[np.float64], bins: int) -> NumericReference:
    finite = column[np.isfinite(column)]
    nulls = int(column.size - finite.size)
    if finite.size == 0:
        return NumericReference(
            count=0, nulls=nulls, edges=[], probs=[], mean=None, std=None, min=None, max=None
        )
    edges = reference_edges(finite, bins)
    sketch = NumericSketch(edges)
    sketch.update_many(finite, nulls=nulls)
    return NumericReference(
        count=sketch.count,
        nulls=sketch.nulls,
        edges=edges.tolist(),
        probs=sketch.probabilities().tolist(),
        mean=sketch.mean,
        std=sketch.std if sketch.count > 1 else None,
        min=sketch.min,
        max=sketch.max,
    )


def _categorical_reference(
    factor: _Factor, rows: NDArray[np.intp], max_categories: int
) -> CategoricalReference:
    counts, nulls = factor.counts(rows)
    seen = np.flatnonzero(counts)
    if seen.size <= max_categories:
        # what a CategoricalSketch holds when no category is evicted, without the Counter
        n = int(counts.sum())
        probs = {factor.values[i]: int(counts[i]) / n for i in seen.tolist()}
        count = n
    else:
        sketch = CategoricalSketch(max_categories)
        sketch.update_many(
            itertools.chain.from_iterable(
                itertools.repeat(factor.values[i], int(counts[i])) for i in seen.tolist()
            ),
            nulls=nulls,
        )
        probs, count = sketch.probabilities(), sketch.count
    return CategoricalReference(
        count=count,
        nulls=nulls,
        probs=dict(sorted(probs.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


@dataclass
class _Outputs:
    """Row-aligned output columns, prepared once for every segment."""

    prediction: Prepared | None
    score: NDArray[np.float64] | None
    label: Prepared | None
    predicted: _Factor | None  # predicted class per row (classification)
    correct: NDArray[np.float64]  # 1/0 per labelled classification row, else NaN
    abs_error: NDArray[np.float64]  # |prediction - label|, else NaN
    confidence: NDArray[np.float64]
    positive_class: str | None

    @classmethod
    def of(cls, data: _Chunk, positive_class: str | None) -> _Outputs:
        n = data.n
        pred = data.prediction if _present(data.prediction).any() else None
        label = data.label if _present(data.label).any() else None
        score = data.score if np.isfinite(data.score).any() else None
        correct = _nan(n)
        abs_error = _nan(n)
        predicted: NDArray[np.object_] | None = None
        if pred is not None:
            integral = pred.dtype != object and bool(
                np.all(np.mod(pred[np.isfinite(pred)], 1.0) == 0)
            )
            if pred.dtype == object or (integral and score is not None):
                predicted = _as_categories(pred)
            if label is not None and predicted is not None:
                truth = _as_categories(label)
                both = _present(predicted) & _present(truth)
                correct[both] = (predicted[both] == truth[both]).astype(np.float64)
            if label is not None and pred.dtype != object and label.dtype != object:
                abs_error = np.abs(pred - label)  # NaN where either is null
        factor = None if predicted is None else _Factor.of(predicted)
        explicit = np.isfinite(data.confidence)
        if (
            positive_class is None
            and factor is not None
            and score is not None
            and not explicit.any()
        ):
            positive_class = _infer_positive_class(factor, score)
        confidence = data.confidence.copy()
        if score is not None:
            derive = ~explicit & np.isfinite(score)
            if derive.any():
                derived = score  # a confidence already, unless it is a positive-class probability
                if positive_class is not None and predicted is not None:
                    derived = np.where(predicted == positive_class, score, 1.0 - score)
                confidence[derive] = derived[derive]
        return cls(
            prediction=None if pred is None else _prepare(pred),
            score=score,
            label=None if label is None else _prepare(label),
            predicted=factor,
            correct=correct,
            abs_error=abs_error,
            confidence=confidence,
            positive_class=positive_class,
        )

    def segment(self, rows: NDArray[np.intp], builder: ProfileBuilder) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.prediction is not None:
            out["prediction"] = builder._reference(self.prediction, rows)
        if self.score is not None:
            out["score"] = _numeric_reference(self.score[rows], builder.bins)
        if self.label is not None:
            out["label"] = builder._reference(self.label, rows)
        correct = self.correct[rows]
        known = np.isfinite(correct)
        if known.any():
            out["accuracy"] = float(correct[known].mean())
            conf = self.confidence[rows]
            usable = known & (conf >= 0.0) & (conf <= 1.0)  # NaN compares False
            if usable.any():
                out["calibration"] = _calibration(conf[usable], correct[usable], builder.bins)
        err = self.abs_error[rows]
        if np.isfinite(err).any():
            out["mae"] = float(err[np.isfinite(err)].mean())
        if self.predicted is not None:
            counts, _ = self.predicted.counts(rows)
            total = int(counts.sum())
            if total:
                out["top1_rate"] = int(counts.max()) / total
        return out


def _infer_positive_class(predicted: _Factor, score: NDArray[np.float64]) -> str | None:
    """The class ``score`` is the probability of, judged from the rows' predictions.

    With two predicted classes, scores that are a positive-class probability are high where
    the positive class is predicted and under 0.5 on average where the other one is; scores
    that are confidences are at least 0.5 for both, and give no positive class.
    """
    rows = np.flatnonzero(np.isfinite(score))
    counts, _ = predicted.counts(rows)
    seen = np.flatnonzero(counts).tolist()
    if not seen or len(seen) > 2:
        return None
    codes = predicted.codes[rows]
    means = {i: float(score[rows][codes == i].mean()) for i in seen}
    best = max(sorted(means, key=lambda i: predicted.values[i]), key=lambda i: means[i])
    if min(means.values()) >= 0.5 and len(seen) == 2:
        return None
    if len(seen) == 1 and means[best] < 0.5:
        return None
    return predicted.values[best]


def _calibration(
    confidence: NDArray[np.float64], correct: NDArray[np.float64], bins: int
) -> CalibrationReference:
    from streamproc.judge.stats import CalibrationMap

    sketch = CalibrationSketch(bins)
    sketch.update_many(confidence, correct > 0.5)
    cmap = CalibrationMap.from_sketch(sketch)
    return CalibrationReference(
        edges=cmap.edges.tolist(), accuracy=cmap.accuracy.tolist(), counts=cmap.counts.tolist()
    )


# -- storage ------------------------------------------------------------------------------------


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.index = f"{prefix}:baselines"

    def profile(self, model_id: str, model_version: str) -> str:
        return f"{self.prefix}:baseline:{model_id}:{model_version}"

    def versions(self, model_id: str) -> str:
        return f"{self.prefix}:baselines:{model_id}"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _profile(blob: bytes | str | None) -> ReferenceProfile | None:
    if blob is None:
        return None
    if isinstance(blob, str):
        raise StateEncodingError("baseline read back as text: use a Redis client without decode")
    return ReferenceProfile.from_bytes(blob)


class BaselineStore:
    """Reference profiles in Redis (sync client).

    ``{prefix}:baseline:{model_id}:{model_version}`` holds a profile's bytes,
    ``{prefix}:baselines`` (a hash) maps each model to its latest stored version, and
    ``{prefix}:baselines:{model_id}`` (a set) holds all its versions. A put writes all three in
    one transaction.

    Parameters
    ----------
    client
        A ``redis.Redis`` returning bytes (``decode_responses`` off).
    prefix
        The key prefix (``redis.key_prefix`` of the configuration).
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = _Keys(prefix)

    def put(self, profile: ReferenceProfile) -> str:
        """Store ``profile`` and make it its model's latest version; return its key."""
        key = self.keys.profile(profile.model_id, profile.model_version)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(key, profile.to_bytes())
        pipe.hset(self.keys.index, profile.model_id, profile.model_version)
        pipe.sadd(self.keys.versions(profile.model_id), profile.model_version)
        pipe.execute()
        return key

    def get(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        """The stored profile of that version, or ``None``."""
        return _profile(self.client.get(self.keys.profile(model_id, model_version)))

    def latest_version(self, model_id: str) -> str | None:
        """The version stored last for ``model_id``, or ``None``."""
        return _text(self.client.hget(self.keys.index, model_id))

    def latest(self, model_id: str) -> ReferenceProfile | None:
        """The profile stored last for ``model_id``, or ``None``."""
        version = self.latest_version(model_id)
        return None if version is None else self.get(model_id, version)

    def versions(self, model_id: str) -> list[str]:
        """Every stored version of ``model_id``, sorted."""
        return sorted(_text(v) or "" for v in self.client.smembers(self.keys.versions(model_id)))

    def all_versions(self, model_id: str) -> list[ReferenceProfile]:
        """The profiles of every stored version of ``model_id``, by version."""
        versions = self.versions(model_id)
        if not versions:
            return []
        blobs = self.client.mget([self.keys.profile(model_id, v) for v in versions])
        return [p for p in map(_profile, blobs) if p is not None]

    def models(self) -> dict[str, str]:
        """Model -> latest version, for every model with a stored baseline."""
        raw = self.client.hgetall(self.keys.index)
        return {_text(k) or "": _text(v) or "" for k, v in raw.items()}


class AsyncBaselineStore:
    """:class:`BaselineStore` for ``redis.asyncio.Redis`` (the worker's event loop)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.keys = _Keys(prefix)

    async def put(self, profile: ReferenceProfile) -> str:
        """Store ``profile`` and make it its model's latest version; return its key."""
        key = self.keys.profile(profile.model_id, profile.model_version)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, profile.to_bytes())
            pipe.hset(self.keys.index, profile.model_id, profile.model_version)
            pipe.sadd(self.keys.versions(profile.model_id), profile.model_version)
            await pipe.execute()
        return key

    async def get(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        """The stored profile of that version, or ``None``."""
        return _profile(await self.client.get(self.keys.profile(model_id, model_version)))

    async def latest_version(self, model_id: str) -> str | None:
        """The version stored last for ``model_id``, or ``None``."""
        return _text(await self.client.hget(self.keys.index, model_id))

    async def latest(self, model_id: str) -> ReferenceProfile | None:
        """The profile stored last for ``model_id``, or ``None``."""
        version = await self.latest_version(model_id)
        return None if version is None else await self.get(model_id, version)

    async def versions(self, model_id: str) -> list[str]:
        """Every stored version of ``model_id``, sorted."""
        members = await self.client.smembers(self.keys.versions(model_id))
        return sorted(_text(v) or "" for v in members)

    async def all_versions(self, model_id: str) -> list[ReferenceProfile]:
        """The profiles of every stored version of ``model_id``, by version."""
        versions = await self.versions(model_id)
        if not versions:
            return []
        blobs = await self.client.mget([self.keys.profile(model_id, v) for v in versions])
        return [p for p in map(_profile, blobs) if p is not None]


# -- reading reference files --------------------------------------------------------------------


def _csv_column(cells: Sequence[str]) -> NDArray[Any]:
    """A CSV column: numbers when every non-empty cell parses as one, else category strings."""
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    distinct = set(cells)
    if "" in distinct:
        try:
            return np.array([c if c else "nan" for c in cells], dtype=np.float64)
        except ValueError:
            pass
    if {c.lower() for c in distinct} <= {"true", "false", ""}:
        return _object_array([c.lower() if c else None for c in cells])  # booleans
    return _object_array([c if c else None for c in cells])


def _read_csv(path: Path) -> dict[str, NDArray[Any]]:
    """CSV through pyarrow's parser when it is installed (several times faster), else through
    the csv module; both give the same columns (see :func:`_csv_column`)."""
    try:
        return _read_csv_arrow(path)
    except ImportError:
        return _read_csv_python(path)
    except _ArrowFallback:
        # an empty, ragged or non-UTF-8 file: the csv module's reading names the problem
        return _read_csv_python(path)


class _ArrowFallback(Exception):
    pass


def _read_csv_arrow(path: Path) -> dict[str, NDArray[Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            # every column as text, so typing is ours: the same as the csv module path
            convert_options=pcsv.ConvertOptions(
                column_types=_csv_header(path),
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError, _ArrowFallback) as exc:
        raise _ArrowFallback(str(exc)) from None
    _check_header(path, table.column_names)
    out: dict[str, NDArray[Any]] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        try:
            # Arrow's number syntax is a subset of numpy's, which decides when Arrow refuses.
            out[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            out[name] = _csv_column(pc.fill_null(col, "").to_pylist())
    return out


def _csv_header(path: Path) -> dict[str, Any]:
    import pyarrow as pa

    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise _ArrowFallback("no header")
    return {name: pa.string() for name in header}


def _read_csv_python(path: Path) -> dict[str, NDArray[Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise BaselineError(f"{path}: the file is empty")
        rows = list(filter(None, reader))  # blank lines are no rows
    _check_header(path, header)
    if set(map(len, rows)) - {len(header)}:
        i, row = next((i, r) for i, r in enumerate(rows, start=1) if len(r) != len(header))
        raise BaselineError(f"{path}: data row {i} has {len(row)} fields, the header {len(header)}")
    if not rows:
        return {name: _nan(0) for name in header}
    return {
        name: _csv_column(cells)
        for name, cells in zip(header, zip(*rows, strict=True), strict=True)
    }


def _check_header(path: Path, names: Sequence[str]) -> None:
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise BaselineError(f"{path}: duplicate columns {', '.join(dupes)}")


def _read_jsonl(path: Path) -> dict[str, NDArray[Any]]:
    import orjson

    rows: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise BaselineError(f"{path}: line {line_no} is not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise BaselineError(f"{path}: line {line_no} is not a JSON object")
            rows.append(row)
    names = list(dict.fromkeys(itertools.chain.from_iterable(rows)))  # keys, first seen first
    out: dict[str, NDArray[Any]] = {}
    for name in names:
        try:
            out[name] = _column([row.get(name) for row in rows])
        except BaselineError as exc:
            raise BaselineError(f"{path}: column {name!r}: {exc}") from None
    return out


def _read_parquet(path: Path) -> dict[str, NDArray[Any]]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise BaselineError(
            f"{path}: reading Parquet needs pyarrow; install it with "
            "pip install 'streamproc[parquet]' (or pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BaselineError(f"{path}: not a readable Parquet file: {exc}") from None
    _check_header(path, table.column_names)
    out: dict[str, NDArray[Any]] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        kind = col.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            out[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_timestamp(kind):
            seconds = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us", "UTC")), pa.int64()), 1e6)
            out[name] = pc.cast(seconds, pa.float64()).to_numpy(zero_copy_only=False)
        else:
            try:
                out[name] = _column(col.to_pylist())
            except BaselineError as exc:
                raise BaselineError(f"{path}: column {name!r}: {exc}") from None
    return out


def read_table(path: str | Path) -> dict[str, NDArray[Any]]:
    """Read a reference file into typed columns (float64 with NaN nulls, or category strings).

    Raises
    ------
    BaselineError
        Missing file, unknown suffix, unreadable content, or pyarrow missing for Parquet.
    """
    p = Path(path)
    kind = FILE_TYPES.get(p.suffix.lower())
    if kind is None:
        raise BaselineError(
            f"{p}: unknown file type {p.suffix or '(no suffix)'!r}; use {', '.join(FILE_TYPES)}"
        )
    if not p.is_file():
        raise BaselineError(f"{p}: no such file")
    try:
        if kind == "csv":
            return _read_csv(p)
        if kind == "jsonl":
            return _read_jsonl(p)
        return _read_parquet(p)
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _times(column: NDArray[Any], where: str) -> NDArray[np.float64]:
    if column.dtype != object:
        return column
    from streamproc.contracts import event_time

    out = _nan(column.size)
    for i, v in enumerate(column.tolist()):
        if v is None:
            continue
        try:
            out[i] = float(v)  # epoch seconds among RFC 3339 texts
        except ValueError:
            pass
        else:
            continue
        try:
            out[i] = event_time(v, None)
        except ValueError:
            raise BaselineError(
                f"{where}: timestamp {v!r} (row {i + 1}) is neither RFC 3339 nor epoch seconds"
            ) from None
    return out


def profile_from_file(
    path: str | Path,
    model_id: str,
    model_version: str,
    segment_dims: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    max_segment_values: int = DEFAULT_MAX_SEGMENT_VALUES,
    positive_class: str | None = None,
    ignore: Sequence[str] = (),
) -> ReferenceProfile:
    """Build a profile from a CSV, JSON Lines or Parquet file of predictions.

    One row per prediction. Columns ``prediction``, ``label``, ``timestamp`` (RFC 3339 or
    epoch seconds), and either ``score`` (the positive-class probability) or ``score_<class>``
    (one probability per class: ``score`` becomes the largest, or that of ``positive_class``
    when given; ``prediction`` defaults to the argmax) are outputs; the ``segment_dims``
    columns are segment dimensions; ``ignore`` columns are skipped; every other column is a
    feature. In CSV an empty cell is a null and a column of numbers is numeric.

    Raises
    ------
    BaselineError
        Missing or unreadable file, unknown type, a segment column that is not there, both
        ``score`` and ``score_<class>`` columns, or no rows.
    """
    p = Path(path)
    table = read_table(p)
    n = len(next(iter(table.values()))) if table else 0
    if n == 0:
        raise BaselineError(f"{p}: no rows")
    missing = [d for d in segment_dims if d not in table]
    if missing:
        raise BaselineError(
            f"{p}: no column {missing[0]!r} for --segments (columns: {', '.join(table)})"
        )
    class_cols = {k[len("score_") :]: k for k in table if k.startswith("score_") and k != "score_"}
    if class_cols and "score" in table:
        raise BaselineError(f"{p}: has both a 'score' and 'score_<class>' columns; keep one kind")
    skip = {*RESERVED_COLUMNS, *segment_dims, *class_cols.values(), *ignore}
    prediction = table.get("prediction")
    score = table.get("score")
    confidence = None
    where = str(p)
    if score is not None and score.dtype == object:
        raise BaselineError(f"{p}: column 'score' must hold numbers")
    if class_cols:
        classes = list(class_cols)
        probs = np.column_stack([_float_col(table, class_cols[c], where) for c in classes])
        known = np.isfinite(probs)
        filled = np.where(known, probs, -math.inf)
        best = filled.argmax(axis=1)
        any_known = known.any(axis=1)
        top = np.where(any_known, filled[np.arange(n), best], math.nan)
        if prediction is None:
            prediction = _object_array(
                [
                    classes[b] if k else None
                    for b, k in zip(best.tolist(), any_known.tolist(), strict=True)
                ]
            )
        index = {c: i for i, c in enumerate(classes)}
        chosen = np.array(
            [index.get(v, -1) for v in _as_categories(prediction).tolist()], dtype=np.int64
        )
        confidence = np.where(chosen >= 0, probs[np.arange(n), np.maximum(chosen, 0)], top)
        confidence = np.where(np.isfinite(confidence), confidence, top)
        score = probs[:, index[positive_class]] if positive_class in index else top
        if positive_class not in index:
            positive_class = None
    builder = ProfileBuilder(
        model_id,
        model_version,
        segment_dims,
        bins=bins,
        max_categories=max_categories,
        max_segment_values=max_segment_values,
        positive_class=positive_class,
    )
    builder.add_columns(
        {name: col for name, col in table.items() if name not in skip},
        prediction=prediction,
        score=score,
        confidence=confidence,
        label=table.get("label"),
        segments={d: table[d] for d in segment_dims},
        event_time=_times(table["timestamp"], where) if "timestamp" in table else None,
    )
    return builder.build(source=str(p.resolve()))


def _float_col(table: Mapping[str, NDArray[Any]], name: str, where: str) -> NDArray[np.float64]:
    col = table[name]
    if col.dtype == object:
        raise BaselineError(f"{where}: column {name!r} must hold numbers")
    return col


# -- reading a topic range ----------------------------------------------------------------------


def _rfc3339_ms(text: str, flag: str) -> int:
    from streamproc.contracts import event_time

    try:
        return round(event_time(text, None) * 1000)
    except ValueError:
        raise BaselineError(f"{flag} {text!r} is not an RFC 3339 time") from None


@dataclass
class _TopicRead:
    records: int = 0
    rejected: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


def _consumer(cfg: Config) -> Any:
    import uuid

    from confluent_kafka import Consumer

    return Consumer(
        {
            **cfg.kafka.librdkafka(),
            "group.id": f"streamproc-baseline-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.message.max.bytes": max(cfg.worker.max_message_bytes, 1_048_576),
        }
    )


def _offsets_for_times(consumer: Any, wanted: list[Any], attempts: int = 5) -> list[Any]:
    """``consumer.offsets_for_times``, retried while a partition answers with an error.

    A per-partition error (e.g. a leader moving) comes back as offset -1, which would otherwise
    read as "no record after this time" and silently drop that partition from the range.
    """
    for attempt in range(attempts):
        found = consumer.offsets_for_times(wanted, 15)
        failed = [tp for tp in found if tp.error is not None]
        if not failed:
            return found
        if attempt < attempts - 1:
            time.sleep(0.5 * (attempt + 1))
    tp = failed[0]
    raise BaselineError(
        f"cannot look up offsets by time in {tp.topic!r} partition {tp.partition}: {tp.error}"
    )


def _time_ranges(consumer: Any, topic: str, from_ms: int, to_ms: int) -> dict[int, tuple[int, int]]:
    """Per partition, ``[first, end)`` offsets of records with timestamps in the range."""
    from confluent_kafka import TopicPartition

    parts = topics.partitions_of(consumer, topic, missing=BaselineError)
    starts = _offsets_for_times(consumer, [TopicPartition(topic, p, from_ms) for p in parts])
    ends = _offsets_for_times(consumer, [TopicPartition(topic, p, to_ms) for p in parts])
    out = {}
    for p, s, e in zip(parts, starts, ends, strict=True):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
        first = s.offset if s.offset >= 0 else high
        end = e.offset if e.offset >= 0 else high
        if first < end:
            out[p] = (first, end)
    return out


def _read_range(
    consumer: Any,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    timeout_s: float,
    time_ms: tuple[int, int] | None = None,
) -> Iterator[Any]:
    """Yield the records of ``ranges`` (partition -> ``[first, end)``), within ``time_ms``."""
    from confluent_kafka import KafkaError, TopicPartition

    todo = {p: end for p, (first, end) in ranges.items() if first < end}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in todo])
    deadline = time.monotonic() + timeout_s
    while todo:
        msgs = consumer.consume(1000, 0.5)
        if not msgs:
            if time.monotonic() > deadline:
                raise BaselineError(
                    f"timed out after {timeout_s:.0f} s reading {topic!r} "
                    f"(partitions {sorted(todo)} not read to the end)"
                )
            continue
        deadline = time.monotonic() + timeout_s
        for msg in msgs:
            err = msg.error()
            p = msg.partition()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # An end-of-partition event can still be queued from the previous
                    # topic read by this consumer: it says nothing about this topic.
                    if msg.topic() == topic:
                        todo.pop(p, None)
                    continue
                raise BaselineError(f"reading {topic!r}: {err}")
            end = todo.get(p) if msg.topic() == topic else None
            if end is None:
                continue
            if msg.offset() >= end:
                todo.pop(p)
                continue
            if msg.offset() == end - 1:
                todo.pop(p)
            ts = msg.timestamp()[1]
            if time_ms is None or time_ms[0] <= ts < time_ms[1]:
                yield msg
    consumer.unassign()


def profile_from_topic(
    cfg: Config,
    topic: str,
    model_id: str,
    model_version: str,
    *,
    from_time: str | None = None,
    to_time: str | None = None,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
    labels_topic: str | None = None,
    label_grace_s: float = 0.0,
    segment_dims: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    max_segment_values: int = DEFAULT_MAX_SEGMENT_VALUES,
    positive_class: str | None = None,
    timeout_s: float = 30.0,
) -> ReferenceProfile:
    """Build a profile from the ``prediction.v1`` events of a topic range.

    The range is either a record-time range ``[from_time, to_time)`` (RFC 3339) over every
    partition, found with Kafka's time index, or the offsets ``from_offset..to_offset``
    (inclusive) of one ``partition``. Only events of ``model_id`` / ``model_version`` count;
    a ``prediction_id`` seen twice counts once; rejected messages are skipped. Labels are read
    from ``labels_topic`` over the same record-time range (in offset mode: the record times of
    the predictions read), extended by ``label_grace_s``, and joined by ``prediction_id``.
    ``rate_per_s`` uses the events' own time.

    The positive class, unless given, is the first of two classes in the events' ``scores``
    (the most common such first key), the convention of ``prediction.v1`` producers.

    Raises
    ------
    BaselineError
        A missing topic, an inconsistent range, a read that stalls for ``timeout_s``, or no
        event of the model in the range.
    """
    from streamproc.contracts import Label, Prediction, decode_message, event_time

    by_time = from_time is not None or to_time is not None
    by_offset = partition is not None or from_offset is not None or to_offset is not None
    if by_time == by_offset:
        raise BaselineError(
            "give either --from-time and --to-time, or --partition, --from-offset and --to-offset"
        )
    consumer = _consumer(cfg)
    try:
        window: tuple[int, int] | None = None
        if by_time:
            if from_time is None or to_time is None:
                raise BaselineError("--from-time and --to-time go together")
            window = (_rfc3339_ms(from_time, "--from-time"), _rfc3339_ms(to_time, "--to-time"))
            if window[0] >= window[1]:
                raise BaselineError(f"--from-time {from_time} is not before --to-time {to_time}")
            ranges = _time_ranges(consumer, topic, *window)
            source = f"kafka:{topic} record time [{from_time}, {to_time})"
        else:
            if partition is None or from_offset is None or to_offset is None:
                raise BaselineError("--partition, --from-offset and --to-offset go together")
            if not 0 <= from_offset <= to_offset:
                raise BaselineError(f"offsets {from_offset}..{to_offset}: need 0 <= from <= to")
            if partition not in topics.partitions_of(consumer, topic, missing=BaselineError):
                raise BaselineError(f"topic {topic!r} has no partition {partition}")
            ranges = {partition: (from_offset, to_offset + 1)}
            source = f"kafka:{topic} partition {partition} offsets {from_offset}..{to_offset}"
        read = _TopicRead()
        events: dict[str, tuple[Prediction, float]] = {}
        for msg in _read_range(consumer, topic, ranges, timeout_s, window):
            read.records += 1
            ts = msg.timestamp()[1]
            read.first_ms = ts if read.first_ms is None else min(read.first_ms, ts)
            read.last_ms = ts if read.last_ms is None else max(read.last_ms, ts)
            decoded = decode_message(
                msg.value(),
                Prediction,
                max_bytes=cfg.worker.max_message_bytes,
                max_batch=cfg.worker.max_batch_events,
            )
            read.rejected += len(decoded.rejections)
            for ev in decoded.events:
                if ev.model_id == model_id and ev.model_version == model_version:
                    events.setdefault(ev.prediction_id, (ev, event_time(ev.timestamp, ts)))
        if not events:
            raise BaselineError(
                f"no {model_id}/{model_version} prediction in {source} "
                f"({read.records} records, {read.rejected} rejected events)"
            )
        labels: dict[str, Any] = {}
        if labels_topic is not None and read.first_ms is not None and read.last_ms is not None:
            grace = round(label_grace_s * 1000)
            lo, hi = window if window is not None else (read.first_ms, read.last_ms + 1)
            span = (lo, hi + grace)
            for msg in _read_range(
                consumer, labels_topic, _time_ranges(consumer, labels_topic, *span), timeout_s, span
            ):
                for lab in decode_message(msg.value(), Label).events:
                    if lab.model_id in (None, model_id):
                        labels.setdefault(lab.prediction_id, lab.label)
            source += f", labels from {labels_topic}"
    finally:
        consumer.close()
    if positive_class is None:
        firsts = Counter(
            next(iter(ev.scores)) for ev, _ in events.values() if ev.scores and len(ev.scores) == 2
        )
        positive_class = firsts.most_common(1)[0][0] if firsts else None
    builder = ProfileBuilder(
        model_id,
        model_version,
        segment_dims,
        bins=bins,
        max_categories=max_categories,
        max_segment_values=max_segment_values,
        positive_class=positive_class,
    )
    for pid, (ev, t) in events.items():
        prediction, score, confidence = outputs_of(ev, positive_class)
        builder.add(
            ev.features,
            prediction,
            score,
            labels.get(pid),
            ev.segments,
            t,
            confidence=confidence,
        )
    return builder.build(source=source)


# -- a readable summary -------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _column_line(name: str, ref: ColumnReference) -> str:
    nulls = f"nulls {100 * ref.null_rate:.1f}%"
    if isinstance(ref, NumericReference):
        return (
            f"  {name:<14} numeric      count {ref.count:<8} {nulls:<12} mean {_num(ref.mean)} "
            f"std {_num(ref.std)} min {_num(ref.min)} max {_num(ref.max)} "
            f"({len(ref.probs)} bins)"
        )
    top = ", ".join(f"{k} {100 * v:.1f}%" for k, v in list(ref.probs.items())[:4])
    more = f", +{len(ref.probs) - 4} more" if len(ref.probs) > 4 else ""
    return (
        f"  {name:<14} categorical  count {ref.count:<8} {nulls:<12} "
        f"{len(ref.probs)} categories: {top}{more}"
    )


def describe(profile: ReferenceProfile, segment: str = ALL) -> str:
    """A readable summary: the segments with their rows and outputs, then one segment's
    columns.

    Raises
    ------
    BaselineError
        The profile has no segment ``segment``.
    """
    seg = profile.segment(segment)
    if seg is None:
        raise BaselineError(
            f"baseline {profile.model_id}/{profile.model_version} has no segment {segment!r} "
            f"(segments: {', '.join(profile.segments)})"
        )
    numeric = sum(isinstance(r, NumericReference) for r in seg.features.values())
    lines = [
        f"baseline {profile.model_id}/{profile.model_version}, created {profile.created_at}",
        f"source: {profile.source}",
        f"rows {profile.rows}, bins {profile.bins}, segment dims: "
        f"{', '.join(profile.segment_dims) or '-'}, positive class: "
        f"{profile.positive_class or '-'}",
        f"features: {len(seg.features)} ({numeric} numeric, {len(seg.features) - numeric} "
        "categorical)",
        "",
        f"{'segment':<22} {'rows':>8} {'rate/s':>8} {'accuracy':>9} {'mae':>8} {'top1':>6}",
    ]
    for key, s in profile.segments.items():
        lines.append(
            f"{key:<22} {s.count:>8} {_num(s.rate_per_s):>8} {_num(s.accuracy):>9} "
            f"{_num(s.mae):>8} {_num(s.top1_rate):>6}"
        )
    lines += ["", f"segment {segment}:"]
    lines += [_column_line(name, ref) for name, ref in seg.features.items()]
    for name, ref in (("(prediction)", seg.prediction), ("(score)", seg.score)):
        if ref is not None:
            lines.append(_column_line(name, ref))
    if seg.label is not None:
        lines.append(_column_line("(label)", seg.label))
    if seg.calibration is not None:
        acc = " ".join(_num(a) for a in seg.calibration.accuracy)
        lines.append(f"  calibration    accuracy per confidence bin: {acc}")
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------


def _store(cfg: Config) -> BaselineStore:
    import redis

    return BaselineStore(
        redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password), cfg.redis.key_prefix
    )


def _redis_call(cfg: Config, what: Any) -> Any:
    import redis

    try:
        return what()
    except redis.RedisError as exc:
        raise BaselineError(f"Redis at {cfg.redis.url}: {exc}") from None


def _dims(text: str | None) -> list[str]:
    return [d.strip() for d in (text or "").split(",") if d.strip()]


def cmd_build(args: argparse.Namespace) -> int:
    """``streamproc baseline build``."""
    from streamproc.config import load_config

    cfg = load_config(args.config)
    began = time.perf_counter()
    common = {
        "segment_dims": _dims(args.segments),
        "bins": args.bins,
        "max_categories": args.max_categories,
        "max_segment_values": args.max_segment_values,
        "positive_class": args.positive_class,
    }
    if args.from_file:
        profile = profile_from_file(
            args.from_file, args.model, args.version, ignore=_dims(args.ignore), **common
        )
    else:
        profile = profile_from_topic(
            cfg,
            args.from_topic,
            args.model,
            args.version,
            from_time=args.from_time,
            to_time=args.to_time,
            partition=args.partition,
            from_offset=args.from_offset,
            to_offset=args.to_offset,
            labels_topic=args.labels_topic,
            label_grace_s=args.label_grace,
            timeout_s=args.timeout,
            **common,
        )
    store = _store(cfg)
    key = _redis_call(cfg, lambda: store.put(profile))
    seg = profile.segments[ALL]
    numeric = sum(isinstance(r, NumericReference) for r in seg.features.values())
    extra = f", accuracy {seg.accuracy:.3f}" if seg.accuracy is not None else ""
    print(
        f"baseline {profile.model_id}/{profile.model_version}: {profile.rows} rows, "
        f"{len(profile.segments)} segments, {len(seg.features)} features ({numeric} numeric, "
        f"{len(seg.features) - numeric} categorical){extra}; stored at {key} "
        f"in {time.perf_counter() - began:.1f} s"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``streamproc baseline show``."""
    from streamproc.config import load_config

    cfg = load_config(args.config)
    store = _store(cfg)
    if args.version:
        profile = _redis_call(cfg, lambda: store.get(args.model, args.version))
        wanted = f"{args.model}/{args.version}"
    else:
        profile = _redis_call(cfg, lambda: store.latest(args.model))
        wanted = f"{args.model} (latest)"
    if profile is None:
        known = _redis_call(cfg, lambda: store.versions(args.model))
        hint = f"; stored versions: {', '.join(known)}" if known else ""
        raise BaselineError(f"no baseline for {wanted}{hint}")
    print(describe(profile, args.segment))
    versions = _redis_call(cfg, lambda: store.versions(args.model))
    print(f"\nstored versions: {', '.join(versions)}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``streamproc baseline build|show``."""
    p = sub.add_parser("baseline", help="build, store and show reference baselines")
    actions = p.add_subparsers(dest="action", required=True)

    b = actions.add_parser("build", help="build a baseline from a file or a topic range")
    b.add_argument("--model", required=True, help="model_id")
    b.add_argument("--version", required=True, help="model_version")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-file", help="a .csv, .jsonl or .parquet file, one row per prediction")
    src.add_argument("--from-topic", help="a topic of prediction.v1 events")
    b.add_argument("--segments", help="comma-separated segment dimensions (e.g. country,device)")
    b.add_argument("--bins", type=int, default=DEFAULT_BINS, help="quantile bins (default 10)")
    b.add_argument("--max-categories", type=int, default=DEFAULT_MAX_CATEGORIES)
    b.add_argument(
        "--max-segment-values",
        type=int,
        default=DEFAULT_MAX_SEGMENT_VALUES,
        help="values per dimension with their own segment; the rest are dim=__other__",
    )
    b.add_argument("--positive-class", help="the class whose probability `score` is")
    b.add_argument("--ignore", help="file: comma-separated columns that are not features")
    b.add_argument("--from-time", help="topic: first record time, RFC 3339")
    b.add_argument("--to-time", help="topic: end record time (exclusive), RFC 3339")
    b.add_argument("--partition", type=int, help="topic: the partition of an offset range")
    b.add_argument("--from-offset", type=int, help="topic: first offset")
    b.add_argument("--to-offset", type=int, help="topic: last offset (inclusive)")
    b.add_argument("--labels-topic", help="topic: label.v1 events to join by prediction_id")
    b.add_argument(
        "--label-grace",
        type=float,
        default=0.0,
        help="topic: seconds of labels read past the range's end (labels arrive late)",
    )
    b.add_argument("--timeout", type=float, default=30.0, help="topic: seconds without progress")
    b.set_defaults(func=cmd_build)

    s = actions.add_parser("show", help="print a stored baseline")
    s.add_argument("--model", required=True, help="model_id")
    s.add_argument("--version", help="model_version (default: the latest stored)")
    s.add_argument("--segment", default=ALL, help="the segment whose columns to list")
    s.set_defaults(func=cmd_show)
