"""Seed messages for the payShield codec fuzzing: real requests and the simulator's answers.

:func:`live_seeds` runs every host command the agent sends through the simulator's command
processor (a throw-away LMK), so the seeds follow the codec as it is today; ``python -m
tests.faults.payshield_seeds`` rewrites ``corpus/payshield/seeds.txt`` from them, the committed
copy that keeps older layouts in the corpus.  A line of that file is ``kind name hex``: ``kind``
is ``response`` (the parser ``name`` reads it) or ``request`` (the simulator's request parsers).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.keyblock import attributes, parse_header
from otp_agent.keystore.payshield.transit import wrap_for_import
from otp_agent.payshield_sim.commands import CommandProcessor, make_zmk
from otp_agent.payshield_sim.lmk import Lmk
from tests.faults.support import CORPUS

SEED_FILE = CORPUS / "payshield" / "seeds.txt"

#: Which response parser reads the answer to each command.
RESPONSE_PARSER = {
    "NC": "parse_nd",
    "NO": "parse_np",
    "B2": "parse_b3",
    "N0": "parse_n1",
    "L0": "parse_key_response",
    "LU": "parse_key_response",
    "A0": "parse_a1",
    "LQ": "parse_lr",
    "LS": "parse_lt",
}


def live_seeds() -> list[tuple[str, str, bytes]]:
    """(kind, parser or command, bytes) for every command, built with a fresh LMK."""
    with tempfile.TemporaryDirectory() as directory:
        lmk = Lmk.load_or_create(Path(directory) / "lmk.hex")
    processor = CommandProcessor(lmk)
    hmac_key = codec.HmacKey.key_block(lmk.wrap(parse_header("1000063HG00N0000"), os.urandom(32)))
    zmk, zmk_block = make_zmk(lmk)
    wrapped = wrap_for_import(zmk, os.urandom(20))
    tail = attributes("62", "H0", "G", "N")
    message = b"\x00\x00\x00\x00\x00\x00\x00\x2a"
    mac = processor.handle(codec.encode_lq("FF", 16, hmac_key, message))[8:]
    requests = [
        codec.encode_nc(),
        codec.encode_no(0),
        codec.encode_b2(b"echo\x19;%\x00"),
        codec.encode_n0(16),
        codec.encode_l0(32, attributes("63", "H0", "G", "N")),
        codec.encode_lq("FF", 20, hmac_key, message),
        codec.encode_lq("FF", 32, hmac_key, message),
        codec.encode_ls("FF", mac, hmac_key, message),
        codec.encode_ls("FF", b"\x00" * 16, hmac_key, message),
        codec.encode_lu(zmk_block, wrapped, codec.KEY_BLOCK_FORMAT, tail),
        codec.encode_lu(zmk_block, wrapped, codec.VARIANT_FORMAT, "01010020"),
        codec.encode_a0("0", "#00AEN00N00"),
        codec.encode_a0("0", "#63HGN00N00"),
    ]
    seeds: list[tuple[str, str, bytes]] = []
    for request in requests:
        command = request[:2].decode()
        seeds.append(("request", command, request))
        seeds.append(("response", RESPONSE_PARSER[command], processor.handle(request)))
    for command in RESPONSE_PARSER:  # error answers too
        seeds.append(("response", RESPONSE_PARSER[command], codec.encode_response(command, "15")))
    seeds.append(("response", "parse_lt", b"LT01"))
    return seeds


def stored_seeds() -> list[tuple[str, str, bytes]]:
    """The committed corpus."""
    seeds = []
    for line in SEED_FILE.read_text(encoding="ascii").splitlines():
        if line.strip() and not line.startswith("#"):
            kind, name, data = line.split()
            seeds.append((kind, name, bytes.fromhex(data)))
    return seeds


def main() -> None:
    lines = ["# payShield codec fuzzing seeds: kind name hex (see tests/faults/payshield_seeds.py)"]
    lines += [f"{kind} {name} {data.hex()}" for kind, name, data in live_seeds()]
    # Real units' answers, from tests/vectors/payshield/captures.txt.
    lines += [
        "response parse_nd " + b"ND005D672700000000001500-0023".hex(),
        "response parse_nd " + b"ND00F4EDC8DEB67F6E280007-E000".hex(),
    ]
    SEED_FILE.parent.mkdir(parents=True, exist_ok=True)
    SEED_FILE.write_text("\n".join(lines) + "\n", encoding="ascii")


if __name__ == "__main__":
    main()
