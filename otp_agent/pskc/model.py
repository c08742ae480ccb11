"""The data that crosses the PSKC package boundary: tokens in and out, and import problems.

This module owns the public record types (:class:`ImportedToken`, :class:`ExportedToken`), the
problem report (:class:`Problem`, :class:`PskcImportError`) and the intermediate :class:`RawKey`
that the XML reader hands to the profile rules.  It holds no parsing or cryptography.  Secrets
live only in :class:`~otp_agent.sensitive.Secret` objects, which never show their bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from otp_agent.errors import PskcError
from otp_agent.oath.params import OathParams
from otp_agent.sensitive import Secret

#: Longest key Id echoed back in a message; longer ones are cut.
_SHOWN_ID_LENGTH = 64


def printable(text: str, limit: int = _SHOWN_ID_LENGTH) -> str:
    """Return ``text`` made safe to print on a terminal: control characters escaped, length capped."""
    shown = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text[:limit])
    return shown + ("..." if len(text) > limit else "")


@dataclass(frozen=True)
class Problem:
    """One reason a PSKC file is refused, located by XML line and, when known, key Id."""

    message: str
    line: int | None = None
    key_id: str | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.key_id is not None:
            where.append(f"key {printable(self.key_id)!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class PskcImportError(PskcError):
    """A PSKC file was refused; ``details`` holds every :class:`Problem`, ``problems`` their text."""

    def __init__(self, message: str, details: list[Problem]) -> None:
        super().__init__(message, [str(problem) for problem in details])
        self.details = list(details)


@dataclass(frozen=True)
class ExportedToken:
    """One token to write into a PSKC export (migration or backup)."""

    serial: str
    params: OathParams
    secret: Secret = field(repr=False, compare=False)
    counter: int = 0
    drift: int = 0
    user: str | None = None
    issuer: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    manufacturer: str | None = None


@dataclass(frozen=True)
class ImportedToken(ExportedToken):
    """One token read from a PSKC file that passed every rule of the OATH profile."""

    line: int = 0


@dataclass
class RawKey:
    """What the XML reader found for one ``<Key>``, before the profile rules judge it.

    Text fields are exactly as written in the file (stripped); numbers are already decoded and
    decrypted.  ``None`` means "absent".  The reader has already reported structural problems.
    """

    line: int
    key_id: str | None = None
    algorithm: str | None = None
    issuer: str | None = None
    manufacturer: str | None = None
    device_serial: str | None = None
    key_user: str | None = None
    device_user: str | None = None
    suite: str | None = None
    response_format_line: int | None = None
    response_length: str | None = None
    response_encoding: str | None = None
    check_digits: str | None = None
    secret: Secret | None = field(default=None, repr=False)
    secret_error: bool = False
    key_reference: str | None = None
    counter: int | None = None
    time: int | None = None
    time_interval: int | None = None
    time_drift: int | None = None
    start_date: str | None = None
    expiry_date: str | None = None
    key_usage: list[str] = field(default_factory=list)
    pin_key_id: str | None = None
    pin_usage_mode: str | None = None
    unknown_policy: list[str] = field(default_factory=list)
    has_policy: bool = False
    bad_fields: set[str] = field(default_factory=set)
