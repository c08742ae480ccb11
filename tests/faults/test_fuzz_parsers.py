"""Fuzzing the parsers that read untrusted bytes: PSKC files and payShield answers.

* PSKC (``otp_agent.pskc.parse_pskc``): documents from tests/vectors/pskc (the RFC 6030 figures
  and the negative corpus, each with the password or key it is read with), mutated byte-wise and
  element-wise (text, attributes, elements removed, duplicated, renamed, moved), documents built
  from PSKC element names, and random bytes.  Only a PskcError (the family PskcImportError
  belongs to) may come out, never another exception.
* payShield (``otp_agent.keystore.payshield.codec``): every response parser on mutated real
  answers (corpus/payshield/seeds.txt and the simulator's live answers) and random bytes, and the
  simulator's request parsers and the frame splitter.  Only the codec's own error types may come
  out: CodecError, PayShieldProtocolError, PayShieldCommandError, PayShieldKeyBlockError.

Hypothesis runs derandomized with no deadline; the seeds are explicit examples.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import IN_CI

if not IN_CI:  # in CI a missing hypothesis is an error, never a skip
    pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st
from lxml import etree

from otp_agent.errors import PskcError
from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.errors import (
    PayShieldCommandError,
    PayShieldKeyBlockError,
    PayShieldProtocolError,
)
from otp_agent.pskc import parse_pskc
from tests.faults.conftest import Figures
from tests.faults.payshield_seeds import live_seeds, stored_seeds
from tests.faults.support import CORPUS, REPO, SEED, count

VECTORS = REPO / "tests" / "vectors" / "pskc"
PSKC_SEEDS = (
    sorted(VECTORS.glob("rfc6030/*.xml"))
    + sorted(VECTORS.glob("invalid/*.xml"))
    + sorted((CORPUS / "pskc").glob("*.xml"))
)
#: Product bugs this fuzzing finds and that are not fixed yet: (exception signature prefix ->
#: (reason, corpus files that reproduce it)); counted apart in the figures.  Empty today.
KNOWN_PSKC_BUGS: dict[str, tuple[str, tuple[str, ...]]] = {}
#: Reproducers of bugs this fuzzing found and that were fixed: each must stay refused cleanly.
#: A root element with an undeclared namespace prefix (<pskc:KeyContainer> without xmlns:pskc,
#: e.g. one bit flipped in "xmlns") made parse_pskc raise lxml's ValueError, not a refusal.
FIXED_PSKC_REPRODUCERS = ("undeclared-root-prefix.xml", "figure7-xmlns-bit-flip.xml")
FIGURE6_PSK = bytes.fromhex("12345678901234567890123456789012")
OPTIONS: list[dict[str, Any]] = [
    {},
    {"password": "qwerty"},
    {"psk": FIGURE6_PSK},
    {"strict_ids": False},
    {"password": "qwerty", "strict_ids": False},
    {"psk": FIGURE6_PSK, "strict_ids": False},
    {"password": "wrong password"},
    {"psk": b"\x01" * 16},
    {"psk": b"\x01" * 7},
    {"password": "abc"},
]
NS = "urn:ietf:params:xml:ns:keyprov:pskc"
NAMES = [
    "KeyContainer",
    "KeyPackage",
    "DeviceInfo",
    "Manufacturer",
    "SerialNo",
    "Key",
    "Issuer",
    "AlgorithmParameters",
    "ResponseFormat",
    "Data",
    "Secret",
    "PlainValue",
    "EncryptedValue",
    "ValueMAC",
    "Counter",
    "Time",
    "TimeInterval",
    "TimeDrift",
    "Policy",
    "StartDate",
    "ExpiryDate",
    "KeyUsage",
    "PINPolicy",
    "UserId",
    "EncryptionKey",
    "MACMethod",
    "MACKey",
    "FriendlyName",
    "CryptoModuleInfo",
    "Signature",
    "Suite",
    "ChallengeFormat",
]
ATTRIBUTES = [
    "Id",
    "Algorithm",
    "Version",
    "Length",
    "Encoding",
    "CheckDigits",
    "Format",
    "KeyId",
    "MinLength",
    "MaxLength",
    "PINUsageMode",
    "MaxFailedAttempts",
    "URI",
]
TEXTS = [
    "",
    "0",
    "-1",
    "1",
    "6",
    "8",
    "30",
    "1000",
    "10000001",
    "2147483648",
    "9" * 40,
    "1e5",
    " 7 ",
    "0x10",
    "-0",
    "NaN",
    "AAAA",
    "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=",
    "!!!",
    "\u00e9\u00e8",
    "\u202e",
    "2006-05-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "not a date",
    "urn:ietf:params:xml:ns:keyprov:pskc:hotp",
    "urn:ietf:params:xml:ns:keyprov:pskc:totp",
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
    "http://www.w3.org/2000/09/xmldsig#hmac-sha1",
    "OATH",
    "DECIMAL",
    "HEXADECIMAL",
    "OTP",
    "1.0",
    "UID=jsmith,DC=example-bank,DC=net",
    "x" * 300,
]
XML_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20)
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _settings(examples: int) -> Any:
    chosen = settings(
        max_examples=examples,
        deadline=None,
        derandomize="OTP_FAULTS_SEED" not in os.environ,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )

    def apply(function: Any) -> Any:
        function = chosen(function)
        return seed(SEED)(function) if "OTP_FAULTS_SEED" in os.environ else function

    return apply


# --------------------------------------------------------------------------- PSKC


def _mutate_elements(data: bytes, draw: st.DrawFn) -> bytes:
    try:
        root = etree.fromstring(data, PARSER)
    except etree.XMLSyntaxError:
        return data
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        elements = [e for e in root.iter() if isinstance(e.tag, str)]
        target = elements[draw(st.integers(min_value=0, max_value=len(elements) - 1))]
        action = draw(
            st.sampled_from(
                ["text", "text", "attribute", "remove", "duplicate", "rename", "move", "child", "comment"]
            )
        )
        parent = target.getparent()
        if action == "text":
            target.text = draw(st.sampled_from(TEXTS) | XML_TEXT)
        elif action == "attribute":
            names = list(target.attrib) + ATTRIBUTES
            target.set(draw(st.sampled_from(names)), draw(st.sampled_from(TEXTS) | XML_TEXT))
        elif action == "remove" and parent is not None:
            parent.remove(target)
        elif action == "duplicate" and parent is not None:
            parent.append(copy.deepcopy(target))
        elif action == "rename":
            namespace = draw(st.sampled_from([NS, NS, "urn:example:other", ""]))
            name = draw(st.sampled_from(NAMES))
            target.tag = f"{{{namespace}}}{name}" if namespace else name
        elif action == "move" and parent is not None:
            others = [
                e
                for e in elements
                if e is not target and target not in e.iterancestors() and e not in target.iter()
            ]
            if others:
                others[draw(st.integers(min_value=0, max_value=len(others) - 1))].append(target)
        elif action == "child":
            child = etree.SubElement(target, f"{{{NS}}}{draw(st.sampled_from(NAMES))}")
            child.text = draw(st.sampled_from(TEXTS))
        elif action == "comment":
            target.append(etree.Comment("fuzz"))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _mutate_bytes(data: bytes, draw: st.DrawFn) -> bytes:
    buffer = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        where = draw(st.integers(min_value=0, max_value=len(buffer)))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]))
        if action == "flip" and where < len(buffer):
            buffer[where] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "delete":
            del buffer[where : where + draw(st.integers(min_value=1, max_value=32))]
        elif action == "insert":
            buffer[where:where] = draw(
                st.sampled_from(
                    [
                        b"<",
                        b">",
                        b"&",
                        b"&amp;",
                        b"<!--",
                        b"]]>",
                        b'"',
                        b"\x00",
                        b"\xff\xfe",
                        b"<![CDATA[x]]>",
                        b"&#0;",
                        b"<!DOCTYPE x>",
                    ]
                )
                | st.binary(max_size=16)
            )
        elif action == "truncate":
            del buffer[where:]
        else:
            buffer[where:where] = buffer[max(0, where - 64) : where]
    return bytes(buffer)


_ATTRIBUTE_MAPS = st.dictionaries(st.sampled_from(ATTRIBUTES), st.sampled_from(TEXTS), max_size=2)
_LEAF: st.SearchStrategy[Any] = st.tuples(
    st.sampled_from(NAMES), _ATTRIBUTE_MAPS, st.sampled_from(TEXTS), st.just([])
)


def _parents(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(st.sampled_from(NAMES), _ATTRIBUTE_MAPS, st.just(""), st.lists(inner, max_size=4))


trees: st.SearchStrategy[Any] = st.recursive(_LEAF, _parents, max_leaves=20)


def _build(tree: Any, parent: Any) -> None:
    name, attributes, text, children = tree
    element = etree.SubElement(parent, f"{{{NS}}}{name}", attributes)
    element.text = text or None
    for child in children:
        _build(child, element)


@st.composite
def pskc_documents(draw: st.DrawFn) -> tuple[str, bytes, dict[str, Any]]:
    kind = draw(st.sampled_from(["elements", "elements", "elements", "bytes", "bytes", "built", "random"]))
    options = draw(st.sampled_from(OPTIONS))
    if kind == "random":
        return kind, draw(st.binary(max_size=2048)), options
    if kind == "built":
        root = etree.Element(f"{{{NS}}}KeyContainer", {"Version": "1.0"})
        for tree in draw(st.lists(trees, min_size=1, max_size=3)):
            _build(tree, root)
        return kind, etree.tostring(root, xml_declaration=True, encoding="UTF-8"), options
    path = draw(st.sampled_from(PSKC_SEEDS))
    data = path.read_bytes()
    if draw(st.integers(min_value=0, max_value=2)):  # mostly the options the seed is read with
        options = {**_seed_options(data), "strict_ids": draw(st.booleans())}
    data = _mutate_elements(data, draw) if kind == "elements" else _mutate_bytes(data, draw)
    if draw(st.booleans()):
        data = _mutate_bytes(data, draw) if kind == "elements" else _mutate_elements(data, draw)
    return f"{kind}:{path.name}", data, options


def _seed_options(data: bytes) -> dict[str, Any]:
    """The password or key a seed file is read with (RFC 6030 Figures 6 and 7)."""
    if b"DerivedKey" in data:
        return {"password": "qwerty"}
    if b"EncryptionKey" in data:
        return {"psk": FIGURE6_PSK}
    return {}


def test_pskc_parser_fuzz(figures: Figures) -> None:
    """Every document runs (a finding does not stop the run); any exception other than a
    PskcError fails the test at the end, with the first document of each kind of exception."""
    examples = count(150, 5_000)
    stats: Counter[str] = Counter()
    known: Counter[str] = Counter()
    unexpected: dict[str, tuple[str, bytes, dict[str, Any]]] = {}
    slowest: list[Any] = [0.0, ""]

    @_settings(examples)
    @given(document=pskc_documents())
    def run(document: tuple[str, bytes, dict[str, Any]]) -> None:
        kind, data, options = document
        stats["documents"] += 1
        started = time.monotonic()
        try:
            tokens = parse_pskc(data, **options)
            stats["imported"] += 1
            for token in tokens:
                token.secret.wipe()
        except PskcError:
            stats["refused with PskcError"] += 1
        except Exception as exc:
            signature = f"{type(exc).__name__}: {exc}"
            bug = next((prefix for prefix in KNOWN_PSKC_BUGS if signature.startswith(prefix)), None)
            if bug is not None:
                known[bug] += 1
            else:
                stats["other exceptions"] += 1
                unexpected.setdefault(signature[:200], (kind, data[:2000], options))
        elapsed = time.monotonic() - started
        if elapsed > slowest[0]:
            slowest[:] = [elapsed, kind]
        assert elapsed < 30, f"parse took {elapsed:.1f} s: {kind}"

    for path in PSKC_SEEDS:
        for options in ({}, {**_seed_options(path.read_bytes()), "strict_ids": False}):
            run = example(document=(f"seed:{path.name}", path.read_bytes(), options))(run)
    started = time.monotonic()
    run()
    known_text = "; ".join(f"{v} x {k!r} (known bug, see test_pskc_known_bugs)" for k, v in known.items())
    figures.report(
        f"fuzz PSKC parser: {stats['documents']} documents ({len(PSKC_SEEDS)} seeds x 2 options "
        f"included) in {time.monotonic() - started:.0f} s: {stats['imported']} imported, "
        f"{stats['refused with PskcError']} refused with a PskcError, {stats['other exceptions']} "
        f"other exceptions{'; ' + known_text if known else ''} (slowest {slowest[0]:.2f} s, {slowest[1]})"
    )
    assert not unexpected, "\n".join(
        f"{sig}\n  from {kind} {options}: {data!r}" for sig, (kind, data, options) in unexpected.items()
    )


@pytest.mark.parametrize("name", FIXED_PSKC_REPRODUCERS)
def test_pskc_former_bugs_stay_fixed(name: str) -> None:
    """Each reproducer of a fixed bug is refused with a PskcError."""
    data = (CORPUS / "pskc" / name).read_bytes()
    options = _seed_options(data)
    try:
        parse_pskc(data, **options)
    except PskcError:
        return
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from exc
    pytest.fail("the reproducer parsed: it must be refused")


# --------------------------------------------------------------------------- payShield

ALLOWED = (codec.CodecError, PayShieldProtocolError, PayShieldCommandError, PayShieldKeyBlockError)
SEEDS = stored_seeds() + live_seeds()
RESPONSES = [(name, data) for kind, name, data in SEEDS if kind == "response"]
REQUESTS = [data for kind, _name, data in SEEDS if kind == "request"]
REQUEST_PARSERS = {
    "LQ": codec.parse_lq,
    "LS": codec.parse_ls,
    "L0": codec.parse_l0,
    "LU": codec.parse_lu,
    "A0": codec.parse_a0,
}
COMMANDS = ["NC", "NO", "B2", "N0", "L0", "LU", "A0", "LQ", "LS", "ZZ", "\x00\x00"]


def _parse_response(name: str, data: bytes, command: str, length: int) -> object:
    if name == "open_response":
        return codec.open_response(command, data)
    if name == "parse_n1":
        return codec.parse_n1(data, length)
    if name == "parse_lr":
        return codec.parse_lr(data, length)
    if name == "parse_key_response":
        return codec.parse_key_response(command if command in ("L0", "LU") else "L0", data)
    return getattr(codec, name)(data)


def _parse_request(data: bytes) -> object:
    command, reader = codec.split_request(data)
    parser = REQUEST_PARSERS.get(command)
    return parser(reader) if parser else reader.rest()


@st.composite
def payshield_messages(draw: st.DrawFn) -> tuple[str, str, bytes, str, int]:
    kind = draw(st.sampled_from(["response", "response", "response", "request", "frames", "random"]))
    command = draw(st.sampled_from(COMMANDS))
    length = draw(st.sampled_from([0, 1, 16, 20, 32, 64, 4096]) | st.integers(min_value=-2, max_value=40))
    if kind == "random":
        name = draw(st.sampled_from(sorted({n for n, _ in RESPONSES} | {"open_response"})))
        return kind, name, draw(st.binary(max_size=128)), command, length
    if kind == "request":
        data = draw(st.sampled_from(REQUESTS))
        return kind, "request", _mutate_bytes(data, draw), command, length
    if kind == "frames":
        data = b"".join(
            codec.frame(d) for d in draw(st.lists(st.sampled_from(REQUESTS), min_size=1, max_size=3))
        )
        return kind, "frames", _mutate_bytes(data, draw), command, length
    name, data = draw(st.sampled_from(RESPONSES))
    return kind, name, _mutate_bytes(data, draw) if draw(st.integers(0, 4)) else data, command, length


def test_payshield_parsers_fuzz(figures: Figures) -> None:
    examples = count(400, 20_000)
    stats: Counter[str] = Counter()

    @_settings(examples)
    @given(message=payshield_messages())
    def run(message: tuple[str, str, bytes, str, int]) -> None:
        kind, name, data, command, length = message
        stats["messages"] += 1
        try:
            if kind == "request":
                _parse_request(data)
            elif kind == "frames":
                codec.FrameReader().feed(data)
            else:
                _parse_response(name, data, command, length)
            stats["parsed"] += 1
        except ALLOWED as exc:
            stats[type(exc).__name__] += 1

    for name, data in RESPONSES:
        run = example(message=("response", name, data, "LQ", 32))(run)
    for data in REQUESTS:
        run = example(message=("request", "request", data, "", 0))(run)
    started = time.monotonic()
    run()
    refused = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k not in ("messages", "parsed"))
    figures.report(
        f"fuzz payShield codec: {stats['messages']} messages ({len(SEEDS)} seeds included) in "
        f"{time.monotonic() - started:.0f} s: {stats['parsed']} parsed, refused: {refused}; "
        "0 other exceptions"
    )
