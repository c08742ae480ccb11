"""Token records as the admin socket carries them for ``import`` and ``export``.

This module owns the mapping between :class:`ExportedToken` and the protocol's one token
record type, :class:`otp_agent.wire.TokenRecord` (the same record the agent uses for its token
views).  These records carry a secret in base64 and travel only over the root-only
admin socket; they must never be logged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from otp_agent.errors import InvalidToken, UsageError
from otp_agent.oath.params import HashAlgorithm, OathParams, TokenType
from otp_agent.pskc.model import ExportedToken
from otp_agent.sensitive import Secret
from otp_agent.wire import TokenRecord


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _date(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def record_from_token(token: ExportedToken) -> dict[str, Any]:
    """Return the wire record of ``token``, its secret base64-encoded in ``secret_b64``."""
    params = token.params
    return TokenRecord(
        serial=token.serial,
        type=params.token_type.value,
        algorithm=params.algorithm.value,
        digits=params.digits,
        period=params.period,
        t0=params.t0,
        counter=token.counter,
        drift=token.drift,
        user=token.user,
        issuer=token.issuer,
        not_before=_timestamp(token.not_before),
        not_after=_timestamp(token.not_after),
        secret_b64=base64.b64encode(token.secret.reveal()).decode("ascii"),
    ).message(state=False)


def token_from_record(message: Mapping[str, Any]) -> ExportedToken:
    """Rebuild a token from a wire record; raise :class:`UsageError` or :class:`InvalidToken`."""
    record = TokenRecord.parse(message)
    try:
        token_type = TokenType(record.type)
        algorithm = HashAlgorithm(record.algorithm)
    except ValueError:
        raise InvalidToken(f"token {record.serial!r}: unknown type or algorithm") from None
    params = OathParams(token_type, algorithm, record.digits, record.period, record.t0)
    if record.secret_b64 is None:
        raise UsageError(f"token {record.serial!r}: record has no secret_b64")
    try:
        secret = Secret(base64.b64decode(record.secret_b64, validate=True))
    except (binascii.Error, ValueError):
        raise UsageError(f"token {record.serial!r}: secret_b64 is not valid base64") from None
    return ExportedToken(
        serial=record.serial,
        params=params,
        secret=secret,
        counter=record.counter,
        drift=record.drift,
        user=record.user,
        issuer=record.issuer,
        not_before=_date(record.not_before),
        not_after=_date(record.not_after),
    )
