"""Templates of the delivery channels, and the text rules they share.

A template is a string with ``{name}`` placeholders taken from a fixed list (``{{`` and ``}}``
stand for literal braces).  It is parsed once, when the configuration is read: an unknown
placeholder, a positional one (``{}``, ``{0}``), an attribute or index (``{user.x}``), a
conversion (``{code!r}``) or a format spec (``{code:>8}``) is a :class:`ConfigError`, and so are
unbalanced braces.  Rendering substitutes each placeholder by its value in one pass (a value
is never parsed again, so braces in a user name are just characters).

:func:`scrub` makes text from outside (a command's standard error, an SMTP server's reply) fit
for a log line: every occurrence of the code (and of the SMTP password) replaced by ``******``,
control characters turned into spaces, cut to 200 characters.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from otp_agent.errors import ConfigError

#: What replaces the code (or a password) in text kept for the log.
REDACTED = "******"
#: Length of the text kept from a command's standard error or a server's reply.
SCRUBBED_LENGTH = 200

_FORMATTER = string.Formatter()
#: The characters :func:`bad_character` refuses: Unicode category Cc, and U+2028, U+2029.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"\s+")


def bad_character(text: str, allowed: str = "") -> str | None:
    """Describe the first control or line-separator character of ``text`` not in ``allowed``."""
    for match in _CONTROL.finditer(text):
        if match.group() not in allowed:
            return f"control character U+{ord(match.group()):04X} at position {match.start()}"
    return None


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and placeholder names, in order."""

    text: str
    #: ``(literal, placeholder or None)`` pairs, as :meth:`string.Formatter.parse` gives them.
    pieces: tuple[tuple[str, str | None], ...] = field(repr=False, compare=False)

    @property
    def placeholders(self) -> frozenset[str]:
        """The placeholder names used."""
        return frozenset(name for _, name in self.pieces if name is not None)

    def starts_with_placeholder(self) -> bool:
        """Whether the rendered text begins with a value (it may then begin with ``-``)."""
        return bool(self.pieces) and self.pieces[0][0] == "" and self.pieces[0][1] is not None

    def render(self, values: Mapping[str, str]) -> str:
        """Substitute every placeholder (each one must have a value)."""
        parts: list[str] = []
        for literal, name in self.pieces:
            parts.append(literal)
            if name is not None:
                parts.append(values[name])
        return "".join(parts)


def parse_template(
    text: str,
    key: str,
    allowed: Iterable[str],
    *,
    required: Iterable[str] = (),
    refused: Mapping[str, str] | None = None,
    allowed_characters: str = "",
) -> Template:
    """Parse ``text`` (the value of configuration key ``key``).

    :param allowed: the placeholder names that may appear.
    :param required: names that must appear.
    :param refused: a reason for a name that is refused with its own message.
    :param allowed_characters: control characters that may appear (e.g. ``"\\n\\t"``).
    :raises ConfigError: naming ``key``.
    """
    allowed = tuple(allowed)
    problem = bad_character(text, allowed_characters)
    if problem:
        raise ConfigError(f"{key}: must not contain a {problem}")
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ConfigError(
            f"{key}: unbalanced braces ({exc}); write {{{{ and }}}} for literal braces"
        ) from None
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None))
            continue
        shown = "{" + name + "}"
        if refused and name in refused:
            raise ConfigError(f"{key}: must not contain {shown}: {refused[name]}")
        if name not in allowed:
            known = ", ".join("{" + n + "}" for n in allowed)
            raise ConfigError(f"{key}: unknown placeholder {shown!r}; the placeholders are {known}")
        if conversion is not None or spec:
            raise ConfigError(f"{key}: placeholder {shown} takes no conversion or format spec")
        pieces.append((literal, name))
    template = Template(text, tuple(pieces))
    for name in required:
        if name not in template.placeholders:
            raise ConfigError(f"{key}: must contain {{{name}}}")
    return template


def check_value(name: str, value: str) -> str | None:
    """Why a value cannot be put into a message or argv (a control character), or None."""
    problem = bad_character(value)
    return f"the {name} contains a {problem}" if problem else None


def scrub(data: bytes | str, secrets: Iterable[str] = (), limit: int = SCRUBBED_LENGTH) -> str:
    """Text from outside made fit for a log line (see the module docstring)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()[:limit]
