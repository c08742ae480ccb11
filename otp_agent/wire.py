"""The agent's socket protocol: framing and message checks.  Standard library only.

A frame is a 4-byte big-endian length N (1 <= N <= MAX_FRAME) followed by N bytes of a UTF-8
JSON object.  Every request carries ``"v": 1`` and an ``"op"``; every reply carries ``"v": 1`` and
``"ok"``.  A connection may carry several request/reply pairs in turn.  See docs/protocol.md.
This module is sans-I/O except for :func:`recv_frame`/:func:`send_frame`, which take a socket.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from otp_agent.errors import ProtocolError

VERSION = 1
MAX_FRAME = 64 * 1024
_LENGTH = struct.Struct(">I")

#: Operations a non-admin peer may call (anything else needs uid 0 or the admin group).
VALIDATION_OPS = frozenset({"validate", "enrolled", "ping"})


def encode_frame(message: dict[str, Any]) -> bytes:
    """Serialise one message, with its length prefix."""
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _LENGTH.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse a frame body into a message object, checking the version."""
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("frame is not a UTF-8 JSON object") from exc
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    return message


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError if not chunks else ProtocolError("connection closed inside a frame")
        chunks += chunk
    return bytes(chunks)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Read one message; ``None`` on a clean end of stream between frames.

    Socket timeouts propagate as :class:`TimeoutError` (the caller sets ``sock.settimeout``).
    """
    try:
        header = _recv_exact(sock, _LENGTH.size)
    except EOFError:
        return None
    except ProtocolError:
        raise ProtocolError("connection closed inside a frame header") from None
    (length,) = _LENGTH.unpack(header)
    if length == 0 or length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} outside 1..{MAX_FRAME}")
    try:
        payload = _recv_exact(sock, length)
    except EOFError:
        raise ProtocolError("connection closed inside a frame") from None
    return decode_payload(payload)


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one message."""
    sock.sendall(encode_frame(message))


def error_reply(code: str, message: str) -> dict[str, Any]:
    """Build the reply for a failed request."""
    return {"v": VERSION, "ok": False, "error": {"code": code, "message": message}}


def ok_reply(**fields: Any) -> dict[str, Any]:
    """Build the reply for a successful request."""
    return {"v": VERSION, "ok": True, **fields}
