"""Metrics and alerts of the real agent: ``otpctl metrics`` read by prometheus_client's own parser,
the node_exporter textfile, and the audit events that carry a severity (journal and syslog).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otp_agent.testing import RunningAgent, code_for_uri, running_agent
from tests.integration.agentclient import request


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels (parsed by prometheus_client)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(agent: RunningAgent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = agent.otpctl("metrics", check=True)
    return samples(result.stdout)


def decisions(values: dict[Any, float], result: str, reason: str) -> float:
    return values.get(("otp_agent_decisions_total", (("reason", reason), ("result", result))), 0.0)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    with running_agent(tmp_path / "agent", policy={"lock_threshold": 2, "totp_window": 1}) as running:
        yield running


def test_counters_move_by_exactly_the_decisions_made(agent: RunningAgent) -> None:
    _serial, uri = agent.enroll("alice", "--type", "hotp")
    agent.enroll("bob")
    before = scrape(agent)
    assert (
        request(agent.socket_path, "validate", user="alice", code=code_for_uri(uri, counter=0))["result"]
        == "accept"
    )
    assert (
        request(agent.socket_path, "validate", user="alice", code=code_for_uri(uri, counter=0))["reason"]
        == "replay"
    )
    for _ in range(2):
        assert request(agent.socket_path, "validate", user="alice", code="000000")["reason"] == "bad_code"
    assert request(agent.socket_path, "validate", user="alice", code="000000")["reason"] == "locked"
    assert request(agent.socket_path, "validate", user="nobody-here", code="123456")["reason"] == "no_token"
    after = scrape(agent)
    for (result, reason), made in {
        ("accept", "accepted"): 1,
        ("reject", "replay"): 1,
        ("reject", "bad_code"): 2,
        ("reject", "locked"): 1,
        ("reject", "no_token"): 1,
    }.items():
        assert decisions(after, result, reason) - decisions(before, result, reason) == made, (result, reason)
    assert after[("otp_agent_locks_total", (("event", "locked"),))] == 1
    assert after[("otp_agent_tokens", (("state", "locked"), ("type", "hotp")))] == 1
    assert after[("otp_agent_tokens", (("state", "active"), ("type", "totp")))] == 1
    assert after[("otp_agent_keystore_up", (("backend", "software"),))] == 1
    assert after[("otp_agent_store_up", ())] == 1
    hmacs = ("otp_agent_keystore_seconds_count", (("operation", "compute_hmacs"),))
    assert after[hmacs] - before.get(hmacs, 0) >= 4  # one batch per validation that reached the token
    commits = ("otp_agent_store_seconds_count", (("operation", "compare_and_set"),))
    assert after[commits] - before.get(commits, 0) >= 3  # the acceptance and the two failures
    alerts = ("otp_agent_alerts_total", (("event", "lock"), ("severity", "warning")))
    assert after[alerts] == 1


def test_textfile_for_node_exporter_is_written_atomically(tmp_path: Path) -> None:
    textfile = tmp_path / "collector" / "otp_agent.prom"
    textfile.parent.mkdir()
    sections = {"metrics": {"textfile": str(textfile), "interval": 5}}
    with running_agent(tmp_path / "agent", sections=sections) as agent:
        _serial, uri = agent.enroll("carol")
        request(agent.socket_path, "validate", user="carol", code=code_for_uri(uri))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            values = samples(textfile.read_text()) if textfile.exists() else {}
            if decisions(values, "accept", "accepted") == 1:
                break
            time.sleep(0.5)
        assert decisions(values, "accept", "accepted") == 1
        assert sorted(p.name for p in textfile.parent.iterdir()) == ["otp_agent.prom"]  # no temporary left


def test_alerts_carry_a_severity_and_reach_the_journal(agent: RunningAgent) -> None:
    _serial, uri = agent.enroll("dave", "--type", "hotp")
    code = code_for_uri(uri, counter=0)
    assert request(agent.socket_path, "validate", user="dave", code=code)["result"] == "accept"
    for _ in range(3):
        assert request(agent.socket_path, "validate", user="dave", code=code)["reason"] == "replay"
    for _ in range(2):
        request(agent.socket_path, "validate", user="dave", code="000000")
    time.sleep(0.3)
    lines = [json.loads(line) for line in (agent.directory / "audit.log").read_text().splitlines()]
    severities = {line["event"]: line["severity"] for line in lines}
    assert severities["lock"] == "warning" and severities["replay_burst"] == "warning"
    assert severities["validate"] == "info"
    burst = next(line for line in lines if line["event"] == "replay_burst")
    assert burst["user"] == "dave" and burst["count"] == 3
    log = agent.log_path.read_text()
    assert '"event":"lock"' in log and '"event":"replay_burst"' in log  # the daemon's log: journald
    assert '"event":"validate"' not in log  # info events stay in the audit file
    assert code not in log


def test_the_grafana_dashboard_uses_only_metrics_the_agent_exports(agent: RunningAgent) -> None:
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "contrib/grafana/otp-agent-dashboard.json").read_text()
    )
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\botp_agent_[a-z_]+", expr)}
    _serial, uri = agent.enroll("erin", "--type", "hotp")
    request(agent.socket_path, "validate", user="erin", code=code_for_uri(uri, counter=0))
    families = {
        family.name for family in text_string_to_metric_families(agent.otpctl("metrics", check=True).stdout)
    }
    used_families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    # otp_agent_hsm_up exists only on the payShield backend (one sample per HSM).
    assert used_families - families == {"otp_agent_hsm_up"}, used_families - families
