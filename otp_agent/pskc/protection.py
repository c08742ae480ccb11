"""The protection of a PSKC container: its encryption key, its MAC key and opening values.

This module owns RFC 6030 §6 at the XML level: which key protects the file (none, a pre-shared
key named by ``ds:KeyName`` or an empty ``EncryptionKey``, or a PBKDF2 ``xenc11:DerivedKey``),
deriving it once and only when a value needs it, decrypting the ``MACMethod``'s MAC key, and
opening each ``PlainValue``/``EncryptedValue`` after checking its ``ValueMAC`` in constant
time.  Container-level problems are reported once, with their line.  It reads no key fields.
"""

from __future__ import annotations

import base64
import binascii
import re

from lxml import etree

from otp_agent.pskc import crypto
from otp_agent.pskc.crypto import CryptoProblem
from otp_agent.pskc.model import Problem
from otp_agent.pskc.xmlsafe import PSKC_NS

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XENC_NS = "http://www.w3.org/2001/04/xmlenc#"
XENC11_NS = "http://www.w3.org/2009/xmlenc11#"
NS = {"p": PSKC_NS, "ds": DS_NS, "xenc": XENC_NS, "xenc11": XENC11_NS}


class _Clark(dict[str, str]):
    """Paths like "p:Data/p:Secret" in lxml's {namespace}name form, computed once each."""

    def __missing__(self, path: str) -> str:
        parts = []
        for step in path.split("/"):
            prefix, _, name = step.partition(":")
            parts.append(f"{{{NS[prefix]}}}{name}")
        self[path] = "/".join(parts)
        return self[path]


C = _Clark()

#: A decimal integer as PSKC writes them (at most 19 digits: fits in 64 bits).
INTEGER = re.compile(r"^[+-]?[0-9]{1,19}$")


def text_of(element: etree._Element | None) -> str | None:
    """Return the stripped text of ``element``, or ``None`` when the element is absent."""
    if element is None:
        return None
    return (element.text or "").strip()


def b64decode(text: str) -> bytes:
    """Decode base64 that may be broken over lines; raise ``binascii.Error`` when invalid."""
    return base64.b64decode("".join(text.split()), validate=True)


def local_name(element: etree._Element) -> str:
    """Return the element's name without its namespace."""
    return str(etree.QName(element).localname)


class Protection:
    """The container's encryption key and MAC key, derived once and only when a value needs them."""

    def __init__(
        self, root: etree._Element, password: str | None, psk: bytes | None, problems: list[Problem]
    ) -> None:
        self._problems = problems
        self._password = password
        self._psk = psk
        self._key: bytes | None = None
        self._failed = False
        self.kind = "none"
        self._line: int | None = None
        self._params_line: int | None = None
        self._pbkdf2: tuple[bytes, int, int, str] | None = None
        self.mac_hash: str | None = None
        self.mac_key: bytes | None = None
        self._mac_failed = False
        self.mac_without_algorithm = False
        self._read_encryption_key(root.find(C["p:EncryptionKey"]))
        self._read_mac_method(root.find(C["p:MACMethod"]))

    def _fail(self, message: str, line: int | None) -> None:
        self._failed = True
        self._problems.append(Problem(message, line))

    def _read_encryption_key(self, element: etree._Element | None) -> None:
        if element is None:
            return
        line = self._line = element.sourceline
        derived = element.find(C["xenc11:DerivedKey"])
        if derived is not None:
            self.kind = "pbe"
            self._read_pbkdf2(derived)
        elif element.find(C["ds:KeyName"]) is not None or not any(
            isinstance(child.tag, str) for child in element
        ):
            # A named key, or an empty EncryptionKey (python-pskc writes one): pre-shared.
            self.kind = "psk"
        elif element.find(C["ds:X509Data"]) is not None:
            self.kind = "asymmetric"
            self._fail(
                "file is encrypted to an X.509 certificate (asymmetric encryption); "
                "that needs the recipient's private key and is not supported",
                line,
            )
        else:
            self.kind = "unknown"
            self._fail(
                "EncryptionKey names neither a pre-shared key (ds:KeyName) nor a "
                "PBKDF2 derived key (xenc11:DerivedKey)",
                line,
            )

    def _read_pbkdf2(self, derived: etree._Element) -> None:
        method = derived.find(C["xenc11:KeyDerivationMethod"])
        line = derived.sourceline
        if method is None or method.get("Algorithm") != crypto.PBKDF2_URI:
            algorithm = None if method is None else method.get("Algorithm")
            self._fail(
                f"unsupported key derivation method {str(algorithm)[:120]!r}; "
                "only PBKDF2 (RFC 6030 §6.2) is accepted",
                line,
            )
            return
        params = next(
            (c for c in method if isinstance(c.tag, str) and local_name(c) == "PBKDF2-params"), None
        )
        if params is None:
            self._fail("PBKDF2 key derivation has no PBKDF2-params", method.sourceline)
            return
        fields = {local_name(c): c for c in params if isinstance(c.tag, str)}
        try:
            salt_element = fields.get("Salt")
            specified = None
            if salt_element is not None:
                specified = next(
                    (c for c in salt_element if isinstance(c.tag, str) and local_name(c) == "Specified"), None
                )
            if specified is None:
                raise CryptoProblem("PBKDF2-params has no Salt/Specified value")
            salt = b64decode(specified.text or "")
            iterations = self._int_field(fields, "IterationCount")
            key_length = self._int_field(fields, "KeyLength")
            prf_element = fields.get("PRF")
            prf = "sha1"
            if prf_element is not None:
                # The schema puts the URI in @Algorithm; python-pskc writes it as the text.
                prf_uri = prf_element.get("Algorithm") or text_of(prf_element)
                if prf_uri:
                    prf = crypto.hmac_hash_for(prf_uri, crypto.PRF_ALGORITHMS)
        except (CryptoProblem, binascii.Error, ValueError) as exc:
            message = str(exc) if isinstance(exc, CryptoProblem) else "PBKDF2 salt is not valid base64"
            self._fail(message, params.sourceline)
            return
        self._pbkdf2 = (salt, iterations, key_length, prf)
        self._params_line = params.sourceline

    @staticmethod
    def _int_field(fields: dict[str, etree._Element], name: str) -> int:
        text = text_of(fields.get(name))
        if text is None or not INTEGER.match(text):
            raise CryptoProblem(f"PBKDF2-params {name} is missing or not an integer")
        return int(text)

    def _read_mac_method(self, element: etree._Element | None) -> None:
        if element is None:
            return
        line = element.sourceline
        if element.get("Algorithm") is None:
            # python-pskc writes such a MACMethod for key-wrapped files, which carry their own
            # integrity check: it only matters if a value is CBC-encrypted or has a ValueMAC.
            self.mac_without_algorithm = True
            return
        try:
            self.mac_hash = crypto.hmac_hash_for(element.get("Algorithm"))
        except CryptoProblem as exc:
            self._mac_failed = True
            self.mac_hash = "unknown"
            self._problems.append(Problem(f"MACMethod: {exc}", line))
            return
        mac_key = element.find(C["p:MACKey"])
        if mac_key is None:
            self._mac_failed = True
            reason = (
                "MACKeyReference is not supported"
                if element.find(C["p:MACKeyReference"]) is not None
                else "MACMethod has no MACKey"
            )
            self._problems.append(Problem(reason, line))
            return
        try:
            self.mac_key = self._decrypt_element(mac_key)
        except CryptoProblem as exc:
            self._mac_failed = True
            self._problems.append(Problem(f"MACKey: {exc}", mac_key.sourceline))
        except Reported:
            self._mac_failed = True

    def encryption_key(self, line: int | None = None) -> bytes | None:
        """Return the container key, deriving it on first use; ``None`` once a problem was reported.

        ``line`` is where the first value needing the key is, for the report.
        """
        if self._key is not None or self._failed:
            return self._key
        if self.kind == "none":
            self._fail("a value is encrypted but the file has no EncryptionKey", line)
        elif self.kind == "psk":
            if self._psk is None:
                self._fail(
                    "file is protected by a pre-shared key: give the key file "
                    "(--key-file)" + (", not a password" if self._password else ""),
                    self._line,
                )
            else:
                self._key = self._psk
        elif self.kind == "pbe" and self._pbkdf2 is not None:
            if self._password is None:
                self._fail(
                    "file is protected by a password (PBE): give the password file "
                    "(--password-file)" + (", not a key" if self._psk else ""),
                    self._line,
                )
            else:
                salt, iterations, key_length, prf = self._pbkdf2
                try:
                    self._key = crypto.pbkdf2(self._password, salt, iterations, key_length, prf)
                except CryptoProblem as exc:
                    self._fail(str(exc), self._params_line)
        return self._key

    def _decrypt_element(self, element: etree._Element) -> bytes:
        """Decrypt an element holding xenc:EncryptionMethod and xenc:CipherData/CipherValue."""
        cipher = crypto.cipher_for(_attr(element.find(C["xenc:EncryptionMethod"]), "Algorithm"))
        data = self._cipher_value(element)
        key = self.encryption_key(element.sourceline)
        if key is None:
            raise Reported()
        return crypto.decrypt(cipher, key, data)

    @staticmethod
    def _cipher_value(element: etree._Element) -> bytes:
        text = text_of(element.find(C["xenc:CipherData/xenc:CipherValue"]))
        if not text:
            raise CryptoProblem("EncryptedValue has no CipherData/CipherValue")
        try:
            return b64decode(text)
        except (binascii.Error, ValueError):
            raise CryptoProblem("CipherValue is not valid base64") from None

    def open_value(self, holder: etree._Element) -> tuple[str, bytes] | None:
        """Return ("plain", text bytes) or ("secret", decrypted bytes) for a ``Data`` child.

        Every ValueMAC is checked with the declared algorithm in constant time.
        :raises CryptoProblem: the value cannot be opened or its MAC does not match.
        :raises Reported: a file-level problem (missing key, bad MAC key) was already reported.
        """
        plain = holder.find(C["p:PlainValue"])
        encrypted = holder.find(C["p:EncryptedValue"])
        value_mac_text = text_of(holder.find(C["p:ValueMAC"]))
        if encrypted is not None:
            if self._failed:
                raise Reported()
            cipher = crypto.cipher_for(_attr(encrypted.find(C["xenc:EncryptionMethod"]), "Algorithm"))
            data = self._cipher_value(encrypted)
            if self.mac_hash is None:
                if value_mac_text is not None:
                    raise CryptoProblem(self._no_mac_reason())
                if cipher.mode == "cbc":
                    raise CryptoProblem(
                        "value is AES-CBC encrypted without integrity and the file "
                        "has no MACMethod (RFC 6030 §6.1.1 requires one)"
                    )
            else:
                self._check_mac(data, value_mac_text)
            key = self.encryption_key(encrypted.sourceline)
            if key is None:
                raise Reported()
            return ("secret", crypto.decrypt(cipher, key, data))
        if plain is not None:
            text = (plain.text or "").strip()
            if value_mac_text is not None:
                if self.mac_hash is None:
                    raise CryptoProblem(self._no_mac_reason())
                return ("plainmac", text.encode("utf-8"))
            return ("plain", text.encode("utf-8"))
        return None

    def _no_mac_reason(self) -> str:
        if self.mac_without_algorithm:
            return "value has a ValueMAC but the MACMethod has no Algorithm"
        return "value has a ValueMAC but the file has no MACMethod"

    def _check_mac(self, data: bytes, value_mac_text: str | None) -> None:
        if value_mac_text is None:
            raise CryptoProblem("encrypted value has no ValueMAC although the file declares a MACMethod")
        if self._mac_failed or self.mac_key is None or self.mac_hash is None:
            raise Reported()
        try:
            expected = b64decode(value_mac_text)
        except (binascii.Error, ValueError):
            raise CryptoProblem("ValueMAC is not valid base64") from None
        if not crypto.mac_matches(self.mac_hash, self.mac_key, data, expected):
            raise CryptoProblem("ValueMAC does not match: wrong key or password, or the value was altered")

    def check_plain_mac(self, holder: etree._Element, value: bytes) -> None:
        """Check the ValueMAC of a plaintext secret (MAC over the decoded bytes)."""
        self._check_mac(value, text_of(holder.find(C["p:ValueMAC"])))


class Reported(Exception):
    """A value could not be opened for a reason already reported once for the whole file."""


def _attr(element: etree._Element | None, name: str) -> str | None:
    return None if element is None else element.get(name)
