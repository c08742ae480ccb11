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


def test_the_helpers_copies_match_wire() -> None:
    assert helper.PROTOCOL_VERSION == wire.VERSION
    assert helper.MAX_REPLY == wire.MAX_FRAME
    assert {helper.OP_VALIDATE, helper.OP_ENROLLED} <= wire.VALIDATION_OPS
    assert (helper.RESULT_ACCEPT, helper.RESULT_REJECT) == (wire.Result.ACCEPT.value, wire.Result.REJECT.value)
    request_fields = {f.name for f in fields(wire.ValidateRequest)}
    assert {helper.FIELD_USER, helper.FIELD_CODE, helper.FIELD_PASSWORD_AND_CODE} <= request_fields
    assert {name for _variable, name, _cap in helper._CONTEXT} == request_fields - {"user", "code", "password_and_code"}


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
    table = text[text.index("| reason | result | meaning |"):]
    table = table[:table.index("\n\n")]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    assert documented == {r.value for r in wire.Reason}
    for op in wire.OPERATIONS:
        assert f"`{op}`" in text, op
    for code in ERRORS_BY_CODE:
        assert f"`{code}`" in text, code


def test_counters_have_one_bound_for_imports_and_administration() -> None:
    """PSKC rules once accepted counters up to 2^64-1 where administration refused from 2^63."""
    from otp_agent.administration import token_spec_from_record
    from otp_agent.errors import UsageError
    from otp_agent.oath.params import MAX_COUNTER
    from otp_agent.pskc import rules
    import pytest
    assert vars(rules)["MAX_COUNTER"] == MAX_COUNTER
    record = {"serial": "C1", "type": "hotp", "secret_b64": "cXFxcXFxcXFxcXFxcXFxcXFxcXE=", "counter": MAX_COUNTER}
    assert token_spec_from_record(record).counter == MAX_COUNTER
    with pytest.raises(UsageError):
        token_spec_from_record({**record, "counter": MAX_COUNTER + 1})
