"""The PostgreSQL store's per-call watchdog: a call that outlives its deadline loses its connection.

One daemon thread (``otp-agent-pg-watchdog``), started with the first call, shuts the socket of
an overdue call down under the thread blocked on it; see :class:`Watchdog`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg import Connection

    #: The connections of the PostgreSQL store: autocommit, rows as tuples.
    PgConnection = Connection[tuple[Any, ...]]


class Ticket:
    """One call under watch: its connection, deadline, and whether the watchdog ended it."""

    __slots__ = ("connection", "deadline", "fired")

    def __init__(self, connection: PgConnection, deadline: float) -> None:
        self.connection, self.deadline, self.fired = connection, deadline, False


class Watchdog:
    """Ends a connection whose call outlives its deadline: a frozen server or a hung disk.

    Server-side timeouts end slow statements; this bounds what they cannot (a server that keeps
    TCP alive but never answers, a commit stuck on storage).  The socket is shut down, the call
    fails as a lost connection, and the connection is closed so that the pool drops it.
    """

    _TICK = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tickets: set[Ticket] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, connection: PgConnection, seconds: float) -> Iterator[Ticket]:
        """Watch ``connection`` for ``seconds``; the ticket says whether it was cut."""
        ticket = Ticket(connection, time.monotonic() + seconds)
        with self._lock:
            self._tickets.add(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="otp-agent-pg-watchdog", daemon=True)
                self._thread.start()
        try:
            yield ticket
        finally:
            with self._lock:
                self._tickets.discard(ticket)
            if ticket.fired:
                connection.close()

    def _watch(self) -> None:
        while not self._stop.wait(self._TICK):
            now = time.monotonic()
            with self._lock:
                for ticket in [t for t in self._tickets if t.deadline <= now]:
                    self._tickets.discard(ticket)
                    ticket.fired = True
                    shut_down(ticket.connection)

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()


def shut_down(connection: PgConnection) -> None:
    """Shut the connection's socket down under the thread blocked on it."""
    try:
        duplicate = socket.socket(fileno=os.dup(connection.fileno()))
    except Exception:  # noqa: BLE001 - already closed: nothing to cut
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()
