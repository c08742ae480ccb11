"""The SQL stores' schema migrations: the numbered scripts and the one loop that applies them.

Each backend has one script per schema version, ``migrations/<backend>_NNN_<name>.sql``
(statements separated by ``;``).  :func:`apply_migrations` runs the missing ones in order and
records each version reached; the store runs it inside its own transaction (and, for
PostgreSQL, under its advisory lock), so a failed migration leaves the schema as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Literal

from otp_agent.errors import StoreError, StoreUnavailable

Backend = Literal["sqlite", "postgresql"]


def migration_script(backend: Backend, version: int) -> str:
    """The SQL of migration ``version`` for ``backend`` ("sqlite" or "postgresql")."""
    prefix = f"{backend}_{version:03d}_"
    folder = resources.files("otp_agent.store") / "migrations"
    for entry in folder.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(".sql"):
            return entry.read_text(encoding="utf-8")
    raise StoreError(f"migration {version} is missing from the installation")


def apply_migrations(
    execute: Callable[[str], object],
    backend: Backend,
    current: int,
    target: int,
    record_version: Callable[[int], object],
    *,
    database: str,
) -> None:
    """Bring a schema at version ``current`` to ``target``, one migration after the other.

    Every statement of each missing migration goes to ``execute``; ``record_version(version)``
    then stores the version reached (``meta.schema_version``).  ``database`` names the
    database in the message of a refusal ("database PATH", "PostgreSQL URL").

    :raises StoreUnavailable: the schema is newer than ``target`` (nothing is run).
    :raises StoreError: a migration is missing from the installation.
    """
    if current > target:
        raise StoreUnavailable(
            f"{database} has schema {current}, newer than this otp-agent ({target}); upgrade otp-agent"
        )
    for version in range(current + 1, target + 1):
        for statement in migration_script(backend, version).split(";"):
            if statement.strip():
                execute(statement)
        record_version(version)
