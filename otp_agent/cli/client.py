"""The agent client used by ``otpctl``: connect, send one request, map error replies to errors."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from otp_agent import wire
from otp_agent.errors import ERRORS_BY_CODE, AgentUnreachable, OtpAgentError, ProtocolError, PskcError


class AgentClient:
    """Talks to the agent over its Unix socket; one connection, requests in turn."""

    def __init__(self, socket_path: Path, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._socket: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._socket is None:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            connection.settimeout(self.timeout)
            try:
                connection.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                connection.close()
                raise AgentUnreachable(
                    f"the agent is not running (no listener on {self.socket_path})"
                ) from None
            except OSError as exc:
                connection.close()
                raise AgentUnreachable(
                    f"cannot reach the agent at {self.socket_path}: {exc.strerror or exc}"
                ) from None
            self._socket = connection
        return self._socket

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; return the reply's fields or raise the error it carries."""
        connection = self._connect()
        try:
            connection.settimeout(self.timeout)
            reply = wire.exchange(
                connection, {"v": wire.VERSION, "op": op, **fields}, deadline=time.monotonic() + self.timeout
            )
        except TimeoutError:
            self.close()
            raise AgentUnreachable(f"the agent did not answer within {self.timeout:g} s") from None
        except (OSError, ProtocolError) as exc:
            self.close()
            raise AgentUnreachable(f"connection to the agent failed: {exc}") from None
        if reply is None:
            self.close()
            raise AgentUnreachable("the agent closed the connection without answering")
        if not reply.get("ok"):
            error = reply.get("error") or {}
            cls = ERRORS_BY_CODE.get(str(error.get("code")), OtpAgentError)
            message = str(error.get("message", "request failed"))
            if issubclass(cls, PskcError):
                raise PskcError(message, error.get("problems"))
            raise cls(message)
        return reply

    def close(self) -> None:
        """Close the connection."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
