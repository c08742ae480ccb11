"""The agent's socket protocol: framing and message checks.  Standard library only.

A frame is a 4-byte big-endian length N (1 <= N <= MAX_FRAME) followed by N bytes of a UTF-8
JSON object.  Every request carries ``"v": 1`` and an ``"op"``; every reply carries ``"v": 1`` and
``"ok"``.  A connection may carry several request/reply pairs in turn.  See docs/protocol.md.
This module is sans-I/O except for :func:`recv_frame`/:func:`send_frame`, which take a socket.
"""

from __future__ import annotations

import enum
import json
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from otp_agent.errors import ProtocolError, UsageError

VERSION = 1
MAX_FRAME = 64 * 1024
#: Frames from administrative peers may be larger (a PSKC import of 100,000 tokens).
MAX_ADMIN_FRAME = 256 * 1024 * 1024
_LENGTH = struct.Struct(">I")

#: Operations a non-admin peer may call (anything else needs uid 0 or the admin group).
VALIDATION_OPS = frozenset({"validate", "enrolled", "remembered", "ping"})
#: Operations a member of ``[agent] validator_group`` (and uid 0) may call for any user.  A
#: validator is not an administrator; ``send`` is listed before the daemon answers it.
VALIDATOR_OPS = frozenset({"validate", "enrolled", "remembered", "send", "verify_password", "ping"})
#: Operations any peer may call for its own user, as ``policy.self_enroll`` and
#: ``policy.self_service`` allow (administrators may call them for anyone).
SELF_SERVICE_OPS = frozenset({"enroll", "confirm", "list", "backup_codes"})
#: Every operation the agent answers (docs/protocol.md documents each; a test checks that).
OPERATIONS = VALIDATION_OPS | frozenset(
    {
        "check",
        "enroll",
        "import",
        "export",
        "list",
        "show",
        "assign",
        "disable",
        "enable",
        "remove",
        "unlock",
        "resync",
        "status",
        "send",
        "confirm",
        "backup_codes",
        "forget",
        "metrics",
        "verify_password",
    }
)


class Result(str, enum.Enum):
    """The verdict of a ``validate`` (or ``check``) reply."""

    ACCEPT = "accept"
    REJECT = "reject"


class Reason(str, enum.Enum):
    """Why a ``validate`` reply says what it says.  docs/protocol.md lists every member."""

    ACCEPTED = "accepted"
    BACKUP_CODE = "backup_code"
    REMEMBERED = "remembered"
    NOT_ENROLLED = "not_enrolled"
    MALFORMED = "malformed"
    NO_TOKEN = "no_token"
    DISABLED = "disabled"
    PENDING = "pending"
    LOCKED = "locked"
    BAD_CODE = "bad_code"
    REPLAY = "replay"
    EXPIRED = "expired"
    BAD_PASSWORD_OR_CODE = "bad_password_or_code"
    ACCOUNT_LOOKUP = "account_lookup"
    BUSY = "busy"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    KEYSTORE = "keystore"
    KEYSTORE_UNAVAILABLE = "keystore_unavailable"
    SEALED_SECRET_INVALID = "sealed_secret_invalid"
    STORE = "store"
    STORE_UNAVAILABLE = "store_unavailable"


@dataclass(frozen=True)
class ValidateRequest:
    """A ``validate`` request: the code alone, or the password immediately followed by it.

    ``service``, ``rhost`` and ``tty`` are what the PAM stack says: logged, never trusted.
    """

    user: str
    code: str | None = None
    password_and_code: str | None = None
    service: str | None = None
    rhost: str | None = None
    tty: str | None = None

    def message(self) -> dict[str, Any]:
        """The request as a protocol message."""
        fields: dict[str, Any] = {"v": VERSION, "op": "validate", "user": self.user}
        for name in ("code", "password_and_code", "service", "rhost", "tty"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return fields

    @classmethod
    def parse(cls, message: dict[str, Any]) -> ValidateRequest:
        """Check the fields of a ``validate`` message.  :raises UsageError: a bad field."""

        def text(name: str, required: bool = False) -> str | None:
            value = message.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str):
                raise UsageError(f"field {name!r} must be a string")
            return value

        user = text("user", required=True)
        assert user is not None
        code, combined = text("code"), text("password_and_code")
        if (code is None) == (combined is None):
            raise UsageError("a validate request carries exactly one of 'code' and 'password_and_code'")
        context = {
            name: (value[:256] if isinstance(value := message.get(name), str) else None)
            for name in ("service", "rhost", "tty")
        }
        return cls(user, code, combined, **context)


@dataclass(frozen=True)
class SentCode:
    """The answer to a ``send``: which token's code went over which channel to which (masked)
    address, valid until ``expires`` (Unix time)."""

    serial: str
    channel: str
    address: str
    expires: float

    def fields(self) -> dict[str, Any]:
        """The reply's fields (without ``v``/``ok``)."""
        return {
            "serial": self.serial,
            "channel": self.channel,
            "address": self.address,
            "expires": self.expires,
        }

    @classmethod
    def parse(cls, reply: Mapping[str, Any]) -> SentCode:
        """Read a ``send`` reply.  :raises ProtocolError: not one."""
        serial, channel, address = reply.get("serial"), reply.get("channel"), reply.get("address")
        expires = reply.get("expires")
        if not (isinstance(serial, str) and isinstance(channel, str) and isinstance(address, str)):
            raise ProtocolError("not a send reply")
        if not isinstance(expires, (int, float)) or isinstance(expires, bool):
            raise ProtocolError("not a send reply")
        return cls(serial, channel, address, float(expires))


@dataclass(frozen=True)
class ValidateReply:
    """The answer to a ``validate``: accept or reject, why, and the token that decided."""

    result: Result
    reason: Reason
    serial: str | None = None
    #: ``locked``: whole seconds until the earliest lock of the user's tokens ends.
    retry_after: int | None = None

    @property
    def accepted(self) -> bool:
        """True only for an acceptance."""
        return self.result is Result.ACCEPT

    def fields(self) -> dict[str, Any]:
        """The reply's fields (without ``v``/``ok``)."""
        fields: dict[str, Any] = {
            "result": self.result.value,
            "reason": self.reason.value,
            "serial": self.serial,
        }
        if self.retry_after is not None:
            fields["retry_after"] = self.retry_after
        return fields

    @classmethod
    def parse(cls, reply: dict[str, Any]) -> ValidateReply:
        """Read a ``validate`` reply.  :raises ProtocolError: not one."""
        try:
            return cls(
                Result(reply.get("result")),
                Reason(reply.get("reason")),
                reply.get("serial") if isinstance(reply.get("serial"), str) else None,
                reply.get("retry_after") if type(reply.get("retry_after")) is int else None,
            )
        except ValueError:
            raise ProtocolError("not a validate reply") from None


def _field_type(name: str, value: object, kinds: tuple[type, ...], optional: bool) -> object:
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise UsageError(f"token record field {name!r} has the wrong type")
    return value


def _timestamp(name: str, value: object) -> float | None:
    """A date as seconds since the epoch; ISO 8601 text is accepted too (files, old clients)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise UsageError(f"token record field {name!r} must be an ISO 8601 date or a timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"token record field {name!r} is not an ISO 8601 date") from None
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class TokenRecord:
    """One token as the protocol carries it, in every direction.

    The same record is a token in ``list``/``show``/``enroll``/``assign`` replies (state fields
    filled, no secret), an ``import`` record sent by ``otpctl import`` (its secret in
    ``secret_b64``, over the administrative socket only) and an ``export`` record.  Dates are
    seconds since the epoch.  Only types are checked here; ranges are the OATH parameters' and
    the administration's business.
    """

    serial: str
    type: str
    algorithm: str = "sha1"
    digits: int = 6
    period: int = 30
    t0: int = 0
    counter: int = 0
    drift: int = 0
    user: str | None = None
    issuer: str | None = None
    not_before: float | None = None
    not_after: float | None = None
    last_step: int | None = None
    enabled: bool = True
    failures: int = 0
    lock_count: int = 0
    locked_until: float = 0.0
    created: float = 0.0
    #: Out-of-band tokens: the delivery channel, and the address masked (``a***@example.com``).
    channel: str | None = None
    address: str | None = None
    #: A self-enrolled token waiting for its owner's confirmation: when it expires.
    pending_until: float | None = None
    secret_b64: str | None = field(default=None, repr=False)

    def message(self, *, state: bool = True) -> dict[str, Any]:
        """The record as a JSON object (``secret_b64`` only when the record carries a secret).

        ``state=False`` leaves out what only the agent knows (enabled, failures, lock count and
        time, creation time): an ``import`` record carries none of it, only a last used step
        when it has one (a token migrated from a peer keeps its replay state).
        """
        fields = asdict(self)
        for optional in ("secret_b64", "channel", "address", "pending_until"):
            if fields[optional] is None:
                del fields[optional]
        if not state:
            for name in _STATE_FIELDS:
                del fields[name]
            if fields["last_step"] is None:
                del fields["last_step"]
        return fields

    @classmethod
    def parse(cls, message: Mapping[str, Any]) -> TokenRecord:
        """Check the types of a record's fields.  :raises UsageError: a field has a bad type."""
        serial = message.get("serial")
        if not isinstance(serial, str) or not serial:
            raise UsageError("token record has no serial")
        unknown = set(message) - _RECORD_FIELDS
        if unknown:
            raise UsageError(f"token record {serial!r} has unknown fields: {sorted(unknown)}")
        values: dict[str, Any] = {"serial": serial}
        for name, (kinds, optional) in _RECORD_TYPES.items():
            if name in message:
                values[name] = _field_type(name, message[name], kinds, optional)
        for name in ("not_before", "not_after"):
            if name in message:
                values[name] = _timestamp(name, message[name])
        for name in ("locked_until", "created"):
            if name in values and values[name] is not None:
                values[name] = float(values[name])
        if message.get("counter") is None:
            values.pop("counter", None)
        if message.get("drift") is None:
            values.pop("drift", None)
        if "type" not in values or values["type"] is None:
            raise UsageError(f"token record {serial!r} has no type")
        return cls(**values)


_RECORD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "type": ((str,), False),
    "algorithm": ((str,), False),
    "digits": ((int,), False),
    "period": ((int,), False),
    "t0": ((int,), False),
    "counter": ((int,), True),
    "drift": ((int,), True),
    "user": ((str,), True),
    "issuer": ((str,), True),
    "last_step": ((int,), True),
    "enabled": ((bool,), False),
    "failures": ((int,), False),
    "lock_count": ((int,), False),
    "locked_until": ((int, float), False),
    "created": ((int, float), False),
    "pending_until": ((int, float), True),
    "secret_b64": ((str,), True),
    "channel": ((str,), True),
    "address": ((str,), True),
}
_RECORD_FIELDS = set(_RECORD_TYPES) | {"serial", "not_before", "not_after"}
_STATE_FIELDS = ("enabled", "failures", "lock_count", "locked_until", "created")


def encode_frame(message: dict[str, Any], *, max_frame: int = MAX_ADMIN_FRAME) -> bytes:
    """Serialise one message, with its length prefix."""
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > max_frame:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {max_frame}-byte limit")
    return _LENGTH.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse a frame body into a message object, checking the version."""
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON syntax,
        # or an integer past the digit limit; RecursionError: nested too deeply.
        raise ProtocolError("frame is not a UTF-8 JSON object") from exc
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    return message


def _recv_exact(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("frame not received in time")
            sock.settimeout(remaining)
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError if not chunks else ProtocolError("connection closed inside a frame")
        chunks += chunk
    return bytes(chunks)


def recv_frame(
    sock: socket.socket, *, max_frame: int = MAX_FRAME, deadline: float | None = None
) -> dict[str, Any] | None:
    """Read one message; ``None`` on a clean end of stream between frames.

    ``deadline`` (a ``time.monotonic()`` value) bounds the whole frame, so a client trickling
    bytes cannot hold a connection; without it the socket's own timeout applies.  Timeouts
    propagate as :class:`TimeoutError`.
    """
    try:
        header = _recv_exact(sock, _LENGTH.size, deadline)
    except EOFError:
        return None
    except ProtocolError:
        raise ProtocolError("connection closed inside a frame header") from None
    (length,) = _LENGTH.unpack(header)
    if length == 0 or length > max_frame:
        raise ProtocolError(f"frame length {length} outside 1..{max_frame}")
    try:
        payload = _recv_exact(sock, length, deadline)
    except EOFError:
        raise ProtocolError("connection closed inside a frame") from None
    return decode_payload(payload)


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one message."""
    sock.sendall(encode_frame(message))


def exchange(
    sock: socket.socket,
    message: dict[str, Any],
    *,
    max_frame: int = MAX_ADMIN_FRAME,
    deadline: float | None = None,
) -> dict[str, Any] | None:
    """Send one request and read its reply.

    An agent that refuses a connection (busy) answers and closes before reading the request; the
    write may then fail with EPIPE although the refusal is waiting to be read: it is read, so the
    caller sees "busy" rather than a broken pipe.
    """
    try:
        send_frame(sock, message)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return recv_frame(sock, max_frame=max_frame, deadline=deadline)


def error_reply(code: str, message: str) -> dict[str, Any]:
    """Build the reply for a failed request."""
    return {"v": VERSION, "ok": False, "error": {"code": code, "message": message}}


def ok_reply(**fields: Any) -> dict[str, Any]:
    """Build the reply for a successful request."""
    return {"v": VERSION, "ok": True, **fields}
