"""bench/bench_bruteforce.py counts what the real engine evaluated (tiny horizons, no timing).

The bounds are computed from the policy (the lock ladder), not copied from a run.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from otp_agent.config import PolicyConfig
from otp_agent.oath import TokenType
from otp_agent.throttle import lock_seconds

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_bruteforce.py"


@pytest.fixture(scope="module")
def bruteforce() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_bruteforce", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_bruteforce"] = module
    spec.loader.exec_module(module)
    return module


def locks_within(seconds: float, policy: PolicyConfig, burst: float) -> int:
    """Locks a greedy attacker completes in ``seconds`` from a reset ladder (no reset meanwhile):
    each costs a burst of lock_threshold guesses and then the lock itself."""
    spent, level = 0.0, 0
    while True:
        cost = burst + lock_seconds(level + 1, policy)
        if spent + cost > seconds:
            return level
        spent, level = spent + cost, level + 1


def test_old_policy_greedy_day_is_the_ladder_then_five_per_hour(
    bruteforce: ModuleType, tmp_path: Path
) -> None:
    old = bruteforce.POLICIES["old"]
    result = bruteforce.simulate_attack(
        old, TokenType.TOTP, "greedy", False, 1, directory=tmp_path, record_times=True
    )
    burst = (old.lock_threshold - 1) * bruteforce.GUESS_SECONDS
    # Every lock was bought with exactly lock_threshold evaluated guesses; the last burst may be
    # unfinished when the day ends.
    assert result.locks * old.lock_threshold <= result.guesses < (result.locks + 1) * old.lock_threshold
    # The user's 09:00 login (the moment the running lock ends) resets the ladder once: at least
    # the locks of one uninterrupted day, at most those of the two stretches either side of it.
    lower = locks_within(bruteforce.DAY, old, burst)
    before = bruteforce.USER_LOGIN + old.lock_max_seconds
    upper = (
        locks_within(before, old, burst)
        + locks_within(bruteforce.DAY - bruteforce.USER_LOGIN, old, burst)
        + 2
    )
    assert lower * old.lock_threshold <= result.guesses <= upper * old.lock_threshold
    assert result.user_logins == 1 and result.refused == 0
    # After the ladder tops out (from 12:00 on, in this run): lock_threshold guesses per lock_max_seconds.
    afternoon = [t for t in result.guess_times if t >= bruteforce.START + 12 * 3600]
    hours = 12 * 3600 / old.lock_max_seconds
    assert abs(len(afternoon) - old.lock_threshold * hours) <= old.lock_threshold
    # P(year) comes from the count: w = 3 fresh steps each (the attacker waits for a full window).
    assert result.mean_fresh == 3
    expected = -math.expm1(result.guesses * math.log1p(-3 / 10**6) * 365)
    assert result.p_year() == pytest.approx(expected)
    assert result.p_year(exact=False) == pytest.approx(expected)


def test_new_policy_greedy_is_disabled_after_its_budget(bruteforce: ModuleType, tmp_path: Path) -> None:
    old = bruteforce.simulate_attack(
        bruteforce.POLICIES["old"], TokenType.HOTP, "greedy", False, 1, directory=tmp_path
    )
    policy = bruteforce.POLICIES["new (defaults)"]
    new = bruteforce.simulate_attack(policy, TokenType.HOTP, "greedy", False, 1, directory=tmp_path)
    assert new.guesses == policy.lock_threshold * policy.disable_after_locks
    assert (new.disables, new.locks) == (1, policy.disable_after_locks)
    assert new.ended and new.scale == 1.0  # the attack ended: nothing is scaled up
    assert new.guesses < old.guesses
    assert new.mean_fresh == policy.hotp_lookahead + 1
    # Disabled before the first 09:00; then each morning's re-enabling buys one guess (the
    # level is still at disable_after_locks, so the next failure disables again).
    again = bruteforce.simulate_attack(policy, TokenType.HOTP, "greedy", True, 3, directory=tmp_path)
    assert (again.reenables, again.disables) == (3, 4)
    assert again.guesses == new.guesses + 3
    # The administrator acts at 09:00 just before the user, who gets in before the attacker.
    assert (again.user_logins, again.user_lost) == (3, 0)


def test_patient_attacker_never_locks(bruteforce: ModuleType, tmp_path: Path) -> None:
    old_policy, new_policy = bruteforce.POLICIES["old"], bruteforce.POLICIES["new (defaults)"]
    old = bruteforce.simulate_attack(old_policy, TokenType.TOTP, "patient", False, 3, directory=tmp_path)
    # lock_threshold - 1 before the first login, and again after each of the 3 logins.
    assert (old.locks, old.user_logins) == (0, 3)
    assert old.guesses == (old_policy.lock_threshold - 1) * 4
    new = bruteforce.simulate_attack(new_policy, TokenType.TOTP, "patient", False, 3, directory=tmp_path)
    # lock_threshold - 1 at once, then one per failure_decay_seconds.
    assert new.locks == 0
    assert new.guesses == new_policy.lock_threshold - 1 + 2


def test_real_users_without_typos_never_wait(bruteforce: ModuleType, tmp_path: Path) -> None:
    for name, policy in bruteforce.POLICIES.items():
        clean = bruteforce.simulate_population(policy, 0.0, 3, 4, 1, policy_name=name, directory=tmp_path)
        assert (clean.logins, clean.typos, clean.locks, clean.locked_wait) == (12, 0, 0, 0.0)
    sloppy = bruteforce.simulate_population(bruteforce.POLICIES["old"], 0.5, 3, 4, 1, directory=tmp_path)
    assert sloppy.logins == 12 and sloppy.typos > 0
