"""``otpctl import`` / ``otpctl export`` against a fake admin client (the daemon is the lead's).

The fake records every request, so "nothing is imported" is checked as "no import request was
sent": a refused file never reaches the store.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from otp_agent.cli import pskc_commands
from otp_agent.errors import KeyBackendError, OtpAgentError, PskcError, exit_status_of
from otp_agent.pskc import parse_pskc, token_from_record, write_pskc
from tests.pskc.conftest import FIGURE6_PSK, FIGURE7_PASSWORD, INVALID, RFC
from tests.pskc.test_invalid_corpus import CORPUS


class FakeClient:
    """Records requests; answers import like the daemon, export with canned tokens."""

    def __init__(
        self, *, export_tokens: list[dict[str, Any]] | None = None, error: Exception | None = None
    ) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.export_tokens = export_tokens or []
        self.error = error

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.requests.append((op, fields))
        if self.error is not None:
            raise self.error
        if op == "import":
            count = len(fields["tokens"])
            return {
                "ok": True,
                "imported": 0 if fields["dry_run"] else count,
                "checked": count,
                "serials": [t["serial"] for t in fields["tokens"]],
            }
        if op == "export":
            return {"ok": True, "tokens": self.export_tokens}
        raise AssertionError(op)


def parse(add: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    add(parser)
    return parser.parse_args(argv)


def _funnel(run: Any, add: Any, argv: list[str], client: FakeClient) -> tuple[int, str]:
    """Run a command as otpctl's main() does: an error becomes its message and exit status."""
    out = io.StringIO()
    try:
        status = run(parse(add, argv), client, out)
    except (OtpAgentError, OSError) as exc:
        print(f"otpctl: {exc}", file=sys.stderr)
        status = exit_status_of(exc)
    return status, out.getvalue()


def run_import(argv: list[str], client: FakeClient) -> tuple[int, str]:
    return _funnel(pskc_commands.run_import, pskc_commands.add_import_arguments, argv, client)


def test_import_psk_sends_one_request(tmp_path: Path) -> None:
    """Figure 6 with a key file: one import request carrying the full record."""
    key_file = tmp_path / "key.hex"
    key_file.write_text(FIGURE6_PSK.hex().upper() + "\n")
    client = FakeClient()
    status, text = run_import([str(RFC / "figure6.xml"), "--key-file", str(key_file), "--any-id"], client)
    assert status == 0
    ((op, fields),) = client.requests
    assert op == "import" and fields["dry_run"] is False
    (record,) = fields["tokens"]
    assert record == {
        "serial": "12345678",
        "type": "hotp",
        "algorithm": "sha1",
        "digits": 8,
        "period": 30,
        "t0": 0,
        "counter": 0,
        "drift": 0,
        "user": None,
        "issuer": "Issuer",
        "not_before": None,
        "not_after": None,
        "secret_b64": base64.b64encode(b"12345678901234567890").decode(),
    }
    assert "1 token(s) imported" in text and "12345678" in text
    assert "MTIzNDU2" not in text  # the secret never reaches the report


def test_import_password_file_strips_one_newline(tmp_path: Path) -> None:
    """The password file holds the password as text; only the trailing newline is removed."""
    password_file = tmp_path / "pw"
    password_file.write_text(FIGURE7_PASSWORD + "\n")
    client = FakeClient()
    status, _ = run_import(
        [str(RFC / "figure7.xml"), "--password-file", str(password_file), "--any-id"], client
    )
    assert status == 0 and len(client.requests) == 1


def test_import_dry_run_and_json(tmp_path: Path) -> None:
    """--dry-run is passed on; --json prints a machine-readable report without secrets."""
    client = FakeClient()
    status, text = run_import([str(RFC / "figure5.xml"), "--any-id", "--dry-run", "--json"], client)
    assert status == 0
    assert client.requests[0][1]["dry_run"] is True
    report = json.loads(text)
    assert report["ok"] is True and report["dry_run"] is True and report["imported"] == 0
    assert report["tokens"][0]["serial"] == "12345678"
    assert "secret_b64" not in text
    assert any("PINUsageMode Local" in note for note in report["notes"])


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_refused_file_sends_nothing(name: str, tmp_path: Path) -> None:
    """Every corpus file: exit 1, its problem reported, and no request reaches the agent."""
    options, fragment = CORPUS[name]
    argv = [str(INVALID / name), "--json"]
    if "psk" in options:
        (tmp_path / "k").write_text(FIGURE6_PSK.hex())
        argv += ["--key-file", str(tmp_path / "k")]
    if "password" in options:
        (tmp_path / "p").write_text(FIGURE7_PASSWORD)
        argv += ["--password-file", str(tmp_path / "p")]
    if options.get("strict_ids") is False:
        argv.append("--any-id")
    client = FakeClient()
    status, text = run_import(argv, client)
    assert status == 1
    assert client.requests == []
    report = json.loads(text)
    assert report["ok"] is False
    (problem,) = report["problems"]
    assert fragment in problem["message"]


def test_refusal_table_names_line_and_key(tmp_path: Path) -> None:
    """The people's report lists each problem with its line and key Id."""
    client = FakeClient()
    status, text = run_import([str(RFC / "figure3.xml")], client)
    assert status == 1 and client.requests == []
    assert "line 15, key '12345678': Key Id is not an OATH token identifier" in text


def test_daemon_refusal_is_reported(tmp_path: Path) -> None:
    """A refusal by the agent (e.g. serial already in the store) gives exit 1 and its problems."""
    client = FakeClient(error=PskcError("import refused", ["12345678: already in the store"]))
    status, text = run_import([str(RFC / "figure3.xml"), "--any-id"], client)
    assert status == 1 and "line 15, key '12345678': already in the store" in text
    status, text = run_import([str(RFC / "figure3.xml"), "--any-id", "--json"], client)
    assert json.loads(text)["problems"] == [
        {"line": 15, "key_id": "12345678", "message": "already in the store"}
    ]


def test_oversized_file_refused_on_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file larger than the limit is refused from its size, before it is read."""
    monkeypatch.setattr(pskc_commands, "MAX_FILE_SIZE", 100)
    client = FakeClient()
    status, text = run_import([str(RFC / "figure3.xml"), "--any-id"], client)
    assert status == 1 and "larger than the 100-byte limit" in text and client.requests == []


@pytest.mark.parametrize(
    "content,message",
    [
        ("zz", "hexadecimal"),
        ("0011", "has 2 bytes"),
    ],
)
def test_bad_key_file_is_usage_error(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key file that is not a hex AES key is a usage error (exit 2)."""
    (tmp_path / "k").write_text(content)
    status, _ = run_import([str(RFC / "figure6.xml"), "--key-file", str(tmp_path / "k")], FakeClient())
    assert status == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("password", ["abcd", "x" * 65])
def test_password_length_refused(tmp_path: Path, password: str) -> None:
    """A password of 4 or 65 characters is refused clearly (5 to 64 inclusive are accepted)."""
    (tmp_path / "p").write_text(password)
    status, text = run_import(
        [str(RFC / "figure7.xml"), "--password-file", str(tmp_path / "p"), "--any-id"], FakeClient()
    )
    assert status == 1 and "must have 5 to 64 characters" in text and password not in text


def test_missing_file_is_usage_error(tmp_path: Path) -> None:
    """A FILE that cannot be read is a usage error."""
    status, _ = run_import([str(tmp_path / "absent.xml")], FakeClient())
    assert status == 2


EXPORTED = [
    {
        "serial": "OATO00000001",
        "type": "totp",
        "algorithm": "sha256",
        "digits": 6,
        "period": 30,
        "t0": 0,
        "counter": 0,
        "drift": 1,
        "user": "alice",
        "issuer": "otp-agent",
        "not_before": None,
        "not_after": 1893456000.0,
        "last_step": 5,
        "enabled": True,
        "secret_b64": base64.b64encode(bytes(range(32))).decode(),
    },
    {
        "serial": "OAHO00000002",
        "type": "hotp",
        "algorithm": "sha1",
        "digits": 8,
        "period": 30,
        "t0": 0,
        "counter": 12,
        "drift": 0,
        "user": None,
        "issuer": None,
        "not_before": None,
        "not_after": None,
        "secret_b64": base64.b64encode(bytes(range(20))).decode(),
    },
]


def run_export(argv: list[str], client: FakeClient) -> tuple[int, str]:
    return _funnel(pskc_commands.run_export, pskc_commands.add_export_arguments, argv, client)


def _iteration_count(data: bytes) -> int:
    counts = [
        element.text
        for element in etree.fromstring(data).iter()
        if isinstance(element.tag, str) and etree.QName(element).localname == "IterationCount"
    ]
    assert len(counts) == 1, counts
    return int(counts[0] or 0)


def test_export_pbe_round_trip(tmp_path: Path) -> None:
    """export writes a 0600 PBE file (PBKDF2 with 600,000 iterations by default) that our import
    reads back with every value."""
    (tmp_path / "pw").write_text("export password\n")
    target = tmp_path / "backup.pskc"
    status, text = run_export(
        ["--output", str(target), "--password-file", str(tmp_path / "pw")], FakeClient(export_tokens=EXPORTED)
    )
    assert status == 0 and "2 token(s) exported" in text
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert _iteration_count(target.read_bytes()) >= 600_000
    first, second = parse_pskc(target.read_bytes(), password="export password")
    assert first.serial == "OATO00000001" and first.secret.reveal() == bytes(range(32))
    assert first.drift == 1 and first.user == "alice" and first.not_after is not None
    assert second.counter == 12 and second.params.digits == 8


def test_export_psk(tmp_path: Path) -> None:
    """export with a key file writes a PSK-protected file."""
    (tmp_path / "k").write_text("00" * 32)
    target = tmp_path / "backup.pskc"
    status, text = run_export(
        ["--output", str(target), "--key-file", str(tmp_path / "k"), "--json"],
        FakeClient(export_tokens=EXPORTED),
    )
    assert status == 0 and json.loads(text)["protection"] == "psk"
    assert len(parse_pskc(target.read_bytes(), psk=bytes(32))) == 2


def test_export_never_overwrites(tmp_path: Path) -> None:
    """An existing output file is left alone and the agent is not even asked."""
    (tmp_path / "k").write_text("00" * 16)
    target = tmp_path / "backup.pskc"
    target.write_text("precious")
    client = FakeClient(export_tokens=EXPORTED)
    status, _ = run_export(["--output", str(target), "--key-file", str(tmp_path / "k")], client)
    assert status == 2 and target.read_text() == "precious" and client.requests == []


def test_export_requires_protection(tmp_path: Path) -> None:
    """Without --password-file or --key-file the command line is refused: never clear secrets."""
    with pytest.raises(SystemExit):
        parse(pskc_commands.add_export_arguments, ["--output", str(tmp_path / "x")])


def test_export_payshield_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The payShield backend cannot export: a clear refusal, exit 4, and no file."""
    (tmp_path / "k").write_text("00" * 16)
    target = tmp_path / "backup.pskc"
    client = FakeClient(error=KeyBackendError("the payshield key backend cannot export secrets"))
    status, _ = run_export(["--output", str(target), "--key-file", str(tmp_path / "k")], client)
    assert status == 4 and not target.exists()
    assert "transport key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "password,iterations,message",
    [
        ("abcd", "600000", "12 to 64 characters"),
        ("eleven char", "600000", "export password must have 12 to 64 characters, this one has 11"),
        ("x" * 65, "600000", "12 to 64 characters"),
        ("twelve chars", "599999", "--iterations must be from 600000 to 10000000"),
        ("twelve chars", "2000", "--iterations must be from 600000"),
    ],
)
def test_export_checks_password_before_asking(
    tmp_path: Path, password: str, iterations: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad export password or iteration count is refused before any secret is fetched."""
    (tmp_path / "pw").write_text(password)
    client = FakeClient(export_tokens=EXPORTED)
    status, _ = run_export(
        [
            "--output",
            str(tmp_path / "out.pskc"),
            "--password-file",
            str(tmp_path / "pw"),
            "--iterations",
            iterations,
        ],
        client,
    )
    assert status == 2 and client.requests == [] and not (tmp_path / "out.pskc").exists()
    assert message in capsys.readouterr().err


def test_export_accepts_a_twelve_character_password(tmp_path: Path) -> None:
    """12 characters is the shortest export password; the file opens with it."""
    (tmp_path / "pw").write_text("twelve chars")
    target = tmp_path / "out.pskc"
    status, _ = run_export(
        ["--output", str(target), "--password-file", str(tmp_path / "pw"), "--iterations", "600000"],
        FakeClient(export_tokens=EXPORTED),
    )
    assert status == 0 and _iteration_count(target.read_bytes()) == 600_000
    assert len(parse_pskc(target.read_bytes(), password="twelve chars")) == 2


def test_import_still_accepts_a_five_character_password(tmp_path: Path) -> None:
    """Files from elsewhere keep the RFC's range: a 5-character password imports."""
    tokens = [token_from_record(record) for record in EXPORTED]
    data = write_pskc(tokens, password="five5", pbkdf2_iterations=2000)
    (tmp_path / "in.pskc").write_bytes(data)
    (tmp_path / "pw").write_text("five5\n")
    status, text = run_import(
        [str(tmp_path / "in.pskc"), "--password-file", str(tmp_path / "pw")], FakeClient()
    )
    assert status == 0, text
