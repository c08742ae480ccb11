"""Backup codes and self-service through the real Linux-PAM stacks and the real agent.

The agent runs on the payShield backend against the simulator over TLS, so that "the HSM is
down" is real: the simulator is stopped.  The stacks are contrib/pam.d's, installed under test
service names; self-service runs the real ``otpctl`` as an unprivileged local user.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otp_agent.testing import RunningAgent, code_for_uri, running_agent
from tests.integration.test_payshield_agent import _payshield_table
from tests.pam.support import (
    REPO,
    LocalUser,
    local_user,
    make_wrapper,
    pam_service,
    pam_transaction,
    password_service,
    render_stack,
    require_root,
)

simulator_testing = pytest.importorskip("otp_agent.payshield_sim.testing")
PAM_SUCCESS, PAM_AUTH_ERR = 0, 7
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class Stacks:
    agent: RunningAgent
    simulator: Any
    sshd: str
    login: str


def _base_and_helper(open_dir: Path, request: pytest.FixtureRequest, prefix: str) -> tuple[Path, str]:
    """A directory other users can traverse, and the helper command pointed at its agent."""
    require_root()
    base = open_dir / f"{prefix}-{request.node.name[:30]}"
    base.mkdir()
    base.chmod(0o755)
    return base, f"{make_wrapper(base)} --socket {base / 'agent' / 'agent.sock'}"


@pytest.fixture
def stacks(open_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stacks]:
    base, helper = _base_and_helper(open_dir, request, "recovery")
    with (
        simulator_testing.running_simulator() as simulator,
        password_service() as password_name,
    ):
        sections = {
            "keystore": {"backend": "payshield", "payshield": _payshield_table(simulator, base / "agent")}
        }
        policy = {"lock_threshold": 3, "password_service": password_name}
        with (
            running_agent(base / "agent", sections=sections, policy=policy) as agent,
            pam_service(render_stack("sshd", helper), prefix="otp-test-recovery-sshd") as sshd,
            pam_service(render_stack("login", helper), prefix="otp-test-recovery-login") as login,
        ):
            yield Stacks(agent, simulator, sshd, login)


def _backup_codes(agent: RunningAgent, user: str, count: int = 3) -> list[str]:
    result = agent.otpctl("backup-codes", user, "--count", str(count), "--json", check=True)
    reply = json.loads(result.stdout)
    assert set(reply) == {"codes", "serials"}
    return list(reply["codes"])


def _remaining(agent: RunningAgent, user: str) -> int:
    return int(json.loads(agent.otpctl("show", user, "--json", check=True).stdout)["backup_codes_remaining"])


def test_backup_codes_through_pam_once_each_and_while_the_hsm_is_down(stacks: Stacks, open_dir: Path) -> None:
    agent = stacks.agent
    with local_user(open_dir / "homes-recovery") as user:
        _serial, uri = agent.enroll(user.name, "--type", "hotp")
        codes = _backup_codes(agent, user.name)
        assert _remaining(agent, user.name) == 3
        # Code only (the sshd stack), typed as printed:
        assert pam_transaction(stacks.sshd, user.name, [codes[0]]).authenticate == PAM_SUCCESS
        assert pam_transaction(stacks.sshd, user.name, [codes[0]]).authenticate == PAM_AUTH_ERR
        # Password then code (the login stack), typed in capitals without separators:
        answer = user.password + codes[1].replace("-", "").upper()
        assert pam_transaction(stacks.login, user.name, [answer]).authenticate == PAM_SUCCESS
        assert _remaining(agent, user.name) == 1
        # The HSM goes away: token codes fail closed, the last backup code still lets the user in.
        stacks.simulator.stop()
        assert (
            pam_transaction(stacks.sshd, user.name, [code_for_uri(uri, counter=0)]).authenticate
            == PAM_AUTH_ERR
        )
        assert pam_transaction(stacks.sshd, user.name, [codes[2]]).authenticate == PAM_SUCCESS
        assert _remaining(agent, user.name) == 0
        agent.stop()
        _assert_nowhere(agent, codes)
    log = agent.log_path.read_text(encoding="utf-8")
    assert "backup_code" in (agent.directory / "audit.log").read_text() or "backup_code" in log


def _assert_nowhere(agent: RunningAgent, codes: list[str]) -> None:
    """No backup code, in any spelling, in any file of the agent (database, WAL, logs)."""
    spellings = {form for code in codes for form in (code, code.replace("-", ""), code.upper())}
    found = []
    for path in agent.directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [(path.name, s) for s in spellings if s.encode() in data]
    assert not found, f"backup codes in clear: {found}"
    audit = (agent.directory / "audit.log").read_text()
    assert audit.count('"reason":"backup_code"') == 3 and '"backup_codes_remaining":0' in audit


def _as_user(
    user: LocalUser, agent: RunningAgent, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real otpctl as ``user``, knowing only the socket (agent.toml is not readable to it).

    Debian's python3 runs it, as for any user of the machine (the test's interpreter may live
    where other users cannot read).
    """
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(user.home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "otp_agent.cli", "--socket", str(agent.socket_path), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        cwd="/",
    )


@pytest.fixture
def self_service_agent(
    open_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[RunningAgent, str, Path]]:
    base, helper = _base_and_helper(open_dir, request, "self")
    policy = {"self_enroll": request.param, "self_service": True}
    with (
        running_agent(base / "agent", policy=policy, sections={"agent": {"socket_mode": 0o666}}) as agent,
        pam_service(render_stack("sshd", helper), prefix="otp-test-self-sshd") as sshd,
    ):
        os.chmod(agent.config_path, 0o600)
        yield agent, sshd, base


@pytest.mark.parametrize("self_service_agent", ["first"], indirect=True)
def test_an_unprivileged_user_enrolls_confirms_then_logs_in(
    self_service_agent: tuple[RunningAgent, str, Path],
) -> None:
    agent, sshd, base = self_service_agent
    with local_user(base / "homes") as user:
        enrolled = _as_user(user, agent, "enroll", "--json")
        assert enrolled.returncode == 0, enrolled.stderr
        reply = json.loads(enrolled.stdout)
        assert reply["token"]["user"] == user.name and reply["token"]["pending_until"] > 0
        serial, uri = reply["serial"], reply["uri"]
        # Pending: it lets nobody in, and it counts as enrolled.
        assert pam_transaction(sshd, user.name, [code_for_uri(uri)]).authenticate == PAM_AUTH_ERR
        assert agent.otpctl("show", user.name, "--json", check=True).stdout.count('"pending_until"') == 1
        # Somebody else's name is refused.
        other = _as_user(user, agent, "enroll", "root", "--json")
        assert other.returncode == 1 and "own user" in other.stderr
        confirmed = _as_user(user, agent, "confirm", serial, input=code_for_uri(uri) + "\n")
        assert confirmed.returncode == 0, confirmed.stderr + confirmed.stdout
        assert pam_transaction(sshd, user.name, [code_for_uri(uri)]).authenticate == PAM_AUTH_ERR  # consumed
        assert pam_transaction(sshd, user.name, [code_for_uri(uri, steps=1)]).authenticate == PAM_SUCCESS
        # "first": a second token is refused while the user has an active one.
        second = _as_user(user, agent, "enroll", "--json")
        assert second.returncode == 1 and "already has a token" in second.stderr
        # Self-service: own list and own backup codes.
        listed = json.loads(_as_user(user, agent, "list", "--json").stdout)
        assert [t["serial"] for t in listed["tokens"]] == [serial]
        made = _as_user(user, agent, "backup-codes", "--count", "2", "--json")
        assert made.returncode == 0 and len(json.loads(made.stdout)["codes"]) == 2
    audit = (agent.directory / "audit.log").read_text()
    assert '"event":"confirm"' in audit and '"result":"refused"' in audit


@pytest.mark.parametrize("self_service_agent", ["never"], indirect=True)
def test_self_enrollment_refused_under_never(self_service_agent: tuple[RunningAgent, str, Path]) -> None:
    agent, _sshd, base = self_service_agent
    with local_user(base / "homes") as user:
        refused = _as_user(user, agent, "enroll", "--json")
        assert refused.returncode == 1 and "self_enroll = never" in refused.stderr
        assert json.loads(agent.otpctl("list", "--json", check=True).stdout)["tokens"] == []


@pytest.mark.parametrize("self_service_agent", ["always"], indirect=True)
def test_enroll_on_a_terminal_asks_for_the_confirming_code(
    self_service_agent: tuple[RunningAgent, str, Path],
) -> None:
    """``otpctl enroll`` on a terminal shows the QR code, then asks for the app's code (no echo)."""
    import re

    from tests.e2e.ptyproc import PtyProcess

    agent, sshd, base = self_service_agent
    with local_user(base / "homes") as user:
        argv = [
            "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
            SYSTEM_PYTHON, "-m", "otp_agent.cli", "--socket", str(agent.socket_path), "enroll",
        ]  # fmt: skip
        environment = {"PATH": "/usr/bin:/bin", "TERM": "dumb", "LANG": "C.UTF-8", "PYTHONPATH": str(REPO)}
        process = PtyProcess(argv, env=environment)
        try:
            process.expect(b"to confirm: ")
            uri = re.search(rb"otpauth://totp/\S+", process.output)
            assert uri is not None and "\u2588".encode() in process.output  # the QR code was drawn
            process.send(b"000000\n")
            process.expect(b"rejected: bad_code (token OATO")
            process.expect(b")\r\nCode shown by the app, to confirm: ")  # a wrong code: asked again
            code = code_for_uri(uri.group().decode())
            process.send(code.encode() + b"\n")
            process.expect(b"it is active now")
            assert process.wait() == 0
            assert code.encode() not in process.output  # typed without echo
        finally:
            process.close()
        assert (
            pam_transaction(sshd, user.name, [code_for_uri(uri.group().decode(), steps=1)]).authenticate
            == PAM_SUCCESS
        )
