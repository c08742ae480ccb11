"""Fuzzing the socket protocol against a real agent: it never crashes or hangs, it answers or
closes within its client_timeout, and a ``ping`` afterwards still works.

Frames are sent as root (who may call every operation) or as ``nobody``: random bytes, random
lengths, random JSON, protocol envelopes with every operation and wrongly typed fields, and
mutations of the seed frames kept in ``corpus/protocol/`` (each seed is also run as it is, as an
explicit example).  Every byte that comes back must be whole reply frames.  Hypothesis runs
derandomized (repeatable; ``OTP_FAULTS_SEED`` explores elsewhere) with no deadline.  A second run
opens connections that send part of a frame (or a whole one) and then neither write nor close:
the agent must close each within its client_timeout.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otp_agent import wire
from tests.conftest import IN_CI

if not IN_CI:  # in CI a missing hypothesis is an error, never a skip
    pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from otp_agent.testing import RunningAgent, running_agent
from otp_agent.wire import MAX_ADMIN_FRAME, MAX_FRAME
from tests.faults.conftest import Figures
from tests.faults.support import (
    CORPUS,
    NOBODY,
    SEED,
    Clients,
    clients,
    count,
    open_directory,
    request,
    require_root,
    rng,
    send_raw,
    split_replies,
)

CLIENT_TIMEOUT = 1.0
SLACK = 2.0
SEEDS = sorted((CORPUS / "protocol").glob("*.bin"))
OPS = sorted(wire.OPERATIONS)
FIELDS = [
    "user",
    "code",
    "password_and_code",
    "target",
    "serial",
    "type",
    "algorithm",
    "digits",
    "period",
    "issuer",
    "tokens",
    "dry_run",
    "code1",
    "code2",
    "service",
    "rhost",
    "tty",
]


@dataclass(frozen=True)
class Case:
    """What one example sends, and as whom."""

    payload: bytes
    as_nobody: bool
    kind: str

    def __repr__(self) -> str:
        return f"Case(kind={self.kind!r}, as_nobody={self.as_nobody}, payload={self.payload[:300]!r})"


# --------------------------------------------------------------------------- strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=24)
    | st.sampled_from(
        [
            "alice",
            "root",
            "nobody",
            "123456",
            "12345678",
            "OAHO00000001",
            "hotp",
            "totp",
            "sha1",
            "sha512",
            "",
            " ",
            "\x00",
            "ALICE",
            "alice ",
            "ａｌｉｃｅ",
        ]
    )
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4
    )


json_values = st.recursive(scalars, _containers, max_leaves=12)
envelopes = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1] * 8 + [0, 2, "1", 1.0, True, None, [1]]),
        "op": st.sampled_from(OPS + ["", "zap", "VALIDATE", "ping ", "op_ping", "__init__"])
        | st.text(max_size=10),
    },
    optional={name: json_values for name in FIELDS},
)


def _encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def _framed(body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">I", len(body) if length is None else length) + body


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["envelope"] * 6 + ["json", "body", "raw", "length", "mutated", "mutated"]))
    if kind == "envelope":
        return kind, _framed(_encode(draw(envelopes), draw(st.booleans())))
    if kind == "json":
        return kind, _framed(_encode(draw(json_values), draw(st.booleans())))
    if kind == "body":
        return kind, _framed(draw(st.binary(min_size=1, max_size=512)))
    if kind == "raw":
        return kind, draw(st.binary(max_size=512))
    if kind == "length":
        body = draw(st.binary(max_size=64) | envelopes.map(lambda e: _encode(e, True)))
        length = draw(
            st.sampled_from(
                [
                    0,
                    1,
                    max(len(body) - 1, 0),
                    len(body) + 1,
                    MAX_FRAME,
                    MAX_FRAME + 1,
                    MAX_ADMIN_FRAME,
                    MAX_ADMIN_FRAME + 1,
                    2**32 - 1,
                ]
            )
            | st.integers(min_value=0, max_value=2**32 - 1)
        )
        return kind, _framed(body, length)
    data = bytearray(draw(st.sampled_from(SEEDS)).read_bytes())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        where = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]))
        if action == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "delete":
            del data[where : where + draw(st.integers(min_value=1, max_value=8))]
        elif action == "insert":
            data[where:where] = draw(
                st.binary(min_size=1, max_size=8)
                | st.sampled_from([b'"', b"\\", b"{", b"}", b"\x00", b"\xff", b"\\u0000"])
            )
        elif action == "truncate":
            del data[where:]
        elif action == "duplicate":
            data[where:where] = data[:where][-16:]
    return kind, bytes(data)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    parts = draw(st.lists(frames(), min_size=1, max_size=3))
    kinds = "+".join(kind for kind, _ in parts)
    return Case(b"".join(data for _, data in parts), draw(st.booleans()), kinds)


def _settings(examples: int) -> Any:
    chosen = settings(
        max_examples=examples,
        deadline=None,
        derandomize="OTP_FAULTS_SEED" not in os.environ,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )

    def apply(function: Any) -> Any:
        function = chosen(function)
        return seed(SEED)(function) if "OTP_FAULTS_SEED" in os.environ else function

    return apply


# --------------------------------------------------------------------------- the agent


@pytest.fixture(scope="module")
def fuzz_agent() -> Iterator[tuple[RunningAgent, Clients]]:
    require_root()
    with (
        open_directory() as directory,
        running_agent(
            directory / "agent",
            sections={"agent": {"client_timeout": CLIENT_TIMEOUT}},
            policy={"lock_threshold": 100},
        ) as agent,
        clients(1, uid=NOBODY) as nobody,
    ):
        agent.enroll("alice", "--type", "hotp")
        agent.enroll("nobody", "--type", "hotp")
        yield agent, nobody


def _unexpected_errors(agent: RunningAgent) -> list[str]:
    return [line for line in agent.log().splitlines() if "unexpected error while serving" in line]


def test_protocol_fuzz(fuzz_agent: tuple[RunningAgent, Clients], figures: Figures) -> None:
    agent, nobody = fuzz_agent
    examples = count(150, 10_010)
    stats: Counter[str] = Counter()
    unanswered: list[Case] = []
    slowest = [0.0]
    errors_before = len(_unexpected_errors(agent))

    @_settings(examples)
    @given(case=cases())
    def run(case: Case) -> None:
        stats["frames sent"] += 1
        stats["as nobody" if case.as_nobody else "as root"] += 1
        if case.as_nobody:
            data, closed, elapsed = nobody.call(
                "raw", str(agent.socket_path), case.payload, True, CLIENT_TIMEOUT + SLACK + 3
            )
        else:
            data, closed, elapsed = send_raw(
                agent.socket_path, case.payload, timeout=CLIENT_TIMEOUT + SLACK + 3
            )
        slowest[0] = max(slowest[0], elapsed)
        assert closed and elapsed <= CLIENT_TIMEOUT + SLACK, (
            f"no close within {CLIENT_TIMEOUT + SLACK} s: {case}"
        )
        replies = split_replies(data)
        assert isinstance(replies, list), f"{replies}: {case}"
        for reply in replies:
            stats["ok replies" if reply["ok"] else f"error {reply['error'].get('code')}"] += 1
        if not replies:
            stats["closed without a reply"] += 1
            if (
                case.payload.startswith(b"\x00")
                and len(case.payload) > 4
                and struct.unpack(">I", case.payload[:4])[0] == len(case.payload) - 4
            ):
                unanswered.append(case)  # one whole frame, and no answer at all
        assert agent.process.poll() is None, f"the agent died: {case}"
        assert request(agent.socket_path, "ping", timeout=5)["ok"] is True, f"ping failed after {case}"

    for path in SEEDS:
        run = example(case=Case(path.read_bytes(), False, f"seed {path.name}"))(run)
        run = example(case=Case(path.read_bytes(), True, f"seed {path.name}"))(run)
    started = time.monotonic()
    run()
    elapsed = time.monotonic() - started
    crashes = _unexpected_errors(agent)[errors_before:]
    figures.report(
        f"fuzz protocol: {stats['frames sent']} fuzzed frames ({stats['as root']} as root, {stats['as nobody']} "
        f"as nobody, {len(SEEDS)} seeds x 2 included) in {elapsed:.0f} s: 0 crashes, 0 hangs (slowest close "
        f"{slowest[0]:.2f} s, client_timeout {CLIENT_TIMEOUT} s), ping after each; replies: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k.startswith(("ok", "error", "closed")))
        + f"; whole frames left unanswered {len(unanswered)}; unexpected errors logged by the agent {len(crashes)}"
    )
    assert agent.process.poll() is None
    assert not crashes, crashes[:5]
    assert not unanswered, unanswered[:5]


def test_silent_and_partial_clients_are_closed_in_time(
    fuzz_agent: tuple[RunningAgent, Clients], figures: Figures
) -> None:
    """Connections that send a prefix of a frame (or a whole one) and then stay open and silent."""
    agent, _nobody = fuzz_agent
    total, batch = count(48, 1_000), 24
    random = rng("partial")
    ping = _framed(b'{"v":1,"op":"ping"}')
    closes: list[float] = []
    answered = 0
    late: list[tuple[int, float]] = []

    def hold(prefix: bytes, index: int) -> None:
        nonlocal answered
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(CLIENT_TIMEOUT + SLACK + 5)
            connection.connect(str(agent.socket_path))
            for start in range(0, len(prefix), 7):  # trickled, a few bytes at a time
                connection.sendall(prefix[start : start + 7])
                time.sleep(0.001)
            sent = time.monotonic()
            data = b""
            try:
                while chunk := connection.recv(65536):
                    data += chunk
            except (TimeoutError, ConnectionResetError):
                late.append((index, time.monotonic() - sent))
                return
            closes.append(time.monotonic() - sent)
            if data:
                answered += 1

    started = time.monotonic()
    for first in range(0, total, batch):
        threads = []
        for index in range(first, min(first + batch, total)):
            cut = random.choice([0, 1, 3, 4, 5, len(ping) - 1, len(ping)])
            threads.append(threading.Thread(target=hold, args=(ping[:cut], index)))
        for thread in threads:
            thread.start()
        assert request(agent.socket_path, "ping", timeout=5)["ok"] is True  # served meanwhile
        for thread in threads:
            thread.join(CLIENT_TIMEOUT + SLACK + 10)
    elapsed = time.monotonic() - started
    figures.report(
        f"fuzz protocol: {total} silent or partial connections held open ({elapsed:.0f} s): "
        f"{len(closes)} closed by the agent within {max(closes, default=0):.2f} s of their last byte "
        f"(client_timeout {CLIENT_TIMEOUT} s), {answered} of them answered first (a whole ping), "
        f"{len(late)} not closed in time"
    )
    assert not late, late[:5]
    assert len(closes) == total
    assert all(c <= CLIENT_TIMEOUT + SLACK for c in closes)
    assert agent.process.poll() is None


def test_seed_corpus_is_present() -> None:
    assert len(SEEDS) >= 20 and all(isinstance(p, Path) for p in SEEDS)
    assert SEED == int(os.environ.get("OTP_FAULTS_SEED", "1"))
