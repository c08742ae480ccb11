"""PSKC (RFC 6030) import and export meeting the OATH TOTP Validation Server Profile.

The public entry points are :func:`parse_pskc` (all or nothing: either every key of the file
passes, or :class:`PskcImportError` lists every problem with key Id and XML line) and
:func:`write_pskc` (an encrypted, MAC-protected export).  The package is a library: it reads
bytes and returns tokens with their secrets in :class:`~otp_agent.sensitive.Secret` objects; it
never touches the token store or the key backend.
"""

from __future__ import annotations

from collections.abc import Callable

from otp_agent.pskc import crypto
from otp_agent.pskc.crypto import CryptoProblem
from otp_agent.pskc.model import ExportedToken, ImportedToken, Problem, PskcImportError
from otp_agent.pskc.parser import read_keys
from otp_agent.pskc.records import record_from_token, token_from_record
from otp_agent.pskc.rules import apply_rules
from otp_agent.pskc.writer import write_pskc
from otp_agent.pskc.xmlsafe import MAX_FILE_SIZE, Document

__all__ = [
    "ExportedToken",
    "ImportedToken",
    "MAX_FILE_SIZE",
    "Problem",
    "PskcImportError",
    "parse_pskc",
    "parse_pskc_report",
    "record_from_token",
    "token_from_record",
    "write_pskc",
]

PSK_SIZES = (16, 24, 32)


def parse_pskc_report(
    data: bytes,
    *,
    password: str | None = None,
    psk: bytes | None = None,
    strict_ids: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_size: int = MAX_FILE_SIZE,
) -> tuple[list[ImportedToken], list[str]]:
    """Like :func:`parse_pskc`, and also return informational notes (nothing refused by them)."""
    if password is not None and psk is not None:
        raise PskcImportError(
            "PSKC file refused: give a password or a key, not both",
            [Problem("give a password or a pre-shared key, not both")],
        )
    if password is not None:
        try:
            crypto.check_password(password)
        except CryptoProblem as exc:
            raise PskcImportError(f"PSKC file refused: {exc}", [Problem(str(exc))]) from None
    if psk is not None and len(psk) not in PSK_SIZES:
        message = f"the pre-shared key must be 16, 24 or 32 bytes (AES), not {len(psk)}"
        raise PskcImportError(f"PSKC file refused: {message}", [Problem(message)])
    document = Document(data, max_size=max_size)
    problems: list[Problem] = []
    notes: list[str] = []
    raws = read_keys(document, password=password, psk=psk, problems=problems, notes=notes, progress=progress)
    tokens = apply_rules(raws, strict_ids=strict_ids, problems=problems, notes=notes)
    if problems:
        for raw in raws:
            if raw.secret is not None:
                raw.secret.wipe()
        count = len(problems)
        raise PskcImportError(
            f"PSKC file refused, nothing imported: {count} problem{'s' if count != 1 else ''}",
            problems,
        )
    return tokens, notes


def parse_pskc(
    data: bytes,
    *,
    password: str | None = None,
    psk: bytes | None = None,
    strict_ids: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[ImportedToken]:
    """Parse, decrypt and MAC-check a PSKC file and apply every profile rule, all or nothing.

    :param password: the PBE password (5 to 64 characters) for a PBKDF2-protected file.
    :param psk: the pre-shared AES key (16, 24 or 32 bytes) for a ``ds:KeyName`` file.
    :param strict_ids: require OATH token identifiers as Key Ids (the profile's rule).
    :param progress: called with (keys done, keys total) while keys are read.
    :raises PskcImportError: (a :class:`~otp_agent.errors.PskcError`) listing every problem.
    """
    tokens, _notes = parse_pskc_report(
        data, password=password, psk=psk, strict_ids=strict_ids, progress=progress
    )
    return tokens
