"""What a migration from a peer's state file produces, and the checks both readers share.

This module owns :class:`Migration` (the result of reading one peer file), the collection of
problems and warnings with their line numbers (:class:`Findings`, which raises
:class:`~otp_agent.errors.MigrationRefused` once, with every problem), the decoding of the
file's bytes into lines, the user-name and secret-size rules, and the building of the
:class:`~otp_agent.wire.TokenRecord` each token becomes.  It reads no file and touches no store.

No text built here contains a secret, a scratch code, a static password or a one-time code: a
message names a line, an option or a size, never a value read from the file (user names and
option names excepted; they are escaped and cut to a printable length).
"""

from __future__ import annotations

import base64
import calendar
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from otp_agent.administration import new_serial
from otp_agent.errors import MigrationRefused
from otp_agent.oath import HashAlgorithm, TokenType, codes_for
from otp_agent.oath.params import MAX_SECRET_SIZE
from otp_agent.wire import TokenRecord

#: Largest peer file read (the google-authenticator module itself stops at 1,000,000 bytes).
MAX_FILE_SIZE = 1024 * 1024
#: Secrets below this size (80 bits) are refused: too weak to keep, whatever the phone holds.
MIN_SECRET_SIZE = 10
#: Secrets below this size are imported with a warning (the OATH profile asks for 160 bits).
RECOMMENDED_SECRET_SIZE = HashAlgorithm.SHA1.minimum_key_size
#: User names: 1 to this many printable characters, no white space.
MAX_USER_LENGTH = 256
#: Longest name (user, option) echoed in a message; longer ones are cut.
_SHOWN_LENGTH = 64


@dataclass(frozen=True)
class Migration:
    """What one peer file becomes.

    ``records`` holds one import record per token (secret in ``secret_b64``, fresh serial).
    ``scratch_codes`` maps a user to their 8-digit scratch codes in file order (only users that
    have some appear); it is left out of the ``repr``.  ``warnings`` holds one sentence per
    thing of the file that has no equivalent in otp-agent.  ``source`` is the format name.
    """

    records: tuple[TokenRecord, ...]
    scratch_codes: Mapping[str, tuple[str, ...]] = field(repr=False)
    warnings: tuple[str, ...]
    source: str


def shown(text: str, limit: int = _SHOWN_LENGTH) -> str:
    """``text`` made safe to print: control characters escaped, length capped."""
    out = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


class Findings:
    """The problems and warnings of one file, each prefixed with ``NAME line N:``."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def where(self, line: int | None) -> str:
        """The prefix of a finding: the file's name and, when known, the line."""
        return f"{self.source_name} line {line}" if line is not None else self.source_name

    def problem(self, line: int | None, text: str) -> None:
        """Record a reason to refuse the file."""
        self.problems.append(f"{self.where(line)}: {text}")

    def warning(self, line: int | None, text: str) -> None:
        """Record something that is carried over differently, or not at all."""
        self.warnings.append(f"{self.where(line)}: {text}")

    def refuse(self) -> MigrationRefused:
        """The error for the problems found so far (there must be some)."""
        count = len(self.problems)
        return MigrationRefused(
            f"{self.source_name}: migration refused, nothing was imported "
            f"({count} problem{'s' if count != 1 else ''})",
            self.problems,
        )

    def raise_if_any(self) -> None:
        """Raise :class:`MigrationRefused` with every problem, if there is one."""
        if self.problems:
            raise self.refuse()


def text_lines(data: bytes, findings: Findings) -> list[str]:
    """The file's lines (CR LF or LF ends, without them).

    :raises MigrationRefused: the file is too large, holds a NUL byte or is not UTF-8.
    """
    if len(data) > MAX_FILE_SIZE:
        findings.problem(None, f"the file has {len(data)} bytes, more than the {MAX_FILE_SIZE} accepted")
        raise findings.refuse()
    if b"\0" in data:
        findings.problem(data.count(b"\n", 0, data.index(b"\0")) + 1, "the file holds a NUL byte")
        raise findings.refuse()
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        findings.problem(data.count(b"\n", 0, exc.start) + 1, "the file is not valid UTF-8 text")
        raise findings.refuse() from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def user_problem(user: str) -> str | None:
    """Why ``user`` is not a valid user name, or ``None``."""
    if not 1 <= len(user) <= MAX_USER_LENGTH:
        return f"a user name must have 1 to {MAX_USER_LENGTH} characters"
    if not user.isprintable() or any(ch.isspace() for ch in user):
        return f"user name '{shown(user)}' has a space or a character that is not printable"
    return None


def secret_size_checks(size: int) -> str | None:
    """Why a secret of ``size`` bytes is refused, or ``None`` when it may be imported."""
    if size == 0:
        return "the secret is empty"
    if size < MIN_SECRET_SIZE:
        return f"the secret has {size} bytes; at least {MIN_SECRET_SIZE} (80 bits) are needed"
    if size > MAX_SECRET_SIZE:
        return f"the secret has {size} bytes; otp-agent accepts at most {MAX_SECRET_SIZE}"
    return None


def short_secret_warning(record: TokenRecord, size: int) -> str | None:
    """The warning for a secret below the recommended size, naming the token, or ``None``."""
    if size >= RECOMMENDED_SECRET_SIZE:
        return None
    return (
        f"token {record.serial} of user '{shown(record.user or '')}' has a {size}-byte secret, "
        f"shorter than the {RECOMMENDED_SECRET_SIZE} bytes otp-agent asks of new tokens; it is "
        "imported so the phone keeps working: enroll a new token for this user when convenient"
    )


class Serials:
    """Fresh serials, none twice within one file."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def new(self, token_type: TokenType) -> str:
        """A serial no other token of this file has."""
        while (serial := new_serial(token_type)) in self._taken:
            pass
        self._taken.add(serial)
        return serial


def make_record(
    serial: str,
    token_type: TokenType,
    secret: bytes,
    user: str,
    *,
    digits: int,
    period: int = 30,
    counter: int = 0,
    drift: int = 0,
    last_step: int | None = None,
) -> TokenRecord:
    """The import record of one SHA-1 token (T0 = 0, no issuer)."""
    return TokenRecord(
        serial=serial,
        type=token_type.value,
        algorithm=HashAlgorithm.SHA1.value,
        digits=digits,
        period=period,
        t0=0,
        counter=counter,
        drift=drift,
        user=user,
        issuer=None,
        last_step=last_step,
        secret_b64=base64.b64encode(secret).decode("ascii"),
    )


def sha1_codes(secret: bytes, factors: Sequence[int], digits: int) -> list[str]:
    """The HOTP codes of ``factors`` (counters or time steps) for a SHA-1 ``secret``."""

    def hmacs(messages: Sequence[bytes]) -> list[bytes]:
        return [hmac.new(secret, message, "sha1").digest() for message in messages]

    return codes_for(hmacs, list(factors), digits)


def equal_codes(left: str, right: str) -> bool:
    """Compare two codes in constant time."""
    return hmac.compare_digest(left.encode("ascii"), right.encode("ascii"))


def local_time_to_unix(
    parsed: time.struct_time, timezone_offset: Callable[[float], float] | None = None
) -> float:
    """Seconds since the epoch of a local wall-clock time (no zone in the text).

    Without ``timezone_offset``: :func:`time.mktime` with ``tm_isdst = -1``, as liboath does
    (the process's ``TZ``).  With it: ``timezone_offset(wall)`` gets the wall-clock time read
    as if it were UTC (seconds) and returns the local zone's offset east of UTC in seconds at
    that time; the result is ``wall - offset``.

    :raises ValueError: the time cannot be represented.
    """
    if timezone_offset is None:
        fields = (*parsed[:8], -1)
        return time.mktime(time.struct_time(fields))
    wall = float(calendar.timegm(parsed))
    return wall - float(timezone_offset(wall))


def frozen_codes(codes: Mapping[str, list[str]]) -> Mapping[str, tuple[str, ...]]:
    """An immutable copy of a user-to-codes mapping (users without codes left out)."""
    return MappingProxyType({user: tuple(values) for user, values in codes.items() if values})
