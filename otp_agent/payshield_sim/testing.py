"""Run the simulator inside a test: ``with running_simulator() as hsm: ...``.

Owns a background thread with its own event loop serving one simulated HSM on 127.0.0.1 (a free
port), a temporary directory with its LMK file, the key-ceremony files (ZMK in clear and as a
key block), the fingerprint and self-test key files that ``otp-agent init`` would create and its
self-signed TLS certificate, and helpers to change faults at run time and build a
PayShieldConfig for it.  Like the backend, the simulator serves TLS unless told
otherwise; a plain-TCP simulator gets a config with ``insecure_plaintext = true``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from otp_agent.keystore.payshield.config import SELF_TEST_FILE_NAME, HsmAddress, PayShieldConfig
from otp_agent.keystore.payshield.keyblock import parse_header
from otp_agent.keystore.payshield.selftest import (
    SELF_TEST_KEY,
    SELF_TEST_PUBLIC,
    self_test_answer,
    write_self_test_file,
)
from otp_agent.payshield_sim.commands import CommandProcessor, make_zmk
from otp_agent.payshield_sim.lmk import Lmk
from otp_agent.payshield_sim.server import Knobs, SimulatorServer
from otp_agent.payshield_sim.tlscert import make_self_signed, server_context

_T = TypeVar("_T")


class RunningSimulator:
    """Handle on a simulator running in a background thread."""

    def __init__(
        self, directory: Path, lmk_file: Path, header_length: int, knobs: Knobs, tls: bool = True
    ) -> None:
        self.host = "127.0.0.1"
        self.tls_cert: Path | None = None
        self._tls: ssl.SSLContext | None = None
        if tls:
            # A second simulator in the same directory (a second HSM) shares the certificate.
            cert, key = directory / "sim-cert.pem", directory / "sim-key.pem"
            if not (cert.exists() and key.exists()):
                cert, key = make_self_signed(directory)
            self.tls_cert, self._tls = cert, server_context(cert, key)
        self.directory = directory
        self.lmk_file = lmk_file
        self.lmk = Lmk.load_or_create(lmk_file)
        self.lmk_check_value = self.lmk.check_value
        self.knobs = knobs
        self.processor = CommandProcessor(self.lmk)
        self.server = SimulatorServer(self.processor, header_length, knobs)
        self.zmk_file = directory / "zmk.hex"
        self.zmk_key_block_file = directory / "zmk.kb"
        if not self.zmk_file.exists():
            zmk, key_block = make_zmk(self.lmk)
            self.zmk_file.write_text(zmk.hex() + "\n")
            self.zmk_file.chmod(0o600)
            self.zmk_key_block_file.write_text(key_block + "\n")
        self.fingerprint_key_file = directory / "fingerprint.kb"
        if not self.fingerprint_key_file.exists():
            # What `otp-agent init` would have created: an HMAC-SHA-256 key block, usage 63.
            header = parse_header("1000063HG00N0000")
            self.fingerprint_key_file.write_text("S" + self.lmk.wrap(header, os.urandom(32)) + "\n")
        self.self_test_key_file = directory / SELF_TEST_FILE_NAME
        if not self.self_test_key_file.exists():
            # What `otp-agent init` would have created with a ZMK: the public test key imported
            # (here wrapped directly under the LMK) and its known answer.
            header = parse_header("1000063HG00N0000")
            write_self_test_file(
                self.self_test_key_file,
                "S" + self.lmk.wrap(header, SELF_TEST_KEY),
                self_test_answer(),
                SELF_TEST_PUBLIC,
            )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="payshield-sim", daemon=True)
        self._thread.start()
        self.port = 0
        self.running = False

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    @property
    def address(self) -> str:
        """``host:port`` as written in ``[keystore.payshield] hosts``."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        self.port = self._run(self.server.start(self.host, self.port, self._tls))
        self.running = True

    def stop(self) -> None:
        """Stop listening and abort every connection (the HSM dies)."""
        self._run(self.server.close())
        self.running = False

    def drop_connections(self) -> None:
        """Abort every open connection, keep listening."""
        self._run(self.server.drop_connections())

    def set(self, **knobs: object) -> None:
        """Change run-time knobs: latency, calls_per_second, fault, fault_error_code, ...

        ``set(fault="wrong_hmac")`` makes the simulator lie: every LQ answer holds a wrong HMAC.
        """
        self.knobs.set(**knobs)

    def clear_faults(self) -> None:
        """Back to normal behaviour."""
        self.knobs.set(fault="none", fault_count=None, fault_commands=frozenset())

    def request_count(self, command: str) -> int:
        """How many requests with this command code the simulator received."""
        return self.server.requests[command]

    def config(self, **overrides: object) -> PayShieldConfig:
        """A PayShieldConfig for this simulator, with ZMK, fingerprint and self-test files ready.

        TLS trusting the simulator's certificate, or plain TCP with ``insecure_plaintext``.
        """
        link: dict[str, Any] = (
            {"tls_ca_file": self.tls_cert, "tls_server_name": "localhost"}
            if self.tls_cert is not None
            else {"tls": False, "insecure_plaintext": True}
        )
        base = PayShieldConfig(
            hosts=(HsmAddress(self.host, self.port),),
            lmk_check_value=self.lmk_check_value[:6],
            header_length=self.server.header_length,
            connect_timeout=2.0,
            request_timeout=2.0,
            health_interval=0.0,
            retry_initial=0.05,
            retry_max=0.5,
            zmk_file=self.zmk_file,
            zmk_key_block_file=self.zmk_key_block_file,
            fingerprint_key_file=self.fingerprint_key_file,
            self_test_key_file=self.self_test_key_file,
            **link,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the server and its thread."""
        if self.running:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


def config_for(*simulators: RunningSimulator, **overrides: object) -> PayShieldConfig:
    """A config listing several simulators (sharing one LMK) in this order of preference."""
    hosts = tuple(HsmAddress(sim.host, sim.port) for sim in simulators)
    return simulators[0].config(hosts=hosts, **overrides)


@contextmanager
def running_simulator(
    *,
    header_length: int = 4,
    lmk_file: Path | None = None,
    directory: Path | None = None,
    tls: bool = True,
    **knobs: Any,
) -> Iterator[RunningSimulator]:
    """Run a simulator on 127.0.0.1 for the duration of the ``with`` block.

    ``knobs`` are :class:`Knobs` fields (latency, calls_per_second, fault, ...).  The simulator
    serves TLS with a self-signed certificate (trusted by :meth:`RunningSimulator.config`);
    ``tls=False`` serves plain TCP (for raw-socket tests, and configs that opt in to
    ``insecure_plaintext``).  Pass the ``lmk_file`` and ``directory`` of another simulator to
    simulate a second HSM with the same LMK, key-ceremony files and certificate.
    """
    with tempfile.TemporaryDirectory(prefix="payshield-sim-") as temporary:
        where = directory or Path(temporary)
        sim = RunningSimulator(where, lmk_file or where / "lmk.hex", header_length, Knobs(), tls)
        sim.set(**knobs)
        try:
            sim.start()
            yield sim
        finally:
            sim.close()
