"""End to end with Debian's real sshd: publickey, then the one-time code as the
keyboard-interactive answer, through contrib/pam.d/sshd (or sshd-rollout), pam_exec, the
packaged helper wrapper and the real otp-agent; then a real session runs a command."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest

from tests.e2e.sshd import SshServer, authorize_key, running_sshd, ssh_login
from tests.pam.support import (
    HotpCodes,
    LocalUser,
    SyslogCapture,
    fake_agent,
    local_user,
    make_wrapper,
    real_agent,
    render_stack,
    require_root,
)

pytestmark = pytest.mark.e2e

ECHO = "One-time code for {}: type the code shown by your authenticator app at the Password prompt."


class Account(HotpCodes):
    """A local user with an SSH key and (once enrolled) an HOTP token."""

    def __init__(self, user: LocalUser, key: paramiko.PKey, uri: str | None, counter: int = 0) -> None:
        super().__init__(uri, counter)
        self.user = user
        self.key = key


@dataclass
class World:
    base: Path
    agent: Any
    link: Path  # the helper's --socket: a symlink, re-pointed to simulate a down or hanging agent
    sshd: SshServer
    rollout: SshServer
    syslog: SyslogCapture
    new_account: Callable[..., Account]


@pytest.fixture(scope="module")
def world(open_dir: Path) -> Iterator[World]:
    require_root()
    base = open_dir / "e2e-sshd"
    base.mkdir()
    base.chmod(0o755)
    wrapper = make_wrapper(base)
    link = base / "agent-link.sock"
    syslog = SyslogCapture(base)
    with contextlib.ExitStack() as stack:
        stack.callback(syslog.close)
        agent = stack.enter_context(real_agent(base / "agent", lock_threshold=3))
        link.symlink_to(agent.socket_path)
        helper = f"{wrapper} --socket {link} --timeout 2 --syslog-socket {syslog.path}"
        sshd = stack.enter_context(running_sshd(base / "sshd", render_stack("sshd", helper)))
        rollout = stack.enter_context(running_sshd(base / "rollout", render_stack("sshd-rollout", helper)))

        def new_account(enroll: bool = True) -> Account:
            user = stack.enter_context(local_user(base / "homes"))
            key = authorize_key(user, base)
            uri = agent.enroll(user.name, "--type", "hotp")[1] if enroll else None
            return Account(user, key, uri)

        yield World(base, agent, link, sshd, rollout, syslog, new_account)


def repoint(world: World, target: Path) -> None:
    world.link.unlink()
    world.link.symlink_to(target)


def test_right_code_opens_a_session(world: World) -> None:
    """publickey, then the code at the prompt that pam_echo explains; the session runs a command."""
    account = world.new_account()
    login = ssh_login(world.sshd, account.user.name, account.key, account.next_code())
    assert login.remaining_after_publickey == ["keyboard-interactive"]
    assert login.accepted, login.error + world.sshd.log()[-3000:]
    assert login.output.strip() == f"hello-{account.user.name}"
    assert login.exit_status == 0
    (prompt,) = [p for _t, _i, prompts in login.prompts for p in prompts]
    assert prompt == ECHO.format(account.user.name) + "\nPassword: "
    assert "Accepted keyboard-interactive/pam" in world.sshd.log()
    assert "pam_setcred" not in world.sshd.log()  # the setcred trap would log a fatal here


def test_wrong_code_is_refused(world: World) -> None:
    """A wrong code: keyboard-interactive fails, no session."""
    account = world.new_account()
    login = ssh_login(world.sshd, account.user.name, account.key, account.wrong())
    assert not login.accepted and login.output == ""


def test_replayed_code_is_refused(world: World) -> None:
    """The same code twice: the first login works, the second is refused."""
    account = world.new_account()
    code = account.next_code()
    assert ssh_login(world.sshd, account.user.name, account.key, code).accepted
    assert not ssh_login(world.sshd, account.user.name, account.key, code).accepted


def test_locked_token_is_refused_until_unlocked(world: World) -> None:
    """After lock_threshold (3) wrong codes the right code is refused; otpctl unlock restores it."""
    account = world.new_account()
    for _ in range(3):
        assert not ssh_login(world.sshd, account.user.name, account.key, account.wrong()).accepted
    code = account.code(account.counter)
    assert not ssh_login(world.sshd, account.user.name, account.key, code).accepted
    assert world.agent.otpctl("unlock", account.user.name).returncode == 0
    login = ssh_login(world.sshd, account.user.name, account.key, account.next_code())
    assert login.accepted and login.output.strip() == f"hello-{account.user.name}"


def test_empty_answer_is_refused(world: World) -> None:
    """Pressing Enter at the prompt is a refusal."""
    account = world.new_account()
    assert not ssh_login(world.sshd, account.user.name, account.key, "").accepted


def test_agent_down_refuses_promptly_with_a_syslog_line(world: World) -> None:
    """No agent: the login is refused (well before LoginGraceTime) and syslog says why."""
    account = world.new_account()
    repoint(world, world.base / "no-agent-here.sock")
    try:
        login = ssh_login(world.sshd, account.user.name, account.key, account.code(0))
    finally:
        repoint(world, world.agent.socket_path)
    assert not login.accepted and "Authentication failed" in login.error
    lines = [line for line in world.syslog.helper_lines() if account.user.name in line]
    assert any("does not exist" in line for line in lines), world.syslog.lines
    # The code was never consumed: it still works once the agent is back.
    assert ssh_login(world.sshd, account.user.name, account.key, account.next_code()).accepted


def test_agent_hanging_refuses_within_the_helper_timeout(world: World) -> None:
    """An agent that accepts and never answers: the helper's --timeout 2 ends the attempt
    (paramiko would otherwise wait for LoginGraceTime), and syslog names the timeout."""
    account = world.new_account()
    hang_dir = world.base / "hang"
    hang_dir.mkdir(exist_ok=True)
    with fake_agent(hang_dir, lambda request: "hang") as hanging:
        repoint(world, hanging.path)
        try:
            login = ssh_login(world.sshd, account.user.name, account.key, account.code(0))
        finally:
            repoint(world, world.agent.socket_path)
    assert not login.accepted and "Authentication failed" in login.error
    assert any(
        "(timeout)" in line and account.user.name in line for line in world.syslog.helper_lines(expect=1)
    ), world.syslog.lines


def test_rollout_lets_an_unenrolled_user_in_with_the_key_alone(world: World) -> None:
    """sshd-rollout: a user with no token logs in with the key, and is asked nothing."""
    account = world.new_account(enroll=False)
    login = ssh_login(world.rollout, account.user.name, account.key, None)
    assert login.accepted, login.error + world.rollout.log()[-3000:]
    assert [p for _t, _i, prompts in login.prompts for p in prompts] == []
    assert login.output.strip() == f"hello-{account.user.name}"


def test_rollout_still_requires_the_code_from_enrolled_users(world: World) -> None:
    """sshd-rollout: an enrolled user is asked; wrong refused, right accepted with a session."""
    account = world.new_account()
    assert not ssh_login(world.rollout, account.user.name, account.key, account.wrong()).accepted
    login = ssh_login(world.rollout, account.user.name, account.key, account.next_code())
    assert login.accepted and login.output.strip() == f"hello-{account.user.name}"


def test_rollout_fails_closed_when_the_agent_is_down(world: World) -> None:
    """sshd-rollout with no agent: even an unenrolled user is refused (the enrolment question
    has no answer, so the code prompt follows and fails)."""
    account = world.new_account(enroll=False)
    repoint(world, world.base / "no-agent-here.sock")
    try:
        login = ssh_login(world.rollout, account.user.name, account.key, "123456")
    finally:
        repoint(world, world.agent.socket_path)
    assert not login.accepted


def _told(login: Any) -> list[str]:
    """The text sshd showed the client besides the prompts (keyboard-interactive instructions)."""
    return [
        line for _title, instructions, _prompts in login.prompts for line in instructions.splitlines() if line
    ]


def test_the_user_is_told_why_a_replay_or_a_lock_refuses_and_nothing_else(world: World) -> None:
    """--tell-user with pam_exec's stdout: the client receives one line for a replay and a lock,
    none for a wrong code, and none at all for an account that has no token."""
    account = world.new_account()
    code = account.next_code()
    assert ssh_login(world.sshd, account.user.name, account.key, code).accepted
    replayed = ssh_login(world.sshd, account.user.name, account.key, code)
    assert not replayed.accepted
    assert _told(replayed) == ["this code was already used: wait for the next one"], replayed.prompts
    wrong = [ssh_login(world.sshd, account.user.name, account.key, account.wrong()) for _ in range(3)]
    assert all(not w.accepted and _told(w) == [] for w in wrong), [w.prompts for w in wrong]
    locked = ssh_login(world.sshd, account.user.name, account.key, account.code(account.counter))
    assert not locked.accepted
    (line,) = _told(locked)
    assert re.fullmatch(r"too many failed attempts: try again in [0-9]+ s", line), locked.prompts
    assert 0 < int(line.split()[-2]) <= 30  # lock_base_seconds
    stranger = world.new_account(enroll=False)
    unknown = ssh_login(world.sshd, stranger.user.name, stranger.key, "123456")
    assert not unknown.accepted and _told(unknown) == []
    world.agent.otpctl("unlock", account.user.name, check=True)
