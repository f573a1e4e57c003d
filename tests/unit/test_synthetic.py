"""The synthetic workload: valid contracts, determinism, and changes that do what they claim."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pytest

from streamproc.contracts import Label, Prediction, decode_message
from streamproc.dev.synthetic import (
    AccuracyDrop,
    Change,
    MeanShift,
    NewCategory,
    NullBurst,
    PriorShift,
    SegmentSilence,
    VarianceScale,
    Workload,
    WorkloadSpec,
    generate,
    main,
    write_reference,
)

SPEC = WorkloadSpec()
N = 120_000  # columnar tests: ~0.1 s per workload
START, END = 40_000, 100_000


def columns(workload: Workload) -> dict[str, np.ndarray]:
    """All chunks of a workload, concatenated column by column."""
    chunks = list(workload.chunks())
    out = {
        name: np.concatenate([getattr(c, name) for c in chunks])
        for name in (
            "index",
            "time",
            "numeric",
            "categorical",
            "score",
            "prediction",
            "label",
            "labelled",
            "label_time",
            "latency_ms",
        )
    }
    for dim in workload.spec.segment_dims:
        codes = np.concatenate([c.segments[dim.name] for c in chunks])
        out[dim.name] = np.asarray(dim.values)[codes]
    return out


def in_segment(cols: dict[str, np.ndarray], segment: dict[str, str] | None) -> np.ndarray:
    mask = np.ones(len(cols["index"]), dtype=bool)
    for dim, value in (segment or {}).items():
        mask &= cols[dim] == value
    return mask


def run_with(change: Change, seed: int = 5) -> tuple[Workload, dict, dict, np.ndarray]:
    """The changed and the stationary workload with the same seed, and the changed rows."""
    changed = Workload(WorkloadSpec(changes=[change]), N, seed)
    after, before = columns(changed), columns(Workload(SPEC, N, seed))
    window = (after["index"] >= START) & (after["index"] < END)
    return changed, after, before, window & in_segment(after, change.segment)


def assert_identical_outside(after: dict, before: dict, scope: np.ndarray) -> None:
    """Every column of every event outside ``scope`` equals the stationary stream's."""
    for name, values in after.items():
        np.testing.assert_array_equal(values[~scope], before[name][~scope], err_msg=name)


def encoded_stream(spec: WorkloadSpec, n: int, seed: int) -> bytes:
    return b"\n".join(
        e.kind.encode() + b" " + orjson.dumps(e.value) for e in generate(spec, n, seed)
    )


# -- contracts -------------------------------------------------------------------------------


def test_every_prediction_and_label_passes_the_contract_decoder_one_by_one_and_batched() -> None:
    spec = WorkloadSpec(
        changes=[
            NullBurst("f01", 0.5, start=100, segment={"device": "web"}),
            NullBurst("c2", 0.5, start=100),
            NewCategory("c0", "brand-new", 0.5, start=200),
        ]
    )
    events = list(generate(spec, 3_000, seed=11))
    predictions = [e.value for e in events if e.kind == "prediction"]
    labels = [e.value for e in events if e.kind == "label"]
    assert len(predictions) == len(labels) == 3_000
    assert any(v is None for p in predictions for v in p["features"].values())
    assert any(p["features"]["c0"] == "brand-new" for p in predictions)
    for kind, values in ((Prediction, predictions), (Label, labels)):
        for value in values:
            decoded = decode_message(orjson.dumps(value), kind)
            assert decoded.rejections == []
            fields = msgspec.structs.asdict(decoded.events[0])
            assert {name: fields[name] for name in value} == value
        batched = decode_message(orjson.dumps(values[:500]), kind)
        assert batched.rejections == [] and len(batched.events) == 500


def test_prediction_carries_scores_that_sum_to_one_and_agree_with_the_prediction() -> None:
    for p in Workload(SPEC, 2_000, seed=4).predictions():
        yes, no = p["scores"]["yes"], p["scores"]["no"]
        assert yes + no == pytest.approx(1.0, abs=2e-6)
        assert p["prediction"] == ("yes" if yes >= 0.5 else "no")
        assert set(p["features"]) == {*SPEC.numeric_features, *SPEC.categorical_features}
        assert p["model_id"] == "demo-churn" and p["model_version"] == "1"
        assert p["latency_ms"] > 0


# -- determinism and identity ----------------------------------------------------------------


def test_same_spec_and_seed_give_byte_identical_output() -> None:
    spec = WorkloadSpec(changes=[MeanShift("f03", 1.0, start=500), NullBurst("f04", 0.2)])
    first = hashlib.sha256(encoded_stream(spec, 5_000, seed=42)).hexdigest()
    second = hashlib.sha256(encoded_stream(spec, 5_000, seed=42)).hexdigest()
    assert first == second


def test_different_seeds_give_different_output_from_the_same_world() -> None:
    one, two = Workload(SPEC, 2_000, seed=1), Workload(SPEC, 2_000, seed=2)
    assert encoded_stream(SPEC, 2_000, 1) != encoded_stream(SPEC, 2_000, 2)
    assert one.world == two.world  # the distributions come from spec.world_seed only
    assert Workload(WorkloadSpec(world_seed=1), 10, seed=1).world.mean != one.world.mean


def test_first_events_do_not_depend_on_how_many_are_generated() -> None:
    short = list(Workload(SPEC, 12_345, seed=9).predictions())
    long = list(Workload(SPEC, 25_000, seed=9).predictions())
    assert long[: len(short)] == short


def test_prediction_ids_are_unique_seed_prefixed_and_zero_padded() -> None:
    ids = [p["prediction_id"] for p in Workload(SPEC, 20_000, seed=255).predictions()]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "ff-000000000" and ids[-1] == "ff-000019999"


# -- time, labels, traffic -------------------------------------------------------------------


def test_event_time_is_the_epoch_plus_index_over_the_rate() -> None:
    spec = WorkloadSpec(rate=8.0, start_time="2024-03-01T12:00:00Z")
    cols = columns(Workload(spec, 1_000, seed=0))
    epoch = datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()
    np.testing.assert_allclose(cols["time"], epoch + cols["index"] / 8.0, rtol=0, atol=1e-6)
    assert spec.index_at("2024-03-01T12:00:01.01Z") == 9  # first event at or after


def test_merged_stream_is_in_event_time_order_and_each_label_follows_its_prediction() -> None:
    events = list(generate(SPEC, 20_000, seed=3))
    times = [e.time for e in events]
    assert times == sorted(times)
    assert all(e.time == e.value["timestamp"] for e in events)
    predicted_at = {}
    for e in events:
        if e.kind == "prediction":
            predicted_at[e.value["prediction_id"]] = e.time
        else:
            assert e.time > predicted_at.pop(e.value["prediction_id"])
    assert predicted_at == {}  # label_fraction 1: every prediction got its label


def test_label_fraction_labels_that_share_of_predictions() -> None:
    workload = Workload(WorkloadSpec(label_fraction=0.25), 40_000, seed=8)
    labels = list(workload.labels())
    assert len(labels) / 40_000 == pytest.approx(0.25, abs=0.01)
    assert [e.value for e in workload.events() if e.kind == "label"] == labels


def test_label_delay_is_lognormal_with_the_configured_median_and_spread() -> None:
    spec = WorkloadSpec(label_delay_median_s=30.0, label_delay_sigma=0.8)
    cols = columns(Workload(spec, 50_000, seed=2))
    log_delay = np.log(cols["label_time"] - cols["time"])
    assert np.exp(np.median(log_delay)) == pytest.approx(30.0, rel=0.03)
    assert log_delay.std() == pytest.approx(0.8, rel=0.03)
    fixed = columns(Workload(WorkloadSpec(label_delay_sigma=0.0), 1_000, seed=2))
    np.testing.assert_allclose(fixed["label_time"] - fixed["time"], 60.0, atol=1e-5)


def test_segments_get_their_configured_traffic_shares() -> None:
    cols = columns(Workload(SPEC, N, seed=6))
    for dim in SPEC.segment_dims:
        for value, share in zip(dim.values, dim.shares, strict=True):
            assert np.mean(cols[dim.name] == value) == pytest.approx(share, abs=0.006)


def test_stationary_model_has_the_target_accuracy_positive_rate_and_calibration() -> None:
    cols = columns(Workload(SPEC, N, seed=7))
    assert np.mean(cols["prediction"] == cols["label"]) == pytest.approx(0.9, abs=0.005)
    assert np.mean(cols["label"]) == pytest.approx(0.3, abs=0.005)
    for lo in np.arange(0.0, 1.0, 0.2):
        band = (cols["score"] >= lo) & (cols["score"] < lo + 0.2)
        assert np.mean(cols["label"][band]) == pytest.approx(cols["score"][band].mean(), abs=0.02)


def test_stationary_per_segment_feature_means_are_stable_across_halves() -> None:
    cols = columns(Workload(SPEC, 200_000, seed=12))
    first_half = cols["index"] < 100_000
    for country in SPEC.segment_dims[0].values:
        for device in SPEC.segment_dims[1].values:
            segment = in_segment(cols, {"country": country, "device": device})
            a, b = cols["numeric"][segment & first_half], cols["numeric"][segment & ~first_half]
            stderr = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))
            assert np.all(np.abs(a.mean(axis=0) - b.mean(axis=0)) < 5 * stderr), (country, device)


# -- injected changes ------------------------------------------------------------------------


def test_mean_shift_moves_the_feature_by_its_sigmas_in_scope_and_nothing_else() -> None:
    change = MeanShift("f03", 1.0, start=START, end=END, segment={"country": "DE"})
    workload, after, before, scope = run_with(change)
    j, sigma = 3, workload.world.std["f03"]
    shift = after["numeric"][scope, j] - before["numeric"][scope, j]
    np.testing.assert_allclose(shift, sigma, atol=1e-4)  # rounding to 4 decimals
    observed = after["numeric"][scope, j].mean() - workload.world.mean["f03"]
    assert observed == pytest.approx(sigma, abs=0.05 * sigma)
    others = np.delete(np.arange(SPEC.n_numeric), j)
    np.testing.assert_array_equal(after["numeric"][:, others], before["numeric"][:, others])
    before_scope = in_segment(after, change.segment) & ~scope
    np.testing.assert_array_equal(after["numeric"][before_scope], before["numeric"][before_scope])
    # f03 feeds the model: its scores move with it (covariate shift), outside they do not.
    assert not np.array_equal(after["score"][scope], before["score"][scope])
    assert_identical_outside(after, before, scope)


def test_variance_scale_widens_the_feature_around_its_mean_in_scope_only() -> None:
    change = VarianceScale("f11", 2.0, start=START, end=END, segment={"device": "android"})
    workload, after, before, scope = run_with(change)
    values = after["numeric"][scope, 11]
    assert values.std() == pytest.approx(2.0 * workload.world.std["f11"], rel=0.03)
    assert values.mean() == pytest.approx(workload.world.mean["f11"], abs=0.05)
    assert_identical_outside(after, before, scope)


def test_new_category_takes_its_share_of_the_feature_in_scope_only() -> None:
    change = NewCategory("c1", "z", 0.2, start=START, end=END, segment={"device": "web"})
    workload, after, before, scope = run_with(change)
    code = workload.vocabulary["c1"].index("z")
    assert code == len(workload.world.categories["c1"])
    assert np.mean(after["categorical"][scope, 1] == code) == pytest.approx(0.2, abs=0.02)
    assert not np.any(after["categorical"][~scope, 1] == code)
    assert_identical_outside(after, before, scope)


def test_null_burst_nulls_its_rate_during_the_burst_and_reverts_after() -> None:
    change = NullBurst("f05", 0.1, start=START, end=END)
    _, after, before, scope = run_with(change)
    nulls = np.isnan(after["numeric"][:, 5])
    assert nulls[scope].mean() == pytest.approx(0.1, abs=0.006)
    assert not nulls[~scope].any()
    assert not np.isnan(np.delete(after["numeric"], 5, axis=1)).any()
    assert_identical_outside(after, before, scope)


def test_null_category_is_sent_as_null() -> None:
    spec = WorkloadSpec(changes=[NullBurst("c0", 1.0, start=10, end=20)])
    features = [p["features"]["c0"] for p in Workload(spec, 30, seed=1).predictions()]
    assert features[10:20] == [None] * 10
    assert None not in features[:10] + features[20:]


@pytest.mark.parametrize("target", [0.7, 0.97])
def test_accuracy_change_moves_label_accuracy_to_target_with_scores_untouched(
    target: float,
) -> None:
    change = AccuracyDrop(target, start=START, end=END, segment={"country": "US"})
    _, after, before, scope = run_with(change)
    accuracy = np.mean(after["prediction"][scope] == after["label"][scope])
    assert accuracy == pytest.approx(target, abs=0.01)
    outside = np.mean(after["prediction"][~scope] == after["label"][~scope])
    assert outside == pytest.approx(0.9, abs=0.01)
    for name in after:  # concept drift: only the labels move
        if name != "label":
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert_identical_outside(after, before, scope)


def test_prior_shift_moves_the_positive_label_rate_with_scores_untouched() -> None:
    change = PriorShift(0.5, start=START, end=END, segment={"country": "FR"})
    _, after, before, scope = run_with(change)
    assert after["label"][scope].mean() == pytest.approx(0.5, abs=0.015)
    np.testing.assert_array_equal(after["score"], before["score"])
    assert_identical_outside(after, before, scope)


def test_silenced_segment_sends_nothing_between_start_and_end() -> None:
    segment = {"country": "FR", "device": "ios"}
    start, end = "2024-01-01T00:10:00Z", "2024-01-01T00:20:00Z"  # indexes 30_000, 60_000
    spec = WorkloadSpec(changes=[SegmentSilence(start=start, end=end, segment=segment)])
    after, before = columns(Workload(spec, 80_000, 5)), columns(Workload(SPEC, 80_000, 5))
    silenced = (
        in_segment(before, segment) & (before["index"] >= 30_000) & (before["index"] < 60_000)
    )
    assert silenced.sum() > 1_000
    for name in after:
        np.testing.assert_array_equal(after[name], before[name][~silenced], err_msg=name)
    sent_ids = set()
    for event in generate(spec, 80_000, seed=5):
        if event.kind == "prediction":
            sent_ids.add(event.value["prediction_id"])
        else:
            assert event.value["prediction_id"] in sent_ids  # no label without its prediction
    silent = {f"5-{i:09d}" for i in before["index"][silenced]}
    assert not silent & sent_ids
    assert len(sent_ids) == 80_000 - len(silent)


def test_changes_validate_features_segments_and_windows() -> None:
    with pytest.raises(ValueError, match="not a numeric feature"):
        WorkloadSpec(changes=[MeanShift("c0", 1.0)])
    with pytest.raises(ValueError, match="not a categorical feature"):
        WorkloadSpec(changes=[NewCategory("f00", "x", 0.1)])
    with pytest.raises(ValueError, match="unknown segment"):
        WorkloadSpec(changes=[NullBurst("f00", 0.1, segment={"country": "JP"})])
    with pytest.raises(ValueError, match="start < end"):
        WorkloadSpec(changes=[NullBurst("f00", 0.1, start=10, end=10)])
    with pytest.raises(ValueError, match="already a c0 category"):
        Workload(WorkloadSpec(changes=[NewCategory("c0", "a", 0.1)]), 10, 0)
    with pytest.raises(ValueError, match="rate"):
        NullBurst("f00", 1.5)
    with pytest.raises(TypeError, match="int index"):
        WorkloadSpec(changes=[NullBurst("f00", 0.1, start=1.5)])  # type: ignore[arg-type]


def test_change_start_accepts_an_index_numpy_integer_text_or_datetime_alike() -> None:
    at_one_minute = [
        3_000,
        np.int64(3_000),
        "2024-01-01T00:01:00Z",
        "2024-01-01T00:00:59.99Z",
        datetime(2024, 1, 1, 0, 1, tzinfo=UTC),
    ]
    for start in at_one_minute:
        spec = WorkloadSpec(changes=[NullBurst("f00", 0.1, start=start)])
        assert Workload(spec, 10, 0).ground_truth()[0].start_index == 3_000


# -- ground truth ----------------------------------------------------------------------------


def test_ground_truth_names_the_first_affected_event_of_the_segment_and_its_ordinal() -> None:
    spec = WorkloadSpec(
        changes=[
            SegmentSilence(start=1_000, end=2_000, segment={"country": "DE"}),
            MeanShift("f03", 1.0, start="2024-01-01T00:01:00Z", segment={"country": "DE"}),
            AccuracyDrop(0.7, start=5_000, segment={"country": "BR", "device": "web"}),
            NullBurst("f00", 0.1, start=9_999_999),
        ]
    )
    workload = Workload(spec, 20_000, seed=3)
    silence, shift, drop, never = workload.ground_truth()
    cols = columns(workload)  # sent events only
    stationary = columns(Workload(SPEC, 20_000, seed=3))

    assert (shift.kind, shift.feature, shift.segment) == ("MeanShift", "f03", {"country": "DE"})
    assert shift.start_index == 3_000 and shift.end_index is None and shift.end_time is None
    assert shift.start_time == spec.time_of(3_000)
    for truth in (shift, drop):
        scope = in_segment(cols, truth.segment)
        first = int(np.flatnonzero(scope & (cols["index"] >= truth.start_index))[0])
        assert truth.first_affected_index == cols["index"][first]
        assert truth.first_affected_time == cols["time"][first]
        assert truth.first_affected_ordinal == np.count_nonzero(scope[:first])
        # count_sent turns a detection point into a delay in the segment's own events
        assert workload.count_sent(truth.segment, truth.first_affected_index) == (
            truth.first_affected_ordinal
        )
        detected_at = int(cols["index"][first]) + 2_000
        detected_time = datetime.fromtimestamp(spec.time_of(detected_at), UTC)
        delay = workload.count_sent(truth.segment, detected_time)
        assert delay - truth.first_affected_ordinal == np.count_nonzero(
            scope & (cols["index"] >= truth.first_affected_index) & (cols["index"] < detected_at)
        )
    # DE events silenced before the shift are not counted in its ordinal.
    de = in_segment(stationary, {"country": "DE"})
    assert shift.first_affected_ordinal < np.count_nonzero(de & (stationary["index"] < 3_000))
    # The silence's first affected event is the first DE event it kept from being sent.
    first_silenced = stationary["index"][de & (stationary["index"] >= 1_000)][0]
    assert silence.first_affected_index == first_silenced
    assert silence.first_affected_ordinal == np.count_nonzero(de & (stationary["index"] < 1_000))
    assert silence.end_index == 2_000
    assert never.first_affected_index is None and never.first_affected_ordinal is None


# -- reference dataset -----------------------------------------------------------------------


def test_reference_csv_and_jsonl_hold_one_row_per_prediction_matching_the_events(
    tmp_path: Path,
) -> None:
    spec = WorkloadSpec(changes=[NullBurst("f02", 0.3)], label_fraction=0.5)
    csv_path, jsonl_path = tmp_path / "ref.csv", tmp_path / "ref.jsonl"
    rows = write_reference(spec, 3_000, 21, csv_path=csv_path, jsonl_path=jsonl_path)
    assert rows == 3_000

    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        csv_rows = list(reader)
    jsonl_rows = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert header == [
        *spec.numeric_features,
        *spec.categorical_features,
        "country",
        "device",
        "prediction",
        "score",
        "label",
    ]
    assert len(csv_rows) == len(jsonl_rows) == rows

    workload = Workload(spec, 3_000, 21)
    labels = {lab["prediction_id"]: lab["label"] for lab in workload.labels()}
    assert 0.45 < len(labels) / rows < 0.55
    for pred, row, cells in zip(workload.predictions(), jsonl_rows, csv_rows, strict=True):
        assert {k: row[k] for k in pred["features"]} == pred["features"]
        assert {k: row[k] for k in pred["segments"]} == pred["segments"]
        assert row["prediction"] == pred["prediction"]
        assert row["score"] == pred["scores"]["yes"]
        assert row["label"] == labels.get(pred["prediction_id"])
        as_text = {k: "" if v is None else str(v) for k, v in row.items()}
        assert cells == as_text  # the CSV says the same, nulls as empty cells
    assert any(row["f02"] is None for row in jsonl_rows)


def test_reference_file_is_byte_identical_across_runs(tmp_path: Path) -> None:
    write_reference(SPEC, 2_000, 1, csv_path=tmp_path / "a.csv")
    write_reference(SPEC, 2_000, 1, csv_path=tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_command_line_writes_the_reference_and_reports_the_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--events", "500", "--seed", "3", "--jsonl", str(tmp_path / "r.jsonl")]) == 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 500
    assert main(["--events", "2000"]) == 0
    out = capsys.readouterr().out
    assert "wrote 500 reference rows" in out and "2000 events in" in out
