"""Access-Requests through otp-radiusd to the real agent, against the agent's own socket.

Prints, in one run, one Markdown table: requests per second and latency p50/p99 with 1 and 4
concurrent client processes, for
  1. ``ping`` on the agent's socket (the bare round trip, the baseline) and ``validate`` of an
     accepted HOTP code there, both through the typed client (``otp_agent.client.AgentClient``,
     one connection reused per client process, as otp-radiusd's worker threads do);
  2. a Status-Server through otp-radiusd (answered by otp-radiusd alone: the RADIUS layer's
     own cost) and an Access-Request with an accepted code (code mode: otp-radiusd checks the
     Message-Authenticator, asks the agent ``validate``, signs the Access-Accept).
The tokens are the same for the validate and the RADIUS rows: ``--tokens`` users each with one
HOTP token (imported with known secrets), every code accepted once (a counter further each
round).  RADIUS clients are processes sending raw UDP datagrams built and signed by pyrad before
the clock starts, one request in flight each (send, wait for the reply, check it is an
Access-Accept signed with the secret).  A request's latency is from its send to its reply; the
rate is all requests over the time from the first send to the last reply.  The agent, otp-radiusd
and the clients share the machine's cores; the last two columns are the CPU time of the agent and
of otp-radiusd per request (from /proc, all their threads).

Usage: .venv/bin/python bench/bench_radius.py [--quick] [--tokens N] [--rounds R]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otp_agent.client import AgentClient  # noqa: E402
from otp_agent.oath import format_code  # noqa: E402
from otp_agent.testing import running_agent  # noqa: E402

DICTIONARY = Path(__file__).resolve().parent.parent / "otp_agent" / "radius" / "dictionary"


def secret_of(index: int) -> bytes:
    return hashlib.sha1(f"bench-radius-token-{index}".encode()).digest()


def hotp(index: int, counter: int) -> str:
    return format_code(hmac.new(secret_of(index), counter.to_bytes(8, "big"), "sha1").digest(), 6)


def import_tokens(path: Path, count: int) -> None:
    records = [
        {
            "serial": f"RAD{i:08d}",
            "type": "hotp",
            "algorithm": "sha1",
            "digits": 6,
            "user": f"user{i}",
            "secret_b64": base64.b64encode(secret_of(i)).decode(),
        }
        for i in range(count)
    ]
    with AgentClient(path, timeout=120) as client:
        reply = client.request("import", tokens=records, dry_run=False)
    assert reply["imported"] == count, reply


@dataclass(frozen=True)
class Job:
    """What one client process does: ``kind`` for its token indexes, counters from ``first``."""

    kind: str  # "ping", "validate", "status", "radius"
    indexes: tuple[int, ...]
    first: int
    rounds: int
    socket_path: str
    port: int
    secret: bytes


def _radius_packets(job: Job) -> list[tuple[Any, bytes]]:
    from pyrad.dictionary import Dictionary
    from pyrad.packet import AuthPacket, StatusServer

    dictionary = Dictionary(str(DICTIONARY))
    packets = []
    for counter in range(job.first, job.first + job.rounds):
        for number, index in enumerate(job.indexes):
            if job.kind == "status":
                packet = AuthPacket(code=StatusServer, id=number % 256, secret=job.secret, dict=dictionary)
            else:
                packet = AuthPacket(id=number % 256, secret=job.secret, dict=dictionary)
                packet["User-Name"] = f"user{index}"
                packet["User-Password"] = packet.PwCrypt(hotp(index, counter))
                packet["NAS-Identifier"] = "bench"
            packet.add_message_authenticator()
            packets.append((packet, packet.RequestPacket()))
    return packets


def _client(job: Job, barrier: Any, results: Any) -> None:
    latencies: list[float] = []
    if job.kind in ("status", "radius"):
        packets = _radius_packets(job)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nas:
            nas.bind(("127.0.0.1", 0))
            nas.settimeout(10)
            barrier.wait()
            started = time.monotonic()
            for packet, data in packets:
                sent = time.monotonic()
                nas.sendto(data, ("127.0.0.1", job.port))
                raw = nas.recv(4096)
                latencies.append(time.monotonic() - sent)
                reply = packet.CreateReply(packet=raw)
                if raw[0] != 2 or not packet.VerifyReply(reply, raw, enforce_ma=True):
                    raise SystemExit(f"not a signed Access-Accept: code {raw[0]}")
    else:
        with AgentClient(job.socket_path, timeout=10) as client:
            client.ping()  # connected before the clock starts
            barrier.wait()
            started = time.monotonic()
            for counter in range(job.first, job.first + job.rounds):
                for index in job.indexes:
                    sent = time.monotonic()
                    if job.kind == "ping":
                        client.ping()
                    else:
                        result = client.validate(f"user{index}", hotp(index, counter), service="bench")
                        if not result.accepted:
                            raise SystemExit(f"user{index} counter {counter}: {result.reason}")
                    latencies.append(time.monotonic() - sent)
    results.put((started, time.monotonic(), latencies))


def run(
    kind: str, clients: int, tokens: int, first: int, rounds: int, **where: Any
) -> tuple[float, list[float]]:
    """Run ``clients`` processes over the tokens (split between them); (rate, latencies)."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(clients), context.Queue()
    shares = [tuple(range(tokens))[i::clients] for i in range(clients)]
    processes = [
        context.Process(target=_client, args=(Job(kind, share, first, rounds, **where), barrier, results))
        for share in shares
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(60)
        if process.exitcode != 0:
            raise SystemExit(f"a {kind} client failed (exit {process.exitcode})")
    latencies = [x for _, _, values in outcomes for x in values]
    elapsed = max(end for _, end, _ in outcomes) - min(start for start, _, _ in outcomes)
    return len(latencies) / elapsed, latencies


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


@contextmanager
def running_radiusd(agent_config: Path, directory: Path, secret: bytes) -> Iterator[tuple[int, int]]:
    """otp-radiusd (code mode, no rate limit to speak of) on a free port: (port, pid)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clients = directory / "clients"
    clients.write_bytes(b"127.0.0.1 " + secret + b" bench\n")
    clients.chmod(0o600)
    config = directory / "radius.toml"
    config.write_text(
        agent_config.read_text()
        + f'\n[radius]\nlisten = "127.0.0.1:{port}"\nclients_file = "{clients}"\nrate_limit = 100000\n'
    )
    log = open(directory / "otp-radiusd.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "otp_agent.radius", "--config", str(config), "--log-level", "WARNING"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    try:
        from pyrad.dictionary import Dictionary
        from pyrad.packet import AuthPacket, StatusServer

        status = AuthPacket(code=StatusServer, secret=secret, dict=Dictionary(str(DICTIONARY)))
        status.add_message_authenticator()
        data = status.RequestPacket()
        deadline = time.monotonic() + 20
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nas:
            nas.settimeout(0.1)
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        "otp-radiusd did not start: " + (directory / "otp-radiusd.log").read_text()
                    )
                nas.sendto(data, ("127.0.0.1", port))
                try:
                    nas.recv(4096)
                    break
                except TimeoutError:
                    continue
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 tokens, 1 round per row")
    parser.add_argument("--tokens", type=int, default=400, help="users, each with one HOTP token (400)")
    parser.add_argument("--rounds", type=int, default=4, help="codes per token and row (4)")
    options = parser.parse_args()
    tokens, rounds = (40, 1) if options.quick else (options.tokens, options.rounds)
    directory = Path(tempfile.mkdtemp(prefix="otp-bench-radius-"))
    secret = secrets.token_hex(16).encode()
    try:
        with running_agent(
            directory / "agent",
            policy={"lock_threshold": 100, "hotp_lookahead": 10},
            sections={"audit": {"path": str(directory / "audit.log")}},
        ) as agent:
            import_tokens(agent.socket_path, tokens)
            with running_radiusd(agent.config_path, directory, secret) as (port, radiusd_pid):
                where = {"socket_path": str(agent.socket_path), "port": port, "secret": secret}
                print(
                    f"otp-radiusd benchmark: {tokens} users with one HOTP token each, {rounds} accepted "
                    f"code(s) per token and row; software keystore + SQLite; {os.cpu_count()} cores\n"
                )
                print(
                    "| path | clients | requests/s | p50 ms | p99 ms | agent CPU ms/req | otp-radiusd CPU ms/req |\n"
                    "|---|---:|---:|---:|---:|---:|---:|"
                )
                run("validate", 1, tokens, 0, 1, **where)  # warm-up: every token read once
                counter = 1
                rows = [
                    ("agent socket: ping (AgentClient)", "ping"),
                    ("agent socket: validate, accepted code (AgentClient)", "validate"),
                    ("otp-radiusd: Status-Server (no agent call)", "status"),
                    ("otp-radiusd: Access-Request, accepted code", "radius"),
                ]
                for label, kind in rows:
                    for clients in (1, 4):
                        agent_before, radiusd_before = (
                            process_cpu(agent.process.pid),
                            process_cpu(radiusd_pid),
                        )
                        rate, latencies = run(kind, clients, tokens, counter, rounds, **where)
                        agent_cpu = process_cpu(agent.process.pid) - agent_before
                        radiusd_cpu = process_cpu(radiusd_pid) - radiusd_before
                        if kind in ("validate", "radius"):
                            counter += rounds
                        print(
                            f"| {label} | {clients} | {rate:.0f} | {percentile(latencies, 0.5):.2f} | "
                            f"{percentile(latencies, 0.99):.2f} | {agent_cpu / len(latencies) * 1000:.3f} | "
                            f"{radiusd_cpu / len(latencies) * 1000:.3f} |"
                        )
        # The agent stopped: its audit is complete.  One accepted validation per RADIUS request.
        lines = (directory / "audit.log").read_text().splitlines()
        radius = [line for line in lines if '"service":"radius"' in line and '"event":"validate"' in line]
        assert len(radius) == 2 * tokens * rounds and all('"reason":"accepted"' in line for line in radius)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
