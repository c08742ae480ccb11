"""Framing and field walking shared by every host command: the bytes-level toolkit.

Owns the 2-byte big-endian length framing, the :class:`FieldReader` that walks a message by
its length fields (so binary data containing X'19, ``;`` or ``%`` is never mistaken for a
delimiter, and X'19 is accepted only after the last field), and the HMAC key field (key block
or variant cryptogram).  Pure: no sockets, no crypto.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest message the HSM accepts on one connection (payShield host command manual).
MAX_MESSAGE = 32 * 1024
KEY_BLOCK_FORMAT = "04"
VARIANT_FORMAT = "00"
DELIMITER = 0x19


class CodecError(ValueError):
    """Bytes that do not follow a host-command layout; ``error_code`` is what an HSM would answer."""

    def __init__(self, message: str, error_code: str = "15") -> None:
        super().__init__(message)
        self.error_code = error_code


# ---------------------------------------------------------------------------------------------
# Framing


def frame(body: bytes) -> bytes:
    """Prefix a message (header + command + fields) with its 2-byte big-endian length."""
    if not 0 < len(body) <= MAX_MESSAGE:
        raise CodecError("message empty or larger than 32 KB")
    return len(body).to_bytes(2, "big") + body


class FrameReader:
    """Incremental splitter of a TCP byte stream into length-prefixed messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes and return every message now complete (without its length)."""
        self._buffer.extend(data)
        messages: list[bytes] = []
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if size == 0 or size > MAX_MESSAGE:
                raise CodecError("frame length zero or over 32 KB")
            if len(self._buffer) < 2 + size:
                break
            messages.append(bytes(self._buffer[2 : 2 + size]))
            del self._buffer[: 2 + size]
        return messages


def response_code(command: str) -> str:
    """Return the response code of a command: same first letter, second character plus one."""
    return command[0] + chr(ord(command[1]) + 1)


# ---------------------------------------------------------------------------------------------
# Field walking


class FieldReader:
    """Reads fields left to right from a message body, each of a known or declared length."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def take(self, size: int) -> bytes:
        """Return the next ``size`` raw bytes."""
        end = self._position + size
        if size < 0 or end > len(self._data):
            raise CodecError("message ends before its fields")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def text(self, size: int) -> str:
        """Return the next ``size`` bytes as printable ASCII."""
        chunk = self.take(size)
        if not all(0x20 <= b < 0x7F for b in chunk):
            raise CodecError("non-printable byte in a text field")
        return chunk.decode("ascii")

    def number(self, size: int) -> int:
        """Return the next ``size`` ASCII decimal digits as an integer."""
        chunk = self.text(size)
        if not chunk.isdigit():
            raise CodecError("non-digit in a numeric field")
        return int(chunk)

    def hex_number(self, size: int) -> int:
        """Return the next ``size`` ASCII hexadecimal digits as an integer."""
        chunk = self.text(size)
        try:
            return int(chunk, 16)
        except ValueError:
            raise CodecError("non-hex digit in a hexadecimal field") from None

    def peek(self, size: int = 1) -> bytes:
        """Return the next ``size`` bytes without consuming them (fewer at the end)."""
        return self._data[self._position : self._position + size]

    def expect(self, literal: bytes) -> None:
        """Consume ``literal`` or fail."""
        if self.take(len(literal)) != literal:
            raise CodecError(f"expected {literal!r} delimiter")

    def rest(self) -> bytes:
        """Return every byte left."""
        chunk = self._data[self._position :]
        self._position = len(self._data)
        return chunk

    def finish(self) -> None:
        """Check that nothing but an optional X'19 + printable trailer (32 max) remains."""
        rest = self.rest()
        if not rest:
            return
        trailer = rest[1:]
        if rest[0] != DELIMITER or len(trailer) > 32 or not all(0x20 <= b < 0x7F for b in trailer):
            raise CodecError("unexpected bytes after the last field")

    def key_block(self) -> str:
        """Read a key block without its ``S``, sized by the length in its own header."""
        head = self.text(5)
        if not head[1:].isdigit() or int(head[1:]) < 16:
            raise CodecError("key block length is not decimal", error_code="83")
        return head + self.text(int(head[1:]) - 5)


# ---------------------------------------------------------------------------------------------
# HMAC key fields


@dataclass(frozen=True)
class HmacKey:
    """An HMAC key as a command carries it: a key block (format 04) or a variant cryptogram (00)."""

    key_format: str
    value: bytes

    def __repr__(self) -> str:
        return f"HmacKey(format={self.key_format}, <{len(self.value)} bytes>)"

    @classmethod
    def key_block(cls, text: str) -> HmacKey:
        """Wrap a key block given without its ``S`` prefix."""
        return cls(KEY_BLOCK_FORMAT, text.encode("ascii"))

    def encode(self) -> bytes:
        """Return format 2N + length 4N (``FFFF`` for a key block) + key [+ ``;`` for a variant]."""
        if self.key_format == KEY_BLOCK_FORMAT:
            return b"04FFFF" + self.value
        return f"00{len(self.value):04d}".encode() + self.value + b";"


def read_hmac_key(reader: FieldReader) -> HmacKey:
    """Read key format 2N, then ``FFFF`` + key block, or length 4N + cryptogram + ``;``."""
    key_format = reader.text(2)
    if key_format == KEY_BLOCK_FORMAT:
        if reader.text(4) != "FFFF":
            raise CodecError("key block length must be FFFF", error_code="80")
        return HmacKey.key_block(reader.key_block())
    if key_format == VARIANT_FORMAT:
        key = reader.take(reader.number(4))
        reader.expect(b";")
        return HmacKey(VARIANT_FORMAT, key)
    raise CodecError("invalid HMAC key format", error_code="07")
