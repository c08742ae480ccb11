"""Configuration: defaults, every error names its key, credentials, paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from otp_agent.config import Config, load_config, parse_config
from otp_agent.errors import ConfigError


def test_defaults_follow_the_spec() -> None:
    config = parse_config({})
    assert config.agent.socket == Path("/run/otp-agent/agent.sock")
    assert config.store.path == Path("/var/lib/otp-agent/tokens.db")
    assert config.keystore.master_key_file == Path("/etc/otp-agent/master.key")
    assert (config.policy.totp_window, config.policy.hotp_lookahead) == (1, 10)
    assert config.policy.unenrolled == "deny"


@pytest.mark.parametrize(
    "document,key",
    [
        ({"agent": {"sockett": "/x"}}, "agent.sockett: unknown key"),
        ({"policy": {"totp_window": "1"}}, "policy.totp_window: must be an integer"),
        ({"policy": {"totp_window": True}}, "policy.totp_window: must be an integer"),
        ({"policy": {"hotp_lookahead": 1000}}, "policy.hotp_lookahead: must be an integer from 0 to 100"),
        ({"store": {"backend": "mysql"}}, 'store.backend: must be one of "sqlite", "postgresql"'),
        ({"store": {"backend": "postgresql"}}, "store.dsn: required"),
        ({"keystore": {"backend": "payshield"}}, "keystore.payshield: table required"),
        ({"policy": {"unenrolled": "maybe"}}, "policy.unenrolled"),
        ({"agent": 3}, "agent: must be a table"),
        ({"extra": {}}, "extra: unknown key"),
        ({"audit": {"syslog": "yes"}}, "audit.syslog: must be true or false"),
        ({"policy": {"lock_base_seconds": 100, "lock_max_seconds": 10}}, "policy.lock_max_seconds"),
    ],
)
def test_bad_values_name_the_key(document: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert key in str(caught.value)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[store]\npath = "db/tokens.db"\n')
    config = load_config(path)
    assert isinstance(config, Config) and config.store.path == tmp_path / "db" / "tokens.db"


def test_credential_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/otp-agent.service")
    config = parse_config({"keystore": {"master_key_file": "credential:master.key"}})
    assert config.keystore.master_key_file == Path("/run/credentials/otp-agent.service/master.key")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="keystore.master_key_file"):
        parse_config({"keystore": {"master_key_file": "credential:master.key"}})


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_environment_variable_selects_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "other.toml"
    path.write_text("[policy]\ntotp_window = 3\n")
    monkeypatch.setenv("OTP_AGENT_CONFIG", str(path))
    assert load_config().policy.totp_window == 3


def test_dsn_password_is_not_in_the_repr() -> None:
    """The configuration's repr (a traceback, a debug line) must not show the DSN password."""
    config = parse_config({"store": {"backend": "postgresql", "dsn": "postgresql://otp:s3cr3t-pw@db1/otp"}})
    assert config.store.dsn == "postgresql://otp:s3cr3t-pw@db1/otp"
    for shown in (repr(config), repr(config.store), str(config)):
        assert "s3cr3t-pw" not in shown


def test_payshield_link_is_tls_unless_plain_tcp_is_opted_in(tmp_path: Path) -> None:
    """Through the whole file: the payShield table defaults to TLS; tls = false is refused
    until insecure_plaintext = true says plain TCP is really wanted."""
    path = tmp_path / "agent.toml"
    table = (
        '[keystore]\nbackend = "payshield"\n[keystore.payshield]\nhosts = ["hsm1:1500"]\n'
        'lmk_check_value = "5D6727"\n'
    )
    path.write_text(table)
    assert load_config(path).keystore.payshield.tls is True
    path.write_text(table + "tls = false\n")
    with pytest.raises(ConfigError, match=": keystore.payshield.tls: .*insecure_plaintext = true"):
        load_config(path)
    path.write_text(table + "insecure_plaintext = true\n")
    payshield = load_config(path).keystore.payshield
    assert (payshield.tls, payshield.insecure_plaintext) == (False, True)


def test_channel_tables_and_out_of_band_policy(tmp_path: Path) -> None:
    """[channel.NAME] tables are parsed by otp_agent.channels; a bad key is named in full."""
    from otp_agent.config import load_config, parse_config

    path = tmp_path / "agent.toml"
    path.write_text(
        '[channel.mail]\nkind = "smtp"\nhost = "127.0.0.1"\nfrom = "otp@example.com"\n'
        '[channel.sms]\nkind = "command"\ncommand = ["/usr/local/bin/send-sms", "{address}"]\n'
        "[policy]\noob_validity = 600\n"
    )
    config = load_config(path)
    assert sorted(config.channels) == ["mail", "sms"]
    assert (
        config.policy.oob_validity,
        config.policy.oob_resend_interval,
        config.policy.oob_max_per_hour,
    ) == (
        600,
        60,
        10,
    )
    assert parse_config({}).channels == {}
    with pytest.raises(ConfigError, match=r"channel\.mail\.prot: unknown key"):
        parse_config({"channel": {"mail": {"kind": "smtp", "host": "h", "from": "a@b.example", "prot": 1}}})
    with pytest.raises(ConfigError, match=r"policy\.oob_max_per_hour"):
        parse_config({"policy": {"oob_max_per_hour": 0}})
