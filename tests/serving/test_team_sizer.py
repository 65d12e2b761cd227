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
    for seconds in (0.0004, 0.0090, 0.0003):  # due for a re-check: three steps in a row
        assert sizer.pick(4) == 2
        sizer.record(4, 2, seconds)
    # The machine went quiet: the re-check's median (one stalled step aside) replaces the old figure.
    assert sizer.pick(4) == 1  # now the single thread is the one due for a re-check
    for _ in range(3):
        sizer.record(4, 1, 0.001)
    assert sizer.pick(3) == 2 and TeamSizer.group(3) == TeamSizer.group(4) == 4


def test_one_lucky_step_does_not_win_a_re_check() -> None:
    sizer = TeamSizer(2, recheck_seconds=3.2)
    for size, seconds in [(2, 0.0003)] * 3 + [(1, 0.0005)] * 3:
        sizer.record(2, size, seconds)
    for _ in range(10):  # the full team decodes; its figure is an average of ordinary steps
        assert sizer.pick(2) == 2
        sizer.record(2, 2, 0.0004)
    time.sleep(0.11)
    for seconds in (0.0002, 0.0005, 0.0005):  # one lucky single-thread step among three
        assert sizer.pick(2) == 1
        sizer.record(2, 1, seconds)
    assert sizer.pick(2) == 2


def test_one_core_means_one_thread() -> None:
    sizer = TeamSizer(1)
    for _ in range(3):
        sizer.record(8, 1, 0.002)
    assert {sizer.pick(8) for _ in range(3)} == {1}


def test_a_core_taken_by_other_work_still_hands_the_step_to_one_thread() -> None:
    sizer = TeamSizer(2, recheck_seconds=3.2)
    for size, seconds in [(2, 0.0003)] * 3 + [(1, 0.0005)] * 3:
        sizer.record(2, size, seconds)
    stalled = 0
    while sizer.pick(2) == 2:  # a training job took a core: every two-thread step stalls
        sizer.record(2, 2, 0.006)
        stalled += 1
        assert stalled < 20
    sizer.record(2, 1, 0.0005)
    assert [sizer.pick(2) for _ in range(3)] == [1, 1, 1]
