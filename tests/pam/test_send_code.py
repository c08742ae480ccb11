"""``pam-helper --send-code``: asks the agent to send an out-of-band code, reads no answer.

Exit 0 when a code was sent or the user has no out-of-band token (nothing to do), 1 otherwise;
the PAM line is ``optional``, so the code prompt follows either way.  The real agent and sshd are
in tests/e2e/test_sshd_oob.py; this drives the helper against a scripted agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.pam.support import fake_agent, run_helper


def _reply(ok: bool, **fields: Any) -> Any:
    def behaviour(request: dict[str, Any]) -> dict[str, Any]:
        if ok:
            return {
                "v": 1,
                "ok": True,
                "serial": "OAOB1",
                "channel": "mail",
                "address": "a***@x.example",
                "expires": 1.0,
            }
        return {"v": 1, "ok": False, "error": fields}

    return behaviour


def test_a_sent_code_exits_0_and_nothing_is_read_from_stdin(work: Path) -> None:
    with fake_agent(work, _reply(True)) as agent:
        result = run_helper(agent.path, "--send-code", answer=b"123456")
    assert result.returncode == 0
    assert agent.requests == [
        {"v": 1, "op": "send", "user": "alice", "service": "sshd", "rhost": "127.0.0.1"}
    ]


def test_no_out_of_band_token_is_nothing_to_do(work: Path) -> None:
    with fake_agent(work, _reply(False, code="not_found", message="no token")) as agent:
        assert run_helper(agent.path, "--send-code").returncode == 0


@pytest.mark.parametrize(
    "error",
    [
        {"code": "refused", "message": "wait", "reason": "resend_blocked"},
        {"code": "refused", "message": "limit", "reason": "rate_limited"},
        {"code": "channel", "message": "mail server down"},
        {"code": "permission", "message": "no"},
    ],
)
def test_a_refused_or_failed_send_exits_1(work: Path, error: dict[str, str]) -> None:
    with fake_agent(work, _reply(False, **error)) as agent:
        assert run_helper(agent.path, "--send-code").returncode == 1
