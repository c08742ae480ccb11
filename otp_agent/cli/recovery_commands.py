"""The ``otpctl backup-codes`` and ``otpctl confirm`` verbs, and the confirmation prompt of enroll.

Owns the command-line side of recovery and self-service: printing a fresh set of backup codes
once (they are never shown again), asking for the code that confirms a self-enrolled token, and
the text of both.  The agent decides who may do what (from the peer's kernel credentials); this
module never touches the store.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from otp_agent.cli.render import print_decision
from otp_agent.client import AgentClient


def add_backup_codes_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``otpctl backup-codes``."""
    parser.add_argument("user", nargs="?", help="the user (default: yourself)")
    parser.add_argument("--count", type=int, default=10, help="how many codes (1 to 100, default 10)")
    parser.add_argument(
        "--revoke", action="store_true", help="remove the user's backup codes instead (administrators)"
    )


def add_confirm_arguments(parser: argparse.ArgumentParser, on_argv: str) -> None:
    """The arguments of ``otpctl confirm``."""
    parser.add_argument("serial", help="the pending token, as otpctl enroll printed it")
    parser.add_argument("code", nargs="?", help=f"a current code of the token; {on_argv}")


def run_backup_codes(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    """Create (or revoke) a user's backup codes and print the new ones once."""
    fields: dict[str, Any] = {"count": arguments.count}
    if arguments.user:
        fields["user"] = arguments.user
    if arguments.revoke:
        fields["revoke"] = True
    reply = client.request("backup_codes", **fields)
    if arguments.json:
        result = {"codes": reply["codes"], "serials": reply["serials"]} if not arguments.revoke else reply
        json.dump({k: v for k, v in result.items() if k not in ("v", "ok")}, out, indent=2, sort_keys=True)
        out.write("\n")
        return 0
    if arguments.revoke:
        print(f"Backup codes of {reply['user']} removed ({reply['revoked']} were unused).", file=out)
        return 0
    print(f"Backup codes for {reply['user']} (each works once; the previous set no longer works):", file=out)
    for number, code in enumerate(reply["codes"], 1):
        print(f"  {number:>3}. {code}", file=out)
    print(
        "Keep them somewhere safe, away from this device. They are shown only now: "
        "the agent keeps only their hashes.",
        file=out,
    )
    return 0


def run_confirm(arguments: argparse.Namespace, client: AgentClient, out: TextIO, code: str) -> int:
    """Confirm a pending token with ``code``; exit 0 once confirmed, 1 if the code was refused."""
    reply = client.request("confirm", serial=arguments.serial, code=code)
    if getattr(arguments, "json", False):
        json.dump({k: v for k, v in reply.items() if k not in ("v", "ok")}, out, indent=2, sort_keys=True)
        out.write("\n")
    elif reply.get("result") == "accept":
        print(f"Token {arguments.serial} confirmed: it is active now.", file=out)
    else:
        print_decision(reply, out)
    return 0 if reply.get("result") == "accept" else 1


def pending_note(reply: dict[str, Any]) -> str:
    """What to tell a user whose new token waits for its confirmation."""
    until = reply["token"].get("pending_until")
    when = time.strftime("%H:%M:%S", time.localtime(until)) if until else "soon"
    return (
        f"The token stays pending (it lets nobody in) until you confirm it with a code from the app, "
        f"before {when}: otpctl confirm {reply['serial']}"
    )


def prompt_confirmation(serial: str, client: AgentClient, out: TextIO, tries: int = 3) -> int:
    """On a terminal: ask for the app's current code until the token is confirmed (or give up)."""
    import getpass

    for _attempt in range(tries):
        try:
            code = getpass.getpass("Code shown by the app, to confirm: ").strip()
        except EOFError:
            code = ""
        if not code:
            break
        reply = client.request("confirm", serial=serial, code=code)
        if reply.get("result") == "accept":
            print(f"Token {serial} confirmed: it is active now.", file=out)
            return 0
        print_decision(reply, out)
    print(f"Not confirmed. Confirm later with: otpctl confirm {serial}", file=sys.stderr)
    return 1
