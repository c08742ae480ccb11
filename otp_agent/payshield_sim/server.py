"""The simulator's asyncio TCP server: framing, header echo, concurrency, licence limit, faults.

Owns connections and timing.  Each request is processed in its own task, so many requests can
be in flight on one connection and responses may come back out of order (clients must match
them by header, as with a multi-threaded HSM).  The :class:`Knobs` change behaviour at run time
for tests and benchmarks; they may be changed from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from otp_agent.keystore.payshield.codec import CodecError, FrameReader, frame, response_code
from otp_agent.payshield_sim.commands import CommandProcessor

logger = logging.getLogger(__name__)

FAULTS = ("none", "drop", "garbage", "silent", "error", "wrong_header", "wrong_response", "wrong_hmac")
#: Faults that apply to some commands only (others are answered normally and not counted).
_FAULT_SCOPE = {"wrong_hmac": frozenset({"LQ"})}


@dataclass
class Knobs:
    """Run-time behaviour of the simulator.

    ``latency`` seconds are added to every command; ``calls_per_second`` (0 = unlimited) queues
    commands like a licence throttle; ``fault`` applies to the next ``fault_count`` requests
    (None = all) whose command is in ``fault_commands`` (empty = every command):
    ``drop`` closes the connection, ``garbage`` answers random bytes, ``silent`` never answers,
    ``error`` answers ``fault_error_code``, ``wrong_header`` and ``wrong_response`` corrupt the
    echoed header or the response code, ``wrong_hmac`` answers LQ with a well-formed but wrong
    HMAC (every byte XOR ``5A``: the same wrong answer each time, like a faulty or lying HSM;
    other commands are answered normally and do not count towards ``fault_count``).
    """

    latency: float = 0.0
    calls_per_second: float = 0.0
    fault: str = "none"
    fault_error_code: str = "41"
    fault_count: int | None = None
    fault_commands: frozenset[str] = frozenset()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set(self, **changes: object) -> None:
        """Change several knobs at once (thread-safe)."""
        with self._lock:
            for name, value in changes.items():
                if name.startswith("_") or not hasattr(self, name):
                    raise AttributeError(f"unknown simulator knob {name!r}")
                if name == "fault" and value not in FAULTS:
                    raise ValueError(f"unknown fault {value!r}; choose from {', '.join(FAULTS)}")
                if name == "fault_commands" and isinstance(value, (set, frozenset, list, tuple)):
                    value = frozenset(str(item) for item in value)
                setattr(self, name, value)

    def take_fault(self, command: str) -> str:
        """Return the fault to apply to this request (``none`` if none) and count it."""
        with self._lock:
            if self.fault == "none" or (self.fault_commands and command not in self.fault_commands):
                return "none"
            if command not in _FAULT_SCOPE.get(self.fault, frozenset({command})):
                return "none"
            fault = self.fault
            if self.fault_count is not None:
                self.fault_count -= 1
                if self.fault_count <= 0:
                    self.fault, self.fault_count = "none", None
            return fault


class SimulatorServer:
    """One simulated HSM listening on a TCP port."""

    def __init__(
        self,
        processor: CommandProcessor,
        header_length: int = 4,
        knobs: Knobs | None = None,
        max_connections: int = 64,
    ) -> None:
        self.processor = processor
        self.header_length = header_length
        self.knobs = knobs or Knobs()
        self.max_connections = max_connections
        self.requests: Counter[str] = Counter()
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._next_slot = 0.0

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0 = any free port), with TLS if given; return the port."""
        self._server = await asyncio.start_server(self._connection, host, port, ssl=tls)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def drop_connections(self) -> None:
        """Abort every open connection but keep listening."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_connections:
            writer.transport.abort()
            return
        self.connections_accepted += 1
        self._writers.add(writer)
        frames = FrameReader()
        tasks: set[asyncio.Task[None]] = set()
        lock = asyncio.Lock()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for body in frames.feed(data):
                    task = asyncio.create_task(self._request(body, writer, lock))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except (CodecError, ConnectionError, ssl.SSLError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            self._writers.discard(writer)
            writer.transport.abort()

    async def _licence(self) -> None:
        cps = self.knobs.calls_per_second
        if cps <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / cps
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _request(self, body: bytes, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        header, payload = body[: self.header_length], body[self.header_length :]
        if len(payload) < 2:
            writer.transport.abort()
            return
        command = payload[:2].decode("ascii", "replace")
        self.requests[command] += 1
        fault = self.knobs.take_fault(command)
        if fault == "drop":
            writer.transport.abort()
            return
        if fault == "silent":
            return
        await self._licence()
        if self.knobs.latency > 0:
            await asyncio.sleep(self.knobs.latency)
        response = self.processor.handle(payload)
        if fault == "error":
            response = (response_code(command) + self.knobs.fault_error_code).encode("ascii")
        elif fault == "wrong_response":
            response = b"ZZ" + response[2:]
        elif fault == "wrong_header":
            header = bytes((b + 1 - 10 if b == 0x39 else b + 1) for b in header) or b"?"
        elif fault == "wrong_hmac" and response[2:4] == b"00":
            response = response[:8] + bytes(b ^ 0x5A for b in response[8:])
        elif fault == "garbage":
            header, response = b"", os.urandom(max(4, len(header) + 6))
        async with lock:
            if writer.is_closing():
                return
            writer.write(frame(header + response))
            try:
                await writer.drain()
            except ConnectionError:
                pass
