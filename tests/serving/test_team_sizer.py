"""The decode step's team size follows the measured step times, per batch-size group."""

from __future__ import annotations

import time

from microgpt.serving.threads import TeamSizer


def test_both_sizes_are_timed_then_the_faster_one_decodes() -> None:
    sizer = TeamSizer(2, recheck_seconds=60)
    assert sizer.pick(1) == 2  # the full team first
    for seconds in (0.050, 0.020):  # a team's first steps pay its start-up: timed again
        sizer.record(1, 2, seconds)
        assert sizer.pick(1) == 2
    sizer.record(1, 2, 0.010)  # busy machine: two threads stall
    for _ in range(3):
        assert sizer.pick(1) == 1
        sizer.record(1, 1, 0.001)
    assert [sizer.pick(1) for _ in range(5)] == [1] * 5
    assert sizer.pick(32) == 2  # another batch-size group is timed on its own


def test_the_slower_size_is_timed_again_and_a_change_of_load_is_followed() -> None:
    sizer = TeamSizer(2, recheck_seconds=3.2)  # first re-check after 0.1 s, then 0.2 s, ...
    for size, seconds in [(2, 0.010)] * 3 + [(1, 0.001)] * 3:
        sizer.record(4, size, seconds)
    assert sizer.pick(4) == 1
    time.sleep(0.11)
    assert sizer.pick(4) == 2  # due for a re-check
    sizer.record(4, 2, 0.0004)  # the machine went quiet: the re-check replaces the old figure
    assert sizer.pick(4) == 1  # now the single thread is the one due for a re-check
    sizer.record(4, 1, 0.001)
    assert sizer.pick(3) == 2 and TeamSizer.group(3) == TeamSizer.group(4) == 4


def test_one_core_means_one_thread() -> None:
    sizer = TeamSizer(1)
    for _ in range(3):
        sizer.record(8, 1, 0.002)
    assert {sizer.pick(8) for _ in range(3)} == {1}
