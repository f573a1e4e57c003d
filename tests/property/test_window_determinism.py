"""Window contents depend only on each source's own order, never on how sources interleave."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.windows import WindowClock

times = st.lists(st.floats(min_value=0, max_value=2_000, allow_nan=False), max_size=40)


def _run(order: list[int], sources: list[list[float]]) -> tuple[set, set]:
    clock = WindowClock(size_s=60, lateness_s=30)
    clock.expect(str(s) for s in range(len(sources)))
    cursors = [0] * len(sources)
    admitted, closed_windows = set(), set()
    for s in order:
        t = sources[s][cursors[s]]
        if clock.admit(str(s), t):
            admitted.add((s, cursors[s], clock.window_start(t)))
        cursors[s] += 1
        boundary = clock.close_until()
        closed_windows |= {w for (_, _, w) in admitted if w + 60 <= boundary}
    return admitted, closed_windows


@settings(max_examples=200, deadline=None)
@given(sources=st.lists(times, min_size=1, max_size=4), data=st.data())
def test_any_interleaving_admits_the_same_events_into_the_same_windows(
    sources: list[list[float]], data: st.DataObject
) -> None:
    plan = [s for s, ts in enumerate(sources) for _ in ts]
    shuffled = data.draw(st.permutations(plan))
    in_order, _ = _run(plan, sources)
    interleaved, _ = _run(list(shuffled), sources)
    assert in_order == interleaved
