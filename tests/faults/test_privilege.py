"""Privilege attempts: an unprivileged uid (nobody) against a real agent.

``nobody`` tries to validate (code, password+code) and to ask ``enrolled`` for other users,
spelled every way that could be mistaken for another name or for its own (case variants,
leading and trailing spaces, NUL, control and invisible characters, Unicode look-alikes), calls
every administrative operation (and their spellings), and sends oversized frames.  Every attempt
must be refused with a permission, usage or protocol error (or the connection closed, for a frame
over the limit); afterwards alice's code, presented by ``nobody`` many times, is still unused,
no token was added, changed or removed, and the audit log holds no acceptance for nobody.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from typing import Any

from otp_agent import wire
from otp_agent.testing import running_agent
from otp_agent.wire import MAX_FRAME
from tests.faults.conftest import Figures
from tests.faults.support import (
    NOBODY,
    clients,
    count,
    hotp_code,
    open_directory,
    outcome,
    request,
    require_root,
    split_replies,
)

OTHERS = [
    "alice",
    "Alice",
    "ALICE",
    "aLiCe",
    "alice ",
    " alice",
    "alice\t",
    "alice\n",
    "alice\x00",
    "alice\x00nobody",
    "\u0430lice",
    "al\u0456ce",
    "ａｌｉｃｅ",
    "alice\u200b",
    "\u202ealice",
    "root",
    "ROOT",
    "Root",
    "root ",
    "r\u043eot",
    "root\x00",
    "0",
    "#0",
    "NOBODY",
    "Nobody",
    "nobodY",
    "nobody ",
    " nobody",
    "nobody\x00",
    "nobody\x00root",
    "n\u043ebody",
    "ｎｏｂｏｄｙ",
    "nobody\u200b",
    "\ufeffnobody",
    "nob\u00f6dy",
    "nobody\r",
    "65534",
    "+nobody",
    "../root",
    "*",
    "",
]
#: Every operation a plain uid may not call: all the agent answers (wire.OPERATIONS, so a new
#: operation is covered by itself) but validate/enrolled/ping, which it may call for itself.
ADMIN_OPS = sorted(wire.OPERATIONS - wire.VALIDATION_OPS)
SPELLINGS = [
    "LIST",
    "List",
    "list ",
    " list",
    "list\x00",
    "op_list",
    "VALIDATE",
    "Ping ",
    "status\n",
    "export\u200b",
    "zap",
    "",
]
REFUSED = {"permission", "usage"}


def _admin_fields(op: str, serial: str, code: str) -> dict[str, Any]:
    fields: dict[str, dict[str, Any]] = {
        "check": {"user": "alice", "code": code},
        "enroll": {"user": "nobody", "type": "hotp"},
        "import": {
            "tokens": [
                {
                    "serial": "EVIL0001",
                    "type": "hotp",
                    "secret_b64": "a2tra2tra2tra2tra2tra2tra2s=",
                    "user": "nobody",
                }
            ]
        },
        "export": {},
        "list": {},
        "show": {"target": "alice"},
        "assign": {"serial": serial, "user": "nobody"},
        "disable": {"serial": serial},
        "enable": {"serial": serial},
        "remove": {"serial": serial},
        "unlock": {"target": "alice"},
        "resync": {"user": "alice", "code1": code, "code2": code},
        "status": {},
    }
    return fields.get(op, {"user": "alice", "code": code})


def _oversized(size: int) -> bytes:
    body = b'{"v":1,"op":"validate","user":"nobody","code":"' + b"9" * max(0, size - 48) + b'"}'
    return struct.pack(">I", len(body)) + body


def test_privilege_attempts_are_all_refused(figures: Figures) -> None:
    require_root()
    passes = count(1, 10)
    with (
        open_directory() as directory,
        running_agent(directory / "agent") as agent,
        clients(1, uid=NOBODY) as nobody,
    ):
        serial, uri = agent.enroll("alice", "--type", "hotp")
        code = hotp_code(uri, 0)
        before = request(agent.socket_path, "list")["tokens"]
        attempts: Counter[str] = Counter()
        refusals: Counter[str] = Counter()
        through: list[tuple[str, Any, Any]] = []

        def attempt(what: str, op: str, fields: dict[str, Any]) -> None:
            reply = nobody.call("request", str(agent.socket_path), op, fields, 10.0)
            attempts[what] += 1
            if "exception" in reply:
                through.append((what, fields, reply))
                return
            result, reason = outcome(reply)
            refusals[reason if result == "error" else f"{result}:{reason}"] += 1
            if result != "error" or reason not in REFUSED:
                through.append((what, {"op": op, **fields}, reply))

        for _ in range(passes):
            for user in OTHERS:
                attempt("validate for another user", "validate", {"user": user, "code": code})
                attempt(
                    "password+code for another user",
                    "validate",
                    {"user": user, "password_and_code": "pw" + code},
                )
                attempt("enrolled for another user", "enrolled", {"user": user})
            for op in ADMIN_OPS:
                attempt("admin operation", op, _admin_fields(op, serial, code))
            for op in SPELLINGS:
                attempt("admin operation spelled otherwise", op, {"user": "alice", "code": code})
            for size in (MAX_FRAME + 1, 2 * MAX_FRAME, 1 << 20, 16 << 20):
                data, closed, _elapsed = nobody.call(
                    "raw", str(agent.socket_path), _oversized(size), True, 10.0
                )
                attempts["oversized frame"] += 1
                replies = split_replies(data)
                if isinstance(replies, str) and data not in (b"BrokenPipeError", b"ConnectionResetError"):
                    through.append(("oversized frame", size, replies))
                elif isinstance(replies, list) and any(
                    r["ok"] or r["error"]["code"] != "protocol" for r in replies
                ):
                    through.append(("oversized frame", size, replies))
                else:
                    refusals["protocol (or closed)"] += 1
                if not closed:
                    through.append(("oversized frame not closed", size, data[:100]))

        total = sum(attempts.values())
        after = request(agent.socket_path, "list")["tokens"]
        still_unused = outcome(request(agent.socket_path, "validate", user="alice", code=code))
        figures.report(
            f"privilege {total} attempts as uid {NOBODY} ({passes} pass(es): "
            + ", ".join(f"{k} {v}" for k, v in sorted(attempts.items()))
            + f"): {total - len(through)} refused ("
            + ", ".join(f"{k} {v}" for k, v in sorted(refusals.items()))
            + f"), {len(through)} got through; alice's code afterwards: {still_unused[0]}"
        )
        assert not through, through[:10]
        assert after == before
        assert still_unused == ("accept", "accepted")
        time.sleep(0.2)  # the audit log is written in batches
        events = [
            json.loads(line)
            for line in (agent.directory / "audit.log").read_text().splitlines()
            if line.strip()
        ]
        assert not [e for e in events if e.get("peer_uid") == NOBODY and e.get("result") == "accept"]
