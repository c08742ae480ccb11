"""RFC 6030 figures: every figure readable without a private key gives its documented values.

Figures 3, 5, 6, 7 and 9 import under the OATH profile (with the any-id option, since the RFC
uses Ids like "12345678").  Figures 2, 4 and 10 are read correctly but refused by profile rules,
each for its documented reason; Figure 8 (asymmetric encryption, private key unpublished) is
refused as a whole.  Expected values are those of RFC 6030 (tests/vectors/pskc/README.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from otp_agent.oath.params import HashAlgorithm, TokenType
from otp_agent.pskc import PskcImportError, crypto, parse_pskc, parse_pskc_report
from otp_agent.pskc.parser import read_keys
from otp_agent.pskc.xmlsafe import Document, parse_document
from tests.pskc.conftest import FIGURE6_PSK, FIGURE7_PASSWORD, RFC, RFC_SECRET, read


def raw_keys(name: str, **kwargs: object):
    """Read a figure without applying the profile rules."""
    problems: list[Any] = []
    notes: list[Any] = []
    keys = read_keys(
        Document(read(RFC / name)),
        password=kwargs.get("password"),  # type: ignore[arg-type]
        psk=kwargs.get("psk"),  # type: ignore[arg-type]
        problems=problems,
        notes=notes,
    )
    return keys, problems, notes


def test_figure2_values_read_but_refused_by_profile() -> None:
    """Figure 2: one HOTP key, Id 12345678, Issuer-A, secret "1234"; too short and no ResponseFormat."""
    keys, problems, _ = raw_keys("figure2.xml")
    assert problems == []
    (key,) = keys
    assert key.key_id == "12345678" and key.issuer == "Issuer-A"
    assert key.algorithm == "urn:ietf:params:xml:ns:keyprov:pskc:hotp"
    assert key.secret is not None and key.secret.reveal() == b"1234"
    assert key.counter is None and key.response_format_line is None
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(read(RFC / "figure2.xml"), strict_ids=False)
    text = " | ".join(caught.value.problems)
    assert "no AlgorithmParameters/ResponseFormat" in text
    assert "SHA1 secret must be at least 20 bytes, this one has 4" in text


def test_figure3_imports_with_supplementary_data() -> None:
    """Figure 3: HOTP, 8 digits, counter 0, secret 1234...890, user from the UID= of Key/UserId."""
    (token,) = parse_pskc(read(RFC / "figure3.xml"), strict_ids=False)
    assert token.serial == "12345678"
    assert token.params.token_type is TokenType.HOTP
    assert token.params.algorithm is HashAlgorithm.SHA1
    assert token.params.digits == 8
    assert token.counter == 0
    assert token.secret.reveal() == RFC_SECRET
    assert token.user == "jsmith"
    assert token.issuer == "Issuer"
    assert token.manufacturer == "Manufacturer"
    keys, _, _ = raw_keys("figure3.xml")
    assert keys[0].device_serial == "987654321"
    assert keys[0].device_user == "DC=example-bank,DC=net"
    assert keys[0].key_user == "UID=jsmith,DC=example-bank,DC=net"


def test_figure3_strict_ids_refuse_rfc_id() -> None:
    """The RFC's Id "12345678" is not an OATH token identifier: strict mode refuses it."""
    with pytest.raises(PskcImportError, match="1 problem") as caught:
        parse_pskc(read(RFC / "figure3.xml"))
    assert "not an OATH token identifier" in caught.value.problems[0]
    assert caught.value.details[0].line == 15


def test_figure4_key_without_secret_is_refused() -> None:
    """Figure 4: KeyProfileId/KeyReference and Counter 0 but no secret; refused clearly."""
    keys, problems, _ = raw_keys("figure4.xml")
    assert problems == []
    assert keys[0].key_reference == "MasterKeyLabel"
    assert keys[0].secret is None and keys[0].counter == 0
    assert keys[0].device_serial == "987654321"
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(read(RFC / "figure4.xml"), strict_ids=False)
    assert caught.value.problems == [
        "line 13, key '12345678': Key has no Secret but a KeyReference "
        "(server-side key derivation is not supported)"
    ]


def test_figure5_imports_hotp_key_and_skips_local_pin() -> None:
    """Figure 5: the HOTP key imports; the PIN key (checked on the device) is noted, not imported."""
    tokens, notes = parse_pskc_report(read(RFC / "figure5.xml"), strict_ids=False)
    (token,) = tokens
    assert token.serial == "12345678" and token.params.digits == 8 and token.counter == 0
    assert token.secret.reveal() == RFC_SECRET
    assert any("123456781" in note and "PINUsageMode Local" in note for note in notes)
    keys, _, _ = raw_keys("figure5.xml")
    assert keys[0].pin_key_id == "123456781" and keys[0].pin_usage_mode == "Local"
    assert keys[0].key_usage == ["OTP"]
    assert keys[1].secret is not None and keys[1].secret.reveal() == b"1234"
    assert keys[1].response_length == "4"


def test_figure6_preshared_key_aes128_cbc_with_mac() -> None:
    """Figure 6: PSK 1234...9012 decrypts the secret and the MAC key; the ValueMAC verifies."""
    (token,) = parse_pskc(read(RFC / "figure6.xml"), psk=FIGURE6_PSK, strict_ids=False)
    assert token.secret.reveal() == RFC_SECRET
    assert token.params.digits == 8 and token.counter == 0
    assert token.params.token_type is TokenType.HOTP


def test_figure6_mac_key_value() -> None:
    """Figure 6's MACKey decrypts to the documented HMAC-SHA1 key."""
    from otp_agent.pskc.protection import Protection

    protection = Protection(parse_document(read(RFC / "figure6.xml")), None, FIGURE6_PSK, [])
    assert protection.mac_hash == "sha1"
    assert protection.mac_key == bytes.fromhex("1122334455667788990011223344556677889900")


def test_figure6_wrong_key_is_refused_without_showing_key() -> None:
    """A wrong pre-shared key is refused; neither the key nor a secret appears in the report."""
    wrong = bytes.fromhex("00" * 16)
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(read(RFC / "figure6.xml"), psk=wrong, strict_ids=False)
    text = str(caught.value) + " ".join(caught.value.problems)
    assert "wrong key or password" in text
    assert "0000000000" not in text and "1234567890" not in text


def test_figure6_needs_key() -> None:
    """Figure 6 without a key asks for the key file."""
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(read(RFC / "figure6.xml"), strict_ids=False)
    assert "protected by a pre-shared key: give the key file" in caught.value.problems[0]


def test_figure7_pbe() -> None:
    """Figure 7: password "qwerty", PBKDF2 (1000 iterations, HMAC-SHA1) and AES-128-CBC."""
    tokens, notes = parse_pskc_report(read(RFC / "figure7.xml"), password=FIGURE7_PASSWORD, strict_ids=False)
    (token,) = tokens
    assert token.serial == "123456"
    assert token.secret.reveal() == RFC_SECRET
    assert token.manufacturer == "TokenVendorAcme"
    assert token.issuer == "Example-Issuer"
    assert token.params.digits == 8
    assert token.counter == 0  # Figure 7 has no Counter element: the default applies.
    assert notes == []


def test_figure7_derived_key_and_mac_key() -> None:
    """Figure 7's PBKDF2 key and decrypted MAC key are the documented values."""
    salt = bytes.fromhex("123eff3c4a72129c")
    key = crypto.pbkdf2(FIGURE7_PASSWORD, salt, 1000, 16)
    assert key.hex() == "651e63cd57008476af1ff6422cd02e41"
    from otp_agent.pskc.protection import Protection

    protection = Protection(parse_document(read(RFC / "figure7.xml")), FIGURE7_PASSWORD, None, [])
    assert protection.mac_key == bytes.fromhex("bdaab8d648e850d25a3289364f7d7eaaf53ce581")


def test_figure7_wrong_password() -> None:
    """A wrong password is refused (the MAC key does not decrypt or the MAC does not match)."""
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(read(RFC / "figure7.xml"), password="qwertz", strict_ids=False)
    assert "wrong key or password" in " ".join(caught.value.problems)
    assert "qwertz" not in " ".join(caught.value.problems)


def test_figure8_asymmetric_encryption_is_refused_and_nothing_imported() -> None:
    """Figure 8: secret encrypted (rsa_1_5) to the RFC's test certificate; refused with its own message."""
    expected = (
        "line 8: file is encrypted to an X.509 certificate (asymmetric encryption); "
        "that needs the recipient's private key and is not supported"
    )
    for options in ({}, {"psk": FIGURE6_PSK}):
        with pytest.raises(PskcImportError, match="nothing imported") as caught:
            parse_pskc(read(RFC / "figure8.xml"), strict_ids=False, **options)  # type: ignore[arg-type]
        assert caught.value.problems == [expected]
    keys, problems, _ = raw_keys("figure8.xml")
    assert [p.message for p in problems] == [expected.removeprefix("line 8: ")]
    (key,) = keys
    assert key.key_id == "MBK000000001" and key.secret is None
    assert key.device_serial == "987654321" and key.issuer == "Example-Issuer"
    assert key.response_length == "6" and key.counter == 0


def test_figure8_certificate_is_the_rfc_one() -> None:
    """The re-typed certificate is exact: it parses and its self-signature verifies."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    root = parse_document(read(RFC / "figure8.xml"))
    ns = {"ds": "http://www.w3.org/2000/09/xmldsig#", "xenc": "http://www.w3.org/2001/04/xmlenc#"}
    text = root.findtext(".//ds:X509Certificate", namespaces=ns) or ""
    cert = x509.load_der_x509_certificate(crypto_b64(text))
    assert (
        cert.subject.rfc4514_string() == "CN=PSKC Test,OU=KeyProv WG,O=IETF" == cert.issuer.rfc4514_string()
    )
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 1024
    assert cert.signature_hash_algorithm is not None
    public_key.verify(
        cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
    )
    cipher = crypto_b64(root.findtext(".//xenc:CipherValue", namespaces=ns) or "")
    assert len(cipher) == 128 and int.from_bytes(cipher, "big") < public_key.public_numbers().n


def crypto_b64(text: str) -> bytes:
    """Decode base64 that spans lines, as the RFC prints it."""
    import base64

    return base64.b64decode("".join(text.split()), validate=True)


def test_figure9_signed_file_imports_and_signature_is_not_verified() -> None:
    """Figure 9 (ds:Signature per errata 3418): HOTP key 123, 6 digits, counter 0; signature noted."""
    tokens, notes = parse_pskc_report(read(RFC / "figure9.xml"), strict_ids=False)
    (token,) = tokens
    assert token.serial == "123"
    assert token.params.token_type is TokenType.HOTP
    assert token.params.digits == 6 and token.counter == 0
    assert token.secret.reveal() == RFC_SECRET
    assert token.manufacturer == "TokenVendorAcme" and token.issuer == "Example-Issuer"
    assert notes == ["file carries an XML signature, which is not verified"]
    keys, problems, _ = raw_keys("figure9.xml")
    assert problems == [] and keys[0].device_serial == "0755225266"


def test_figure9_as_printed_in_the_rfc_is_also_noted_as_signed() -> None:
    """The RFC prints the Signature unprefixed (PSKC namespace, as its schema declares): same note."""
    data = read(RFC / "figure9.xml").replace(b"<ds:Signature>", b"<Signature>")
    data = data.replace(b"</ds:Signature>", b"</Signature>")
    assert b"<Signature>" in data and b"<ds:Signature>" not in data
    tokens, notes = parse_pskc_report(data, strict_ids=False)
    assert [t.serial for t in tokens] == ["123"]
    assert notes == ["file carries an XML signature, which is not verified"]


def test_figure10_bulk_values_read_and_shared_secret_refused() -> None:
    """Figure 10: four HOTP keys with their validity windows; the shared secret is refused."""
    keys, problems, _ = raw_keys("figure10.xml")
    assert problems == []
    assert [k.device_serial for k in keys] == ["654321", "123456", "9999999", "9999999"]
    assert all(k.manufacturer == "TokenVendorAcme" for k in keys)
    assert all(k.secret is not None and k.secret.reveal() == RFC_SECRET for k in keys)
    assert [(k.start_date, k.expiry_date) for k in keys] == [
        ("2006-05-01T00:00:00Z", "2006-05-31T00:00:00Z"),
        ("2006-05-01T00:00:00Z", "2006-05-31T00:00:00Z"),
        ("2006-03-01T00:00:00Z", "2006-03-31T00:00:00Z"),
        ("2006-04-01T00:00:00Z", "2006-04-30T00:00:00Z"),
    ]
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(read(RFC / "figure10.xml"), strict_ids=False)
    assert len(caught.value.problems) == 3
    assert all("secrets must be unique" in p for p in caught.value.problems)


def test_figure10_dates_are_parsed_when_secrets_differ() -> None:
    """Figure 10 with distinct secrets imports with not_before/not_after from the Policy."""
    data = read(RFC / "figure10.xml").decode()
    for secret in (
        "QUFBQUFBQUFBQUFBQUFBQUFBQUE=",
        "QkJCQkJCQkJCQkJCQkJCQkJCQkI=",
        "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M=",
    ):
        data = data.replace("MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=", secret, 1)
    tokens, notes = parse_pskc_report(data.encode(), strict_ids=False)
    assert [t.serial for t in tokens] == ["1", "2", "3", "4"]
    assert tokens[0].not_before == datetime(2006, 5, 1, tzinfo=UTC)
    assert tokens[3].not_after == datetime(2006, 4, 30, tzinfo=UTC)
    assert sum("expired" in note for note in notes) == 4
