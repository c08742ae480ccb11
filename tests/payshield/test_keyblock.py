"""Key-block headers, optional blocks and the identity binding."""

from __future__ import annotations

import pytest

from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield.keyblock import (
    KeyBlockFormatError,
    binding_block,
    parse_header,
    split_key_block,
)
from otp_agent.oath.params import HashAlgorithm


def test_header_round_trip_with_optional_block() -> None:
    """A header with one optional block encodes and parses back identically."""
    identity = TokenIdentity("serial-1", HashAlgorithm.SHA256)
    text = "1000063HG00N0100" + binding_block(identity.binding()).encode()
    header = parse_header(text)
    assert header.usage == "63" and header.mode == "G" and header.exportability == "N"
    assert header.block("05") == binding_block(identity.binding())
    assert header.encode() == text and header.encoded_length == 48


def test_binding_differs_per_token_and_hash() -> None:
    """Two serials, or one serial with two hashes, give two bindings."""
    one = binding_block(TokenIdentity("a", HashAlgorithm.SHA1).binding())
    assert one != binding_block(TokenIdentity("b", HashAlgorithm.SHA1).binding())
    assert one != binding_block(TokenIdentity("a", HashAlgorithm.SHA256).binding())


@pytest.mark.parametrize(
    "text",
    [
        "10128",  # shorter than a header
        "1012863HC00E0100",  # one optional block announced, none present
        "1012863HC00E01000599",  # optional block longer than the text
        "1012863HC00E0X00",  # count not decimal
    ],
)
def test_malformed_headers(text: str) -> None:
    """Malformed headers are refused."""
    with pytest.raises(KeyBlockFormatError):
        parse_header(text)


def test_split_checks_length_and_hex_body() -> None:
    """The declared length must be the real length and the body upper-case hex."""
    good = "1003263HG00N0000" + "0123456789ABCDEF"
    assert split_key_block(good)[1] == "0123456789ABCDEF"
    with pytest.raises(KeyBlockFormatError):
        split_key_block(good + "00")
    with pytest.raises(KeyBlockFormatError):
        split_key_block(good.replace("ABCDEF", "abcdef"))
