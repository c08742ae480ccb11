"""The known-answer self-test: an HSM answering wrong HMACs is marked down, not believed.

A wrong ``LR`` answer looks like a wrong code: every login would be ``bad_code`` and count
towards the token's lock.  Each connection therefore starts (after NC) with an LQ under the
self-test key whose answer is known, and so does each health check; an HSM that gets it wrong
is not used.  The simulator's ``wrong_hmac`` fault is the lying HSM.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.administration import Administration
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.cli.render import print_status
from otp_agent.config import PolicyConfig
from otp_agent.errors import KeyBackendUnavailable
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend, initialise_payshield
from otp_agent.keystore.payshield.selftest import (
    SELF_TEST_MESSAGE,
    load_self_test_file,
    self_test_answer,
)
from otp_agent.oath import HashAlgorithm, OathParams, TokenType, format_code, time_step
from otp_agent.payshield_sim.testing import RunningSimulator, config_for, running_simulator
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.validation import Validator

CONTEXT = RequestContext(peer_uid=0, peer_pid=1, service="test")


class Site:
    """A store, an audit log and a validator on one key backend, with one enrolled user."""

    def __init__(self, keys: PayShieldKeyBackend, directory: Path) -> None:
        self.store = SQLiteStore(directory / "tokens.db", create=True)
        self.audit = AuditLog(directory / "audit.log")
        enrolled = Administration(self.store, keys, self.audit).enroll(
            "alice", OathParams(TokenType.TOTP, HashAlgorithm.SHA256), "Example", CONTEXT
        )
        value = urllib.parse.parse_qs(urllib.parse.urlparse(enrolled["uri"]).query)["secret"][0]
        self.secret = base64.b32decode(value + "=" * (-len(value) % 8))
        self.validator = Validator(self.store, keys, PolicyConfig(), self.audit)

    def code(self) -> str:
        step = time_step(time.time(), 30)
        return format_code(hmac.new(self.secret, step.to_bytes(8, "big"), "sha256").digest(), 6)

    def failures(self) -> int:
        (token,) = self.store.tokens_for_user("alice")
        return token.failures

    def close(self) -> None:
        self.store.close()
        self.audit.close()


@pytest.fixture
def pair(sim: RunningSimulator) -> Iterator[tuple[RunningSimulator, RunningSimulator]]:
    """Two simulated HSMs sharing one LMK and the key files."""
    with running_simulator(lmk_file=sim.lmk_file, directory=sim.directory) as second:
        yield sim, second


def _hosts(report: dict[str, object]) -> list[dict[str, object]]:
    hosts = report["hosts"]
    assert isinstance(hosts, list)
    return hosts


def _wait_until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


def test_lying_hsm_is_a_key_backend_failure_not_a_bad_code(sim: RunningSimulator, tmp_path: Path) -> None:
    """The only HSM starts lying: the next health check marks it down, validation fails
    closed with a key-backend reason and the token's failure count stays 0."""
    keys = PayShieldKeyBackend(sim.config())
    site = Site(keys, tmp_path)
    try:
        assert site.validator.validate("alice", site.code(), CONTEXT).accepted
        sim.set(fault="wrong_hmac")
        report = keys.health()
        (host,) = _hosts(report)
        assert report["ok"] is False and host["up"] is False
        assert host["self_test"] == "failed: wrong HMAC" and "self-test" in str(host["last_error"])
        time.sleep(0.05)  # Past the first back-off: the request reconnects, and fails again.
        decision = site.validator.validate("alice", "123456", CONTEXT)
        assert (decision.accepted, decision.reason) == (False, "keystore_unavailable")
        assert site.failures() == 0
    finally:
        site.close()
        keys.close()


def test_lie_found_when_the_connection_is_reopened(sim: RunningSimulator, tmp_path: Path) -> None:
    """Without a health check: a new connection's self-test finds the lie before any LQ."""
    keys = PayShieldKeyBackend(sim.config())
    site = Site(keys, tmp_path)
    try:
        sim.set(fault="wrong_hmac")
        sim.drop_connections()
        _wait_until(lambda: all(c.closed for h in keys._transport._hosts for c in h.connections))
        for _ in range(3):
            decision = site.validator.validate("alice", site.code(), CONTEXT)
            assert (decision.accepted, decision.reason) == (False, "keystore_unavailable")
            time.sleep(0.06)
        assert site.failures() == 0
    finally:
        site.close()
        keys.close()


def test_periodic_health_check_runs_the_self_test(sim: RunningSimulator) -> None:
    """The background health check (no request, no otpctl status) finds a lying HSM."""
    keys = PayShieldKeyBackend(sim.config(health_interval=0.05))
    try:
        host = keys._transport._hosts[0]
        before = sim.request_count("LQ")
        _wait_until(lambda: sim.request_count("LQ") >= before + 2)
        assert sim.request_count("LQ") >= before + 2 and host.up  # an LQ per check, passing
        sim.set(fault="wrong_hmac")
        _wait_until(lambda: not host.up)
        assert not host.up and "self-test" in host.last_error
    finally:
        keys.close()


def test_lying_only_hsm_at_start_up_is_refused(sim: RunningSimulator) -> None:
    """A single HSM that fails its self-test at start-up: the backend does not start."""
    sim.set(fault="wrong_hmac")
    with pytest.raises(KeyBackendUnavailable, match="self-test"):
        PayShieldKeyBackend(sim.config())


def test_failover_from_a_lying_hsm(pair: tuple[RunningSimulator, RunningSimulator], tmp_path: Path) -> None:
    """The preferred HSM lies from the start: it is down (with the reason, in health() and in
    otpctl status), the honest one answers and the code is accepted."""
    liar, honest = pair
    liar.set(fault="wrong_hmac")
    keys = PayShieldKeyBackend(config_for(liar, honest, request_timeout=0.5))
    site = Site(keys, tmp_path)
    try:
        before = honest.request_count("LQ")
        assert site.validator.validate("alice", site.code(), CONTEXT).accepted
        assert honest.request_count("LQ") > before and site.failures() == 0
        report = keys.health()
        first, second = _hosts(report)
        assert report["ok"] is True and report["active"] == honest.address
        assert first["up"] is False and first["self_test"] == "failed: wrong HMAC"
        assert "known-answer self-test" in str(first["last_error"])
        assert second["up"] is True and second["self_test"] == "passed"
        out = io.StringIO()
        print_status({"keystore": report}, out)
        text = out.getvalue()
        assert f"hsm {liar.address}: DOWN" in text and "self_test=failed: wrong HMAC" in text
        assert f"hsm {honest.address}: up" in text and "self_test=passed" in text
    finally:
        site.close()
        keys.close()


def test_hsm_starting_to_lie_fails_over_at_the_health_check(
    pair: tuple[RunningSimulator, RunningSimulator], tmp_path: Path
) -> None:
    """Both honest, then the active one lies: the health check moves the traffic."""
    first, second = pair
    keys = PayShieldKeyBackend(config_for(first, second, request_timeout=0.5))
    site = Site(keys, tmp_path)
    try:
        assert site.validator.validate("alice", site.code(), CONTEXT).accepted
        first.set(fault="wrong_hmac")
        report = keys.health()
        assert report["active"] == second.address and _hosts(report)[0]["up"] is False
        step = time_step(time.time(), 30) + 1  # the next code, not a replay
        code = format_code(hmac.new(site.secret, step.to_bytes(8, "big"), "sha256").digest(), 6)
        assert site.validator.validate("alice", code, CONTEXT).accepted
        assert site.failures() == 0
    finally:
        site.close()
        keys.close()


def test_self_test_refused_by_the_hsm_marks_it_down(pair: tuple[RunningSimulator, RunningSimulator]) -> None:
    """An HSM that answers the self-test LQ with an error code cannot be trusted either."""
    first, second = pair
    first.set(fault="error", fault_error_code="A4", fault_commands={"LQ"})
    keys = PayShieldKeyBackend(config_for(first, second))
    try:
        host = _hosts(keys.health())[0]
        assert host["up"] is False and str(host["self_test"]).startswith("failed: LQ refused")
    finally:
        keys.close()


def test_without_self_test_file_warns_and_reports_not_configured(
    sim: RunningSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older install (no self-test file): a WARNING at start, health says so, not failing."""
    caplog.set_level(logging.WARNING)
    missing = tmp_path / "none.kb"
    keys = PayShieldKeyBackend(sim.config(self_test_key_file=missing))
    try:
        report = keys.health()
        assert report["ok"] is True and report["self_test"] == "not configured"
        assert "self_test" not in _hosts(report)[0]
    finally:
        keys.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(missing) in w and "otp-agent init" in w for w in warnings)


def test_health_reports_the_self_test(sim: RunningSimulator, caplog: pytest.LogCaptureFixture) -> None:
    """With the file: enabled, passed per host, and no warning at start."""
    caplog.set_level(logging.WARNING)
    keys = PayShieldKeyBackend(sim.config())
    try:
        report = keys.health()
        assert report["self_test"] == "enabled" and _hosts(report)[0]["self_test"] == "passed"
    finally:
        keys.close()
    assert not [r for r in caplog.records if "self-test" in r.getMessage()]


def test_malformed_self_test_file_refuses_start(sim: RunningSimulator, tmp_path: Path) -> None:
    """A self-test file that is not one (or whose public answer was changed) is an error."""
    bad = tmp_path / "bad.kb"
    bad.write_text("key_block = S123\n")
    with pytest.raises(KeyBackendUnavailable, match="self-test file"):
        PayShieldKeyBackend(sim.config(self_test_key_file=bad))
    edited = tmp_path / "edited.kb"
    text = sim.self_test_key_file.read_text()
    edited.write_text(text.replace(self_test_answer().hex(), "00" * 32))
    with pytest.raises(KeyBackendUnavailable, match="was changed"):
        PayShieldKeyBackend(sim.config(self_test_key_file=edited))


def test_initialise_imports_the_public_test_key(sim: RunningSimulator, tmp_path: Path) -> None:
    """With a ZMK, init imports the public test key with LU and checks the HSM's answer against
    the one computed on the host; mode 0600, never overwritten, default beside the
    fingerprint key."""
    config = sim.config(fingerprint_key_file=tmp_path / "fp.kb", self_test_key_file=None)
    path = tmp_path / "payshield-self-test.kb"
    assert config.self_test_path == path
    before = sim.request_count("LU")
    messages = initialise_payshield(config)
    assert any("self-test" in m and "created" in m for m in messages)
    assert sim.request_count("LU") == before + 1
    assert path.stat().st_mode & 0o777 == 0o600
    content = path.read_text()
    self_test = load_self_test_file(path)
    assert self_test.expected == self_test_answer() and self_test.message == SELF_TEST_MESSAGE
    assert any("self-test" in m and "kept" in m for m in initialise_payshield(config))
    assert path.read_text() == content
    keys = PayShieldKeyBackend(config)
    try:
        assert _hosts(keys.health())[0]["self_test"] == "passed"
    finally:
        keys.close()


def test_initialise_without_zmk_generates_the_test_key(sim: RunningSimulator, tmp_path: Path) -> None:
    """Without a ZMK, init generates the test key with L0 and records the HSM's answer."""
    path = tmp_path / "st.kb"
    config = sim.config(zmk_file=None, zmk_key_block_file=None, self_test_key_file=path)
    before = sim.request_count("L0")
    initialise_payshield(config)
    assert sim.request_count("L0") == before + 1 and "generated-in-hsm" in path.read_text()
    keys = PayShieldKeyBackend(config)
    try:
        assert _hosts(keys.health())[0]["self_test"] == "passed"
    finally:
        keys.close()


def test_initialise_refuses_a_lying_hsm(sim: RunningSimulator, tmp_path: Path) -> None:
    """init against an HSM that gets the public key's answer wrong writes no file."""
    path = tmp_path / "st.kb"
    sim.set(fault="wrong_hmac")
    with pytest.raises(KeyBackendUnavailable, match="self-test"):
        initialise_payshield(sim.config(self_test_key_file=path))
    assert not path.exists()


def test_unreadable_self_test_file_is_not_configured(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After an upgrade, init (root) made the file but the daemon's user cannot read it (the
    unit does not pass it yet): the daemon still starts, with a WARNING naming the file and the
    fix, and reports the self-test as not configured."""
    caplog.set_level(logging.WARNING)
    path = sim.self_test_key_file
    real = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    keys = PayShieldKeyBackend(sim.config())
    try:
        report = keys.health()
        assert report["ok"] is True
        assert report["self_test"] == f"not configured (cannot read {path})"
    finally:
        keys.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"cannot read {path}" in w and "LoadCredential" in w for w in warnings)


def test_slow_hsm_has_time_for_nc_and_the_self_test(sim: RunningSimulator) -> None:
    """Each command takes 90 % of request_timeout: NC and then the self-test LQ both fit in
    the start-up budget (which allows for both)."""
    sim.set(latency=1.8)
    keys = PayShieldKeyBackend(sim.config(connect_timeout=0.3, request_timeout=2.0))
    try:
        assert keys._transport._hosts[0].self_test == "passed"
    finally:
        keys.close()
