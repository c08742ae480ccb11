"""Host-command handlers of the simulator: one request payload in, one response payload out.

Owns the semantics of each supported command (what it checks, which error code a bad input
gets) on top of the shared codec and the LMK.  No sockets, no timing: the server adds those.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.codec import CodecError, FieldReader, HmacRequest
from otp_agent.keystore.payshield.keyblock import (
    HASH_ID_DIGEST_SIZE,
    USAGE_DIGEST_SIZE,
    KeyBlockFormatError,
    KeyBlockHeader,
    parse_header,
)
from otp_agent.keystore.payshield.transit import unwrap_import
from otp_agent.payshield_sim.lmk import KeyBlockRejected, Lmk, check_value

_HASHES: dict[int, str] = {20: "sha1", 28: "sha224", 32: "sha256", 48: "sha384", 64: "sha512"}
_AES_SIZES = {"A1": 16, "A2": 24, "A3": 32}
_TDES_SIZES = {"T1": 8, "T2": 16, "T3": 24}
ZMK_USAGES = ("52", "K0")


def parse_attributes(text: str) -> tuple[KeyBlockHeader, str]:
    """Turn the ``#`` attributes of a request into a header (length 0) and the 2-char algorithm."""
    if len(text) < 10:
        raise KeyBlockRejected("15")
    algorithm = text[2:4]
    try:
        header = parse_header("10000" + text[:2] + text[2] + text[4:10] + "00" + text[10:])
    except KeyBlockFormatError:
        raise KeyBlockRejected("AC") from None
    if header.encoded_length - 16 != len(text) - 10:
        raise KeyBlockRejected("AB")
    return header, algorithm


def make_zmk(lmk: Lmk) -> tuple[bytes, str]:
    """Create an AES-256 ZMK: its clear value and its key block (with ``S``) under ``lmk``.

    This stands in for the key ceremony on a real HSM (components formed at the console).
    """
    zmk = os.urandom(32)
    header = parse_header("10000" + "52AD00N0000")
    return zmk, "S" + lmk.wrap(header, zmk)


class CommandProcessor:
    """Executes host commands against one LMK."""

    def __init__(self, lmk: Lmk, firmware: str = "1500-SIM1", sockets: int = 64) -> None:
        self.lmk = lmk
        self.firmware = firmware
        self.sockets = sockets
        self._handlers: dict[str, Callable[[FieldReader], bytes]] = {
            "NC": self._nc,
            "NO": self._no,
            "B2": self._b2,
            "N0": self._n0,
            "L0": self._l0,
            "LQ": self._lq,
            "LS": self._ls,
            "LU": self._lu,
            "A0": self._a0,
        }

    def handle(self, payload: bytes) -> bytes:
        """Return the response payload (response code, error code, data) for a request payload."""
        try:
            command, reader = codec.split_request(payload)
        except CodecError:
            return b"ZZ15"
        handler = self._handlers.get(command)
        if handler is None:
            return codec.encode_response(command, "68")
        try:
            return codec.encode_response(command, "00", handler(reader))
        except CodecError as exc:
            return codec.encode_response(command, exc.error_code)
        except KeyBlockRejected as exc:
            return codec.encode_response(command, exc.error_code)
        except _Refused as exc:
            return codec.encode_response(command, exc.error_code)

    # -- utility commands ------------------------------------------------------------------

    def _nc(self, reader: FieldReader) -> bytes:
        reader.finish()
        return (self.lmk.check_value + self.firmware).encode("ascii")

    def _no(self, reader: FieldReader) -> bytes:
        mode = reader.number(2)
        reader.finish()
        if mode == 0:
            return f"31{self.sockets:04d}{self.firmware}".encode("ascii")
        if mode == 1:
            return b"1"
        raise _Refused("15")

    def _b2(self, reader: FieldReader) -> bytes:
        data = reader.take(reader.hex_number(4))
        reader.finish()
        return data

    def _n0(self, reader: FieldReader) -> bytes:
        length = reader.number(3)
        reader.finish()
        if not 1 <= length <= 256:
            raise _Refused("01")
        return os.urandom(length)

    # -- HMAC commands ---------------------------------------------------------------------

    def _l0(self, reader: FieldReader) -> bytes:
        request = codec.parse_l0(reader)
        header, algorithm = parse_attributes(request.attributes)
        digest = self._hmac_header_digest(header, algorithm, generate=False)
        if request.hash_id != "FF" or request.usage != "FF":
            raise _Refused("05")
        if not digest // 2 <= request.key_length <= 128:
            raise _Refused("04")
        return b"FFFF" + self.lmk.wrap(header, os.urandom(request.key_length)).encode("ascii")

    def _hmac_header_digest(self, header: KeyBlockHeader, algorithm: str, generate: bool) -> int:
        if header.usage not in USAGE_DIGEST_SIZE:
            raise _Refused("A6")
        if algorithm[0] != "H":
            raise _Refused("A7")
        if header.mode not in ("CGN" if generate else "CGNV"):
            raise _Refused("A8")
        if header.exportability not in "ENS":
            raise _Refused("AA")
        return USAGE_DIGEST_SIZE[header.usage]

    def _open_hmac_key(self, request: HmacRequest) -> tuple[int, bytes]:
        if request.key.key_format == codec.KEY_BLOCK_FORMAT:
            if request.hash_id != "FF":
                raise _Refused("05")
            header, key = self.lmk.unwrap(request.key.value.decode("ascii"))
            digest = self._hmac_header_digest(header, header.algorithm, generate=True)
        else:
            digest = HASH_ID_DIGEST_SIZE.get(request.hash_id, 0)
            if not digest:
                raise _Refused("05")
            key = self.lmk.unwrap_variant(request.key.value)
        if not digest // 2 <= request.hmac_length <= digest:
            raise _Refused("04")
        if not request.data:
            raise _Refused("81")
        return digest, key

    def _lq(self, reader: FieldReader) -> bytes:
        request = codec.parse_lq_request(reader)
        digest, key = self._open_hmac_key(request)
        mac = hmac.new(key, request.data, _HASHES[digest]).digest()
        return f"{request.hmac_length:04d}".encode() + mac[: request.hmac_length]

    def _ls(self, reader: FieldReader) -> bytes:
        request = codec.parse_ls(reader)
        digest, key = self._open_hmac_key(request)
        mac = hmac.new(key, request.data, _HASHES[digest]).digest()
        if not hmac.compare_digest(mac[: request.hmac_length], request.mac):
            raise _Refused("01")
        return b""

    def _lu(self, reader: FieldReader) -> bytes:
        request = codec.parse_lu(reader)
        zmk_header, zmk = self.lmk.unwrap(request.zmk)
        if zmk_header.usage not in ZMK_USAGES:
            raise _Refused("A6")
        if zmk_header.algorithm != "A" or len(zmk) not in (16, 24, 32):
            raise _Refused("A7")
        if zmk_header.mode not in "BDN":
            raise _Refused("A8")
        if len(request.wrapped) % 8:
            raise _Refused("15")
        key = unwrap_import(zmk, request.wrapped)
        if key is None:
            raise _Refused("15")
        if request.key_format == codec.KEY_BLOCK_FORMAT:
            header, algorithm = parse_attributes(request.attributes)
            digest = self._hmac_header_digest(header, algorithm, generate=False)
            if len(key) < digest // 2:
                raise _Refused("80")
            return b"FFFF" + self.lmk.wrap(header, key).encode("ascii")
        digest = HASH_ID_DIGEST_SIZE.get(request.hash_id, 0)
        if not digest:
            raise _Refused("05")
        if request.key_length != len(key) or len(key) < digest // 2:
            raise _Refused("80")
        blob = self.lmk.wrap_variant(key)
        return f"{len(blob):04d}".encode() + blob

    def _a0(self, reader: FieldReader) -> bytes:
        # Mode 1 (generate and export) without a ZMK section answers like mode 0, as in the
        # real capture A01FFFS#C0T2C00E00; export under a ZMK is not simulated.
        request = codec.parse_a0(reader)
        header, algorithm = parse_attributes(request.attributes)
        size = _AES_SIZES.get(algorithm) or _TDES_SIZES.get(algorithm)
        if algorithm[0] == "H":
            size = 32
        if size is None:
            raise _Refused("A7")
        key = os.urandom(size)
        kcv = check_value(key) if algorithm[0] in "AH" else _tdes_check_value(key)
        return ("S" + self.lmk.wrap(header, key) + kcv).encode("ascii")


def _tdes_check_value(key: bytes) -> str:
    # Simplification: the simulator does not implement DES; its KCV is a hash, marked by nothing.
    return hashlib.sha256(key).hexdigest()[:6].upper()


class _Refused(Exception):
    """Internal: the command is refused with ``error_code``."""

    def __init__(self, error_code: str) -> None:
        super().__init__(error_code)
        self.error_code = error_code
