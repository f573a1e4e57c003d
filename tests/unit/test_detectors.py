"""Detectors: one battery run against every type, checkpoint continuation, pinned detections.

The pinned indices and counts below were computed once with river 0.26.1 and are regression
pins (River style): a change means the detector's behaviour changed, so look before re-pinning.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np
import pytest

from streamproc.errors import StateEncodingError
from streamproc.judge.detectors import (
    MAGIC,
    ADWINDetector,
    DDMDetector,
    Detector,
    PageHinkleyDetector,
    detector_from_bytes,
)
from streamproc.judge.detectors.adwin import _ADWINParams, _decode_adwin_rust, _encode_adwin_rust


def _shift_stream() -> list[float]:
    """N(0,1) for 3000 values, N(1,1) for 3000, N(-1,1) for 3000; seeded."""
    rng = np.random.default_rng(42)
    parts = [rng.normal(0.0, 1.0, 3000), rng.normal(1.0, 1.0, 3000), rng.normal(-1.0, 1.0, 3000)]
    return np.concatenate(parts).tolist()


def _error_stream() -> list[float]:
    """0/1 errors: rate 0.1 for 3000 predictions, then 0.3 for 3000; seeded."""
    rng = np.random.default_rng(43)
    return np.concatenate([rng.random(3000) < 0.1, rng.random(3000) < 0.3]).astype(float).tolist()


@dataclass(frozen=True)
class Case:
    make: Callable[[], ADWINDetector | PageHinkleyDetector | DDMDetector]
    stream: Callable[[], list[float]]


CASES = {
    "adwin": Case(ADWINDetector, _shift_stream),
    "adwin_clock1": Case(lambda: ADWINDetector(delta=0.01, clock=1), _shift_stream),
    "page_hinkley": Case(PageHinkleyDetector, _shift_stream),
    "page_hinkley_up": Case(lambda: PageHinkleyDetector(mode="up", threshold=20.0), _shift_stream),
    "ddm": Case(DDMDetector, _error_stream),
    "adwin_on_errors": Case(ADWINDetector, _error_stream),
}


def _detections(det: Detector, values: list[float]) -> list[int]:
    found = []
    for i, x in enumerate(values):
        det.update(x)
        if det.drift_detected:
            found.append(i)
    return found


def _trace(det: Detector, values: list[float]) -> list[tuple]:
    """Everything observable after each update."""
    out = []
    for x in values:
        det.update(x)
        out.append(
            (
                det.drift_detected,
                getattr(det, "warning_detected", None),
                det.estimation,
                det.n_detections,
            )
        )
    return out


# -- the battery --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_detector_satisfies_the_protocol(name: str) -> None:
    det = CASES[name].make()
    assert isinstance(det, Detector)
    assert det.update(0.0) is None  # type: ignore[func-returns-value]
    with pytest.raises(AttributeError):
        det.drift_detected = True  # type: ignore[misc]


@pytest.mark.parametrize("name", CASES)
def test_drift_flag_holds_for_one_update_and_detections_are_counted(name: str) -> None:
    case = CASES[name]
    det = case.make()
    values = case.stream()
    flags = []
    for x in values:
        det.update(x)
        flags.append(det.drift_detected)
    assert any(flags), "the stream has a change; the detector must see it"
    assert not any(a and b for a, b in itertools.pairwise(flags))
    assert det.n_detections == sum(flags)


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_restored_into_a_fresh_detector_continues_identically(name: str) -> None:
    case = CASES[name]
    values = case.stream()
    first = _detections(case.make(), values)[0]
    # include the update that detected (flag set at checkpoint) and the one after (reset)
    for cut in (0, 1, 31, 32, 700, first, first + 1, first + 2, len(values) - 500):
        original = case.make()
        for x in values[:cut]:
            original.update(x)
        blob = original.to_bytes()
        restored = detector_from_bytes(blob)
        assert type(restored) is type(original)
        assert restored.to_bytes() == blob
        assert restored.drift_detected == original.drift_detected
        tail = values[cut : cut + 2500]
        assert _trace(restored, tail) == _trace(original, tail), cut
        assert restored.to_bytes() == original.to_bytes()


@pytest.mark.parametrize("name", CASES)
def test_hyperparameters_survive_the_checkpoint_as_public_attributes(name: str) -> None:
    det = CASES[name].make()
    restored = detector_from_bytes(det.to_bytes())
    public = {k: v for k, v in vars(det).items() if not k.startswith("_")}
    assert public
    assert {k: v for k, v in vars(restored).items() if not k.startswith("_")} == public
    assert repr(restored) == repr(det)


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_is_magic_then_msgpack_naming_the_kind(name: str) -> None:
    det = CASES[name].make()
    blob = det.to_bytes()
    assert blob[:4] == MAGIC
    body = msgspec.msgpack.decode(blob[4:])
    assert body["kind"] == type(det).KIND
    assert set(body["params"]) == {k for k in vars(det) if not k.startswith("_")}


@pytest.mark.parametrize("name", CASES)
def test_restoring_as_another_kind_or_version_raises(name: str) -> None:
    det = CASES[name].make()
    blob = det.to_bytes()
    for cls in (ADWINDetector, PageHinkleyDetector, DDMDetector):
        if cls is type(det):
            assert type(cls.from_bytes(blob)) is cls
        else:
            with pytest.raises(StateEncodingError, match="kind"):
                cls.from_bytes(blob)
    with pytest.raises(StateEncodingError, match="version 9"):
        detector_from_bytes(b"SPD9" + blob[4:])
    with pytest.raises(StateEncodingError, match="expected magic"):
        detector_from_bytes(b"SPN1" + blob[4:])
    with pytest.raises(StateEncodingError, match="corrupt"):
        detector_from_bytes(blob[:-2])


@pytest.mark.parametrize("name", CASES)
def test_restore_never_unpickles(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    det = case.make()
    for x in case.stream()[:1000]:
        det.update(x)
    blob = det.to_bytes()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    assert detector_from_bytes(blob).to_bytes() == blob


def test_unknown_kind_is_refused() -> None:
    body = msgspec.msgpack.encode({"kind": "kswin", "params": {}})
    with pytest.raises(StateEncodingError, match="corrupt"):
        detector_from_bytes(MAGIC + body)


# River keeps state in private attributes; if a release adds one, the checkpoint misses it.
RIVER_ATTRIBUTES = {
    ADWINDetector: {"delta", "clock", "max_buckets", "min_window_length", "grace_period"}
    | {"_drift_detected", "_helper"},
    PageHinkleyDetector: {"min_instances", "delta", "threshold", "alpha", "mode"}
    | {"_drift_detected", "_x_mean", "_sum_increase", "_sum_decrease"}
    | {"_min_increase", "_max_decrease", "_test_drift"},  # _test_drift: derived from mode
    DDMDetector: {"warm_start", "warning_threshold", "drift_threshold"}
    | {"_drift_detected", "_warning_detected", "_p", "_p_min", "_s_min", "_ps_min"},
}


@pytest.mark.parametrize("cls", RIVER_ATTRIBUTES, ids=lambda c: c.__name__)
def test_checkpoint_covers_every_attribute_of_the_river_detector(cls: type) -> None:
    river_det = cls()._river
    assert set(vars(river_det)) == RIVER_ATTRIBUTES[cls]
    for mean in ("_x_mean", "_p"):
        if hasattr(river_det, mean):
            assert set(vars(getattr(river_det, mean))) == {"n", "_mean"}


# -- ADWIN's Rust state -------------------------------------------------------------------------


def test_adwin_rust_state_layout_round_trips_bit_exactly() -> None:
    det = ADWINDetector(max_buckets=3, clock=4)
    params = det._params()
    values = _shift_stream()
    for i, x in enumerate(values):
        det.update(x)
        if i % 257 == 0 or det.drift_detected:
            raw = det._river._helper.__getstate__()
            window = _decode_adwin_rust(raw, params)
            assert _encode_adwin_rust(window, params) == raw
            assert window.width == det.width
            assert window.total == pytest.approx(det.estimation * det.width)
    assert det.n_detections > 0


def test_adwin_state_with_other_hyperparameters_is_refused() -> None:
    det = ADWINDetector()
    raw = det._river._helper.__getstate__()
    with pytest.raises(StateEncodingError, match="layout"):
        _decode_adwin_rust(raw, _ADWINParams(0.002, 32, 5, 5, 11))
    with pytest.raises(StateEncodingError, match="layout"):
        _decode_adwin_rust(raw + b"\x00", det._params())
    with pytest.raises(StateEncodingError, match="layout"):
        _decode_adwin_rust(raw[:-1], det._params())


def test_inconsistent_adwin_checkpoint_is_refused_before_reaching_rust() -> None:
    det = ADWINDetector()
    for x in _shift_stream()[:100]:
        det.update(x)
    body = msgspec.msgpack.decode(det.to_bytes()[4:])
    body["window"]["buckets"][0][2] = body["window"]["buckets"][0][2][:-1]  # one total short
    with pytest.raises(StateEncodingError, match="bucket row"):
        detector_from_bytes(MAGIC + msgspec.msgpack.encode(body))
    body["window"]["buckets"] = []
    with pytest.raises(StateEncodingError, match="no bucket row"):
        detector_from_bytes(MAGIC + msgspec.msgpack.encode(body))


def test_adwin_detection_count_survives_river_resetting_its_own() -> None:
    det = ADWINDetector()
    _detections(det, _shift_stream())
    assert det.n_detections == 2
    assert det._river.n_detections <= 1  # River's helper restarts after each detection


# -- regression pins ----------------------------------------------------------------------------


def test_adwin_detects_the_known_changes_at_pinned_indices() -> None:
    assert _detections(ADWINDetector(), _shift_stream()) == [3039, 6015]


def test_page_hinkley_detects_the_known_changes_at_pinned_indices() -> None:
    # threshold=50 with alpha=0.9999 also fires inside the stationary segments (see below)
    assert _detections(PageHinkleyDetector(), _shift_stream()) == [
        1913,
        2318,
        3029,
        4836,
        5827,
        6009,
        7506,
        8496,
    ]


def test_ddm_detects_the_error_rate_rise_at_pinned_index() -> None:
    assert _detections(DDMDetector(), _error_stream()) == [3665]


def test_adwin_on_the_error_stream_detects_at_pinned_index() -> None:
    assert _detections(ADWINDetector(), _error_stream()) == [3103]


def _stationary() -> list[float]:
    return np.random.default_rng(2024).normal(0.0, 1.0, 100_000).tolist()


def test_adwin_false_alarms_on_100k_stationary_values() -> None:
    assert _detections(ADWINDetector(), _stationary()) == []


def test_page_hinkley_false_alarms_on_100k_stationary_values() -> None:
    found = _detections(PageHinkleyDetector(), _stationary())
    assert len(found) == 63
    assert found[:3] == [2011, 3474, 5208]


def test_ddm_false_alarms_on_100k_stationary_errors() -> None:
    errors = (np.random.default_rng(2025).random(100_000) < 0.2).astype(float).tolist()
    assert _detections(DDMDetector(), errors) == [203, 15505, 15574, 15640]
