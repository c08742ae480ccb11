"""One lock per key (a user name), made on demand and dropped when nobody holds or waits for it.

The validation engine decides a user's attempts one at a time in this process: an attempt checks
the token's lock, compares the code and records the failure, and parallel attempts must not all
pass the lock check before any failure is recorded (sixteen parallel guesses would otherwise all
be evaluated against a threshold of five).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    """Mutual exclusion per key, with a bounded wait."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def hold(self, key: str, timeout: float) -> Iterator[bool]:
        """Hold the lock of ``key``; yield False (not holding it) if it was not free in time."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = (threading.Lock(), [0])
            entry[1][0] += 1
        lock, users = entry
        acquired = lock.acquire(timeout=timeout)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._entries[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)
