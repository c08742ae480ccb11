"""Benchmark: OTP validations through the payShield backend against payshield-sim.

Prints validations/s and p50/p99 latency with the simulator at 0, 1 and 5 ms per command, for
windows ±1 and ±3, pipelined versus one command at a time, and one run under a licence limit.
A validation is what the agent does for a TOTP code: 2w+1 LQ commands (one batch), dynamic
truncation and constant-time comparison on the host.  The simulator runs as a separate process
(``payshield-sim``), so it does not share the interpreter lock with the client.  The link is TLS
with a throw-away self-signed certificate, as the backend's default; ``--insecure-plaintext``
measures plain TCP for comparison.

Run: ``.venv/bin/python bench/bench_payshield.py [--seconds S] [--threads N] [--insecure-plaintext]``
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from otp_agent.keystore import TokenIdentity
from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.backend import PayShieldKeyBackend
from otp_agent.keystore.payshield.config import HsmAddress, PayShieldConfig
from otp_agent.oath.hotp import codes_for, match_code
from otp_agent.oath.params import HashAlgorithm
from otp_agent.payshield_sim.tlscert import make_self_signed
from otp_agent.sensitive import Secret

IDENTITY = TokenIdentity("BENCH0001", HashAlgorithm.SHA1)
SECRET = b"12345678901234567890"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def simulator(
    directory: Path, latency_ms: float, cps: float = 0, plaintext: bool = False
) -> Iterator[PayShieldConfig]:
    """Start payshield-sim in a subprocess (TLS unless ``plaintext``) and yield a config for it."""
    lmk = directory / "lmk.hex"
    if not (directory / "zmk.kb").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "otp_agent.payshield_sim.main",
                "--lmk-file",
                str(lmk),
                "--make-zmk",
                str(directory),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    cert, key = directory / "sim-cert.pem", directory / "sim-key.pem"
    if not plaintext and not cert.exists():
        cert, key = make_self_signed(directory)
    tls_arguments = [] if plaintext else ["--tls-cert", str(cert), "--tls-key", str(key)]
    link: dict[str, object] = (
        {"tls": False, "insecure_plaintext": True} if plaintext else {"tls_ca_file": cert}
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otp_agent.payshield_sim.main",
            "--listen",
            f"127.0.0.1:{port}",
            "--lmk-file",
            str(lmk),
            "--latency-ms",
            str(latency_ms),
            "--calls-per-second",
            str(cps),
            *tls_arguments,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        check = line.rsplit(" ", 1)[-1].strip()
        yield PayShieldConfig(
            hosts=(HsmAddress("127.0.0.1", port),),
            lmk_check_value=check[:6],
            request_timeout=10.0,
            health_interval=0,
            pool_size=4,
            max_in_flight=256,
            zmk_file=directory / "zmk.hex",
            zmk_key_block_file=directory / "zmk.kb",
            fingerprint_key_file=directory / "fingerprint.kb",
            **link,  # type: ignore[arg-type]
        )
    finally:
        process.terminate()
        process.wait(10)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _validate(keys: PayShieldKeyBackend, sealed: bytes, step: int, window: int) -> None:
    factors = list(range(step - window, step + window + 1))
    codes = codes_for(lambda m: keys.compute_hmacs(IDENTITY, sealed, m), factors, 6)
    match_code("000000", zip(factors, codes, strict=True))


def measure(
    config: PayShieldConfig, window: int, pipelined: bool, seconds: float, threads: int
) -> dict[str, float]:
    """Latency (one thread, sequential validations) and throughput (``threads`` threads)."""
    keys = PayShieldKeyBackend(replace(config, pipelining=pipelined))
    try:
        sealed = keys.seal_secret(IDENTITY, Secret(SECRET))
        transport = keys._transport
        rtts = []
        for _ in range(50):
            start = time.perf_counter()
            transport.exchange([codec.encode_b2(b"ping")])
            rtts.append(time.perf_counter() - start)
        latencies: list[float] = []
        end = time.perf_counter() + seconds / 2
        step = 50_000_000
        while time.perf_counter() < end or len(latencies) < 20:
            start = time.perf_counter()
            _validate(keys, sealed, step, window)
            latencies.append(time.perf_counter() - start)
            step += 1
        done = [0] * threads
        stop = time.perf_counter() + seconds

        def worker(index: int) -> None:
            while time.perf_counter() < stop:
                _validate(keys, sealed, 60_000_000 + index * 1_000_000 + done[index], window)
                done[index] += 1

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        began = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - began
        return {
            "rtt_p50": statistics.median(rtts) * 1000,
            "p50": _percentile(latencies, 0.50) * 1000,
            "p99": _percentile(latencies, 0.99) * 1000,
            "throughput": sum(done) / elapsed,
        }
    finally:
        keys.close()


def main() -> int:
    """Run every configuration and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=16, help="concurrent validations")
    parser.add_argument(
        "--licence-cps", type=float, default=1000.0, help="licence limit (commands/s) for the last run"
    )
    parser.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="plain TCP to the simulator instead of TLS (for comparison)",
    )
    args = parser.parse_args()
    link = "plain TCP (insecure)" if args.insecure_plaintext else "TLS"
    print(
        f"payShield backend benchmark over {link}: {args.threads} threads for throughput, "
        f"{args.seconds:g}s per measurement, CPUs: {os.cpu_count()}, Python {sys.version.split()[0]}"
    )
    header = (
        f"{'sim ms/cmd':>10} {'window':>6} {'mode':>10} {'licence':>8} {'RTT p50':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p50/RTT':>8} {'valid/s':>9}"
    )
    print(header)
    print("-" * len(header))
    runs: list[tuple[float, int, bool, float]] = [
        (latency, window, pipelined, 0.0)
        for latency in (0.0, 1.0, 5.0)
        for window in (1, 3)
        for pipelined in (True, False)
    ]
    runs.append((1.0, 1, True, args.licence_cps))
    with tempfile.TemporaryDirectory(prefix="bench-payshield-") as temporary:
        for latency, window, pipelined, cps in runs:
            with simulator(Path(temporary), latency, cps, args.insecure_plaintext) as config:
                result = measure(config, window, pipelined, args.seconds, args.threads)
            print(
                f"{latency:>10g} {'±' + str(window):>6} {'pipelined' if pipelined else 'one-by-one':>10} "
                f"{(f'{cps:g}/s' if cps else '-'):>8} {result['rtt_p50']:>8.2f} {result['p50']:>8.2f} "
                f"{result['p99']:>8.2f} {result['p50'] / result['rtt_p50']:>8.2f} "
                f"{result['throughput']:>9.0f}",
                flush=True,
            )
    print(
        f"licence run: {args.licence_cps:g} commands/s bounds window ±1 (3 LQ per validation) "
        f"to {args.licence_cps / 3:.0f} validations/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
