"""The ``kind = "command"`` channel: a program (an SMS gateway client, say) given the message.

The program runs without a shell, with the configured argv (``{address}``, ``{user}`` and
``{serial}`` filled in, never the code), the minimal environment ``PATH=/usr/bin:/bin`` and
``LANG=C.UTF-8``, ``/`` as its working directory, in a session and process group of its own.
The message (UTF-8, one trailing newline) is written to its standard input, which is then
closed; its standard output is discarded; at most :data:`STDERR_LIMIT` bytes of its standard
error are kept (the rest is read and thrown away, so a flooding program can neither fill the
agent's memory nor block).  Exit status 0 means delivered.  A program still running after
``timeout`` seconds is killed with its whole process group.

A value that would begin an argument with ``-`` (and so could be taken for an option) is
refused; write ``--to={address}`` or put ``--`` before the placeholders.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time

from otp_agent.channels.addresses import validate_address
from otp_agent.channels.config import CommandChannelConfig
from otp_agent.channels.delivery import Delivery, render_message
from otp_agent.channels.template import check_value, scrub
from otp_agent.errors import ChannelError, UsageError

#: The whole environment of the program.
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
#: Bytes of standard error kept (for the log line, which is cut to 200 characters anyway).
STDERR_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
#: How often a program whose standard error stays open is checked for having exited.
_POLL_SECONDS = 0.25


class CommandChannel:
    """Delivers codes by running one configured program per code."""

    def __init__(self, config: CommandChannelConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"CommandChannel({self.config.name!r}, {self.config.executable!r})"

    def argv(self, delivery: Delivery) -> list[str]:
        """The program's argv for ``delivery`` (which holds no code).

        :raises ChannelError: the address is invalid, or a value holds a control character or
            would begin an argument with ``-``.
        """
        try:
            address = validate_address(delivery.address, self.config.address_kinds)
        except UsageError as exc:
            raise ChannelError(f"channel {self.name}: {exc}") from None
        values = {"address": address, "user": delivery.user, "serial": delivery.serial}
        for name, value in values.items():
            problem = check_value(name, value)
            if problem:
                raise ChannelError(f"channel {self.name}: {problem}")
        argv = [self.config.executable]
        for template in self.config.arguments:
            item = template.render(values)
            if template.starts_with_placeholder() and item.startswith("-"):
                raise ChannelError(
                    f"channel {self.name}: an argument would begin with '-' and could be taken for an option"
                )
            argv.append(item)
        return argv

    def deliver(self, delivery: Delivery) -> None:
        """Run the program; return when it exited with status 0.

        :raises ChannelError: the program is missing or not executable, exited with another
            status or was killed, or ran past the timeout (it is then killed with its group).
            The message quotes its standard error, scrubbed of the code, cut to 200 characters.
        """
        argv = self.argv(delivery)
        code = delivery.code_text()
        message = render_message(self.config.message, delivery, code)
        data = (message if message.endswith("\n") else message + "\n").encode("utf-8")
        where = f"channel {self.name}: command {self.config.executable}"
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=dict(ENVIRONMENT),
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            raise ChannelError(f"{where}: not found") from None
        except PermissionError:
            raise ChannelError(f"{where}: not executable") from None
        except OSError as exc:
            raise ChannelError(f"{where}: cannot be started: {exc.strerror}") from None
        try:
            stderr, timed_out = _communicate(process, data, self.config.timeout)
        finally:
            if process.returncode is None:  # an unexpected error: leave nothing running
                _kill(process)
        status = process.returncode
        shown = scrub(stderr, [code])
        said = f": {shown}" if shown else ""
        if timed_out:
            raise ChannelError(f"{where}: timed out after {self.config.timeout:g} s (killed){said}")
        if status < 0:
            raise ChannelError(f"{where}: killed by signal {-status}{said}")
        if status != 0:
            raise ChannelError(f"{where}: exited with status {status}{said}")


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the process group of ``process`` (not yet reaped, so its id is still its own)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _has_exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the program has exited, without reaping it (its id stays its own)."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _communicate(process: subprocess.Popen[bytes], data: bytes, timeout: float) -> tuple[bytes, bool]:
    """Write ``data`` to stdin, read stderr (keeping its first STDERR_LIMIT bytes), wait.

    Returns the stderr kept and whether the timeout struck (the group is then killed).
    """
    assert process.stdin is not None and process.stderr is not None
    deadline = time.monotonic() + timeout
    kept = bytearray()
    stdin, stderr = process.stdin, process.stderr
    os.set_blocking(stdin.fileno(), False)
    os.set_blocking(stderr.fileno(), False)
    pending = memoryview(data)
    with selectors.DefaultSelector() as selector:
        selector.register(stderr, selectors.EVENT_READ)
        if pending:
            selector.register(stdin, selectors.EVENT_WRITE)
        else:
            stdin.close()
        try:
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _kill(process)
                    return bytes(kept), True
                events = selector.select(min(remaining, _POLL_SECONDS))
                if not events and _has_exited(process):
                    break  # it exited, but a child of its own still holds standard error
                for key, _ in events:
                    if key.fileobj is stdin:
                        try:
                            written = os.write(stdin.fileno(), pending[:_CHUNK])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            written = len(pending)  # it does not read: its exit status will tell
                        pending = pending[written:]
                        if not pending:
                            selector.unregister(stdin)
                            stdin.close()
                    else:
                        try:
                            chunk = os.read(stderr.fileno(), _CHUNK)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            selector.unregister(stderr)
                        elif len(kept) < STDERR_LIMIT:
                            kept += chunk[: STDERR_LIMIT - len(kept)]
        finally:
            stdin.close()
            stderr.close()
    # Standard error is closed (or the program has exited): it has exited or is about to.
    try:
        process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(process)
        return bytes(kept), True
    return bytes(kept), False
