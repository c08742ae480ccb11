"""Remembered hosts: no code again from the same remote host, for a while (opt-in).

Owns ``policy.remember_seconds``: after an accepted code, the same user coming from the same
remote host through the same PAM service is let through without a code until that time has
passed.  The key lives in the store (a fleet shares it) and each row carries the key backend's
tag, so a store writer cannot remember a host of their own.  It is recorded only for requests of
uid 0 (the PAM stacks: sshd runs the helper as root, and sets the remote host from the
connection), never without a remote host (console, su, sudo), and any refusal for the user,
``otpctl unlock``, disabling or removing a token, and ``otpctl forget USER`` end all of the
user's remembered hosts.  Every let-through is audited (reason ``remembered``).

What it gives away is written in docs/security.md: for that time, whoever holds the user's first
factor and comes from that address (a NAT, a shared jump host) needs no second factor.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from otp_agent.audit import AuditLog, RequestContext
from otp_agent.config import PolicyConfig
from otp_agent.errors import OtpAgentError
from otp_agent.keystore import KeyBackend
from otp_agent.store import Remembered, TokenStore
from otp_agent.wire import Reason, Result

_log = logging.getLogger(__name__)
_MAX_KEY_PART = 256


class RememberedHosts:
    """The remembered hosts of users: recording, checking and forgetting them."""

    def __init__(
        self,
        store: TokenStore,
        keys: KeyBackend,
        policy: PolicyConfig,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.keys, self.policy, self.audit, self.clock = store, keys, policy, audit, clock

    @property
    def enabled(self) -> bool:
        """True when ``policy.remember_seconds`` is above 0."""
        return self.policy.remember_seconds > 0

    @staticmethod
    def _key(context: RequestContext) -> tuple[str, str] | None:
        if not context.rhost or not context.service:
            return None
        return context.rhost[:_MAX_KEY_PART], context.service[:_MAX_KEY_PART]

    def after_acceptance(self, user: str, context: RequestContext) -> None:
        """Remember the user's remote host and service after an accepted code (PAM, uid 0 only)."""
        key = self._key(context)
        if not self.enabled or key is None or context.peer_uid != 0:
            return
        entry = Remembered(user, *key, until=self.clock() + self.policy.remember_seconds)
        try:
            self.store.remember(replace(entry, binding=self.keys.binding_tag(entry.binding_message())))
        except OtpAgentError as exc:  # the login stands; only the convenience is lost
            _log.warning("could not remember %s's host: %s", user[:64], exc)

    def check(self, user: str, context: RequestContext) -> bool:
        """True when this user, remote host and service are remembered now; audited when so."""
        key = self._key(context)
        if not self.enabled or key is None:
            return False
        entry = self.store.remembered(user, *key)
        if entry is None or entry.until <= self.clock():
            return False
        expected = self.keys.binding_tag(replace(entry, binding=b"").binding_message())
        if not hmac.compare_digest(expected, entry.binding):
            _log.error(
                "a remembered host of %s failed its binding check (written outside otp-agent)", user[:64]
            )
            return False
        self.audit.record(
            "validate",
            context,
            user=user,
            result=Result.ACCEPT,
            reason=Reason.REMEMBERED,
            until=round(entry.until, 3),
        )
        return True

    def forget(self, user: str, context: RequestContext, why: str) -> int:
        """End every remembered host of the user (audited when there was one)."""
        if not self.enabled:
            return 0
        try:
            forgotten = self.store.forget(user)
        except OtpAgentError as exc:
            _log.error("could not forget %s's remembered hosts: %s", user[:64], exc)
            return 0
        if forgotten:
            self.audit.record("forget", context, user=user, result="forgotten", reason=why, count=forgotten)
        return forgotten
