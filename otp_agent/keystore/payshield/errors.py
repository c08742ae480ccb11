"""payShield error codes and the exceptions this package raises.

Owns the table of host-command error codes (payShield host command manuals, "Error codes") and
the translation of a non-``00`` error code into an exception.  Transport failures (unreachable,
timeout, garbage) are ``KeyBackendUnavailable`` subclasses so that callers fail closed; a key
block refused by the HSM is a ``SealedSecretInvalid`` subclass.  No message ever carries key
material: only command codes, error codes and host names.
"""

from __future__ import annotations

from otp_agent.errors import KeyBackendError, KeyBackendUnavailable, SealedSecretInvalid

#: Meaning of each error code, paraphrased from the payShield manuals and the reference.
ERROR_CODES: dict[str, str] = {
    "00": "no error",
    "01": "verification failure or warning (for verify commands: the MAC/HMAC did not verify)",
    "02": "key inappropriate length for algorithm",
    "04": "invalid key type code (HMAC commands: HMAC length error)",
    "05": "invalid key length flag (HMAC commands: invalid hash identifier)",
    "06": "invalid key usage",
    "07": "invalid key format",
    "08": "HMAC key block error",
    "10": "source key parity error",
    "11": "destination key parity error or key all zeros",
    "12": "contents of user storage not available",
    "13": "invalid LMK identifier or LMK error",
    "15": "invalid input data (format, characters or not enough data)",
    "17": "not in Authorised state, or prohibited by security settings",
    "21": "invalid index value",
    "26": "invalid key scheme",
    "27": "incompatible key length",
    "28": "invalid key type",
    "29": "key function not permitted",
    "40": "invalid firmware checksum",
    "41": "internal hardware or software error",
    "42": "DES failure",
    "47": "algorithm not licensed (HSM 8000 HMAC commands: DSP error)",
    "51": "invalid message header",
    "67": "command not licensed",
    "68": "command has been disabled",
    "69": "PIN block format disabled",
    "80": "data length error (HMAC commands: HMAC key length error)",
    "81": "HMAC data length error, or invalid certificate header",
    "82": "invalid check value length",
    "83": "key block format error",
    "84": "key block check value error",
    "90": "data parity error",
    "91": "LRC mismatch",
    "92": "count out of limits",
    "A1": "incompatible LMK schemes",
    "A2": "incompatible LMK identifiers",
    "A3": "incompatible key block LMK identifiers",
    "A4": "key block authentication failure",
    "A5": "incompatible key length",
    "A6": "invalid key usage",
    "A7": "invalid algorithm",
    "A8": "invalid mode of use",
    "A9": "invalid key version number",
    "AA": "invalid export field",
    "AB": "invalid number of optional blocks",
    "AC": "optional header block error",
    "AD": "key status optional block error",
    "AE": "invalid start date/time",
    "AF": "invalid end date/time",
    "B0": "invalid encryption mode",
    "B1": "invalid authentication mode",
    "B2": "miscellaneous key block error",
    "B3": "invalid number of optional blocks",
    "B4": "optional block data error",
    "B5": "incompatible components",
    "B6": "incompatible key status optional blocks",
    "B7": "invalid change field",
    "B8": "invalid old value",
    "B9": "invalid new value",
    "BA": "no key status block in the key block",
    "BB": "invalid wrapping key",
    "BC": "mandatory optional block missing",
    "BD": "incompatible key types",
    "BE": "invalid key block header ID",
    "D2": "invalid curve reference",
    "D3": "invalid key encoding",
    "E0": "invalid command version number",
}

#: Error codes that say "this key block is damaged, forged or not ours": the sealed blob is bad.
KEY_BLOCK_ERROR_CODES = frozenset(
    {"08", "83", "84", "A1", "A3", "A4", "A5", "A6", "A7", "A8", "AB", "AC", "B2", "B4", "BE"}
)


def describe(error_code: str) -> str:
    """Return the meaning of a payShield error code (``"unknown error code"`` if not in the table)."""
    return ERROR_CODES.get(error_code, "unknown error code")


class PayShieldCommandError(KeyBackendError):
    """The HSM answered a host command with an error code other than ``00``."""

    code = "keystore"

    def __init__(self, command: str, error_code: str) -> None:
        super().__init__(f"payShield {command} failed with error {error_code}: {describe(error_code)}")
        self.command = command
        self.error_code = error_code


class PayShieldKeyBlockError(SealedSecretInvalid):
    """The HSM refused a key block (authentication failure, wrong usage, format error).

    Also raised by the host itself before sending, when a sealed blob is malformed, its usage does
    not match the token's hash, or it is bound to another token.
    """

    def __init__(self, message: str, command: str = "", error_code: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.error_code = error_code


class PayShieldUnavailable(KeyBackendUnavailable):
    """No HSM could be reached, or the request timed out, or the connection was lost mid-request."""


class PayShieldProtocolError(PayShieldUnavailable):
    """The HSM's answer could not be understood (garbage, wrong header, wrong response code)."""


class PayShieldBusy(PayShieldUnavailable):
    """A request waited its whole timeout for a slot under the configured calls-per-second limit."""


class LmkMismatch(KeyBackendUnavailable):
    """An HSM's LMK check value differs from the configured one: the agent refuses to use it."""


def error_for(command: str, error_code: str) -> KeyBackendError:
    """Return the exception for a response of ``command`` carrying a non-``00`` ``error_code``."""
    if error_code in KEY_BLOCK_ERROR_CODES:
        return PayShieldKeyBlockError(
            f"payShield {command} refused the key block with error {error_code}: {describe(error_code)}",
            command=command,
            error_code=error_code,
        )
    return PayShieldCommandError(command, error_code)
