"""The one error hierarchy of otp-agent.

Every error raised on purpose by the project derives from :class:`OtpAgentError`.  Each class
carries a stable ``code`` (sent on the wire and mapped to exit codes by the CLI) and an
``exit_status`` (the exit codes documented in otpctl(8)): 1 rejected or not found, 2 usage or configuration error,
3 agent unreachable, 4 key backend or store unavailable.  Messages never contain secrets or codes.

A foreign exception is translated at the boundary with ``raise ... from exc``, keeping its cause,
except where the cause may carry a secret: PostgreSQL driver errors (the DSN and its password),
HSM answers (the HMACs the codes are cut from), PSKC decryption and parsing (key material), and
frames a client sent (codes, passwords); those are raised ``from None`` with a message that
says what failed without quoting the cause.
"""

from __future__ import annotations


class OtpAgentError(Exception):
    """Root of every deliberate otp-agent error."""

    code = "error"
    exit_status = 1


class ConfigError(OtpAgentError):
    """The configuration file is missing, unreadable, or has a wrong key, type or value."""

    code = "config"
    exit_status = 2


class UsageError(OtpAgentError):
    """A request or command line is malformed (bad argument, bad value)."""

    code = "usage"
    exit_status = 2


class ProtocolError(OtpAgentError):
    """A socket frame is malformed, truncated, oversized or of an unknown version or type."""

    code = "protocol"
    exit_status = 2


class AgentUnreachable(OtpAgentError):
    """The agent's socket cannot be reached or did not answer in time (client side)."""

    code = "unreachable"
    exit_status = 3


class PermissionDenied(OtpAgentError):
    """The peer (identified by its kernel credentials) may not make this request."""

    code = "permission"
    exit_status = 1


class NotFound(OtpAgentError):
    """A token or user named in a request does not exist."""

    code = "not_found"
    exit_status = 1


class Conflict(OtpAgentError):
    """A token with this serial, or with this same secret, already exists."""

    code = "conflict"
    exit_status = 1


class InvalidToken(OtpAgentError):
    """Token parameters break the OATH rules (key size, digits, algorithm, period)."""

    code = "invalid_token"
    exit_status = 2


class KeyBackendError(OtpAgentError):
    """The key backend failed to seal a secret or to compute an HMAC."""

    code = "keystore"
    exit_status = 4


class KeyBackendUnavailable(KeyBackendError):
    """The key backend cannot be used at all (missing master key, HSM down or mismatched)."""

    code = "keystore_unavailable"


class SealedSecretInvalid(KeyBackendError):
    """A sealed secret (AEAD blob or HSM key block) failed its integrity check or belongs elsewhere."""

    code = "sealed_secret_invalid"


class AccountLookupError(OtpAgentError):
    """The name service failed to answer for an account (an error, not "no such user").

    Raised by :mod:`otp_agent.accounts`; validation refuses (fails closed) rather than treating
    the user as unknown, which the roll-out policy would let in without a code.
    """

    code = "account_lookup"
    exit_status = 4


class StoreError(OtpAgentError):
    """The token store failed (I/O error, full disk, read-only, corrupted)."""

    code = "store"
    exit_status = 4


class StoreUnavailable(StoreError):
    """The token store cannot be opened or reached."""

    code = "store_unavailable"


class ChannelError(OtpAgentError):
    """A delivery channel could not deliver a one-time code (mail relay or command failed).

    The message says why (refused connection, refused recipient, failed TLS verification, exit
    status, timeout) and never contains the code or a password.
    """

    code = "channel"
    exit_status = 4


class SendRefused(OtpAgentError):
    """An out-of-band send was refused by policy: ``reason`` is ``locked``, ``resend_blocked``
    or ``rate_limited`` (the error reply carries it).  Refusals do not count toward the limits."""

    code = "refused"
    exit_status = 1

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


class PskcError(OtpAgentError):
    """A PSKC file cannot be imported; ``problems`` lists every reason with key Id and line."""

    code = "pskc"
    exit_status = 1

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class MigrationRefused(OtpAgentError):
    """A peer's state file (google-authenticator, users.oath) cannot be migrated; ``problems``
    lists every reason with its line.  Nothing of the file is imported."""

    code = "migration_refused"
    exit_status = 1

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


ERRORS_BY_CODE: dict[str, type[OtpAgentError]] = {
    cls.code: cls
    for cls in (
        OtpAgentError,
        ConfigError,
        UsageError,
        ProtocolError,
        AgentUnreachable,
        PermissionDenied,
        NotFound,
        Conflict,
        InvalidToken,
        KeyBackendError,
        KeyBackendUnavailable,
        SealedSecretInvalid,
        StoreError,
        StoreUnavailable,
        PskcError,
        ChannelError,
        SendRefused,
    )
}


#: Exit status of an operating-system error that reached an executable's funnel (a file, a
#: socket or a directory the environment does not provide): the same for every executable.
OS_ERROR_EXIT_STATUS = 4


def exit_status_of(exc: BaseException) -> int:
    """The exit status an executable reports for an error that reached its top level."""
    if isinstance(exc, OtpAgentError):
        return exc.exit_status
    if isinstance(exc, OSError):
        return OS_ERROR_EXIT_STATUS
    return 1
