"""Throughput and latency of validations through the real agent socket (software + SQLite).

Prints, in one run:
  1. validations/s and p50/p90/p99 latency for the accept path (durable acceptances) and the reject
     path, with 1, 2, 4 and 8 concurrent client processes, each opening one connection per
     validation as the PAM helper does;
  2. the cost of one validation as the store grows from 10 to 100,000 tokens.
A baseline row measures the bare socket round trip (ping) so the validation cost can be read
against it.  The clients run on the same 2 cores as the agent, so the last column (the agent's own
CPU time per validation, from /proc) tells what the agent alone would sustain: about
1000 / that figure validations per second on one core.  Usage: .venv/bin/python bench/bench_agent.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otp_agent import wire  # noqa: E402
from otp_agent.oath import format_code  # noqa: E402
from otp_agent.testing import running_agent  # noqa: E402


def secret_of(index: int) -> bytes:
    return hashlib.sha1(f"bench-token-{index}".encode()).digest()


def hotp(index: int, counter: int) -> str:
    return format_code(hmac.new(secret_of(index), counter.to_bytes(8, "big"), "sha1").digest(), 6)


def call(path: str, message: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(path)
        wire.send_frame(connection, message)
        reply = wire.recv_frame(connection)
    assert reply is not None
    return reply


def import_tokens(path: str, first: int, count: int) -> None:
    batch = 20_000
    for start in range(first, first + count, batch):
        records = [
            {
                "serial": f"BENCH{i:08d}",
                "type": "hotp",
                "algorithm": "sha1",
                "digits": 6,
                "user": f"user{i}",
                "secret_b64": base64.b64encode(secret_of(i)).decode(),
            }
            for i in range(start, min(start + batch, first + count))
        ]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(600)
            connection.connect(path)
            wire.send_frame(connection, {"v": 1, "op": "import", "tokens": records, "dry_run": False})
            reply = wire.recv_frame(connection, max_frame=wire.MAX_ADMIN_FRAME)
        assert reply and reply["ok"], reply


def worker(arguments: tuple[str, str, list[int], int, int]) -> list[float]:
    """Validate codes for the given token indexes; return latencies in seconds."""
    path, mode, indexes, first_counter, rounds = arguments
    latencies = []
    for counter in range(first_counter, first_counter + rounds):
        for index in indexes:
            if mode == "ping":
                message: dict[str, Any] = {"v": 1, "op": "ping"}
            else:
                code = hotp(index, counter) if mode == "accept" else "000000"
                message = {"v": 1, "op": "validate", "user": f"user{index}", "code": code}
            started = time.perf_counter()
            reply = call(path, message)
            latencies.append(time.perf_counter() - started)
            if mode == "accept" and reply.get("result") != "accept":
                raise SystemExit(f"unexpected reply {reply}")
    return latencies


def run(
    path: str, mode: str, clients: int, tokens: list[int], first_counter: int, rounds: int
) -> tuple[float, list[float]]:
    shares = [tokens[i::clients] for i in range(clients)]
    with multiprocessing.Pool(clients) as pool:
        started = time.perf_counter()
        results = pool.map(worker, [(path, mode, share, first_counter, rounds) for share in shares])
        elapsed = time.perf_counter() - started
    latencies = [x for result in results for x in result]
    return len(latencies) / elapsed, latencies


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def row(label: str, rate: float, latencies: list[float], cpu: float) -> str:
    return (
        f"| {label:<34} | {rate:>8.0f} | {percentile(latencies, 0.5):>6.2f} | "
        f"{percentile(latencies, 0.9):>6.2f} | {percentile(latencies, 0.99):>6.2f} | "
        f"{cpu / len(latencies) * 1000:>6.3f} |"
    )


def measured(pid: int, *arguments: Any) -> tuple[float, list[float], float]:
    """Run one phase; also return the agent's CPU seconds spent in it."""
    before = process_cpu(pid)
    rate, latencies = run(*arguments)
    return rate, latencies, process_cpu(pid) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    options = parser.parse_args()
    rounds = 3 if options.quick else 20
    sizes = [10, 1_000, 10_000] if options.quick else [10, 1_000, 10_000, 100_000]
    directory = Path(tempfile.mkdtemp(prefix="otp-bench-"))
    header = (
        "| path, clients                      |  valid/s | p50 ms | p90 ms | p99 ms | agent CPU ms |\n"
        "|------------------------------------|---------:|-------:|-------:|-------:|-------:|"
    )
    with running_agent(
        directory / "agent",
        policy={"lock_threshold": 100, "hotp_lookahead": 10},
        sections={"audit": {"path": str(directory / "audit.log")}},
    ) as agent:
        path, pid = str(agent.socket_path), agent.process.pid
        import_tokens(path, 0, 400)
        tokens = list(range(400))
        print(
            f"otp-agent benchmark: software keystore + SQLite (WAL, synchronous=FULL), "
            f"{multiprocessing.cpu_count()} cores\n"
        )
        print("Validations through the real socket, one connection per validation:\n")
        print(header)
        counter = 0
        figures: dict[tuple[str, int], tuple[float, float]] = {}
        for clients in (1, 2, 4, 8):
            rate, latencies, cpu = measured(pid, path, "ping", clients, tokens, 0, max(1, rounds // 4))
            figures["ping", clients] = rate, cpu / len(latencies)
            print(row(f"baseline ping, {clients}", rate, latencies, cpu))
        for clients in (1, 2, 4, 8):
            rate, latencies, cpu = measured(
                pid, path, "accept", clients, tokens, counter, max(1, rounds // 4)
            )
            figures["accept", clients] = rate, cpu / len(latencies)
            print(row(f"accept (durable commit), {clients}", rate, latencies, cpu))
            counter += max(1, rounds // 4)
        for clients in (1, 2, 4, 8):
            print(
                row(
                    f"reject (wrong code), {clients}",
                    *measured(pid, path, "reject", clients, tokens[:50], 0, max(1, rounds // 4)),
                )
            )
            call(path, {"v": 1, "op": "ping"})
        print("\nAgainst the targets (durable acceptances vs ping with as many clients):\n")
        print(
            "| clients | acceptances/s (target >= 2000) | / ping rate (target >= 0.25) | agent CPU ms per acceptance (target <= 0.35) |"
        )
        print("|---:|---:|---:|---:|")
        for clients in (1, 2, 4, 8):
            rate, cpu_each = figures["accept", clients]
            print(
                f"| {clients} | {rate:.0f} | {rate / figures['ping', clients][0]:.2f} | {cpu_each * 1000:.3f} |"
            )
        print("\nCost per validation as the store grows (accept path, 4 clients, 200 tokens used):\n")
        print("| tokens in store | valid/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|")
    for size in sizes:
        sized = Path(tempfile.mkdtemp(prefix="otp-bench-size-"))
        with running_agent(sized / "agent", sections={"audit": {"path": ""}}) as agent:
            path = str(agent.socket_path)
            started = time.perf_counter()
            import_tokens(path, 0, size)
            load = time.perf_counter() - started
            used = list(range(min(size, 200)))
            run(path, "accept", 4, used, 0, 1)  # warm-up
            rate, lat = run(path, "accept", 4, used, 1, max(2, rounds // 2))
            print(
                f"| {size:>7} (import {load:5.1f} s) | {rate:>7.0f} | {percentile(lat, 0.5):>6.2f} | "
                f"{percentile(lat, 0.99):>6.2f} |"
            )


if __name__ == "__main__":
    main()
