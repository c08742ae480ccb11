"""One TLS (or, if explicitly allowed, plain TCP) connection to one HSM, many requests in flight.

Owns the socket, the TLS handshake, the framing and the matching of responses to requests by a
unique header: requests are written as soon as they are submitted (pipelining) and a reader task
resolves the future whose header the response echoes.  Any response that cannot be matched, or
whose response code does not belong to its request, breaks the connection: every request still
in flight on it fails closed.  With a header length of 0 only one request may be in flight.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from otp_agent.errors import KeyBackendError
from otp_agent.keystore.payshield.codec import CodecError, FrameReader, frame, response_code
from otp_agent.keystore.payshield.config import HsmAddress
from otp_agent.keystore.payshield.errors import PayShieldProtocolError, PayShieldUnavailable

logger = logging.getLogger(__name__)


def _tls_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, in words an operator can act on (no key material)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate not accepted ({exc.verify_message}); check keystore.payshield."
            "tls_ca_file and tls_server_name"
        )
    if isinstance(exc, asyncio.TimeoutError):
        return (
            "TLS handshake timed out (is this the HSM's TLS port? plain TCP needs "
            "keystore.payshield.insecure_plaintext = true)"
        )
    return f"TLS handshake failed: {type(exc).__name__}"


class HsmConnection:
    """A persistent connection carrying pipelined requests to one HSM."""

    def __init__(
        self,
        address: HsmAddress,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        header_length: int,
        max_in_flight: int,
    ) -> None:
        self.address = address
        self._reader = reader
        self._writer = writer
        self._header_length = header_length
        self._space = 10**header_length
        self._slots = asyncio.Semaphore(max(1, min(max_in_flight, self._space)))
        self._pending: dict[bytes, tuple[str, asyncio.Future[bytes]]] = {}
        self._counter = 0
        self.error: KeyBackendError | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        address: HsmAddress,
        header_length: int,
        max_in_flight: int,
        timeout: float,
        tls: ssl.SSLContext | None,
        server_name: str | None,
    ) -> HsmConnection:
        """Connect with TCP_NODELAY and, if given, TLS; TCP and handshake within ``timeout`` s.

        The TLS context verifies the certificate; it is checked against ``server_name``, or
        the host of ``address``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port), timeout
            )
        except (TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            raise PayShieldUnavailable(f"cannot connect to payShield {address}: {reason}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                await asyncio.wait_for(
                    writer.start_tls(tls, server_hostname=server_name or address.host),
                    max(0.0, deadline - loop.time()),
                )
            except BaseException as exc:
                writer.transport.abort()
                if isinstance(exc, (OSError, asyncio.TimeoutError)):  # ssl.SSLError is an OSError.
                    raise PayShieldUnavailable(
                        f"cannot connect to payShield {address}: {_tls_failure(exc)}"
                    ) from None
                raise
        return cls(address, reader, writer, header_length, max_in_flight)

    @property
    def closed(self) -> bool:
        """True once the connection failed or was closed."""
        return self.error is not None

    @property
    def in_flight(self) -> int:
        """Number of requests waiting for their response."""
        return len(self._pending)

    def _next_header(self) -> bytes:
        if self._header_length == 0:
            return b""
        while True:
            self._counter = (self._counter + 1) % self._space
            header = str(self._counter).zfill(self._header_length).encode("ascii")
            if header not in self._pending:
                return header

    async def submit(self, payload: bytes) -> asyncio.Future[bytes]:
        """Send one request now and return the future of its response payload."""
        if self.error is not None:
            raise self.error
        await self._slots.acquire()
        if self.error is not None:
            self._slots.release()
            raise self.error
        header = self._next_header()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._slots.release())
        self._pending[header] = (payload[:2].decode("ascii"), future)
        try:
            self._writer.write(frame(header + payload))
        except (OSError, RuntimeError, CodecError) as exc:
            self.fail(PayShieldUnavailable(f"cannot send to payShield {self.address}: {type(exc).__name__}"))
        return future

    async def _read_loop(self) -> None:
        frames = FrameReader()
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    self.fail(PayShieldUnavailable(f"payShield {self.address} closed the connection"))
                    return
                for body in frames.feed(data):
                    self._dispatch(body)
        except CodecError:
            self.fail(PayShieldProtocolError(f"payShield {self.address} sent a malformed frame"))
        except (OSError, ssl.SSLError) as exc:
            self.fail(
                PayShieldUnavailable(f"connection to payShield {self.address} failed: {type(exc).__name__}")
            )
        except asyncio.CancelledError:
            self.fail(PayShieldUnavailable(f"connection to payShield {self.address} closed"), quiet=True)
            raise

    def _dispatch(self, body: bytes) -> None:
        header, payload = body[: self._header_length], body[self._header_length :]
        if self._header_length == 0:
            header = next(iter(self._pending), b"\xff")
        entry = self._pending.pop(header, None)
        if entry is None:
            self.fail(
                PayShieldProtocolError(f"payShield {self.address} answered with a header matching no request")
            )
            return
        command, future = entry
        if payload[:2] != response_code(command).encode("ascii"):
            error = PayShieldProtocolError(
                f"payShield {self.address} answered {command} with a wrong response code"
            )
            if not future.done():
                future.set_exception(error)
            self.fail(error)
            return
        if not future.done():
            future.set_result(payload)

    def fail(self, error: KeyBackendError, quiet: bool = False) -> None:
        """Break the connection: every request in flight fails with ``error`` (fail closed)."""
        if self.error is None:
            self.error = error
            if not quiet:
                logger.warning("%s", error)
        self._writer.transport.abort()
        pending, self._pending = self._pending, {}
        for _command, future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # Mark as retrieved: the waiter may already have gone.

    async def close(self) -> None:
        """Close quietly (requests in flight fail)."""
        self.fail(PayShieldUnavailable(f"connection to payShield {self.address} closed"), quiet=True)
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
