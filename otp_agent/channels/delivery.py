"""What a channel is given (:class:`Delivery`) and what a channel is (:class:`Channel`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from otp_agent.channels.template import Template, check_value
from otp_agent.errors import ChannelError
from otp_agent.sensitive import Secret


@dataclass(frozen=True)
class Delivery:
    """One code to deliver to one user.

    The code is kept out of ``repr`` and comparisons; pass it as a :class:`Secret` (ASCII
    bytes) where it can be, so that it is redacted wherever the object travels.
    """

    user: str
    serial: str
    address: str
    code: Secret | str = field(repr=False, compare=False)
    issuer: str
    validity_seconds: int

    @property
    def minutes(self) -> int:
        """The validity in whole minutes, rounded up, at least 1."""
        return max(1, math.ceil(self.validity_seconds / 60))

    def code_text(self) -> str:
        """The code as text (to be put into the message only)."""
        code = self.code
        if isinstance(code, Secret):
            try:
                text = code.reveal().decode("ascii")
            except UnicodeDecodeError:
                raise ChannelError("the code is not ASCII") from None
        else:
            text = code
        if not text or not text.isprintable() or text != text.strip():
            raise ChannelError("the code is empty or holds spaces or control characters")
        return text


class Channel(Protocol):
    """A way to deliver a code; ``deliver`` raises :class:`ChannelError` when it could not."""

    def deliver(self, delivery: Delivery) -> None:
        """Send the code to ``delivery.address``; return only when the channel accepted it."""


def render_message(template: Template, delivery: Delivery, code: str) -> str:
    """The message of ``delivery``: ``{code}``, ``{issuer}``, ``{minutes}`` and ``{user}`` filled in.

    :raises ChannelError: the issuer or the user holds a control character.
    """
    for name, value in (("issuer", delivery.issuer), ("user", delivery.user)):
        problem = check_value(name, value)
        if problem:
            raise ChannelError(f"cannot write the message: {problem}")
    return template.render(
        {"code": code, "issuer": delivery.issuer, "minutes": str(delivery.minutes), "user": delivery.user}
    )
