"""The payShield key backend: token secrets as LMK key blocks, HMACs computed by the HSM.

Owns the mapping of the KeyBackend Protocol onto host commands:

* ``seal_secret``: the clear secret is wrapped under the ZMK (in memory, then wiped) and
  imported with LU; the HSM returns it as a key block under its LMK, with HMAC usage matching
  the token's hash, mode G (generate only), not exportable, and an optional header block that
  binds it to the token identity.  The sealed blob is ``S`` + that key block.
* ``compute_hmacs``: one LQ per message, all pipelined on one connection; LQ returns an HMAC,
  never a key, and no code path here asks the HSM for a clear key.
* ``fingerprint``: an HMAC computed by the HSM under a dedicated fingerprint key block.
* ``binding_tag``: HMAC-SHA-256 on the host under a binding key that the HSM derives once per
  process (one LQ under the fingerprint key with a fixed label) and that lives only in memory;
  it never reaches the store, so a store writer cannot forge a tag, and a validation costs no
  extra HSM round trip.
* the known-answer self-test: the self-test file (key block and expected HMAC, its format in
  :mod:`otp_agent.keystore.payshield.selftest`) is read when the backend opens and made by
  :func:`initialise_payshield`; the transport runs it on every connection and health check,
  and marks down an HSM that answers it wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from otp_agent.errors import KeyBackendError, KeyBackendUnavailable
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.codec import HmacKey
from otp_agent.keystore.payshield.config import PayShieldConfig
from otp_agent.keystore.payshield.errors import PayShieldKeyBlockError
from otp_agent.keystore.payshield.keyblock import (
    BINDING_BLOCK_ID,
    HASH_ID,
    HMAC_USAGE,
    KeyBlockFormatError,
    attributes,
    binding_block,
    split_key_block,
)
from otp_agent.keystore.payshield.selftest import (
    SELF_TEST_GENERATED,
    SELF_TEST_KEY,
    SELF_TEST_MESSAGE,
    SELF_TEST_PUBLIC,
    SelfTestFileUnreadable,
    load_self_test_file,
    self_test_answer,
    self_test_from_config,
    write_self_test_file,
)
from otp_agent.keystore.payshield.transit import wrap_for_import
from otp_agent.keystore.payshield.transport import Transport
from otp_agent.sensitive import Secret

__all__ = [
    "PayShieldKeyBackend",
    "initialise_payshield",
    # The self-test names, defined here before and now in .selftest: still importable from here.
    "SELF_TEST_GENERATED",
    "SELF_TEST_KEY",
    "SELF_TEST_MESSAGE",
    "SELF_TEST_PUBLIC",
    "SelfTestFileUnreadable",
    "load_self_test_file",
    "self_test_answer",
    "write_self_test_file",
]

_FINGERPRINT_LABEL = b"otp-agent payshield fingerprint v1\x00"
_BINDING_LABEL = b"otp-agent payshield row binding key v1\x00"
_MODE_OF_USE = "G"
_EXPORTABILITY = "N"


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyBackendUnavailable(f"cannot read the {what} {path}: {type(exc).__name__}") from None


def _key_block_file(path: Path, what: str) -> str:
    text = _read_text(path, what)
    try:
        split_key_block(text[1:])
    except KeyBlockFormatError:
        raise KeyBackendUnavailable(f"{path} does not hold a key block ({what})") from None
    if not text.startswith("S"):
        raise KeyBackendUnavailable(f"{path} does not hold a key block ({what})")
    return text


def _wrap_under_zmk(config: PayShieldConfig, key: bytes) -> tuple[str, bytes]:
    """Wrap ``key`` under the configured ZMK for an LU import: ``(ZMK key block, wrapped key)``.

    The clear ZMK is read from its file, used and wiped here; it never leaves this function.

    :raises KeyBackendUnavailable: a ZMK file missing or not an AES key in hex.
    """
    assert config.zmk_file is not None and config.zmk_key_block_file is not None
    zmk_key_block = _key_block_file(config.zmk_key_block_file, "ZMK key block")
    try:
        clear_zmk = bytes.fromhex(_read_text(config.zmk_file, "ZMK file"))
    except ValueError:
        clear_zmk = b""
    if len(clear_zmk) not in (16, 24, 32):
        raise KeyBackendUnavailable(f"{config.zmk_file} does not hold an AES ZMK in hex")
    with Secret(clear_zmk) as zmk:
        del clear_zmk
        return zmk_key_block, wrap_for_import(zmk.reveal(), key)


class PayShieldKeyBackend:
    """Key backend whose secrets exist only under the LMK of one or more payShield HSMs."""

    name = "payshield"

    def __init__(self, config: PayShieldConfig) -> None:
        """Connect, check each HSM's LMK check value (NC), load the fingerprint key block.

        :raises KeyBackendUnavailable: no HSM reachable, or an LMK check value mismatch.
        """
        self.config = config
        self._fingerprint_key: str | None = None
        self._binding_key: Secret | None = None
        self._binding_lock = threading.Lock()
        if config.fingerprint_key_file is not None and config.fingerprint_key_file.exists():
            self._fingerprint_key = _key_block_file(config.fingerprint_key_file, "fingerprint key")
        self_test, self._self_test_note = self_test_from_config(config)
        self._transport = Transport(config, self_test)
        try:
            self._transport.start()
        except BaseException:
            self._transport.close()
            raise

    def __repr__(self) -> str:
        return f"PayShieldKeyBackend(hosts={[str(h) for h in self.config.hosts]})"

    # -- sealing -------------------------------------------------------------------------------

    def seal_secret(self, identity: TokenIdentity, secret: Secret) -> bytes:
        """Import ``secret`` under the LMK with LU and return ``S`` + key block (or a variant).

        :raises KeyBackendError: no ZMK configured, or the HSM refused the import.
        """
        config = self.config
        if config.zmk_file is None or config.zmk_key_block_file is None:
            raise KeyBackendError(
                "payShield import needs keystore.payshield.zmk_file and "
                "zmk_key_block_file (see docs/hsm.md, key ceremony)"
            )
        zmk_key_block, wrapped = _wrap_under_zmk(config, secret.reveal())
        if config.key_format == "keyblock":
            blocks = (binding_block(identity.binding()),) if config.bind_identity else ()
            tail = attributes(HMAC_USAGE[identity.algorithm], "H0", _MODE_OF_USE, _EXPORTABILITY, blocks)
            request = codec.encode_lu(zmk_key_block, wrapped, codec.KEY_BLOCK_FORMAT, tail)
        else:
            tail = f"{HASH_ID[identity.algorithm]}01{len(secret):04d}"
            request = codec.encode_lu(zmk_key_block, wrapped, codec.VARIANT_FORMAT, tail)
        (response,) = self._transport.exchange([request])
        key = codec.parse_key_response("LU", response)
        if key.key_format == codec.KEY_BLOCK_FORMAT:
            sealed = b"S" + key.value
        else:
            sealed = b"V" + HASH_ID[identity.algorithm].encode("ascii") + key.value
        self._open(identity, sealed)  # The HSM's answer must be what we asked for.
        return sealed

    # -- HMACs ---------------------------------------------------------------------------------

    def _open(self, identity: TokenIdentity, sealed: bytes) -> tuple[str, HmacKey]:
        """Check a sealed blob on the host (format, usage, binding); return hash id and key."""
        if sealed[:1] == b"V" and self.config.key_format == "variant":
            hash_id = sealed[1:3].decode("ascii", "replace")
            if hash_id != HASH_ID[identity.algorithm] or len(sealed) < 11:
                raise PayShieldKeyBlockError("sealed HMAC key does not match the token's hash")
            return hash_id, HmacKey(codec.VARIANT_FORMAT, sealed[3:])
        if sealed[:1] != b"S" or not sealed.isascii():
            raise PayShieldKeyBlockError("sealed secret is not a payShield key block")
        text = sealed[1:].decode("ascii")
        try:
            header, _body = split_key_block(text)
        except KeyBlockFormatError as exc:
            raise PayShieldKeyBlockError(f"sealed secret is a malformed key block: {exc}") from None
        if header.usage != HMAC_USAGE[identity.algorithm] or header.algorithm != "H":
            raise PayShieldKeyBlockError("key block usage does not match the token's hash")
        if self.config.bind_identity:
            found = header.block(BINDING_BLOCK_ID)
            if found is None or found != binding_block(identity.binding()):
                raise PayShieldKeyBlockError("key block is bound to another token")
        return "FF", HmacKey.key_block(text)

    def compute_hmacs(self, identity: TokenIdentity, sealed: bytes, messages: Sequence[bytes]) -> list[bytes]:
        """Return the HMAC of each message, computed by the HSM with pipelined LQ commands.

        :raises SealedSecretInvalid: the key block is malformed, bound elsewhere or refused.
        :raises KeyBackendUnavailable: no HSM answered in time (fail closed).
        """
        hash_id, key = self._open(identity, sealed)
        size = identity.algorithm.digest_size
        requests = [codec.encode_lq(hash_id, size, key, message) for message in messages]
        if not requests:
            return []
        responses = self._transport.exchange(requests, pipelined=self.config.pipelining)
        return [codec.parse_lr(response, size) for response in responses]

    def fingerprint(self, secret: Secret) -> bytes:
        """Return HMAC-SHA-256 under the HSM's fingerprint key of SHA-256(label, secret).

        Only the hash of the secret travels to the HSM, never the secret.

        :raises KeyBackendError: no fingerprint key (run ``otp-agent init``).
        """
        return self._fingerprint_hmac(hashlib.sha256(_FINGERPRINT_LABEL + secret.reveal()).digest())

    def _fingerprint_hmac(self, message: bytes) -> bytes:
        if self._fingerprint_key is None:
            raise KeyBackendError(
                "payShield fingerprint key missing: set keystore.payshield."
                "fingerprint_key_file and run otp-agent init"
            )
        key = HmacKey.key_block(self._fingerprint_key[1:])
        (response,) = self._transport.exchange([codec.encode_lq("FF", 32, key, message)])
        return codec.parse_lr(response, 32)

    def generate_secret(self, identity: TokenIdentity) -> bytes:
        """Generate the secret inside the HSM with L0: an HMAC key block under the LMK, generate
        only, not exportable, bound to the token; it never exists in clear, not even here."""
        if self.config.key_format != "keyblock":
            raise KeyBackendError('generating out-of-band secrets needs key_format = "keyblock"')
        blocks = (binding_block(identity.binding()),) if self.config.bind_identity else ()
        tail = attributes(HMAC_USAGE[identity.algorithm], "H0", _MODE_OF_USE, _EXPORTABILITY, blocks)
        request = codec.encode_l0(identity.algorithm.minimum_key_size, tail)
        (response,) = self._transport.exchange([request])
        key = codec.parse_key_response("L0", response)
        sealed = b"S" + key.value
        self._open(identity, sealed)  # The HSM's answer must be what we asked for.
        return sealed

    def binding_tag(self, message: bytes) -> bytes:
        """Return HMAC-SHA-256 of a token's binding message under the HSM-derived binding key."""
        with self._binding_lock:
            if self._binding_key is None:
                self._binding_key = Secret(self._fingerprint_hmac(hashlib.sha256(_BINDING_LABEL).digest()))
            key = self._binding_key.reveal()
        return hmac.digest(key, message, "sha256")

    def observe_failover(self, observer: Callable[[str, str], None]) -> None:
        """Call ``observer(previous, active)`` whenever another HSM takes over the requests."""
        self._transport.on_failover = observer

    # -- status --------------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        """Probe each HSM (NO) and report hosts, active HSM and what is configured."""
        report: dict[str, object] = {"backend": self.name}
        try:
            report.update(self._transport.health())
        except KeyBackendError as exc:
            report.update({"ok": False, "error": str(exc)})
        if self._self_test_note:
            report["self_test"] = self._self_test_note
        report.update(
            {
                "key_format": self.config.key_format,
                "fingerprint_key": self._fingerprint_key is not None,
                "import_enabled": self.config.zmk_file is not None,
            }
        )
        return report

    def close(self) -> None:
        """Close the connections and stop the transport thread; forget the binding key."""
        self._transport.close()
        with self._binding_lock:
            if self._binding_key is not None:
                self._binding_key.wipe()
                self._binding_key = None


def initialise_payshield(config: PayShieldConfig) -> list[str]:
    """Create what the configuration names and is missing: the fingerprint and self-test files.

    The fingerprint key is generated inside the HSM with L0 (HMAC-SHA-256, generate only, not
    exportable) and only its key block is written, with mode 0600.  The self-test file is
    described at :func:`_create_self_test`.  Existing files are never overwritten.

    :raises KeyBackendUnavailable: no HSM, or the HSM got the public test key's answer wrong.
    """
    messages: list[str] = []
    path = config.fingerprint_key_file
    self_test_path = config.self_test_path
    make_fingerprint = path is not None and not path.exists()
    make_self_test = self_test_path is not None and not self_test_path.exists()
    if path is None:
        messages.append("payShield: no fingerprint_key_file configured, nothing to create")
    elif not make_fingerprint:
        messages.append(f"payShield: fingerprint key {path} exists, kept")
    if self_test_path is not None and not make_self_test:
        messages.append(f"payShield: self-test key {self_test_path} exists, kept")
    if not (make_fingerprint or make_self_test):
        return messages
    key: HmacKey | None = None
    self_test: tuple[str, bytes, str] | None = None
    transport = Transport(config)
    try:
        transport.start()
        if make_fingerprint:
            request = codec.encode_l0(32, attributes("63", "H0", _MODE_OF_USE, _EXPORTABILITY))
            (response,) = transport.exchange([request])
            key = codec.parse_key_response("L0", response)
        if make_self_test:
            self_test = _create_self_test(config, transport)
    finally:
        transport.close()
    if key is not None and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write("S" + key.value.decode("ascii") + "\n")
        messages.insert(
            0, f"payShield: created fingerprint key block {path} (HMAC-SHA-256 generated in the HSM)"
        )
    if self_test is not None and self_test_path is not None:
        key_block, expected, source = self_test
        write_self_test_file(self_test_path, key_block, expected, source)
        how = (
            "the public test key imported with LU, answer checked against the host's"
            if source == SELF_TEST_PUBLIC
            else "a key generated in the HSM with L0, answer recorded from the HSM"
        )
        messages.append(f"payShield: created self-test key {self_test_path} ({how})")
    return messages


def _create_self_test(config: PayShieldConfig, transport: Transport) -> tuple[str, bytes, str]:
    """Make the self-test key block and its known answer: ``(S + key block, answer, source)``.

    With a ZMK, the public :data:`SELF_TEST_KEY` is imported with LU and the HSM's HMAC of
    :data:`SELF_TEST_MESSAGE` must equal the one computed on the host, so the answer owes
    nothing to the HSM.  Without one, a key is generated with L0 and the answer of the HSM
    init talks to is recorded (every HSM must then agree with it).

    :raises KeyBackendUnavailable: the HSM's answer for the public key is wrong.
    """
    tail = attributes("63", "H0", _MODE_OF_USE, _EXPORTABILITY)
    expected: bytes | None = None
    if config.zmk_file is not None and config.zmk_key_block_file is not None:
        zmk_key_block, wrapped = _wrap_under_zmk(config, SELF_TEST_KEY)
        request = codec.encode_lu(zmk_key_block, wrapped, codec.KEY_BLOCK_FORMAT, tail)
        command, source, expected = "LU", SELF_TEST_PUBLIC, self_test_answer()
    else:
        request, command, source = codec.encode_l0(32, tail), "L0", SELF_TEST_GENERATED
    (response,) = transport.exchange([request])
    key = codec.parse_key_response(command, response)
    (response,) = transport.exchange([codec.encode_lq("FF", 32, key, SELF_TEST_MESSAGE)])
    answer = codec.parse_lr(response, 32)
    if expected is not None and not hmac.compare_digest(answer, expected):
        raise KeyBackendUnavailable(
            "payShield answered the public self-test key's HMAC wrong (a faulty, misconfigured "
            "or impersonated HSM): no self-test file written; check the HSM and run otp-agent "
            "init again"
        )
    return "S" + key.value.decode("ascii"), answer, source
