"""The SQLite store's group-commit writer.  The behaviour every store shares is tested once, over
SQLite and PostgreSQL, in tests/unit/test_store_contract.py."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from otp_agent.errors import StoreError, StoreUnavailable


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
