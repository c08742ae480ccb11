"""otp-radiusd's configuration: the ``[radius]`` table, the clients file and ``--check-config``.

Every bad key or value is refused with exit status 2 and one message naming it; a clients file
that group or others could read, or that belongs to another user, is refused; nothing of a secret
appears in an error, a ``repr`` or the output.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from otp_agent.errors import ConfigError
from otp_agent.radius.clients import load_clients, parse_clients
from otp_agent.radius.config import ListenAddress, parse_radius_config

SECRET = "a-secret-of-the-tests-0123456789"


def _document(**radius: Any) -> dict[str, Any]:
    return {"agent": {"socket": "/run/test/agent.sock"}, "radius": {"clients_file": "clients", **radius}}


def test_defaults_and_values() -> None:
    config = parse_radius_config(_document(), base=Path("/etc/otp-agent"))
    assert config.listen == (ListenAddress("127.0.0.1", 1812),)
    assert config.clients_file == Path("/etc/otp-agent/clients")
    assert config.agent_socket == Path("/run/test/agent.sock")  # [agent] socket of the same file
    assert (config.mode, config.require_message_authenticator, config.rate_limit) == ("code", True, 200.0)
    assert (config.timeout, config.challenge_lifetime) == (5.0, 120)
    config = parse_radius_config(
        _document(listen=["[::1]:1645", "0.0.0.0:1812"], mode="challenge", agent_socket="/run/x.sock")
    )
    assert [str(a) for a in config.listen] == ["[::1]:1645", "0.0.0.0:1812"]
    assert config.agent_socket == Path("/run/x.sock") and config.mode == "challenge"
    assert parse_radius_config({"radius": {"clients_file": "/c"}}).agent_socket == Path(
        "/run/otp-agent/agent.sock"
    )


@pytest.mark.parametrize(
    ("radius", "message"),
    [
        ({"clients_file": None}, "radius.clients_file: required"),
        ({"mode": "pap"}, 'radius.mode: must be one of "code", "password+code", "challenge"'),
        ({"listen": "localhost:1812"}, "radius.listen: 'localhost' is not an IP address"),
        (
            {"listen": ["127.0.0.1:1812", "127.0.0.1:1812"]},
            "radius.listen[1]: 127.0.0.1:1812 is listed twice",
        ),
        ({"listen": "::1:1812"}, "radius.listen: '::1:1812' must be \"ADDRESS:PORT\""),
        ({"listen": "127.0.0.1:0"}, "radius.listen: port '0' must be a number from 1 to 65535"),
        ({"listen": []}, "radius.listen: must be"),
        ({"listen": [1812]}, 'radius.listen[0]: must be a "host:port" string'),
        ({"rate_limit": 0}, "radius.rate_limit: must be a number from 1.0"),
        ({"timeout": True}, "radius.timeout: must be a number"),
        ({"challenge_lifetime": 1.5}, "radius.challenge_lifetime: must be an integer from 1 to 3600"),
        (
            {"require_message_authenticator": "yes"},
            "radius.require_message_authenticator: must be true or false",
        ),
        ({"secret": "x"}, "radius.secret: unknown key"),
    ],
)
def test_bad_values_are_refused_naming_the_key(radius: dict[str, Any], message: str) -> None:
    document = _document(**radius)
    if radius.get("clients_file", "") is None:
        del document["radius"]["clients_file"]
    with pytest.raises(ConfigError) as error:
        parse_radius_config(document)
    assert str(error.value).startswith(message), str(error.value)


def test_no_radius_table() -> None:
    with pytest.raises(ConfigError, match=r"^radius: table required"):
        parse_radius_config({"agent": {}})


def test_clients_file_lines() -> None:
    table = parse_clients(
        "# NASes\n\n"
        f"10.0.0.0/8 {SECRET} wide\n"
        f"10.1.2.3 {SECRET}x # the VPN concentrator\n"
        f"2001:db8::/32 {SECRET}#hash-inside six\n"
    )
    assert [c.name for c in table.clients] == ["10.1.2.3", "six", "wide"]  # most specific first
    assert table.lookup(ipaddress.ip_address("10.1.2.3")).name == "10.1.2.3"  # type: ignore[union-attr]
    assert table.lookup(ipaddress.ip_address("10.9.9.9")).name == "wide"  # type: ignore[union-attr]
    assert table.lookup(ipaddress.ip_address("::ffff:10.9.9.9")).name == "wide"  # type: ignore[union-attr]
    assert table.lookup(ipaddress.ip_address("2001:db8::5")).secret == f"{SECRET}#hash-inside".encode()  # type: ignore[union-attr]
    assert table.lookup(ipaddress.ip_address("192.0.2.1")) is None
    assert SECRET not in repr(table)
    assert parse_clients("127.0.0.1 short\n").weak == ("127.0.0.1",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "clients file: lists no client"),
        ("127.0.0.1\n", "clients file, line 1: needs ADDRESS_OR_NETWORK SECRET [NAME]"),
        (f"127.0.0.1 {SECRET} a b\n", "clients file, line 1: too many words"),
        (f"nas.example {SECRET}\n", "clients file, line 1: 'nas.example' is not an address or network"),
        (f"10.0.0.1/8 {SECRET}\n", "clients file, line 1: '10.0.0.1/8' is not an address or network"),
        (
            f"10.0.0.1 {SECRET} a\n10.0.0.1/32 {SECRET} b\n",
            "clients file, line 2: 10.0.0.1/32 is already given on line 1",
        ),
        (
            f"10.0.0.1 {SECRET} a\n10.0.0.2 {SECRET} a\n",
            "clients file, line 2: the name 'a' is already given on line 1",
        ),
    ],
)
def test_bad_clients_lines(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_clients(text)
    assert str(error.value).startswith(message) and SECRET not in str(error.value), str(error.value)


def test_clients_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "clients"
    path.write_text(f"127.0.0.1 {SECRET}\n")
    for mode in (0o640, 0o604, 0o700, 0o666):
        path.chmod(mode)
        with pytest.raises(
            ConfigError, match=rf"mode 0{mode:o} lets others than its owner at the shared secrets"
        ):
            load_clients(path)
    path.chmod(0o400)
    assert len(load_clients(path).clients) == 1
    path.chmod(0o600)
    assert load_clients(path).source == path
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="cannot be opened"):
        load_clients(link)
    with pytest.raises(ConfigError, match="no such file"):
        load_clients(tmp_path / "missing")
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)
        with pytest.raises(ConfigError, match="belongs to uid 65534; it must belong to root or to the user"):
            load_clients(path)


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otp_agent.radius", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_exit_statuses(tmp_path: Path) -> None:
    clients = tmp_path / "clients"
    clients.write_text(f"127.0.0.1 {SECRET} nas\n")
    clients.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nsocket = "agent.sock"\n[radius]\nclients_file = "clients"\nmode = "challenge"\n'
    )
    good = _check(config)
    assert good.returncode == 0, good.stderr
    assert (
        "is valid: mode challenge, 1 clients" in good.stdout and str(tmp_path / "agent.sock") in good.stdout
    )
    config.write_text('[radius]\nclients_file = "clients"\nrate_limit = "fast"\n')
    bad = _check(config)
    assert bad.returncode == 2 and f"otp-radiusd: {config}: radius.rate_limit: must be a number" in bad.stderr
    config.write_text('[radius]\nclients_file = "clients"\n')
    clients.chmod(0o644)
    exposed = _check(config)
    assert (
        exposed.returncode == 2 and "radius.clients_file:" in exposed.stderr and "chmod 600" in exposed.stderr
    )
    assert SECRET not in exposed.stderr + exposed.stdout
    missing = _check(tmp_path / "absent.toml")
    assert missing.returncode == 2 and "configuration file not found" in missing.stderr
