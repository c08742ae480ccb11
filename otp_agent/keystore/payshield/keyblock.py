"""The Thales key-block header: parse and build, without any cryptography.

Owns the 16-character header layout (Thales key block format, docs/hsm.md), the optional blocks that follow
it, the HMAC key usages ``61``..``65`` and the identity-binding optional block.  The encrypted
key data and authenticator after the header are opaque here: only the HSM (or the simulator)
can open them, and it authenticates the whole header, optional blocks included.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from otp_agent.oath.params import HashAlgorithm

HEADER_LENGTH = 16

#: Key usage of an HMAC key block for each hash (``62``/``64`` are SHA-224/SHA-384, unused here).
HMAC_USAGE: dict[HashAlgorithm, str] = {
    HashAlgorithm.SHA1: "61",
    HashAlgorithm.SHA256: "63",
    HashAlgorithm.SHA512: "65",
}
#: Digest size in bytes for each HMAC key usage.
USAGE_DIGEST_SIZE: dict[str, int] = {"61": 20, "62": 28, "63": 32, "64": 48, "65": 64}
#: Hash identifiers used with variant-format HMAC keys (payShield host command manual, LQ).
HASH_ID: dict[HashAlgorithm, str] = {
    HashAlgorithm.SHA1: "01",
    HashAlgorithm.SHA256: "06",
    HashAlgorithm.SHA512: "08",
}
HASH_ID_DIGEST_SIZE: dict[str, int] = {"01": 20, "05": 28, "06": 32, "07": 48, "08": 64}

#: Optional block that carries the token binding; ``05`` is the free-text block of Thales headers.
BINDING_BLOCK_ID = "05"
_BINDING_TAG = "OTPB"
_BINDING_HEX = 24


class KeyBlockFormatError(ValueError):
    """A string is not a well-formed Thales key block (header, lengths or characters)."""


@dataclass(frozen=True)
class OptionalBlock:
    """One optional header block: a 2-character id and printable data."""

    block_id: str
    data: str

    def encode(self) -> str:
        """Return id + 2 hex length (of the whole block) + data."""
        total = 4 + len(self.data)
        if total > 0xFF or not self.data.isprintable() or len(self.block_id) != 2:
            raise KeyBlockFormatError("optional block too long or not printable")
        return f"{self.block_id}{total:02X}{self.data}"


@dataclass(frozen=True)
class KeyBlockHeader:
    """The clear, authenticated header of a Thales key block (the part after ``S``)."""

    version: str
    length: int
    usage: str
    algorithm: str
    mode: str
    kvn: str
    exportability: str
    lmk_id: str = "00"
    optional_blocks: tuple[OptionalBlock, ...] = ()

    def encode(self) -> str:
        """Return the 16-character header followed by the encoded optional blocks."""
        fixed = (
            f"{self.version}{self.length:04d}{self.usage}{self.algorithm}{self.mode}"
            f"{self.kvn}{self.exportability}{len(self.optional_blocks):02d}{self.lmk_id}"
        )
        if len(fixed) != HEADER_LENGTH:
            raise KeyBlockFormatError("header fields have the wrong widths")
        return fixed + "".join(block.encode() for block in self.optional_blocks)

    @property
    def encoded_length(self) -> int:
        """Characters taken by the header and its optional blocks."""
        return len(self.encode())

    def block(self, block_id: str) -> OptionalBlock | None:
        """Return the first optional block with this id, if any."""
        for block in self.optional_blocks:
            if block.block_id == block_id:
                return block
        return None


def parse_header(text: str) -> KeyBlockHeader:
    """Parse the header and optional blocks at the start of a key block (without the ``S``).

    :raises KeyBlockFormatError: the text is too short, non-ASCII or has malformed fields.
    """
    if len(text) < HEADER_LENGTH or not text.isascii():
        raise KeyBlockFormatError("key block shorter than its header or not ASCII")
    version, length, count = text[0], text[1:5], text[12:14]
    if not (length.isdigit() and count.isdigit()):
        raise KeyBlockFormatError("key block length or optional-block count is not decimal")
    blocks: list[OptionalBlock] = []
    position = HEADER_LENGTH
    for _ in range(int(count)):
        block_id, size = text[position : position + 2], text[position + 2 : position + 4]
        try:
            total = int(size, 16)
        except ValueError:
            raise KeyBlockFormatError("optional block length is not hexadecimal") from None
        if total < 4 or position + total > len(text):
            raise KeyBlockFormatError("optional block overruns the key block")
        blocks.append(OptionalBlock(block_id, text[position + 4 : position + total]))
        position += total
    return KeyBlockHeader(
        version=version,
        length=int(length),
        usage=text[5:7],
        algorithm=text[7],
        mode=text[8],
        kvn=text[9:11],
        exportability=text[11],
        lmk_id=text[14:16],
        optional_blocks=tuple(blocks),
    )


def split_key_block(text: str) -> tuple[KeyBlockHeader, str]:
    """Check a whole key block (without ``S``) and return its header and the hex body after it.

    :raises KeyBlockFormatError: the declared length differs from the actual one, or the body
        after the header is not upper-case hexadecimal.
    """
    header = parse_header(text)
    if header.length != len(text):
        raise KeyBlockFormatError("key block length field does not match its size")
    body = text[header.encoded_length :]
    if not body or any(c not in "0123456789ABCDEF" for c in body):
        raise KeyBlockFormatError("key block body is not upper-case hexadecimal")
    return header, body


def binding_block(binding: bytes) -> OptionalBlock:
    """Return the optional block that binds a key block to a token identity.

    The block holds a 96-bit SHA-256 digest of :meth:`TokenIdentity.binding`; the HSM
    authenticates it with the rest of the header, so it cannot be changed without the key block
    being refused, and a key block copied to another token carries the other token's digest.
    Header plus this block is 48 characters, a whole number of AES blocks.
    """
    digest = hashlib.sha256(b"otp-agent key-block binding\x00" + binding).hexdigest().upper()
    return OptionalBlock(BINDING_BLOCK_ID, _BINDING_TAG + digest[:_BINDING_HEX])


def attributes(
    usage: str, algorithm: str, mode: str, exportability: str, blocks: tuple[OptionalBlock, ...] = ()
) -> str:
    """Return the ``#`` section of an L0/LU/A0 request (2-character algorithm code, e.g. ``H0``)."""
    encoded = "".join(block.encode() for block in blocks)
    return f"#{usage}{algorithm}{mode}00{exportability}{len(blocks):02d}{encoded}"
