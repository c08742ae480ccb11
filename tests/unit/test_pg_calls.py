"""How the PostgreSQL store runs a call (:mod:`otp_agent.store.pg_calls`), on fake connections.

No server: a fake pool hands out fake connections whose ``execute`` fails as told, so that what
is retried, what is not, and what the caller is told can be checked exactly.  The same logic
against a real server (restarts, cut networks) is in tests/postgresql.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from otp_agent.errors import Conflict, StoreError, StoreUnavailable  # noqa: E402
from otp_agent.store.pg_calls import Calls  # noqa: E402
from otp_agent.store.pg_dsn import Dsn  # noqa: E402
from otp_agent.store.pg_watchdog import Watchdog  # noqa: E402

PASSWORD = "s3cr@t pw"
DSN = "postgresql://alice:s3cr%40t%20pw@db.example:5432/otp"
WHERE = "postgresql://alice@db.example:5432/otp"


class FakeServer:
    """Counts statements; the next ``failures`` of them fail with ``error``."""

    def __init__(self, failures: int = 0, error: Exception | None = None, breaks: bool = True) -> None:
        self.failures = failures
        self.error = (
            error
            if error is not None
            else psycopg.OperationalError("server closed the connection unexpectedly")
        )
        self.breaks = breaks  # Whether a failure leaves the connection broken (lost).
        self.executed: list[str] = []


class FakeConnection:
    """The part of a psycopg connection that the call runner and the store's actions use."""

    def __init__(self, server: FakeServer, name: str) -> None:
        self.server, self.name = server, name
        self.broken = False
        self.closed = False
        self.cut = threading.Event()  # The watchdog asked for the socket, to shut it down.

    def execute(self, query: str) -> str:
        if self.server.failures > 0:
            self.server.failures -= 1
            self.broken = self.server.breaks
            raise self.server.error
        self.server.executed.append(f"{self.name}: {query}")
        return f"{query} on {self.name}"

    def fileno(self) -> int:
        self.cut.set()
        return -1  # No socket to shut down: the watchdog lets the call fail by itself.

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FakePool:
    """A pool of one connection, with the statistics and check the runner asks for."""

    def __init__(self, server: FakeServer, *, timeout: Exception | None = None) -> None:
        self.server = server
        self.timeout = timeout
        self.handed_out = 0
        self.checked = threading.Event()

    @contextmanager
    def connection(self) -> Iterator[FakeConnection]:
        if self.timeout is not None:
            raise self.timeout
        self.handed_out += 1
        yield FakeConnection(self.server, f"pooled-{self.handed_out}")

    def get_stats(self) -> dict[str, int]:
        return {"pool_size": 1, "pool_available": 0}

    def check(self) -> None:
        self.checked.set()


class Harness:
    """A :class:`Calls` over a fake pool; ``fresh`` counts the connections opened beside it."""

    def __init__(self, server: FakeServer, **pool_options: Any) -> None:
        self.server = server
        self.pool = FakePool(server, **pool_options)
        self.fresh: list[FakeConnection] = []
        self.refused = False  # New connections are refused (the server is down).
        self.watchdog = Watchdog()
        self.calls = Calls(
            self.pool,  # type: ignore[arg-type]
            self._connect,  # type: ignore[arg-type]
            self.watchdog,
            Dsn(DSN),
            pool_timeout=3.0,
            answer_timeout=5.0,
            max_connections=2,
        )

    def _connect(self) -> FakeConnection:
        if self.refused:
            raise psycopg.OperationalError(f'connection to "{DSN}" failed: Connection refused')
        connection = FakeConnection(self.server, f"fresh-{len(self.fresh) + 1}")
        self.fresh.append(connection)
        return connection

    def run(self, what: str = "committing token T1", *, write: bool = True, retry: bool = True) -> Any:
        return self.calls.run(what, lambda c: c.execute("UPDATE tokens"), write=write, retry=retry)


@pytest.fixture
def harness() -> Iterator[Harness]:
    made = Harness(FakeServer())
    yield made
    made.watchdog.close()


def _harness(request: pytest.FixtureRequest, server: FakeServer, **options: Any) -> Harness:
    made = Harness(server, **options)
    request.addfinalizer(made.watchdog.close)
    return made


def test_a_call_that_works_runs_once_on_a_pooled_connection(harness: Harness) -> None:
    assert harness.run() == "UPDATE tokens on pooled-1"
    assert harness.server.executed == ["pooled-1: UPDATE tokens"] and not harness.fresh


def test_a_lost_connection_is_retried_once_on_a_new_connection(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    harness = _harness(request, FakeServer(failures=1))
    with caplog.at_level(logging.WARNING, logger="otp_agent.store.postgresql"):
        assert harness.run() == "UPDATE tokens on fresh-1"
    assert harness.server.executed == ["fresh-1: UPDATE tokens"]
    assert harness.pool.checked.wait(5), "the pool's idle connections were not checked"
    (record,) = caplog.records
    assert record.name == "otp_agent.store.postgresql"
    assert record.getMessage() == (
        f"PostgreSQL {WHERE}: connection lost (server closed the "
        "connection unexpectedly); retrying once on a new connection"
    )


def test_a_connection_lost_twice_fails_as_unavailable(request: pytest.FixtureRequest) -> None:
    harness = _harness(request, FakeServer(failures=2))
    with pytest.raises(StoreUnavailable) as raised:
        harness.run()
    assert str(raised.value) == (
        f"PostgreSQL {WHERE}: connection lost while committing token T1; it may or may not "
        "have been committed: server closed the connection unexpectedly"
    )
    assert len(harness.fresh) == 1 and not harness.server.executed


def test_a_write_marked_not_retryable_is_not_retried(request: pytest.FixtureRequest) -> None:
    harness = _harness(request, FakeServer(failures=1))
    with pytest.raises(StoreUnavailable) as raised:
        harness.run("removing token T1", retry=False)
    assert str(raised.value) == (
        f"PostgreSQL {WHERE}: connection lost while removing token T1; it may or may not "
        "have been committed: server closed the connection unexpectedly"
    )
    assert not harness.fresh and not harness.server.executed and harness.pool.handed_out == 1


def test_a_lost_read_says_nothing_about_writing(request: pytest.FixtureRequest) -> None:
    harness = _harness(request, FakeServer(failures=2))
    with pytest.raises(StoreUnavailable) as raised:
        harness.run("reading", write=False)
    assert str(raised.value) == (
        f"PostgreSQL {WHERE}: connection lost while reading: server closed the connection unexpectedly"
    )


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (True, f"PostgreSQL {WHERE}: committing token T1 failed, nothing was written: "),
        (False, f"PostgreSQL {WHERE}: read failed: "),
    ],
)
def test_an_error_on_a_working_connection_is_a_store_error_with_the_password_redacted(
    request: pytest.FixtureRequest, write: bool, expected: str
) -> None:
    error = psycopg.errors.InvalidTextRepresentation(
        f"invalid input for {DSN}\n  (password {PASSWORD}, quoted s3cr%40t%20pw)"
    )
    harness = _harness(request, FakeServer(failures=1, error=error, breaks=False))
    with pytest.raises(StoreError) as raised:
        harness.run(write=write)
    assert type(raised.value) is StoreError
    assert str(raised.value) == expected + "invalid input for *** (password ***, quoted ***)"
    assert "s3cr" not in str(raised.value)
    assert not harness.fresh, "an error the server answered with must not be retried"
    assert not harness.pool.checked.is_set()


def test_a_unique_violation_is_a_conflict_not_retried(request: pytest.FixtureRequest) -> None:
    error = psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
    harness = _harness(request, FakeServer(failures=1, error=error, breaks=False))
    with pytest.raises(
        Conflict,
        match=r"^adding tokens: a token with this serial or this same "
        r"secret exists$",
    ):
        harness.run("adding tokens")
    assert not harness.fresh


def test_a_pool_timeout_is_unavailable_and_opens_no_connection(request: pytest.FixtureRequest) -> None:
    from psycopg_pool import PoolTimeout

    harness = _harness(request, FakeServer(), timeout=PoolTimeout("couldn't get a connection"))
    with pytest.raises(StoreUnavailable) as raised:
        harness.run()
    assert str(raised.value) == (
        f"PostgreSQL {WHERE}: no connection within 3 s (committing token T1, nothing was written)"
    )
    assert not harness.fresh


def test_a_server_that_cannot_be_reached_is_unavailable(request: pytest.FixtureRequest) -> None:
    harness = _harness(request, FakeServer(failures=1))
    harness.calls.degraded = True  # No working pooled connection: the call goes beside the pool.
    harness.refused = True
    with pytest.raises(StoreUnavailable) as raised:
        harness.run()
    assert str(raised.value) == (
        f"PostgreSQL {WHERE} cannot be reached (committing token T1, "
        'nothing was written): connection to "***" failed: '
        "Connection refused"
    )


def test_after_a_lost_connection_calls_bypass_an_empty_pool_until_it_works_again(
    request: pytest.FixtureRequest,
) -> None:
    harness = _harness(request, FakeServer(failures=1))
    harness.run()  # Lost on pooled-1, retried on fresh-1.
    assert harness.calls.degraded
    assert harness.run() == "UPDATE tokens on fresh-2"
    assert harness.pool.handed_out == 1, "the degraded pool (none available) was waited for"
    harness.calls.degraded = False
    assert harness.run() == "UPDATE tokens on pooled-2"


def test_a_call_cut_by_the_watchdog_says_it_got_no_answer(request: pytest.FixtureRequest) -> None:
    harness = _harness(request, FakeServer())
    harness.calls.answer_timeout = 0.3

    def hang(connection: FakeConnection) -> None:
        assert connection.cut.wait(5), "the watchdog did not cut the call"
        connection.broken = True
        raise psycopg.OperationalError("consuming input failed: server closed the connection")

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        harness.calls.run(
            "committing token T1",
            hang,  # type: ignore[arg-type]
            write=True,
            retry=False,
        )
    assert time.monotonic() - started < 2.0
    assert str(raised.value) == (
        f"PostgreSQL {WHERE}: connection lost while committing token "
        "T1; it may or may not have been committed: no answer within "
        "0.3 s"
    )
