"""The PostgreSQL token store: a fleet of hosts sharing tokens, replay rejection across hosts.

This module owns the connection pool (psycopg 3 and psycopg_pool, imported lazily by the store
modules only: they are the ``postgresql`` extra), the schema and its numbered migrations
(``postgresql_NNN_*.sql``, applied under an advisory lock so hosts starting together migrate
once), and the SQL of every call.  How a call runs (retries, the translation of driver errors
into :class:`StoreError` / :class:`StoreUnavailable`) is :mod:`otp_agent.store.pg_calls`; the
per-call watchdog is :mod:`~otp_agent.store.pg_watchdog`, the DSN's redaction
:mod:`~otp_agent.store.pg_dsn`.

Validation state changes in ONE conditional ``UPDATE ... WHERE serial = %s AND version = %s`` in
autocommit: the row lock and the version test let exactly one of any number of concurrent writers,
on any host, win, and PostgreSQL commits it durably (``synchronous_commit``) before the agent
answers.  Every network wait is bounded (connect timeout, pool wait, statement and lock timeouts,
TCP user timeout and keepalives).  The DSN's password never appears in a message, repr or report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from otp_agent.errors import Conflict, NotFound, StoreError, StoreUnavailable
from otp_agent.store.migrate import apply_migrations
from otp_agent.store.models import BackupCode, Remembered, Token, TokenState
from otp_agent.store.pg_calls import Calls
from otp_agent.store.pg_dsn import Dsn
from otp_agent.store.pg_watchdog import Watchdog
from otp_agent.store.rows import (
    ASSIGN,
    COLUMNS,
    DELETE_BACKUP,
    DELETE_EXPIRED_PENDING,
    FORGET,
    FORGET_EXPIRED,
    INSERT_BACKUP,
    REMEMBER,
    RESET_THROTTLING,
    SELECT,
    SELECT_BACKUP,
    SELECT_REMEMBERED,
    SET_BINDING,
    SET_ENABLED,
    STATE_UPDATE,
    TOKEN_COUNTS,
    USE_BACKUP,
    backup_code_to_row,
    row_to_backup_code,
    row_to_remembered,
    row_to_token,
    state_parameters,
    token_to_row,
)

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from otp_agent.store.pg_watchdog import PgConnection as _Connection

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
#: Key of the advisory lock taken while the schema is checked and migrated ("otp-agen").
MIGRATION_LOCK = 0x6F74702D6167656E
_INSERT = f"INSERT INTO tokens ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
_CHUNK = 1000


class PostgreSQLStore:
    """Token store in one PostgreSQL database, shared by every host of a fleet; thread-safe."""

    name = "postgresql"

    def __init__(
        self,
        dsn: str | None,
        *,
        create: bool = False,
        max_connections: int = 8,
        connect_timeout: float = 3.0,
        pool_timeout: float = 3.0,
        statement_timeout: float = 3.0,
        answer_timeout: float | None = None,
        network_timeout: float = 10.0,
    ) -> None:
        try:
            import psycopg  # noqa: F401
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StoreUnavailable(
                'store.backend = "postgresql" needs psycopg 3 and psycopg_pool (install the '
                "otp-agent[postgresql] extra, or python3-psycopg and python3-psycopg-pool)"
            ) from None
        if not dsn:
            raise StoreUnavailable('store.dsn: required when store.backend = "postgresql"')
        self._dsn = Dsn(dsn)
        self.where = self._dsn.where
        self.pool_timeout = pool_timeout
        self._statement_ms = str(int(statement_timeout * 1000))
        #: How long one call may wait for the server before its connection is cut.
        self.answer_timeout = statement_timeout + 2.0 if answer_timeout is None else answer_timeout
        self._watchdog = Watchdog()
        self._lock_ms = str(int(max(statement_timeout - 1.0, 1.0) * 1000))
        # libpq settings the DSN itself does not set; the DSN wins where it does.
        defaults: dict[str, Any] = {
            "connect_timeout": max(2, round(connect_timeout)),
            "application_name": "otp-agent",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(network_timeout * 1000),
        }
        self._kwargs = {k: v for k, v in defaults.items() if k not in self._dsn.params}
        self._kwargs["autocommit"] = True
        self._conninfo = dsn
        self._pool: ConnectionPool[_Connection] = ConnectionPool(
            dsn,
            kwargs=self._kwargs,
            min_size=1,
            max_size=max_connections,
            open=False,
            configure=self._configure,
            timeout=pool_timeout,
            name="otp-agent",
        )
        self._calls = Calls(
            self._pool,
            self._fresh_connection,
            self._watchdog,
            self._dsn,
            pool_timeout=pool_timeout,
            answer_timeout=self.answer_timeout,
            max_connections=max_connections,
        )
        try:
            self._migrate(dsn, create=create)
            self._pool.open(wait=True, timeout=connect_timeout + pool_timeout)
        except BaseException as exc:
            self._pool.close(timeout=0)
            self._watchdog.close()
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            raise StoreUnavailable(
                f"PostgreSQL {self.where}: cannot open the connection pool: {self._dsn.redact(exc)}"
            ) from None

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
                (self._statement_ms, self._lock_ms, "10000"),
            )

    def _migrate(self, dsn: str, *, create: bool) -> None:
        """Check the schema and apply missing migrations, once across hosts (advisory lock)."""
        import psycopg

        try:
            connection = psycopg.connect(dsn, **self._kwargs)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"PostgreSQL {self.where} cannot be reached: {self._dsn.redact(exc)}"
            ) from None
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
                    raise StoreUnavailable(
                        f"PostgreSQL {self.where} has no otp-agent schema (create it with: otp-agent init)"
                    )

                def record_version(version: int) -> None:
                    connection.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        (str(version),),
                    )
                    _log.info("PostgreSQL %s: schema migrated to version %d", self.where, version)

                apply_migrations(
                    connection.execute,
                    "postgresql",
                    current,
                    SCHEMA_VERSION,
                    record_version,
                    database=f"PostgreSQL {self.where}",
                )
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"PostgreSQL {self.where} cannot be used: {self._dsn.redact(exc)}"
            ) from None
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

    def _read(self, query: Any, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._calls.run("reading", lambda c: c.execute(query, parameters).fetchall(), write=False)

    def _write(self, what: str, query: Any, parameters: Sequence[Any], *, retry: bool = True) -> int:
        return self._calls.run(what, lambda c: c.execute(query, parameters).rowcount, write=True, retry=retry)

    # -- reads -----------------------------------------------------------------------------

    def get(self, serial: str) -> Token | None:
        rows = self._read(SELECT + " WHERE serial = %s", (serial,))
        return row_to_token(rows[0]) if rows else None

    def tokens_for_user(self, user: str) -> list[Token]:
        rows = self._read(SELECT + ' WHERE user_name = %s ORDER BY created, serial COLLATE "C"', (user,))
        return [row_to_token(row) for row in rows]

    def all_tokens(self) -> list[Token]:
        return [row_to_token(row) for row in self._read(SELECT + ' ORDER BY serial COLLATE "C"')]

    def existing_fingerprints(self, fingerprints: Iterable[bytes]) -> set[bytes]:
        wanted = [bytes(f) for f in fingerprints]
        found: set[bytes] = set()
        for start in range(0, len(wanted), _CHUNK):
            rows = self._read(
                "SELECT fingerprint FROM tokens WHERE fingerprint = ANY(%s)",
                (wanted[start : start + _CHUNK],),
            )
            found.update(bytes(row[0]) for row in rows)
        return found

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = %s", (key,))
        return str(rows[0][0]) if rows else None

    # -- writes ----------------------------------------------------------------------------

    def add_tokens(
        self, tokens: Sequence[Token], backup_codes: Mapping[str, Sequence[BackupCode]] | None = None
    ) -> None:
        now = time.time()
        rows = [token_to_row(token, now) for token in tokens]

        def insert(connection: _Connection) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                if rows:
                    cursor.executemany(_INSERT, rows)
                for user, codes in (backup_codes or {}).items():
                    _replace_backup_codes(cursor, user, codes)

        try:
            # Not retried: a commit whose answer was lost would come back as a false Conflict.
            self._calls.run(
                "adding tokens",
                insert,
                write=True,
                retry=False,
                deadline=self.answer_timeout + 0.001 * len(rows),
            )
        except Conflict:
            serial = self._first_conflict(tokens)
            if serial is None:
                raise
            raise Conflict(
                f"token {serial}: a token with this serial or this same secret already exists"
            ) from None

    def _first_conflict(self, tokens: Sequence[Token]) -> str | None:
        """Name the first token of a refused batch that clashes with the store or the batch."""
        serials = [t.serial for t in tokens]
        taken: set[str] = set()
        for start in range(0, len(serials), _CHUNK):
            taken.update(
                row[0]
                for row in self._read(
                    "SELECT serial FROM tokens WHERE serial = ANY(%s)", (serials[start : start + _CHUNK],)
                )
            )
        used = self.existing_fingerprints(t.fingerprint for t in tokens)
        for token in tokens:
            if token.serial in taken or token.fingerprint in used:
                return token.serial
            taken.add(token.serial)
            used.add(token.fingerprint)
        return None

    def remove_expired_pending(self, now: float) -> list[str]:
        def delete(connection: _Connection) -> list[str]:
            rows = connection.execute(DELETE_EXPIRED_PENDING + " RETURNING serial", (now,)).fetchall()
            return [str(row[0]) for row in rows]

        # Not retried: a lost answer would hide which tokens went; the next sweep is harmless.
        removed: list[str] = self._calls.run(
            "removing expired pending tokens", delete, write=True, retry=False
        )
        return removed

    def backup_codes(self, user: str) -> list[BackupCode]:
        return [row_to_backup_code(row) for row in self._read(SELECT_BACKUP, (user,))]

    def replace_backup_codes(self, user: str, codes: Sequence[BackupCode]) -> None:
        def replace(connection: _Connection) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                _replace_backup_codes(cursor, user, codes)

        self._calls.run(f"replacing the backup codes of {user}", replace, write=True)

    def use_backup_code(self, user: str, digest: bytes, now: float) -> bool:
        # Not retried: a use whose answer was lost must not come back as "already used".
        return self._write("using a backup code", USE_BACKUP, (now, user, digest), retry=False) == 1

    def compare_and_set(self, serial: str, expected_version: int, state: TokenState) -> bool:
        rowcount = self._write(
            f"committing token {serial}", STATE_UPDATE, state_parameters(serial, expected_version, state)
        )
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
        self._update_one(f"unlocking token {serial}", RESET_THROTTLING, (now, now, now, serial), serial)

    def remove(self, serial: str) -> None:
        # Not retried: a delete whose answer was lost would come back as a false NotFound.
        if (
            self._write(
                f"removing token {serial}", "DELETE FROM tokens WHERE serial = %s", (serial,), retry=False
            )
            != 1
        ):
            raise NotFound(f"no token with serial {serial}")

    def token_counts(self, now: float) -> list[tuple[str, str, int]]:
        return [
            (str(kind), str(state), int(count)) for kind, state, count in self._read(TOKEN_COUNTS, (now,))
        ]

    def remember(self, entry: Remembered) -> None:
        self._write(
            "remembering a host",
            REMEMBER,
            (entry.user, entry.rhost, entry.service, entry.until, entry.binding),
        )

    def remembered(self, user: str, rhost: str, service: str) -> Remembered | None:
        rows = self._read(SELECT_REMEMBERED, (user, rhost, service))
        return row_to_remembered(rows[0]) if rows else None

    def forget(self, user: str) -> int:
        return self._write("forgetting hosts", FORGET, (user,))

    def forget_expired(self, now: float) -> int:
        return self._write("forgetting hosts", FORGET_EXPIRED, (now,))

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "writing settings",
            "INSERT INTO meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )

    def claim_meta(self, key: str, value: str) -> str:
        """Write ``value`` under ``key`` unless a value is there already; return the stored one.

        Atomic across hosts: of several hosts claiming one key at once, all get the same value
        (for the key backend's check value: hosts with different master keys cannot both win).
        """

        def claim(connection: _Connection) -> str:
            inserted = _scalar(
                connection,
                (
                    "INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO NOTHING RETURNING value",
                    (key, value),
                ),
            )
            if inserted is not None:
                return str(inserted)
            return str(_scalar(connection, ("SELECT value FROM meta WHERE key = %s", (key,))))

        return self._calls.run("writing settings", claim, write=True)

    # -- health and lifecycle --------------------------------------------------------------

    def health(self) -> dict[str, object]:
        def probe(connection: _Connection) -> tuple[int, str | None, int]:
            count = int(_scalar(connection, "SELECT count(*) FROM tokens"))
            schema = _scalar(connection, "SELECT value FROM meta WHERE key = 'schema_version'")
            return count, schema, connection.info.server_version

        base: dict[str, object] = {"backend": self.name, "database": self.where}
        try:
            count, schema, server = self._calls.run("checking health", probe, write=False)
        except StoreError as exc:
            return {"ok": False, **base, "error": str(exc)}
        stats = self._pool.get_stats()
        return {
            "ok": True,
            **base,
            "server_version": f"{server // 10000}.{server % 10000}",
            "tokens": count,
            "schema_version": int(schema) if schema else None,
            "connections": stats.get("pool_size", 0),
            "idle": stats.get("pool_available", 0),
        }

    def close(self) -> None:
        self._pool.close(timeout=5.0)
        self._watchdog.close()


def _replace_backup_codes(cursor: Any, user: str, codes: Sequence[BackupCode]) -> None:
    cursor.execute(DELETE_BACKUP, (user,))
    if codes:
        cursor.executemany(INSERT_BACKUP, [backup_code_to_row(code) for code in codes])


def _scalar(connection: _Connection, query: Any) -> Any:
    """The first column of the first row of ``query`` (a string, or a (string, parameters) pair)."""
    text, parameters = query if isinstance(query, tuple) else (query, None)
    row = connection.execute(text, parameters).fetchone()
    return row[0] if row else None
