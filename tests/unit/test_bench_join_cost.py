"""bench/join_cost.py's pass-by-pass ratio: each pass against the baseline run just before it."""

from __future__ import annotations

import pytest

from tests.unit.bench_scripts import load_bench

join_cost = load_bench("join_cost")


def a_pass(impl: str, cpu_s: float) -> object:
    return join_cost.Pass(impl, 100, 1.0, cpu_s, 0, {}, 0.0, 0.0, 0)


def test_each_after_pass_is_divided_by_the_before_pass_just_before_it() -> None:
    passes = [a_pass("before", 2.0), a_pass("after", 1.0), a_pass("before", 4.0)]
    passes.append(a_pass("after", 3.0))
    assert join_cost.paired_ratios(passes, "after", "before") == [0.5, 0.75]


def test_an_after_pass_with_no_before_pass_yet_is_not_paired() -> None:
    passes = [a_pass("after", 1.0), a_pass("before", 2.0), a_pass("after", 1.0)]
    assert join_cost.paired_ratios(passes, "after", "before") == pytest.approx([0.5])
