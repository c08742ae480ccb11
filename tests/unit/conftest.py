"""Fixtures of the unit tests: the validation engine over the shared store, key backend and clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from otp_agent.audit import AuditLog
from otp_agent.keystore import KeyBackend
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.validation import Validator
from tests.conftest import FakeClock, make_validator


@pytest.fixture
def setup(
    store: SQLiteStore, key_backend: KeyBackend, audit: AuditLog, clock: FakeClock
) -> Callable[..., Validator]:
    """Build a validator on this test's store, key backend, audit log and clock, with a policy."""

    def build(**policy: Any) -> Validator:
        return make_validator(store, key_backend, audit, clock, **policy)

    return build
