"""The pure host-command codec, against the real captures and by construction."""

from __future__ import annotations

import pytest

from otp_agent.errors import KeyBackendUnavailable, SealedSecretInvalid
from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.codec import CodecError, FieldReader, FrameReader, HmacKey
from otp_agent.keystore.payshield.errors import (
    PayShieldCommandError,
    PayShieldKeyBlockError,
    PayShieldProtocolError,
    describe,
)
from otp_agent.keystore.payshield.keyblock import attributes, split_key_block

from .conftest import FILLER, expand, load_captures, variables_of

CAPTURES = {entry["name"]: entry for entry in load_captures()}


def _capture(name: str, key: str) -> bytes:
    entry = CAPTURES[name]
    return expand(entry[key], variables_of(entry))


def test_every_capture_has_a_source() -> None:
    """Each vector names where it comes from."""
    assert CAPTURES and all(entry.get("source") for entry in CAPTURES.values())


def test_manual_nc_framing() -> None:
    """NC with header 1234 is framed as in the manual: 00 06 '1234NC'."""
    assert codec.frame(b"1234" + codec.encode_nc()) == _capture("nc-manual-framing", "framed_request")


def test_payshield_10k_nc_capture() -> None:
    """The real 10K capture frames and parses to its LMK check value and firmware."""
    entry = CAPTURES["nc-payshield-10k"]
    assert codec.frame(b"HEAD" + codec.encode_nc()) == _capture("nc-payshield-10k", "framed_request")
    (body,) = FrameReader().feed(_capture("nc-payshield-10k", "framed_response"))
    assert body[:4] == b"HEAD"
    assert codec.parse_nd(body[4:]) == (entry["lmk_check_value"], entry["firmware"])


@pytest.mark.parametrize("name", ["nc-libiso-example", "nc-pythales-full-check-value"])
def test_other_nc_responses(name: str) -> None:
    """ND responses from other sources parse to check value and firmware."""
    entry = CAPTURES[name]
    assert codec.parse_nd(_capture(name, "response")) == (entry["lmk_check_value"], entry["firmware"])


def test_b2_and_n0_requests() -> None:
    """B2 (length 4H) and N0 (length 3N) encode like the codec vectors."""
    assert codec.encode_b2(b"PING") == _capture("b2-echo", "request")
    assert codec.encode_n0(8) == _capture("n0-random", "request")


def test_l0_capture() -> None:
    """L0 for an HMAC-SHA-256 key block encodes as captured; the L1 key block decodes."""
    entry = CAPTURES["l0-hmac-key-block"]
    assert codec.encode_l0(32, attributes("63", "H0", "C", "E")) == _capture("l0-hmac-key-block", "request")
    key = codec.parse_key_response("L0", _capture("l0-hmac-key-block", "response"))
    assert key.key_format == "04" and len(key.value) == int(entry["key_block_length"])
    header, _ = split_key_block(key.value.decode())
    assert (
        header.version,
        header.usage,
        header.algorithm,
        header.mode,
        header.exportability,
        header.kvn,
        header.lmk_id,
    ) == ("1", entry["usage"], entry["algorithm"], entry["mode"], entry["exportability"], "00", "00")


def test_lq_capture_with_binary_hmac() -> None:
    """LQ encodes as captured; LR's 32 binary bytes (with 0x19 ; %) parse by length."""
    key_block = variables_of(CAPTURES["lq-generate-hmac"])["L0_KEY_BLOCK"]
    request = codec.encode_lq("FF", 32, HmacKey.key_block(key_block), b"0123456789")
    assert request == _capture("lq-generate-hmac", "request")
    mac = codec.parse_lr(_capture("lq-generate-hmac", "response"), 32)
    assert mac == (FILLER * 5)[:32] and b"\x19" in mac


def test_lq_request_parses_back() -> None:
    """The simulator side reads the captured LQ back into its fields."""
    command, reader = codec.split_request(_capture("lq-generate-hmac", "request"))
    parsed = codec.parse_lq_request(reader)
    assert command == "LQ" and parsed.hmac_length == 32 and parsed.data == b"0123456789"
    assert parsed.key.key_format == "04" and len(parsed.key.value) == 128


def test_ls_capture_with_trailing_delimiter() -> None:
    """LS with binary HMAC and a bare X'19 at the end parses; LT00 means verified."""
    command, reader = codec.split_request(_capture("ls-verify-hmac", "request"))
    parsed = codec.parse_ls(reader)
    assert command == "LS" and parsed.mac == (FILLER * 5)[:32] and parsed.data == b"0123456789"
    assert codec.parse_lt(_capture("ls-verify-hmac", "response")) is True
    assert codec.parse_lt(b"LT01") is False
    key = parsed.key
    assert codec.encode_ls("FF", parsed.mac, key, parsed.data) + b"\x19" == _capture(
        "ls-verify-hmac", "request"
    )


def test_a0_capture() -> None:
    """The A1 response splits into a 96-character key block and a 6-hex KCV."""
    entry = CAPTURES["a0-cvk-key-block"]
    assert codec.encode_a0("1", attributes("C0", "T2", "C", "E")) == _capture("a0-cvk-key-block", "request")
    key, kcv = codec.parse_a1(_capture("a0-cvk-key-block", "response"))
    assert len(key) == 1 + int(entry["key_block_length"]) and kcv == entry["kcv"]


def test_binary_data_with_delimiters_is_walked_by_length() -> None:
    """An 8-byte counter holding 0x19, ';' and '%' survives a round trip through LQ."""
    data = b"\x00\x19;%\x19\x19;\x19"
    key = HmacKey("00", b"\x19;%" * 11)
    command, reader = codec.split_request(codec.encode_lq("01", 20, key, data))
    parsed = codec.parse_lq_request(reader)
    assert parsed.data == data and parsed.key == key


def test_frame_reader_splits_and_reassembles() -> None:
    """Frames arriving split or several per read come out whole and in order."""
    stream = codec.frame(b"0001NC") + codec.frame(b"0002B2000" + b"3\x19;%")
    reader = FrameReader()
    assert reader.feed(stream[:3]) == []
    assert reader.feed(stream[3:]) == [b"0001NC", b"0002B20003\x19;%"]


@pytest.mark.parametrize("raw", [b"\x00\x00", b"\x90\x00"])
def test_frame_reader_rejects_bad_lengths(raw: bytes) -> None:
    """A zero or over-32-KB length is a framing error."""
    with pytest.raises(CodecError):
        FrameReader().feed(raw)


def test_response_code_rule() -> None:
    """The response code is the command with its second character plus one."""
    assert [codec.response_code(c) for c in ("NC", "LQ", "L0", "A0", "B2")] == ["ND", "LR", "L1", "A1", "B3"]


def test_wrong_response_code_is_a_protocol_error() -> None:
    """A response to another command is refused (fail closed, unavailable)."""
    with pytest.raises(PayShieldProtocolError) as caught:
        codec.parse_lr(b"LT00", 32)
    assert isinstance(caught.value, KeyBackendUnavailable)


def test_error_codes_map_to_exceptions() -> None:
    """A4 is a key-block error (SealedSecretInvalid), 67 a command error with its meaning."""
    with pytest.raises(PayShieldKeyBlockError) as block:
        codec.parse_lr(b"LRA4", 32)
    assert isinstance(block.value, SealedSecretInvalid) and block.value.error_code == "A4"
    with pytest.raises(PayShieldCommandError, match="command not licensed") as other:
        codec.parse_lr(b"LR67", 32)
    assert other.value.error_code == "67"
    assert describe("ZX") == "unknown error code"


@pytest.mark.parametrize(
    "response",
    [
        b"LR000032" + b"x" * 31,  # HMAC shorter than its length field
        b"LR000020" + b"x" * 20,  # length other than requested
        b"LR000032" + b"x" * 33,  # a byte too many
        b"LR00003A" + b"x" * 32,  # non-digit length
    ],
)
def test_malformed_lr_is_a_protocol_error(response: bytes) -> None:
    """LR responses that do not follow their length fields are refused."""
    with pytest.raises(PayShieldProtocolError):
        codec.parse_lr(response, 32)


def test_trailer_is_accepted_after_last_field() -> None:
    """X'19 + printable trailer after the last field is allowed, other junk is not."""
    FieldReader(b"\x19TRAILER").finish()
    with pytest.raises(CodecError):
        FieldReader(b"junk").finish()


@pytest.mark.parametrize(
    "payload,code",
    [
        (b"LQFF003207FFFF", "07"),  # unknown key format
        (b"LQFF003204FFF0", "80"),  # key block without FFFF
        (b"LQFF003204FFFF1AB12", "83"),  # key block length not decimal
        (b"LQFF0032", "15"),  # truncated
    ],
)
def test_bad_requests_carry_the_hsm_error_code(payload: bytes, code: str) -> None:
    """The request parser says which error code an HSM would answer."""
    _, reader = codec.split_request(payload)
    with pytest.raises(CodecError) as caught:
        codec.parse_lq_request(reader)
    assert caught.value.error_code == code


def test_key_repr_hides_the_key() -> None:
    """An HmacKey's repr shows format and size only."""
    assert "ABCDEF" not in repr(HmacKey("00", b"ABCDEF"))


@pytest.mark.parametrize(
    "response,sockets,firmware",
    [
        (b"NP00310064" + b"1500-0023", 64, "1500-0023"),  # 4-digit socket count (firmware >= 1.8a)
        (b"NP003164" + b"1084-0906", 64, "1084-0906"),  # 2-digit socket count
    ],
)
def test_np_socket_count_widths(response: bytes, sockets: int, firmware: str) -> None:
    """NO status parses with either socket-count width."""
    status = codec.parse_np(response)
    assert status["tcp_sockets"] == sockets and status["firmware"] == firmware


def test_np_unrecognised_fields_do_not_fail() -> None:
    """An NP00 with an unknown layout still counts as alive."""
    assert codec.parse_np(b"NP00??") == {}


def test_nd_rejects_a_non_hex_check_value() -> None:
    """A check value that is not hexadecimal is a protocol error."""
    with pytest.raises(PayShieldProtocolError):
        codec.parse_nd(b"ND00ZZZZZZ00000000001500-0023")
