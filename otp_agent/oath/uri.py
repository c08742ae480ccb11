"""otpauth:// provisioning URIs (the Key Uri Format read by authenticator apps)."""

from __future__ import annotations

import base64
from urllib.parse import quote, urlencode

from otp_agent.oath.params import OathParams, TokenType


def base32_secret(secret: bytes) -> str:
    """RFC 4648 base32 without padding, as authenticator apps expect."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def provisioning_uri(
    secret: bytes, params: OathParams, *, account: str, issuer: str, counter: int = 0
) -> str:
    """Build ``otpauth://TYPE/ISSUER:ACCOUNT?secret=...&issuer=...&algorithm=...&digits=...``."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = {
        "secret": base32_secret(secret),
        "issuer": issuer,
        "algorithm": params.algorithm.value.upper(),
        "digits": str(params.digits),
    }
    if params.token_type is TokenType.TOTP:
        query["period"] = str(params.period)
    else:
        query["counter"] = str(counter)
    return f"otpauth://{params.token_type.value}/{label}?{urlencode(query, quote_via=quote)}"
