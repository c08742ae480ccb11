"""Token administration: enrollment, import, lifecycle, export and status.

Runs inside the daemon (the only process that opens the store and the key backend) on behalf of
administrative peers.  Secrets are generated or received here, sealed by the key backend at once,
and dropped; only the enrollment reply carries a fresh secret back (inside the otpauth:// URI),
over the root-only socket, so that the administrator can show it to the user's phone.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from otp_agent.accounts import canonical_user
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.backup import BackupCodes, is_scratch_code
from otp_agent.errors import (
    AccountLookupError,
    Conflict,
    InvalidToken,
    KeyBackendError,
    NotFound,
    PskcError,
    UsageError,
)
from otp_agent.keystore import KeyBackend, TokenIdentity
from otp_agent.oath import HashAlgorithm, OathParams, TokenType, check_key_size
from otp_agent.oath.params import MAX_COUNTER
from otp_agent.oath.uri import provisioning_uri
from otp_agent.sensitive import Secret
from otp_agent.store import BackupCode, Token, TokenStore
from otp_agent.store.models import BACKUP_SCRATCH
from otp_agent.wire import TokenRecord

_SERIAL_ATTEMPTS = 8
_MAX_NAME = 256


def check_name(value: object, what: str) -> str:
    """Validate a user name or issuer: 1-256 printable characters, no ':'-free requirement."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_NAME
        or not value.isprintable()
        or value != value.strip()
    ):
        raise UsageError(
            f"{what} must be 1 to {_MAX_NAME} printable characters without leading or trailing spaces"
        )
    return value


def new_serial(token_type: TokenType) -> str:
    """A fresh serial in the OATH token identifier shape: 'OA' + type + 8 digits."""
    kind = {TokenType.TOTP: "TO", TokenType.HOTP: "HO", TokenType.OOB: "OB"}[token_type]
    return f"OA{kind}{secrets.randbelow(10**8):08d}"


@dataclass(frozen=True)
class TokenSpec:
    """A token to create: parameters, secret and initial state (from enrollment or PSKC)."""

    serial: str
    params: OathParams
    secret: Secret
    user: str | None = None
    counter: int = 0
    drift: int = 0
    issuer: str | None = None
    not_before: float | None = None
    not_after: float | None = None
    #: A token migrated from a peer: its last used step (replay state) and the smallest secret
    #: accepted for it (None: the OATH profile's, as for new tokens).
    last_step: int | None = None
    minimum_key_size: int | None = None


#: Import formats whose tokens come from a peer (docs/migration.md): their phones keep working,
#: so their shorter secrets are accepted down to 80 bits.
MIGRATION_FORMATS = ("google-authenticator", "users.oath")
MIGRATED_MINIMUM_KEY_SIZE = 10


class Administration:
    """Administrative operations on tokens."""

    def __init__(
        self, store: TokenStore, keys: KeyBackend, audit: AuditLog, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store, self.keys, self.audit = store, keys, audit
        self.clock = clock
        self.backup = BackupCodes(store, keys, clock=clock)

    def _sealed_token(self, spec: TokenSpec, fingerprint: bytes) -> Token:
        check_key_size(spec.params.algorithm, len(spec.secret), spec.minimum_key_size)
        identity = TokenIdentity(spec.serial, spec.params.algorithm)
        return self.bound(
            Token(
                serial=spec.serial,
                token_type=spec.params.token_type,
                algorithm=spec.params.algorithm,
                digits=spec.params.digits,
                period=spec.params.period,
                t0=spec.params.t0,
                sealed=self.keys.seal_secret(identity, spec.secret),
                fingerprint=fingerprint,
                user=spec.user,
                counter=spec.counter,
                drift=spec.drift,
                last_step=spec.last_step,
                issuer=spec.issuer,
                not_before=spec.not_before,
                not_after=spec.not_after,
                created=time.time(),
            )
        )

    def bound(self, token: Token) -> Token:
        """The token with a fresh binding tag over its owner and parameters."""
        return replace(token, binding=self.keys.binding_tag(token.binding_message()))

    def enroll(
        self,
        user: str,
        params: OathParams,
        issuer: str,
        context: RequestContext,
        *,
        pending_until: float | None = None,
    ) -> dict[str, Any]:
        """Create a token with a fresh random secret; return its serial, URI and public view.

        With ``pending_until`` the token is pending (self-service): it lets nobody in until
        confirmed, and is removed at that time if it was not.
        """
        check_name(user, "user")
        check_name(issuer, "issuer")
        with Secret(secrets.token_bytes(params.algorithm.minimum_key_size)) as secret:
            fingerprint = self.keys.fingerprint(secret)
            for _attempt in range(_SERIAL_ATTEMPTS):
                spec = TokenSpec(new_serial(params.token_type), params, secret, user=user, issuer=issuer)
                token = replace(self._sealed_token(spec, fingerprint), pending_until=pending_until)
                try:
                    self.store.add_tokens([token])
                    break
                except Conflict:
                    if self.store.get(spec.serial) is None:
                        raise
            else:
                raise Conflict("could not find a free serial number")
            uri = provisioning_uri(secret.reveal(), params, account=user, issuer=issuer)
        self.audit.record(
            "enroll",
            context,
            user=user,
            serial=token.serial,
            result="ok" if pending_until is None else "pending",
        )
        return {"serial": token.serial, "uri": uri, "token": token.public()}

    def enroll_oob(
        self,
        user: str,
        params: OathParams,
        channel: str,
        address: str,
        issuer: str,
        context: RequestContext,
    ) -> dict[str, Any]:
        """Create an out-of-band token: its secret is generated by the key backend (inside the
        HSM on payShield) and never shown; return its serial and public view (no URI)."""
        check_name(user, "user")
        check_name(issuer, "issuer")
        for _attempt in range(_SERIAL_ATTEMPTS):
            serial = new_serial(TokenType.OOB)
            identity = TokenIdentity(serial, params.algorithm)
            # No secret is ever in clear to fingerprint: a tag of the serial keeps the column unique.
            fingerprint = self.keys.binding_tag(b"otp-agent/oob-fingerprint/v1|" + serial.encode())
            token = self.bound(
                Token(
                    serial=serial,
                    token_type=TokenType.OOB,
                    algorithm=params.algorithm,
                    digits=params.digits,
                    period=params.period,
                    t0=0,
                    sealed=self.keys.generate_secret(identity),
                    fingerprint=fingerprint,
                    user=user,
                    issuer=issuer,
                    created=time.time(),
                    channel=channel,
                    address=address,
                )
            )
            try:
                self.store.add_tokens([token])
                break
            except Conflict:
                if self.store.get(serial) is None:
                    raise
        else:
            raise Conflict("could not find a free serial number")
        self.audit.record(
            "enroll",
            context,
            user=user,
            serial=token.serial,
            channel=channel,
            address=token.public()["address"],
            result="ok",
        )
        return {"serial": token.serial, "token": token.public()}

    def import_tokens(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        dry_run: bool,
        context: RequestContext,
        source: str = "pskc",
        scratch_codes: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """Import token records (from a PSKC file or a peer's file), all or nothing.

        ``scratch_codes`` (a migration's) become the named users' backup codes, replacing any
        they had, in the same transaction as the tokens.

        :raises PskcError: one or more records are invalid, duplicated or already present; the
            ``problems`` name each one; nothing was written.
        """
        problems: list[str] = []
        tokens: list[Token] = []
        seen_serials: dict[str, int] = {}
        seen_fingerprints: dict[bytes, str] = {}
        if source not in ("pskc", *MIGRATION_FORMATS):
            raise UsageError(f"unknown import format {source!r}")
        minimum = MIGRATED_MINIMUM_KEY_SIZE if source in MIGRATION_FORMATS else None
        backup_rows, replaced = self._scratch_rows(scratch_codes or {}, problems)
        for index, record in enumerate(records):
            label = str(record.get("serial") or f"record {index + 1}")
            try:
                spec = replace(token_spec_from_record(record), minimum_key_size=minimum)
                if spec.user is not None:
                    spec = replace(spec, user=canonical_user(spec.user))
                with spec.secret:
                    fingerprint = self.keys.fingerprint(spec.secret)
                    if spec.serial in seen_serials:
                        raise Conflict("serial appears twice in the file")
                    if fingerprint in seen_fingerprints:
                        raise Conflict(f"same secret as token {seen_fingerprints[fingerprint]}")
                    seen_serials[spec.serial] = index
                    seen_fingerprints[fingerprint] = spec.serial
                    if self.store.get(spec.serial) is not None:
                        raise Conflict("a token with this serial is already in the store")
                    tokens.append(self._sealed_token(spec, fingerprint))
            except (UsageError, InvalidToken, Conflict, KeyBackendError, AccountLookupError) as exc:
                problems.append(f"{label}: {exc}")
        duplicates = self.store.existing_fingerprints(seen_fingerprints)
        problems += [
            f"{seen_fingerprints[fp]}: a token with the same secret is already in the store"
            for fp in duplicates
        ]
        if problems:
            self.audit.record(
                "import", context, source=source, result="refused", reason=f"{len(problems)} problems"
            )
            raise PskcError(f"import refused, nothing was imported ({len(problems)} problems)", problems)
        if not dry_run:
            self.store.add_tokens(tokens, backup_rows)
        self.audit.record(
            "import",
            context,
            source=source,
            result="dry_run" if dry_run else "ok",
            count=len(tokens),
            backup_codes=sum(len(rows) for rows in backup_rows.values()),
        )
        return {
            "imported": 0 if dry_run else len(tokens),
            "checked": len(tokens),
            "dry_run": dry_run,
            "serials": [t.serial for t in tokens],
            "backup_codes": {user: len(rows) for user, rows in backup_rows.items()},
            "replaced_backup_codes": replaced,
        }

    def _scratch_rows(
        self, scratch_codes: Mapping[str, Sequence[str]], problems: list[str]
    ) -> tuple[dict[str, list[BackupCode]], dict[str, int]]:
        """Hash a migration's scratch codes per user; note how many unused codes each replaces."""
        rows: dict[str, list[BackupCode]] = {}
        replaced: dict[str, int] = {}
        for name, codes in scratch_codes.items():
            try:
                user = canonical_user(check_name(name, "user"))
            except (UsageError, AccountLookupError) as exc:
                problems.append(f"scratch codes of {name[:64]!r}: {exc}")
                continue
            if not codes or not all(isinstance(c, str) and is_scratch_code(c) for c in codes):
                problems.append(f"scratch codes of {user}: each must be exactly 8 digits")
                continue
            rows[user] = self.backup.hashed(user, sorted(set(codes), key=list(codes).index), BACKUP_SCRATCH)
            if left := self.backup.remaining(user):
                replaced[user] = left
        return rows, replaced

    def export_tokens(self, context: RequestContext) -> dict[str, Any]:
        """Return every token with its secret, for an encrypted PSKC export (software backend)."""
        open_secret = getattr(self.keys, "export_secret", None)
        if open_secret is None:
            raise KeyBackendError(
                f"the {self.keys.name} key backend cannot export secrets in clear: they never leave the HSM"
            )
        exported = []
        for token in self.store.all_tokens():
            if token.token_type is TokenType.OOB:
                continue  # its secret was made never to be seen: it stays with the key backend
            with open_secret(token.identity, token.sealed) as secret:
                encoded = base64.b64encode(secret.reveal()).decode("ascii")
                exported.append(token.record(secret_b64=encoded).message())
        self.audit.record("export", context, result="ok", count=len(exported))
        return {"tokens": exported}

    def find(self, target: str) -> list[Token]:
        """Tokens by serial, or else by owner.  :raises NotFound: neither matches."""
        token = self.store.get(target)
        tokens = [token] if token is not None else self.store.tokens_for_user(target)
        if not tokens:
            raise NotFound(f"no token with serial or owner {target!r}")
        return tokens

    def show(self, target: str) -> tuple[list[Token], int | None]:
        """The token of a serial, or else a user's tokens and how many unused backup codes they
        have (None for a serial).

        :raises NotFound: no such serial, and no user with a token or a backup code.
        """
        token = self.store.get(target)
        if token is not None:
            return [token], None
        tokens = self.store.tokens_for_user(target)
        remaining = self.backup.remaining(target)
        if not tokens and not remaining:
            raise NotFound(f"no token with serial or owner {target!r}")
        return tokens, remaining

    def assign(self, serial: str, user: str, context: RequestContext) -> Token:
        """Give a token to ``user``, with a new binding tag for that owner."""
        current = self.store.get(serial)
        if current is None:
            raise NotFound(f"no token with serial {serial}")
        moved = self.bound(replace(current, user=user))
        assert moved.binding is not None
        token = self.store.assign(serial, user, moved.binding)
        self.audit.record("assign", context, serial=serial, user=user, result="ok")
        return token

    def set_enabled(self, serial: str, enabled: bool, context: RequestContext) -> Token:
        """Enable or disable a token (disabling ends its user's remembered hosts)."""
        token = self.store.set_enabled(serial, enabled)
        self.audit.record(
            "enable" if enabled else "disable", context, serial=serial, user=token.user, result="ok"
        )
        if not enabled and token.user is not None:
            self.forget(token.user, context, "disabled")
        return token

    def remove(self, serial: str, context: RequestContext) -> None:
        """Delete a token (and its user's remembered hosts)."""
        token = self.store.get(serial)
        self.store.remove(serial)
        self.audit.record("remove", context, serial=serial, result="ok")
        if token is not None and token.user is not None:
            self.forget(token.user, context, "removed")

    def forget(self, user: str, context: RequestContext, why: str = "otpctl forget") -> int:
        """End every remembered host of ``user``; return how many there were (audited)."""
        forgotten = self.store.forget(user)
        self.audit.record("forget", context, user=user, result="forgotten", reason=why, count=forgotten)
        return forgotten

    def create_backup_codes(self, user: str, count: int, context: RequestContext) -> list[str]:
        """Replace the user's backup codes with ``count`` fresh ones; return them, printed, once."""
        codes = self.backup.create(user, count)
        self.audit.record("backup_codes", context, user=user, result="ok", count=count)
        return codes

    def revoke_backup_codes(self, user: str, context: RequestContext) -> int:
        """Remove the user's backup codes; return how many unused ones there were."""
        left = self.backup.revoke(user)
        self.audit.record("backup_codes", context, user=user, result="revoked", count=left)
        return left

    def expire_pending(self, context: RequestContext) -> list[str]:
        """Remove the pending tokens whose confirmation time is up; audit each."""
        removed = self.store.remove_expired_pending(self.clock())
        for serial in removed:
            self.audit.record("expire", context, serial=serial, result="removed", reason="not_confirmed")
        return removed

    def unlock(self, target: str, context: RequestContext) -> int:
        """Clear failures and end the locks of the tokens found by serial or owner.

        The lock level is kept (it decays with time): unlocking an attacked account must not
        hand the attacker a fresh set of short locks.
        """
        tokens = self.find(target)
        for token in tokens:
            self.store.reset_throttling(token.serial, self.clock())
            self.audit.record("unlock", context, serial=token.serial, user=token.user, result="ok")
        for user in {t.user for t in tokens if t.user is not None}:
            self.forget(user, context, "unlocked")
        return len(tokens)


def token_spec_from_record(message: Mapping[str, Any]) -> TokenSpec:
    """Check one wire import record (a :class:`TokenRecord`) and turn it into a :class:`TokenSpec`."""
    record = TokenRecord.parse(message)
    if record.type == TokenType.OOB.value:
        raise UsageError("out-of-band tokens are not imported: enroll them (otpctl enroll --type oob)")
    if len(record.serial) > 64 or not record.serial.isprintable():
        raise UsageError("serial must be 1 to 64 printable characters")
    try:
        params = OathParams(
            TokenType(record.type), HashAlgorithm(record.algorithm), record.digits, record.period, record.t0
        )
    except ValueError as exc:
        raise UsageError(f"bad token parameters: {exc}") from None
    if not 0 <= record.counter <= MAX_COUNTER:
        raise UsageError(f"counter must be from 0 to {MAX_COUNTER} (2^63 - 1)")
    if abs(record.drift) > 1000:
        raise UsageError("drift must be within 1000 time steps")
    if record.secret_b64 is None:
        raise UsageError("secret missing")
    try:
        secret = Secret(base64.b64decode(record.secret_b64, validate=True))
    except (binascii.Error, ValueError):
        raise UsageError("secret is not valid base64") from None
    if record.last_step is not None and not 0 <= record.last_step <= MAX_COUNTER:
        raise UsageError("last_step must be a time step from 0")
    return TokenSpec(
        serial=record.serial,
        params=params,
        secret=secret,
        user=check_name(record.user, "user") if record.user is not None else None,
        counter=record.counter,
        drift=record.drift,
        last_step=record.last_step if params.token_type is TokenType.TOTP else None,
        issuer=check_name(record.issuer, "issuer") if record.issuer is not None else None,
        not_before=record.not_before,
        not_after=record.not_after,
    )
