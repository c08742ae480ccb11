"""Group commit: many small write transactions of a SQLite store committed with one fsync.

Callers hand in a write action and block until the transaction holding it has been durably
committed (or has failed).  There is no writer thread: the first caller to find nobody
committing becomes the *leader* and commits, on its own thread, every action queued by then;
callers arriving meanwhile queue up and wait, and when the leader's own action is done it hands
the lead to the first of them, whose batch holds everything queued during the previous fsync.
So one caller costs no thread hand-off, and concurrent callers still share one fsync.

Each action of a batch of several runs inside its own SAVEPOINT, so one failing action is rolled
back alone; if the final COMMIT fails, every action of the batch reports the failure and nothing
of the batch is kept.  No caller is ever answered before its write is on disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

_MAX_BATCH = 256


class _Pending:
    """One caller's action and, once its batch is over, the action's result or error."""

    __slots__ = ("action", "done", "lead", "result", "error")

    def __init__(self, action: Callable[[sqlite3.Connection], Any]) -> None:
        self.action = action
        self.done = False
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommitter:
    """Owns the one writing connection of a SQLite store and batches its transactions."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        check: Callable[[], None] | None = None,
    ) -> None:
        """``check`` runs before each batch; an exception from it fails the whole batch.

        ``connect`` must return a connection usable from any thread (``check_same_thread=False``):
        the leader of the moment, whichever thread it is, is the only one using it.
        """
        self._connect = connect
        self._check = check
        self._connection: sqlite3.Connection | None = None
        self._queue: list[_Pending] = []
        self._changed = threading.Condition()
        self._leading = False
        self._closed = False

    def submit(self, action: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``action(connection)`` in a committed transaction; return its result or raise."""
        pending = _Pending(action)
        with self._changed:
            if self._closed:
                raise sqlite3.OperationalError("store is closed")
            self._queue.append(pending)
            if self._leading:
                while not pending.done and not pending.lead:
                    self._changed.wait()
                if pending.done:
                    return pending.outcome()
            self._leading = True
        self._lead(pending)
        return pending.outcome()

    def close(self) -> None:
        """Refuse new writes, let the writes in flight finish, then close the connection."""
        with self._changed:
            self._closed = True
            while self._leading:
                self._changed.wait()
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _lead(self, mine: _Pending) -> None:
        """Commit batches until ``mine`` is done, then pass the lead on (or lay it down)."""
        while True:
            with self._changed:
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            try:
                self._commit(batch)
            except BaseException as exc:  # A bug: nothing of the batch may pass as written.
                for pending in batch:
                    pending.error = exc
                self._abandon()
            with self._changed:
                for pending in batch:
                    pending.done = True
                finished = mine.done
                if finished:
                    if self._queue:
                        self._queue[0].lead = True
                    else:
                        self._leading = False
                self._changed.notify_all()
            if finished:
                return

    def _abandon(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self._check is not None:
                self._check()
            if self._connection is None:
                self._connection = self._connect()
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
        except Exception as exc:  # Also the store's own StoreUnavailable from connect: the
            # batch fails, and the next one tries again.
            for pending in batch:
                pending.error = exc
            return
        alone = len(batch) == 1
        for pending in batch:
            try:
                if alone:  # nothing to keep apart from: a failure rolls the transaction back
                    pending.result = pending.action(connection)
                    continue
                connection.execute("SAVEPOINT action")
                pending.result = pending.action(connection)
                connection.execute("RELEASE action")
            except BaseException as exc:  # Handed to the caller, who re-raises it.
                pending.error = exc
                if alone:
                    break
                try:
                    connection.execute("ROLLBACK TO action")
                    connection.execute("RELEASE action")
                except sqlite3.Error:
                    pass
        if alone and batch[0].error is not None:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return
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
