"""Reading a parsed PSKC ``KeyContainer`` into :class:`RawKey` records (RFC 6030 §4–§5).

This module owns the walk over the keys: for each ``KeyPackage/Key`` its attributes, device
information, algorithm parameters, policy and ``Data`` values (opened, decrypted and MAC-checked
through :class:`~otp_agent.pskc.protection.Protection`).  It records every problem it meets
(with line and key Id) and goes on, so one run reports them all.  It does not judge the OATH
profile rules (see :mod:`otp_agent.pskc.rules`).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable

from lxml import etree

from otp_agent.pskc.crypto import CryptoProblem
from otp_agent.pskc.model import Problem, RawKey
from otp_agent.pskc.protection import INTEGER, C, Protection, Reported, b64decode, text_of
from otp_agent.pskc.xmlsafe import PSKC_NS, Document
from otp_agent.sensitive import Secret

Progress = Callable[[int, int], None]


def read_keys(
    document: Document,
    *,
    password: str | None,
    psk: bytes | None,
    problems: list[Problem],
    notes: list[str],
    progress: Progress | None = None,
) -> list[RawKey]:
    """Read every ``KeyPackage/Key`` of ``document`` as it streams by.

    Problems and notes are appended as they are found.  The container's protection is read when
    the first ``KeyPackage`` is complete (RFC 6030 puts ``EncryptionKey`` and ``MACMethod``
    before the packages).
    """
    protection: Protection | None = None
    result: list[RawKey] = []
    for package in document.packages():
        if protection is None:
            assert document.root is not None
            protection = Protection(document.root, password, psk, problems)
        for key in package.iterchildren(C["p:Key"]):
            result.append(_read_key(key, package, protection, problems))
            if progress is not None:
                progress(len(result), max(len(result), document.estimated_packages))
    root = document.root
    assert root is not None
    if protection is None:
        protection = Protection(root, password, psk, problems)
    if not result:
        problems.append(Problem("file contains no KeyPackage/Key", root.sourceline))
    if protection.kind == "none" and (password is not None or psk is not None):
        notes.append("file is not encrypted; the password or key given was not needed")
    if protection.mac_without_algorithm:
        notes.append("MACMethod has no Algorithm; key-wrapped values are checked by the unwrap")
    if document.signed:
        notes.append("file carries an XML signature, which is not verified")
    return result


def _read_key(
    key: etree._Element, package: etree._Element, protection: Protection, problems: list[Problem]
) -> RawKey:
    raw = RawKey(line=key.sourceline or 0, key_id=key.get("Id"), algorithm=key.get("Algorithm"))
    device = package.find(C["p:DeviceInfo"])
    if device is not None:
        raw.manufacturer = text_of(device.find(C["p:Manufacturer"]))
        raw.device_serial = text_of(device.find(C["p:SerialNo"]))
        raw.device_user = text_of(device.find(C["p:UserId"]))
        raw.start_date = text_of(device.find(C["p:StartDate"]))
        raw.expiry_date = text_of(device.find(C["p:ExpiryDate"]))
    raw.issuer = text_of(key.find(C["p:Issuer"]))
    raw.key_user = text_of(key.find(C["p:UserId"]))
    raw.key_reference = text_of(key.find(C["p:KeyReference"]))
    params = key.find(C["p:AlgorithmParameters"])
    if params is not None:
        raw.suite = text_of(params.find(C["p:Suite"]))
        response = params.find(C["p:ResponseFormat"])
        if response is not None:
            raw.response_format_line = response.sourceline
            raw.response_length = response.get("Length")
            raw.response_encoding = response.get("Encoding")
            raw.check_digits = response.get("CheckDigits")
    _read_policy(key.find(C["p:Policy"]), raw)
    data = key.find(C["p:Data"])
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
            raw.start_date = text_of(child)
        elif name.localname == "ExpiryDate":
            raw.expiry_date = text_of(child)
        elif name.localname == "KeyUsage":
            raw.key_usage.append(text_of(child) or "")
        elif name.localname == "PINPolicy":
            raw.pin_key_id = child.get("PINKeyId")
            raw.pin_usage_mode = child.get("PINUsageMode")
        else:
            raw.unknown_policy.append(name.localname)


_INT_FIELDS = (
    ("Counter", "counter"),
    ("Time", "time"),
    ("TimeInterval", "time_interval"),
    ("TimeDrift", "time_drift"),
)


def _read_data(data: etree._Element, raw: RawKey, protection: Protection, problems: list[Problem]) -> None:
    def problem(message: str, element: etree._Element) -> None:
        """Report a problem of this key at ``element``'s line."""
        problems.append(Problem(message, element.sourceline, raw.key_id))

    secret = data.find(C["p:Secret"])
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
                    value = b64decode(opened[1].decode("utf-8"))
                except (binascii.Error, ValueError):
                    raise CryptoProblem("Secret PlainValue is not valid base64") from None
                if opened[0] == "plainmac":
                    protection.check_plain_mac(secret, value)
                raw.secret = Secret(value)
        except CryptoProblem as exc:
            problem(f"Secret: {exc}", secret)
            raw.secret_error = True
        except Reported:
            raw.secret_error = True
    for element_name, attribute in _INT_FIELDS:
        holder = data.find(C["p:" + element_name])
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
                if not INTEGER.match(text):
                    shown = text[:40].encode("unicode_escape").decode("ascii")
                    raise CryptoProblem(f"value {shown!r} is not an integer")
                number = int(text)
            setattr(raw, attribute, number)
        except CryptoProblem as exc:
            problem(f"{element_name}: {exc}", holder)
            raw.bad_fields.add(element_name)
        except Reported:
            raw.bad_fields.add(element_name)
