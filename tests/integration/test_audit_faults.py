"""Decisions never go unaudited silently: the audit file on a full filesystem.

Before: with the audit filesystem full, 2,308 acceptances left no line, one line was cut
mid-JSON, and the agent logged only "cannot be written".  Now a failing write is cut back to a
whole line and kept for later, the journal gets a critical message, ``status`` fails, lines that
overflow the memory buffer are counted as lost, and ``audit.on_failure = "reject"`` refuses
decisions while the file cannot be written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.audit import AuditLog, RequestContext
from otp_agent.testing import code_for_uri, running_agent
from tests.conftest import tmpfs
from tests.integration.agentclient import request


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "64k") as mount_point:
        yield mount_point


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def _lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "a partial line was left in the audit file"
    return [json.loads(line) for line in text.splitlines()]


def _wait(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["continue", "reject"])
def test_full_audit_filesystem(small_filesystem: Path, tmp_path: Path, mode: str) -> None:
    audit_path = small_filesystem / "audit.log"
    with running_agent(
        tmp_path / "agent",
        policy={"hotp_lookahead": 100},
        sections={"audit": {"path": str(audit_path), "on_failure": mode}},
    ) as agent:
        _serial, uri = agent.enroll("alice", "--type", "hotp")
        filler = _fill(small_filesystem)
        decisions = []
        try:
            for counter in range(40):  # ~200 bytes a line: more than the space left
                decisions.append(
                    request(
                        agent.socket_path, "validate", user="alice", code=code_for_uri(uri, counter=counter)
                    )
                )
                time.sleep(0.02)
            assert _wait(lambda: request(agent.socket_path, "status")["audit"]["ok"] is False)
            status = request(agent.socket_path, "status")
            assert "cannot be written" in status["audit"]["error"]
            assert agent.otpctl("status").returncode == 4
            assert "CRITICAL" in agent.log() and "cannot be written" in agent.log()
            _lines(audit_path)  # whole lines only, even now
            if mode == "reject":
                late = request(
                    agent.socket_path, "validate", user="alice", code=code_for_uri(uri, counter=60)
                )
                assert (late["result"], late["reason"]) == ("reject", "audit_unavailable")
        finally:
            filler.unlink()
        # Space is back: every kept line reaches the file, none is lost.
        assert _wait(lambda: request(agent.socket_path, "status")["audit"]["ok"] is True)
        accepted = sum(1 for d in decisions if d["result"] == "accept")
        events = [e for e in _lines(audit_path) if e["event"] == "validate"]
        assert sum(1 for e in events if e["result"] == "accept") == accepted
        assert len(events) >= len(decisions)
        if mode == "continue":
            assert accepted == len(decisions)


def test_lines_beyond_the_buffer_are_counted_as_lost(small_filesystem: Path) -> None:
    audit = AuditLog(small_filesystem / "audit.log", max_pending=5)
    filler = _fill(small_filesystem)
    try:
        for index in range(40):
            audit.record(
                "validate", RequestContext(0, 1), user=f"user{index:04d}" + "x" * 200, result="accept"
            )
        with pytest.raises(OSError):
            audit.flush()
        health = audit.health()
        assert health["ok"] is False and health["lost"] == 35 and health["pending"] == 5
    finally:
        filler.unlink()
    audit.flush()
    assert [str(e["user"])[:8] for e in _lines(small_filesystem / "audit.log")][-5:] == [
        f"user{i:04d}" for i in range(35, 40)
    ]
    assert audit.health()["ok"] is False  # lost lines stay reported until the agent restarts
    audit.close()
