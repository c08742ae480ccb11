"""Backup codes: single-use codes that let a user in when the phone is lost or the HSM is down.

Owns their format, their slow hashing and their one use.  A code is ten letters of an alphabet
without look-alikes (23 letters, no digits: 45 bits), printed ``xxxx-xxxx-xx``; typing is
case-insensitive and separators are optional, and no answer made of digits is ever read as one,
so a backup code cannot be mistaken for a 6- or 8-digit code, in code-only mode or at the end of
a password.  Imported google-authenticator scratch codes (kind ``scratch``) keep their 8-digit
form, which users have on paper.

The store keeps, per code, only ``scrypt(code, salt)`` with one random salt per set (so a guess
costs one hash whatever the set's size), and a binding tag from the key backend (computed on the
host: it needs no HSM round trip, which is what makes the codes work while the HSM is down).
The one use is a compare-and-set on the row's ``used_at``: of two parallel uses of a code, on
any number of hosts, exactly one succeeds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from otp_agent.errors import SealedSecretInvalid, UsageError
from otp_agent.keystore import KeyBackend
from otp_agent.store import BackupCode, TokenStore
from otp_agent.store.models import BACKUP_GENERATED, BACKUP_SCRATCH

_log = logging.getLogger(__name__)

#: Letters only, none that reads like another (no i, l, o): 23 symbols, log2(23) = 4.52 bits each.
ALPHABET = "abcdefghjkmnpqrstuvwxyz"
LENGTH = 10
#: How a code is printed: groups of 4, 4 and 2 letters joined by '-'.
GROUPS = (4, 4, 2)
PRINTED_LENGTH = LENGTH + len(GROUPS) - 1
BITS = LENGTH * 4.52
DEFAULT_COUNT = 10
MAX_COUNT = 100
#: scrypt with N = 2**14, r = 8, p = 1 (16 MiB, about 65 ms on one core of the 2-core test VM), 32-byte digests.
SCHEME = "scrypt-14-8-1"
_SALT_BYTES = 16
_SCRYPT = re.compile(r"scrypt-([0-9]{1,2})-([0-9]{1,2})-([0-9]{1,2})")
_PRINTED = re.compile(r"[a-z]{4}-[a-z]{4}-[a-z]{2}", re.IGNORECASE)
_SCRATCH = re.compile(r"[0-9]{8}")


def normalise(answer: str) -> str | None:
    """The backup code an answer spells (lower case, no separators), or None if it spells none."""
    if len(answer) > 2 * LENGTH:
        return None
    compact = answer.replace("-", "").replace(" ", "").lower()
    if len(compact) == LENGTH and all(letter in ALPHABET for letter in compact):
        return compact
    return None


def is_scratch_code(answer: str) -> bool:
    """True for the shape of an imported scratch code: exactly 8 ASCII digits."""
    return _SCRATCH.fullmatch(answer) is not None


def split_password_and_code(answer: str) -> list[tuple[str, str]]:
    """The (password, backup code) splits of a password+code answer, by the code's fixed length.

    The code part is the printed form (12 characters, ``xxxx-xxxx-xx``) or the bare ten letters;
    the two cannot both fit one answer.
    """
    tail = answer[-PRINTED_LENGTH:]
    if len(answer) > PRINTED_LENGTH and _PRINTED.fullmatch(tail) and normalise(tail) is not None:
        return [(answer[:-PRINTED_LENGTH], tail)]
    tail = answer[-LENGTH:]
    if len(answer) > LENGTH and " " not in tail and "-" not in tail and normalise(tail) is not None:
        return [(answer[:-LENGTH], tail)]
    return []


def printed(code: str) -> str:
    """A normalised code in its printed form, ``xxxx-xxxx-xx``."""
    parts, start = [], 0
    for size in GROUPS:
        parts.append(code[start : start + size])
        start += size
    return "-".join(parts)


def generate(count: int) -> list[str]:
    """``count`` distinct fresh codes, normalised."""
    codes: list[str] = []
    while len(codes) < count:
        code = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
        if code not in codes:
            codes.append(code)
    return codes


def digest(code: str, salt: bytes, scheme: str = SCHEME) -> bytes:
    """The slow hash of a normalised code under ``scheme``.  :raises ValueError: unknown scheme."""
    match = _SCRYPT.fullmatch(scheme)
    if match is None:
        raise ValueError(f"unknown backup-code scheme {scheme!r}")
    log_n, r, p = (int(group) for group in match.groups())
    return hashlib.scrypt(code.encode("ascii"), salt=salt, n=2**log_n, r=r, p=p, maxmem=2**26, dklen=32)


@dataclass(frozen=True)
class BackupUse:
    """The outcome of one attempt with a backup code (never the code)."""

    accepted: bool
    #: The code matched one already used (before, or by a parallel attempt that won).
    replay: bool = False
    #: Unused codes of the user left after this attempt.
    remaining: int = 0
    kind: str = BACKUP_GENERATED


class BackupCodes:
    """The users' backup codes: creation, the one use, and how many remain."""

    def __init__(
        self, store: TokenStore, keys: KeyBackend, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store, self.keys, self.clock = store, keys, clock

    def hashed(self, user: str, codes: Iterable[str], kind: str) -> list[BackupCode]:
        """The store rows of a new set of normalised codes (one fresh salt, bound to ``user``)."""
        salt = secrets.token_bytes(_SALT_BYTES)
        now = self.clock()
        rows = []
        for code in codes:
            row = BackupCode(user, kind, SCHEME, salt, digest(code, salt), now)
            rows.append(replace(row, binding=self.keys.binding_tag(row.binding_message())))
        return rows

    def create(self, user: str, count: int = DEFAULT_COUNT) -> list[str]:
        """Replace the user's backup codes with ``count`` fresh ones; return them printed, once."""
        if not 1 <= count <= MAX_COUNT:
            raise UsageError(f"the number of backup codes must be 1 to {MAX_COUNT}")
        codes = generate(count)
        self.store.replace_backup_codes(user, self.hashed(user, codes, BACKUP_GENERATED))
        return [printed(code) for code in codes]

    def revoke(self, user: str) -> int:
        """Remove all the user's backup codes; return how many unused ones there were."""
        left = self.remaining(user)
        self.store.replace_backup_codes(user, [])
        return left

    def remaining(self, user: str, rows: Sequence[BackupCode] | None = None) -> int:
        """How many unused backup codes the user has."""
        return sum(
            1 for row in (self.store.backup_codes(user) if rows is None else rows) if row.used_at is None
        )

    def has_scratch_codes(self, user: str) -> bool:
        """True when the user has an unused imported scratch code."""
        return any(
            row.kind == BACKUP_SCRATCH and row.used_at is None for row in self.store.backup_codes(user)
        )

    def use(self, user: str, code: str, kind: str) -> BackupUse:
        """Try a normalised code of ``kind`` for ``user``; mark it used if it is one of theirs.

        :raises SealedSecretInvalid: the matching row's binding tag is wrong (written outside
            otp-agent): refused, never accepted.
        :raises StoreError: the store failed; nothing was used.
        """
        rows = self.store.backup_codes(user)
        found = self._match([row for row in rows if row.kind == kind], code)
        if found is None:
            return BackupUse(False, remaining=self.remaining(user, rows), kind=kind)
        expected = self.keys.binding_tag(found.binding_message())
        if not hmac.compare_digest(expected, found.binding):
            raise SealedSecretInvalid(
                f"a backup code of {user} failed its binding check: it was written outside otp-agent; "
                "refusing it (see docs/security.md)"
            )
        left = self.remaining(user, rows)
        if found.used_at is not None or not self.store.use_backup_code(user, found.digest, self.clock()):
            return BackupUse(
                False, replay=True, remaining=left if found.used_at is not None else left - 1, kind=kind
            )
        return BackupUse(True, remaining=left - 1, kind=kind)

    @staticmethod
    def _match(rows: Sequence[BackupCode], code: str) -> BackupCode | None:
        """The row whose digest is the code's: one hash per (scheme, salt), every row compared."""
        digests: dict[tuple[str, bytes], bytes] = {}
        found = None
        for row in rows:
            key = (row.scheme, row.salt)
            if key not in digests:
                try:
                    digests[key] = digest(code, row.salt, row.scheme)
                except ValueError:
                    _log.error(
                        "a backup code of %s has an unknown scheme %r; ignoring it", row.user[:64], row.scheme
                    )
                    continue
            if hmac.compare_digest(digests[key], row.digest) and found is None:
                found = row
        return found
