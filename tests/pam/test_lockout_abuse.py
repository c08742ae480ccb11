"""Nobody can aim a lockout at someone else: through real Linux-PAM stacks and the real agent.

Before this was fixed, five wrong *passwords* in password+code mode (``su victim`` with junk)
locked the victim's token, and with it every OTP login, SSH included; and five parallel logins
with one code (ssh + scp, Ansible) locked their own user through the replays.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.pam.support import (
    REPO,
    HotpCodes,
    local_user,
    make_wrapper,
    pam_service,
    pam_transaction,
    password_service,
    real_agent,
    render_stack,
    require_root,
)

PAM_SUCCESS, PAM_AUTH_ERR = 0, 7


@pytest.fixture
def stacks(open_dir: Path) -> Iterator[tuple[dict[str, str], HotpCodes, str]]:
    """The real agent with the DEFAULT throttling policy, a victim with an HOTP token, and the
    contrib sshd and login stacks installed as private PAM services."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="abuse-", dir=open_dir))
    base.chmod(0o755)
    wrapper = make_wrapper(base)
    with (
        password_service() as password_name,
        local_user(base / "homes") as victim,
        real_agent(base / "agent", password_service=password_name) as agent,
    ):
        _, uri = agent.enroll(victim.name, "--type", "hotp")
        helper = f"{wrapper} --socket {agent.socket_path}"
        with (
            pam_service(render_stack("sshd", helper), prefix="otp-abuse-sshd") as sshd,
            pam_service(render_stack("login", helper), prefix="otp-abuse-login") as login,
        ):
            yield {"sshd": sshd, "login": login}, HotpCodes(uri), victim.name


def test_wrong_passwords_do_not_lock_the_victim(stacks) -> None:
    """Twelve junk password+code answers for the victim, then the victim's SSH code works."""
    services, phone, victim = stacks
    for attempt in range(12):
        junk = f"junk{attempt}" + phone.code(phone.counter)
        assert pam_transaction(services["login"], victim, [junk]).authenticate == PAM_AUTH_ERR
    assert pam_transaction(services["sshd"], victim, [phone.next_code()]).authenticate == PAM_SUCCESS


def test_parallel_logins_with_one_code_do_not_lock_their_user(stacks) -> None:
    """Eight logins racing with one code: one succeeds, the others are replays, and the next
    code still works (replays are not failures)."""
    services, phone, victim = stacks
    for _round in range(2):
        code = phone.next_code()
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda _i: pam_transaction(services["sshd"], victim, [code]).authenticate, range(8))
            )
        assert results.count(PAM_SUCCESS) == 1 and results.count(PAM_AUTH_ERR) == 7
    assert pam_transaction(services["sshd"], victim, [phone.next_code()]).authenticate == PAM_SUCCESS


@pytest.mark.parametrize("stack", ["login", "su", "sudo"])
def test_password_and_code_stacks_delay_failures_with_pam_faildelay(stack: str) -> None:
    """The agent suppresses pam_unix's delay; every password+code stack sets its own before the
    helper runs."""
    lines = [
        line.split()
        for line in (REPO / "contrib" / "pam.d" / stack).read_text().splitlines()
        if line.startswith("auth")
    ]
    modules = [next(word for word in line if word.endswith(".so")) for line in lines]
    assert "pam_faildelay.so" in modules
    assert modules.index("pam_faildelay.so") < modules.index("pam_exec.so")
    delay = next(w for line in lines for w in line if w.startswith("delay="))
    assert int(re.sub(r"\D", "", delay)) >= 1_000_000
