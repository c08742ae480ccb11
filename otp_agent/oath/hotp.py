"""HOTP (RFC 4226) code computation over an injected HMAC function.

Nothing here touches a key: the caller hands in ``compute_hmacs``, which maps moving-factor
messages to HMAC outputs.  The software backend computes them in-process; the payShield backend
computes them inside the HSM.  TOTP (RFC 6238) codes are the same codes with a time step
(:func:`otp_agent.oath.totp.time_step`) as the counter.  All functions are pure.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Iterable, Sequence

#: Maps moving-factor messages (8-byte big-endian counters) to their HMACs, in order.
HmacBatch = Callable[[Sequence[bytes]], Sequence[bytes]]


def counter_message(counter: int) -> bytes:
    """Encode a counter or time step as the 8-byte big-endian HMAC message."""
    if not 0 <= counter < 2**64:
        raise ValueError("counter out of range")
    return struct.pack(">Q", counter)


def dynamic_truncate(mac: bytes) -> int:
    """Return the 31-bit value selected by RFC 4226 dynamic truncation."""
    offset = mac[-1] & 0x0F
    return int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF


def format_code(mac: bytes, digits: int) -> str:
    """Turn an HMAC into a zero-padded decimal code of ``digits`` digits."""
    return str(dynamic_truncate(mac) % 10**digits).zfill(digits)


def codes_for(compute_hmacs: HmacBatch, counters: Sequence[int], digits: int) -> list[str]:
    """Compute the codes for ``counters`` with one call to ``compute_hmacs`` (one HSM batch)."""
    macs = compute_hmacs([counter_message(c) for c in counters])
    if len(macs) != len(counters):
        raise ValueError("HMAC backend returned a wrong number of results")
    return [format_code(mac, digits) for mac in macs]


def match_code(submitted: str, candidates: Iterable[tuple[int, str]]) -> int | None:
    """Return the first moving factor whose code equals ``submitted``, comparing every candidate.

    Every comparison is made in constant time and all candidates are compared, so the time taken
    does not reveal which one (if any) matched.
    """
    found: int | None = None
    encoded = submitted.encode("ascii")
    for factor, code in candidates:
        if hmac.compare_digest(encoded, code.encode("ascii")) and found is None:
            found = factor
    return found
