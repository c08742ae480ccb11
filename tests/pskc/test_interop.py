"""Interoperability with python-pskc, an independent PSKC writer and reader (test dependency only).

Files written by python-pskc with every protection mode it offers that we accept import with the
right values; our exports are read back by python-pskc, whose MAC check passes.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest

from otp_agent.oath.params import HashAlgorithm, OathParams, TokenType
from otp_agent.pskc import ExportedToken, PskcImportError, parse_pskc, write_pskc
from otp_agent.sensitive import Secret

pskc = pytest.importorskip("pskc")

TOTP_SECRET = bytes(range(100, 132))  # 32 bytes, for HMAC-SHA256
HOTP_SECRET = bytes(range(1, 21))  # 20 bytes, for HMAC-SHA1
PASSWORD = "correct horse battery"


def vendor_file() -> Any:
    """A python-pskc container with one TOTP (SHA-256, 60 s) and one HOTP token."""
    container = pskc.PSKC()
    container.add_key(
        id="VNTO00000001",
        secret=TOTP_SECRET,
        algorithm="urn:ietf:params:xml:ns:keyprov:pskc:totp",
        algorithm_suite="HMAC-SHA256",
        response_length=8,
        response_encoding="DECIMAL",
        time_offset=0,
        time_interval=60,
        time_drift=-1,
        manufacturer="Vendor",
        serial="00000001",
        issuer="Vendor",
        key_userid="alice",
    )
    container.add_key(
        id="VNHO00000002",
        secret=HOTP_SECRET,
        algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp",
        response_length=6,
        response_encoding="DECIMAL",
        counter=17,
        manufacturer="Vendor",
    )
    return container


def written(container: Any) -> bytes:
    buffer = io.BytesIO()
    container.write(buffer)
    return buffer.getvalue()


def check_vendor_tokens(data: bytes, **options: object) -> None:
    totp, hotp = parse_pskc(data, **options)  # type: ignore[arg-type]
    assert totp.serial == "VNTO00000001"
    assert totp.params == OathParams(TokenType.TOTP, HashAlgorithm.SHA256, 8, 60, 0)
    assert totp.secret.reveal() == TOTP_SECRET
    assert totp.drift == -1 and totp.user == "alice" and totp.issuer == "Vendor"
    assert hotp.serial == "VNHO00000002"
    assert hotp.params == OathParams(TokenType.HOTP, HashAlgorithm.SHA1, 6)
    assert hotp.secret.reveal() == HOTP_SECRET
    assert hotp.counter == 17 and hotp.user is None


def test_python_pskc_plaintext() -> None:
    """A plaintext file written by python-pskc imports."""
    check_vendor_tokens(written(vendor_file()))


@pytest.mark.parametrize(
    "algorithm,size",
    [
        ("aes128-cbc", 16),
        ("aes192-cbc", 24),
        ("aes256-cbc", 32),
        ("kw-aes128", 16),
        ("kw-aes192", 24),
        ("kw-aes256", 32),
    ],
)
def test_python_pskc_preshared_key(algorithm: str, size: int) -> None:
    """python-pskc PSK files (AES-CBC with HMAC, AES key wrap) import with the key."""
    container = vendor_file()
    key = bytes(range(size))
    container.encryption.setup_preshared_key(key=key, algorithm=algorithm)
    data = written(container)
    # CBC values carry a ValueMAC; key-wrapped ones rely on the unwrap's integrity check.
    assert (b"ValueMAC" in data) == algorithm.endswith("cbc")
    check_vendor_tokens(data, psk=key)
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(data, psk=bytes(size))
    assert "wrong key or password" in " ".join(caught.value.problems)


@pytest.mark.parametrize("prf", [None, "hmac-sha256", "hmac-sha512"])
@pytest.mark.parametrize("algorithm", ["aes128-cbc", "aes256-cbc", "kw-aes256"])
def test_python_pskc_pbe(algorithm: str, prf: str | None) -> None:
    """python-pskc PBKDF2 files import with the password (default and SHA-2 PRFs)."""
    container = vendor_file()
    container.encryption.setup_pbkdf2(PASSWORD, algorithm=algorithm, iterations=2000, prf=prf)
    data = written(container)
    check_vendor_tokens(data, password=PASSWORD)
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(data, password=PASSWORD + "!")
    assert "wrong key or password" in " ".join(caught.value.problems)


def test_python_pskc_tampered_ciphertext_refused() -> None:
    """Flipping a CipherValue of a python-pskc file breaks its MAC: the whole file is refused."""
    container = vendor_file()
    container.encryption.setup_preshared_key(key=bytes(16), algorithm="aes128-cbc")
    data = written(container)
    marker = b"<xenc:CipherValue>"
    position = data.index(marker, data.index(b"<pskc:KeyPackage>")) + len(marker) + 30
    tampered = (
        data[:position] + (b"A" if data[position : position + 1] != b"A" else b"B") + data[position + 1 :]
    )
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(tampered, psk=bytes(16))
    assert any("ValueMAC does not match" in p for p in caught.value.problems)


def our_tokens() -> list[ExportedToken]:
    return [
        ExportedToken(
            "OATO00000001",
            OathParams(TokenType.TOTP, HashAlgorithm.SHA512, 8, 30, 0),
            Secret(bytes(range(64))),
            drift=3,
            user="bob",
            issuer="Example",
            not_before=datetime(2026, 1, 1, tzinfo=UTC),
            not_after=datetime(2030, 1, 1, tzinfo=UTC),
        ),
        ExportedToken("OAHO00000002", OathParams(TokenType.HOTP), Secret(HOTP_SECRET), counter=99),
    ]


def check_read_by_python_pskc(data: bytes, *, password: str | None = None, key: bytes | None = None) -> None:
    container = pskc.PSKC(io.BytesIO(data))
    if password is not None:
        container.encryption.derive_key(password)
    else:
        container.encryption.key = key
    first, second = container.keys
    assert first.id == "OATO00000001" and first.secret == bytes(range(64))
    assert first.algorithm.endswith("totp") and first.algorithm_suite == "HMAC-SHA512"
    assert first.response_length == 8 and first.time_interval == 30 and first.time_offset == 0
    assert first.time_drift == 3 and first.key_userid == "bob" and first.issuer == "Example"
    assert first.policy.start_date == datetime(2026, 1, 1, tzinfo=UTC)
    assert first.policy.expiry_date == datetime(2030, 1, 1, tzinfo=UTC)
    assert second.id == "OAHO00000002" and second.secret == HOTP_SECRET
    assert second.algorithm.endswith("hotp") and second.counter == 99
    assert second.response_length == 6 and second.response_encoding == "DECIMAL"
    assert first.check() and second.check()


def test_export_pbe_read_by_python_pskc() -> None:
    """Our PBE export (PBKDF2-HMAC-SHA256, AES-256-CBC, HMAC-SHA256) is read by python-pskc."""
    data = write_pskc(our_tokens(), password=PASSWORD, pbkdf2_iterations=2000)
    check_read_by_python_pskc(data, password=PASSWORD)


@pytest.mark.parametrize("size", [16, 24, 32])
def test_export_psk_read_by_python_pskc(size: int) -> None:
    """Our PSK exports (AES-128/192/256-CBC) are read by python-pskc."""
    key = bytes(range(40, 40 + size))
    check_read_by_python_pskc(write_pskc(our_tokens(), psk=key), key=key)


def test_export_sha1_mac_read_by_python_pskc() -> None:
    """The HMAC-SHA1 MAC option is also read by python-pskc."""
    key = bytes(16)
    check_read_by_python_pskc(write_pskc(our_tokens(), psk=key, mac_algorithm="sha1"), key=key)


def test_export_round_trips_through_our_import() -> None:
    """Our export imports back with every value."""
    data = write_pskc(our_tokens(), password=PASSWORD, pbkdf2_iterations=2000)
    first, second = parse_pskc(data, password=PASSWORD)
    assert first.serial == "OATO00000001" and first.secret.reveal() == bytes(range(64))
    assert first.params == OathParams(TokenType.TOTP, HashAlgorithm.SHA512, 8, 30, 0)
    assert first.drift == 3 and first.user == "bob" and first.issuer == "Example"
    assert first.not_after == datetime(2030, 1, 1, tzinfo=UTC)
    assert second.counter == 99 and second.secret.reveal() == HOTP_SECRET


def test_export_python_pskc_rewrite_imports() -> None:
    """python-pskc can re-encrypt our export (pskc2pskc style) and we import its output."""
    data = write_pskc(our_tokens(), psk=bytes(32))
    container = pskc.PSKC(io.BytesIO(data))
    container.encryption.key = bytes(32)
    container.encryption.remove_encryption()
    container.encryption.setup_pbkdf2(PASSWORD, iterations=2000)
    tokens = parse_pskc(written(container), password=PASSWORD)
    assert [t.serial for t in tokens] == ["OATO00000001", "OAHO00000002"]


def test_export_never_in_clear() -> None:
    """An export without a password or a key is refused, and no secret appears in clear."""
    from otp_agent.errors import UsageError

    with pytest.raises(UsageError):
        write_pskc(our_tokens())
    with pytest.raises(UsageError):
        write_pskc(our_tokens(), password="abc")  # too short
    data = write_pskc(our_tokens(), psk=bytes(16))
    import base64

    assert base64.b64encode(HOTP_SECRET) not in data and HOTP_SECRET not in data
    assert b"PlainValue>" + base64.b64encode(HOTP_SECRET) not in data
