"""Validations/s and p50/p99 latency of the accept path on PostgreSQL, against SQLite.

Prints one table, in one run, for durable acceptances (HOTP codes, each accepted once) through:
  1. one daemon on SQLite (WAL, synchronous=FULL, group commit), the single-host reference;
  2. one daemon on PostgreSQL;
  3. two and four daemons sharing one PostgreSQL database and one master key (a fleet of hosts
     on one machine), with the client processes spread over their sockets;
each with 1, 2, 4 and 8 concurrent client processes opening one connection per validation, as
the PAM helper does.  Tokens are loaded through the agent's "import" operation.

The PostgreSQL server comes from OTP_BENCH_PG_DSN (default OTP_TEST_PG_DSN, default
postgresql://postgres@127.0.0.1:5432/test); a database of its own is created and dropped.
Usage: .venv/bin/python bench/bench_postgresql.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_agent import import_tokens, percentile, worker  # noqa: E402

from otp_agent.testing import RunningAgent, running_agent  # noqa: E402

ADMIN_DSN = os.environ.get(
    "OTP_BENCH_PG_DSN", os.environ.get("OTP_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
)
TOKENS = 400
POLICY = {"lock_threshold": 100, "hotp_lookahead": 10}


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new empty database on the benchmark server; its DSN; dropped afterwards."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"otp_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    try:
        params = {k: v for k, v in conninfo_to_dict(ADMIN_DSN).items() if v is not None}
        params["dbname"] = name
        yield make_conninfo("", **params)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(paths: list[str], clients: int, first_counter: int, rounds: int) -> tuple[float, list[float]]:
    """``clients`` processes, client i on daemon i mod len(paths); each token used by one client."""
    shares = [list(range(TOKENS))[i::clients] for i in range(clients)]
    jobs = [(paths[i % len(paths)], "accept", shares[i], first_counter, rounds) for i in range(clients)]
    with multiprocessing.Pool(clients) as pool:
        started = time.perf_counter()
        results = pool.map(worker, jobs)
        elapsed = time.perf_counter() - started
    latencies = [x for result in results for x in result]
    return len(latencies) / elapsed, latencies


def measure(label: str, agents: list[RunningAgent], rounds: int) -> None:
    paths = [str(agent.socket_path) for agent in agents]
    import_tokens(paths[0], 0, TOKENS)
    run(paths, 2, 0, 1)  # Warm-up: connections, prepared statements, caches.
    counter = 1
    for clients in (1, 2, 4, 8):
        rate, latencies = run(paths, clients, counter, rounds)
        counter += rounds
        print(
            f"| {label:<34} | {clients:>7} | {rate:>8.0f} | {percentile(latencies, 0.5):>6.2f} | "
            f"{percentile(latencies, 0.99):>6.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    rounds = 1 if parser.parse_args().quick else 3
    directory = Path(tempfile.mkdtemp(prefix="otp-bench-pg-"))
    print(
        f"otp-agent benchmark: accept path (durable commit), software keystore, "
        f"{multiprocessing.cpu_count()} cores, {TOKENS} HOTP tokens, {rounds} code(s) per token "
        "per row\n"
    )
    print(
        "| store                              | clients |  valid/s | p50 ms | p99 ms |\n"
        "|------------------------------------|--------:|---------:|-------:|-------:|"
    )
    try:
        with running_agent(directory / "sqlite", policy=POLICY, sections={"audit": {"path": ""}}) as agent:
            measure("SQLite, one daemon", [agent], rounds)
        with (
            scratch_database() as dsn,
            running_agent(
                directory / "pg1",
                policy=POLICY,
                sections={"store": {"backend": "postgresql", "dsn": dsn}, "audit": {"path": ""}},
            ) as agent,
        ):
            measure("PostgreSQL, one daemon", [agent], rounds)
        for count in (2, 4):
            with scratch_database() as dsn, ExitStack() as stack:
                sections: dict[str, dict[str, Any]] = {
                    "store": {"backend": "postgresql", "dsn": dsn},
                    "audit": {"path": ""},
                }
                first = stack.enter_context(
                    running_agent(directory / f"pg{count}-0", policy=POLICY, sections=sections)
                )
                sections["keystore"] = {"master_key_file": str(first.directory / "master.key")}
                fleet = [first] + [
                    stack.enter_context(
                        running_agent(directory / f"pg{count}-{i}", policy=POLICY, sections=sections)
                    )
                    for i in range(1, count)
                ]
                measure(f"PostgreSQL, {count} daemons (fleet)", fleet, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
