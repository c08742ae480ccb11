"""Backup codes through the real agent: the cost of the slow hash, against its baselines.

Prints one Markdown table, one run: the latency (p50/p99) of ``validate`` over the socket for
  * ``ping`` (the bare round trip: the floor),
  * a right TOTP code (one HMAC, one compare-and-set commit),
  * a right backup code (one scrypt, one compare-and-set on the code's row, the tokens' lock cleared),
  * a wrong backup code (one scrypt, a failure counted),
  * one bare ``hashlib.scrypt`` with the agent's parameters, in this process (the baseline:
    what a backup-code attempt cannot avoid),
with the kinds in alternating rounds so that they meet the same machine state.  The agent is the
real daemon (software keystore, SQLite) with a lock threshold high enough never to lock.

Usage: .venv/bin/python bench/bench_backup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from otp_agent import backup
from otp_agent.client import AgentClient
from otp_agent.testing import code_for_uri, running_agent


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    arguments = parser.parse_args()
    rounds = arguments.rounds
    timings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="otp-bench-backup-") as directory:
        policy = {"lock_threshold": 100, "totp_window": 1}
        with running_agent(Path(directory) / "agent", policy=policy) as agent:
            users = [f"user{i}" for i in range(rounds)]
            uris = {user: agent.enroll(user, "--qr", "never")[1] for user in users}
            codes: dict[str, list[str]] = {}
            client = AgentClient(str(agent.socket_path), timeout=30)
            try:
                for user in users:
                    codes[user] = list(client.request("backup_codes", user=user, count=2)["codes"])

                def timed(name: str, action: Callable[..., object], *args: object, **fields: object) -> None:
                    start = time.perf_counter()
                    action(*args, **fields)
                    timings.setdefault(name, []).append(time.perf_counter() - start)

                salt = os.urandom(16)
                for user in users:
                    timed("ping (floor)", client.request, "ping")
                    totp = code_for_uri(uris[user])
                    timed("TOTP code, accepted", client.request, "validate", user=user, code=totp)
                    timed("backup code, accepted", client.request, "validate", user=user, code=codes[user][0])
                    timed("backup code, wrong", client.request, "validate", user=user, code="zzzz-zzzz-zz")
                    timed("bare scrypt (baseline)", backup.digest, "abcdefghjk", salt)
            finally:
                client.close()
    print(
        f"# bench_backup: {platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{rounds} rounds, scheme {backup.SCHEME}"
    )
    print("| operation | calls | p50 ms | p99 ms | p50 / bare scrypt |")
    print("|---|---|---|---|---|")
    base = statistics.median(timings["bare scrypt (baseline)"])
    for name, values in timings.items():
        median = statistics.median(values)
        print(
            f"| {name} | {len(values)} | {median * 1000:.2f} | {_percentile(values, 0.99) * 1000:.2f} | "
            f"{median / base:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
