"""Human-readable output of ``otpctl``: token tables, decisions, status, QR codes."""

from __future__ import annotations

import time
from typing import Any, TextIO

from otp_agent.wire import Reason, ValidateReply


def token_state(token: dict[str, Any], now: float | None = None) -> str:
    """One word (plus detail) describing whether a token can be used now."""
    now = time.time() if now is None else now
    if not token.get("enabled"):
        return "disabled"
    if token.get("pending_until") is not None:
        return f"pending {max(int(token['pending_until'] - now), 0)}s"
    if token.get("locked_until", 0) > now:
        return f"locked {int(token['locked_until'] - now)}s"
    if token.get("not_after") is not None and token["not_after"] <= now:
        return "expired"
    if token.get("user") is None:
        return "unassigned"
    return "active"


def print_tokens(tokens: list[dict[str, Any]], out: TextIO, *, detailed: bool = False) -> None:
    """Print tokens as an aligned table (or one block per token when ``detailed``)."""
    if not tokens:
        print("No tokens.", file=out)
        return
    if detailed:
        for token in tokens:
            print(f"{token['serial']}:", file=out)
            for key in (
                "user",
                "type",
                "algorithm",
                "digits",
                "period",
                "t0",
                "counter",
                "last_step",
                "drift",
                "failures",
                "issuer",
                "created",
            ):
                print(f"  {key:<10} {token.get(key)}", file=out)
            print(f"  {'state':<10} {token_state(token)}", file=out)
        return
    rows = [("SERIAL", "USER", "TYPE", "ALGORITHM", "DIGITS", "PERIOD", "STATE")]
    rows += [
        (
            t["serial"],
            t.get("user") or "-",
            t["type"],
            t["algorithm"],
            str(t["digits"]),
            str(t["period"]) if t["type"] == "totp" else "-",
            token_state(t),
        )
        for t in tokens
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out
        )


def print_decision(reply: dict[str, Any], out: TextIO) -> None:
    """Print an accept/reject decision ("accepted (token X)", "rejected: replay")."""
    decision = ValidateReply.parse(reply)
    serial = f" (token {decision.serial})" if decision.serial else ""
    if decision.accepted:
        why = "" if decision.reason is Reason.ACCEPTED else f": {decision.reason.value}"
        print(f"accepted{why}{serial}", file=out)
    else:
        print(f"rejected: {decision.reason.value}{serial}", file=out)


def print_status(reply: dict[str, Any], out: TextIO) -> None:
    """Print the health report; a section's ``warning`` gets a WARNING line of its own."""
    for part in ("agent", "store", "keystore", "audit"):
        if part not in reply:
            continue
        section = reply.get(part, {})
        details = ", ".join(
            f"{k}={v}"
            for k, v in section.items()
            if k not in ("ok", "warning") and not isinstance(v, (list, dict))
        )
        print(f"{part:<9} {'ok' if section.get('ok') else 'FAILING'}  {details}", file=out)
        if section.get("warning"):
            print(f"  WARNING: {section['warning']}", file=out)
        for host in section.get("hosts", []) if isinstance(section.get("hosts"), list) else []:
            state = "up" if host.get("up") else "DOWN"
            extra = ", ".join(
                f"{k}={v}" for k, v in host.items() if k not in ("address", "up") and v not in (None, "")
            )
            print(f"  hsm {host.get('address')}: {state}  {extra}", file=out)


#: Black on white, whatever the terminal's theme: a QR code scans only with dark modules on a
#: light background and a light quiet zone around it.
_DARK_ON_LIGHT = "\x1b[30;47m"
_RESET = "\x1b[0m"
#: The quiet zone the QR standard asks for, in modules.
QUIET_ZONE = 4


def qr_text(uri: str) -> str:
    """The otpauth:// URI as a QR code for a terminal: half blocks in explicit colours.

    Each character holds two rows of modules (upper and lower half); the colours are set on
    every line, so a dark and a light terminal theme draw the same black-on-white code.
    """
    import segno

    rows = [list(row) for row in segno.make(uri, error="m").matrix_iter(border=QUIET_ZONE)]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    glyphs = {(True, True): "\u2588", (True, False): "\u2580", (False, True): "\u2584", (False, False): " "}
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        cells = "".join(glyphs[bool(a), bool(b)] for a, b in zip(top, bottom, strict=True))
        lines.append(f"{_DARK_ON_LIGHT}{cells}{_RESET}")
    return "\n".join(lines) + "\n"


def show_qr(uri: str, out: TextIO) -> None:
    """Draw the otpauth:// URI as a QR code on the terminal (scans on dark and light themes)."""
    out.write(qr_text(uri))


def save_qr(uri: str, path: str, kind: str) -> None:
    """Write the QR code of ``uri`` to a new file (``png`` or ``svg``), mode 0600, never over one.

    The image holds the token's secret, like the URI: it is created readable by its owner only.

    :raises UsageError: the file exists or cannot be created.
    """
    import os

    import segno

    from otp_agent.errors import UsageError

    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: the QR code is never written over a file") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "wb") as handle:
        segno.make(uri, error="m").save(handle, kind=kind, scale=8, border=QUIET_ZONE)
