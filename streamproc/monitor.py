"""Drift monitors for one model: event-time windows per segment, statistics, detectors, alerts.

A :class:`ModelMonitor` owns every piece of state for one ``model_id``: the worker routes all of
a model's observations to one place (a topic keyed by model), so adding workers splits models
between them without changing any result.

Within a model, a *monitor* is ``(model_version, segment)`` where segment is all traffic
(``{}``) or one value of one segment dimension (``{"country": "DE"}``). Each monitor keeps, per
open window, mergeable sketches of every feature, of the model's outputs and, once labels join,
of its outcomes. Event time drives everything: a :class:`~streamproc.windows.WindowClock` (per
source lateness, so the result doesn't depend on how partitions interleave) closes *ticks*
(``tick_s``) and *windows* (``window_s``, a multiple of the tick).

- On each closed tick, every numeric feature's standardised mean over the tick feeds an ADWIN
  detector (``update(z * sqrt(n))``: unit variance whatever the tick size); ticks are fed in
  event-time order, so detections are deterministic too.
- On each closed window, every feature and output is compared with the reference: PSI, JS,
  binned KS (numeric) or chi-squared and new categories (categorical), null rate, schema
  (missing feature, type change), volume against the reference rate, top-1 rate, CBPE estimated
  accuracy, and realised accuracy and label drift for outcomes that joined in that window.

Verdicts go through an :class:`~streamproc.alerts.AlertTracker` (one firing per episode,
resolved after ``clear_windows`` clear windows). The monitor returns alerts and one
``metrics.v1`` record per monitor and closed window; publishing them is the caller's business.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import msgspec
import numpy as np

from streamproc.config import MonitoringConfig, Tiers
from streamproc.contracts import Alert, MetricsRecord, Prediction, Scalar, Window
from streamproc.errors import StateEncodingError
from streamproc.judge import stats
from streamproc.judge.alerts import AlertKey, AlertTracker, Kind, Severity, Verdict, iso
from streamproc.judge.detectors import ADWINDetector, PageHinkleyDetector
from streamproc.sketch import (
    OTHER,
    CategoricalSketch,
    NumericSketch,
    QuantileSketch,
    calibration_edges,
)
from streamproc.windows import WindowClock

ALL = "all"
Z_SCALE = 1_000_000
_NO_TICK = -math.inf  # rows folded in outside any detector tick (warm-up rebuild)


class Observation(msgspec.Struct, array_like=True, frozen=True):
    """An accepted prediction as the monitoring stage receives it (no prediction id)."""

    partition: int
    offset: int
    index: int
    event_time: float
    model_version: str
    segments: dict[str, str]
    features: dict[str, float | str | bool | None]
    prediction: Scalar
    confidence: float | None = None
    latency_ms: float | None = None


class Outcome(msgspec.Struct, array_like=True, frozen=True):
    """A joined prediction and label, placed at its label's position (``source`` = "l<p>").

    The join emits an outcome at least once: again after a Redis timeout or a crash before its
    batch was produced, and twice only if the process dies between the produce's ack and the
    offset commit (see :mod:`streamproc.ingest.join`); such a rare duplicate counts twice here. A
    re-read of the keyed topic after a restart is skipped by the stage's applied offsets
    (:attr:`ModelMonitor.applied`), not here.
    """

    source: str
    offset: int
    index: int
    event_time: float  # the label's event time
    model_version: str
    segments: dict[str, str]
    prediction: Scalar
    label: Scalar
    confidence: float | None = None


class MonitorInput(msgspec.Struct, array_like=True, frozen=True):
    """One message of the keyed observations topic: a model's share of one consumed batch."""

    model_id: str
    observations: list[Observation] = []
    outcomes: list[Outcome] = []


def confidence_of(scores: Mapping[str, float] | None, confidence: float | None) -> float | None:
    """The confidence the monitors see: the largest class score, else ``confidence``.

    >>> confidence_of({"yes": 0.8, "no": 0.2}, None), confidence_of(None, 0.6)
    (0.8, 0.6)
    """
    if scores:
        return max(scores.values())
    return confidence


def observation_of(
    event: Prediction, event_time_s: float, partition: int, offset: int, index: int
) -> Observation:
    """The :class:`~streamproc.monitor.Observation` of an accepted prediction.

    ``index`` is the event's position in a batch message, ``-1`` for a single-event message.

    >>> p = Prediction(prediction_id="a", model_id="m", model_version="1", prediction="yes",
    ...                scores={"yes": 0.9, "no": 0.1}, features={"x": 1.0})
    >>> ob = observation_of(p, 10.0, 2, 41, -1)
    >>> ob.partition, ob.offset, ob.confidence, ob.features
    (2, 41, 0.9, {'x': 1.0})
    """
    return Observation(
        partition, offset, index, event_time_s, event.model_version, event.segments,
        event.features, event.prediction, confidence_of(event.scores, event.confidence),
        event.latency_ms,
    )  # fmt: skip


class _PredictionLike(Protocol):
    model_version: str
    segments: dict[str, str]
    prediction: Scalar
    scores: dict[str, float] | None
    confidence: float | None


def outcome_of(
    prediction: _PredictionLike, label: Scalar, label_time: float, origin: str
) -> Outcome:
    """The :class:`~streamproc.monitor.Outcome` of a joined prediction (a ``Prediction`` or the
    join's ``JoinRecord``) and label; ``origin`` is ``"l<partition>:<offset>:<index>"`` (the
    index empty for a single-event message).

    >>> p = Prediction(prediction_id="a", model_id="m", model_version="1", prediction="no")
    >>> oc = outcome_of(p, "yes", 70.0, "l3:120:")
    >>> oc.source, oc.offset, oc.index, oc.label
    ('l3', 120, -1, 'yes')
    """
    source, offset, index = origin.split(":")
    return Outcome(
        source, int(offset), int(index) if index else -1, label_time, prediction.model_version,
        prediction.segments, prediction.prediction, label,
        confidence_of(prediction.scores, prediction.confidence),
    )  # fmt: skip


_INPUT_MAGIC = b"SPO1"
_INPUT_DEC = msgspec.msgpack.Decoder(MonitorInput)
_ENC = msgspec.msgpack.Encoder()


def encode_input(batch: MonitorInput) -> bytes:
    return _INPUT_MAGIC + _ENC.encode(batch)


def decode_input(blob: bytes) -> MonitorInput:
    if blob[:4] != _INPUT_MAGIC:
        raise StateEncodingError(f"not a monitor input (header {blob[:4]!r})")
    return _INPUT_DEC.decode(blob[4:])


def segment_of(key: str) -> dict[str, str]:
    if key == ALL:
        return {}
    dim, _, value = key.partition("=")
    return {dim: value}


def _label(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _severity(value: float, tiers: Tiers, higher_is_worse: bool = True) -> Severity | None:
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
    """
    from scipy.stats import chi2

    n_eff = n * ref_n / (n + ref_n) if ref_n else float(n)
    p = float(chi2.sf(psi * n_eff, max(bins - 1, 1)))
    severity = _severity(psi, tiers)
    return (severity if p < alpha else None), p


# -- references ---------------------------------------------------------------------------------


@dataclass
class NumRef:
    edges: np.ndarray
    probs: np.ndarray
    mean: float
    std: float
    min: float
    max: float
    count: int
    nulls: int

    @property
    def null_rate(self) -> float:
        total = self.count + self.nulls
        return self.nulls / total if total else 0.0


@dataclass
class CatRef:
    probs: dict[str, float]
    count: int
    nulls: int

    @property
    def null_rate(self) -> float:
        total = self.count + self.nulls
        return self.nulls / total if total else 0.0


@dataclass
class SegRef:
    """A monitor's reference, whatever produced it (a baseline, or the warm-up window)."""

    count: int
    rate_per_s: float | None
    features: dict[str, NumRef | CatRef]
    prediction: NumRef | CatRef | None
    score: NumRef | None
    label: NumRef | CatRef | None
    accuracy: float | None
    calibration: stats.CalibrationMap | None
    origin: str  # "baseline" | "warmup"


def _convert_ref(fr: Any) -> NumRef | CatRef | None:
    """Adapt one baseline column; ``None`` where it holds nothing to compare against."""
    if fr is None:
        return None
    if hasattr(fr, "edges"):
        if not len(fr.probs) or fr.mean is None:
            return None
        return NumRef(
            np.asarray(fr.edges, dtype=float), np.asarray(fr.probs, dtype=float),
            float(fr.mean), float(fr.std or 0.0), float(fr.min), float(fr.max),
            int(fr.count), int(fr.nulls),
        )  # fmt: skip
    if not fr.probs:
        return None
    return CatRef(dict(fr.probs), int(fr.count), int(fr.nulls))


def segref_from_baseline(seg: Any, origin: str = "baseline") -> SegRef:
    """Adapt a :mod:`streamproc.baseline` segment reference."""
    cal = None
    if getattr(seg, "calibration", None) is not None:
        c = seg.calibration
        cal = stats.CalibrationMap(
            np.asarray(c.edges, dtype=float),
            np.asarray(c.accuracy, dtype=float),
            np.asarray(c.counts, dtype=np.int64),
        )
    score = _convert_ref(getattr(seg, "score", None))
    return SegRef(
        count=int(seg.count),
        rate_per_s=seg.rate_per_s,
        features={k: r for k, v in seg.features.items() if (r := _convert_ref(v)) is not None},
        prediction=_convert_ref(seg.prediction),
        score=score if isinstance(score, NumRef) else None,
        label=_convert_ref(seg.label),
        accuracy=seg.accuracy,
        calibration=cal,
        origin=origin,
    )


# -- window state -------------------------------------------------------------------------------


class _WindowState(msgspec.Struct):
    """Everything one monitor accumulates in one open window, in stored form."""

    count: int = 0
    numeric: dict[str, bytes] = {}
    categorical: dict[str, bytes] = {}
    mismatched: dict[str, int] = {}
    unknown: dict[str, int] = {}
    prediction: bytes = b""
    score: bytes = b""
    latency: bytes = b""
    offsets: dict[str, list[int]] = {}
    labelled: int = 0
    correct: int = 0
    abs_error: float = 0.0
    labels: bytes = b""
    sample: list[list[Any]] = []  # warm-up rows: [hash, features, prediction, confidence]


@dataclass
class WindowAgg:
    """Live (unpacked) form of a monitor's window."""

    count: int = 0
    numeric: dict[str, NumericSketch] = field(default_factory=dict)
    categorical: dict[str, CategoricalSketch] = field(default_factory=dict)
    mismatched: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    prediction: NumericSketch | CategoricalSketch | None = None
    score: NumericSketch | None = None
    latency: QuantileSketch = field(default_factory=QuantileSketch)
    offsets: dict[str, list[int]] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0
    abs_error: float = 0.0
    labels: CategoricalSketch = field(default_factory=CategoricalSketch)
    sample: list[list[Any]] = field(default_factory=list)

    def pack(self) -> _WindowState:
        def pred_bytes() -> bytes:
            if self.prediction is None:
                return b""
            return self.prediction.to_bytes()

        return _WindowState(
            self.count,
            {k: v.to_bytes() for k, v in self.numeric.items()},
            {k: v.to_bytes() for k, v in self.categorical.items()},
            dict(self.mismatched),
            dict(self.unknown),
            pred_bytes(),
            self.score.to_bytes() if self.score is not None else b"",
            self.latency.to_bytes(),
            dict(self.offsets),
            self.labelled,
            self.correct,
            self.abs_error,
            self.labels.to_bytes(),
            list(self.sample),
        )

    @classmethod
    def unpack(cls, s: _WindowState) -> WindowAgg:
        pred: NumericSketch | CategoricalSketch | None = None
        if s.prediction[:4] == NumericSketch.MAGIC:
            pred = NumericSketch.from_bytes(s.prediction)
        elif s.prediction:
            pred = CategoricalSketch.from_bytes(s.prediction)
        return cls(
            s.count,
            {k: NumericSketch.from_bytes(v) for k, v in s.numeric.items()},
            {k: CategoricalSketch.from_bytes(v) for k, v in s.categorical.items()},
            dict(s.mismatched),
            dict(s.unknown),
            pred,
            NumericSketch.from_bytes(s.score) if s.score else None,
            QuantileSketch.from_bytes(s.latency),
            dict(s.offsets),
            s.labelled,
            s.correct,
            s.abs_error,
            CategoricalSketch.from_bytes(s.labels),
            list(s.sample),
        )


@dataclass
class Segment:
    """One monitor: (model_version, segment key)."""

    version: str
    key: str
    ref: SegRef | None = None
    windows: dict[float, WindowAgg] = field(default_factory=dict)
    ticks: dict[float, dict[str, list[int]]] = field(default_factory=dict)  # f -> [sum, n]
    adwin: dict[str, ADWINDetector] = field(default_factory=dict)
    detections: dict[str, list[float]] = field(default_factory=dict)  # feature -> tick starts
    # Page-Hinkley beside ADWIN on the same standardised tick means (two-sided).
    page_hinkley: dict[str, PageHinkleyDetector] = field(default_factory=dict)
    ph_detections: dict[str, list[float]] = field(default_factory=dict)
    _cal_edges: list[float] | None = None  # the reference calibration's edges, as a list

    def calibration_edges(self) -> list[float] | None:
        """Inner edges of the reference's confidence bins (``None``: no calibration map)."""
        if self._cal_edges is None and self.ref is not None and self.ref.calibration is not None:
            self._cal_edges = self.ref.calibration.edges.tolist()
        return self._cal_edges

    warm_windows: int = 0
    warm_count: int = 0
    warm_rows: list[list[Any]] = field(default_factory=list)
    # Windows opened before the warm-up reference existed are partial: not judged.
    judge_from: float = -math.inf
    past_counts: list[int] = field(default_factory=list)
    # The joined error stream (0/1, standardised against the reference error rate) per tick.
    error_ticks: dict[float, list[int]] = field(default_factory=dict)
    tick_offsets: dict[float, dict[str, list[int]]] = field(default_factory=dict)
    error_adwin: ADWINDetector | None = None
    error_detections: list[float] = field(default_factory=list)


def _row_hash(partition: int, offset: int, index: int) -> int:
    digest = hashlib.blake2b(f"{partition}:{offset}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class Output:
    alerts: list[Alert] = field(default_factory=list)
    metrics: list[MetricsRecord] = field(default_factory=list)
    detections: list[tuple[str, str, str]] = field(default_factory=list)  # detector, seg, feat


class _NumColumn(NamedTuple):
    """One batch's values of a numeric field: float64 with NaN where there is no number."""

    values: np.ndarray
    finite: np.ndarray | None  # finite numbers; None: every value is one
    number: np.ndarray | None  # numbers, finite or not (not bool); None: every value is one
    null: np.ndarray | None  # None values; None: there are none


def _num_column(raw: Sequence[Any]) -> _NumColumn:
    n = len(raw)
    kinds = set(map(type, raw))
    number: np.ndarray | None
    null: np.ndarray | None
    if kinds <= {float, type(None)}:  # the usual case: numpy reads None as NaN
        values = np.array(raw, dtype=np.float64)
        number = null = None
        if None in kinds:
            null = np.fromiter((v is None for v in raw), bool, n)
            number = ~null
    else:
        number = np.fromiter(map(_is_num, raw), bool, n)
        null = np.fromiter((v is None for v in raw), bool, n)
        ok = number.tolist()
        values = np.array(
            [float(v) if is_num else math.nan for v, is_num in zip(raw, ok, strict=True)],
            dtype=np.float64,
        )
        number = None if number.all() else number
        null = null if null.any() else None
    finite = np.isfinite(values)
    return _NumColumn(values, None if finite.all() else finite, number, null)


def _counts(mask: np.ndarray, sizes: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many rows of each consecutive group (``sizes``, ending at ``ends``) ``mask`` holds."""
    cs = np.concatenate(([0], mask.cumsum()))
    return cs[ends] - cs[ends - sizes]


@dataclass
class _Group:
    """The rows of a batch that go to one monitor's window and tick."""

    seg: Segment
    agg: WindowAgg
    tstart: float
    idx: np.ndarray  # row numbers in the batch, in arrival order


class _Batch:
    """A batch of observations as columns, each built once, on first use.

    An observation feeds about three monitors (all traffic, its country, its device), each
    split by window and tick; every such group indexes into these shared columns.
    """

    def __init__(self, obs: Sequence[Observation]) -> None:
        self.obs = obs
        self._features = [ob.features for ob in obs]
        self._numeric: dict[str, _NumColumn] = {}
        self._labels: dict[str, Sequence[str | None]] = {}
        self._raws: dict[str, tuple[list[Any], bool]] = {}
        self._cache: dict[Any, Any] = {}

    def numeric(self, name: str) -> _NumColumn:
        col = self._numeric.get(name)
        if col is None:
            col = self._numeric[name] = _num_column(self._raw(name))
        return col

    def labels(self, name: str) -> Sequence[str | None]:
        """A categorical feature's labels (``None`` for null), row by row."""
        labels = self._labels.get(name)
        if labels is None:
            raw = self._raw(name)
            if set(map(type, raw)) <= {str, type(None)}:
                labels = raw  # _label(s) == s
            else:
                labels = [None if v is None else _label(v) for v in raw]
            self._labels[name] = labels
        return labels

    def _column(self, what: str, build: Any) -> Any:
        col = self._cache.get(what)
        if col is None:
            col = self._cache[what] = build()
        return col

    def prediction_labels(self) -> list[str]:
        def build() -> list[str]:
            raw = [ob.prediction for ob in self.obs]
            if set(map(type, raw)) <= {str}:
                return raw  # type: ignore[return-value]  # _label(s) == s
            return [_label(v) for v in raw]

        return self._column("pl", build)  # type: ignore[no-any-return]

    def predictions(self) -> _NumColumn:
        return self._column("pn", lambda: _num_column([ob.prediction for ob in self.obs]))  # type: ignore[no-any-return]

    def _optional(self, what: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A float-or-None field: values (NaN for None) and where it is set (None: all rows)."""

        def build() -> tuple[np.ndarray, np.ndarray | None]:
            raw = [getattr(ob, what) for ob in self.obs]
            values = np.array(raw, dtype=np.float64)
            if None not in raw:
                return values, None
            return values, np.fromiter((v is not None for v in raw), bool, len(raw))

        return self._column(what, build)  # type: ignore[no-any-return]

    def confidence(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self._optional("confidence")

    def latency(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self._optional("latency_ms")

    def gather(
        self, groups: list[_Group], gis: list[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows of groups ``gis`` end to end, each group's size and end in that array."""
        key = ("g", *gis)
        got = self._cache.get(key)
        if got is None:
            idx = np.concatenate([groups[gi].idx for gi in gis])
            sizes = np.array([len(groups[gi].idx) for gi in gis], dtype=np.int64)
            got = self._cache[key] = (idx, sizes, sizes.cumsum())
        return got  # type: ignore[no-any-return]

    def label_counts(
        self, what: str, labels: Sequence[str | None], groups: list[_Group], gis: list[int]
    ) -> dict[int, tuple[dict[str, int], int]]:
        """Per group of ``gis``: its labels' counts in order of first appearance, and nulls."""

        def factorize() -> tuple[np.ndarray, list[str | None]]:
            index: dict[str | None, int] = {None: 0}
            codes = [index.setdefault(v, len(index)) for v in labels]
            return np.array(codes, dtype=np.int64), list(index)

        codes, names = self._column(("codes", what), factorize)
        idx, sizes, _ = self.gather(groups, gis)
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

    def spans(self, idx: np.ndarray) -> list[tuple[str, int, int]]:
        """``(partition, lowest offset, highest offset)`` of rows ``idx``, partitions in order of
        first appearance."""
        part, off = self._column(
            "po",
            lambda: (
                np.array([ob.partition for ob in self.obs], dtype=np.int64),
                np.array([ob.offset for ob in self.obs], dtype=np.int64),
            ),
        )
        p, o = part[idx], off[idx]
        if not p.size:
            return []
        if (p == p[0]).all():
            return [(str(int(p[0])), int(o.min()), int(o.max()))]
        order = p.argsort(kind="stable")
        ps = p[order]
        starts = np.flatnonzero(np.concatenate(([True], ps[1:] != ps[:-1])))
        os_ = o[order]
        lo = np.minimum.reduceat(os_, starts).tolist()
        hi = np.maximum.reduceat(os_, starts).tolist()
        parts = ps[starts].tolist()
        first = order[starts]  # a stable sort keeps each partition's first row first
        return [(str(parts[k]), lo[k], hi[k]) for k in first.argsort().tolist()]

    def row_hash(self, i: int) -> int:
        hashes = self._column("h", lambda: {})
        h = hashes.get(i)
        if h is None:
            ob = self.obs[i]
            h = hashes[i] = _row_hash(ob.partition, ob.offset, ob.index)
        return h  # type: ignore[no-any-return]

    def _raw(self, name: str) -> list[Any]:
        """A feature's values row by row (``None`` where absent)."""
        got = self._raws.get(name)
        if got is None:
            try:  # every row has it: the usual case, and the fastest way to read it
                column = list(map(operator.itemgetter(name), self._features))
                got = self._raws[name] = (column, True)
            except KeyError:
                got = self._raws[name] = ([f.get(name) for f in self._features], False)
        return got[0]

    def has_unknown(self, rows: list[int], known: Mapping[str, Any]) -> bool:
        """Whether any of ``rows`` has a feature that is not a key of ``known``."""
        verdicts: dict[int, bool] = self._column("unknown", dict)
        none = verdicts.get(id(known))
        if none is None:
            # Rows with exactly len(known) features, all of them known ones, have no other.
            lengths: set[int] = self._column("lengths", lambda: set(map(len, self._features)))
            none = verdicts[id(known)] = lengths <= {len(known)} and all(
                self._raw(name) is not None and self._raws[name][1] for name in known
            )
        if none:
            return False
        return any(not self._features[i].keys() <= known.keys() for i in rows)


class ModelMonitor:
    """Every monitor of one model; see the module docstring.

    Parameters
    ----------
    model_id
        The model this object watches.
    cfg
        The ``monitoring`` configuration; its overrides for this model
        (``monitoring.models[model_id]``) are applied here, so every caller gets them.
    sources
        The source partitions that feed it (e.g. ``["p0", ..., "p5"]``), declared up front so
        that window contents do not depend on which source speaks first.
    references
        ``(model_version, segment key) -> SegRef`` from the baseline; monitors without one
        take their first ``warmup_windows`` windows as the reference.
    topic
        The predictions topic, named in alerts' ``source`` so they can be replayed.
    """

    def __init__(
        self,
        model_id: str,
        cfg: MonitoringConfig,
        sources: Sequence[str],
        references: dict[tuple[str, str], SegRef] | None = None,
        topic: str = "predictions",
    ) -> None:
        cfg = cfg.for_model(model_id)
        if abs(cfg.window_s / cfg.tick_s - round(cfg.window_s / cfg.tick_s)) > 1e-9:
            raise ValueError("monitoring.window_s must be a multiple of monitoring.tick_s")
        self.model_id = model_id
        self.cfg = cfg
        self.topic = topic
        self.references = dict(references or {})
        self.clock = WindowClock(cfg.tick_s, cfg.lateness_s)
        self.clock.expect(sources)
        self.outcome_clock = WindowClock(cfg.tick_s, cfg.lateness_s)
        self.segments: dict[tuple[str, str], Segment] = {}
        self.tracker = AlertTracker(cfg.clear_windows)
        self.high: dict[str, tuple[int, int]] = {}  # source -> (offset, index) processed
        self.applied: dict[int, int] = {}  # keyed-topic partition -> last offset folded in
        self.windows_closed_until = -math.inf
        self.outcome_windows: dict[float, dict[tuple[str, str], WindowAgg]] = {}
        # Per outcome window and monitor, per reference confidence bin: [labelled, sum of
        # confidence in millionths, correct]. Integers, so the ECE is the same in any order.
        self.outcome_calibration: dict[float, dict[tuple[str, str], list[list[int]]]] = {}
        # Segment values per dimension: the baseline's, else the first max_segment_values seen;
        # any other value is monitored as "__other__", so state and metric labels stay bounded.
        self.known_values: dict[str, set[str]] = {}
        self._fixed_dims: set[str] = set()
        for _, key in self.references:
            if key != ALL:
                dim, _, value = key.partition("=")
                self.known_values.setdefault(dim, set()).add(value)
                self._fixed_dims.add(dim)

    def keys_of(self, segments: dict[str, str]) -> list[str]:
        """The monitors an event belongs to, with rare or unknown values as ``__other__``."""
        dims = self.cfg.segment_dims
        keys = [ALL]
        for dim, value in sorted(segments.items()):
            if dims is not None and dim not in dims:
                continue
            known = self.known_values.setdefault(dim, set())
            if value not in known:
                if dim in self._fixed_dims or len(known) >= self.cfg.max_segment_values:
                    value = OTHER
                else:
                    known.add(value)
            keys.append(f"{dim}={value}")
        return keys

    # -- intake ----------------------------------------------------------------------------------

    def _fresh(self, source: str, offset: int, index: int) -> bool:
        seen = self.high.get(source)
        if seen is not None and (offset, index) <= seen:
            return False
        self.high[source] = (offset, index)
        return True

    def _segment(self, version: str, key: str) -> Segment:
        seg = self.segments.get((version, key))
        if seg is None:
            seg = self.segments[(version, key)] = Segment(version, key)
            seg.ref = self._narrowed(self.references.get((version, key)))
        return seg

    def _narrowed(self, ref: SegRef | None) -> SegRef | None:
        """``ref`` with only the features ``monitoring.features`` names (all when unset)."""
        watched = self.cfg.features
        if ref is None or watched is None:
            return ref
        return replace(ref, features={k: v for k, v in ref.features.items() if k in watched})

    def _window(self, seg: Segment, start: float) -> WindowAgg:
        agg = seg.windows.get(start)
        if agg is None:
            agg = seg.windows[start] = WindowAgg()
            ref = seg.ref
            if ref is not None:
                for name, fr in ref.features.items():
                    if isinstance(fr, NumRef):
                        agg.numeric[name] = NumericSketch(fr.edges, fr.min, fr.max)
                    else:
                        agg.categorical[name] = CategoricalSketch()
                if isinstance(ref.prediction, NumRef):
                    p = ref.prediction
                    agg.prediction = NumericSketch(p.edges, p.min, p.max)
                elif ref.prediction is not None:
                    agg.prediction = CategoricalSketch()
                edges = ref.calibration.edges if ref.calibration is not None else None
                if edges is None and ref.score is not None:
                    edges = ref.score.edges
                agg.score = NumericSketch(edges if edges is not None else calibration_edges(10))
        return agg

    def observe(self, observations: Iterable[Observation]) -> None:
        """Fold accepted predictions in (duplicates from redelivery are skipped).

        Events are grouped by (monitor, window, tick) first; the batch's columns are then built
        once and every group takes index arrays into them, so each sketch gets vectorised
        updates and an event's values are not rebuilt for each of its monitors.
        """
        groups: dict[tuple[str, str, float, float], list[int]] = {}
        kept: list[Observation] = []
        sources: dict[int, str] = {}
        keys_cache: dict[tuple[tuple[str, str], ...], list[str]] = {}
        window_s, window_start = self.cfg.window_s, self.clock.window_start
        for ob in observations:
            source = sources.get(ob.partition)
            if source is None:
                source = sources[ob.partition] = f"p{ob.partition}"
            if not self._fresh(source, ob.offset, ob.index):
                continue
            if not self.clock.admit(source, ob.event_time):
                continue
            wstart = math.floor(ob.event_time / window_s) * window_s
            tstart = window_start(ob.event_time)
            # keys_of gives the same answer for the same segments once it has seen them.
            seg_items = tuple(ob.segments.items())
            keys = keys_cache.get(seg_items)
            if keys is None:
                keys = keys_cache[seg_items] = self.keys_of(ob.segments)
            i = len(kept)
            kept.append(ob)
            for key in keys:
                groups.setdefault((ob.model_version, key, wstart, tstart), []).append(i)
        batch = _Batch(kept)
        work = []
        for (version, key, wstart, tstart), idx in groups.items():
            seg = self._segment(version, key)
            work.append(_Group(seg, self._window(seg, wstart), tstart, np.asarray(idx)))
        self._fold(batch, work)

    def _add(self, seg: Segment, agg: WindowAgg, tstart: float, obs: list[Observation]) -> None:
        self._fold(_Batch(obs), [_Group(seg, agg, tstart, np.arange(len(obs)))])

    def _fold(self, batch: _Batch, groups: list[_Group]) -> None:
        """Fold each group's rows of ``batch`` into its monitor's window and tick.

        The same, bit for bit, as folding each group's observations one group after another
        (the order sketches and dicts see them in is kept): per-feature work for all groups is
        vectorised first, then each group's small per-feature results are applied in order.
        """
        # Vectorised over all groups: numeric features (sketches, mismatches, tick sums), scores.
        rank: dict[int, int] = {}
        numeric: dict[str, list[int]] = {}
        scored: list[int] = []
        for gi, g in enumerate(groups):
            ref = g.seg.ref
            if ref is None:
                continue
            rank.setdefault(id(g.seg), len(rank))
            for name, fr in ref.features.items():
                if isinstance(fr, NumRef):
                    numeric.setdefault(name, []).append(gi)
            if g.agg.score is not None:
                scored.append(gi)
        # Features fed to the same groups go through together: one pass for all of them.
        together: dict[tuple[int, ...], list[str]] = {}
        for name, gis in numeric.items():
            together.setdefault(tuple(gis), []).append(name)
        results: dict[str, dict[int, tuple[int, int, int]]] = {}
        for gis_key, names in together.items():
            # Stable sort: a segment's groups are adjacent (one binning pass each), and a
            # window's sketch still takes its ticks' slices in arrival order.
            gis = sorted(gis_key, key=lambda gi: rank[id(groups[gi].seg)])
            results.update(self._fold_numeric(batch, groups, names, gis))
        if scored:
            idx, sizes, ends = batch.gather(groups, scored)
            conf, has = batch.confidence()
            if has is None:
                x, counts = conf[idx], sizes
            else:
                x, counts = conf[idx][has[idx]], _counts(has[idx], sizes, ends)
            score_sketches = [groups[gi].agg.score for gi in scored]
            NumericSketch.update_groups(score_sketches, x, counts)  # type: ignore[arg-type]
        categorical: dict[str, list[int]] = {}
        predicted: list[int] = []
        for gi, g in enumerate(groups):
            if g.seg.ref is None:
                continue
            for name, fr in g.seg.ref.features.items():
                if not isinstance(fr, NumRef):
                    categorical.setdefault(name, []).append(gi)
            if isinstance(g.agg.prediction, CategoricalSketch):
                predicted.append(gi)
        label_counts = {
            name: batch.label_counts(name, batch.labels(name), groups, gis)
            for name, gis in categorical.items()
        }
        if predicted:
            predictions = batch.label_counts("", batch.prediction_labels(), groups, predicted)
        # Per group, in order: counts, offsets, latency, categorical, dict entries.
        obs = batch.obs
        for gi, g in enumerate(groups):
            seg, agg, tstart, idx = g.seg, g.agg, g.tstart, g.idx
            agg.count += len(idx)
            tick_offsets = seg.tick_offsets.setdefault(tstart, {})
            spans = batch.spans(idx)
            for offsets in (agg.offsets, tick_offsets):
                for partition, lo, hi in spans:
                    span = offsets.get(partition)
                    if span is None:
                        offsets[partition] = [lo, hi]
                    else:
                        span[0] = min(span[0], lo)
                        span[1] = max(span[1], hi)
            latency, has_latency = batch.latency()
            lat = latency[idx] if has_latency is None else latency[idx][has_latency[idx]]
            if lat.size:
                agg.latency.update_many(lat)
            ref = seg.ref
            rows = idx.tolist()
            if ref is None:
                for i in rows:
                    self._sample(agg, obs[i], batch.row_hash(i))
                continue
            tick = seg.ticks.setdefault(tstart, {})
            for name, fr in ref.features.items():
                if isinstance(fr, NumRef):
                    mismatched, total, n = results[name][gi]
                    if mismatched:
                        agg.mismatched[name] = agg.mismatched.get(name, 0) + mismatched
                    if n and fr.std > 0:
                        acc = tick.setdefault(name, [0, 0])
                        acc[0] += total
                        acc[1] += n
                else:
                    agg.categorical[name].update_counts(*label_counts[name][gi])
            if batch.has_unknown(rows, ref.features):
                for i in rows:
                    for name in obs[i].features.keys() - ref.features.keys():
                        if self.cfg.features is None or name in self.cfg.features:
                            agg.unknown[name] = agg.unknown.get(name, 0) + 1
            if isinstance(agg.prediction, NumericSketch):
                col = batch.predictions()
                preds = col.values[idx]
                if col.number is not None:
                    preds = preds[col.number[idx]]
                agg.prediction.update_many(preds)
            elif agg.prediction is not None:
                agg.prediction.update_counts(*predictions[gi])

    def _fold_numeric(
        self, batch: _Batch, groups: list[_Group], names: list[str], gis: list[int]
    ) -> dict[str, dict[int, tuple[int, int, int]]]:
        """Numeric features ``names`` for the groups ``gis`` (a segment's groups adjacent):
        update their sketches; return per feature and group (mismatched values, tick sum,
        tick count). Work items are (feature, group) pairs, feature-major."""
        idx, sizes, _ = batch.gather(groups, gis)
        cols = [batch.numeric(name) for name in names]
        n_groups = len(gis)
        values = np.stack([c.values for c in cols])[:, idx].ravel()
        n_all = np.tile(sizes, len(names))
        if all(c.finite is None for c in cols):  # every value a finite number: no filtering
            nums, n_nums, nulls = values, n_all, None
            fin, n_fin = values, n_all
            mismatched = [0] * n_all.size
        else:
            ends = n_all.cumsum()

            def mask(part: str, absent: bool) -> np.ndarray:
                """The columns' ``part`` masks over the work items (``absent`` where None)."""
                fill = np.full(len(batch.obs), absent)
                rows = [getattr(c, part) for c in cols]
                return np.stack([fill if m is None else m for m in rows])[:, idx].ravel()

            n_null = _counts(mask("null", False), n_all, ends)
            is_num = mask("number", True)
            nums, n_nums = values[is_num], _counts(is_num, n_all, ends)
            nulls = n_null.tolist()
            mismatched = (n_all - n_nums - n_null).tolist()
            is_fin = mask("finite", True)
            fin, n_fin = values[is_fin], _counts(is_fin, n_all, ends)
        sketches = [groups[gi].agg.numeric[name] for name in names for gi in gis]
        NumericSketch.update_groups(sketches, nums, n_nums, nulls)
        # Tick sums in fixed point (micro-sd integers): exact in any order or grouping, so the
        # detector sees the same values however batches were cut. Non-finite values (counted
        # as nulls by the sketch) stay out of them.
        scale = np.zeros(n_all.size)  # per work item: the reference's (mean, sd) when sd > 0
        centre = np.zeros(n_all.size)
        k = 0
        for name in names:
            for gi in gis:
                fr = groups[gi].seg.ref.features[name]  # type: ignore[union-attr]
                if fr.std > 0:  # type: ignore[union-attr]
                    centre[k], scale[k] = fr.mean, fr.std  # type: ignore[union-attr]
                k += 1
        totals = [0] * n_all.size
        if fin.size and scale.any():
            ok = scale > 0
            if ok.all():
                z = np.rint((fin - centre.repeat(n_fin)) / scale.repeat(n_fin) * Z_SCALE)
            else:
                sd = np.where(ok, scale, 1.0).repeat(n_fin)
                z = np.rint((fin - centre.repeat(n_fin)) / sd * Z_SCALE)
                z[~ok.repeat(n_fin)] = 0.0
            cs = np.concatenate(([0], z.astype(np.int64).cumsum()))
            f_ends = n_fin.cumsum()
            totals = (cs[f_ends] - cs[f_ends - n_fin]).tolist()
        per_item = list(zip(mismatched, totals, n_fin.tolist(), strict=True))
        return {
            name: dict(zip(gis, per_item[f * n_groups : (f + 1) * n_groups], strict=True))
            for f, name in enumerate(names)
        }

    def _sample(self, agg: WindowAgg, ob: Observation, h: int | None = None) -> None:
        """Bottom-k sample by a hash of the event's position: the same whatever the order."""
        if h is None:
            h = _row_hash(ob.partition, ob.offset, ob.index)
        k = self.cfg.warmup_sample
        if len(agg.sample) >= k and h >= agg.sample[-1][0]:
            return
        row = [h, dict(ob.features), ob.prediction, ob.confidence]
        lo, hi = 0, len(agg.sample)
        while lo < hi:
            mid = (lo + hi) // 2
            if agg.sample[mid][0] < h:
                lo = mid + 1
            else:
                hi = mid
        agg.sample.insert(lo, row)
        if len(agg.sample) > k:
            agg.sample.pop()

    def observe_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        """Fold joined outcomes in, windowed by the label's event time."""
        for oc in outcomes:
            if not self.outcome_clock.admit(oc.source, oc.event_time):
                continue
            wstart = math.floor(oc.event_time / self.cfg.window_s) * self.cfg.window_s
            cell = self.outcome_windows.setdefault(wstart, {})
            for key in self.keys_of(oc.segments):
                agg = cell.get((oc.model_version, key))
                if agg is None:
                    agg = cell[(oc.model_version, key)] = WindowAgg()
                agg.labelled += 1
                if _is_num(oc.prediction) and _is_num(oc.label):
                    agg.abs_error += abs(float(oc.prediction) - float(oc.label))  # type: ignore[arg-type]
                right = _label(oc.prediction) == _label(oc.label)
                if right:
                    agg.correct += 1
                agg.labels.update(_label(oc.label))
                seg = self._segment(oc.model_version, key)
                edges = seg.calibration_edges()
                if edges is not None and oc.confidence is not None and 0 <= oc.confidence <= 1:
                    cal = self.outcome_calibration.setdefault(wstart, {}).get(
                        (oc.model_version, key)
                    )
                    if cal is None:
                        cal = [[0] * (len(edges) + 1) for _ in range(3)]
                        self.outcome_calibration[wstart][(oc.model_version, key)] = cal
                    b = bisect.bisect_left(edges, oc.confidence)
                    cal[0][b] += 1
                    cal[1][b] += round(oc.confidence * Z_SCALE)
                    cal[2][b] += 1 if right else 0
                acc = seg.ref.accuracy if seg.ref is not None else None
                if acc is not None and 0.0 < acc < 1.0:
                    err, sd = 1.0 - acc, math.sqrt(acc * (1.0 - acc))
                    tick = seg.error_ticks.setdefault(
                        self.outcome_clock.window_start(oc.event_time), [0, 0]
                    )
                    tick[0] += round(((0.0 if right else 1.0) - err) / sd * Z_SCALE)
                    tick[1] += 1

    # -- closing ---------------------------------------------------------------------------------

    def retire(self, source: str) -> None:
        """Stop waiting for a quiet source (idle timeout)."""
        self.clock.retire(source)
        self.outcome_clock.retire(source)

    def advance(self, emitted_at: str, final: bool = False) -> Output:
        """Close every tick and window the watermark allows (``final``: everything open)."""
        out = Output()
        boundary = math.inf if final else self.clock.close_until()
        complete = self.clock.close_until()
        # Close ticks and windows in event-time order (a tick before the window it ends), so
        # a window judges exactly the detections of its own ticks however far the watermark
        # jumped in one call.
        closing: list[tuple[float, int, str, str, float]] = []
        for seg in self.segments.values():
            closing += [
                (t + self.cfg.tick_s, 0, seg.version, seg.key, t)
                for t in seg.ticks
                if t + self.cfg.tick_s <= boundary
            ]
        starts = {w for seg in self.segments.values() for w in seg.windows}
        closing += [
            (w + self.cfg.window_s, 1, "", "", w)
            for w in starts
            if w + self.cfg.window_s <= boundary
        ]
        for _, kind, version, key, start in sorted(closing):
            if kind == 0:
                seg = self.segments[(version, key)]
                self._close_tick(seg, start, seg.ticks.pop(start), emitted_at, out)
            else:
                # A window closed only because input ended is partial: its volume means nothing.
                self._close_window(start, emitted_at, out, start + self.cfg.window_s <= complete)
        for seg in self.segments.values():  # ticks no detector needed (warm-up, no numerics)
            for t in [t for t in seg.tick_offsets if t + self.cfg.tick_s <= boundary]:
                del seg.tick_offsets[t]
        o_boundary = math.inf if final else self.outcome_clock.close_until()
        closing = [
            (t + self.cfg.tick_s, 0, seg.version, seg.key, t)
            for seg in self.segments.values()
            for t in seg.error_ticks
            if t + self.cfg.tick_s <= o_boundary
        ]
        closing += [
            (w + self.cfg.window_s, 1, "", "", w)
            for w in self.outcome_windows
            if w + self.cfg.window_s <= o_boundary
        ]
        for _, kind, version, key, start in sorted(closing):
            if kind == 0:
                seg = self.segments[(version, key)]
                self._close_error_tick(seg, start, seg.error_ticks.pop(start), emitted_at, out)
            else:
                self._close_outcomes(
                    start,
                    self.outcome_windows.pop(start),
                    self.outcome_calibration.pop(start, {}),
                    emitted_at,
                    out,
                )
        return out

    def _close_error_tick(
        self, seg: Segment, tstart: float, tick: list[int], emitted_at: str, out: Output
    ) -> None:
        """Concept drift between windows: ADWIN on the standardised error rate per tick."""
        total, n = tick[0] / Z_SCALE, tick[1]
        if n <= 0 or seg.ref is None or seg.ref.accuracy is None:
            return
        if seg.error_adwin is None:
            delta = self.cfg.adwin_error_delta / self._n_segments(seg.version)
            seg.error_adwin = ADWINDetector(delta=delta, clock=1)
        seg.error_adwin.update(total / math.sqrt(n))
        if not seg.error_adwin.drift_detected:
            return
        seg.error_detections.append(tstart)
        out.detections.append(("adwin_error", seg.key, ""))
        sd = math.sqrt(seg.ref.accuracy * (1.0 - seg.ref.accuracy))
        tick_error = (1.0 - seg.ref.accuracy) + total / n * sd
        evidence = {
            "tick_labelled": n,
            "tick_error_rate": round(tick_error, 4),
            "reference_error_rate": round(1.0 - seg.ref.accuracy, 4),
        }
        window = (tstart, tstart + self.cfg.tick_s)
        verdict = Verdict("warning", False, round(1.0 - tick_error, 6), seg.ref.accuracy,
                          window, evidence, {})  # fmt: skip
        self._judge(seg, None, "adwin_error", "performance", verdict, emitted_at, out)

    def _close_tick(
        self,
        seg: Segment,
        tstart: float,
        tick: dict[str, list[int]],
        emitted_at: str,
        out: Output,
    ) -> None:
        """Feed each feature's standardised tick mean to its ADWIN and Page-Hinkley detectors;
        alert at the tick one fires."""
        cfg = self.cfg
        window = (tstart, tstart + cfg.tick_s)
        offsets = seg.tick_offsets.pop(tstart, {})  # the tick's own: the same on any replay
        for name, (total, n) in sorted(tick.items()):
            if n <= 0:
                continue
            total = total / Z_SCALE
            z = total / math.sqrt(n)
            det = seg.adwin.get(name)
            if det is None:
                det = seg.adwin[name] = ADWINDetector(delta=self._adwin_delta(seg), clock=1)
            det.update(z)
            ph = seg.page_hinkley.get(name)
            if ph is None:
                ph = seg.page_hinkley[name] = PageHinkleyDetector(
                    min_instances=cfg.page_hinkley_min_instances,
                    delta=cfg.page_hinkley_delta,
                    threshold=cfg.page_hinkley_threshold,
                    alpha=cfg.page_hinkley_alpha,
                    mode="both",
                )
            ph.update(z)
            fired = [
                (detector, extra, hits)
                for detector, d, extra, hits in (
                    ("adwin", det, {"adwin_width_ticks": det.width}, seg.detections),
                    ("page_hinkley", ph, {}, seg.ph_detections),
                )
                if d.drift_detected
            ]
            for detector, extra, hits in fired:
                hits.setdefault(name, []).append(tstart)
                out.detections.append((detector, seg.key, name))
                evidence = {
                    "tick_events": int(n),
                    "tick_mean_in_reference_sd": round(total / n, 4),
                    **extra,
                }
                verdict = Verdict(
                    "warning", False, round(total / n, 6), 0.0, window, evidence, offsets
                )
                self._judge(seg, name, detector, "feature_drift", verdict, emitted_at, out)

    def _adwin_delta(self, seg: Segment) -> float:
        """One ADWIN's share of the fleet-wide ``adwin_delta``: split evenly across every
        numeric feature of every segment of the model (Bonferroni)."""
        assert seg.ref is not None
        numeric = sum(1 for r in seg.ref.features.values() if isinstance(r, NumRef))
        return self.cfg.adwin_delta / (max(numeric, 1) * self._n_segments(seg.version))

    def _n_segments(self, version: str) -> int:
        """Monitors of a model version: the baseline's segments, or those seen so far."""
        in_baseline = sum(1 for v, _ in self.references if v == version)
        seen = sum(1 for v, _ in self.segments if v == version)
        return max(in_baseline, seen, 1)

    def _judge(
        self,
        seg: Segment,
        feature: str | None,
        detector: str,
        kind: Kind,
        verdict: Verdict,
        emitted_at: str,
        out: Output,
    ) -> None:
        key = AlertKey(
            self.model_id,
            seg.version,
            tuple(sorted(segment_of(seg.key).items())),
            feature,
            detector,
            kind,
        )
        out.alerts.extend(self.tracker.observe(key, verdict, self.topic, emitted_at))

    def _close_window(
        self, wstart: float, emitted_at: str, out: Output, complete: bool = True
    ) -> None:
        window = (wstart, wstart + self.cfg.window_s)
        self.windows_closed_until = max(self.windows_closed_until, window[1])
        for seg in sorted(self.segments.values(), key=lambda s: (s.version, s.key)):
            agg = seg.windows.pop(wstart, None)
            if seg.ref is not None and wstart < seg.judge_from:
                continue
            if seg.ref is None:
                if agg is not None and agg.count:
                    self._warm_up(seg, agg)
                continue
            if agg is None:
                agg = self._window(seg, wstart)
                del seg.windows[wstart]
            out.metrics.append(self._evaluate(seg, agg, window, emitted_at, out, complete))

    def _warm_up(self, seg: Segment, agg: WindowAgg) -> None:
        from streamproc.baseline import ProfileBuilder

        seg.warm_windows += 1
        seg.warm_count += agg.count
        seg.warm_rows.extend(agg.sample)
        if seg.warm_windows < self.cfg.warmup_windows or len(seg.warm_rows) < min(
            self.cfg.warmup_min_rows, self.cfg.warmup_sample
        ):
            return
        builder = ProfileBuilder(self.model_id, seg.version, [])
        for _, features, prediction, confidence in sorted(seg.warm_rows, key=lambda r: r[0]):
            builder.add(features, prediction=prediction, score=confidence)
        profile = builder.build(f"warm-up: first {seg.warm_windows} window(s)")
        ref = self._narrowed(segref_from_baseline(profile.segment(ALL), origin="warmup"))
        assert ref is not None
        ref.rate_per_s = seg.warm_count / (seg.warm_windows * self.cfg.window_s)
        seg.ref = ref
        seg.warm_rows = []
        # Windows still open were sampled, not sketched. One whose sample holds all its events
        # (the usual case when a backlog is caught up) is rebuilt exactly; one that held more
        # is partial, and judging starts after it.
        open_windows, seg.windows = seg.windows, {}
        for wstart in sorted(open_windows):
            old = open_windows[wstart]
            if old.count > len(old.sample):
                seg.judge_from = wstart + self.cfg.window_s
                continue
            rows = [
                Observation(-1, -1, -1, wstart, seg.version, {}, f, p, c, None)
                for _, f, p, c in old.sample
            ]
            agg = self._window(seg, wstart)
            self._add(seg, agg, _NO_TICK, rows)
            agg.offsets, agg.latency = old.offsets, old.latency
        seg.windows = {w: a for w, a in seg.windows.items() if w >= seg.judge_from}
        seg.ticks.pop(_NO_TICK, None)
        seg.tick_offsets.pop(_NO_TICK, None)

    def _evaluate(
        self,
        seg: Segment,
        agg: WindowAgg,
        window: tuple[float, float],
        emitted_at: str,
        out: Output,
        complete: bool = True,
    ) -> MetricsRecord:
        cfg, ref = self.cfg, seg.ref
        assert ref is not None
        offsets = agg.offsets
        enough = agg.count >= cfg.min_window_count
        features: dict[str, dict[str, float | int | None]] = {}
        agreeing: dict[str, list[str]] = {}  # feature -> window statistics over a tier
        # Bonferroni over every feature of every segment of the model, judged each window: the
        # false-alarm budget is for the fleet of detectors, not for one test.
        n_tests = max(len(ref.features), 1) * max(len(self.segments), 1)
        alpha = cfg.psi_significance / n_tests

        def judge(
            feature: str | None,
            detector: str,
            kind: Kind,
            severity: Severity | None,
            cleared: bool,
            value: float,
            threshold: float,
            evidence: dict[str, Any],
        ) -> None:
            v = Verdict(severity, cleared, value, threshold, window, evidence, offsets)
            self._judge(seg, feature, detector, kind, v, emitted_at, out)

        for name, fr in sorted(ref.features.items()):
            row: dict[str, float | int | None] = {}
            features[name] = row
            if isinstance(fr, NumRef):
                sk = agg.numeric[name]
                n, nulls, total = sk.count, sk.nulls, sk.total
            else:
                csk = agg.categorical[name]
                n, nulls, total = csk.count, csk.nulls, csk.total
            row.update(count=n, nulls=nulls)
            missing = enough and n == 0 and agg.mismatched.get(name, 0) == 0
            judge(
                name,
                "schema_missing",
                "data_quality",
                "critical" if missing else None,
                not missing,
                1.0 if missing else 0.0,
                1.0,
                {"window_events": agg.count, "feature_values": n},
            )
            mism = agg.mismatched.get(name, 0)
            mism_share = mism / agg.count if agg.count else 0.0
            bad_type = enough and mism_share > 0.01
            judge(
                name,
                "schema_type",
                "data_quality",
                "critical" if bad_type else None,
                not bad_type,
                mism_share,
                0.01,
                {"expected": "number", "mismatched_values": mism},
            )
            if total and enough:
                rate = nulls / total
                delta = rate - fr.null_rate
                row["null_rate"] = rate
                sev = _severity(delta, cfg.null_rate_delta)
                judge(
                    name,
                    "null_rate",
                    "data_quality",
                    sev,
                    delta < cfg.null_rate_delta.clearing(),
                    delta,
                    cfg.null_rate_delta.warning,
                    {
                        "reference_null_rate": round(fr.null_rate, 6),
                        "window_null_rate": round(rate, 6),
                        "window_values": total,
                    },
                )
            if n < cfg.min_window_count:
                continue
            if isinstance(fr, NumRef):
                hist = sk.hist
                psi = stats.psi(fr.probs, hist)
                js = stats.js_divergence(fr.probs, hist)
                d, p = stats.ks_binned(fr.probs, hist, fr.count or None)
                oor = stats.out_of_range_share(sk.below_ref_min, sk.above_ref_max, n)
                row.update(psi=psi, js=js, ks=d, ks_p=p, mean=sk.mean, std=sk.std, out_of_range=oor)
                moved = np.argsort(-np.abs(hist / n - fr.probs))[:3]
                evidence = {
                    "window_count": n,
                    "reference_count": fr.count,
                    "window_mean": round(sk.mean, 6),
                    "reference_mean": round(fr.mean, 6),
                    "window_std": round(sk.std, 6),
                    "reference_std": round(fr.std, 6),
                    "js": round(js, 6),
                    "ks": round(d, 6),
                    "ks_p": p,
                    "out_of_range_share": round(oor, 6),
                    "top_moved_bins": [
                        {
                            "bin": int(i),
                            "reference": round(float(fr.probs[i]), 4),
                            "window": round(float(hist[i] / n), 4),
                        }
                        for i in moved
                    ],
                }
                sev, psi_p = psi_severity(psi, cfg.psi, n, fr.count, len(fr.probs), alpha)
                evidence["psi_p"] = psi_p
                judge(
                    name,
                    "psi",
                    "feature_drift",
                    sev,
                    psi < cfg.psi.clearing(),
                    psi,
                    cfg.psi.warning,
                    evidence,
                )
                ks_sev: Severity | None = None
                if d >= cfg.ks_effect_floor:
                    if p < cfg.ks_p.critical / n_tests:
                        ks_sev = "critical"
                    elif p < cfg.ks_p.warning / n_tests:
                        ks_sev = "warning"
                agreeing[name] = [
                    stat for stat, sv in (("psi", sev), ("ks", ks_sev)) if sv is not None
                ]
                judge(
                    name,
                    "ks",
                    "feature_drift",
                    ks_sev,
                    d < 0.8 * cfg.ks_effect_floor,
                    d,
                    cfg.ks_effect_floor,
                    evidence,
                )
            else:
                counts = csk.counts
                cats = sorted(set(fr.probs) | set(counts))
                rp = np.array([fr.probs.get(c, 0.0) for c in cats])
                wc = np.array([counts.get(c, 0) for c in cats], dtype=float)
                psi = stats.psi(rp, wc)
                js = stats.js_divergence(rp, wc)
                chi, p, dof = stats.chi2_categorical(fr.probs, counts)
                new = stats.new_categories(fr.probs, counts)
                new_share = sum(counts[c] for c in new) / n
                row.update(psi=psi, js=js, chi2=chi, chi2_p=p, new_category_share=new_share)
                moved_cats = sorted(
                    cats, key=lambda c: -abs(counts.get(c, 0) / n - fr.probs.get(c, 0.0))
                )[:3]
                evidence = {
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
                    name,
                    "psi",
                    "feature_drift",
                    sev,
                    psi < cfg.psi.clearing(),
                    psi,
                    cfg.psi.warning,
                    evidence,
                )
                nsev = _severity(new_share, cfg.new_category_share)
                judge(
                    name,
                    "new_category",
                    "data_quality",
                    nsev,
                    new_share < cfg.new_category_share.clearing(),
                    new_share,
                    cfg.new_category_share.warning,
                    evidence,
                )
        self._new_features(seg, agg, judge)
        # ADWIN and Page-Hinkley: a detection during the window is a warning (already raised at
        # its tick); critical when the window's own statistics (PSI or KS) agree; none clears.
        for detector, dets, detections in (
            ("adwin", seg.adwin, seg.detections),
            ("page_hinkley", seg.page_hinkley, seg.ph_detections),
        ):
            for name in sorted(dets):
                ticks = detections.get(name, [])
                hits = [t for t in ticks if t < window[1]]
                detections[name] = [t for t in ticks if t >= window[1]]
                agree = agreeing.get(name, [])
                severity: Severity | None = None
                if hits:
                    severity = "critical" if agree else "warning"
                judge(
                    name,
                    detector,
                    "feature_drift",
                    severity,
                    not hits,
                    float(len(hits)),
                    1.0,
                    {"detections_in_window": len(hits), "agreeing_statistics": agree},
                )
        outputs = self._outputs(seg, agg, judge)
        if complete:
            self._volume(seg, agg, judge)
        return MetricsRecord(
            model_id=self.model_id,
            model_version=seg.version,
            segment=segment_of(seg.key),
            window=Window(iso(window[0]), iso(window[1])),
            count=agg.count,
            reference=ref.origin if ref.origin in ("baseline", "warmup") else "none",  # type: ignore[arg-type]
            features=features,
            outputs=outputs,
            performance={},
            emitted_at=emitted_at,
        )

    def _new_features(self, seg: Segment, agg: WindowAgg, judge: Any) -> None:
        """A feature the reference does not know, in at least ``new_feature_share`` of the
        window's events: a schema alert, naming the feature and counting, never its values.

        Only features over the share, or already firing, are judged, so an upstream that
        sends ever-new feature names cannot grow the alert state.
        """
        cfg = self.cfg
        firing = {
            k.feature
            for k, _ in self.tracker.firing()
            if k.detector == "new_feature"
            and k.model_version == seg.version
            and k.segment == tuple(sorted(segment_of(seg.key).items()))
        }
        enough = agg.count >= cfg.min_window_count
        for name in sorted(set(agg.unknown) | {f for f in firing if f is not None}):
            seen = agg.unknown.get(name, 0)
            share = seen / agg.count if agg.count else 0.0
            over = enough and share >= cfg.new_feature_share
            if not over and name not in firing:
                continue
            judge(
                name,
                "new_feature",
                "data_quality",  # as schema_missing / schema_type: alert.v1 has no "schema" kind
                "warning" if over else None,
                share < 0.8 * cfg.new_feature_share,
                share,
                cfg.new_feature_share,
                {"events_with_feature": seen, "window_events": agg.count},
            )

    def _outputs(self, seg: Segment, agg: WindowAgg, judge: Any) -> dict[str, float | int | None]:
        cfg, ref = self.cfg, seg.ref
        assert ref is not None
        outputs: dict[str, float | int | None] = {}
        if agg.latency.count:
            p50, p95, p99 = agg.latency.quantiles([0.5, 0.95, 0.99])
            outputs.update(latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99)
            if cfg.latency_slo_ms is not None:
                over = p99 > cfg.latency_slo_ms
                judge(
                    None,
                    "latency_p99",
                    "data_quality",
                    "warning" if over else None,
                    not over,
                    p99,
                    cfg.latency_slo_ms,
                    {"p50_ms": p50, "p95_ms": p95},
                )
        pred = agg.prediction
        if isinstance(pred, CategoricalSketch) and isinstance(ref.prediction, CatRef):
            if pred.count >= cfg.min_window_count:
                counts = pred.counts
                cats = sorted(set(ref.prediction.probs) | set(counts))
                rp = np.array([ref.prediction.probs.get(c, 0.0) for c in cats])
                wc = np.array([counts.get(c, 0) for c in cats], dtype=float)
                psi = stats.psi(rp, wc)
                top1 = stats.top1_rate(counts)
                ref_top1 = max(ref.prediction.probs.values(), default=0.0)
                probs = wc / wc.sum()
                outputs.update(
                    prediction_psi=psi, top1_rate=top1, prediction_entropy=stats.entropy(probs)
                )
                alpha = cfg.psi_significance / max(len(self.segments), 1)
                sev, _ = psi_severity(
                    psi, cfg.psi, pred.count, ref.prediction.count, len(cats), alpha
                )
                judge(
                    None,
                    "psi",
                    "prediction_drift",
                    sev,
                    psi < cfg.psi.clearing(),
                    psi,
                    cfg.psi.warning,
                    {
                        "window_count": pred.count,
                        "top1_rate": round(top1, 4),
                        "reference_top1_rate": round(ref_top1, 4),
                    },
                )
                limit = max(cfg.top1_rate, ref_top1 + 0.1)
                # Beyond the limit by more than 3 binomial standard errors: not sampling noise.
                margin = 3.0 * math.sqrt(limit * (1.0 - limit) / pred.count)
                judge(
                    None,
                    "top1_rate",
                    "prediction_drift",
                    "critical" if top1 > limit + margin else None,
                    top1 < limit - 0.05,
                    top1,
                    limit,
                    {"window_count": pred.count, "reference_top1_rate": round(ref_top1, 4)},
                )
        elif (
            isinstance(pred, NumericSketch)
            and isinstance(ref.prediction, NumRef)
            and pred.count >= cfg.min_window_count
        ):
            psi = stats.psi(ref.prediction.probs, pred.hist)
            outputs.update(prediction_psi=psi, prediction_mean=pred.mean)
            alpha = cfg.psi_significance / max(len(self.segments), 1)
            sev, _ = psi_severity(
                psi, cfg.psi, pred.count, ref.prediction.count, len(ref.prediction.probs), alpha
            )
            judge(
                None,
                "psi",
                "prediction_drift",
                sev,
                psi < cfg.psi.clearing(),
                psi,
                cfg.psi.warning,
                {
                    "window_count": pred.count,
                    "window_mean": round(pred.mean, 6),
                    "reference_mean": round(ref.prediction.mean, 6),
                },
            )
        score = agg.score
        if score is not None and score.count >= cfg.min_window_count:
            outputs["confidence_mean"] = score.mean
            if ref.calibration is not None and np.array_equal(score.edges, ref.calibration.edges):
                outputs["estimated_accuracy"] = stats.cbpe_estimated_accuracy_from_counts(
                    ref.calibration, score.hist
                )
        return outputs

    def _volume(self, seg: Segment, agg: WindowAgg, judge: Any) -> None:
        cfg, ref = self.cfg, seg.ref
        assert ref is not None
        expected: float | None = None
        if ref.rate_per_s:
            expected = ref.rate_per_s * cfg.window_s
        elif len(seg.past_counts) >= 2:
            expected = float(np.mean(seg.past_counts[-6:]))
        seg.past_counts = [*seg.past_counts[-11:], agg.count]
        if not expected or expected < cfg.min_window_count:
            return
        drop = max(0.0, 1.0 - agg.count / expected)
        judge(
            None,
            "volume_drop",
            "volume",
            _severity(drop, cfg.volume_drop),
            drop < cfg.volume_drop.clearing(),
            drop,
            cfg.volume_drop.warning,
            {"window_count": agg.count, "expected_count": round(expected, 1)},
        )

    def _calibration(
        self, seg: Segment, cal: list[list[int]], window: tuple[float, float]
    ) -> Verdict | None:
        """ECE of a label window against the reference's; ``None`` under ``ece_min_labelled``.

        Fires when the ECE is over ``ece`` and over the reference's ECE (at the window's own
        confidences) by more than ``ece_margin`` and by more than sampling noise could give
        (``ece_significance``, split across the model's segments).
        """
        cfg, ref = self.cfg, seg.ref
        assert ref is not None and ref.calibration is not None
        counts, conf_micro, correct = cal
        n = sum(counts)
        if n < cfg.ece_min_labelled:
            return None
        conf = np.asarray(conf_micro, dtype=float) / Z_SCALE
        r = stats.calibration_excess(
            counts,
            conf,
            correct,
            ref.calibration.accuracy,
            ref.calibration.counts,
            cfg.ece_significance / self._n_segments(seg.version),
        )
        fire = r.ece > cfg.ece and r.excess > max(cfg.ece_margin, r.noise_bound)
        cleared = r.ece < 0.8 * cfg.ece or r.excess < cfg.ece_margin
        edges = [0.0, *ref.calibration.edges.tolist(), 1.0]
        bins = [
            {
                "bin": b,
                "confidence_range": [round(edges[b], 4), round(edges[b + 1], 4)],
                "labelled": counts[b],
                "mean_confidence": round(float(conf[b]) / counts[b], 4),
                "accuracy": round(correct[b] / counts[b], 4),
                "reference_accuracy": round(float(ref.calibration.accuracy[b]), 4),
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
        return Verdict(
            "warning" if fire else None, cleared, round(r.ece, 6), cfg.ece, window, evidence
        )

    def _close_outcomes(
        self,
        wstart: float,
        cell: dict[tuple[str, str], WindowAgg],
        calibration: dict[tuple[str, str], list[list[int]]],
        emitted_at: str,
        out: Output,
    ) -> None:
        cfg = self.cfg
        window = (wstart, wstart + cfg.window_s)
        for (version, key), agg in sorted(cell.items()):
            seg = self._segment(version, key)
            ref = seg.ref
            perf: dict[str, float | int | None] = {"labelled": agg.labelled}
            if agg.labelled:
                perf["accuracy"] = agg.correct / agg.labelled
                perf["mae"] = agg.abs_error / agg.labelled
            if ref is not None and agg.labelled >= cfg.min_labelled_count:
                acc = agg.correct / agg.labelled
                if ref.accuracy is not None:
                    drop = ref.accuracy - acc
                    v = Verdict(
                        _severity(drop, cfg.accuracy_drop),
                        drop < cfg.accuracy_drop.clearing(),
                        acc,
                        ref.accuracy - cfg.accuracy_drop.warning,
                        window,
                        {
                            "labelled": agg.labelled,
                            "reference_accuracy": round(ref.accuracy, 4),
                            "window_accuracy": round(acc, 4),
                        },
                    )
                    self._judge(seg, None, "accuracy", "performance", v, emitted_at, out)
                hits = [t for t in seg.error_detections if t < window[1]]
                seg.error_detections = [t for t in seg.error_detections if t >= window[1]]
                if seg.error_adwin is not None:
                    v = Verdict(
                        "warning" if hits else None, not hits, float(len(hits)), 1.0, window,
                        {"detections_in_window": len(hits)},
                    )  # fmt: skip
                    self._judge(seg, None, "adwin_error", "performance", v, emitted_at, out)
                cal = calibration.get((version, key))
                if cal is not None and ref.calibration is not None:
                    ece = self._calibration(seg, cal, window)
                    if ece is not None:
                        perf["ece"] = ece.value
                        self._judge(seg, None, "calibration", "performance", ece, emitted_at, out)
                if isinstance(ref.label, CatRef):
                    counts = agg.labels.counts
                    cats = sorted(set(ref.label.probs) | set(counts))
                    rp = np.array([ref.label.probs.get(c, 0.0) for c in cats])
                    wc = np.array([counts.get(c, 0) for c in cats], dtype=float)
                    psi = stats.psi(rp, wc)
                    perf["label_psi"] = psi
                    v = Verdict(
                        _severity(psi, cfg.psi),
                        psi < cfg.psi.clearing(),
                        psi,
                        cfg.psi.warning,
                        window,
                        {"labelled": agg.labelled},
                    )
                    self._judge(seg, None, "psi", "label_drift", v, emitted_at, out)
            out.metrics.append(
                MetricsRecord(
                    model_id=self.model_id,
                    model_version=version,
                    segment=segment_of(key),
                    window=Window(iso(window[0]), iso(window[1])),
                    count=0,
                    reference=(ref.origin if ref is not None else "none"),  # type: ignore[arg-type]
                    features={},
                    outputs={},
                    performance=perf,
                    emitted_at=emitted_at,
                )
            )


# -- checkpoints ----------------------------------------------------------------------------------


class _NumRefState(msgspec.Struct, array_like=True, tag="n"):
    edges: list[float]
    probs: list[float]
    mean: float
    std: float
    min: float
    max: float
    count: int
    nulls: int


class _CatRefState(msgspec.Struct, array_like=True, tag="c"):
    probs: dict[str, float]
    count: int
    nulls: int


_AnyRef = _NumRefState | _CatRefState | None


class _RefState(msgspec.Struct, array_like=True):
    count: int
    rate_per_s: float | None
    features: dict[str, _NumRefState | _CatRefState]
    prediction: _AnyRef
    score: _AnyRef
    label: _AnyRef
    accuracy: float | None
    calibration: list[list[float]] | None
    origin: str


def _pack_ref(r: NumRef | CatRef | None) -> _AnyRef:
    if r is None:
        return None
    if isinstance(r, NumRef):
        return _NumRefState(
            r.edges.tolist(), r.probs.tolist(), r.mean, r.std, r.min, r.max, r.count, r.nulls
        )
    return _CatRefState(r.probs, r.count, r.nulls)


def _unpack_ref(r: _AnyRef) -> NumRef | CatRef | None:
    if r is None:
        return None
    if isinstance(r, _NumRefState):
        return NumRef(
            np.asarray(r.edges), np.asarray(r.probs), r.mean, r.std, r.min, r.max, r.count, r.nulls
        )
    return CatRef(dict(r.probs), r.count, r.nulls)


def pack_segref(ref: SegRef) -> _RefState:
    cal = None
    if ref.calibration is not None:
        c = ref.calibration
        cal = [c.edges.tolist(), c.accuracy.tolist(), c.counts.astype(float).tolist()]
    return _RefState(
        ref.count,
        ref.rate_per_s,
        {k: v for k, r in ref.features.items() if (v := _pack_ref(r)) is not None},
        _pack_ref(ref.prediction),
        _pack_ref(ref.score),
        _pack_ref(ref.label),
        ref.accuracy,
        cal,
        ref.origin,
    )


def unpack_segref(s: _RefState) -> SegRef:
    cal = None
    if s.calibration is not None:
        e, a, c = s.calibration
        cal = stats.CalibrationMap(np.asarray(e), np.asarray(a), np.asarray(c, dtype=np.int64))
    score = _unpack_ref(s.score)
    return SegRef(
        s.count,
        s.rate_per_s,
        {k: r for k, v in s.features.items() if (r := _unpack_ref(v)) is not None},
        _unpack_ref(s.prediction),
        score if isinstance(score, NumRef) else None,
        _unpack_ref(s.label),
        s.accuracy,
        cal,
        s.origin,
    )


class _SegmentState(msgspec.Struct, array_like=True):
    version: str
    key: str
    ref: _RefState | None
    windows: dict[float, _WindowState]
    ticks: dict[float, dict[str, list[int]]]
    adwin: dict[str, bytes]
    detections: dict[str, list[float]]
    warm_windows: int
    warm_count: int
    warm_rows: list[list[Any]]
    past_counts: list[int]
    error_ticks: dict[float, list[int]] = {}
    tick_offsets: dict[float, dict[str, list[int]]] = {}
    error_adwin: bytes = b""
    error_detections: list[float] = []
    judge_from: float = -math.inf
    page_hinkley: dict[str, bytes] = {}
    ph_detections: dict[str, list[float]] = {}


class _MonitorState(msgspec.Struct, array_like=True):
    model_id: str
    clock: bytes
    outcome_clock: bytes
    tracker: bytes
    high: dict[str, list[int]]
    windows_closed_until: float
    segments: list[_SegmentState]
    outcome_windows: dict[float, list[tuple[str, str, _WindowState]]]
    known_values: dict[str, list[str]] = {}
    applied: dict[int, int] = {}
    outcome_calibration: dict[float, list[tuple[str, str, list[list[int]]]]] = {}


# SPM2 added Page-Hinkley detectors and per-window calibration sketches. An SPM1 checkpoint
# still restores (the new fields start empty); an older streamproc refuses SPM2 rather than
# silently dropping detector state.
_MONITOR_MAGIC = b"SPM2"
_READABLE_MAGIC = (b"SPM1", _MONITOR_MAGIC)


def monitor_to_bytes(m: ModelMonitor) -> bytes:
    """Versioned checkpoint of a :class:`ModelMonitor` (config and references excluded)."""
    segments = [
        _SegmentState(
            seg.version,
            seg.key,
            pack_segref(seg.ref) if seg.ref is not None and seg.ref.origin == "warmup" else None,
            {w: a.pack() for w, a in seg.windows.items()},
            seg.ticks,
            {f: d.to_bytes() for f, d in seg.adwin.items()},
            seg.detections,
            seg.warm_windows,
            seg.warm_count,
            seg.warm_rows,
            seg.past_counts,
            seg.error_ticks,
            seg.tick_offsets,
            seg.error_adwin.to_bytes() if seg.error_adwin is not None else b"",
            seg.error_detections,
            seg.judge_from,
            {f: d.to_bytes() for f, d in seg.page_hinkley.items()},
            seg.ph_detections,
        )
        for seg in m.segments.values()
    ]
    state = _MonitorState(
        m.model_id,
        m.clock.to_bytes(),
        m.outcome_clock.to_bytes(),
        m.tracker.to_bytes(),
        {k: list(v) for k, v in m.high.items()},
        m.windows_closed_until,
        segments,
        {
            w: [(v, k, a.pack()) for (v, k), a in cell.items()]
            for w, cell in m.outcome_windows.items()
        },
        {dim: sorted(values) for dim, values in m.known_values.items()},
        m.applied,
        {
            w: [(v, k, cal) for (v, k), cal in sorted(cell.items())]
            for w, cell in m.outcome_calibration.items()
        },
    )
    return _MONITOR_MAGIC + _ENC.encode(state)


def monitor_from_bytes(
    blob: bytes,
    cfg: MonitoringConfig,
    references: dict[tuple[str, str], SegRef] | None = None,
    topic: str = "predictions",
) -> ModelMonitor:
    """Restore :func:`monitor_to_bytes` output; references come from the baseline store again."""
    if blob[:4] not in _READABLE_MAGIC:
        raise StateEncodingError(f"not a monitor checkpoint (header {blob[:4]!r})")
    try:
        s = msgspec.msgpack.decode(blob[4:], type=_MonitorState)
    except msgspec.DecodeError as exc:
        raise StateEncodingError(f"corrupt monitor checkpoint: {exc}") from None
    m = ModelMonitor(s.model_id, cfg, [], references, topic)
    m.clock = WindowClock.from_bytes(s.clock)
    m.outcome_clock = WindowClock.from_bytes(s.outcome_clock)
    m.tracker = AlertTracker.from_bytes(s.tracker)
    m.high = {k: (v[0], v[1]) for k, v in s.high.items()}
    m.windows_closed_until = s.windows_closed_until
    for ss in s.segments:
        seg = m._segment(ss.version, ss.key)
        if ss.ref is not None:
            seg.ref = unpack_segref(ss.ref)
        seg.windows = {w: WindowAgg.unpack(a) for w, a in ss.windows.items()}
        seg.ticks = ss.ticks
        seg.adwin = {f: ADWINDetector.from_bytes(b) for f, b in ss.adwin.items()}
        seg.detections = ss.detections
        seg.warm_windows, seg.warm_count = ss.warm_windows, ss.warm_count
        seg.warm_rows, seg.past_counts = ss.warm_rows, ss.past_counts
        seg.error_ticks = ss.error_ticks
        seg.tick_offsets = ss.tick_offsets
        seg.error_adwin = ADWINDetector.from_bytes(ss.error_adwin) if ss.error_adwin else None
        seg.error_detections = ss.error_detections
        seg.judge_from = ss.judge_from
        seg.page_hinkley = {
            f: PageHinkleyDetector.from_bytes(b) for f, b in ss.page_hinkley.items()
        }
        seg.ph_detections = ss.ph_detections
    m.outcome_windows = {
        w: {(v, k): WindowAgg.unpack(a) for v, k, a in cell}
        for w, cell in s.outcome_windows.items()
    }
    for dim, values in s.known_values.items():
        m.known_values.setdefault(dim, set()).update(values)
    m.applied = dict(s.applied)
    m.outcome_calibration = {
        w: {(v, k): cal for v, k, cal in cell} for w, cell in s.outcome_calibration.items()
    }
    return m
