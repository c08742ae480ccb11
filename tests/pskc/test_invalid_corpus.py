"""The negative corpus: one file per rule, each refused with its own clear message, nothing imported.

Every file of ``tests/vectors/pskc/invalid/`` is listed here with the options it is read with and
a fragment of the one problem it must produce.  A file without an entry, an entry without a
file, a second problem or two rules sharing a message all fail the suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otp_agent.pskc import PskcImportError, parse_pskc
from tests.pskc.conftest import FIGURE6_PSK, FIGURE7_PASSWORD, INVALID

PSK = {"psk": FIGURE6_PSK}
PBE = {"password": FIGURE7_PASSWORD}
ANY_ID = {"strict_ids": False}

#: file -> (parse options, fragment of its only problem)
CORPUS: dict[str, tuple[dict[str, Any], str]] = {
    # Hostile or foreign XML.
    "not-xml.xml": ({}, "not well-formed XML"),
    "wrong-namespace.xml": ({}, "not the PSKC namespace"),
    "wrong-root.xml": ({}, "not a PSKC KeyContainer"),
    "wrong-version.xml": ({}, "only PSKC 1.0 is accepted"),
    "external-entity.xml": ({}, "refers to an external DTD or entity"),
    "billion-laughs.xml": ({}, "entity expansion (such as the 'billion laughs' attack) is never"),
    "doctype.xml": ({}, "has a DOCTYPE declaration"),
    "deep-nesting.xml": ({}, "elements nested deeper than 32 levels"),
    "declared-latin1.xml": ({}, "declares an encoding other than UTF-8"),
    "utf16.xml": ({}, "file is not UTF-8"),
    "empty-container.xml": ({}, "contains no KeyPackage/Key"),
    # Key identity and algorithm.
    "missing-key-id.xml": ({}, "Key has no Id attribute"),
    "bad-token-id.xml": ({}, "not an OATH token identifier"),
    "id-with-space.xml": (ANY_ID, "1 to 64 printable ASCII characters without whitespace"),
    "duplicate-key-id.xml": ({}, "Key Id is used twice in this file"),
    "missing-algorithm.xml": ({}, "Key has no Algorithm attribute"),
    "unsupported-algorithm.xml": ({}, "is not HOTP or TOTP"),
    "unknown-suite.xml": ({}, "is not HMAC-SHA1, HMAC-SHA256 or HMAC-SHA512"),
    # Response format.
    "missing-response-format.xml": ({}, "no AlgorithmParameters/ResponseFormat"),
    "hex-encoding.xml": ({}, "Encoding is 'HEXADECIMAL', not DECIMAL"),
    "length-7.xml": ({}, "Length is '7', not 6 or 8"),
    "check-digits.xml": ({}, "CheckDigits (Luhn check digit) is not supported"),
    # Secrets.
    "missing-secret.xml": ({}, "Key has no Data/Secret"),
    "secret-not-base64.xml": ({}, "Secret PlainValue is not valid base64"),
    "short-secret-sha1.xml": ({}, "SHA1 secret must be at least 20 bytes"),
    "short-secret-sha256.xml": ({}, "SHA256 secret must be at least 32 bytes"),
    "duplicate-secret.xml": ({}, "secrets must be unique"),
    # TOTP time, HOTP counter, drift.
    "totp-missing-time.xml": ({}, "TOTP key has no Data/Time (T0"),
    "totp-negative-time.xml": ({}, "Time (T0) must be from 0 to"),
    "totp-missing-interval.xml": ({}, "TOTP key has no Data/TimeInterval"),
    "totp-zero-interval.xml": ({}, "TimeInterval must be from 1 to 3600 seconds"),
    "drift-too-large.xml": ({}, "TimeDrift must be within 1000 time steps"),
    "counter-not-integer.xml": ({}, "Counter: value 'ten' is not an integer"),
    "negative-counter.xml": ({}, "Counter must be from 0 to 2^63-1"),
    # Dates, user, policy.
    "bad-date.xml": ({}, "is not an ISO 8601 date and time"),
    "expiry-before-start.xml": ({}, "ExpiryDate is not after StartDate"),
    "bad-user.xml": ({}, "is neither a login name nor a DN"),
    "key-usage.xml": ({}, "does not allow OTP"),
    "server-pin.xml": ({}, "needs a server-side PIN"),
    "unknown-policy.xml": ({}, "Policy element 'NumberOfTransactions' is not understood"),
    # Integrity.
    "mac-mismatch.xml": (PSK, "ValueMAC does not match"),
    "mac-missing.xml": (PSK, "has no ValueMAC although the file declares a MACMethod"),
    "no-mac-method.xml": (PSK, "encrypted without integrity and the file has no MACMethod"),
    "unknown-mac-algorithm.xml": (PSK, "unsupported MAC algorithm"),
    "value-mac-without-method.xml": ({}, "has a ValueMAC but the file has no MACMethod"),
    # Encryption.
    "tripledes.xml": (PSK, "Triple DES (tripledes-cbc) is refused"),
    "unknown-cipher.xml": (PSK, "unsupported encryption algorithm"),
    "unknown-encryption-key.xml": (PSK, "EncryptionKey names neither a pre-shared key"),
    "asymmetric.xml": (PSK, "encrypted to an X.509 certificate"),
    "encrypted-without-key.xml": ({}, "a value is encrypted but the file has no EncryptionKey"),
    # Password-based encryption.
    "pbkdf2-unsupported-derivation.xml": (PBE, "unsupported key derivation method"),
    "pbkdf2-no-salt.xml": (PBE, "PBKDF2-params has no Salt/Specified value"),
    "pbkdf2-no-iterations.xml": (PBE, "IterationCount is missing or not an integer"),
    "pbkdf2-low-iterations.xml": (PBE, "IterationCount must be from 1000"),
    "pbkdf2-bad-key-length.xml": (PBE, "KeyLength must be 16, 24 or 32 bytes"),
}


def test_every_corpus_file_has_an_entry_and_back() -> None:
    """The table and the folder list the same files."""
    assert sorted(p.name for p in INVALID.glob("*.xml")) == sorted(CORPUS)


def test_every_rule_has_its_own_fragment() -> None:
    """No two files are recognised by the same message fragment."""
    fragments = [fragment for _, fragment in CORPUS.values()]
    assert len(set(fragments)) == len(fragments)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file_refused_with_its_message(name: str) -> None:
    """The file is refused as a whole, with exactly one problem, the expected one."""
    options, fragment = CORPUS[name]
    with pytest.raises(PskcImportError) as caught:
        parse_pskc((INVALID / name).read_bytes(), **options)
    assert len(caught.value.problems) == 1, caught.value.problems
    message = caught.value.problems[0]
    assert fragment in message
    others = [other for key, (_, other) in CORPUS.items() if key != name and other in message]
    assert others == [], "the message of this rule is not distinct from another rule's"
    assert str(caught.value).startswith("PSKC file refused")


@pytest.mark.parametrize("name", ["mac-mismatch.xml", "tripledes.xml", "no-mac-method.xml"])
def test_corpus_problems_give_line_and_key(name: str) -> None:
    """Key-level problems name the key Id and the XML line."""
    options, _ = CORPUS[name]
    with pytest.raises(PskcImportError) as caught:
        parse_pskc((INVALID / name).read_bytes(), **options)
    (problem,) = caught.value.details
    assert problem.key_id == "XYHO00000006"
    assert problem.line is not None and problem.line > 1


def test_huge_file_refused_before_parsing() -> None:
    """A file over the size limit is refused without being parsed."""
    from otp_agent.pskc import parse_pskc_report

    data = (INVALID.parent / "rfc6030" / "figure3.xml").read_bytes()
    with pytest.raises(PskcImportError) as caught:
        parse_pskc_report(data + b" " * 2048, strict_ids=False, max_size=len(data) + 1024)
    assert "larger than the" in caught.value.problems[0]


def test_all_or_nothing_one_bad_key_among_good(tmp_path: Path) -> None:
    """One bad record among good ones: nothing is returned and every problem is listed."""
    base = (INVALID / "duplicate-secret.xml").read_bytes()
    bad = base.replace(b'<ResponseFormat Length="6"', b'<ResponseFormat Length="5"', 1)
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(bad)
    lines = sorted(p.line or 0 for p in caught.value.details)
    assert len(caught.value.details) == 2 and lines[0] < lines[1]
