"""The SQLite store: compare-and-set, all-or-nothing inserts, schema, errors, no secret in clear."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from otp_agent.errors import Conflict, NotFound, StoreError, StoreUnavailable
from otp_agent.oath import HashAlgorithm, TokenType
from otp_agent.store import Token
from otp_agent.store.sqlite import SCHEMA_VERSION, SQLiteStore


def token(serial: str, user: str | None = "alice", fingerprint: bytes | None = None) -> Token:
    return Token(serial=serial, token_type=TokenType.TOTP, algorithm=HashAlgorithm.SHA1, digits=6,
                 period=30, t0=0, sealed=b"sealed-" + serial.encode(),
                 fingerprint=fingerprint or serial.encode().ljust(32, b"."), user=user, created=1.0)


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="otp-agent init"):
        SQLiteStore(tmp_path / "absent.db")


def test_schema_version_recorded_and_reopen_is_idempotent(store: SQLiteStore) -> None:
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    SQLiteStore(store.path).close()
    assert store.health()["ok"] is True


def test_newer_schema_is_refused(store: SQLiteStore) -> None:
    store.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(StoreUnavailable, match="newer"):
        SQLiteStore(store.path)


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreUnavailable):
        SQLiteStore(path)


def test_add_is_all_or_nothing(store: SQLiteStore) -> None:
    store.add_tokens([token("A")])
    with pytest.raises(Conflict, match="B"):
        store.add_tokens([token("C"), token("B", fingerprint=b"A".ljust(32, b"."))])
    assert [t.serial for t in store.all_tokens()] == ["A"]


def test_compare_and_set_succeeds_once_per_version(store: SQLiteStore) -> None:
    store.add_tokens([token("A")])
    version = store.get("A").version  # type: ignore[union-attr]
    assert store.compare_and_set("A", version, {"last_step": 10}) is True
    assert store.compare_and_set("A", version, {"last_step": 11}) is False
    assert store.get("A").last_step == 10  # type: ignore[union-attr]


def test_compare_and_set_under_threads_has_one_winner(store: SQLiteStore) -> None:
    store.add_tokens([token("A")])
    version = store.get("A").version  # type: ignore[union-attr]
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt(step: int) -> None:
        barrier.wait()
        results.append(store.compare_and_set("A", version, {"last_step": step}))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1


def test_compare_and_set_refuses_non_state_fields(store: SQLiteStore) -> None:
    store.add_tokens([token("A")])
    with pytest.raises(ValueError):
        store.compare_and_set("A", 0, {"user_name": "mallory"})


def test_admin_changes_and_not_found(store: SQLiteStore) -> None:
    store.add_tokens([token("A", user=None)])
    assert store.update_admin_fields("A", {"user": "bob"}).user == "bob"
    assert store.update_admin_fields("A", {"enabled": False}).enabled is False
    with pytest.raises(NotFound):
        store.update_admin_fields("Z", {"enabled": True})
    with pytest.raises(NotFound):
        store.remove("Z")
    store.remove("A")
    assert store.get("A") is None


def test_write_to_read_only_database_is_a_store_error(store: SQLiteStore, tmp_path: Path) -> None:
    store.add_tokens([token("A")])
    store.close()
    read_only = SQLiteStore(store.path)
    read_only._writer.submit(lambda connection: connection.execute("PRAGMA query_only = ON"))
    with pytest.raises(StoreError, match="nothing was written"):
        read_only.compare_and_set("A", 0, {"last_step": 1})
    read_only._writer._connection.execute("PRAGMA query_only = OFF")  # type: ignore[union-attr]
    assert read_only.get("A").last_step is None  # type: ignore[union-attr]


def test_existing_fingerprints(store: SQLiteStore) -> None:
    store.add_tokens([token("A"), token("B")])
    found = store.existing_fingerprints([b"A".ljust(32, b"."), b"zzz"])
    assert found == {b"A".ljust(32, b".")}


def test_sqlite_file_is_wal_and_synchronous_full(store: SQLiteStore) -> None:
    connection = store._connection()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert sqlite3.connect(store.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_claim_meta_keeps_the_first_value(store: SQLiteStore) -> None:
    assert store.claim_meta("check", "aaaa") == "aaaa"
    assert store.claim_meta("check", "bbbb") == "aaaa"
    assert store.get_meta("check") == "aaaa"


def test_writer_that_cannot_open_its_connection_fails_the_write_and_recovers(tmp_path: Path) -> None:
    """The store's connect raises StoreUnavailable (e.g. no file descriptor left): the writes
    waiting on it must fail (closed) at once, not wait forever on a dead writer thread."""
    from otp_agent.store.groupcommit import GroupCommitter

    attempts: list[int] = []

    def connect() -> sqlite3.Connection:
        attempts.append(1)
        if len(attempts) == 1:
            raise StoreUnavailable("database cannot be opened: unable to open database file")
        return sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)

    writer = GroupCommitter(connect)
    outcomes: list[object] = []

    def write() -> None:
        try:
            outcomes.append(writer.submit(lambda c: c.execute("SELECT 1").fetchone()[0]))
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            outcomes.append(exc)

    for _ in range(2):
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        thread.join(5)
        assert not thread.is_alive(), "a write waited forever on a dead writer thread"
    assert isinstance(outcomes[0], StoreError)
    assert outcomes[1] == 1
    writer.close()
