"""Replay bursts: the one alert the engine has to notice over several decisions.

A single replay is ordinary (two logins racing with one code); several for one user within a
minute mean a code is being reused on purpose (phished, shoulder-surfed, a script).  The other
alerts are single events (a lock, a disable, a failover), given their severity by
:data:`otp_agent.audit.SEVERITY`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

#: Replays of one user within WINDOW seconds that make a burst.
THRESHOLD = 3
WINDOW = 60.0
#: Users followed at once (the oldest are dropped): memory stays bounded under a flood.
MAX_USERS = 10_000


class ReplayBursts:
    """Counts replays per user over a sliding window; says when one makes a burst (once a window)."""

    def __init__(
        self,
        threshold: int = THRESHOLD,
        window: float = WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold, self.window, self.clock = threshold, window, clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}
        self._alerted: dict[str, float] = {}

    def replayed(self, user: str) -> int | None:
        """Note one replay for ``user``; return the count when it makes a new burst, else None."""
        now = self.clock()
        with self._lock:
            times = self._seen.pop(user, None) or deque()
            self._seen[user] = times  # re-inserted: the most recent users are dropped last
            times.append(now)
            while times and times[0] <= now - self.window:
                times.popleft()
            while len(self._seen) > MAX_USERS:
                oldest = next(iter(self._seen))
                del self._seen[oldest]
                self._alerted.pop(oldest, None)
            if len(times) < self.threshold or self._alerted.get(user, -self.window) > now - self.window:
                return None
            self._alerted[user] = now
            return len(times)
