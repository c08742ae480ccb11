"""The simulator's AES LMK: file handling, check value and key-block wrapping.

Owns the only place where the simulator opens a key block.  Real Thales wrapping is not public
(docs/hsm.md, key blocks), so this is a self-consistent scheme with the observed lengths: the key
data (2-byte bit length, key, random padding to 16 bytes) is encrypted with AES-256-CBC under a
key-block encryption key derived from the LMK, and an 8-byte AES-CMAC under a derived
authentication key covers the header, its optional blocks and the clear key data.  The IV is
derived from the authenticator, so no extra field is needed.  A 32-byte HMAC key gives a
128-character block, a 16-byte key a 96-character block, as on a real AES-LMK payShield.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from otp_agent.keystore.payshield.keyblock import (
    KeyBlockFormatError,
    KeyBlockHeader,
    split_key_block,
)

_MAC_HEX = 16


class KeyBlockRejected(Exception):
    """A key block cannot be used; ``error_code`` is the payShield code to answer."""

    def __init__(self, error_code: str) -> None:
        super().__init__(f"key block rejected ({error_code})")
        self.error_code = error_code


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def check_value(key: bytes) -> str:
    """Return the 6-hex AES key check value: AES-CMAC of a zero block, leftmost 3 bytes."""
    return _cmac(key, bytes(16))[:3].hex().upper()


class Lmk:
    """An AES-256 LMK and the keys derived from it; never shown in ``repr``."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the simulator LMK is an AES-256 key")
        self._encryption = self._derive(key, b"KBEK")
        self._authentication = self._derive(key, b"KBAK")
        self._variant = self._derive(key, b"VAR1")
        self.check_value = check_value(key) + "0" * 10

    def __repr__(self) -> str:
        return f"Lmk(check value {self.check_value[:6]})"

    @staticmethod
    def _derive(key: bytes, label: bytes) -> bytes:
        # NIST SP 800-108 counter mode with AES-CMAC as PRF, 256-bit output.
        context = b"\x00payshield-sim\x00\x01\x00"
        return b"".join(_cmac(key, bytes([i]) + label + context) for i in (1, 2))

    @classmethod
    def load_or_create(cls, path: Path) -> Lmk:
        """Read the LMK (64 hex characters) from ``path``; create it with mode 0600 if absent."""
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("# payshield-sim AES-256 LMK (test use only)\n")
                handle.write(os.urandom(32).hex() + "\n")
        lines = [line.strip() for line in path.read_text().splitlines()]
        values = [line for line in lines if line and not line.startswith("#")]
        try:
            return cls(bytes.fromhex(values[0]))
        except (IndexError, ValueError):
            raise ValueError(f"{path}: not a payshield-sim LMK file") from None

    def wrap(self, header: KeyBlockHeader, key: bytes) -> str:
        """Return the key block (without ``S``) protecting ``key`` under this LMK."""
        clear = len(key * 8).to_bytes(2, "big") + key
        clear += os.urandom(-len(clear) % 16)
        prefix = replace(header, version="1", length=0).encode()
        header = replace(header, version="1", length=len(prefix) + 2 * len(clear) + _MAC_HEX)
        encoded = header.encode()
        mac = _cmac(self._authentication, encoded.encode("ascii") + clear)[:8]
        encryptor = Cipher(algorithms.AES(self._encryption), modes.CBC(self._iv(mac))).encryptor()
        body = encryptor.update(clear) + encryptor.finalize()
        return encoded + body.hex().upper() + mac.hex().upper()

    def unwrap(self, text: str) -> tuple[KeyBlockHeader, bytes]:
        """Open a key block (without ``S``); raise :class:`KeyBlockRejected` on any fault."""
        try:
            header, body = split_key_block(text)
        except KeyBlockFormatError:
            raise KeyBlockRejected("83") from None
        if header.version != "1":
            raise KeyBlockRejected("BE")
        if len(body) < 32 + _MAC_HEX or (len(body) - _MAC_HEX) % 32:
            raise KeyBlockRejected("83")
        data, mac = bytes.fromhex(body[:-_MAC_HEX]), bytes.fromhex(body[-_MAC_HEX:])
        decryptor = Cipher(algorithms.AES(self._encryption), modes.CBC(self._iv(mac))).decryptor()
        clear = decryptor.update(data) + decryptor.finalize()
        expected = _cmac(self._authentication, text[: header.encoded_length].encode("ascii") + clear)
        if not hmac.compare_digest(expected[:8], mac):
            raise KeyBlockRejected("A4")
        bits = int.from_bytes(clear[:2], "big")
        if bits % 8 or bits // 8 > len(clear) - 2 or bits == 0:
            raise KeyBlockRejected("A4")
        return header, clear[2 : 2 + bits // 8]

    def _iv(self, mac: bytes) -> bytes:
        return _cmac(self._authentication, b"IV" + mac)

    def wrap_variant(self, key: bytes) -> bytes:
        """Return a variant-format cryptogram (binary) of an HMAC key."""
        return aes_key_wrap_with_padding(self._variant, key)

    def unwrap_variant(self, blob: bytes) -> bytes:
        """Open a variant-format cryptogram; raise :class:`KeyBlockRejected` (``80``) if bad."""
        try:
            return aes_key_unwrap_with_padding(self._variant, blob)
        except (InvalidUnwrap, ValueError):
            raise KeyBlockRejected("80") from None
