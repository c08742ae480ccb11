"""The payShield known-answer self-test: what the HSMs must answer, and the file that says it.

Every new connection and every health check asks the HSM for the HMAC-SHA-256 of a fixed
message under a self-test key block (:class:`SelfTest`); the transport marks down an HSM that
answers wrong (:class:`SelfTestFailed`).  The key block and its answer are in the self-test
file, made by ``otp-agent init`` (:func:`write_self_test_file`) and read at start-up
(:func:`load_self_test_file`, :func:`self_test_from_config`).  Nothing in it is secret: the key
block is under the LMK and, with the public test key, anyone may compute the answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from otp_agent.errors import KeyBackendUnavailable
from otp_agent.keystore.payshield.codec import HmacKey
from otp_agent.keystore.payshield.config import PayShieldConfig
from otp_agent.keystore.payshield.errors import PayShieldUnavailable
from otp_agent.keystore.payshield.keyblock import KeyBlockFormatError, split_key_block

# The backend's logger: these messages are the backend's (the name is shown in the journal).
logger = logging.getLogger("otp_agent.keystore.payshield.backend")

#: The public test key of the self-test imported with LU: not a secret, anyone may compute with it.
SELF_TEST_KEY = hashlib.sha256(b"otp-agent payshield public self-test key v1").digest()
#: The fixed message whose HMAC-SHA-256 every HSM connection is asked for.
SELF_TEST_MESSAGE = hashlib.sha256(b"otp-agent payshield self-test message v1").digest()
#: ``source`` of a self-test file: the public key above (answer computed on the host), or a key
#: generated in the HSM with L0 (answer recorded from the HSMs at init).
SELF_TEST_PUBLIC = "public-test-key-v1"
SELF_TEST_GENERATED = "generated-in-hsm"
_SELF_TEST_HEADER = (
    "# otp-agent payShield known-answer self-test, written by otp-agent init.\n"
    "# Not secret: the key block is under the LMK, the answer is public.\n"
)


@dataclass(frozen=True)
class SelfTest:
    """A known answer: the HSM must give ``expected`` as the HMAC-SHA-256 of ``message`` under
    the key block ``key`` (created by ``otp-agent init``; nothing in it is secret)."""

    key: HmacKey
    message: bytes
    expected: bytes


class SelfTestFailed(PayShieldUnavailable):
    """An HSM got the known answer wrong (or refused the self-test): it is not used."""


class SelfTestFileUnreadable(KeyBackendUnavailable):
    """The self-test file exists, but the daemon's user may not read it."""


def self_test_answer(key: bytes = SELF_TEST_KEY) -> bytes:
    """The known answer: HMAC-SHA-256 of :data:`SELF_TEST_MESSAGE` under ``key``, on the host."""
    return hmac.digest(key, SELF_TEST_MESSAGE, "sha256")


def write_self_test_file(path: Path, key_block: str, expected: bytes, source: str) -> None:
    """Create the self-test file (mode 0600, never overwriting): ``S`` + key block, answer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(
            f"{_SELF_TEST_HEADER}key_block = {key_block}\nhmac_sha256 = {expected.hex()}\nsource = {source}\n"
        )


def load_self_test_file(path: Path) -> SelfTest:
    """Read a self-test file into a :class:`SelfTest`.

    :raises SelfTestFileUnreadable: the file exists but this process may not read it.
    :raises KeyBackendUnavailable: unreadable otherwise, malformed, not an HMAC-SHA-256 key
        block, or a public-key file whose answer is not the public key's.
    """
    try:
        text = path.read_text(encoding="ascii")
    except PermissionError:
        raise SelfTestFileUnreadable(f"cannot read {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyBackendUnavailable(
            f"cannot read the self-test key file {path}: {type(exc).__name__}"
        ) from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and not line.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    block, answer, source = (values.get(name, "") for name in ("key_block", "hmac_sha256", "source"))
    try:
        header, _body = split_key_block(block[1:])
        expected = bytes.fromhex(answer)
    except (KeyBlockFormatError, ValueError):
        raise KeyBackendUnavailable(
            f"{path} is not a payShield self-test file (key_block, hmac_sha256, source): run otp-agent init"
        ) from None
    if (
        not block.startswith("S")
        or header.usage != "63"
        or header.algorithm != "H"
        or len(expected) != 32
        or source not in (SELF_TEST_PUBLIC, SELF_TEST_GENERATED)
    ):
        raise KeyBackendUnavailable(
            f"{path} is not a payShield self-test file (an HMAC-SHA-256 "
            "key block, its 32-byte answer and its source)"
        )
    if source == SELF_TEST_PUBLIC and not hmac.compare_digest(expected, self_test_answer()):
        raise KeyBackendUnavailable(
            f"{path}: hmac_sha256 is not the answer of the public self-test key; the file was changed"
        )
    return SelfTest(HmacKey.key_block(block[1:]), SELF_TEST_MESSAGE, expected)


def self_test_from_config(config: PayShieldConfig) -> tuple[SelfTest | None, str]:
    """The known answer from the self-test file, or None (with a WARNING) and why not.

    A file the daemon may not read (made by ``otp-agent init`` as root, not yet passed to the
    service) is reported like a missing one rather than stopping the daemon after an upgrade.
    """
    path = config.self_test_path
    consequence = (
        "an HSM answering wrong HMACs would not be detected, and every login would "
        "fail as a wrong code and count towards its token's lock"
    )
    if path is not None and path.exists():
        try:
            return load_self_test_file(path), ""
        except SelfTestFileUnreadable:
            logger.warning(
                "payShield self-test not configured: cannot read %s (mode 0600, "
                "root): %s; pass it to the service like the fingerprint key "
                "(LoadCredential=, see docs/hsm.md)",
                path,
                consequence,
            )
            return None, f"not configured (cannot read {path})"
    logger.warning(
        "payShield self-test not configured (%s): %s; run otp-agent init to create the "
        "self-test key (see docs/hsm.md)",
        f"no file {path}" if path is not None else "no self_test_key_file",
        consequence,
    )
    return None, ""
