"""Token records as the store keeps them.  No ORM; frozen dataclasses only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from otp_agent.channels.addresses import mask
from otp_agent.keystore import TokenIdentity
from otp_agent.oath.params import HashAlgorithm, OathParams, TokenType
from otp_agent.wire import TokenRecord

SEND_PENDING, SEND_SENT, SEND_FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class Send:
    """One out-of-band send: which counter, when, and whether it was delivered.  Never the code."""

    counter: int
    at: float
    outcome: str = SEND_PENDING

    def encode(self) -> str:
        return f"{self.counter}:{self.at:.3f}:{self.outcome}"

    @classmethod
    def decode(cls, text: str) -> Send:
        counter, at, outcome = text.split(":")
        if outcome not in (SEND_PENDING, SEND_SENT, SEND_FAILED):
            raise ValueError(f"unknown send outcome {outcome!r}")
        return cls(int(counter), float(at), outcome)


def encode_sends(sends: tuple[Send, ...]) -> str:
    """The ``sends`` column: the recent sends, oldest first."""
    return ",".join(send.encode() for send in sends)


def decode_sends(text: str | None) -> tuple[Send, ...]:
    """Read the ``sends`` column (empty for HOTP and TOTP tokens)."""
    return tuple(Send.decode(item) for item in (text or "").split(",") if item)


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
    #: Out-of-band tokens: the recent sends (``counter`` is then the next counter to send and
    #: ``last_step`` the last counter accepted).
    sends: tuple[Send, ...] = ()
    #: A self-enrolled token not confirmed yet: when it expires (None once confirmed).
    pending_until: float | None = None
    #: The key backend's tag over the serial and the last accepted code (never the code): lets a
    #: validation try the most likely factor first and still refuse that code as a replay.
    last_code_tag: bytes | None = field(default=None, repr=False)


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
    #: Out-of-band tokens: the delivery channel's name and the address codes go to.
    channel: str | None = None
    address: str | None = field(default=None, repr=False)
    sends: tuple[Send, ...] = ()
    #: Self-service: a token its owner has not confirmed yet lets nobody in until then, and is
    #: removed once this time passes.
    pending_until: float | None = None
    last_code_tag: bytes | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        """True while the token waits for its owner's confirmation."""
        return self.pending_until is not None

    def usable_at(self, now: float) -> bool:
        """True when the token is enabled, confirmed and ``now`` is within its validity dates."""
        return (
            self.enabled
            and self.pending_until is None
            and (self.not_before is None or self.not_before <= now)
            and (self.not_after is None or now < self.not_after)
        )

    @property
    def state(self) -> TokenState:
        """The part of the token a validation changes."""
        return TokenState(
            self.counter,
            self.last_step,
            self.drift,
            self.failures,
            self.failures_at,
            self.lock_count,
            self.locked_until,
            self.enabled,
            self.sends,
            self.pending_until,
            self.last_code_tag,
        )

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
        return "\x1f".join(
            (
                "otp-agent/binding/v1",
                self.serial,
                str(len(owner)),
                owner,
                self.token_type.value,
                self.algorithm.value,
                str(self.digits),
                str(self.period),
                str(self.t0),
                # Out-of-band tokens: where their codes go is bound too (a store writer must not
                # redirect them); HOTP and TOTP tags are unchanged.
                *((self.channel or "", self.address or "") if self.token_type is TokenType.OOB else ()),
            )
        ).encode()

    def record(self, *, secret_b64: str | None = None) -> TokenRecord:
        """The token as the protocol carries it (never the sealed secret nor the fingerprint)."""
        return TokenRecord(
            serial=self.serial,
            type=self.token_type.value,
            algorithm=self.algorithm.value,
            digits=self.digits,
            period=self.period,
            t0=self.t0,
            counter=self.counter,
            drift=self.drift,
            user=self.user,
            issuer=self.issuer,
            not_before=self.not_before,
            not_after=self.not_after,
            last_step=self.last_step,
            enabled=self.enabled,
            failures=self.failures,
            lock_count=self.lock_count,
            locked_until=float(self.locked_until),
            created=self.created,
            channel=self.channel,
            address=None if self.address is None else mask(self.address),
            pending_until=self.pending_until,
            secret_b64=secret_b64,
        )

    def public(self) -> dict[str, Any]:
        """A JSON-able view for clients: everything but the sealed secret and fingerprint."""
        return self.record().message()


BACKUP_GENERATED, BACKUP_SCRATCH = "generated", "scratch"


@dataclass(frozen=True)
class BackupCode:
    """One single-use backup code of a user, as the store keeps it: never the code itself.

    ``digest`` is the code's slow hash under ``scheme`` with ``salt`` (one salt per set, so a
    guess costs one hash whatever the set's size); ``kind`` is ``generated`` (``otpctl
    backup-codes``) or ``scratch`` (an imported 8-digit scratch code); ``used_at`` is set by the
    one use.  ``binding`` is the key backend's tag over :meth:`binding_message`: a store writer
    without the key backend cannot add a code of their own.
    """

    user: str
    kind: str
    scheme: str
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    created: float
    used_at: float | None = None
    binding: bytes = field(default=b"", repr=False)

    def binding_message(self) -> bytes:
        """Canonical bytes of what the binding tag covers: owner, kind, scheme, salt and digest."""
        return b"\x1f".join(
            (
                b"otp-agent/backup-code/v1",
                str(len(self.user)).encode(),
                self.user.encode(),
                self.kind.encode(),
                self.scheme.encode(),
                self.salt.hex().encode(),
                self.digest.hex().encode(),
            )
        )


@dataclass(frozen=True)
class Remembered:
    """A remembered host: ``user`` coming from ``rhost`` through PAM ``service`` needs no code
    until ``until``.  ``binding`` is the key backend's tag over :meth:`binding_message`."""

    user: str
    rhost: str
    service: str
    until: float
    binding: bytes = field(default=b"", repr=False)

    def binding_message(self) -> bytes:
        """Canonical bytes of what the binding tag covers: the whole key and the end time."""
        parts = (self.user, self.rhost, self.service)
        return b"\x1f".join(
            [
                b"otp-agent/remembered/v1",
                *(f"{len(p)}:{p}".encode() for p in parts),
                repr(self.until).encode(),
            ]
        )
