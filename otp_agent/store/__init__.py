"""The token-store seam: one narrow interface over SQLite (one host) and PostgreSQL (a fleet).

Validation state changes only through :meth:`TokenStore.compare_and_set`, which a SQL store does
in one conditional UPDATE (``... WHERE serial = ? AND version = ?``), so two acceptances of the
same code can never both commit, whatever the number of connections, processes or hosts.
This module imports no concrete store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from otp_agent.store.models import BackupCode, Remembered, Token, TokenState

__all__ = ["BackupCode", "Remembered", "Token", "TokenState", "TokenStore"]


class TokenStore(Protocol):
    """What the validation engine and the administration service need from a store."""

    name: str

    def add_tokens(
        self, tokens: Sequence[Token], backup_codes: Mapping[str, Sequence[BackupCode]] | None = None
    ) -> None:
        """Insert all tokens in one transaction, or none.

        ``backup_codes`` (a migration's scratch codes) replaces, in the same transaction, the
        backup codes of each user it names.

        :raises Conflict: a serial or a secret fingerprint already exists (named in the message).
        :raises StoreError: the write failed; nothing was written.
        """

    def get(self, serial: str) -> Token | None:
        """Return the token with this serial, or None."""

    def tokens_for_user(self, user: str) -> list[Token]:
        """Return the user's tokens, oldest first."""

    def all_tokens(self) -> list[Token]:
        """Return every token, by serial."""

    def existing_fingerprints(self, fingerprints: Iterable[bytes]) -> set[bytes]:
        """Return those of ``fingerprints`` already used by a token."""

    def compare_and_set(self, serial: str, expected_version: int, state: TokenState) -> bool:
        """Write ``state`` if the token is still at ``expected_version`` (one static UPDATE).

        Durably committed before returning True; False means another writer got there first.
        :raises StoreError: the write failed; nothing was written.
        """

    def assign(self, serial: str, user: str | None, binding: bytes) -> Token:
        """Give the token to ``user`` with the binding tag for that owner; return the new token.

        :raises NotFound: no such token.
        """

    def set_enabled(self, serial: str, enabled: bool) -> Token:
        """Enable or disable a token; return the new token.  :raises NotFound: no such token."""

    def set_binding(self, serial: str, binding: bytes) -> None:
        """Store a token's binding tag (rows written before binding existed).

        :raises NotFound: no such token.
        """

    def reset_throttling(self, serial: str, now: float) -> None:
        """Clear the failure counter and end a running lock at ``now`` (the lock level stays).

        :raises NotFound: no such token.
        """

    def remove(self, serial: str) -> None:
        """Delete a token.  :raises NotFound: no such token."""

    def remove_expired_pending(self, now: float) -> list[str]:
        """Delete the pending tokens whose ``pending_until`` is at or before ``now``; their serials."""

    def backup_codes(self, user: str) -> list[BackupCode]:
        """Return the user's backup codes, used ones included."""

    def replace_backup_codes(self, user: str, codes: Sequence[BackupCode]) -> None:
        """Replace the user's backup codes with ``codes`` (none: remove them), in one transaction."""

    def use_backup_code(self, user: str, digest: bytes, now: float) -> bool:
        """Mark an unused backup code used (one conditional UPDATE), durably.

        False when it is gone or was used already (by a concurrent use, possibly on another host).
        """

    def remember(self, entry: Remembered) -> None:
        """Record (or extend) a remembered host."""

    def remembered(self, user: str, rhost: str, service: str) -> Remembered | None:
        """The remembered host of this key, or None (expired ones included: the caller checks)."""

    def forget(self, user: str) -> int:
        """Forget every remembered host of ``user``; return how many there were."""

    def forget_expired(self, now: float) -> int:
        """Delete the remembered hosts whose time is up; return how many."""

    def token_counts(self, now: float) -> list[tuple[str, str, int]]:
        """(type, state, count) of the tokens: state is active, locked, disabled or pending."""

    def get_meta(self, key: str) -> str | None:
        """Read a store-wide setting (e.g. the key backend's check value)."""

    def set_meta(self, key: str, value: str) -> None:
        """Write a store-wide setting."""

    def claim_meta(self, key: str, value: str) -> str:
        """Write ``value`` under ``key`` unless one is there; return the stored value (atomic)."""

    def health(self) -> dict[str, object]:
        """Return a JSON-able health report including ``"ok"``."""

    def close(self) -> None:
        """Close every connection."""
