"""Token records as the store keeps them.  No ORM; frozen dataclasses only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from otp_agent.keystore import TokenIdentity
from otp_agent.oath.params import HashAlgorithm, OathParams, TokenType



@dataclass(frozen=True)
class TokenState:
    """What a validation may change: the moving factor, the learned drift and the throttling.

    Written whole by the store's compare-and-set; the engine derives a new state from the one it
    read with :func:`dataclasses.replace`.  ``enabled`` is here because the engine disables a
    token after ``policy.disable_after_locks`` locks.
    """

    counter: int = 0
    last_step: int | None = None
    drift: int = 0
    failures: int = 0
    failures_at: float = 0.0
    lock_count: int = 0
    locked_until: float = 0.0
    enabled: bool = True


@dataclass(frozen=True)
class Token:
    """One token: parameters, owner, moving factor, throttling state and the sealed secret.

    ``sealed`` and ``fingerprint`` are opaque (the secret is never here in clear) but are still
    kept out of ``repr`` and out of :meth:`public`.  ``binding`` is the key backend's tag over
    :meth:`binding_message` (owner and parameters): a row whose owner or parameters were changed
    by someone who can write the store but does not hold the key backend fails its check.
    """

    serial: str
    token_type: TokenType
    algorithm: HashAlgorithm
    digits: int
    period: int
    t0: int
    sealed: bytes = field(repr=False)
    fingerprint: bytes = field(repr=False)
    user: str | None = None
    counter: int = 0
    last_step: int | None = None
    drift: int = 0
    enabled: bool = True
    failures: int = 0
    lock_count: int = 0
    locked_until: float = 0.0
    issuer: str | None = None
    not_before: float | None = None
    not_after: float | None = None
    created: float = 0.0
    version: int = 0
    binding: bytes | None = field(default=None, repr=False)
    failures_at: float = 0.0

    @property
    def state(self) -> TokenState:
        """The part of the token a validation changes."""
        return TokenState(self.counter, self.last_step, self.drift, self.failures,
                          self.failures_at, self.lock_count, self.locked_until, self.enabled)

    @property
    def params(self) -> OathParams:
        """The token's OATH parameters."""
        return OathParams(self.token_type, self.algorithm, self.digits, self.period, self.t0)

    @property
    def identity(self) -> TokenIdentity:
        """What the sealed secret is bound to."""
        return TokenIdentity(self.serial, self.algorithm)

    def binding_message(self) -> bytes:
        """Canonical bytes of what the binding tag covers: serial, owner and OATH parameters."""
        owner = "" if self.user is None else self.user
        return "\x1f".join(("otp-agent/binding/v1", self.serial, str(len(owner)), owner,
                             self.token_type.value, self.algorithm.value, str(self.digits),
                             str(self.period), str(self.t0))).encode()

    def public(self) -> dict[str, Any]:
        """A JSON-able view for clients: everything but the sealed secret and fingerprint."""
        view = asdict(self)
        for hidden in ("sealed", "fingerprint", "version", "binding", "failures_at"):
            view.pop(hidden)
        view["type"] = view.pop("token_type").value
        view["algorithm"] = self.algorithm.value
        return view
