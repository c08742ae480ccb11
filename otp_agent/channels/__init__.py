"""Delivery channels: how an out-of-band one-time code reaches its user (see docs/channels.md).

The seam for the rest of the agent:

* :class:`Delivery` — the user, the token serial, the address, the code (a
  :class:`~otp_agent.sensitive.Secret` or a string, kept out of ``repr``), the issuer and the
  validity in seconds;
* :class:`Channel` — anything with ``deliver(delivery) -> None`` that raises
  :class:`~otp_agent.errors.ChannelError` when the code could not be handed over;
* :func:`open_channel` — the channel for one ``[channel.NAME]`` configuration
  (:func:`~otp_agent.channels.config.parse_channels` builds those);
* :func:`check_address` — whether an address can be used with a channel (at enrolment).

Nothing of a code is stored, logged or put into an exception, argv or environment here: it goes
into the mail body or the command's standard input, and nowhere else.
"""

from __future__ import annotations

from otp_agent.channels.addresses import mask, validate_address
from otp_agent.channels.config import (
    ChannelConfig,
    CommandChannelConfig,
    SmtpChannelConfig,
    parse_channels,
)
from otp_agent.channels.delivery import Channel, Delivery

__all__ = [
    "Channel",
    "ChannelConfig",
    "CommandChannelConfig",
    "Delivery",
    "SmtpChannelConfig",
    "check_address",
    "mask",
    "open_channel",
    "parse_channels",
]


def open_channel(config: ChannelConfig) -> Channel:
    """The channel that delivers according to ``config`` (nothing is connected or run yet)."""
    if isinstance(config, SmtpChannelConfig):
        from otp_agent.channels.smtp import SmtpChannel

        return SmtpChannel(config)
    if isinstance(config, CommandChannelConfig):
        from otp_agent.channels.command import CommandChannel

        return CommandChannel(config)
    raise TypeError(f"not a channel configuration: {type(config).__name__}")


def check_address(config: ChannelConfig, address: object) -> str:
    """Return ``address`` if the channel can deliver to it.

    An SMTP channel takes e-mail addresses; a command channel takes e-mail addresses and E.164
    telephone numbers (see :mod:`otp_agent.channels.addresses`).

    :raises UsageError: the address is invalid or of the wrong kind (shown with its reason).
    """
    return validate_address(address, config.address_kinds)
