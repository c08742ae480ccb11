"""The ``[channel.NAME]`` tables of agent.toml: parsing and validation (see docs/channels.md).

:func:`parse_channels` takes the ``channel`` table of the parsed TOML document and returns one
frozen :class:`SmtpChannelConfig` or :class:`CommandChannelConfig` per name.  An unknown key,
a wrong type or a bad value raises :class:`ConfigError` naming the full key
(``channel.mail.port: must be an integer from 1 to 65535``).  No password is ever inline
(``password_file`` is read at delivery time) and nothing here touches the network or a file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from otp_agent.channels.addresses import ADDRESS_KINDS, AddressKind, email_problem
from otp_agent.channels.template import Template, bad_character, parse_template
from otp_agent.errors import ConfigError

MESSAGE_PLACEHOLDERS = ("code", "issuer", "minutes", "user")
ARGV_PLACEHOLDERS = ("address", "user", "serial")
DEFAULT_MESSAGE_TEXT = "Your {issuer} code is {code}. It expires in {minutes} minutes."
DEFAULT_SUBJECT = "Your one-time code"
SECURITY_CHOICES = ("none", "starttls", "tls")
MAX_MESSAGE_LENGTH = 2000
MAX_SUBJECT_LENGTH = 200
MAX_ARGV_ITEMS = 64
MAX_ARGV_ITEM_LENGTH = 4096
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 300.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
_HOST = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*",
    re.ASCII,
)


def message_template(text: str, key: str) -> Template:
    """Parse a ``message`` template: ``{code}`` required; LF and tab allowed, CR refused."""
    if len(text) > MAX_MESSAGE_LENGTH:
        raise ConfigError(f"{key}: must be at most {MAX_MESSAGE_LENGTH} characters")
    return parse_template(text, key, MESSAGE_PLACEHOLDERS, required=("code",), allowed_characters="\n\t")


DEFAULT_MESSAGE = message_template(DEFAULT_MESSAGE_TEXT, "message")


@dataclass(frozen=True)
class SmtpChannelConfig:
    """A ``kind = "smtp"`` channel: mail through a relay (smtplib)."""

    kind: ClassVar[str] = "smtp"
    #: The addresses this channel can deliver to.
    address_kinds: ClassVar[tuple[AddressKind, ...]] = ("email",)

    name: str
    host: str
    sender: str
    port: int = 25
    security: str = "starttls"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    subject: str = DEFAULT_SUBJECT
    timeout: float = 10.0
    message: Template = DEFAULT_MESSAGE

    def __post_init__(self) -> None:
        prefix = f"channel.{self.name}"
        if self.security not in SECURITY_CHOICES:
            raise ConfigError(
                f"{prefix}.security: must be one of " + ", ".join(f'"{c}"' for c in SECURITY_CHOICES)
            )
        if (self.username is None) != (self.password_file is None):
            missing = "password_file" if self.password_file is None else "username"
            raise ConfigError(f"{prefix}.{missing}: username and password_file go together")
        if self.username is not None and self.security == "none":
            raise ConfigError(
                f'{prefix}.username: a login needs security = "starttls" or "tls" '
                "(the password would cross the network in clear)"
            )


@dataclass(frozen=True)
class CommandChannelConfig:
    """A ``kind = "command"`` channel: a program run without a shell, the message on its stdin."""

    kind: ClassVar[str] = "command"
    address_kinds: ClassVar[tuple[AddressKind, ...]] = ADDRESS_KINDS

    name: str
    #: The program (an absolute path, or a bare name looked up in /usr/bin:/bin).
    executable: str
    #: The arguments after the program, each a template of {address}, {user}, {serial}.
    arguments: tuple[Template, ...] = ()
    timeout: float = 10.0
    message: Template = DEFAULT_MESSAGE
    #: The ``command`` list as configured (for display).
    command: tuple[str, ...] = field(default=(), compare=False)


ChannelConfig = SmtpChannelConfig | CommandChannelConfig


class _Table:
    """One ``[channel.NAME]`` table, with typed getters that remember the keys used."""

    def __init__(self, name: str, data: Mapping[str, object], base: Path) -> None:
        self.prefix, self.data, self.base = f"channel.{name}", data, base
        self.used: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    def raw(self, key: str) -> object:
        self.used.add(key)
        return self.data.get(key)

    def string(self, key: str, default: str | None, *, limit: int = 1024) -> str | None:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.key(key)}: must be a non-empty string")
        if len(value) > limit:
            raise ConfigError(f"{self.key(key)}: must be at most {limit} characters")
        return value

    def plain(self, key: str, default: str | None, *, limit: int = 1024) -> str | None:
        """A string without control characters (it may go into a header or a command line)."""
        value = self.string(key, default, limit=limit)
        problem = bad_character(value) if value is not None else None
        if problem:
            raise ConfigError(f"{self.key(key)}: must not contain a {problem}")
        return value

    def required(self, key: str) -> str:
        value = self.plain(key, None)
        if value is None:
            raise ConfigError(f"{self.key(key)}: required")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{self.key(key)}: must be an integer from {low} to {high}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{self.key(key)}: must be a number from {low:g} to {high:g}")
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if value not in choices:
            raise ConfigError(f"{self.key(key)}: must be one of " + ", ".join(f'"{c}"' for c in choices))
        return str(value)

    def path(self, key: str) -> Path | None:
        value = self.plain(key, None)
        if value is None:
            return None
        from otp_agent.config import resolve_path  # late: otp_agent.config imports this module

        return resolve_path(value, self.base, self.key(key))

    def message(self) -> Template:
        text = self.string("message", None, limit=MAX_MESSAGE_LENGTH)
        return DEFAULT_MESSAGE if text is None else message_template(text, self.key("message"))

    def finish(self) -> None:
        unknown = sorted(str(k) for k in set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _host(table: _Table) -> str:
    host = table.required("host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise ConfigError(f"{table.key('host')}: must be a host name or an IP address") from None
    return host


def _smtp(name: str, table: _Table) -> SmtpChannelConfig:
    sender = table.required("from")
    problem = email_problem(sender)
    if problem:
        raise ConfigError(f"{table.key('from')}: must be an e-mail address (local@domain): {problem}")
    return SmtpChannelConfig(
        name=name,
        host=_host(table),
        sender=sender,
        port=table.integer("port", 25, 1, 65535),
        security=table.choice("security", "starttls", SECURITY_CHOICES),
        username=table.plain("username", None, limit=256),
        password_file=table.path("password_file"),
        ca_file=table.path("ca_file"),
        subject=table.plain("subject", DEFAULT_SUBJECT, limit=MAX_SUBJECT_LENGTH) or DEFAULT_SUBJECT,
        timeout=table.number("timeout", 10.0, MIN_TIMEOUT, MAX_TIMEOUT),
        message=table.message(),
    )


def _command(name: str, table: _Table) -> CommandChannelConfig:
    key = table.key("command")
    argv = table.raw("command")
    if argv is None:
        raise ConfigError(f"{key}: required (a list: the program, then its arguments)")
    if not isinstance(argv, list) or not argv or len(argv) > MAX_ARGV_ITEMS:
        raise ConfigError(f"{key}: must be a non-empty list of at most {MAX_ARGV_ITEMS} strings")
    for index, item in enumerate(argv):
        if not isinstance(item, str) or not item or len(item) > MAX_ARGV_ITEM_LENGTH:
            raise ConfigError(
                f"{key}[{index}]: must be a non-empty string of at most {MAX_ARGV_ITEM_LENGTH} characters"
            )
    refused = {"code": "the code goes to the command's standard input, never into its argv"}
    program_template = parse_template(argv[0], f"{key}[0]", ARGV_PLACEHOLDERS, refused=refused)
    if program_template.placeholders:
        raise ConfigError(f"{key}[0]: the program must be fixed: no placeholder in it")
    program = program_template.render({})
    if "/" in program and not program.startswith("/"):
        program = str(table.base / program)
    arguments = tuple(
        parse_template(item, f"{key}[{index}]", ARGV_PLACEHOLDERS, refused=refused)
        for index, item in enumerate(argv[1:], start=1)
    )
    return CommandChannelConfig(
        name=name,
        executable=program,
        arguments=arguments,
        timeout=table.number("timeout", 10.0, MIN_TIMEOUT, MAX_TIMEOUT),
        message=table.message(),
        command=tuple(argv),
    )


def parse_channels(document_table: Mapping[str, object], base: Path) -> dict[str, ChannelConfig]:
    """Check the ``channel`` table (NAME -> table) and build each channel's configuration.

    :param base: the directory relative paths are taken from (that of agent.toml).
    :raises ConfigError: naming the full key of the first problem.
    """
    if not isinstance(document_table, Mapping):
        raise ConfigError("channel: must be a table of [channel.NAME] tables")
    channels: dict[str, ChannelConfig] = {}
    for name, data in document_table.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"channel.{name!r}: a channel name is 1 to 64 letters, digits, _ and -, beginning with a letter or digit"
            )
        if not isinstance(data, Mapping):
            raise ConfigError(f"channel.{name}: must be a table")
        table = _Table(name, data, base)
        kind = table.raw("kind")
        if kind == "smtp":
            channels[name] = _smtp(name, table)
        elif kind == "command":
            channels[name] = _command(name, table)
        else:
            raise ConfigError(f'{table.key("kind")}: required, one of "smtp", "command"')
        table.finish()
    return channels
