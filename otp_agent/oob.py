"""Out-of-band codes: compute a code with the key backend and hand it to a delivery channel.

Owns the ``send`` side of ``oob`` tokens (the validation side is the engine's): which token,
the resend and hourly limits, the compare-and-set that reserves a counter *before* the code
is computed (two concurrent sends never hand out the same counter, on one host or across hosts
sharing PostgreSQL), the HMAC (one ``LQ`` on the HSM), the delivery, and the record of its
outcome.  Nothing of a code is stored: a send is kept as ``counter:time:outcome``; the code
exists in clear only in memory, between the key backend's answer and the channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from otp_agent.audit import AuditLog, RequestContext
from otp_agent.channels import ChannelConfig, Delivery, open_channel
from otp_agent.channels.addresses import mask
from otp_agent.config import PolicyConfig
from otp_agent.errors import ChannelError, NotFound, SendRefused, StoreError
from otp_agent.keystore import KeyBackend
from otp_agent.oath import TokenType, codes_for, counter_message, format_code, match_code
from otp_agent.sensitive import Secret
from otp_agent.store import Token, TokenStore
from otp_agent.store.models import SEND_FAILED, SEND_PENDING, SEND_SENT, Send
from otp_agent.throttle import is_locked
from otp_agent.wire import SentCode

_log = logging.getLogger(__name__)
_CAS_ATTEMPTS = 16
#: How long a send is remembered: the hourly limit and the code's validity both need it.
_HOUR = 3600.0


@dataclass(frozen=True)
class SentMatch:
    """Which sent counter a submitted code is, if any, and why it is refused otherwise."""

    counter: int | None = None
    replay: bool = False
    expired: bool = False


def match_sent_code(
    token: Token, code: str, now: float, validity: int, hmacs: Callable[[Sequence[bytes]], list[bytes]]
) -> SentMatch:
    """Match an out-of-band code against the counters actually sent (no look-ahead).

    Only sends delivered or being delivered count (a failed one never does), within ``validity``
    seconds of their send; an acceptance invalidates every code sent before it (``last_step``
    holds the last counter accepted), so those are replays, checked first.  Constant-time
    comparison over every candidate (``match_code``).
    """
    sends = [s for s in token.sends if s.outcome != SEND_FAILED]
    if not sends:
        return SentMatch()
    factors = [s.counter for s in sends]
    codes = dict(zip(factors, codes_for(hmacs, factors, token.digits), strict=True))
    accepted = -1 if token.last_step is None else token.last_step
    stale = [(s.counter, codes[s.counter]) for s in sends if s.counter <= accepted]
    live = [s for s in sends if s.counter > accepted]
    fresh = [(s.counter, codes[s.counter]) for s in live if now - s.at <= validity]
    expired = [(s.counter, codes[s.counter]) for s in live if now - s.at > validity]
    if match_code(code, stale) is not None:
        return SentMatch(replay=True)
    found = match_code(code, fresh)
    if found is not None:
        return SentMatch(counter=found)
    return SentMatch(expired=match_code(code, expired) is not None)


def recent_sends(token: Token, policy: PolicyConfig, now: float) -> tuple[Send, ...]:
    """The sends still worth remembering (for the hourly limit and for validation)."""
    keep = max(_HOUR, float(policy.oob_validity))
    return tuple(send for send in token.sends if now - send.at < keep)


class OutOfBand:
    """Sends out-of-band codes for users' ``oob`` tokens."""

    def __init__(
        self,
        store: TokenStore,
        keys: KeyBackend,
        policy: PolicyConfig,
        audit: AuditLog,
        channels: Mapping[str, ChannelConfig],
        *,
        check_binding: Callable[[Token], None],
        clock: Callable[[], float] = time.time,
        issuer: str = "otp-agent",
    ) -> None:
        self.store, self.keys, self.policy, self.audit = store, keys, policy, audit
        self.channels = channels
        self.check_binding = check_binding
        self.clock = clock
        self.issuer = issuer

    def _token(self, user: str, serial: str | None) -> Token:
        now = self.clock()
        tokens = [
            t
            for t in self.store.tokens_for_user(user)
            if t.token_type is TokenType.OOB and (serial is None or t.serial == serial) and t.usable_at(now)
        ]
        if not tokens:
            raise NotFound(f"{user} has no enabled out-of-band token" + (f" {serial}" if serial else ""))
        return tokens[0]

    def _refuse(self, token: Token, reason: str, message: str, context: RequestContext) -> SendRefused:
        self.audit.record(
            "send",
            context,
            user=token.user,
            serial=token.serial,
            channel=token.channel,
            address=mask(token.address or ""),
            result="refused",
            reason=reason,
        )
        return SendRefused(message, reason)

    def send(self, user: str, serial: str | None, context: RequestContext) -> SentCode:
        """Reserve a counter, compute its code, deliver it; audit the attempt (never the code).

        :raises NotFound: the user has no enabled ``oob`` token (or not SERIAL).
        :raises SendRefused: locked, resend blocked or hourly limit (reason in ``reason``).
        :raises ChannelError: the delivery failed (the send is recorded as failed: its code is
            never accepted).
        """
        for _attempt in range(_CAS_ATTEMPTS):
            token = self._token(user, serial)
            self.check_binding(token)
            config = self.channels.get(token.channel or "")
            if config is None:
                raise ChannelError(f"token {token.serial}: channel {token.channel!r} is not configured")
            now = self.clock()
            if is_locked(token, now):
                raise self._refuse(token, "locked", "the token is locked after failed codes", context)
            recent = recent_sends(token, self.policy, now)
            within_hour = [s for s in recent if now - s.at < _HOUR]
            if within_hour and now - within_hour[-1].at < self.policy.oob_resend_interval:
                wait = int(self.policy.oob_resend_interval - (now - within_hour[-1].at)) + 1
                raise self._refuse(
                    token, "resend_blocked", f"a code was sent moments ago: wait {wait} s", context
                )
            if len(within_hour) >= self.policy.oob_max_per_hour:
                raise self._refuse(
                    token,
                    "rate_limited",
                    f"{self.policy.oob_max_per_hour} codes were sent in the last hour",
                    context,
                )
            counter = token.counter
            reserved = replace(
                token.state, counter=counter + 1, sends=(*recent, Send(counter, now, SEND_PENDING))
            )
            if self.store.compare_and_set(token.serial, token.version, reserved):
                return self._deliver(token, config, counter, now, context)
        raise StoreError("too many concurrent changes to this token; try again")

    def _deliver(
        self, token: Token, config: ChannelConfig, counter: int, now: float, context: RequestContext
    ) -> SentCode:
        (mac,) = self.keys.compute_hmacs(token.identity, token.sealed, [counter_message(counter)])
        address = token.address or ""
        fields = {
            "user": token.user,
            "serial": token.serial,
            "channel": token.channel,
            "address": mask(address),
        }
        with Secret(format_code(mac, token.digits).encode("ascii")) as code:
            delivery = Delivery(
                user=token.user or "",
                serial=token.serial,
                address=address,
                code=code,
                issuer=token.issuer or self.issuer,
                validity_seconds=self.policy.oob_validity,
            )
            try:
                open_channel(config).deliver(delivery)
            except ChannelError as exc:
                self._record(token.serial, counter, SEND_FAILED)
                _log.error("token %s: delivery over %s failed: %s", token.serial, token.channel, exc)
                self.audit.record("send", context, **fields, result="failed", reason="channel")
                raise
        self._record(token.serial, counter, SEND_SENT)
        self.audit.record("send", context, **fields, result="sent", reason="sent")
        return SentCode(token.serial, token.channel or "", mask(address), now + self.policy.oob_validity)

    def _record(self, serial: str, counter: int, outcome: str) -> None:
        """Mark the send of ``counter`` delivered or failed (a failed code is never accepted)."""
        for _attempt in range(_CAS_ATTEMPTS):
            token = self.store.get(serial)
            if token is None:
                return
            sends = tuple(replace(s, outcome=outcome) if s.counter == counter else s for s in token.sends)
            if self.store.compare_and_set(serial, token.version, replace(token.state, sends=sends)):
                return
        _log.error("token %s: the outcome of send %d could not be recorded", serial, counter)
