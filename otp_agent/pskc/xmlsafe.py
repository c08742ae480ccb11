"""Hardened XML intake for PSKC files: every check that runs before, or instead of, trusting lxml.

This module owns the defences against hostile files: a size limit applied before parsing, UTF-8
only, no DOCTYPE at all (hence no internal or external entities, no billion laughs, no DTD
fetch), an lxml parser with entity resolution, DTD loading and network access off and
``huge_tree`` off, a nesting-depth limit, and the check that the root is a PSKC 1.0
``KeyContainer``.  Every refusal is a :class:`~otp_agent.pskc.model.PskcImportError` with one
clear problem.  It does not read keys.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

from lxml import etree

from otp_agent.pskc.model import Problem, PskcImportError

PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"

#: An XML signature child of KeyContainer: ``ds:Signature`` (RFC 6030 errata 3418), or the
#: unprefixed ``Signature`` of RFC 6030 Figure 9, which its schema puts in the PSKC namespace.
_SIGNATURES = ("{http://www.w3.org/2000/09/xmldsig#}Signature", f"{{{PSKC_NS}}}Signature")

#: Default largest file accepted (bytes): room for 100,000 encrypted keys with some slack.
MAX_FILE_SIZE = 256 * 1024 * 1024
#: Deepest element nesting accepted; a PSKC file needs about 8 levels.
MAX_DEPTH = 32

_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_EXTERNAL = re.compile(rb"<!\s*(DOCTYPE|ENTITY)[^>]*\b(SYSTEM|PUBLIC)\b", re.IGNORECASE)
_ENTITY = re.compile(rb"<!\s*ENTITY", re.IGNORECASE)
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def refuse(message: str, line: int | None = None) -> PskcImportError:
    """Build the error for a file refused as a whole for one reason."""
    return PskcImportError(f"PSKC file refused: {message}", [Problem(message, line)])


def _doctype_reason(data: bytes) -> str:
    """Say which kind of document type declaration a file carries (none is ever accepted)."""
    if _EXTERNAL.search(data):
        return (
            "file refers to an external DTD or entity (SYSTEM/PUBLIC); nothing is ever "
            "fetched and no DTD is accepted"
        )
    if _ENTITY.search(data):
        return (
            "file declares XML entities; entity expansion (such as the 'billion laughs' "
            "attack) is never performed and no DTD is accepted"
        )
    return "file has a DOCTYPE declaration; PSKC files need none and no DTD is accepted"


_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
    "collect_ids": False,
}


def _parser() -> etree.XMLParser:
    """The hardened lxml parser (the same options as the streaming reader)."""
    return etree.XMLParser(**_PARSER_OPTIONS)


def _prepare(data: bytes, max_size: int) -> bytes:
    """Apply every check that runs before the parser; return the bytes to parse."""
    if len(data) > max_size:
        raise refuse(f"file is {len(data)} bytes, larger than the {max_size}-byte limit")
    if not data.strip():
        raise refuse("file is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        raise refuse("file is not UTF-8 (PSKC files must be UTF-8)")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    data = data.lstrip()
    declared = _DECLARED_ENCODING.match(data)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8", b"us-ascii", b"ascii"):
        raise refuse("file declares an encoding other than UTF-8 (PSKC files must be UTF-8)")
    doctype = _DOCTYPE.search(data)
    if doctype:
        raise refuse(_doctype_reason(data), data.count(b"\n", 0, doctype.start()) + 1)
    return data


def _check_root(root: etree._Element, data: bytes) -> None:
    """Refuse a document whose root is not a PSKC 1.0 ``KeyContainer`` (or that has a DTD)."""
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        # Defence in depth: the byte scan should already have refused it.
        raise refuse(_doctype_reason(data))
    try:
        qname = etree.QName(root)
    except ValueError:  # e.g. <pskc:KeyContainer> without a declaration of the prefix
        raise refuse(
            "the root element's name is not a valid XML name (an undeclared namespace prefix?)",
            root.sourceline,
        ) from None
    if qname.localname != "KeyContainer":
        raise refuse(f"root element is {qname.localname!r}, not a PSKC KeyContainer", root.sourceline)
    if qname.namespace != PSKC_NS:
        raise refuse(
            f"KeyContainer is in namespace {str(qname.namespace)[:120]!r}, "
            f"not the PSKC namespace {PSKC_NS!r}",
            root.sourceline,
        )
    version = root.get("Version")
    if version != "1.0":
        raise refuse(f"KeyContainer Version is {version!r}; only PSKC 1.0 is accepted", root.sourceline)


class Document:
    """A PSKC file read incrementally: each ``KeyPackage`` is handed out whole, then freed.

    The checks that need no parsing run in the constructor; the root, depth and syntax checks
    run as the parser goes.  Streaming keeps memory flat for files of 100,000 keys.
    """

    def __init__(self, data: bytes, *, max_size: int = MAX_FILE_SIZE) -> None:
        self._data = _prepare(data, max_size)
        self.root: etree._Element | None = None
        #: Whether the container carries an XML signature (never verified).
        self.signed = False
        #: Estimated number of key packages, for progress reports only.
        self.estimated_packages = self._data.count(b"KeyPackage>") // 2

    def packages(self, *, free: bool = True) -> Iterator[etree._Element]:
        """Yield each complete ``KeyPackage``; with ``free``, drop it once the caller is done.

        :raises PskcImportError: the file is not well-formed, too deep or not PSKC 1.0.
        """
        package_tag = f"{{{PSKC_NS}}}KeyPackage"
        events = etree.iterparse(io.BytesIO(self._data), events=("start", "end"), **_PARSER_OPTIONS)
        depth = 0
        try:
            for event, element in events:
                if event == "start":
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise refuse(f"elements nested deeper than {MAX_DEPTH} levels", element.sourceline)
                    if depth == 1:
                        _check_root(element, self._data)
                        self.root = element
                    continue
                depth -= 1
                if depth == 1 and element.tag in _SIGNATURES:
                    self.signed = True
                if depth == 1 and element.tag == package_tag:
                    yield element
                    if free:
                        element.clear()
                        parent = element.getparent()
                        while element.getprevious() is not None:
                            del parent[0]
        except etree.XMLSyntaxError as exc:
            reason = str(exc.msg if hasattr(exc, "msg") else exc).splitlines()[0][:200]
            if "depth" in reason.lower():
                raise refuse(
                    f"elements nested deeper than the XML parser's hard limit (ours is {MAX_DEPTH} levels)"
                ) from None
            raise refuse(f"not well-formed XML ({reason})", getattr(exc, "lineno", None)) from None
        if self.root is None:
            raise refuse("document has no root element")


def parse_document(data: bytes, *, max_size: int = MAX_FILE_SIZE) -> etree._Element:
    """Parse all of ``data`` under the same checks and return the root ``KeyContainer``."""
    document = Document(data, max_size=max_size)
    for _package in document.packages(free=False):
        pass
    assert document.root is not None
    return document.root
