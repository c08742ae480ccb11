"""Pure OATH mathematics: parameters, HOTP/TOTP codes, otpauth:// URIs.  Standard library only."""

from otp_agent.oath.hotp import (
    HmacBatch,
    codes_for,
    counter_message,
    dynamic_truncate,
    format_code,
    match_code,
)
from otp_agent.oath.params import (
    DEFAULT_PERIOD,
    HashAlgorithm,
    OathParams,
    TokenType,
    check_key_size,
)
from otp_agent.oath.totp import time_step

__all__ = [
    "DEFAULT_PERIOD",
    "HashAlgorithm",
    "HmacBatch",
    "OathParams",
    "TokenType",
    "check_key_size",
    "codes_for",
    "counter_message",
    "dynamic_truncate",
    "format_code",
    "match_code",
    "time_step",
]
