"""Loader for ``KEY = VALUE`` vector files (blocks separated by blank lines)."""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"


def load_blocks(relative: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Return (header block, list of following blocks) of a vector file."""
    blocks: list[dict[str, str]] = [{}]
    for raw in (VECTORS / relative).read_text(encoding="ascii").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            if blocks[-1]:
                blocks.append({})
            continue
        key, _, value = line.partition("=")
        blocks[-1][key.strip()] = value.strip()
    blocks = [b for b in blocks if b]
    if "SECRET" in blocks[0] and "HOTP" not in blocks[0] and "TOTP" not in blocks[0]:
        return blocks[0], blocks[1:]
    return {}, blocks
