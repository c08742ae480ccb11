"""otpctl against a real agent: verbs, JSON output, tables and the exit codes of otpctl(8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from otp_agent.testing import RunningAgent, code_for_uri


def test_enroll_json_and_uri_fields(agent: RunningAgent) -> None:
    result = agent.otpctl(
        "enroll",
        "alice",
        "--json",
        "--algorithm",
        "sha256",
        "--digits",
        "8",
        "--period",
        "60",
        "--issuer",
        "ACME Corp",
    )
    reply = json.loads(result.stdout)
    assert reply["serial"].startswith("OATO") and len(reply["serial"]) == 12
    assert reply["uri"].startswith("otpauth://totp/ACME%20Corp:alice?secret=")
    for part in ("issuer=ACME%20Corp", "algorithm=SHA256", "digits=8", "period=60"):
        assert part in reply["uri"]
    assert "secret" not in json.dumps(reply["token"])


def test_enroll_prints_a_qr_code_when_asked(agent: RunningAgent) -> None:
    result = agent.otpctl("enroll", "bob", "--qr", "always")
    assert result.returncode == 0 and "otpauth://totp/" in result.stdout
    assert result.stdout.count("\u2588") > 100  # Block characters of the QR code.
    plain = agent.otpctl("enroll", "carol")
    assert "\u2588" not in plain.stdout  # Not a terminal: no QR code by default.


def test_lifecycle_and_exit_codes(agent: RunningAgent) -> None:
    serial, uri = agent.enroll("dave", "--type", "hotp")
    assert agent.otpctl("check", "dave", "000000").returncode == 1
    assert agent.otpctl("check", "dave", code_for_uri(uri, counter=0)).returncode == 0
    assert agent.otpctl("disable", serial).returncode == 0
    rejected = agent.otpctl("check", "dave", code_for_uri(uri, counter=1))
    assert rejected.returncode == 1 and "disabled" in rejected.stdout
    assert agent.otpctl("enable", serial).returncode == 0
    assert agent.otpctl("assign", serial, "erin").returncode == 0
    shown = json.loads(agent.otpctl("show", "erin", "--json").stdout)["tokens"]
    assert [t["serial"] for t in shown] == [serial] and shown[0]["counter"] == 1
    table = agent.otpctl("list").stdout
    assert table.splitlines()[0].split() == [
        "SERIAL",
        "USER",
        "TYPE",
        "ALGORITHM",
        "DIGITS",
        "PERIOD",
        "STATE",
    ]
    assert serial in table and "erin" in table
    assert agent.otpctl("remove", serial).returncode == 0
    missing = agent.otpctl("show", serial)
    assert missing.returncode == 1 and "no token" in missing.stderr


def test_resync_and_unlock(agent: RunningAgent) -> None:
    serial, uri = agent.enroll("frank", "--type", "hotp")
    for _ in range(5):
        agent.otpctl("check", "frank", "000000")
    locked = agent.otpctl("check", "frank", code_for_uri(uri, counter=0))
    assert locked.returncode == 1 and "locked" in locked.stdout
    assert "1 token(s) unlocked" in agent.otpctl("unlock", "frank").stdout
    assert (
        agent.otpctl(
            "resync", "frank", code_for_uri(uri, counter=40), code_for_uri(uri, counter=41)
        ).returncode
        == 0
    )
    assert agent.otpctl("check", "frank", code_for_uri(uri, counter=42)).returncode == 0
    assert agent.otpctl("resync", "frank", "111111", "222222").returncode == 1


def test_status(agent: RunningAgent) -> None:
    status = json.loads(agent.otpctl("status", "--json").stdout)
    assert status["agent"]["ok"] and status["store"]["ok"] and status["keystore"]["ok"]
    assert status["keystore"]["backend"] == "software"
    assert agent.otpctl("status").returncode == 0


def test_usage_and_config_errors_exit_2(agent: RunningAgent, tmp_path: Path) -> None:
    assert agent.otpctl("enroll").returncode == 2
    assert agent.otpctl("enroll", "x", "--digits", "7").returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nsockett = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "otp_agent.cli", "--config", str(bad), "list"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "agent.sockett" in result.stderr


def test_agent_unreachable_exits_3(agent: RunningAgent) -> None:
    agent.stop()
    result = agent.otpctl("list")
    assert result.returncode == 3 and "not running" in result.stderr


def test_check_reads_the_code_from_standard_input(agent: RunningAgent) -> None:
    """No CODE on the command line (argv is visible in ps): one line of stdin is the code; the
    same code again from stdin is a replay."""
    _serial, uri = agent.enroll("gwen", "--type", "hotp")
    code = code_for_uri(uri, counter=0)
    accepted = agent.otpctl("check", "gwen", input=code + "\n")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert code not in accepted.stdout + accepted.stderr
    replayed = agent.otpctl("check", "gwen", "--json", input=code + "\n")
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert json.loads(replayed.stdout)["result"] == "reject"


def test_resync_reads_two_codes_from_standard_input(agent: RunningAgent) -> None:
    _serial, uri = agent.enroll("hank", "--type", "hotp")
    codes = f"{code_for_uri(uri, counter=30)}\n{code_for_uri(uri, counter=31)}\n"
    result = agent.otpctl("resync", "hank", input=codes)
    assert result.returncode == 0 and "resynchronised" in result.stdout, result.stdout + result.stderr
    assert agent.otpctl("check", "hank", input=code_for_uri(uri, counter=32)).returncode == 0


def test_missing_codes_on_standard_input_are_a_usage_error(agent: RunningAgent) -> None:
    _serial, uri = agent.enroll("ivan", "--type", "hotp")
    empty = agent.otpctl("check", "ivan", input="")
    assert empty.returncode == 2 and "standard input" in empty.stderr, empty.stderr
    one = agent.otpctl("resync", "ivan", input=code_for_uri(uri, counter=5) + "\n")
    assert one.returncode == 2 and "2 codes" in one.stderr, one.stderr
    three = agent.otpctl("resync", "ivan", "123456")
    assert three.returncode == 2 and "two codes" in three.stderr, three.stderr
    # Nothing was consumed: the first code still works.
    assert agent.otpctl("check", "ivan", code_for_uri(uri, counter=0)).returncode == 0


def test_check_prompts_without_echo_on_a_terminal(agent: RunningAgent) -> None:
    """On a terminal the code is asked for with echo off and never shown."""
    from tests.e2e.ptyproc import PtyProcess

    _serial, uri = agent.enroll("jane", "--type", "hotp")
    code = code_for_uri(uri, counter=0)
    env = dict(agent.environment or {})
    env.setdefault("PATH", "/usr/bin:/bin")
    process = PtyProcess(
        [sys.executable, "-m", "otp_agent.cli", "--config", str(agent.config_path), "check", "jane"], env=env
    )
    try:
        process.expect(b"Code for jane: ")
        process.send(code.encode() + b"\n")
        assert os.waitstatus_to_exitcode(process.wait()) == 0, process.output
        assert b"accept" in process.output and code.encode() not in process.output
    finally:
        process.close()
