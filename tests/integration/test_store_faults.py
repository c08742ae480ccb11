"""A full disk at commit time, through the real daemon on a real tmpfs.

(A read-only database at commit time is covered by tests/unit/test_store_contract.py, "a write the
store refuses": Linux refuses to remount a filesystem read-only while the agent holds its database
open for writing.)

The code is rejected with a clear reason, nothing is half-written, other clients keep being
served, and once space (or write access) is back the same code is accepted: it was not consumed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.testing import RunningAgent, code_for_uri, running_agent
from tests.conftest import tmpfs
from tests.integration.agentclient import request


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "4m") as mount_point:
        yield mount_point


@pytest.fixture
def agent_on_small_fs(small_filesystem: Path, tmp_path: Path) -> Iterator[RunningAgent]:
    with running_agent(
        tmp_path / "agent",
        sections={"store": {"path": str(small_filesystem / "tokens.db")}},
        policy={"totp_window": 2},
    ) as agent:
        yield agent


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    # Unbuffered: a buffered file would try the refused bytes again when closed, and raise there.
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_full_disk_at_commit(agent_on_small_fs: RunningAgent, small_filesystem: Path) -> None:
    agent = agent_on_small_fs
    _serial, uri = agent.enroll("alice", "--type", "hotp")
    for i in range(200):  # Grow the WAL so the next commit must allocate.
        request(agent.socket_path, "enroll", user=f"padding{i}")
    filler = _fill(small_filesystem)
    submitted = agent.code_for(uri)
    try:
        reply = request(agent.socket_path, "validate", user="alice", code=submitted)
        assert (reply["result"], reply["reason"]) == ("reject", "store")
        assert request(agent.socket_path, "ping")["ok"] is True
        assert "nothing was written" in agent.log()
    finally:
        filler.unlink()
    reply = request(agent.socket_path, "validate", user="alice", code=submitted)
    assert reply["result"] == "accept"
    assert request(agent.socket_path, "validate", user="alice", code=submitted)["reason"] == "replay"


def test_a_deleted_database_fails_closed_and_status_says_so(tmp_path: Path) -> None:
    """tokens.db unlinked while the agent runs: no acceptance goes into the vanished file, the
    status fails and the log says why (before: thousands of acceptances, all lost at restart)."""
    with running_agent(tmp_path / "agent", policy={"hotp_lookahead": 20}) as agent:
        _serial, uri = agent.enroll("alice", "--type", "hotp")
        assert (
            request(agent.socket_path, "validate", user="alice", code=code_for_uri(uri, counter=0))["result"]
            == "accept"
        )
        database = tmp_path / "agent" / "tokens.db"
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            path.unlink(missing_ok=True)
        reply = request(agent.socket_path, "validate", user="alice", code=code_for_uri(uri, counter=1))
        assert (reply["result"], reply["reason"]) == ("reject", "store_unavailable")
        status = request(agent.socket_path, "status")
        assert status["store"]["ok"] is False and "deleted or replaced" in status["store"]["error"]
        assert agent.otpctl("status").returncode == 4
        assert "deleted or replaced" in agent.log()


def test_an_empty_database_file_never_becomes_an_empty_store(tmp_path: Path) -> None:
    """A 0-byte tokens.db (no WAL): the daemon and --check-config refuse it and leave it empty;
    with unenrolled = "allow" a fresh schema would have let every enrolled user in."""
    directory = tmp_path / "agent"
    with running_agent(directory, policy={"unenrolled": "allow"}) as agent:
        agent.enroll("alice")
        config = agent.config_path
    database = directory / "tokens.db"
    database.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    for command in (["--check-config"], []):
        result = subprocess.run(
            [sys.executable, "-m", "otp_agent.daemon", "--config", str(config), *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 4, result.stderr
        assert "no otp-agent schema" in result.stderr
        assert database.stat().st_size == 0
    # A database made by someone else's sqlite3 (a schema, but not bound by init) is refused too.
    database.unlink()
    import sqlite3

    from otp_agent.store.migrate import migration_script

    with sqlite3.connect(database) as connection:
        connection.executescript(migration_script("sqlite", 1))
        connection.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    result = subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4 and "not bound to a key backend" in result.stderr, result.stderr


def test_out_of_range_integers_get_a_clear_error_and_a_counter_at_its_end_is_refused(tmp_path: Path) -> None:
    """Before: importing t0 = 2**70, or validating a token imported at counter 2^63-1, closed the
    connection unanswered (OverflowError).  Every integer is bounded at the edge."""
    import base64

    with running_agent(tmp_path / "agent") as agent:
        secret = base64.b64encode(b"k" * 20).decode()
        for field, value in (
            ("t0", 2**70),
            ("counter", 2**64),
            ("period", 2**70),
            ("digits", 2**70),
            ("drift", -(2**70)),
            ("counter", -1),
        ):
            record = {
                "serial": "BIG1",
                "type": "totp" if field != "counter" else "hotp",
                "secret_b64": secret,
                "user": "alice",
                field: value,
            }
            reply = request(agent.socket_path, "import", tokens=[record])
            assert reply["ok"] is False and reply["error"]["code"] == "pskc", (field, reply)
        last = {"serial": "END1", "type": "hotp", "secret_b64": secret, "user": "alice", "counter": 2**63 - 1}
        assert request(agent.socket_path, "import", tokens=[last])["ok"] is True
        uri = f"otpauth://hotp/x?secret={base64.b32encode(b'k' * 20).decode()}&counter=0"
        for counter in (2**63 - 2, 2**63 - 1):
            reply = request(
                agent.socket_path, "validate", user="alice", code=code_for_uri(uri, counter=counter)
            )
            assert (reply["ok"], reply["result"]) == (True, "reject"), reply
        assert "exhausted its counter" in agent.log()
        assert request(agent.socket_path, "ping")["ok"] is True


def test_init_does_not_turn_an_emptied_database_into_an_empty_store(tmp_path: Path) -> None:
    """The packages run init on every upgrade: a 0-byte tokens.db must stay refused."""
    directory = tmp_path / "agent"
    with running_agent(directory) as agent:
        agent.enroll("alice")
        config = agent.config_path
    database = directory / "tokens.db"
    database.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4 and "no otp-agent schema" in result.stderr, result.stderr
    assert database.stat().st_size == 0
