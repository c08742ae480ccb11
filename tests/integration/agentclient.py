"""Raw clients of a running agent for integration tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from otp_agent import wire


def request(socket_path: Path, op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """Send one request on a fresh connection and return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        reply = wire.exchange(connection, {"v": 1, "op": op, **fields}, max_frame=wire.MAX_FRAME)
        assert reply is not None
        return reply


def request_as(uid: int, gid: int, socket_path: Path, op: str, **fields: Any) -> dict[str, Any]:
    """Send a request from a child process running as ``uid``/``gid`` (needs root)."""
    import json

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                reply = request(socket_path, op, **fields)
            except OSError as exc:
                reply = {"exception": type(exc).__name__}
            os.write(write_end, json.dumps(reply).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)
