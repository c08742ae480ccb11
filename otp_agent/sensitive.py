"""A wrapper for secret bytes that never shows them by accident.

:class:`Secret` keeps key material in a ``bytearray`` so it can be overwritten when done
(best effort: Python may have made copies).  ``repr``/``str`` are redacted, it refuses to be
pickled, compared with ``==`` or hashed, and the bytes are reached only through :meth:`reveal`.
"""

from __future__ import annotations

from typing import NoReturn


class Secret:
    """Key material with a redacted representation and explicit access."""

    __slots__ = ("_buffer",)

    def __init__(self, value: bytes | bytearray) -> None:
        self._buffer = bytearray(value)

    def reveal(self) -> bytes:
        """Return the secret bytes; the caller must not log or store them in clear."""
        return bytes(self._buffer)

    def __len__(self) -> int:
        return len(self._buffer)

    def wipe(self) -> None:
        """Overwrite the buffer with zeros and empty it."""
        for index in range(len(self._buffer)):
            self._buffer[index] = 0
        self._buffer = bytearray()

    def __enter__(self) -> Secret:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __repr__(self) -> str:
        return f"Secret(<{len(self._buffer)} bytes redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        raise TypeError("compare secrets with hmac.compare_digest on revealed bytes")

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("secrets cannot be pickled")
