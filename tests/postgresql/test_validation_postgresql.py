"""The validation engine (software key backend) on PostgreSQL: windows, replay, throttling, races.

Several :class:`Validator` instances, each on its own :class:`PostgreSQLStore`, stand for the
hosts of a fleet: a code accepted by one is a replay for all of them.
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otp_agent.audit import AuditLog, RequestContext
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.software import SoftwareKeyBackend, create_master_key
from otp_agent.oath import HashAlgorithm, TokenType, format_code, time_step
from otp_agent.sensitive import Secret
from otp_agent.store import Token
from otp_agent.store.postgresql import PostgreSQLStore
from otp_agent.validation import Validator
from tests.conftest import FakeClock, make_validator

SECRET = b"12345678901234567890"
CONTEXT = RequestContext(peer_uid=0, peer_pid=1, service="test")


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[SoftwareKeyBackend]:
    create_master_key(tmp_path / "master.key")
    backend = SoftwareKeyBackend(tmp_path / "master.key")
    yield backend
    backend.close()


def add_token(
    store: PostgreSQLStore,
    keys: SoftwareKeyBackend,
    serial: str,
    *,
    token_type: TokenType = TokenType.TOTP,
    **fields: Any,
) -> Token:
    identity = TokenIdentity(serial, HashAlgorithm.SHA1)
    token = Token(
        serial=serial,
        token_type=token_type,
        algorithm=HashAlgorithm.SHA1,
        digits=6,
        period=30,
        t0=0,
        sealed=keys.seal_secret(identity, Secret(SECRET)),
        fingerprint=keys.fingerprint(Secret(SECRET)),
        user="alice",
        created=1.0,
        **fields,
    )
    token = dataclasses.replace(token, binding=keys.binding_tag(token.binding_message()))
    store.add_tokens([token])
    return token


def code(moving: int) -> str:
    return format_code(hmac.new(SECRET, moving.to_bytes(8, "big"), "sha1").digest(), 6)


def test_totp_accepted_once_then_replay(
    pg_store: PostgreSQLStore, keys: SoftwareKeyBackend, audit: AuditLog
) -> None:
    """A current TOTP code is accepted once; again, or an older step, is refused."""
    clock = FakeClock()
    add_token(pg_store, keys, "T1")
    validator = make_validator(pg_store, keys, audit, clock)
    now = time_step(clock(), 30)
    first = validator.validate("alice", code(now), CONTEXT)
    assert (first.accepted, first.reason, first.serial) == (True, "accepted", "T1")
    again = validator.validate("alice", code(now), CONTEXT)
    assert (again.accepted, again.reason) == (False, "replay")
    assert not validator.validate("alice", code(now - 2), CONTEXT).accepted
    assert pg_store.get("T1").last_step == now  # type: ignore[union-attr]


def test_hotp_lookahead_counter_and_resync(
    pg_store: PostgreSQLStore, keys: SoftwareKeyBackend, audit: AuditLog
) -> None:
    """HOTP look-ahead moves the counter past the code; two consecutive codes resynchronise."""
    add_token(pg_store, keys, "H1", token_type=TokenType.HOTP)
    validator = make_validator(pg_store, keys, audit, FakeClock(), hotp_lookahead=3)
    assert not validator.validate("alice", code(4), CONTEXT).accepted
    assert validator.validate("alice", code(3), CONTEXT).accepted
    assert pg_store.get("H1").counter == 4  # type: ignore[union-attr]
    assert validator.validate("alice", code(3), CONTEXT).reason == "replay"
    assert validator.resync("alice", code(20), code(21), CONTEXT) == "H1"
    assert pg_store.get("H1").counter == 22  # type: ignore[union-attr]
    assert validator.validate("alice", code(22), CONTEXT).accepted


def test_failures_lock_the_token_and_the_level_outlives_success(
    pg_store: PostgreSQLStore, keys: SoftwareKeyBackend, audit: AuditLog
) -> None:
    """Failures lock the token; after the lock a success is accepted and the lock level stays
    (it decays with time rather than resetting on success)."""
    clock = FakeClock()
    add_token(pg_store, keys, "T1")
    validator = make_validator(pg_store, keys, audit, clock, lock_threshold=3, lock_base_seconds=60)
    for _ in range(3):
        assert validator.validate("alice", "000000", CONTEXT).reason == "bad_code"
    locked = pg_store.get("T1")
    assert locked is not None and locked.locked_until > clock() and locked.lock_count == 1
    assert validator.validate("alice", code(time_step(clock(), 30)), CONTEXT).reason == "locked"
    clock.advance(61)
    assert validator.validate("alice", code(time_step(clock(), 30)), CONTEXT).accepted
    after = pg_store.get("T1")
    assert after is not None and (after.failures, after.lock_count) == (0, 1)


def test_one_code_raced_by_validators_on_separate_pools(
    pg_store: PostgreSQLStore, pg_dsn: str, keys: SoftwareKeyBackend, audit: AuditLog
) -> None:
    """Four "hosts" (a store each), 16 threads, 5 rounds of one HOTP code: one acceptance each."""
    add_token(pg_store, keys, "H1", token_type=TokenType.HOTP)
    stores = [pg_store] + [PostgreSQLStore(pg_dsn) for _ in range(3)]
    validators: list[Validator] = [
        make_validator(s, keys, audit, FakeClock(), lock_threshold=100) for s in stores
    ]
    try:
        for counter in range(5):
            barrier = threading.Barrier(16)
            reasons: list[str] = []

            def submit(validator: Validator, submitted: str = code(counter)) -> None:
                barrier.wait()
                reasons.append(validator.validate("alice", submitted, CONTEXT).reason)

            threads = [threading.Thread(target=submit, args=(validators[i % 4],)) for i in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert reasons.count("accepted") == 1, (counter, reasons)
            assert set(reasons) <= {"accepted", "replay"}, reasons
    finally:
        for store in stores[1:]:
            store.close()
