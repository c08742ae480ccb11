"""Delivery channels: configuration (every bad key named), templates, addresses and masking, the seam.

The SMTP channel against a real aiosmtpd server is in test_channels_smtp.py, the command
channel with real programs in test_channels_command.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otp_agent.channels import (
    CommandChannelConfig,
    Delivery,
    SmtpChannelConfig,
    check_address,
    open_channel,
    parse_channels,
)
from otp_agent.channels.addresses import mask, validate_address
from otp_agent.channels.command import CommandChannel
from otp_agent.channels.config import DEFAULT_MESSAGE_TEXT, message_template
from otp_agent.channels.delivery import render_message
from otp_agent.channels.smtp import SmtpChannel
from otp_agent.channels.template import scrub
from otp_agent.errors import ERRORS_BY_CODE, ChannelError, ConfigError, UsageError
from otp_agent.sensitive import Secret

CODE = "493817"
MAIL = {"kind": "smtp", "host": "relay.example.com", "from": "otp@example.com"}
COMMAND = {"kind": "command", "command": ["/usr/local/bin/send-sms", "--to", "{address}"]}


def parse(table: dict[str, Any], name: str = "mail", base: Path = Path("/etc/otp-agent")) -> Any:
    return parse_channels({name: table}, base)[name]


# --- configuration ---------------------------------------------------------------------------


def test_smtp_defaults() -> None:
    config = parse(MAIL)
    assert isinstance(config, SmtpChannelConfig)
    assert (config.host, config.port, config.security, config.sender) == (
        "relay.example.com",
        25,
        "starttls",
        "otp@example.com",
    )
    assert (config.username, config.password_file, config.ca_file) == (None, None, None)
    assert (config.subject, config.timeout, config.message.text) == (
        "Your one-time code",
        10.0,
        DEFAULT_MESSAGE_TEXT,
    )
    assert isinstance(open_channel(config), SmtpChannel)


def test_smtp_every_key_and_paths_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/otp-agent.service")
    config = parse(
        MAIL
        | {
            "port": 465,
            "security": "tls",
            "username": "otp-agent",
            "password_file": "credential:smtp-password",
            "ca_file": "relay-ca.pem",
            "subject": "Ihr Einmalcode",
            "timeout": 2.5,
            "message": "{user}: {code} ({issuer}, {minutes} min)\nDo not share it.",
        },
        base=tmp_path,
    )
    assert config.password_file == Path("/run/credentials/otp-agent.service/smtp-password")
    assert config.ca_file == tmp_path / "relay-ca.pem"
    assert (config.port, config.security, config.timeout, config.subject) == (
        465,
        "tls",
        2.5,
        "Ihr Einmalcode",
    )


def test_command_config_and_relative_program(tmp_path: Path) -> None:
    config = parse(
        {"kind": "command", "command": ["bin/send", "--to={address}", "{user}", "{serial}"]}, "sms", tmp_path
    )
    assert isinstance(config, CommandChannelConfig)
    assert config.executable == str(tmp_path / "bin" / "send")
    assert [t.text for t in config.arguments] == ["--to={address}", "{user}", "{serial}"]
    assert config.timeout == 10.0 and config.message.text == DEFAULT_MESSAGE_TEXT
    assert parse(COMMAND, "sms").executable == "/usr/local/bin/send-sms"
    assert (
        parse(COMMAND | {"command": ["sendsms"]}, "sms").executable == "sendsms"
    )  # looked up in /usr/bin:/bin
    assert isinstance(open_channel(config), CommandChannel)


@pytest.mark.parametrize(
    "table,error",
    [
        (MAIL | {"colour": "blue"}, "channel.mail.colour: unknown key"),
        ({"host": "h", "from": "a@example.com"}, 'channel.mail.kind: required, one of "smtp", "command"'),
        (MAIL | {"kind": "sms"}, "channel.mail.kind: required, one of"),
        (MAIL | {"port": "25"}, "channel.mail.port: must be an integer from 1 to 65535"),
        (MAIL | {"port": 0}, "channel.mail.port: must be an integer from 1 to 65535"),
        (MAIL | {"port": 65536}, "channel.mail.port: must be an integer from 1 to 65535"),
        (MAIL | {"port": True}, "channel.mail.port: must be an integer from 1 to 65535"),
        (MAIL | {"security": "ssl"}, 'channel.mail.security: must be one of "none", "starttls", "tls"'),
        (MAIL | {"security": False}, "channel.mail.security: must be one of"),
        ({"kind": "smtp", "from": "a@example.com"}, "channel.mail.host: required"),
        (MAIL | {"host": "relay example.com"}, "channel.mail.host: must be a host name or an IP address"),
        (
            MAIL | {"host": "relay.example.com\r\nX: y"},
            "channel.mail.host: must not contain a control character",
        ),
        (MAIL | {"host": 25}, "channel.mail.host: must be a non-empty string"),
        ({"kind": "smtp", "host": "h"}, "channel.mail.from: required"),
        (MAIL | {"from": "OTP <otp@example.com>"}, "channel.mail.from: must be an e-mail address"),
        (MAIL | {"from": "otp@example.com\r\nBcc: x@evil.example"}, "channel.mail.from: must not contain"),
        (MAIL | {"username": "u"}, "channel.mail.password_file: username and password_file go together"),
        (MAIL | {"password_file": "/p"}, "channel.mail.username: username and password_file go together"),
        (
            MAIL | {"username": "u", "password_file": "/p", "security": "none"},
            "channel.mail.username: a login needs security",
        ),
        (MAIL | {"password": "inline"}, "channel.mail.password: unknown key"),
        (
            MAIL | {"username": ["u"], "password_file": "/p"},
            "channel.mail.username: must be a non-empty string",
        ),
        (MAIL | {"ca_file": ""}, "channel.mail.ca_file: must be a non-empty string"),
        (
            MAIL | {"subject": "Code\r\nBcc: x@evil.example"},
            "channel.mail.subject: must not contain a control character",
        ),
        (
            MAIL | {"subject": "Code\nBcc: x@evil.example"},
            "channel.mail.subject: must not contain a control character",
        ),
        (MAIL | {"subject": "x" * 201}, "channel.mail.subject: must be at most 200 characters"),
        (MAIL | {"timeout": 0}, "channel.mail.timeout: must be a number from 0.1 to 300"),
        (MAIL | {"timeout": "10"}, "channel.mail.timeout: must be a number from 0.1 to 300"),
        (MAIL | {"timeout": 301}, "channel.mail.timeout: must be a number from 0.1 to 300"),
        (MAIL | {"message": "Hello {user}"}, "channel.mail.message: must contain {code}"),
        (MAIL | {"message": "{code} {secret}"}, "channel.mail.message: unknown placeholder '{secret}'"),
        (MAIL | {"message": "{code} {}"}, "channel.mail.message: unknown placeholder '{}'"),
        (MAIL | {"message": "{code} {0}"}, "channel.mail.message: unknown placeholder '{0}'"),
        (MAIL | {"message": "{code} {user.__class__}"}, "channel.mail.message: unknown placeholder"),
        (MAIL | {"message": "{code!r}"}, "channel.mail.message: placeholder {code} takes no conversion"),
        (MAIL | {"message": "{code:>8}"}, "channel.mail.message: placeholder {code} takes no conversion"),
        (MAIL | {"message": "{code"}, "channel.mail.message: unbalanced braces"),
        (MAIL | {"message": "code} {code}"}, "channel.mail.message: unbalanced braces"),
        (
            MAIL | {"message": "{code}\r\nBcc: x@evil.example"},
            "channel.mail.message: must not contain a control character U+000D",
        ),
        (
            MAIL | {"message": "{code}\x00"},
            "channel.mail.message: must not contain a control character U+0000",
        ),
        (
            MAIL | {"message": "{code}\u2028"},
            "channel.mail.message: must not contain a control character U+2028",
        ),
        (MAIL | {"message": 3}, "channel.mail.message: must be a non-empty string"),
        (MAIL | {"message": "{code}" + "x" * 2000}, "channel.mail.message: must be at most 2000 characters"),
        ({"kind": "command"}, "channel.mail.command: required"),
        (COMMAND | {"command": "/bin/send {address}"}, "channel.mail.command: must be a non-empty list"),
        (COMMAND | {"command": []}, "channel.mail.command: must be a non-empty list"),
        (COMMAND | {"command": ["/bin/send", 3]}, "channel.mail.command[1]: must be a non-empty string"),
        (COMMAND | {"command": ["/bin/send", ""]}, "channel.mail.command[1]: must be a non-empty string"),
        (COMMAND | {"command": ["/bin/send", "{code}"]}, "channel.mail.command[1]: must not contain {code}"),
        (
            COMMAND | {"command": ["/bin/send", "--text=Code {code}"]},
            "channel.mail.command[1]: must not contain {code}",
        ),
        (
            COMMAND | {"command": ["/bin/send", "{issuer}"]},
            "channel.mail.command[1]: unknown placeholder '{issuer}'",
        ),
        (COMMAND | {"command": ["/bin/{user}"]}, "channel.mail.command[0]: the program must be fixed"),
        (
            COMMAND | {"command": ["/bin/send", "a\x00b"]},
            "channel.mail.command[1]: must not contain a control",
        ),
        (COMMAND | {"command": ["/bin/send", "a\nb"]}, "channel.mail.command[1]: must not contain a control"),
        (COMMAND | {"host": "h"}, "channel.mail.host: unknown key"),
        (COMMAND | {"timeout": -1}, "channel.mail.timeout: must be a number from 0.1 to 300"),
        (COMMAND | {"message": "{address}"}, "channel.mail.message: unknown placeholder '{address}'"),
    ],
)
def test_every_bad_key_is_named(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(table)
    assert error in str(caught.value)


def test_bad_channel_tables_and_names() -> None:
    with pytest.raises(ConfigError, match=r"^channel: must be a table"):
        parse_channels([], Path("."))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^channel\.mail: must be a table"):
        parse_channels({"mail": "smtp"}, Path("."))
    with pytest.raises(ConfigError, match="a channel name is"):
        parse_channels({"my mail": MAIL}, Path("."))
    with pytest.raises(ConfigError, match="credential"):
        parse(MAIL | {"username": "u", "password_file": "credential:x"})  # no $CREDENTIALS_DIRECTORY
    assert parse_channels({}, Path(".")) == {}


def test_the_dataclass_checks_itself() -> None:
    with pytest.raises(ConfigError, match="channel.x.security"):
        SmtpChannelConfig(name="x", host="h", sender="a@example.com", security="ssl")
    with pytest.raises(ConfigError, match="channel.x.password_file"):
        SmtpChannelConfig(name="x", host="h", sender="a@example.com", username="u")


# --- templates -------------------------------------------------------------------------------


def delivery(**changes: Any) -> Delivery:
    values: dict[str, Any] = {
        "user": "alice",
        "serial": "OOB0001",
        "address": "alice@example.com",
        "code": Secret(CODE.encode()),
        "issuer": "Example",
        "validity_seconds": 300,
    }
    return Delivery(**(values | changes))


@pytest.mark.parametrize("seconds,minutes", [(0, 1), (1, 1), (59, 1), (60, 1), (61, 2), (300, 5), (301, 6)])
def test_minutes_are_rounded_up_and_at_least_one(seconds: int, minutes: int) -> None:
    assert delivery(validity_seconds=seconds).minutes == minutes


def test_rendering() -> None:
    template = message_template(DEFAULT_MESSAGE_TEXT, "message")
    assert (
        render_message(template, delivery(), CODE) == f"Your Example code is {CODE}. It expires in 5 minutes."
    )
    literal = message_template("{{code}} is {code} for {user}", "m")
    # A value is never parsed again: braces in a user name are just characters.
    assert render_message(literal, delivery(user="{code}"), CODE) == f"{{code}} is {CODE} for {{code}}"
    with pytest.raises(ChannelError, match="the user contains a control character") as caught:
        render_message(template, delivery(user="alice\r\nBcc: x"), CODE)
    assert CODE not in str(caught.value)


def test_scrub_removes_the_code_control_characters_and_cuts() -> None:
    assert (
        scrub(f"bad code {CODE}\r\nagain {CODE}\x1b[31m".encode(), [CODE])
        == "bad code ****** again ****** [31m"
    )
    assert len(scrub("x" * 5000)) == 200
    assert scrub(b"\xff\xfe broken") == "\ufffd\ufffd broken"


# --- the seam --------------------------------------------------------------------------------


def test_delivery_keeps_the_code_out_of_its_repr() -> None:
    for code in (CODE, Secret(CODE.encode())):
        shown = repr(delivery(code=code))
        assert CODE not in shown and "alice@example.com" in shown
        assert delivery(code=code).code_text() == CODE
    assert delivery() == delivery(code="000000")  # the code takes no part in comparisons
    for bad in ("", " 123", "12\n34", Secret(b"\xff")):
        with pytest.raises(ChannelError):
            delivery(code=bad).code_text()


def test_channel_error_has_its_code_and_exit_status() -> None:
    assert (ChannelError.code, ChannelError.exit_status) == ("channel", 4)
    assert ERRORS_BY_CODE["channel"] is ChannelError


# --- addresses -------------------------------------------------------------------------------

VALID_EMAILS = [
    "a@example.com",
    "alice.smith+otp@mail.example.co.uk",
    "ALICE_1%x@EXAMPLE.COM",
    "a-b@xn--bcher-kva.example",
    "x" * 64 + "@example.com",
    "a@" + ".".join(["d" * 63] * 3) + ".com",
]
INVALID_EMAILS = [
    "",
    "alice",
    "alice@",
    "@example.com",
    "alice@example",
    "alice@@example.com",
    "a@b@example.com",
    "alice @example.com",
    "alice@example.com ",
    "alice@example.com\r\nBcc: eve@evil.example",
    "alice@example.com\n",
    "alice\x00@example.com",
    "alice\t@example.com",
    ".alice@example.com",
    "alice.@example.com",
    "al..ice@example.com",
    "-oQ/tmp/x@example.com",
    "-alice@example.com",
    '"alice"@example.com',
    "alice(comment)@example.com",
    "alice<x>@example.com",
    "alice;rm@example.com",
    "alice@[192.0.2.1]",
    "alice@192.0.2.1",
    "alice@-example.com",
    "alice@example-.com",
    "alice@exa_mple.com",
    "alice@example..com",
    "alice@.example.com",
    "jörg@example.com",
    "alice@bücher.example",
    "x" * 65 + "@example.com",
    "a@" + "d" * 64 + ".com",
    "a@" + ".".join(["d" * 63] * 4) + ".com",
]
VALID_PHONES = ["+49151234589", "+4915112345678", "+12025550123", "+12345678", "+123456789012345"]
INVALID_PHONES = [
    "+1234567",
    "+1234567890123456",
    "+0151234589",
    "49151234589",
    "+49 151 234589",
    "+49-151-234589",
    "+(49)151234589",
    "+49151234589\n",
    "+49151234589\r\nX",
    "+٤٩١٥١٢٣٤٥٨٩",
    "++49151234589",
]


@pytest.mark.parametrize("address", VALID_EMAILS + VALID_PHONES)
def test_valid_addresses(address: str) -> None:
    assert validate_address(address) == address


@pytest.mark.parametrize("address", INVALID_EMAILS + INVALID_PHONES)
def test_invalid_addresses(address: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_address(address)
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
    assert mask(address) == "***"


def test_addresses_by_channel() -> None:
    mail, sms = parse(MAIL), parse(COMMAND, "sms")
    assert check_address(mail, "alice@example.com") == "alice@example.com"
    with pytest.raises(UsageError, match="a telephone number cannot be used with this channel"):
        check_address(mail, "+49151234589")
    assert check_address(sms, "+49151234589") == "+49151234589"
    assert check_address(sms, "alice@example.com") == "alice@example.com"
    with pytest.raises(UsageError, match="E.164"):
        check_address(sms, "+49 151")
    with pytest.raises(UsageError, match="e-mail"):
        check_address(sms, "alice@@example.com")
    with pytest.raises(UsageError, match="non-empty string"):
        check_address(sms, 49151234589)


@pytest.mark.parametrize(
    "address,masked",
    [
        ("alice@example.com", "a***@example.com"),
        ("a@example.com", "a***@example.com"),
        ("Bob.Smith+otp@mail.example.org", "B***@mail.example.org"),
        ("+49151234589", "+49*******89"),
        ("+4915112345678", "+49*********78"),
        ("+12345678", "+12****78"),
        ("+123456789012345", "+12***********45"),
        ("not an address", "***"),
        ("", "***"),
    ],
)
def test_masking(address: str, masked: str) -> None:
    assert mask(address) == masked
