"""Fixtures of the PostgreSQL suite: a fresh database (and store) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otp_agent.store.postgresql import PostgreSQLStore
from tests.postgresql.support import fresh_database


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """The DSN of an empty database of its own, dropped after the test."""
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def pg_store(pg_dsn: str) -> Iterator[PostgreSQLStore]:
    """A PostgreSQL store with its schema, in a database of its own."""
    store = PostgreSQLStore(pg_dsn, create=True)
    yield store
    store.close()
