"""Grouped numeric updates equal one ``update_many`` per group, bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.aggregate.scores import ScorePairs
from streamproc.sketch import NumericSketch

EDGES = [np.array([0.0]), np.array([-1.0, 0.25, 2.0]), np.linspace(-3.0, 3.0, 9)]
values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 0.25, 2.0]),
)
group = st.tuples(
    st.integers(0, 2),  # which sketch
    st.lists(values, max_size=300),
    st.integers(0, 3),  # extra nulls
)


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(group, max_size=12),
    edges=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    prefill=st.lists(values, max_size=40),
)
def test_update_groups_equals_update_many_per_group_in_order(
    groups: list[tuple[int, list[float], int]], edges: list[int], prefill: list[float]
) -> None:
    base = [NumericSketch(EDGES[e], ref_min=-1.5, ref_max=1.5) for e in edges]
    base[0].update_many(np.array(prefill, dtype=float))
    one_by_one = [b.copy() for b in base]
    grouped = [b.copy() for b in base]
    for which, vals, nulls in groups:
        one_by_one[which].update_many(np.array(vals, dtype=float), nulls)
    NumericSketch.update_groups(
        [grouped[which] for which, _, _ in groups],
        np.array([v for _, vals, _ in groups for v in vals], dtype=float),
        [len(vals) for _, vals, _ in groups],
        [nulls for _, _, nulls in groups],
    )
    assert [s.to_bytes() for s in grouped] == [s.to_bytes() for s in one_by_one]


score_row = st.tuples(
    st.sampled_from(["yes", "no", "maybe", None]),
    st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["yes", "no", "maybe"]),
            st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, np.nan])),
            max_size=3,
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(score_row, max_size=40),
    picks=st.lists(st.lists(st.integers(0, 39), max_size=40), max_size=8),
)
def test_score_pairs_fold_groups_equals_fold_per_group_in_key_order(
    rows: list[tuple[str | None, dict[str, float] | None]], picks: list[list[int]]
) -> None:
    """Each group's histograms, keys in the same order, as one ``fold`` per group gives."""
    pairs = ScorePairs(rows)
    groups = [np.unique([i for i in pick if i < len(rows)]).astype(np.int64) for pick in picks]
    one_by_one: list[dict[str, dict[int, int]]] = [{} for _ in groups]
    grouped: list[dict[str, dict[int, int]]] = [{} for _ in groups]
    for into, idx in zip(one_by_one, groups, strict=True):
        if idx.size:
            pairs.fold(into, idx)
    pairs.fold_groups(grouped, groups)
    assert [list(g.items()) for g in grouped] == [list(g.items()) for g in one_by_one]
