"""The OATH TOTP Validation Server Profile's import rules, applied to :class:`RawKey` records.

This module owns what makes a key importable: the token identifier format of ``Key/@Id``, the
algorithm URI, ``Time``/``TimeInterval`` for TOTP, ``ResponseFormat`` DECIMAL with 6 or 8
digits, key sizes per hash, uniqueness of Ids and secrets within the file, and the optional
counter, drift, validity dates, user and policy.  It turns each good record into an
:class:`ImportedToken` and reports every bad one; it never decides alone to drop a record.
Uniqueness against the token store is the daemon's job.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Protocol

from otp_agent.errors import InvalidToken
from otp_agent.oath.params import MAX_COUNTER, MAX_T0, HashAlgorithm, OathParams, TokenType, check_key_size
from otp_agent.pskc.model import ImportedToken, Problem, RawKey, printable

_PSKC = "urn:ietf:params:xml:ns:keyprov:pskc"
ALGORITHMS = {
    f"{_PSKC}:hotp": TokenType.HOTP,
    f"{_PSKC}#hotp": TokenType.HOTP,
    f"{_PSKC}:totp": TokenType.TOTP,
    f"{_PSKC}#totp": TokenType.TOTP,
}
PIN_ALGORITHMS = {f"{_PSKC}:pin", f"{_PSKC}#pin"}

#: OATH token identifier ("Class A"): 2-character manufacturer prefix (OMP), 2-character token
#: type, 8-digit serial.  Upper-case letters and digits only, as printed on tokens.
STRICT_ID = re.compile(r"^[A-Z0-9]{2}[A-Z0-9]{2}[0-9]{8}$")
#: The ``--any-id`` format: 1 to 64 printable ASCII characters, no whitespace.
ANY_ID = re.compile(r"^[\x21-\x7e]{1,64}$")
#: A user name as logins know it: no whitespace, no DN punctuation, at most 256 characters
#: (so ``jdoe``, ``j.doe``, ``jdoe@example.com`` and ``EXAMPLE\\jdoe`` pass, a display name does not).
USER_NAME = re.compile(r"^[^\s,=+<>#;\"]{1,256}$")

#: ``Suite`` values, compared upper-case without "-", "_" or spaces (vendors write
#: ``HMAC-SHA256``, ``HMAC-SHA-256``, ``SHA256``...).
SUITES = {
    "HMACSHA1": HashAlgorithm.SHA1,
    "SHA1": HashAlgorithm.SHA1,
    "HMACSHA256": HashAlgorithm.SHA256,
    "SHA256": HashAlgorithm.SHA256,
    "HMACSHA512": HashAlgorithm.SHA512,
    "SHA512": HashAlgorithm.SHA512,
}


def suite_hash(suite: str) -> HashAlgorithm | None:
    """Return the hash named by a ``Suite`` value, or ``None`` when it is not one we accept."""
    return SUITES.get(re.sub(r"[-_\s]", "", suite).upper())


#: Largest time-step drift accepted from a file, in steps either way.
MAX_DRIFT = 1000
EXPECTED_PERIOD = 30


def check_serial(key_id: str, strict: bool) -> str | None:
    """Return why ``key_id`` is not an acceptable token serial, or ``None`` when it is."""
    if strict:
        if STRICT_ID.match(key_id):
            return None
        return (
            "Key Id is not an OATH token identifier (12 characters: 2-character manufacturer "
            "prefix and 2-character token type, letters A-Z or digits, then an 8-digit serial); "
            "use the any-id option to accept other formats"
        )
    if ANY_ID.match(key_id):
        return None
    return "Key Id must be 1 to 64 printable ASCII characters without whitespace"


def _user_name(value: str) -> str | None:
    return value if USER_NAME.match(value) and value.isprintable() else None


def user_from(user_id: str) -> str | None:
    """Return the user name in a ``UserId``: the name itself, or the one ``UID=`` of a DN."""
    value = user_id.strip()
    if "=" not in value:
        return _user_name(value)
    uids = [
        part.split("=", 1)[1].strip()
        for part in value.split(",")
        if "=" in part and part.split("=", 1)[0].strip().lower() == "uid"
    ]
    return _user_name(uids[0]) if len(uids) == 1 else None


def parse_date(text: str) -> datetime:
    """Parse an ``xs:dateTime``; a value without a zone is taken as UTC."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


class _Report(Protocol):
    """Type of the per-key problem callback."""

    def __call__(self, message: str, line: int | None = None) -> None: ...


class RuleChecker:
    """Judges records one by one and remembers what uniqueness needs across the file."""

    def __init__(
        self, *, strict_ids: bool, problems: list[Problem], notes: list[str], local_pin_ids: set[str]
    ) -> None:
        self.strict_ids = strict_ids
        self.problems = problems
        self.notes = notes
        self.local_pin_ids = local_pin_ids
        self._ids: dict[str, int] = {}
        self._secrets: dict[bytes, tuple[str | None, int]] = {}

    def judge(self, raw: RawKey) -> ImportedToken | None:
        """Return the token for ``raw`` or ``None`` after reporting every rule it breaks."""
        before = len(self.problems)

        def problem(message: str, line: int | None = None) -> None:
            """Report a problem of this key (at the key's line unless told otherwise)."""
            self.problems.append(Problem(message, line or raw.line, raw.key_id))

        if raw.algorithm in PIN_ALGORITHMS and raw.key_id in self.local_pin_ids:
            self.notes.append(
                f"line {raw.line}: key {printable(raw.key_id or '')!r} is a device "
                "PIN checked on the token itself (PINUsageMode Local); not imported"
            )
            return None
        serial = self._check_id(raw, problem)
        token_type = self._check_algorithm(raw, problem)
        hash_algorithm = HashAlgorithm.SHA1
        if raw.suite is not None:
            found = suite_hash(raw.suite)
            if found is None:
                problem(f"Suite {printable(raw.suite)!r} is not HMAC-SHA1, HMAC-SHA256 or HMAC-SHA512")
            else:
                hash_algorithm = found
        digits = self._check_response_format(raw, problem)
        self._check_secret(raw, hash_algorithm, problem)
        period, t0, drift = self._check_time(raw, token_type, problem)
        counter = self._check_counter(raw, token_type, problem)
        not_before, not_after = self._check_dates(raw, problem)
        user = self._check_user(raw, problem)
        self._check_policy(raw, problem)
        if len(self.problems) != before or serial is None or token_type is None or raw.secret is None:
            return None
        try:
            params = OathParams(token_type, hash_algorithm, digits, period, t0)
        except InvalidToken as exc:
            problem(str(exc))
            return None
        return ImportedToken(
            serial=serial,
            params=params,
            secret=raw.secret,
            counter=counter,
            drift=drift,
            not_before=not_before,
            not_after=not_after,
            user=user,
            issuer=raw.issuer,
            manufacturer=raw.manufacturer,
            line=raw.line,
        )

    def _check_id(self, raw: RawKey, problem: _Report) -> str | None:
        if raw.key_id is None or not raw.key_id.strip():
            problem("Key has no Id attribute; the profile uses Key/@Id as the token serial")
            return None
        reason = check_serial(raw.key_id, self.strict_ids)
        if reason:
            problem(reason)
            return None
        first = self._ids.setdefault(raw.key_id, raw.line)
        if first != raw.line:
            problem(f"Key Id is used twice in this file (first at line {first})")
            return None
        return raw.key_id

    @staticmethod
    def _check_algorithm(raw: RawKey, problem: _Report) -> TokenType | None:
        if not raw.algorithm:
            problem("Key has no Algorithm attribute")
            return None
        token_type = ALGORITHMS.get(raw.algorithm.strip())
        if token_type is None:
            problem(f"algorithm {printable(raw.algorithm, 120)!r} is not HOTP or TOTP")
        return token_type

    @staticmethod
    def _check_response_format(raw: RawKey, problem: _Report) -> int:
        if raw.response_format_line is None:
            problem(
                "Key has no AlgorithmParameters/ResponseFormat (the profile requires "
                "Encoding DECIMAL and Length 6 or 8)"
            )
            return 6
        line = raw.response_format_line
        if raw.response_encoding != "DECIMAL":
            problem(
                f"ResponseFormat Encoding is {printable(str(raw.response_encoding))!r}, not DECIMAL", line
            )
        if raw.response_length not in ("6", "8"):
            problem(f"ResponseFormat Length is {printable(str(raw.response_length))!r}, not 6 or 8", line)
        if raw.check_digits is not None and raw.check_digits.strip() in ("true", "1"):
            problem("ResponseFormat CheckDigits (Luhn check digit) is not supported", line)
        return 8 if raw.response_length == "8" else 6

    def _check_secret(self, raw: RawKey, hash_algorithm: HashAlgorithm, problem: _Report) -> None:
        if raw.secret is None:
            if raw.secret_error:
                return
            if raw.key_reference is not None:
                problem("Key has no Secret but a KeyReference (server-side key derivation is not supported)")
            else:
                problem("Key has no Data/Secret")
            return
        try:
            check_key_size(hash_algorithm, len(raw.secret))
        except InvalidToken as exc:
            problem(f"Secret: {exc}")
            return
        fingerprint = hashlib.sha256(raw.secret.reveal()).digest()
        first = self._secrets.setdefault(fingerprint, (raw.key_id, raw.line))
        if first[1] != raw.line:
            problem(
                f"Secret is the same as the one of key {printable(str(first[0]))!r} "
                f"(line {first[1]}); secrets must be unique"
            )

    def _check_time(
        self, raw: RawKey, token_type: TokenType | None, problem: _Report
    ) -> tuple[int, int, int]:
        if token_type is not TokenType.TOTP:
            return 30, 0, 0
        t0 = raw.time if raw.time is not None else 0
        period = raw.time_interval if raw.time_interval is not None else EXPECTED_PERIOD
        if raw.time is None and "Time" not in raw.bad_fields:
            problem("TOTP key has no Data/Time (T0, seconds since the epoch)")
        elif not 0 <= t0 <= MAX_T0:
            problem(f"Time (T0) must be from 0 to {MAX_T0} seconds since the epoch, not {t0}")
        if raw.time_interval is None and "TimeInterval" not in raw.bad_fields:
            problem("TOTP key has no Data/TimeInterval (time step in seconds)")
        elif not 1 <= period <= 3600:
            problem(f"TimeInterval must be from 1 to 3600 seconds, not {period}")
        elif period != EXPECTED_PERIOD:
            self.notes.append(
                f"line {raw.line}: key {printable(raw.key_id or '')!r} has a "
                f"{period}-second time step (30 expected); stored for this token"
            )
        drift = raw.time_drift or 0
        if abs(drift) > MAX_DRIFT:
            problem(f"TimeDrift must be within {MAX_DRIFT} time steps either way, not {drift}")
        return period, t0, drift

    @staticmethod
    def _check_counter(raw: RawKey, token_type: TokenType | None, problem: _Report) -> int:
        if token_type is not TokenType.HOTP or raw.counter is None:
            return 0
        if not 0 <= raw.counter <= MAX_COUNTER:
            problem(f"Counter must be from 0 to 2^63-1, not {raw.counter}")
            return 0
        return raw.counter

    def _check_dates(self, raw: RawKey, problem: _Report) -> tuple[datetime | None, datetime | None]:
        dates: list[datetime | None] = []
        for name, text in (("StartDate", raw.start_date), ("ExpiryDate", raw.expiry_date)):
            if text is None:
                dates.append(None)
                continue
            try:
                dates.append(parse_date(text))
            except ValueError:
                problem(f"{name} {printable(text)!r} is not an ISO 8601 date and time")
                dates.append(None)
        start, expiry = dates
        if start is not None and expiry is not None and expiry <= start:
            problem("ExpiryDate is not after StartDate")
        elif expiry is not None and expiry <= datetime.now(UTC):
            self.notes.append(
                f"line {raw.line}: key {printable(raw.key_id or '')!r} expired on {expiry.isoformat()}"
            )
        return start, expiry

    def _check_user(self, raw: RawKey, problem: _Report) -> str | None:
        if raw.key_user is not None:
            user = user_from(raw.key_user)
            if user is None:
                problem(
                    f"UserId {printable(raw.key_user)!r} is neither a login name nor a DN "
                    "with exactly one UID= naming a login name"
                )
            return user
        if raw.device_user is not None:
            user = user_from(raw.device_user)
            if user is None:
                self.notes.append(
                    f"line {raw.line}: DeviceInfo UserId "
                    f"{printable(raw.device_user)!r} names no login; token left unassigned"
                )
            return user
        return None

    @staticmethod
    def _check_policy(raw: RawKey, problem: _Report) -> None:
        if raw.key_usage and "OTP" not in raw.key_usage:
            problem(f"Policy KeyUsage {', '.join(printable(u) for u in raw.key_usage)} does not allow OTP")
        if raw.pin_usage_mode is not None and raw.pin_usage_mode != "Local":
            problem(
                f"PINPolicy PINUsageMode {printable(raw.pin_usage_mode)!r} needs a "
                "server-side PIN, which is not supported (only Local)"
            )
        for name in raw.unknown_policy:
            problem(
                f"Policy element {printable(name)!r} is not understood; RFC 6030 forbids "
                "using a key with a policy the server cannot enforce"
            )


def apply_rules(
    raws: list[RawKey], *, strict_ids: bool, problems: list[Problem], notes: list[str]
) -> list[ImportedToken]:
    """Judge every record; return the tokens of the good ones (meaningful only if no problem)."""
    local_pin_ids = {
        raw.pin_key_id for raw in raws if raw.pin_key_id is not None and raw.pin_usage_mode == "Local"
    }
    checker = RuleChecker(strict_ids=strict_ids, problems=problems, notes=notes, local_pin_ids=local_pin_ids)
    tokens = []
    for raw in raws:
        token = checker.judge(raw)
        if token is not None:
            tokens.append(token)
    return tokens
