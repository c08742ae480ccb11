"""The payShield key backend against the simulator: RFC vectors, binding, no clear keys."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from otp_agent.errors import KeyBackendError, SealedSecretInvalid
from otp_agent.keystore import KeyBackend, TokenIdentity
from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend, initialise_payshield
from otp_agent.keystore.payshield.keyblock import split_key_block
from otp_agent.oath.hotp import counter_message, format_code
from otp_agent.oath.params import HashAlgorithm
from otp_agent.payshield_sim.testing import RunningSimulator
from otp_agent.sensitive import Secret

from .conftest import load_oath

OATH = load_oath()
SHA1 = TokenIdentity("TOTP0001", HashAlgorithm.SHA1)
RFC_SECRET = b"12345678901234567890"


def test_is_a_key_backend(backend: PayShieldKeyBackend) -> None:
    """The backend satisfies the KeyBackend Protocol and is named payshield."""
    keys: KeyBackend = backend
    assert keys.name == "payshield" and "Secret" not in repr(backend)


@pytest.mark.parametrize("kind,algorithm,secret,factor,digits,code,full", OATH)
def test_rfc_vectors(
    backend: PayShieldKeyBackend,
    kind: str,
    algorithm: str,
    secret: bytes,
    factor: int,
    digits: int,
    code: str,
    full: str,
) -> None:
    """HMACs computed by the HSM reproduce RFC 4226 and RFC 6238 codes."""
    identity = TokenIdentity(f"{kind}-{algorithm}", HashAlgorithm(algorithm))
    sealed = backend.seal_secret(identity, Secret(secret))
    (mac,) = backend.compute_hmacs(identity, sealed, [counter_message(factor)])
    assert format_code(mac, digits) == code
    if full:
        assert mac.hex() == full


def test_window_in_one_batch(backend: PayShieldKeyBackend, sim: RunningSimulator) -> None:
    """A ±3 window is seven LQ commands, answered in order."""
    sealed = backend.seal_secret(SHA1, Secret(RFC_SECRET))
    before = sim.request_count("LQ")
    macs = backend.compute_hmacs(SHA1, sealed, [counter_message(c) for c in range(7)])
    assert [format_code(m, 6) for m in macs] == [
        "755224",
        "287082",
        "359152",
        "969429",
        "338314",
        "254676",
        "287922",
    ]
    assert sim.request_count("LQ") - before == 7


def test_sequential_mode_gives_the_same_answers(sim: RunningSimulator) -> None:
    """pipelining = false sends one command at a time with the same results."""
    keys = PayShieldKeyBackend(sim.config(pipelining=False))
    try:
        sealed = keys.seal_secret(SHA1, Secret(RFC_SECRET))
        macs = keys.compute_hmacs(SHA1, sealed, [counter_message(c) for c in range(3)])
    finally:
        keys.close()
    assert [format_code(m, 6) for m in macs] == ["755224", "287082", "359152"]


def test_sealed_blob_holds_no_clear_secret(backend: PayShieldKeyBackend, tmp_path: Path) -> None:
    """The sealed blob is an LMK key block; neither the secret nor its hex is in the database."""
    secret = bytes(range(100, 132))
    identity = TokenIdentity("DB1", HashAlgorithm.SHA256)
    sealed = backend.seal_secret(identity, Secret(secret))
    header, _ = split_key_block(sealed[1:].decode())
    assert sealed[:1] == b"S" and header.usage == "63" and header.mode == "G"
    assert header.exportability == "N"
    database = tmp_path / "t.db"
    with sqlite3.connect(database) as connection:
        connection.execute("create table t (sealed blob)")
        connection.execute("insert into t values (?)", (sealed,))
    raw = database.read_bytes()
    for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
        assert form not in raw
    assert sealed in raw


def test_validation_never_receives_a_key(backend: PayShieldKeyBackend, sim: RunningSimulator) -> None:
    """compute_hmacs sends only LQ; every answer is an HMAC, never the key."""
    secret = b"s" * 20
    sealed = backend.seal_secret(SHA1, Secret(secret))
    seen: list[tuple[list[bytes], list[bytes]]] = []
    transport = backend._transport
    original = transport.exchange

    def spy(payloads: list[bytes], pipelined: bool = True) -> list[bytes]:
        answers = original(payloads, pipelined)
        seen.append((list(payloads), answers))
        return answers

    transport.exchange = spy  # type: ignore[method-assign,assignment]
    macs = backend.compute_hmacs(SHA1, sealed, [counter_message(c) for c in range(3)])
    ((payloads, answers),) = seen
    assert {p[:2] for p in payloads} == {b"LQ"} and {a[:4] for a in answers} == {b"LR00"}
    assert all(secret not in a for a in answers)
    assert macs[0] == hmac.new(secret, counter_message(0), hashlib.sha1).digest()


def test_client_package_has_no_command_that_returns_a_clear_key() -> None:
    """The client codec has no encoder for a command that exports a key (LW, A2, ...)."""
    from otp_agent.keystore.payshield import fields

    encoders = {name for module in (codec, fields) for name in dir(module) if name.startswith("encode_")}
    assert encoders == {
        "encode_nc",
        "encode_no",
        "encode_b2",
        "encode_n0",
        "encode_l0",
        "encode_lq",
        "encode_ls",
        "encode_lu",
        "encode_a0",
        "encode_response",
    }


def test_key_block_copied_to_another_token_is_refused(backend: PayShieldKeyBackend) -> None:
    """A key block sealed for one serial does not compute for another serial or hash."""
    sealed = backend.seal_secret(SHA1, Secret(RFC_SECRET))
    for other in (
        TokenIdentity("OTHER", HashAlgorithm.SHA1),
        TokenIdentity("TOTP0001", HashAlgorithm.SHA256),
    ):
        with pytest.raises(SealedSecretInvalid):
            backend.compute_hmacs(other, sealed, [bytes(8)])


def test_rebinding_by_editing_the_header_is_refused_by_the_hsm(backend: PayShieldKeyBackend) -> None:
    """Rewriting the binding block for another token makes the HSM refuse the block (A4)."""
    sealed = backend.seal_secret(SHA1, Secret(RFC_SECRET)).decode()
    other = TokenIdentity("OTHER", HashAlgorithm.SHA1)
    forged = backend.seal_secret(other, Secret(b"x" * 20)).decode()
    # Keep the victim's encrypted key but carry the other token's authenticated header.
    moved = (forged[:49] + sealed[49:]).encode()
    with pytest.raises(SealedSecretInvalid) as caught:
        backend.compute_hmacs(other, moved, [bytes(8)])
    assert getattr(caught.value, "error_code", "") == "A4"


def test_key_block_tampered_in_the_database(backend: PayShieldKeyBackend) -> None:
    """One changed hex digit of the encrypted key: the HSM answers A4, SealedSecretInvalid."""
    sealed = bytearray(backend.seal_secret(SHA1, Secret(RFC_SECRET)))
    sealed[60] = ord("0") if sealed[60] != ord("0") else ord("1")
    with pytest.raises(SealedSecretInvalid, match="A4"):
        backend.compute_hmacs(SHA1, bytes(sealed), [bytes(8)])


@pytest.mark.parametrize("blob", [b"", b"garbage", b"S10016", b"S1012861HG00N0100", b"V01" + bytes(16)])
def test_malformed_sealed_blobs(backend: PayShieldKeyBackend, blob: bytes) -> None:
    """Blobs that are not key blocks (or variant blobs in key-block mode) are refused."""
    with pytest.raises(SealedSecretInvalid):
        backend.compute_hmacs(SHA1, blob, [bytes(8)])


def test_variant_format(sim: RunningSimulator) -> None:
    """key_format = variant imports and computes, without header binding."""
    keys = PayShieldKeyBackend(sim.config(key_format="variant"))
    try:
        identity = TokenIdentity("V1", HashAlgorithm.SHA512)
        seed = b"1234567890" * 6 + b"1234"
        sealed = keys.seal_secret(identity, Secret(seed))
        assert sealed[:3] == b"V08" and seed not in sealed
        (mac,) = keys.compute_hmacs(identity, sealed, [counter_message(1)])
        assert format_code(mac, 8) == "90693936"
        with pytest.raises(SealedSecretInvalid):
            keys.compute_hmacs(TokenIdentity("V1", HashAlgorithm.SHA1), sealed, [bytes(8)])
    finally:
        keys.close()


def test_fingerprint_is_keyed_and_stable(backend: PayShieldKeyBackend, sim: RunningSimulator) -> None:
    """Equal secrets give equal fingerprints; they are not a plain hash of the secret."""
    first = backend.fingerprint(Secret(RFC_SECRET))
    assert first == backend.fingerprint(Secret(RFC_SECRET))
    assert first != backend.fingerprint(Secret(b"x" * 20)) and len(first) == 32
    assert first != hashlib.sha256(RFC_SECRET).digest()


def test_fingerprint_without_key_file(sim: RunningSimulator, tmp_path: Path) -> None:
    """With no fingerprint key yet, fingerprint() says to run otp-agent init."""
    keys = PayShieldKeyBackend(sim.config(fingerprint_key_file=tmp_path / "missing.kb"))
    try:
        with pytest.raises(KeyBackendError, match="otp-agent init"):
            keys.fingerprint(Secret(b"x" * 20))
    finally:
        keys.close()


def test_initialise_creates_the_fingerprint_key_once(sim: RunningSimulator, tmp_path: Path) -> None:
    """initialise_payshield generates the key in the HSM (L0), mode 0600, never overwrites."""
    path = tmp_path / "sub" / "fp.kb"
    config = sim.config(fingerprint_key_file=path)
    assert "created" in initialise_payshield(config)[0]
    content = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600 and content.startswith("S1")
    assert "kept" in initialise_payshield(config)[0] and path.read_text() == content
    keys = PayShieldKeyBackend(config)
    try:
        assert len(keys.fingerprint(Secret(RFC_SECRET))) == 32
    finally:
        keys.close()


def test_seal_without_zmk(sim: RunningSimulator) -> None:
    """Without ZMK files import is refused with a message naming the keys."""
    keys = PayShieldKeyBackend(sim.config(zmk_file=None, zmk_key_block_file=None))
    try:
        with pytest.raises(KeyBackendError, match="zmk_file"):
            keys.seal_secret(SHA1, Secret(RFC_SECRET))
    finally:
        keys.close()


def test_health_reports_hosts(backend: PayShieldKeyBackend, sim: RunningSimulator) -> None:
    """health() probes with NO and reports the active HSM, its check value and firmware."""
    report = backend.health()
    assert report["ok"] is True and report["backend"] == "payshield"
    assert report["active"] == sim.address
    hosts: Any = report["hosts"]
    (host,) = hosts
    assert host["lmk_check_value"] == sim.lmk_check_value and host["firmware"] == "1500-SIM1"
    assert sim.request_count("NO") >= 1


def test_tls_connection() -> None:
    """With TLS (the default) the backend talks to a TLS simulator and verifies its
    certificate; plain TCP to a TLS port does not work."""
    from otp_agent.payshield_sim.testing import running_simulator

    with running_simulator(tls=True) as tls_sim:
        keys = PayShieldKeyBackend(tls_sim.config())
        try:
            sealed = keys.seal_secret(SHA1, Secret(RFC_SECRET))
            (mac,) = keys.compute_hmacs(SHA1, sealed, [counter_message(0)])
            assert format_code(mac, 6) == "755224"
        finally:
            keys.close()
        plain = tls_sim.config(
            tls=False,
            insecure_plaintext=True,
            tls_ca_file=None,
            tls_server_name=None,
            connect_timeout=0.5,
            request_timeout=0.5,
        )
        with pytest.raises(KeyBackendError):
            PayShieldKeyBackend(plain)


def test_tls_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    """A TLS HSM whose certificate is not trusted is unreachable, not used."""
    from otp_agent.payshield_sim.testing import running_simulator
    from otp_agent.payshield_sim.tlscert import make_self_signed

    other_cert, _ = make_self_signed(tmp_path)
    with running_simulator(tls=True) as tls_sim:
        with pytest.raises(KeyBackendError, match="cannot connect"):
            PayShieldKeyBackend(tls_sim.config(tls_ca_file=other_cert))


@pytest.mark.parametrize("header_length", [0, 1, 2, 8])
def test_concurrent_validations_any_header_length(header_length: int) -> None:
    """Many threads share the pool; each gets its own answers, whatever the header length
    (one digit allows 10 requests in flight per connection, none allows one)."""
    import threading

    from otp_agent.payshield_sim.testing import running_simulator

    with running_simulator(header_length=header_length, latency=0.001) as hsm:
        keys = PayShieldKeyBackend(hsm.config(pool_size=3))
        try:
            secrets = {n: bytes([n]) * 20 for n in range(6)}
            sealed = {
                n: keys.seal_secret(TokenIdentity(f"C{n}", HashAlgorithm.SHA1), Secret(s))
                for n, s in secrets.items()
            }
            errors: list[str] = []

            def worker(n: int) -> None:
                identity = TokenIdentity(f"C{n}", HashAlgorithm.SHA1)
                for start in range(0, 40, 7):
                    messages = [counter_message(c) for c in range(start, start + 7)]
                    macs = keys.compute_hmacs(identity, sealed[n], messages)
                    expected = [hmac.new(secrets[n], m, hashlib.sha1).digest() for m in messages]
                    if macs != expected:
                        errors.append(f"thread {n} got wrong HMACs")

            threads = [threading.Thread(target=worker, args=(n,)) for n in secrets]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert errors == []
            assert hsm.server.connections_accepted <= 3
        finally:
            keys.close()


def test_malformed_zmk_file(sim: RunningSimulator, tmp_path: Path) -> None:
    """A ZMK file that is not AES key hex is reported without echoing its content."""
    bad = tmp_path / "zmk.hex"
    bad.write_text("not-a-key-0123\n")
    keys = PayShieldKeyBackend(sim.config(zmk_file=bad))
    try:
        with pytest.raises(KeyBackendError, match="does not hold an AES ZMK") as caught:
            keys.seal_secret(SHA1, Secret(RFC_SECRET))
        assert "not-a-key" not in str(caught.value)
    finally:
        keys.close()
