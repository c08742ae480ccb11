"""The Python client of the agent's socket protocol, for applications (and for ``otpctl``).

Standard library only (with :mod:`otp_agent.wire` and :mod:`otp_agent.errors`, which are too): an
application imports it without loading the agent's cryptography, XML or database code::

    from otp_agent.client import AgentClient

    with AgentClient() as agent:
        result = agent.validate("alice", code, rhost=client_address)
        if result.accepted:
            ...

Every call is bounded by ``timeout`` seconds in all (connecting, sending, waiting for the reply).
An error reply is raised as the :mod:`otp_agent.errors` class of its code (``permission`` as
:class:`~otp_agent.errors.PermissionDenied`, …); an agent that cannot be reached, is busy or does
not answer in time raises :class:`~otp_agent.errors.AgentUnreachable`.  One connection is reused
for calls in turn (calls from several threads are serialised).  A connection the agent has closed
or may be about to close (idle, old or much used: docs/protocol.md) is replaced *before* a request
is written.  When a connection breaks after a request was written, only the idempotent ``ping``
and ``enrolled`` are sent again (once); ``validate``, ``send`` and :meth:`AgentClient.request` are
never sent twice: a code might have been consumed, so the caller gets the error.
See docs/applications.md.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from otp_agent import wire
from otp_agent.errors import (
    ERRORS_BY_CODE,
    AgentUnreachable,
    OtpAgentError,
    ProtocolError,
    PskcError,
    UsageError,
)
from otp_agent.wire import SentCode

__all__ = ["DEFAULT_SOCKET", "AgentClient", "SentCode", "ValidationResult"]

#: The agent's socket when ``[agent] socket`` is not set.
DEFAULT_SOCKET = Path("/run/otp-agent/agent.sock")
#: A connection is reused only while younger, less used and less idle than this: the agent drops
#: an idle connection after ``client_timeout`` (default 5 s) and closes a non-root peer's after
#: 30 s or 64 requests (otp_agent/daemon/server.py), and a request racing that close is lost.
REUSE_MAX_IDLE = 1.0
REUSE_MAX_AGE = 20.0
REUSE_MAX_REQUESTS = 48
_BACKLOG_RETRY = 0.01
_IDEMPOTENT = frozenset({"ping", "enrolled"})


@dataclass(frozen=True)
class ValidationResult:
    """The agent's decision on a code: accepted or not, why (a ``wire.Reason`` value), which token."""

    accepted: bool
    reason: str
    serial: str | None = None


class _Broken(Exception):
    """The connection failed after the request may have been written (internal)."""


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.pid = sock, os.getpid()
        self.opened = self.used = time.monotonic()
        self.requests = 0

    def reusable(self) -> bool:
        now = time.monotonic()
        if self.pid != os.getpid():  # inherited across fork(): the parent's, not ours
            return False
        if now - self.used > REUSE_MAX_IDLE or now - self.opened > REUSE_MAX_AGE:
            return False
        if self.requests >= REUSE_MAX_REQUESTS:
            return False
        poller = select.poll()  # not select(): an application may hold descriptors past 1024
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)  # readable between replies: closed by the agent (or garbage)


class AgentClient:
    """A client of one agent socket.  Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self, socket_path: str | os.PathLike[str] = DEFAULT_SOCKET, *, timeout: float = 10.0
    ) -> None:
        if not timeout > 0:
            raise UsageError("the agent client's timeout must be a positive number of seconds")
        self.socket_path = Path(socket_path)
        self.timeout = float(timeout)
        self._connection: _Connection | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the application's calls ----------------------------------------------------------------

    def validate(
        self, user: str, code: str, *, service: str = "app", rhost: str | None = None
    ) -> ValidationResult:
        """Validate (and so consume) ``user``'s one-time ``code``; sent at most once."""
        request = wire.ValidateRequest(user, code=code, service=service, rhost=rhost)
        return self._validation(request)

    def validate_password_and_code(
        self, user: str, password_and_code: str, *, service: str = "app", rhost: str | None = None
    ) -> ValidationResult:
        """Validate the user's password immediately followed by the code (``password_and_code``)."""
        request = wire.ValidateRequest(
            user, password_and_code=password_and_code, service=service, rhost=rhost
        )
        return self._validation(request)

    def enrolled(self, user: str) -> bool:
        """True when ``user`` has at least one token (enabled or not)."""
        value = self.request("enrolled", user=user).get("enrolled")
        if not isinstance(value, bool):
            raise ProtocolError("not an enrolled reply")
        return value

    def ping(self) -> str:
        """The agent's version."""
        value = self.request("ping").get("version")
        if not isinstance(value, str):
            raise ProtocolError("not a ping reply")
        return value

    def send_code(self, user: str, *, serial: str | None = None) -> SentCode:
        """Have the agent send ``user`` a one-time code out of band (needs an ``oob`` token).

        Sent at most once.  An agent without the ``send`` operation answers ``usage``
        ("unknown operation 'send'"), raised as :class:`~otp_agent.errors.UsageError`.
        """
        fields: dict[str, Any] = {"user": user}
        if serial is not None:
            fields["serial"] = serial
        return SentCode.parse(self.request("send", **fields))

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send any operation (administration, for one); return the whole reply or raise its error.

        Only ``ping`` and ``enrolled`` are ever sent a second time (after a broken connection).
        """
        return self._call({"v": wire.VERSION, "op": op, **fields}, idempotent=op in _IDEMPOTENT)

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.sock.close()

    # -- the machinery --------------------------------------------------------------------------

    def _validation(self, request: wire.ValidateRequest) -> ValidationResult:
        reply = wire.ValidateReply.parse(self._call(request.message(), idempotent=False))
        return ValidationResult(reply.accepted, reply.reason.value, reply.serial)

    def _call(self, message: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        frame = wire.encode_frame(message)  # an oversized request fails here, before any I/O
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise AgentUnreachable(f"the agent did not answer within {self.timeout:g} s (client busy)")
        try:
            try:
                reply = self._exchange(frame, deadline)
            except _Broken as exc:
                if not idempotent:
                    raise AgentUnreachable(str(exc)) from None
                try:
                    reply = self._exchange(frame, deadline)
                except _Broken as again:
                    raise AgentUnreachable(str(again)) from None
        finally:
            self._lock.release()
        return _checked(reply)

    def _exchange(self, frame: bytes, deadline: float) -> dict[str, Any]:
        connection = self._connect(deadline)
        try:
            connection.requests += 1
            connection.sock.settimeout(_remaining(deadline, self.timeout))
            try:
                connection.sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                pass  # a busy refusal is waiting to be read (as in wire.exchange)
            reply = wire.recv_frame(connection.sock, max_frame=wire.MAX_ADMIN_FRAME, deadline=deadline)
        except TimeoutError:
            self.close()
            raise AgentUnreachable(f"the agent did not answer within {self.timeout:g} s") from None
        except (OSError, ProtocolError) as exc:
            self.close()
            raise _Broken(f"connection to the agent failed: {exc}") from None
        if reply is None:
            self.close()
            raise _Broken("the agent closed the connection without answering")
        connection.used = time.monotonic()
        return reply

    def _connect(self, deadline: float) -> _Connection:
        if self._connection is not None:
            if self._connection.reusable():
                return self._connection
            self.close()  # closing a socket inherited across fork() leaves the parent's open
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            while True:
                sock.settimeout(_remaining(deadline, self.timeout))
                try:
                    sock.connect(str(self.socket_path))
                    break
                except BlockingIOError:  # EAGAIN: the agent's backlog is full; busy, not gone
                    time.sleep(min(_BACKLOG_RETRY, _remaining(deadline, self.timeout)))
        except TimeoutError:
            sock.close()
            raise AgentUnreachable(f"the agent did not answer within {self.timeout:g} s") from None
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise AgentUnreachable(f"the agent is not running (no listener on {self.socket_path})") from None
        except OSError as exc:
            sock.close()
            raise AgentUnreachable(
                f"cannot reach the agent at {self.socket_path}: {exc.strerror or exc}"
            ) from None
        self._connection = _Connection(sock)
        return self._connection


def _remaining(deadline: float, timeout: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no answer within {timeout:g} s")
    return remaining


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply itself, or the error it carries raised as its class."""
    if reply.get("ok") is True:
        return reply
    error = reply.get("error")
    error = error if isinstance(error, dict) else {}
    cls = ERRORS_BY_CODE.get(str(error.get("code")), OtpAgentError)
    message = str(error.get("message", "request failed"))
    if issubclass(cls, PskcError):
        problems = error.get("problems")
        raise PskcError(message, [str(p) for p in problems] if isinstance(problems, list) else None)
    raise cls(message)
