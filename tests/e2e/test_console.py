"""End to end with the real console programs: /bin/login, su and sudo on a pseudo-terminal,
each reading its PAM stack from contrib/pam.d (bind-mounted over /etc/pam.d/<program> in a
private mount namespace, so the host's files are never changed), with the password immediately
followed by the one-time code, checked by the real otp-agent (password through the service
contrib/pam.d/otp-agent-password, installed under a test name)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.e2e.ptyproc import PtyProcess
from tests.pam.support import (
    HotpCodes,
    LocalUser,
    local_user,
    make_wrapper,
    password_service,
    private_mounts,
    real_agent,
    render_stack,
    require_root,
    unshare_works,
)

pytestmark = pytest.mark.e2e

SHELL_PROMPT = b"$ "
SUDO_PROMPT = "[sudo] password for %p immediately followed by your one-time code: "


class Person(HotpCodes):
    """A local user with a password and an HOTP token."""

    def __init__(self, user: LocalUser, uri: str, counter: int = 0) -> None:
        super().__init__(uri, counter)
        self.user = user


@dataclass
class Console:
    base: Path
    agent: Any
    stacks: dict[str, Path]
    sudoers: Path
    new_person: Callable[[], Person]


@pytest.fixture(scope="module")
def console(open_dir: Path) -> Iterator[Console]:
    require_root()
    require(unshare_works(), "no private mount namespace (unshare -m) to give login/su/sudo a test stack")
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) missing")
    base = open_dir / "e2e-console"
    base.mkdir()
    base.chmod(0o755)
    wrapper = make_wrapper(base)
    sudoers = base / "sudoers.d"
    sudoers.mkdir(mode=0o755)
    with contextlib.ExitStack() as stack:
        password_name = stack.enter_context(password_service())
        agent = stack.enter_context(
            real_agent(base / "agent", lock_threshold=20, password_service=password_name)
        )
        helper = f"{wrapper} --socket {agent.socket_path}"
        stacks = {}
        for name in ("login", "su", "sudo"):
            path = base / f"pam-{name}"
            path.write_text(render_stack(name, helper), encoding="utf-8")
            path.chmod(0o644)
            stacks[name] = path

        def new_person() -> Person:
            user = stack.enter_context(local_user(base / "homes"))
            return Person(user, agent.enroll(user.name, "--type", "hotp")[1])

        yield Console(base, agent, stacks, sudoers, new_person)


def run_login(console: Console, person: Person, answer: str) -> PtyProcess:
    require(os.path.exists("/bin/login"), "/bin/login (package login) missing")
    process = PtyProcess(
        [*private_mounts({"/etc/pam.d/login": console.stacks["login"]}), "/bin/login", person.user.name]
    )
    process.expect(b"immediately followed by your one-time code")
    process.expect(b"Password: ")
    process.send(answer.encode() + b"\n")
    return process


def test_login_with_password_and_code_opens_a_shell(console: Console) -> None:
    """The real login: password+code at the single prompt, then a shell runs a command."""
    person = console.new_person()
    process = run_login(console, person, person.user.password + person.next_code())
    try:
        assert process.expect(SHELL_PROMPT, b"Login incorrect") == SHELL_PROMPT
        process.send(b"echo MARK-$(id -un)-END; exit\n")
        assert f"MARK-{person.user.name}-END".encode() in process.read_to_eof()
    finally:
        process.close()


@pytest.mark.parametrize("mistake", ["wrong-code", "wrong-password", "replay"])
def test_login_refusals(console: Console, mistake: str) -> None:
    """The real login says "Login incorrect" for a wrong code, a wrong password or a replay."""
    person = console.new_person()
    if mistake == "replay":
        code = person.next_code()
        first = run_login(console, person, person.user.password + code)
        try:
            assert first.expect(SHELL_PROMPT, b"Login incorrect") == SHELL_PROMPT
        finally:
            first.close()
        answer = person.user.password + code
    elif mistake == "wrong-code":
        answer = person.user.password + person.wrong()
    else:
        answer = "not-" + person.user.password + person.code(person.counter)
    process = run_login(console, person, answer)
    try:
        assert process.expect(SHELL_PROMPT, b"Login incorrect") == b"Login incorrect"
    finally:
        process.close()


def as_user(person: Person) -> list[str]:
    user = person.user
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--reset-env"]


def test_su_with_password_and_code(console: Console) -> None:
    """The real su (set-uid root) run by an ordinary user: password+code switches; then a wrong
    code is an authentication failure."""
    person = console.new_person()
    mounts = private_mounts({"/etc/pam.d/su": console.stacks["su"]})
    command = [*mounts, *as_user(person), "su", person.user.name, "-c", "echo MARK-$(id -un)-END"]
    process = PtyProcess(command)
    try:
        process.expect(b"immediately followed by the one-time code")
        process.expect(b"Password: ")
        process.send((person.user.password + person.next_code() + "\n").encode())
        assert f"MARK-{person.user.name}-END".encode() in process.read_to_eof()
        assert os.waitstatus_to_exitcode(process.wait()) == 0
    finally:
        process.close()
    process = PtyProcess(command)
    try:
        process.expect(b"Password: ")
        process.send((person.user.password + person.wrong() + "\n").encode())
        assert b"Authentication failure" in process.read_to_eof()
        assert os.waitstatus_to_exitcode(process.wait()) != 0
    finally:
        process.close()


def test_sudo_with_password_and_code(console: Console) -> None:
    """The real sudo: the invoking user's password+code runs the command as root; a wrong code
    gets "Sorry, try again"."""
    require(shutil.which("sudo") is not None, "sudo is not installed (apt-get install sudo)")
    person = console.new_person()
    rule = console.sudoers / "otp-e2e"
    # sudo calls pam_authenticate with PAM_SILENT, which mutes pam_echo: the hint goes in
    # sudo's own prompt (docs/pam.md).
    rule.write_text(
        f'Defaults:{person.user.name} passprompt="{SUDO_PROMPT}"\n{person.user.name} ALL=(ALL) ALL\n',
        encoding="utf-8",
    )
    rule.chmod(0o440)
    mounts = private_mounts({"/etc/pam.d/sudo": console.stacks["sudo"], "/etc/sudoers.d": console.sudoers})
    command = [*mounts, *as_user(person), "sudo", "-k", "sh", "-c", "echo MARK-$(id -un)-END"]
    process = PtyProcess(command)
    try:
        process.expect(SUDO_PROMPT.replace("%p", person.user.name).encode())
        process.send((person.user.password + person.next_code() + "\n").encode())
        assert b"MARK-root-END" in process.read_to_eof()
        assert os.waitstatus_to_exitcode(process.wait()) == 0
    finally:
        process.close()
    process = PtyProcess(command)
    try:
        process.expect(b"one-time code: ")
        process.send((person.user.password + person.wrong() + "\n").encode())
        process.expect(b"Sorry, try again")
    finally:
        process.close()
