"""PSKC import and export through a real agent (``otpctl`` subprocesses, SQLite, software backend).

This checks the contract with the daemon side of ``import``/``export`` (owned by the lead):
a refused file leaves the store unchanged, a good one is imported once, and an export reads back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otp_agent.pskc import parse_pskc
from tests.pskc.conftest import FIGURE6_PSK, INVALID, RFC


def serials(agent) -> list[str]:
    listed = agent.otpctl("list", "--json")
    assert listed.returncode == 0, listed.stderr
    return sorted(t["serial"] for t in json.loads(listed.stdout)["tokens"])


def test_refused_file_leaves_store_unchanged(agent, tmp_path: Path) -> None:
    """A file with one bad key among good ones: exit 1, every problem listed, store unchanged."""
    before = serials(agent)
    result = agent.otpctl("import", str(INVALID / "duplicate-secret.xml"), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and "secrets must be unique" in report["problems"][0]["message"]
    assert serials(agent) == before


def test_import_dry_run_then_import_then_duplicate(agent, tmp_path: Path) -> None:
    """Dry run writes nothing; the import writes the token; importing again is refused by the store."""
    key_file = tmp_path / "psk"
    key_file.write_text(FIGURE6_PSK.hex())
    figure = RFC / "figure6.xml"
    dry = agent.otpctl("import", str(figure), "--key-file", str(key_file), "--any-id", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "12345678" not in serials(agent)
    done = agent.otpctl("import", str(figure), "--key-file", str(key_file), "--any-id", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["imported"] == 1
    assert "12345678" in serials(agent)
    again = agent.otpctl("import", str(figure), "--key-file", str(key_file), "--any-id")
    assert again.returncode == 1 and "already in the store" in again.stdout


def test_export_reads_back(agent, tmp_path: Path) -> None:
    """An enrolled token exports to a 0600 PBE file that our import reads back."""
    serial, _uri = agent.enroll("exporter")
    (tmp_path / "pw").write_text("backup password\n")
    target = tmp_path / "backup.pskc"
    result = agent.otpctl("export", "--output", str(target), "--password-file", str(tmp_path / "pw"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target.stat().st_mode & 0o777) == 0o600
    tokens = {t.serial: t for t in parse_pskc(target.read_bytes(), password="backup password")}
    assert tokens[serial].user == "exporter"


@pytest.mark.slow
def test_whole_negative_corpus_through_the_agent(agent, tmp_path: Path) -> None:
    """Every corpus file through the real otpctl: exit 1, its own message, store unchanged."""
    from tests.pskc.conftest import FIGURE7_PASSWORD
    from tests.pskc.test_invalid_corpus import CORPUS

    (tmp_path / "psk").write_text(FIGURE6_PSK.hex())
    (tmp_path / "pw").write_text(FIGURE7_PASSWORD + "\n")
    before = serials(agent)
    for name, (options, fragment) in sorted(CORPUS.items()):
        argv = ["import", str(INVALID / name), "--json"]
        if "psk" in options:
            argv += ["--key-file", str(tmp_path / "psk")]
        if "password" in options:
            argv += ["--password-file", str(tmp_path / "pw")]
        if options.get("strict_ids") is False:
            argv.append("--any-id")
        result = agent.otpctl(*argv)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        (problem,) = json.loads(result.stdout)["problems"]
        assert fragment in problem["message"], name
    assert serials(agent) == before
