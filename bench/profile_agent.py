"""Where a durable acceptance's time goes: the accept path profiled, layer by layer.

Prints, in one run, for the accept path on the embedded default (software keystore, SQLite in
WAL with synchronous=FULL, audit file), 400 HOTP tokens:

1. one validation in-process, on one thread (``Dispatcher.handle`` called directly: no socket,
   no other thread): wall and CPU per acceptance (user and system), without the profiler;
2. a cProfile table of the same calls grouped by layer (microseconds per acceptance, share of
   the whole): request parsing, the account lookup, the store read, the binding check, the
   HMACs and window, the replay tag, the write and its durable commit, the audit line and the
   counters; the profiler's own overhead inflates every row alike;
3. an experiment: the same acceptances with 1, 2, 8 and 32 of them sharing one transaction (one
   COMMIT, one fsync), which is what a design committing a batch of requests together would pay;
4. the ceiling this puts on one agent process: CPU per acceptance through the real socket is
   this in-process figure plus the socket and thread costs that bench/bench_agent.py shows
   against its ``ping`` baseline.

The durable commit's row is wall time (its fsync is a wait, not CPU); the other rows are CPU.

Usage: ``.venv/bin/python bench/profile_agent.py [--validations N]``
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_agent import hotp, import_tokens  # noqa: E402

from otp_agent.config import load_config  # noqa: E402
from otp_agent.daemon.dispatch import Peer  # noqa: E402
from otp_agent.daemon.main import Agent  # noqa: E402
from otp_agent.testing import running_agent  # noqa: E402

TOKENS = 400
#: Layers of the accept path: (label, module path suffix, function name); the cumulative time of
#: each function is its layer's (they do not nest in one another on this path).
LAYERS = (
    ("account lookup (getpwnam_r through NSS)", "otp_agent/accounts.py", "canonical_user"),
    ("store read: the user's tokens, rows decoded", "otp_agent/validation.py", "live_tokens"),
    ("binding check (key backend tag)", "otp_agent/validation.py", "check_binding"),
    ("HMAC of the likely factor, window, compare", "otp_agent/validation.py", "_match"),
    ("new state + replay tag of the code", "otp_agent/validation.py", "_success_state"),
    ("write + durable commit (wall: fsync wait)", "otp_agent/store/sqlite.py", "compare_and_set"),
    ("audit line, counters, remembered host", "otp_agent/validation.py", "_after_decision"),
)
WHOLE = ("otp_agent/daemon/dispatch.py", "handle")
#: Acceptances per transaction in the batched-commit experiment.
BATCHES = (1, 2, 8, 32)


def requests(count: int, first_counter: int) -> list[dict[str, Any]]:
    return [
        {
            "v": 1,
            "op": "validate",
            "user": f"user{i % TOKENS}",
            "code": hotp(i % TOKENS, first_counter + i // TOKENS),
            "service": "sshd",
        }
        for i in range(count)
    ]


def run(agent: Agent, batch: list[dict[str, Any]], peer: Peer) -> None:
    for request in batch:
        reply = agent.dispatcher.handle(request, peer)
        if reply.get("result") != "accept":
            raise SystemExit(f"profile_agent: unexpected reply {reply}")


def batched_cost(agent: Agent, peer: Peer, count: int, first_counter: int, size: int) -> tuple[float, float]:
    """Wall and CPU ms per acceptance when ``size`` acceptances share one transaction.

    An experiment, not the shipped path: the SQLite store's group commit is replaced by one that
    keeps a transaction open across ``size`` writes (the validations are still made one after
    another, each on fresh reads; 400 users in turn, so no batch holds one user twice).  It
    measures what a design that commits the requests of a batch together would pay.
    """
    writer: Any = getattr(agent.store, "_writer")  # noqa: B009 - the experiment reaches in
    connection = writer._connection or writer._connect()
    writer._connection = connection
    pending = [0]
    shipped = writer.submit

    def submit(action: Any) -> Any:
        if pending[0] == 0:
            connection.execute("BEGIN IMMEDIATE")
        result = action(connection)
        pending[0] += 1
        if pending[0] == size:
            connection.execute("COMMIT")
            pending[0] = 0
        return result

    writer.submit = submit
    try:
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run(agent, requests(count, first_counter), peer)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        if pending[0]:
            connection.execute("COMMIT")
        writer.submit = shipped
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall / count * 1e3, cpu / count * 1e3


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    seconds: float = sum(
        entry[3]
        for (path, _line, function), entry in table.items()
        if path.endswith(suffix) and function == name
    )
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validations", type=int, default=4000)
    arguments = parser.parse_args()
    count = max(TOKENS, arguments.validations // TOKENS * TOKENS)
    directory = Path(tempfile.mkdtemp(prefix="otp-profile-"))
    with running_agent(
        directory / "agent",
        policy={"lock_threshold": 100, "hotp_lookahead": 10},
        sections={"audit": {"path": str(directory / "audit.log")}},
    ) as running:
        import_tokens(str(running.socket_path), 0, TOKENS)
        config_path = running.config_path
    agent = Agent(load_config(config_path))
    peer = Peer(pid=os.getpid(), uid=0, gid=0, groups=())
    try:
        run(agent, requests(TOKENS, 0), peer)  # warm-up: every token once
        rounds = count // TOKENS
        measured = requests(count, 1)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run(agent, measured, peer)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        profiler = cProfile.Profile()
        profiled = requests(count, 1 + rounds)
        profiler.enable()
        run(agent, profiled, peer)
        profiler.disable()
        batched = {
            size: batched_cost(agent, peer, count, 1 + (2 + index) * rounds, size)
            for index, size in enumerate(BATCHES)
        }
    finally:
        agent.close()
    user = (after.ru_utime - before.ru_utime) / count * 1e3
    system = (after.ru_stime - before.ru_stime) / count * 1e3
    print(
        f"# profile_agent: {platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
        f"{count} durable acceptances, {TOKENS} HOTP tokens, software keystore + SQLite, one thread"
    )
    print()
    print("| in-process, no profiler | per acceptance |")
    print("|---|---:|")
    print(f"| wall | {wall / count * 1e3:.3f} ms |")
    print(f"| CPU, user | {user:.3f} ms |")
    print(f"| CPU, system | {system:.3f} ms |")
    print(f"| CPU, total | {user + system:.3f} ms |")
    print(f"| one process's ceiling at this cost (1 core) | {1000 / (user + system):.0f} acceptances/s |")
    print()
    print("Experiment: the same acceptances with N of them per transaction (one COMMIT, one fsync):")
    print()
    print("| acceptances per transaction | wall ms per acceptance | CPU ms per acceptance |")
    print("|---:|---:|---:|")
    for size, (batch_wall, batch_cpu) in batched.items():
        print(f"| {size} | {batch_wall:.3f} | {batch_cpu:.3f} |")
    print()
    stats = pstats.Stats(profiler)
    whole = cumulative(stats, *WHOLE)
    print("| layer (cProfile, profiler overhead included) | µs per acceptance | share |")
    print("|---|---:|---:|")
    accounted = 0.0
    for label, suffix, name in LAYERS:
        seconds = cumulative(stats, suffix, name)
        accounted += seconds
        print(f"| {label} | {seconds / count * 1e6:.1f} | {seconds / whole:.0%} |")
    rest = whole - accounted
    print(
        f"| the rest: request parsing, dispatch, per-user lock, reply | {rest / count * 1e6:.1f} | {rest / whole:.0%} |"
    )
    print(f"| **Dispatcher.handle, whole** | **{whole / count * 1e6:.1f}** | 100% |")
    print()
    print("Top functions by own time (profiler overhead included):")
    print()
    print("| function | calls per acceptance | own µs per acceptance |")
    print("|---|---:|---:|")
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:15]
    for (path, line, function), entry in top:
        where = f"{Path(path).name}:{line}" if line else "built-in"
        print(f"| `{function}` ({where}) | {entry[1] / count:.1f} | {entry[2] / count * 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
