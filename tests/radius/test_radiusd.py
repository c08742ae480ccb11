"""otp-radiusd in code mode, a real subprocess in front of the real agent.

Debian's radclient and pyrad's client are the NASes: a right HOTP code is accepted once (its
replay and a wrong code are rejected) and the agent audits each decision with service radius,
the NAS address and its NAS-Identifier; requests without a Message-Authenticator, signed with
another secret or from an address outside the clients file get no answer at all; a retransmitted
datagram gets the very same reply bytes and the agent sees one validation; a burst over the rate
limit is partly dropped (and logged); an unreachable agent means Access-Reject; SIGHUP reads the
clients file again; a non-root otp-radiusd (a validator by group) on Debian's python3-pyrad keeps
serving across the agent's 64-request limit on its connections.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.testing import RunningAgent, code_for_uri, running_agent
from tests.conftest import require
from tests.radius.support import (
    Answer,
    access_request,
    audit_events,
    exchange,
    forge_message_authenticator,
    quoted,
    radclient,
    require_radclient,
    running_radiusd,
    verified_reply,
)

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory other uids can traverse (the agent socket, a non-root daemon's files)."""
    require(importlib.util.find_spec("pyrad") is not None, "pyrad is not installed")
    directory = Path(tempfile.mkdtemp(prefix="otp-radius-tests-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(base: Path) -> Iterator[RunningAgent]:
    """One real agent for the module; each test enrolls users of its own."""
    with running_agent(base / "agent", sections={"agent": {"validator_group": "nogroup"}}) as running:
        yield running


@pytest.fixture
def work(base: Path, request: pytest.FixtureRequest) -> Path:
    return base / f"{request.node.name[:40]}-{secrets.token_hex(3)}"


def enroll(agent: RunningAgent) -> tuple[str, str]:
    """A new user with an HOTP token: (user, otpauth URI)."""
    user = "r" + secrets.token_hex(4)
    _serial, uri = agent.enroll(user, "--type", "hotp")
    return user, uri


def wrong_code(uri: str) -> str:
    near = {code_for_uri(uri, counter=n) for n in range(60)}
    return next(f"{n:06d}" for n in range(314159, 10**6) if f"{n:06d}" not in near)


def test_radclient_accept_replay_and_wrong_code(agent: RunningAgent, work: Path) -> None:
    require_radclient()
    user, uri = enroll(agent)
    first, wrong = code_for_uri(uri, counter=0), wrong_code(uri)
    with running_radiusd(agent, work) as radiusd:

        def ask(code: str) -> Answer:
            attributes = {
                "User-Name": quoted(user),
                "User-Password": quoted(code),
                "NAS-Identifier": '"vpn-1"',
            }
            return radclient(radiusd.port, radiusd.secret, attributes)

        accepted = ask(first)
        assert accepted.code == "Access-Accept", f"{accepted.output}\n{radiusd.log()}"
        assert "Message-Authenticator" in accepted.attributes
        replayed, refused = ask(first), ask(wrong)
        assert (replayed.code, refused.code) == ("Access-Reject", "Access-Reject")
        assert ask(code_for_uri(uri, counter=1)).code == "Access-Accept"
        log = radiusd.wait_for_log(
            f"Access-Accept for user {user} from client test-nas (127.0.0.1, NAS vpn-1)"
        )
    events = audit_events(agent, user, "validate", 4)
    assert [(e["result"], e["reason"]) for e in events] == [
        ("accept", "accepted"),
        ("reject", "replay"),
        ("reject", "bad_code"),
        ("accept", "accepted"),
    ]
    assert {(e["service"], e["rhost"], e["tty"]) for e in events} == {("radius", "127.0.0.1", "nas:vpn-1")}
    assert f"Access-Reject for user {user} from client test-nas (127.0.0.1, NAS vpn-1): replay" in log
    assert first not in log and wrong not in log, "a code reached otp-radiusd's log"


def test_pyrad_client_accept_and_reject(agent: RunningAgent, work: Path) -> None:
    from pyrad.client import Client
    from pyrad.packet import AccessAccept, AccessReject

    from tests.radius.support import dictionary

    user, uri = enroll(agent)
    with running_radiusd(agent, work) as radiusd:
        client = Client(
            server="127.0.0.1",
            authport=radiusd.port,
            secret=radiusd.secret.encode(),
            dict=dictionary(),
            timeout=3,
            retries=1,
            enforce_ma=True,
        )
        try:

            def ask(code: str) -> int:
                request = client.CreateAuthPacket(User_Name=user, NAS_Identifier="pyrad-nas")
                request["User-Password"] = request.PwCrypt(code)
                request.add_message_authenticator()
                return int(client.SendPacket(request).code)

            assert ask(code_for_uri(uri, counter=0)) == AccessAccept
            assert ask(code_for_uri(uri, counter=0)) == AccessReject
            assert ask(code_for_uri(uri, counter=1)) == AccessAccept
        finally:
            client._CloseSocket()
    events = audit_events(agent, user, "validate", 3)
    assert [e["reason"] for e in events] == ["accepted", "replay", "accepted"]
    assert events[0]["tty"] == "nas:pyrad-nas"


def test_unsigned_and_wrongly_signed_requests_get_no_answer(agent: RunningAgent, work: Path) -> None:
    require_radclient()
    user, uri = enroll(agent)
    code = code_for_uri(uri, counter=0)
    attributes = {"User-Name": quoted(user), "User-Password": quoted(code)}
    with running_radiusd(agent, work / "strict") as radiusd:
        unsigned = radclient(radiusd.port, radiusd.secret, attributes, timeout=0.5, signed=False)
        assert unsigned.code == "", unsigned.output
        radiusd.wait_for_log("dropping a datagram from client test-nas (127.0.0.1): no Message-Authenticator")
        wrong = radclient(radiusd.port, "not-" + radiusd.secret, attributes, timeout=0.5)
        assert wrong.code == "", wrong.output
        radiusd.wait_for_log("wrong Message-Authenticator")
        # A forged Message-Authenticator on otherwise right bytes: dropped too.
        _request, data = access_request(radiusd.secret, user, code)
        forged = forge_message_authenticator(data)
        assert exchange(radiusd.port, forged, timeout=0.5) is None
    # With require_message_authenticator off, the same unsigned request is answered (and signed).
    with running_radiusd(agent, work / "lax", require_message_authenticator=False) as radiusd:
        answered = radclient(radiusd.port, radiusd.secret, attributes, timeout=3, signed=False)
        assert answered.code == "Access-Accept", answered.output
        assert "Message-Authenticator" in answered.attributes
        _request, data = access_request(radiusd.secret, user, code)
        forged = forge_message_authenticator(data)
        assert exchange(radiusd.port, forged, timeout=0.5) is None, "a wrong Message-Authenticator was let in"
        radiusd.wait_for_log("wrong Message-Authenticator")
    events = audit_events(agent, user, "validate", 1)
    assert len(events) == 1, "a dropped request reached the agent"


def test_retransmission_gets_the_same_reply_and_one_validation(agent: RunningAgent, work: Path) -> None:
    user, uri = enroll(agent)
    with running_radiusd(agent, work) as radiusd:
        request, data = access_request(radiusd.secret, user, code_for_uri(uri, counter=0))
        replies: list[bytes] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nas:
            nas.bind(("127.0.0.1", 0))
            nas.sendto(data, ("127.0.0.1", radiusd.port))  # twice at once: the second while deciding
            nas.sendto(data, ("127.0.0.1", radiusd.port))
            nas.settimeout(3)
            replies.append(nas.recv(8192))
            assert verified_reply(request, replies[0]).code == 2  # Access-Accept
            nas.sendto(data, ("127.0.0.1", radiusd.port))  # once more, after the answer
            nas.settimeout(0.5)
            try:
                while True:
                    replies.append(nas.recv(8192))
            except TimeoutError:
                pass
        # One reply for the copy after the answer, and at most one for the copy sent at once
        # (none when it arrived while the first was being decided): all the same bytes.
        assert 2 <= len(replies) <= 3 and set(replies) == {replies[0]}, replies
        # The same bytes from another source port are another request: the code is spent now.
        other = exchange(radiusd.port, data)
        assert other is not None and other != replies[0] and other[0] == 3
        # A barrier: once this rejection is audited, every earlier decision is too.
        _barrier, wrong = access_request(radiusd.secret, user, wrong_code(uri))
        assert exchange(radiusd.port, wrong) is not None
        radiusd.wait_for_log("retransmission from test-nas: the same reply again")
    events = audit_events(agent, user, "validate", 3)
    assert [e["reason"] for e in events] == ["accepted", "replay", "bad_code"], events


def test_unknown_client_is_dropped_and_logged(agent: RunningAgent, work: Path) -> None:
    user, uri = enroll(agent)
    with running_radiusd(agent, work) as radiusd:
        request, data = access_request(radiusd.secret, user, code_for_uri(uri, counter=0))
        assert exchange(radiusd.port, data, source="127.0.0.7", timeout=0.5) is None
        radiusd.wait_for_log("dropping datagrams from 127.0.0.7: no client of the clients file")
        for _ in range(20):  # a flood from there: one line, counted
            assert exchange(radiusd.port, data, source="127.0.0.7", timeout=0.01) is None
        answer = exchange(radiusd.port, data)  # the same bytes from the client's address
        assert answer is not None and verified_reply(request, answer).code == 2
        log = radiusd.log()
    assert log.count("no client of the clients file") == 1, log


def test_a_burst_over_the_rate_limit_is_partly_dropped(agent: RunningAgent, work: Path) -> None:
    from pyrad.packet import AuthPacket, StatusServer

    from tests.radius.support import dictionary

    with running_radiusd(agent, work, rate_limit=5) as radiusd:
        burst = []
        for identifier in range(40):
            status = AuthPacket(
                code=StatusServer, id=identifier, secret=radiusd.secret.encode(), dict=dictionary()
            )
            status.add_message_authenticator()
            burst.append(status.RequestPacket())
        answered = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nas:
            nas.bind(("127.0.0.1", 0))
            for data in burst:
                nas.sendto(data, ("127.0.0.1", radiusd.port))
            nas.settimeout(0.5)
            try:
                while True:
                    reply = nas.recv(8192)
                    assert reply[0] == 2  # Status-Server is answered with Access-Accept (RFC 5997)
                    answered += 1
            except TimeoutError:
                pass
        assert 1 <= answered <= 10, answered  # a bucket of 5, refilled at 5/s during the burst
        radiusd.wait_for_log("client test-nas (127.0.0.1) is over the rate limit of 5 requests/s: dropping")


def test_unreachable_agent_means_access_reject(agent: RunningAgent, work: Path) -> None:
    user, uri = enroll(agent)
    with running_radiusd(agent, work, agent_socket=str(work / "no-agent.sock"), timeout=1) as radiusd:
        radiusd.wait_for_log("does not answer")  # the start-up probe: not fatal
        request, data = access_request(radiusd.secret, user, code_for_uri(uri, counter=0))
        started = time.monotonic()
        answer = exchange(radiusd.port, data, timeout=3)
        assert answer is not None and verified_reply(request, answer).code == 3, "not an Access-Reject"
        assert time.monotonic() - started < 2
        log = radiusd.wait_for_log(f"Access-Reject for user {user} from client test-nas")
    assert "ERROR otp_agent.radius: the agent at" in log and "agent_unreachable" in log


def test_sighup_reads_the_clients_file_again(agent: RunningAgent, work: Path) -> None:
    user, uri = enroll(agent)
    with running_radiusd(agent, work) as radiusd:
        clients = work / "clients"
        request, data = access_request(radiusd.secret, user, code_for_uri(uri, counter=0))
        assert exchange(radiusd.port, data, source="127.0.0.9", timeout=0.3) is None
        clients.write_text(f"127.0.0.1 {radiusd.secret} test-nas\n127.0.0.8/31 {radiusd.secret} pair\n")
        radiusd.process.send_signal(signal.SIGHUP)
        radiusd.wait_for_log("SIGHUP: 2 clients read from")
        answer = exchange(radiusd.port, data, source="127.0.0.9")
        assert answer is not None and verified_reply(request, answer).code == 2
        clients.chmod(0o644)  # refused: the old table stays
        radiusd.process.send_signal(signal.SIGHUP)
        radiusd.wait_for_log("keeping the 2 clients read before")
        radiusd.wait_for_log("Access-Accept for user " + user + " from client pair (127.0.0.9")


def test_non_root_validator_on_debian_pyrad_reconnects_past_the_agent_limits(
    agent: RunningAgent, work: Path
) -> None:
    """As uid nobody (in the agent's validator_group, nogroup) with Debian's python3 and
    python3-pyrad, as the package runs it: 70 accepted codes cross the 64 requests after which
    the agent closes a non-root peer's connection; none is lost."""
    require(os.geteuid() == 0, "switching to uid nobody needs root")
    require(os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON} is missing")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import pyrad.packet"], capture_output=True)
    require(probe.returncode == 0, "Debian's python3-pyrad is not installed")
    nobody = pwd.getpwnam("nobody")
    package = work / "lib"
    shutil.copytree(REPO / "otp_agent", package / "otp_agent", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [package, *package.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    work.mkdir(exist_ok=True)
    user, uri = enroll(agent)
    python = (SYSTEM_PYTHON, "-B")  # -B: no bytecode written into the copy
    with running_radiusd(
        agent, work, python=python, user=nobody.pw_uid, environment={"PYTHONPATH": str(package)}
    ) as radiusd:
        radiusd.wait_for_log("answers")  # the probe: reachable, and a validator
        assert "refuses" not in radiusd.log()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nas:
            nas.bind(("127.0.0.1", 0))
            for counter in range(70):
                request, data = access_request(radiusd.secret, user, code_for_uri(uri, counter=counter))
                answer = exchange(radiusd.port, data, sock=nas, timeout=5)
                assert answer is not None, f"no answer to request {counter}:\n{radiusd.log()[-3000:]}"
                assert verified_reply(request, answer).code == 2, (
                    f"request {counter}:\n{radiusd.log()[-3000:]}"
                )
    events = audit_events(agent, user, "validate", 70)
    assert len(events) == 70 and {e["peer_uid"] for e in events} == {nobody.pw_uid}
    pids = {e["peer_pid"] for e in events}
    assert len(pids) == 1


def test_sd_notify_ready_status_watchdog_and_stopping(agent: RunningAgent, work: Path) -> None:
    with running_radiusd(agent, work, environment={"WATCHDOG_USEC": "400000"}) as radiusd:
        assert any(m.startswith("STATUS=serving RADIUS on 127.0.0.1:") for m in radiusd.messages)
        assert f"MAINPID={radiusd.process.pid}" in radiusd.messages
        assert "WATCHDOG=1" in radiusd.notifications("WATCHDOG=1", timeout=2)
        radiusd.process.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in radiusd.notifications("STOPPING=1")
        assert radiusd.process.wait(15) == 0


def test_ipv6_and_ipv4_listen_addresses(agent: RunningAgent, work: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        require(False, "no IPv6 loopback (::1) here")
    user, uri = enroll(agent)
    secret = "s-" + secrets.token_hex(12)
    clients = f"127.0.0.1 {secret} v4-nas\n::1 {secret} v6-nas\n"
    with running_radiusd(
        agent, work, clients=clients, secret=secret, extra_listen=[f"[::1]:{port}"]
    ) as radiusd:
        request, data = access_request(secret, user, code_for_uri(uri, counter=0))
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as nas:
            nas.settimeout(3)
            nas.sendto(data, ("::1", port))
            answer = nas.recv(8192)
        assert verified_reply(request, answer).code == 2
        request, data = access_request(secret, user, code_for_uri(uri, counter=1))
        over_ipv4 = exchange(radiusd.port, data)
        assert over_ipv4 is not None and verified_reply(request, over_ipv4).code == 2
        radiusd.wait_for_log(f"Access-Accept for user {user} from client v6-nas (::1,")
    events = audit_events(agent, user, "validate", 2)
    assert [e["rhost"] for e in events] == ["::1", "127.0.0.1"]
