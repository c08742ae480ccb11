"""The key-backend seam: who holds token secrets and computes their HMACs.

A backend never returns a secret.  It turns a clear secret into an opaque *sealed blob* that the
token store keeps (an AES-GCM envelope for the software backend, an LMK key block for the
payShield HSM), and later computes HMACs with that blob.  The concrete backends live in
``otp_agent.keystore.software`` and ``otp_agent.keystore.payshield``; this module imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from otp_agent.oath.params import HashAlgorithm
from otp_agent.sensitive import Secret


@dataclass(frozen=True)
class TokenIdentity:
    """What a sealed secret is bound to: a blob sealed for one identity must not open for another."""

    serial: str
    algorithm: HashAlgorithm

    def binding(self) -> bytes:
        """Canonical bytes of this identity, used as AEAD associated data or key-block binding."""
        return f"otp-agent/v1|{self.serial}|{self.algorithm.value}".encode()


class KeyBackend(Protocol):
    """One narrow interface implemented by every key backend."""

    #: Short name shown in ``otpctl status`` ("software", "payshield").
    name: str

    def seal_secret(self, identity: TokenIdentity, secret: Secret) -> bytes:
        """Bring a clear secret under the backend's protection and return the sealed blob.

        :raises KeyBackendError: the backend refused or failed.
        """

    def compute_hmacs(self, identity: TokenIdentity, sealed: bytes, messages: Sequence[bytes]) -> list[bytes]:
        """Return HMAC-<identity.algorithm>(secret, m) for each message, in order.

        A backend should compute the whole batch in about one round trip (the payShield backend
        pipelines the requests).

        :raises SealedSecretInvalid: the blob was tampered with or belongs to another identity.
        :raises KeyBackendUnavailable: the backend cannot be reached.
        """

    def fingerprint(self, secret: Secret) -> bytes:
        """Return a keyed, non-reversible fingerprint of a secret, used to keep secrets unique."""

    def generate_secret(self, identity: TokenIdentity) -> bytes:
        """Make a fresh secret for ``identity`` that nobody sees, and return it sealed.

        For out-of-band tokens: the payShield backend generates it inside the HSM (L0, not
        exportable), so it never exists in clear; the software backend draws it at random and
        seals it at once.

        :raises KeyBackendError: the backend refused or failed.
        """

    def binding_tag(self, message: bytes) -> bytes:
        """Return a MAC over a token's owner and parameters under a key only this backend holds.

        Checked before every use of the token, so whoever can write the store but does not hold
        the key backend cannot move a token to another user or change its parameters.  Computed
        on the host (no HSM round trip per validation).

        :raises KeyBackendError: the backend cannot compute it (e.g. no fingerprint key yet).
        """

    def health(self) -> dict[str, object]:
        """Return a JSON-able health report; must include ``"ok": bool``."""

    def close(self) -> None:
        """Release connections and forget cached key material."""
