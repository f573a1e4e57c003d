"""bench/drift_quality.py at its smoke size: every scenario and method reported, the delay
arithmetic right. No figure is compared with a timing threshold."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from tests.unit.bench_scripts import load_bench

SCENARIOS = (
    "mean +0.25 sd",
    "mean +0.5 sd",
    "mean +1 sd",
    "variance x2",
    "new category 5%",
    "nulls 0 -> 10%",
    "accuracy 90 -> 70%",
)
METHODS = ("streamproc", "river_adwin", "river_ph", "alibi_cvm")


dq = load_bench("drift_quality")


def _explained(cell: Any) -> bool:
    return isinstance(cell, str) and cell.startswith(("not installed: ", "n/a: "))


def _is_delay_summary(cell: Any, runs: int) -> bool:
    if not isinstance(cell, dict) or cell["runs"] != runs or len(cell["delays"]) != runs:
        return False
    found = [d for d in cell["delays"] if d is not None]
    if not all(isinstance(d, int) and d > 0 for d in found):
        return False
    return cell["misses"] == runs - len(found) and (cell["median"] is None) == (not found)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    args = argparse.Namespace(size=4_000, repeats=1, tiny=True, seed=0, quiet=True)
    return dq.run(args)


@pytest.mark.slow
def test_tiny_run_reports_every_scenario_and_method_with_a_delay_or_a_reason(
    result: dict[str, Any],
) -> None:
    assert tuple(result["scenarios"]) == SCENARIOS
    for name, row in result["scenarios"].items():
        for method in METHODS:
            cell = row[method]
            assert _is_delay_summary(cell, 1) or _explained(cell), (name, method, cell)
        assert all(_is_delay_summary(v, 1) for v in row["streamproc_by_detector"].values())
    # the numeric changes are where Alibi's CVM applies: a delay, or why it could not run
    for name in SCENARIOS[:4]:
        cell = result["scenarios"][name]["alibi_cvm"]
        assert not (isinstance(cell, str) and cell.startswith("n/a")), cell
    json.dumps(result)  # the JSON written by main() and compared between runs


@pytest.mark.slow
def test_tiny_run_counts_false_alarms_of_every_method_on_the_stationary_stream(
    result: dict[str, Any],
) -> None:
    fa = result["false_alarms"]
    assert fa["events"] == 4_000
    for method in METHODS:
        cell = fa[method]
        if _explained(cell):
            continue
        if method == "alibi_cvm":  # one stream measured, scaled to the fleet's updates
            assert cell["per_million"] == pytest.approx(
                cell["alarms"] / cell["updates"] * fa["fleet_numeric_updates_per_event"] * 1e6
            )
            continue
        assert cell["per_million"] == pytest.approx(cell["alarms"] / 4_000 * 1e6), cell
    # 8 segments x (20 numeric + 3 categorical + the error stream)
    assert fa["river_adwin"]["streams"] == fa["river_ph"]["streams"] == 8 * 24
    peer = result["evidently"]
    assert _explained(peer) or (peer["us_per_event"] > 0 and peer["ratio"] > 0), peer


@pytest.mark.slow
def test_tiny_run_catches_a_one_sigma_shift_with_streamproc_on_the_right_feature(
    result: dict[str, Any],
) -> None:
    row = result["scenarios"]["mean +1 sd"]
    assert row["streamproc"]["misses"] == 0, row
    assert row["streamproc_by_detector"], row


@pytest.mark.slow
def test_markdown_has_a_row_per_scenario_and_a_column_per_method(result: dict[str, Any]) -> None:
    text = dq.markdown(result)
    for name in SCENARIOS:
        assert f"| {name} |" in text
    for header in ("streamproc", "River ADWIN", "River Page-Hinkley", "Alibi CVMDriftOnline"):
        assert header in text
    for method in METHODS:
        assert f"| {method} |" in text


class _FiresAt:
    """A detector stand-in that fires at the given update positions."""

    def __init__(self, at: set[int]) -> None:
        self.at, self.n, self.drift_detected = at, -1, False

    def update(self, x: float) -> None:
        self.n += 1
        self.drift_detected = self.n in self.at


def test_first_detection_skips_alarms_before_the_change_and_counts_them() -> None:
    values = [0.0] * 10
    assert dq.first_detection(lambda: _FiresAt({1, 3, 6, 8}), values, 5) == (6, 2)
    assert dq.first_detection(lambda: _FiresAt({1}), values, 5) == (None, 1)
    assert dq.first_detection(lambda: _FiresAt({5}), values, 5) == (5, 0)


def test_peer_streams_hold_the_segment_values_in_order_with_their_event_index() -> None:
    spec = dq.WorkloadSpec(changes=(dq.NullBurst("f07", 0.5, start=100, segment=dq.SEGMENT),))
    work = dq.Workload(spec, 400, seed=3)
    cols = dq.Columns.of(work, dq.SEGMENT)
    null = next(s for s in dq.scenarios(100) if s.stream == "null")
    values, known = dq.scenario_stream(null, work, cols)
    assert len(values) == int(cols.in_segment.sum())
    assert all(cols.in_segment[known])
    assert sum(v for v, i in zip(values, known, strict=True) if i < 100) == 0
    assert sum(v for v, i in zip(values, known, strict=True) if i >= 100) > 0
    error = next(s for s in dq.scenarios(100) if s.stream == "error")
    errs, known = dq.scenario_stream(error, work, cols)
    assert len(errs) == int(cols.in_segment.sum())  # every prediction is labelled here
    assert list(known) == sorted(known)  # label order: known no earlier than the one before
