"""The protocol has one owner, otp_agent.wire: the helper's copies, the dispatcher and the docs
are checked against it, so they cannot drift apart again (docs/protocol.md once documented a
reason `unavailable` that the agent never sent)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pam_helper.__main__ as helper
from otp_agent import wire
from otp_agent.daemon.dispatch import Dispatcher
from otp_agent.errors import ERRORS_BY_CODE, KeyBackendError, StoreError

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_helpers_backup_code_shape_is_the_agents() -> None:
    from otp_agent import backup

    assert helper.BACKUP_ALPHABET == backup.ALPHABET
    assert (helper.BACKUP_LENGTH, helper.BACKUP_PRINTED_LENGTH) == (backup.LENGTH, backup.PRINTED_LENGTH)
    for code in backup.generate(50):
        shown = backup.printed(code)
        for form in (shown, shown.upper(), code, shown.replace("-", " ")):
            assert helper.code_field(form.encode()) == form
        for answer in ("pw" + shown, "pw" + code, "pässwörd" + shown.upper()):
            assert helper.password_and_code_field(answer.encode()) == answer
            assert backup.split_password_and_code(answer) != []
    for not_code in (b"abcdefghjkl", b"abcd-efgh-j", b"1234567890", b"abcdefghi"):
        try:
            helper.code_field(not_code)
        except helper.Failure:
            continue
        raise AssertionError(f"{not_code!r} passed as a code")


def test_the_helpers_copies_match_wire() -> None:
    assert set(helper.TOLD) <= {r.value for r in wire.Reason}
    assert "retry_after" in {f.name for f in fields(wire.ValidateReply)}
    assert helper.PROTOCOL_VERSION == wire.VERSION
    assert helper.MAX_REPLY == wire.MAX_FRAME
    assert {helper.OP_VALIDATE, helper.OP_ENROLLED, helper.OP_REMEMBERED} <= wire.VALIDATION_OPS
    assert helper.OP_SEND in wire.VALIDATOR_OPS and helper.OP_SEND in wire.OPERATIONS
    assert (helper.RESULT_ACCEPT, helper.RESULT_REJECT) == (
        wire.Result.ACCEPT.value,
        wire.Result.REJECT.value,
    )
    request_fields = {f.name for f in fields(wire.ValidateRequest)}
    assert {helper.FIELD_USER, helper.FIELD_CODE, helper.FIELD_PASSWORD_AND_CODE} <= request_fields
    assert {name for _variable, name, _cap in helper._CONTEXT} == request_fields - {
        "user",
        "code",
        "password_and_code",
    }


def test_the_helpers_request_parses_as_a_validate_request() -> None:
    frame = helper.encode_request({"op": "validate", "user": "alice", "code": "123456", "service": "sshd"})
    parsed = wire.ValidateRequest.parse(wire.decode_payload(frame[4:]))
    assert parsed == wire.ValidateRequest("alice", code="123456", service="sshd")


def test_every_operation_has_a_handler_and_every_handler_an_operation() -> None:
    handlers = {name.removeprefix("op_") for name in dir(Dispatcher) if name.startswith("op_")}
    assert handlers == wire.OPERATIONS


def test_every_store_and_key_backend_error_is_a_reason() -> None:
    """Validation fails closed with the error's code as its reason: each must be a Reason."""
    for code, cls in ERRORS_BY_CODE.items():
        if issubclass(cls, (KeyBackendError, StoreError)):
            assert wire.Reason(code)


def test_docs_list_exactly_the_reasons_operations_and_error_codes() -> None:
    text = PROTOCOL_DOC.read_text()
    table = text[text.index("| reason | result | meaning |") :]
    table = table[: table.index("\n\n")]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    assert documented == {r.value for r in wire.Reason}
    for op in wire.OPERATIONS:
        assert f"`{op}`" in text, op
    for code in ERRORS_BY_CODE:
        assert f"`{code}`" in text, code


def test_counters_have_one_bound_for_imports_and_administration() -> None:
    """PSKC rules once accepted counters up to 2^64-1 where administration refused from 2^63."""
    import pytest

    from otp_agent.administration import token_spec_from_record
    from otp_agent.errors import UsageError
    from otp_agent.oath.params import MAX_COUNTER
    from otp_agent.pskc import rules

    assert vars(rules)["MAX_COUNTER"] == MAX_COUNTER
    record = {
        "serial": "C1",
        "type": "hotp",
        "secret_b64": "cXFxcXFxcXFxcXFxcXFxcXFxcXE=",
        "counter": MAX_COUNTER,
    }
    assert token_spec_from_record(record).counter == MAX_COUNTER
    with pytest.raises(UsageError):
        token_spec_from_record({**record, "counter": MAX_COUNTER + 1})


def test_one_token_record_type_for_views_imports_and_exports() -> None:
    """Token.public(), the PSKC import record and the export record are all wire.TokenRecord."""
    import base64

    from otp_agent.administration import token_spec_from_record
    from otp_agent.oath import HashAlgorithm, OathParams, TokenType
    from otp_agent.pskc import record_from_token, token_from_record
    from otp_agent.pskc.model import ExportedToken
    from otp_agent.sensitive import Secret
    from otp_agent.store import Token

    token = Token(
        serial="R1",
        token_type=TokenType.HOTP,
        algorithm=HashAlgorithm.SHA256,
        digits=8,
        period=30,
        t0=0,
        sealed=b"s",
        fingerprint=b"f",
        user="alice",
        counter=7,
        not_after=2_000_000_000.0,
        created=5.0,
    )
    view = token.public()
    assert wire.TokenRecord.parse(view) == token.record()
    assert "secret_b64" not in view and "sealed" not in view and "fingerprint" not in view
    exported = ExportedToken(
        serial="R1",
        params=OathParams(TokenType.HOTP, HashAlgorithm.SHA256, 8),
        secret=Secret(b"k" * 32),
        counter=7,
        user="alice",
    )
    record = record_from_token(exported)
    assert set(record) < {f.name for f in fields(wire.TokenRecord)}
    spec = token_spec_from_record(record)
    assert (spec.serial, spec.counter, spec.user, spec.params.digits) == ("R1", 7, "alice", 8)
    back = token_from_record(token.record(secret_b64=base64.b64encode(b"k" * 32).decode()).message())
    assert (back.serial, back.counter, back.user) == ("R1", 7, "alice")
    text = PROTOCOL_DOC.read_text()
    paragraph = text[text.index("A token record (`otp_agent.wire.TokenRecord`") :]
    paragraph = paragraph.split("\n\n")[0]
    documented = set(re.findall(r"`(\w+)`", paragraph))
    assert documented >= {f.name for f in fields(wire.TokenRecord)}
