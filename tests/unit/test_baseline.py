"""Reference baselines: the builder, the profile's byte form, the file readers, the CLI's errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from streamproc import cli
from streamproc.baseline import (
    ALL,
    BaselineError,
    CategoricalReference,
    NumericReference,
    ProfileBuilder,
    ReferenceProfile,
    category_value,
    describe,
    outputs_of,
    profile_from_file,
    read_table,
    segment_key,
    segment_keys_of,
)
from streamproc.baseline.columns import ColumnPlan, ColumnRoles
from streamproc.baseline.files import _read_csv_arrow, _read_csv_python
from streamproc.contracts import Prediction
from streamproc.dev.synthetic import Workload, WorkloadSpec
from streamproc.errors import StateEncodingError
from streamproc.judge.stats import fit_calibration_map
from streamproc.sketch import NumericSketch, pack_state, reference_edges

WHEN = "2024-01-01T00:00:00Z"


def _numeric(ref: object) -> NumericReference:
    assert isinstance(ref, NumericReference)
    return ref


def _categorical(ref: object) -> CategoricalReference:
    assert isinstance(ref, CategoricalReference)
    return ref


# -- segment keys -------------------------------------------------------------------------------


def test_segment_key_names_all_traffic_or_one_dimension_value() -> None:
    assert segment_key(None, None) == "all"
    assert segment_key("country", "DE") == "country=DE"
    with pytest.raises(ValueError):
        segment_key("country", None)
    with pytest.raises(ValueError):
        segment_key(None, "DE")


def test_segment_keys_of_an_event_are_all_then_one_per_dimension() -> None:
    event = {"device": "ios", "country": "DE"}
    assert segment_keys_of(event) == ["all", "country=DE", "device=ios"]
    allowed = {"country": {"DE", "FR"}, "device": {"android"}}
    assert segment_keys_of(event, allowed) == ["all", "country=DE", "device=__other__"]
    # a dimension the profile does not segment by is ignored; a missing one yields no key
    assert segment_keys_of({"plan": "pro", "country": "FR"}, allowed) == ["all", "country=FR"]


def test_values_beyond_the_top_k_share_the_other_segment() -> None:
    builder = ProfileBuilder("m", "1", ["country"], max_segment_values=2)
    counts = {"US": 5, "DE": 4, "FR": 2, "BR": 1}
    for country, n in counts.items():
        for _ in range(n):
            builder.add({"x": 1.0}, segments={"country": country})
    builder.add({"x": 2.0}, segments={})  # no country: only in "all"
    profile = builder.build("test", created_at=WHEN)
    assert list(profile.segments) == ["all", "country=US", "country=DE", "country=__other__"]
    assert [s.count for s in profile.segments.values()] == [13, 5, 4, 3]
    assert profile.segment_values() == {"country": {"US", "DE"}}
    assert profile.segment_keys({"country": "BR"}) == ["all", "country=__other__"]
    assert profile.segment("country=BR") is None


def test_ties_for_the_last_kept_segment_are_broken_by_value() -> None:
    builder = ProfileBuilder("m", "1", ["d"], max_segment_values=1)
    for value in ("b", "a", "b", "a"):
        builder.add({}, segments={"d": value})
    assert list(builder.build("t").segments) == ["all", "d=a", "d=__other__"]


def test_segment_counts_of_one_dimension_add_up_to_the_rows_that_have_it() -> None:
    work = Workload(WorkloadSpec(), 3_000, seed=5)
    builder = ProfileBuilder("m", "1", ["country", "device"], max_segment_values=3)
    for row in work.reference_rows():
        builder.add({"f00": row["f00"]}, segments={"country": row["country"], "device": "ios"})
    profile = builder.build("t")
    countries = [s.count for k, s in profile.segments.items() if k.startswith("country=")]
    assert sum(countries) == profile.rows == 3_000
    assert len(countries) == 4  # 3 kept + __other__
    assert profile.segments["device=ios"].count == 3_000


# -- feature references -------------------------------------------------------------------------


def test_numeric_bins_and_moments_match_a_sketch_fed_the_same_values() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(10.0, 2.0, 5_000)
    values[rng.random(5_000) < 0.05] = np.nan
    builder = ProfileBuilder("m", "1", bins=8)
    for v in values.tolist():
        builder.add({"x": None if math.isnan(v) else v})
    ref = _numeric(builder.build("t").segments[ALL].features["x"])

    finite = values[np.isfinite(values)]
    edges = reference_edges(finite, 8)
    sketch = NumericSketch(edges)
    sketch.update_many(values)
    assert ref.edges == edges.tolist()
    assert ref.probs == sketch.probabilities().tolist()
    assert len(ref.probs) == len(ref.edges) + 1
    assert (ref.count, ref.nulls) == (finite.size, values.size - finite.size)
    assert ref.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert ref.std == pytest.approx(finite.std(ddof=1), rel=1e-12)
    assert (ref.min, ref.max) == (finite.min(), finite.max())
    assert ref.null_rate == pytest.approx(ref.nulls / values.size)
    window = ref.sketch()
    window.update_many(finite)
    assert window.hist.tolist() == sketch.hist.tolist()
    assert (window.ref_min, window.ref_max) == (ref.min, ref.max)


def test_categorical_probs_are_shares_among_non_null_values() -> None:
    builder = ProfileBuilder("m", "1")
    for v in ["a", "b", "a", None, "a", "c"]:
        builder.add({"plan": v})
    ref = _categorical(builder.build("t").segments[ALL].features["plan"])
    assert ref.probs == {"a": 0.6, "b": 0.2, "c": 0.2}
    assert (ref.count, ref.nulls) == (5, 1)


def test_booleans_and_mixed_columns_are_categorical_with_stringified_values() -> None:
    builder = ProfileBuilder("m", "1")
    for flag, mixed, number in [(True, 1, 1), (False, "x", 2.5), (True, 2.0, None)]:
        builder.add({"flag": flag, "mixed": mixed, "number": number})
    features = builder.build("t").segments[ALL].features
    assert _categorical(features["flag"]).probs == {"true": 2 / 3, "false": 1 / 3}
    assert set(_categorical(features["mixed"]).probs) == {"1", "x", "2"}
    assert _numeric(features["number"]).count == 2


def test_a_column_numeric_in_one_batch_and_text_in_another_is_categorical() -> None:
    builder = ProfileBuilder("m", "1")
    builder.add_columns({"code": [1, 2, 2]})
    builder.add({"code": "A7"})
    ref = _categorical(builder.build("t").segments[ALL].features["code"])
    assert ref.probs == {"2": 0.5, "1": 0.25, "A7": 0.25}


def test_categories_beyond_max_categories_are_counted_as_other() -> None:
    builder = ProfileBuilder("m", "1", max_categories=3)
    builder.add_columns({"id": [f"v{i % 10}" for i in range(100)]})
    ref = _categorical(builder.build("t").segments[ALL].features["id"])
    assert len(ref.probs) == 4 and ref.probs["__other__"] == pytest.approx(0.7)
    assert sum(ref.probs.values()) == pytest.approx(1.0)


def test_category_value_is_the_shared_stringification() -> None:
    assert category_value(True) == "true"
    assert category_value(np.bool_(False)) == "false"
    assert category_value(7.0) == "7" and category_value(np.int64(7)) == "7"
    assert category_value(0.25) == "0.25"
    assert category_value(float("inf")) is None


# -- outputs ------------------------------------------------------------------------------------


def _classifier_rows(n: int, seed: int) -> list[tuple[float, str, str]]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    label = np.where(rng.uniform(0, 1, n) < p, "yes", "no")
    pred = np.where(p >= 0.5, "yes", "no")
    return list(zip(np.round(p, 6).tolist(), pred.tolist(), label.tolist(), strict=True))


def test_accuracy_and_calibration_come_from_labelled_rows() -> None:
    rows = _classifier_rows(4_000, seed=1)
    builder = ProfileBuilder("m", "1", bins=10)
    for i, (p, pred, label) in enumerate(rows):
        builder.add({"x": p}, prediction=pred, score=p, label=label if i % 4 else None)
    profile = builder.build("t")
    seg = profile.segments[ALL]

    labelled = [r for i, r in enumerate(rows) if i % 4]
    correct = np.array([pred == label for _, pred, label in labelled])
    confidence = np.array([p if pred == "yes" else 1 - p for p, pred, _ in labelled])
    assert profile.positive_class == "yes"
    assert seg.accuracy == pytest.approx(correct.mean(), rel=1e-12)
    expected = fit_calibration_map(confidence, correct, bins=10)
    assert seg.calibration is not None
    assert seg.calibration.counts == expected.counts.tolist()
    np.testing.assert_allclose(seg.calibration.accuracy, expected.accuracy, rtol=1e-12)
    assert seg.calibration.to_map().accuracy_for([0.99]).tolist() == [seg.calibration.accuracy[-1]]
    preds = [pred for _, pred, _ in rows]
    assert seg.top1_rate == max(preds.count("yes"), preds.count("no")) / len(preds)
    assert _categorical(seg.prediction).probs["yes"] == preds.count("yes") / len(preds)
    assert _numeric(seg.score).count == len(rows)
    assert _categorical(seg.label).count == len(labelled)
    assert seg.mae is None


def test_a_score_that_is_already_a_confidence_names_no_positive_class() -> None:
    rows = _classifier_rows(2_000, seed=2)
    builder = ProfileBuilder("m", "1")
    for p, pred, label in rows:
        builder.add({}, prediction=pred, score=max(p, 1 - p), label=label)
    profile = builder.build("t")
    assert profile.positive_class is None
    cal = profile.segments[ALL].calibration
    assert cal is not None and sum(cal.counts[:5]) == 0  # binary confidences are >= 0.5


def test_explicit_confidences_feed_the_calibration_map() -> None:
    builder = ProfileBuilder("m", "1", bins=2, positive_class="yes")
    builder.add({}, prediction="no", score=0.2, label="no", confidence=0.8)
    builder.add({}, prediction="no", score=0.4, label="yes", confidence=0.6)
    cal = builder.build("t").segments[ALL].calibration
    assert cal is not None and cal.counts == [0, 2] and cal.accuracy == [0.5, 0.5]


def test_numeric_predictions_get_mae_and_no_accuracy() -> None:
    builder = ProfileBuilder("m", "1")
    for pred, label in [(1.5, 1.0), (2.0, 3.0), (0.5, None), (4.0, 4.0)]:
        builder.add({}, prediction=pred, label=label)
    seg = builder.build("t").segments[ALL]
    assert seg.mae == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert seg.accuracy is None and seg.calibration is None and seg.top1_rate is None
    assert _numeric(seg.prediction).count == 4


def test_integral_predictions_with_scores_are_classification() -> None:
    builder = ProfileBuilder("m", "1")
    for pred, score, label in [(1, 0.9, 1), (0, 0.2, 0), (1, 0.7, 0), (0, 0.1, "0")]:
        builder.add({}, prediction=pred, score=score, label=label)
    profile = builder.build("t")
    seg = profile.segments[ALL]
    assert seg.accuracy == 0.75 and seg.top1_rate == 0.5
    assert profile.positive_class == "1"


def test_rows_without_labels_or_outputs_give_none() -> None:
    builder = ProfileBuilder("m", "1")
    builder.add({"x": 1.0}, prediction="a")
    seg = builder.build("t").segments[ALL]
    assert seg.label is None and seg.score is None
    assert seg.accuracy is None and seg.calibration is None and seg.mae is None
    assert seg.top1_rate == 1.0


def test_outputs_of_reads_scores_for_the_positive_class_and_the_prediction() -> None:
    def event(**kw: object) -> Prediction:
        return Prediction(prediction_id="p", model_id="m", model_version="1", **kw)  # type: ignore[arg-type]

    two = event(prediction="no", scores={"yes": 0.3, "no": 0.7})
    assert outputs_of(two, "yes") == ("no", 0.3, 0.7)
    three = event(prediction="b", scores={"a": 0.2, "b": 0.5, "c": 0.3})
    assert outputs_of(three) == ("b", 0.5, 0.5)
    assert outputs_of(event(prediction=1.0, confidence=0.8)) == (1.0, 0.8, 0.8)
    assert outputs_of(event(prediction=3.5)) == (3.5, None, None)


# -- warm-up sized and incremental --------------------------------------------------------------


def test_a_single_row_builds_a_usable_profile() -> None:
    builder = ProfileBuilder("m", "1", ["country"])
    builder.add(
        {"x": 4.0, "plan": "pro", "empty": None}, prediction="a", segments={"country": "DE"}
    )
    profile = builder.build("warm-up", created_at=WHEN)
    x = _numeric(profile.segments[ALL].features["x"])
    assert (x.edges, x.probs, x.std, x.mean) == ([4.0], [1.0, 0.0], None, 4.0)
    assert _categorical(profile.segments[ALL].features["plan"]).probs == {"pro": 1.0}
    empty = _numeric(profile.segments[ALL].features["empty"])
    assert (empty.count, empty.nulls, empty.probs, empty.mean) == (0, 1, [], None)
    with pytest.raises(ValueError):
        empty.sketch()
    assert list(profile.segments) == ["all", "country=DE"]
    assert ReferenceProfile.from_bytes(profile.to_bytes()) == profile


def test_a_constant_feature_splits_at_its_value() -> None:
    builder = ProfileBuilder("m", "1")
    builder.add_columns({"x": [2.0] * 50})
    x = _numeric(builder.build("t").segments[ALL].features["x"])
    assert (x.edges, x.probs, x.std) == ([2.0], [1.0, 0.0], 0.0)


def test_building_with_no_rows_is_an_error() -> None:
    with pytest.raises(BaselineError, match="no rows"):
        ProfileBuilder("m", "1").build("t")


def test_rows_added_after_a_build_join_the_next_build() -> None:
    rows = _classifier_rows(600, seed=4)
    once = ProfileBuilder("m", "1", ["half"])
    twice = ProfileBuilder("m", "1", ["half"])
    for i, (p, pred, label) in enumerate(rows):
        kw = {"prediction": pred, "score": p, "label": label, "segments": {"half": str(i < 300)}}
        once.add({"x": p, "c": pred}, **kw)  # type: ignore[arg-type]
        twice.add({"x": p, "c": pred}, **kw)  # type: ignore[arg-type]
        if i == 299:
            assert twice.build("t", created_at=WHEN).rows == 300
    assert twice.build("t", created_at=WHEN) == once.build("t", created_at=WHEN)


def test_columns_and_rows_build_the_same_profile() -> None:
    rows = _classifier_rows(500, seed=6)
    by_row = ProfileBuilder("m", "1", ["d"])
    for i, (p, pred, label) in enumerate(rows):
        by_row.add(
            {"x": p, "k": "odd" if i % 2 else None},
            prediction=pred,
            score=p,
            label=label,
            segments={"d": "a" if i % 3 else "b"},
            event_time=1000.0 + i,
        )
    by_col = ProfileBuilder("m", "1", ["d"])
    by_col.add_columns(
        {"x": np.array([r[0] for r in rows]), "k": ["odd" if i % 2 else None for i in range(500)]},
        prediction=[r[1] for r in rows],
        score=[r[0] for r in rows],
        label=[r[2] for r in rows],
        segments={"d": ["a" if i % 3 else "b" for i in range(500)]},
        event_time=np.arange(500) + 1000.0,
    )
    assert by_col.build("t", created_at=WHEN) == by_row.build("t", created_at=WHEN)


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ProfileBuilder("m", "1").add_columns({"x": [1, 2]}, prediction=["a"])


def test_rate_per_s_counts_rows_per_second_of_event_time() -> None:
    builder = ProfileBuilder("m", "1", ["d"])
    for i in range(101):  # 4 events per second over 25 s
        builder.add({}, segments={"d": "a" if i % 4 else "b"}, event_time=100.0 + i / 4)
    seg = builder.build("t").segments
    assert seg[ALL].rate_per_s == pytest.approx(4.0)
    assert seg["d=b"].rate_per_s == pytest.approx(26 / 25.25)
    untimed = ProfileBuilder("m", "1")
    untimed.add({"x": 1.0})
    assert untimed.build("t").segments[ALL].rate_per_s is None


# -- stored form --------------------------------------------------------------------------------


def _synthetic_profile(n: int = 2_000) -> ReferenceProfile:
    spec = WorkloadSpec()
    builder = ProfileBuilder(spec.model_id, spec.model_version, ["country", "device"])
    for row in Workload(spec, n, seed=9).reference_rows():
        builder.add(
            {k: row[k] for k in (*spec.numeric_features, *spec.categorical_features)},
            prediction=row["prediction"],
            score=row["score"],
            label=row["label"],
            segments={"country": row["country"], "device": row["device"]},
        )
    return builder.build("synthetic", created_at=WHEN)


def test_profile_round_trips_through_its_bytes() -> None:
    profile = _synthetic_profile()
    blob = profile.to_bytes()
    assert blob[:4] == b"SPR1"
    again = ReferenceProfile.from_bytes(blob)
    assert again == profile
    assert again.to_bytes() == blob
    assert isinstance(again.segments["country=DE"].features["c0"], CategoricalReference)
    assert isinstance(again.segments["country=DE"].features["f00"], NumericReference)


def test_foreign_and_corrupt_bytes_are_refused() -> None:
    profile = _synthetic_profile(300)
    blob = profile.to_bytes()
    with pytest.raises(StateEncodingError, match="version 2"):
        ReferenceProfile.from_bytes(b"SPR2" + blob[4:])
    with pytest.raises(StateEncodingError, match="not a ReferenceProfile"):
        ReferenceProfile.from_bytes(NumericSketch([1.0]).to_bytes())
    with pytest.raises(StateEncodingError, match="corrupt"):
        ReferenceProfile.from_bytes(blob[:-20])
    with pytest.raises(StateEncodingError):
        ReferenceProfile.from_bytes(json.dumps({"model_id": "m"}).encode())
    seg = profile.segments[ALL]
    bad_x = msgspec.structs.replace(_numeric(seg.features["f00"]), probs=[1.0])
    bad = msgspec.structs.replace(
        profile, segments={ALL: msgspec.structs.replace(seg, features={"f00": bad_x})}
    )
    with pytest.raises(StateEncodingError, match="bins do not match"):
        ReferenceProfile.from_bytes(pack_state(b"SPR1", bad))


# -- files --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ref")
    work = Workload(WorkloadSpec(label_fraction=0.8), 3_000, seed=11)
    work.write_reference(csv_path=d / "ref.csv", jsonl_path=d / "ref.jsonl")
    return {"csv": d / "ref.csv", "jsonl": d / "ref.jsonl"}


def _same_profile(a: ReferenceProfile, b: ReferenceProfile) -> None:
    assert list(a.segments) == list(b.segments)
    assert msgspec.structs.replace(a, source="", created_at="") == msgspec.structs.replace(
        b, source="", created_at=""
    )


def test_csv_and_jsonl_of_the_same_rows_give_the_same_profile(
    reference_files: dict[str, Path],
) -> None:
    dims = ["country", "device"]
    from_csv = profile_from_file(reference_files["csv"], "demo-churn", "1", dims)
    from_jsonl = profile_from_file(reference_files["jsonl"], "demo-churn", "1", dims)
    _same_profile(from_csv, from_jsonl)
    seg = from_csv.segments[ALL]
    assert from_csv.rows == 3_000 and from_csv.positive_class == "yes"
    assert len(seg.features) == 23  # segment columns and outputs are not features
    assert "country" not in seg.features and "score" not in seg.features
    assert _categorical(seg.label).count == pytest.approx(2_400, abs=100)
    assert seg.accuracy == pytest.approx(0.9, abs=0.03)
    assert from_csv.source == str(reference_files["csv"].resolve())


def test_parquet_gives_the_same_profile_as_csv(
    reference_files: dict[str, Path], tmp_path: Path
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in reference_files["jsonl"].read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ref.parquet")
    dims = ["country", "device"]
    _same_profile(
        profile_from_file(tmp_path / "ref.parquet", "demo-churn", "1", dims),
        profile_from_file(reference_files["csv"], "demo-churn", "1", dims),
    )


def test_csv_cells_become_numbers_nulls_booleans_or_text(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,c,d\n1,x,true,\n2.5,,FALSE,\n,7,True,\n")
    table = read_table(path)
    assert np.array_equal(table["a"], [1.0, 2.5, np.nan], equal_nan=True)
    assert table["b"].tolist() == ["x", None, "7"]
    assert table["c"].tolist() == ["true", "false", "true"]
    assert np.isnan(table["d"]).all()


def test_arrow_and_csv_module_readers_type_columns_alike(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "tricky.csv"
    path.write_text(
        "num,padded,text,flag,quoted,empty,mixed\n"
        '1,  2 ,a,TRUE,"x, y",,1\n'
        '2.5,3,"multi\nline",false,"say ""hi""",,b\n'
        "\n"
        ",4,c,True,,,\n"
        "nan,1e3,,FALSE,z,,2\n"
    )
    arrow, python = _read_csv_arrow(path), _read_csv_python(path)
    assert list(arrow) == list(python)
    for name, col in python.items():
        assert arrow[name].dtype == col.dtype, name
        assert np.array_equal(arrow[name], col, equal_nan=col.dtype != object), name
    assert python["padded"].tolist() == [2.0, 3.0, 4.0, 1000.0]
    assert python["text"].tolist() == ["a", "multi\nline", "c", None]
    assert python["flag"].tolist() == ["true", "false", "true", "false"]
    assert python["quoted"].tolist() == ["x, y", 'say "hi"', None, "z"]
    assert python["mixed"].tolist() == ["1", "b", None, "2"]


def test_class_score_columns_give_confidence_and_argmax_prediction(tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    rows = [
        {"x": 1, "score_a": 0.7, "score_b": 0.2, "score_c": 0.1, "label": "a"},
        {"x": 2, "score_a": 0.1, "score_b": 0.3, "score_c": 0.6, "label": "b"},
        {"x": 3, "score_a": 0.2, "score_b": 0.5, "score_c": 0.3, "label": "b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = profile_from_file(path, "m", "1")
    seg = profile.segments[ALL]
    assert list(seg.features) == ["x"]
    assert _categorical(seg.prediction).probs == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    score = _numeric(seg.score)
    assert (score.min, score.max) == (0.5, 0.7)
    assert seg.accuracy == pytest.approx(2 / 3)
    assert profile.positive_class is None
    binary = tmp_path / "binary.csv"
    binary.write_text("x,score_yes,score_no\n1,0.8,0.2\n2,0.3,0.7\n")
    with_pos = profile_from_file(binary, "m", "1", positive_class="yes")
    assert _numeric(with_pos.segments[ALL].score).mean == pytest.approx(0.55)
    assert with_pos.positive_class == "yes"


def test_timestamps_in_either_form_give_the_rate(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("x,timestamp\n1,2024-01-01T00:00:00Z\n2,2024-01-01T00:00:01Z\n3,1704067202\n")
    assert profile_from_file(path, "m", "1").segments[ALL].rate_per_s == pytest.approx(1.0)
    (tmp_path / "bad.csv").write_text("x,timestamp\n1,yesterday\n")
    with pytest.raises(BaselineError, match="yesterday"):
        profile_from_file(tmp_path / "bad.csv", "m", "1")


def test_unreadable_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("x,y\n")
    (tmp_path / "ragged.csv").write_text("x,y\n1,2\n3\n")
    (tmp_path / "both.csv").write_text("x,score,score_a\n1,0.5,0.5\n")
    (tmp_path / "list.jsonl").write_text('{"x": [1, 2]}\n')
    (tmp_path / "text.jsonl").write_text("not json\n")
    (tmp_path / "t.xlsx").write_text("")
    cases = {
        "missing.csv": "no such file",
        "t.xlsx": "unknown file type",
        "empty.csv": "empty",
        "header.csv": "no rows",
        "ragged.csv": "data row 2 has 1 fields",
        "both.csv": "both",
        "list.jsonl": "holds a list",
        "text.jsonl": "line 1 is not JSON",
    }
    for name, message in cases.items():
        with pytest.raises(BaselineError, match=message) as info:
            profile_from_file(tmp_path / name, "m", "1")
        assert "\n" not in str(info.value)


def test_a_segment_column_that_is_not_there_is_named(reference_files: dict[str, Path]) -> None:
    with pytest.raises(BaselineError, match="no column 'region' for --segments"):
        profile_from_file(reference_files["csv"], "m", "1", ["country", "region"])


def test_cli_reports_bad_input_on_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["baseline", "build", "--model", "m", "--version", "1", "--from-file", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("streamproc: ") and "unknown file type" in err
    assert err.count("\n") == 1


def test_describe_lists_segments_and_column_types() -> None:
    text = describe(_synthetic_profile(500), "country=DE")
    assert "segment country=DE:" in text
    assert "  f00 " in text and "numeric" in text
    assert "  c0 " in text and "categorical" in text
    assert "positive class: yes" in text
    with pytest.raises(BaselineError, match="no segment"):
        describe(_synthetic_profile(100), "country=XX")


# -- which column is what ------------------------------------------------------------------------


def _loan_file(path: Path, n: int = 400, seed: int = 3) -> Path:
    """A file shaped like NannyML's car-loan set: an id, features, the target under another
    name, a score and a prediction thresholded at 0.65 (not 0.5), a timestamp and a constant."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50_000, 9_000, n).round(2)
    ratio = rng.uniform(0, 1, n).round(4)
    proba = np.clip(0.2 + 0.6 * ratio + rng.normal(0, 0.05, n), 0.01, 0.99).round(2)
    y_pred = (proba >= 0.65).astype(int)
    repaid = np.where(rng.uniform(size=n) < 0.9, y_pred, 1 - y_pred)
    region = rng.choice(["north", "south"], n)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "income", "debt_ratio", "region", "period", "repaid", "timestamp",
                    "y_pred_proba", "y_pred"])  # fmt: skip
        for i in range(n):
            stamp = f"2018-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}"
            w.writerow([i, income[i], ratio[i], region[i], "reference", repaid[i], stamp,
                        proba[i], y_pred[i]])  # fmt: skip
    return path


def test_a_file_with_other_column_names_is_told_which_option_fixes_each(tmp_path: Path) -> None:
    path = _loan_file(tmp_path / "loan.csv")
    plans: list[ColumnPlan] = []
    guessed = profile_from_file(path, "loan", "1", on_plan=plans.append)
    warnings = "\n".join(plans[0].warnings)
    for expected in (
        "'id' has a different value in every row (an id?)",
        "'y_pred' looks like the prediction, not a feature: --prediction-column y_pred",
        "'repaid' looks like the label, not a feature: --label-column repaid",
        "'y_pred_proba' looks like the score, not a feature: --score-column y_pred_proba",
        "'period' is constant",
    ):
        assert expected in warnings, warnings
    # a continuous measurement distinct in every row is not an id; the timestamp is found
    assert "'income'" not in warnings and "'debt_ratio'" not in warnings
    assert "timestamp" not in warnings and plans[0].roles == {"timestamp": "timestamp"}
    assert {"id", "y_pred", "repaid", "y_pred_proba"} <= set(guessed.segments[ALL].features)
    assert guessed.segments[ALL].accuracy is None

    plans.clear()
    told = profile_from_file(
        path, "loan", "1", ["region"], ignore=["id", "period"], on_plan=plans.append,
        roles=ColumnRoles(prediction="y_pred", score="y_pred_proba", label="repaid"),
    )  # fmt: skip
    assert plans[0].warnings == []
    assert plans[0].summary().splitlines() == [
        "outputs: prediction=y_pred, label=repaid, score=y_pred_proba, timestamp=timestamp",
        "segments: region",
        "ignored: id, period",
        "features (2): income, debt_ratio",
    ]
    seg = told.segments[ALL]
    assert list(seg.features) == ["income", "debt_ratio"]
    assert seg.accuracy == pytest.approx(0.9, abs=0.05) and seg.calibration is not None
    assert told.positive_class == "1"


def test_a_score_pattern_takes_one_column_per_class(tmp_path: Path) -> None:
    path = tmp_path / "multi.csv"
    path.write_text(
        "x,proba_card_a,proba_card_b,proba_cash,y_true\n"
        "1,0.7,0.2,0.1,card_a\n2,0.1,0.3,0.6,cash\n3,0.2,0.5,0.3,card_a\n"
    )
    plans: list[ColumnPlan] = []
    profile_from_file(path, "m", "1", on_plan=plans.append)
    assert "--score-column 'proba_*'" in "\n".join(plans[0].warnings)
    profile = profile_from_file(
        path, "m", "1", roles=ColumnRoles(score="proba_*", label="y_true"), on_plan=plans.append
    )
    assert plans[-1].class_columns == {
        "card_a": "proba_card_a", "card_b": "proba_card_b", "cash": "proba_cash"
    }  # fmt: skip
    seg = profile.segments[ALL]
    assert list(seg.features) == ["x"]
    assert _categorical(seg.prediction).probs == {"card_a": 1 / 3, "card_b": 1 / 3, "cash": 1 / 3}
    assert seg.accuracy == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roles": ColumnRoles(label="outcome")}, "no column 'outcome' for --label-column"),
        ({"roles": ColumnRoles(score="p_*")}, "no column matches --score-column 'p_\\*'"),
        ({"roles": ColumnRoles(prediction="y_pred")}, "the file has a 'prediction' column too"),
        ({"roles": ColumnRoles(label="x"), "segment_dims": ["x"]}, "'x' is both an output and a"),
        ({"ignore": ["nope"]}, "no column 'nope' for --ignore"),
    ],
)
def test_a_column_option_that_cannot_apply_fails_with_what_is_there(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    path = tmp_path / "f.csv"
    path.write_text("x,y_pred,prediction\n1,a,a\n2,b,b\n")
    with pytest.raises(BaselineError, match=message) as info:
        profile_from_file(path, "m", "1", **kwargs)
    assert (
        "columns: x, y_pred, prediction" in str(info.value)
        or "both" in str(info.value)
        or ("too" in str(info.value))
    )


def test_column_options_belong_to_files_not_topics(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["baseline", "build", "--model", "m", "--version", "1", "--from-topic",
                     "predictions", "--label-column", "y"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--label-column: only for --from-file" in err


# -- the task: classification or regression -----------------------------------------------------


def _regression_rows(n: int = 400, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = rng.normal(50.0, 10.0, n)
    label[::37] = 0.0  # zero targets, which MAPE skips
    pred = label + rng.normal(0.0, 3.0, n)
    return pred, label


def test_numeric_predictions_and_labels_make_a_regression_model_with_numpy_figures() -> None:
    pred, label = _regression_rows()
    builder = ProfileBuilder("m", "1")
    builder.add_columns({"x": pred * 2}, prediction=pred, label=label)
    profile = builder.build("t")
    seg = profile.segments[ALL]
    err = np.abs(pred - label)
    nz = label != 0
    assert profile.task == "regression" and seg.task == "regression"
    assert seg.mae == pytest.approx(err.mean(), rel=1e-12)
    assert seg.rmse == pytest.approx(np.sqrt(np.mean((pred - label) ** 2)), rel=1e-12)
    assert seg.mape == pytest.approx(np.mean(err[nz] / np.abs(label[nz])), rel=1e-12)
    assert seg.mape_labelled == int(nz.sum()) == label.size - 11
    assert seg.accuracy is None and seg.calibration is None and seg.top1_rate is None
    assert _numeric(seg.label).mean == pytest.approx(label.mean())  # the target's distribution


def test_class_predictions_make_a_classifier_without_regression_figures() -> None:
    builder = ProfileBuilder("m", "1")
    for pred, label in [(1, 1), (0, 0), (1, 0), (0, 0)]:  # 0/1 classes, no scores
        builder.add({}, prediction=pred, label=label)
    profile = builder.build("t")
    seg = profile.segments[ALL]
    assert profile.task == "classification"
    assert seg.accuracy == 0.75
    assert seg.mae is None and seg.rmse is None and seg.mape is None
    assert isinstance(seg.prediction, CategoricalReference)


def test_the_task_option_overrides_the_decision() -> None:
    builder = ProfileBuilder("m", "1", task="classification")
    for pred, label in [(3, 3), (2, 1), (5, 5)]:  # counts a regression model would predict
        builder.add({}, prediction=pred, label=label)
    seg = builder.build("t").segments[ALL]
    assert seg.task == "classification" and seg.accuracy == pytest.approx(2 / 3)
    builder = ProfileBuilder("m", "1", task="regression")
    for pred, label in [(1, 1), (0, 1), (1, 0), (0, 0)]:
        builder.add({}, prediction=pred, label=label)
    seg = builder.build("t").segments[ALL]
    assert seg.task == "regression" and seg.mae == 0.5 and seg.accuracy is None


def test_a_task_that_does_not_fit_the_outputs_fails_saying_which() -> None:
    builder = ProfileBuilder("m", "1", task="regression")
    builder.add({}, prediction="yes", label="no")
    with pytest.raises(BaselineError, match="--task regression, but the predictions are categ"):
        builder.build("t")
    builder = ProfileBuilder("m", "1", task="classification")
    builder.add({}, prediction=0.37, label=1.0)
    with pytest.raises(BaselineError, match="--task classification, but the predictions are"):
        builder.build("t")


def test_a_profile_stored_before_the_task_loads_with_its_task_inferred() -> None:
    pred, label = _regression_rows(50)
    builder = ProfileBuilder("m", "1")
    builder.add_columns({}, prediction=pred, label=label)
    profile = builder.build("t")
    old_segments = {
        k: msgspec.structs.replace(
            s, task=None, rmse=None, mape=None, mape_labelled=None, losses=None
        )
        for k, s in profile.segments.items()
    }
    old = msgspec.structs.replace(profile, segments=old_segments)
    again = ReferenceProfile.from_bytes(old.to_bytes())
    assert again.segments[ALL].task is None and again.task == "regression"
    # a reference stored before keeps its fingerprint: it hashes the bytes of then
    seg = again.segments[ALL]
    legacy = {f: getattr(seg, f) for f in seg.__struct_fields__[:-7]}
    assert seg.fingerprint_bytes() == msgspec.msgpack.encode(legacy)
    assert profile.segments[ALL].fingerprint_bytes() != seg.fingerprint_bytes()


def test_baseline_build_says_the_task_and_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ref.csv"
    pred, label = _regression_rows(60)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "prediction", "label"])
        w.writerows(zip(pred * 2, pred, label, strict=True))
    profile = profile_from_file(path, "m", "1")
    text = describe(profile)
    assert "task: regression" in text and "rmse" in text
    code = cli.main(
        ["baseline", "build", "--model", "m", "--version", "1", "--from-file", str(path),
         "--task", "classification"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--task classification, but the predictions are numbers" in err
