"""OATH token parameters and the key-size rules of the OATH validation server profile."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from otp_agent.errors import InvalidToken


class TokenType(str, enum.Enum):
    """The token types: the two OATH families, and out-of-band HOTP codes the agent sends."""

    HOTP = "hotp"
    TOTP = "totp"
    #: HOTP (RFC 4226) over a secret only the key backend knows; the agent computes each code
    #: and hands it to a delivery channel (mail, SMS gateway); no phone app is involved.
    OOB = "oob"


class HashAlgorithm(str, enum.Enum):
    """HMAC hash functions allowed by RFC 6238 (HOTP uses the same set here)."""

    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        """Size in bytes of the HMAC output."""
        return {"sha1": 20, "sha256": 32, "sha512": 64}[self.value]

    @property
    def minimum_key_size(self) -> int:
        """Smallest secret accepted at token creation (OATH profile: 20, 32, 64 bytes)."""
        return self.digest_size


DEFAULT_PERIOD = 30
MAX_SECRET_SIZE = 128
#: Largest HOTP counter a token may hold: the stores keep signed 64-bit integers.  A counter at
#: this value is exhausted (refused), never wrapped.
MAX_COUNTER = 2**63 - 1
#: Largest T0 (seconds since the epoch): the year 2242, well inside every store's integers.
MAX_T0 = 2**33


@dataclass(frozen=True)
class OathParams:
    """Everything that determines a token's codes, except its secret and its moving factor."""

    token_type: TokenType
    algorithm: HashAlgorithm = HashAlgorithm.SHA1
    digits: int = 6
    period: int = DEFAULT_PERIOD
    t0: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or self.digits not in (6, 8):
            raise InvalidToken(f"digits must be 6 or 8, not {self.digits!r}")
        if not isinstance(self.period, int) or not 1 <= self.period <= 3600:
            raise InvalidToken(f"period must be an integer from 1 to 3600 seconds, not {self.period!r}")
        if not isinstance(self.t0, int) or not 0 <= self.t0 <= MAX_T0:
            raise InvalidToken(
                f"T0 must be an integer from 0 to {MAX_T0} (seconds since the epoch), not {self.t0!r}"
            )


def check_key_size(algorithm: HashAlgorithm, size: int, minimum: int | None = None) -> None:
    """Raise :class:`InvalidToken` when a secret of ``size`` bytes is too short for ``algorithm``.

    ``minimum`` lowers the bar for tokens migrated from a peer, whose phones hold shorter
    secrets (google-authenticator makes 10- or 16-byte ones).
    """
    least = algorithm.minimum_key_size if minimum is None else minimum
    if size < least:
        raise InvalidToken(
            f"a {algorithm.value.upper()} secret must be at least {least} bytes, this one has {size}"
        )
    if size > MAX_SECRET_SIZE:
        raise InvalidToken(f"a secret may not exceed {MAX_SECRET_SIZE} bytes, this one has {size}")
