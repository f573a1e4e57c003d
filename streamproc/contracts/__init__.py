"""Event contracts: typed definitions, the decoder that enforces them, and their JSON Schemas.

The msgspec Structs below are the single source of truth. ``schemas/*.json`` are generated
from them (``streamproc schemas write``) and a test fails when the files and the code differ.

A Kafka message value on ``predictions`` or ``labels`` is one event object or a JSON array of
them. :func:`decode_message` splits a message into valid events and :class:`Rejection` s, each
carrying a machine-readable reason and the exact bytes of the element it rejects.

Examples
--------
>>> result = decode_message(
...     b'[{"prediction_id": "p1", "model_id": "m", "model_version": "1", "prediction": 0.7},'
...     b' {"prediction_id": "p2", "model_id": "m", "prediction": 0.1}]',
...     Prediction,
... )
>>> [p.prediction_id for p in result.events]
['p1']
>>> result.rejections[0].reason, result.rejections[0].index
('schema:model_version:missing', 1)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

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
    performance: dict[str, float | int | None]
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


# -- decoding -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected message or batch element: a reason code, a message, the original bytes."""

    reason: str
    message: str
    value: bytes
    index: int | None = None


E = TypeVar("E", Prediction, Label)


@dataclass(slots=True)
class Decoded(Generic[E]):
    """The outcome of decoding one Kafka message: valid events and rejected elements."""

    events: list[E] = field(default_factory=list)
    indexes: list[int | None] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


_AT = re.compile(r" - at `\$\.?([A-Za-z0-9_]*)[^`]*`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}
_BATCH = msgspec.json.Decoder(list[msgspec.Raw])


def _decoder(kind: type[E]) -> msgspec.json.Decoder[E]:
    dec = _DECODERS.get(kind)
    if dec is None:
        dec = _DECODERS[kind] = msgspec.json.Decoder(kind)
    return dec


def _json_reason(value: bytes, exc: Exception) -> tuple[str, str]:
    """Classify bytes msgspec could not parse: not UTF-8, non-finite literals, or bad JSON."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as err:
        return "not_utf8", f"value is not UTF-8: {err.reason} at byte {err.start}"
    try:
        json.loads(text)  # accepts NaN/Infinity, which JSON (and msgspec) do not
    except ValueError:
        return "invalid_json", str(exc)
    return "non_finite_number", "NaN or Infinity is not a JSON number"


def _schema_reason(exc: msgspec.ValidationError) -> tuple[str, str]:
    msg = str(exc)
    missing = _MISSING.match(msg)
    if missing:
        return f"schema:{missing.group(1)}:missing", msg
    at = _AT.search(msg)
    path = at.group(1) if at and at.group(1) else "$"
    if msg.startswith("Number out of range"):
        return "non_finite_number", msg
    if msg.startswith("Expected `object`"):
        return "schema:$:not_an_object", msg
    if msg.startswith("Expected"):
        problem = (
            "out_of_range" if any(op in msg for op in ("<=", ">=", " < ", " > ")) else "wrong_type"
        )
        if "length" in msg:
            problem = "bad_length"
        return f"schema:{path}:{problem}", msg
    return f"schema:{path}:invalid", msg


def _decode_one(raw: bytes, kind: type[E], index: int | None, out: Decoded[E]) -> None:
    try:
        event = _decoder(kind).decode(raw)
    except msgspec.ValidationError as exc:
        reason, msg = _schema_reason(exc)
        out.rejections.append(Rejection(reason, msg, raw, index))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        reason, msg = _json_reason(raw, exc)
        out.rejections.append(Rejection(reason, msg, raw, index))
    else:
        out.events.append(event)
        out.indexes.append(index)
        out.raws.append(raw)


def decode_message(
    value: bytes | None,
    kind: type[E],
    *,
    max_bytes: int = 1_048_576,
    max_batch: int = 10_000,
) -> Decoded[E]:
    """Decode one Kafka message value into events of ``kind`` and rejections.

    Never raises on data: every byte sequence yields events, rejections, or both.
    """
    out: Decoded[E] = Decoded()
    if not value:
        out.rejections.append(Rejection("empty", "message value is empty", value or b""))
        return out
    if len(value) > max_bytes:
        out.rejections.append(
            Rejection("too_large", f"{len(value)} bytes exceeds the {max_bytes}-byte limit", value)
        )
        return out
    if value.lstrip()[:1] != b"[":
        _decode_one(value, kind, None, out)
        return out
    try:
        elements = _BATCH.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        reason, msg = _json_reason(value, exc)
        out.rejections.append(Rejection(reason, msg, value))
        return out
    if not elements:
        out.rejections.append(Rejection("empty_batch", "batch array has no events", value))
    elif len(elements) > max_batch:
        out.rejections.append(
            Rejection("too_large", f"batch of {len(elements)} events exceeds {max_batch}", value)
        )
    else:
        for i, element in enumerate(elements):
            _decode_one(bytes(element), kind, i, out)
    return out


def event_time(timestamp: EventTime | str, record_ms: int | None) -> float:
    """Event time in Unix seconds: the event's own timestamp, else the Kafka record's.

    >>> event_time("2024-01-01T00:00:00Z", None)
    1704067200.0
    >>> event_time(None, 1704067200500)
    1704067200.5
    """
    if timestamp is None:
        return (record_ms or 0) / 1000.0
    if isinstance(timestamp, str):
        timestamp = datetime.fromisoformat(timestamp)
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        return timestamp.timestamp()
    return float(timestamp)


def encode(obj: msgspec.Struct) -> bytes:
    """Encode an outgoing event (alert, metrics, dead-letter) as compact JSON."""
    return _ENCODER.encode(obj)


_ENCODER = msgspec.json.Encoder()


def write_schemas(directory: str) -> Sequence[str]:
    """Write every contract's JSON Schema to ``directory``; return the file names."""
    from pathlib import Path

    written = []
    for name in SCHEMAS:
        path = Path(directory) / f"{name}.json"
        path.write_text(schema_text(name))
        written.append(path.name)
    return written
