"""otp_agent.client, the applications' (and otpctl's) client: against a real agent, and against
small test listeners for what a healthy agent never does (stay silent, drop a connection)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from otp_agent import __version__, wire
from otp_agent import client as client_module
from otp_agent.client import DEFAULT_SOCKET, AgentClient, SentCode, ValidationResult
from otp_agent.errors import (
    AgentUnreachable,
    NotFound,
    PermissionDenied,
    ProtocolError,
    PskcError,
    UsageError,
)
from otp_agent.testing import RunningAgent, code_for_uri
from tests.conftest import require

# -- a test listener ----------------------------------------------------------------------------


class Listener:
    """A Unix socket whose every connection is handed to ``behaviour`` in a thread, in turn."""

    def __init__(self, path: Path, behaviour: Callable[[Listener, socket.socket], None]) -> None:
        self.path, self.behaviour = path, behaviour
        self.requests: list[dict[str, Any]] = []
        self.connections = self.closed = 0
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with connection:
                connection.settimeout(5.0)
                try:
                    self.behaviour(self, connection)
                except OSError:
                    pass
            self.closed += 1

    def read(self, connection: socket.socket) -> dict[str, Any] | None:
        request = wire.recv_frame(connection, max_frame=wire.MAX_ADMIN_FRAME)
        if request is not None:
            self.requests.append(request)
        return request

    def wait_closed(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while self.closed < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.closed >= count


@contextmanager
def listening(path: Path, behaviour: Callable[[Listener, socket.socket], None]) -> Iterator[Listener]:
    listener = Listener(path, behaviour)
    listener.thread.start()
    try:
        yield listener
    finally:
        listener.stopping.set()
        listener.thread.join(10)
        listener.sock.close()


def silent(listener: Listener, connection: socket.socket) -> None:
    """Accept and never answer."""
    listener.stopping.wait(30)


def read_then_close(listener: Listener, connection: socket.socket) -> None:
    """Read the request and close without answering (the agent died after reading it)."""
    listener.read(connection)


def answering(reply: dict[str, Any], *, once: bool = False) -> Callable[[Listener, socket.socket], None]:
    """Answer every request (or only the first of each connection) with ``reply``."""

    def behaviour(listener: Listener, connection: socket.socket) -> None:
        while listener.read(connection) is not None:
            wire.send_frame(connection, wire.ok_reply(**reply))
            if once:
                return

    return behaviour


ACCEPT = {"result": "accept", "reason": "accepted", "serial": "S1"}

# -- against a real agent -----------------------------------------------------------------------


def other_code(uri: str) -> str:
    """A well-formed code that no step near now gives."""
    near = {code_for_uri(uri, steps=s) for s in range(-3, 4)}
    candidate = int(code_for_uri(uri))
    while f"{candidate:06d}" in near:
        candidate = (candidate + 1) % 1_000_000
    return f"{candidate:06d}"


def test_validate_accepts_refuses_a_replay_and_a_bad_code(agent: RunningAgent) -> None:
    serial, uri = agent.enroll("alice")
    with AgentClient(agent.socket_path) as client:
        code = code_for_uri(uri)
        assert client.validate("alice", code, rhost="192.0.2.7") == ValidationResult(True, "accepted", serial)
        replay = client.validate("alice", code)
        assert (replay.accepted, replay.reason) == (False, wire.Reason.REPLAY.value)
        bad = client.validate("alice", other_code(uri))
        assert (bad.accepted, bad.reason) == (False, "bad_code")
        assert client.validate("bob", "123456") == ValidationResult(False, "no_token", None)
        mixed = client.validate_password_and_code("alice", "not-the-password" + other_code(uri))
        assert (mixed.accepted, mixed.reason) == (False, "bad_password_or_code")


def test_enrolled_and_ping(agent: RunningAgent) -> None:
    agent.enroll("alice")
    with AgentClient(agent.socket_path) as client:
        assert client.enrolled("alice") is True
        assert client.enrolled("bob") is False
        assert client.ping() == __version__


def test_error_replies_are_raised_as_their_class(agent: RunningAgent) -> None:
    with AgentClient(agent.socket_path) as client:
        with pytest.raises(NotFound, match="no token"):
            client.request("show", target="nobody-has-this")
        with pytest.raises(UsageError, match="unknown operation 'frobnicate'"):
            client.request("frobnicate")
        with pytest.raises(UsageError):
            client.request("enroll", user="alice", type="bogus")
        if "send" not in wire.OPERATIONS:  # until the daemon answers "send"
            with pytest.raises(UsageError, match="unknown operation 'send'"):
                client.send_code("alice")
        assert client.request("list")["tokens"] == []  # the connection survived the errors


def test_a_peer_outside_the_validator_group_gets_permission_denied(agent: RunningAgent) -> None:
    require(os.geteuid() == 0, "needs root to act as another uid")
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        outcome = "no error"
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            with AgentClient(agent.socket_path, timeout=5) as client:
                client.validate("alice", "123456")
        except BaseException as exc:
            outcome = type(exc).__name__
        finally:
            os.write(write_end, outcome.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    assert outcome == PermissionDenied.__name__


# -- failures -----------------------------------------------------------------------------------


def test_no_agent_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(AgentUnreachable, match="not running"):
        AgentClient(tmp_path / "agent.sock").ping()
    (tmp_path / "not-a-socket").write_text("")
    with pytest.raises(AgentUnreachable):
        AgentClient(tmp_path / "not-a-socket").validate("alice", "123456")


@pytest.mark.parametrize("call", ["ping", "validate"])
def test_a_silent_agent_times_out_within_the_timeout(tmp_path: Path, call: str) -> None:
    with (
        listening(tmp_path / "agent.sock", silent),
        AgentClient(tmp_path / "agent.sock", timeout=0.5) as client,
    ):
        started = time.monotonic()
        with pytest.raises(AgentUnreachable, match=r"did not answer within 0\.5 s"):
            client.ping() if call == "ping" else client.validate("alice", "123456")
        assert 0.45 <= time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.validate("alice", "123456"),
        lambda c: c.validate_password_and_code("alice", "pw123456"),
        lambda c: c.send_code("alice"),
        lambda c: c.request("enroll", user="alice"),
    ],
    ids=["validate", "password_and_code", "send", "request"],
)
def test_a_broken_connection_is_never_retried_for_a_validate_or_send(
    tmp_path: Path, call: Callable[[AgentClient], object]
) -> None:
    with listening(tmp_path / "agent.sock", read_then_close) as listener:
        with AgentClient(tmp_path / "agent.sock", timeout=5) as client, pytest.raises(AgentUnreachable):
            call(client)
        listener.wait_closed(1)
        time.sleep(0.1)  # a second connection would be accepted by now
        assert (listener.connections, len(listener.requests)) == (1, 1)


def test_ping_and_enrolled_are_sent_again_once_after_a_broken_connection(tmp_path: Path) -> None:
    with listening(tmp_path / "agent.sock", read_then_close) as listener:
        with AgentClient(tmp_path / "agent.sock", timeout=5) as client:
            with pytest.raises(AgentUnreachable, match="without answering"):
                client.ping()
            with pytest.raises(AgentUnreachable):
                client.enrolled("alice")
        listener.wait_closed(4)
        assert [r["op"] for r in listener.requests] == ["ping", "ping", "enrolled", "enrolled"]


def test_a_connection_the_agent_closed_is_replaced_before_a_validate_is_written(tmp_path: Path) -> None:
    with listening(tmp_path / "agent.sock", answering(ACCEPT, once=True)) as listener:
        with AgentClient(tmp_path / "agent.sock", timeout=5) as client:
            assert client.validate("alice", "123456").accepted
            listener.wait_closed(1)
            assert client.validate("alice", "654321") == ValidationResult(True, "accepted", "S1")
        assert (listener.connections, [r["code"] for r in listener.requests]) == (2, ["123456", "654321"])


def test_one_connection_is_reused_while_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with listening(tmp_path / "agent.sock", answering({"version": "9"})) as listener:
        with AgentClient(tmp_path / "agent.sock") as client:
            assert [client.ping() for _ in range(5)] == ["9"] * 5
            assert listener.connections == 1
            monkeypatch.setattr(client_module, "REUSE_MAX_IDLE", 0.0)
            client.ping()
            assert listener.connections == 2
        listener.wait_closed(2)  # the context manager closed the connection


def test_the_busy_refusal_is_read_and_not_retried(tmp_path: Path) -> None:
    def busy(listener: Listener, connection: socket.socket) -> None:
        connection.sendall(wire.encode_frame(wire.error_reply("unreachable", "agent busy, try again")))

    with listening(tmp_path / "agent.sock", busy) as listener:
        with AgentClient(tmp_path / "agent.sock") as client, pytest.raises(AgentUnreachable, match="busy"):
            client.validate("alice", "123456")
        listener.wait_closed(1)
        assert listener.connections == 1


def test_validate_sends_the_application_context(tmp_path: Path) -> None:
    with listening(tmp_path / "agent.sock", answering(ACCEPT)) as listener:
        with AgentClient(tmp_path / "agent.sock") as client:
            client.validate("alice", "123456", rhost="192.0.2.7")
            client.validate_password_and_code("alice", "pw123456", service="webmail")
    assert listener.requests == [
        {"v": 1, "op": "validate", "user": "alice", "code": "123456", "service": "app", "rhost": "192.0.2.7"},
        {"v": 1, "op": "validate", "user": "alice", "password_and_code": "pw123456", "service": "webmail"},
    ]


def test_send_code_sends_op_send_and_reads_its_reply(tmp_path: Path) -> None:
    reply = {"serial": "OOB1", "channel": "sms", "address": "+44 **** ***123", "expires": 1_700_000_300}
    with listening(tmp_path / "agent.sock", answering(reply)) as listener:
        with AgentClient(tmp_path / "agent.sock") as client:
            sent = client.send_code("alice", serial="OOB1")
            assert sent == SentCode("OOB1", "sms", "+44 **** ***123", 1_700_000_300.0)
            client.send_code("bob")
    assert listener.requests == [
        {"v": 1, "op": "send", "user": "alice", "serial": "OOB1"},
        {"v": 1, "op": "send", "user": "bob"},
    ]
    with listening(tmp_path / "other.sock", answering({"serial": "OOB1", "expires": True})):
        with AgentClient(tmp_path / "other.sock") as client, pytest.raises(ProtocolError):
            client.send_code("alice")


def test_pskc_problems_and_unknown_codes(tmp_path: Path) -> None:
    replies = iter(
        [
            wire.error_reply("pskc", "file refused"),
            wire.error_reply("something_new", "a later agent's error"),
            {"v": 1, "ok": True, "result": "maybe"},
        ]
    )

    def behaviour(listener: Listener, connection: socket.socket) -> None:
        while listener.read(connection) is not None:
            reply = next(replies)
            if reply.get("error", {}).get("code") == "pskc":
                reply["error"]["problems"] = ["key 1: no secret"]
            wire.send_frame(connection, reply)

    with listening(tmp_path / "agent.sock", behaviour), AgentClient(tmp_path / "agent.sock") as client:
        with pytest.raises(PskcError) as refused:
            client.request("import", tokens=[])
        assert refused.value.problems == ["key 1: no secret"]
        with pytest.raises(Exception, match="a later agent's error") as unknown:
            client.request("status")
        assert type(unknown.value).__name__ == "OtpAgentError"
        with pytest.raises(ProtocolError):
            client.validate("alice", "123456")


# -- the module itself --------------------------------------------------------------------------


def test_importing_the_client_loads_nothing_heavy() -> None:
    script = "import sys, otp_agent.client; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert {m for m in loaded if m.startswith("otp_agent")} == {
        "otp_agent",
        "otp_agent.client",
        "otp_agent.errors",
        "otp_agent.wire",
    }
    for heavy in ("cryptography", "lxml", "psycopg", "psycopg_pool", "segno", "pam", "sqlite3", "tomllib"):
        assert heavy not in loaded, heavy


def test_defaults_and_bounds_match_the_agent() -> None:
    from otp_agent.cli.client import AgentClient as OtpctlClient
    from otp_agent.config import AgentConfig
    from otp_agent.daemon import server

    assert OtpctlClient is AgentClient
    assert DEFAULT_SOCKET == AgentConfig.socket
    assert client_module.REUSE_MAX_AGE < server.NON_ROOT_LIFETIME
    assert client_module.REUSE_MAX_REQUESTS < server.NON_ROOT_MAX_REQUESTS
    assert client_module.REUSE_MAX_IDLE < AgentConfig.client_timeout
    for timeout in (0, -1.0):
        with pytest.raises(UsageError):
            AgentClient(timeout=timeout)


def test_threads_may_share_one_client(tmp_path: Path) -> None:
    with listening(tmp_path / "agent.sock", answering({"version": "9"})) as listener:
        with AgentClient(tmp_path / "agent.sock") as client:
            answers: list[str] = []

            def pings() -> None:
                answers.extend(client.ping() for _ in range(20))

            threads = [threading.Thread(target=pings) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        assert answers == ["9"] * 80
        assert listener.connections == -(-80 // client_module.REUSE_MAX_REQUESTS)  # one per 48 requests
