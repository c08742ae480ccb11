"""OATH maths against the RFC vectors (from data files) and the profile's rules."""

from __future__ import annotations

import hmac

import pytest

from otp_agent.errors import InvalidToken
from otp_agent.oath import (
    HashAlgorithm,
    OathParams,
    TokenType,
    check_key_size,
    codes_for,
    dynamic_truncate,
    format_code,
    match_code,
    time_step,
)
from otp_agent.oath.uri import provisioning_uri
from tests.vectorfiles import load_blocks

HOTP_HEADER, HOTP_VECTORS = load_blocks("oath/rfc4226.txt")
_, TOTP_VECTORS = load_blocks("oath/rfc6238.txt")


def software_hmacs(secret: bytes, algorithm: str):
    return lambda messages: [hmac.new(secret, m, algorithm).digest() for m in messages]


def test_vector_files_are_complete() -> None:
    """All 10 RFC 4226 and all 18 RFC 6238 values are present."""
    assert len(HOTP_VECTORS) == 10
    assert len(TOTP_VECTORS) == 18


@pytest.mark.parametrize("vector", HOTP_VECTORS, ids=lambda v: f"count{v['COUNT']}")
def test_rfc4226_hotp(vector: dict[str, str]) -> None:
    """Every RFC 4226 Appendix D value."""
    secret = bytes.fromhex(HOTP_HEADER["SECRET"])
    codes = codes_for(software_hmacs(secret, "sha1"), [int(vector["COUNT"])], 6)
    assert codes == [vector["HOTP"]]


@pytest.mark.parametrize("vector", TOTP_VECTORS, ids=lambda v: f"{v['TIME']}-{v['MODE']}")
def test_rfc6238_totp(vector: dict[str, str]) -> None:
    """Every RFC 6238 Appendix B value, including 64-bit times and a leading zero."""
    step = time_step(int(vector["TIME"]), 30, 0)
    codes = codes_for(software_hmacs(bytes.fromhex(vector["SECRET"]), vector["MODE"]), [step], 8)
    assert codes == [vector["TOTP"]]


def test_dynamic_truncation_matches_rfc_example() -> None:
    """RFC 4226 section 5.4 example: offset 0xa gives 0x50ef7f19."""
    mac = bytes.fromhex("1f8698690e02ca16618550ef7f19da8e945b555a")
    assert dynamic_truncate(mac) == 0x50EF7F19
    assert format_code(mac, 6) == "872921"


def test_time_step_with_t0_and_period() -> None:
    assert time_step(100, 30, 10) == 3
    assert time_step(59, 30) == 1
    with pytest.raises(ValueError):
        time_step(5, 30, 10)


def test_match_code_compares_all_candidates() -> None:
    assert match_code("123456", [(1, "000000"), (2, "123456"), (3, "123456")]) == 2
    assert match_code("123456", [(1, "000000")]) is None


@pytest.mark.parametrize(
    "algorithm,size", [(HashAlgorithm.SHA1, 19), (HashAlgorithm.SHA256, 31), (HashAlgorithm.SHA512, 63)]
)
def test_key_size_rules(algorithm: HashAlgorithm, size: int) -> None:
    """OATH profile: 20 bytes for SHA-1, 32 for SHA-256, 64 for SHA-512."""
    with pytest.raises(InvalidToken, match="at least"):
        check_key_size(algorithm, size)
    check_key_size(algorithm, size + 1)


@pytest.mark.parametrize("kwargs", [{"digits": 7}, {"period": 0}, {"t0": -1}, {"period": 3601}])
def test_bad_parameters_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidToken):
        OathParams(TokenType.TOTP, **kwargs)  # type: ignore[arg-type]


def test_provisioning_uri() -> None:
    uri = provisioning_uri(
        b"12345678901234567890", OathParams(TokenType.TOTP, digits=8), account="alice", issuer="Example Corp"
    )
    assert uri == (
        "otpauth://totp/Example%20Corp:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        "&issuer=Example%20Corp&algorithm=SHA1&digits=8&period=30"
    )
    hotp = provisioning_uri(b"x" * 20, OathParams(TokenType.HOTP), account="bob", issuer="I", counter=5)
    assert hotp.startswith("otpauth://hotp/I:bob?") and hotp.endswith("&counter=5")
