"""Throttling: how failed codes turn into locks, and how both are forgiven with time.

Pure functions over a token's state, the policy and the time; the validation engine commits what
they return with the store's compare-and-set.  The rules (docs/security.md has the figures):

* A *failure* is a wrong code.  A replay (a code already used) and a wrong password in
  password+code mode are not failures: the first tells a guesser nothing, the second belongs to
  pam_unix / pam_faillock, and counting either would let anyone lock anyone out.
* Failures **decay** rather than reset: one is forgiven per ``failure_decay_seconds`` without a
  new one, and a successful login does not wipe them, so an attacker cannot buy a fresh set of
  guesses with each of the real user's logins.
* ``lock_threshold`` counted failures lock the token for ``lock_base_seconds`` doubled per lock
  level, at most ``lock_max_seconds``.  The level decays by one per ``lock_decay_seconds``
  after the last lock ended; an administrator's unlock ends the lock, not the level.
* At ``disable_after_locks`` levels the token is disabled: an administrator re-enables it (an
  alert in the audit log), and a re-enabled token still at that level is disabled again by its
  next failure.
* ``failure_decay_seconds = 0`` restores the old rule (success resets failures and the level).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from otp_agent.config import PolicyConfig
from otp_agent.store import Token, TokenState

__all__ = [
    "FailureOutcome",
    "after_success",
    "decayed_failures",
    "decayed_lock_level",
    "failure_outcome",
    "is_locked",
]


@dataclass(frozen=True)
class FailureOutcome:
    """What one counted failure does to a token: its new state and what happened."""

    state: TokenState
    #: "counted", "locked" or "disabled".
    event: str
    lock_seconds: int = 0
    level: int = 0


def is_locked(token: Token, now: float) -> bool:
    """True while a lock of the token runs."""
    return token.locked_until > now


def decayed_failures(token: Token, policy: PolicyConfig, now: float) -> int:
    """The token's failure count after the forgiveness earned since it last changed."""
    if policy.failure_decay_seconds == 0 or token.failures == 0:
        return token.failures
    forgiven = int(max(0.0, now - token.failures_at) // policy.failure_decay_seconds)
    return max(0, token.failures - forgiven)


def decayed_lock_level(token: Token, policy: PolicyConfig, now: float) -> int:
    """The token's lock level after the forgiveness earned since its last lock ended."""
    if token.lock_count == 0 or policy.lock_decay_seconds == 0:
        return token.lock_count
    idle = max(0.0, now - token.locked_until)
    return max(0, token.lock_count - int(idle // policy.lock_decay_seconds))


def lock_seconds(level: int, policy: PolicyConfig) -> int:
    """How long a lock of this level (1 = first) lasts."""
    return int(min(policy.lock_base_seconds * 2 ** min(max(level, 1) - 1, 30), policy.lock_max_seconds))


def failure_outcome(token: Token, policy: PolicyConfig, now: float) -> FailureOutcome:
    """Count one failure: maybe lock the token, maybe disable it."""
    failures = decayed_failures(token, policy, now) + 1
    current = decayed_lock_level(token, policy, now)
    # A token re-enabled while still at the disabling level gets no new set of guesses: its
    # first failure disables it again.
    relapse = bool(policy.disable_after_locks) and current >= policy.disable_after_locks
    state = token.state
    if failures < policy.lock_threshold and not relapse:
        return FailureOutcome(replace(state, failures=failures, failures_at=now), "counted")
    level = current + 1
    duration = lock_seconds(level, policy)
    locked = replace(state, failures=0, failures_at=now, lock_count=level, locked_until=now + duration)
    if policy.disable_after_locks and level >= policy.disable_after_locks:
        return FailureOutcome(replace(locked, enabled=False), "disabled", duration, level)
    return FailureOutcome(locked, "locked", duration, level)


def after_success(state: TokenState, policy: PolicyConfig) -> TokenState:
    """Throttling after an acceptance: unchanged with decay, a full reset in the old mode."""
    if policy.failure_decay_seconds == 0:
        return replace(state, failures=0, lock_count=0, locked_until=0.0)
    return state
