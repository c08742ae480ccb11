"""``otpctl``: argument parsing and the one funnel from errors to exit codes.

Exit codes (otpctl(8)): 0 success, 1 rejected or not found, 2 usage or configuration error,
3 agent unreachable, 4 key backend or store unavailable.  Secrets never come from argv.  The
one-time codes of ``check`` and ``resync`` are asked for (no echo) on a terminal, or read from
standard input one per line; on the command line they are still accepted (for scripts written
against the first release) but visible to
every user through ps.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from otp_agent import __version__
from otp_agent.cli import recovery_commands
from otp_agent.cli.render import print_decision, print_status, print_tokens, save_qr, show_qr
from otp_agent.client import AgentClient
from otp_agent.config import DEFAULT_SOCKET, load_config
from otp_agent.errors import ConfigError, OtpAgentError, PskcError, UsageError, exit_status_of

Command = Callable[[argparse.Namespace, AgentClient, TextIO], int]


def _emit(arguments: argparse.Namespace, out: TextIO, reply: dict[str, Any], text: str) -> None:
    if getattr(arguments, "json", False):
        reply = {k: v for k, v in reply.items() if k not in ("v", "ok")}
        json.dump(reply, out, indent=2, sort_keys=True)
        out.write("\n")
    elif text:
        print(text, file=out)


def _enroll_oob(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    if not arguments.channel or not arguments.address:
        raise UsageError("--type oob needs --channel NAME and --address ADDRESS")
    reply = client.request(
        "enroll",
        user=arguments.user,
        type="oob",
        algorithm=arguments.algorithm,
        digits=arguments.digits,
        channel=arguments.channel,
        address=arguments.address,
        issuer=arguments.issuer,
    )
    if arguments.json:
        _emit(arguments, out, reply, "")
        return 0
    token = reply["token"]
    print(
        f"Enrolled out-of-band token {reply['serial']} for {arguments.user}: codes go over "
        f"{token['channel']} to {token['address']} (otpctl send {arguments.user}).",
        file=out,
    )
    return 0


def cmd_send(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    fields: dict[str, Any] = {"user": arguments.user}
    if arguments.serial:
        fields["serial"] = arguments.serial
    reply = client.request("send", **fields)
    if arguments.json:
        _emit(arguments, out, {k: reply[k] for k in ("serial", "channel", "address", "expires")}, "")
        return 0
    expires = time.strftime("%H:%M:%S", time.localtime(reply["expires"]))
    print(
        f"Code sent for token {reply['serial']} over {reply['channel']} to {reply['address']}; "
        f"valid until {expires}.",
        file=out,
    )
    return 0


def cmd_enroll(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    if arguments.type == "oob":
        return _enroll_oob(arguments, client, out)
    fields = {"user": arguments.user} if arguments.user else {}
    images = [(kind, path) for kind in ("png", "svg") if (path := getattr(arguments, f"qr_{kind}"))]
    for _kind, path in images:  # before enrolling: a token must not be made for an image that cannot be
        if os.path.lexists(path):
            raise UsageError(f"{path} exists: the QR code is never written over a file")
    reply = client.request(
        "enroll",
        **fields,
        type=arguments.type,
        algorithm=arguments.algorithm,
        digits=arguments.digits,
        period=arguments.period,
        issuer=arguments.issuer,
    )
    for kind, path in images:
        save_qr(reply["uri"], path, kind)
    if arguments.json:
        _emit(arguments, out, reply, "")
        return 0
    print(f"Enrolled token {reply['serial']} for {reply['token']['user']}.", file=out)
    for _kind, path in images:
        print(f"QR code written to {path} (mode 0600: it holds the secret).", file=out)
    print("Scan this code with an authenticator app, or enter the URI by hand:", file=out)
    print(reply["uri"], file=out)
    if arguments.qr == "always" or (arguments.qr == "auto" and out.isatty()):
        show_qr(reply["uri"], out)
    if reply["token"].get("pending_until") is None:
        return 0
    print(recovery_commands.pending_note(reply), file=out)
    if sys.stdin is not None and sys.stdin.isatty():
        return recovery_commands.prompt_confirmation(reply["serial"], client, out)
    return 0


def cmd_confirm(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    code = arguments.code
    if code is None:
        (code,) = read_codes([f"Code of token {arguments.serial}: "])
    return recovery_commands.run_confirm(arguments, client, out, code)


def cmd_list(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    reply = client.request("list")
    if arguments.json:
        _emit(arguments, out, reply, "")
    else:
        print_tokens(reply["tokens"], out)
    return 0


def cmd_show(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    reply = client.request("show", target=arguments.target)
    if arguments.json:
        _emit(arguments, out, reply, "")
        return 0
    print_tokens(reply["tokens"], out, detailed=True)
    if "backup_codes_remaining" in reply:
        print(f"backup codes remaining: {reply['backup_codes_remaining']}", file=out)
    return 0


def _simple(op: str, fields: tuple[str, ...], message: str) -> Command:
    def command(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
        values = {name: getattr(arguments, name) for name in fields}
        reply = client.request(op, **values)
        _emit(arguments, out, reply, message.format(**values, **reply))
        return 0

    return command


def read_codes(prompts: list[str]) -> list[str]:
    """Ask for one code per prompt without echo on a terminal, else read lines of stdin.

    :raises UsageError: standard input ended early, or a code is empty.
    """
    codes: list[str] = []
    interactive = sys.stdin is not None and sys.stdin.isatty()
    for prompt in prompts:
        try:
            line = getpass.getpass(prompt) if interactive else sys.stdin.readline()
        except EOFError:
            line = ""
        code = line.strip()
        if not code:
            if interactive:
                raise UsageError("no code entered")
            raise UsageError(
                f"expected {len(prompts)} code{'s' if len(prompts) > 1 else ''} on "
                f"standard input, one per line; got {len(codes)}"
            )
        codes.append(code)
    return codes


def cmd_check(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    code = arguments.code
    if code is None:
        (code,) = read_codes([f"Code for {arguments.user}: "])
    reply = client.request("check", user=arguments.user, code=code, service="otpctl")
    if arguments.json:
        _emit(arguments, out, reply, "")
    else:
        print_decision(reply, out)
    return 0 if reply.get("result") == "accept" else 1


def cmd_resync(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    codes = list(arguments.codes)
    if len(codes) not in (0, 2):
        raise UsageError("resync needs two codes (CODE1 CODE2), or none to be asked for them")
    if not codes:
        codes = read_codes([f"First code for {arguments.user}: ", "Next code: "])
    reply = client.request("resync", user=arguments.user, code1=codes[0], code2=codes[1])
    _emit(arguments, out, reply, f"Token {reply.get('serial')} resynchronised.")
    return 0


def cmd_status(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    reply = client.request("status")
    if arguments.json:
        _emit(arguments, out, reply, "")
    else:
        print_status(reply, out)
    healthy = all(reply.get(part, {}).get("ok") for part in ("agent", "store", "keystore")) and reply.get(
        "audit", {}
    ).get("ok", True)
    return 0 if healthy else 4


def cmd_metrics(arguments: argparse.Namespace, client: AgentClient, out: TextIO) -> int:
    out.write(client.request("metrics")["text"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``otpctl`` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a value given before the verb must survive the verb's own parser.
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="configuration file (default $OTP_AGENT_CONFIG or /etc/otp-agent/agent.toml)",
    )
    common.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for the agent (default 60)"
    )
    common.add_argument(
        "--socket",
        default=argparse.SUPPRESS,
        help=f"the agent's socket (default: [agent] socket of the configuration, or {DEFAULT_SOCKET})",
    )
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(
        prog="otpctl", parents=[common], description="Administer otp-agent tokens."
    )
    parser.add_argument("--version", action="version", version=f"otpctl {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, handler: Command, help_text: str, *, with_json: bool = True
    ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            parents=[common, json_flag] if with_json else [common],
            help=help_text,
            description=help_text,
        )
        sub.set_defaults(handler=handler)
        return sub

    enroll = verb("enroll", cmd_enroll, "create a token with a fresh secret for USER (default: yourself)")
    enroll.add_argument("user", nargs="?")
    enroll.add_argument("--type", choices=["totp", "hotp", "oob"], default="totp")
    enroll.add_argument("--channel", help="oob: the [channel.NAME] codes are delivered over")
    enroll.add_argument("--address", help="oob: the e-mail address or E.164 number codes go to")
    enroll.add_argument("--algorithm", choices=["sha1", "sha256", "sha512"], default="sha1")
    enroll.add_argument("--digits", type=int, choices=[6, 8], default=6)
    enroll.add_argument("--period", type=int, default=30, help="TOTP time step in seconds")
    enroll.add_argument(
        "--issuer",
        help="name shown by the authenticator app (default: [agent] issuer, else the agent's host name)",
    )
    enroll.add_argument(
        "--qr",
        choices=["auto", "always", "never"],
        default="auto",
        help="print a QR code (auto: only on a terminal)",
    )
    enroll.add_argument(
        "--qr-png", metavar="FILE", help="also write the QR code as a PNG image (new file, 0600)"
    )
    enroll.add_argument(
        "--qr-svg", metavar="FILE", help="also write the QR code as an SVG image (new file, 0600)"
    )

    from otp_agent.cli import pskc_commands  # lxml is loaded only by the verbs that need it

    importer = verb("import", pskc_commands.run_import, "import tokens from a PSKC file (RFC 6030)")
    pskc_commands.add_import_arguments(importer)
    exporter = verb("export", pskc_commands.run_export, "export tokens to a protected PSKC file")
    pskc_commands.add_export_arguments(exporter)

    send = verb("send", cmd_send, "send a fresh out-of-band code to a user (oob token)")
    send.add_argument("user")
    send.add_argument("--serial", help="this oob token rather than the user's oldest")
    verb("list", cmd_list, "list tokens (never secrets)")
    show = verb("show", cmd_show, "show the tokens of a serial or a user")
    show.add_argument("target", metavar="SERIAL|USER")
    assign = verb(
        "assign",
        _simple("assign", ("serial", "user"), "Token {serial} assigned to {user}."),
        "give a token to a user",
    )
    assign.add_argument("serial")
    assign.add_argument("user")
    for name, text in (("disable", "disabled"), ("enable", "enabled"), ("remove", "removed")):
        sub = verb(name, _simple(name, ("serial",), f"Token {{serial}} {text}."), f"{name} a token")
        sub.add_argument("serial")
    on_argv = (
        "visible to other users in ps: leave out to be asked for it (no echo) or to give it on standard input"
    )
    resync = verb("resync", cmd_resync, "resynchronise a token of USER from two consecutive codes")
    resync.add_argument("user")
    resync.add_argument(
        "codes",
        nargs="*",
        metavar="CODE1 CODE2",
        help=f"two consecutive codes; {on_argv.replace('it', 'them')}, one per line",
    )
    unlock = verb(
        "unlock",
        _simple("unlock", ("target",), "{unlocked} token(s) unlocked."),
        "clear the throttling lock of a serial or a user's tokens",
    )
    unlock.add_argument("target", metavar="USER|SERIAL")
    forget = verb(
        "forget",
        _simple("forget", ("user",), "{forgotten} remembered host(s) of {user} forgotten."),
        "end USER's remembered hosts (policy.remember_seconds): the next login asks for a code",
    )
    forget.add_argument("user")
    check = verb("check", cmd_check, "validate USER's CODE exactly as a login would (consumes it)")
    check.add_argument("user")
    check.add_argument("code", nargs="?", help=f"the code; {on_argv}")
    verb("status", cmd_status, "agent, store and key backend health")
    verb("metrics", cmd_metrics, "the agent's metrics, in the Prometheus text format", with_json=False)
    codes = verb(
        "backup-codes",
        recovery_commands.run_backup_codes,
        "make a fresh set of single-use backup codes for USER (replaces the previous set)",
    )
    recovery_commands.add_backup_codes_arguments(codes)
    confirm = verb("confirm", cmd_confirm, "confirm a self-enrolled (pending) token with a current code")
    recovery_commands.add_confirm_arguments(confirm, on_argv)
    return parser


def agent_socket(arguments: argparse.Namespace) -> str:
    """The socket to talk to: --socket, else the configuration's, else the default path.

    A user who is not root usually cannot read agent.toml (and never needs it): when it is
    missing or unreadable, the default socket is used.  A file that is there, readable and
    wrong is still an error.
    """
    if getattr(arguments, "socket", None):
        return str(arguments.socket)
    try:
        return str(load_config(getattr(arguments, "config", None)).agent.socket)
    except ConfigError as exc:
        if isinstance(exc.__cause__, (FileNotFoundError, PermissionError)) and not hasattr(
            arguments, "config"
        ):
            return DEFAULT_SOCKET
        raise


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Console entry point of ``otpctl``."""
    out = out or sys.stdout
    parser = build_parser()
    arguments = parser.parse_args(argv)
    client: AgentClient | None = None
    try:
        client = AgentClient(agent_socket(arguments), timeout=getattr(arguments, "timeout", 60.0))
        return int(arguments.handler(arguments, client, out))
    except PskcError as exc:
        print(f"otpctl: {exc}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return exc.exit_status
    except (OtpAgentError, OSError) as exc:
        print(f"otpctl: {exc}", file=sys.stderr)
        return exit_status_of(exc)
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
