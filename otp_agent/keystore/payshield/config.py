"""The ``[keystore.payshield]`` configuration table: parsing and validation.

Owns every key of the table (documented in docs/hsm.md) and turns the TOML dictionary into a
frozen :class:`PayShieldConfig`.  Any unknown key, wrong type or bad value raises ConfigError
naming the full key.  No key material is ever inline: ZMK, fingerprint and self-test keys are
file paths.

The link to the HSM carries the HMACs the codes are made of, so it is TLS with certificate
verification unless ``insecure_plaintext = true`` says otherwise; the dataclass itself refuses a
plain-TCP configuration without that opt-in, however it was built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from otp_agent.errors import ConfigError

PREFIX = "keystore.payshield"
_TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
_T = TypeVar("_T")
#: Default name of the self-test file, in the directory of the fingerprint key.
SELF_TEST_FILE_NAME = "payshield-self-test.kb"


@dataclass(frozen=True)
class HsmAddress:
    """One HSM host port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PayShieldConfig:
    """Validated settings of the payShield key backend (see docs/hsm.md for each key)."""

    hosts: tuple[HsmAddress, ...]
    lmk_check_value: str
    header_length: int = 4
    connect_timeout: float = 3.0
    request_timeout: float = 2.0
    pool_size: int = 2
    max_in_flight: int = 64
    pipelining: bool = True
    calls_per_second: float = 0.0
    health_interval: float = 30.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    retry_floor: float = 0.5
    key_format: str = "keyblock"
    bind_identity: bool = True
    zmk_file: Path | None = None
    zmk_key_block_file: Path | None = None
    fingerprint_key_file: Path | None = Path("/etc/otp-agent/payshield-fingerprint.kb")
    self_test_key_file: Path | None = None
    tls: bool = True
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str | None = None
    insecure_plaintext: bool = False

    def __post_init__(self) -> None:
        """Refuse plain TCP without the opt-in, and the opt-in together with TLS settings."""
        if not self.tls and not self.insecure_plaintext:
            raise ConfigError(
                f"{PREFIX}.tls: false would send the HMACs the codes are made of in clear and "
                "let anyone on the path forge them; set insecure_plaintext = true if plain TCP "
                "is really wanted (see docs/hsm.md)"
            )
        if self.tls and self.insecure_plaintext:
            raise ConfigError(f"{PREFIX}.insecure_plaintext: true contradicts tls = true; remove one of them")
        if self.insecure_plaintext:
            for name in _TLS_KEYS:
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{PREFIX}.{name}: is a TLS key, but insecure_plaintext "
                        "= true turns TLS off; remove one of them"
                    )

    @property
    def self_test_path(self) -> Path | None:
        """The known-answer self-test file: as configured, or beside the fingerprint key."""
        if self.self_test_key_file is not None:
            return self.self_test_key_file
        if self.fingerprint_key_file is None:
            return None
        return self.fingerprint_key_file.with_name(SELF_TEST_FILE_NAME)

    @property
    def transport_label(self) -> str:
        """How the link is protected, as shown by ``otpctl status``."""
        return "tls" if self.tls else "plaintext (insecure)"


def _address(key: str, value: str) -> HsmAddress:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9_.-]+):(\d{1,5})", value)
    if match is None:
        raise ConfigError(f'{key}: "{value}" is not "host:port" (IPv6 as "[addr]:port")')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is not from 1 to 65535")
    return HsmAddress(host, port)


def _integer(low: int, high: int) -> Callable[[str, object], int]:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: must be an integer from {low} to {high}")
        return value

    return check


def _number(low: float, high: float, zero: bool = False) -> Callable[[str, object], float]:
    def check(key: str, value: object) -> float:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and (low <= value <= high or (zero and value == 0))
        )
        if not ok:
            extra = " (or 0 to disable)" if zero else ""
            raise ConfigError(f"{key}: must be a number from {low:g} to {high:g}{extra}")
        return float(value)  # type: ignore[arg-type]

    return check


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false")
    return value


def _path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"{key}: must be a non-empty path string")
    return Path(value)


def _string(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.isprintable() or not value:
        raise ConfigError(f"{key}: must be a non-empty string")
    return value


def _hosts(key: str, value: object) -> tuple[HsmAddress, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{key}: must be a non-empty list of "host:port" strings')
    hosts = tuple(_address(key, v) for v in value)
    if len(set(hosts)) != len(hosts):
        raise ConfigError(f"{key}: lists the same HSM twice")
    return hosts


def _check_value(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f]{6}|[0-9A-Fa-f]{16}", value):
        raise ConfigError(f"{key}: must be the LMK check value, 6 or 16 hexadecimal digits")
    return value.upper()


def _key_format(key: str, value: object) -> str:
    if value not in ("keyblock", "variant"):
        raise ConfigError(f'{key}: must be "keyblock" or "variant"')
    return str(value)


_KEYS: dict[str, Callable[[str, object], object]] = {
    "hosts": _hosts,
    "lmk_check_value": _check_value,
    "header_length": _integer(0, 32),
    "connect_timeout": _number(0.01, 60),
    "request_timeout": _number(0.01, 60),
    "pool_size": _integer(1, 64),
    "max_in_flight": _integer(1, 1000),
    "pipelining": _boolean,
    "calls_per_second": _number(1, 100000, zero=True),
    "health_interval": _number(0.05, 3600, zero=True),
    "retry_initial": _number(0.01, 600),
    "retry_max": _number(0.01, 3600),
    "retry_floor": _number(0.01, 60),
    "key_format": _key_format,
    "bind_identity": _boolean,
    "zmk_file": _path,
    "zmk_key_block_file": _path,
    "fingerprint_key_file": _path,
    "self_test_key_file": _path,
    "tls": _boolean,
    "tls_ca_file": _path,
    "tls_cert_file": _path,
    "tls_key_file": _path,
    "tls_server_name": _string,
    "insecure_plaintext": _boolean,
}

#: Logged at start-up and shown by ``otpctl status`` when the link is plain TCP.
PLAINTEXT_WARNING = (
    f"{PREFIX}.insecure_plaintext = true: the HSM link is plain TCP; anyone on the path reads "
    "the HMACs of every login (the codes of the window) and can forge answers that accept any "
    "code"
)


def parse_payshield_config(table: dict[str, object]) -> PayShieldConfig:
    """Validate the ``[keystore.payshield]`` table and return a :class:`PayShieldConfig`.

    :raises ConfigError: a key is unknown, missing, of the wrong type or out of range; the
        message starts with the full key name.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{PREFIX}: must be a table")
    values: dict[str, object] = {}
    for name, value in table.items():
        check = _KEYS.get(name)
        if check is None:
            raise ConfigError(f"{PREFIX}.{name}: unknown key")
        values[name] = check(f"{PREFIX}.{name}", value)
    for required in ("hosts", "lmk_check_value"):
        if required not in values:
            raise ConfigError(f"{PREFIX}.{required}: missing (required)")
    _check_transport(values)
    config = PayShieldConfig(**values)  # type: ignore[arg-type]
    if config.header_length == 0 and config.max_in_flight > 1 and "max_in_flight" in values:
        raise ConfigError(
            f"{PREFIX}.max_in_flight: must be 1 when header_length is 0 "
            "(responses cannot be matched without a header)"
        )
    if config.retry_max < config.retry_initial:
        raise ConfigError(f"{PREFIX}.retry_max: must not be smaller than retry_initial")
    if (config.zmk_file is None) != (config.zmk_key_block_file is None):
        name = "zmk_key_block_file" if config.zmk_key_block_file is None else "zmk_file"
        raise ConfigError(f"{PREFIX}.{name}: zmk_file and zmk_key_block_file go together")
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        name = "tls_key_file" if config.tls_key_file is None else "tls_cert_file"
        raise ConfigError(f"{PREFIX}.{name}: tls_cert_file and tls_key_file go together")
    return config


def _check_transport(values: dict[str, object]) -> None:
    """``insecure_plaintext = true`` alone turns TLS off; PayShieldConfig checks the rest."""
    if values.get("insecure_plaintext") is True and "tls" not in values:
        values["tls"] = False
