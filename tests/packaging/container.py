"""A throw-away systemd container of this very machine, to run the installed unit for real.

The host has no systemd as PID 1, so ``systemctl start`` cannot be tried on it. systemd-nspawn
boots the host's own root file system as a container with ``--volatile=overlay``: every write
goes to a tmpfs that disappears with the container, so the host's files (and /tmp) are never
touched. The container gets no network (``--private-network``) and boots only a small target that
wants the otp-agent units, not the host's multi-user.target. Commands run inside with nsenter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

NSPAWN = "/usr/bin/systemd-nspawn"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TARGET = """[Unit]
Description=otp-agent installation test
Wants=otp-agent.socket otp-agent.service
"""


class Container:
    """``with Container(binds) as c: c.run(...)``; binds maps host files to container paths."""

    def __init__(self, binds: dict[Path, str], log: Path) -> None:
        self.binds = binds
        self.log = log
        self.workdir = Path(tempfile.mkdtemp(prefix="otp-nspawn-", dir="/var/tmp"))
        self.root = self.workdir / "root"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def __enter__(self) -> Container:
        self.root.mkdir()
        subprocess.run(["mount", "--bind", "/", str(self.root)], check=True)
        target = self.workdir / "otp-install-test.target"
        target.write_text(TARGET, encoding="utf-8")
        binds = {target: "/etc/systemd/system/otp-install-test.target", **self.binds}
        command = [
            NSPAWN,
            "--quiet",
            f"--directory={self.root}",
            "--volatile=overlay",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--machine=otp-install-test",
            "--boot",
        ]
        command += [f"--bind-ro={source}:{destination}" for source, destination in binds.items()]
        command += ["systemd.unit=otp-install-test.target"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": PATH, "LANG": "C.UTF-8"},
            )
        try:
            self._wait_for_leader()
        except BaseException:
            self.__exit__(None, None, None)  # never leave the container (or its Popen) behind
            raise
        return self

    def _wait_for_leader(self) -> None:
        """Wait until the container's systemd runs; nspawn's children come and go meanwhile."""
        assert self.process is not None
        deadline = time.monotonic() + 60
        while not self.leader:
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the container did not start"
            children = subprocess.run(
                ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
            ).stdout.split()
            for child in children:
                try:
                    name = Path(f"/proc/{child}/comm").read_text().strip()
                except OSError:  # the child exited between pgrep and the read
                    continue
                if name == "systemd":
                    self.leader = int(child)
                    break
            time.sleep(0.1)

    def run(
        self, *argv: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces), with a clean environment."""
        environment = {"PATH": PATH, "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.leader),
                "-a",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in environment.items()),
                *argv,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_active(self, unit: str, timeout: float) -> str:
        """Wait until ``unit`` is active (or failed); return its last ActiveState."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-active", unit).stdout.strip()
            if state in ("active", "failed"):
                break
            time.sleep(0.2)
        return state

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is not None:
            self.process.wait()
        if self.process is not None and self.process.poll() is None:
            if self.leader:
                # SIGRTMIN+4 asks systemd for a clean power-off; give it a moment, then kill.
                os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                if self.leader:
                    os.kill(self.leader, signal.SIGKILL)
                self.process.kill()
                self.process.wait(20)
        subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True)
        try:
            self.root.rmdir()
            for leftover in self.workdir.iterdir():
                leftover.unlink()
            self.workdir.rmdir()
        except OSError:
            pass
