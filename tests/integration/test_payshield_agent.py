"""The real daemon on the payShield key backend, over TLS (or opted-in plain TCP) to the simulator.

Covers the composition the unit suites do not: the ``[keystore.payshield]`` TOML table,
``otp-agent init`` creating the fingerprint key inside the HSM, enrollment through LU,
validation through pipelined LQ, ``otpctl status`` showing the HSM and how the link is
protected, the start-up warning of ``insecure_plaintext``, failing closed when the HSM goes
silent, and no secret in the database.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from otp_agent.testing import RunningAgent, code_for_uri, running_agent
from tests.integration.agentclient import request

simulator_testing = pytest.importorskip("otp_agent.payshield_sim.testing")


def _payshield_table(simulator: Any, agent_directory: Path) -> dict[str, object]:
    """The ``[keystore.payshield]`` table for ``simulator``: TLS trusting its certificate by
    default (no ``tls`` key needed), or plain TCP with the explicit opt-in."""
    config = simulator.config()
    payshield: dict[str, object] = {
        "hosts": [f"{simulator.host}:{simulator.port}"],
        "lmk_check_value": config.lmk_check_value,
        "header_length": config.header_length,
        "request_timeout": 2.0,
        "retry_initial": 0.1,
        "retry_max": 0.5,
        "zmk_file": str(config.zmk_file),
        "zmk_key_block_file": str(config.zmk_key_block_file),
        "fingerprint_key_file": str(agent_directory / "fingerprint.kb"),
    }
    if simulator.tls_cert is not None:
        payshield.update(tls_ca_file=str(simulator.tls_cert), tls_server_name="localhost")
    else:
        payshield["insecure_plaintext"] = True
    return payshield


@pytest.fixture
def hsm_agent(agent_directory: Path) -> Iterator[tuple[RunningAgent, object]]:
    with simulator_testing.running_simulator() as simulator:
        payshield = _payshield_table(simulator, agent_directory)
        sections = {"keystore": {"backend": "payshield", "payshield": payshield}}
        with running_agent(agent_directory, sections=sections) as agent:
            yield agent, simulator


def test_enroll_validate_replay_status_through_the_hsm(hsm_agent: tuple[RunningAgent, object]) -> None:
    agent, _simulator = hsm_agent
    assert (agent.directory / "fingerprint.kb").stat().st_mode & 0o777 == 0o600
    serial, uri = agent.enroll("alice", "--algorithm", "sha256")
    submitted = agent.code_for(uri)
    assert request(agent.socket_path, "validate", user="alice", code=submitted)["result"] == "accept"
    replay = request(agent.socket_path, "validate", user="alice", code=submitted)
    assert (replay["result"], replay["reason"]) == ("reject", "replay")
    status = json.loads(agent.otpctl("status", "--json").stdout)
    assert status["keystore"]["backend"] == "payshield" and status["keystore"]["ok"]
    text = agent.otpctl("status").stdout
    assert "hsm 127.0.0.1:" in text and ": up" in text
    assert status["keystore"]["transport"] == "tls" and "warning" not in status["keystore"]
    assert "transport=tls" in text and "WARNING" not in text
    agent.stop()
    secret_text = parse_qs(urlparse(uri).query)["secret"][0]
    raw = base64.b32decode(secret_text + "=" * (-len(secret_text) % 8))
    database = b"".join(p.read_bytes() for p in agent.directory.glob("tokens.db*"))
    for form in (raw, raw.hex().encode(), secret_text.encode()):
        assert form not in database
    assert serial.encode() in database


def test_silent_hsm_fails_closed_and_agent_keeps_serving(hsm_agent: tuple[RunningAgent, object]) -> None:
    agent, simulator = hsm_agent
    _serial, uri = agent.enroll("bob")
    submitted = agent.code_for(uri)
    simulator.set(fault="silent")  # type: ignore[attr-defined]
    reply = request(agent.socket_path, "validate", user="bob", code=submitted, timeout=30)
    assert reply["result"] == "reject" and reply["reason"].startswith("keystore")
    assert request(agent.socket_path, "ping")["ok"] is True
    simulator.clear_faults()  # type: ignore[attr-defined]
    # The code was not consumed while the HSM was silent.
    for _ in range(20):
        reply = request(agent.socket_path, "validate", user="bob", code=submitted, timeout=30)
        if reply["result"] == "accept":
            break
        time.sleep(0.25)  # The HSM is retried after its back-off.
    assert reply["result"] == "accept", reply


def test_export_is_refused_on_the_hsm_backend(hsm_agent: tuple[RunningAgent, object], tmp_path: Path) -> None:
    agent, _simulator = hsm_agent
    agent.enroll("carol")
    (tmp_path / "password").write_text("correct horse battery")
    result = agent.otpctl(
        "export", "--output", str(tmp_path / "out.pskc"), "--password-file", str(tmp_path / "password")
    )
    assert result.returncode == 4 and "HSM" in result.stderr
    assert not (tmp_path / "out.pskc").exists()


def test_plaintext_opt_in_is_logged_and_shown_by_status(agent_directory: Path) -> None:
    """insecure_plaintext = true works, but the daemon logs a WARNING when it connects to the
    HSM and ``otpctl status`` shows the link as insecure with the warning on its own line."""
    with simulator_testing.running_simulator(tls=False) as simulator:
        payshield = _payshield_table(simulator, agent_directory)
        assert payshield["insecure_plaintext"] is True and "tls" not in payshield
        sections = {"keystore": {"backend": "payshield", "payshield": payshield}}
        with running_agent(agent_directory, sections=sections) as agent:
            _serial, uri = agent.enroll("dave")
            reply = request(agent.socket_path, "validate", user="dave", code=agent.code_for(uri))
            assert reply["result"] == "accept"
            status = json.loads(agent.otpctl("status", "--json").stdout)["keystore"]
            assert status["transport"] == "plaintext (insecure)"
            assert "insecure_plaintext = true" in status["warning"]
            text = agent.otpctl("status").stdout
            assert "transport=plaintext (insecure)" in text
            assert "\n  WARNING: keystore.payshield.insecure_plaintext = true" in text
            log = agent.log()
    warnings = [line for line in log.splitlines() if "insecure_plaintext = true" in line]
    assert warnings and all("WARNING" in line for line in warnings), log[-2000:]


def test_metrics_show_the_hsm_up_and_the_key_backend_latency(hsm_agent: tuple[RunningAgent, object]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    agent, simulator = hsm_agent
    _serial, uri = agent.enroll("hank")
    assert request(agent.socket_path, "validate", user="hank", code=agent.code_for(uri))["result"] == "accept"
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(agent.otpctl("metrics", check=True).stdout)
        for sample in family.samples
    }
    address = f"{simulator.host}:{simulator.port}"  # type: ignore[attr-defined]
    assert values[("otp_agent_hsm_up", (("address", address),))] == 1
    assert values[("otp_agent_keystore_up", (("backend", "payshield"),))] == 1
    assert values[("otp_agent_keystore_seconds_count", (("operation", "compute_hmacs"),))] >= 1


def test_a_failover_is_an_audit_event_of_severity_warning(agent_directory: Path) -> None:
    """Two HSMs; the active one stops: the other takes over, and the audit log (and the daemon's
    log, so the journal) carries a ``failover`` event naming both."""
    with simulator_testing.running_simulator() as first:
        with simulator_testing.running_simulator(
            lmk_file=first.lmk_file, directory=first.directory
        ) as second:
            payshield = _payshield_table(first, agent_directory)
            payshield["hosts"] = [f"{first.host}:{first.port}", f"{second.host}:{second.port}"]
            sections = {"keystore": {"backend": "payshield", "payshield": payshield}}
            with running_agent(agent_directory, sections=sections) as agent:
                _serial, uri = agent.enroll("ivan", "--type", "hotp")
                first.stop()
                accepted = [
                    request(
                        agent.socket_path,
                        "validate",
                        user="ivan",
                        code=code_for_uri(uri, counter=c),
                        timeout=30,
                    )
                    for c in range(3)
                ]
                assert any(reply["result"] == "accept" for reply in accepted), accepted
                time.sleep(0.3)
                events = [
                    json.loads(line) for line in (agent.directory / "audit.log").read_text().splitlines()
                ]
                failovers = [e for e in events if e["event"] == "failover"]
                assert len(failovers) == 1 and failovers[0]["severity"] == "warning"
                assert (failovers[0]["previous"], failovers[0]["active"]) == (
                    f"{first.host}:{first.port}",
                    f"{second.host}:{second.port}",
                )
                assert '"event":"failover"' in agent.log_path.read_text()
