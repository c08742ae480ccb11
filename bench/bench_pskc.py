"""Benchmark: PSKC import of 10,000 and 100,000 tokens (PBE and PSK) into the software backend.

For each size and protection it writes a file with our exporter (not timed), then times
(1) ``parse_pskc``: hardened parse, key derivation, MAC checks, decryption and every profile
rule, and (2) the daemon's import path without the socket: ``Administration.import_tokens``
sealing every secret with the software key backend (AES-256-GCM) and writing one SQLite
transaction.  It prints keys per second for each stage and for the whole.  Target: 100,000
tokens in under 60 s.

Usage: ``.venv/bin/python bench/bench_pskc.py [--sizes 10000,100000] [--parse-only]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otp_agent.oath.params import HashAlgorithm, OathParams, TokenType  # noqa: E402
from otp_agent.pskc import ExportedToken, parse_pskc, record_from_token, write_pskc  # noqa: E402
from otp_agent.sensitive import Secret  # noqa: E402

PASSWORD = "benchmark password"
PSK = bytes(range(32))
PBKDF2_ITERATIONS = 100_000


def make_file(count: int, protection: str) -> bytes:
    """A PSKC file of ``count`` TOTP/HOTP tokens with random secrets, protected as asked."""
    tokens = []
    for index in range(count):
        if index % 2:
            params = OathParams(TokenType.HOTP, HashAlgorithm.SHA1, 6)
            serial = f"BNHO{index:08d}"
            secret = Secret(os.urandom(20))
        else:
            params = OathParams(TokenType.TOTP, HashAlgorithm.SHA256, 6, 30)
            serial = f"BNTO{index:08d}"
            secret = Secret(os.urandom(32))
        tokens.append(ExportedToken(serial, params, secret, user=f"user{index}"))
    if protection == "pbe":
        return write_pskc(tokens, password=PASSWORD, pbkdf2_iterations=PBKDF2_ITERATIONS)
    return write_pskc(tokens, psk=PSK)


def store_import(records: list[dict[str, Any]], workdir: Path) -> float:
    """Time the daemon-side import (seal + fingerprint + one SQLite transaction); seconds."""
    from otp_agent.administration import Administration
    from otp_agent.audit import AuditLog, RequestContext
    from otp_agent.keystore.software import SoftwareKeyBackend, create_master_key
    from otp_agent.store.sqlite import SQLiteStore

    master = workdir / "master.key"
    create_master_key(master)
    store = SQLiteStore(workdir / "tokens.db", create=True)
    admin = Administration(store, SoftwareKeyBackend(master), AuditLog(workdir / "audit.log"))
    started = time.perf_counter()
    reply = admin.import_tokens(records, dry_run=False, context=RequestContext(peer_uid=0, peer_pid=0))
    elapsed = time.perf_counter() - started
    assert reply["imported"] == len(records), reply
    return elapsed


def run(count: int, protection: str, parse_only: bool) -> None:
    """Benchmark one size and protection and print one line."""
    data = make_file(count, protection)
    options: dict[str, Any] = {"password": PASSWORD} if protection == "pbe" else {"psk": PSK}
    started = time.perf_counter()
    tokens = parse_pskc(data, **options)
    parse_seconds = time.perf_counter() - started
    assert len(tokens) == count
    line = (
        f"{count:>7} tokens {protection.upper():3}  file {len(data) / 1e6:6.1f} MB  "
        f"parse+decrypt+check {parse_seconds:6.2f} s = {count / parse_seconds:8.0f} keys/s"
    )
    if not parse_only:
        records = [record_from_token(token) for token in tokens]
        with tempfile.TemporaryDirectory() as workdir:
            store_seconds = store_import(records, Path(workdir))
        total = parse_seconds + store_seconds
        line += f"  seal+store {store_seconds:6.2f} s  total {total:6.2f} s = {count / total:8.0f} keys/s"
    print(line, flush=True)


def main() -> int:
    """Parse the options and run every size with PBE and PSK."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated token counts")
    parser.add_argument(
        "--parse-only", action="store_true", help="time the PSKC library only, not the sealing and the store"
    )
    arguments = parser.parse_args()
    print(
        f"PBE: PBKDF2-HMAC-SHA256 x {PBKDF2_ITERATIONS} + AES-256-CBC; "
        "PSK: AES-256-CBC; HMAC-SHA256 ValueMACs"
    )
    for count in (int(size) for size in arguments.sizes.split(",")):
        for protection in ("pbe", "psk"):
            run(count, protection, arguments.parse_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
