"""``verify_password``: the password alone, through the agent's Linux-PAM password service (the
first step of a RADIUS challenge), for validators only (tests/unit/test_dispatch.py); a wrong one never touches the tokens."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.agentclient import request
from tests.pam.support import local_user, password_service, real_agent, require_root


def test_verify_password_right_and_wrong(work: Path) -> None:
    require_root()
    with (
        password_service() as service,
        real_agent(work / "agent", password_service=service, lock_threshold=2) as agent,
        local_user(work / "homes") as user,
    ):
        serial, _uri = agent.enroll(user.name, "--type", "hotp")
        right = request(agent.socket_path, "verify_password", user=user.name, password=user.password)
        assert (right["result"], right["reason"]) == ("accept", "accepted")
        for _ in range(3):
            wrong = request(
                agent.socket_path, "verify_password", user=user.name, password="not-" + user.password
            )
            assert (wrong["result"], wrong["reason"]) == ("reject", "bad_password_or_code")
        token = json.loads(agent.otpctl("show", serial, "--json", check=True).stdout)["tokens"][0]
        assert token["failures"] == 0 and token["locked_until"] == 0  # never counted toward a lock
        audit = (agent.directory / "audit.log").read_text()
        assert audit.count('"event":"verify_password"') == 4 and user.password not in audit
