"""What only the PostgreSQL store has: hosts migrating together, several pools racing on one
row, lost and cut connections, bounded lock waits, and a DSN password that never leaks."""

from __future__ import annotations

import threading
from urllib.parse import quote

import pytest

from otp_agent.errors import StoreError, StoreUnavailable
from otp_agent.oath import HashAlgorithm, TokenType
from otp_agent.store import Token, TokenState
from otp_agent.store.postgresql import SCHEMA_VERSION, PostgreSQLStore
from tests.postgresql.support import TcpProxy, dsn_for, fresh_database, require_postgresql

PASSWORD = "S3cr:et@pa ss/word"


def token(serial: str, user: str = "alice") -> Token:
    return Token(
        serial=serial,
        token_type=TokenType.HOTP,
        algorithm=HashAlgorithm.SHA1,
        digits=6,
        period=30,
        t0=0,
        sealed=b"sealed-" + serial.encode(),
        fingerprint=serial.encode().ljust(32, b"."),
        user=user,
        created=1.0,
    )


def _leaks(text: str) -> bool:
    return any(form in text for form in (PASSWORD, quote(PASSWORD, safe=""), "S3cr"))


def test_hosts_starting_together_migrate_once(pg_dsn: str) -> None:
    """Eight stores created at once on an empty database: all open, the schema exists once."""
    barrier = threading.Barrier(8)
    opened: list[PostgreSQLStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgreSQLStore(pg_dsn, create=True))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(opened) == 8
        assert {s.get_meta("schema_version") for s in opened} == {str(SCHEMA_VERSION)}
        opened[0].add_tokens([token("A")])
        assert all(s.get("A") is not None for s in opened)
    finally:
        for store in opened:
            store.close()


def test_two_pools_racing_on_one_row_have_one_winner(pg_store: PostgreSQLStore, pg_dsn: str) -> None:
    """Two stores (as two hosts), 16 threads split across them, 5 rounds: one winner each."""
    other = PostgreSQLStore(pg_dsn)
    try:
        pg_store.add_tokens([token("A")])
        for round_number in range(5):
            version = pg_store.get("A").version  # type: ignore[union-attr]
            results: list[bool] = []
            barrier = threading.Barrier(16)

            def attempt(store: PostgreSQLStore, counter: int) -> None:
                barrier.wait()
                results.append(store.compare_and_set("A", version, TokenState(counter=counter)))

            threads = [
                threading.Thread(target=attempt, args=((pg_store, other)[i % 2], i)) for i in range(16)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert results.count(True) == 1, (round_number, results)
    finally:
        other.close()


def test_connections_killed_by_the_server_are_replaced(pg_store: PostgreSQLStore, pg_dsn: str) -> None:
    """After the server ends every session (restart, failover), the next calls still succeed."""
    import psycopg

    pg_store.add_tokens([token("A")])
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert pg_store.get("A") is not None
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert pg_store.compare_and_set("A", 0, TokenState(counter=1)) is True


def test_server_cut_off_fails_closed_then_recovers(pg_dsn: str) -> None:
    """Link cut: reads and compare-and-set raise StoreUnavailable; once back, all works again."""
    proxy = TcpProxy()
    database = pg_dsn.rsplit("dbname=", 1)[-1].split()[0]
    store = PostgreSQLStore(dsn_for(database, port=proxy.port), create=True, pool_timeout=1.0)
    try:
        store.add_tokens([token("A")])
        proxy.cut()
        with pytest.raises(StoreUnavailable):
            store.compare_and_set("A", 0, TokenState(counter=1))
        with pytest.raises(StoreUnavailable):
            store.get("A")
        health = store.health()
        assert health["ok"] is False and "error" in health
        proxy.restore()
        for _attempt in range(50):  # The pool reconnects in the background.
            try:
                assert store.compare_and_set("A", 0, TokenState(counter=1)) is True
                break
            except StoreUnavailable:
                continue
        else:
            pytest.fail("the store did not recover after the server came back")
        assert store.get("A").counter == 1  # type: ignore[union-attr]
    finally:
        proxy.cut()
        store.close()


def test_frozen_server_is_cut_off_and_the_call_fails_closed(pg_dsn: str) -> None:
    """The server keeps TCP up but never answers: the call is ended, not left waiting forever."""
    proxy = TcpProxy()
    database = pg_dsn.rsplit("dbname=", 1)[-1].split()[0]
    store = PostgreSQLStore(
        dsn_for(database, port=proxy.port),
        create=True,
        statement_timeout=1.0,
        answer_timeout=1.0,
        connect_timeout=2.0,
    )
    outcome: list[BaseException] = []
    try:
        store.add_tokens([token("A")])
        proxy.freeze()

        def attempt() -> None:
            try:
                store.compare_and_set("A", 0, TokenState(counter=1))
            except BaseException as exc:  # noqa: BLE001 - inspected below
                outcome.append(exc)

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(60)  # A liveness bound, not a timing assertion.
        assert not worker.is_alive(), "the call is still waiting for a frozen server"
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable), outcome
        assert "may or may not have been committed" in str(outcome[0])
        proxy.thaw()
        for _attempt in range(50):
            try:
                store.get("A")
                break
            except StoreUnavailable:
                continue
        # Whatever the frozen call did, the version test keeps the token consistent.
        assert store.get("A").counter in (0, 1)  # type: ignore[union-attr]
    finally:
        proxy.thaw()
        proxy.cut()
        store.close()


def test_writer_stuck_on_a_lock_gives_up_and_writes_nothing(pg_dsn: str) -> None:
    """A row held by another session: the compare-and-set stops waiting, nothing is written."""
    import psycopg

    store = PostgreSQLStore(pg_dsn, create=True, statement_timeout=2.0)
    try:
        store.add_tokens([token("A")])
        with psycopg.connect(pg_dsn) as holder:
            holder.execute("SELECT 1 FROM tokens WHERE serial = 'A' FOR UPDATE")
            with pytest.raises(StoreError, match="nothing was written"):
                store.compare_and_set("A", 0, TokenState(counter=1))
            holder.rollback()
        assert store.get("A").counter == 0  # type: ignore[union-attr]
        assert store.compare_and_set("A", 0, TokenState(counter=1)) is True
    finally:
        store.close()


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://otp:{quote(PASSWORD, safe='')}@127.0.0.1:1/otp",
        f"host=127.0.0.1 port=1 user=otp password='{PASSWORD}' dbname=otp",
        f"host=127.0.0.1 password={PASSWORD} dbname=otp",  # not valid libpq syntax
        f"postgresql://otp:{PASSWORD}@127.0.0.1:1/otp",  # not a valid URI
    ],
)
def test_password_never_in_errors_for_unusable_dsns(dsn: str) -> None:
    """Unreachable or malformed DSNs give errors without the password, and no chained driver error."""
    require_postgresql()  # Only for psycopg; no server is contacted.
    with pytest.raises(StoreUnavailable) as caught:
        PostgreSQLStore(dsn)
    assert not _leaks(str(caught.value)), str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_password_never_in_repr_health_or_errors_of_a_working_store() -> None:
    """The test server trusts 127.0.0.1, so a DSN carrying a password still connects."""
    import psycopg

    with fresh_database() as plain:
        database = plain.rsplit("dbname=", 1)[-1].split()[0]
        dsn = dsn_for(database, password=PASSWORD)
        store = PostgreSQLStore(dsn, create=True)
        try:
            store.add_tokens([token("A")])
            texts = [repr(store), str(store.health())]
            with psycopg.connect(plain, autocommit=True) as admin:
                admin.execute("ALTER TABLE tokens ADD CONSTRAINT no_counter CHECK (counter < 1)")
            with pytest.raises(StoreError) as caught:
                store.compare_and_set("A", 0, TokenState(counter=5))
            texts.append(str(caught.value))
            with pytest.raises(StoreError) as caught:
                store.compare_and_set("A", 0, TokenState(counter="not a number"))  # type: ignore[arg-type]
            texts.append(str(caught.value))
        finally:
            store.close()
        assert texts[1].startswith("{'ok': True") and "server_version" in texts[1]
        for text in texts:
            assert not _leaks(text), text


def test_missing_dsn_is_a_clear_error() -> None:
    """No DSN at all names the store.dsn key."""
    require_postgresql()
    with pytest.raises(StoreUnavailable, match="store.dsn"):
        PostgreSQLStore(None)


def test_claim_meta_gives_every_racing_host_the_same_value(pg_dsn: str) -> None:
    """Eight hosts with different check values claim at once: one value wins, all see it."""
    stores = [PostgreSQLStore(pg_dsn, create=True) for _ in range(8)]
    barrier = threading.Barrier(8)
    claimed: list[str] = []

    def claim(index: int) -> None:
        barrier.wait()
        claimed.append(stores[index].claim_meta("key_backend_check_value", f"value-{index}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(claimed) == 8 and len(set(claimed)) == 1
        assert stores[0].get_meta("key_backend_check_value") == claimed[0]
        assert stores[1].claim_meta("key_backend_check_value", "late") == claimed[0]
    finally:
        for store in stores:
            store.close()
