"""HSM economy: LQ commands per accepted validation and latency, per window strategy, in one run.

Prints one Markdown table: for ``policy.window_strategy`` = ``likely_first`` (the default) and
``whole_window`` (the baseline: the whole window in one pipelined batch), for TOTP (window ±1)
and HOTP (look-ahead 10) tokens, with phones in sync and with phones one step (TOTP) or three
counters (HOTP) ahead, the LQ commands the simulator received per accepted validation and the
validation latency p50/p99 through the real engine (Validator, SQLite store, payShield backend
over TLS), with the simulator adding 1 ms per command (an HSM on the LAN).  The simulator runs
in threads of this process (its request counters are the figures).

Usage: .venv/bin/python bench/bench_window.py [--tokens N] [--latency SECONDS]
"""

from __future__ import annotations

import argparse
import hmac
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from otp_agent.audit import AuditLog, RequestContext
from otp_agent.config import PolicyConfig
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.oath import HashAlgorithm, TokenType, format_code
from otp_agent.payshield_sim.testing import running_simulator
from otp_agent.sensitive import Secret
from otp_agent.store import Token
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.validation import Validator

CONTEXT = RequestContext(0, 0, "bench")


class _Clock:
    """The agent's clock, moved by the benchmark between two logins of a token."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _code(secret: bytes, moving: int) -> str:
    return format_code(hmac.new(secret, moving.to_bytes(8, "big"), "sha1").digest(), 6)


def _tokens(keys: PayShieldKeyBackend, kind: TokenType, count: int) -> list[tuple[Token, bytes]]:
    made: list[tuple[Token, bytes]] = []
    for index in range(count):
        serial, secret = f"{kind.value.upper()}{index:05d}", os.urandom(20)
        token = Token(
            serial=serial,
            token_type=kind,
            algorithm=HashAlgorithm.SHA1,
            digits=6,
            period=30,
            t0=0,
            sealed=keys.seal_secret(TokenIdentity(serial, HashAlgorithm.SHA1), Secret(secret)),
            fingerprint=keys.fingerprint(Secret(secret)),
            user=f"u-{serial}",
            created=1.0,
        )
        made.append((replace(token, binding=keys.binding_tag(token.binding_message())), secret))
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.001)
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="otp-bench-window-") as directory, running_simulator() as sim:
        keys = PayShieldKeyBackend(sim.config())
        try:
            sim.set(latency=arguments.latency)
            for strategy in ("likely_first", "whole_window"):
                for kind in (TokenType.TOTP, TokenType.HOTP):
                    for phones in ("in sync", "ahead"):
                        path = Path(directory) / f"{strategy}-{kind.value}-{phones.replace(' ', '-')}.db"
                        store = SQLiteStore(path, create=True)
                        audit = AuditLog(None)
                        made = _tokens(keys, kind, arguments.tokens)
                        store.add_tokens([token for token, _secret in made])
                        clock = _Clock()
                        validator = Validator(
                            store, keys, PolicyConfig(window_strategy=strategy), audit, clock=clock
                        )
                        latencies: list[float] = []
                        before = sim.request_count("LQ")
                        accepted = 0
                        for token, secret in made:
                            for attempt in range(2):  # two logins per token, 30 s apart: the second has a tag
                                if kind is TokenType.TOTP:
                                    # The agent's clock moves a step between the two logins; a phone
                                    # "ahead" shows the next step's code.
                                    step = int(clock.now) // 30 + attempt
                                    moving = step + (1 if phones == "ahead" else 0)
                                else:
                                    stored = store.get(token.serial)
                                    assert stored is not None
                                    current = stored.counter
                                    moving = current + (3 if phones == "ahead" else 0)
                                start = time.perf_counter()
                                base = clock.now
                                clock.now = base + 30 * attempt
                                decision = validator.validate(
                                    token.user or "", _code(secret, moving), CONTEXT
                                )
                                clock.now = base
                                latencies.append(time.perf_counter() - start)
                                accepted += decision.accepted
                        lq = sim.request_count("LQ") - before
                        ordered = sorted(latencies)
                        rows.append(
                            (
                                strategy,
                                kind.value,
                                phones,
                                accepted,
                                len(latencies),
                                lq / max(accepted, 1),
                                statistics.median(latencies) * 1000,
                                ordered[int(0.99 * (len(ordered) - 1))] * 1000,
                            )
                        )
                        audit.close()
                        store.close()
        finally:
            keys.close()
    print(
        f"# bench_window: {platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"simulator latency {arguments.latency * 1000:g} ms/command over TLS, {arguments.tokens} tokens x 2 logins"
    )
    print("| strategy | type | phones | accepted | validations | LQ per acceptance | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for strategy, kind, phones, accepted, total, per, p50, p99 in rows:
        print(
            f"| {strategy} | {kind} | {phones} | {accepted} | {total} | {per:.2f} | {p50:.2f} | {p99:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
