"""Fixtures of the payShield tests: the vector files, a running simulator, a backend on it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.payshield_sim.testing import RunningSimulator, running_simulator

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "payshield"
#: Stand-in for binary fields a capture did not print: it contains X'19, ';' and '%'.
FILLER = b"\x19;%\x00\xff#S"


def expand(value: str, variables: dict[str, str]) -> bytes:
    """Turn a vector value into bytes: ${NAME}, {N bytes} and \\xNN escapes."""
    value = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], value)
    out = bytearray()
    for part in re.split(r"(\{\d+ bytes\}|\\x[0-9A-Fa-f]{2})", value):
        if part.startswith("{"):
            size = int(part[1:].split()[0])
            out += (FILLER * size)[:size]
        elif part.startswith("\\x"):
            out.append(int(part[2:], 16))
        else:
            out += part.encode("ascii")
    return bytes(out)


def load_captures() -> list[dict[str, str]]:
    """Read captures.txt into a list of entries (with their ``name``)."""
    variables: dict[str, str] = {}
    entries: list[dict[str, str]] = []
    for line in (VECTORS / "captures.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@"):
            name, _, value = line[1:].partition("=")
            variables[name.strip()] = value.strip()
        elif line.startswith("["):
            entries.append({"name": line.strip("[]"), "_vars": ""})
        else:
            key, _, value = line.partition("=")
            entries[-1][key.strip()] = value.strip()
    for entry in entries:
        entry["_vars"] = "\n".join(f"{k}={v}" for k, v in variables.items())
    return entries


def variables_of(entry: dict[str, str]) -> dict[str, str]:
    """The ``@NAME`` variables of the vector file."""
    return dict(line.split("=", 1) for line in entry["_vars"].splitlines())


def load_oath() -> list[tuple[str, str, bytes, int, int, str, str]]:
    """Read oath-rfc.txt: (kind, algorithm, secret, factor, digits, code, full HMAC hex or '')."""
    rows = []
    for line in (VECTORS / "oath-rfc.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            rows.append(
                (
                    fields[0],
                    fields[1],
                    fields[2].encode(),
                    int(fields[3]),
                    int(fields[4]),
                    fields[5],
                    fields[6] if len(fields) > 6 else "",
                )
            )
    return rows


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    """A simulator with header length 4 on 127.0.0.1."""
    with running_simulator() as simulator:
        yield simulator


@pytest.fixture
def backend(sim: RunningSimulator) -> Iterator[PayShieldKeyBackend]:
    """A payShield key backend connected to ``sim``."""
    keys = PayShieldKeyBackend(sim.config())
    yield keys
    keys.close()
