"""The HSM link: TLS with verification by default, plain TCP only as a loud opt-in, and what a
middlebox on the link can do to the second factor in each case.

The ``LQ`` answers are the HMACs the codes are made of, and the ``NC`` check value is public, so
whoever sits on a plain-TCP link reads the codes of every login and can make any code pass;
with TLS the same middlebox learns nothing and its tampering makes validation fail closed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from otp_agent.administration import Administration
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.cli.render import print_status
from otp_agent.config import PolicyConfig
from otp_agent.errors import KeyBackendUnavailable
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.keystore.payshield.config import HsmAddress, PayShieldConfig
from otp_agent.oath import HashAlgorithm, OathParams, TokenType, format_code, time_step
from otp_agent.oath.hotp import counter_message
from otp_agent.payshield_sim.testing import RunningSimulator, running_simulator
from otp_agent.sensitive import Secret
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.validation import Validator

from .forging_proxy import FORGED_CODE, ForgingProxy, running_proxy

CONTEXT = RequestContext(peer_uid=0, peer_pid=1, service="test")
RFC_SECRET = b"12345678901234567890"
NOW = 1_700_000_000.0


class _Clock:
    def __call__(self) -> float:
        return NOW


@pytest.fixture(params=[False, True], ids=["plaintext", "tls"])
def any_sim(request: pytest.FixtureRequest) -> Iterator[RunningSimulator]:
    """A simulator serving plain TCP or TLS."""
    with running_simulator(tls=request.param) as simulator:
        yield simulator


def _through(proxy: ForgingProxy, sim: RunningSimulator, **overrides: object) -> PayShieldConfig:
    """The simulator's config with the proxy as the only HSM (same certificate trust)."""
    return sim.config(hosts=(HsmAddress("127.0.0.1", proxy.port),), **overrides)


class _Site:
    """A store, an audit log, a backend through the proxy, and alice's TOTP token on it."""

    def __init__(self, directory: Path, keys: PayShieldKeyBackend) -> None:
        self.keys = keys
        self.store = SQLiteStore(directory / "tokens.db", create=True)
        self.audit_path = directory / "audit.log"
        self.audit = AuditLog(self.audit_path)
        enrolled = Administration(self.store, keys, self.audit).enroll(
            "alice", OathParams(TokenType.TOTP, HashAlgorithm.SHA1), "Example", CONTEXT
        )
        query = urllib.parse.parse_qs(urllib.parse.urlparse(enrolled["uri"]).query)
        value = query["secret"][0]
        self.secret = base64.b32decode(value + "=" * (-len(value) % 8))
        self.validator = Validator(self.store, keys, PolicyConfig(), self.audit, clock=_Clock())

    def genuine_code(self) -> str:
        step = time_step(NOW, 30)
        return format_code(hmac.new(self.secret, counter_message(step), hashlib.sha1).digest(), 6)

    def state(self) -> tuple[object, ...]:
        (token,) = self.store.tokens_for_user("alice")
        return token.last_step, token.drift, token.failures

    def close(self) -> None:
        self.keys.close()
        self.store.close()
        self.audit.close()


# -- the active attack -------------------------------------------------------------------------


def test_plaintext_link_lets_a_proxy_make_a_chosen_code_pass(tmp_path: Path) -> None:
    """Documents the risk of insecure_plaintext: a proxy rewriting the LR answers makes the
    validation engine accept 424242, a code the token never produced.  The NC check at start-up
    passes, since the check value is public and the proxy relays it."""
    with running_simulator(tls=False) as sim, running_proxy(sim, tmp_path) as proxy:
        site = _Site(tmp_path, PayShieldKeyBackend(_through(proxy, sim)))
        try:
            assert site.genuine_code() != FORGED_CODE
            proxy.armed = True
            decision = site.validator.validate("alice", FORGED_CODE, CONTEXT)
            assert decision.accepted and decision.reason == "accepted"
            assert proxy.forged_answers >= 1
        finally:
            site.close()


@pytest.mark.parametrize("impersonate", [False, True], ids=["tamper", "impersonate"])
def test_tls_link_fails_closed_against_the_forging_proxy(tmp_path: Path, impersonate: bool) -> None:
    """Over TLS the same proxy either changes records it cannot read (they fail their MAC) or
    presents a certificate of its own (not trusted): the forged code is not accepted, nothing
    is committed to the token, and once the proxy stops the genuine code still passes."""
    with running_simulator(tls=True) as sim, running_proxy(sim, tmp_path, impersonate=impersonate) as proxy:
        site = _Site(tmp_path, PayShieldKeyBackend(_through(proxy, sim)))
        try:
            before = site.state()
            audit_before = site.audit_path.read_text()
            proxy.armed = True
            if impersonate:
                proxy.drop_connections()  # The backend has to reconnect, through the impostor.
                time.sleep(0.1)
            for code in (FORGED_CODE, site.genuine_code()):
                decision = site.validator.validate("alice", code, CONTEXT)
                assert not decision.accepted
                assert decision.reason.startswith("keystore"), decision
            assert site.state() == before
            assert '"accept"' not in site.audit_path.read_text()[len(audit_before) :]
            if impersonate:
                assert proxy.impersonated_connections >= 1
                assert proxy.impostor_sessions == 0 and proxy.forged_answers == 0
            else:
                assert proxy.tampered_records >= 1
            proxy.armed = False
            for _ in range(60):  # The HSM is retried after its back-off.
                decision = site.validator.validate("alice", site.genuine_code(), CONTEXT)
                if decision.reason != "keystore_unavailable":
                    break
                time.sleep(0.05)
            assert decision.accepted, decision
        finally:
            site.close()


def test_start_up_through_an_impersonating_proxy_is_refused(tmp_path: Path) -> None:
    """A middlebox that terminates TLS itself never gets to answer NC: start-up fails, naming
    the keys to check."""
    with running_simulator(tls=True) as sim, running_proxy(sim, tmp_path, impersonate=True) as proxy:
        proxy.armed = True
        with pytest.raises(KeyBackendUnavailable, match="TLS certificate not accepted") as caught:
            PayShieldKeyBackend(_through(proxy, sim, connect_timeout=1.0))
        assert "tls_ca_file" in str(caught.value)
        assert sim.request_count("NC") == 0
        assert proxy.impersonated_connections >= 1 and proxy.impostor_sessions == 0


# -- the passive attack ------------------------------------------------------------------------


def test_what_an_eavesdropper_sees(any_sim: RunningSimulator, tmp_path: Path) -> None:
    """On plain TCP the LR answers of one validation are the HMACs of T-1, T, T+1, i.e. the
    codes of the window; over TLS none of them (nor an LR frame) appears on the wire."""
    identity = TokenIdentity("SNIFF0001", HashAlgorithm.SHA1)
    step = time_step(NOW, 30)
    window = [counter_message(c) for c in (step - 1, step, step + 1)]
    expected = [hmac.new(RFC_SECRET, m, hashlib.sha1).digest() for m in window]
    with running_proxy(any_sim, tmp_path) as proxy:
        keys = PayShieldKeyBackend(_through(proxy, any_sim))
        try:
            sealed = keys.seal_secret(identity, Secret(RFC_SECRET))
            assert keys.compute_hmacs(identity, sealed, window) == expected
        finally:
            keys.close()
        seen = bytes(proxy.downstream)
    visible = [mac in seen for mac in expected]
    if any_sim.tls_cert is None:
        assert visible == [True, True, True] and b"LR00" in seen
    else:
        assert visible == [False, False, False] and b"LR00" not in seen
        assert not any(mac.hex().encode() in seen.lower() for mac in expected)


# -- the opt-in is loud --------------------------------------------------------------------------


def test_plaintext_opt_in_warns_at_start_up_in_health_and_in_status(
    any_sim: RunningSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """insecure_plaintext = true logs a WARNING when the backend connects, and health() and
    ``otpctl status`` say how the link is protected, with the warning on a line of its own."""
    plaintext = any_sim.tls_cert is None
    with caplog.at_level(logging.WARNING, logger="otp_agent.keystore.payshield"):
        keys = PayShieldKeyBackend(any_sim.config())
    try:
        report = keys.health()
    finally:
        keys.close()
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "insecure_plaintext" in r.getMessage()
    ]
    out = io.StringIO()
    print_status({"keystore": report}, out)
    text = out.getvalue()
    if plaintext:
        assert len(warnings) == 1 and "plain TCP" in warnings[0]
        assert report["transport"] == "plaintext (insecure)"
        assert "insecure_plaintext = true" in str(report["warning"])
        assert "transport=plaintext (insecure)" in text
        assert "\n  WARNING: keystore.payshield.insecure_plaintext = true" in text
    else:
        assert warnings == [] and report["transport"] == "tls" and "warning" not in report
        assert "transport=tls" in text and "WARNING" not in text


def test_health_names_the_transport_even_when_no_hsm_answers() -> None:
    """The transport (and the warning) are in the report even if the probe fails."""
    with running_simulator(tls=False) as plain:
        keys = PayShieldKeyBackend(plain.config(health_interval=0))
        try:
            plain.stop()
            report = keys.health()
        finally:
            keys.close()
    assert report["transport"] == "plaintext (insecure)" and "warning" in report


# -- TLS failures say what to check ----------------------------------------------------------------


def test_tls_to_a_plain_tcp_port_times_out_with_a_hint(tmp_path: Path) -> None:
    """The new default against an HSM port that still speaks plain TCP: a clear error."""
    with running_simulator(tls=False) as plain:
        config = replace(plain.config(), insecure_plaintext=False, tls=True, connect_timeout=0.3)
        with pytest.raises(KeyBackendUnavailable, match="TLS handshake timed out") as caught:
            PayShieldKeyBackend(config)
    assert "insecure_plaintext = true" in str(caught.value)


def test_unreadable_ca_file_names_the_key(sim: RunningSimulator, tmp_path: Path) -> None:
    with pytest.raises(KeyBackendUnavailable, match="^keystore.payshield.tls_ca_file: cannot load"):
        PayShieldKeyBackend(sim.config(tls_ca_file=tmp_path / "absent.pem"))


def test_wrong_server_name_is_refused(sim: RunningSimulator) -> None:
    """The certificate is checked against tls_server_name (or the host), not just its CA."""
    with pytest.raises(KeyBackendUnavailable, match="TLS certificate not accepted"):
        PayShieldKeyBackend(sim.config(tls_server_name="hsm.elsewhere.example", connect_timeout=1.0))


def test_client_certificate_is_presented(tmp_path: Path) -> None:
    """tls_cert_file / tls_key_file are loaded and offered to an HSM that asks for them."""
    from otp_agent.payshield_sim.tlscert import make_self_signed

    (tmp_path / "client").mkdir()
    cert, key = make_self_signed(tmp_path / "client")
    with running_simulator(tls=True) as sim:
        server = sim._tls  # The simulator's server context: ask for a client certificate.
        assert server is not None
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_verify_locations(str(cert))
        with pytest.raises(KeyBackendUnavailable):
            PayShieldKeyBackend(sim.config(connect_timeout=1.0, request_timeout=1.0))
        keys = PayShieldKeyBackend(sim.config(tls_cert_file=cert, tls_key_file=key))
        try:
            assert keys.health()["ok"] is True
        finally:
            keys.close()
