"""Reading a parsed PSKC ``KeyContainer`` into :class:`RawKey` records (RFC 6030 §4–§6).

This module owns the walk over the XML: the container's protection (none, pre-shared key named
by ``ds:KeyName``, or a PBKDF2 ``xenc11:DerivedKey``), the MAC key of ``MACMethod``, and for each
``Key`` its attributes, parameters, policy and ``Data`` values, decrypted and MAC-checked.  It
records every problem it meets (with line and key Id) and goes on, so one run reports them all.
It does not judge the OATH profile rules (see :mod:`otp_agent.pskc.rules`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from lxml import etree

from otp_agent.pskc import crypto
from otp_agent.pskc.crypto import CryptoProblem
from otp_agent.pskc.model import Problem, RawKey
from otp_agent.pskc.xmlsafe import PSKC_NS
from otp_agent.sensitive import Secret

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


_C = _Clark()

_INTEGER = re.compile(r"^[+-]?[0-9]{1,19}$")

Progress = Callable[[int, int], None]


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    return (element.text or "").strip()


def _b64(text: str) -> bytes:
    return base64.b64decode("".join(text.split()), validate=True)


def _local(element: etree._Element) -> str:
    return str(etree.QName(element).localname)


class Protection:
    """The container's encryption key and MAC key, derived once and only when a value needs them."""

    def __init__(self, root: etree._Element, password: str | None, psk: bytes | None,
                 problems: list[Problem]) -> None:
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
        self._read_encryption_key(root.find(_C["p:EncryptionKey"]))
        self._read_mac_method(root.find(_C["p:MACMethod"]))

    def _fail(self, message: str, line: int | None) -> None:
        self._failed = True
        self._problems.append(Problem(message, line))

    def _read_encryption_key(self, element: etree._Element | None) -> None:
        if element is None:
            return
        line = self._line = element.sourceline
        derived = element.find(_C["xenc11:DerivedKey"])
        if derived is not None:
            self.kind = "pbe"
            self._read_pbkdf2(derived)
        elif element.find(_C["ds:KeyName"]) is not None or not any(
                isinstance(child.tag, str) for child in element):
            # A named key, or an empty EncryptionKey (python-pskc writes one): pre-shared.
            self.kind = "psk"
        elif element.find(_C["ds:X509Data"]) is not None:
            self.kind = "asymmetric"
            self._fail("file is encrypted to an X.509 certificate (asymmetric encryption); "
                       "that needs the recipient's private key and is not supported", line)
        else:
            self.kind = "unknown"
            self._fail("EncryptionKey names neither a pre-shared key (ds:KeyName) nor a "
                       "PBKDF2 derived key (xenc11:DerivedKey)", line)

    def _read_pbkdf2(self, derived: etree._Element) -> None:
        method = derived.find(_C["xenc11:KeyDerivationMethod"])
        line = derived.sourceline
        if method is None or method.get("Algorithm") != crypto.PBKDF2_URI:
            algorithm = None if method is None else method.get("Algorithm")
            self._fail(f"unsupported key derivation method {str(algorithm)[:120]!r}; "
                       "only PBKDF2 (RFC 6030 §6.2) is accepted", line)
            return
        params = next((c for c in method if isinstance(c.tag, str) and _local(c) == "PBKDF2-params"), None)
        if params is None:
            self._fail("PBKDF2 key derivation has no PBKDF2-params", method.sourceline)
            return
        fields = {_local(c): c for c in params if isinstance(c.tag, str)}
        try:
            salt_element = fields.get("Salt")
            specified = None
            if salt_element is not None:
                specified = next((c for c in salt_element if isinstance(c.tag, str)
                                  and _local(c) == "Specified"), None)
            if specified is None:
                raise CryptoProblem("PBKDF2-params has no Salt/Specified value")
            salt = _b64(specified.text or "")
            iterations = self._int_field(fields, "IterationCount")
            key_length = self._int_field(fields, "KeyLength")
            prf_element = fields.get("PRF")
            prf = "sha1"
            if prf_element is not None:
                # The schema puts the URI in @Algorithm; python-pskc writes it as the text.
                prf_uri = prf_element.get("Algorithm") or _text(prf_element)
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
        text = _text(fields.get(name))
        if text is None or not _INTEGER.match(text):
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
        mac_key = element.find(_C["p:MACKey"])
        if mac_key is None:
            self._mac_failed = True
            reason = ("MACKeyReference is not supported" if element.find(_C["p:MACKeyReference"])
                      is not None else "MACMethod has no MACKey")
            self._problems.append(Problem(reason, line))
            return
        try:
            self.mac_key = self._decrypt_element(mac_key)
        except CryptoProblem as exc:
            self._mac_failed = True
            self._problems.append(Problem(f"MACKey: {exc}", mac_key.sourceline))
        except _Reported:
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
                self._fail("file is protected by a pre-shared key: give the key file "
                           "(--key-file)" + (", not a password" if self._password else ""),
                           self._line)
            else:
                self._key = self._psk
        elif self.kind == "pbe" and self._pbkdf2 is not None:
            if self._password is None:
                self._fail("file is protected by a password (PBE): give the password file "
                           "(--password-file)" + (", not a key" if self._psk else ""),
                           self._line)
            else:
                salt, iterations, key_length, prf = self._pbkdf2
                try:
                    self._key = crypto.pbkdf2(self._password, salt, iterations, key_length, prf)
                except CryptoProblem as exc:
                    self._fail(str(exc), self._params_line)
        return self._key

    def _decrypt_element(self, element: etree._Element) -> bytes:
        """Decrypt an element holding xenc:EncryptionMethod and xenc:CipherData/CipherValue."""
        cipher = crypto.cipher_for(_attr(element.find(_C["xenc:EncryptionMethod"]), "Algorithm"))
        data = self._cipher_value(element)
        key = self.encryption_key(element.sourceline)
        if key is None:
            raise _Reported()
        return crypto.decrypt(cipher, key, data)

    @staticmethod
    def _cipher_value(element: etree._Element) -> bytes:
        text = _text(element.find(_C["xenc:CipherData/xenc:CipherValue"]))
        if not text:
            raise CryptoProblem("EncryptedValue has no CipherData/CipherValue")
        try:
            return _b64(text)
        except (binascii.Error, ValueError):
            raise CryptoProblem("CipherValue is not valid base64") from None

    def open_value(self, holder: etree._Element) -> tuple[str, bytes] | None:
        """Return ("plain", text bytes) or ("secret", decrypted bytes) for a ``Data`` child.

        Every ValueMAC is checked with the declared algorithm in constant time.
        :raises CryptoProblem: the value cannot be opened or its MAC does not match.
        :raises _Reported: a file-level problem (missing key, bad MAC key) was already reported.
        """
        plain = holder.find(_C["p:PlainValue"])
        encrypted = holder.find(_C["p:EncryptedValue"])
        value_mac_text = _text(holder.find(_C["p:ValueMAC"]))
        if encrypted is not None:
            if self._failed:
                raise _Reported()
            cipher = crypto.cipher_for(_attr(encrypted.find(_C["xenc:EncryptionMethod"]), "Algorithm"))
            data = self._cipher_value(encrypted)
            if self.mac_hash is None:
                if value_mac_text is not None:
                    raise CryptoProblem(self._no_mac_reason())
                if cipher.mode == "cbc":
                    raise CryptoProblem("value is AES-CBC encrypted without integrity and the file "
                                        "has no MACMethod (RFC 6030 §6.1.1 requires one)")
            else:
                self._check_mac(data, value_mac_text)
            key = self.encryption_key(encrypted.sourceline)
            if key is None:
                raise _Reported()
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
            raise _Reported()
        try:
            expected = _b64(value_mac_text)
        except (binascii.Error, ValueError):
            raise CryptoProblem("ValueMAC is not valid base64") from None
        if not crypto.mac_matches(self.mac_hash, self.mac_key, data, expected):
            raise CryptoProblem("ValueMAC does not match: wrong key or password, or the value was altered")

    def check_plain_mac(self, holder: etree._Element, value: bytes) -> None:
        """Check the ValueMAC of a plaintext secret (MAC over the decoded bytes)."""
        self._check_mac(value, _text(holder.find(_C["p:ValueMAC"])))


class _Reported(Exception):
    """A value could not be opened for a reason already reported once for the whole file."""


def _attr(element: etree._Element | None, name: str) -> str | None:
    return None if element is None else element.get(name)


def read_keys(root: etree._Element, *, password: str | None, psk: bytes | None,
              problems: list[Problem], notes: list[str],
              progress: Progress | None = None) -> list[RawKey]:
    """Read every ``KeyPackage/Key`` of ``root``; append problems and notes as they are found."""
    protection = Protection(root, password, psk, problems)
    if protection.kind == "none" and (password is not None or psk is not None):
        notes.append("file is not encrypted; the password or key given was not needed")
    if protection.mac_without_algorithm:
        notes.append("MACMethod has no Algorithm; key-wrapped values are checked by the unwrap")
    if root.find(_C["ds:Signature"]) is not None:
        notes.append("file carries an XML signature, which is not verified")
    keys = root.findall(_C["p:KeyPackage/p:Key"])
    if not keys:
        problems.append(Problem("file contains no KeyPackage/Key", root.sourceline))
    total = len(keys)
    result = []
    for index, key in enumerate(keys, 1):
        result.append(_read_key(key, protection, problems))
        if progress is not None:
            progress(index, total)
    return result


def _read_key(key: etree._Element, protection: Protection, problems: list[Problem]) -> RawKey:
    raw = RawKey(line=key.sourceline or 0, key_id=key.get("Id"), algorithm=key.get("Algorithm"))
    package = key.getparent()
    device = package.find(_C["p:DeviceInfo"]) if package is not None else None
    if device is not None:
        raw.manufacturer = _text(device.find(_C["p:Manufacturer"]))
        raw.device_serial = _text(device.find(_C["p:SerialNo"]))
        raw.device_user = _text(device.find(_C["p:UserId"]))
        raw.start_date = _text(device.find(_C["p:StartDate"]))
        raw.expiry_date = _text(device.find(_C["p:ExpiryDate"]))
    raw.issuer = _text(key.find(_C["p:Issuer"]))
    raw.key_user = _text(key.find(_C["p:UserId"]))
    raw.key_reference = _text(key.find(_C["p:KeyReference"]))
    params = key.find(_C["p:AlgorithmParameters"])
    if params is not None:
        raw.suite = _text(params.find(_C["p:Suite"]))
        response = params.find(_C["p:ResponseFormat"])
        if response is not None:
            raw.response_format_line = response.sourceline
            raw.response_length = response.get("Length")
            raw.response_encoding = response.get("Encoding")
            raw.check_digits = response.get("CheckDigits")
    _read_policy(key.find(_C["p:Policy"]), raw)
    data = key.find(_C["p:Data"])
    if data is not None:
        _read_data(data, raw, protection, problems)
    return raw


def _read_policy(policy: etree._Element | None, raw: RawKey) -> None:
    if policy is None:
        return
    raw.has_policy = True
    for child in policy:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child)
        if name.namespace != PSKC_NS:
            raw.unknown_policy.append(name.localname)
        elif name.localname == "StartDate":
            raw.start_date = _text(child)
        elif name.localname == "ExpiryDate":
            raw.expiry_date = _text(child)
        elif name.localname == "KeyUsage":
            raw.key_usage.append(_text(child) or "")
        elif name.localname == "PINPolicy":
            raw.pin_key_id = child.get("PINKeyId")
            raw.pin_usage_mode = child.get("PINUsageMode")
        else:
            raw.unknown_policy.append(name.localname)


_INT_FIELDS = (("Counter", "counter"), ("Time", "time"), ("TimeInterval", "time_interval"),
               ("TimeDrift", "time_drift"))


def _read_data(data: etree._Element, raw: RawKey, protection: Protection,
               problems: list[Problem]) -> None:
    def problem(message: str, element: etree._Element) -> None:
        problems.append(Problem(message, element.sourceline, raw.key_id))

    secret = data.find(_C["p:Secret"])
    if secret is not None:
        try:
            opened = protection.open_value(secret)
            if opened is None:
                problem("Secret has neither PlainValue nor EncryptedValue", secret)
                raw.secret_error = True
            elif opened[0] == "secret":
                raw.secret = Secret(opened[1])
            else:
                try:
                    value = _b64(opened[1].decode("utf-8"))
                except (binascii.Error, ValueError):
                    raise CryptoProblem("Secret PlainValue is not valid base64") from None
                if opened[0] == "plainmac":
                    protection.check_plain_mac(secret, value)
                raw.secret = Secret(value)
        except CryptoProblem as exc:
            problem(f"Secret: {exc}", secret)
            raw.secret_error = True
        except _Reported:
            raw.secret_error = True
    for element_name, attribute in _INT_FIELDS:
        holder = data.find(_C["p:" + element_name])
        if holder is None:
            continue
        try:
            opened = protection.open_value(holder)
            if opened is None:
                raise CryptoProblem("has neither PlainValue nor EncryptedValue")
            if opened[0] == "plainmac":
                raise CryptoProblem("a ValueMAC on a plain integer is not supported")
            if opened[0] == "secret":
                if not 1 <= len(opened[1]) <= 8:
                    raise CryptoProblem("encrypted integer is not 1 to 8 bytes long")
                number = int.from_bytes(opened[1], "big", signed=element_name == "TimeDrift")
            else:
                text = opened[1].decode("utf-8")
                if not _INTEGER.match(text):
                    shown = text[:40].encode("unicode_escape").decode("ascii")
                    raise CryptoProblem(f"value {shown!r} is not an integer")
                number = int(text)
            setattr(raw, attribute, number)
        except CryptoProblem as exc:
            problem(f"{element_name}: {exc}", holder)
            raw.bad_fields.add(element_name)
        except _Reported:
            raw.bad_fields.add(element_name)
