"""Request dispatch: authorisation by peer credentials and canonical user names."""

from __future__ import annotations

import grp
import pwd
from typing import Any

import pytest

from otp_agent import accounts
from otp_agent.administration import Administration
from otp_agent.config import parse_config
from otp_agent.daemon.dispatch import Dispatcher, Peer
from otp_agent.errors import AccountLookupError, ConfigError
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


def _spare_group() -> grp.struct_group:
    """A group of this system that is neither root's nor nobody's."""
    nobody_gid = pwd.getpwnam("nobody").pw_gid
    return next(g for g in grp.getgrall() if g.gr_gid not in (0, nobody_gid))


def _dispatcher_with_groups(store, key_backend, audit, clock, **groups: str | None) -> Dispatcher:
    validator = make_validator(store, key_backend, audit, clock)
    admin = Administration(store, key_backend, audit)
    return Dispatcher(
        validator,
        admin,
        admin_group=groups.get("admin_group"),
        validator_group=groups.get("validator_group"),
        status=dict,
    )


def test_validator_group_members_validate_any_user_but_do_not_administer(
    store, key_backend, audit, clock
) -> None:
    group = _spare_group()
    dispatcher = _dispatcher_with_groups(store, key_backend, audit, clock, validator_group=group.gr_name)
    uri = call(dispatcher, ROOT, "enroll", user="alice", type="hotp")["uri"]
    nobody = pwd.getpwnam("nobody")
    supplementary = Peer(pid=3, uid=nobody.pw_uid, gid=nobody.pw_gid, groups=(nobody.pw_gid, group.gr_gid))
    primary = Peer(pid=4, uid=nobody.pw_uid, gid=group.gr_gid)
    for number, member in enumerate((supplementary, primary)):
        assert dispatcher.is_validator(member) and not dispatcher.is_admin(member)
        code = code_for_uri(uri, counter=number)
        reply = call(dispatcher, member, "validate", user="alice", code=code, service="app")
        assert (reply["result"], reply["reason"]) == ("accept", "accepted")
        assert call(dispatcher, member, "validate", user="alice", code=code)["reason"] == "replay"
        assert call(dispatcher, member, "enrolled", user="alice")["enrolled"] is True
        assert call(dispatcher, member, "enrolled", user="bob")["enrolled"] is False
        assert call(dispatcher, member, "ping")["ok"] is True
        for op in ("list", "enroll", "check", "show", "unlock", "status", "export", "import", "remove"):
            reply = call(dispatcher, member, op, user="alice", code=code, target="alice", serial="x")
            assert reply["error"]["code"] == "permission", op
        # "send" is a validator operation: never refused for permission (the daemon may not have it yet).
        assert call(dispatcher, member, "send", user="alice").get("error", {}).get("code") != "permission"


def test_outside_the_validator_group_a_peer_names_only_itself(store, key_backend, audit, clock) -> None:
    group = _spare_group()
    dispatcher = _dispatcher_with_groups(
        store, key_backend, audit, clock, validator_group=group.gr_name, admin_group=None
    )
    nobody = pwd.getpwnam("nobody")
    outsider = Peer(pid=5, uid=nobody.pw_uid, gid=nobody.pw_gid, groups=(nobody.pw_gid,))
    assert not dispatcher.is_validator(outsider)
    for op in ("validate", "enrolled"):
        reply = call(dispatcher, outsider, op, user="alice", code="123456")
        assert reply["error"]["code"] == "permission", op
    assert call(dispatcher, outsider, "validate", user="nobody", code="123456")["reason"] == "no_token"
    reply = call(dispatcher, outsider, "send", user="nobody")
    assert reply["error"]["code"] == "permission"
    assert "validator" in reply["error"]["message"]
    assert dispatcher.is_validator(ROOT)


def test_the_admin_group_is_not_a_validator_group(store, key_backend, audit, clock) -> None:
    group = _spare_group()
    dispatcher = _dispatcher_with_groups(store, key_backend, audit, clock, admin_group=group.gr_name)
    nobody = pwd.getpwnam("nobody")
    admin = Peer(pid=6, uid=nobody.pw_uid, gid=nobody.pw_gid, groups=(group.gr_gid,))
    assert dispatcher.is_admin(admin) and not dispatcher.is_validator(admin)
    assert call(dispatcher, admin, "list")["tokens"] == []
    reply = call(dispatcher, admin, "validate", user="alice", code="123456")
    assert reply["error"]["code"] == "permission"


def test_a_validator_group_that_does_not_exist_lets_no_one_in(
    store, key_backend, audit, clock, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = _dispatcher_with_groups(
        store, key_backend, audit, clock, validator_group="no-such-group-for-otp-agent"
    )
    assert "validator group no-such-group-for-otp-agent does not exist" in caplog.text
    nobody = pwd.getpwnam("nobody")
    peer = Peer(pid=7, uid=nobody.pw_uid, gid=nobody.pw_gid, groups=tuple(g.gr_gid for g in grp.getgrall()))
    assert not dispatcher.is_validator(peer)
    assert call(dispatcher, peer, "validate", user="alice", code="123456")["error"]["code"] == "permission"


def test_validator_group_is_an_agent_key() -> None:
    assert parse_config({}).agent.validator_group is None
    assert parse_config({"agent": {"validator_group": "otp-apps"}}).agent.validator_group == "otp-apps"
    for bad in ("", 7):
        with pytest.raises(ConfigError, match="agent.validator_group"):
            parse_config({"agent": {"validator_group": bad}})


def test_verify_password_is_for_validators_only(dispatcher: Dispatcher) -> None:
    nobody = pwd.getpwnam("nobody")
    peer = Peer(pid=2, uid=nobody.pw_uid, gid=nobody.pw_gid)
    reply = call(dispatcher, peer, "verify_password", user="nobody", password="x")
    assert reply["error"]["code"] == "permission"
