"""Bad input and faults: down, dying, hanging, garbage, mismatched LMK, licence limit, failover."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from otp_agent.errors import KeyBackendUnavailable
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.keystore.payshield.config import HsmAddress
from otp_agent.keystore.payshield.errors import (
    LmkMismatch,
    PayShieldBusy,
    PayShieldCommandError,
    PayShieldProtocolError,
)
from otp_agent.oath.hotp import counter_message
from otp_agent.oath.params import HashAlgorithm
from otp_agent.payshield_sim.testing import RunningSimulator, config_for, running_simulator
from otp_agent.sensitive import Secret

IDENTITY = TokenIdentity("F1", HashAlgorithm.SHA1)
WINDOW = [counter_message(c) for c in range(3)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pair(sim: RunningSimulator) -> Iterator[tuple[RunningSimulator, RunningSimulator]]:
    """Two simulated HSMs sharing one LMK, like a production pair."""
    with running_simulator(lmk_file=sim.lmk_file, directory=sim.directory) as second:
        yield sim, second


@pytest.fixture
def keys(pair: tuple[RunningSimulator, RunningSimulator]) -> Iterator[PayShieldKeyBackend]:
    backend = PayShieldKeyBackend(config_for(*pair, request_timeout=0.5))
    yield backend
    backend.close()


def _sealed(keys: PayShieldKeyBackend) -> bytes:
    return keys.seal_secret(IDENTITY, Secret(b"12345678901234567890"))


def test_hsm_down_at_start_up(sim: RunningSimulator) -> None:
    """No HSM listening: the backend refuses to start with KeyBackendUnavailable."""
    config = sim.config(hosts=(HsmAddress("127.0.0.1", _free_port()),), connect_timeout=0.5)
    with pytest.raises(KeyBackendUnavailable, match="no payShield reachable"):
        PayShieldKeyBackend(config)


def test_one_of_two_down_at_start_up(sim: RunningSimulator) -> None:
    """With the first HSM down the backend starts and uses the second."""
    config = sim.config(hosts=(HsmAddress("127.0.0.1", _free_port()), HsmAddress(sim.host, sim.port)))
    keys = PayShieldKeyBackend(config)
    try:
        sealed = _sealed(keys)
        assert len(keys.compute_hmacs(IDENTITY, sealed, WINDOW)) == 3
        report = keys.health()
        assert report["ok"] is True and report["active"] == sim.address
        assert [h["up"] for h in report["hosts"]] == [False, True]  # type: ignore[attr-defined]
    finally:
        keys.close()


def test_lmk_check_value_mismatch(sim: RunningSimulator) -> None:
    """A configured check value that differs from the HSM's refuses start-up."""
    wrong = "000000" if not sim.lmk_check_value.startswith("000000") else "111111"
    with pytest.raises(LmkMismatch, match="refusing"):
        PayShieldKeyBackend(sim.config(lmk_check_value=wrong))


def test_second_hsm_with_another_lmk_refuses_start_up(sim: RunningSimulator) -> None:
    """Every reachable HSM must hold the configured LMK."""
    # Same directory, so the same (trusted) TLS certificate, but an LMK of its own.
    other_lmk = sim.directory / "other-lmk.hex"
    with running_simulator(lmk_file=other_lmk, directory=sim.directory) as stranger:
        assert stranger.lmk_check_value != sim.lmk_check_value
        with pytest.raises(LmkMismatch):
            PayShieldKeyBackend(config_for(sim, stranger))


@pytest.mark.parametrize(
    "fault,error",
    [
        ("drop", KeyBackendUnavailable),
        ("silent", KeyBackendUnavailable),
        ("garbage", PayShieldProtocolError),
        ("wrong_header", PayShieldProtocolError),
        ("wrong_response", PayShieldProtocolError),
    ],
)
def test_fault_mid_request_fails_closed_then_fails_over(
    pair: tuple[RunningSimulator, RunningSimulator],
    keys: PayShieldKeyBackend,
    fault: str,
    error: type[Exception],
) -> None:
    """The failing request is refused; the next goes to the other HSM."""
    first, second = pair
    sealed = _sealed(keys)
    first.set(fault=fault, fault_commands={"LQ"})
    with pytest.raises(error):
        keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    before = second.request_count("LQ")
    assert len(keys.compute_hmacs(IDENTITY, sealed, WINDOW)) == 3
    assert second.request_count("LQ") == before + 3
    report = keys.health()
    assert report["active"] == second.address


def test_error_code_answer_is_not_a_failover(
    pair: tuple[RunningSimulator, RunningSimulator], keys: PayShieldKeyBackend
) -> None:
    """An HSM error code is reported clearly and the HSM stays in use."""
    first, second = pair
    sealed = _sealed(keys)
    before = second.request_count("LQ")  # the self-test of its connection at start-up
    first.set(fault="error", fault_error_code="67", fault_count=1, fault_commands={"LQ"})
    with pytest.raises(PayShieldCommandError, match="67: command not licensed"):
        keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    assert second.request_count("LQ") == before


def test_failed_hsm_is_retried_and_takes_traffic_back(
    pair: tuple[RunningSimulator, RunningSimulator], keys: PayShieldKeyBackend
) -> None:
    """After a failure and its back-off, the first HSM is reconnected and used again."""
    first, second = pair
    sealed = _sealed(keys)
    on_second = second.request_count("LQ")  # the self-test of its connection at start-up
    first.set(fault="drop", fault_count=1, fault_commands={"LQ"})
    with pytest.raises(KeyBackendUnavailable):
        keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    assert second.request_count("LQ") == on_second + 3
    before = first.request_count("LQ")
    deadline = time.monotonic() + 10
    while first.request_count("LQ") == before and time.monotonic() < deadline:
        time.sleep(0.05)
        keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    assert first.request_count("LQ") > before
    on_first, on_second = first.request_count("LQ"), second.request_count("LQ")
    keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    assert (first.request_count("LQ"), second.request_count("LQ")) == (on_first + 3, on_second)


def test_health_loop_brings_a_restarted_hsm_back(pair: tuple[RunningSimulator, RunningSimulator]) -> None:
    """A stopped HSM is marked down; once restarted the periodic check (NC) restores it."""
    first, second = pair
    keys = PayShieldKeyBackend(config_for(first, second, health_interval=0.05, request_timeout=0.5))
    try:
        sealed = _sealed(keys)
        before = second.request_count("LQ")  # self-tests at connection and health checks
        first.stop()
        try:  # A request racing with the death fails closed; or it already goes elsewhere.
            keys.compute_hmacs(IDENTITY, sealed, WINDOW)
        except KeyBackendUnavailable:
            keys.compute_hmacs(IDENTITY, sealed, WINDOW)
        assert second.request_count("LQ") >= before + 3
        assert keys.health()["active"] == second.address
        first.start()
        deadline = time.monotonic() + 10
        while keys.health()["active"] != first.address and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keys.health()["active"] == first.address
    finally:
        keys.close()


def test_all_hsms_failing(pair: tuple[RunningSimulator, RunningSimulator], keys: PayShieldKeyBackend) -> None:
    """With both HSMs dropping connections every request fails closed."""
    sealed = _sealed(keys)
    for hsm in pair:
        hsm.set(fault="drop", fault_commands={"LQ", "NC"})
    for _ in range(3):
        with pytest.raises(KeyBackendUnavailable):
            keys.compute_hmacs(IDENTITY, sealed, WINDOW)
    assert keys.health()["ok"] in (True, False)


def test_client_licence_limit_queues_then_fails_clearly(sim: RunningSimulator) -> None:
    """Under calls_per_second, requests that fit in their timeout wait; others fail as busy."""
    keys = PayShieldKeyBackend(sim.config(calls_per_second=10, request_timeout=0.3))
    try:
        sealed = _sealed(keys)
        time.sleep(0.2)
        assert len(keys.compute_hmacs(IDENTITY, sealed, WINDOW[:2])) == 2
        with pytest.raises(PayShieldBusy, match="calls-per-second limit of 10"):
            keys.compute_hmacs(IDENTITY, sealed, [counter_message(c) for c in range(7)])
    finally:
        keys.close()


def test_hsm_licence_limit_beyond_timeout_fails_closed(sim: RunningSimulator) -> None:
    """When the HSM itself throttles past the request timeout, the request fails closed."""
    keys = PayShieldKeyBackend(sim.config(request_timeout=0.3))
    try:
        sealed = _sealed(keys)
        sim.set(calls_per_second=5)
        with pytest.raises(KeyBackendUnavailable, match="did not answer within"):
            keys.compute_hmacs(IDENTITY, sealed, [counter_message(c) for c in range(7)])
    finally:
        keys.close()


def test_errors_and_logs_carry_no_key_material(
    pair: tuple[RunningSimulator, RunningSimulator],
    keys: PayShieldKeyBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures name commands, codes and hosts, never the key block or the secret."""
    import logging

    caplog.set_level(logging.DEBUG)
    secret = b"12345678901234567890"
    sealed = _sealed(keys)
    messages: list[str] = []
    for fault in ("garbage", "wrong_header", "error", "drop"):
        for hsm in pair:
            hsm.set(fault=fault, fault_count=1, fault_commands={"LQ"})
        try:
            keys.compute_hmacs(IDENTITY, sealed, WINDOW)
        except Exception as exc:  # noqa: BLE001 - every failure is inspected
            messages.append(repr(exc) + str(exc))
    for hsm in pair:
        hsm.clear_faults()
    time.sleep(0.6)  # Past the back-off, so that an HSM is used again.
    tampered = sealed[:60] + (b"0" if sealed[60:61] != b"0" else b"1") + sealed[61:]
    try:
        keys.compute_hmacs(IDENTITY, tampered, WINDOW)
    except Exception as exc:  # noqa: BLE001
        messages.append(repr(exc) + str(exc))
    text = "\n".join(messages) + caplog.text
    assert len(messages) == 5
    for needle in (sealed[17:].decode(), sealed[49:81].decode(), secret.decode(), secret.hex()):
        assert needle not in text


def test_idle_connections_closed_by_the_hsm_are_reopened(sim: RunningSimulator) -> None:
    """An HSM closing idle connections is not a failure: health and requests reconnect."""
    keys = PayShieldKeyBackend(sim.config())

    def wait_until_seen_closed() -> None:
        connections = [c for h in keys._transport._hosts for c in h.connections]
        deadline = time.monotonic() + 5
        while not all(c.closed for c in connections) and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        sealed = _sealed(keys)
        sim.drop_connections()
        wait_until_seen_closed()
        report = keys.health()
        assert report["ok"] is True and report["hosts"][0]["failures"] == 0  # type: ignore[index]
        sim.drop_connections()
        wait_until_seen_closed()
        assert len(keys.compute_hmacs(IDENTITY, sealed, WINDOW)) == 3
    finally:
        keys.close()
