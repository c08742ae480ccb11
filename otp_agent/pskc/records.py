"""Token records as the admin socket carries them for ``import`` and ``export``.

This module owns the mapping between :class:`ImportedToken`/:class:`ExportedToken` and the
JSON-able dictionaries of the wire (fields ``serial``, ``type``, ``algorithm``, ``digits``,
``period``, ``t0``, ``counter``, ``drift``, ``user``, ``issuer``, ``not_before``, ``not_after``
and ``secret_b64``).  These records carry a secret in base64 and travel only over the root-only
admin socket; they must never be logged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from otp_agent.errors import InvalidToken, UsageError
from otp_agent.oath.params import HashAlgorithm, OathParams, TokenType
from otp_agent.pskc.model import ExportedToken
from otp_agent.sensitive import Secret


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def record_from_token(token: ExportedToken) -> dict[str, Any]:
    """Return the wire record of ``token``, its secret base64-encoded in ``secret_b64``."""
    params = token.params
    return {
        "serial": token.serial,
        "type": params.token_type.value,
        "algorithm": params.algorithm.value,
        "digits": params.digits,
        "period": params.period,
        "t0": params.t0,
        "counter": token.counter,
        "drift": token.drift,
        "user": token.user,
        "issuer": token.issuer,
        "not_before": _iso(token.not_before),
        "not_after": _iso(token.not_after),
        "secret_b64": base64.b64encode(token.secret.reveal()).decode("ascii"),
    }


def _int(record: Mapping[str, Any], name: str, default: int) -> int:
    value = record.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"token record field {name!r} must be an integer")
    return value


def _opt_str(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"token record field {name!r} must be a string or null")
    return value


def _opt_date(record: Mapping[str, Any], name: str) -> datetime | None:
    """Read a date given as ISO 8601 text or as seconds since the epoch (the store's form)."""
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    if not isinstance(value, str):
        raise UsageError(f"token record field {name!r} must be an ISO 8601 date or a timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"token record field {name!r} is not an ISO 8601 date") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def token_from_record(record: Mapping[str, Any]) -> ExportedToken:
    """Rebuild a token from a wire record; raise :class:`UsageError` or :class:`InvalidToken`."""
    serial = record.get("serial")
    if not isinstance(serial, str) or not serial:
        raise UsageError("token record has no serial")
    try:
        token_type = TokenType(record.get("type"))
        algorithm = HashAlgorithm(record.get("algorithm", "sha1"))
    except ValueError:
        raise InvalidToken(f"token {serial!r}: unknown type or algorithm") from None
    params = OathParams(token_type, algorithm, _int(record, "digits", 6),
                        _int(record, "period", 30), _int(record, "t0", 0))
    encoded = record.get("secret_b64")
    if not isinstance(encoded, str):
        raise UsageError(f"token {serial!r}: record has no secret_b64")
    try:
        secret = Secret(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise UsageError(f"token {serial!r}: secret_b64 is not valid base64") from None
    return ExportedToken(
        serial=serial, params=params, secret=secret, counter=_int(record, "counter", 0),
        drift=_int(record, "drift", 0), user=_opt_str(record, "user"),
        issuer=_opt_str(record, "issuer"), not_before=_opt_date(record, "not_before"),
        not_after=_opt_date(record, "not_after"),
    )
