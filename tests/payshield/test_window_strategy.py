"""HSM economy: the LQ commands one validation costs, counted at the simulator, per strategy.

``likely_first`` (the default) asks the HSM for the most likely factor alone and the rest of
the window only when it does not match; ``whole_window`` asks for the whole window at once.
Both must decide the same: window edges, replays (the last accepted code, older steps), drift.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from otp_agent.audit import AuditLog, RequestContext
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.oath import HashAlgorithm, TokenType, format_code
from otp_agent.payshield_sim.testing import RunningSimulator
from otp_agent.sensitive import Secret
from otp_agent.store import Token
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.validation import Decision
from otp_agent.wire import Reason
from tests.conftest import FakeClock, make_validator

SECRET = b"12345678901234567890"
CONTEXT = RequestContext(0, 0, "test")


def code(moving: int) -> str:
    return format_code(hmac.new(SECRET, moving.to_bytes(8, "big"), "sha1").digest(), 6)


World = tuple[SQLiteStore, PayShieldKeyBackend, AuditLog, RunningSimulator]


@pytest.fixture
def world(sim: RunningSimulator, backend: PayShieldKeyBackend, tmp_path: Path) -> Iterator[World]:
    store = SQLiteStore(tmp_path / "tokens.db", create=True)
    audit = AuditLog(tmp_path / "audit.log")
    yield store, backend, audit, sim
    audit.close()
    store.close()


def _add(store: SQLiteStore, keys: PayShieldKeyBackend, token_type: TokenType, **fields: object) -> None:
    token = Token(
        serial="S1",
        token_type=token_type,
        algorithm=HashAlgorithm.SHA1,
        digits=6,
        period=30,
        t0=0,
        sealed=keys.seal_secret(TokenIdentity("S1", HashAlgorithm.SHA1), Secret(SECRET)),
        fingerprint=keys.fingerprint(Secret(SECRET)),
        user="alice",
        created=1.0,
        **fields,  # type: ignore[arg-type]
    )
    store.add_tokens([replace(token, binding=keys.binding_tag(token.binding_message()))])


def _lq(sim: RunningSimulator, action: Callable[[], Decision]) -> tuple[Decision, int]:
    before = sim.request_count("LQ")
    result = action()
    return result, sim.request_count("LQ") - before


@pytest.mark.parametrize("strategy", ["likely_first", "whole_window"])
def test_totp_costs_and_decisions(world: World, strategy: str) -> None:
    store, keys, audit, sim = world
    clock = FakeClock(1_800_000_000.0)
    _add(store, keys, TokenType.TOTP)
    validator = make_validator(store, keys, audit, clock, window_strategy=strategy)
    step = int(clock()) // 30
    in_sync = 1 if strategy == "likely_first" else 3
    first, cost = _lq(sim, lambda: validator.validate("alice", code(step), CONTEXT))
    assert first.accepted and cost == in_sync
    again, cost = _lq(sim, lambda: validator.validate("alice", code(step), CONTEXT))
    assert again.reason is Reason.REPLAY and cost == 3  # the current step is used: the whole window
    clock.advance(30)
    late, cost = _lq(sim, lambda: validator.validate("alice", code(step), CONTEXT))  # an older step
    assert late.reason is Reason.REPLAY
    clock.advance(30)
    ahead, cost = _lq(sim, lambda: validator.validate("alice", code(step + 3), CONTEXT))  # the window's edge
    assert ahead.accepted and cost == 4  # window of 3 + the last used step
    token = store.get("S1")
    assert token is not None and token.drift == 1


@pytest.mark.parametrize("strategy", ["likely_first", "whole_window"])
def test_hotp_costs_and_decisions(world: World, strategy: str) -> None:
    store, keys, audit, sim = world
    clock = FakeClock(1_800_000_000.0)
    _add(store, keys, TokenType.HOTP)
    validator = make_validator(store, keys, audit, clock, window_strategy=strategy)
    in_sync = 1 if strategy == "likely_first" else 11
    for counter in range(3):
        submitted = code(counter)
        decision, cost = _lq(sim, lambda: validator.validate("alice", submitted, CONTEXT))  # noqa: B023
        assert decision.accepted and cost == (
            in_sync if counter == 0 else (1 if strategy == "likely_first" else 12)
        )
    replayed, _cost = _lq(sim, lambda: validator.validate("alice", code(2), CONTEXT))
    assert replayed.reason is Reason.REPLAY
    skipped, cost = _lq(sim, lambda: validator.validate("alice", code(7), CONTEXT))  # counters 3-6 unused
    assert skipped.accepted and cost == 12
    token = store.get("S1")
    assert token is not None and token.counter == 8
    wrong, _cost = _lq(sim, lambda: validator.validate("alice", "000000", CONTEXT))
    assert wrong.reason is Reason.BAD_CODE


def test_a_token_without_the_tag_checks_the_whole_window(world: World) -> None:
    """A token that accepted codes before the tag existed (an upgrade) is never fast-pathed."""
    store, keys, audit, sim = world
    clock = FakeClock(1_800_000_000.0)
    _add(store, keys, TokenType.HOTP, counter=5)
    validator = make_validator(store, keys, audit, clock)
    replayed, cost = _lq(sim, lambda: validator.validate("alice", code(4), CONTEXT))
    assert replayed.reason is Reason.REPLAY and cost == 12
    accepted, cost = _lq(sim, lambda: validator.validate("alice", code(5), CONTEXT))
    assert accepted.accepted and cost == 12
    following, cost = _lq(sim, lambda: validator.validate("alice", code(6), CONTEXT))
    assert following.accepted and cost == 1
