"""The real daemon over its real socket: concurrency, durability, bad input, peers, lifecycle."""

from __future__ import annotations

import base64
import json
import os
import pwd
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from otp_agent.testing import RunningAgent, code_for_uri, start_agent
from tests.conftest import require
from tests.integration.agentclient import request, request_as


def hotp_agent_code(agent: RunningAgent, user: str) -> tuple[str, str]:
    serial, uri = agent.enroll(user, "--type", "hotp")
    return serial, uri


def test_concurrent_submissions_of_one_code_accept_exactly_once(tmp_path: Path) -> None:
    """16 clients race with the same valid code, 25 rounds: exactly one acceptance each round.

    (Each round's 15 replays count as failures, so the lock threshold is raised above 15.)
    """
    from otp_agent.testing import running_agent

    with running_agent(tmp_path / "a", policy={"lock_threshold": 50}) as agent:
        _race(agent)


def _race(agent: RunningAgent) -> None:
    _serial, uri = hotp_agent_code(agent, "alice")
    for round_number in range(25):
        submitted = code_for_uri(uri, counter=round_number)
        barrier = threading.Barrier(16)
        results: list[str] = []
        lock = threading.Lock()

        def submit() -> None:
            barrier.wait()
            reply = request(agent.socket_path, "validate", user="alice", code=submitted)
            with lock:
                results.append(reply["result"])

        threads = [threading.Thread(target=submit) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count("accept") == 1, (round_number, results)
        assert len(results) == 16


def test_concurrent_otpctl_processes_accept_exactly_once(agent: RunningAgent) -> None:
    """Separate otpctl processes racing with one TOTP code: one exit 0, the rest exit 1."""
    _serial, uri = agent.enroll("carol")
    submitted = agent.code_for(uri)
    command = [
        sys.executable,
        "-m",
        "otp_agent.cli",
        "--config",
        str(agent.config_path),
        "check",
        "carol",
        submitted,
    ]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(8)]
    for process in processes:
        process.communicate(timeout=60)
    assert sorted(p.returncode for p in processes) == [0] + [1] * 7


def test_acceptance_survives_sigkill(agent: RunningAgent) -> None:
    """Accepted, then SIGKILL at once: after restart the same code is a replay."""
    _serial, uri = agent.enroll("dave")
    submitted = agent.code_for(uri)
    assert request(agent.socket_path, "validate", user="dave", code=submitted)["result"] == "accept"
    os.kill(agent.process.pid, signal.SIGKILL)
    agent.process.wait(timeout=10)
    restarted = start_agent(agent.directory, agent.config_path, agent.socket_path)
    try:
        reply = request(restarted.socket_path, "validate", user="dave", code=submitted)
        assert (reply["result"], reply["reason"]) == ("reject", "replay")
    finally:
        restarted.stop()


def _raw(socket_path: Path, payload: bytes, *, half_close: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(str(socket_path))
        connection.sendall(payload)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
        return data


def _reply_of(data: bytes) -> dict:  # type: ignore[type-arg]
    (length,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + length])


@pytest.mark.parametrize(
    "payload,code",
    [
        (struct.pack(">I", 8) + b"not json", "protocol"),
        (struct.pack(">I", 100_000) + b"x" * 10, "protocol"),  # oversized for this peer? root: truncated
        (struct.pack(">I", 50) + b'{"v":1', "protocol"),  # truncated
        (struct.pack(">I", 19) + b'{"v":9,"op":"ping"}', "protocol"),  # unknown version
        (struct.pack(">I", 18) + b'{"v":1,"op":"zap"}', "usage"),  # unknown operation
        (struct.pack(">I", 2) + b"[]", "protocol"),
    ],
)
def test_malformed_requests_get_clear_errors_and_agent_keeps_serving(
    agent: RunningAgent, payload: bytes, code: str
) -> None:
    reply = _reply_of(_raw(agent.socket_path, payload))
    assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["message"]
    assert request(agent.socket_path, "ping")["ok"] is True


def test_oversized_frame_from_unprivileged_peer_is_refused(agent: RunningAgent) -> None:
    require(os.geteuid() == 0, "needs root to act as another uid")
    nobody = pwd.getpwnam("nobody")
    big = "9" * (70 * 1024)
    reply = request_as(nobody.pw_uid, nobody.pw_gid, agent.socket_path, "validate", user="nobody", code=big)
    # Refused: either the error reply arrives, or the agent closed while the client still wrote.
    assert reply.get("error", {}).get("code") == "protocol" or reply.get("exception") in (
        "BrokenPipeError",
        "ConnectionResetError",
    )
    assert request(agent.socket_path, "ping")["ok"] is True
    assert "frame length" in agent.log()


@pytest.mark.parametrize(
    "fields,reason",
    [
        ({"user": "nobody-here", "code": "123456"}, "no_token"),
        ({"user": "alice", "code": "12345a"}, "malformed"),
        ({"user": "alice", "code": "1234"}, "malformed"),
        ({"user": "alice", "code": "123456789"}, "malformed"),
    ],
)
def test_bad_users_and_codes_are_rejected(agent: RunningAgent, fields: dict, reason: str) -> None:  # type: ignore[type-arg]
    agent.enroll("alice")
    reply = request(agent.socket_path, "validate", **fields)
    assert (reply["result"], reply["reason"]) == ("reject", reason)


@pytest.mark.parametrize(
    "fields",
    [
        {"user": 5, "code": "123456"},
        {"code": "123456"},
        {"user": "alice", "code": None},
        {"user": "", "code": "123456"},
        {"user": "a\nb", "code": "123456"},
    ],
)
def test_wrongly_typed_fields_are_usage_errors(agent: RunningAgent, fields: dict) -> None:  # type: ignore[type-arg]
    assert request(agent.socket_path, "validate", **fields)["error"]["code"] == "usage"


def test_silent_client_is_dropped_while_others_are_served(tmp_path: Path) -> None:
    from otp_agent.testing import running_agent

    with running_agent(tmp_path / "a", sections={"agent": {"client_timeout": 1.0}}) as agent:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(str(agent.socket_path))
        assert request(agent.socket_path, "ping")["ok"]
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""  # Closed by the agent after client_timeout.
        assert time.monotonic() - started < 9
        silent.close()


def test_unprivileged_peer_may_only_validate_itself(agent: RunningAgent) -> None:
    require(os.geteuid() == 0, "needs root to act as another uid")
    nobody = pwd.getpwnam("nobody")
    agent.enroll("alice")
    forged = request_as(
        nobody.pw_uid, nobody.pw_gid, agent.socket_path, "validate", user="alice", code="123456"
    )
    assert forged["error"]["code"] == "permission"
    own = request_as(
        nobody.pw_uid, nobody.pw_gid, agent.socket_path, "validate", user="nobody", code="123456"
    )
    assert own["reason"] == "no_token"
    admin = request_as(nobody.pw_uid, nobody.pw_gid, agent.socket_path, "list")
    assert admin["error"]["code"] == "permission"
    enrolled = request_as(nobody.pw_uid, nobody.pw_gid, agent.socket_path, "enrolled", user="alice")
    assert enrolled["error"]["code"] == "permission"


def test_sigterm_finishes_the_request_in_flight(agent: RunningAgent) -> None:
    frame = json.dumps({"v": 1, "op": "ping"}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(str(agent.socket_path))
        connection.sendall(struct.pack(">I", len(frame)) + frame[:5])
        time.sleep(0.3)
        agent.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        connection.sendall(frame[5:])
        data = connection.recv(65536)
    assert _reply_of(data)["ok"] is True
    assert agent.process.wait(timeout=15) == 0


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    from otp_agent.testing import running_agent

    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(notify_path))
        receiver.settimeout(10)
        environment = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        with running_agent(tmp_path / "a", environment=environment) as agent:
            messages = [receiver.recv(4096).decode() for _ in range(2)]
            assert any(m.startswith("READY=1") for m in messages)
            assert "WATCHDOG=1" in [receiver.recv(4096).decode() for _ in range(2)]
            agent.stop()
        seen = []
        receiver.settimeout(2)
        try:
            while True:
                seen.append(receiver.recv(4096).decode())
        except TimeoutError:
            pass
    assert "STOPPING=1" in seen


def test_socket_activation(tmp_path: Path) -> None:
    from otp_agent.testing import default_sections, write_config

    directory = tmp_path / "a"
    directory.mkdir()
    sections = default_sections(directory)
    sections["agent"]["socket"] = str(directory / "unused.sock")
    config = write_config(directory, sections)
    subprocess.run([sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(config)], check=True)
    path = directory / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    launcher = (
        "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1';"
        "os.dup2(int(sys.argv[1]), 3); os.execv(sys.executable, [sys.executable, '-m', "
        "'otp_agent.daemon', '--config', sys.argv[2]])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", launcher, str(listener.fileno()), str(config)], pass_fds=(listener.fileno(),)
    )
    listener.close()
    try:
        assert request(path, "ping", timeout=15)["ok"] is True
        assert not (directory / "unused.sock").exists()
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


def test_check_config_and_startup_failures(agent: RunningAgent, tmp_path: Path) -> None:
    daemon = [sys.executable, "-m", "otp_agent.daemon"]
    agent.stop()
    good = subprocess.run(
        [*daemon, "--check-config", "--config", str(agent.config_path)], capture_output=True, text=True
    )
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(agent.config_path.read_text().replace("totp_window = 1", "totp_window = 99"))
    result = subprocess.run([*daemon, "--config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2 and "policy.totp_window" in result.stderr
    # A different master key than the database was created with: refuse to start.
    master = agent.directory / "master.key"
    original = master.read_bytes()
    master.write_bytes(os.urandom(32))
    result = subprocess.run([*daemon, "--config", str(agent.config_path)], capture_output=True, text=True)
    assert result.returncode == 4 and "does not match" in result.stderr
    master.write_bytes(original)
    (agent.directory / "tokens.db").rename(agent.directory / "moved.db")
    result = subprocess.run([*daemon, "--config", str(agent.config_path)], capture_output=True, text=True)
    assert result.returncode == 4 and "otp-agent init" in result.stderr


def test_init_never_overwrites(agent: RunningAgent) -> None:
    before = (agent.directory / "master.key").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(agent.config_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "kept existing master key" in result.stdout and "kept existing database" in result.stdout
    assert (agent.directory / "master.key").read_bytes() == before


def test_corrupted_sealed_secret_fails_closed(agent: RunningAgent) -> None:
    serial, uri = agent.enroll("erin")
    _serial2, uri2 = agent.enroll("frank")
    database = sqlite3.connect(agent.directory / "tokens.db")
    # Copy frank's sealed secret into erin's row: it must not open there.
    database.execute(
        "UPDATE tokens SET sealed = (SELECT sealed FROM tokens WHERE user_name = 'frank') WHERE serial = ?",
        (serial,),
    )
    database.commit()
    database.close()
    reply = request(agent.socket_path, "validate", user="erin", code=agent.code_for(uri2))
    assert (reply["result"], reply["reason"]) == ("reject", "sealed_secret_invalid")
    reply = request(agent.socket_path, "validate", user="erin", code=agent.code_for(uri))
    assert reply["result"] == "reject"
    assert (
        request(agent.socket_path, "validate", user="frank", code=agent.code_for(uri2))["result"] == "accept"
    )


def _secret_forms(uri: str) -> list[bytes]:
    text = parse_qs(urlparse(uri).query)["secret"][0]
    raw = base64.b32decode(text + "=" * (-len(text) % 8))
    return [raw, raw.hex().encode(), raw.hex().upper().encode(), text.encode(), base64.b64encode(raw)]


def test_no_secret_in_database_audit_log_or_errors(agent: RunningAgent) -> None:
    uris = [
        agent.enroll(f"user{i}", *opts)[1]
        for i, opts in enumerate([(), ("--type", "hotp"), ("--algorithm", "sha512", "--digits", "8")])
    ]
    for _uri in uris:
        agent.otpctl("check", "user0", "000000")
        request(agent.socket_path, "validate", user="user1", code="12345x")
    outputs = [
        agent.otpctl("list", "--json").stdout,
        agent.otpctl("show", "user0").stdout,
        agent.otpctl("status", "--json").stdout,
        agent.otpctl("show", "ghost").stderr,
    ]
    agent.stop()
    files = [
        p.read_bytes()
        for p in agent.directory.iterdir()
        if p.name.startswith(("tokens.db", "audit", "agent.log"))
    ]
    assert len(files) >= 3
    for uri in uris:
        for form in _secret_forms(uri):
            for blob in files + [o.encode() for o in outputs]:
                assert form not in blob


def test_init_creates_a_private_database_owned_by_the_state_directory_owner(agent_directory: Path) -> None:
    from otp_agent.testing import default_sections, write_config

    tmp_path = agent_directory  # nobody must be able to reach the state directory
    require(os.geteuid() == 0, "chown needs root")
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    sections = default_sections(tmp_path)
    sections["store"]["path"] = str(state / "tokens.db")
    config = write_config(tmp_path, sections)
    subprocess.run([sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(config)], check=True)
    info = (state / "tokens.db").stat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o600, nobody.pw_uid)
    assert (tmp_path / "master.key").stat().st_uid == 0


def test_sighup_reopens_the_audit_log(agent: RunningAgent) -> None:
    audit = agent.directory / "audit.log"
    _serial, uri = agent.enroll("gina")
    time.sleep(0.2)
    audit.rename(agent.directory / "audit.log.1")
    agent.process.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert request(agent.socket_path, "validate", user="gina", code=agent.code_for(uri))["result"] == "accept"
    agent.stop()
    assert '"user":"gina"' in audit.read_text() and '"event":"validate"' in audit.read_text()
    assert '"event":"enroll"' in (agent.directory / "audit.log.1").read_text()


def test_sighup_that_cannot_reopen_the_audit_log_does_not_stop_the_agent(agent: RunningAgent) -> None:
    """A failed reopen (here: a directory where the log was) is logged; the daemon goes on,
    writing to the file it had, instead of dying from an exception in its signal handler."""
    audit = agent.directory / "audit.log"
    _serial, uri = agent.enroll("hana")
    time.sleep(0.2)
    audit.rename(agent.directory / "audit.log.1")
    audit.mkdir()
    agent.process.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert agent.process.poll() is None
    assert request(agent.socket_path, "validate", user="hana", code=agent.code_for(uri))["result"] == "accept"
    agent.stop()
    assert '"user":"hana"' in (agent.directory / "audit.log.1").read_text()


def test_one_unprivileged_user_cannot_take_every_connection_slot(agent_directory: Path) -> None:
    """With max_clients = 8, uid nobody may hold 2 connections; a third is refused as busy,
    while root (pam_exec's helper under sshd and login) is still served."""
    from otp_agent.testing import running_agent

    require(os.geteuid() == 0, "needs root to act as another uid")
    nobody = pwd.getpwnam("nobody")
    with running_agent(
        agent_directory, sections={"agent": {"max_clients": 8, "client_timeout": 20.0}}
    ) as agent:
        read_end, write_end = os.pipe()
        release_read, release_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                held = []
                for _ in range(2):
                    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    connection.connect(str(agent.socket_path))
                    held.append(connection)
                time.sleep(0.5)
                try:
                    reply = request(agent.socket_path, "ping", timeout=5)
                except OSError as exc:
                    reply = {"exception": type(exc).__name__}
                os.write(write_end, json.dumps(reply).encode())
                os.read(release_read, 1)  # Hold the two connections until the parent is done.
            finally:
                os._exit(0)
        os.close(write_end)
        third = json.loads(os.read(read_end, 65536))
        try:
            assert third.get("error", {}).get("code") == "unreachable", third
            assert request(agent.socket_path, "ping")["ok"] is True  # Root is still served.
        finally:
            os.write(release_write, b"x")
            os.waitpid(pid, 0)
        assert request_as(nobody.pw_uid, nobody.pw_gid, agent.socket_path, "ping")["ok"] is True
        assert "holds too many connections" in agent.log()
