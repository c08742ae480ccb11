"""otpctl import --format google-authenticator / users.oath against the real agent.

The google-authenticator files are written by Debian's real ``google-authenticator``; the
end-to-end switch of a user over sshd with the peers' own PAM modules is tests/e2e/test_migration.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from otp_agent.administration import Administration
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.errors import PskcError
from otp_agent.keystore import KeyBackend
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.testing import RunningAgent
from tests.conftest import FakeClock, make_validator, require

GOOGLE_AUTHENTICATOR = "/usr/bin/google-authenticator"


def _code(secret: bytes, moving: int, digits: int = 6) -> str:
    digest = hmac.new(secret, struct.pack(">Q", moving), "sha1").digest()
    offset = digest[-1] & 0x0F
    value = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**digits
    return f"{value:0{digits}d}"


def _google_file(directory: Path, *options: str) -> Path:
    require(shutil.which(GOOGLE_AUTHENTICATOR) is not None, "libpam-google-authenticator is not installed")
    path = directory / "google_authenticator"
    subprocess.run(
        [GOOGLE_AUTHENTICATOR, "-f", "-q", "-s", str(path), *options],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def _secret(path: Path) -> bytes:
    line = path.read_text().splitlines()[0]
    return base64.b32decode(line + "=" * (-len(line) % 8))


def _fingerprint(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_mode


def test_google_authenticator_totp_keeps_replay_state_and_scratch_codes(
    agent: RunningAgent, tmp_path: Path
) -> None:
    path = _google_file(tmp_path, "-t", "-d", "-r", "3", "-R", "30", "-w", "3")
    secret = _secret(path)
    step = int(time.time()) // 30
    # The peer accepted this step's code just now: its module writes the step it used.
    text = path.read_text().replace('" DISALLOW_REUSE\n', f'" DISALLOW_REUSE {step}\n')
    path.write_text(text)
    path.chmod(0o400)
    scratch = [line for line in text.splitlines() if line.isdigit() and len(line) == 8]
    before = _fingerprint(path)
    dry = agent.otpctl(
        "import", "--format", "google-authenticator", str(path), "--user", "alice", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "RATE_LIMIT" in dry.stderr
    assert agent.otpctl("show", "alice").returncode == 1  # nothing was written
    done = agent.otpctl("import", "--format", "google-authenticator", str(path), "--user", "alice", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["imported"] == 1 and report["backup_codes"] == {"alice": len(scratch)}
    assert report["tokens"][0]["last_step"] == step and report["tokens"][0]["period"] == 30
    assert _fingerprint(path) == before  # the source file is untouched
    for leaked in (secret.hex(), base64.b32encode(secret).decode().rstrip("="), *scratch):
        assert leaked not in done.stdout + done.stderr + dry.stdout + dry.stderr
    shown = json.loads(agent.otpctl("show", "alice", "--json", check=True).stdout)
    assert shown["backup_codes_remaining"] == len(scratch)
    used = agent.otpctl("check", "alice", input=_code(secret, step) + "\n")
    assert used.returncode == 1 and "replay" in used.stdout  # the peer used it: a replay here too
    assert agent.otpctl("check", "alice", input=scratch[0] + "\n").returncode == 0
    again = agent.otpctl("check", "alice", input=scratch[0] + "\n")
    assert again.returncode == 1 and "replay" in again.stdout
    database = b"".join(p.read_bytes() for p in agent.directory.glob("tokens.db*"))
    assert secret not in database and not any(code.encode() in database for code in scratch)


def test_google_authenticator_hotp_counter_and_step_size(agent: RunningAgent, tmp_path: Path) -> None:
    path = _google_file(tmp_path, "-c", "-w", "3", "-u")
    secret = _secret(path)
    text = path.read_text()
    assert '" HOTP_COUNTER 1' in text
    # The peer accepted counters 1 to 3: it stores the next one.
    path.write_text(text.replace('" HOTP_COUNTER 1', '" HOTP_COUNTER 4'))
    done = agent.otpctl("import", "--format", "google-authenticator", str(path), "--user", "bob")
    assert done.returncode == 0, done.stderr
    assert agent.otpctl("check", "bob", input=_code(secret, 3) + "\n").returncode == 1
    assert agent.otpctl("check", "bob", input=_code(secret, 4) + "\n").returncode == 0
    (tmp_path / "sixty").mkdir()
    sixty = _google_file(tmp_path / "sixty", "-t", "-S", "60", "-u", "-w", "3", "-D")
    imported = agent.otpctl(
        "import", "--format", "google-authenticator", str(sixty), "--user", "carol", "--json"
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["tokens"][0]["period"] == 60
    now_code = _code(_secret(sixty), int(time.time()) // 60)
    assert agent.otpctl("check", "carol", input=now_code + "\n").returncode == 0


def test_users_oath_static_password_refuses_the_whole_file_without_echo(
    agent: RunningAgent, tmp_path: Path
) -> None:
    users = tmp_path / "users.oath"
    users.write_text(
        "# pam_oath users\n"
        f"HOTP alice - {'3132333435363738393031323334353637383930'}\n"
        f"HOTP/T30 bob S3cretPassw0rd {'41' * 20}\n"
    )
    refused = agent.otpctl("import", "--format", "users.oath", str(users))
    assert refused.returncode == 1
    assert "line 3" in refused.stderr and "S3cretPassw0rd" not in refused.stdout + refused.stderr
    assert agent.otpctl("show", "alice").returncode == 1  # all or nothing
    seven = tmp_path / "seven.oath"
    seven.write_text(f"HOTP/E/7 alice - {'42' * 20}\n")
    assert agent.otpctl("import", "--format", "users.oath", str(seven)).returncode == 1


def test_users_oath_counters_several_tokens_and_all_or_nothing(agent: RunningAgent, tmp_path: Path) -> None:
    first, second = b"12345678901234567890", bytes(range(20, 36))
    users = tmp_path / "users.oath"
    # alice's HOTP token accepted counter 7 last (field 6 present: the next one is 8); bob's
    # restarts at 3; alice also has a second, 8-digit token.
    users.write_text(
        f"HOTP\talice\t-\t{first.hex()}\t7\t{_code(first, 7)}\t2026-11-30T10:00:00L\n"
        f"HOTP bob - {second.hex()} 3\n"
        f"HOTP/E/8 alice - {bytes(range(40, 60)).hex()}\n"
    )
    before = _fingerprint(users)
    done = agent.otpctl("import", "--format", "users.oath", str(users), "--json")
    assert done.returncode == 0, done.stderr
    assert _fingerprint(users) == before
    tokens = json.loads(agent.otpctl("show", "alice", "--json", check=True).stdout)["tokens"]
    assert sorted(t["digits"] for t in tokens) == [6, 8]
    assert agent.otpctl("check", "alice", input=_code(first, 7) + "\n").returncode == 1
    assert agent.otpctl("check", "alice", input=_code(first, 8) + "\n").returncode == 0
    assert agent.otpctl("check", "bob", input=_code(second, 3) + "\n").returncode == 0
    # A later file holding one new token and one whose secret is already here imports nothing.
    clash = tmp_path / "clash.oath"
    clash.write_text(f"HOTP dave - {bytes(range(80, 100)).hex()}\nHOTP erin - {second.hex()}\n")
    refused = agent.otpctl("import", "--format", "users.oath", str(clash))
    assert refused.returncode == 1 and "same secret" in refused.stderr
    assert agent.otpctl("show", "dave").returncode == 1


@pytest.mark.parametrize("size", [10, 16])
def test_short_migrated_secrets_seal_and_validate_on_each_backend(
    size: int, tmp_path: Path, key_backend: KeyBackend, clock: FakeClock
) -> None:
    """google-authenticator makes 10- and 16-byte secrets: both key backends must take them."""
    store = SQLiteStore(tmp_path / "tokens.db", create=True)
    audit = AuditLog(tmp_path / "audit.log")
    try:
        admin = Administration(store, key_backend, audit, clock=clock)
        secret = os.urandom(size)
        record = {
            "serial": "OAHO00000001",
            "type": "hotp",
            "digits": 6,
            "counter": 5,
            "user": "root",
            "secret_b64": base64.b64encode(secret).decode(),
        }
        context = RequestContext(0, 0, "test")
        with pytest.raises(PskcError) as refused:  # a PSKC import keeps the OATH profile's floor
            admin.import_tokens([record], dry_run=True, context=context)
        assert "at least 20 bytes" in refused.value.problems[0]
        admin.import_tokens([record], dry_run=False, context=context, source="users.oath")
        validator = make_validator(store, key_backend, audit, clock)
        assert validator.validate("root", _code(secret, 5), context).accepted is True
    finally:
        audit.close()
        store.close()
