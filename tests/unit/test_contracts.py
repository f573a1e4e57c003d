"""The event contracts: the committed schemas, the decoder and the examples agree."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgspec
import pytest

from streamproc import contracts
from streamproc.contracts import Label, Prediction, decode_message

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = SCHEMAS / "examples"
BAD = EXAMPLES / "bad"
EXPECTED_BAD = json.loads((BAD / "expected.json").read_text())


def _kind(name: str) -> type[Prediction] | type[Label]:
    return Label if name.startswith("label") or ".label." in name else Prediction


def _schema_for(kind: type) -> dict:
    name = "label.v1" if kind is Label else "prediction.v1"
    return json.loads((SCHEMAS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(contracts.SCHEMAS))
def test_committed_schema_equals_the_one_generated_from_code(name: str) -> None:
    assert (SCHEMAS / f"{name}.json").read_text() == contracts.schema_text(name), (
        "schemas/ is stale: run `streamproc schemas write`"
    )


@pytest.mark.parametrize("name", sorted(contracts.SCHEMAS))
def test_committed_schema_is_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads((SCHEMAS / f"{name}.json").read_text()))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_examples_are_accepted_by_schema_and_decoder(path: Path) -> None:
    kind = _kind(path.name)
    jsonschema.validate(json.loads(path.read_bytes()), _schema_for(kind))
    decoded = decode_message(path.read_bytes(), kind)
    assert decoded.rejections == []
    assert decoded.events


@pytest.mark.parametrize("name", sorted(EXPECTED_BAD))
def test_bad_examples_are_rejected_with_their_reason_by_decoder_and_schema(name: str) -> None:
    raw = (BAD / name).read_bytes()
    kind = _kind(name)
    decoded = decode_message(raw, kind)
    assert decoded.events == []
    assert [r.reason for r in decoded.rejections] == [EXPECTED_BAD[name]]
    rejected = decoded.rejections[0]
    # A whole message is kept as it came; a batch element keeps its own exact bytes.
    assert rejected.value == raw if rejected.index is None else rejected.value in raw
    try:
        doc = json.loads(raw)
    except ValueError:
        return  # not JSON at all: nothing for a JSON Schema to say
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema_for(kind))


def test_every_bad_example_file_has_an_expected_reason() -> None:
    on_disk = {p.name for p in BAD.glob("*.json")} - {"expected.json"}
    assert on_disk == set(EXPECTED_BAD)


def test_batch_keeps_valid_elements_and_rejects_each_bad_one_alone() -> None:
    good = b'{"prediction_id":"p%d","model_id":"m","model_version":"1","prediction":1}'
    bad = b'{"prediction_id":"x","model_id":"m","model_version":"1","prediction":[1]}'
    value = b"[" + b",".join([good % 1, bad, good % 2]) + b"]"
    decoded = decode_message(value, Prediction)
    assert [e.prediction_id for e in decoded.events] == ["p1", "p2"]
    assert decoded.indexes == [0, 2]
    assert [(r.index, r.reason, r.value) for r in decoded.rejections] == [
        (1, "schema:prediction:wrong_type", bad)
    ]


def test_a_valid_batch_decodes_as_its_elements_would_one_by_one() -> None:
    elements = [
        b'{"prediction_id":"p1","model_id":"m","model_version":"1","prediction":1,'
        b'"features":{"a":1.5,"b":null,"c":"x"},"segments":{"country":"DE"}}',
        b' {"prediction_id":"p2", "model_id":"m","model_version":"2","prediction":"yes",'
        b'"scores":{"yes":0.75,"no":0.25},"timestamp":"2024-01-01T00:00:00Z"}',
    ]
    decoded = decode_message(b"[" + b",".join(elements) + b"]", Prediction)
    one_by_one = [decode_message(e, Prediction).events[0] for e in elements]
    assert decoded.events == one_by_one
    assert decoded.indexes == [0, 1]
    assert decoded.raws == [e.strip() for e in elements]  # each one's bytes, for its dead letter
    assert not decoded.rejections
    too_many = decode_message(b"[" + b",".join(elements * 3) + b"]", Prediction, max_batch=5)
    assert not too_many.events
    assert [r.reason for r in too_many.rejections] == ["too_large"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"prediction_id": "\xff"}', "not_utf8"),
        (
            b'{"prediction_id":"p","model_id":"m","model_version":"1","prediction":NaN}',
            "non_finite_number",
        ),
        (
            b'{"prediction_id":"p","model_id":"m","model_version":"1","prediction":1e999}',
            "schema:prediction:out_of_range",
        ),
        (
            b'{"prediction_id":"p","model_id":"m","model_version":"1","prediction":"\\ud800"}',
            "schema:prediction:invalid_unicode",
        ),
        (
            b'{"prediction_id":"p","model_id":"m","model_version":"1","features":{"\\udc00":1}}',
            "schema:features:invalid_unicode",
        ),
        (
            b'{"prediction_id":"p","model_id":"m","model_version":"1","features":null}',
            "schema:features:not_an_object",
        ),
        (
            b'{"prediction_id":"p","model_id":"m","model_version":"1","prediction":1,'
            b'"features":{"x":' + b"1" * 400 + b"}}",
            "schema:features:out_of_range",
        ),
        (b"[" * 5_000 + b"]" * 5_000, "too_deep"),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "too_deep"),
        (b'{"prediction_id":"p","extra":' + b"[" * 5_000 + b"]" * 5_000 + b"}", "too_deep"),
        (
            b'[{"prediction_id":"p","model_id":"m","model_version":"1","prediction":Infinity}]',
            "non_finite_number",
        ),
        (b"null", "schema:$:not_an_object"),
        (b"42", "schema:$:not_an_object"),
        (b"[1, 2", "invalid_json"),
    ],
)
def test_malformed_values_get_a_reason_naming_the_problem_and_field(
    value: bytes | None, reason: str
) -> None:
    decoded = decode_message(value, Prediction)
    assert decoded.events == []
    assert [r.reason for r in decoded.rejections] == [reason]


def test_oversized_values_are_rejected_before_parsing() -> None:
    value = b'{"prediction_id":"' + b"x" * 5_000_000 + b'"}'
    decoded = decode_message(value, Prediction, max_bytes=1_048_576)
    assert [r.reason for r in decoded.rejections] == ["too_large"]
    assert decoded.rejections[0].value is value


def test_unknown_top_level_fields_are_tolerated() -> None:
    value = (
        b'{"prediction_id":"p","model_id":"m","model_version":"1","prediction":1,"extra":{"a":1}}'
    )
    assert decode_message(value, Prediction).events[0].prediction_id == "p"


def test_event_time_prefers_the_event_and_falls_back_to_the_record() -> None:
    assert contracts.event_time(1_700_000_000, 5) == 1_700_000_000.0
    assert contracts.event_time("2024-01-01T01:00:00+01:00", None) == 1_704_067_200.0
    assert contracts.event_time("2024-01-01T00:00:00", None) == 1_704_067_200.0
    assert contracts.event_time(None, 1_700_000_000_000) == 1_700_000_000.0


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_metrics_examples_carry_the_figures_of_their_task_only(task: str) -> None:
    blob = (EXAMPLES / "metrics" / f"{task}.json").read_bytes()
    jsonschema.validate(json.loads(blob), json.loads((SCHEMAS / "metrics.v1.json").read_text()))
    perf = msgspec.json.decode(blob, type=contracts.MetricsRecord).performance
    regression = {"mae", "rmse", "mape"}
    if task == "regression":
        assert regression <= set(perf) and "accuracy" not in perf
    else:
        assert "accuracy" in perf and not regression & set(perf)


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "incidents").glob("*.json")), ids=lambda p: p.name
)
def test_incident_examples_are_accepted_by_schema_and_contract(path: Path) -> None:
    doc = json.loads(path.read_bytes())
    jsonschema.validate(doc, json.loads((SCHEMAS / "incident.v1.json").read_text()))
    incident = msgspec.json.decode(path.read_bytes(), type=contracts.Incident)
    assert incident.leading in incident.members
