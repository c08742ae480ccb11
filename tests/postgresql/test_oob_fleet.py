"""Out-of-band sends across hosts sharing PostgreSQL: two agents' stores (two connection pools
on one database) sending for one user at the same moment never hand out the same counter, and a
code sent by one host is accepted once, on either host."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.administration import Administration
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.channels import parse_channels
from otp_agent.config import PolicyConfig
from otp_agent.keystore.software import SoftwareKeyBackend, create_master_key
from otp_agent.oath import HashAlgorithm, OathParams, TokenType
from otp_agent.oob import OutOfBand
from otp_agent.store.postgresql import PostgreSQLStore
from otp_agent.validation import Validator
from tests.postgresql.support import fresh_database

CONTEXT = RequestContext(peer_uid=0, peer_pid=1, service="app")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[list[PostgreSQLStore], SoftwareKeyBackend, Path]]:
    create_master_key(tmp_path / "master.key")
    keys = SoftwareKeyBackend(tmp_path / "master.key")
    with fresh_database() as dsn:
        stores = [PostgreSQLStore(dsn, create=True), PostgreSQLStore(dsn)]
        try:
            yield stores, keys, tmp_path
        finally:
            for store in stores:
                store.close()
            keys.close()


def test_two_hosts_sending_at_once_never_share_a_counter(hosts) -> None:
    stores, keys, tmp = hosts
    outbox = tmp / "outbox"
    script = tmp / "deliver.sh"
    script.write_text(f'#!/bin/sh\ncat >> "{outbox}"\necho >> "{outbox}"\n')
    script.chmod(0o755)
    channels = parse_channels({"sms": {"kind": "command", "command": [str(script), "{address}"]}}, tmp)
    policy = PolicyConfig(oob_resend_interval=0, oob_max_per_hour=100)
    audit = AuditLog(None)
    try:
        serial = Administration(stores[0], keys, audit).enroll_oob(
            "alice",
            OathParams(TokenType.OOB, HashAlgorithm.SHA1, 6),
            "sms",
            "alice@example.com",
            "X",
            CONTEXT,
        )["serial"]
        validators = [Validator(store, keys, policy, audit) for store in stores]
        senders = [
            OutOfBand(store, keys, policy, audit, channels, check_binding=validator.check_binding)
            for store, validator in zip(stores, validators, strict=True)
        ]
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def send(index: int) -> None:
            barrier.wait()
            try:
                senders[index % 2].send("alice", None, CONTEXT)
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        token = stores[0].get(serial)
        assert token is not None and token.counter == 8
        assert sorted(s.counter for s in token.sends) == list(range(8))
        codes = re.findall(r"code is (\d{6})", outbox.read_text())
        assert len(set(codes)) == 8
        last = codes[-1]
        assert validators[1].validate("alice", last, CONTEXT).reason.value == "accepted"
        assert validators[0].validate("alice", last, CONTEXT).reason.value == "replay"
    finally:
        audit.close()
