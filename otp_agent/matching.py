"""Window maths over the OATH core: which moving factor a code matches, and the state after it.

Owns the rules of validation semantics that need no store: the HOTP look-ahead and the TOTP
window around the current step (after the token's learned drift), replay detection (a code equal
to one already used is a replay even when it also matches a later factor), the bounded drift an
acceptance teaches, and the two-consecutive-codes resynchronisation.  Pure: HMACs come only from
the function it is given (the key backend's), and nothing is written; the validation engine
commits what these functions return with the store's compare-and-set.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from otp_agent.config import PolicyConfig
from otp_agent.oath import TokenType, codes_for, match_code, time_step
from otp_agent.oath.params import MAX_COUNTER
from otp_agent.oob import match_sent_code
from otp_agent.store import Token, TokenState
from otp_agent.throttle import after_success

_log = logging.getLogger(__name__)

#: The token's HMAC function: a batch of messages in, their HMACs out (one key-backend call).
Hmacs = Callable[[Sequence[bytes]], list[bytes]]


@dataclass(frozen=True)
class Match:
    """What a code matched: a fresh moving factor, a replay, an expired sent code, or nothing."""

    factor: int | None = None
    replay: bool = False
    time_step: int = 0
    expired: bool = False


def _window(token: Token, now: float, policy: PolicyConfig) -> tuple[list[int], list[int], int, int]:
    """The factors to compare, those not used yet, the current time step, and the likely one."""
    if token.token_type is TokenType.HOTP:
        first = max(token.counter - 1, 0)
        # An accepted counter c is stored as c + 1, which must still fit: a token at the end
        # of its counter is refused, never wrapped.
        last = min(token.counter + policy.hotp_lookahead, MAX_COUNTER - 1)
        if token.counter > last:
            _log.warning("token %s has exhausted its counter; it can accept no code", token.serial)
        factors = list(range(first, last + 1))
        return factors, [f for f in factors if f >= token.counter], 0, token.counter
    current = time_step(now, token.period, token.t0)
    centre = current + token.drift
    window = policy.totp_window
    factors = [s for s in range(centre - window, centre + window + 1) if s >= 0]
    if token.last_step is not None and token.last_step not in factors:
        factors.insert(0, token.last_step)
    fresh = [s for s in factors if token.last_step is None or s > token.last_step]
    return factors, fresh, current, centre


def _nothing_used(token: Token) -> bool:
    """True when the token never accepted a code (there is no code to refuse as a replay)."""
    return token.last_step is None if token.token_type is TokenType.TOTP else token.counter == 0


def find_match(
    token: Token,
    code: str,
    now: float,
    policy: PolicyConfig,
    hmacs: Hmacs,
    replay_tag: Callable[[str], bytes] | None = None,
) -> Match:
    """Find the moving factor of ``code`` within the token's window (no writes).

    A code equal to one already used (the last accepted counter or step, or any step at or
    before it in the window) is a replay even when it also matches a later factor: two
    submissions of one code must never give two acceptances.

    ``policy.window_strategy = "likely_first"`` (with ``replay_tag``, the tag a token keeps of
    its last accepted code) asks the key backend for the most likely factor alone first (HOTP:
    the expected counter; TOTP: the current step after the learned drift): a phone in sync costs
    one HMAC (one payShield LQ) instead of the whole window, and the last accepted code is still
    refused, by its tag.  Only when that factor does not match is the rest of the window
    computed, as ``"whole_window"`` always does.
    """
    if token.token_type is TokenType.OOB:
        sent = match_sent_code(token, code, now, policy.oob_validity, hmacs)
        return Match(factor=sent.counter, replay=sent.replay, expired=sent.expired)
    if token.token_type is TokenType.TOTP and now < token.t0:
        return Match()
    factors, fresh, current, likely = _window(token, now, policy)
    codes: dict[int, str] = {}
    if (
        policy.window_strategy == "likely_first"
        and replay_tag is not None
        and likely in fresh
        and (token.last_code_tag is not None or _nothing_used(token))
    ):
        (codes[likely],) = codes_for(hmacs, [likely], token.digits)
        if match_code(code, [(likely, codes[likely])]) is not None:
            if token.last_code_tag is not None and hmac.compare_digest(replay_tag(code), token.last_code_tag):
                return Match(replay=True)
            return Match(factor=likely, time_step=current)
    rest = [f for f in factors if f not in codes]
    codes.update(zip(rest, codes_for(hmacs, rest, token.digits), strict=True))
    stale = [(f, codes[f]) for f in factors if f not in fresh]
    found = match_code(code, [(f, codes[f]) for f in fresh])
    if match_code(code, stale) is not None:
        return Match(replay=True)
    if found is not None:
        return Match(factor=found, time_step=current)
    return Match()


def success_state(
    token: Token, match: Match, policy: PolicyConfig, last_code_tag: bytes | None = None
) -> TokenState:
    """The token's state once ``match`` is accepted: the factor used, any drift learned, and the
    tag of the accepted code (for the replay check of ``likely_first``)."""
    assert match.factor is not None
    state = replace(after_success(token.state, policy), last_code_tag=last_code_tag)
    if token.token_type is TokenType.OOB:
        return replace(state, last_step=match.factor, last_code_tag=None)
    if token.token_type is TokenType.HOTP:
        return replace(state, counter=match.factor + 1)
    offset = match.factor - match.time_step
    bound = max(policy.totp_max_drift, abs(token.drift))
    return replace(state, last_step=match.factor, drift=offset if abs(offset) <= bound else token.drift)


def resync_state(
    token: Token, code1: str, code2: str, now: float, policy: PolicyConfig, hmacs: Hmacs
) -> TokenState | None:
    """The token's state after a resynchronisation by two consecutive codes, or None."""
    if token.token_type is TokenType.HOTP:
        factors = list(
            range(token.counter, min(token.counter + policy.hotp_resync_window + 2, MAX_COUNTER - 2))
        )
        current = 0
    else:
        current = time_step(now, token.period, token.t0)
        reach = policy.totp_resync_window
        factors = [
            s
            for s in range(current - reach, current + reach + 1)
            if s >= 0 and (token.last_step is None or s > token.last_step)
        ]
    codes = codes_for(hmacs, factors, token.digits)
    pairs = [
        (factors[i], codes[i] + codes[i + 1])
        for i in range(len(factors) - 1)
        if factors[i + 1] == factors[i] + 1
    ]
    found = match_code(code1 + code2, pairs)
    if found is None:
        return None
    # Two consecutive codes prove the token: its failures and any running lock end (the lock
    # level decays as usual).
    # The tag of the old last code is dropped: the next validation checks the whole window.
    reset = replace(
        token.state,
        failures=0,
        failures_at=now,
        locked_until=min(token.locked_until, now),
        last_code_tag=None,
    )
    if token.token_type is TokenType.HOTP:
        return replace(reset, counter=found + 2)
    return replace(reset, last_step=found + 1, drift=found + 1 - current)
