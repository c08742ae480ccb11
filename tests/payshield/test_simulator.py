"""The simulator over real TCP: commands, error codes, header echo, pipelining, knobs."""

from __future__ import annotations

import hashlib
import hmac
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.codec import FrameReader, HmacKey
from otp_agent.keystore.payshield.keyblock import attributes, split_key_block
from otp_agent.keystore.payshield.transit import wrap_for_import
from otp_agent.payshield_sim.testing import RunningSimulator, running_simulator

from .conftest import expand, load_captures, variables_of

CAPTURES = {entry["name"]: entry for entry in load_captures()}


class RawClient:
    """A bare TCP client speaking frames, for testing the simulator alone."""

    def __init__(self, sim: RunningSimulator) -> None:
        self.sock = socket.create_connection((sim.host, sim.port), timeout=5)
        self.frames = FrameReader()
        self.queue: list[bytes] = []

    def send(self, body: bytes) -> None:
        self.sock.sendall(codec.frame(body))

    def receive(self) -> bytes:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.queue += self.frames.feed(data)
        return self.queue.pop(0)

    def ask(self, body: bytes) -> bytes:
        self.send(body)
        return self.receive()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    """A plain-TCP simulator: these tests read its frames from a bare socket."""
    with running_simulator(tls=False) as simulator:
        yield simulator


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[RawClient]:
    raw = RawClient(sim)
    yield raw
    raw.close()


def _l0(client: RawClient, usage: str = "63", header: bytes = b"0000") -> str:
    response = client.ask(header + codec.encode_l0(32, attributes(usage, "H0", "C", "E")))
    return codec.parse_key_response("L0", response[len(header) :]).value.decode()


def test_nc_reports_check_value_and_echoes_header(sim: RunningSimulator, client: RawClient) -> None:
    """NC answers ND00 + 16H check value + 9A firmware, after the echoed header."""
    response = client.ask(b"AB12NC")
    assert response[:4] == b"AB12"
    check, firmware = codec.parse_nd(response[4:])
    assert check == sim.lmk_check_value and len(firmware) == 9


def test_no_b2_n0(client: RawClient) -> None:
    """NO status, B2 echo of binary data and N0 random bytes."""
    status = codec.parse_np(client.ask(b"0001" + codec.encode_no())[4:])
    assert status["protocol"] == "TCP"
    assert codec.parse_b3(client.ask(b"0002" + codec.encode_b2(b"\x19;%\x00"))[4:]) == b"\x19;%\x00"
    assert len(codec.parse_n1(client.ask(b"0003" + codec.encode_n0(8))[4:], 8)) == 8
    assert client.ask(b"0004N0000")[4:] == b"N101"


def test_l0_matches_the_real_capture_shape(client: RawClient) -> None:
    """The captured L0 request gets a key block of the captured header layout and length."""
    entry = CAPTURES["l0-hmac-key-block"]
    request = expand(entry["request"], variables_of(entry))
    response = client.ask(b"0000" + request)[4:]
    real = expand(entry["response"], variables_of(entry))
    assert response[:24] == real[:24] and len(response) == len(real)


@pytest.mark.parametrize("name", ["a0-cvk-key-block", "a0-dek-aes256-key-block"])
def test_a0_matches_the_real_capture_shape(client: RawClient, name: str) -> None:
    """A0 answers S + key block of the captured header and length, then a 6-hex KCV."""
    entry = CAPTURES[name]
    response = client.ask(b"0000" + expand(entry["request"], variables_of(entry)))[4:]
    prefix = entry.get("response_prefix") or entry["response"][:21]
    key, kcv = codec.parse_a1(response)
    assert response.decode().startswith(prefix)
    assert len(key) == 1 + int(entry["key_block_length"]) and len(kcv) == 6


def test_lq_and_ls_capture_flow(client: RawClient) -> None:
    """LQ on an L0 key block gives LR000032 + 32 bytes; LS verifies them and refuses others."""
    key = HmacKey.key_block(_l0(client))
    response = client.ask(b"0000" + codec.encode_lq("FF", 32, key, b"0123456789"))[4:]
    assert response.startswith(b"LR000032") and len(response) == 40
    mac = codec.parse_lr(response, 32)
    assert client.ask(b"0000" + codec.encode_ls("FF", mac, key, b"0123456789") + b"\x19") == b"0000LT00"
    wrong = bytes([mac[0] ^ 1]) + mac[1:]
    assert client.ask(b"0000" + codec.encode_ls("FF", wrong, key, b"0123456789")) == b"0000LT01"


def test_lq_reproduces_rfc4226_through_lu(sim: RunningSimulator, client: RawClient) -> None:
    """A secret imported with LU gives the RFC 4226 HMAC for counter 0."""
    zmk = bytes.fromhex(sim.zmk_file.read_text())
    wrapped = wrap_for_import(zmk, b"12345678901234567890")
    request = codec.encode_lu(
        sim.zmk_key_block_file.read_text().strip(), wrapped, "04", attributes("61", "H0", "G", "N")
    )
    key = codec.parse_key_response("LU", client.ask(b"0000" + request)[4:])
    mac = codec.parse_lr(client.ask(b"0000" + codec.encode_lq("FF", 20, key, bytes(8)))[4:], 20)
    assert mac.hex() == "cc93cf18508d94934c64b65d8ba7667fb7cde4b0"


def test_variant_format_round_trip(sim: RunningSimulator, client: RawClient) -> None:
    """LU to variant format (00) returns a binary cryptogram usable with hash id 06."""
    secret = b"k" * 32
    zmk = bytes.fromhex(sim.zmk_file.read_text())
    request = codec.encode_lu(
        sim.zmk_key_block_file.read_text().strip(), wrap_for_import(zmk, secret), "00", "06010032"
    )
    key = codec.parse_key_response("LU", client.ask(b"0000" + request)[4:])
    assert key.key_format == "00" and secret not in key.value
    mac = codec.parse_lr(client.ask(b"0000" + codec.encode_lq("06", 32, key, b"m"))[4:], 32)
    assert mac == hmac.new(secret, b"m", hashlib.sha256).digest()


def test_tampered_key_block_is_refused_with_a4(client: RawClient) -> None:
    """Changing one character of the key data, or of the header, gives A4."""
    block = _l0(client)
    for position in (40, 7):
        replacement = "0" if block[position] != "0" else "1"
        if position == 7:
            replacement = "G"
        tampered = block[:position] + replacement + block[position + 1 :]
        response = client.ask(b"0000" + codec.encode_lq("FF", 32, HmacKey.key_block(tampered), b"x"))
        assert response == b"0000LRA4"


@pytest.mark.parametrize(
    "request_body,answer",
    [
        (b"LQ0100320" + b"4FFFF", b"LR15"),  # truncated
        (b"XX", b"XY68"),  # unknown command
        (b"NO07", b"NP15"),  # bad NO mode
        (b"LQFF003207FFFF", b"LR07"),  # bad key format
    ],
)
def test_bad_input_gets_real_error_codes(client: RawClient, request_body: bytes, answer: bytes) -> None:
    """Malformed requests get a response code and an error code, not a dropped connection."""
    assert client.ask(b"0000" + request_body) == b"0000" + answer


def test_hmac_checks(client: RawClient) -> None:
    """Wrong HMAC length gives 04, wrong hash id for a key block 05, verify-only mode A8."""
    key = HmacKey.key_block(_l0(client))
    assert client.ask(b"0000" + codec.encode_lq("FF", 8, key, b"x")) == b"0000LR04"
    assert client.ask(b"0000" + codec.encode_lq("01", 32, key, b"x")) == b"0000LR05"
    verify_only = client.ask(b"0000" + codec.encode_l0(32, attributes("63", "H0", "V", "E")))
    block = codec.parse_key_response("L0", verify_only[4:])
    assert client.ask(b"0000" + codec.encode_lq("FF", 32, block, b"x")) == b"0000LRA8"
    bad_usage = client.ask(b"0000" + codec.encode_l0(32, attributes("72", "H0", "C", "E")))
    assert bad_usage == b"0000L1A6"


def test_pipelined_requests_come_back_matched_by_header(sim: RunningSimulator, client: RawClient) -> None:
    """Many requests written at once each get the response with their own header."""
    sim.set(latency=0.001)
    bodies = [f"{i:04d}".encode() + codec.encode_b2(f"{i}".encode()) for i in range(50)]
    client.sock.sendall(b"".join(codec.frame(body) for body in bodies))
    answers = {}
    for _ in bodies:
        response = client.receive()
        answers[response[:4]] = codec.parse_b3(response[4:])
    assert answers == {f"{i:04d}".encode(): f"{i}".encode() for i in range(50)}


def test_several_clients(sim: RunningSimulator) -> None:
    """Three connections are served independently."""
    clients = [RawClient(sim) for _ in range(3)]
    try:
        for index, raw in enumerate(clients):
            raw.send(f"C{index:03d}".encode() + codec.encode_nc())
        assert [raw.receive()[:4] for raw in clients] == [b"C000", b"C001", b"C002"]
    finally:
        for raw in clients:
            raw.close()


@pytest.mark.parametrize("header_length", [0, 1, 8])
def test_configurable_header_length(header_length: int) -> None:
    """The header of the configured length is echoed and the command found after it."""
    with running_simulator(header_length=header_length, tls=False) as sim:
        raw = RawClient(sim)
        header = b"7" * header_length
        response = raw.ask(header + codec.encode_nc())
        raw.close()
    assert response[:header_length] == header and response[header_length:].startswith(b"ND00")


@pytest.mark.parametrize(
    "fault,expected",
    [
        ("error", b"0000ND41"),
        ("wrong_response", b"0000ZZ00"),
        ("wrong_header", b"1111ND00"),
    ],
)
def test_answer_faults(sim: RunningSimulator, client: RawClient, fault: str, expected: bytes) -> None:
    """Error-code, wrong-response-code and wrong-header faults corrupt the answer as told."""
    sim.set(fault=fault, fault_count=1)
    assert client.ask(b"0000NC")[: len(expected)] == expected
    assert client.ask(b"0000NC")[:8] == b"0000ND00"


def test_drop_fault_closes_the_connection(sim: RunningSimulator, client: RawClient) -> None:
    """The drop fault closes the connection instead of answering."""
    sim.set(fault="drop", fault_count=1)
    with pytest.raises((ConnectionError, OSError)):
        client.ask(b"0000NC")


def test_silent_fault_never_answers(sim: RunningSimulator, client: RawClient) -> None:
    """The silent fault swallows the request; the next one is answered."""
    sim.set(fault="silent", fault_count=1, fault_commands={"B2"})
    client.send(b"0001" + codec.encode_b2(b"lost"))
    assert client.ask(b"0002NC")[:8] == b"0002ND00"
    client.sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        client.receive()


def test_garbage_fault(sim: RunningSimulator, client: RawClient) -> None:
    """The garbage fault answers a frame whose content is random bytes."""
    sim.set(fault="garbage", fault_count=1)
    assert not client.ask(b"0000NC").startswith(b"0000ND")


def test_licence_limit_queues_requests(sim: RunningSimulator, client: RawClient) -> None:
    """Under a calls-per-second limit requests are delayed, not refused: all are answered."""
    sim.set(calls_per_second=200)
    client.sock.sendall(b"".join(codec.frame(f"{i:04d}NC".encode()) for i in range(10)))
    assert sorted(client.receive()[:4] for _ in range(10)) == [f"{i:04d}".encode() for i in range(10)]


def test_unknown_knob_is_refused(sim: RunningSimulator) -> None:
    """Misspelt knobs and faults are errors."""
    with pytest.raises(AttributeError):
        sim.set(latncy=1)
    with pytest.raises(ValueError):
        sim.set(fault="explode")


def test_cli_prints_check_value_and_makes_zmk(tmp_path: Path) -> None:
    """payshield-sim creates the LMK file, prints its check value, and writes ZMK files."""
    lmk = tmp_path / "lmk.hex"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "otp_agent.payshield_sim.main",
            "--lmk-file",
            str(lmk),
            "--make-zmk",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0 and (tmp_path / "zmk.kb").read_text().startswith("S10")
    assert lmk.stat().st_mode & 0o777 == 0o600 and (tmp_path / "zmk.hex").stat().st_mode & 0o777 == 0o600
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otp_agent.payshield_sim.main",
            "--listen",
            "127.0.0.1:0",
            "--lmk-file",
            str(lmk),
            "--header-length",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert "LMK check value" in line and "header length 2" in line
    header, _ = split_key_block((tmp_path / "zmk.kb").read_text().strip()[1:])
    assert header.usage == "52"


def test_real_key_block_from_another_lmk_is_refused(client: RawClient) -> None:
    """The captured LQ (a key block under the real HSM's LMK) gets A4 from the simulator."""
    entry = CAPTURES["lq-generate-hmac"]
    assert client.ask(b"0000" + expand(entry["request"], variables_of(entry))) == b"0000LRA4"


def test_wrong_hmac_fault_lies_in_lq_answers_only(client: RawClient, sim: RunningSimulator) -> None:
    """wrong_hmac: LQ answers are well formed but hold a wrong HMAC (LS, honest, refuses it);
    other commands are answered normally and do not use up ``fault_count``."""
    key = HmacKey.key_block(_l0(client))
    honest = codec.parse_lr(client.ask(b"0000" + codec.encode_lq("FF", 32, key, b"0123456789"))[4:], 32)
    sim.set(fault="wrong_hmac", fault_count=1)
    assert client.ask(b"0001NC")[:8] == b"0001ND00"
    response = client.ask(b"0002" + codec.encode_lq("FF", 32, key, b"0123456789"))[4:]
    assert response.startswith(b"LR000032") and len(response) == 40
    lie = codec.parse_lr(response, 32)
    assert lie != honest
    assert client.ask(b"0003" + codec.encode_ls("FF", lie, key, b"0123456789")) == b"0003LT01"
    again = client.ask(b"0004" + codec.encode_lq("FF", 32, key, b"0123456789"))[4:]
    assert codec.parse_lr(again, 32) == honest  # fault_count=1 was used by the one LQ


def test_cli_wrong_hmac_fault(tmp_path: Path) -> None:
    """payshield-sim --fault wrong_hmac answers LQ with an HMAC that its own LS refuses."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otp_agent.payshield_sim.main",
            "--listen",
            "127.0.0.1:0",
            "--lmk-file",
            str(tmp_path / "lmk.hex"),
            "--fault",
            "wrong_hmac",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        port = int(line.split(" on ")[1].split(",")[0].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            frames = FrameReader()

            def ask(body: bytes) -> bytes:
                sock.sendall(codec.frame(body))
                while True:
                    got = frames.feed(sock.recv(65536))
                    if got:
                        return got[0]

            l0 = ask(b"0000" + codec.encode_l0(32, attributes("63", "H0", "C", "E")))
            key = codec.parse_key_response("L0", l0[4:])
            mac = codec.parse_lr(ask(b"0001" + codec.encode_lq("FF", 32, key, b"abcdefgh"))[4:], 32)
            assert ask(b"0002" + codec.encode_ls("FF", mac, key, b"abcdefgh")) == b"0002LT01"
    finally:
        process.terminate()
        process.communicate(timeout=10)
