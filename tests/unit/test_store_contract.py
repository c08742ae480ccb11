"""The TokenStore contract, run unchanged over SQLiteStore and PostgreSQLStore.

Every behaviour the Protocol promises, written once and run over both stores (the SQLite half
needs nothing but a temporary directory; tests/unit/test_groupcommit.py keeps what is SQLite's
own). What each backend does differently (where an absent store lives, how a write is made to
fail, what makes a commit durable) sits in a small :class:`Backend` adapter.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from otp_agent.errors import Conflict, NotFound, StoreError, StoreUnavailable
from otp_agent.oath import HashAlgorithm, TokenType
from otp_agent.store import BackupCode, Remembered, Token, TokenState, TokenStore
from otp_agent.store.models import Send
from otp_agent.store.sqlite import SQLiteStore
from tests.postgresql.support import fresh_database


def token(
    serial: str,
    user: str | None = "alice",
    fingerprint: bytes | None = None,
    created: float = 1.0,
    pending_until: float | None = None,
) -> Token:
    return Token(
        serial=serial,
        token_type=TokenType.TOTP,
        algorithm=HashAlgorithm.SHA1,
        digits=6,
        period=30,
        t0=0,
        sealed=b"sealed-" + serial.encode(),
        fingerprint=fingerprint or serial.encode().ljust(32, b"."),
        user=user,
        created=created,
        pending_until=pending_until,
    )


@dataclass
class Backend:
    """One store implementation and the backend-specific knobs the contract needs."""

    name: str
    open: Callable[..., TokenStore]  # open(create=False) on the test's store
    open_absent: Callable[[], TokenStore]  # open a store that was never created
    open_not_a_store: Callable[[], TokenStore]  # open something that is not a store at all
    break_writes: Callable[[TokenStore], None]  # make every later write fail
    assert_durable: Callable[[TokenStore], None]
    store: TokenStore


def _sqlite(tmp_path: Path, stack: ExitStack) -> Backend:
    path = tmp_path / "tokens.db"
    store = SQLiteStore(path, create=True)
    stack.callback(store.close)

    def not_a_store() -> TokenStore:
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not sqlite" * 100)
        return SQLiteStore(garbage)

    def break_writes(opened: TokenStore) -> None:
        assert isinstance(opened, SQLiteStore)
        opened._writer.submit(lambda connection: connection.execute("PRAGMA query_only = ON"))

    def durable(opened: TokenStore) -> None:
        assert isinstance(opened, SQLiteStore)
        connection = opened._connection()
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    return Backend(
        "sqlite",
        lambda create=False: SQLiteStore(path, create=create),
        lambda: SQLiteStore(tmp_path / "absent.db"),
        not_a_store,
        break_writes,
        durable,
        store,
    )


def _postgresql(stack: ExitStack) -> Backend:
    import psycopg

    from otp_agent.store.postgresql import PostgreSQLStore

    dsn = stack.enter_context(fresh_database())
    store = PostgreSQLStore(dsn, create=True)
    stack.callback(store.close)

    def absent() -> TokenStore:
        empty = stack.enter_context(fresh_database())
        return PostgreSQLStore(empty)

    def not_a_store() -> TokenStore:
        # Something listens on the port, but it does not speak the PostgreSQL protocol.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        stack.callback(listener.close)

        def babble() -> None:
            try:
                while True:
                    peer, _ = listener.accept()
                    peer.sendall(b"SSH-2.0-not-postgres\r\n" * 10)
                    peer.close()
            except OSError:
                pass

        threading.Thread(target=babble, daemon=True).start()
        port = listener.getsockname()[1]
        return PostgreSQLStore(f"postgresql://otp@127.0.0.1:{port}/otp?sslmode=disable")

    def break_writes(_opened: TokenStore) -> None:
        # The server refuses every change to a token (as a full disk or a read-only replica would).
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'writes refused by the test'; END $$"
            )
            admin.execute(
                "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON tokens "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )

    def durable(opened: TokenStore) -> None:
        assert isinstance(opened, PostgreSQLStore)
        with opened._pool.connection() as connection:
            assert connection.autocommit is True
            row = connection.execute("SHOW synchronous_commit").fetchone()
            assert row is not None and row[0] in ("on", "remote_write", "remote_apply")
            row = connection.execute("SHOW statement_timeout").fetchone()
            assert row is not None and row[0] != "0"

    return Backend(
        "postgresql",
        lambda create=False: PostgreSQLStore(dsn, create=create),
        absent,
        not_a_store,
        break_writes,
        durable,
        store,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            yield _sqlite(tmp_path, stack)
        else:
            yield _postgresql(stack)


def test_absent_store_is_a_clear_error(backend: Backend) -> None:
    """Opening a store that was never created says to run otp-agent init."""
    with pytest.raises(StoreUnavailable, match="otp-agent init"):
        backend.open_absent()


def test_schema_version_recorded_and_reopen_is_idempotent(backend: Backend) -> None:
    """The schema version is recorded; opening again, even with create, changes nothing."""
    assert backend.store.get_meta("schema_version") == "6"
    backend.open().close()
    backend.open(create=True).close()
    health = backend.store.health()
    assert health["ok"] is True and health["backend"] == backend.name
    assert health["schema_version"] == 6 and health["tokens"] == 0


def test_newer_schema_is_refused(backend: Backend) -> None:
    """A store written by a newer otp-agent is refused with a message saying so."""
    backend.store.set_meta("schema_version", "7")
    with pytest.raises(StoreUnavailable, match="newer"):
        backend.open()


def test_not_a_store_is_refused(backend: Backend) -> None:
    """Something that is not a store at all is refused as unavailable."""
    with pytest.raises(StoreUnavailable):
        backend.open_not_a_store()


def test_add_is_all_or_nothing(backend: Backend) -> None:
    """A batch with one clash (serial, secret, or within the batch) writes nothing and names it."""
    store = backend.store
    store.add_tokens([token("A")])
    with pytest.raises(Conflict, match="B"):
        store.add_tokens([token("C"), token("B", fingerprint=b"A".ljust(32, b"."))])
    with pytest.raises(Conflict, match="A"):
        store.add_tokens([token("D"), token("A", fingerprint=b"other".ljust(32, b"."))])
    with pytest.raises(Conflict, match="F"):
        store.add_tokens([token("E"), token("F", fingerprint=b"E".ljust(32, b"."))])
    assert [t.serial for t in store.all_tokens()] == ["A"]


def test_tokens_round_trip_every_field(backend: Backend) -> None:
    """Every field of a token comes back exactly as written."""
    original = Token(
        serial="R1",
        token_type=TokenType.HOTP,
        algorithm=HashAlgorithm.SHA512,
        digits=8,
        period=60,
        t0=30,
        sealed=bytes(range(256)),
        fingerprint=b"\0" * 32,
        user="bob",
        counter=2**40,
        last_step=None,
        drift=-2,
        enabled=False,
        failures=3,
        lock_count=1,
        locked_until=1.5,
        issuer="ACME",
        not_before=10.25,
        not_after=2e9,
        created=5.5,
        version=7,
    )
    backend.store.add_tokens([original])
    assert backend.store.get("R1") == original
    assert backend.store.get("nope") is None


def test_orderings(backend: Backend) -> None:
    """all_tokens orders by serial bytewise; tokens_for_user by creation, then serial."""
    store = backend.store
    store.add_tokens(
        [token("b", created=3.0), token("B", created=2.0), token("a", created=2.0), token("z", user="zoe")]
    )
    assert [t.serial for t in store.all_tokens()] == ["B", "a", "b", "z"]  # bytewise
    assert [t.serial for t in store.tokens_for_user("alice")] == ["B", "a", "b"]
    assert store.tokens_for_user("nobody") == []


def test_compare_and_set_succeeds_once_per_version(backend: Backend) -> None:
    """A version can be moved on once; a stale or unknown version changes nothing."""
    store = backend.store
    store.add_tokens([token("A")])
    version = store.get("A").version  # type: ignore[union-attr]
    assert store.compare_and_set("A", version, TokenState(last_step=10)) is True
    assert store.compare_and_set("A", version, TokenState(last_step=11)) is False
    after = store.get("A")
    assert after is not None and after.last_step == 10 and after.version == version + 1
    assert store.compare_and_set("missing", 0, TokenState(counter=1)) is False


def test_compare_and_set_writes_every_state_field(backend: Backend) -> None:
    """Every state field can be written by compare-and-set."""
    store = backend.store
    store.add_tokens([token("A")])
    state = TokenState(
        sends=(Send(4, 100.5, "sent"), Send(5, 160.25, "failed")),
        counter=5,
        last_step=99,
        drift=-1,
        failures=2,
        failures_at=77.25,
        lock_count=3,
        locked_until=123.5,
        enabled=False,
    )
    assert store.compare_and_set("A", 0, state)
    after = store.get("A")
    assert after is not None and after.state == state


def test_compare_and_set_under_16_threads_has_one_winner(backend: Backend) -> None:
    """Sixteen threads racing on one version: exactly one wins, each round."""
    store = backend.store
    store.add_tokens([token("A")])
    for round_number in range(3):
        version = store.get("A").version  # type: ignore[union-attr]
        results: list[bool] = []
        barrier = threading.Barrier(16)

        def attempt(step: int) -> None:
            barrier.wait()
            results.append(store.compare_and_set("A", version, TokenState(last_step=step)))

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count(True) == 1, (round_number, results)
        assert store.get("A").version == version + 1  # type: ignore[union-attr]


def test_admin_changes_and_not_found(backend: Backend) -> None:
    """Owner and enabled flag change; an unknown serial is NotFound; remove deletes."""
    store = backend.store
    store.add_tokens([token("A", user=None)])
    assigned = store.assign("A", "bob", b"tag" * 8)
    assert (assigned.user, assigned.binding) == ("bob", b"tag" * 8)
    assert store.set_enabled("A", False).enabled is False
    store.set_binding("A", b"new" * 8)
    assert store.get("A").binding == b"new" * 8  # type: ignore[union-attr]
    for change in (
        lambda: store.set_enabled("Z", True),
        lambda: store.assign("Z", "x", b"t"),
        lambda: store.set_binding("Z", b"t"),
    ):
        with pytest.raises(NotFound):
            change()
    with pytest.raises(NotFound):
        store.remove("Z")
    with pytest.raises(NotFound):
        store.reset_throttling("Z", 1.0)
    store.remove("A")
    assert store.get("A") is None


def test_reset_throttling(backend: Backend) -> None:
    """Unlocking clears failures and ends a running lock at "now" but keeps the lock level (it
    decays from the lock's end), and moves the version; an ended lock keeps its end time."""
    store = backend.store
    store.add_tokens([token("A"), token("B")])
    assert store.compare_and_set("A", 0, TokenState(failures=4, lock_count=2, locked_until=9e9))
    store.reset_throttling("A", 1000.0)
    after = store.get("A")
    assert after is not None
    assert (after.failures, after.failures_at, after.locked_until, after.lock_count) == (0, 1000, 1000, 2)
    assert after.version == 2
    assert store.compare_and_set("B", 0, TokenState(failures=1, lock_count=1, locked_until=500.0))
    store.reset_throttling("B", 1000.0)
    assert store.get("B").locked_until == 500.0  # type: ignore[union-attr]


def test_failed_write_is_a_store_error_and_writes_nothing(backend: Backend) -> None:
    """A write the store refuses is a StoreError saying nothing was written, and nothing was."""
    store = backend.store
    store.add_tokens([token("A")])
    store.close()
    broken = backend.open()
    try:
        backend.break_writes(broken)
        with pytest.raises(StoreError, match="nothing was written"):
            broken.compare_and_set("A", 0, TokenState(last_step=1))
        with pytest.raises(StoreError, match="nothing was written"):
            broken.add_tokens([token("B")])
    finally:
        broken.close()
    reopened = backend.open()
    try:
        after = reopened.get("A")
        assert after is not None and after.last_step is None and after.version == 0
        assert reopened.get("B") is None
    finally:
        reopened.close()


def test_existing_fingerprints(backend: Backend) -> None:
    """Only the fingerprints already used by a token are reported."""
    backend.store.add_tokens([token("A"), token("B")])
    found = backend.store.existing_fingerprints([b"A".ljust(32, b"."), b"zzz"])
    assert found == {b"A".ljust(32, b".")}
    assert backend.store.existing_fingerprints([]) == set()


def test_meta_settings(backend: Backend) -> None:
    """Settings are absent until written, then read back as last written."""
    store = backend.store
    assert store.get_meta("absent") is None
    store.set_meta("key_backend_check_value", "one")
    store.set_meta("key_backend_check_value", "two")
    assert store.get_meta("key_backend_check_value") == "two"


def test_claim_meta_keeps_the_first_value(backend: Backend) -> None:
    """claim_meta writes only when the key is absent and returns the value that is stored."""
    store = backend.store
    assert store.claim_meta("check", "aaaa") == "aaaa"
    assert store.claim_meta("check", "bbbb") == "aaaa"
    assert store.get_meta("check") == "aaaa"


def test_acceptances_are_durable_commits(backend: Backend) -> None:
    """The backend commits each acceptance durably before returning."""
    backend.assert_durable(backend.store)


def test_no_secret_material_in_repr(backend: Backend) -> None:
    """Neither the store nor its tokens show sealed secrets or fingerprints in repr."""
    backend.store.add_tokens([token("A")])
    text = repr(backend.store) + repr(backend.store.all_tokens())
    assert "sealed-A" not in text and "A......" not in text


def _backup_row(user: str, digest: bytes, kind: str = "generated") -> BackupCode:
    return BackupCode(user, kind, "scrypt-14-8-1", b"s" * 16, digest, 1.0, None, b"t" * 32)


def test_backup_codes_replace_use_once_and_travel_with_an_import(backend: Backend) -> None:
    """A set replaces the previous one; a use is a compare-and-set; an import carries a set."""
    store = backend.store
    store.replace_backup_codes("alice", [_backup_row("alice", b"a"), _backup_row("alice", b"b")])
    store.replace_backup_codes("bob", [_backup_row("bob", b"a")])
    assert sorted(r.digest for r in store.backup_codes("alice")) == [b"a", b"b"]
    assert store.use_backup_code("alice", b"a", 5.0) is True
    assert store.use_backup_code("alice", b"a", 6.0) is False  # once only
    assert store.use_backup_code("alice", b"zz", 6.0) is False
    used = {r.digest: r.used_at for r in store.backup_codes("alice")}
    assert used == {b"a": 5.0, b"b": None}
    assert store.backup_codes("bob")[0].used_at is None  # another user's code is untouched
    store.add_tokens([token("M1")], {"alice": [_backup_row("alice", b"c", "scratch")]})
    assert [(r.digest, r.kind) for r in store.backup_codes("alice")] == [(b"c", "scratch")]
    assert store.get("M1") is not None
    with pytest.raises(Conflict):  # all or nothing: the clash keeps alice's codes as they were
        store.add_tokens([token("M1")], {"alice": []})
    assert len(store.backup_codes("alice")) == 1
    store.replace_backup_codes("alice", [])
    assert store.backup_codes("alice") == []


def test_expired_pending_tokens_are_removed(backend: Backend) -> None:
    """Only pending tokens whose time is up go; confirmed ones and later ones stay."""
    store = backend.store
    store.add_tokens([token("P1", pending_until=100.0), token("P2", pending_until=300.0), token("C1")])
    p1 = store.get("P1")
    assert p1 is not None and p1.pending is True
    assert store.remove_expired_pending(200.0) == ["P1"]
    assert store.get("P1") is None and store.get("C1") is not None
    p2 = store.get("P2")
    assert p2 is not None
    assert store.compare_and_set("P2", p2.version, TokenState(pending_until=None)) is True
    assert store.remove_expired_pending(400.0) == []
    confirmed = store.get("P2")
    assert confirmed is not None and confirmed.pending is False


def test_remembered_hosts_upsert_read_and_forget(backend: Backend) -> None:
    """One row per (user, remote host, service), extended by a new acceptance; forget by user."""
    store = backend.store
    store.remember(Remembered("alice", "192.0.2.1", "sshd", 100.0, b"t"))
    store.remember(Remembered("alice", "192.0.2.1", "sshd", 200.0, b"u"))  # extended, not doubled
    store.remember(Remembered("alice", "192.0.2.2", "sshd", 150.0, b"v"))
    store.remember(Remembered("bob", "192.0.2.1", "sshd", 300.0, b"w"))
    entry = store.remembered("alice", "192.0.2.1", "sshd")
    assert entry is not None and (entry.until, entry.binding) == (200.0, b"u")
    assert store.remembered("alice", "192.0.2.1", "login") is None
    assert store.forget_expired(160.0) == 1  # alice's 192.0.2.2
    assert store.forget("alice") == 1 and store.remembered("alice", "192.0.2.1", "sshd") is None
    assert store.remembered("bob", "192.0.2.1", "sshd") is not None
