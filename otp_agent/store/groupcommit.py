"""Group commit: one writer thread that commits many small write transactions with one fsync.

Callers hand in a write action and block until the transaction holding it has been durably
committed (or has failed).  Each action runs inside its own SAVEPOINT, so one failing action is
rolled back alone; if the final COMMIT fails, every action of the batch reports the failure and
nothing of the batch is kept.  No caller is ever answered before its write is on disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

_MAX_BATCH = 256


class _Pending:
    __slots__ = ("action", "done", "result", "error")

    def __init__(self, action: Callable[[sqlite3.Connection], Any]) -> None:
        self.action = action
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Owns the one writing connection of a SQLite store and batches its transactions."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        name: str = "sqlite-writer",
        *,
        check: Callable[[], None] | None = None,
    ) -> None:
        """``check`` runs before each batch; an exception from it fails the whole batch."""
        self._connect = connect
        self._check = check
        self._connection: sqlite3.Connection | None = None
        self._queue: list[_Pending] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, action: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``action(connection)`` in a committed transaction; return its result or raise."""
        pending = _Pending(action)
        with self._condition:
            if self._closed:
                raise sqlite3.OperationalError("store is closed")
            self._queue.append(pending)
            self._condition.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def close(self) -> None:
        """Finish queued writes, then stop the writer and close its connection."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue and self._closed:
                    break
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            self._commit(batch)
        if self._connection is not None:
            self._connection.close()

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self._check is not None:
                self._check()
            if self._connection is None:
                self._connection = self._connect()
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
        except Exception as exc:  # Also the store's own StoreUnavailable from connect: the
            # writer thread must survive it, or every later write would wait for ever.
            for pending in batch:
                pending.error = exc
                pending.done.set()
            return
        for pending in batch:
            try:
                connection.execute("SAVEPOINT action")
                pending.result = pending.action(connection)
                connection.execute("RELEASE action")
            except BaseException as exc:  # Handed to the caller, who re-raises it.
                pending.error = exc
                try:
                    connection.execute("ROLLBACK TO action")
                    connection.execute("RELEASE action")
                except sqlite3.Error:
                    pass
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for pending in batch:
                if pending.error is None:
                    pending.error = exc
        for pending in batch:
            pending.done.set()
