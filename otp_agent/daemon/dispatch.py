"""Turns decoded requests into calls on the validation engine and administration service.

This is where the authorisation rules (docs/protocol.md, "Authorisation") are applied, with the peer's kernel
credentials only: uid 0 may do anything; a validator (uid 0 or a member of ``[agent]
validator_group``) may call the operations of ``wire.VALIDATOR_OPS`` for any user; any other uid
may validate only its own user name, and call the operations of ``wire.SELF_SERVICE_OPS`` for
its own user as the policy allows (:mod:`otp_agent.selfservice`); administrative operations need
uid 0 or membership of ``[agent] admin_group``.
"""

from __future__ import annotations

import grp
import logging
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from otp_agent import __version__, wire
from otp_agent.accounts import canonical_user
from otp_agent.administration import Administration, check_name
from otp_agent.audit import RequestContext
from otp_agent.channels import check_address
from otp_agent.errors import (
    AccountLookupError,
    OtpAgentError,
    PermissionDenied,
    PskcError,
    SendRefused,
    UsageError,
)
from otp_agent.oath import HashAlgorithm, OathParams, TokenType
from otp_agent.oob import OutOfBand
from otp_agent.selfservice import DEFAULT_COUNT, SelfService
from otp_agent.validation import Validator

_log = logging.getLogger(__name__)
_CONTEXT_FIELDS = ("service", "rhost", "tty")


@dataclass(frozen=True)
class Peer:
    """Kernel credentials of the process at the other end of a connection (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def _string(request: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = request.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise UsageError(f"field {key!r} must be a string")
    return value


def _optional_context(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    return value[:256] if isinstance(value, str) else None


def _group_id(name: str | None, what: str, consequence: str) -> int | None:
    """The gid of a configured group; ``None`` (with a warning) when it does not exist."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        _log.warning("%s %s does not exist; %s", what, name, consequence)
        return None


def _member(peer: Peer, gid: int | None) -> bool:
    """True when ``gid`` is the peer's primary group or one of its supplementary groups."""
    return gid is not None and (peer.gid == gid or gid in peer.groups)


class Dispatcher:
    """Maps operation names to handlers and enforces who may call them."""

    def __init__(
        self,
        validator: Validator,
        admin: Administration,
        *,
        admin_group: str | None,
        validator_group: str | None = None,
        status: Callable[[], dict[str, Any]],
        oob: OutOfBand | None = None,
        default_issuer: str = "otp-agent",
        metrics: Callable[[], str] | None = None,
    ) -> None:
        self.validator, self.admin, self.status = validator, admin, status
        self.default_issuer = default_issuer
        self.metrics = metrics
        self.oob = oob
        self.self_service = SelfService(admin, validator, validator.policy, clock=validator.clock)
        self._admin_gid = _group_id(admin_group, "admin group", "only root may administer")
        self._validator_gid = _group_id(
            validator_group, "validator group", "only root may validate for other users"
        )

    def is_admin(self, peer: Peer) -> bool:
        """True for uid 0 or a member of the admin group."""
        return peer.uid == 0 or _member(peer, self._admin_gid)

    def is_validator(self, peer: Peer) -> bool:
        """True for uid 0 or a member of the validator group: may name any user, not administer."""
        return peer.uid == 0 or _member(peer, self._validator_gid)

    def _may_call(self, op: str, peer: Peer) -> bool:
        if op in wire.VALIDATION_OPS or op in wire.SELF_SERVICE_OPS or self.is_admin(peer):
            return True  # a self-service handler keeps a non-admin peer to its own user
        return op in wire.VALIDATOR_OPS and self.is_validator(peer)

    def handle(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Answer one request; every error becomes an error reply."""
        op = request.get("op")
        try:
            if not isinstance(op, str):
                raise UsageError("request has no operation")
            if not self._may_call(op, peer):
                needs = "the validator or the admin group" if op in wire.VALIDATOR_OPS else "the admin group"
                raise PermissionDenied(f"operation {op!r} needs uid 0 or {needs}")
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise UsageError(f"unknown operation {op!r}")
            context = RequestContext(
                peer.uid, peer.pid, *(_optional_context(request, k) for k in _CONTEXT_FIELDS)
            )
            return wire.ok_reply(**handler(request, peer, context))
        except PskcError as exc:
            reply = wire.error_reply(exc.code, str(exc))
            reply["error"]["problems"] = exc.problems
            return reply
        except SendRefused as exc:
            reply = wire.error_reply(exc.code, str(exc))
            reply["error"]["reason"] = exc.reason
            return reply
        except OtpAgentError as exc:
            return wire.error_reply(exc.code, str(exc))

    def _check_user_for_peer(self, user: str, peer: Peer) -> str:
        """The canonical user a request names, if this peer may name it.

        A validator (uid 0, the validator group) may name anyone; every other peer only the
        account of its own uid.
        """
        user = canonical_user(check_name(user, "user"))
        if not self.is_validator(peer):
            try:
                own = pwd.getpwuid(peer.uid).pw_name
            except (KeyError, OSError):
                own = None
            if own != user:
                raise PermissionDenied("a peer outside the validator group may only validate its own user")
        return user

    @staticmethod
    def _own_user(peer: Peer) -> str:
        """The account of the peer's uid (the kernel's word, never the request's)."""
        try:
            return pwd.getpwuid(peer.uid).pw_name
        except (KeyError, OSError):
            raise PermissionDenied(f"uid {peer.uid} has no account") from None

    def _self_user(self, request: dict[str, Any], peer: Peer) -> str:
        """A non-admin peer's own user; a ``user`` field naming anybody else is refused."""
        own = self._own_user(peer)
        named = request.get("user")
        if named not in (None, "", own):
            raise PermissionDenied("you may only act on your own user")
        return own

    # -- validation operations (any peer) ---------------------------------------------------

    def op_ping(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        return {"version": __version__}

    def _refuse_lookup(
        self, name: str, op: str, exc: AccountLookupError, context: RequestContext
    ) -> dict[str, Any]:
        _log.error("%s for %r refused: %s", op, name[:64], exc)
        self.validator.audit.record(
            op, context, user=name, result=wire.Result.REJECT, reason=wire.Reason.ACCOUNT_LOOKUP
        )
        return wire.ValidateReply(wire.Result.REJECT, wire.Reason.ACCOUNT_LOOKUP).fields()

    def op_validate(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        validate = wire.ValidateRequest.parse(request)
        try:
            user = self._check_user_for_peer(validate.user, peer)
        except AccountLookupError as exc:
            # Fail closed: a lookup error must never look like "no such user" (not enrolled).
            return self._refuse_lookup(validate.user, "validate", exc, context)
        if validate.password_and_code is not None:
            return self.validator.validate_password_and_code(
                user, validate.password_and_code, context
            ).reply()
        assert validate.code is not None
        return self.validator.validate(user, validate.code, context).reply()

    def op_verify_password(
        self, request: dict[str, Any], peer: Peer, context: RequestContext
    ) -> dict[str, Any]:
        user = self._check_user_for_peer(_string(request, "user"), peer)
        return self.validator.verify_password(user, _string(request, "password"), context).reply()

    def op_remembered(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        user = self._check_user_for_peer(_string(request, "user"), peer)
        return {"remembered": self.validator.remembered.check(user, context)}

    def op_forget(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        user = canonical_user(check_name(_string(request, "user"), "user"))
        return {"forgotten": self.admin.forget(user, context)}

    def op_enrolled(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        user = self._check_user_for_peer(_string(request, "user"), peer)
        return {"enrolled": self.validator.is_enrolled(user)}

    # -- administrative operations ----------------------------------------------------------

    def op_check(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        context = RequestContext(peer.uid, peer.pid, context.service or "otpctl", None, None)
        user = canonical_user(check_name(_string(request, "user"), "user"))
        return self.validator.validate(user, _string(request, "code"), context).reply()

    def _out_of_band(self) -> OutOfBand:
        if self.oob is None:
            raise UsageError("out-of-band codes are not available on this agent")
        return self.oob

    def op_send(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        user = self._check_user_for_peer(_string(request, "user"), peer)
        serial = request.get("serial")
        if serial is not None and not isinstance(serial, str):
            raise UsageError("field 'serial' must be a string")
        return self._out_of_band().send(user, serial, context).fields()

    def op_enroll(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        admin = self.is_admin(peer)
        if request.get("type") == "oob" and admin:
            return self._enroll_oob(request, context)
        try:
            params = OathParams(
                TokenType(request.get("type", "totp")),
                HashAlgorithm(request.get("algorithm", "sha1")),
                request.get("digits", 6),
                request.get("period", 30),
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        issuer = request.get("issuer") or self.default_issuer
        if not admin:
            return self.self_service.enroll(self._self_user(request, peer), params, issuer, context)
        user = canonical_user(check_name(_string(request, "user"), "user"))
        return self.admin.enroll(user, params, issuer, context)

    def op_confirm(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        owner = None if self.is_admin(peer) else self._own_user(peer)
        decision = self.self_service.confirm(
            owner, _string(request, "serial"), _string(request, "code"), context
        )
        return decision.reply()

    def op_backup_codes(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        count = request.get("count", DEFAULT_COUNT)
        if not isinstance(count, int) or isinstance(count, bool):
            raise UsageError("field 'count' must be an integer")
        if not self.is_admin(peer):
            if request.get("revoke"):
                raise PermissionDenied("only an administrator may remove backup codes")
            user = self._self_user(request, peer)
            codes = self.self_service.backup_codes(user, count, context)
        else:
            user = canonical_user(check_name(_string(request, "user"), "user"))
            if request.get("revoke") is True:
                return {"user": user, "codes": [], "revoked": self.admin.revoke_backup_codes(user, context)}
            codes = self.admin.create_backup_codes(user, count, context)
        serials = [t.serial for t in self.validator.live_tokens(user)]
        return {"user": user, "codes": codes, "serials": serials}

    def _enroll_oob(self, request: dict[str, Any], context: RequestContext) -> dict[str, Any]:
        name = _string(request, "channel")
        channel = self._out_of_band().channels.get(name)
        if channel is None:
            raise UsageError(f"unknown channel {name!r}: configure [channel.{name}] in agent.toml")
        address = check_address(channel, _string(request, "address"))
        try:
            params = OathParams(
                TokenType.OOB, HashAlgorithm(request.get("algorithm", "sha1")), request.get("digits", 6)
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        user = canonical_user(check_name(_string(request, "user"), "user"))
        issuer = request.get("issuer") or self.default_issuer
        return self.admin.enroll_oob(user, params, name, address, check_name(issuer, "issuer"), context)

    def op_import(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        records = request.get("tokens")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UsageError("field 'tokens' must be a list of objects")
        source = request.get("format", "pskc")
        scratch = request.get("scratch_codes") or {}
        if not isinstance(source, str):
            raise UsageError("field 'format' must be a string")
        if not isinstance(scratch, dict) or not all(isinstance(v, list) for v in scratch.values()):
            raise UsageError("field 'scratch_codes' must map user names to lists of codes")
        return self.admin.import_tokens(
            records,
            dry_run=bool(request.get("dry_run")),
            context=context,
            source=source,
            scratch_codes=scratch,
        )

    def op_export(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        return self.admin.export_tokens(context)

    def op_list(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        if not self.is_admin(peer):
            user = self._own_user(peer)
            return {"tokens": self.self_service.tokens(user, context), "user": user}
        return {"tokens": [t.public() for t in self.admin.store.all_tokens()]}

    def op_show(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        tokens, remaining = self.admin.show(_string(request, "target"))
        reply: dict[str, Any] = {"tokens": [t.public() for t in tokens]}
        if remaining is not None:  # the target is a user: their backup codes too
            reply["backup_codes_remaining"] = remaining
        return reply

    def op_assign(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        user = canonical_user(check_name(_string(request, "user"), "user"))
        token = self.admin.assign(_string(request, "serial"), user, context)
        return {"token": token.public()}

    def op_disable(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        token = self.admin.set_enabled(_string(request, "serial"), False, context)
        return {"token": token.public()}

    def op_enable(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        token = self.admin.set_enabled(_string(request, "serial"), True, context)
        return {"token": token.public()}

    def op_remove(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        self.admin.remove(_string(request, "serial"), context)
        return {}

    def op_unlock(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        return {"unlocked": self.admin.unlock(_string(request, "target"), context)}

    def op_resync(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        user = canonical_user(check_name(_string(request, "user"), "user"))
        serial = self.validator.resync(user, _string(request, "code1"), _string(request, "code2"), context)
        return {"serial": serial}

    def op_status(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        return self.status()

    def op_metrics(self, request: dict[str, Any], peer: Peer, context: RequestContext) -> dict[str, Any]:
        if self.metrics is None:
            raise UsageError("metrics are not available on this agent")
        return {"text": self.metrics()}
