"""The cryptography of RFC 6030 §6: value encryption, key derivation and value MACs.

This module owns the algorithm identifiers we accept and the primitives behind them:
AES-128/192/256-CBC with the IV prepended (§6.1), AES key wrap (RFC 3394, and RFC 5649 padding
for odd lengths as writers use for 20-byte MAC keys), PBKDF2 (§6.2, PKCS #5 v2.0), and HMAC value
MACs compared in constant time (§6.1.1).  Triple DES and Camellia are refused on purpose.  It
knows nothing of XML.  Errors are :class:`CryptoProblem` with a message that never holds a key,
a password or a decrypted byte.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap,
    aes_key_wrap_with_padding,
)

XENC = "http://www.w3.org/2001/04/xmlenc#"
XMLDSIG = "http://www.w3.org/2000/09/xmldsig#"
XMLDSIG_MORE = "http://www.w3.org/2001/04/xmldsig-more#"
PKCS5 = "http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#"
PBKDF2_URI = PKCS5 + "pbkdf2"

#: Shortest and longest PBE password, in characters (the issue's rule, inclusive).
PASSWORD_MIN = 5
PASSWORD_MAX = 64
#: Bounds on the PBKDF2 iteration count we accept from a file.
PBKDF2_MIN_ITERATIONS = 1000
PBKDF2_MAX_ITERATIONS = 10_000_000
PBKDF2_MIN_SALT = 8


class CryptoProblem(Exception):
    """A value cannot be decrypted, derived or authenticated; the message is safe to show."""


@dataclass(frozen=True)
class CipherSpec:
    """An accepted encryption algorithm: its URI, key size in bytes and mode ("cbc" or "kw")."""

    uri: str
    key_size: int
    mode: str


CIPHERS: dict[str, CipherSpec] = {
    c.uri: c
    for c in (
        CipherSpec(XENC + "aes128-cbc", 16, "cbc"),
        CipherSpec(XENC + "aes192-cbc", 24, "cbc"),
        CipherSpec(XENC + "aes256-cbc", 32, "cbc"),
        CipherSpec(XENC + "kw-aes128", 16, "kw"),
        CipherSpec(XENC + "kw-aes192", 24, "kw"),
        CipherSpec(XENC + "kw-aes256", 32, "kw"),
    )
}

_REFUSED_CIPHERS = {
    XENC + "tripledes-cbc": "Triple DES (tripledes-cbc) is refused as too weak",
    XENC + "kw-tripledes": "Triple DES key wrap (kw-tripledes) is refused as too weak",
    XENC + "rsa_1_5": "asymmetric encryption (rsa_1_5) needs a private key and is not supported",
    XENC + "rsa-oaep-mgf1p": "asymmetric encryption (rsa-oaep) needs a private key and is not supported",
}

_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512")

#: HMAC algorithm URIs (MACMethod, and the PBKDF2 PRF) mapped to hashlib names.
HMAC_ALGORITHMS: dict[str, str] = {XMLDSIG + "hmac-sha1": "sha1"}
HMAC_ALGORITHMS.update({XMLDSIG_MORE + f"hmac-{h}": h for h in _HASHES})
PRF_ALGORITHMS: dict[str, str] = dict(HMAC_ALGORITHMS)
PRF_ALGORITHMS.update({PKCS5 + f"hmac-{h}": h for h in _HASHES})


def cipher_for(uri: str | None) -> CipherSpec:
    """Return the accepted cipher named by ``uri`` or raise :class:`CryptoProblem` saying why not."""
    if uri is None:
        raise CryptoProblem("EncryptionMethod has no Algorithm")
    if uri in CIPHERS:
        return CIPHERS[uri]
    if uri in _REFUSED_CIPHERS:
        raise CryptoProblem(_REFUSED_CIPHERS[uri])
    raise CryptoProblem(f"unsupported encryption algorithm {uri[:120]!r}")


def hmac_hash_for(uri: str | None, table: dict[str, str] = HMAC_ALGORITHMS) -> str:
    """Return the hashlib name of the HMAC algorithm ``uri`` or raise :class:`CryptoProblem`."""
    if uri is None:
        raise CryptoProblem("MAC algorithm is missing")
    try:
        return table[uri]
    except KeyError:
        raise CryptoProblem(f"unsupported MAC algorithm {uri[:120]!r}") from None


def decrypt(cipher: CipherSpec, key: bytes, data: bytes) -> bytes:
    """Decrypt a CipherValue (IV followed by ciphertext for CBC; a wrapped key for key wrap)."""
    if len(key) != cipher.key_size:
        raise CryptoProblem(
            f"{cipher.uri.rsplit('#', 1)[-1]} needs a {cipher.key_size * 8}-bit key, "
            f"the key given has {len(key) * 8} bits"
        )
    if cipher.mode == "kw":
        return _unwrap(key, data)
    if len(data) < 32 or len(data) % 16:
        raise CryptoProblem("CipherValue is not an IV followed by whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = decryptor.update(data[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CryptoProblem("value does not decrypt (wrong key or password, or damaged file)") from None


def _unwrap(key: bytes, data: bytes) -> bytes:
    if len(data) % 8 or len(data) < 16:
        raise CryptoProblem("wrapped value has a length that is not a multiple of 8 bytes")
    if len(data) >= 24:
        try:
            return aes_key_unwrap(key, data)
        except InvalidUnwrap:
            pass
    try:
        return aes_key_unwrap_with_padding(key, data)
    except InvalidUnwrap:
        raise CryptoProblem("key unwrap failed (wrong key or password, or damaged file)") from None


def encrypt(cipher: CipherSpec, key: bytes, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` as a CipherValue: random IV + PKCS#7-padded CBC, or key wrap."""
    if cipher.mode == "kw":
        if len(plaintext) % 8 == 0 and len(plaintext) >= 16:
            return aes_key_wrap(key, plaintext)
        return aes_key_wrap_with_padding(key, plaintext)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def check_password(password: str) -> None:
    """Refuse a PBE password outside 5..64 characters (inclusive), saying the rule, not the password."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise CryptoProblem(
            f"the PBE password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters, "
            f"this one has {len(password)}"
        )


def pbkdf2(password: str, salt: bytes, iterations: int, key_length: int, prf: str = "sha1") -> bytes:
    """Derive a key with PBKDF2 (RFC 6030 §6.2), after checking every parameter's bounds."""
    check_password(password)
    if not PBKDF2_MIN_ITERATIONS <= iterations <= PBKDF2_MAX_ITERATIONS:
        raise CryptoProblem(
            f"PBKDF2 IterationCount must be from {PBKDF2_MIN_ITERATIONS} to "
            f"{PBKDF2_MAX_ITERATIONS}, not {iterations}"
        )
    if len(salt) < PBKDF2_MIN_SALT:
        raise CryptoProblem(f"PBKDF2 salt must be at least {PBKDF2_MIN_SALT} bytes, not {len(salt)}")
    if key_length not in (16, 24, 32):
        raise CryptoProblem(f"PBKDF2 KeyLength must be 16, 24 or 32 bytes, not {key_length}")
    return hashlib.pbkdf2_hmac(prf, password.encode("utf-8"), salt, iterations, key_length)


def mac(hash_name: str, key: bytes, value: bytes) -> bytes:
    """Return HMAC-``hash_name``(key, value)."""
    return hmac.new(key, value, hash_name).digest()


def mac_matches(hash_name: str, key: bytes, value: bytes, expected: bytes) -> bool:
    """Compare the MAC of ``value`` with ``expected`` in constant time."""
    return hmac.compare_digest(mac(hash_name, key, value), expected)
