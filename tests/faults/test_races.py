"""Races on one code: every round, 8 real processes submit the same code at once; exactly one
is accepted, the others are refused as replays.

Three settings: raw socket clients (forked processes released by one barrier) on SQLite; the real
PAM helper (pam_helper/__main__.py under /usr/bin/python3 -I -S, the answer on standard input, as
pam_exec runs it), released together once all 8 wait on their standard input; and two agents
sharing one PostgreSQL database, 4 clients on each (two hosts of a fleet).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from otp_agent.testing import RunningAgent, running_agent
from tests.conftest import require
from tests.faults.conftest import Figures
from tests.faults.support import clients, count, hotp_code, open_directory, outcome, wait_until
from tests.pam.support import HELPER_SOURCE, SYSTEM_PYTHON

PROCESSES = 8
HELPER_TIMEOUT = 30
POLICY = {"hotp_lookahead": 10}


class Tally:
    """Outcomes of race rounds: how many rounds had exactly one acceptance, none, or several."""

    def __init__(self) -> None:
        self.rounds = 0
        self.single = 0
        self.double = 0
        self.none = 0
        self.others: Counter[str] = Counter()
        self.first_bad: list[object] = []

    def add(self, round_number: int, outcomes: list[tuple[str, str]]) -> None:
        self.rounds += 1
        accepted = sum(1 for result, _ in outcomes if result == "accept")
        if accepted == 1:
            self.single += 1
        elif accepted == 0:
            self.none += 1
        else:
            self.double += 1
        for result, reason in outcomes:
            if result != "accept" and (result, reason) != ("reject", "replay"):
                self.others[f"{result}:{reason}"] += 1
        if (
            accepted != 1 or any(r != "accept" and (r, why) != ("reject", "replay") for r, why in outcomes)
        ) and len(self.first_bad) < 5:
            self.first_bad.append((round_number, outcomes))

    def line(self, what: str) -> str:
        others = ", ".join(f"{k} {v}" for k, v in sorted(self.others.items())) or "none"
        return (
            f"races {what}: {self.rounds} rounds x {PROCESSES} processes: {self.single} single "
            f"acceptances, {self.double} double, {self.none} none; refusals other than replay: {others}"
        )

    def check(self) -> None:
        assert self.single == self.rounds and not self.others, self.first_bad


def _raw_race(agents: list[RunningAgent], uri: str, rounds: int, user: str = "alice") -> Tally:
    tally = Tally()
    with clients(PROCESSES) as pool:
        for round_number in range(rounds):
            code = hotp_code(uri, round_number)
            jobs = [
                (
                    "request",
                    (
                        str(agents[i % len(agents)].socket_path),
                        "validate",
                        {"user": user, "code": code},
                        30.0,
                    ),
                )
                for i in range(PROCESSES)
            ]
            replies = pool.race(jobs)
            tally.add(
                round_number,
                [outcome(r) if "exception" not in r else ("exception", r["exception"]) for r in replies],
            )
    return tally


def test_raw_clients_race_on_sqlite(figures: Figures) -> None:
    rounds = count(150, 10_000)
    with open_directory() as directory, running_agent(directory / "agent", policy=POLICY) as agent:
        _serial, uri = agent.enroll("alice", "--type", "hotp")
        started = time.monotonic()
        tally = _raw_race([agent], uri, rounds)
        elapsed = time.monotonic() - started
        figures.report(tally.line("raw socket clients, SQLite") + f" ({elapsed:.1f} s)")
        tally.check()
        assert agent.process.poll() is None


def _helper(socket_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    environment = {
        b"PAM_TYPE": b"auth",
        b"PAM_SERVICE": b"sshd",
        b"PAM_RHOST": b"127.0.0.1",
        b"PAM_USER": b"alice",
    }
    return subprocess.Popen(
        [
            SYSTEM_PYTHON,
            "-I",
            "-S",
            str(HELPER_SOURCE),
            "--socket",
            str(socket_path),
            "--syslog-socket",
            str(log_path),
            # Room for 8 interpreters starting on a loaded machine before the answer is written
            # (the default 5 s budget starts at the helper's start, as under pam_exec).
            "--timeout",
            str(HELPER_TIMEOUT),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
        cwd="/",
    )


def _waiting_on_stdin(process: subprocess.Popen[bytes]) -> bool:
    """True once the helper sits in pselect6/select on its standard input (it has started)."""
    try:
        return Path(f"/proc/{process.pid}/syscall").read_text().split()[0] in ("23", "270")
    except (OSError, IndexError):
        return False


def _pam_round(socket_path: Path, log_path: Path, code: bytes) -> tuple[list[int], float]:
    """Start 8 helpers, wait until all sit on their standard input, give them the code at once;
    their exit statuses and how long the slowest took to be ready."""
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        started = time.monotonic()
        helpers = [_helper(socket_path, log_path) for _ in range(PROCESSES)]
        deadline = started + HELPER_TIMEOUT / 2
        while not all(_waiting_on_stdin(h) for h in helpers) and time.monotonic() < deadline:
            time.sleep(0.002)
        ready = time.monotonic() - started
        for helper in helpers:  # All 8 are blocked on stdin: release them together.
            assert helper.stdin is not None
            try:
                helper.stdin.write(code)
            except BrokenPipeError:  # it has exited already: its status tells why
                pass
        for helper in helpers:
            assert helper.stdin is not None
            try:
                helper.stdin.close()
            except BrokenPipeError:
                pass
        return [h.wait(timeout=HELPER_TIMEOUT + 30) for h in helpers], ready
    finally:
        for helper in helpers:
            if helper.poll() is None:
                helper.kill()
                helper.wait(10)
            if helper.stdin is not None and not helper.stdin.closed:
                try:
                    helper.stdin.close()
                except BrokenPipeError:
                    pass


def test_pam_helpers_race(figures: Figures) -> None:
    require(os.path.exists(SYSTEM_PYTHON), f"{SYSTEM_PYTHON} (Debian's python3) runs the PAM helper")
    rounds = count(12, 1_000)
    exits = {0: ("accept", "accepted"), 1: ("reject", "replay")}
    with open_directory() as directory, running_agent(directory / "agent", policy=POLICY) as agent:
        _serial, uri = agent.enroll("alice", "--type", "hotp")
        tally = Tally()
        started = time.monotonic()
        slowest = 0.0
        for round_number in range(rounds):
            statuses, ready = _pam_round(
                agent.socket_path, directory / "no-syslog", hotp_code(uri, round_number).encode()
            )
            slowest = max(slowest, ready)
            # The helper says only accept (0) or not (1); a reason other than replay cannot be told
            # apart here, so exit 1 counts as a replay and any other exit is reported as such.
            tally.add(round_number, [exits.get(s, ("exit", str(s))) for s in statuses])
        elapsed = time.monotonic() - started
        figures.report(
            tally.line("PAM helper processes, SQLite")
            + f" ({elapsed:.1f} s; slowest start of 8 helpers {slowest:.2f} s)"
        )
        tally.check()
        # The helper's exit 1 hides the reason: the agent's audit log (written in batches) tells
        # that every refusal of the race was a replay.
        audit = directory / "agent" / "audit.log"
        wait_until(lambda: len(_validations(audit)) >= rounds * PROCESSES, 10)
        reasons = Counter(event.get("reason") for event in _validations(audit))
        figures.report(f"races PAM helper processes, audit log: {dict(sorted(reasons.items()))}")
        assert reasons == {"accepted": rounds, "replay": rounds * (PROCESSES - 1)}, reasons


def _validations(audit: Path) -> list[dict[str, object]]:
    text = audit.read_text(encoding="utf-8")
    events = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return [e for e in events if e.get("event") == "validate"]


def test_two_agents_race_on_postgresql(figures: Figures) -> None:
    from tests.postgresql.support import fresh_database

    rounds = count(40, 3_000)
    with fresh_database() as dsn, open_directory() as directory, ExitStack() as stack:
        sections = {"store": {"backend": "postgresql", "dsn": dsn}}
        first = stack.enter_context(running_agent(directory / "a", policy=POLICY, sections=sections))
        second = stack.enter_context(
            running_agent(
                directory / "b",
                policy=POLICY,
                sections={**sections, "keystore": {"master_key_file": str(first.directory / "master.key")}},
            )
        )
        _serial, uri = first.enroll("alice", "--type", "hotp")
        started = time.monotonic()
        tally = _raw_race([first, second], uri, rounds)
        elapsed = time.monotonic() - started
        figures.report(tally.line("two agents sharing PostgreSQL, 4 clients each") + f" ({elapsed:.1f} s)")
        tally.check()
