"""The partition watch: input waiting at the broker that the consumer does not read."""

from __future__ import annotations

import pytest

from streamproc.worker.partitions import PartitionWatch, Stall


def test_a_partition_is_stalled_only_once_its_input_waited_the_whole_timeout() -> None:
    watch: PartitionWatch[str] = PartitionWatch(timeout_s=10)
    assert watch.observe(0.0, {"l3": (5, 9)}) == []
    assert watch.observe(9.9, {"l3": (5, 9)}) == []
    assert watch.observe(10.0, {"l3": (5, 9)}) == [Stall("l3", 5, 9, 10.0)]
    assert watch.stalled == {"l3"}


def test_a_moving_position_restarts_the_wait_however_far_behind_it_is() -> None:
    watch: PartitionWatch[str] = PartitionWatch(timeout_s=10)
    for t, position in enumerate(range(0, 100, 5)):
        assert watch.observe(float(t * 8), {"p0": (position, 1_000)}) == []
    assert watch.stalled == set()


def test_a_partition_read_to_its_end_is_not_stalled_however_long_nothing_comes() -> None:
    watch: PartitionWatch[str] = PartitionWatch(timeout_s=10)
    for t in range(0, 100, 5):
        assert watch.observe(float(t), {"p0": (42, 42)}) == []


def test_a_stall_is_reported_once_and_again_only_after_the_partition_moved_and_stalled_anew() -> (
    None
):
    watch: PartitionWatch[str] = PartitionWatch(timeout_s=10)
    watch.observe(0.0, {"l3": (0, 4)})
    assert len(watch.observe(10.0, {"l3": (0, 4)})) == 1
    assert watch.observe(20.0, {"l3": (0, 4)}) == []
    assert watch.observe(21.0, {"l3": (2, 6)}) == []  # read some: no longer stalled
    assert watch.stalled == set()
    assert watch.observe(31.0, {"l3": (2, 6)}) == [Stall("l3", 2, 6, 10.0)]


def test_a_revoked_partition_is_forgotten_and_timed_anew_if_it_comes_back() -> None:
    watch: PartitionWatch[str] = PartitionWatch(timeout_s=10)
    watch.observe(0.0, {"l3": (0, 4), "l4": (0, 4)})
    found = watch.observe(10.0, {"l3": (0, 4), "l4": (0, 4)})
    assert sorted(s.partition for s in found) == ["l3", "l4"]
    watch.observe(11.0, {"l4": (0, 4)})  # l3 revoked
    assert watch.stalled == {"l4"}
    assert watch.observe(12.0, {"l3": (0, 4), "l4": (0, 4)}) == []
    assert watch.observe(22.0, {"l3": (0, 4), "l4": (0, 4)}) == [Stall("l3", 0, 4, 10.0)]


def test_forgetting_after_a_rebalance_times_every_partition_anew() -> None:
    watch: PartitionWatch[str] = PartitionWatch(timeout_s=10)
    watch.observe(0.0, {"l3": (0, 4)})
    assert watch.observe(10.0, {"l3": (0, 4)})
    watch.forget()
    assert watch.stalled == set()
    assert watch.observe(11.0, {"l3": (0, 4)}) == []
    assert watch.observe(21.0, {"l3": (0, 4)}) == [Stall("l3", 0, 4, 10.0)]


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_a_timeout_that_is_not_positive_is_refused(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        PartitionWatch(timeout_s=timeout_s)
