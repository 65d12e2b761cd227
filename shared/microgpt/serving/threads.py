"""How many threads the native decode step gets, chosen by timing the steps themselves.

On a small machine the decode step's OpenMP team shares the cores with everything else in
the process and beside it: the server's event loop, a load-test client, a training job. A
second thread halves a step on an idle machine, but when a core is busy elsewhere the team
waits at every barrier for a thread the OS has put aside, and a step can take 20 times
longer. Neither choice is right everywhere, so the engine measures both:

- steps are grouped by batch size (powers of two: a step's cost depends on its rows);
- each group keeps a moving average of step seconds per team size;
- the faster team size decodes, and the other one is timed again once a second (one step),
  so a change in the machine's load is noticed within about a second, at a cost of one
  step in a second.
"""

from __future__ import annotations

import time


class TeamSizer:
    """Picks 1 or `most` threads per decode step, whichever the recent steps say is faster."""

    def __init__(self, most: int, recheck_seconds: float = 1.0, smoothing: float = 0.2) -> None:
        if most < 1:
            raise ValueError(f"most must be >= 1, got {most}")
        self.sizes = sorted({1, most})
        self.recheck_seconds, self.smoothing = recheck_seconds, smoothing
        self._seconds: dict[tuple[int, int], float] = {}  # (group, team) -> average step seconds
        self._timed_at: dict[tuple[int, int], float] = {}  # (group, team) -> when last timed

    @staticmethod
    def group(rows: int) -> int:
        return 1 << max(0, rows - 1).bit_length()

    def pick(self, rows: int) -> int:
        """The team size for a step of `rows` rows."""
        group, now = self.group(rows), time.monotonic()
        untimed = [size for size in reversed(self.sizes) if (group, size) not in self._seconds]
        if untimed:
            return untimed[0]
        best = min(self.sizes, key=lambda size: self._seconds[group, size])
        for size in self.sizes:
            if size != best and now - self._timed_at[group, size] >= self.recheck_seconds:
                return size
        return best

    def record(self, rows: int, size: int, seconds: float) -> None:
        """Time of one step of `rows` rows on `size` threads."""
        key = (self.group(rows), size)
        previous = self._seconds.get(key)
        stale = key in self._timed_at and time.monotonic() - self._timed_at[key] >= self.recheck_seconds
        # A re-check replaces the old figure (the load may have changed); otherwise smooth.
        fresh = previous is None or stale
        self._seconds[key] = seconds if fresh else previous + self.smoothing * (seconds - previous)
        self._timed_at[key] = time.monotonic()
