"""Hostile input at the ingest stage: every message accepted or dead-lettered once, for the
right reason, and the valid traffic around it all accepted.

Hypothesis draws batches of consumed records mixing valid predictions with hostile ones:
arbitrary bytes, nesting thousands of levels deep, lone UTF-16 surrogates, numbers beyond a
64-bit float, NaN/Infinity literals, huge maps, ``null`` in every field, and event times at
the extremes (before 1970, after 9999, far ahead of the record's timestamp). Each hostile
value goes in alone or as one element of a batch message of valid events. The expected reason
is derived from the mutation and the contract's declared types, not from the decoder.

``STREAMPROC_FUZZ_EXAMPLES`` raises the number of examples (the suite runs a bounded number).
"""

from __future__ import annotations

import asyncio
import base64
import os
import typing
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamproc.config import load_config
from streamproc.contracts import Prediction
from streamproc.ingest.ingestor import Ingestor, RawMessage
from streamproc.ingest.memory_join import MemoryJoin
from streamproc.worker.metrics import WorkerMetrics

EXAMPLES = int(os.environ.get("STREAMPROC_FUZZ_EXAMPLES", "60"))
RECORD_S = 1_767_225_600.0  # the records' timestamp (2026-01-01)
SKEW_S = 300.0  # worker.max_future_skew_s's default
MAX_BYTES = 1_048_576


@dataclass(frozen=True)
class Hostile:
    """A value to send, and what the worker must do with it: accept it (``None``), or
    dead-letter it with ``reason`` (a ``*`` matches any reason but ``internal:*``)."""

    value: bytes
    reason: str | None


def _valid(i: int) -> dict[str, Any]:
    return {
        "prediction_id": f"v{i}",
        "model_id": "m",
        "model_version": "1",
        "timestamp": RECORD_S - 60.0,
        "features": {"f0": 0.5, "c0": "a"},
        "prediction": "yes",
        "scores": {"yes": 0.7, "no": 0.3},
        "segments": {"country": "DE"},
        "latency_ms": 3.0,
    }


def _with(field: str, literal: bytes, i: int) -> bytes:
    """A valid event with ``field``'s value replaced by the raw JSON ``literal``."""
    event = _valid(i)
    event[field] = "@@"
    return orjson.dumps(event).replace(b'"@@"', literal)


def _null_reason(field: str) -> str | None:
    """``null`` in ``field``: accepted where the contract's type allows None, else refused as
    not an object (a map field) or of the wrong type."""
    hint = typing.get_type_hints(Prediction, include_extras=True)[field]
    args = typing.get_args(hint)
    if hint is type(None) or type(None) in args:
        return None
    base = typing.get_origin(hint) or hint
    if base is typing.Annotated:
        base = typing.get_origin(args[0]) or args[0]
    if base is dict:
        return f"schema:{field}:not_an_object"
    return f"schema:{field}:wrong_type"


FIELDS = list(Prediction.__struct_fields__)
STRING_FIELDS = ["prediction_id", "model_id", "model_version", "prediction"]
FLOAT_FIELDS = ["confidence", "latency_ms", "timestamp"]


@st.composite
def hostile(draw: st.DrawFn, i: int) -> Hostile:
    kind = draw(
        st.sampled_from(
            ["bytes", "deep", "deep_field", "surrogate", "surrogate_key", "huge_number",
             "non_finite", "huge_map", "null", "time"]
        )
    )  # fmt: skip
    if kind == "bytes":
        raw = draw(st.binary(min_size=0, max_size=200))
        return Hostile(raw, "*")
    if kind == "deep":  # the whole message: arrays or objects thousands of levels deep
        depth = draw(st.integers(2_000, 30_000))
        if draw(st.booleans()):
            return Hostile(b"[" * depth + b"]" * depth, "too_deep")
        return Hostile(b'{"a":' * depth + b"1" + b"}" * depth, "too_deep")
    if kind == "deep_field":  # deep in a field the contract ignores, or in the features
        depth = draw(st.integers(2_000, 30_000))
        if draw(st.booleans()):
            return Hostile(_with("extra", b"[" * depth + b"]" * depth, i), "too_deep")
        features = b'{"f0":' + b"[" * depth + b"]" * depth + b"}"
        return Hostile(_with("features", features, i), "too_deep")
    if kind == "surrogate":
        field = draw(st.sampled_from(STRING_FIELDS))
        unit = draw(st.sampled_from(["d800", "dbff", "dc00", "dfff"]))
        literal = b'"x\\u' + unit.encode() + b'y"'
        return Hostile(_with(field, literal, i), f"schema:{field}:invalid_unicode")
    if kind == "surrogate_key":
        field = draw(st.sampled_from(["features", "segments", "scores"]))
        return Hostile(_with(field, b'{"\\ud800":"a"}', i), f"schema:{field}:invalid_unicode")
    if kind == "huge_number":
        field = draw(st.sampled_from([*FLOAT_FIELDS, "features"]))
        digits = draw(st.integers(310, 2_000))
        literal = draw(st.sampled_from([b"1" * digits, b"1e" + str(digits).encode()]))
        if field == "features":
            literal = b'{"f0":' + literal + b"}"
        return Hostile(_with(field, literal, i), f"schema:{field}:out_of_range")
    if kind == "non_finite":
        field = draw(st.sampled_from([*FLOAT_FIELDS, "prediction"]))
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]))
        return Hostile(_with(field, literal, i), "non_finite_number")
    if kind == "huge_map":  # valid when it fits the size limit
        n = draw(st.integers(1_000, 80_000))
        features = orjson.dumps({f"k{j}": float(j) for j in range(n)})
        value = _with("features", features, i)
        return Hostile(value, None if len(value) <= MAX_BYTES else "too_large")
    if kind == "null":
        field = draw(st.sampled_from(FIELDS))
        return Hostile(_with(field, b"null", i), _null_reason(field))
    # time: event times at the extremes, as numbers or as RFC 3339 text
    t = draw(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from([-1.0, 0.0, 253_402_300_799.0, 253_402_300_800.0]),
            st.floats(RECORD_S - 1e9, RECORD_S + 1e9),
        )
    )
    if draw(st.booleans()) and -62_135_596_800.0 <= t < 253_402_300_800.0:
        t = round(t * 1e6) / 1e6  # RFC 3339 text holds microseconds
        literal = orjson.dumps(_iso(t))
    else:
        literal = orjson.dumps(t)
        t = float(orjson.loads(literal))
    if not 0.0 <= t <= 253_402_300_799.0:
        return Hostile(_with("timestamp", literal, i), "schema:timestamp:out_of_range")
    if t - RECORD_S > SKEW_S:
        return Hostile(_with("timestamp", literal, i), "timestamp:ahead_of_record")
    return Hostile(_with("timestamp", literal, i), None)


def _iso(t: float) -> str:
    from datetime import UTC, datetime, timedelta

    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=round(t * 1e6))
    return moment.isoformat().replace("+00:00", "Z")


class Captured:
    """The output producer's records, by topic (a stand-in for Kafka: this tier has none)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.records.append((topic, value))

    async def flush(self) -> None:
        return None


class DeadLetterRecord(msgspec.Struct):
    partition: int
    offset: int
    value_b64: str
    batch_index: int | None
    error: dict[str, str]


@st.composite
def traffic(draw: st.DrawFn) -> tuple[list[RawMessage], dict[tuple[int, int | None], Hostile], int]:
    """Records of two partitions: valid single events, hostile single values, and batch
    messages of valid events with one hostile element that parses as JSON."""
    msgs: list[RawMessage] = []
    expected: dict[tuple[int, int | None], Hostile] = {}
    valid = 0
    n = 0
    for _ in range(draw(st.integers(1, 12))):
        offset = len(msgs)
        shape = draw(st.sampled_from(["valid", "alone", "in_batch"]))
        n += 1
        if shape == "valid":
            value, valid = orjson.dumps(_valid(n)), valid + 1
        elif shape == "alone":
            bad = draw(hostile(n))
            expected[(offset, None)] = bad
            value = bad.value
        else:
            bad = draw(hostile(n))
            try:
                orjson.loads(bad.value)
                in_batch = not bad.reason or bad.reason not in ("*", "too_deep", "too_large")
            except orjson.JSONDecodeError:
                in_batch = False
            if not in_batch:
                continue
            at = draw(st.integers(0, 3))
            elements = [orjson.dumps(_valid(1000 * n + j)) for j in range(3)]
            elements.insert(at, bad.value)
            value = b"[" + b",".join(elements) + b"]"
            if len(value) > MAX_BYTES:
                continue
            expected[(offset, at)] = bad
            valid += 3
        msgs.append(RawMessage("predictions", 0, offset, None, value, round(RECORD_S * 1000)))
    return msgs, expected, valid


def _matches(reason: str, want: Hostile) -> bool:
    if want.reason == "*":
        return not reason.startswith("internal:")
    return reason == want.reason


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(traffic())
def test_every_input_is_accepted_or_dead_lettered_once_for_its_reason(
    case: tuple[list[RawMessage], dict[tuple[int, int | None], Hostile], int],
) -> None:
    msgs, expected, valid = case
    cfg = load_config(env={})
    out, metrics = Captured(), WorkerMetrics(CollectorRegistry())
    ingestor = Ingestor(cfg, MemoryJoin(), out, metrics)  # type: ignore[arg-type]
    asyncio.run(ingestor.on_predictions(msgs))

    letters = [
        msgspec.json.decode(v, type=DeadLetterRecord)
        for topic, v in out.records
        if topic == cfg.topics.deadletter
    ]
    where = Counter((d.offset, d.batch_index) for d in letters)
    assert all(n == 1 for n in where.values()), f"dead-lettered twice: {where}"
    accepted_hostile = 0
    for at, want in expected.items():
        got = [d for d in letters if (d.offset, d.batch_index) == at]
        if want.reason is None:
            assert not got, f"{at}: refused as {got[0].error} but the contract accepts it"
            accepted_hostile += 1
            continue
        assert got, f"{at}: neither accepted nor dead-lettered (want {want.reason})"
        reason = got[0].error["code"]
        assert _matches(reason, want), f"{at}: reason {reason}, want {want.reason}"
        assert base64.b64decode(got[0].value_b64) == want.value  # the original bytes
    assert len(letters) == sum(1 for w in expected.values() if w.reason is not None)
    accepted = metrics.events.labels(topic="predictions", outcome="accepted")._value.get()
    assert accepted == valid + accepted_hostile
