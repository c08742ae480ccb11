"""Out-of-band codes through the real daemon: otpctl enrolls an oob token with an SMTP channel,
otpctl (and the application's typed client) asks for a code, a real SMTP server on loopback
(aiosmtpd) receives the mail, and the code read from it is accepted once; replays and codes
never sent are refused; nothing of the code is in the store or the logs.  On both key backends:
on payShield (the simulator over TLS) the secret is generated inside the HSM by L0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from otp_agent.client import AgentClient
from otp_agent.errors import SendRefused
from otp_agent.testing import running_agent
from tests.unit.test_channels_smtp import Recorder, smtp_server


def _code(envelope: object) -> str:
    body = envelope.content.decode("utf-8", "replace")  # type: ignore[attr-defined]
    found = re.search(r"code is (\d{6})", body)
    assert found, body
    return found.group(1)


@contextmanager
def _key_backend(name: str, directory: Path) -> Iterator[dict[str, Any]]:
    """Config sections for the key backend: the software default, or the HSM simulator."""
    if name == "software":
        yield {}
        return
    from otp_agent.payshield_sim.testing import running_simulator
    from tests.integration.test_payshield_agent import _payshield_table

    with running_simulator() as simulator:
        yield {"keystore": {"backend": "payshield", "payshield": _payshield_table(simulator, directory)}}


@pytest.mark.parametrize("backend", ["software", "payshield"])
def test_application_flow_over_smtp(agent_directory: Path, backend: str) -> None:
    handler = Recorder()
    with smtp_server(handler) as server, _key_backend(backend, agent_directory) as keystore:
        channel = {
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "from": "otp@example.com",
            "subject": "Your code",
        }
        with running_agent(
            agent_directory,
            sections={"channel": {"mail": channel}, **keystore},
            policy={"oob_resend_interval": 60},
        ) as agent:
            enrolled = agent.otpctl(
                "enroll",
                "alice",
                "--type",
                "oob",
                "--channel",
                "mail",
                "--address",
                "alice@example.com",
                "--json",
                check=True,
            )
            token = json.loads(enrolled.stdout)["token"]
            assert (token["type"], token["address"]) == ("oob", "a***@example.com")
            assert "uri" not in json.loads(enrolled.stdout)
            sent = agent.otpctl("send", "alice", "--json", check=True)
            reply = json.loads(sent.stdout)
            assert reply["channel"] == "mail" and reply["address"] == "a***@example.com"
            (envelope,) = handler.envelopes
            assert envelope.rcpt_tos == ["alice@example.com"]
            code = _code(envelope)
            with AgentClient(agent.socket_path) as client:
                assert client.validate("bob", code).accepted is False
                result = client.validate("alice", code)
                assert (result.accepted, result.serial) == (True, reply["serial"])
                assert client.validate("alice", code).reason == "replay"
                try:
                    client.send_code("alice")
                except SendRefused as exc:
                    assert "wait" in str(exc)
                else:
                    raise AssertionError("a second send within the resend interval was not refused")
            blocked = agent.otpctl("send", "alice")
            assert blocked.returncode == 1 and "moments ago" in blocked.stderr
            from tests.integration.test_metrics import scrape

            sends = {
                labels: value
                for (name, labels), value in scrape(agent).items()
                if name == "otp_agent_sends_total"
            }
            assert sends[(("channel", "mail"), ("result", "sent"))] == 1
            assert sends[(("channel", "mail"), ("result", "refused"))] == 2  # the blocked resends
            agent.stop()
            for path in (
                agent_directory / "tokens.db",
                agent_directory / "audit.log",
                agent_directory / "agent.log",
            ):
                if path.exists():
                    assert code.encode() not in path.read_bytes(), path
            audit = (agent_directory / "audit.log").read_text()
            assert '"event":"send"' in audit and "alice@example.com" not in audit


def test_a_mail_server_that_is_down_is_a_delivery_failure(agent_directory: Path) -> None:
    with running_agent(
        agent_directory,
        sections={
            "channel": {
                "mail": {
                    "kind": "smtp",
                    "host": "127.0.0.1",
                    "port": 1,
                    "security": "none",
                    "from": "otp@example.com",
                }
            }
        },
    ) as agent:
        agent.otpctl(
            "enroll",
            "alice",
            "--type",
            "oob",
            "--channel",
            "mail",
            "--address",
            "alice@example.com",
            check=True,
        )
        failed = agent.otpctl("send", "alice")
        assert failed.returncode == 4, failed.stderr
        unknown = agent.otpctl(
            "enroll", "bob", "--type", "oob", "--channel", "fax", "--address", "b@example.com"
        )
        assert unknown.returncode == 2 and "unknown channel" in unknown.stderr
        bad = agent.otpctl(
            "enroll",
            "bob",
            "--type",
            "oob",
            "--channel",
            "mail",
            "--address",
            "b@example.com\r\nBcc: x@example.com",
        )
        assert bad.returncode == 2
