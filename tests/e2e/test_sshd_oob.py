"""End to end with Debian's real sshd and contrib/pam.d/sshd-oob: publickey, then
``pam-helper --send-code`` asks the real agent to mail a code (a real SMTP server on loopback,
aiosmtpd), the SSH client reads the mail and answers the prompt with it, and gets a session;
a wrong, a replayed and an expired code are refused."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest

from otp_agent.testing import running_agent
from tests.e2e.sshd import SshServer, authorize_key, running_sshd, ssh_login
from tests.pam.support import LocalUser, local_user, make_wrapper, render_stack, require_root
from tests.unit.test_channels_smtp import Recorder, smtp_server

pytestmark = pytest.mark.e2e
VALIDITY = 30


@dataclass
class World:
    agent: Any
    sshd: SshServer
    mail: Recorder
    user: LocalUser
    key: paramiko.PKey
    backend: str

    def mailed_code(self, after: int) -> str:
        """The code of the first mail beyond the ``after`` first ones (waits for it a little)."""
        deadline = time.monotonic() + 10
        while len(self.mail.envelopes) <= after:
            assert time.monotonic() < deadline, "no mail arrived"
            time.sleep(0.05)
        body = self.mail.envelopes[after].content.decode("utf-8", "replace")
        found = re.search(r"code is (\d{6})", body)
        assert found, body
        return found.group(1)


@pytest.fixture(scope="module", params=["software", "payshield"])
def world(open_dir: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """The real agent on each key backend (on payShield the simulator generates the secret with
    L0 and computes every code with LQ), a real SMTP server and a real sshd."""
    require_root()
    base = open_dir / f"e2e-sshd-oob-{request.param}"
    base.mkdir()
    base.chmod(0o755)
    wrapper = make_wrapper(base)
    mail = Recorder()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(smtp_server(mail))
        keystore: dict[str, Any] = {}
        if request.param == "payshield":
            from otp_agent.payshield_sim.testing import running_simulator
            from tests.integration.test_payshield_agent import _payshield_table

            simulator = stack.enter_context(running_simulator())
            keystore = {"keystore": {"backend": "payshield", "payshield": _payshield_table(simulator, base)}}
        channel = {
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "from": "otp@example.com",
        }
        agent = stack.enter_context(
            running_agent(
                base / "agent",
                sections={"channel": {"mail": channel}, **keystore},
                policy={"oob_validity": VALIDITY, "oob_resend_interval": 0},
            )
        )
        (base / "agent").chmod(0o755)
        helper = f"{wrapper} --socket {agent.socket_path} --timeout 5"
        sshd = stack.enter_context(running_sshd(base / "sshd", render_stack("sshd-oob", helper)))
        user = stack.enter_context(local_user(base / "homes"))
        key = authorize_key(user, base)
        agent.otpctl(
            "enroll",
            user.name,
            "--type",
            "oob",
            "--channel",
            "mail",
            "--address",
            f"{user.name}@example.com",
            check=True,
        )
        yield World(agent, sshd, mail, user, key, request.param)


def test_mailed_code_opens_a_session_once(world: World) -> None:
    before = len(world.mail.envelopes)
    codes: list[str] = []

    def answer() -> str:
        codes.append(world.mailed_code(before))
        return codes[-1]

    login = ssh_login(world.sshd, world.user.name, world.key, answer)
    assert login.accepted, login.error + world.sshd.log()[-3000:]
    assert login.output.strip() == f"hello-{world.user.name}"
    (prompt,) = [p for _t, _i, prompts in login.prompts for p in prompts]
    assert "type the code that was sent to you" in prompt
    assert world.mail.envelopes[before].rcpt_tos == [f"{world.user.name}@example.com"]
    # The same code again (a new one is mailed, but the old one is answered): replay, refused.
    replay = ssh_login(world.sshd, world.user.name, world.key, codes[0])
    assert not replay.accepted
    wrong = ssh_login(world.sshd, world.user.name, world.key, "000000")
    assert not wrong.accepted


# Expiry is the engine's, the same for both key backends, and costs a real wait of the validity:
# it runs once, on the software backend.
@pytest.mark.parametrize("world", ["software"], indirect=True)
def test_an_expired_mailed_code_is_refused(world: World) -> None:
    before = len(world.mail.envelopes)
    first = ssh_login(world.sshd, world.user.name, world.key, "999999")  # gets a code mailed
    assert not first.accepted
    stale = world.mailed_code(before)
    time.sleep(VALIDITY + 1)
    late = ssh_login(world.sshd, world.user.name, world.key, stale)
    assert not late.accepted
    deadline = time.monotonic() + 5  # the audit file is written in batches
    while '"reason":"expired"' not in (world.agent.directory / "audit.log").read_text():
        assert time.monotonic() < deadline, (world.agent.directory / "audit.log").read_text()[-2000:]
        time.sleep(0.1)
