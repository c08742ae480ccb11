"""Import records checked by the daemon before anything is sealed or written."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from otp_agent.administration import token_spec_from_record
from otp_agent.errors import InvalidToken, UsageError

SECRET = base64.b64encode(b"12345678901234567890").decode()


def record(**fields: Any) -> dict[str, Any]:
    return {"serial": "OAHO00000001", "type": "hotp", "secret_b64": SECRET, **fields}


def test_a_good_record() -> None:
    spec = token_spec_from_record(record(counter=5, user="alice"))
    assert (spec.serial, spec.counter, spec.user, len(spec.secret)) == ("OAHO00000001", 5, "alice", 20)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"counter": -1}, "counter"),
        ({"counter": 2**63}, "counter"),
        ({"drift": 1001}, "drift"),
        ({"secret_b64": "not base64!"}, "base64"),
        ({"serial": ""}, "serial"),
        ({"type": "ocra"}, "parameters"),
        ({"user": "a\nb"}, "user"),
        ({"not_after": "yesterday"}, "ISO 8601"),
        ({"digits": 7}, "digits"),
    ],
)
def test_bad_records_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises((UsageError, InvalidToken), match=message):
        token_spec_from_record(record(**fields))
