"""Self-service: what users may do for their own account, by policy, with no administrator.

Owns the rules of ``policy.self_enroll`` and ``policy.self_service`` and the life of a pending
token: a self-enrolled token lets nobody in (and counts as enrolled, so the roll-out stack asks
its user for a code) until its owner confirms it with a current code; one not confirmed within
``policy.pending_lifetime`` is removed by :class:`PendingSweeper`.  The user is always the one
the kernel says the peer is (SO_PEERCRED, resolved by the dispatcher): a request can never name
somebody else.  Every action, and every refusal by policy, is audited.

The trust decision of ``"first"``: whoever holds the first factor of a user who has no token
(the SSH key, the password) may enroll one for that user.  It suits a roll-out where accounts
are fresh; see docs/operations.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from otp_agent.administration import Administration
from otp_agent.audit import RequestContext
from otp_agent.backup import DEFAULT_COUNT
from otp_agent.config import PolicyConfig
from otp_agent.errors import NotFound, OtpAgentError, PermissionDenied
from otp_agent.oath import OathParams, TokenType
from otp_agent.validation import Decision, Validator

_log = logging.getLogger(__name__)
#: How often pending tokens past their lifetime are looked for, at most.
SWEEP_SECONDS = 30.0


class SelfService:
    """A user's own enrollment, confirmation, token list and backup codes."""

    def __init__(
        self,
        admin: Administration,
        validator: Validator,
        policy: PolicyConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.admin, self.validator, self.policy, self.clock = admin, validator, policy, clock
        self.audit = admin.audit

    def _refuse(self, action: str, user: str, why: str, context: RequestContext) -> PermissionDenied:
        self.audit.record(action, context, user=user, result="refused", reason="policy")
        return PermissionDenied(why)

    def enroll(self, user: str, params: OathParams, issuer: str, context: RequestContext) -> dict[str, Any]:
        """Enroll a pending token for ``user`` (the peer itself), if the policy allows it.

        A new self-enrollment replaces the user's pending one.

        :raises PermissionDenied: the policy forbids it (exit status 1).
        """
        if self.policy.self_enroll == "never":
            raise self._refuse(
                "self_enroll",
                user,
                "self-enrollment is not allowed here (policy.self_enroll = never)",
                context,
            )
        if params.token_type is TokenType.OOB:
            raise self._refuse(
                "self_enroll", user, "out-of-band tokens are enrolled by an administrator", context
            )
        tokens = self.validator.live_tokens(user)
        if self.policy.self_enroll == "first" and any(not t.pending for t in tokens):
            raise self._refuse(
                "self_enroll",
                user,
                f"{user} already has a token: only an administrator may add another "
                '(policy.self_enroll = "first")',
                context,
            )
        for stale in (t for t in tokens if t.pending):
            try:
                self.admin.store.remove(stale.serial)
            except NotFound:
                continue
            self.audit.record("self_enroll", context, user=user, serial=stale.serial, result="replaced")
        pending_until = self.clock() + self.policy.pending_lifetime
        return self.admin.enroll(user, params, issuer, context, pending_until=pending_until)

    def confirm(self, user: str | None, serial: str, code: str, context: RequestContext) -> Decision:
        """Confirm a pending token with a current code (``user`` None: an administrator)."""
        return self.validator.confirm(serial, code, context, owner=user)

    def tokens(self, user: str, context: RequestContext) -> list[dict[str, Any]]:
        """The user's own tokens (``policy.self_service``)."""
        self._require_self_service("list", user, context)
        return [t.public() for t in self.validator.live_tokens(user)]

    def backup_codes(self, user: str, count: int, context: RequestContext) -> list[str]:
        """Fresh backup codes for the user's own account (``policy.self_service``)."""
        self._require_self_service("backup_codes", user, context)
        return self.admin.create_backup_codes(user, count, context)

    def _require_self_service(self, action: str, user: str, context: RequestContext) -> None:
        if not self.policy.self_service:
            raise self._refuse(
                action, user, "self-service is not enabled here (policy.self_service)", context
            )


class PendingSweeper:
    """A thread that removes pending tokens whose confirmation time is up (audited), and the
    remembered hosts whose time is up."""

    def __init__(self, admin: Administration, interval: float = SWEEP_SECONDS) -> None:
        self.admin, self.interval = admin, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pending-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    def sweep(self) -> list[str]:
        """Remove the expired pending tokens (and remembered hosts) now; never raises."""
        try:
            self.admin.store.forget_expired(self.admin.clock())
            return self.admin.expire_pending(RequestContext(0, 0, "otp-agent"))
        except OtpAgentError as exc:
            _log.warning("expired pending tokens could not be removed (will try again): %s", exc)
            return []

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


__all__ = ["DEFAULT_COUNT", "PendingSweeper", "SelfService"]
