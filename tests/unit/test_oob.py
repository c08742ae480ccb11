"""Out-of-band codes through the real engine, store and every key backend, delivered by a real
command channel (a script that writes the message it is given to a file).

On the payShield backend the secret is generated inside the HSM simulator (L0) and each code is
computed with one LQ; nothing of a code is ever stored.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from otp_agent.administration import Administration
from otp_agent.audit import AuditLog, RequestContext
from otp_agent.channels import parse_channels
from otp_agent.config import PolicyConfig
from otp_agent.errors import ChannelError, NotFound, SendRefused
from otp_agent.keystore import KeyBackend
from otp_agent.oath import HashAlgorithm, OathParams, TokenType
from otp_agent.oob import OutOfBand
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.validation import Validator
from tests.conftest import FakeClock

CONTEXT = RequestContext(peer_uid=0, peer_pid=1, service="app")


class Setup:
    """An out-of-band token of alice on the test's store and key backend, and its mailbox."""

    def __init__(
        self,
        store: SQLiteStore,
        keys: KeyBackend,
        audit: AuditLog,
        clock: FakeClock,
        tmp: Path,
        **policy: int,
    ) -> None:
        self.tmp, self.store, self.audit = tmp, store, audit
        self.outbox = tmp / "outbox"
        self.exit_status = tmp / "exit-status"
        script = tmp / "deliver.sh"
        script.write_text(
            f'#!/bin/sh\ncat >> "{self.outbox}"\necho >> "{self.outbox}"\n'
            f'exit "$(cat "{self.exit_status}" 2>/dev/null || echo 0)"\n'
        )
        script.chmod(0o755)
        channels = parse_channels({"sms": {"kind": "command", "command": [str(script), "{address}"]}}, tmp)
        self.policy = PolicyConfig(**policy)  # type: ignore[arg-type]
        self.validator = Validator(store, keys, self.policy, audit, clock=clock)
        self.oob = OutOfBand(
            store, keys, self.policy, audit, channels, check_binding=self.validator.check_binding, clock=clock
        )
        reply = Administration(store, keys, audit).enroll_oob(
            "alice",
            OathParams(TokenType.OOB, HashAlgorithm.SHA1, 6),
            "sms",
            "+4915112345689",
            "Example",
            CONTEXT,
        )
        self.serial: str = reply["serial"]
        assert re.fullmatch(r"\+49\*+89", reply["token"]["address"]) and "uri" not in reply

    def send(self) -> str:
        """Send a code to alice and return it, read from what the channel delivered."""
        before = self.outbox.read_text() if self.outbox.exists() else ""
        self.oob.send("alice", None, CONTEXT)
        message = self.outbox.read_text()[len(before) :]
        found = re.search(r"code is (\d{6})", message)
        assert found, message
        return found.group(1)

    def check(self, code: str) -> str:
        return self.validator.validate("alice", code, CONTEXT).reason.value


@pytest.fixture
def oob(store, key_backend, audit, clock, tmp_path) -> Callable[..., Setup]:
    return lambda **policy: Setup(store, key_backend, audit, clock, tmp_path, **policy)


def test_sent_code_accepted_once_and_nothing_of_it_stored(oob, tmp_path: Path, audit: AuditLog) -> None:
    setup = oob()
    code = setup.send()
    assert (
        "Your Example code is" in setup.outbox.read_text()
        and "expires in 5 minutes" in setup.outbox.read_text()
    )
    assert setup.check(code) == "accepted"
    assert setup.check(code) == "replay"
    audit.flush()
    for path in (tmp_path / "tokens.db", tmp_path / "tokens.db-wal", tmp_path / "audit.log"):
        if path.exists():
            assert code.encode() not in path.read_bytes(), path
    log = (tmp_path / "audit.log").read_text()
    assert '"event":"send"' in log and '"result":"sent"' in log and "+4915112345689" not in log
    assert re.search(r"\+49\*+89", log)


def test_only_sent_codes_within_their_validity(oob, clock: FakeClock) -> None:
    setup = oob()
    assert setup.check("123456") in ("bad_code",)  # nothing sent: nothing accepted (no look-ahead)
    code = setup.send()
    clock.advance(301)
    assert setup.check(code) == "expired"


def test_an_acceptance_invalidates_older_codes_a_new_send_does_not(oob, clock: FakeClock) -> None:
    setup = oob()
    first = setup.send()
    clock.advance(61)
    second = setup.send()
    clock.advance(61)
    third = setup.send()
    assert setup.check(second) == "accepted"  # the first is still valid until then
    assert setup.check(first) == "replay"
    assert setup.check(third) == "accepted"


def test_resend_blocking_and_the_hourly_limit(oob, clock: FakeClock) -> None:
    setup = oob(oob_resend_interval=60, oob_max_per_hour=3)
    setup.send()
    with pytest.raises(SendRefused) as blocked:
        setup.send()
    assert blocked.value.reason == "resend_blocked"
    for _ in range(2):
        clock.advance(61)
        setup.send()
    clock.advance(61)
    with pytest.raises(SendRefused) as limited:
        setup.send()
    assert limited.value.reason == "rate_limited"
    clock.advance(3600)
    setup.send()


def test_a_failed_delivery_is_an_error_and_its_code_never_works(oob) -> None:
    setup = oob(oob_resend_interval=0)
    setup.exit_status.write_text("3")
    with pytest.raises(ChannelError, match="exit"):
        setup.oob.send("alice", None, CONTEXT)
    undelivered = re.search(r"code is (\d{6})", setup.outbox.read_text()).group(1)  # type: ignore[union-attr]
    assert setup.check(undelivered) == "bad_code"
    setup.exit_status.write_text("0")
    assert setup.check(setup.send()) == "accepted"


def test_locked_and_disabled_tokens_get_no_code(oob, store: SQLiteStore) -> None:
    setup = oob(lock_threshold=2, oob_resend_interval=0)
    for wrong in ("000000", "000001"):
        setup.check(wrong)
    with pytest.raises(SendRefused) as locked:
        setup.send()
    assert locked.value.reason == "locked"
    store.set_enabled(setup.serial, False)
    with pytest.raises(NotFound):
        setup.send()


def test_concurrent_sends_never_hand_out_one_counter(oob, store: SQLiteStore) -> None:
    setup = oob(oob_resend_interval=0, oob_max_per_hour=100)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def send() -> None:
        barrier.wait()
        try:
            setup.oob.send("alice", None, CONTEXT)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    token = store.get(setup.serial)
    assert token is not None and token.counter == 6
    assert sorted(s.counter for s in token.sends) == list(range(6))
    codes = re.findall(r"code is (\d{6})", setup.outbox.read_text())
    assert len(set(codes)) == 6


def test_a_code_survives_a_restart_of_the_agent(
    oob,
    store: SQLiteStore,
    key_backend: KeyBackend,
    audit: AuditLog,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    setup = oob()
    code = setup.send()
    store.close()
    reopened = SQLiteStore(tmp_path / "tokens.db")
    try:
        fresh = Validator(reopened, key_backend, setup.policy, audit, clock=clock)
        assert fresh.validate("alice", code, CONTEXT).reason == "accepted"
    finally:
        reopened.close()


def test_a_send_racing_an_acceptance_stays_consistent(oob, store: SQLiteStore) -> None:
    """While one thread validates the code sent first, others send new ones: the first code is
    accepted exactly once, every send gets its own counter, and the newer codes still work."""
    setup = oob(oob_resend_interval=0, oob_max_per_hour=100)
    first = setup.send()
    barrier = threading.Barrier(4)
    reasons: list[str] = []

    def validate() -> None:
        barrier.wait()
        reasons.append(setup.check(first))

    def send() -> None:
        barrier.wait()
        setup.oob.send("alice", None, CONTEXT)

    threads = [threading.Thread(target=validate), threading.Thread(target=validate)]
    threads += [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(reasons) == ["accepted", "replay"]
    token = store.get(setup.serial)
    assert token is not None and token.counter == 3 and token.last_step == 0
    newest = re.findall(r"code is (\d{6})", setup.outbox.read_text())[-1]
    assert setup.check(newest) == "accepted"


def test_out_of_band_tokens_are_neither_exported_nor_imported(
    oob, store: SQLiteStore, key_backend: KeyBackend, audit: AuditLog
) -> None:
    from otp_agent.administration import token_spec_from_record
    from otp_agent.errors import UsageError

    setup = oob()
    admin = Administration(store, key_backend, audit)
    if getattr(key_backend, "export_secret", None) is not None:
        assert all(t["serial"] != setup.serial for t in admin.export_tokens(CONTEXT)["tokens"])
    with pytest.raises(UsageError, match="not imported"):
        token_spec_from_record({"serial": "X1", "type": "oob", "secret_b64": "cXFxcXFxcXFxcXFxcXFxcXFxcXE="})
