"""A program on a pseudo-terminal, for driving login, su and sudo like a person at a console."""

from __future__ import annotations

import os
import pty
import select
import signal
import time


class PtyProcess:
    """Run ``argv`` with a new pseudo-terminal as its controlling terminal and talk to it."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        environment = env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "dumb", "LANG": "C"}
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.execvpe(argv[0], argv, environment)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.output = b""
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the other side closed
            return False
        if not chunk:
            return False
        self.output += chunk
        return True

    def expect(self, *needles: bytes, timeout: float = 30.0) -> bytes:
        """Wait until one of ``needles`` appears in the output after what was already consumed."""
        deadline = time.monotonic() + timeout
        while True:
            for needle in needles:
                if needle in self.output:
                    return needle
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"none of {needles!r} within {timeout} s; output so far: {self.output!r}"
                )
            if not self._read(0.1):
                for needle in needles:
                    if needle in self.output:
                        return needle
                raise AssertionError(f"EOF before any of {needles!r}; output: {self.output!r}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_to_eof(self, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.1):
            pass
        return self.output

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the program to end (killing it after ``timeout``); return its wait status."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            self._read(0.05)
        return self.status

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(10)
        os.close(self.fd)
