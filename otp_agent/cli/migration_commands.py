"""``otpctl import --format google-authenticator | users.oath``: moving users over from a peer.

Owns the command-line side of a migration: reading the peer's file without ever changing it
(opened read-only, never rewritten, not even its times), parsing it with
:mod:`otp_agent.migration` (all or nothing), printing one warning per setting that has no
equivalent, and sending ONE ``import`` request carrying the tokens and the scratch codes, which
the agent seals and hashes at once.  docs/migration.md is the guide.  Exit codes: 0 done (or
checked, with ``--dry-run``), 1 file or import refused, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Protocol, TextIO

from otp_agent.config import PolicyConfig, load_config
from otp_agent.errors import ConfigError, MigrationRefused, PskcError, UsageError
from otp_agent.migration import MAX_FILE_SIZE, Migration, read_google_authenticator, read_users_oath


class AdminClient(Protocol):
    """What this command needs from the agent client."""

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` with ``fields``; return the reply or raise the error it carries."""


def _read_source(path: os.PathLike[str]) -> bytes:
    """The peer file's bytes (read-only, size-capped; the file is left exactly as it was)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
    except PermissionError:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # O_NOATIME needs the owner
    except OSError as exc:
        raise UsageError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise MigrationRefused(
            f"{os.fspath(path)} is larger than {MAX_FILE_SIZE} bytes", [f"{os.fspath(path)}: too large"]
        )
    return data


def _policy(args: argparse.Namespace) -> PolicyConfig:
    """The agent's policy, which the warnings compare the peer's settings with."""
    try:
        return load_config(getattr(args, "config", None)).policy
    except ConfigError:
        return PolicyConfig()


def parse_peer_file(args: argparse.Namespace) -> Migration:
    """Read and parse FILE in the format of ``--format``.  :raises MigrationRefused, UsageError."""
    data = _read_source(args.file)
    name = os.fspath(args.file)
    if args.format == "google-authenticator":
        if not args.user:
            raise UsageError("--format google-authenticator needs --user USER (the file's owner)")
        return read_google_authenticator(data, args.user, policy=_policy(args), source_name=name)
    if args.user:
        raise UsageError("--user is for --format google-authenticator: users.oath names its users")
    return read_users_oath(data, policy=_policy(args), source_name=name)


def run_migration_import(args: argparse.Namespace, client: AdminClient, out: TextIO, err: TextIO) -> int:
    """Run ``otpctl import --format PEER FILE``."""
    try:
        migration = parse_peer_file(args)
    except MigrationRefused as exc:
        return _refused(exc, args, out, err)
    for warning in migration.warnings:
        err.write(f"warning: {warning}\n")
    records = [record.message(state=False) for record in migration.records]
    scratch = {user: list(codes) for user, codes in migration.scratch_codes.items()}
    try:
        reply = client.request(
            "import",
            tokens=records,
            scratch_codes=scratch,
            format=migration.source,
            dry_run=bool(args.dry_run),
        )
    except PskcError as exc:
        return _refused(exc, args, out, err)
    finally:
        del records, scratch  # the secrets and codes go as soon as the request is sent
    for user, count in reply.get("replaced_backup_codes", {}).items():
        err.write(
            f"warning: the {count} unused backup code(s) {user} had are replaced by the scratch codes\n"
        )
    summary = [
        {
            "serial": r.serial,
            "user": r.user,
            "type": r.type,
            "digits": r.digits,
            "period": r.period if r.type == "totp" else None,
            "counter": r.counter if r.type == "hotp" else None,
            "last_step": r.last_step,
            "drift": r.drift,
        }
        for r in migration.records
    ]
    if args.json:
        document = {
            "ok": True,
            "format": migration.source,
            "dry_run": bool(args.dry_run),
            "imported": reply.get("imported", 0),
            "tokens": summary,
            "backup_codes": reply.get("backup_codes", {}),
            "warnings": list(migration.warnings),
        }
        json.dump(document, out, indent=2)
        out.write("\n")
        return 0
    for row in summary:
        state = f"counter {row['counter']}" if row["type"] == "hotp" else f"last step {row['last_step']}"
        out.write(f"{row['serial']}  {row['user']}  {row['type']}  {row['digits']} digits  {state}\n")
    scratch_total = sum(reply.get("backup_codes", {}).values())
    verb = "checked, nothing written (dry run)" if args.dry_run else "imported"
    out.write(
        f"{len(summary)} token(s) and {scratch_total} scratch code(s) {verb} from {migration.source} "
        f"file {os.fspath(args.file)} (the file was not changed).\n"
    )
    return 0


def _refused(exc: PskcError | MigrationRefused, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.json:
        json.dump({"ok": False, "error": str(exc), "problems": list(exc.problems)}, out, indent=2)
        out.write("\n")
    else:
        err.write(f"otpctl: {exc}\n")
        for problem in exc.problems:
            err.write(f"  - {problem}\n")
    return 1
