"""The payShield backend inside the real agent pieces: SQLite store, enrollment, validation."""

from __future__ import annotations

import base64
import hmac
import sqlite3
import time
import urllib.parse
from pathlib import Path

from otp_agent.administration import Administration
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.config import PolicyConfig
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.oath import HashAlgorithm, OathParams, TokenType, format_code, time_step
from otp_agent.payshield_sim.testing import RunningSimulator
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.validation import Validator

CONTEXT = RequestContext(peer_uid=0, peer_pid=1, service="test")


def _secret_of(uri: str) -> bytes:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    value = query["secret"][0]
    return base64.b32decode(value + "=" * (-len(value) % 8))


def test_enrolled_secret_is_nowhere_in_the_database(
    backend: PayShieldKeyBackend, sim: RunningSimulator, tmp_path: Path
) -> None:
    """After enrollment the database files hold a key block, never the secret in any encoding;
    the code from the authenticator app is accepted once (HMAC by the HSM), a tampered key
    block in the database makes validation fail closed."""
    database = tmp_path / "tokens.db"
    store = SQLiteStore(database, create=True)
    audit = AuditLog(tmp_path / "audit.log")
    try:
        admin = Administration(store, backend, audit)
        enrolled = admin.enroll("alice", OathParams(TokenType.TOTP, HashAlgorithm.SHA256), "Example", CONTEXT)
        secret = _secret_of(enrolled["uri"])
        assert len(secret) == 32
        store.close()
        files = [p for p in tmp_path.iterdir() if p.name.startswith("tokens.db")]
        encodings = [
            secret,
            secret.hex().encode(),
            secret.hex().upper().encode(),
            base64.b32encode(secret).rstrip(b"="),
            base64.b64encode(secret).rstrip(b"="),
        ]
        for path in files:
            raw = path.read_bytes()
            assert not any(form in raw for form in encodings), path.name
        with sqlite3.connect(database) as connection:
            (sealed,) = connection.execute("select sealed from tokens").fetchone()
        assert bytes(sealed).startswith(b"S1") and b"05" in bytes(sealed)[:60]

        store = SQLiteStore(database)
        validator = Validator(store, backend, PolicyConfig(), audit)
        now = time.time()
        code = format_code(hmac.new(secret, time_step(now, 30).to_bytes(8, "big"), "sha256").digest(), 6)
        before = sim.request_count("LQ")
        assert validator.validate("alice", code, CONTEXT).accepted
        assert sim.request_count("LQ") - before == 1  # likely_first: the current step alone (in sync)
        assert validator.validate("alice", code, CONTEXT).reason == "replay"
        store.close()

        tampered = bytearray(bytes(sealed))
        tampered[80] = ord("A") if tampered[80] != ord("A") else ord("B")
        with sqlite3.connect(database) as connection:
            connection.execute("update tokens set sealed = ?", (bytes(tampered),))
        store = SQLiteStore(database)
        validator = Validator(store, backend, PolicyConfig(), audit)
        next_code = format_code(
            hmac.new(secret, (time_step(now, 30) + 1).to_bytes(8, "big"), "sha256").digest(), 6
        )
        decision = validator.validate("alice", next_code, CONTEXT)
        assert not decision.accepted and decision.reason == "sealed_secret_invalid"
    finally:
        store.close()
        audit.close()
