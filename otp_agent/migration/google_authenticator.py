"""Reading a ``~/.google_authenticator`` file (google-authenticator-libpam) into a migration.

This module owns the format as pam_google_authenticator reads it: the base32 secret on the
first line (decoded the module's way: spaces, tabs and ``-`` skipped, lower case accepted, ``0``
``1`` ``8`` read as ``O`` ``L`` ``B``, leftover bits dropped, no ``=`` padding), option lines
``" NAME value`` (the first line of a name wins, as the module's lookup does) and scratch codes
(lines of exactly eight digits, the first not ``0``).  The token is HOTP when ``HOTP_COUNTER``
is present (its value is the next counter the module accepts), TOTP when ``TOTP_AUTH`` is;
always SHA-1 with six digits.  ``STEP_SIZE`` is the period, ``TIME_SKEW`` (in time steps) the
drift, and the largest ``DISALLOW_REUSE`` entry (a used time step, skew included) the last
used step.  What has no equivalent becomes a warning; what cannot be read refuses the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from otp_agent.config import PolicyConfig
from otp_agent.migration.model import (
    Findings,
    Migration,
    Serials,
    frozen_codes,
    make_record,
    secret_size_checks,
    short_secret_warning,
    shown,
    text_lines,
    user_problem,
)
from otp_agent.oath import TokenType
from otp_agent.oath.params import MAX_COUNTER

FORMAT = "google-authenticator"

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
#: The module's reading of commonly mistyped characters (src/base32.c).
_MISTYPED = {"0": "O", "1": "L", "8": "B"}
_SCRATCH = re.compile(r"[1-9][0-9]{7}")
_NUMBER = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
_GRACE = frozenset(f"LAST{n}" for n in range(10))
#: Options that only a time-based token uses (the module ignores them for HOTP).
_TOTP_ONLY = ("STEP_SIZE", "TIME_SKEW", "DISALLOW_REUSE", "RESETTING_TIME_SKEW")
_KNOWN = frozenset({"TOTP_AUTH", "HOTP_COUNTER", "WINDOW_SIZE", "RATE_LIMIT", *_TOTP_ONLY, *_GRACE})
#: The module's default WINDOW_SIZE, for both token types.
_DEFAULT_WINDOW = 3
#: otp-agent's limit on an imported drift (otp_agent.administration checks it too).
_MAX_DRIFT = 1000
#: DISALLOW_REUSE entries are C ints in the module.
_MAX_STEP = 2**31 - 1


@dataclass(frozen=True)
class _Option:
    """One option line: ``" KEY value``."""

    line: int
    key: str
    value: str


def decode_base32(text: str) -> bytes | None:
    """The secret as the module decodes it (``base32_decode``), or ``None`` when invalid."""
    buffer = bits = 0
    out = bytearray()
    for ch in text:
        if ch in " \t\r-":
            continue
        ch = _MISTYPED.get(ch, ch)
        if "a" <= ch <= "z":
            ch = ch.upper()
        index = _BASE32.find(ch) if len(ch) == 1 else -1
        if index < 0:
            return None
        buffer = ((buffer << 5) | index) & 0xFFFF
        bits += 5
        if bits >= 8:
            out.append((buffer >> (bits - 8)) & 0xFF)
            bits -= 8
    return bytes(out)


def _split_option(body: str) -> tuple[str, str]:
    """An option line's name and value (after ``" ``; the name ends at a space or tab)."""
    match = re.match(r"([^ \t]*)[ \t]*(.*)", body)
    assert match is not None
    return match.group(1), match.group(2).rstrip(" \t")


def read_google_authenticator(
    data: bytes, user: str, *, policy: PolicyConfig, source_name: str = "FILE"
) -> Migration:
    """Read one user's ``~/.google_authenticator`` file: one token and the user's scratch codes.

    All or nothing: every problem of the file is collected, then
    :class:`~otp_agent.errors.MigrationRefused` is raised once.  Messages name lines and
    options, never the secret or a scratch code.
    """
    findings = Findings(source_name)
    lines = text_lines(data, findings)
    if (problem := user_problem(user)) is not None:
        findings.problem(None, problem)
    secret: bytes | None = None
    if not lines or not lines[0].strip(" \t"):
        findings.problem(1, "the first line holds no secret")
    elif (secret := decode_base32(lines[0])) is None:
        findings.problem(1, "the secret on the first line is not valid base32")
    elif (problem := secret_size_checks(len(secret))) is not None:
        findings.problem(1, problem)

    options: dict[str, _Option] = {}
    scratch: list[str] = []
    scratch_lines: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip(" \t"):
            continue
        if line.startswith('" '):
            key, value = _split_option(line[2:])
            if key in options:
                findings.warning(
                    number,
                    f"option {shown(key)} appears again (first on line {options[key].line}); the "
                    "module reads only the first, and so does the import",
                )
            else:
                options[key] = _Option(number, key, value)
        elif line.startswith('"'):
            findings.warning(
                number,
                "starts with a double quote but is not an option line; ignored, as the module ignores it",
            )
        elif _SCRATCH.fullmatch(line):
            if line in scratch_lines:
                findings.warning(
                    number, f"repeats the scratch code of line {scratch_lines[line]}; it is kept once"
                )
            else:
                scratch_lines[line] = number
                scratch.append(line)
        else:
            findings.problem(number, "is neither an option line nor an 8-digit scratch code")

    reader = _OptionReader(options, findings, policy)
    token_type = reader.token_type()
    window = reader.number("WINDOW_SIZE", 1, 100)
    reader.rate_limit()
    reader.grace()
    reader.unknown_options()
    serial = Serials().new(token_type or TokenType.TOTP)
    if token_type is TokenType.HOTP:
        counter = reader.number("HOTP_COUNTER", 1, MAX_COUNTER)
        reader.hotp_window(window)
        reader.ignored_for_hotp()
        findings.raise_if_any()
        assert secret is not None and counter is not None
        record = make_record(serial, TokenType.HOTP, secret, user, digits=6, counter=counter)
    else:
        period = reader.number("STEP_SIZE", 1, 60)
        drift = reader.time_skew()
        last_step = reader.disallow_reuse()
        reader.totp_window(window)
        reader.transient_state()
        findings.raise_if_any()
        assert secret is not None
        record = make_record(
            serial,
            TokenType.TOTP,
            secret,
            user,
            digits=6,
            period=period if period is not None else 30,
            drift=drift,
            last_step=last_step,
        )
    if (warning := short_secret_warning(record, len(secret))) is not None:
        findings.warning(1, warning)
    return Migration(
        records=(record,),
        scratch_codes=frozen_codes({user: scratch}),
        warnings=tuple(findings.warnings),
        source=FORMAT,
    )


def _not_positive(value: str) -> bool:
    """True when a counter value reads as 0 or less (an optional sign, then digits)."""
    head = value.split()[0] if value.split() else ""
    return bool(re.fullmatch(r"[-+]?[0-9]+", head)) and int(head) <= 0


def _counters(count: int) -> str:
    return "1 counter" if count == 1 else f"{count} counters"


class _OptionReader:
    """The meaning of the option lines, with the module's ranges; findings go to ``findings``."""

    def __init__(self, options: dict[str, _Option], findings: Findings, policy: PolicyConfig) -> None:
        self.options = options
        self.findings = findings
        self.policy = policy

    def _line(self, key: str) -> int | None:
        option = self.options.get(key)
        return option.line if option is not None else None

    def token_type(self) -> TokenType | None:
        """HOTP when HOTP_COUNTER is above 0, TOTP when TOTP_AUTH is; ``None`` (a problem) else.

        As in the module, a counter of 0 or less does not make the file HOTP: with TOTP_AUTH it
        is a TOTP file (the counter is ignored, with a warning).
        """
        counter = self.options.get("HOTP_COUNTER")
        if counter is not None and "TOTP_AUTH" in self.options and _not_positive(counter.value):
            self.findings.warning(
                counter.line,
                "HOTP_COUNTER is 0 or less: the module ignores it and uses TOTP (TOTP_AUTH), and so "
                "does the import",
            )
            del self.options["HOTP_COUNTER"]
        if "HOTP_COUNTER" in self.options:
            if "TOTP_AUTH" in self.options:
                self.findings.warning(
                    self._line("TOTP_AUTH"),
                    "TOTP_AUTH and HOTP_COUNTER are both present: the module uses the counter "
                    "(HOTP), and so does the import",
                )
            return TokenType.HOTP
        if "TOTP_AUTH" in self.options:
            return TokenType.TOTP
        self.findings.problem(
            None,
            "neither TOTP_AUTH nor HOTP_COUNTER is present: the module accepts no one-time code "
            "from this secret, so there is no token to migrate",
        )
        return None

    def number(self, key: str, low: int, high: int) -> int | None:
        """The option's whole-number value in ``low..high``; ``None`` when absent (or a problem)."""
        option = self.options.get(key)
        if option is None:
            return None
        head = option.value.split(" ")[0].split("\t")[0]
        if not _NUMBER.fullmatch(head) or not low <= int(head) <= high:
            self.findings.problem(option.line, f"{key} must be a whole number from {low} to {high}")
            return None
        return int(head)

    def rate_limit(self) -> None:
        """RATE_LIMIT n m [times...]: checked as the module does, then a warning."""
        option = self.options.get("RATE_LIMIT")
        if option is None:
            return
        fields = option.value.split()
        if (
            len(fields) < 2
            or not all(_NUMBER.fullmatch(f) for f in fields)
            or not 1 <= int(fields[0]) <= 100
            or not 1 <= int(fields[1]) <= 3600
        ):
            self.findings.problem(
                option.line, "RATE_LIMIT is malformed (the module refuses every login with it)"
            )
            return
        policy = self.policy
        self.findings.warning(
            option.line,
            f"RATE_LIMIT ({fields[0]} logins per {fields[1]} s) is not carried over: otp-agent's "
            f"lockout policy applies instead (a lock after {policy.lock_threshold} wrong codes, "
            f"for {policy.lock_base_seconds} s doubling up to {policy.lock_max_seconds} s)",
        )

    def time_skew(self) -> int:
        """TIME_SKEW in time steps, the token's drift (0 when absent)."""
        option = self.options.get("TIME_SKEW")
        if option is None:
            return 0
        if not _SIGNED.fullmatch(option.value):
            self.findings.problem(option.line, "TIME_SKEW must be a whole number of time steps")
            return 0
        skew = int(option.value)
        if abs(skew) > _MAX_DRIFT:
            self.findings.problem(
                option.line, f"TIME_SKEW {skew} is beyond the {_MAX_DRIFT} time steps otp-agent accepts"
            )
        elif abs(skew) > self.policy.totp_max_drift:
            self.findings.warning(
                option.line,
                f"TIME_SKEW {skew} (time steps) is kept as the token's drift, codes being looked "
                f"for around it, although it is beyond the policy's totp_max_drift "
                f"({self.policy.totp_max_drift}); if the phone's clock is corrected, resynchronise "
                "the token (otpctl resync)",
            )
        return skew

    def disallow_reuse(self) -> int | None:
        """The largest used time step of DISALLOW_REUSE: the token's last used step."""
        option = self.options.get("DISALLOW_REUSE")
        if option is None:
            self.findings.warning(
                None,
                "DISALLOW_REUSE is absent: the module let a code be used more than once; "
                "otp-agent accepts each code only once",
            )
            return None
        steps = option.value.split()
        if not all(_NUMBER.fullmatch(s) and int(s) <= _MAX_STEP for s in steps):
            self.findings.problem(option.line, "DISALLOW_REUSE must list used time steps (whole numbers)")
            return None
        return max((int(s) for s in steps), default=None)

    def totp_window(self, window: int | None) -> None:
        """A warning when the module's window differs from the policy's."""
        size = window if window is not None else _DEFAULT_WINDOW
        ours = 2 * self.policy.totp_window + 1
        if size != ours:
            what = f"WINDOW_SIZE {size}" if window is not None else f"the module's default window ({size})"
            self.findings.warning(
                self._line("WINDOW_SIZE"),
                f"{what}: the module accepted {size} codes around the current time; otp-agent's "
                f"policy applies instead ({ours} codes: totp_window = {self.policy.totp_window})",
            )

    def hotp_window(self, window: int | None) -> None:
        """A warning when the module's look-ahead differs from the policy's."""
        size = window if window is not None else _DEFAULT_WINDOW
        ours = self.policy.hotp_lookahead + 1
        if size != ours:
            what = f"WINDOW_SIZE {size}" if window is not None else f"the module's default window ({size})"
            self.findings.warning(
                self._line("WINDOW_SIZE"),
                f"{what}: the module accepted the codes of {_counters(size)} from the expected one; otp-agent's "
                f"policy applies instead ({ours} counters: hotp_lookahead = {self.policy.hotp_lookahead})",
            )

    def ignored_for_hotp(self) -> None:
        """Time-based options of a counter-based file: ignored, as by the module."""
        for key in _TOTP_ONLY:
            if key in self.options:
                self.findings.warning(
                    self._line(key),
                    f"{key} has no effect on a counter-based token (nor in the module); ignored",
                )

    def transient_state(self) -> None:
        """RESETTING_TIME_SKEW, the module's unfinished skew correction: a warning."""
        resetting = self.options.get("RESETTING_TIME_SKEW")
        if resetting is not None and resetting.value:
            self.findings.warning(
                resetting.line,
                "RESETTING_TIME_SKEW (a clock-skew correction the module had started from codes "
                "entered far off time) is not carried over: TIME_SKEW is kept as it is; if the "
                "phone's clock is far off, resynchronise the token (otpctl resync)",
            )

    def grace(self) -> None:
        """LAST0..LAST9 (the grace-period logins): a warning, not carried over."""
        grace = sorted(self.options[key].line for key in _GRACE if key in self.options)
        if grace:
            self.findings.warning(
                grace[0],
                f"the module's grace-period state (LAST0 to LAST9: {len(grace)} recent "
                f"login{'s' if len(grace) != 1 else ''}) is not carried over: otp-agent has no grace period, so the user is asked "
                "for a code at the next login even from a host that logged in moments ago",
            )

    def unknown_options(self) -> None:
        """Options the module does not know: ignored by it, named in a warning."""
        for option in self.options.values():
            if option.key not in _KNOWN:
                self.findings.warning(
                    option.line,
                    f"unknown option '{shown(option.key)}' is ignored (the module ignores it too)",
                )
