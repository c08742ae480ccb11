"""Writing PSKC 1.0 exports (RFC 6030) for migration and backup, always encrypted and MAC-protected.

This module owns the export format: every secret is encrypted with AES-CBC (AES-256 with a
PBKDF2-HMAC-SHA256 derived key, or AES-128/192/256 to match a pre-shared key) under a fresh IV,
and carries a ValueMAC made with a random MAC key that is itself encrypted in ``MACMethod``
(§6.1.1).  A clear export is impossible: a password or a key is required.  The output is read
by our own importer and by python-pskc.

It also owns the export policy, stricter than what import accepts from other writers (RFC 6030's
5 to 64 character passwords): :func:`check_export_password` wants a password of at least
:data:`EXPORT_PASSWORD_MIN` characters and at least :data:`EXPORT_MIN_ITERATIONS` PBKDF2
iterations (the default), so a stolen export resists offline guessing.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

from lxml import etree

from otp_agent.errors import UsageError
from otp_agent.oath.params import TokenType
from otp_agent.pskc import crypto
from otp_agent.pskc.crypto import CryptoProblem
from otp_agent.pskc.model import ExportedToken
from otp_agent.pskc.xmlsafe import PSKC_NS

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XENC_NS = "http://www.w3.org/2001/04/xmlenc#"
XENC11_NS = "http://www.w3.org/2009/xmlenc11#"
PKCS5_NS = crypto.PKCS5
_NSMAP = {"pskc": PSKC_NS, "ds": DS_NS, "xenc": XENC_NS, "xenc11": XENC11_NS, "pkcs5": PKCS5_NS}

_ALGORITHM_URI = {
    TokenType.HOTP: "urn:ietf:params:xml:ns:keyprov:pskc:hotp",
    TokenType.TOTP: "urn:ietf:params:xml:ns:keyprov:pskc:totp",
}
_CBC_BY_SIZE = {16: "aes128-cbc", 24: "aes192-cbc", 32: "aes256-cbc"}
_MAC_URIS = {"sha1": crypto.XMLDSIG + "hmac-sha1", "sha256": crypto.XMLDSIG_MORE + "hmac-sha256"}
_MAC_KEY_SIZES = {"sha1": 20, "sha256": 32}

#: Shortest password ``otpctl export`` accepts (import accepts crypto.PASSWORD_MIN).
EXPORT_PASSWORD_MIN = 12
#: Fewest PBKDF2-HMAC-SHA256 iterations ``otpctl export`` writes, and its default.
EXPORT_MIN_ITERATIONS = 600_000
DEFAULT_EXPORT_ITERATIONS = EXPORT_MIN_ITERATIONS


def check_export_password(password: str, iterations: int) -> None:
    """Refuse an export password or iteration count below the export policy (never the password).

    :raises UsageError: the password has fewer than 12 or more than 64 characters, or
        ``iterations`` is outside 600,000 to 10,000,000.
    """
    if not EXPORT_PASSWORD_MIN <= len(password) <= crypto.PASSWORD_MAX:
        raise UsageError(
            f"the export password must have {EXPORT_PASSWORD_MIN} to {crypto.PASSWORD_MAX} "
            f"characters, this one has {len(password)} (import still accepts "
            f"{crypto.PASSWORD_MIN} to {crypto.PASSWORD_MAX} for files from elsewhere)"
        )
    if not EXPORT_MIN_ITERATIONS <= iterations <= crypto.PBKDF2_MAX_ITERATIONS:
        raise UsageError(
            f"--iterations must be from {EXPORT_MIN_ITERATIONS} to "
            f"{crypto.PBKDF2_MAX_ITERATIONS} for an export, not {iterations}"
        )


def _p(name: str) -> str:
    return f"{{{PSKC_NS}}}{name}"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attributes: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Encryptor:
    """Encrypts values and MACs them with one container key and one MAC key."""

    def __init__(self, key: bytes, mac_hash: str) -> None:
        self.cipher = crypto.CIPHERS[crypto.XENC + _CBC_BY_SIZE[len(key)]]
        self.key = key
        self.mac_hash = mac_hash
        self.mac_key = os.urandom(_MAC_KEY_SIZES[mac_hash])

    def cipher_data(self, parent: etree._Element, plaintext: bytes) -> bytes:
        """Add EncryptionMethod and CipherData for ``plaintext`` to ``parent``; return the value."""
        _sub(parent, f"{{{XENC_NS}}}EncryptionMethod", Algorithm=self.cipher.uri)
        value = crypto.encrypt(self.cipher, self.key, plaintext)
        data = _sub(parent, f"{{{XENC_NS}}}CipherData")
        _sub(data, f"{{{XENC_NS}}}CipherValue", _b64(value))
        return value

    def encrypted_value(self, parent: etree._Element, plaintext: bytes) -> None:
        """Add an EncryptedValue and its ValueMAC to a ``Data`` child such as ``Secret``."""
        holder = _sub(parent, _p("EncryptedValue"))
        value = self.cipher_data(holder, plaintext)
        _sub(parent, _p("ValueMAC"), _b64(crypto.mac(self.mac_hash, self.mac_key, value)))


def _encryption_key(root: etree._Element, password: str | None, psk: bytes | None, iterations: int) -> bytes:
    holder = _sub(root, _p("EncryptionKey"))
    if psk is not None:
        if len(psk) not in _CBC_BY_SIZE:
            raise UsageError(f"the pre-shared key must be 16, 24 or 32 bytes, not {len(psk)}")
        _sub(holder, f"{{{DS_NS}}}KeyName", "Pre-shared-key")
        return psk
    assert password is not None
    salt = os.urandom(16)
    try:
        key = crypto.pbkdf2(password, salt, iterations, 32, "sha256")
    except CryptoProblem as exc:
        raise UsageError(str(exc)) from None
    derived = _sub(holder, f"{{{XENC11_NS}}}DerivedKey")
    method = _sub(derived, f"{{{XENC11_NS}}}KeyDerivationMethod", Algorithm=crypto.PBKDF2_URI)
    params = _sub(method, f"{{{PKCS5_NS}}}PBKDF2-params")
    _sub(_sub(params, "Salt"), "Specified", _b64(salt))
    _sub(params, "IterationCount", str(iterations))
    _sub(params, "KeyLength", "32")
    _sub(params, "PRF", Algorithm=crypto.XMLDSIG_MORE + "hmac-sha256")
    _sub(derived, f"{{{XENC11_NS}}}MasterKeyName", "otp-agent export")
    return key


def _plain(parent: etree._Element, name: str, value: int) -> None:
    _sub(_sub(parent, _p(name)), _p("PlainValue"), str(value))


def _write_key(root: etree._Element, token: ExportedToken, encryptor: _Encryptor) -> None:
    params = token.params
    package = _sub(root, _p("KeyPackage"))
    device = _sub(package, _p("DeviceInfo"))
    if token.manufacturer:
        _sub(device, _p("Manufacturer"), token.manufacturer)
    _sub(device, _p("SerialNo"), token.serial)
    key = _sub(package, _p("Key"), Id=token.serial, Algorithm=_ALGORITHM_URI[params.token_type])
    if token.issuer:
        _sub(key, _p("Issuer"), token.issuer)
    algorithm_parameters = _sub(key, _p("AlgorithmParameters"))
    _sub(algorithm_parameters, _p("Suite"), f"HMAC-{params.algorithm.value.upper()}")
    _sub(algorithm_parameters, _p("ResponseFormat"), Encoding="DECIMAL", Length=str(params.digits))
    data = _sub(key, _p("Data"))
    encryptor.encrypted_value(_sub(data, _p("Secret")), token.secret.reveal())
    if params.token_type is TokenType.HOTP:
        _plain(data, "Counter", token.counter)
    else:
        _plain(data, "Time", params.t0)
        _plain(data, "TimeInterval", params.period)
        _plain(data, "TimeDrift", token.drift)
    if token.user:
        _sub(key, _p("UserId"), token.user)
    if token.not_before is not None or token.not_after is not None:
        policy = _sub(key, _p("Policy"))
        if token.not_before is not None:
            _sub(policy, _p("StartDate"), token.not_before.isoformat())
        if token.not_after is not None:
            _sub(policy, _p("ExpiryDate"), token.not_after.isoformat())


def write_pskc(
    tokens: Sequence[ExportedToken],
    *,
    password: str | None = None,
    psk: bytes | None = None,
    pbkdf2_iterations: int = DEFAULT_EXPORT_ITERATIONS,
    mac_algorithm: str = "sha256",
) -> bytes:
    """Return a PSKC 1.0 document holding ``tokens``, encrypted under ``password`` or ``psk``.

    Checks only the RFC's bounds (so tests and interoperability checks may use small counts);
    ``otpctl export`` applies :func:`check_export_password` first.

    :param password: PBE password (5 to 64 characters): PBKDF2-HMAC-SHA256, AES-256-CBC.
    :param psk: pre-shared AES key of 16, 24 or 32 bytes: AES-128/192/256-CBC.
    :param mac_algorithm: "sha256" (default) or "sha1" for the ValueMAC HMAC.
    :raises UsageError: neither or both protections given, or a bad password/key/parameter.
    """
    if (password is None) == (psk is None):
        raise UsageError("an export needs exactly one of a password or a pre-shared key")
    if mac_algorithm not in _MAC_URIS:
        raise UsageError(f"MAC algorithm must be sha256 or sha1, not {mac_algorithm!r}")
    root = etree.Element(_p("KeyContainer"), nsmap=_NSMAP)
    root.set("Version", "1.0")
    key = _encryption_key(root, password, psk, pbkdf2_iterations)
    encryptor = _Encryptor(key, mac_algorithm)
    mac_method = _sub(root, _p("MACMethod"), Algorithm=_MAC_URIS[mac_algorithm])
    encryptor.cipher_data(_sub(mac_method, _p("MACKey")), encryptor.mac_key)
    for token in tokens:
        _write_key(root, token, encryptor)
    result: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return result
