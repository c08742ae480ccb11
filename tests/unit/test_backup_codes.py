"""Backup codes in the validation engine: format, single use, lock interplay, break-glass."""

from __future__ import annotations

import math
import threading

import pytest

from otp_agent import backup
from otp_agent.errors import KeyBackendUnavailable, UsageError
from otp_agent.store.models import BACKUP_SCRATCH
from otp_agent.wire import Reason
from tests.unit.test_validation import CONTEXT, add_token, code, step


def test_format_cannot_be_taken_for_a_code_and_carries_40_bits() -> None:
    codes = backup.generate(200)
    assert len(set(codes)) == 200
    assert math.log2(len(backup.ALPHABET)) * backup.LENGTH >= 40
    for item in codes:
        shown = backup.printed(item)
        assert len(shown) == backup.PRINTED_LENGTH and shown.count("-") == 2
        assert not any(ch.isdigit() for ch in item) and not set(item) & set("ilo")
        assert backup.normalise(shown.upper()) == item
        assert backup.normalise(shown.replace("-", " ")) == item
    for not_backup in ("123456", "12345678", "1234567890", "abcd-efgh-j1", "abcdefghi", "abcdefghjkm", ""):
        assert backup.normalise(not_backup) is None
    assert backup.normalise("abcd-efgh-jl") is None  # 'l' is not in the alphabet


def test_password_and_code_splits_by_the_fixed_length() -> None:
    assert backup.split_password_and_code("pw-ABCD-EFGH-JK") == [("pw-", "ABCD-EFGH-JK")]
    assert backup.split_password_and_code("pwabcdefghjk") == [("pw", "abcdefghjk")]
    assert backup.split_password_and_code("pw123456") == []
    assert backup.split_password_and_code("abcdefghjk") == []  # no password part


def test_stored_only_as_salted_slow_hashes(setup, store, key_backend) -> None:
    validator = setup()
    printed = validator.backup.create("alice", 5)
    rows = store.backup_codes("alice")
    assert len(rows) == 5 and {r.scheme for r in rows} == {backup.SCHEME}
    database = store.path.read_bytes() + store.path.with_name(store.path.name + "-wal").read_bytes()
    for shown in printed:
        normal = backup.normalise(shown)
        assert normal is not None
        assert shown.encode() not in database and normal.encode() not in database
        assert normal not in repr(rows)
    assert len({r.salt for r in rows}) == 1 and len(rows[0].salt) == 16


def test_accepted_once_then_replay_and_counts_remaining(setup, store, key_backend, clock, audit) -> None:
    add_token(store, key_backend, "T1")
    validator = setup()
    printed = validator.backup.create("alice", 3)
    first = validator.validate("alice", printed[1].upper().replace("-", ""), CONTEXT)
    assert (first.accepted, first.reason, first.remaining) == (True, Reason.BACKUP_CODE, 2)
    again = validator.validate("alice", printed[1], CONTEXT)
    assert (again.accepted, again.reason) == (False, Reason.REPLAY)
    assert store.get("T1").failures == 0  # a replay is not counted
    assert validator.backup.remaining("alice") == 2
    audit.flush()
    log = audit._path.read_text()
    assert '"reason":"backup_code"' in log and '"backup_codes_remaining":2' in log
    assert printed[1] not in log and backup.normalise(printed[1]) not in log


def test_a_new_set_replaces_the_old_one(setup, store, key_backend) -> None:
    validator = setup()
    old = validator.backup.create("alice", 2)
    validator.backup.create("alice", 4)
    assert validator.validate("alice", old[0], CONTEXT).reason is Reason.BAD_CODE
    assert validator.backup.remaining("alice") == 4
    with pytest.raises(UsageError):
        validator.backup.create("alice", 0)


def test_wrong_backup_code_counts_toward_the_lock_and_a_right_one_opens_it(setup, store, key_backend) -> None:
    add_token(store, key_backend, "T1")
    validator = setup(lock_threshold=3)
    printed = validator.backup.create("alice", 2)
    wrong = backup.printed("".join(reversed(backup.normalise(printed[0]) or "")))
    for _ in range(3):
        assert validator.validate("alice", wrong, CONTEXT).reason is Reason.BAD_CODE
    assert store.get("T1").locked_until > 0
    assert validator.validate("alice", wrong, CONTEXT).reason is Reason.LOCKED
    opened = validator.validate("alice", printed[0], CONTEXT)
    assert (opened.accepted, opened.reason) == (True, Reason.BACKUP_CODE)
    token = store.get("T1")
    assert token.failures == 0 and token.locked_until <= validator.clock()


def test_disabled_tokens_still_block_a_backup_code(setup, store, key_backend) -> None:
    add_token(store, key_backend, "T1", enabled=False)
    validator = setup()
    printed = validator.backup.create("alice", 1)
    assert validator.validate("alice", printed[0], CONTEXT).reason is Reason.DISABLED
    assert validator.backup.remaining("alice") == 1


def test_backup_codes_make_a_user_enrolled(setup, store, key_backend) -> None:
    validator = setup(unenrolled="allow")
    assert validator.is_enrolled("bob") is False
    validator.backup.create("bob", 1)
    assert validator.is_enrolled("bob") is True
    # With backup codes, a user without a token is not waved through by the roll-out policy.
    assert validator.validate("bob", "123456", CONTEXT).reason is Reason.NO_TOKEN


def test_parallel_uses_of_one_code_give_one_acceptance(setup, store, key_backend) -> None:
    validators = [setup() for _ in range(4)]  # separate engines: no shared per-user lock
    printed = validators[0].backup.create("alice", 1)
    results: list[bool] = []
    barrier = threading.Barrier(len(validators))

    def attempt(index: int) -> None:
        barrier.wait()
        results.append(validators[index].validate("alice", printed[0], CONTEXT).accepted)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(validators))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]


def test_a_code_added_by_a_store_writer_is_refused(setup, store, key_backend) -> None:
    validator = setup()
    validator.backup.create("alice", 1)
    forged = backup.generate(1)[0]
    rows = validator.backup.hashed("alice", [forged], "generated")
    # Written without the key backend's tag (as a store writer would):
    from dataclasses import replace

    store.replace_backup_codes("alice", [replace(rows[0], binding=b"\0" * 32)])
    decision = validator.validate("alice", forged, CONTEXT)
    assert (decision.accepted, decision.reason) == (False, Reason.SEALED_SECRET_INVALID)


def test_scratch_codes_are_tried_after_tokens_and_work_without_the_key_backend(
    setup, store, key_backend, clock, monkeypatch
) -> None:
    add_token(store, key_backend, "T1", digits=8)
    validator = setup()
    store.replace_backup_codes(
        "alice", validator.backup.hashed("alice", ["12345678", "87654321"], BACKUP_SCRATCH)
    )
    hit = validator.validate("alice", code(step(clock), digits=8), CONTEXT)
    assert hit.reason is Reason.ACCEPTED
    assert validator.validate("alice", "12345678", CONTEXT).reason is Reason.BACKUP_CODE
    assert validator.validate("alice", "12345678", CONTEXT).reason is Reason.REPLAY

    def down(*_args: object) -> list[bytes]:
        raise KeyBackendUnavailable("the HSM is down")

    monkeypatch.setattr(validator.keys, "compute_hmacs", down)
    assert validator.validate("alice", "11111111", CONTEXT).reason is Reason.KEYSTORE_UNAVAILABLE
    assert store.get("T1").failures == 0  # nothing decided, nothing counted
    broke_in = validator.validate("alice", "87654321", CONTEXT)
    assert (broke_in.accepted, broke_in.reason, broke_in.remaining) == (True, Reason.BACKUP_CODE, 0)


def test_generated_codes_work_without_the_key_backend(setup, store, key_backend, monkeypatch) -> None:
    add_token(store, key_backend, "T1")
    validator = setup()
    printed = validator.backup.create("alice", 1)

    def down(*_args: object) -> list[bytes]:
        raise KeyBackendUnavailable("the HSM is down")

    monkeypatch.setattr(validator.keys, "compute_hmacs", down)
    monkeypatch.setattr(validator.keys, "seal_secret", down)
    assert validator.validate("alice", printed[0], CONTEXT).accepted is True


def test_scratch_codes_are_not_tried_while_the_tokens_are_locked(setup, store, key_backend) -> None:
    add_token(store, key_backend, "T1", digits=8, locked_until=10**10)
    validator = setup()
    store.replace_backup_codes("alice", validator.backup.hashed("alice", ["12345678"], BACKUP_SCRATCH))
    assert validator.validate("alice", "12345678", CONTEXT).reason is Reason.LOCKED
    assert validator.backup.remaining("alice") == 1
