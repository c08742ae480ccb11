"""Self-service through the dispatcher: policy, the peer's own name only, pending tokens, expiry."""

from __future__ import annotations

import pwd
import threading
from typing import Any

import pytest

from otp_agent.administration import Administration
from otp_agent.daemon.dispatch import Dispatcher, Peer
from otp_agent.selfservice import PendingSweeper
from otp_agent.testing import code_for_uri
from tests.conftest import make_validator

ROOT = Peer(pid=1, uid=0, gid=0)
NOBODY = pwd.getpwnam("nobody")
USER = Peer(pid=2, uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)
DAEMON = pwd.getpwnam("daemon")
OTHER = Peer(pid=3, uid=DAEMON.pw_uid, gid=DAEMON.pw_gid)


def build(store, key_backend, audit, clock, **policy: Any) -> Dispatcher:
    validator = make_validator(store, key_backend, audit, clock, **policy)
    admin = Administration(store, key_backend, audit, clock=clock)
    return Dispatcher(validator, admin, admin_group=None, status=dict)


def call(dispatcher: Dispatcher, peer: Peer, op: str, **fields: Any) -> dict[str, Any]:
    return dispatcher.handle({"v": 1, "op": op, **fields}, peer)


def test_pending_until_confirmed_then_usable(store, key_backend, audit, clock) -> None:
    dispatcher = build(store, key_backend, audit, clock, self_enroll="always", pending_lifetime=600)
    reply = call(dispatcher, USER, "enroll", type="totp")
    assert reply["ok"] and reply["token"]["user"] == "nobody"
    assert reply["token"]["pending_until"] == pytest.approx(clock() + 600)
    serial, uri = reply["serial"], reply["uri"]
    assert call(dispatcher, USER, "enrolled", user="nobody")["enrolled"] is True
    pending = call(dispatcher, USER, "validate", user="nobody", code=code_for_uri(uri, now=clock()))
    assert (pending["result"], pending["reason"]) == ("reject", "pending")
    # Another user cannot confirm it, even with the right code.
    foreign = call(dispatcher, OTHER, "confirm", serial=serial, code=code_for_uri(uri, now=clock()))
    assert foreign["error"]["code"] == "not_found"
    wrong = call(dispatcher, USER, "confirm", serial=serial, code="000000")
    assert wrong["result"] == "reject" and store.get(serial).failures == 1
    confirmed = call(dispatcher, USER, "confirm", serial=serial, code=code_for_uri(uri, now=clock()))
    assert (confirmed["result"], confirmed["reason"]) == ("accept", "accepted")
    assert store.get(serial).pending is False  # (failures decay with time, as after any acceptance)
    # The confirming code was consumed; the next step's code logs in.
    assert (
        call(dispatcher, USER, "validate", user="nobody", code=code_for_uri(uri, now=clock()))["reason"]
        == "replay"
    )
    clock.advance(30)
    assert (
        call(dispatcher, USER, "validate", user="nobody", code=code_for_uri(uri, now=clock()))["result"]
        == "accept"
    )
    assert call(dispatcher, USER, "confirm", serial=serial, code="123456")["error"]["code"] == "not_found"


def test_only_the_peers_own_name(store, key_backend, audit, clock) -> None:
    dispatcher = build(store, key_backend, audit, clock, self_enroll="always", self_service=True)
    for op, fields in (("enroll", {"user": "root"}), ("backup_codes", {"user": "root"})):
        assert call(dispatcher, USER, op, **fields)["error"]["code"] == "permission", op
    assert call(dispatcher, USER, "enroll", user="nobody")["ok"] is True
    call(dispatcher, ROOT, "enroll", user="root")
    listed = call(dispatcher, USER, "list")
    assert listed["user"] == "nobody" and {t["user"] for t in listed["tokens"]} == {"nobody"}
    codes = call(dispatcher, USER, "backup_codes", count=3)
    assert codes["user"] == "nobody" and len(codes["codes"]) == 3
    assert call(dispatcher, USER, "backup_codes", revoke=True)["error"]["code"] == "permission"
    assert call(dispatcher, ROOT, "show", target="nobody")["backup_codes_remaining"] == 3
    # Administrative operations stay refused.
    for op in ("show", "remove", "unlock", "assign", "import", "export", "check"):
        assert call(dispatcher, USER, op, target="nobody", serial="x")["error"]["code"] == "permission", op


def test_policy_never_first_always(store, key_backend, audit, clock) -> None:
    never = build(store, key_backend, audit, clock)
    assert call(never, USER, "enroll")["error"]["code"] == "permission"
    assert call(never, USER, "list")["error"]["code"] == "permission"  # self_service off
    first = build(store, key_backend, audit, clock, self_enroll="first")
    one = call(first, USER, "enroll")
    two = call(first, USER, "enroll")  # replaces the pending one
    assert store.get(one["serial"]) is None and store.get(two["serial"]).pending
    call(first, USER, "confirm", serial=two["serial"], code=code_for_uri(two["uri"], now=clock()))
    refused = call(first, USER, "enroll")
    assert refused["error"]["code"] == "permission" and "already has a token" in refused["error"]["message"]
    always = build(store, key_backend, audit, clock, self_enroll="always")
    assert call(always, USER, "enroll")["ok"] is True
    assert (
        call(always, USER, "enroll", type="oob", channel="x", address="a@b.c")["error"]["code"]
        == "permission"
    )
    audit.flush()
    log = audit._path.read_text()
    assert log.count('"result":"refused"') >= 3 and '"event":"confirm"' in log


def test_unconfirmed_tokens_expire_and_are_swept(store, key_backend, audit, clock) -> None:
    dispatcher = build(store, key_backend, audit, clock, self_enroll="always", pending_lifetime=60)
    reply = call(dispatcher, USER, "enroll")
    clock.advance(61)
    # Past its time it no longer counts, even before the sweeper passes.
    assert call(dispatcher, USER, "enrolled", user="nobody")["enrolled"] is False
    late = call(
        dispatcher, USER, "confirm", serial=reply["serial"], code=code_for_uri(reply["uri"], now=clock())
    )
    assert late["error"]["code"] == "not_found"
    sweeper = PendingSweeper(dispatcher.admin, interval=0.01)
    swept = threading.Event()
    original = sweeper.sweep

    def sweep() -> list[str]:
        removed = original()
        if removed:
            swept.set()
        return removed

    sweeper.sweep = sweep  # type: ignore[method-assign]
    sweeper.start()
    try:
        assert swept.wait(5)
    finally:
        sweeper.stop()
    assert store.get(reply["serial"]) is None
    audit.flush()
    assert '"event":"expire"' in audit._path.read_text()
