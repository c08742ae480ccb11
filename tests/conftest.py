"""Shared fixtures: key backends, stores, the validation engine on a fake clock, real agents.

The validation suite is parametrised over every key backend: ``software`` always, and
``payshield`` (through the payShield simulator over TCP) whenever the simulator is installed.
Under ``CI=true`` nothing that a test needs may be missing: a missing prerequisite fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from otp_agent.audit import AuditLog
from otp_agent.config import PolicyConfig
from otp_agent.keystore import KeyBackend
from otp_agent.keystore.software import SoftwareKeyBackend, create_master_key
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.testing import RunningAgent, running_agent
from otp_agent.validation import Validator

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing on a developer machine; fail under CI=true."""
    if not condition:
        if IN_CI:
            pytest.fail(f"prerequisite missing in CI: {reason}")
        pytest.skip(reason)


@contextmanager
def tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` (made), for full-disk tests; unmounted afterwards."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


class FakeClock:
    """A settable clock for the validation engine."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _payshield_available() -> bool:
    try:
        import otp_agent.keystore.payshield.backend  # noqa: F401
        import otp_agent.payshield_sim.testing  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ["software", "payshield"]


@pytest.fixture(params=BACKENDS)
def key_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyBackend]:
    """Every key backend, each a real implementation (the HSM one over TCP to the simulator)."""
    if request.param == "software":
        create_master_key(tmp_path / "master.key")
        backend = SoftwareKeyBackend(tmp_path / "master.key")
        yield backend
        backend.close()
        return
    require(_payshield_available(), "payShield backend or simulator not installed")
    from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
    from otp_agent.payshield_sim.testing import running_simulator

    with running_simulator() as simulator:
        hsm_backend = PayShieldKeyBackend(simulator.config())
        yield hsm_backend
        hsm_backend.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh SQLite store."""
    sqlite_store = SQLiteStore(tmp_path / "tokens.db", create=True)
    yield sqlite_store
    sqlite_store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.log")
    yield log
    log.close()


def make_validator(
    store: Any, keys: KeyBackend, audit: AuditLog, clock: FakeClock, **policy: Any
) -> Validator:
    return Validator(store, keys, PolicyConfig(**policy), audit, clock=clock)


@pytest.fixture
def agent_directory() -> Iterator[Path]:
    """A temporary directory that other uids can traverse (to reach the socket), removed after."""
    directory = Path(tempfile.mkdtemp(prefix="otp-agent-test-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(agent_directory: Path) -> Iterator[RunningAgent]:
    """A real daemon (software keystore + SQLite) in a temporary directory."""
    with running_agent(agent_directory) as running:
        yield running
