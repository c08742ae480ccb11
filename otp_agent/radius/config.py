"""The ``[radius]`` table of agent.toml, parsed into a frozen :class:`RadiusConfig`.

The agent ignores that table; ``otp-radiusd`` reads only it and ``[agent] socket`` (the default
of ``radius.agent_socket``), so a mistake elsewhere in the file is the agent's to report.  Every
bad key or value raises one :class:`~otp_agent.errors.ConfigError` naming it
(``radius.mode: must be one of "code", "password+code", "challenge"``), with the typed getters
of :mod:`otp_agent.config`.  The clients file it names is read by :mod:`otp_agent.radius.clients`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from otp_agent.config import DEFAULT_SOCKET, _Table, default_config_path, read_toml, resolve_path
from otp_agent.errors import ConfigError

#: The modes: what the User-Password of an Access-Request carries.
MODES = ("code", "password+code", "challenge")
DEFAULT_LISTEN = "127.0.0.1:1812"


@dataclass(frozen=True)
class ListenAddress:
    """One UDP address to serve: an IP literal (no host names) and a port."""

    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        """AF_INET or AF_INET6."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RadiusConfig:
    """The ``[radius]`` table."""

    clients_file: Path
    agent_socket: Path = Path(DEFAULT_SOCKET)
    listen: tuple[ListenAddress, ...] = (ListenAddress("127.0.0.1", 1812),)
    require_message_authenticator: bool = True
    mode: str = "code"
    #: Requests per second each client (source address) may send; the excess is dropped.
    rate_limit: float = 200.0
    #: Seconds one request may wait for the agent, all of its calls together.
    timeout: float = 5.0
    #: Seconds an Access-Challenge's State stays valid.
    challenge_lifetime: int = 120
    source: Path | None = None


def parse_listen(value: object, key: str = "radius.listen") -> tuple[ListenAddress, ...]:
    """``"host:port"``, ``"[v6]:port"``, or a non-empty list of them (no duplicates)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f'{key}: must be a "host:port" string or a non-empty list of them')
    addresses: list[ListenAddress] = []
    for index, item in enumerate(items):
        where = key if isinstance(value, str) else f"{key}[{index}]"
        if not isinstance(item, str):
            raise ConfigError(f'{where}: must be a "host:port" string')
        address = _listen_address(item, where)
        if address in addresses:
            raise ConfigError(f"{where}: {address} is listed twice")
        addresses.append(address)
    return tuple(addresses)


def _listen_address(text: str, key: str) -> ListenAddress:
    expect = f'{key}: {text!r} must be "ADDRESS:PORT" (an IPv6 address in brackets: "[::1]:1812")'
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigError(expect)
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            raise ConfigError(expect)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {host!r} is not an IP address (host names are not resolved)") from None
    if "[" in text and address.version != 6:
        raise ConfigError(expect)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{key}: port {port_text!r} must be a number from 1 to 65535")
    return ListenAddress(str(address), int(port_text))


def _agent_socket(document: Mapping[str, object], base: Path) -> Path:
    """``[agent] socket`` of the same file, checked only as far as it is used here."""
    agent = document.get("agent", {})
    value = agent.get("socket") if isinstance(agent, Mapping) else None
    if value is None:
        return Path(DEFAULT_SOCKET)
    if not isinstance(value, str) or not value:
        raise ConfigError("agent.socket: must be a non-empty string")
    return resolve_path(value, base, "agent.socket")


def parse_radius_config(
    document: Mapping[str, object], *, base: Path = Path("."), source: Path | None = None
) -> RadiusConfig:
    """Build a :class:`RadiusConfig` from a parsed agent.toml document."""
    if "radius" not in document:
        raise ConfigError("radius: table required (at least radius.clients_file)")
    table = _Table("radius", document["radius"], base)
    if "clients_file" not in table.data:
        raise ConfigError("radius.clients_file: required (the NAS addresses and their shared secrets)")
    clients_file = table.path("clients_file", Path())
    table.used.add("listen")
    listen = parse_listen(table.data.get("listen", [DEFAULT_LISTEN]))
    agent_socket = table.path("agent_socket", _agent_socket(document, base))
    config = RadiusConfig(
        clients_file=clients_file,
        agent_socket=agent_socket,
        listen=listen,
        require_message_authenticator=table.boolean("require_message_authenticator", True),
        mode=table.choice("mode", "code", MODES),
        rate_limit=table.number("rate_limit", 200.0, 1.0, 100000.0),
        timeout=table.number("timeout", 5.0, 0.1, 60.0),
        challenge_lifetime=table.integer("challenge_lifetime", 120, 1, 3600),
        source=source,
    )
    table.finish()
    return config


def load_radius_config(path: Path | None = None) -> RadiusConfig:
    """Read agent.toml (``path``, else ``$OTP_AGENT_CONFIG`` or /etc/otp-agent/agent.toml).

    :raises ConfigError: the file is missing, unreadable, not TOML, or ``[radius]`` is wrong;
        the message starts with the file's name.
    """
    path = path or default_config_path()
    document = read_toml(path)
    try:
        return parse_radius_config(document, base=path.parent, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
