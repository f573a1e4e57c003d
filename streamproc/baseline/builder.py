"""Building a reference profile from rows or columns: :class:`ProfileBuilder` and its internals.

Rows (:meth:`ProfileBuilder.add`) or columns (:meth:`ProfileBuilder.add_columns`) become typed
columns -- float64 with NaN for nulls when every non-null value is a number, else category
strings (:func:`typed_column`) -- and :meth:`ProfileBuilder.build` turns them into a
:class:`~streamproc.baseline.ReferenceProfile`: quantile bins and moments per numeric column,
shares per category, per segment; output distributions, accuracy, MAE, top-1 rate and the
calibration map.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from streamproc.aggregate.scores import SEP, joint_of
from streamproc.baseline.profile import (
    ALL,
    DEFAULT_BINS,
    DEFAULT_MAX_CATEGORIES,
    DEFAULT_MAX_SEGMENT_VALUES,
    BaselineError,
    CalibrationReference,
    CategoricalReference,
    ClassPerformanceReference,
    ColumnReference,
    LossModelReference,
    NumericReference,
    ReconstructionReference,
    ReferenceProfile,
    SegmentReference,
    Task,
    category_value,
)
from streamproc.sketch import (
    OTHER,
    CalibrationSketch,
    CategoricalSketch,
    NumericSketch,
    reference_edges,
    standardised,
)
from streamproc.sketch.moments import MV_SCALE

__all__ = ["ProfileBuilder", "as_categories", "nans", "object_array", "typed_column"]

_CONTAINERS: Final = (dict, list, tuple, set)
PCA_VARIANCE: Final = 0.65
"""Share of variance the multivariate-drift PCA keeps (NannyML's default)."""
PCA_MAX_FEATURES: Final = 64
"""Numeric features in the multivariate-drift PCA at most."""


def _is_number_type(t: type) -> bool:
    return issubclass(t, numbers.Real) and not issubclass(t, bool | np.bool_)


def typed_column(values: Sequence[Any] | NDArray[Any]) -> NDArray[Any]:
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
        return object_array(values)
    for t in types:
        if issubclass(t, _CONTAINERS):
            raise BaselineError(
                f"a column holds a {t.__name__}; values must be numbers, strings, booleans or null"
            )
    return object_array([category_value(v) for v in values])


def object_array(values: Sequence[Any]) -> NDArray[np.object_]:
    """``values`` as a 1-D object array (never a 2-D one, whatever the values are)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def as_categories(column: NDArray[Any]) -> NDArray[np.object_]:
    """A typed column as category strings (:func:`category_value` of each number)."""
    if column.dtype == object:
        return column
    return object_array([category_value(v) for v in column.tolist()])


def _float_column(values: Sequence[Any] | NDArray[Any], what: str) -> NDArray[np.float64]:
    col = typed_column(values)
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
    class_scores: dict[str, NDArray[np.float64]] = field(default_factory=dict)


def _concat(pieces: Sequence[NDArray[Any]]) -> NDArray[Any]:
    if len(pieces) == 1:
        return pieces[0]
    if any(p.dtype == object for p in pieces):
        return np.concatenate([as_categories(p) for p in pieces])
    return np.concatenate(pieces)


def nans(n: int) -> NDArray[np.float64]:
    """A numeric column of ``n`` nulls."""
    return np.full(n, math.nan)


def _merge_chunks(chunks: Sequence[_Chunk], dims: Sequence[str]) -> _Chunk:
    if len(chunks) == 1:
        return chunks[0]
    names = list(dict.fromkeys(name for c in chunks for name in c.features))
    return _Chunk(
        n=sum(c.n for c in chunks),
        features={
            name: _concat([c.features.get(name, nans(c.n)) for c in chunks]) for name in names
        },
        prediction=_concat([c.prediction for c in chunks]),
        score=np.concatenate([c.score for c in chunks]),
        confidence=np.concatenate([c.confidence for c in chunks]),
        label=_concat([c.label for c in chunks]),
        segments={d: np.concatenate([c.segments[d] for c in chunks]) for d in dims},
        event_time=np.concatenate([c.event_time for c in chunks]),
        class_scores={
            k: np.concatenate([c.class_scores.get(k, nans(c.n)) for c in chunks])
            for k in dict.fromkeys(k for c in chunks for k in c.class_scores)
        },
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
    class_scores: dict[str, list[Any]] = field(default_factory=dict)


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
    task
        ``"classification"`` or ``"regression"``; decided from the outputs when ``None`` (see
        :func:`decide_task`).
    pca_variance
        Share of the standardised numeric features' variance the multivariate-drift PCA keeps
        (NannyML's data-reconstruction default, 0.65); see :func:`fit_reconstruction`.
    pca_max_features
        Numeric features in that PCA at most (the fullest ones, ties by name): a window
        carries ``d(d+1)/2`` cross-product sums, so a 1,000-feature model does not carry a
        million of them.
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
        task: Task | None = None,
        pca_variance: float = PCA_VARIANCE,
        pca_max_features: int = PCA_MAX_FEATURES,
    ) -> None:
        if task not in (None, "classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
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
        self.task = task
        if not 0.0 < pca_variance <= 1.0 or pca_max_features < 0:
            raise ValueError("pca_variance must be in (0, 1] and pca_max_features >= 0")
        self.pca_variance = pca_variance
        self.pca_max_features = pca_max_features
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
        scores: Mapping[str, float] | None = None,
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
        scores
            Class -> probability, for the per-class figures (see :meth:`build`).
        """
        p = self._pending
        i = p.n
        for cls, value in (scores or {}).items():
            col = p.class_scores.get(cls)
            if col is None:
                col = p.class_scores[cls] = [None] * i
            elif len(col) < i:
                col.extend([None] * (i - len(col)))
            col.append(value)
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
        scores: Mapping[str, Sequence[Any] | NDArray[Any]] | None = None,
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
            **{f"score of {k!r}": v for k, v in (scores or {}).items()},
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
            return nans(n) if col is None else typed_column(col)

        segs = segments or {}
        self._chunks.append(
            _Chunk(
                n=n,
                features={name: typed_column(col) for name, col in features.items()},
                prediction=optional(prediction),
                score=nans(n) if score is None else _float_column(score, "score"),
                confidence=nans(n)
                if confidence is None
                else _float_column(confidence, "confidence"),
                label=optional(label),
                segments={
                    d: object_array([None] * n)
                    if segs.get(d) is None
                    else as_categories(typed_column(segs[d]))
                    for d in self.segment_dims
                },
                event_time=nans(n) if event_time is None else _float_column(event_time, "time"),
                class_scores={
                    str(k): _float_column(v, f"score of {k!r}") for k, v in (scores or {}).items()
                },
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
                features={name: typed_column(_pad(col, n)) for name, col in p.features.items()},
                prediction=typed_column(p.prediction),
                score=_float_column(p.score, "score"),
                confidence=_float_column(p.confidence, "confidence"),
                label=typed_column(p.label),
                segments={d: as_categories(typed_column(col)) for d, col in p.segments.items()},
                event_time=_float_column(p.event_time, "event time"),
                class_scores={
                    k: _float_column(_pad(col, n), f"score of {k!r}")
                    for k, col in p.class_scores.items()
                },
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

        The task is the builder's, else decided from the outputs (:func:`decide_task`). A
        classifier gets accuracy, top-1 rate and the calibration map (prediction and label
        compared as :func:`category_value` strings); a regression model MAE, RMSE and MAPE
        (MAPE over the labelled rows whose label is not zero), and its label's distribution
        as a numeric column.

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
            No row was added, or the outputs do not fit the builder's task.
        """
        data = self._rows()
        if data is None or data.n == 0:
            raise BaselineError("no rows to build a reference from")
        outputs = _Outputs.of(data, self.positive_class, self.task)
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
            refs = {name: self._reference(col, rows) for name, col in features.items()}
            numeric = {
                name: (col[rows], ref)
                for name, col in features.items()
                if isinstance(ref := refs[name], NumericReference) and not isinstance(col, _Factor)
            }
            segments[key] = SegmentReference(
                count=int(rows.size),
                rate_per_s=None if duration is None else int(timed[rows].sum()) / duration,
                features=refs,
                **outputs.segment(rows, self),
                reconstruction=fit_reconstruction(
                    numeric, self.pca_variance, self.pca_max_features
                ),
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


_FOLDS: Final = 5


def _eigen(second: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric matrix, largest first."""
    eig, vec = np.linalg.eigh(second)
    order = np.argsort(-eig, kind="stable")
    return np.clip(eig[order], 0.0, None), vec[:, order]


def fit_reconstruction(
    columns: Mapping[str, tuple[NDArray[np.float64], NumericReference]],
    variance: float = PCA_VARIANCE,
    max_features: int = PCA_MAX_FEATURES,
) -> ReconstructionReference | None:
    """The PCA of a segment's standardised numeric features and its reconstruction error.

    Each feature is standardised with its reference mean and sd (what the window's
    :class:`~streamproc.sketch.CrossMoments` uses), a null counting as the mean; the
    components are the leading eigenvectors of ``E[z zᵀ]`` over the rows, as many as keep
    ``variance`` of its trace (at least one, at most ``d - 1``, so something is left to
    reconstruct). The reference's error is measured out of sample (5-fold: each row under the
    PCA of the other rows), as live rows are, since in-sample errors are biased low. The
    ``max_features`` fullest features (fewest nulls, ties by name) take part, those with a
    spread only.

    Parameters
    ----------
    columns
        Feature -> (its values over the segment's rows, NaN = null; its reference).
    variance, max_features
        As :class:`ProfileBuilder`'s ``pca_variance`` and ``pca_max_features``.

    Returns
    -------
    ReconstructionReference or None
        ``None`` with fewer than two usable features, or fewer than ``max(100, 2 d)`` rows.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2000, 2))
    >>> cols = {"a": x[:, 0], "b": 0.8 * x[:, 0] + 0.6 * x[:, 1], "c": x[:, 1]}
    >>> rec = fit_reconstruction({k: (v, _numeric_reference(v, 10)) for k, v in cols.items()})
    >>> rec.features, len(rec.components), round(rec.explained, 2), round(rec.error_mean, 2)
    (['a', 'b', 'c'], 1, 0.66, 1.03)
    """
    usable = sorted(
        (ref.nulls, name)
        for name, (_, ref) in columns.items()
        if ref.count >= 2 and ref.mean is not None and ref.std and math.isfinite(ref.std)
    )
    names = sorted(name for _, name in usable[:max_features])
    d = len(names)
    if d < 2:
        return None
    m = int(columns[names[0]][0].size)
    if m < max(100, 2 * d):
        return None
    means = np.array([float(columns[k][1].mean or 0.0) for k in names])
    stds = np.array([float(columns[k][1].std or 1.0) for k in names])
    z = standardised(np.stack([columns[k][0] for k in names], axis=1), means, stds) / MV_SCALE
    eig, vec = _eigen(z.T @ z / m)
    total = float(eig.sum())
    if total <= 0:
        return None
    share = np.cumsum(eig) / total
    k = min(int(np.searchsorted(share, variance - 1e-12)) + 1, d - 1)
    comps = vec[:, :k].T
    comps *= np.where(comps[np.arange(k), np.abs(comps).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    # The error of rows the PCA was fitted on is biased low (the components follow their
    # noise); live rows are new ones. So the reference's error is measured out of sample:
    # each row's error under the k components fitted on the other folds.
    errors = np.empty(m)
    folds = np.arange(m) % _FOLDS
    for f in range(_FOLDS):
        held = folds == f
        rest = z[~held]
        _, fvec = _eigen(rest.T @ rest / rest.shape[0])
        v = fvec[:, :k].T
        errors[held] = np.square(z[held]).sum(axis=1) - np.square(z[held] @ v.T).sum(axis=1)
    mean, sd = float(errors.mean()), float(errors.std(ddof=1))
    skew = float(np.mean((errors - mean) ** 3) / sd**3) if sd > 0 else 0.0
    return ReconstructionReference(
        features=names,
        means=means.tolist(),
        stds=stds.tolist(),
        components=comps.tolist(),
        explained=float(share[k - 1]),
        count=m,
        error_mean=mean,
        error_std=sd,
        error_skew=skew,
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
    task: Task
    classes: _ClassScores | None = None
    losses: LossModelReference | None = None  # regression with labels, fitted on every row

    @classmethod
    def of(cls, data: _Chunk, positive_class: str | None, task: Task | None = None) -> _Outputs:
        n = data.n
        pred = data.prediction if _present(data.prediction).any() else None
        label = data.label if _present(data.label).any() else None
        score = data.score if np.isfinite(data.score).any() else None
        task = decide_task(pred, label, score is not None, task)
        correct = nans(n)
        abs_error = nans(n)
        predicted: NDArray[np.object_] | None = None
        if pred is not None:
            if task == "classification":
                predicted = as_categories(pred)
                pred = predicted
            if label is not None and predicted is not None:
                truth = as_categories(label)
                label = truth
                both = _present(predicted) & _present(truth)
                correct[both] = (predicted[both] == truth[both]).astype(np.float64)
            if task == "regression" and label is not None:
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
        classes = _ClassScores.of(data, predicted, label, score, positive_class)
        losses = None
        if task == "regression" and _numeric_pair(pred, label):
            from streamproc.aggregate.losses import fit_loss_model

            losses = fit_loss_model(pred, label, data.features)
        return cls(
            prediction=None if pred is None else _prepare(pred),
            score=score,
            label=None if label is None else _prepare(label),
            predicted=factor,
            correct=correct,
            abs_error=abs_error,
            confidence=confidence,
            positive_class=positive_class,
            task=task,
            classes=classes,
            losses=losses,
        )

    def segment(self, rows: NDArray[np.intp], builder: ProfileBuilder) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task}
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
        out.update(regression_figures(self.abs_error, self.label, rows))
        if self.predicted is not None:
            counts, _ = self.predicted.counts(rows)
            total = int(counts.sum())
            if total:
                out["top1_rate"] = int(counts.max()) / total
        if self.classes is not None:
            out["class_performance"] = self.classes.segment(rows)
        if self.losses is not None and np.isfinite(self.abs_error[rows]).any():
            out["losses"] = self.losses
        return out


def _numeric_pair(pred: NDArray[Any] | None, label: NDArray[Any] | None) -> bool:
    return (
        isinstance(pred, np.ndarray) and pred.dtype != object
        and isinstance(label, np.ndarray) and label.dtype != object
    )  # fmt: skip


@dataclass
class _ClassScores:
    """Per-class scores and labels of the labelled rows, for the per-class figures."""

    names: list[str]
    positive: str | None  # binary: whose figures are reported
    scores: NDArray[np.float64]  # row x class (in ``names`` order), every row
    truth: NDArray[np.object_]
    predicted: NDArray[np.object_]
    usable: NDArray[np.bool_]  # over every row of the chunk
    rates: dict[str, list[float]]

    @classmethod
    def of(
        cls,
        data: _Chunk,
        predicted: NDArray[np.object_] | None,
        label: NDArray[Any] | None,
        score: NDArray[np.float64] | None,
        positive_class: str | None,
    ) -> _ClassScores | None:
        """``None`` without labels, predicted classes and a score per class (or, for a binary
        model, the positive class's score)."""
        from streamproc.aggregate.scores import MAX_CLASSES
        from streamproc.judge.cbpe import fit_class_rates

        if label is None or predicted is None:
            return None
        truth = as_categories(label)
        given = {k: v for k, v in data.class_scores.items() if np.isfinite(v).any()}
        if not given and score is not None and positive_class is not None:
            seen = {v for v in (*predicted.tolist(), *truth.tolist()) if v is not None}
            others = sorted(seen - {positive_class})
            if len(others) == 1:
                given = {positive_class: score, others[0]: 1.0 - score}
        if not 2 <= len(given) <= MAX_CLASSES:
            return None
        names = sorted(given)
        matrix = np.column_stack([given[c] for c in names])
        usable = (
            _present(truth)
            & _present(predicted)
            & np.all(np.isfinite(matrix) & (matrix >= 0.0) & (matrix <= 1.0), axis=1)
        )
        if not usable.any():
            return None
        positive = None
        if len(names) == 2:
            positive = _positive_of(names, truth[usable], positive_class)
        rates = {
            c: fit_class_rates(matrix[usable, j], truth[usable] == c) for j, c in enumerate(names)
        }
        return cls(names, positive, matrix, truth, predicted, usable, rates)

    def segment(self, rows: NDArray[np.intp]) -> ClassPerformanceReference | None:
        from streamproc.judge.cbpe import METRICS, realise

        rows = rows[self.usable[rows]]
        if not rows.size:
            return None
        truth, predicted = self.truth[rows], self.predicted[rows]
        confusion = Counter(
            f"{p}{SEP}{t}" for p, t in zip(predicted.tolist(), truth.tolist(), strict=True)
        )
        got = realise(confusion, joint_of(truth, self.names, self.scores[rows]), self.names,
                      self.positive)  # fmt: skip
        return ClassPerformanceReference(
            classes=self.names,
            positive_class=self.positive,
            rates=self.rates,
            labelled=int(rows.size),
            realised={
                m: [round(float(x), 6) for x in got[m]]
                for m in METRICS
                if m in got and all(map(math.isfinite, got[m]))
            },
        )


def _positive_of(names: list[str], truth: NDArray[np.object_], given: str | None) -> str:
    """The class a binary model's figures are about: ``given``, else ``1`` or ``true`` (0/1 and
    boolean labels), else the rarer label."""
    if given in names:
        return given  # type: ignore[return-value]
    for yes in ("1", "true", "True", "1.0"):
        if yes in names:
            return yes
    counts = Counter(truth.tolist())
    return min(names, key=lambda c: (counts.get(c, 0), c))


def decide_task(
    prediction: NDArray[Any] | None,
    label: NDArray[Any] | None,
    scored: bool,
    task: Task | None = None,
) -> Task:
    """A model's task from its typed prediction and label columns (``None`` when absent).

    Regression when the predictions are numbers and so are the labels (or there are none),
    unless the predictions are integral with a score (class ids with a probability) or the
    predictions and labels only hold 0 and 1 (a binary classifier without scores);
    classification otherwise. A ``task`` given is checked against the columns instead.

    Raises
    ------
    BaselineError
        ``task`` does not fit the columns: regression with categorical predictions or labels,
        classification with predictions that are not whole numbers.

    Examples
    --------
    >>> num = lambda *v: np.array(v, dtype=np.float64)
    >>> decide_task(num(1.5, 2.0), num(1.0, 2.5), scored=False)
    'regression'
    >>> decide_task(num(0, 1, 1), num(1, 1, 0), scored=False), decide_task(None, None, False)
    ('classification', 'classification')
    >>> try:
    ...     decide_task(object_array(["a", "b"]), None, False, task="regression")
    ... except BaselineError as e:
    ...     print(str(e)[:60])
    --task regression, but the predictions are categorical (e.g.
    """
    numeric_pred = prediction is not None and prediction.dtype != object
    numeric_label = label is None or label.dtype != object
    if task == "regression":
        for what, col in (("predictions", prediction), ("labels", label)):
            if col is not None and col.dtype == object:
                bad = next(v for v in col.tolist() if v is not None)
                raise BaselineError(
                    f"--task regression, but the {what} are categorical (e.g. {bad!r}): a "
                    "regression model predicts numbers; drop --task or give the numeric "
                    f"{what[:-1]} column (--{what[:-1]}-column)"
                )
        return task
    if task == "classification":
        if numeric_pred:
            assert prediction is not None
            finite = prediction[np.isfinite(prediction)]
            fractional = finite[np.mod(finite, 1.0) != 0]
            if fractional.size:
                raise BaselineError(
                    f"--task classification, but the predictions are numbers that are not "
                    f"whole (e.g. {float(fractional[0])!r}): a classifier predicts classes; "
                    "drop --task, or give the column of predicted classes (--prediction-column)"
                )
        return task
    if not numeric_pred or not numeric_label:
        return "classification"
    assert prediction is not None
    finite = prediction[np.isfinite(prediction)]
    integral = bool(np.all(np.mod(finite, 1.0) == 0))
    if integral and scored:
        return "classification"
    values = set(np.unique(finite).tolist())
    if label is not None:
        values |= set(np.unique(label[np.isfinite(label)]).tolist())
    if values <= {0.0, 1.0} and label is not None:
        return "classification"
    return "regression"


def regression_figures(
    abs_error: NDArray[np.float64], label: Prepared | None, rows: NDArray[np.intp]
) -> dict[str, float | int]:
    """MAE, RMSE and MAPE of the rows with a finite error (``abs_error`` NaN elsewhere).

    MAPE (a share, not a percentage) skips the rows whose label is zero; ``mape_labelled``
    says over how many rows it was taken.

    >>> err = np.array([1.0, 3.0, np.nan, 2.0]); y = np.array([2.0, 0.0, 1.0, 4.0])
    >>> regression_figures(err, y, np.arange(4))
    {'mae': 2.0, 'rmse': 2.160246899469287, 'mape': 0.5, 'mape_labelled': 2}
    """
    err = abs_error[rows]
    ok = np.isfinite(err)
    if not ok.any():
        return {}
    e = err[ok]
    out: dict[str, float | int] = {
        "mae": float(e.mean()),
        "rmse": float(np.sqrt(np.mean(np.square(e)))),
    }
    if isinstance(label, np.ndarray) and label.dtype != object:
        y = label[rows][ok]
        nz = y != 0
        if nz.any():
            out["mape"] = float(np.mean(e[nz] / np.abs(y[nz])))
            out["mape_labelled"] = int(nz.sum())
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
