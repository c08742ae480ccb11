"""A full disk at commit time, through the real daemon on a real tmpfs.

(A read-only database at commit time is covered by tests/unit/test_store_contract.py, "a write the
store refuses": Linux refuses to remount a filesystem read-only while the agent holds its database
open for writing.)

The code is rejected with a clear reason, nothing is half-written, other clients keep being
served, and once space (or write access) is back the same code is accepted: it was not consumed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.testing import RunningAgent, running_agent
from tests.conftest import require
from tests.integration.agentclient import request


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def agent_on_small_fs(small_filesystem: Path, tmp_path: Path) -> Iterator[RunningAgent]:
    with running_agent(tmp_path / "agent", sections={"store": {"path": str(small_filesystem / "tokens.db")}},
                       policy={"totp_window": 2}) as agent:
        yield agent


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
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
