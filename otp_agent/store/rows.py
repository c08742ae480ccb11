"""What the SQL stores share: the token columns, their statements and row conversion."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from otp_agent.oath.params import HashAlgorithm, TokenType

# Moved to otp_agent.store.migrate; kept importable from here for otp_agent.daemon.initialise.
from otp_agent.store.models import BackupCode, Remembered, Token, TokenState, decode_sends, encode_sends

COLUMNS = (
    "serial",
    "user_name",
    "token_type",
    "algorithm",
    "digits",
    "period",
    "t0",
    "sealed",
    "fingerprint",
    "counter",
    "last_step",
    "drift",
    "enabled",
    "failures",
    "lock_count",
    "locked_until",
    "issuer",
    "not_before",
    "not_after",
    "created",
    "version",
    "binding",
    "failures_at",
    "channel",
    "address",
    "sends",
    "pending_until",
    "last_code_tag",
)
SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM tokens"
#: Token attribute names that differ from their column names.
COLUMN_OF = {"user": "user_name"}
#: The compare-and-set: every state field, then serial and expected version.
STATE_UPDATE = (
    "UPDATE tokens SET counter = %s, last_step = %s, drift = %s, failures = %s, "
    "failures_at = %s, lock_count = %s, locked_until = %s, enabled = %s, sends = %s, "
    "pending_until = %s, last_code_tag = %s, version = version + 1 WHERE serial = %s AND version = %s"
)
ASSIGN = "UPDATE tokens SET user_name = %s, binding = %s, version = version + 1 WHERE serial = %s"
SET_ENABLED = "UPDATE tokens SET enabled = %s, version = version + 1 WHERE serial = %s"
SET_BINDING = "UPDATE tokens SET binding = %s, version = version + 1 WHERE serial = %s"
#: ``otpctl unlock``: clear the failure count and end a running lock, keeping the lock level
#: (it decays with time), so unlocking an attacked account gives the attacker no fresh ladder.
#: Parameters: now, now, now, serial.
RESET_THROTTLING = (
    "UPDATE tokens SET failures = 0, failures_at = %s, "
    "locked_until = CASE WHEN locked_until > %s THEN %s ELSE locked_until END, "
    "version = version + 1 WHERE serial = %s"
)


def state_parameters(serial: str, expected_version: int, state: TokenState) -> tuple[Any, ...]:
    """The parameters of :data:`STATE_UPDATE`."""
    return (
        state.counter,
        state.last_step,
        state.drift,
        state.failures,
        float(state.failures_at),
        state.lock_count,
        float(state.locked_until),
        bool(state.enabled),
        encode_sends(state.sends),
        state.pending_until,
        state.last_code_tag,
        serial,
        expected_version,
    )


def row_to_token(row: Sequence[Any]) -> Token:
    """Build a token from a row of :data:`COLUMNS`."""
    values = dict(zip(COLUMNS, row, strict=True))
    return Token(
        serial=values["serial"],
        user=values["user_name"],
        token_type=TokenType(values["token_type"]),
        algorithm=HashAlgorithm(values["algorithm"]),
        digits=values["digits"],
        period=values["period"],
        t0=values["t0"],
        sealed=bytes(values["sealed"]),
        fingerprint=bytes(values["fingerprint"]),
        counter=values["counter"],
        last_step=values["last_step"],
        drift=values["drift"],
        enabled=bool(values["enabled"]),
        failures=values["failures"],
        lock_count=values["lock_count"],
        locked_until=values["locked_until"],
        issuer=values["issuer"],
        not_before=values["not_before"],
        not_after=values["not_after"],
        created=values["created"],
        version=values["version"],
        binding=None if values["binding"] is None else bytes(values["binding"]),
        failures_at=values["failures_at"],
        channel=values["channel"],
        address=values["address"],
        sends=decode_sends(values["sends"]),
        pending_until=values["pending_until"],
        last_code_tag=None if values["last_code_tag"] is None else bytes(values["last_code_tag"]),
    )


def token_to_row(token: Token, now: float | None = None) -> tuple[Any, ...]:
    """The values of :data:`COLUMNS` for a token (``created`` defaults to ``now``)."""
    return (
        token.serial,
        token.user,
        token.token_type.value,
        token.algorithm.value,
        token.digits,
        token.period,
        token.t0,
        token.sealed,
        token.fingerprint,
        token.counter,
        token.last_step,
        token.drift,
        bool(token.enabled),
        token.failures,
        token.lock_count,
        float(token.locked_until),
        token.issuer,
        token.not_before,
        token.not_after,
        token.created or (time.time() if now is None else now),
        token.version,
        token.binding,
        float(token.failures_at),
        token.channel,
        token.address,
        encode_sends(token.sends),
        token.pending_until,
        token.last_code_tag,
    )


#: Self-service: pending tokens whose time is up (parameter: now).  Deleted in one statement.
EXPIRED_PENDING = "SELECT serial FROM tokens WHERE pending_until IS NOT NULL AND pending_until <= %s"
DELETE_EXPIRED_PENDING = "DELETE FROM tokens WHERE pending_until IS NOT NULL AND pending_until <= %s"

BACKUP_COLUMNS = ("user_name", "kind", "scheme", "salt", "digest", "created", "used_at", "binding")
SELECT_BACKUP = "SELECT " + ", ".join(BACKUP_COLUMNS) + " FROM backup_codes WHERE user_name = %s"
INSERT_BACKUP = f"INSERT INTO backup_codes ({', '.join(BACKUP_COLUMNS)}) VALUES ({', '.join(['%s'] * len(BACKUP_COLUMNS))})"
DELETE_BACKUP = "DELETE FROM backup_codes WHERE user_name = %s"
#: The one use of a backup code: a compare-and-set on ``used_at`` (parameters: now, user, digest).
USE_BACKUP = "UPDATE backup_codes SET used_at = %s WHERE user_name = %s AND digest = %s AND used_at IS NULL"


def row_to_backup_code(row: Sequence[Any]) -> BackupCode:
    """Build a backup code from a row of :data:`BACKUP_COLUMNS`."""
    user, kind, scheme, salt, digest, created, used_at, binding = row
    return BackupCode(user, kind, scheme, bytes(salt), bytes(digest), created, used_at, bytes(binding))


def backup_code_to_row(code: BackupCode) -> tuple[Any, ...]:
    """The values of :data:`BACKUP_COLUMNS` for a backup code."""
    return (
        code.user,
        code.kind,
        code.scheme,
        code.salt,
        code.digest,
        code.created,
        code.used_at,
        code.binding,
    )


#: Remembered hosts (parameters: user, rhost, service, until, binding), one row per key.
REMEMBER = (
    "INSERT INTO remembered (user_name, rhost, service, until, binding) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (user_name, rhost, service) DO UPDATE SET until = EXCLUDED.until, binding = EXCLUDED.binding"
)
SELECT_REMEMBERED = (
    "SELECT user_name, rhost, service, until, binding FROM remembered "
    "WHERE user_name = %s AND rhost = %s AND service = %s"
)
FORGET = "DELETE FROM remembered WHERE user_name = %s"
FORGET_EXPIRED = "DELETE FROM remembered WHERE until <= %s"


def row_to_remembered(row: Sequence[Any]) -> Remembered:
    """Build a remembered host from a row of :data:`SELECT_REMEMBERED`."""
    user, rhost, service, until, binding = row
    return Remembered(user, rhost, service, float(until), bytes(binding))


#: Tokens by type and state, for the metrics (parameter: now).
TOKEN_COUNTS = (
    "SELECT token_type, CASE WHEN pending_until IS NOT NULL THEN 'pending' "
    "WHEN NOT enabled THEN 'disabled' WHEN locked_until > %s THEN 'locked' ELSE 'active' END AS state, "
    "count(*) FROM tokens GROUP BY token_type, state"
)
