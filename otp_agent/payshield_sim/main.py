"""The ``payshield-sim`` command: run a simulated payShield HSM on a TCP port.

Owns argument parsing and the process lifetime; prints the LMK check value at start, as the
key ceremony needs it for ``keystore.payshield.lmk_check_value``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from otp_agent.payshield_sim.commands import CommandProcessor, make_zmk
from otp_agent.payshield_sim.lmk import Lmk
from otp_agent.payshield_sim.server import FAULTS, Knobs, SimulatorServer
from otp_agent.payshield_sim.tlscert import server_context


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payshield-sim", description="payShield host-command simulator (test use only)"
    )
    parser.add_argument("--listen", type=_listen, default=("127.0.0.1", 1500), metavar="HOST:PORT")
    parser.add_argument(
        "--lmk-file", type=Path, required=True, help="AES-256 LMK file (created with mode 0600 if absent)"
    )
    parser.add_argument("--header-length", type=int, default=4, choices=range(0, 33), metavar="N")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every command")
    parser.add_argument(
        "--calls-per-second",
        type=float,
        default=0.0,
        help="licence limit; commands beyond it queue (0 = unlimited)",
    )
    parser.add_argument(
        "--fault",
        choices=FAULTS,
        default="none",
        help="misbehave on every request (for tests); wrong_hmac answers LQ "
        "with a wrong HMAC, the other commands normally",
    )
    parser.add_argument("--fault-error-code", default="41", help="error code for --fault error")
    parser.add_argument("--max-connections", type=int, default=64)
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--make-zmk",
        type=Path,
        metavar="DIR",
        help="write DIR/zmk.hex (clear) and DIR/zmk.kb (under the LMK) and exit",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser


def _make_zmk(lmk: Lmk, directory: Path) -> int:
    clear, key_block = directory / "zmk.hex", directory / "zmk.kb"
    if not directory.is_dir():
        print(
            f"payshield-sim: {directory} is not a directory: create it first (mkdir -m 0700 {directory})",
            file=sys.stderr,
        )
        return 2
    if clear.exists() or key_block.exists():
        print(f"payshield-sim: {clear} or {key_block} exists; not overwritten", file=sys.stderr)
        return 1
    zmk, block = make_zmk(lmk)
    try:
        descriptor = os.open(clear, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(zmk.hex() + "\n")
        key_block.write_text(block + "\n")
    except OSError as exc:
        print(f"payshield-sim: cannot write the ZMK into {directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"ZMK written to {clear} (clear, mode 0600) and {key_block} (key block under the LMK)")
    return 0


async def _serve(server: SimulatorServer, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    bound = await server.start(host, port, tls)
    print(
        f"payshield-sim listening on {host}:{bound}, header length {server.header_length}, "
        f"LMK check value {server.processor.lmk.check_value}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``payshield-sim``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        lmk = Lmk.load_or_create(args.lmk_file)
    except (OSError, ValueError) as exc:
        print(f"payshield-sim: {exc}", file=sys.stderr)
        return 2
    if args.make_zmk is not None:
        return _make_zmk(lmk, args.make_zmk)
    knobs = Knobs()
    knobs.set(
        latency=args.latency_ms / 1000.0,
        calls_per_second=args.calls_per_second,
        fault=args.fault,
        fault_error_code=args.fault_error_code,
    )
    server = SimulatorServer(CommandProcessor(lmk), args.header_length, knobs, args.max_connections)
    try:
        tls = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        asyncio.run(_serve(server, args.listen[0], args.listen[1], tls))
    except (OSError, ssl.SSLError) as exc:
        print(f"payshield-sim: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
