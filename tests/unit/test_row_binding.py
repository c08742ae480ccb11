"""Row binding: a token's owner and parameters are bound by the key backend.

Whoever can write the store (a database administrator, a restored backup, the shared PostgreSQL)
but does not hold the key backend must not be able to move a token to another user or change its
parameters: such a row is refused before use.  Runs over every key backend.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from otp_agent.administration import Administration
from otp_agent.errors import StoreUnavailable
from otp_agent.keystore import KeyBackend
from otp_agent.oath import HashAlgorithm, OathParams, TokenType
from otp_agent.rowbinding import MARKER_KEY, bind_existing_rows, require_row_binding
from otp_agent.store.migrate import migration_script
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.testing import code_for_uri
from tests.conftest import FakeClock, make_validator
from tests.unit.test_validation import CONTEXT

HOTP = OathParams(TokenType.HOTP, HashAlgorithm.SHA1, 6, 30)


def raw_update(store: SQLiteStore, sql: str, *parameters: object) -> None:
    with sqlite3.connect(store.path) as connection:
        connection.execute(sql, parameters)


def enrolled(store: SQLiteStore, keys: KeyBackend, audit, user: str = "alice") -> tuple[str, str]:
    reply = Administration(store, keys, audit).enroll(user, HOTP, "test", CONTEXT)
    return reply["serial"], reply["uri"]


def test_a_token_moved_to_another_user_in_the_store_is_refused(setup, store, key_backend, audit) -> None:
    """The attacker's phone, moved onto bob's account by a store writer, does not open it."""
    serial, uri = enrolled(store, key_backend, audit, "mallory")
    raw_update(store, "UPDATE tokens SET user_name = 'bob' WHERE serial = ?", serial)
    decision = setup().validate("bob", code_for_uri(uri, counter=0), CONTEXT)
    assert (decision.accepted, decision.reason) == (False, "sealed_secret_invalid")
    assert store.get(serial).counter == 0


@pytest.mark.parametrize(
    "column,value",
    [("digits", 8), ("period", 60), ("t0", 30), ("token_type", "totp"), ("serial", "OAHO99999999")],
)
def test_changed_parameters_are_refused(setup, store, key_backend, audit, column: str, value: object) -> None:
    serial, uri = enrolled(store, key_backend, audit)
    raw_update(store, f"UPDATE tokens SET {column} = ? WHERE serial = ?", value, serial)
    submitted = "12345678" if column == "digits" else code_for_uri(uri, counter=0)
    decision = setup().validate("alice", submitted, CONTEXT)
    assert not decision.accepted
    if column != "serial":  # A new serial also breaks the sealed secret's own binding.
        assert decision.reason == "sealed_secret_invalid"


def test_assign_renews_the_binding(setup, store, key_backend, audit) -> None:
    serial, uri = enrolled(store, key_backend, audit, "alice")
    Administration(store, key_backend, audit).assign(serial, "bob", CONTEXT)
    assert setup().validate("bob", code_for_uri(uri, counter=0), CONTEXT).accepted
    assert setup().validate("alice", code_for_uri(uri, counter=1), CONTEXT).reason == "no_token"


def test_a_stripped_binding_is_refused(setup, store, key_backend, audit) -> None:
    serial, uri = enrolled(store, key_backend, audit)
    raw_update(store, "UPDATE tokens SET binding = NULL WHERE serial = ?", serial)
    assert setup().validate("alice", code_for_uri(uri, counter=0), CONTEXT).reason == "sealed_secret_invalid"


def test_rows_of_a_version_1_store_are_bound_once_by_init(tmp_path: Path, key_backend, audit, setup) -> None:
    """An upgraded store: the migration adds the columns, the daemon refuses it until init tags
    the old rows (once, trusting them then); deleting the marker stops the daemon again."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(migration_script("sqlite", 1))
        connection.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    store = SQLiteStore(path)
    try:
        serial, uri = enrolled(store, key_backend, audit)
        raw_update(store, "UPDATE tokens SET binding = NULL WHERE serial = ?", serial)
        with pytest.raises(StoreUnavailable, match="otp-agent init"):
            require_row_binding(store, key_backend)
        assert bind_existing_rows(store, key_backend) == [
            "bound 1 existing token(s) to their owner and parameters"
        ]
        require_row_binding(store, key_backend)
        validator = make_validator(store, key_backend, audit, FakeClock())
        assert validator.validate("alice", code_for_uri(uri, counter=0), CONTEXT).accepted
        # Once bound, init binds nothing again, and a stripped row stays refused.
        raw_update(store, "UPDATE tokens SET binding = NULL WHERE serial = ?", serial)
        assert bind_existing_rows(store, key_backend) == []
        raw_update(store, "DELETE FROM meta WHERE key = ?", MARKER_KEY)
        with pytest.raises(StoreUnavailable):
            require_row_binding(store, key_backend)
    finally:
        store.close()


def test_binding_costs_no_hsm_round_trip_per_validation(key_backend) -> None:
    """The payShield backend derives its binding key once; tags are then computed on the host."""
    transport = getattr(key_backend, "_transport", None)
    if transport is None:
        key_backend.binding_tag(b"x")
        return
    calls: list[int] = []
    exchange = transport.exchange

    def counting(requests, **options):
        calls.append(len(requests))
        return exchange(requests, **options)

    transport.exchange = counting
    tags = {key_backend.binding_tag(b"message %d" % i) for i in range(20)}
    assert len(tags) == 20 and len(calls) <= 1
