"""The SQLite store's group-commit writer.  The behaviour every store shares is tested once, over
SQLite and PostgreSQL, in tests/unit/test_store_contract.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from otp_agent.errors import StoreError, StoreUnavailable


def test_writer_that_cannot_open_its_connection_fails_the_write_and_recovers(tmp_path: Path) -> None:
    """The store's connect raises StoreUnavailable (e.g. no file descriptor left): the writes
    waiting on it must fail (closed) at once, not wait forever on a writer that never recovers."""
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
        assert not thread.is_alive(), "a write waited forever on a writer that could not connect"
    assert isinstance(outcomes[0], StoreError)
    assert outcomes[1] == 1
    writer.close()


def _table(tmp_path: Path) -> tuple[list[str], Callable[[], sqlite3.Connection]]:
    """A connect function over a fresh table, and the list of statements it runs (traced)."""
    statements: list[str] = []

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
        connection.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
        connection.set_trace_callback(statements.append)
        return connection

    return statements, connect


def _rows(tmp_path: Path) -> list[int]:
    with sqlite3.connect(tmp_path / "w.db") as connection:
        return [n for (n,) in connection.execute("SELECT n FROM t ORDER BY n")]


def test_concurrent_writers_share_commits_and_every_write_is_kept(tmp_path: Path) -> None:
    """32 threads writing at once: each gets its own result, every row is committed, and the
    writes share transactions (fewer COMMITs than writes) although no thread is the writer's."""
    from otp_agent.store.groupcommit import GroupCommitter

    statements, connect = _table(tmp_path)
    writer = GroupCommitter(connect)
    start = threading.Barrier(32)
    results: dict[int, object] = {}

    def write(number: int) -> None:
        start.wait()
        for offset in range(10):
            value = number * 100 + offset

            def insert(connection: sqlite3.Connection, value: int = value) -> object:
                return connection.execute("INSERT INTO t VALUES (?)", (value,)).lastrowid

            results[value] = writer.submit(insert)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    writer.close()
    assert sorted(results) == _rows(tmp_path)
    assert all(results[v] == v for v in results)
    commits = statements.count("COMMIT")
    assert 0 < commits < len(results), (commits, len(results))


def test_a_failing_write_is_rolled_back_alone(tmp_path: Path) -> None:
    """In a batch of several, the failing action's SAVEPOINT is rolled back and the others
    commit; a failing write alone leaves nothing behind either, and the next write succeeds."""
    from otp_agent.store.groupcommit import GroupCommitter

    _statements, connect = _table(tmp_path)
    writer = GroupCommitter(connect)
    start = threading.Barrier(8)
    outcomes: list[object] = []

    def insert(value: int) -> None:
        start.wait()
        try:
            # Every value twice: one of each pair fails on the primary key.
            outcomes.append(writer.submit(lambda c: c.execute("INSERT INTO t VALUES (?)", (value,)).rowcount))
        except sqlite3.IntegrityError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=insert, args=(n // 2,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert _rows(tmp_path) == [0, 1, 2, 3]
    assert sum(isinstance(o, sqlite3.IntegrityError) for o in outcomes) == 4
    with pytest.raises(sqlite3.IntegrityError):  # a duplicate key, alone in its batch
        writer.submit(lambda c: c.execute("INSERT INTO t VALUES (0)"))
    assert writer.submit(lambda c: c.execute("INSERT INTO t VALUES (9)").rowcount) == 1
    writer.close()
    assert _rows(tmp_path) == [0, 1, 2, 3, 9]


def test_close_lets_writes_in_flight_finish_and_refuses_later_ones(tmp_path: Path) -> None:
    from otp_agent.store.groupcommit import GroupCommitter

    _statements, connect = _table(tmp_path)
    writer = GroupCommitter(connect)
    entered, release = threading.Event(), threading.Event()

    def slow(connection: sqlite3.Connection) -> int:
        entered.set()
        release.wait(10)
        return int(connection.execute("INSERT INTO t VALUES (1)").rowcount)

    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(writer.submit(slow)))
    thread.start()
    assert entered.wait(10)
    closer = threading.Thread(target=writer.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() returned while a write was in flight"
    release.set()
    closer.join(10)
    thread.join(10)
    assert outcome == [1]
    assert _rows(tmp_path) == [1]
    with pytest.raises(sqlite3.OperationalError, match="closed"):
        writer.submit(lambda c: c.execute("INSERT INTO t VALUES (2)"))
