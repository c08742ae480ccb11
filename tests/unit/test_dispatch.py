"""Request dispatch: authorisation by peer credentials and canonical user names."""

from __future__ import annotations

import pwd
from typing import Any

import pytest

from otp_agent import accounts
from otp_agent.administration import Administration
from otp_agent.daemon.dispatch import Dispatcher, Peer
from otp_agent.errors import AccountLookupError
from otp_agent.testing import code_for_uri
from tests.conftest import make_validator

ROOT = Peer(pid=1, uid=0, gid=0)


@pytest.fixture
def dispatcher(store, key_backend, audit, clock) -> Dispatcher:
    validator = make_validator(store, key_backend, audit, clock)
    return Dispatcher(
        validator, Administration(store, key_backend, audit), admin_group=None, status=lambda: {}
    )


def call(dispatcher: Dispatcher, peer: Peer, op: str, **fields: Any) -> dict[str, Any]:
    return dispatcher.handle({"v": 1, "op": op, **fields}, peer)


def test_case_insensitive_account_lookup_finds_the_canonical_tokens(
    dispatcher: Dispatcher, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like sssd with case_sensitive = false: getpwnam("ALICE") answers with the account "alice"."""
    real = accounts.lookup_account

    def lookup(name: str) -> str | None:
        return "alice" if name.lower() == "alice" else real(name)

    monkeypatch.setattr(accounts, "lookup_account", lookup)
    uri = call(dispatcher, ROOT, "enroll", user="Alice", type="hotp")["uri"]
    assert call(dispatcher, ROOT, "list")["tokens"][0]["user"] == "alice"
    assert call(dispatcher, ROOT, "enrolled", user="ALICE")["enrolled"] is True
    reply = call(dispatcher, ROOT, "validate", user="ALICE", code=code_for_uri(uri, counter=0))
    assert reply["result"] == "accept"


def test_unknown_accounts_keep_their_exact_name(dispatcher: Dispatcher) -> None:
    call(dispatcher, ROOT, "enroll", user="No-Such-Account-Here")
    assert call(dispatcher, ROOT, "enrolled", user="no-such-account-here")["enrolled"] is False
    assert call(dispatcher, ROOT, "enrolled", user="No-Such-Account-Here")["enrolled"] is True


def test_non_root_peer_only_its_own_user_and_no_admin(dispatcher: Dispatcher) -> None:
    nobody = pwd.getpwnam("nobody")
    peer = Peer(pid=2, uid=nobody.pw_uid, gid=nobody.pw_gid)
    assert call(dispatcher, peer, "validate", user="root", code="123456")["error"]["code"] == "permission"
    assert call(dispatcher, peer, "validate", user="nobody", code="123456")["reason"] == "no_token"
    for op in ("list", "enroll", "export", "import", "unlock", "status", "check"):
        assert call(dispatcher, peer, op, user="nobody")["error"]["code"] == "permission"


def test_a_failing_account_lookup_fails_closed(
    store, key_backend, audit, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name service error is not "no such user": with unenrolled = "allow" it must refuse."""
    validator = make_validator(store, key_backend, audit, clock, unenrolled="allow")
    open_dispatcher = Dispatcher(
        validator, Administration(store, key_backend, audit), admin_group=None, status=lambda: {}
    )
    assert call(open_dispatcher, ROOT, "validate", user="ALICE", code="123456")["result"] == "accept"

    def broken(name: str) -> str | None:
        raise AccountLookupError("the account lookup failed (EACCES)")

    monkeypatch.setattr(accounts, "lookup_account", broken)
    reply = call(open_dispatcher, ROOT, "validate", user="ALICE", code="123456")
    assert (reply["result"], reply["reason"]) == ("reject", "account_lookup")
    assert call(open_dispatcher, ROOT, "enrolled", user="ALICE")["error"]["code"] == "account_lookup"


def test_import_canonicalises_owner_names(dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """An imported token owned by "ALICE" belongs to the account alice."""
    import base64

    monkeypatch.setattr(accounts, "lookup_account", lambda name: name.lower())
    record = {
        "serial": "IMP1",
        "type": "totp",
        "user": "ALICE",
        "secret_b64": base64.b64encode(b"q" * 20).decode(),
    }
    assert call(dispatcher, ROOT, "import", tokens=[record])["imported"] == 1
    assert call(dispatcher, ROOT, "show", target="IMP1")["tokens"][0]["user"] == "alice"
