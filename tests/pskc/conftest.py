"""Shared constants and helpers of the PSKC tests: vector paths and the keys of the RFC figures."""

from __future__ import annotations

from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "pskc"
RFC = VECTORS / "rfc6030"
INVALID = VECTORS / "invalid"

#: RFC 6030 Figure 6 pre-shared key and Figure 7 password.
FIGURE6_PSK = bytes.fromhex("12345678901234567890123456789012")
FIGURE7_PASSWORD = "qwerty"
RFC_SECRET = b"12345678901234567890"


def read(path: Path) -> bytes:
    """Return the bytes of a vector file."""
    return path.read_bytes()


@pytest.fixture
def rfc() -> Path:
    """Folder of the re-typed RFC 6030 figures."""
    return RFC
