"""The software key backend: master key rules, AES-GCM sealing bound to token identity."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import pytest

from otp_agent.errors import KeyBackendUnavailable, SealedSecretInvalid
from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.software import SoftwareKeyBackend, create_master_key
from otp_agent.oath import HashAlgorithm
from otp_agent.sensitive import Secret

SECRET = b"12345678901234567890"
ALICE = TokenIdentity("OATO00000001", HashAlgorithm.SHA1)
BOB = TokenIdentity("OATO00000002", HashAlgorithm.SHA1)


@pytest.fixture
def backend(tmp_path: Path) -> SoftwareKeyBackend:
    create_master_key(tmp_path / "master.key")
    return SoftwareKeyBackend(tmp_path / "master.key")


def test_master_key_created_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    assert create_master_key(path) is True
    first = path.read_bytes()
    assert len(first) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert create_master_key(path) is False
    assert path.read_bytes() == first


def test_master_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    create_master_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyBackendUnavailable, match="chmod 600"):
        SoftwareKeyBackend(path)


@pytest.mark.parametrize("content", [b"", b"short", os.urandom(33)])
def test_master_key_of_wrong_size_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyBackendUnavailable, match="exactly 32 bytes"):
        SoftwareKeyBackend(path)


def test_missing_master_key_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KeyBackendUnavailable, match="otp-agent init"):
        SoftwareKeyBackend(tmp_path / "absent.key")


def test_sealed_secret_computes_hmacs(backend: SoftwareKeyBackend) -> None:
    sealed = backend.seal_secret(ALICE, Secret(SECRET))
    assert SECRET not in sealed
    messages = [i.to_bytes(8, "big") for i in range(3)]
    assert backend.compute_hmacs(ALICE, sealed, messages) == [
        hmac.new(SECRET, m, "sha1").digest() for m in messages
    ]


def test_sealed_secret_copied_to_another_token_fails(backend: SoftwareKeyBackend) -> None:
    sealed = backend.seal_secret(ALICE, Secret(SECRET))
    with pytest.raises(SealedSecretInvalid, match="integrity"):
        backend.compute_hmacs(BOB, sealed, [b"\0" * 8])
    with pytest.raises(SealedSecretInvalid):
        backend.compute_hmacs(TokenIdentity(ALICE.serial, HashAlgorithm.SHA256), sealed, [b"\0" * 8])


def test_corrupted_sealed_secret_fails(backend: SoftwareKeyBackend) -> None:
    sealed = bytearray(backend.seal_secret(ALICE, Secret(SECRET)))
    sealed[20] ^= 1
    with pytest.raises(SealedSecretInvalid):
        backend.compute_hmacs(ALICE, bytes(sealed), [b"\0" * 8])
    with pytest.raises(SealedSecretInvalid, match="malformed"):
        backend.compute_hmacs(ALICE, b"\x01abc", [b"\0" * 8])


def test_wrong_master_key_cannot_open(backend: SoftwareKeyBackend, tmp_path: Path) -> None:
    sealed = backend.seal_secret(ALICE, Secret(SECRET))
    create_master_key(tmp_path / "other.key")
    with pytest.raises(SealedSecretInvalid):
        SoftwareKeyBackend(tmp_path / "other.key").compute_hmacs(ALICE, sealed, [b"\0" * 8])


def test_fingerprint_is_keyed_and_stable(backend: SoftwareKeyBackend, tmp_path: Path) -> None:
    first = backend.fingerprint(Secret(SECRET))
    assert first == backend.fingerprint(Secret(SECRET)) and SECRET not in first
    create_master_key(tmp_path / "other.key")
    assert SoftwareKeyBackend(tmp_path / "other.key").fingerprint(Secret(SECRET)) != first


def test_secret_wrapper_never_shows_its_bytes() -> None:
    secret = Secret(SECRET)
    assert "1234" not in repr(secret) and "1234" not in str(secret) and "20 bytes" in repr(secret)
    with pytest.raises(TypeError):
        secret == Secret(SECRET)  # noqa: B015
    secret.wipe()
    assert len(secret) == 0


def test_group_readable_key_accepted_only_as_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's tmpfs+ACL credentials read 0440; the same mode elsewhere is refused."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    key = credentials / "master.key"
    create_master_key(key)
    key.chmod(0o440)
    with pytest.raises(KeyBackendUnavailable, match="group or others"):
        SoftwareKeyBackend(key)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    SoftwareKeyBackend(key).close()
    key.chmod(0o444)
    with pytest.raises(KeyBackendUnavailable, match="group or others"):
        SoftwareKeyBackend(key)
