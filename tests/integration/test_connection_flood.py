"""A flood of connections from one unprivileged uid never fails a root request.

Before the fix, four processes of one user in a tight connect/close loop made 14 of 35 root
PAM-helper runs fail: the listen backlog (128) was full, and a global slot was taken before the
per-uid cap applied.  Now the backlog is sized for bursts, the helper waits while the backlog is
full, the per-uid cap comes first, and unprivileged connections are bounded in requests.
"""

from __future__ import annotations

import os
import pwd
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from otp_agent import wire
from otp_agent.daemon.server import NON_ROOT_MAX_REQUESTS
from otp_agent.errors import ProtocolError
from otp_agent.testing import code_for_uri, running_agent
from tests.conftest import require
from tests.integration.agentclient import request_as
from tests.pam.support import run_helper

FLOOD_SECONDS = 8.0


def _as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


@contextmanager
def flood(socket_path: Path, processes: int = 4) -> Iterator[list[int]]:
    """``processes`` children of uid nobody: all but one connect and close in a tight loop, the
    last holds as many connections as it can and pings on them; bounded in time, always reaped."""
    children = []
    for index in range(processes + 1):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                _as_nobody()
                ends = time.monotonic() + FLOOD_SECONDS
                if index < processes:
                    while time.monotonic() < ends:
                        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                            connection.settimeout(1.0)
                            try:
                                connection.connect(str(socket_path))
                            except OSError:
                                pass
                else:
                    held = []
                    for _ in range(64):
                        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        connection.settimeout(2.0)
                        try:
                            connection.connect(str(socket_path))
                            held.append(connection)
                        except OSError:
                            connection.close()
                    while time.monotonic() < ends:
                        for connection in held:
                            try:
                                wire.exchange(
                                    connection, {"v": 1, "op": "ping"}, deadline=time.monotonic() + 2
                                )
                            except (OSError, ProtocolError):
                                pass
                        time.sleep(0.05)
            finally:
                os._exit(0)
        children.append(pid)
    try:
        yield children
    finally:
        for pid in children:
            os.waitpid(pid, 0)


def test_a_flood_from_one_uid_never_fails_a_root_login(agent_directory: Path) -> None:
    require(os.geteuid() == 0, "needs root to act as another uid")
    with running_agent(agent_directory, policy={"hotp_lookahead": 50}) as agent:
        _serial, uri = agent.enroll("alice", "--type", "hotp")
        with flood(agent.socket_path):
            time.sleep(0.5)  # Let the flood fill the backlog and the per-uid quota first.
            outcomes = []
            for counter in range(35):
                helper = run_helper(
                    agent.socket_path,
                    "--timeout",
                    "10",
                    user="alice",
                    answer=code_for_uri(uri, counter=counter).encode(),
                )
                outcomes.append((helper.returncode, helper.stderr.decode(errors="replace")[-200:]))
        failed = [o for o in outcomes if o[0] != 0]
        assert not failed, failed
        assert "holds too many connections" in agent.log()


def test_an_unprivileged_connection_is_bounded_in_requests(agent_directory: Path) -> None:
    """Pings cannot keep an unprivileged connection for ever: it is closed after a bounded
    number of requests (root's are not)."""
    require(os.geteuid() == 0, "needs root to act as another uid")
    nobody = pwd.getpwnam("nobody")
    with running_agent(agent_directory) as agent:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                _as_nobody()
                answered = 0
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                    connection.settimeout(5)
                    connection.connect(str(agent.socket_path))
                    for _ in range(NON_ROOT_MAX_REQUESTS + 10):
                        try:
                            reply = wire.exchange(connection, {"v": 1, "op": "ping"})
                        except OSError:
                            break
                        if reply is None:
                            break
                        answered += 1
                os.write(write_end, str(answered).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        answered = int(os.read(read_end, 64))
        os.waitpid(pid, 0)
        assert answered == NON_ROOT_MAX_REQUESTS
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            connection.connect(str(agent.socket_path))
            for _ in range(NON_ROOT_MAX_REQUESTS + 10):
                assert wire.exchange(connection, {"v": 1, "op": "ping"})["ok"] is True  # type: ignore[index]
        assert request_as(nobody.pw_uid, nobody.pw_gid, agent.socket_path, "ping")["ok"] is True


def _served_connection(socket_path: Path) -> socket.socket:
    """A connection a worker is serving: its ping answered, the worker now waits for its next
    frame.  Retried while the agent answers busy (a worker may still be ending a connection, such
    as running_agent's start-up probe); bounded."""
    deadline = time.monotonic() + 10
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(5)
        connection.connect(str(socket_path))
        reply = wire.exchange(connection, {"v": 1, "op": "ping"}, deadline=time.monotonic() + 5)
        if reply is not None and reply.get("ok") is True:
            return connection
        connection.close()
        assert time.monotonic() < deadline, f"no worker took a connection: {reply}"
        time.sleep(0.1)


def test_busy_is_answered_when_every_worker_serves(agent_directory: Path) -> None:
    """Every worker holding a connection (two idle clients, max_clients 2): a third client is
    told "busy" at once instead of waiting in the backlog; once a worker is free, it is served."""
    with running_agent(
        agent_directory, sections={"agent": {"max_clients": 2, "client_timeout": 20.0}}
    ) as agent:
        held: list[socket.socket] = []
        try:
            for _ in range(2):
                held.append(_served_connection(agent.socket_path))
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as third:
                third.settimeout(5)
                third.connect(str(agent.socket_path))
                # Waiting in the backlog instead would end in TimeoutError: 5 s with no answer.
                reply = wire.exchange(third, {"v": 1, "op": "ping"}, deadline=time.monotonic() + 5)
            assert reply is not None and reply.get("error", {}).get("code") == "unreachable", reply
            held.pop().close()
            _served_connection(agent.socket_path).close()  # the freed worker takes the next one
        finally:
            for connection in held:
                connection.close()
        assert "too many clients (2)" in agent.log()


def test_a_silent_client_does_not_hold_up_the_others(agent_directory: Path) -> None:
    """The worker serving a silent connection waits for it alone: the other workers keep
    accepting and answering (leader and followers: the listener passes on at once)."""
    with running_agent(agent_directory, sections={"agent": {"client_timeout": 20.0}}) as agent:
        silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(5)]
        try:
            for connection in silent:
                connection.connect(str(agent.socket_path))
            for _ in range(50):  # each bounded: a held-up one ends in TimeoutError
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(5)
                    client.connect(str(agent.socket_path))
                    reply = wire.exchange(client, {"v": 1, "op": "ping"}, deadline=time.monotonic() + 5)
                assert reply is not None and reply.get("ok") is True, reply
        finally:
            for connection in silent:
                connection.close()
