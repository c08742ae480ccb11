"""Reading a pam_oath ``users.oath`` file (liboath's usersfile) into a migration.

This module owns the format as liboath's ``usersfile.c`` reads and writes it: one token a line,
fields separated by spaces or tabs::

    TYPE  USER  PASSWORD  HEX-SECRET  [COUNTER  [LAST-OTP  [LAST-LOGIN]]]

``TYPE`` is ``HOTP``, ``HOTP/E``, ``HOTP/E/6|7|8`` (counter-based) or ``HOTP/T30`` or
``HOTP/T60``, optionally followed by ``/6|7|8`` (time-based, 30 or 60 s); always SHA-1.  liboath
skips a line whose type it does not know, which is how ``#`` comments work; here only blank
lines and lines whose first field starts with ``#`` are skipped, any other unknown type refuses
the file.  ``PASSWORD`` is ``-`` (none) or ``+`` (checked by another module); anything else is
a static password, which is never migrated (the file is refused).  A user may have several
lines (several tokens).

State, as liboath writes it after each accepted code: ``COUNTER`` is the counter of that code
and ``LAST-OTP`` the code itself (liboath refuses it again), so a HOTP line with ``LAST-OTP``
expects ``COUNTER + 1`` next, and one without it expects ``COUNTER``.  For time-based lines
liboath's ``COUNTER`` is meaningless (it adds up window positions) and is ignored; liboath
finds the last used step from ``LAST-OTP`` alone.  Here that step is rebuilt from
``LAST-OTP`` and ``LAST-LOGIN`` (``%Y-%m-%dT%H:%M:%SL``, local time, the moment it was
accepted): among the steps within :data:`TOTP_SEARCH_STEPS` of that moment, the largest whose
code equals ``LAST-OTP`` becomes the token's last used step.  When none matches (or the time
is missing) the line is refused rather than imported without its replay state: a code the peer
accepted must not be accepted again, and the administrator can remove fields 5 to 7 of the line
to import it knowingly without that state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from otp_agent.config import PolicyConfig
from otp_agent.migration.model import (
    Findings,
    Migration,
    Serials,
    equal_codes,
    frozen_codes,
    local_time_to_unix,
    make_record,
    secret_size_checks,
    sha1_codes,
    short_secret_warning,
    shown,
    text_lines,
    user_problem,
)
from otp_agent.oath import TokenType, time_step
from otp_agent.oath.params import MAX_COUNTER
from otp_agent.wire import TokenRecord

FORMAT = "users.oath"
#: Steps searched on each side of the last login's time for the step of the last OTP.  It
#: covers pam_oath's ``window=`` up to this value (its default is 5).
TOTP_SEARCH_STEPS = 30
#: liboath's own limit: it reads secrets into a 32-byte buffer and fails on longer ones.
LIBOATH_MAX_SECRET = 32
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SL"


def _types() -> dict[str, tuple[TokenType, int, int]]:
    """liboath's ``parse_type``: type field to (token type, digits, period)."""
    types: dict[str, tuple[TokenType, int, int]] = {"HOTP": (TokenType.HOTP, 6, 30)}
    for digits in (None, 6, 7, 8):
        suffix = f"/{digits}" if digits else ""
        types[f"HOTP/E{suffix}"] = (TokenType.HOTP, digits or 6, 30)
        for period in (30, 60):
            types[f"HOTP/T{period}{suffix}"] = (TokenType.TOTP, digits or 6, period)
    return types


_TYPES = _types()
_SUPPORTED_DIGITS = (6, 8)
_SEPARATORS = re.compile(r"[ \t\r]+")
_NUMBER = re.compile(r"[0-9]+")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_SHOWN_LINES = 10


class _Line:
    """One token line being read: its fields, and the problems found in it."""

    def __init__(self, number: int, fields: list[str], findings: Findings) -> None:
        self.number = number
        self.fields = fields
        self.findings = findings
        self.failed = False

    def problem(self, text: str) -> None:
        self.failed = True
        self.findings.problem(self.number, text)

    def field(self, index: int) -> str | None:
        """Field ``index`` (1-based), or ``None`` when the line is shorter."""
        return self.fields[index - 1] if len(self.fields) >= index else None


def read_users_oath(
    data: bytes,
    *,
    policy: PolicyConfig,
    source_name: str = "FILE",
    timezone_offset: Callable[[float], float] | None = None,
) -> Migration:
    """Read a whole ``users.oath`` file: one token per line (a user may have several).

    All or nothing: every problem is collected, then :class:`~otp_agent.errors.MigrationRefused`
    is raised once.  The last-login time is local time: by default it is converted with
    :func:`time.mktime`, like liboath (the process's ``TZ``); ``timezone_offset`` replaces
    that: it gets the wall-clock time read as if it were UTC and returns the zone's offset east
    of UTC in seconds (``lambda wall: 0`` for a file written under UTC).  ``policy`` is taken
    for symmetry with the other reader: the file holds no window or lockout setting (those
    are pam_oath's module arguments).
    """
    del policy
    findings = Findings(source_name)
    lines = text_lines(data, findings)
    records: list[TokenRecord] = []
    serials = Serials()
    secrets_seen: dict[bytes, tuple[int, str]] = {}
    plus_lines: list[int] = []
    for number, text in enumerate(lines, start=1):
        fields = [f for f in _SEPARATORS.split(text) if f]
        if not fields or fields[0].startswith("#"):
            continue
        line = _Line(number, fields, findings)
        read = _read_line(line, serials, timezone_offset)
        if line.field(3) == "+":
            plus_lines.append(number)
        if read is None:
            continue
        record, secret = read
        assert record.user is not None
        if secret in secrets_seen:
            first, other = secrets_seen[secret]
            if other == record.user:
                line.problem(f"the same token as line {first} (same user and secret)")
            else:
                line.problem(
                    f"the same secret as line {first} (user '{shown(other)}'): otp-agent keeps one token per secret"
                )
            continue
        secrets_seen[secret] = (number, record.user)
        records.append(record)
        if (warning := short_secret_warning(record, len(secret))) is not None:
            findings.warning(number, warning)
        if len(secret) > LIBOATH_MAX_SECRET:
            findings.warning(
                number,
                f"token {record.serial} has a {len(secret)}-byte secret, longer than the "
                f"{LIBOATH_MAX_SECRET} bytes liboath reads: pam_oath could not have accepted its codes",
            )
    if plus_lines:
        findings.warning(
            plus_lines[0],
            f"the password field is '+' (checked by another module) on {_line_list(plus_lines)}: "
            "otp-agent checks the code only, so keep that password module in the PAM stack",
        )
    if not records and not findings.problems:
        findings.problem(None, "no token line found (pam_oath lines start with a HOTP type)")
    findings.raise_if_any()
    return Migration(
        records=tuple(records),
        scratch_codes=frozen_codes({}),
        warnings=tuple(findings.warnings),
        source=FORMAT,
    )


def _line_list(numbers: list[int]) -> str:
    shown_numbers = ", ".join(str(n) for n in numbers[:_SHOWN_LINES])
    more = f" and {len(numbers) - _SHOWN_LINES} more" if len(numbers) > _SHOWN_LINES else ""
    return f"line{'s' if len(numbers) > 1 else ''} {shown_numbers}{more}"


def _read_line(
    line: _Line, serials: Serials, timezone_offset: Callable[[float], float] | None
) -> tuple[TokenRecord, bytes] | None:
    """The record and secret of one token line, or ``None`` after recording its problems."""
    kind = _TYPES.get(line.fields[0])
    if kind is None:
        if line.fields[0].startswith("HOTP/T"):
            line.problem(
                f"type '{shown(line.fields[0])}': pam_oath reads only the periods T30 and T60 "
                "(it skips this line)"
            )
        else:
            line.problem(f"unknown token type '{shown(line.fields[0])}' (pam_oath skips this line)")
        return None
    token_type, digits, period = kind
    if digits not in _SUPPORTED_DIGITS:
        line.problem(
            f"{digits}-digit codes: otp-agent supports {' and '.join(map(str, _SUPPORTED_DIGITS))} digits"
        )
    if len(line.fields) < 4:
        line.problem("a token line needs at least four fields: type, user, password and secret")
        return None
    if len(line.fields) > 7:
        line.problem(f"has {len(line.fields)} fields; a token line has at most seven")
    user = line.fields[1]
    if (problem := user_problem(user)) is not None:
        line.problem(problem)
    password = line.fields[2]
    if password not in ("-", "+"):
        line.problem(
            "field 3 holds a static password, which is not migrated (otp-agent keeps no "
            "passwords): set it to '-' and keep the password in the system's password store"
        )
    secret = _secret(line)
    counter = _counter(line)
    last_otp = _last_otp(line, digits)
    login = _last_login(line, timezone_offset)
    if line.failed or secret is None:
        return None
    serial = serials.new(token_type)
    if token_type is TokenType.HOTP:
        following = (counter or 0) + (1 if last_otp is not None else 0)
        if following > MAX_COUNTER:
            line.problem(f"the counter (field 5) is beyond {MAX_COUNTER}")
            return None
        return make_record(serial, token_type, secret, user, digits=digits, counter=following), secret
    last_step = None
    if last_otp is not None:
        last_step = _used_step(line, secret, digits, period, last_otp, login)
        if last_step is None:
            return None
    record = make_record(serial, token_type, secret, user, digits=digits, period=period, last_step=last_step)
    return record, secret


def _secret(line: _Line) -> bytes | None:
    text = line.fields[3]
    if not _HEX.fullmatch(text):
        line.problem("the secret (field 4) is not valid hex (an even number of hex digits)")
        return None
    secret = bytes.fromhex(text)
    if (problem := secret_size_checks(len(secret))) is not None:
        line.problem(problem)
        return None
    return secret


def _counter(line: _Line) -> int | None:
    text = line.field(5)
    if text is None:
        return None
    if not _NUMBER.fullmatch(text) or int(text) > MAX_COUNTER:
        line.problem(f"the counter (field 5) must be a whole number from 0 to {MAX_COUNTER}")
        return None
    return int(text)


def _last_otp(line: _Line, digits: int) -> str | None:
    text = line.field(6)
    if text is None:
        return None
    if not _NUMBER.fullmatch(text):
        line.problem("the last one-time code (field 6) is not made of digits")
        return None
    if len(text) != digits:
        line.problem(
            f"the last one-time code (field 6) has {len(text)} digits but the type says {digits}: "
            "pam_oath goes by the code's own length, so correct the type to what the phone shows"
        )
        return None
    return text


def _last_login(line: _Line, timezone_offset: Callable[[float], float] | None) -> float | None:
    text = line.field(7)
    if text is None:
        return None
    try:
        moment = local_time_to_unix(time.strptime(text, TIME_FORMAT), timezone_offset)
    except (ValueError, OverflowError):
        line.problem("the last login time (field 7) is not a time of the form YYYY-MM-DDTHH:MM:SSL")
        return None
    if moment < 0:
        line.problem("the last login time (field 7) is before 1970")
        return None
    return moment


def _used_step(
    line: _Line, secret: bytes, digits: int, period: int, last_otp: str, login: float | None
) -> int | None:
    """The time step whose code is ``last_otp``, near the last login; ``None`` (a problem) else."""
    if login is None:
        if line.field(7) is None:
            line.problem(
                "has a last one-time code (field 6) but no last login time (field 7), so the "
                "time step it used cannot be found: remove fields 5 and 6 to import it without "
                "replay state"
            )
        return None
    centre = time_step(login, period)
    steps = [s for s in range(centre - TOTP_SEARCH_STEPS, centre + TOTP_SEARCH_STEPS + 1) if s >= 0]
    matches = [
        s
        for s, code in zip(steps, sha1_codes(secret, steps, digits), strict=True)
        if equal_codes(code, last_otp)
    ]
    if not matches:
        line.problem(
            f"the last one-time code (field 6) is the code of no time step within "
            f"{TOTP_SEARCH_STEPS} steps of the last login time (field 7), so the step it used is "
            "unknown: check the line, or remove fields 5 to 7 to import it without replay state"
        )
        return None
    return max(matches)
