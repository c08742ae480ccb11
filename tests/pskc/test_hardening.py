"""Defence in depth of the XML intake, below the byte-level refusals of the corpus tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from otp_agent.pskc import PskcImportError, parse_pskc
from otp_agent.pskc.xmlsafe import _parser, parse_document


def test_parser_never_reads_external_entities(tmp_path: Path) -> None:
    """Even if a DOCTYPE reached lxml, the parser would not read the entity's file."""
    secret_file = tmp_path / "target.txt"
    secret_file.write_text("MARKER-FROM-DISK")
    document = (
        f'<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "{secret_file.as_uri()}">]>\n<a>&x;</a>'
    ).encode()
    root = etree.fromstring(document, _parser())
    assert b"MARKER-FROM-DISK" not in etree.tostring(root)


def test_parser_does_not_expand_internal_entities() -> None:
    """Entity references stay unexpanded (no billion laughs) even past the byte scan."""
    document = b'<!DOCTYPE a [<!ENTITY x "expanded">]><a>&x;&x;</a>'
    root = etree.fromstring(document, _parser())
    assert b"expanded</a>" not in etree.tostring(root)


def test_doctype_written_in_lower_case_is_refused() -> None:
    """The byte scan is case-insensitive."""
    with pytest.raises(PskcImportError, match="refused"):
        parse_document(b"<!doctype KeyContainer><KeyContainer/>")


def test_bom_is_accepted_and_utf8_declaration_too() -> None:
    """A UTF-8 byte order mark and an explicit UTF-8 declaration are fine."""
    data = (
        b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>'
        b'<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc"/>'
    )
    assert parse_document(data).get("Version") == "1.0"


@pytest.mark.parametrize(
    "data,fragment",
    [
        (b"", "file is empty"),
        (b"   \n", "file is empty"),
        (b"\x00\x00\xfe\xff", "not UTF-8"),
    ],
)
def test_degenerate_inputs(data: bytes, fragment: str) -> None:
    """Empty or binary input is refused with a clear message."""
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(data)
    assert fragment in caught.value.problems[0]


def test_streaming_reader_refuses_a_dtd_the_byte_scan_missed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the byte scan disabled, the streaming reader still refuses the DTD it parses."""
    import re

    from otp_agent.pskc import xmlsafe

    monkeypatch.setattr(xmlsafe, "_DOCTYPE", re.compile(rb"(?!)"))
    target = tmp_path / "target.txt"
    target.write_text("MARKER-FROM-DISK")
    document = (
        f'<!DOCTYPE KeyContainer [<!ENTITY x SYSTEM "{target.as_uri()}">]>\n'
        '<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc">'
        "<KeyPackage><Key Id='&x;'/></KeyPackage></KeyContainer>"
    ).encode()
    with pytest.raises(PskcImportError) as caught:
        parse_pskc(document)
    assert "external DTD or entity" in caught.value.problems[0]
    assert "MARKER-FROM-DISK" not in str(caught.value.problems)
