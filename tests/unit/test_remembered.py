"""Remembered hosts in the engine: who is remembered, for how long, and what ends it."""

from __future__ import annotations

from dataclasses import replace

from otp_agent.audit import RequestContext
from otp_agent.store import Remembered
from tests.unit.test_validation import add_token, code, step

PAM = RequestContext(peer_uid=0, peer_pid=1, service="sshd", rhost="198.51.100.7")


def test_remembered_after_an_acceptance_until_the_time_is_up(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1")
    validator = setup(remember_seconds=600)
    assert validator.remembered.check("alice", PAM) is False
    assert validator.validate("alice", code(step(clock)), PAM).accepted
    assert validator.remembered.check("alice", PAM) is True
    other_host = replace(PAM, rhost="203.0.113.9")
    other_service = replace(PAM, service="sshd-other")
    assert not validator.remembered.check("alice", other_host) and not validator.remembered.check(
        "alice", other_service
    )
    clock.advance(601)
    assert validator.remembered.check("alice", PAM) is False


def test_never_without_a_remote_host_nor_for_other_callers_nor_when_off(
    setup, store, key_backend, clock
) -> None:
    add_token(store, key_backend, "T1")
    validator = setup(remember_seconds=600)
    console = replace(PAM, rhost=None)
    assert validator.validate("alice", code(step(clock)), console).accepted
    assert (
        validator.remembered.check("alice", console) is False
        and store.remembered("alice", "", "sshd") is None
    )
    clock.advance(30)
    user_peer = replace(PAM, peer_uid=1000)  # an ordinary peer may say any rhost: not recorded
    assert validator.validate("alice", code(step(clock)), user_peer).accepted
    assert validator.remembered.check("alice", PAM) is False
    off = setup()
    clock.advance(30)
    assert off.validate("alice", code(step(clock)), PAM).accepted
    assert off.remembered.check("alice", PAM) is False


def test_any_refusal_ends_it(setup, store, key_backend, clock) -> None:
    add_token(store, key_backend, "T1")
    validator = setup(remember_seconds=600)
    assert validator.validate("alice", code(step(clock)), PAM).accepted
    assert validator.remembered.check("alice", PAM)
    assert validator.validate("alice", "000000", replace(PAM, rhost="203.0.113.9")).reason == "bad_code"
    assert validator.remembered.check("alice", PAM) is False


def test_a_row_written_by_a_store_writer_is_ignored(setup, store, key_backend, clock) -> None:
    validator = setup(remember_seconds=600)
    store.remember(Remembered("alice", "198.51.100.7", "sshd", clock() + 600, b"\0" * 32))
    assert validator.remembered.check("alice", PAM) is False
    entry = Remembered("alice", "198.51.100.7", "sshd", clock() + 600)
    store.remember(replace(entry, binding=key_backend.binding_tag(entry.binding_message())))
    assert validator.remembered.check("alice", PAM) is True
    longer = replace(entry, until=clock() + 86400, binding=key_backend.binding_tag(entry.binding_message()))
    store.remember(longer)  # the end time is covered by the tag: extending it breaks the tag
    assert validator.remembered.check("alice", PAM) is False
