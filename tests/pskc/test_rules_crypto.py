"""Unit tests of the profile rules, the cryptography and the secrecy of reports."""

from __future__ import annotations

import io
from typing import Any

import pytest

from otp_agent.oath.params import HashAlgorithm
from otp_agent.pskc import PskcImportError, crypto, parse_pskc, parse_pskc_report
from otp_agent.pskc.crypto import CryptoProblem
from otp_agent.pskc.rules import check_serial, suite_hash, user_from
from tests.pskc.conftest import FIGURE6_PSK, INVALID, RFC, RFC_SECRET


@pytest.mark.parametrize("key_id", ["AB0100000001", "OATO12345678", "1A2B00000000"])
def test_strict_ids_accepted(key_id: str) -> None:
    """OATH token identifiers: 2+2 letters or digits, then 8 digits."""
    assert check_serial(key_id, strict=True) is None


@pytest.mark.parametrize(
    "key_id",
    [
        "ab0100000001",
        "AB010000001",
        "AB01000000011",
        "AB-100000001",
        "ABCD1234567X",
        "12345678",
        "AB01 0000001",
        "",
    ],
)
def test_strict_ids_refused(key_id: str) -> None:
    """Anything else is refused in strict mode."""
    assert check_serial(key_id, strict=True) is not None


@pytest.mark.parametrize(
    "key_id,ok",
    [
        ("12345678", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("a b", False),
        ("tab\t", False),
        ("caf\u00e9", False),
        ("serial/with:punct", True),
    ],
)
def test_any_id_format(key_id: str, ok: bool) -> None:
    """The any-id option takes 1 to 64 printable ASCII characters without whitespace."""
    assert (check_serial(key_id, strict=False) is None) is ok


@pytest.mark.parametrize(
    "user_id,expected",
    [
        ("alice", "alice"),
        ("UID=jsmith,DC=example-bank,DC=net", "jsmith"),
        ("uid=bob, ou=people, dc=example", "bob"),
        ("DC=example-bank,DC=net", None),
        ("CN=Jane Smith", None),
        ("UID=a,UID=b", None),
        ("Alice Smith", None),
        ("jdoe@example.com", "jdoe@example.com"),
        ("EXAMPLE\\jdoe", "EXAMPLE\\jdoe"),
        ("J.Doe", "J.Doe"),
        ("x" * 257, None),
        ("bell\x07", None),
    ],
)
def test_user_from_user_id(user_id: str, expected: str | None) -> None:
    """A UserId is a login name, or a DN with exactly one UID= naming one."""
    assert user_from(user_id) == expected


@pytest.mark.parametrize("length,ok", [(4, False), (5, True), (64, True), (65, False)])
def test_password_length_bounds(length: int, ok: bool) -> None:
    """PBE passwords from 5 to 64 characters inclusive; others are refused clearly."""
    if ok:
        crypto.check_password("p" * length)
    else:
        with pytest.raises(CryptoProblem, match="5 to 64 characters"):
            crypto.check_password("p" * length)


def test_password_counted_in_characters() -> None:
    """Length is counted in characters, not UTF-8 bytes."""
    crypto.check_password("\u00e9" * 64)


def test_rfc3394_key_wrap_vector() -> None:
    """kw-aes128 unwraps the RFC 3394 §4.1 example."""
    kek = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
    wrapped = bytes.fromhex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")
    cipher = crypto.cipher_for(crypto.XENC + "kw-aes128")
    assert crypto.decrypt(cipher, kek, wrapped).hex() == "00112233445566778899aabbccddeeff"
    with pytest.raises(CryptoProblem, match="key unwrap failed"):
        crypto.decrypt(cipher, bytes(16), wrapped)


def test_cipher_key_size_mismatch() -> None:
    """A 16-byte key for AES-256 is refused with the sizes, never the key."""
    cipher = crypto.cipher_for(crypto.XENC + "aes256-cbc")
    with pytest.raises(CryptoProblem, match="needs a 256-bit key, the key given has 128 bits"):
        crypto.decrypt(cipher, bytes(16), bytes(48))


def test_mac_checked_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """ValueMACs are compared with hmac.compare_digest."""
    calls: list[int] = []
    real = crypto.hmac.compare_digest  # type: ignore[attr-defined]

    def spy(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(crypto.hmac, "compare_digest", spy)  # type: ignore[attr-defined]
    parse_pskc((RFC / "figure6.xml").read_bytes(), psk=FIGURE6_PSK, strict_ids=False)
    assert calls == [1]


def test_psk_size_checked_first() -> None:
    """A pre-shared key that is not an AES key size is refused before the file is read."""
    with pytest.raises(PskcImportError, match="16, 24 or 32 bytes"):
        parse_pskc(b"not even xml", psk=b"short")


def test_password_and_key_together_refused() -> None:
    """Giving both a password and a key is refused."""
    with pytest.raises(PskcImportError, match="not both"):
        parse_pskc(b"", password="qwerty", psk=FIGURE6_PSK)


def test_repr_and_reports_never_show_secrets() -> None:
    """Token reprs are redacted and problem texts never quote secret values."""
    (token,) = parse_pskc((RFC / "figure3.xml").read_bytes(), strict_ids=False)
    assert "12345678901234567890" not in repr(token)
    assert "MTIzNDU2" not in repr(token)
    with pytest.raises(PskcImportError) as caught:
        parse_pskc((INVALID / "secret-not-base64.xml").read_bytes())
    assert "not*base64" not in " ".join(caught.value.problems)


def test_progress_reports_every_key() -> None:
    """The progress callback sees (done, total) up to (total, total)."""
    seen: list[tuple[int, int]] = []
    with pytest.raises(PskcImportError):
        parse_pskc(
            (RFC / "figure10.xml").read_bytes(),
            strict_ids=False,
            progress=lambda done, total: seen.append((done, total)),
        )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def totp_file(time: str = "0", interval: str = "30", extra: str = "") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc">{extra}
  <KeyPackage>
    <Key Id="ABTO00000001" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:totp">
      <AlgorithmParameters><ResponseFormat Length="6" Encoding="DECIMAL"/></AlgorithmParameters>
      <Data>
        <Secret><PlainValue>MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=</PlainValue></Secret>
        <Time><PlainValue>{time}</PlainValue></Time>
        <TimeInterval><PlainValue>{interval}</PlainValue></TimeInterval>
      </Data>
    </Key>
  </KeyPackage>
</KeyContainer>
""".encode()


def test_totp_time_and_interval_stored_per_token() -> None:
    """Time becomes T0; a 60-second interval is accepted, stored and noted."""
    (token,), notes = parse_pskc_report(totp_file(time="1000", interval="60"))
    assert token.params.t0 == 1000 and token.params.period == 60
    assert token.secret.reveal() == RFC_SECRET
    assert any("60-second time step (30 expected)" in note for note in notes)


def test_signature_is_noted_not_verified() -> None:
    """An XML signature is not verified, and the report says so."""
    signature = '\n  <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/>'
    _, notes = parse_pskc_report(totp_file(extra=signature))
    assert "file carries an XML signature, which is not verified" in notes


def test_encrypted_integers_from_python_pskc() -> None:
    """Counter, Time and TimeInterval may be encrypted too (python-pskc writes them so)."""
    pskc = pytest.importorskip("pskc")
    container = pskc.PSKC()
    container.add_key(
        id="VNHO00000009",
        secret=RFC_SECRET,
        counter=123456,
        algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp",
        response_length=6,
        response_encoding="DECIMAL",
    )
    container.add_key(
        id="VNTO00000009",
        secret=bytes(range(20)),
        time_offset=3,
        time_interval=45,
        algorithm="urn:ietf:params:xml:ns:keyprov:pskc:totp",
        response_length=6,
        response_encoding="DECIMAL",
    )
    container.encryption.setup_preshared_key(
        key=bytes(16), fields=["secret", "counter", "time_offset", "time_interval"]
    )
    buffer = io.BytesIO()
    container.write(buffer)
    assert buffer.getvalue().count(b"<pskc:EncryptedValue") == 5
    hotp, totp = parse_pskc(buffer.getvalue(), psk=bytes(16))
    assert hotp.counter == 123456
    assert totp.params.t0 == 3 and totp.params.period == 45


@pytest.mark.parametrize(
    "suite,expected",
    [
        ("HMAC-SHA1", HashAlgorithm.SHA1),
        ("hmac-sha-256", HashAlgorithm.SHA256),
        ("SHA512", HashAlgorithm.SHA512),
        (" HMAC_SHA256 ", HashAlgorithm.SHA256),
        ("HMAC-MD5", None),
        ("HMAC-SHA384", None),
        ("", None),
    ],
)
def test_suite_spellings(suite: str, expected: HashAlgorithm | None) -> None:
    """Common vendor spellings of the hash are understood; other hashes are not."""
    assert suite_hash(suite) is expected
