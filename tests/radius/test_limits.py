"""The rate limiter's token buckets and the throttled log lines, on a settable clock."""

from __future__ import annotations

import logging

import pytest

from otp_agent.radius import clients
from otp_agent.radius.clients import RateLimiter, ThrottledLog
from tests.conftest import FakeClock


def test_bucket_burst_refill_and_separate_senders() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5, clock)
    assert [limiter.allow("a") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("b")  # another sender has its own bucket
    clock.advance(0.2)  # one token back at 5/s
    assert [limiter.allow("a") for _ in range(2)] == [True, False]
    clock.advance(60)
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]  # never above the burst


def test_a_full_table_refuses_new_senders_until_buckets_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "MAX_BUCKETS", 3)
    clock = FakeClock()
    limiter = RateLimiter(2, clock)
    assert all(limiter.allow(sender) for sender in ("a", "b", "c"))
    assert not limiter.allow("d") and limiter.allow("a")  # known senders go on
    clock.advance(1)  # every bucket refilled: forgotten, room again
    assert limiter.allow("d")


def test_throttled_log_counts_what_it_did_not_write(caplog: pytest.LogCaptureFixture) -> None:
    log = ThrottledLog(logging.getLogger("otp_agent.radius.test"), logging.WARNING, interval=60)
    with caplog.at_level(logging.WARNING, "otp_agent.radius.test"):
        for _ in range(5):
            log.note("kind", "dropping from %s", "nas1")
        log.note("other", "another thing")
        log.interval = 0
        log.note("kind", "dropping from %s", "nas1")
    assert [r.getMessage() for r in caplog.records] == [
        "dropping from nas1",
        "another thing",
        "dropping from nas1 (5 such since the last report)",
    ]
