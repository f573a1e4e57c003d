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
    that rule, for reference and live events alike; :func:`confidence_of` is the one definition
    of confidence (the predicted class's score) that baselines, the live path and replay share.

Stored form
    ``to_bytes()`` is ``b"SPR1"`` followed by the msgpack encoding of the profile
    (:func:`~streamproc.sketch.pack_state`); nothing is ever pickled. :class:`BaselineStore`
    keeps profiles in Redis under ``{prefix}:baseline:{model_id}:{model_version}``.

Modules
    ``profile`` (the Structs, segment keys, categories, outputs), ``builder``
    (:class:`ProfileBuilder`), ``files`` (:func:`read_table`, :func:`profile_from_file`),
    ``topic`` (:func:`profile_from_topic`), ``store`` (:class:`BaselineStore` and its key
    layout) and ``cli`` (``streamproc baseline``, :func:`describe`). Import the names from
    ``streamproc.baseline``.

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

from streamproc.baseline.builder import ProfileBuilder
from streamproc.baseline.cli import cmd_build, cmd_show, describe, register_cli
from streamproc.baseline.columns import RESERVED_COLUMNS, ColumnPlan, ColumnRoles, plan_columns
from streamproc.baseline.files import FILE_TYPES, profile_from_file, read_table
from streamproc.baseline.profile import (
    ALL,
    DEFAULT_BINS,
    DEFAULT_MAX_CATEGORIES,
    DEFAULT_MAX_SEGMENT_VALUES,
    MAGIC,
    BaselineError,
    CalibrationReference,
    CategoricalReference,
    ClassPerformanceReference,
    ColumnReference,
    LossModelReference,
    LossTreeReference,
    NumericReference,
    ReconstructionReference,
    ReferenceProfile,
    SegmentReference,
    category_value,
    confidence_of,
    outputs_of,
    segment_key,
    segment_keys_of,
)
from streamproc.baseline.store import AsyncBaselineStore, BaselineStore
from streamproc.baseline.topic import profile_from_topic

__all__ = [
    "ALL",
    "DEFAULT_BINS",
    "DEFAULT_MAX_CATEGORIES",
    "DEFAULT_MAX_SEGMENT_VALUES",
    "FILE_TYPES",
    "MAGIC",
    "RESERVED_COLUMNS",
    "AsyncBaselineStore",
    "BaselineError",
    "BaselineStore",
    "CalibrationReference",
    "CategoricalReference",
    "ClassPerformanceReference",
    "ColumnPlan",
    "ColumnReference",
    "ColumnRoles",
    "LossModelReference",
    "LossTreeReference",
    "NumericReference",
    "ProfileBuilder",
    "ReconstructionReference",
    "ReferenceProfile",
    "SegmentReference",
    "category_value",
    "cmd_build",
    "cmd_show",
    "confidence_of",
    "describe",
    "outputs_of",
    "plan_columns",
    "profile_from_file",
    "profile_from_topic",
    "read_table",
    "register_cli",
    "segment_key",
    "segment_keys_of",
]
