"""``[agent] validator_group`` with a real agent and real processes running as a non-root uid:
a member validates any user's code (an application), but administers nothing; a non-member
names only itself.  Needs root (groupadd, setuid); under CI=true it fails rather than skips."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from otp_agent.client import AgentClient
from otp_agent.testing import RunningAgent, running_agent
from tests.conftest import require
from tests.integration.agentclient import request


@pytest.fixture
def validator_group() -> Iterator[grp.struct_group]:
    """A group created for the test (and removed after it)."""
    require(os.geteuid() == 0, "needs root to create a group and act as another uid")
    require(shutil.which("groupadd") is not None, "groupadd not installed")
    name = f"otpval{os.getpid() % 100000}"
    subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=60)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=True, capture_output=True, timeout=60)


@pytest.fixture
def validating_agent(agent_directory: Path, validator_group: grp.struct_group) -> Iterator[RunningAgent]:
    with running_agent(
        agent_directory, sections={"agent": {"validator_group": validator_group.gr_name}}
    ) as agent:
        yield agent


def as_process(uid: int, gid: int, groups: list[int], work: Callable[[], Any]) -> Any:
    """Run ``work`` in a child process with these credentials; return its JSON-able result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                result = work()
            except Exception as exc:
                result = {"exception": type(exc).__name__, "message": str(exc)}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def requests(socket_path: Path, *calls: tuple[str, dict[str, Any]]) -> Callable[[], list[dict[str, Any]]]:
    """Work for :func:`as_process`: raw requests, their replies."""
    return lambda: [request(socket_path, op, **fields) for op, fields in calls]


def error_code(reply: dict[str, Any]) -> str | None:
    return reply["error"]["code"] if not reply["ok"] else None


def test_a_member_validates_another_users_code_but_cannot_administer(
    validating_agent: RunningAgent, validator_group: grp.struct_group
) -> None:
    agent = validating_agent
    serial, uri = agent.enroll("alice")
    nobody = pwd.getpwnam("nobody")
    member = (nobody.pw_uid, nobody.pw_gid, [validator_group.gr_gid])

    def validate_with_the_client() -> dict[str, Any]:
        with AgentClient(agent.socket_path, timeout=10) as client:
            result = client.validate("alice", agent.code_for(uri), service="webapp", rhost="192.0.2.9")
            return {"result": asdict(result), "enrolled": client.enrolled("alice")}

    outcome = as_process(*member, validate_with_the_client)
    assert outcome == {"result": {"accepted": True, "reason": "accepted", "serial": serial}, "enrolled": True}

    code = agent.code_for(uri)
    admin = as_process(
        *member,
        requests(
            agent.socket_path,
            ("list", {}),
            ("enroll", {"user": "mallory"}),
            ("check", {"user": "alice", "code": code}),
            ("unlock", {"target": "alice"}),
            ("status", {}),
        ),
    )
    assert [error_code(reply) for reply in admin] == ["permission"] * 5
    # "send" is a validator operation: never refused for permission (the daemon may not have it yet).
    (send,) = as_process(*member, requests(agent.socket_path, ("send", {"user": "alice"})))
    assert error_code(send) != "permission"


def test_membership_by_primary_group_counts_too(
    validating_agent: RunningAgent, validator_group: grp.struct_group
) -> None:
    agent = validating_agent
    _serial, uri = agent.enroll("alice")
    nobody = pwd.getpwnam("nobody")
    code = agent.code_for(uri)
    (accepted, replay) = as_process(
        nobody.pw_uid,
        validator_group.gr_gid,
        [],
        requests(
            agent.socket_path,
            ("validate", {"user": "alice", "code": code}),
            ("validate", {"user": "alice", "code": code}),
        ),
    )
    assert (accepted["result"], replay["reason"]) == ("accept", "replay")


def test_a_non_member_is_refused_for_other_users(
    validating_agent: RunningAgent, validator_group: grp.struct_group
) -> None:
    agent = validating_agent
    _serial, uri = agent.enroll("alice")
    nobody = pwd.getpwnam("nobody")
    replies = as_process(
        nobody.pw_uid,
        nobody.pw_gid,
        [],
        requests(
            agent.socket_path,
            ("validate", {"user": "alice", "code": agent.code_for(uri)}),
            ("enrolled", {"user": "alice"}),
            ("send", {"user": "alice"}),
            ("validate", {"user": "nobody", "code": "123456"}),
        ),
    )
    assert [error_code(reply) for reply in replies] == ["permission", "permission", "permission", None]
    assert replies[3]["reason"] == "no_token"

    def validate_with_the_client() -> dict[str, Any]:
        with AgentClient(agent.socket_path, timeout=10) as client:
            return asdict(client.validate("alice", agent.code_for(uri)))

    refused = as_process(nobody.pw_uid, nobody.pw_gid, [], validate_with_the_client)
    assert refused["exception"] == "PermissionDenied"
    # Refused for permission, alice's code was never tried: root may still use it.
    assert (
        request(agent.socket_path, "validate", user="alice", code=agent.code_for(uri))["result"] == "accept"
    )
