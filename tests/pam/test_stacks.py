"""PAM return codes of every stack in contrib/pam.d, driven in-process with python-pam and pamela.

Each stack is installed under a unique service name in /etc/pam.d with the packaged helper path
replaced by contrib/pam-helper pointed at this checkout, and talks to the real otp-agent.  The sshd
setcred trap (docs/pam.md) is reproduced in-process by calling pam_setcred on a fresh handle
that never authenticated, which is what sshd's monitor does; the negative controls prove that this
check catches the stacks that break sshd.  tests/e2e proves the same with the real sshd.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pam
import pytest

from tests.pam.support import (
    REPO,
    HotpCodes,
    LocalUser,
    local_user,
    make_wrapper,
    pam_service,
    pam_transaction,
    password_service,
    real_agent,
    render_stack,
    require_root,
    setcred_without_authenticate,
)

PAM_SUCCESS, PAM_SYSTEM_ERR, PAM_AUTH_ERR = 0, 4, 7
ECHO_OFF, TEXT_INFO = 1, 4


class Token(HotpCodes):
    """An HOTP token enrolled with the real agent, and the codes its owner's phone would show."""


@dataclass
class Setup:
    agent: Any
    helper: str
    user: LocalUser
    token: Token
    newcomer: LocalUser


@pytest.fixture(scope="module")
def setup(open_dir: Path) -> Iterator[Setup]:
    """A real agent (password checks through contrib/pam.d/otp-agent-password), an enrolled user
    and a user without a token."""
    require_root()
    base = open_dir / "stacks"
    base.mkdir()
    base.chmod(0o755)
    wrapper = make_wrapper(base)
    with (
        password_service() as password_name,
        local_user(base / "homes") as user,
        local_user(base / "homes") as newcomer,
        real_agent(base / "agent", lock_threshold=50, password_service=password_name) as agent,
    ):
        _, uri = agent.enroll(user.name, "--type", "hotp")
        yield Setup(agent, f"{wrapper} --socket {agent.socket_path}", user, Token(uri), newcomer)


@pytest.fixture(scope="module")
def installed(setup: Setup) -> Iterator[dict[str, str]]:
    """Every contrib stack installed twice: against the agent, and against a missing socket."""
    names: dict[str, str] = {}
    contexts = []
    try:
        for stack in ("sshd", "sshd-rollout", "sshd-oob", "login", "su", "sudo"):
            for variant, helper in (("", setup.helper), ("-down", f"{setup.helper}-absent")):
                context = pam_service(render_stack(stack, helper), prefix=f"otp-test-{stack}{variant}")
                names[stack + variant] = context.__enter__()
                contexts.append(context)
        yield names
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)


SSHD_ECHO = "One-time code for {}: type the code shown by your authenticator app at the Password prompt."


def test_sshd_right_code_python_pam(setup: Setup, installed: dict[str, str]) -> None:
    """python-pam (authenticate + acct_mgmt + setcred) succeeds with the right code."""
    authenticator = pam.pam()
    assert authenticator.authenticate(setup.user.name, setup.token.next_code(), service=installed["sshd"])
    assert authenticator.code == PAM_SUCCESS


def test_sshd_conversation_and_codes(setup: Setup, installed: dict[str, str]) -> None:
    """The user is told what to type, then asked once; right 0, replay 7, wrong 7."""
    code = setup.token.next_code()
    outcome = pam_transaction(installed["sshd"], setup.user.name, [code])
    assert outcome.messages == [(TEXT_INFO, SSHD_ECHO.format(setup.user.name)), (ECHO_OFF, "Password: ")]
    assert (outcome.authenticate, outcome.acct_mgmt, outcome.setcred) == (
        PAM_SUCCESS,
        PAM_SUCCESS,
        PAM_SUCCESS,
    )
    assert pam_transaction(installed["sshd"], setup.user.name, [code]).authenticate == PAM_AUTH_ERR
    assert (
        pam_transaction(installed["sshd"], setup.user.name, [setup.token.wrong()]).authenticate
        == PAM_AUTH_ERR
    )
    assert pam_transaction(installed["sshd"], setup.user.name, [""]).authenticate == PAM_AUTH_ERR


def test_sshd_agent_down_is_auth_error(setup: Setup, installed: dict[str, str]) -> None:
    """With no agent the stack fails with PAM_AUTH_ERR, never succeeds."""
    code = setup.token.code(setup.token.counter)
    assert pam_transaction(installed["sshd-down"], setup.user.name, [code]).authenticate == PAM_AUTH_ERR


def test_unknown_user_is_refused(setup: Setup, installed: dict[str, str]) -> None:
    """A name with no account (sshd passes junk for invalid users) is refused."""
    assert pam_transaction(installed["sshd"], "no-such-user-x", ["123456"]).authenticate == PAM_AUTH_ERR


@pytest.mark.parametrize("stack", ["sshd", "sshd-rollout", "sshd-oob", "login", "sudo", "su"])
def test_setcred_survives_the_sshd_trap(setup: Setup, installed: dict[str, str], stack: str) -> None:
    """pam_setcred on a handle that never authenticated (sshd's monitor) succeeds for every stack."""
    assert setcred_without_authenticate(installed[stack], setup.user.name) == PAM_SUCCESS


@pytest.mark.parametrize("controls", ["[success=1 default=ignore]", "[success=done default=die]"])
def test_trap_negative_controls(setup: Setup, controls: str) -> None:
    """The idioms that break sshd pass in-process but fail the fresh-handle setcred check."""
    tail = (
        "auth requisite pam_deny.so\nauth required pam_permit.so\n"
        if "success=1" in controls
        else "auth optional pam_permit.so\n"
    )
    text = (
        f"auth {controls} pam_exec.so quiet expose_authtok {setup.helper} --code-only\n{tail}"
        "account required pam_permit.so\nsession required pam_permit.so\n"
    )
    with pam_service(text, prefix="otp-test-badidiom") as name:
        outcome = pam_transaction(name, setup.user.name, [setup.token.next_code()])
        assert (outcome.authenticate, outcome.setcred) == (PAM_SUCCESS, PAM_SUCCESS)
        assert setcred_without_authenticate(name, setup.user.name) != PAM_SUCCESS


def test_rollout_lets_unenrolled_users_in_without_a_prompt(setup: Setup, installed: dict[str, str]) -> None:
    """sshd-rollout: a user with no token passes with no question asked."""
    outcome = pam_transaction(installed["sshd-rollout"], setup.newcomer.name, [])
    assert outcome.messages == []
    assert (outcome.authenticate, outcome.acct_mgmt, outcome.setcred) == (
        PAM_SUCCESS,
        PAM_SUCCESS,
        PAM_SUCCESS,
    )


def test_rollout_still_asks_enrolled_users(setup: Setup, installed: dict[str, str]) -> None:
    """sshd-rollout: an enrolled user gets the prompt; right 0, wrong 7."""
    outcome = pam_transaction(installed["sshd-rollout"], setup.user.name, [setup.token.next_code()])
    assert outcome.messages[-1] == (ECHO_OFF, "Password: ")
    assert outcome.authenticate == PAM_SUCCESS
    wrong = pam_transaction(installed["sshd-rollout"], setup.user.name, [setup.token.wrong()])
    assert wrong.authenticate == PAM_AUTH_ERR


def test_rollout_fails_closed_when_the_agent_is_down(setup: Setup, installed: dict[str, str]) -> None:
    """sshd-rollout with no agent: the unenrolled user is NOT let through (nor anyone else)."""
    outcome = pam_transaction(installed["sshd-rollout-down"], setup.newcomer.name, ["123456"])
    assert outcome.authenticate == PAM_AUTH_ERR
    assert outcome.messages[-1] == (ECHO_OFF, "Password: ")
    assert (
        pam_transaction(installed["sshd-rollout-down"], setup.user.name, ["123456"]).authenticate
        == PAM_AUTH_ERR
    )


@pytest.mark.parametrize("stack", ["login", "sudo"])
def test_password_and_code_stacks(setup: Setup, installed: dict[str, str], stack: str) -> None:
    """login and sudo: password immediately followed by the code passes; a wrong password, a
    wrong code, the password alone or the code alone each give PAM_AUTH_ERR."""
    user = setup.user
    outcome = pam_transaction(installed[stack], user.name, [user.password + setup.token.next_code()])
    assert outcome.messages[0][0] == TEXT_INFO and "immediately followed by" in outcome.messages[0][1]
    assert outcome.messages[-1] == (ECHO_OFF, "Password: ")
    assert (outcome.authenticate, outcome.acct_mgmt, outcome.setcred) == (
        PAM_SUCCESS,
        PAM_SUCCESS,
        PAM_SUCCESS,
    )
    for answer in (
        user.password + "x" + setup.token.code(setup.token.counter),
        user.password + setup.token.wrong(),
        user.password,
        setup.token.code(setup.token.counter),
    ):
        assert pam_transaction(installed[stack], user.name, [answer]).authenticate == PAM_AUTH_ERR
    # The code was not consumed by the failed attempts whose password was wrong.
    assert (
        pam_transaction(installed[stack], user.name, [user.password + setup.token.next_code()]).authenticate
        == 0
    )


def test_login_python_pam(setup: Setup, installed: dict[str, str]) -> None:
    """python-pam on the login stack: the whole call succeeds with password+code."""
    authenticator = pam.pam()
    assert authenticator.authenticate(
        setup.user.name, setup.user.password + setup.token.next_code(), service=installed["login"]
    )
    assert authenticator.code == PAM_SUCCESS


def test_su_as_root_needs_nothing(setup: Setup, installed: dict[str, str]) -> None:
    """su: root switches without a prompt (pam_rootok), as with Debian's stack; the code path
    for ordinary callers is proven with the real su in tests/e2e."""
    outcome = pam_transaction(installed["su"], setup.user.name, [])
    assert outcome.authenticate == PAM_SUCCESS and outcome.messages == []


def test_caller_ignoring_sigchld(setup: Setup, installed: dict[str, str]) -> None:
    """Documented pitfall: a PAM application that ignores SIGCHLD makes pam_exec (Linux-PAM 1.5.2)
    fail even on a right code; it never turns a wrong code into a success."""
    script = (
        "import signal, sys; sys.path.insert(0, sys.argv[1]); signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "from tests.pam.support import pam_transaction\n"
        "print(pam_transaction(sys.argv[2], sys.argv[3], [sys.argv[4]]).authenticate)\n"
    )

    def run(code: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", script, str(REPO), installed["sshd"], setup.user.name, code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "libpam-modules"], capture_output=True, text=True
    ).stdout
    right = run(setup.token.next_code())
    if version.startswith("1.5.2"):
        assert right == PAM_AUTH_ERR  # PAM_SYSTEM_ERR from pam_exec, turned into AUTH_ERR by pam_deny
    assert right in (PAM_SUCCESS, PAM_AUTH_ERR)
    assert run(setup.token.wrong()) == PAM_AUTH_ERR
