"""What the payShield transport knows about each HSM: up or down, back-off, pooled connections.

A failed HSM is marked down and may be connected to again once its exponential back-off has
run out (``retry_initial`` doubling up to ``retry_max``) or, when every HSM is down, once its
last attempt is ``retry_floor`` seconds old.  :class:`HostState` keeps that bookkeeping; the
transport (:mod:`otp_agent.keystore.payshield.transport`) decides when to call it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from otp_agent.keystore.payshield.config import HsmAddress, PayShieldConfig
from otp_agent.keystore.payshield.connection import HsmConnection
from otp_agent.keystore.payshield.errors import PayShieldUnavailable

# The transport's logger: these messages are the transport's (the name is shown in the journal).
logger = logging.getLogger("otp_agent.keystore.payshield.transport")


@dataclass
class HostState:
    """What the transport knows about one HSM."""

    address: HsmAddress
    up: bool = False
    failures: int = 0
    next_retry: float = 0.0
    last_attempt: float = float("-inf")
    last_error: str = ""
    lmk_check_value: str = ""
    firmware: str = ""
    status: dict[str, object] = field(default_factory=dict)
    self_test: str = ""
    connections: list[HsmConnection] = field(default_factory=list)
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    def report(self) -> dict[str, object]:
        """JSON-able view for ``otpctl status``."""
        report: dict[str, object] = {
            "address": str(self.address),
            "up": self.up,
            "lmk_check_value": self.lmk_check_value,
            "firmware": self.firmware,
            "connections": len(self.connections),
            "in_flight": sum(c.in_flight for c in self.connections),
            "failures": self.failures,
            "last_error": self.last_error,
            **self.status,
        }
        if self.self_test:
            report["self_test"] = self.self_test
        return report

    def mark_down(self, error: BaseException, config: PayShieldConfig) -> None:
        """Take the HSM out of use until its back-off runs out; fail its connections."""
        self.failures += 1
        delay = min(config.retry_max, config.retry_initial * 2 ** (self.failures - 1))
        self.next_retry = time.monotonic() + delay
        self.last_error = str(error)
        if self.up:
            logger.warning("payShield %s marked down, retry in %.1fs: %s", self.address, delay, error)
        self.up = False
        for connection in self.connections:
            connection.fail(PayShieldUnavailable(f"payShield {self.address} is marked down"))
        self.connections.clear()

    def due(self, every_host_down: bool, config: PayShieldConfig) -> bool:
        """Whether a request may (re)connect to this HSM now.

        An HSM that is up, or whose back-off has run out, may be connected to.  When every HSM
        is down, so may one whose last attempt is ``retry_floor`` seconds old: nothing else
        could serve the request, and one attempt per floor does not hammer a dead HSM.
        """
        now = time.monotonic()
        if self.up or now >= self.next_retry:
            return True
        return every_host_down and now >= self.last_attempt + config.retry_floor

    def reusable(self, config: PayShieldConfig) -> HsmConnection | None:
        """An idle connection, or the least busy one once the pool is full."""
        self.connections = [c for c in self.connections if not c.closed]
        if not self.up or not self.connections:
            return None
        best = min(self.connections, key=lambda c: c.in_flight)
        if best.in_flight == 0 or len(self.connections) >= config.pool_size:
            return best
        return None


def lmk_matches(configured: str, reported: str) -> bool:
    """Compare check values on the configured digits (6 significant, or all 16)."""
    return reported[: len(configured)].upper() == configured.upper()
