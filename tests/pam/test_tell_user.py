"""``pam-helper --tell-user``: the one line a refused user may read, and nothing else.

Against a scripted agent (the real sshd and agent: tests/e2e/test_sshd.py).  pam_exec's
``stdout`` option relays the helper's stdout and stderr to the user, so both are checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.pam.support import fake_agent, run_helper


def _reply(**fields: Any) -> Any:
    def behaviour(request: dict[str, Any]) -> dict[str, Any]:
        return {"v": 1, "ok": True, "serial": None, **fields}

    return behaviour


@pytest.mark.parametrize(
    ("reply", "told"),
    [
        (
            {"result": "reject", "reason": "locked", "retry_after": 23},
            b"too many failed attempts: try again in 23 s\n",
        ),
        ({"result": "reject", "reason": "locked"}, b"too many failed attempts: try again later\n"),
        ({"result": "reject", "reason": "replay"}, b"this code was already used: wait for the next one\n"),
        ({"result": "reject", "reason": "expired"}, b"this code has expired: ask for a new one\n"),
        ({"result": "reject", "reason": "bad_code"}, b""),
        ({"result": "reject", "reason": "no_token"}, b""),
        ({"result": "reject", "reason": "disabled"}, b""),
        ({"result": "reject", "reason": "bad_password_or_code"}, b""),
        (
            {"result": "reject", "reason": "locked", "retry_after": "23; rm -rf /"},
            b"too many failed attempts: try again later\n",
        ),
        ({"result": "accept", "reason": "accepted"}, b""),
    ],
)
def test_what_is_told(work: Path, reply: dict[str, Any], told: bytes) -> None:
    with fake_agent(work, _reply(**reply)) as agent:
        result = run_helper(agent.path, "--code-only", "--tell-user", answer=b"123456")
        silent = run_helper(agent.path, "--code-only", answer=b"123456")
    assert result.stdout == told and result.stderr == b""
    assert silent.stdout == b"" and silent.stderr == b""
    assert result.returncode == silent.returncode == (0 if reply["result"] == "accept" else 1)


def test_nothing_is_told_when_the_agent_is_unreachable(work: Path) -> None:
    result = run_helper(work / "absent.sock", "--code-only", "--tell-user", answer=b"123456")
    assert result.returncode == 3 and result.stdout == b"" and result.stderr == b""
