"""A real OpenSSH server for the end-to-end tests, and a paramiko client that logs in to it.

Owns: starting Debian's ``/usr/sbin/sshd`` on 127.0.0.1 with its own host key and configuration
(which includes contrib/sshd_config.d/otp-agent.conf), under a program name equal to a temporary
PAM service (sshd uses its program name as the PAM service: docs/pam.md), so the system's
/etc/pam.d/sshd is never touched; and a client doing publickey then keyboard-interactive.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from tests.conftest import require
from tests.pam.support import CONTRIB, LocalUser, pam_service

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    """A running sshd: its port, PAM service name and log."""

    port: int
    service: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@dataclass
class Login:
    """What one SSH login attempt saw."""

    accepted: bool
    remaining_after_publickey: list[str]
    prompts: list[tuple[str, str, list[str]]] = field(default_factory=list)
    output: str = ""
    exit_status: int | None = None
    error: str = ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_sshd(directory: Path, pam_text: str) -> Iterator[SshServer]:
    """Start sshd with a temporary PAM service holding ``pam_text``; stop it and clean up after."""
    require(os.path.exists(SSHD), "openssh-server is not installed (apt-get install openssh-server)")
    require(
        subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode == 0, "ssh-keygen missing"
    )
    directory.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    host_key = directory / "host_ed25519"
    if not host_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    with pam_service(pam_text, prefix="otp-sshd-e2e") as service:
        program = directory / service
        program.symlink_to(SSHD)
        port = _free_port()
        config = directory / f"{service}.conf"
        config.write_text(
            f"Include {CONTRIB / 'sshd_config.d' / 'otp-agent.conf'}\n"
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {directory / service}.pid\n"
            "PermitRootLogin no\nStrictModes no\nLogLevel VERBOSE\nLoginGraceTime 60\nMaxAuthTries 6\n"
            "MaxStartups 50\nPrintMotd no\nUseDNS no\n",
            encoding="utf-8",
        )
        check = subprocess.run([str(program), "-t", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log_path = directory / f"{service}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(program), "-D", "-e", "-f", str(config)], stdout=log, stderr=log, start_new_session=True
            )
        server = SshServer(port, service, log_path, process)
        try:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, server.log()
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                assert time.monotonic() < deadline, "sshd did not listen"
                time.sleep(0.05)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            program.unlink(missing_ok=True)


def authorize_key(user: LocalUser, directory: Path) -> paramiko.Ed25519Key:
    """Make a client key pair and install its public half in the user's ~/.ssh/authorized_keys."""
    key_file = directory / f"{user.name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    ssh_dir = user.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text((directory / f"{user.name}_ed25519.pub").read_text(), encoding="utf-8")
    for path in (ssh_dir, authorized):
        os.chown(path, user.uid, user.gid)
    authorized.chmod(0o600)
    return paramiko.Ed25519Key.from_private_key_file(str(key_file))


def ssh_login(
    server: SshServer,
    user: str,
    key: paramiko.PKey,
    answer: str | None | Callable[[], str],
    command: str = "echo hello-$(id -un)",
) -> Login:
    """Log in with ``key`` then answer every keyboard-interactive prompt with ``answer`` (or
    what ``answer()`` returns when the prompt comes, e.g. a code just mailed); on success run
    ``command`` in a session and collect its output."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    transport = paramiko.Transport(sock)
    transport.auth_timeout = 45
    try:
        transport.start_client(timeout=30)
        remaining = transport.auth_publickey(user, key)
        login = Login(False, list(remaining))
        if transport.is_authenticated():
            login.accepted = True
        else:

            def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
                login.prompts.append((title, instructions, [text for text, _echo in prompts]))
                text = answer() if callable(answer) else answer
                return [text or "" for _ in prompts]

            try:
                transport.auth_interactive(user, handler)
                login.accepted = True
            except paramiko.AuthenticationException as exc:
                login.error = str(exc)
                return login
        channel = transport.open_session(timeout=30)
        channel.exec_command(command)
        login.output = channel.makefile("rb").read().decode()
        login.exit_status = channel.recv_exit_status()
        return login
    finally:
        transport.close()
