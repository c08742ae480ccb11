"""Configuration: one TOML file parsed once into frozen dataclasses.

Every key is checked: an unknown key, a wrong type or a bad value raises one :class:`ConfigError`
naming the key (``policy.totp_window: must be an integer from 0 to 10``).  Paths may point
anywhere, so the daemon, the CLI and the helper can run unprivileged in a temporary directory.
A path given as ``credential:NAME`` is read from ``$CREDENTIALS_DIRECTORY/NAME`` (systemd
``LoadCredential=``).  No code is executed and nothing here reads argv.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from otp_agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/otp-agent/agent.toml")
CONFIG_ENVIRONMENT_VARIABLE = "OTP_AGENT_CONFIG"

T = TypeVar("T")


#: Where the agent listens unless ``[agent] socket`` says otherwise.
DEFAULT_SOCKET = "/run/otp-agent/agent.sock"


@dataclass(frozen=True)
class AgentConfig:
    """The ``[agent]`` table: the socket and how clients are treated."""

    socket: Path = Path(DEFAULT_SOCKET)
    socket_mode: int = 0o666
    client_timeout: float = 5.0
    max_clients: int = 64
    admin_group: str | None = None
    #: Members may call ``validate``, ``enrolled`` and ``send`` for any user (applications).
    validator_group: str | None = None
    #: The issuer new tokens get (shown by the phone app beside the account); None: the host name.
    issuer: str | None = None

    @property
    def default_issuer(self) -> str:
        """The configured issuer, or this host's name (so each server is told apart in the app)."""
        return self.issuer or socket.gethostname() or "otp-agent"


@dataclass(frozen=True)
class StoreConfig:
    """The ``[store]`` table: where tokens live."""

    backend: str = "sqlite"
    path: Path = Path("/var/lib/otp-agent/tokens.db")
    #: May hold the database password: kept out of ``repr``.
    dsn: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KeystoreConfig:
    """The ``[keystore]`` table: which key backend seals secrets and computes HMACs."""

    backend: str = "software"
    master_key_file: Path = Path("/etc/otp-agent/master.key")
    #: The parsed ``[keystore.payshield]`` table (a ``PayShieldConfig``) when backend = "payshield".
    payshield: Any = None


@dataclass(frozen=True)
class PolicyConfig:
    """The ``[policy]`` table: validation windows, throttling and the roll-out policy.

    Throttling (failures that decay, locks that double, disabling after repeated locks) is
    explained in :mod:`otp_agent.throttle`.
    """

    totp_window: int = 1
    hotp_lookahead: int = 10
    totp_max_drift: int = 4
    hotp_resync_window: int = 100
    totp_resync_window: int = 20
    lock_threshold: int = 5
    lock_base_seconds: int = 30
    lock_max_seconds: int = 3600
    failure_decay_seconds: int = 86400
    lock_decay_seconds: int = 7 * 86400
    disable_after_locks: int = 10
    unenrolled: str = "deny"
    password_service: str = "otp-agent-password"
    #: Out-of-band codes: seconds a sent code stays valid, seconds before another may be sent,
    #: and sends per user and hour (SMS pumping and mail flooding are the threats).
    oob_validity: int = 300
    oob_resend_interval: int = 60
    oob_max_per_hour: int = 10
    #: Self-service: who may enroll a token for themselves ("never", "first": only while they
    #: have no active token, "always"); whether users may list their own tokens and make their
    #: own backup codes; seconds a self-enrolled token waits for its confirmation.
    self_enroll: str = "never"
    self_service: bool = False
    pending_lifetime: int = 600
    #: Remembered hosts: seconds the same user, remote host and PAM service need no code again
    #: after an accepted one (0: off, the default; at most 12 hours).
    remember_seconds: int = 0
    #: "likely_first": one HMAC for the most likely factor, the rest of the window only when it
    #: does not match; "whole_window": the whole window in one batch (docs/benchmarks.md).
    window_strategy: str = "likely_first"


@dataclass(frozen=True)
class AuditConfig:
    """The ``[audit]`` table: where the decision log goes."""

    path: Path | None = Path("/var/log/otp-agent/audit.log")
    syslog: bool = False
    #: When the file cannot be written: "continue" (decide on, keep the lines in memory, raise
    #: a critical journal message and fail the status) or "reject" (refuse every decision).
    on_failure: str = "continue"


@dataclass(frozen=True)
class MetricsConfig:
    """The ``[metrics]`` table: the Prometheus textfile the agent writes (it opens no port)."""

    #: Where to write the metrics for node_exporter's textfile collector (None: not written;
    #: ``otpctl metrics`` prints them anyway).
    textfile: Path | None = None
    interval: float = 60.0


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    keystore: KeystoreConfig = field(default_factory=KeystoreConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: The ``[channel.NAME]`` tables: where out-of-band codes are delivered (otp_agent.channels).
    channels: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None


def default_config_path() -> Path:
    """Return ``$OTP_AGENT_CONFIG`` or ``/etc/otp-agent/agent.toml``."""
    return Path(os.environ.get(CONFIG_ENVIRONMENT_VARIABLE) or DEFAULT_CONFIG_PATH)


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML document at ``path`` (agent.toml, for the agent and for otp-radiusd).

    :raises ConfigError: the file is missing, unreadable, a directory or not TOML; the cause is
        the OSError, so a caller can tell "not there / not mine" from "wrong".
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except PermissionError as exc:
        raise ConfigError(f"{path}: configuration file not readable") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_config(path: Path | None = None) -> Config:
    """Read and check the configuration file.

    :raises ConfigError: the file is missing, unreadable, not TOML, or has a bad key.
    """
    path = path or default_config_path()
    document = read_toml(path)
    try:
        return parse_config(document, base=path.parent, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class _Table:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, name: str, data: object, base: Path) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{name}: must be a table")
        self.name, self.data, self.base = name, data, base
        self.used: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, default: T, check: Callable[[Any], bool], expect: str) -> T:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and not isinstance(default, bool):
            raise ConfigError(f"{self.key(key)}: must be {expect}")
        if not check(value):
            raise ConfigError(f"{self.key(key)}: must be {expect}")
        return value  # type: ignore[no-any-return]

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        return self.get(
            key,
            default,
            lambda v: isinstance(v, int) and low <= v <= high,
            f"an integer from {low} to {high}",
        )

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(
            key,
            default,
            lambda v: isinstance(v, (int, float)) and low <= v <= high,
            f"a number from {low} to {high}",
        )
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        return self.get(
            key, default, lambda v: v in choices, "one of " + ", ".join(f'"{c}"' for c in choices)
        )

    def string(self, key: str, default: str | None) -> str | None:
        return self.get(key, default, lambda v: isinstance(v, str) and v != "", "a non-empty string")

    def boolean(self, key: str, default: bool) -> bool:
        return self.get(key, default, lambda v: isinstance(v, bool), "true or false")

    def path(self, key: str, default: Path) -> Path:
        value = self.string(key, None)
        if value is None:
            return default
        return resolve_path(value, self.base, self.key(key))

    def finish(self, subtables: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.data) - self.used - set(subtables))
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def resolve_path(value: str, base: Path, key: str) -> Path:
    """Resolve a configured path: relative to the config file, or a systemd credential."""
    if value.startswith("credential:"):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        name = value.removeprefix("credential:")
        if not directory or not name or "/" in name:
            raise ConfigError(f"{key}: {value!r} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
        return Path(directory) / name
    path = Path(value)
    return path if path.is_absolute() else base / path


def parse_config(
    document: Mapping[str, object], *, base: Path = Path("."), source: Path | None = None
) -> Config:
    """Build a :class:`Config` from a parsed TOML document."""
    top = _Table("", document, base)
    sections = {
        name: _Table(name, document.get(name, {}), base)
        for name in ("agent", "store", "keystore", "policy", "audit", "metrics")
    }
    top.used.update(sections)
    top.used.add("channel")
    top.used.add("radius")  # read by otp-radiusd (otp_agent.radius), not by the agent
    top.finish()
    a, s, k, p, au = (sections[n] for n in ("agent", "store", "keystore", "policy", "audit"))

    agent = AgentConfig(
        socket=a.path("socket", AgentConfig.socket),
        socket_mode=a.integer("socket_mode", 0o666, 0, 0o777),
        client_timeout=a.number("client_timeout", 5.0, 0.1, 300.0),
        max_clients=a.integer("max_clients", 64, 1, 4096),
        admin_group=a.string("admin_group", None),
        validator_group=a.string("validator_group", None),
        issuer=a.string("issuer", None) or None,
    )
    a.finish()

    store = StoreConfig(
        backend=s.choice("backend", "sqlite", ("sqlite", "postgresql")),
        path=s.path("path", StoreConfig.path),
        dsn=s.string("dsn", None),
    )
    if store.backend == "postgresql" and not store.dsn:
        raise ConfigError('store.dsn: required when store.backend = "postgresql"')
    s.finish()

    backend = k.choice("backend", "software", ("software", "payshield"))
    payshield = None
    if backend == "payshield":
        if "payshield" not in k.data:
            raise ConfigError('keystore.payshield: table required when keystore.backend = "payshield"')
        from otp_agent.keystore.payshield.config import parse_payshield_config

        payshield = parse_payshield_config(dict(k.data["payshield"]))
    keystore = KeystoreConfig(
        backend=backend,
        master_key_file=k.path("master_key_file", KeystoreConfig.master_key_file),
        payshield=payshield,
    )
    k.finish(subtables=("payshield",))

    policy = PolicyConfig(
        totp_window=p.integer("totp_window", 1, 0, 10),
        hotp_lookahead=p.integer("hotp_lookahead", 10, 0, 100),
        totp_max_drift=p.integer("totp_max_drift", 4, 0, 40),
        hotp_resync_window=p.integer("hotp_resync_window", 100, 1, 1000),
        totp_resync_window=p.integer("totp_resync_window", 20, 1, 200),
        lock_threshold=p.integer("lock_threshold", 5, 1, 100),
        lock_base_seconds=p.integer("lock_base_seconds", 30, 1, 86400),
        lock_max_seconds=p.integer("lock_max_seconds", 3600, 1, 30 * 86400),
        failure_decay_seconds=p.integer("failure_decay_seconds", 86400, 0, 365 * 86400),
        lock_decay_seconds=p.integer("lock_decay_seconds", 7 * 86400, 0, 365 * 86400),
        disable_after_locks=p.integer("disable_after_locks", 10, 0, 1000),
        unenrolled=p.choice("unenrolled", "deny", ("deny", "allow")),
        password_service=p.string("password_service", "otp-agent-password") or "otp-agent-password",
        oob_validity=p.integer("oob_validity", 300, 30, 86400),
        oob_resend_interval=p.integer("oob_resend_interval", 60, 0, 3600),
        oob_max_per_hour=p.integer("oob_max_per_hour", 10, 1, 1000),
        self_enroll=p.choice("self_enroll", "never", ("never", "first", "always")),
        self_service=p.boolean("self_service", False),
        pending_lifetime=p.integer("pending_lifetime", 600, 60, 7 * 86400),
        remember_seconds=p.integer("remember_seconds", 0, 0, 43200),
        window_strategy=p.choice("window_strategy", "likely_first", ("likely_first", "whole_window")),
    )
    if policy.lock_max_seconds < policy.lock_base_seconds:
        raise ConfigError("policy.lock_max_seconds: must not be smaller than policy.lock_base_seconds")
    p.finish()

    audit_path: Path | None = AuditConfig.path
    if au.data.get("path") == "":
        au.used.add("path")
        audit_path = None
    else:
        audit_path = au.path("path", AuditConfig.path)  # type: ignore[arg-type]
    audit = AuditConfig(
        path=audit_path,
        syslog=au.boolean("syslog", False),
        on_failure=au.choice("on_failure", "continue", ("continue", "reject")),
    )
    au.finish()
    m = sections["metrics"]
    textfile = m.path("textfile", Path()) if m.data.get("textfile") else None
    m.used.add("textfile")
    metrics = MetricsConfig(textfile=textfile, interval=m.number("interval", 60.0, 5.0, 3600.0))
    m.finish()
    channels: Mapping[str, Any] = {}
    if "channel" in document:
        from otp_agent.channels.config import parse_channels

        channels = parse_channels(document["channel"], base)  # type: ignore[arg-type]
    return Config(
        agent=agent,
        store=store,
        keystore=keystore,
        policy=policy,
        audit=audit,
        metrics=metrics,
        channels=channels,
        source=source,
    )
