"""Machinery of the otp-radiusd tests: the daemon as a real subprocess, radclient, pyrad, raw UDP.

:func:`running_radiusd` writes a configuration (the agent's own agent.toml with a ``[radius]``
table added) and a 0600 clients file, starts ``python -m otp_agent.radius`` on a free UDP port
of 127.0.0.1 with a NOTIFY_SOCKET of its own, waits for its sd_notify ``READY=1``, and on leaving
stops it with SIGTERM and checks that it exited 0 and logged no shared secret.  Requests are sent
by Debian's radclient (:func:`radclient`), by pyrad's client, or as raw datagrams built with pyrad
(:func:`access_request`, :func:`exchange`) when the test needs the bytes themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otp_agent.testing import RunningAgent
from tests.conftest import require

RADCLIENT = "/usr/bin/radclient"
READY_TIMEOUT = 15.0
DICTIONARY = Path(__file__).resolve().parents[2] / "otp_agent" / "radius" / "dictionary"


def require_radclient() -> None:
    require(os.access(RADCLIENT, os.X_OK), f"{RADCLIENT} is missing (Debian package freeradius-utils)")


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))


@dataclass
class Radiusd:
    """A running otp-radiusd."""

    process: subprocess.Popen[bytes]
    port: int
    secret: str
    config: Path
    log_path: Path
    notify: socket.socket
    #: What it sent to its NOTIFY_SOCKET so far (read by :meth:`notifications`).
    messages: list[str] = field(default_factory=list)

    def notifications(self, until: str, timeout: float = 5.0) -> list[str]:
        """The sd_notify lines received, once one equals ``until`` (or after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        self.notify.settimeout(0.05)
        while until not in self.messages and time.monotonic() < deadline:
            try:
                self.messages += self.notify.recv(4096).decode(errors="replace").splitlines()
            except TimeoutError:
                continue
        return self.messages

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """The log once it contains ``needle`` (AssertionError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if needle in text:
                return text
            assert time.monotonic() < deadline, f"{needle!r} not in the log of otp-radiusd:\n{text[-4000:]}"
            time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL (and AssertionError) when it does not stop."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
            raise AssertionError("otp-radiusd did not stop on SIGTERM") from None


def write_radius_config(
    agent: RunningAgent, directory: Path, radius: Mapping[str, Any], *, name: str = "radius.toml"
) -> Path:
    """The agent's agent.toml with ``[radius]`` = ``radius`` appended, in ``directory``."""
    lines = [f"{key} = {_toml(value)}" for key, value in radius.items()]
    path = directory / name
    path.write_text(agent.config_path.read_text(encoding="utf-8") + "\n[radius]\n" + "\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


@contextlib.contextmanager
def running_radiusd(
    agent: RunningAgent,
    directory: Path,
    *,
    clients: str | None = None,
    secret: str | None = None,
    python: Sequence[str] = (sys.executable,),
    user: int | None = None,
    environment: Mapping[str, str] | None = None,
    extra_listen: Sequence[str] = (),
    **radius: Any,
) -> Iterator[Radiusd]:
    """otp-radiusd for ``agent`` in ``directory`` (made), serving 127.0.0.1 with ``secret``.

    ``clients`` replaces the clients file's text (by default one line: 127.0.0.1 and the secret);
    ``radius`` adds or overrides keys of the ``[radius]`` table; ``user`` runs the daemon as that
    uid (and its primary group), the clients file then being that user's; ``extra_listen``
    adds listen addresses after 127.0.0.1:``port``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o711)
    secret = secret or "s-" + secrets.token_hex(12)
    port = free_udp_port()
    clients_file = directory / "clients"
    clients_file.write_text(
        clients if clients is not None else f"# the test's NAS\n127.0.0.1 {secret} test-nas\n"
    )
    clients_file.chmod(0o600)
    if user is not None:
        os.chown(clients_file, user, -1)
    table = {"listen": [f"127.0.0.1:{port}", *extra_listen], "clients_file": str(clients_file), **radius}
    config = write_radius_config(agent, directory, table)
    log_path = directory / "otp-radiusd.log"
    notify_path = directory / f"notify-{secrets.token_hex(4)}.sock"
    with contextlib.ExitStack() as stack:
        notify = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        notify.bind(str(notify_path))
        if user is not None:
            os.chown(notify_path, user, -1)
        output = stack.enter_context(open(log_path, "wb"))
        env = dict(os.environ)
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(name, None)
        env.update(environment or {}, NOTIFY_SOCKET=str(notify_path))
        process = subprocess.Popen(
            [*python, "-m", "otp_agent.radius", "--config", str(config), "--log-level", "DEBUG"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            user=user,
            group=None if user is None else _primary_group(user),
            extra_groups=None if user is None else [],
            cwd="/",
        )
        daemon = Radiusd(process, port, secret, config, log_path, notify)
        failed = True
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while "READY=1" not in daemon.messages and process.poll() is None and time.monotonic() < deadline:
                daemon.notifications("READY=1", timeout=0.2)
            assert "READY=1" in daemon.messages, (
                f"otp-radiusd sent no READY=1 (exit {process.poll()}):\n{daemon.log()[-4000:]}"
            )
            yield daemon
            # (A test may stop it itself; exiting 0 then is checked below.)
            assert process.poll() in (None, 0), f"otp-radiusd exited during the test:\n{daemon.log()[-4000:]}"
            failed = False
        finally:
            status = daemon.stop()
        if not failed:
            log = daemon.log()
            assert status == 0, f"otp-radiusd exited {status} on SIGTERM:\n{log[-4000:]}"
            assert secret not in log, "the shared secret reached the log"
            assert "Traceback" not in log, log[-4000:]


def _primary_group(uid: int) -> int:
    import pwd

    return pwd.getpwuid(uid).pw_gid


# --------------------------------------------------------------------------- radclient


@dataclass
class Answer:
    """What radclient received: the code ("" for no reply) and the reply's attributes."""

    code: str
    attributes: dict[str, str]
    output: str


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def radclient(
    port: int, secret: str, attributes: Mapping[str, str], *, timeout: float = 3.0, signed: bool = True
) -> Answer:
    """One Access-Request by Debian's radclient (one try: ``-r 1``); values are radclient syntax.

    With ``signed`` the request lists ``Message-Authenticator = 0x00``, which radclient computes.
    """
    fields = dict(attributes)
    if signed:
        fields["Message-Authenticator"] = "0x00"
    lines = ", ".join(f"{name} = {value}" for name, value in fields.items()) + "\n"
    result = subprocess.run(
        [RADCLIENT, "-x", "-r", "1", "-t", f"{timeout:g}", f"127.0.0.1:{port}", "auth", secret],
        input=lines,
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    output = result.stdout + result.stderr
    code, received, reply = "", False, {}
    for line in output.splitlines():
        if line.startswith("Received "):
            code, received = line.split()[1], True
        elif received and line.startswith("\t") and " = " in line:
            name, _, value = line.strip().partition(" = ")
            reply[name] = value
        elif received:
            received = False
    return Answer(code, reply, output)


# --------------------------------------------------------------------------- pyrad and raw UDP


def dictionary() -> Any:
    """The dictionary otp-radiusd ships (the test client uses the same attributes)."""
    from pyrad.dictionary import Dictionary

    return Dictionary(str(DICTIONARY))


def access_request(
    secret: str,
    user: str,
    password: str,
    *,
    state: bytes | None = None,
    nas: str | None = "test-nas",
    message_authenticator: bool = True,
    packet_id: int | None = None,
) -> tuple[Any, bytes]:
    """An Access-Request built and signed by pyrad: (the packet, its bytes)."""
    from pyrad.packet import AuthPacket

    packet = AuthPacket(id=packet_id, secret=secret.encode(), dict=dictionary())
    packet["User-Name"] = user
    packet["User-Password"] = packet.PwCrypt(password)
    if nas is not None:
        packet["NAS-Identifier"] = nas
    if state is not None:
        packet["State"] = state
    if message_authenticator:
        packet.add_message_authenticator()
    return packet, packet.RequestPacket()


def forge_message_authenticator(data: bytes) -> bytes:
    """``data`` (built by :func:`access_request`) with another Message-Authenticator value."""
    assert data[20:22] == bytes([80, 18]), "the Message-Authenticator is not the first attribute"
    return data[:22] + bytes(a ^ 0xFF for a in data[22:38]) + data[38:]


def exchange(
    port: int,
    data: bytes,
    *,
    timeout: float = 2.0,
    source: str = "127.0.0.1",
    sock: socket.socket | None = None,
) -> bytes | None:
    """Send ``data`` to 127.0.0.1:``port`` and return the first datagram back (None: no answer)."""
    with contextlib.ExitStack() as stack:
        if sock is None:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(8192)
        except TimeoutError:
            return None


def verified_reply(request: Any, raw: bytes) -> Any:
    """pyrad's decoding of ``raw``, after pyrad checked it answers ``request`` and is signed."""
    reply = request.CreateReply(packet=raw)
    assert request.VerifyReply(reply, raw, enforce_ma=True), "bad Response or Message-Authenticator"
    assert raw[20] == 80, "the Message-Authenticator is not the reply's first attribute"
    return reply


# --------------------------------------------------------------------------- the agent's audit


def audit_events(
    agent: RunningAgent, user: str, event: str, count: int, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """The agent's audit events ``event`` for ``user``, once there are ``count`` (written in batches)."""
    audit = agent.directory / "audit.log"
    deadline = time.monotonic() + timeout
    while True:
        text = audit.read_text(encoding="utf-8") if audit.exists() else ""
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        mine = [e for e in events if e.get("user") == user and e.get("event") == event]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.02)
