"""The RADIUS clients (the NASes): the clients file, address lookup and per-client rate limits.

The clients file has one client a line, ``ADDRESS_OR_NETWORK SECRET [NAME]``; blank lines and
everything from a word that starts with ``#`` are ignored (a secret may contain ``#``, it may
not start with one).  The file must be a regular file of root or of the user otp-radiusd runs
as, with no permission for group or others (mode 0600 or stricter): it holds every NAS's shared
secret.  A datagram from an address no line covers is dropped; of several networks that cover
an address, the longest prefix wins.  Secrets never appear in a ``repr``, a log line or an error.

:class:`RateLimiter` is a token bucket per source address; :class:`ThrottledLog` keeps a flood of
identical warnings to one line per interval, with a count.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from otp_agent.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A shared secret shorter than this is accepted with a warning (RFC 2865 section 3 asks for 16).
RECOMMENDED_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256
MAX_NAME_LENGTH = 64
#: Senders with a bucket at once; a new one is refused while all are in use.
MAX_BUCKETS = 65536
#: Kinds of throttled log lines remembered before the stale ones are forgotten.
MAX_KINDS = 1024


@dataclass(frozen=True)
class Client:
    """One line of the clients file."""

    network: IPNetwork
    name: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class ClientTable:
    """The clients, most specific network first."""

    clients: tuple[Client, ...]
    source: Path | None = None
    #: Names of clients whose secret is shorter than RECOMMENDED_SECRET_LENGTH.
    weak: tuple[str, ...] = ()

    def lookup(self, address: IPAddress) -> Client | None:
        """The client covering ``address`` (an IPv4-mapped IPv6 address counts as IPv4)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for client in self.clients:
            if address.version == client.network.version and address in client.network:
                return client
        return None


def source_address(host: str) -> IPAddress:
    """The address of a datagram's sender, as the socket gave it (a scope suffix dropped)."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _secure_open(path: Path, key: str) -> str:
    """Read the file after checking, on the open descriptor, who owns it and its mode."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{key}: {path}: not readable by uid {os.geteuid()}") from None
    except OSError as exc:
        raise ConfigError(
            f"{key}: {path}: cannot be opened ({exc.strerror or exc}; a symbolic link?)"
        ) from None
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{key}: {path}: not a regular file")
        if status.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"{key}: {path}: belongs to uid {status.st_uid}; it must belong to root or to the "
                f"user otp-radiusd runs as (uid {os.geteuid()})"
            )
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o177:
            raise ConfigError(
                f"{key}: {path}: mode {mode:04o} lets others than its owner at the shared secrets; "
                f"it must be 0600 or stricter (chmod 600 {path})"
            )
        data = handle.read(1 << 20)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path}: not UTF-8 text") from None


def parse_clients(text: str, where: str = "clients file") -> ClientTable:
    """Parse the clients file's text.  :raises ConfigError: naming the line (never the secret)."""
    clients: list[Client] = []
    weak: list[str] = []
    seen: dict[IPNetwork, int] = {}
    names: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        for index, word in enumerate(words):
            if word.startswith("#"):
                words = words[:index]
                break
        if not words:
            continue
        at = f"{where}, line {number}"
        if len(words) < 2:
            raise ConfigError(f"{at}: needs ADDRESS_OR_NETWORK SECRET [NAME]")
        if len(words) > 3:
            raise ConfigError(
                f"{at}: too many words (ADDRESS_OR_NETWORK SECRET [NAME]; a secret has no spaces)"
            )
        try:
            network = ipaddress.ip_network(words[0], strict=True)
        except ValueError as exc:
            raise ConfigError(f"{at}: {words[0]!r} is not an address or network ({exc})") from None
        if network in seen:
            raise ConfigError(f"{at}: {network} is already given on line {seen[network]}")
        seen[network] = number
        secret = words[1].encode("utf-8")
        if len(secret) > MAX_SECRET_LENGTH:
            raise ConfigError(f"{at}: the secret is longer than {MAX_SECRET_LENGTH} bytes")
        name = words[2] if len(words) == 3 else words[0]
        if len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise ConfigError(f"{at}: the name must be printable, at most {MAX_NAME_LENGTH} characters")
        if name in names:
            raise ConfigError(f"{at}: the name {name!r} is already given on line {names[name]}")
        names[name] = number
        if len(secret) < RECOMMENDED_SECRET_LENGTH:
            weak.append(name)
        clients.append(Client(network, name, secret))
    if not clients:
        raise ConfigError(f"{where}: lists no client")
    clients.sort(key=lambda client: client.network.prefixlen, reverse=True)
    return ClientTable(tuple(clients), weak=tuple(weak))


def load_clients(path: Path, key: str = "radius.clients_file") -> ClientTable:
    """Read and check the clients file.  :raises ConfigError: naming ``key``, the file and line."""
    table = parse_clients(_secure_open(path, key), f"{key}: {path}")
    return ClientTable(table.clients, path, table.weak)


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, at most ``rate`` (one second) stored.

    Used from the event loop only.  Buckets that have refilled are forgotten now and then, so
    that the table stays as small as the set of recently active senders; when
    :data:`MAX_BUCKETS` senders are active at once, a new one is refused.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}
        self._pruned = clock()

    def allow(self, key: object) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        now = self._clock()
        if key not in self._buckets and len(self._buckets) >= MAX_BUCKETS:
            self._prune(now)
            if len(self._buckets) >= MAX_BUCKETS:  # a flood from many addresses of a wide network
                return False
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if now - self._pruned > 10.0:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        self._pruned = now
        full = [
            k
            for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]


class ThrottledLog:
    """Logs one kind of repeated event at most once per ``interval`` s, with how often it happened.

    The first occurrence is logged at once; the ones within the interval are counted and reported
    with the next line.  Thread-safe.
    """

    def __init__(self, logger: logging.Logger, level: int, interval: float = 5.0) -> None:
        self._logger, self._level, self.interval = logger, level, interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def note(self, kind: str, message: str, *args: object) -> None:
        """Count one event of ``kind``; log ``message % args`` unless one was logged lately."""
        now = time.monotonic()
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            if now - self._last.get(kind, -1e9) < self.interval:
                return
            if len(self._last) >= MAX_KINDS:  # many senders (a wide network): forget the old ones
                for old in [k for k, at in self._last.items() if now - at >= self.interval]:
                    del self._last[old]
                    self._counts.pop(old, None)
            self._last[kind] = now
            count = self._counts.pop(kind)
        suffix = f" ({count} such since the last report)" if count > 1 else ""
        self._logger.log(self._level, message + suffix, *args)
