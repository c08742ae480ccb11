"""The ``otpctl import`` and ``otpctl export`` verbs: PSKC files in and out through the agent.

This module owns the command-line side of PSKC: reading the file, the password file or the key
file; parsing with :mod:`otp_agent.pskc` (all or nothing, progress on a terminal); sending ONE
``import`` request with every token; printing the report (a table for people, JSON with
``--json``); and, for export, writing a protected PSKC file with mode 0600 that never
overwrites.  The daemon decides against the store; this module never touches it.  Exit codes:
0 done, 1 file refused, 2 usage error (others come from the agent's error, e.g. 4 key backend).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

from otp_agent.errors import KeyBackendError, OtpAgentError, PskcError, UsageError
from otp_agent.pskc import (
    MAX_FILE_SIZE,
    ExportedToken,
    ImportedToken,
    PskcImportError,
    crypto,
    parse_pskc_report,
    record_from_token,
    token_from_record,
    write_pskc,
)
from otp_agent.pskc.model import printable
from otp_agent.pskc.writer import DEFAULT_EXPORT_ITERATIONS, EXPORT_PASSWORD_MIN, check_export_password
from otp_agent.pskc.xmlsafe import refuse

#: Files with more keys than this show progress on a terminal.
PROGRESS_THRESHOLD = 1000


class AdminClient(Protocol):
    """What these commands need from the agent client: one request, one reply."""

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` with ``fields``; return the reply or raise the error it carries."""


def _add_protection(parser: argparse.ArgumentParser, *, required: bool, password_min: int) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--password-file",
        type=Path,
        metavar="F",
        help=f"file holding the PBE password as text ({password_min} to {crypto.PASSWORD_MAX} characters)",
    )
    group.add_argument(
        "--key-file",
        type=Path,
        metavar="F",
        help="file holding the pre-shared AES key in hex (16, 24 or 32 bytes)",
    )


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``otpctl import`` (``--json`` comes from the common options)."""
    parser.add_argument(
        "file", type=Path, metavar="FILE", help="PSKC file (RFC 6030), or a peer's file with --format"
    )
    parser.add_argument(
        "--format",
        choices=["pskc", "google-authenticator", "users.oath"],
        default="pskc",
        help="pskc (default); google-authenticator: a ~/.google_authenticator file (with --user); "
        "users.oath: pam_oath's usersfile (docs/migration.md)",
    )
    parser.add_argument("--user", help="google-authenticator: the user the file belongs to")
    _add_protection(parser, required=False, password_min=crypto.PASSWORD_MIN)
    parser.add_argument(
        "--dry-run", action="store_true", help="check everything, against the store too, and write nothing"
    )
    parser.add_argument(
        "--any-id",
        action="store_true",
        help="accept Key Ids that are not OATH token identifiers "
        "(1 to 64 printable ASCII characters without spaces)",
    )


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``otpctl export``: a protection is required, clear export impossible."""
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        metavar="FILE",
        help="PSKC file to create (mode 0600; an existing file is never overwritten)",
    )
    _add_protection(parser, required=True, password_min=EXPORT_PASSWORD_MIN)
    parser.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_EXPORT_ITERATIONS,
        help="PBKDF2 iterations for a password-protected export (at least and "
        f"by default {DEFAULT_EXPORT_ITERATIONS})",
    )


def _read_password(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the password file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the password file {path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise UsageError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the key file {path} must hold the key in hexadecimal") from None
    try:
        key = bytes.fromhex("".join(text.split()))
    except ValueError:
        raise UsageError(f"the key file {path} must hold the key in hexadecimal") from None
    if len(key) not in (16, 24, 32):
        raise UsageError(f"the key in {path} has {len(key)} bytes; an AES key has 16, 24 or 32")
    return key


def _protection(args: argparse.Namespace) -> tuple[str | None, bytes | None]:
    password_file = getattr(args, "password_file", None)
    key_file = getattr(args, "key_file", None)
    password = _read_password(password_file) if password_file is not None else None
    key = _read_key(key_file) if key_file is not None else None
    return password, key


def _read_pskc_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE_SIZE:
                raise refuse(f"file is {size} bytes, larger than the {MAX_FILE_SIZE}-byte limit")
            return handle.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Progress:
    """Prints "keys read: n/total" on a terminal's stderr, about a hundred times per file."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.step = 1

    def __call__(self, done: int, total: int) -> None:
        if total < PROGRESS_THRESHOLD:
            return
        self.step = max(1, total // 100)
        if done % self.step == 0 or done == total:
            self.stream.write(f"\rreading keys: {done}/{total}")
            if done == total:
                self.stream.write("\n")
            self.stream.flush()


def _summary(token: ImportedToken) -> dict[str, Any]:
    params = token.params
    return {
        "serial": token.serial,
        "type": params.token_type.value,
        "algorithm": params.algorithm.value,
        "digits": params.digits,
        "period": params.period,
        "user": token.user,
        "line": token.line,
    }


def _agent_problem(text: str, lines: dict[str, int]) -> dict[str, Any]:
    """Locate a problem reported by the agent ("SERIAL: reason") in the file, when possible."""
    serial, separator, reason = text.partition(": ")
    if separator and serial in lines:
        return {"line": lines[serial], "key_id": serial, "message": reason}
    return {"line": None, "key_id": None, "message": text}


def _print_refusal(
    exc: PskcError, args: argparse.Namespace, out: TextIO, lines: dict[str, int] | None = None
) -> int:
    """Print a refusal (the file's or the agent's) and return exit status 1."""
    details = getattr(exc, "details", None)
    problems: list[dict[str, Any]]
    if details is not None:
        problems = [{"line": p.line, "key_id": p.key_id, "message": p.message} for p in details]
    else:
        problems = [_agent_problem(text, lines or {}) for text in exc.problems]
    if getattr(args, "json", False):
        json.dump({"ok": False, "error": str(exc), "problems": problems}, out, indent=2)
        out.write("\n")
    else:
        out.write(f"{exc}\n")
        for problem in problems:
            where = ", ".join(
                part
                for part in (
                    f"line {problem['line']}" if problem["line"] is not None else "",
                    f"key {printable(problem['key_id'])!r}" if problem["key_id"] is not None else "",
                )
                if part
            )
            out.write(f"  - {where + ': ' if where else ''}{problem['message']}\n")
    return 1


def run_import(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    """Run ``otpctl import``: parse and check FILE, then send one ``import`` request."""
    if getattr(args, "format", "pskc") != "pskc":
        from otp_agent.cli.migration_commands import run_migration_import

        if getattr(args, "password_file", None) or getattr(args, "key_file", None):
            raise UsageError("--password-file and --key-file are for PSKC files")
        return run_migration_import(args, client, out, sys.stderr)
    if getattr(args, "user", None):
        raise UsageError("--user is for --format google-authenticator")
    try:
        password, key = _protection(args)
        data = _read_pskc_file(args.file)
    except PskcImportError as exc:
        return _print_refusal(exc, args, out)
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    try:
        tokens, notes = parse_pskc_report(
            data, password=password, psk=key, strict_ids=not getattr(args, "any_id", False), progress=progress
        )
    except PskcImportError as exc:
        return _print_refusal(exc, args, out)
    dry_run = bool(getattr(args, "dry_run", False))
    try:
        records = [record_from_token(token) for token in tokens]
    finally:
        for token in tokens:
            token.secret.wipe()
    try:
        reply = client.request("import", tokens=records, dry_run=dry_run)
    except PskcError as exc:
        return _print_refusal(exc, args, out, {token.serial: token.line for token in tokens})
    finally:
        del records  # Drop the base64 secrets as soon as the request is sent.
    summaries = [_summary(token) for token in tokens]
    if getattr(args, "json", False):
        json.dump(
            {
                "ok": True,
                "dry_run": dry_run,
                "imported": reply.get("imported", 0),
                "checked": reply.get("checked", len(tokens)),
                "tokens": summaries,
                "notes": notes,
            },
            out,
            indent=2,
        )
        out.write("\n")
        return 0
    _print_table(summaries, out)
    for note in notes:
        out.write(f"note: {note}\n")
    if dry_run:
        out.write(f"Dry run: {len(tokens)} token(s) checked, nothing written.\n")
    else:
        out.write(f"{reply.get('imported', len(tokens))} token(s) imported.\n")
    return 0


def _print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    columns = ("serial", "type", "algorithm", "digits", "period", "user")
    cells = [[str(row[c]) if row[c] is not None else "-" for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _create_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file with mode 0600; never overwrite or follow a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def run_export(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    """Run ``otpctl export``: fetch every token from the agent and write a protected PSKC file."""
    output: Path = args.output
    if output.exists() or output.is_symlink():
        raise UsageError(f"{output} already exists; an export never overwrites a file")
    password, key = _protection(args)
    if password is None and key is None:
        raise UsageError("give --password-file or --key-file: an export is never written in clear")
    iterations = getattr(args, "iterations", DEFAULT_EXPORT_ITERATIONS)
    if password is not None:
        check_export_password(password, iterations)
    try:
        reply = client.request("export")
    except KeyBackendError as exc:
        print(
            f"otpctl export: refused: {exc}. A payShield export would need a transport key "
            "(not implemented); no file was written.",
            file=sys.stderr,
        )
        return exc.exit_status
    tokens: list[ExportedToken] = []
    try:
        tokens = [token_from_record(record) for record in reply.get("tokens", [])]
        data = write_pskc(tokens, password=password, psk=key, pbkdf2_iterations=iterations)
    except OtpAgentError as exc:
        print(f"otpctl export: {exc}; no file was written", file=sys.stderr)
        return exc.exit_status
    finally:
        for token in tokens:
            token.secret.wipe()
    try:
        _create_private(output, data)
    except FileExistsError:
        raise UsageError(f"{output} already exists; an export never overwrites a file") from None
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from exc
    protection = "pbe" if password is not None else "psk"
    if getattr(args, "json", False):
        json.dump(
            {"ok": True, "exported": len(tokens), "file": str(output), "protection": protection},
            out,
            indent=2,
        )
        out.write("\n")
    else:
        scheme = (
            "PBKDF2-HMAC-SHA256 + AES-256-CBC"
            if password is not None
            else f"pre-shared key + AES-{len(key or b'') * 8}-CBC"
        )
        out.write(f"{len(tokens)} token(s) exported to {output} ({scheme}, HMAC-SHA256 MACs).\n")
    return 0
