"""Who needs a code (per group, with pam_succeed_if) and remembered hosts, end to end.

The stacks are contrib/pam.d/sshd and contrib/pam.d/login-by-group with their commented lines
switched on the way docs/pam.md says (a test group's name in place of the example's); the real
sshd on loopback, the real /bin/login on a pseudo-terminal, and the real otp-agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.e2e.ptyproc import PtyProcess
from tests.e2e.sshd import Login, SshServer, authorize_key, running_sshd, ssh_login
from tests.pam.support import (
    HotpCodes,
    LocalUser,
    local_user,
    make_wrapper,
    pam_service,
    pam_transaction,
    password_service,
    private_mounts,
    real_agent,
    render_stack,
    require_root,
    unshare_works,
)

pytestmark = pytest.mark.e2e
SHELL_PROMPT = b"$ "


def switch_on(text: str, line_part: str, group: str | None = None) -> str:
    """Uncomment the stack line containing ``line_part`` (naming ``group`` for the example's)."""
    lines = text.splitlines()
    matches = [i for i, line in enumerate(lines) if line.startswith("#auth") and line_part in line]
    assert len(matches) == 1, (line_part, text)
    line = lines[matches[0]][1:]
    if group is not None:
        line = line.replace("otp-required", group).replace("otp-exempt", group)
    lines[matches[0]] = line
    return "\n".join(lines) + "\n"


class Account(HotpCodes):
    def __init__(self, user: LocalUser, key: Any, uri: str) -> None:
        super().__init__(uri)
        self.user, self.key = user, key


@dataclass
class World:
    base: Path
    agent: Any
    required: SshServer  # only members of `group` need a code
    exempt: SshServer  # members of `group` never need one
    remember: SshServer  # remembered hosts on
    group: str
    helper: str
    new_account: Callable[..., Account]


def prompts_of(login: Login) -> list[str]:
    return [p for _t, _i, prompts in login.prompts for p in prompts]


@pytest.fixture(scope="module")
def world(open_dir: Path) -> Iterator[World]:
    require_root()
    base = open_dir / "e2e-policy"
    base.mkdir()
    base.chmod(0o755)
    group = f"otpg{secrets.token_hex(3)}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        with contextlib.ExitStack() as stack:
            password_name = stack.enter_context(password_service())
            agent = stack.enter_context(
                real_agent(
                    base / "agent", remember_seconds=600, password_service=password_name, lock_threshold=20
                )
            )
            helper = f"{make_wrapper(base)} --socket {agent.socket_path}"
            sshd = render_stack("sshd", helper)
            required = stack.enter_context(
                running_sshd(base / "required", switch_on(sshd, "notingroup otp-required", group))
            )
            exempt = stack.enter_context(
                running_sshd(base / "exempt", switch_on(sshd, "ingroup otp-exempt", group))
            )
            remember = stack.enter_context(running_sshd(base / "remember", switch_on(sshd, "--remembered")))

            def new_account(member: bool) -> Account:
                user = stack.enter_context(local_user(base / "homes"))
                if member:
                    subprocess.run(["usermod", "-aG", group, user.name], check=True, capture_output=True)
                return Account(user, authorize_key(user, base), agent.enroll(user.name, "--type", "hotp")[1])

            yield World(base, agent, required, exempt, remember, group, helper, new_account)
    finally:
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.mark.parametrize(("server", "member", "needs_code"), [
    ("required", True, True), ("required", False, False), ("exempt", True, False), ("exempt", False, True),
])  # fmt: skip
def test_per_group_over_sshd(world: World, server: str, member: bool, needs_code: bool) -> None:
    account = world.new_account(member)
    sshd: SshServer = getattr(world, server)
    if needs_code:
        assert not ssh_login(sshd, account.user.name, account.key, account.wrong()).accepted
        login = ssh_login(sshd, account.user.name, account.key, account.next_code())
        assert login.accepted and len(prompts_of(login)) == 1, login.error + sshd.log()[-2000:]
    else:
        login = ssh_login(sshd, account.user.name, account.key, None)
        assert login.accepted and prompts_of(login) == [], login.error + sshd.log()[-2000:]
    assert login.output.strip() == f"hello-{account.user.name}"


def _login(stack: Path, account: Account, answer: str) -> bytes:
    require(os.path.exists("/bin/login"), "/bin/login (package login) missing")
    require(unshare_works(), "no private mount namespace (unshare -m) to give login a test stack")
    process = PtyProcess([*private_mounts({"/etc/pam.d/login": stack}), "/bin/login", account.user.name])
    try:
        process.expect(b"Password: ")
        process.send(answer.encode() + b"\n")
        return process.expect(SHELL_PROMPT, b"Login incorrect")
    finally:
        process.close()


@pytest.mark.parametrize("member", [True, False])
def test_per_group_through_login_on_a_terminal(world: World, member: bool) -> None:
    """login-by-group, "members never need a code": a member logs in with the password alone, a
    non-member only with password and code."""
    stack = world.base / f"login-exempt-{member}"
    stack.write_text(
        switch_on(render_stack("login-by-group", world.helper), "ingroup otp-exempt", world.group)
    )
    stack.chmod(0o644)
    account = world.new_account(member)
    password = account.user.password
    if member:
        assert _login(stack, account, "wrong-" + password) == b"Login incorrect"
        assert _login(stack, account, password) == SHELL_PROMPT
    else:
        assert _login(stack, account, password) == b"Login incorrect"
        assert _login(stack, account, password + account.next_code()) == SHELL_PROMPT


def test_a_remembered_host_skips_the_code_until_forgotten(world: World) -> None:
    account = world.new_account(False)
    first = ssh_login(world.remember, account.user.name, account.key, account.next_code())
    assert first.accepted and len(prompts_of(first)) == 1, first.error + world.remember.log()[-2000:]
    second = ssh_login(world.remember, account.user.name, account.key, None)
    assert second.accepted and prompts_of(second) == [], second.error + world.remember.log()[-2000:]
    forgotten = json.loads(world.agent.otpctl("forget", account.user.name, "--json", check=True).stdout)
    assert forgotten["forgotten"] == 1
    third = ssh_login(world.remember, account.user.name, account.key, None)
    assert not third.accepted and len(prompts_of(third)) == 1  # asked again (and no answer)
    fourth = ssh_login(world.remember, account.user.name, account.key, account.next_code())
    assert fourth.accepted
    # Any refusal for the user ends it too (here a wrong code given to otpctl check): the next
    # login is asked again.
    assert ssh_login(world.remember, account.user.name, account.key, None).accepted
    assert world.agent.otpctl("check", account.user.name, input=account.wrong() + "\n").returncode == 1
    assert not ssh_login(world.remember, account.user.name, account.key, None).accepted
    audit = (world.agent.directory / "audit.log").read_text()
    assert audit.count('"reason":"remembered"') == 2 and '"event":"forget"' in audit


def test_a_login_without_a_remote_host_is_never_remembered(world: World) -> None:
    """Through the real Linux-PAM stack with the remembered line on: an accepted code from the
    console (no PAM_RHOST) remembers nothing, and the next console login is asked for a code."""
    account = world.new_account(False)
    text = switch_on(render_stack("sshd", world.helper), "--remembered")
    with pam_service(text, prefix="otp-test-remember") as service:
        accepted = pam_transaction(service, account.user.name, [account.next_code()], setcred=False)
        assert accepted.authenticate == 0
        again = pam_transaction(service, account.user.name, [], setcred=False)
        assert again.authenticate != 0 and any("Password" in text for _style, text in again.messages)
        rhost = {4: "198.51.100.7"}  # PAM_RHOST: the same stack from a remote host is remembered
        assert (
            pam_transaction(service, account.user.name, [account.next_code()], items=rhost).authenticate == 0
        )
        assert pam_transaction(service, account.user.name, [], items=rhost).authenticate == 0
