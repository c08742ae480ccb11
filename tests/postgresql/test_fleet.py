"""Two real daemons sharing one PostgreSQL database (and one master key), as two hosts would.

A code is accepted exactly once across the fleet, however the submissions are split between the
daemons; an acceptance survives SIGKILL of the daemon that made it; a store that cannot be reached
makes validation fail closed while the daemon keeps answering.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from otp_agent.testing import RunningAgent, code_for_uri, default_sections, running_agent, write_config
from tests.integration.agentclient import request
from tests.postgresql.support import TcpProxy, dsn_for

POLICY = {"lock_threshold": 50}
PASSWORD = "fleet-Pa55word"


def _database_of(dsn: str) -> str:
    return dsn.rsplit("dbname=", 1)[-1].split()[0]


def _sections(dsn: str, master_key: Path | None = None) -> dict[str, dict[str, object]]:
    sections: dict[str, dict[str, object]] = {"store": {"backend": "postgresql", "dsn": dsn}}
    if master_key is not None:
        sections["keystore"] = {"master_key_file": str(master_key)}
    return sections


@pytest.fixture
def fleet(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[RunningAgent, RunningAgent]]:
    """Daemons A and B on one database; B reads A's master key file."""
    with ExitStack() as stack:
        first = stack.enter_context(running_agent(tmp_path / "a", policy=POLICY, sections=_sections(pg_dsn)))
        second = stack.enter_context(
            running_agent(
                tmp_path / "b",
                policy=POLICY,
                sections=_sections(pg_dsn, master_key=first.directory / "master.key"),
            )
        )
        yield first, second


def test_one_code_split_across_two_daemons_is_accepted_once(fleet: tuple[RunningAgent, RunningAgent]) -> None:
    """16 clients, half on each daemon, race with one HOTP code; 10 rounds: one acceptance each."""
    first, second = fleet
    _serial, uri = first.enroll("alice", "--type", "hotp")
    for counter in range(10):
        submitted = code_for_uri(uri, counter=counter)
        barrier = threading.Barrier(16)
        results: list[tuple[str, str]] = []
        lock = threading.Lock()

        def submit(agent: RunningAgent) -> None:
            barrier.wait()
            reply = request(agent.socket_path, "validate", user="alice", code=submitted)
            with lock:
                results.append((reply["result"], reply["reason"]))

        threads = [threading.Thread(target=submit, args=(fleet[i % 2],)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 16
        assert [r for r, _ in results].count("accept") == 1, (counter, results)
        assert {reason for _, reason in results} <= {"accepted", "replay"}, results


def test_acceptance_survives_sigkill_and_is_a_replay_on_the_other_daemon(
    fleet: tuple[RunningAgent, RunningAgent],
) -> None:
    """Accepted by A, A killed at once: B refuses the same code as a replay."""
    first, second = fleet
    _serial, uri = second.enroll("dave")
    submitted = code_for_uri(uri)
    assert request(first.socket_path, "validate", user="dave", code=submitted)["result"] == "accept"
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    reply = request(second.socket_path, "validate", user="dave", code=submitted)
    assert (reply["result"], reply["reason"]) == ("reject", "replay")


def test_tokens_enrolled_on_one_host_are_administered_on_the_other(
    fleet: tuple[RunningAgent, RunningAgent],
) -> None:
    """A token enrolled through A and disabled through B is disabled for A; status names the server."""
    first, second = fleet
    serial, uri = first.enroll("erin")
    assert second.otpctl("disable", serial).returncode == 0
    reply = request(first.socket_path, "validate", user="erin", code=code_for_uri(uri))
    assert (reply["result"], reply["reason"]) == ("reject", "disabled")
    status = second.otpctl("status", "--json")
    assert '"postgresql"' in status.stdout and '"server_version"' in status.stdout


def test_unreachable_store_fails_closed_and_the_daemon_keeps_answering(pg_dsn: str, tmp_path: Path) -> None:
    """The link to PostgreSQL is cut: rejected with a store reason, pings answered; once the link
    is back the same code is accepted (it was not consumed), then it is a replay."""
    proxy = TcpProxy()
    try:
        dsn = dsn_for(_database_of(pg_dsn), port=proxy.port, password=PASSWORD)
        with running_agent(tmp_path / "a", policy=POLICY, sections=_sections(dsn)) as agent:
            _serial, uri = agent.enroll("alice", "--type", "hotp")
            submitted = code_for_uri(uri, counter=0)
            proxy.cut()
            for _ in range(3):
                reply = request(agent.socket_path, "validate", user="alice", code=submitted)
                assert reply["result"] == "reject", reply
                assert reply["reason"] in ("store_unavailable", "store"), reply
                assert request(agent.socket_path, "ping")["ok"] is True
            status = agent.otpctl("status", "--json")
            assert '"ok": false' in status.stdout.replace("\n", " ") or status.returncode != 0
            assert PASSWORD not in status.stdout + status.stderr
            proxy.restore()
            for _ in range(20):
                reply = request(agent.socket_path, "validate", user="alice", code=submitted)
                if reply["reason"] not in ("store_unavailable", "store"):
                    break
            assert reply["result"] == "accept", reply
            reply = request(agent.socket_path, "validate", user="alice", code=submitted)
            assert reply["reason"] == "replay"
            assert PASSWORD not in agent.log() and "connection" in agent.log()
    finally:
        proxy.cut()


def _start(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_daemon_does_not_start_without_a_usable_database(pg_dsn: str, tmp_path: Path) -> None:
    """Unreachable server, then an uninitialised database: exit 4, clear message, no password."""
    from otp_agent.keystore.software import create_master_key

    sections = default_sections(tmp_path)
    create_master_key(tmp_path / "master.key")
    sections["store"] = {"backend": "postgresql", "dsn": f"postgresql://otp:{PASSWORD}@127.0.0.1:1/otp"}
    result = _start(write_config(tmp_path, sections))
    assert result.returncode == 4 and "cannot be reached" in result.stderr, result.stderr
    assert PASSWORD not in result.stderr
    sections["store"]["dsn"] = dsn_for(_database_of(pg_dsn), password=PASSWORD)
    result = _start(write_config(tmp_path, sections))
    assert result.returncode == 4 and "otp-agent init" in result.stderr, result.stderr
    assert PASSWORD not in result.stderr


def test_a_host_with_another_master_key_is_refused(
    fleet: tuple[RunningAgent, RunningAgent], pg_dsn: str, tmp_path: Path
) -> None:
    """A third host generated its own master key: it refuses to start on the fleet's database."""
    from otp_agent.keystore.software import create_master_key

    directory = tmp_path / "c"
    directory.mkdir()
    create_master_key(directory / "master.key")
    sections = default_sections(directory)
    sections["store"] = {"backend": "postgresql", "dsn": pg_dsn}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "otp_agent.daemon",
            "--check-config",
            "--config",
            str(write_config(directory, sections)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4 and "does not match" in result.stderr, result.stderr
