"""The SQLite token store: one host, WAL journal, durable commits, versioned schema.

Each reading thread gets its own connection; all writes go through one writing connection that
commits concurrent writes together (group commit, :mod:`otp_agent.store.groupcommit`) with
``synchronous = FULL`` before any caller returns, so an acceptance survives a crash or SIGKILL
the moment the agent answers, and many acceptances share one fsync.  Validation state changes in
one conditional ``UPDATE ... WHERE serial = ? AND version = ?`` (compare-and-set).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otp_agent.errors import Conflict, NotFound, StoreError, StoreUnavailable
from otp_agent.store.groupcommit import GroupCommitter
from otp_agent.store.migrate import apply_migrations
from otp_agent.store.models import BackupCode, Remembered, Token, TokenState
from otp_agent.store.rows import (
    ASSIGN,
    COLUMNS,
    DELETE_BACKUP,
    DELETE_EXPIRED_PENDING,
    EXPIRED_PENDING,
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

SCHEMA_VERSION = 6
_log = logging.getLogger(__name__)
#: What a damaged database can raise: sqlite3's errors, and UnicodeDecodeError when an error
#: message quotes a schema name that is not UTF-8.
_DATABASE_ERRORS = (sqlite3.Error, UnicodeDecodeError)
# The shared statements (store/rows.py) are written with psycopg's placeholders.
(
    _RESET_THROTTLING,
    _STATE_UPDATE,
    _ASSIGN,
    _SET_ENABLED,
    _SET_BINDING,
    _EXPIRED_PENDING,
    _DELETE_EXPIRED_PENDING,
    _SELECT_BACKUP,
    _INSERT_BACKUP,
    _DELETE_BACKUP,
    _USE_BACKUP,
    _REMEMBER,
    _SELECT_REMEMBERED,
    _FORGET,
    _FORGET_EXPIRED,
    _TOKEN_COUNTS,
) = (
    sql.replace("%s", "?")
    for sql in (
        RESET_THROTTLING,
        STATE_UPDATE,
        ASSIGN,
        SET_ENABLED,
        SET_BINDING,
        EXPIRED_PENDING,
        DELETE_EXPIRED_PENDING,
        SELECT_BACKUP,
        INSERT_BACKUP,
        DELETE_BACKUP,
        USE_BACKUP,
        REMEMBER,
        SELECT_REMEMBERED,
        FORGET,
        FORGET_EXPIRED,
        TOKEN_COUNTS,
    )
)


class SQLiteStore:
    """Token store in one SQLite file."""

    name = "sqlite"

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if not create and not path.exists():
            raise StoreUnavailable(f"database {path} does not exist (create it with: otp-agent init)")
        self._local = threading.local()
        self._file_lost = False
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if not create:
            self._require_schema()
        self._may_create = create
        self._migrate(create=create)
        self._identity = self._file_identity()
        self._may_create = False
        self._writer = GroupCommitter(self._open_connection, check=self.check_file)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- the file itself --------------------------------------------------------------------

    def _require_schema(self) -> None:
        """Refuse, without writing a byte, a file that holds no otp-agent schema.

        Opened read-only first: configuring the WAL journal on an empty file would already write
        a header into it.
        """
        try:
            probe = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
            try:
                found = probe.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                ).fetchone()
            finally:
                probe.close()
        except _DATABASE_ERRORS as exc:
            raise StoreUnavailable(f"database {self.path} cannot be used: {exc}") from exc
        if found is None:
            # An empty file (or one holding something else) must never become an empty store:
            # with unenrolled = "allow" that would let every enrolled user in.
            raise StoreUnavailable(
                f"database {self.path} has no otp-agent schema (empty, or not made by otp-agent); "
                "refusing to create one: only otp-agent init does that"
            )

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def check_file(self) -> None:
        """Refuse to go on when the path no longer names the database file the store opened.

        A database unlinked (or replaced) while the agent runs would otherwise keep taking
        acceptances into a file that is gone at the next start.  Checked before every write
        batch and by :meth:`health`.

        :raises StoreUnavailable: the file was deleted or replaced.
        """
        if self._file_identity() != self._identity:
            if not self._file_lost:
                self._file_lost = True
                _log.critical(
                    "database %s was deleted or replaced while the agent had it open: "
                    "every write is refused until the agent is restarted on a database",
                    self.path,
                )
            raise StoreUnavailable(
                f"database {self.path} was deleted or replaced while the agent "
                "had it open; refusing to write (restore it and restart the agent)"
            )

    # -- connections -----------------------------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        # Only the store being created may make the file: a connection opened later (a new
        # worker thread) must fail on a deleted database, not create an empty one in its place.
        mode = "rwc" if self._may_create else "rw"
        try:
            connection = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode={mode}",
                uri=True,
                isolation_level=None,
                timeout=5.0,
                check_same_thread=False,
            )
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA secure_delete = ON")
        except _DATABASE_ERRORS as exc:
            raise StoreUnavailable(f"database {self.path} cannot be opened: {exc}") from exc
        return connection

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._open_connection()
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: cannot start a transaction: {exc}") from exc
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        # A database deleted or replaced under the agent must not be read as "no tokens".
        self.check_file()
        try:
            return self._connection().execute(sql, parameters).fetchall()
        except _DATABASE_ERRORS as exc:
            raise StoreError(f"database {self.path}: read failed: {exc}") from exc

    def _migrate(self, *, create: bool) -> None:
        try:
            with self._transaction() as connection:
                has_meta = connection.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                ).fetchone()
                current = 0
                if has_meta:
                    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                    current = int(row[0]) if row else 0
                elif not create:
                    raise StoreUnavailable(
                        f"database {self.path} has no otp-agent schema; only otp-agent init creates one"
                    )
                apply_migrations(
                    connection.execute,
                    "sqlite",
                    current,
                    SCHEMA_VERSION,
                    lambda version: connection.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(version),),
                    ),
                    database=f"database {self.path}",
                )
        except _DATABASE_ERRORS as exc:
            raise StoreUnavailable(f"database {self.path} cannot be used: {exc}") from exc

    # -- reads -----------------------------------------------------------------------------

    def get(self, serial: str) -> Token | None:
        rows = self._read(SELECT + " WHERE serial = ?", (serial,))
        return row_to_token(rows[0]) if rows else None

    def tokens_for_user(self, user: str) -> list[Token]:
        rows = self._read(SELECT + " WHERE user_name = ? ORDER BY created, serial", (user,))
        return [row_to_token(row) for row in rows]

    def all_tokens(self) -> list[Token]:
        return [row_to_token(row) for row in self._read(SELECT + " ORDER BY serial")]

    def existing_fingerprints(self, fingerprints: Iterable[bytes]) -> set[bytes]:
        wanted = list(fingerprints)
        found: set[bytes] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = self._read(f"SELECT fingerprint FROM tokens WHERE fingerprint IN ({marks})", chunk)
            found.update(bytes(row[0]) for row in rows)
        return found

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    # -- writes ----------------------------------------------------------------------------

    def _write(self, what: str, action: Any) -> Any:
        try:
            return self._writer.submit(action)
        except sqlite3.IntegrityError:
            raise Conflict(f"{what}: a token with this serial or this same secret exists") from None
        except _DATABASE_ERRORS as exc:
            raise StoreError(f"database {self.path}: {what} failed, nothing was written: {exc}") from exc

    def add_tokens(
        self, tokens: Sequence[Token], backup_codes: Mapping[str, Sequence[BackupCode]] | None = None
    ) -> None:
        marks = ", ".join("?" * len(COLUMNS))
        sql = f"INSERT INTO tokens ({', '.join(COLUMNS)}) VALUES ({marks})"

        def insert(connection: sqlite3.Connection) -> None:
            for token in tokens:
                try:
                    connection.execute(sql, token_to_row(token))
                except sqlite3.IntegrityError:
                    raise Conflict(
                        f"token {token.serial}: a token with this serial or this same secret already exists"
                    ) from None
            for user, codes in (backup_codes or {}).items():
                _replace_backup_codes(connection, user, codes)

        self._write("adding tokens", insert)

    def remove_expired_pending(self, now: float) -> list[str]:
        def delete(connection: sqlite3.Connection) -> list[str]:
            serials = [str(row[0]) for row in connection.execute(_EXPIRED_PENDING, (now,))]
            connection.execute(_DELETE_EXPIRED_PENDING, (now,))
            return serials

        return list(self._write("removing expired pending tokens", delete))

    def backup_codes(self, user: str) -> list[BackupCode]:
        return [row_to_backup_code(row) for row in self._read(_SELECT_BACKUP, (user,))]

    def replace_backup_codes(self, user: str, codes: Sequence[BackupCode]) -> None:
        self._write(
            f"replacing the backup codes of {user}",
            lambda connection: _replace_backup_codes(connection, user, codes),
        )

    def use_backup_code(self, user: str, digest: bytes, now: float) -> bool:
        rowcount = self._write(
            "using a backup code",
            lambda connection: connection.execute(_USE_BACKUP, (now, user, digest)).rowcount,
        )
        return bool(rowcount == 1)

    def compare_and_set(self, serial: str, expected_version: int, state: TokenState) -> bool:
        parameters = state_parameters(serial, expected_version, state)
        rowcount = self._write(
            f"committing token {serial}",
            lambda connection: connection.execute(_STATE_UPDATE, parameters).rowcount,
        )
        return bool(rowcount == 1)

    def _update_one(self, what: str, sql: str, parameters: tuple[Any, ...], serial: str) -> None:
        if self._write(what, lambda connection: connection.execute(sql, parameters).rowcount) != 1:
            raise NotFound(f"no token with serial {serial}")

    def _updated(self, serial: str) -> Token:
        token = self.get(serial)
        if token is None:
            raise NotFound(f"no token with serial {serial}")
        return token

    def assign(self, serial: str, user: str | None, binding: bytes) -> Token:
        self._update_one(f"assigning token {serial}", _ASSIGN, (user, binding, serial), serial)
        return self._updated(serial)

    def set_enabled(self, serial: str, enabled: bool) -> Token:
        self._update_one(f"updating token {serial}", _SET_ENABLED, (bool(enabled), serial), serial)
        return self._updated(serial)

    def set_binding(self, serial: str, binding: bytes) -> None:
        self._update_one(f"binding token {serial}", _SET_BINDING, (binding, serial), serial)

    def reset_throttling(self, serial: str, now: float) -> None:
        self._update_one(f"unlocking token {serial}", _RESET_THROTTLING, (now, now, now, serial), serial)

    def remove(self, serial: str) -> None:
        def delete(connection: sqlite3.Connection) -> int:
            return connection.execute("DELETE FROM tokens WHERE serial = ?", (serial,)).rowcount

        if self._write(f"removing token {serial}", delete) != 1:
            raise NotFound(f"no token with serial {serial}")

    def token_counts(self, now: float) -> list[tuple[str, str, int]]:
        return [
            (str(kind), str(state), int(count)) for kind, state, count in self._read(_TOKEN_COUNTS, (now,))
        ]

    def remember(self, entry: Remembered) -> None:
        parameters = (entry.user, entry.rhost, entry.service, entry.until, entry.binding)
        self._write("remembering a host", lambda connection: connection.execute(_REMEMBER, parameters))

    def remembered(self, user: str, rhost: str, service: str) -> Remembered | None:
        rows = self._read(_SELECT_REMEMBERED, (user, rhost, service))
        return row_to_remembered(rows[0]) if rows else None

    def forget(self, user: str) -> int:
        return int(
            self._write("forgetting hosts", lambda connection: connection.execute(_FORGET, (user,)).rowcount)
        )

    def forget_expired(self, now: float) -> int:
        return int(
            self._write(
                "forgetting hosts", lambda connection: connection.execute(_FORGET_EXPIRED, (now,)).rowcount
            )
        )

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "writing settings",
            lambda c: c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)),
        )

    def claim_meta(self, key: str, value: str) -> str:
        def claim(connection: sqlite3.Connection) -> str:
            connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return str(connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

        return str(self._write("writing settings", claim))

    def health(self) -> dict[str, object]:
        try:
            self.check_file()
            count = self._read("SELECT count(*) FROM tokens")[0][0]
            self._read("PRAGMA quick_check(1)")
        except StoreError as exc:
            return {"ok": False, "backend": self.name, "path": str(self.path), "error": str(exc)}
        return {
            "ok": True,
            "backend": self.name,
            "path": str(self.path),
            "tokens": count,
            "schema_version": SCHEMA_VERSION,
        }

    def close(self) -> None:
        self._writer.close()
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()


def _replace_backup_codes(connection: sqlite3.Connection, user: str, codes: Sequence[BackupCode]) -> None:
    connection.execute(_DELETE_BACKUP, (user,))
    connection.executemany(_INSERT_BACKUP, [backup_code_to_row(code) for code in codes])
