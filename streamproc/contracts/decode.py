"""Decoding Kafka message values into events, and encoding the events streamproc publishes.

A message value on ``predictions`` or ``labels`` is one event object or a JSON array of them.
:func:`decode_message` never raises on data: it splits a message into valid events and
:class:`Rejection` s, each carrying a machine-readable reason and the exact bytes of the element
it rejects. :func:`event_time` is the one reading of an event's time; :func:`encode` writes
outgoing records as compact JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np

from streamproc.contracts.events import EventTime, Label, Prediction

__all__ = ["Decoded", "Rejection", "decode_message", "encode", "event_time"]


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
_FIELDS = frozenset(Prediction.__struct_fields__) | frozenset(Label.__struct_fields__)
MAX_DEPTH = 1000  # about where msgspec and the stdlib parser stop


_ARRAYS: dict[type, msgspec.json.Decoder[Any]] = {}


def _decoder(kind: type[E]) -> msgspec.json.Decoder[E]:
    dec = _DECODERS.get(kind)
    if dec is None:
        dec = _DECODERS[kind] = msgspec.json.Decoder(kind)
    return dec


def _array_decoder(kind: type[E]) -> msgspec.json.Decoder[list[E]]:
    dec = _ARRAYS.get(kind)
    if dec is None:
        dec = _ARRAYS[kind] = msgspec.json.Decoder(list[kind])  # type: ignore[valid-type]
    return dec


class _Bad:
    """A value the stdlib parser takes but an event cannot hold (it marks where it was)."""

    __slots__ = ("problem", "text")

    def __init__(self, problem: str, text: str) -> None:
        self.problem, self.text = problem, text


def _nan(name: str) -> _Bad:
    return _Bad("non_finite", name)


def _float(text: str) -> float | _Bad:
    x = float(text)
    return _Bad("out_of_range", text[:40]) if math.isinf(x) else x


def _first_bad(parsed: Any) -> tuple[str, str, str] | None:
    """``(field, problem, text)`` of the first unholdable value, depth-first, iteratively (the
    parser accepted the nesting, a recursive walk might not). ``field`` is the top-level field
    it sits in (``$`` for a value that is not in an object's field)."""
    stack: list[tuple[str | None, Any]] = [(None, parsed)]
    while stack:
        field, value = stack.pop()
        if isinstance(value, _Bad):
            return field or "$", value.problem, value.text
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return field or "$", "invalid_unicode", ""
        elif isinstance(value, dict):
            for k, v in reversed(value.items()):
                at = field
                if at is None and isinstance(parsed, dict):  # a field of the event, by name
                    at = k if k in _FIELDS else "$"  # (never a name that came in: metric label)
                stack.append((at, v))
                stack.append((at, k))
        elif isinstance(value, list):
            stack.extend((field, v) for v in reversed(value))
    return None


def _json_reason(value: bytes, exc: Exception) -> tuple[str, str]:
    """Classify bytes msgspec could not parse: not UTF-8, too deep, NaN/Infinity, a number
    beyond a 64-bit float, a lone UTF-16 surrogate, or bad JSON."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as err:
        return "not_utf8", f"value is not UTF-8: {err.reason} at byte {err.start}"
    try:  # the stdlib parser takes NaN, Infinity, 1e999 and "\ud800", which msgspec refuses
        parsed = json.loads(text, parse_constant=_nan, parse_float=_float)
    except RecursionError:
        return "too_deep", f"nested deeper than {MAX_DEPTH} levels"
    except ValueError:
        return "invalid_json", str(exc)
    bad = _first_bad(parsed)
    if bad is None:
        return "invalid_json", str(exc)
    field, problem, shown = bad
    if problem == "non_finite":
        return "non_finite_number", f"{shown} in {field} is not a JSON number"
    if problem == "out_of_range":
        return f"schema:{field}:out_of_range", f"{shown} in {field} does not fit a 64-bit float"
    return f"schema:{field}:invalid_unicode", f"a string in {field} holds a lone UTF-16 surrogate"


def _schema_reason(exc: msgspec.ValidationError) -> tuple[str, str]:
    msg = str(exc)
    missing = _MISSING.match(msg)
    if missing:
        return f"schema:{missing.group(1)}:missing", msg
    at = _AT.search(msg)
    path = at.group(1) if at and at.group(1) else "$"
    if msg.startswith("Number out of range"):
        return f"schema:{path}:out_of_range", msg
    if msg.startswith("Expected `object`"):
        return f"schema:{path}:not_an_object", msg
    if msg.startswith("Expected"):
        problem = (
            "out_of_range" if any(op in msg for op in ("<=", ">=", " < ", " > ")) else "wrong_type"
        )
        if "length" in msg:
            problem = "bad_length"
        return f"schema:{path}:{problem}", msg
    return f"schema:{path}:invalid", msg


def _unexpected(exc: BaseException) -> tuple[str, str]:
    """Reason for an exception no rule above expects: the message still gets its dead letter."""
    if isinstance(exc, RecursionError):
        return "too_deep", f"nested deeper than {MAX_DEPTH} levels"
    return f"internal:{type(exc).__name__}", f"{type(exc).__name__}: {exc}"[:500]


def _decode_one(raw: bytes, kind: type[E], index: int | None, out: Decoded[E]) -> None:
    try:
        event = _decoder(kind).decode(raw)
    except msgspec.ValidationError as exc:
        reason, msg = _schema_reason(exc)
        out.rejections.append(Rejection(reason, msg, raw, index))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        try:
            reason, msg = _json_reason(raw, exc)
        except Exception as err:
            reason, msg = _unexpected(err)
        out.rejections.append(Rejection(reason, msg, raw, index))
    except Exception as exc:
        reason, msg = _unexpected(exc)
        out.rejections.append(Rejection(reason, msg, raw, index))
    else:
        out.events.append(event)
        out.indexes.append(index)
        out.raws.append(raw)


def nested_deeper(raw: bytes, limit: int) -> bool:
    """Whether JSON text ``raw`` nests arrays and objects more than ``limit`` levels deep.

    The parsers' own stop (a ``RecursionError``) moves with the interpreter's recursion limit,
    which test runners and libraries raise: this check does not. Cheap for ordinary messages:
    fewer brackets than ``limit`` settle it; else one vectorised pass over the bytes; only a
    message that passes that too (brackets inside strings can fake depth) is walked exactly.

    >>> nested_deeper(b"[" * 1001 + b"]" * 1001, 1000), nested_deeper(b'["[[[["]', 2)
    (True, False)
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    a = np.frombuffer(raw, dtype=np.uint8)
    step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32) - ((a == 0x5D) | (a == 0x7D))
    if int(np.cumsum(step).max()) <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


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
    if nested_deeper(value, MAX_DEPTH):
        out.rejections.append(
            Rejection("too_deep", f"nested deeper than {MAX_DEPTH} levels", value)
        )
        return out
    if value.lstrip()[:1] != b"[":
        _decode_one(value, kind, None, out)
        return out
    # The whole array in one call when every element is valid, as nearly every batch is (a
    # quarter less CPU than element by element); element by element only to tell which not.
    try:
        events = _array_decoder(kind).decode(value)
    except Exception:
        events = []
    if 0 < len(events) <= max_batch:
        out.events = events
        out.indexes = list(range(len(events)))
        out.raws = [bytes(element) for element in _BATCH.decode(value)]
        return out
    try:
        elements = _BATCH.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        try:
            reason, msg = _json_reason(value, exc)
        except Exception as err:
            reason, msg = _unexpected(err)
        out.rejections.append(Rejection(reason, msg, value))
        return out
    except Exception as exc:
        reason, msg = _unexpected(exc)
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
