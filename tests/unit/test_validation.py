"""The validation engine over real stores and every key backend (fake clock only).

Runs unchanged against the software backend and the payShield backend (over the simulator).
"""

from __future__ import annotations

import dataclasses
import hmac
from pathlib import Path
from typing import Any

import pytest

from otp_agent.audit import RequestContext
from otp_agent.errors import NotFound
from otp_agent.keystore import KeyBackend, TokenIdentity
from otp_agent.oath import HashAlgorithm, TokenType, format_code, time_step
from otp_agent.sensitive import Secret
from otp_agent.store import Token
from otp_agent.store.sqlite import SQLiteStore
from tests.conftest import FakeClock

SECRET = b"12345678901234567890"
CONTEXT = RequestContext(peer_uid=0, peer_pid=1, service="test")


def add_token(
    store: SQLiteStore,
    keys: KeyBackend,
    serial: str,
    user: str | None = "alice",
    *,
    token_type: TokenType = TokenType.TOTP,
    secret: bytes = SECRET,
    algorithm: HashAlgorithm = HashAlgorithm.SHA1,
    digits: int = 6,
    **fields: Any,
) -> Token:
    identity = TokenIdentity(serial, algorithm)
    token = Token(
        serial=serial,
        token_type=token_type,
        algorithm=algorithm,
        digits=digits,
        period=30,
        t0=0,
        sealed=keys.seal_secret(identity, Secret(secret)),
        fingerprint=keys.fingerprint(Secret(secret)),
        user=user,
        created=1.0,
        **fields,
    )
    token = dataclasses.replace(token, binding=keys.binding_tag(token.binding_message()))
    store.add_tokens([token])
    return token


def code(moving: int, secret: bytes = SECRET, digits: int = 6, algorithm: str = "sha1") -> str:
    return format_code(hmac.new(secret, moving.to_bytes(8, "big"), algorithm).digest(), digits)


def step(clock: FakeClock, offset: int = 0) -> int:
    return time_step(clock(), 30) + offset


def test_totp_current_code_accepted_then_replay_rejected(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1")
    validator = setup()
    first = validator.validate("alice", code(step(clock)), CONTEXT)
    assert (first.accepted, first.reason, first.serial) == (True, "accepted", "T1")
    again = validator.validate("alice", code(step(clock)), CONTEXT)
    assert (again.accepted, again.reason) == (False, "replay")
    assert store.get("T1").last_step == step(clock)


@pytest.mark.parametrize("offset,accepted", [(-2, False), (-1, True), (1, True), (2, False)])
def test_totp_window(setup, store, key_backend, clock, offset: int, accepted: bool) -> None:
    add_token(store, key_backend, "T1")
    assert setup(totp_window=1).validate("alice", code(step(clock, offset)), CONTEXT).accepted is accepted


def test_totp_older_step_after_newer_is_replay(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1")
    validator = setup()
    assert validator.validate("alice", code(step(clock, 1)), CONTEXT).accepted
    late = validator.validate("alice", code(step(clock, 0)), CONTEXT)
    assert (late.accepted, late.reason) == (False, "replay")


def test_totp_drift_is_learned_and_bounded(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1")
    validator = setup(totp_window=1, totp_max_drift=2)
    for expected_drift in (1, 2, 2):
        target = step(clock, store.get("T1").drift + 1)
        decision = validator.validate("alice", code(target), CONTEXT)
        assert decision.accepted
        assert store.get("T1").drift == expected_drift
        clock.advance(30)
    # Drift stays at the bound although the code was 3 steps ahead.
    assert store.get("T1").drift == 2


def test_hotp_lookahead_and_counter_advance(setup, store, key_backend) -> None:
    add_token(store, key_backend, "H1", token_type=TokenType.HOTP)
    validator = setup(hotp_lookahead=3)
    assert not validator.validate("alice", code(4), CONTEXT).accepted
    assert validator.validate("alice", code(3), CONTEXT).accepted
    assert store.get("H1").counter == 4
    replay = validator.validate("alice", code(3), CONTEXT)
    assert (replay.accepted, replay.reason) == (False, "replay")
    assert not validator.validate("alice", code(1), CONTEXT).accepted
    assert validator.validate("alice", code(4), CONTEXT).accepted


def test_rfc4226_vectors_through_the_engine(setup, store, key_backend) -> None:
    """Counting through RFC 4226 Appendix D one by one, each accepted exactly once."""
    add_token(store, key_backend, "H1", token_type=TokenType.HOTP)
    validator = setup(hotp_lookahead=0)
    for expected in (
        "755224",
        "287082",
        "359152",
        "969429",
        "338314",
        "254676",
        "287922",
        "162583",
        "399871",
        "520489",
    ):
        assert validator.validate("alice", expected, CONTEXT).accepted


@pytest.mark.parametrize(
    "algorithm,secret,digits",
    [
        (HashAlgorithm.SHA256, b"12345678901234567890123456789012", 8),
        (HashAlgorithm.SHA512, b"1234567890123456789012345678901234567890123456789012345678901234", 8),
    ],
)
def test_sha2_tokens(setup, store, key_backend, clock, algorithm, secret, digits) -> None:
    add_token(store, key_backend, "S1", secret=secret, algorithm=algorithm, digits=digits)
    submitted = code(step(clock), secret, digits, algorithm.value)
    assert setup().validate("alice", submitted, CONTEXT).accepted


@pytest.mark.parametrize(
    "submitted", ["", "12345", "1234567", "123456789", "12345a", " 123456", "１２３４５６", "123456\n"]
)
def test_malformed_codes(setup, store, key_backend, submitted: str) -> None:
    add_token(store, key_backend, "T1")
    decision = setup().validate("alice", submitted, CONTEXT)
    assert (decision.accepted, decision.reason) == (False, "malformed")
    assert store.get("T1").failures == 0


def test_unknown_user_denied_by_default_and_allowed_by_rollout_policy(setup) -> None:
    assert setup().validate("nobody", "123456", CONTEXT).reason == "no_token"
    decision = setup(unenrolled="allow").validate("nobody", "123456", CONTEXT)
    assert (decision.accepted, decision.reason) == (True, "not_enrolled")


def test_disabled_and_expired_tokens(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1", enabled=False)
    assert setup().validate("alice", code(step(clock)), CONTEXT).reason == "disabled"
    add_token(store, key_backend, "T2", user="bob", secret=b"b" * 20, not_after=clock() - 1)
    assert setup().validate("bob", code(step(clock), b"b" * 20), CONTEXT).reason == "disabled"


def test_throttling_locks_with_growing_duration_and_success_resets_in_the_old_mode(
    setup, store, key_backend, clock
) -> None:
    """failure_decay_seconds = 0 keeps the first release's rule: success resets everything."""
    add_token(store, key_backend, "T1")
    validator = setup(
        lock_threshold=3,
        lock_base_seconds=60,
        lock_max_seconds=1000,
        failure_decay_seconds=0,
        disable_after_locks=0,
    )
    for _ in range(3):
        assert validator.validate("alice", "000000", CONTEXT).reason == "bad_code"
    locked = store.get("T1")
    assert locked.locked_until == clock() + 60 and locked.lock_count == 1
    # While locked even the right code is refused, and nothing is computed or consumed.
    assert validator.validate("alice", code(step(clock)), CONTEXT).reason == "locked"
    clock.advance(61)
    for _ in range(3):
        validator.validate("alice", "000000", CONTEXT)
    assert store.get("T1").locked_until == clock() + 120
    clock.advance(121)
    for _ in range(3 * 5):
        validator.validate("alice", "000000", CONTEXT)
        clock.advance(1001)
    assert store.get("T1").locked_until - clock() <= 1000
    clock.advance(1001)
    assert validator.validate("alice", code(step(clock)), CONTEXT).accepted
    reset = store.get("T1")
    assert (reset.failures, reset.lock_count, reset.locked_until) == (0, 0, 0)


def test_several_tokens_per_user(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1")
    add_token(store, key_backend, "H2", token_type=TokenType.HOTP, secret=b"h" * 20)
    validator = setup()
    decision = validator.validate("alice", code(0, b"h" * 20), CONTEXT)
    assert (decision.accepted, decision.serial) == (True, "H2")
    assert validator.validate("alice", code(step(clock)), CONTEXT).serial == "T1"
    assert store.get("T1").failures == 0


def test_hotp_resync_with_two_consecutive_codes(setup, store, key_backend) -> None:
    add_token(store, key_backend, "H1", token_type=TokenType.HOTP)
    validator = setup(hotp_lookahead=5, hotp_resync_window=100)
    assert not validator.validate("alice", code(50), CONTEXT).accepted
    assert validator.resync("alice", code(50), code(51), CONTEXT) == "H1"
    assert store.get("H1").counter == 52
    assert validator.validate("alice", code(52), CONTEXT).accepted
    with pytest.raises(NotFound):
        validator.resync("alice", code(60), code(62), CONTEXT)
    with pytest.raises(NotFound):
        validator.resync("alice", code(500), code(501), CONTEXT)


def test_totp_resync_sets_bounded_drift(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1")
    validator = setup(totp_window=1, totp_resync_window=10)
    assert not validator.validate("alice", code(step(clock, 6)), CONTEXT).accepted
    validator.resync("alice", code(step(clock, 6)), code(step(clock, 7)), CONTEXT)
    assert store.get("T1").drift == 7
    assert validator.validate("alice", code(step(clock, 8)), CONTEXT).accepted
    with pytest.raises(NotFound):
        validator.resync("alice", code(step(clock, 30)), code(step(clock, 31)), CONTEXT)


def test_password_and_code_never_says_which_part_failed(store, key_backend, audit, clock) -> None:
    add_token(store, key_backend, "T1")
    from otp_agent.config import PolicyConfig
    from otp_agent.validation import Validator

    validator = Validator(
        store,
        key_backend,
        PolicyConfig(),
        audit,
        clock=clock,
        password_checker=lambda user, password: password == "hunter2",
    )
    good = code(step(clock))
    wrong_password = validator.validate_password_and_code("alice", "hunter3" + good, CONTEXT)
    assert (wrong_password.accepted, wrong_password.reason) == (False, "bad_password_or_code")
    wrong_code = validator.validate_password_and_code("alice", "hunter2" + "000000", CONTEXT)
    assert wrong_code.reason == "bad_password_or_code"
    assert validator.validate_password_and_code("alice", "hunter2" + good, CONTEXT).accepted
    assert not validator.validate_password_and_code("alice", "hunter2" + good, CONTEXT).accepted


def test_audit_log_has_decisions_but_no_codes(
    setup, store, key_backend, clock, audit, tmp_path: Path
) -> None:
    add_token(store, key_backend, "T1")
    submitted = code(step(clock))
    setup().validate("alice", submitted, RequestContext(1000, 42, "sshd", "192.0.2.1", "ssh"))
    audit.flush()
    line = (tmp_path / "audit.log").read_text()
    for field in (
        '"user":"alice"',
        '"serial":"T1"',
        '"service":"sshd"',
        '"rhost":"192.0.2.1"',
        '"peer_uid":1000',
        '"result":"accept"',
        '"reason":"accepted"',
    ):
        assert field in line
    assert submitted not in line


def test_user_whose_tokens_are_all_disabled_is_still_enrolled(setup, store, key_backend, clock) -> None:
    """A disabled token blocks its user; it must not make them "not enrolled", which the
    roll-out PAM stack (pam-helper --not-enrolled) turns into a login without the code."""
    add_token(store, key_backend, "T1", enabled=False)
    validator = setup(unenrolled="allow")
    assert validator.validate("alice", code(step(clock)), CONTEXT).reason == "disabled"
    assert validator.is_enrolled("alice") is True
    assert validator.is_enrolled("nobody") is False


def test_password_and_code_refusals_are_identical_whichever_part_failed(
    store, key_backend, audit, clock
) -> None:
    """Not even the serial may tell a right password with a wrong code from a wrong password."""
    add_token(store, key_backend, "T1")
    from otp_agent.config import PolicyConfig
    from otp_agent.validation import Validator

    validator = Validator(
        store,
        key_backend,
        PolicyConfig(lock_threshold=100),
        audit,
        clock=clock,
        password_checker=lambda user, password: password == "hunter2",
    )
    good = code(step(clock))
    wrong_password = validator.validate_password_and_code("alice", "hunter3" + good, CONTEXT)
    wrong_code = validator.validate_password_and_code("alice", "hunter2" + "000000", CONTEXT)
    assert wrong_password.reply() == wrong_code.reply()
    assert wrong_password == wrong_code
