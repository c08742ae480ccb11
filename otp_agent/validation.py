"""The validation engine: decisions on codes, backup codes and confirmations, and throttling.

It knows the store and the key backend only through their Protocols, and the window maths
through :mod:`otp_agent.matching`.  Every decision is made on a fresh read of the token and
committed with the store's compare-and-set *before* it is returned, so of two submissions of the
same code exactly one can be accepted.  Wrong codes are counted in the same way and turn into
locks by the rules of :mod:`otp_agent.throttle`; replays and wrong passwords are not counted.
Before a token is used, its binding tag (owner and parameters, under the key backend) is checked.
Backup codes (:mod:`otp_agent.backup`) are answered at the same prompt, need no HSM, and are
the way back in past a lock.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from otp_agent import backup
from otp_agent.alerts import ReplayBursts
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.backup import BackupCodes, BackupUse
from otp_agent.config import PolicyConfig
from otp_agent.errors import (
    KeyBackendError,
    KeyBackendUnavailable,
    NotFound,
    SealedSecretInvalid,
    StoreError,
    UsageError,
)
from otp_agent.keyedlock import KeyedLocks
from otp_agent.keystore import KeyBackend
from otp_agent.matching import Match, find_match, resync_state, success_state
from otp_agent.oath import TokenType
from otp_agent.remember import RememberedHosts
from otp_agent.store import Token, TokenState, TokenStore
from otp_agent.store.models import BACKUP_GENERATED, BACKUP_SCRATCH
from otp_agent.throttle import FailureOutcome, failure_outcome, is_locked
from otp_agent.wire import Reason, Result, ValidateReply

_log = logging.getLogger(__name__)
_CODE = re.compile(r"[0-9]{6}|[0-9]{8}")
_CAS_ATTEMPTS = 16
#: How long an attempt waits for the same user's attempt in flight before it is refused (busy).
USER_WAIT_SECONDS = 5.0

#: Decisions that are alerts by themselves (every other decision is "info").
_DECISION_SEVERITY = {
    Reason.SEALED_SECRET_INVALID: "error",
    Reason.KEYSTORE_UNAVAILABLE: "warning",
    Reason.STORE_UNAVAILABLE: "warning",
    Reason.ACCOUNT_LOOKUP: "warning",
}

#: Checks a user's password through PAM: (user, password) -> bool.
PasswordChecker = Callable[[str, str], bool]


@dataclass(frozen=True)
class Decision:
    """The outcome of one validation."""

    accepted: bool
    reason: Reason
    serial: str | None = None
    #: A backup code was tried: how many unused ones the user has left (audited, not sent).
    remaining: int | None = None
    #: ``locked``: whole seconds until the earliest lock ends (``pam-helper --tell-user``).
    retry_after: int | None = None

    def wire(self) -> ValidateReply:
        """The decision as the protocol's reply type."""
        return ValidateReply(
            Result.ACCEPT if self.accepted else Result.REJECT, self.reason, self.serial, self.retry_after
        )

    def reply(self) -> dict[str, Any]:
        """The reply fields sent to the client."""
        return self.wire().fields()


def _retry_after(locked: Sequence[Token], now: float) -> int:
    """Whole seconds until the earliest of these locks ends (at least 1)."""
    return max(1, math.ceil(min(t.locked_until for t in locked) - now))


def is_valid_code(code: object) -> bool:
    """True for a string of exactly 6 or 8 ASCII digits."""
    return isinstance(code, str) and _CODE.fullmatch(code) is not None


class Validator:
    """Validates codes for users against their tokens."""

    def __init__(
        self,
        store: TokenStore,
        keys: KeyBackend,
        policy: PolicyConfig,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
        password_checker: PasswordChecker | None = None,
    ) -> None:
        self.store, self.keys, self.policy, self.audit = store, keys, policy, audit
        self.clock = clock
        self.password_checker = password_checker
        self.backup = BackupCodes(store, keys, clock=clock)
        self.remembered = RememberedHosts(store, keys, policy, audit, clock=clock)
        self._replays = ReplayBursts()
        self._user_locks = KeyedLocks()

    # -- public entry points ---------------------------------------------------------------

    def validate(self, user: str, code: str, context: RequestContext) -> Decision:
        """Validate ``code`` for ``user`` and commit the outcome; audit it."""
        decision = self._one_at_a_time(user, lambda: self._validate_code(user, code, context))
        self._after_decision(decision, user, context)
        return decision

    def validate_password_and_code(self, user: str, answer: str, context: RequestContext) -> Decision:
        """Validate a password immediately followed by a code; never tell which part failed."""
        decision = self._one_at_a_time(user, lambda: self._password_and_code(user, answer, context))
        self._after_decision(decision, user, context, mode="password+code")
        return decision

    def verify_password(self, user: str, password: str, context: RequestContext) -> Decision:
        """Check the user's password alone (the first step of a RADIUS challenge); audit it.

        The same Linux-PAM service and the same per-user serialisation as password+code mode;
        a wrong password never touches the tokens (password guessing is pam_unix's and
        pam_faillock's business), and the refusal is the one password+code gives.
        """

        def check() -> Decision:
            if self.password_checker is None:
                raise UsageError("password checks are not available on this agent")
            if password and self.password_checker(user, password):
                return Decision(True, Reason.ACCEPTED)
            return Decision(False, Reason.BAD_PASSWORD_OR_CODE)

        decision = self._one_at_a_time(user, check)
        self.audit.record(
            "verify_password",
            context,
            user=user,
            result="accept" if decision.accepted else "reject",
            reason=decision.reason,
        )
        return decision

    def _after_decision(
        self, decision: Decision, user: str, context: RequestContext, **extra: object
    ) -> None:
        """Remember the host after an acceptance, forget the user's after a refusal; audit, with
        the severity an alert needs, and a ``replay_burst`` event when replays pile up."""
        if decision.accepted and decision.reason is not Reason.NOT_ENROLLED:
            self.remembered.after_acceptance(user, context)
        elif not decision.accepted and decision.reason not in (Reason.BUSY, Reason.AUDIT_UNAVAILABLE):
            self.remembered.forget(user, context, f"refused:{decision.reason.value}")
        if decision.reason in _DECISION_SEVERITY:
            extra["severity"] = _DECISION_SEVERITY[decision.reason]
        if decision.remaining is not None:
            extra["backup_codes_remaining"] = decision.remaining
        self.audit.record(
            "validate",
            context,
            user=user,
            serial=decision.serial,
            result="accept" if decision.accepted else "reject",
            reason=decision.reason,
            **extra,
        )
        if decision.reason is Reason.REPLAY and (count := self._replays.replayed(user)) is not None:
            self.audit.record(
                "replay_burst",
                context,
                user=user,
                result="alert",
                reason="replays",
                count=count,
                seconds=int(self._replays.window),
            )

    def is_enrolled(self, user: str) -> bool:
        """True when the user has a token (enabled or not, pending or not) or a backup code.

        The same test as the ``unenrolled`` policy in :meth:`validate`: a disabled token blocks
        its user (reason ``disabled``), it does not make them unenrolled, which the roll-out PAM
        stack (``pam-helper --not-enrolled``) would turn into a login without the code.
        """
        return bool(self.live_tokens(user)) or self.backup.remaining(user) > 0

    def live_tokens(self, user: str) -> list[Token]:
        """The user's tokens, leaving out pending ones whose time is up (removed soon after)."""
        now = self.clock()
        return [
            t for t in self.store.tokens_for_user(user) if t.pending_until is None or t.pending_until > now
        ]

    def confirm(self, serial: str, code: str, context: RequestContext, *, owner: str | None) -> Decision:
        """Confirm a pending token with a current code (consumed); audit it.

        The token's normal window applies and a wrong code counts toward its lock.  ``owner``
        is the peer's own user (None for an administrator, who may confirm any token).

        :raises NotFound: no pending token with this serial (for this owner), or it expired.
        """
        token = self.store.get(serial)
        now = self.clock()
        if token is None or (owner is not None and token.user != owner) or token.user is None:
            raise NotFound(f"no token {serial} of yours")
        if token.pending_until is None:
            raise NotFound(f"token {serial} is not waiting for a confirmation")
        if token.pending_until <= now:
            raise NotFound(f"token {serial} was not confirmed in time; enroll again")
        user = token.user
        decision = self._one_at_a_time(user, lambda: self._confirm(serial, code, context))
        self.audit.record(
            "confirm",
            context,
            user=user,
            serial=serial,
            result="accept" if decision.accepted else "reject",
            reason=decision.reason,
        )
        return decision

    def _confirm(self, serial: str, code: str, context: RequestContext) -> Decision:
        if not is_valid_code(code):
            return Decision(False, Reason.MALFORMED, serial)
        for _attempt in range(_CAS_ATTEMPTS):
            token = self.store.get(serial)
            now = self.clock()
            if token is None or token.pending_until is None or token.pending_until <= now:
                return Decision(False, Reason.NO_TOKEN, serial)
            if is_locked(token, now):
                return Decision(False, Reason.LOCKED, serial, retry_after=_retry_after([token], now))
            if token.digits != len(code):
                self._record_failures([token], context)
                return Decision(False, Reason.BAD_CODE, serial)
            self.check_binding(token)
            match = self._match(token, code, now)
            if match.factor is None:
                if not match.replay:
                    self._record_failures([token], context)
                return Decision(False, Reason.REPLAY if match.replay else Reason.BAD_CODE, serial)
            state = replace(self._success_state(token, match, code), pending_until=None)
            if self.store.compare_and_set(token.serial, token.version, state):
                return Decision(True, Reason.ACCEPTED, serial)
        raise StoreError("too many concurrent changes to this token; try again")

    def resync(self, user: str, code1: str, code2: str, context: RequestContext) -> str:
        """Resynchronise a token of ``user`` from two consecutive codes; return its serial.

        :raises NotFound: no token of the user produced these two codes in the resync window.
        """
        if not (is_valid_code(code1) and is_valid_code(code2)):
            raise UsageError("codes must be 6 or 8 digits")
        for _attempt in range(_CAS_ATTEMPTS):
            for token in self._usable(user):
                if token.token_type is TokenType.OOB:
                    continue  # only counters actually sent are accepted: nothing to resynchronise
                if token.digits != len(code1) or len(code1) != len(code2):
                    continue
                self.check_binding(token)
                state = resync_state(token, code1, code2, self.clock(), self.policy, self._hmacs_of(token))
                if state is None:
                    continue
                if self.store.compare_and_set(token.serial, token.version, state):
                    self.audit.record(
                        "resync",
                        context,
                        user=user,
                        serial=token.serial,
                        result="accept",
                        reason="resynchronised",
                    )
                    return token.serial
                break
            else:
                self.audit.record("resync", context, user=user, result="reject", reason="no_match")
                raise NotFound(f"no token of {user} produced these two consecutive codes")
        raise StoreError("too many concurrent changes to this token; try again")

    # -- internals -------------------------------------------------------------------------

    def _one_at_a_time(self, user: str, action: Callable[[], Decision]) -> Decision:
        """Decide the user's attempts in turn, so parallel guesses cannot all pass the lock check."""
        with self._user_locks.hold(user, USER_WAIT_SECONDS) as holding:
            if not holding:
                _log.warning("validation for %r refused: too many attempts in flight", user[:64])
                return Decision(False, Reason.BUSY)
            return self._guarded(action)

    def _guarded(self, action: Callable[[], Decision]) -> Decision:
        if self.audit.on_failure == "reject" and self.audit.failing:
            return Decision(False, Reason.AUDIT_UNAVAILABLE)
        try:
            return action()
        except (KeyBackendError, StoreError) as exc:
            _log.error("validation failed closed: %s", exc)
            return Decision(False, Reason(exc.code))

    def _usable(self, user: str, tokens: Sequence[Token] | None = None) -> list[Token]:
        now = self.clock()
        return [
            t for t in (self.store.tokens_for_user(user) if tokens is None else tokens) if t.usable_at(now)
        ]

    def _validate_code(self, user: str, code: str, context: RequestContext) -> Decision:
        backup_code = backup.normalise(code)
        if backup_code is not None:
            return self._validate_backup_code(user, backup_code, context)
        if not is_valid_code(code):
            return Decision(False, Reason.MALFORMED)
        for _attempt in range(_CAS_ATTEMPTS):
            tokens = self.live_tokens(user)
            if not tokens:
                if self.policy.unenrolled == "allow" and not self.backup.remaining(user):
                    return Decision(True, Reason.NOT_ENROLLED)
                return Decision(False, Reason.NO_TOKEN)
            usable = self._usable(user, tokens)
            if not usable:
                return Decision(False, Reason.PENDING if all(t.pending for t in tokens) else Reason.DISABLED)
            now = self.clock()
            unlocked = [t for t in usable if not is_locked(t, now)]
            if not unlocked:
                return Decision(False, Reason.LOCKED, usable[0].serial, retry_after=_retry_after(usable, now))
            candidates = [t for t in unlocked if t.digits == len(code)]
            try:
                for token in candidates:
                    self.check_binding(token)
                matches = [(t, self._match(t, code, now)) for t in candidates]
            except KeyBackendUnavailable:
                # The break-glass path: an imported scratch code needs no HSM.
                scratch = self._scratch_code(user, code, tokens)
                if scratch is None:
                    raise
                return scratch
            hit = next(((t, m) for t, m in matches if m.factor is not None), None)
            if hit is not None:
                token, match = hit
                if self.store.compare_and_set(
                    token.serial, token.version, self._success_state(token, match, code)
                ):
                    return Decision(True, Reason.ACCEPTED, token.serial)
                continue  # Someone else changed the token: decide again on fresh state.
            if not any(m.replay for _t, m in matches):
                scratch = self._scratch_code(user, code, tokens)
                if scratch is not None:
                    return scratch
            # A replay tells a guesser nothing and is not counted (parallel logins with one
            # code must not lock their user); every other token of the user counts a failure.
            replayed = [t for t, m in matches if m.replay]
            expired = any(m.expired for _t, m in matches)
            self._record_failures([t for t in unlocked if t not in replayed], context)
            reason = Reason.REPLAY if replayed else Reason.EXPIRED if expired else Reason.BAD_CODE
            return Decision(False, reason, unlocked[0].serial if len(unlocked) == 1 else None)
        raise StoreError("too many concurrent changes to this user's tokens")

    def _validate_backup_code(self, user: str, code: str, context: RequestContext) -> Decision:
        """A generated backup code: accepted even while the user's tokens are locked.

        It is the way back in; its 45 bits need no lock to resist guessing.  A wrong one still
        counts toward the lock of the user's tokens; explicitly disabled tokens still block.
        """
        tokens = self.live_tokens(user)
        usable = self._usable(user, tokens)
        if tokens and not usable and any(not t.enabled for t in tokens):
            return Decision(False, Reason.DISABLED)
        use = self.backup.use(user, code, BACKUP_GENERATED)
        if use.accepted or use.replay:
            return self._backup_decision(use, tokens)
        now = self.clock()
        unlocked = [t for t in usable if not is_locked(t, now)]
        if usable and not unlocked:
            return Decision(
                False,
                Reason.LOCKED,
                usable[0].serial,
                remaining=use.remaining,
                retry_after=_retry_after(usable, now),
            )
        self._record_failures(unlocked, context)
        return Decision(False, Reason.BAD_CODE, remaining=use.remaining)

    def _scratch_code(self, user: str, code: str, tokens: Sequence[Token]) -> Decision | None:
        """An imported 8-digit scratch code, tried after the user's tokens (None: not one).

        Unlike a generated code it is never tried while the tokens are locked: 8 digits are
        only 27 bits, and the lock is what keeps them from being guessed.
        """
        now = self.clock()
        if not backup.is_scratch_code(code) or not any(
            not is_locked(t, now) for t in self._usable(user, tokens)
        ):
            return None
        use = self.backup.use(user, code, BACKUP_SCRATCH)
        return self._backup_decision(use, tokens) if use.accepted or use.replay else None

    def _backup_decision(self, use: BackupUse, tokens: Sequence[Token]) -> Decision:
        if not use.accepted:
            return Decision(False, Reason.REPLAY, remaining=use.remaining)
        # The way back in: the user's tokens lose their failures and running lock (the lock
        # level decays as usual, as with otpctl unlock).
        now = self.clock()
        for token in tokens:
            if token.failures or token.locked_until > now:
                self.store.reset_throttling(token.serial, now)
        return Decision(True, Reason.BACKUP_CODE, remaining=use.remaining)

    def check_binding(self, token: Token) -> None:
        """Refuse a token whose owner or parameters do not match the key backend's tag.

        :raises SealedSecretInvalid: the row was changed (or created) by someone who can write
            the store but does not hold the key backend.
        """
        expected = self.keys.binding_tag(token.binding_message())
        if token.binding is None or not hmac.compare_digest(expected, token.binding):
            raise SealedSecretInvalid(
                f"token {token.serial} failed its binding check: its owner or parameters were "
                "changed outside otp-agent; refusing it (see docs/security.md)"
            )

    def _password_and_code(self, user: str, answer: str, context: RequestContext) -> Decision:
        if self.password_checker is None:
            raise UsageError("password-and-code mode is not available on this agent")
        tokens = self._usable(user)
        lengths = {t.digits for t in tokens} | ({8} if self.backup.has_scratch_codes(user) else set())
        splits = [(answer[:-digits], answer[-digits:]) for digits in sorted(lengths or {6})]
        for password, code in splits + backup.split_password_and_code(answer):
            if not password or not (is_valid_code(code) or backup.normalise(code) is not None):
                continue
            if self.password_checker(user, password):
                decision = self._validate_code(user, code, context)
                if decision.accepted:
                    return decision
                # No serial: a wrong password has none, and the refusals must not differ.
                return Decision(False, Reason.BAD_PASSWORD_OR_CODE)
        # A wrong password never touches the tokens: password guessing is pam_unix's and
        # pam_faillock's business, and counting it here would let any local user lock anyone
        # out (su VICTIM with junk).  The stacks' pam_faildelay evens out the timing.
        return Decision(False, Reason.BAD_PASSWORD_OR_CODE)

    def _match(self, token: Token, code: str, now: float) -> Match:
        return find_match(token, code, now, self.policy, self._hmacs_of(token), self._replay_tag(token))

    def _replay_tag(self, token: Token) -> Callable[[str], bytes]:
        """The tag a token keeps of its last accepted code: the key backend's, on the host."""

        def tag(code: str) -> bytes:
            return self.keys.binding_tag(
                b"otp-agent/last-code/v1\x1f" + token.serial.encode() + b"\x1f" + code.encode()
            )

        return tag

    def _success_state(self, token: Token, match: Match, code: str) -> TokenState:
        return success_state(token, match, self.policy, self._replay_tag(token)(code))

    def _hmacs_of(self, token: Token) -> Callable[[Sequence[bytes]], list[bytes]]:
        """The token's HMAC function, computed by the key backend (a batch per call)."""

        def hmacs(messages: Sequence[bytes]) -> list[bytes]:
            return self.keys.compute_hmacs(token.identity, token.sealed, messages)

        return hmacs

    def _record_failures(self, tokens: Sequence[Token], context: RequestContext) -> None:
        for token in tokens:
            current: Token | None = token
            for _attempt in range(_CAS_ATTEMPTS):
                if current is None:
                    break
                outcome = failure_outcome(current, self.policy, self.clock())
                if self.store.compare_and_set(current.serial, current.version, outcome.state):
                    self._report_lock(current, outcome, context)
                    break
                current = self.store.get(current.serial)
            else:
                _log.error(
                    "token %s: a failure could not be recorded after %d concurrent changes",
                    token.serial,
                    _CAS_ATTEMPTS,
                )

    def _report_lock(self, token: Token, outcome: FailureOutcome, context: RequestContext) -> None:
        if outcome.event == "locked":
            _log.warning(
                "token %s locked for %d s (lock level %d)", token.serial, outcome.lock_seconds, outcome.level
            )
            self.audit.record(
                "lock",
                context,
                user=token.user,
                serial=token.serial,
                result="locked",
                reason="too_many_failures",
                seconds=outcome.lock_seconds,
                level=outcome.level,
            )
        elif outcome.event == "disabled":
            _log.warning(
                "token %s disabled after %d locks: an administrator must re-enable it (otpctl enable)",
                token.serial,
                outcome.level,
            )
            self.audit.record(
                "disable",
                context,
                user=token.user,
                serial=token.serial,
                result="disabled",
                reason="repeated_locks",
                level=outcome.level,
            )
