"""Validation of the [keystore.payshield] table."""

from __future__ import annotations

from pathlib import Path

import pytest

from otp_agent.errors import ConfigError
from otp_agent.keystore.payshield.config import HsmAddress, PayShieldConfig, parse_payshield_config

MINIMAL: dict[str, object] = {"hosts": ["hsm1:1500"], "lmk_check_value": "5d6727"}


def test_minimal_table_gets_defaults() -> None:
    """hosts and lmk_check_value suffice; the check value is upper-cased."""
    config = parse_payshield_config(dict(MINIMAL))
    assert config.hosts == (HsmAddress("hsm1", 1500),)
    assert config.lmk_check_value == "5D6727" and config.header_length == 4
    assert config.key_format == "keyblock" and config.pipelining and config.bind_identity


def test_full_table() -> None:
    """Every documented key is accepted with a sensible value."""
    config = parse_payshield_config(
        {
            "hosts": ["hsm1:1500", "[::1]:2500", "10.0.0.2:1500"],
            "lmk_check_value": "5D67270000000000",
            "header_length": 6,
            "connect_timeout": 1,
            "request_timeout": 0.5,
            "pool_size": 4,
            "max_in_flight": 100,
            "pipelining": False,
            "calls_per_second": 250,
            "health_interval": 10,
            "retry_initial": 0.5,
            "retry_max": 30,
            "key_format": "variant",
            "bind_identity": False,
            "zmk_file": "/etc/otp-agent/zmk.hex",
            "zmk_key_block_file": "/etc/otp-agent/zmk.kb",
            "fingerprint_key_file": "/etc/fp.kb",
            "tls": True,
            "tls_ca_file": "/etc/ca.pem",
            "tls_cert_file": "/etc/c.pem",
            "tls_key_file": "/etc/k.pem",
            "tls_server_name": "hsm1.example",
        }
    )
    assert config.hosts[1] == HsmAddress("::1", 2500) and str(config.hosts[1]) == "[::1]:2500"
    assert config.zmk_file == Path("/etc/otp-agent/zmk.hex") and config.calls_per_second == 250.0


def test_self_test_file_and_retry_floor() -> None:
    """The self-test file defaults to beside the fingerprint key; retry_floor to 0.5 s."""
    config = parse_payshield_config(dict(MINIMAL))
    assert config.self_test_path == Path("/etc/otp-agent/payshield-self-test.kb")
    assert config.retry_floor == 0.5
    config = parse_payshield_config({**MINIMAL, "fingerprint_key_file": "/srv/fp.kb"})
    assert config.self_test_path == Path("/srv/payshield-self-test.kb")
    config = parse_payshield_config({**MINIMAL, "self_test_key_file": "/srv/st.kb", "retry_floor": 0.2})
    assert config.self_test_path == Path("/srv/st.kb") and config.retry_floor == 0.2


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("header_length", 33, "keystore.payshield.header_length: must be an integer from 0 to 32"),
        ("header_length", "4", "keystore.payshield.header_length: must be an integer"),
        ("header_length", True, "keystore.payshield.header_length: must be an integer"),
        ("hosts", [], "keystore.payshield.hosts: must be a non-empty list"),
        ("hosts", ["hsm1"], 'keystore.payshield.hosts: "hsm1" is not "host:port"'),
        ("hosts", ["hsm1:99999"], "keystore.payshield.hosts: port 99999"),
        ("hosts", ["a:1", "a:1"], "keystore.payshield.hosts: lists the same HSM twice"),
        ("lmk_check_value", "12345", "keystore.payshield.lmk_check_value: must be the LMK check value"),
        ("request_timeout", 0, "keystore.payshield.request_timeout: must be a number"),
        ("pool_size", 0, "keystore.payshield.pool_size: must be an integer from 1 to 64"),
        ("key_format", "tr31", 'keystore.payshield.key_format: must be "keyblock" or "variant"'),
        ("pipelining", "yes", "keystore.payshield.pipelining: must be true or false"),
        ("zmk_file", "", "keystore.payshield.zmk_file: must be a non-empty path"),
        ("retry_floor", 0, "keystore.payshield.retry_floor: must be a number from 0.01 to 60"),
        ("self_test_key_file", "", "keystore.payshield.self_test_key_file: must be a non-empty path"),
        ("colour", "blue", "keystore.payshield.colour: unknown key"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    """Each wrong key, type or value gives one error naming the full key."""
    with pytest.raises(ConfigError) as caught:
        parse_payshield_config({**MINIMAL, key: value})
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "table,key",
    [
        ({"hosts": ["a:1"]}, "lmk_check_value"),
        ({"lmk_check_value": "ABCDEF"}, "hosts"),
        ({**MINIMAL, "zmk_file": "/z"}, "zmk_key_block_file"),
        ({**MINIMAL, "insecure_plaintext": True, "tls_ca_file": "/ca"}, "tls_ca_file"),
        ({**MINIMAL, "tls": True, "tls_cert_file": "/c"}, "tls_key_file"),
        ({**MINIMAL, "retry_initial": 5, "retry_max": 1}, "retry_max"),
        ({**MINIMAL, "header_length": 0, "max_in_flight": 8}, "max_in_flight"),
    ],
)
def test_inconsistent_tables_name_the_key(table: dict[str, object], key: str) -> None:
    """Missing or inconsistent keys are reported by name."""
    with pytest.raises(ConfigError, match=f"^keystore.payshield.{key}: "):
        parse_payshield_config(table)


def test_tls_with_verification_is_the_default() -> None:
    """Without any TLS key the link is TLS (the CA from the system store), in the table and in
    a PayShieldConfig built in code alike."""
    config = parse_payshield_config(dict(MINIMAL))
    assert config.tls is True and config.insecure_plaintext is False
    assert config.transport_label == "tls"
    built = PayShieldConfig(hosts=(HsmAddress("hsm1", 1500),), lmk_check_value="5D6727")
    assert built.tls is True and built.insecure_plaintext is False


def test_tls_false_without_the_opt_in_is_refused() -> None:
    """tls = false alone is an error that names the key and the opt-in."""
    with pytest.raises(ConfigError) as caught:
        parse_payshield_config({**MINIMAL, "tls": False})
    message = str(caught.value)
    assert message.startswith("keystore.payshield.tls: ")
    assert "set insecure_plaintext = true if plain TCP is really wanted" in message
    with pytest.raises(ConfigError, match="^keystore.payshield.tls: "):
        parse_payshield_config({**MINIMAL, "tls": False, "insecure_plaintext": False})
    with pytest.raises(ConfigError, match="insecure_plaintext = true"):
        PayShieldConfig(hosts=(HsmAddress("hsm1", 1500),), lmk_check_value="5D6727", tls=False)


@pytest.mark.parametrize("extra", [{}, {"tls": False}])
def test_insecure_plaintext_opt_in(extra: dict[str, object]) -> None:
    """insecure_plaintext = true (with or without tls = false) selects plain TCP."""
    config = parse_payshield_config({**MINIMAL, **extra, "insecure_plaintext": True})
    assert config.tls is False and config.insecure_plaintext is True
    assert config.transport_label == "plaintext (insecure)"


@pytest.mark.parametrize(
    "extra,key",
    [
        ({"tls": True}, "insecure_plaintext"),
        ({"tls_ca_file": "/etc/ca.pem"}, "tls_ca_file"),
        ({"tls_cert_file": "/etc/c.pem", "tls_key_file": "/etc/k.pem"}, "tls_cert_file"),
        ({"tls_server_name": "hsm1.example"}, "tls_server_name"),
    ],
)
def test_insecure_plaintext_with_tls_keys_is_refused(extra: dict[str, object], key: str) -> None:
    """The opt-in together with TLS settings is contradictory, and said so by key."""
    with pytest.raises(ConfigError, match=f"^keystore.payshield.{key}: .*remove one of them"):
        parse_payshield_config({**MINIMAL, "insecure_plaintext": True, **extra})


def test_insecure_plaintext_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="^keystore.payshield.insecure_plaintext: must be true"):
        parse_payshield_config({**MINIMAL, "insecure_plaintext": "yes"})
