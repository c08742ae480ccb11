"""TOTP (RFC 6238): the time step that serves as the HOTP moving factor.

A TOTP code is the HOTP code (:mod:`otp_agent.oath.hotp`) of the time step
T = floor((now - T0) / X); nothing else differs.
"""

from __future__ import annotations


def time_step(now: float, period: int, t0: int = 0) -> int:
    """Return T = floor((now - T0) / X) as in RFC 6238."""
    if now < t0:
        raise ValueError("time before T0")
    return int((int(now) - t0) // period)
