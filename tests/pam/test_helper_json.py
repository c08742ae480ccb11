"""The helper's own strict JSON (it does not import ``json``): checked against the json module."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest

from tests.pam.support import REPO

sys.path.insert(0, str(REPO))
from pam_helper.__main__ import JSONError, decode_reply, encode_request, json_string, parse_json  # noqa: E402


def _strict_loads(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


ALPHABET = [
    '"',
    "\\",
    "/",
    "\b",
    "\f",
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x1f",
    "\x7f",
    "a",
    "Z",
    "0",
    " ",
    "é",
    "\u2028",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "😀",
    "\U0010ffff",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
]


def test_json_string_round_trips_through_the_json_module() -> None:
    """Every string (controls, quotes, astral characters) comes back unchanged; output is ASCII."""
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12)))
        quoted = json_string(text)
        assert quoted.isascii() and all(" " <= c <= "~" for c in quoted)
        assert json.loads(quoted) == text
        assert parse_json(quoted) == text


def test_encode_request_is_a_framed_json_object() -> None:
    frame = encode_request({"op": "validate", "user": "zoë", "code": "123456"})
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert json.loads(frame[4:]) == {"v": 1, "op": "validate", "user": "zoë", "code": "123456"}


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.randrange(-(10**12), 10**12)
    if kind == 2:
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randrange(-20, 20)
    if kind in (3, 4):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 6)))
    if kind in (5, 6):
        return {
            "".join(rng.choice(ALPHABET) for _ in range(3)): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))
        }
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


def test_parse_json_agrees_with_the_json_module_on_valid_documents() -> None:
    rng = random.Random(2)
    for _ in range(2000):
        value = _random_value(rng)
        for text in (
            json.dumps(value),
            json.dumps(value, ensure_ascii=False),
            json.dumps(value, indent=2),
            " \n" + json.dumps(value, separators=(",", ":")) + "\t\r\n",
        ):
            assert parse_json(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "{",
        "}",
        "[",
        "[1,]",
        "{,}",
        '{"a":1,}',
        '{"a" 1}',
        "{a:1}",
        "'a'",
        '"a',
        '"\\x"',
        '"\\u12"',
        '"\\u12g4"',
        '"a\nb"',
        '"\x00"',
        "01",
        "-",
        "-a",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "0x10",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "tru",
        "nul",
        "True",
        "[1 2]",
        '{"a":1}{}',
        '{"a":1} x',
        "\ufeff{}",
        "[" * 40 + "]" * 40,
        '"\\u 123"',
        '"\\u+123"',
        "1" * 60,
    ],
)
def test_parse_json_rejects_invalid_documents(text: str) -> None:
    with pytest.raises(JSONError):
        parse_json(text)


def test_parse_json_never_accepts_what_the_json_module_refuses() -> None:
    """Random mutations of valid replies: either both parsers agree, or ours refuses."""
    rng = random.Random(3)
    seeds = [
        '{"v":1,"ok":true,"result":"accept","reason":"accepted","serial":"OATH1234"}',
        '{"v":1,"ok":false,"error":{"code":"permission","message":"no \\"way\\" \\u00e9"}}',
        '{"v": 1, "ok": true, "enrolled": false, "n": [1, 2.5e3, -0, null]}',
    ]
    pieces = list('{}[]":,\\ 0123456789.eE+-truefalsnul') + ["\\u", "\\ud83d", "\\ude00", "\x01", "é"]
    for _ in range(20000):
        text = rng.choice(seeds)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(text) + 1)
            action = rng.randrange(3)
            if action == 0:
                text = text[:at] + rng.choice(pieces) + text[at:]
            elif action == 1:
                text = text[:at] + text[at + 1 :]
            else:
                text = text[:at] + rng.choice(pieces) + text[at + 1 :]
        try:
            expected = _strict_loads(text)
        except (ValueError, RecursionError):
            with pytest.raises(JSONError):
                parse_json(text)
            continue
        try:
            got = parse_json(text)
        except JSONError:
            # Allowed only where the json module is laxer than we are (non-finite floats, huge ints).
            assert "e" in text.lower() or any(len(part) > 40 for part in text.split(","))
            continue
        assert got == expected or (isinstance(got, float) and math.isnan(got))


def test_decode_reply_requires_a_v1_object() -> None:
    assert decode_reply(b'{"v":1,"ok":true}') == {"v": 1, "ok": True}
    for body in (b"[]", b'{"v":2}', b'{"ok":true}', b"\xff", b'{"v":1.0}x'):
        with pytest.raises(Exception) as caught:
            decode_reply(body)
        assert type(caught.value).__name__ == "Failure"
