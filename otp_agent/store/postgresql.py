"""The PostgreSQL token store: a fleet of hosts sharing tokens, replay rejection across hosts.

This module owns the connection pool (psycopg 3 and psycopg_pool, imported lazily here only: they
are the ``postgresql`` extra), the schema and its numbered migrations (``postgresql_NNN_*.sql``,
applied under an advisory lock so hosts starting together migrate once), and the translation of
driver errors into :class:`StoreError` / :class:`StoreUnavailable`.

Validation state changes in ONE conditional ``UPDATE ... WHERE serial = %s AND version = %s`` in
autocommit: the row lock and the version test let exactly one of any number of concurrent writers,
on any host, win, and PostgreSQL commits it durably (``synchronous_commit``) before the agent
answers.  Every network wait is bounded (connect timeout, pool wait, statement and lock timeouts,
TCP user timeout and keepalives).  The DSN's password never appears in a message, repr or report.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from otp_agent.errors import Conflict, NotFound, StoreError, StoreUnavailable
from otp_agent.store.models import Token, TokenState
from otp_agent.store.rows import (
    ASSIGN, COLUMNS, RESET_THROTTLING, SELECT, SET_BINDING, SET_ENABLED, STATE_UPDATE, migration_script,
    row_to_token, state_parameters, token_to_row,
)

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

    _Connection = Connection[tuple[Any, ...]]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

SCHEMA_VERSION = 2
#: Key of the advisory lock taken while the schema is checked and migrated ("otp-agen").
MIGRATION_LOCK = 0x6F74702D6167656E
_INSERT = (f"INSERT INTO tokens ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join(['%s'] * len(COLUMNS))})")
_CHUNK = 1000





class _Dsn:
    """A parsed DSN: what to show (never the password) and what to strip from messages."""

    def __init__(self, dsn: str) -> None:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict
        try:
            self.params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()
                           if value is not None}
        except Error:
            # libpq quotes fragments of the string it cannot parse: they may hold the password.
            raise StoreUnavailable(
                "store.dsn is not a valid PostgreSQL connection string (expected "
                "postgresql://USER@HOST:PORT/DATABASE or key=value pairs)") from None
        password = self.params.get("password", "")
        self._hidden = [text for text in (dsn, password, quote(password, safe="")) if text]
        self.where = "postgresql://{}@{}:{}/{}".format(
            self.params.get("user", ""), self.params.get("host", ""),
            self.params.get("port", "5432"), self.params.get("dbname", ""))

    def redact(self, error: BaseException | str) -> str:
        """The error text on one line, with the DSN and its password replaced by ``***``."""
        text = " ".join(str(error).split())
        for hidden in self._hidden:
            text = text.replace(hidden, "***")
        return text


class _Ticket:
    """One call under watch: its connection, deadline, and whether the watchdog ended it."""

    __slots__ = ("connection", "deadline", "fired")

    def __init__(self, connection: _Connection, deadline: float) -> None:
        self.connection, self.deadline, self.fired = connection, deadline, False


class _Watchdog:
    """Ends a connection whose call outlives its deadline: a frozen server or a hung disk.

    Server-side timeouts end slow statements; this bounds what they cannot (a server that keeps
    TCP alive but never answers, a commit stuck on storage).  The socket is shut down, the call
    fails as a lost connection, and the connection is closed so that the pool drops it.
    """

    _TICK = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tickets: set[_Ticket] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, connection: _Connection, seconds: float) -> Iterator[_Ticket]:
        """Watch ``connection`` for ``seconds``; the ticket says whether it was cut."""
        ticket = _Ticket(connection, time.monotonic() + seconds)
        with self._lock:
            self._tickets.add(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="otp-agent-pg-watchdog",
                                                daemon=True)
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
                    _shut_down(ticket.connection)

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()


def _shut_down(connection: _Connection) -> None:
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


class PostgreSQLStore:
    """Token store in one PostgreSQL database, shared by every host of a fleet; thread-safe."""

    name = "postgresql"

    def __init__(self, dsn: str | None, *, create: bool = False, max_connections: int = 8,
                 connect_timeout: float = 3.0, pool_timeout: float = 3.0,
                 statement_timeout: float = 3.0, answer_timeout: float | None = None,
                 network_timeout: float = 10.0) -> None:
        try:
            import psycopg  # noqa: F401
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StoreUnavailable(
                'store.backend = "postgresql" needs psycopg 3 and psycopg_pool (install the '
                "otp-agent[postgresql] extra, or python3-psycopg and python3-psycopg-pool)") from None
        if not dsn:
            raise StoreUnavailable('store.dsn: required when store.backend = "postgresql"')
        self._dsn = _Dsn(dsn)
        self.where = self._dsn.where
        self.pool_timeout = pool_timeout
        self._statement_ms = str(int(statement_timeout * 1000))
        #: How long one call may wait for the server before its connection is cut.
        self.answer_timeout = statement_timeout + 2.0 if answer_timeout is None else answer_timeout
        self._watchdog = _Watchdog()
        self._lock_ms = str(int(max(statement_timeout - 1.0, 1.0) * 1000))
        # libpq settings the DSN itself does not set; the DSN wins where it does.
        defaults: dict[str, Any] = {
            "connect_timeout": max(2, round(connect_timeout)), "application_name": "otp-agent",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": int(network_timeout * 1000)}
        self._kwargs = {k: v for k, v in defaults.items() if k not in self._dsn.params}
        self._kwargs["autocommit"] = True
        self._conninfo = dsn
        self._purge_lock = threading.Lock()
        self._purging = False
        self._degraded = False
        # Connections opened beside the pool while it has none that works: as many as the pool.
        self._bypass_slots = threading.BoundedSemaphore(max_connections)
        self._pool: ConnectionPool[_Connection] = ConnectionPool(
            dsn, kwargs=self._kwargs, min_size=1, max_size=max_connections, open=False,
            configure=self._configure, timeout=pool_timeout, name="otp-agent")
        try:
            self._migrate(dsn, create=create)
            self._pool.open(wait=True, timeout=connect_timeout + pool_timeout)
        except BaseException as exc:
            self._pool.close(timeout=0)
            self._watchdog.close()
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            raise StoreUnavailable(f"PostgreSQL {self.where}: cannot open the connection pool: "
                                   f"{self._dsn.redact(exc)}") from None

    def __repr__(self) -> str:
        return f"PostgreSQLStore({self.where!r})"

    # -- connections -----------------------------------------------------------------------

    def _configure(self, connection: _Connection) -> None:
        """Bound every statement and lock wait of a new connection (pooled or not)."""
        with self._watchdog.guard(connection, self.answer_timeout):
            connection.execute(
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('lock_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                (self._statement_ms, self._lock_ms, "10000"))

    def _migrate(self, dsn: str, *, create: bool) -> None:
        """Check the schema and apply missing migrations, once across hosts (advisory lock)."""
        import psycopg
        try:
            connection = psycopg.connect(dsn, **self._kwargs)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL {self.where} cannot be reached: "
                                   f"{self._dsn.redact(exc)}") from None
        try:
            with self._watchdog.guard(connection, 150.0), connection, connection.transaction():
                connection.execute("SET LOCAL lock_timeout = '60s'")
                connection.execute("SET LOCAL statement_timeout = '120s'")
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                current = 0
                if _scalar(connection, "SELECT to_regclass('meta') IS NOT NULL"):
                    value = _scalar(connection, "SELECT value FROM meta WHERE key = 'schema_version'")
                    current = int(value) if value is not None else 0
                elif not create:
                    raise StoreUnavailable(f"PostgreSQL {self.where} has no otp-agent schema "
                                           "(create it with: otp-agent init)")
                if current > SCHEMA_VERSION:
                    raise StoreUnavailable(
                        f"PostgreSQL {self.where} has schema {current}, newer than this otp-agent "
                        f"({SCHEMA_VERSION}); upgrade otp-agent")
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in migration_script("postgresql", version).split(";"):
                        if statement.strip():
                            connection.execute(statement)
                    connection.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(version),))
                    _log.info("PostgreSQL %s: schema migrated to version %d", self.where, version)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL {self.where} cannot be used: "
                                   f"{self._dsn.redact(exc)}") from None
        finally:
            connection.close()

    def _fresh_connection(self) -> _Connection:
        """A new connection outside the pool, set up like the pooled ones."""
        import psycopg
        connection = psycopg.connect(self._conninfo, **self._kwargs)
        try:
            self._configure(connection)
        except BaseException:
            connection.close()
            raise
        return connection

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

    def _run(self, what: str, action: Callable[[_Connection], _T], *, write: bool,
             retry: bool = True, deadline: float | None = None) -> _T:
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
            bypass = (attempt == 0 and self._degraded
                      and not self._pool.get_stats().get("pool_available", 0)
                      and self._bypass_slots.acquire(blocking=False))
            direct = attempt > 0 or bypass
            used: _Connection | None = None
            ticket: _Ticket | None = None
            try:
                with self._fresh_connection() if direct else self._pool.connection() as connection:
                    used = connection
                    with self._watchdog.guard(connection, deadline or self.answer_timeout) as ticket:
                        result = action(connection)
                if not direct:
                    self._degraded = False
                return result
            except PoolTimeout:
                # A busy pool, or one still reconnecting: not a reason to open more connections.
                raise StoreUnavailable(f"PostgreSQL {self.where}: no connection within "
                                       f"{self.pool_timeout:g} s ({what}"
                                       f"{', nothing was written' if write else ''})") from None
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"{what}: a token with this serial or this same secret exists") from None
            except psycopg.Error as exc:
                message = self._dsn.redact(exc)
                if ticket is not None and ticket.fired:
                    message = f"no answer within {deadline or self.answer_timeout:g} s"
                lost = used is None or used.broken or used.closed
                if lost:
                    self._degraded = True
                    unsure = unsure or (write and used is not None)
                    if used is not None and not direct:
                        self._purge_pool()
                tail = ""
                if write:
                    tail = "; it may or may not have been committed" if unsure else ", nothing was written"
                if used is None:
                    raise StoreUnavailable(f"PostgreSQL {self.where} cannot be reached "
                                           f"({what}{tail}): {message}") from None
                if lost:
                    if retry and attempt == 0:
                        _log.warning("PostgreSQL %s: connection lost (%s); retrying once on a new "
                                     "connection", self.where, message)
                        continue
                    raise StoreUnavailable(f"PostgreSQL {self.where}: connection lost while "
                                           f"{what}{tail}: {message}") from None
                if write:
                    raise StoreError(f"PostgreSQL {self.where}: {what} failed{tail}: {message}") from None
                raise StoreError(f"PostgreSQL {self.where}: read failed: {message}") from None
            finally:
                if bypass:
                    self._bypass_slots.release()
        raise AssertionError("unreachable")

    def _read(self, query: Any, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run("reading", lambda c: c.execute(query, parameters).fetchall(), write=False)

    def _write(self, what: str, query: Any, parameters: Sequence[Any], *, retry: bool = True) -> int:
        return self._run(what, lambda c: c.execute(query, parameters).rowcount, write=True,
                         retry=retry)

    # -- reads -----------------------------------------------------------------------------

    def get(self, serial: str) -> Token | None:
        rows = self._read(SELECT + " WHERE serial = %s", (serial,))
        return row_to_token(rows[0]) if rows else None

    def tokens_for_user(self, user: str) -> list[Token]:
        rows = self._read(SELECT + ' WHERE user_name = %s ORDER BY created, serial COLLATE "C"',
                          (user,))
        return [row_to_token(row) for row in rows]

    def all_tokens(self) -> list[Token]:
        return [row_to_token(row) for row in self._read(SELECT + ' ORDER BY serial COLLATE "C"')]

    def existing_fingerprints(self, fingerprints: Iterable[bytes]) -> set[bytes]:
        wanted = [bytes(f) for f in fingerprints]
        found: set[bytes] = set()
        for start in range(0, len(wanted), _CHUNK):
            rows = self._read("SELECT fingerprint FROM tokens WHERE fingerprint = ANY(%s)",
                              (wanted[start:start + _CHUNK],))
            found.update(bytes(row[0]) for row in rows)
        return found

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = %s", (key,))
        return str(rows[0][0]) if rows else None

    # -- writes ----------------------------------------------------------------------------

    def add_tokens(self, tokens: Sequence[Token]) -> None:
        now = time.time()
        rows = [token_to_row(token, now) for token in tokens]

        def insert(connection: _Connection) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(_INSERT, rows)

        try:
            # Not retried: a commit whose answer was lost would come back as a false Conflict.
            self._run("adding tokens", insert, write=True, retry=False,
                      deadline=self.answer_timeout + 0.001 * len(rows))
        except Conflict:
            serial = self._first_conflict(tokens)
            if serial is None:
                raise
            raise Conflict(f"token {serial}: a token with this serial or this "
                           "same secret already exists") from None

    def _first_conflict(self, tokens: Sequence[Token]) -> str | None:
        """Name the first token of a refused batch that clashes with the store or the batch."""
        serials = [t.serial for t in tokens]
        taken: set[str] = set()
        for start in range(0, len(serials), _CHUNK):
            taken.update(row[0] for row in self._read(
                "SELECT serial FROM tokens WHERE serial = ANY(%s)", (serials[start:start + _CHUNK],)))
        used = self.existing_fingerprints(t.fingerprint for t in tokens)
        for token in tokens:
            if token.serial in taken or token.fingerprint in used:
                return token.serial
            taken.add(token.serial)
            used.add(token.fingerprint)
        return None

    def compare_and_set(self, serial: str, expected_version: int, state: TokenState) -> bool:
        rowcount = self._write(f"committing token {serial}", STATE_UPDATE,
                               state_parameters(serial, expected_version, state))
        return rowcount == 1

    def _update_one(self, what: str, query: str, parameters: tuple[Any, ...], serial: str) -> None:
        if self._write(what, query, parameters) != 1:
            raise NotFound(f"no token with serial {serial}")

    def _updated(self, serial: str) -> Token:
        token = self.get(serial)
        if token is None:
            raise NotFound(f"no token with serial {serial}")
        return token

    def assign(self, serial: str, user: str | None, binding: bytes) -> Token:
        self._update_one(f"assigning token {serial}", ASSIGN, (user, binding, serial), serial)
        return self._updated(serial)

    def set_enabled(self, serial: str, enabled: bool) -> Token:
        self._update_one(f"updating token {serial}", SET_ENABLED, (bool(enabled), serial), serial)
        return self._updated(serial)

    def set_binding(self, serial: str, binding: bytes) -> None:
        self._update_one(f"binding token {serial}", SET_BINDING, (binding, serial), serial)

    def reset_throttling(self, serial: str, now: float) -> None:
        updated = self._write(f"unlocking token {serial}", RESET_THROTTLING, (now, now, now, serial))
        if updated != 1:
            raise NotFound(f"no token with serial {serial}")

    def remove(self, serial: str) -> None:
        # Not retried: a delete whose answer was lost would come back as a false NotFound.
        if self._write(f"removing token {serial}", "DELETE FROM tokens WHERE serial = %s",
                       (serial,), retry=False) != 1:
            raise NotFound(f"no token with serial {serial}")

    def set_meta(self, key: str, value: str) -> None:
        self._write("writing settings", "INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value))

    def claim_meta(self, key: str, value: str) -> str:
        """Write ``value`` under ``key`` unless a value is there already; return the stored one.

        Atomic across hosts: of several hosts claiming one key at once, all get the same value
        (for the key backend's check value: hosts with different master keys cannot both win).
        """
        def claim(connection: _Connection) -> str:
            inserted = _scalar(connection, ("INSERT INTO meta (key, value) VALUES (%s, %s) "
                                            "ON CONFLICT (key) DO NOTHING RETURNING value", (key, value)))
            if inserted is not None:
                return str(inserted)
            return str(_scalar(connection, ("SELECT value FROM meta WHERE key = %s", (key,))))

        return self._run("writing settings", claim, write=True)

    # -- health and lifecycle --------------------------------------------------------------

    def health(self) -> dict[str, object]:
        def probe(connection: _Connection) -> tuple[int, str | None, int]:
            count = int(_scalar(connection, "SELECT count(*) FROM tokens"))
            schema = _scalar(connection, "SELECT value FROM meta WHERE key = 'schema_version'")
            return count, schema, connection.info.server_version

        base: dict[str, object] = {"backend": self.name, "database": self.where}
        try:
            count, schema, server = self._run("checking health", probe, write=False)
        except StoreError as exc:
            return {"ok": False, **base, "error": str(exc)}
        stats = self._pool.get_stats()
        return {"ok": True, **base, "server_version": f"{server // 10000}.{server % 10000}",
                "tokens": count, "schema_version": int(schema) if schema else None,
                "connections": stats.get("pool_size", 0), "idle": stats.get("pool_available", 0)}

    def close(self) -> None:
        self._pool.close(timeout=5.0)
        self._watchdog.close()


def _scalar(connection: _Connection, query: Any) -> Any:
    """The first column of the first row of ``query`` (a string, or a (string, parameters) pair)."""
    text, parameters = query if isinstance(query, tuple) else (query, None)
    row = connection.execute(text, parameters).fetchone()
    return row[0] if row else None
