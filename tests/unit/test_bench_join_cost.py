"""bench/join_cost.py's passes: the two implementations take turns going first, and each pass
is compared with the other implementation's pass of the same repeat."""

from __future__ import annotations

from tests.unit.bench_scripts import load_bench

join_cost = load_bench("join_cost")


def a_pass(impl: str, cpu_s: float) -> object:
    return join_cost.Pass(impl, 100, 1.0, cpu_s, 0, {}, 0.0, 0.0, 0)


def test_each_implementation_goes_first_in_every_other_repeat() -> None:
    before, after = ("before", None), ("after", None)
    order = [name for name, _ in join_cost.schedule([before, after], 4)]
    assert order == ["before", "after", "after", "before"] * 2


def test_each_after_pass_is_divided_by_the_before_pass_of_its_repeat_whichever_ran_first() -> None:
    passes = [a_pass("before", 2.0), a_pass("after", 1.0), a_pass("after", 3.0)]
    passes.append(a_pass("before", 4.0))
    assert join_cost.paired_ratios(passes, "after", "before") == [0.5, 0.75]


def test_a_repeat_cut_short_by_a_missing_pass_is_not_paired() -> None:
    passes = [a_pass("before", 2.0), a_pass("after", 1.0), a_pass("before", 4.0)]
    assert join_cost.paired_ratios(passes, "after", "before") == [0.5]
