"""Event contracts: typed definitions, the decoder that enforces them, and their JSON Schemas.

The msgspec Structs of :mod:`streamproc.contracts.events` are the single source of truth.
``schemas/*.json`` are generated from them (``streamproc schemas write``) and a test fails when
the files and the code differ.

A Kafka message value on ``predictions`` or ``labels`` is one event object or a JSON array of
them. :func:`decode_message` splits a message into valid events and :class:`Rejection` s, each
carrying a machine-readable reason and the exact bytes of the element it rejects.

Modules
-------
``events`` (the public event Structs and their JSON Schemas) and ``decode`` (the decoder,
:func:`event_time`, :func:`encode`). Import the names from ``streamproc.contracts``.

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

from streamproc.contracts.decode import Decoded, Rejection, decode_message, encode, event_time
from streamproc.contracts.events import (
    SCHEMAS,
    Alert,
    ClassPerformance,
    DeadLetter,
    DeadLetterError,
    EventTime,
    FeatureValue,
    Incident,
    IncidentCause,
    IncidentMember,
    Label,
    MetricBand,
    MetricsRecord,
    NonEmptyStr,
    NonNegative,
    Prediction,
    RootCause,
    Scalar,
    Source,
    Unit,
    Window,
    json_schema,
    schema_text,
    write_schemas,
)

__all__ = [
    "SCHEMAS",
    "Alert",
    "ClassPerformance",
    "DeadLetter",
    "DeadLetterError",
    "Decoded",
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
    "Rejection",
    "RootCause",
    "Scalar",
    "Source",
    "Unit",
    "Window",
    "decode_message",
    "encode",
    "event_time",
    "json_schema",
    "schema_text",
    "write_schemas",
]
