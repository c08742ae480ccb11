"""The software key backend: secrets sealed with AES-256-GCM under a root-only master key file.

The master key file holds exactly 32 random bytes and must not be readable by group or others.
Three sub-keys are derived from it with HKDF-SHA256: one seals secrets, one keys the fingerprints
that keep secrets unique, one keys the binding tags over each token's owner and parameters.  A sealed blob is ``version || nonce || ciphertext+tag`` with the token
identity as associated data, so a blob copied to another token's row fails to open.  HMACs are
computed in-process; the clear secret lives only for the duration of one batch.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from otp_agent.errors import KeyBackendUnavailable, SealedSecretInvalid
from otp_agent.keystore import TokenIdentity
from otp_agent.sensitive import Secret

MASTER_KEY_SIZE = 32
_BLOB_VERSION = b"\x01"
_NONCE_SIZE = 12


def create_master_key(path: Path) -> bool:
    """Create a fresh master key file with mode 0600; return False if one already exists."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, os.urandom(MASTER_KEY_SIZE))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return True


def _is_systemd_credential(path: Path) -> bool:
    """True when ``path`` is the very file systemd passed as a credential (``LoadCredential=``).

    systemd may place credentials on a tmpfs with an ACL, where the mode reads 0440 although only
    the service can read it: group read is then accepted, nothing else.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return False
    try:
        return os.path.samefile(path, os.path.join(directory, path.name)) or os.path.samefile(
            path, os.path.join(directory, "master.key")
        )
    except OSError:
        return False


def read_master_key(path: Path) -> Secret:
    """Read and check the master key file.

    :raises KeyBackendUnavailable: missing, unreadable, wrong size, or readable by others.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyBackendUnavailable(
            f"master key file {path} does not exist (create it with: otp-agent init)"
        ) from None
    except OSError as exc:
        raise KeyBackendUnavailable(f"master key file {path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise KeyBackendUnavailable(f"master key file {path} is not a regular file")
        if info.st_mode & (0o077 if not _is_systemd_credential(path) else 0o037):
            raise KeyBackendUnavailable(
                f"master key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        data = os.read(descriptor, MASTER_KEY_SIZE + 1)
    finally:
        os.close(descriptor)
    if len(data) != MASTER_KEY_SIZE:
        raise KeyBackendUnavailable(f"master key file {path} must hold exactly {MASTER_KEY_SIZE} bytes")
    return Secret(data)


def _derive(master: Secret, purpose: bytes) -> Secret:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"otp-agent/" + purpose)
    return Secret(hkdf.derive(master.reveal()))


class SoftwareKeyBackend:
    """Key backend whose sealing key is derived from a master key file."""

    name = "software"

    def __init__(self, master_key_file: Path) -> None:
        self._path = master_key_file
        with read_master_key(master_key_file) as master:
            self._seal_key = _derive(master, b"seal/v1")
            self._fingerprint_key = _derive(master, b"fingerprint/v1")
            self._binding_key = _derive(master, b"binding/v1")
        self._aead = AESGCM(self._seal_key.reveal())

    def __repr__(self) -> str:
        return f"SoftwareKeyBackend(master_key_file={str(self._path)!r})"

    def seal_secret(self, identity: TokenIdentity, secret: Secret) -> bytes:
        """Seal ``secret`` for ``identity`` with AES-256-GCM."""
        nonce = os.urandom(_NONCE_SIZE)
        return _BLOB_VERSION + nonce + self._aead.encrypt(nonce, secret.reveal(), identity.binding())

    def _open(self, identity: TokenIdentity, sealed: bytes) -> Secret:
        if len(sealed) < 1 + _NONCE_SIZE + 16 or sealed[:1] != _BLOB_VERSION:
            raise SealedSecretInvalid(f"sealed secret of token {identity.serial} is malformed")
        nonce, body = sealed[1 : 1 + _NONCE_SIZE], sealed[1 + _NONCE_SIZE :]
        try:
            return Secret(self._aead.decrypt(nonce, body, identity.binding()))
        except InvalidTag:
            raise SealedSecretInvalid(
                f"sealed secret of token {identity.serial} failed its integrity check "
                "(tampered, copied from another token, or a different master key)"
            ) from None

    def compute_hmacs(self, identity: TokenIdentity, sealed: bytes, messages: Sequence[bytes]) -> list[bytes]:
        """Open the sealed secret and compute one HMAC per message."""
        digest = identity.algorithm.value
        with self._open(identity, sealed) as secret:
            key = secret.reveal()
            return [hmac.digest(key, message, digest) for message in messages]

    def export_secret(self, identity: TokenIdentity, sealed: bytes) -> Secret:
        """Open a sealed secret for an encrypted export (the caller wipes it)."""
        return self._open(identity, sealed)

    def fingerprint(self, secret: Secret) -> bytes:
        """Return HMAC-SHA256 of the secret under the fingerprint sub-key."""
        return hmac.new(self._fingerprint_key.reveal(), secret.reveal(), hashlib.sha256).digest()

    def generate_secret(self, identity: TokenIdentity) -> bytes:
        """A random secret of the algorithm's size, sealed at once (never returned in clear)."""
        with Secret(os.urandom(identity.algorithm.minimum_key_size)) as secret:
            return self.seal_secret(identity, secret)

    def binding_tag(self, message: bytes) -> bytes:
        """Return HMAC-SHA256 of a token's binding message under the binding sub-key."""
        return hmac.digest(self._binding_key.reveal(), message, "sha256")

    def health(self) -> dict[str, object]:
        """Report the backend as healthy once the master key was loaded."""
        return {"ok": True, "backend": self.name, "master_key_file": str(self._path)}

    def close(self) -> None:
        """Forget the derived keys."""
        self._seal_key.wipe()
        self._fingerprint_key.wipe()
        self._binding_key.wipe()
