"""Framing of the socket protocol: round trips, limits, truncation, versions."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from otp_agent import wire
from otp_agent.errors import ProtocolError

_OPEN: list[socket.socket] = []


def pair() -> tuple[socket.socket, socket.socket]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    _OPEN.extend((left, right))
    return left, right


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def test_round_trip() -> None:
    left, right = pair()
    message = {"v": 1, "op": "validate", "user": "zoë", "code": "123456"}
    wire.send_frame(left, message)
    assert wire.recv_frame(right) == message


def test_golden_frame() -> None:
    assert wire.encode_frame({"v": 1, "op": "ping"}) == b'\x00\x00\x00\x13{"v":1,"op":"ping"}'


def test_clean_end_of_stream_is_none() -> None:
    left, right = pair()
    left.close()
    assert wire.recv_frame(right) is None


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"\x00\x00", "frame header"),
        (b"\x00\x00\x00\x10{}", "inside a frame"),
        (struct.pack(">I", 0), "outside"),
        (struct.pack(">I", wire.MAX_FRAME + 1), "outside"),
    ],
)
def test_truncated_or_oversized(raw: bytes, message: str) -> None:
    left, right = pair()
    left.sendall(raw)
    left.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match=message):
        wire.recv_frame(right)


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"not json", "not a UTF-8 JSON"),
        (b"\xff\xfe", "not a UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"v": 2, "op": "ping"}', "unsupported protocol version"),
        (b'{"op": "ping"}', "version"),
    ],
)
def test_bad_payloads(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        wire.decode_payload(payload)


def test_deadline_bounds_a_trickling_client() -> None:
    left, right = pair()
    left.sendall(b"\x00\x00")
    with pytest.raises(TimeoutError):
        wire.recv_frame(right, deadline=time.monotonic() + 0.2)


def test_admin_frames_may_be_larger() -> None:
    left, right = pair()
    big = {"v": 1, "op": "import", "blob": "x" * (wire.MAX_FRAME * 2)}
    sender = __import__("threading").Thread(target=wire.send_frame, args=(left, big))
    sender.start()
    assert wire.recv_frame(right, max_frame=wire.MAX_ADMIN_FRAME) == big
    sender.join()


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 60000,  # nested past the interpreter's recursion limit
        b'{"v": 1, "op": "ping", "n": ' + b"1" * 5000 + b"}",  # past int's digit limit
    ],
)
def test_pathological_json_within_the_frame_limit_is_a_protocol_error(payload: bytes) -> None:
    """Any peer may send these in a 64 KiB frame: a clear protocol error, not a crash of the
    connection's worker with no answer."""
    assert len(payload) <= wire.MAX_FRAME
    with pytest.raises(ProtocolError, match="not a UTF-8 JSON"):
        wire.decode_payload(payload)


def test_a_refusal_sent_before_the_request_is_read_even_when_the_write_fails() -> None:
    """The agent answers "busy" and closes before the client writes (the flaky test of the
    first release): the client's write fails with EPIPE, and the refusal is still read."""
    client, agent = pair()
    wire.send_frame(agent, wire.error_reply("unreachable", "agent busy, try again"))
    agent.close()
    with pytest.raises(BrokenPipeError):  # what the first release did: died on the write
        wire.send_frame(client, {"v": 1, "op": "ping", "pad": "x" * 300_000})
    client2, agent2 = pair()
    wire.send_frame(agent2, wire.error_reply("unreachable", "agent busy, try again"))
    agent2.close()
    reply = wire.exchange(client2, {"v": 1, "op": "ping", "pad": "x" * 300_000})
    assert reply is not None and reply["error"]["code"] == "unreachable"
