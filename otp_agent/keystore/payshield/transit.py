"""The transport wrapping of a clear HMAC key under a ZMK, for LU import.

Owns the one moment where a clear token secret leaves the host: it is wrapped with AES key
wrap with padding (RFC 5649) under the clear ZMK component held in ``zmk_file``, and the HSM
unwraps it inside with the same ZMK held under the LMK.  This is what the simulator implements
for LU transport format ``00``; on a real payShield the proprietary format 00 is not public, so
a real deployment must use the transport format its firmware documents (see docs/hsm.md).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)


def wrap_for_import(zmk: bytes, key: bytes) -> bytes:
    """Wrap ``key`` under the clear ZMK (AES-KWP); the result is a multiple of 8 bytes."""
    return aes_key_wrap_with_padding(zmk, key)


def unwrap_import(zmk: bytes, wrapped: bytes) -> bytes | None:
    """Unwrap an imported key (simulator side); return None if it does not authenticate."""
    try:
        return aes_key_unwrap_with_padding(zmk, wrapped)
    except (InvalidUnwrap, ValueError):
        return None
