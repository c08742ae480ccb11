"""How the PostgreSQL store runs one call: which failures are retried, and on what connection.

A call runs on a pooled connection under the :class:`~otp_agent.store.pg_watchdog.Watchdog`;
driver errors become :class:`Conflict`, :class:`StoreUnavailable` or :class:`StoreError`, with
the DSN's password redacted.  A lost connection (server restarted, session killed, network cut,
watchdog) is the only failure retried, once, on a new connection, and only for calls marked
retryable; it also has the pool's idle connections checked in the background and, until the
pool has a working connection again, sends calls to new connections beside it (bypass).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, TypeVar

from otp_agent.errors import Conflict, StoreError, StoreUnavailable
from otp_agent.store.pg_dsn import Dsn
from otp_agent.store.pg_watchdog import Ticket, Watchdog

if TYPE_CHECKING:
    from otp_agent.store.pg_watchdog import PgConnection

# The store's own logger: these messages are the store's (the name is shown in the journal).
_log = logging.getLogger("otp_agent.store.postgresql")
_T = TypeVar("_T")


class Pool(Protocol):
    """What :class:`Calls` uses of a ``psycopg_pool.ConnectionPool``."""

    def connection(self) -> AbstractContextManager[PgConnection]:
        """A pooled connection, waiting for one up to the pool's timeout."""

    def get_stats(self) -> dict[str, int]:
        """Pool statistics, among them ``pool_available`` (idle connections)."""

    def check(self) -> None:
        """Test the idle connections and replace the broken ones."""


class Calls:
    """Runs the store's calls on ``pool``, or on new connections from ``connect``; thread-safe."""

    def __init__(
        self,
        pool: Pool,
        connect: Callable[[], PgConnection],
        watchdog: Watchdog,
        dsn: Dsn,
        *,
        pool_timeout: float,
        answer_timeout: float,
        max_connections: int,
    ) -> None:
        self._pool = pool
        self._connect = connect
        self._watchdog = watchdog
        self._dsn = dsn
        self.where = dsn.where
        self.pool_timeout = pool_timeout
        self.answer_timeout = answer_timeout
        self._purge_lock = threading.Lock()
        self._purging = False
        #: A pooled connection was lost and none has worked since.
        self.degraded = False
        # Connections opened beside the pool while it has none that works: as many as the pool.
        self._bypass_slots = threading.BoundedSemaphore(max_connections)

    def _purge_pool(self) -> None:
        """Test the idle pooled connections in the background; replace the broken ones."""
        with self._purge_lock:
            if self._purging:
                return
            self._purging = True

        def purge() -> None:
            try:
                self._pool.check()
            except Exception:  # noqa: BLE001 - best effort; the next call will tell
                pass
            finally:
                with self._purge_lock:
                    self._purging = False

        threading.Thread(target=purge, name="otp-agent-pg-check", daemon=True).start()

    def run(
        self,
        what: str,
        action: Callable[[PgConnection], _T],
        *,
        write: bool,
        retry: bool = True,
        deadline: float | None = None,
    ) -> _T:
        """Run ``action`` on a connection; translate driver errors.

        When a pooled connection turns out broken (server restarted, session killed, network
        cut), the other idle ones are checked in the background and, with ``retry``, the action
        runs once more on a new connection: safe for compare-and-set, whose version test refuses
        a second application, and for the idempotent writes.  Until the pool has a working
        connection again, calls go straight to new connections, so that while the server is
        down they fail at once (refused) or within the connect timeout, rather than each waiting
        for the pool, and they succeed as soon as it is back.
        """
        import psycopg
        from psycopg_pool import PoolTimeout

        unsure = False  # A write was cut off after it was sent: it may have been committed.
        for attempt in range(2 if retry else 1):
            bypass = (
                attempt == 0
                and self.degraded
                and not self._pool.get_stats().get("pool_available", 0)
                and self._bypass_slots.acquire(blocking=False)
            )
            direct = attempt > 0 or bypass
            used: PgConnection | None = None
            ticket: Ticket | None = None
            try:
                with self._connect() if direct else self._pool.connection() as connection:
                    used = connection
                    with self._watchdog.guard(connection, deadline or self.answer_timeout) as ticket:
                        result = action(connection)
                if not direct:
                    self.degraded = False
                return result
            except PoolTimeout:
                # A busy pool, or one still reconnecting: not a reason to open more connections.
                raise StoreUnavailable(
                    f"PostgreSQL {self.where}: no connection within "
                    f"{self.pool_timeout:g} s ({what}"
                    f"{', nothing was written' if write else ''})"
                ) from None
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"{what}: a token with this serial or this same secret exists") from None
            except psycopg.Error as exc:
                message = self._dsn.redact(exc)
                if ticket is not None and ticket.fired:
                    message = f"no answer within {deadline or self.answer_timeout:g} s"
                lost = used is None or used.broken or used.closed
                if lost:
                    self.degraded = True
                    unsure = unsure or (write and used is not None)
                    if used is not None and not direct:
                        self._purge_pool()
                tail = ""
                if write:
                    tail = "; it may or may not have been committed" if unsure else ", nothing was written"
                if used is None:
                    raise StoreUnavailable(
                        f"PostgreSQL {self.where} cannot be reached ({what}{tail}): {message}"
                    ) from None
                if lost:
                    if retry and attempt == 0:
                        _log.warning(
                            "PostgreSQL %s: connection lost (%s); retrying once on a new connection",
                            self.where,
                            message,
                        )
                        continue
                    raise StoreUnavailable(
                        f"PostgreSQL {self.where}: connection lost while {what}{tail}: {message}"
                    ) from None
                if write:
                    raise StoreError(f"PostgreSQL {self.where}: {what} failed{tail}: {message}") from None
                raise StoreError(f"PostgreSQL {self.where}: read failed: {message}") from None
            finally:
                if bypass:
                    self._bypass_slots.release()
        raise AssertionError("unreachable")
