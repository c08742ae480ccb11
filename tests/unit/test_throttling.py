"""Throttling rules: what counts as a failure, decay instead of reset, disabling after locks.

Each test drives the real validation engine over a real SQLite store and every key backend,
with a fake clock.
"""

from __future__ import annotations

import json
from pathlib import Path

from otp_agent.audit import AuditLog
from otp_agent.config import PolicyConfig
from otp_agent.oath import TokenType
from otp_agent.validation import Validator
from tests.unit.test_validation import CONTEXT, SECRET, add_token, code, step


def audit_events(audit: AuditLog, tmp_path: Path) -> list[dict[str, object]]:
    audit.flush()
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def test_replays_are_rejected_but_never_lock(setup, store, key_backend, clock) -> None:
    """Ten parallel logins with one code (ssh + scp, Ansible): one acceptance, nine replays, no
    failure counted, so the user is not locked out."""
    add_token(store, key_backend, "T1")
    validator = setup(lock_threshold=5)
    current = code(step(clock))
    decisions = [validator.validate("alice", current, CONTEXT) for _ in range(10)]
    assert [d.reason for d in decisions] == ["accepted"] + ["replay"] * 9
    after = store.get("T1")
    assert (after.failures, after.lock_count, after.locked_until) == (0, 0, 0)
    assert validator.validate("alice", code(step(clock, 1)), CONTEXT).accepted


def test_wrong_passwords_never_touch_the_tokens_lock(store, key_backend, audit, clock) -> None:
    """su VICTIM with junk, many times: the victim's token counts nothing and is not locked."""
    add_token(store, key_backend, "T1")
    validator = Validator(
        store,
        key_backend,
        PolicyConfig(lock_threshold=5),
        audit,
        clock=clock,
        password_checker=lambda user, password: password == "hunter2",
    )
    for attempt in range(12):
        junk = "wrong" + str(attempt) + code(step(clock))
        assert validator.validate_password_and_code("alice", junk, CONTEXT).reason == "bad_password_or_code"
    after = store.get("T1")
    assert (after.failures, after.lock_count, after.locked_until) == (0, 0, 0)
    assert validator.validate_password_and_code("alice", "hunter2" + code(step(clock)), CONTEXT).accepted
    # A right password with a wrong code is a guess at the code, and counts.
    validator.validate_password_and_code("alice", "hunter2" + "000000", CONTEXT)
    assert store.get("T1").failures == 1


def test_a_success_does_not_wipe_failures_they_decay_with_time(setup, store, key_backend, clock) -> None:
    """Guesses between the real user's logins add up; one failure is forgiven per decay period."""
    add_token(store, key_backend, "T1")
    validator = setup(lock_threshold=5, failure_decay_seconds=3600)
    for _ in range(3):
        validator.validate("alice", "000000", CONTEXT)
    assert validator.validate("alice", code(step(clock)), CONTEXT).accepted
    assert store.get("T1").failures == 3
    clock.advance(2 * 3600 + 10)
    validator.validate("alice", "000000", CONTEXT)
    assert store.get("T1").failures == 2  # 3 - 2 forgiven + 1


def test_lock_level_survives_success_and_unlock_and_decays(setup, store, key_backend, clock) -> None:
    """The lock ladder is not reset by the real user's success nor by an unlock; it decays."""
    from otp_agent.administration import Administration

    add_token(store, key_backend, "T1")
    validator = setup(
        lock_threshold=2,
        lock_base_seconds=60,
        lock_max_seconds=10**6,
        lock_decay_seconds=86400,
        disable_after_locks=0,
    )
    admin = Administration(store, key_backend, validator.audit, clock=clock)
    for level, seconds in ((1, 60), (2, 120), (3, 240)):
        validator.validate("alice", "000000", CONTEXT)
        validator.validate("alice", "000000", CONTEXT)
        token = store.get("T1")
        assert (token.lock_count, token.locked_until) == (level, clock() + seconds)
        clock.advance(seconds + 1)
        assert validator.validate("alice", code(step(clock)), CONTEXT).accepted
        clock.advance(30)
    validator.validate("alice", "000000", CONTEXT)
    validator.validate("alice", "000000", CONTEXT)
    assert store.get("T1").lock_count == 4
    admin.unlock("alice", CONTEXT)
    unlocked = store.get("T1")
    assert unlocked.locked_until <= clock() and unlocked.lock_count == 4
    assert validator.validate("alice", code(step(clock)), CONTEXT).accepted
    clock.advance(2 * 86400 + 5)  # two levels forgiven
    validator.validate("alice", "000000", CONTEXT)
    validator.validate("alice", "000000", CONTEXT)
    token = store.get("T1")
    assert (token.lock_count, token.locked_until) == (3, clock() + 240)


def test_repeated_locks_disable_the_token_until_an_administrator_acts(
    setup, store, key_backend, clock, audit, tmp_path
) -> None:
    """At disable_after_locks the token is disabled (audited); re-enabled, it is disabled again
    by its very next failure (no new set of guesses); only time brings the level down."""
    from otp_agent.administration import Administration

    add_token(store, key_backend, "T1")
    validator = setup(lock_threshold=2, lock_base_seconds=10, lock_max_seconds=100, disable_after_locks=3)
    admin = Administration(store, key_backend, audit, clock=clock)
    for _ in range(3):
        for _ in range(2):
            validator.validate("alice", "000000", CONTEXT)
        clock.advance(101)
    assert store.get("T1").enabled is False
    assert validator.validate("alice", code(step(clock)), CONTEXT).reason == "disabled"
    events = audit_events(audit, tmp_path)
    assert [e["event"] for e in events if e["event"] in ("lock", "disable")] == ["lock", "lock", "disable"]
    disable = next(e for e in events if e["event"] == "disable")
    assert (disable["serial"], disable["reason"], disable["level"]) == ("T1", "repeated_locks", 3)
    admin.set_enabled("T1", True, CONTEXT)
    assert validator.validate("alice", code(step(clock)), CONTEXT).accepted
    validator.validate("alice", "000000", CONTEXT)
    assert store.get("T1").enabled is False


def test_real_users_typos_do_not_lock(setup, store, key_backend, clock) -> None:
    """A user who mistypes once or twice before each daily login for a month is never locked."""
    add_token(store, key_backend, "T1")
    validator = setup()
    for day in range(30):
        for _ in range(day % 3):
            assert validator.validate("alice", "000000", CONTEXT).reason == "bad_code"
        assert validator.validate("alice", code(step(clock)), CONTEXT).accepted, day
        clock.advance(86400)
    token = store.get("T1")
    assert (token.lock_count, token.enabled) == (0, True)


def test_a_code_equal_to_the_last_accepted_one_is_a_replay(setup, store, key_backend) -> None:
    """HOTP counters 2386 and 2394 of the RFC 4226 secret share the code 709847: submitted twice,
    it must be accepted once (as 2386), then refused as a replay (not accepted as 2394)."""
    assert code(2386) == code(2394) == "709847"
    add_token(store, key_backend, "H1", token_type=TokenType.HOTP, secret=SECRET, counter=2386)
    validator = setup(hotp_lookahead=10)
    first = validator.validate("alice", "709847", CONTEXT)
    assert (first.accepted, store.get("H1").counter) == (True, 2387)
    again = validator.validate("alice", "709847", CONTEXT)
    assert (again.accepted, again.reason) == (False, "replay")
    assert store.get("H1").counter == 2387
    assert validator.validate("alice", code(2387), CONTEXT).accepted


def test_defaults_the_security_figures_are_computed_from() -> None:
    """The shipped defaults that docs/security.md computes its figures from."""
    policy = PolicyConfig()
    assert (
        policy.lock_threshold,
        policy.failure_decay_seconds,
        policy.lock_decay_seconds,
        policy.disable_after_locks,
        policy.lock_max_seconds,
    ) == (5, 86400, 7 * 86400, 10, 3600)


def test_parallel_guesses_cannot_outrun_the_lock(store, key_backend, audit, clock) -> None:
    """Sixteen wrong codes at the same moment: only lock_threshold of them are compared (the
    user's attempts are decided one at a time), the rest are refused as locked."""
    import threading

    add_token(store, key_backend, "T1")
    validator = Validator(store, key_backend, PolicyConfig(lock_threshold=5), audit, clock=clock)
    barrier = threading.Barrier(16)
    reasons: list[str] = []

    def guess(index: int) -> None:
        barrier.wait()
        reasons.append(validator.validate("alice", f"{index:06d}", CONTEXT).reason)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reasons.count("bad_code") == 5 and reasons.count("locked") == 11, reasons
