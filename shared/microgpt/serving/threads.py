"""How many threads the native decode step gets, chosen by timing the steps themselves.

On a small machine the decode step's team of threads shares the cores with everything else
in the process and beside it: the server's event loop, a load-test client, a training job. A
second thread halves a step on an idle machine; when a core is busy elsewhere, the team's
threads take over the work of one the OS has put aside (`csrc/team.h`), but each hand-over
costs, and a step can still be slower than on one thread. Neither choice is right everywhere,
so the engine measures both:

- steps are grouped by batch size (powers of two: a step's cost depends on its rows);
- each group keeps a moving average of step seconds per team size, starting from the
  fastest of its first three steps (a team's first steps pay for starting its threads);
- the faster team size decodes, and the other one is timed again after 30 ms, then after
  twice as long each time up to a second, so a misleading start is corrected at once and a
  change in the machine's load is noticed within about a second, at a cost of a few steps a
  second. A re-check is three steps in a row and their median replaces the figure: a single
  lucky step against the decoding size's average had handed the step to one thread for 29%
  of the steps of an HTTP stream that two threads decode 17% faster.
"""

from __future__ import annotations

import statistics
import time

WARM_UP_STEPS = 3  # timed steps per team size before a choice: the fastest of them counts
FAVOUR = 0.85  # the full team's time counts this much: one thread must be 15% faster to take over
RECHECK_STEPS = 3  # steps in a row per re-check; their median counts
SPIKE = 2.0  # a decoding step counts as at most this many times the current figure


class TeamSizer:
    """Picks 1 or `most` threads per decode step, whichever the recent steps say is faster."""

    def __init__(self, most: int, recheck_seconds: float = 1.0, smoothing: float = 0.2) -> None:
        if most < 1:
            raise ValueError(f"most must be >= 1, got {most}")
        self.sizes = sorted({1, most})
        self.recheck_seconds, self.smoothing = recheck_seconds, smoothing
        self._seconds: dict[tuple[int, int], float] = {}  # (group, team) -> average step seconds
        self._timed_at: dict[tuple[int, int], float] = {}  # (group, team) -> when last timed
        self._count: dict[tuple[int, int], int] = {}  # (group, team) -> steps timed
        # (group, team) -> seconds until its next re-check: short at first (start-up timings can
        # mislead), doubling up to `recheck_seconds`.
        self._wait: dict[tuple[int, int], float] = {}
        self._recheck: dict[tuple[int, int], list[float]] = {}  # (group, team) -> a re-check's steps so far

    @staticmethod
    def group(rows: int) -> int:
        return 1 << max(0, rows - 1).bit_length()

    def pick(self, rows: int) -> int:
        """The team size for a step of `rows` rows."""
        group, now = self.group(rows), time.monotonic()
        untimed = [size for size in reversed(self.sizes) if self._count.get((group, size), 0) < WARM_UP_STEPS]
        if untimed:
            return untimed[0]
        # The full team keeps the step unless one thread is clearly faster: near a tie, step-to-step
        # noise would otherwise flip between them.
        most = self.sizes[-1]
        best = min(
            self.sizes, key=lambda size: self._seconds[group, size] * (FAVOUR if size == most else 1.0)
        )
        for size in self.sizes:
            if size != best and ((group, size) in self._recheck or self._due((group, size), now)):
                return size
        return best

    def _due(self, key: tuple[int, int], now: float) -> bool:
        wait = self._wait.get(key, self.recheck_seconds / 32)
        return key in self._timed_at and now - self._timed_at[key] >= wait

    def record(self, rows: int, size: int, seconds: float) -> None:
        """Time of one step of `rows` rows on `size` threads."""
        key = (self.group(rows), size)
        previous = self._seconds.get(key)
        count = self._count[key] = self._count.get(key, 0) + 1
        if previous is None or count <= WARM_UP_STEPS:
            # A team's first steps pay for starting its threads: the fastest of them counts.
            self._seconds[key] = seconds if previous is None else min(previous, seconds)
        elif key in self._recheck or self._due(key, time.monotonic()):
            steps = self._recheck.setdefault(key, [])
            steps.append(seconds)
            if len(steps) < RECHECK_STEPS:
                return
            # A re-check is a fresh figure, faster or slower: it replaces the old one at once.
            self._seconds[key] = statistics.median(self._recheck.pop(key))
            self._wait[key] = min(self.recheck_seconds, 2 * self._wait.get(key, self.recheck_seconds / 32))
        else:
            # A step the OS interrupted counts as at most twice the figure: such spikes would
            # otherwise hold the decoding size's average above its re-checked rival's median.
            # A real slow-down still shows within a few steps (each moves the figure 20% up).
            sample = min(seconds, SPIKE * previous)
            self._seconds[key] = previous + self.smoothing * (sample - previous)
        self._timed_at[key] = time.monotonic()
