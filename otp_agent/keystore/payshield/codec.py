"""Pure payShield host-command codec: requests and responses.  No sockets, no crypto.

Owns the byte layouts (docs/hsm.md, "Host commands used") for NC, NO, B2, N0, L0, LQ, LS,
LU and A0, in both directions (the client encodes requests and parses responses; the simulator
parses requests and encodes responses).  Framing and field walking live in ``fields``; every
field is walked by its length field.
"""

from __future__ import annotations

from dataclasses import dataclass

from otp_agent.keystore.payshield.errors import PayShieldProtocolError, error_for
from otp_agent.keystore.payshield.fields import (
    DELIMITER,
    KEY_BLOCK_FORMAT,
    MAX_MESSAGE,
    VARIANT_FORMAT,
    CodecError,
    FieldReader,
    FrameReader,
    HmacKey,
    frame,
    read_hmac_key,
    response_code,
)

__all__ = [
    "DELIMITER",
    "KEY_BLOCK_FORMAT",
    "MAX_MESSAGE",
    "VARIANT_FORMAT",
    "CodecError",
    "FieldReader",
    "FrameReader",
    "HmacKey",
    "HmacRequest",
    "KeyRequest",
    "encode_a0",
    "encode_b2",
    "encode_l0",
    "encode_lq",
    "encode_ls",
    "encode_lu",
    "encode_n0",
    "encode_nc",
    "encode_no",
    "encode_response",
    "frame",
    "open_response",
    "parse_a0",
    "parse_a1",
    "parse_b3",
    "parse_key_response",
    "parse_l0",
    "parse_lq_request",
    "parse_lr",
    "parse_ls",
    "parse_lt",
    "parse_lu",
    "parse_n1",
    "parse_nd",
    "parse_np",
    "response_code",
    "split_request",
]

# ---------------------------------------------------------------------------------------------
# Requests (client side encodes, simulator side parses)


def encode_nc() -> bytes:
    """NC: perform diagnostics (LMK check value and firmware)."""
    return b"NC"


def encode_no(mode: int = 0) -> bytes:
    """NO: HSM status, mode 00."""
    return f"NO{mode:02d}".encode()


def encode_b2(data: bytes) -> bytes:
    """B2: echo ``data`` (length 4H)."""
    return f"B2{len(data):04X}".encode() + data


def encode_n0(length: int) -> bytes:
    """N0: ``length`` random bytes (length 3N)."""
    return f"N0{length:03d}".encode()


def encode_l0(key_length: int, attributes: str, hash_id: str = "FF", usage: str = "FF") -> bytes:
    """L0: generate an HMAC key as a key block with the given ``#`` attributes."""
    return f"L0{hash_id}{usage}{key_length:04d}04{attributes}".encode("ascii")


def encode_lq(hash_id: str, hmac_length: int, key: HmacKey, data: bytes) -> bytes:
    """LQ: HMAC of ``data`` under ``key``; ``hmac_length`` output bytes (4N)."""
    return f"LQ{hash_id}{hmac_length:04d}".encode() + key.encode() + f"{len(data):05d}".encode() + data


def encode_ls(hash_id: str, mac: bytes, key: HmacKey, data: bytes) -> bytes:
    """LS: verify the leftmost-truncated HMAC ``mac`` of ``data`` under ``key``."""
    return f"LS{hash_id}{len(mac):04d}".encode() + mac + key.encode() + f"{len(data):05d}".encode() + data


def encode_lu(zmk: str, wrapped: bytes, key_format: str, tail: str) -> bytes:
    """LU: import an HMAC key under a ZMK (``zmk`` is ``S`` + key block).

    ``tail`` is the key-block ``#`` attributes for format 04, or hash id 2N + usage 2N + key
    length 4N for format 00.  Transport format 00 (proprietary) is used.
    """
    return f"LU{zmk}{len(wrapped):04d}".encode("ascii") + wrapped + f";00{key_format}{tail}".encode("ascii")


def encode_a0(mode: str, attributes: str) -> bytes:
    """A0: generate a key as a key block (key type ``FFF``, scheme ``S``)."""
    return f"A0{mode}FFFS{attributes}".encode("ascii")


def split_request(payload: bytes) -> tuple[str, FieldReader]:
    """Split a request (after the header) into its command code and a reader of its fields."""
    if len(payload) < 2 or not all(0x20 < b < 0x7F for b in payload[:2]):
        raise CodecError("missing command code")
    return payload[:2].decode("ascii"), FieldReader(payload[2:])


@dataclass(frozen=True)
class HmacRequest:
    """Fields of an LQ or LS request."""

    hash_id: str
    hmac_length: int
    key: HmacKey
    data: bytes
    mac: bytes = b""


def parse_lq_request(reader: FieldReader) -> HmacRequest:
    """Parse the fields of an LQ request (the simulator's side; LR, its response: parse_lr)."""
    hash_id, length = reader.text(2), reader.number(4)
    key = read_hmac_key(reader)
    data = reader.take(reader.number(5))
    reader.finish()
    return HmacRequest(hash_id, length, key, data)


#: The old name of :func:`parse_lq_request`, still used by tests/faults (not yet committed).
parse_lq = parse_lq_request


def parse_ls(reader: FieldReader) -> HmacRequest:
    """Parse the fields of an LS request."""
    hash_id, length = reader.text(2), reader.number(4)
    mac = reader.take(length)
    key = read_hmac_key(reader)
    data = reader.take(reader.number(5))
    reader.finish()
    return HmacRequest(hash_id, length, key, data, mac)


@dataclass(frozen=True)
class KeyRequest:
    """Fields of an L0 / LU / A0 request that matter to the simulator."""

    key_format: str
    attributes: str = ""
    hash_id: str = "FF"
    usage: str = "FF"
    key_length: int = 0
    zmk: str = ""
    wrapped: bytes = b""
    mode: str = "0"


def _attributes(reader: FieldReader) -> str:
    rest = reader.rest()
    if rest.endswith(b"\x19"):
        rest = rest[:-1]
    if not rest.startswith(b"#") or not all(0x20 <= b < 0x7F for b in rest):
        raise CodecError("missing or malformed key-block attributes")
    return rest[1:].decode("ascii")


def parse_l0(reader: FieldReader) -> KeyRequest:
    """Parse an L0 request (key-block format only: ``04`` + ``#`` attributes)."""
    hash_id, usage, length, key_format = reader.text(2), reader.text(2), reader.number(4), reader.text(2)
    if key_format != KEY_BLOCK_FORMAT:
        raise CodecError("only key-block format 04 is supported", error_code="07")
    return KeyRequest(key_format, _attributes(reader), hash_id, usage, length)


def parse_lu(reader: FieldReader) -> KeyRequest:
    """Parse an LU request: ZMK key block, wrapped key, ``;``, transport and key formats, tail."""
    if reader.text(1) != "S":
        raise CodecError("ZMK must be a key block", error_code="26")
    zmk = reader.key_block()
    wrapped = reader.take(reader.number(4))
    reader.expect(b";")
    if reader.text(2) != "00":
        raise CodecError("only transport format 00 is supported", error_code="15")
    key_format = reader.text(2)
    if key_format == KEY_BLOCK_FORMAT:
        return KeyRequest(key_format, _attributes(reader), zmk=zmk, wrapped=wrapped)
    if key_format == VARIANT_FORMAT:
        hash_id, usage, length = reader.text(2), reader.text(2), reader.number(4)
        reader.finish()
        return KeyRequest(key_format, "", hash_id, usage, length, zmk=zmk, wrapped=wrapped)
    raise CodecError("invalid HMAC key format", error_code="07")


def parse_a0(reader: FieldReader) -> KeyRequest:
    """Parse an A0 request limited to key-block keys: mode, ``FFF``, ``S``, ``#`` attributes."""
    mode, key_type, scheme = reader.text(1), reader.text(3), reader.text(1)
    if mode not in "01" or key_type != "FFF" or scheme != "S":
        raise CodecError("only A0 mode 0/1 with key type FFF and scheme S is supported", "26")
    return KeyRequest(KEY_BLOCK_FORMAT, _attributes(reader), mode=mode)


# ---------------------------------------------------------------------------------------------
# Responses (simulator encodes, client parses)


def encode_response(command: str, error_code: str, data: bytes = b"") -> bytes:
    """Return response code + error code + data (the caller adds the echoed header)."""
    return (response_code(command) + error_code).encode("ascii") + data


def open_response(command: str, payload: bytes) -> FieldReader:
    """Check a response's code and error code; return a reader positioned on its data.

    :raises PayShieldProtocolError: the response code does not belong to ``command``.
    :raises PayShieldCommandError: (or a key-block subclass) the error code is not ``00``.
    """
    expected = response_code(command).encode("ascii")
    if payload[:2] != expected or len(payload) < 4:
        raise PayShieldProtocolError(f"payShield answered {command} with a wrong response code")
    error_code = payload[2:4].decode("ascii", "replace")
    if error_code != "00":
        raise error_for(command, error_code)
    return FieldReader(payload[4:])


def _checked(reader: FieldReader) -> None:
    try:
        reader.finish()
    except CodecError as exc:
        raise PayShieldProtocolError(f"malformed payShield response: {exc}") from None


def parse_nd(payload: bytes) -> tuple[str, str]:
    """Return (LMK check value 16H, firmware) from an NC response.

    The firmware field is 9A (``xxxx-xxxx``) on the units seen; anything printable after the
    check value is accepted as firmware so that a longer field does not stop the agent.
    """
    reader = open_response("NC", payload)
    try:
        check = reader.text(16)
        firmware = reader.rest().split(b"\x19")[0].decode("ascii")
    except (CodecError, UnicodeDecodeError) as exc:
        raise PayShieldProtocolError(f"malformed ND response: {exc}") from None
    if any(c not in "0123456789ABCDEF" for c in check.upper()) or not firmware.isprintable():
        raise PayShieldProtocolError("malformed ND response: check value is not hexadecimal")
    return check.upper(), firmware


def parse_np(payload: bytes) -> dict[str, object]:
    """Return the status fields of an NO mode-00 response (best effort after the error code).

    The socket count is 2N before firmware 1.8a and 4N after; the firmware (``xxxx-xxxx``)
    follows it.  Fields that cannot be recognised are left out rather than failing the health
    check: an ``NP00`` answer is proof enough that the HSM is alive.
    """
    rest = open_response("NO", payload).rest()
    status: dict[str, object] = {}
    if rest[:1].isdigit():
        status["io_buffer"] = {0: "2K", 1: "8K", 2: "16K", 3: "32K"}.get(int(rest[:1]), "?")
    if rest[1:2].isdigit():
        status["protocol"] = "TCP" if rest[1:2] == b"1" else "UDP"
    for width in (4, 2):
        sockets, firmware = rest[2 : 2 + width], rest[2 + width : 11 + width]
        if sockets.isdigit() and firmware[4:5] == b"-" and firmware.isascii():
            status["tcp_sockets"] = int(sockets)
            status["firmware"] = firmware.decode("ascii")
            break
    return status


def parse_b3(payload: bytes) -> bytes:
    """Return the data echoed by a B2 command."""
    return open_response("B2", payload).rest()


def parse_n1(payload: bytes, length: int) -> bytes:
    """Return the ``length`` random bytes of an N0 response."""
    reader = open_response("N0", payload)
    try:
        data = reader.take(length)
    except CodecError as exc:
        raise PayShieldProtocolError(f"malformed N1 response: {exc}") from None
    _checked(reader)
    return data


def parse_key_response(command: str, payload: bytes) -> HmacKey:
    """Return the key of an L0 or LU response: ``FFFF`` + key block, or length 4N + cryptogram."""
    reader = open_response(command, payload)
    try:
        length = reader.text(4)
        key = (
            HmacKey.key_block(reader.key_block())
            if length == "FFFF"
            else HmacKey(VARIANT_FORMAT, reader.take(int(length)))
        )
    except (CodecError, ValueError) as exc:
        raise PayShieldProtocolError(f"malformed {command} response: {exc}") from None
    _checked(reader)
    return key


def parse_a1(payload: bytes) -> tuple[str, str]:
    """Return (key block with ``S``, 6-hex key check value) from an A0 mode-0 response."""
    reader = open_response("A0", payload)
    try:
        if reader.text(1) != "S":
            raise CodecError("key is not a key block")
        key, kcv = "S" + reader.key_block(), reader.text(6)
    except CodecError as exc:
        raise PayShieldProtocolError(f"malformed A1 response: {exc}") from None
    _checked(reader)
    return key, kcv


def parse_lr(payload: bytes, hmac_length: int) -> bytes:
    """Return the HMAC of an LQ response, checking its length field equals ``hmac_length``."""
    reader = open_response("LQ", payload)
    try:
        length = reader.number(4)
        if length != hmac_length:
            raise CodecError("HMAC length differs from the one requested")
        mac = reader.take(length)
    except CodecError as exc:
        raise PayShieldProtocolError(f"malformed LR response: {exc}") from None
    _checked(reader)
    return mac


def parse_lt(payload: bytes) -> bool:
    """Return True if LS verified (``00``), False on ``01``; other codes raise."""
    if payload[:4] == b"LT01":
        return False
    _checked(open_response("LS", payload))
    return True
