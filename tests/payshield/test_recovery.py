"""Recovery when every HSM was down: a request may reconnect after ``retry_floor``, not after
the whole back-off, and a dead HSM still gets a bounded number of connection attempts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from otp_agent.errors import KeyBackendUnavailable
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.keystore.payshield.connection import HsmConnection
from otp_agent.oath.hotp import counter_message
from otp_agent.oath.params import HashAlgorithm
from otp_agent.payshield_sim.testing import RunningSimulator, config_for, running_simulator
from otp_agent.sensitive import Secret

IDENTITY = TokenIdentity("R1", HashAlgorithm.SHA1)
WINDOW = [counter_message(c) for c in range(3)]
#: A back-off long enough that waiting for it is obvious: the old code needed 9 s or more.
LONG_BACK_OFF = {"retry_initial": 10.0, "retry_max": 60.0, "health_interval": 0.0}


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The address of every connection attempt the transport makes, in order."""
    seen: list[str] = []
    original = HsmConnection.open.__func__  # type: ignore[attr-defined]

    async def counting(cls: type[HsmConnection], address: Any, *args: Any) -> HsmConnection:
        seen.append(str(address))
        return await original(cls, address, *args)

    monkeypatch.setattr(HsmConnection, "open", classmethod(counting))
    yield seen


def _try(keys: PayShieldKeyBackend, sealed: bytes) -> bool:
    try:
        keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    except KeyBackendUnavailable:
        return False
    return True


def test_only_hsm_is_used_again_soon_after_it_returns(sim: RunningSimulator) -> None:
    """The only HSM is down for 2 s, then listens again on the same port: a request every
    0.1 s succeeds again within 10 requests (about 1 s), not after the 10 s back-off."""
    keys = PayShieldKeyBackend(sim.config(**LONG_BACK_OFF))
    try:
        sealed = keys.seal_secret(IDENTITY, Secret(b"12345678901234567890"))
        sim.stop()
        outage_end = time.monotonic() + 2.0
        while time.monotonic() < outage_end:
            assert not _try(keys, sealed)
            time.sleep(0.1)
        sim.start()
        requests = 0
        while requests < 30 and not _try(keys, sealed):
            requests += 1
            time.sleep(0.1)
        assert requests < 10, f"still failing after {requests} requests"
        assert keys.health()["ok"] is True
    finally:
        keys.close()


def test_dead_only_hsm_is_not_hammered(sim: RunningSimulator, attempts: list[str]) -> None:
    """Eight threads asking as fast as they can for 2 s: at most one connection attempt per
    retry_floor (0.5 s) besides the back-off, whatever the number of requests."""
    keys = PayShieldKeyBackend(sim.config(retry_initial=1.0, retry_max=60.0, health_interval=0.0))
    try:
        sealed = keys.seal_secret(IDENTITY, Secret(b"12345678901234567890"))
        sim.stop()
        before = len(attempts)
        stop = time.monotonic() + 2.0
        counts: list[int] = []

        def ask() -> None:
            done = 0
            while time.monotonic() < stop:
                _try(keys, sealed)
                done += 1
            counts.append(done)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        made = len(attempts) - before
        assert sum(counts) > 100  # requests failed fast, they did not wait for the HSM
        assert 1 <= made <= 2.0 / 0.5 + 3, f"{made} connection attempts in 2 s"
    finally:
        keys.close()


def test_floor_only_when_every_hsm_is_down(sim: RunningSimulator, attempts: list[str]) -> None:
    """While another HSM is up, a dead one waits for its back-off: requests do not retry it."""
    with running_simulator(lmk_file=sim.lmk_file, directory=sim.directory) as second:
        keys = PayShieldKeyBackend(config_for(sim, second, **LONG_BACK_OFF))
        try:
            sealed = keys.seal_secret(IDENTITY, Secret(b"12345678901234567890"))
            sim.stop()
            _try(keys, sealed)  # the request that finds it dead (or already the other HSM)
            before = attempts.count(sim.address)
            stop = time.monotonic() + 1.5
            while time.monotonic() < stop:
                assert _try(keys, sealed)
                time.sleep(0.02)
            assert attempts.count(sim.address) == before
        finally:
            keys.close()


def test_a_failover_is_told_to_the_observer_once(sim: RunningSimulator) -> None:
    """When the active HSM dies and the other takes over, the observer hears (previous, active)
    once; the agent turns that into a ``failover`` audit event of severity warning."""
    with running_simulator(lmk_file=sim.lmk_file, directory=sim.directory) as second:
        keys = PayShieldKeyBackend(config_for(sim, second, **LONG_BACK_OFF))
        heard: list[tuple[str, str]] = []
        keys.observe_failover(lambda previous, active: heard.append((previous, active)))
        try:
            sealed = keys.seal_secret(IDENTITY, Secret(b"12345678901234567890"))
            assert _try(keys, sealed) and heard == []
            sim.stop()
            for _ in range(5):
                _try(keys, sealed)
            assert heard == [(sim.address, second.address)]
        finally:
            keys.close()
