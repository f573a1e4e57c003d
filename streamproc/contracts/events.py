"""The public event contracts: msgspec Structs, the one source of ``schemas/*.json``.

``prediction.v1`` and ``label.v1`` arrive on the input topics; ``alert.v1``, ``metrics.v1`` and
``deadletter.v1`` are what streamproc publishes. :func:`json_schema` derives each contract's JSON
Schema from its Struct, and :func:`write_schemas` writes the files a test compares with the code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "SCHEMAS",
    "Alert",
    "ClassPerformance",
    "DeadLetter",
    "DeadLetterError",
    "EventTime",
    "FeatureValue",
    "Incident",
    "IncidentCause",
    "IncidentMember",
    "Label",
    "MetricBand",
    "MetricsRecord",
    "NonEmptyStr",
    "NonNegative",
    "Prediction",
    "RootCause",
    "Scalar",
    "Source",
    "Unit",
    "Window",
    "json_schema",
    "schema_text",
    "write_schemas",
]

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
Scalar = float | str | bool
FeatureValue = float | str | bool | None
EventTime = datetime | float | None


class Prediction(msgspec.Struct, kw_only=True, frozen=True):
    """``prediction.v1``: one model decision, as the serving layer saw it."""

    prediction_id: NonEmptyStr
    model_id: NonEmptyStr
    model_version: NonEmptyStr
    timestamp: EventTime = None
    features: dict[str, FeatureValue] = {}
    prediction: Scalar
    scores: dict[str, Unit] | None = None
    confidence: Unit | None = None
    segments: dict[str, str] = {}
    latency_ms: NonNegative | None = None


class Label(msgspec.Struct, kw_only=True, frozen=True):
    """``label.v1``: the ground truth for an earlier prediction."""

    prediction_id: NonEmptyStr
    model_id: NonEmptyStr | None = None
    timestamp: EventTime = None
    label: Scalar


class Window(msgspec.Struct, frozen=True):
    start: str
    end: str


class Source(msgspec.Struct, frozen=True):
    """Where the evidence came from: enough to replay it (partition → [first, last] offset)."""

    topic: str
    offsets: dict[str, list[int]]


class Alert(msgspec.Struct, kw_only=True, frozen=True):
    """``alert.v1``: something moved; what, where, since when, and how to replay it."""

    schema: Literal["alert.v1"] = "alert.v1"
    alert_id: NonEmptyStr
    status: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    kind: Literal[
        "feature_drift",
        "prediction_drift",
        "multivariate_drift",
        "label_drift",
        "performance",
        "data_quality",
        "volume",
        "monitor_error",
    ]
    model_id: str
    model_version: str
    feature: str | None
    segment: dict[str, str]
    detector: str
    value: float
    threshold: float
    window: Window
    evidence: dict[str, Any]
    source: Source
    emitted_at: str


class MetricBand(msgspec.Struct, frozen=True):
    """A figure with its sampling-noise band (``value`` ± 3 standard errors, within [0, 1])."""

    value: float
    lower: float
    upper: float


class ClassPerformance(msgspec.Struct, kw_only=True, frozen=True):
    """A classifier's performance in one window: ``estimated`` from the scores of its
    predictions (CBPE, on prediction windows), or ``realised`` from its labels (on label
    windows), beside the reference's figures.

    ``metrics`` holds ``accuracy``, ``roc_auc``, ``f1``, ``precision``, ``recall`` and
    ``specificity``: the positive class's for a binary model, the macro average one-vs-rest
    for a multiclass one. ``confusion_matrix`` has a row per predicted class and a column per
    label, in ``classes`` order (expected counts when estimated).
    """

    source: Literal["estimated", "realised"]
    classes: list[str]
    positive_class: str | None
    count: int
    metrics: dict[str, MetricBand]
    reference: dict[str, MetricBand]
    confusion_matrix: list[list[float]]


class MetricsRecord(msgspec.Struct, kw_only=True, frozen=True):
    """``metrics.v1``: one record per monitor and closed window."""

    schema: Literal["metrics.v1"] = "metrics.v1"
    model_id: str
    model_version: str
    segment: dict[str, str]
    window: Window
    count: int
    reference: Literal["baseline", "warmup", "none"]
    features: dict[str, dict[str, float | int | None]]
    outputs: dict[str, float | int | None]
    performance: Annotated[
        dict[str, float | int | None],
        msgspec.Meta(
            description="Per label window: `labelled`; a classifier's `accuracy`, `ece`, "
            "`label_psi`; a regression model's `mae`, `rmse`, `mape` (a share, over labels "
            "that are not zero) and `label_psi`. A classifier has no mae/rmse/mape, a "
            "regression model no accuracy."
        ),
    ]
    emitted_at: str
    class_performance: ClassPerformance | None = None


class IncidentCause(msgspec.Struct, frozen=True):
    """What an incident is about: a feature, or one of the model's signals.

    ``signal`` is ``feature`` (``feature`` names it: drift, nulls, new categories of it),
    ``performance`` (accuracy, error, calibration), ``volume``, ``prediction`` (the output
    distribution), ``label`` (the label distribution) or ``multivariate`` (the joint
    distribution of the features, no single feature moving) or ``latency`` (the serving
    latency SLO).
    """

    signal: Literal[
        "feature", "performance", "volume", "prediction", "label", "multivariate", "latency"
    ]
    feature: str | None = None


class IncidentMember(msgspec.Struct, kw_only=True, frozen=True):
    """One alert of an incident, as on the alerts topic (its latest state)."""

    alert_id: str
    status: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    kind: str
    detector: str
    feature: str | None
    segment: dict[str, str]
    window: Window
    source: Source


class RootCause(msgspec.Struct, kw_only=True, frozen=True):
    """Where the change is: the most specific segment that explains what the others show.

    ``segment`` is ``{}`` for all traffic, or one value per dimension the change is confined to
    (``{"country": "DE", "device": "ios"}`` when it is in DE's iOS traffic only). ``strength``
    gives, per monitored segment, how far its windowed statistics went past their thresholds
    (mean over the incident's windows, 1 = at the threshold), the evidence the root was chosen
    from; ``summary`` says it in one line.
    """

    segment: dict[str, str]
    summary: str
    strength: dict[str, float]


class Incident(msgspec.Struct, kw_only=True, frozen=True):
    """One root cause of one model, with every alert it explains, on the incidents topic.

    Firing alerts of a model version that overlap in time are grouped by cause: the same
    feature across detectors, severities and segments; the model's performance; its volume.
    ``opened`` when the first of them fires, ``updated`` when a member joins, escalates or
    fires again, or the root cause gets more specific, ``resolved`` when the last member resolves.
    ``incident_id`` is derived from the cause and its first alert, ``event_id`` from the
    incident and its revision: a restart or a replay of the same offsets gives the same ids.
    """

    schema: Literal["incident.v1"] = "incident.v1"
    event_id: NonEmptyStr
    incident_id: NonEmptyStr
    revision: int
    status: Literal["opened", "updated", "resolved"]
    reason: str
    severity: Literal["info", "warning", "critical"]
    model_id: str
    model_version: str
    cause: IncidentCause
    root_cause: RootCause
    started_at: str
    leading: IncidentMember
    members: list[IncidentMember]
    updated_at: str
    emitted_at: str


class DeadLetterError(msgspec.Struct, frozen=True):
    code: str
    message: str


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    """``deadletter.v1``: a message (or one element of a batch) that could not be accepted."""

    schema: Literal["deadletter.v1"] = "deadletter.v1"
    topic: str
    partition: int
    offset: int
    key_b64: str | None
    value_b64: str
    batch_index: int | None
    error: DeadLetterError
    dead_lettered_at: str


SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "prediction.v1": Prediction,
    "label.v1": Label,
    "alert.v1": Alert,
    "metrics.v1": MetricsRecord,
    "deadletter.v1": DeadLetter,
    "incident.v1": Incident,
}

_DESCRIPTIONS = {
    "prediction.v1": "One prediction event. A Kafka message value is one such object or a JSON "
    "array of them. `timestamp` is RFC 3339 or Unix epoch seconds; when absent the Kafka record "
    "timestamp is used. Unknown top-level fields are tolerated.",
    "label.v1": "The ground truth for a prediction, joined by prediction_id. A message value is "
    "one such object or a JSON array of them.",
    "alert.v1": "A drift, quality, volume or performance alert on the alerts topic.",
    "metrics.v1": "One summary per monitor and closed event-time window on the metrics topic.",
    "deadletter.v1": "A rejected message or batch element with its original bytes and reason.",
    "incident.v1": "One root cause of one model (a feature, its performance or its volume) "
    "with every alert it explains, on the incidents topic.",
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of contract ``name``, generated from its Struct."""
    struct = SCHEMAS[name]
    generated = msgspec.json.schema(struct)
    defs = generated.pop("$defs", {})
    root = defs.pop(struct.__name__)
    stamp = root.get("properties", {}).get("timestamp")
    if stamp:  # msgspec drops the datetime format inside a union; restate it.
        stamp["anyOf"][0] = {"type": "string", "format": "date-time"}
        stamp["description"] = "event time: RFC 3339, or Unix epoch seconds"
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"streamproc/{name}.json",
        "title": name,
        "description": _DESCRIPTIONS[name],
        **{k: v for k, v in root.items() if k not in ("title", "description")},
    }
    if defs:
        schema["$defs"] = defs
    if struct in (Prediction, Label):
        # The message may be one event or a non-empty batch of them.
        schema = {
            "$schema": schema.pop("$schema"),
            "$id": schema.pop("$id"),
            "title": schema.pop("title"),
            "description": schema.pop("description"),
            "oneOf": [
                {"$ref": "#/$defs/event"},
                {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/event"}},
            ],
            "$defs": {**schema.pop("$defs", {}), "event": schema},
        }
    return schema


def schema_text(name: str) -> str:
    """The schema as the committed file holds it (stable key order, trailing newline)."""
    return json.dumps(json_schema(name), indent=2, sort_keys=False) + "\n"


def write_schemas(directory: str) -> Sequence[str]:
    """Write every contract's JSON Schema to ``directory``; return the file names."""
    from pathlib import Path

    written = []
    for name in SCHEMAS:
        path = Path(directory) / f"{name}.json"
        path.write_text(schema_text(name))
        written.append(path.name)
    return written
