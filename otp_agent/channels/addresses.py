"""Where a code is delivered: e-mail addresses and E.164 telephone numbers, checked and masked.

The rules are deliberately narrower than the standards, so that an address can go into a mail
header or a command's argv without any quoting:

* **e-mail**: ``local@domain`` with exactly one ``@``, at most 254 characters.  The local part
  (1 to 64 characters) is letters, digits and ``. _ % + -``, does not begin with ``.`` or
  ``-`` (so it cannot be taken for a command-line option), does not end with ``.`` and has no
  ``..``.  The domain (at most 253 characters) has at least two dot-separated labels of 1 to 63
  letters, digits and hyphens, no label begins or ends with a hyphen, and the last label is not
  all digits.  Quoted local parts, comments, domain literals (``[192.0.2.1]``), non-ASCII
  addresses (use the ``xn--`` form of an international domain), spaces, CR, LF and every other
  control character are refused.
* **phone**: E.164, ``+`` then 8 to 15 ASCII digits, the first one not 0.  No spaces, dashes or
  brackets.

:func:`mask` shows enough of an address to recognise it in a log or a reply: an e-mail address
keeps the first character of its local part and the whole domain (``a***@example.com``); a
telephone number keeps ``+``, its first two digits and its last two, every other digit a star
(``+49151234589`` → ``+49*******89``).  A country code is one to three digits and which one
a number starts with cannot be told without a numbering plan, so the rule always keeps two.
"""

from __future__ import annotations

import re
from typing import Literal

from otp_agent.errors import UsageError

AddressKind = Literal["email", "phone"]
ADDRESS_KINDS: tuple[AddressKind, ...] = ("email", "phone")

MAX_EMAIL_LENGTH = 254
MAX_LOCAL_LENGTH = 64
MAX_DOMAIN_LENGTH = 253

_LOCAL = re.compile(r"[A-Za-z0-9_%+][A-Za-z0-9._%+-]*", re.ASCII)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_PHONE = re.compile(r"\+[1-9][0-9]{7,14}", re.ASCII)


def email_problem(address: str) -> str | None:
    """Why ``address`` is not an e-mail address under the rules above, or None."""
    if not address.isascii() or not address.isprintable() or any(ch.isspace() for ch in address):
        return "only printable ASCII characters without spaces are allowed"
    if len(address) > MAX_EMAIL_LENGTH:
        return f"longer than {MAX_EMAIL_LENGTH} characters"
    if address.count("@") != 1:
        return "must contain exactly one @"
    local, domain = address.split("@")
    if not local or len(local) > MAX_LOCAL_LENGTH:
        return f"the part before @ must have 1 to {MAX_LOCAL_LENGTH} characters"
    if not _LOCAL.fullmatch(local) or local.endswith(".") or ".." in local:
        return "the part before @ may hold letters, digits and . _ % + - (not first . or -, no ..)"
    if len(domain) > MAX_DOMAIN_LENGTH:
        return f"the domain is longer than {MAX_DOMAIN_LENGTH} characters"
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return "the domain must be dot-separated labels of letters, digits and hyphens, with at least one dot"
    if labels[-1].isdigit():
        return "the domain must be a name, not an IP address"
    return None


def phone_problem(number: str) -> str | None:
    """Why ``number`` is not an E.164 telephone number, or None."""
    if not _PHONE.fullmatch(number):
        return "must be + then 8 to 15 digits, the first not 0, without spaces"
    return None


def address_kind(address: str) -> AddressKind | None:
    """``"phone"`` for a valid E.164 number, ``"email"`` for a valid e-mail address, else None."""
    if phone_problem(address) is None:
        return "phone"
    if email_problem(address) is None:
        return "email"
    return None


def validate_address(address: object, kinds: tuple[AddressKind, ...] = ADDRESS_KINDS) -> str:
    """Return ``address`` if it is valid and of one of ``kinds``.

    :raises UsageError: with the reason (the address itself is shown masked, never in full).
    """
    if not isinstance(address, str) or not address:
        raise UsageError("an address must be a non-empty string")
    kind = address_kind(address)
    if kind is not None and kind in kinds:
        return address
    if kind is not None:
        shown = "a telephone number" if kind == "phone" else "an e-mail address"
        raise UsageError(f"{shown} cannot be used with this channel")
    if kinds == ("email",) or (not address.startswith("+") and "@" in address):
        raise UsageError(f"not a valid e-mail address: {email_problem(address)}")
    if kinds == ("phone",) or address.startswith("+"):
        raise UsageError(f"not a valid E.164 telephone number: {phone_problem(address)}")
    raise UsageError(
        "not a valid address: expected an e-mail address (local@domain) or an E.164 number (+...)"
    )


def mask(address: str) -> str:
    """The address with most of it hidden (see the module docstring); ``***`` if it is invalid."""
    kind = address_kind(address)
    if kind == "phone":
        digits = address[1:]
        return "+" + digits[:2] + "*" * (len(digits) - 4) + digits[-2:]
    if kind == "email":
        local, domain = address.split("@")
        return f"{local[0]}***@{domain}"
    return "***"
