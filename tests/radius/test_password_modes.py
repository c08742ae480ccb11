"""otp-radiusd's password modes, with throw-away local users whose passwords Linux-PAM checks.

``challenge``: the password alone gets an Access-Challenge (a fresh State of at least 16 bytes and
"Enter your one-time code"), the State and the code an Access-Accept; a State works once, for its
own user and client only; a wrong password is an Access-Reject and sends nothing.  For a user
with an ``oob`` token the agent sends the code first (a ``command`` channel writes it to a file
the test reads).  ``password+code``: the password immediately followed by the code.  The agent
is the real daemon with the repository's otp-agent-password PAM service; radclient and pyrad are
the NASes.  No password or code reaches otp-radiusd's log.
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otp_agent.testing import RunningAgent, code_for_uri, running_agent
from tests.conftest import require
from tests.pam.support import LocalUser, local_user, password_service, require_root
from tests.radius.support import (
    Radiusd,
    access_request,
    audit_events,
    exchange,
    quoted,
    radclient,
    require_radclient,
    running_radiusd,
    verified_reply,
)

ACCEPT, REJECT, CHALLENGE = 2, 3, 11


@dataclass
class Setting:
    base: Path
    agent: RunningAgent
    outbox: Path


@pytest.fixture(scope="module")
def setting() -> Iterator[Setting]:
    """A real agent with the password service and a ``command`` channel writing to an outbox."""
    require_root()
    require(importlib.util.find_spec("pyrad") is not None, "pyrad is not installed")
    base = Path(tempfile.mkdtemp(prefix="otp-radius-password-"))
    base.chmod(0o711)
    outbox = base / "outbox"
    script = base / "deliver.sh"
    script.write_text(f'#!/bin/sh\ncat >> "{outbox}"\necho >> "{outbox}"\n')
    script.chmod(0o755)
    try:
        with (
            password_service() as service,
            running_agent(
                base / "agent",
                policy={"password_service": service, "oob_resend_interval": 0},
                sections={"channel": {"sms": {"kind": "command", "command": [str(script), "{address}"]}}},
            ) as agent,
        ):
            yield Setting(base, agent, outbox)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def person(setting: Setting) -> Iterator[LocalUser]:
    with local_user(setting.base / "homes", prefix="otpr") as user:
        yield user


def work(setting: Setting) -> Path:
    return setting.base / f"radiusd-{secrets.token_hex(3)}"


def ask(
    radiusd: Radiusd, user: str, password: str, state: bytes | None = None, *, source: str = "127.0.0.1"
) -> tuple[int, Any]:
    """One Access-Request over raw UDP, built by pyrad; (reply code, pyrad's decoded reply)."""
    request, data = access_request(radiusd.secret, user, password, state=state)
    raw = exchange(radiusd.port, data, timeout=5, source=source)
    assert raw is not None, f"no answer:\n{radiusd.log()[-3000:]}"
    reply = verified_reply(request, raw)
    return int(reply.code), reply


def test_challenge_password_then_code(setting: Setting, person: LocalUser) -> None:
    _serial, uri = setting.agent.enroll(person.name, "--type", "hotp")
    intruder = "rx" + secrets.token_hex(4)  # a user with a token of their own (no password)
    _serial, intruder_uri = setting.agent.enroll(intruder, "--type", "hotp")
    secret = "s-" + secrets.token_hex(12)
    clients = f"127.0.0.1 {secret} test-nas\n127.0.0.2 {secret} other-nas\n"
    with running_radiusd(
        setting.agent, work(setting), mode="challenge", clients=clients, secret=secret
    ) as radiusd:
        code, reply = ask(radiusd, person.name, person.password)
        assert code == CHALLENGE, radiusd.log()[-3000:]
        (state,) = reply["State"]
        assert len(state) >= 16
        assert reply["Reply-Message"] == ["Enter your one-time code"]
        again, second = ask(radiusd, person.name, person.password)
        other_state = second["State"][0]
        assert again == CHALLENGE and other_state != state, "a State must be fresh each time"
        assert ask(radiusd, person.name, code_for_uri(uri, counter=0), state)[0] == ACCEPT
        # The State is spent: the next code with it is refused, without asking the agent.
        assert ask(radiusd, person.name, code_for_uri(uri, counter=1), state)[0] == REJECT
        # A code without any State is taken for a password: refused.
        assert ask(radiusd, person.name, code_for_uri(uri, counter=1))[0] == REJECT
        # Another user cannot use this user's State, even with a right code of their own; and
        # that spends it.
        assert ask(radiusd, intruder, code_for_uri(intruder_uri, counter=0), other_state)[0] == REJECT
        assert ask(radiusd, person.name, code_for_uri(uri, counter=1), other_state)[0] == REJECT
        # Nor can another client (NAS) use it.
        _, third = ask(radiusd, person.name, person.password)
        otp = code_for_uri(uri, counter=1)
        assert ask(radiusd, person.name, otp, third["State"][0], source="127.0.0.2")[0] == REJECT
        # A wrong password: rejected at the first step.
        assert ask(radiusd, person.name, "not-" + person.password)[0] == REJECT
        log = radiusd.wait_for_log("Access-Reject for user " + person.name)
    assert person.password not in log and code_for_uri(uri, counter=0) not in log
    assert "the State was given to another client or user" in log and "bad_password_or_code" in log
    checks = audit_events(setting.agent, person.name, "verify_password", 5)
    assert [e["result"] for e in checks] == ["accept", "accept", "reject", "accept", "reject"]
    assert {(e["service"], e["tty"]) for e in checks} == {("radius", "nas:test-nas")}
    decisions = audit_events(setting.agent, person.name, "validate", 1)
    assert [(e["result"], e["reason"]) for e in decisions] == [("accept", "accepted")]
    assert audit_events(setting.agent, intruder, "validate", 1, timeout=0.2) == []


def test_a_challenge_expires(setting: Setting, person: LocalUser) -> None:
    _serial, uri = setting.agent.enroll(person.name, "--type", "hotp")
    with running_radiusd(setting.agent, work(setting), mode="challenge", challenge_lifetime=1) as radiusd:
        code, reply = ask(radiusd, person.name, person.password)
        assert code == CHALLENGE
        time.sleep(1.1)
        assert ask(radiusd, person.name, code_for_uri(uri, counter=0), reply["State"][0])[0] == REJECT
        radiusd.wait_for_log("no such State, or it expired or was used")
    assert audit_events(setting.agent, person.name, "validate", 1, timeout=0.2) == []


def test_challenge_over_radclient(setting: Setting, person: LocalUser) -> None:
    require_radclient()
    _serial, uri = setting.agent.enroll(person.name, "--type", "hotp")
    with running_radiusd(setting.agent, work(setting), mode="challenge") as radiusd:
        first = radclient(
            radiusd.port,
            radiusd.secret,
            {"User-Name": quoted(person.name), "User-Password": quoted(person.password)},
        )
        assert first.code == "Access-Challenge", first.output
        assert first.attributes["Reply-Message"] == '"Enter your one-time code"'
        state = first.attributes["State"]
        assert re.fullmatch(r"0x[0-9a-f]{32,}", state), state
        second = radclient(
            radiusd.port,
            radiusd.secret,
            {
                "User-Name": quoted(person.name),
                "User-Password": quoted(code_for_uri(uri, counter=0)),
                "State": state,
            },
        )
        assert second.code == "Access-Accept", second.output


def test_challenge_for_an_oob_user_sends_the_code(setting: Setting, person: LocalUser) -> None:
    enrolled = setting.agent.otpctl(
        "enroll",
        person.name,
        "--type",
        "oob",
        "--channel",
        "sms",
        "--address",
        "+4915112345689",
        "--json",
        check=True,
    )
    serial = json.loads(enrolled.stdout)["serial"]
    with running_radiusd(setting.agent, work(setting), mode="challenge") as radiusd:
        before = setting.outbox.read_text() if setting.outbox.exists() else ""
        code, reply = ask(radiusd, person.name, person.password)
        assert code == CHALLENGE
        message = setting.outbox.read_text()[len(before) :]
        found = re.search(r"code is (\d{6})", message)
        assert found, message
        sent = found.group(1)
        assert ask(radiusd, person.name, sent, reply["State"][0])[0] == ACCEPT
        log = radiusd.wait_for_log("code sent over sms to +49")
        # A wrong password sends nothing.
        assert ask(radiusd, person.name, "not-" + person.password)[0] == REJECT
    assert setting.outbox.read_text()[len(before) :] == message
    assert sent not in log and person.password not in log
    sends = audit_events(setting.agent, person.name, "send", 1)
    assert len(sends) == 1 and sends[0]["serial"] == serial and sends[0]["tty"] == "nas:test-nas"


def test_challenge_for_a_user_without_oob_token_sends_nothing(setting: Setting, person: LocalUser) -> None:
    _serial, uri = setting.agent.enroll(person.name, "--type", "totp")
    with running_radiusd(setting.agent, work(setting), mode="challenge") as radiusd:
        code, reply = ask(radiusd, person.name, person.password)
        assert code == CHALLENGE  # the agent's "not_found" for send: no oob token, fine
        assert ask(radiusd, person.name, code_for_uri(uri), reply["State"][0])[0] == ACCEPT
    assert audit_events(setting.agent, person.name, "send", 1, timeout=0.3) == []


def test_password_and_code_mode(setting: Setting, person: LocalUser) -> None:
    _serial, uri = setting.agent.enroll(person.name, "--type", "hotp")
    with running_radiusd(setting.agent, work(setting), mode="password+code") as radiusd:
        assert ask(radiusd, person.name, person.password + code_for_uri(uri, counter=0))[0] == ACCEPT
        assert ask(radiusd, person.name, person.password + code_for_uri(uri, counter=0))[0] == REJECT
        assert ask(radiusd, person.name, "x" + person.password + code_for_uri(uri, counter=1))[0] == REJECT
        assert ask(radiusd, person.name, code_for_uri(uri, counter=1))[0] == REJECT  # the code alone
        assert ask(radiusd, person.name, person.password + code_for_uri(uri, counter=1))[0] == ACCEPT
        log = radiusd.wait_for_log("Access-Accept for user " + person.name)
    assert person.password not in log
    decisions = audit_events(setting.agent, person.name, "validate", 5)
    assert [e["result"] for e in decisions] == ["accept", "reject", "reject", "reject", "accept"]
