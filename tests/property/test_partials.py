"""Partials are monoids like the sketches they hold: ``a.merge(b)`` equals one partial fed
both, merging is associative, an empty (prepared) partial is the identity, ``absorb`` is
``merge`` in place, and the stored forms round-trip. The sketches' own laws are
``test_sketch_merge.py``; tolerances are in ``partial_rows.py``.

Samples (partials built before a reference was known) keep the ``k`` rows of smallest hash;
merges are given the same ``k`` the rows were folded with (the stages both use
``monitoring.warmup_sample``).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamproc.aggregate.columns import is_number
from streamproc.aggregate.fold import prepare, tick_zsums
from streamproc.aggregate.partials import (
    SAMPLE_VALUES,
    OutcomePartial,
    OutcomeState,
    PartialState,
    WindowPartial,
    decode_outcome,
    decode_partial,
    encode_outcome,
    encode_partial,
    encode_summary,
    merge_samples,
    sample_prefix,
)
from streamproc.aggregate.wire import (
    PartialsMessage,
    ProgressMessage,
    TickEntry,
    WindowEntry,
    decode_message,
    encode_message,
)
from streamproc.baseline.reference import Reference
from streamproc.errors import StateEncodingError
from tests.property.partial_rows import (
    SAMPLE_K,
    Row,
    assert_same_outcome,
    assert_same_partial,
    fed,
    outcome_lists,
    outcomes,
    reference,
    row_lists,
)

SETTINGS = settings(deadline=None, max_examples=80)
binned = st.booleans()  # True: binned with a reference; False: sampled (no reference yet)


def _ref(with_reference: bool) -> Reference | None:
    return reference() if with_reference else None


def _stored(p: WindowPartial) -> bytes:
    return msgspec.msgpack.encode(encode_partial(p))


# -- WindowPartial ---------------------------------------------------------------------------------


@SETTINGS
@given(binned, row_lists, row_lists)
def test_merge_of_two_window_partials_equals_one_fed_both(
    with_reference: bool, xs: list[Row], ys: list[Row]
) -> None:
    ref = _ref(with_reference)
    merged = fed(xs, ref).merge(fed(ys, ref, first_offset=len(xs)), SAMPLE_K)
    assert_same_partial(merged, fed(xs + ys, ref))


@SETTINGS
@given(binned, row_lists, row_lists, row_lists)
def test_window_partial_merge_is_associative(
    with_reference: bool, xs: list[Row], ys: list[Row], zs: list[Row]
) -> None:
    ref = _ref(with_reference)
    a, b, c = fed(xs, ref), fed(ys, ref, len(xs)), fed(zs, ref, len(xs) + len(ys))
    assert_same_partial(
        a.merge(b, SAMPLE_K).merge(c, SAMPLE_K), a.merge(b.merge(c, SAMPLE_K), SAMPLE_K)
    )
    assert_same_partial(a.merge(b, SAMPLE_K).merge(c, SAMPLE_K), fed(xs + ys + zs, ref))


@SETTINGS
@given(binned, row_lists, row_lists)
def test_absorb_is_merge_in_place_and_leaves_the_other_partial_alone(
    with_reference: bool, xs: list[Row], ys: list[Row]
) -> None:
    ref = _ref(with_reference)
    a, b = fed(xs, ref), fed(ys, ref, len(xs))
    before_a, before_b = _stored(a), _stored(b)
    want = a.merge(b, SAMPLE_K)
    assert (_stored(a), _stored(b)) == (before_a, before_b)  # merge changed neither
    got = a.absorb(b, SAMPLE_K)
    assert got is a
    assert _stored(b) == before_b
    assert_same_partial(a, want)
    a.absorb(fed([], ref), SAMPLE_K)  # absorbing an empty partial changes nothing
    assert_same_partial(a, want)


@SETTINGS
@given(binned, row_lists)
def test_an_empty_prepared_partial_is_the_identity(with_reference: bool, xs: list[Row]) -> None:
    ref = _ref(with_reference)
    a = fed(xs, ref)
    empty = WindowPartial()
    prepare(empty, ref)
    assert _stored(a.merge(empty, SAMPLE_K)) == _stored(a)
    assert _stored(empty.merge(a, SAMPLE_K)) == _stored(a)


@SETTINGS
@given(row_lists, row_lists)
def test_merge_common_adds_only_the_reference_independent_parts(
    xs: list[Row], ys: list[Row]
) -> None:
    a, b = fed(xs, reference()), fed(ys, None, len(xs))
    both = fed(xs + ys, None)
    common = WindowPartial()
    common.merge_common(a)
    common.merge_common(b)
    assert (common.count, common.offsets) == (both.count, both.offsets)
    assert common.present == both.present
    assert common.latency == both.latency or common.latency.count == both.latency.count
    assert common.fp is None and not common.numeric and not common.sample


def test_partials_of_different_references_do_not_merge() -> None:
    with pytest.raises(ValueError, match="references"):
        fed([], reference()).merge(fed([], None))


@SETTINGS
@given(binned, row_lists)
def test_window_partial_round_trips_through_its_stored_form(
    with_reference: bool, xs: list[Row]
) -> None:
    a = fed(xs, _ref(with_reference))
    blob = _stored(a)
    back = decode_partial(msgspec.msgpack.decode(blob, type=PartialState))
    assert_same_partial(back, a)
    assert _stored(back) == blob


@SETTINGS
@given(
    st.lists(st.integers(0, 2**63), unique=True, max_size=12),
    st.lists(st.integers(0, 2**63), unique=True, max_size=12),
    st.integers(1, 10),
)
def test_merged_samples_keep_the_smallest_hashes_of_both(
    xs: list[int], ys: list[int], k: int
) -> None:
    a = [[h, {"f": 0.0}, "yes", None] for h in sorted(xs)]
    b = [[h, {"f": 0.0}, "yes", None] for h in sorted(set(ys) - set(xs))]
    kept, dropped = merge_samples(a, b, k)
    everything = sorted(r[0] for r in a + b)
    assert [r[0] for r in kept] == everything[:k]
    assert dropped == max(len(everything) - k, 0)


_WIDE = {f"x{i}": 0.0 for i in range(SAMPLE_VALUES // 3)}


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, 2**63), st.sampled_from([0, 1, 10, 40, 100]), st.integers(0, 2)),
        unique_by=lambda t: t[0],
        max_size=12,
    ),
    st.integers(1, 10),
)
# Three wide rows overflow; a narrow row after them must not slip in once a part dropped one.
@example(rows=[(0, 100, 1), (1, 100, 1), (2, 100, 1), (3, 0, 0)], k=3)
def test_samples_of_wide_rows_keep_a_value_bounded_prefix_however_merged(
    rows: list[tuple[int, int, int]], k: int
) -> None:
    """Rows of up to a third of ``SAMPLE_VALUES`` values, split three ways: a sample keeps the
    shortest prefix by hash that has ``k`` rows or reaches the value budget, however it was
    merged."""
    wide = list(_WIDE.items())

    def row(h: int, percent: int) -> list[Any]:
        return [h, dict(wide[: len(wide) * percent // 100]), "yes", None]

    full = sorted((row(h, w) for h, w, _ in rows), key=lambda r: r[0])
    parts = [
        [r for r, (_, _, p) in zip(full, sorted(rows), strict=True) if p == n] for n in range(3)
    ]
    left, _ = merge_samples(merge_samples(parts[0], parts[1], k)[0], parts[2], k)
    right, _ = merge_samples(parts[0], merge_samples(parts[1], parts[2], k)[0], k)
    kept = full[: sample_prefix(full, k)]
    assert [r[0] for r in left] == [r[0] for r in right] == [r[0] for r in kept]

    def values(rs: list[list[Any]]) -> int:
        return sum(len(r[1]) + 1 for r in rs)

    assert len(kept) <= k and values(kept[:-1]) < SAMPLE_VALUES
    assert len(kept) == min(len(full), k) or values(kept) >= SAMPLE_VALUES


# -- OutcomePartial ------------------------------------------------------------------------------


@SETTINGS
@given(outcome_lists, outcome_lists)
def test_merge_of_two_outcome_partials_equals_one_fed_both(xs: list, ys: list) -> None:
    assert_same_outcome(outcomes(xs).merge(outcomes(ys)), outcomes(xs + ys))


@SETTINGS
@given(outcome_lists, outcome_lists, outcome_lists)
def test_outcome_partial_merge_is_associative(xs: list, ys: list, zs: list) -> None:
    a, b, c = outcomes(xs), outcomes(ys), outcomes(zs)
    assert_same_outcome(a.merge(b).merge(c), a.merge(b.merge(c)))
    assert_same_outcome(OutcomePartial().merge(a), a)
    assert_same_outcome(a.merge(OutcomePartial()), a)


@SETTINGS
@given(outcome_lists)
def test_outcome_partial_round_trips_and_its_calibration_bins_add_up(xs: list) -> None:
    a = outcomes(xs)
    blob = msgspec.msgpack.encode(encode_outcome(a))
    back = decode_outcome(msgspec.msgpack.decode(blob, type=OutcomeState))
    assert_same_outcome(back, a)
    assert msgspec.msgpack.encode(encode_outcome(back)) == blob
    n, conf, correct = a.calibration([0.1 * i for i in range(1, 10)])
    bins = list(a.cal.values())
    assert [sum(n), sum(conf), sum(correct)] == [sum(b[i] for b in bins) for i in range(3)]
    assert sum(b[0] for b in bins) == sum(1 for _, _, c, _ in xs if c is not None)
    assert sum(a.confusion.values()) == sum(
        1 for p, lab, _, s in xs if p is not None and lab is not None and s and len(s) >= 2
    )
    micro = sum(round(abs(float(p) - float(y)) * 1_000_000) for p, y, _, _ in xs
                if is_number(p) and is_number(y))  # fmt: skip
    tick = [a.labelled, a.correct, micro, a.numeric_pairs]
    assert a.ticks == ({0.0: tick} if xs else {})


# -- the internal topic's messages ---------------------------------------------------------------


@SETTINGS
@given(row_lists, outcome_lists, st.floats(-1e10, 1e10), st.sampled_from(["p0", "l5"]))
def test_messages_of_the_partials_topic_round_trip(
    xs: list[Row], os: list, start: float, source: str
) -> None:
    binned, sampled, o = fed(xs, reference()), fed(xs, None), outcomes(os)
    tick = TickEntry(
        start,
        [
            ("1", "all", encode_summary(binned.ticks[0.0])),
            ("1", "c=x", encode_summary(sampled.ticks[0.0])),
        ],
        [("1", "all", [o.labelled, o.correct])],
    )
    window = WindowEntry(
        start,
        [("1", "all", encode_partial(binned)), ("1", "c=x", encode_partial(sampled))],
        [("1", "all", encode_outcome(o))],
    )
    for m in (
        PartialsMessage(source, "churn", [tick]),
        PartialsMessage(source, "churn", [], [window]),
        PartialsMessage(source, "churn", [tick], [window]),
        ProgressMessage(source, start, start + 5.0, None),
        ProgressMessage(source, start, start + 5.0, 130.0),
    ):
        assert decode_message(encode_message(m)) == m


@pytest.mark.parametrize("blob", [b"", b"SPP0\x90", b"SPP1", b"SPP1\xc1", b"SPP1\x92\x01\x02"])
def test_a_message_of_another_format_or_corrupt_is_refused(blob: bytes) -> None:
    with pytest.raises(StateEncodingError):
        decode_message(blob)


@SETTINGS
@given(row_lists, row_lists)
def test_the_judge_sums_a_sampled_tick_as_the_sources_would_have(
    xs: list[Row], ys: list[Row]
) -> None:
    ref = reference()
    items = []
    for rows in (xs, ys):
        sample = [[i, r.features, r.prediction, r.confidence] for i, r in enumerate(rows)]
        items.append((sample, ref))
    got = tick_zsums(items)
    assert got == [fed(xs, ref).zsum, fed(ys, ref).zsum]


def test_an_outcome_state_sent_before_the_exact_sums_decodes_without_error_figures() -> None:
    old = OutcomeState(labelled=5, correct=3, abs_error=2.5, numeric_pairs=2)  # float sum only
    back = decode_outcome(msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=OutcomeState))
    assert (back.labelled, back.correct, back.numeric_pairs) == (5, 3, 0)
    assert (back.mae, back.rmse, back.mape) == (None, None, None)
    fresh = outcomes([(3.0, 1.0, None, None), (2.0, 2.5, None, None)])
    merged = back.merge(fresh)  # a window of old and new partials: figures from the new ones
    assert merged.numeric_pairs == 2 and merged.mae == 1.25
