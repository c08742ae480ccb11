"""A hostile middlebox on the HSM link, for tests: a small, bounded TCP proxy on 127.0.0.1.

Owns one listener that relays every connection to a simulator and records the bytes that come
back (what an eavesdropper on the link sees).  Until it is ``armed`` it only relays; armed, it
attacks in the one way its position allows:

* plain-TCP link: it reads the payShield frames coming back and replaces the HMAC of every
  ``LR00`` answer with one that truncates to ``FORGED_CODE`` (the attack that makes a chosen
  code pass);
* TLS link: it cannot read the frames, so it flips the bits of the TLS application-data records
  coming back where an ``LR`` HMAC would sit (the same attack on a stream it cannot read);
* TLS link with ``impersonate``: new connections are relayed to an impostor listener that
  terminates TLS with a certificate of its own (which the backend does not trust) and would
  relay forged ``LR`` answers from a TLS session of its own to the simulator.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from otp_agent.keystore.payshield.codec import CodecError, FrameReader, frame
from otp_agent.oath import format_code
from otp_agent.payshield_sim.testing import RunningSimulator
from otp_agent.payshield_sim.tlscert import make_self_signed, server_context

_T = TypeVar("_T")
#: Rewrites one chunk coming back from the HSM; the dict keeps its parsing state.
Transform = Callable[[bytes, dict[str, Any]], bytes]
FORGED_CODE = "424242"
_MAX_CONNECTIONS = 16
_MAX_RECORDED = 4 << 20
_TLS_RECORD_MAX = 5 + (16 << 10) + 256
_TLS_APPLICATION_DATA = 23


def forged_mac(length: int) -> bytes:
    """An HMAC-sized value whose RFC 4226 dynamic truncation gives ``FORGED_CODE``.

    The last byte is 0, so the offset is 0 and the code is the first four bytes mod 10^6.
    """
    mac = int(FORGED_CODE).to_bytes(4, "big") + bytes(length - 4)
    assert format_code(mac, 6) == FORGED_CODE
    return mac


class ForgingProxy:
    """Relay to ``simulator``; when ``armed``, forge or tamper with what comes back."""

    def __init__(self, simulator: RunningSimulator, directory: Path, impersonate: bool = False) -> None:
        self.simulator = simulator
        self.header_length = simulator.server.header_length
        self.tls_link = simulator.tls_cert is not None
        self.armed = False
        self.forged_answers = 0
        self.tampered_records = 0
        self.impersonated_connections = 0
        self.impostor_sessions = 0
        self.downstream = bytearray()
        self._impersonation: ssl.SSLContext | None = None
        self._upstream_tls: ssl.SSLContext | None = None
        if impersonate:
            assert simulator.tls_cert is not None, "impersonation needs a TLS simulator"
            (directory / "proxy").mkdir()
            self._impersonation = server_context(*make_self_signed(directory / "proxy"))
            self._upstream_tls = ssl.create_default_context(cafile=str(simulator.tls_cert))
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="forging-proxy", daemon=True)
        self._thread.start()
        self._server: asyncio.Server = self._run(self._listen(self._relay, None))
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._impostor: asyncio.Server | None = None
        if self._impersonation is not None:
            self._impostor = self._run(self._listen(self._impostor_session, self._impersonation))

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    @staticmethod
    async def _listen(handler: Any, tls: ssl.SSLContext | None) -> asyncio.Server:
        return await asyncio.start_server(
            handler, "127.0.0.1", 0, ssl=tls, ssl_handshake_timeout=5 if tls else None
        )

    def drop_connections(self) -> None:
        """Abort every relayed connection (the backend reconnects through the proxy)."""
        self._run(self._drop())

    async def _drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def close(self) -> None:
        """Stop listening, abort the connections, stop the thread."""

        async def stop() -> None:
            self._server.close()
            if self._impostor is not None:
                self._impostor.close()
            await self._drop()

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- one connection ------------------------------------------------------------------------

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Front listener: to the simulator, or (impersonating) to the impostor listener."""
        if self.armed and self._impostor is not None:
            self.impersonated_connections += 1
            port = self._impostor.sockets[0].getsockname()[1]
            await self._session(reader, writer, port, None, None)
        else:
            back = self._tamper if self.tls_link else self._forge
            await self._session(reader, writer, self.simulator.port, None, back)

    async def _impostor_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reached only if the backend accepted the impostor's certificate."""
        self.impostor_sessions += 1
        await self._session(reader, writer, self.simulator.port, self._upstream_tls, self._forge)

    async def _session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        port: int,
        tls: ssl.SSLContext | None,
        back: Transform | None,
    ) -> None:
        if len(self._writers) >= 2 * _MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            name = "localhost" if tls else None
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(self.simulator.host, port, ssl=tls, server_hostname=name), 5
            )
            upstream_writer = upstream
            self._writers.add(upstream)
            await asyncio.gather(
                self._pump(reader, upstream, None), self._pump(upstream_reader, writer, back)
            )
        except (TimeoutError, OSError, CodecError):
            pass
        finally:
            for each in (writer, upstream_writer):
                if each is not None:
                    self._writers.discard(each)
                    each.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transform: Transform | None
    ) -> None:
        """Copy one direction; the way back is recorded and goes through ``transform``."""
        state: dict[str, Any] = {"frames": FrameReader(), "buffer": bytearray()}
        try:
            while data := await reader.read(65536):
                if transform is not None:
                    if len(self.downstream) < _MAX_RECORDED:
                        self.downstream += data
                    data = transform(data, state)
                writer.write(data)
                await writer.drain()
        finally:
            with suppress(Exception):
                writer.transport.abort()

    def _forge(self, data: bytes, state: dict[str, Any]) -> bytes:
        """Plain payShield frames: replace the HMAC of each LR answer once armed."""
        out = bytearray()
        for body in state["frames"].feed(data):
            header, payload = body[: self.header_length], body[self.header_length :]
            if self.armed and payload[:4] == b"LR00":
                length = int(payload[4:8])
                payload = payload[:8] + forged_mac(length) + payload[8 + length :]
                self.forged_answers += 1
            out += frame(header + payload)
        return bytes(out)

    def _tamper(self, data: bytes, state: dict[str, Any]) -> bytes:
        """TLS records: flip the bits where an LR HMAC would sit, once armed."""
        buffer: bytearray = state["buffer"]
        buffer += data
        out = bytearray()
        while len(buffer) >= 5:
            size = 5 + int.from_bytes(buffer[3:5], "big")
            if size > _TLS_RECORD_MAX:
                raise OSError("not a TLS stream")
            if len(buffer) < size:
                break
            record = bytearray(buffer[:size])
            del buffer[:size]
            # Frame length (2) + message header + "LR00" (4) + HMAC length (4), then the HMAC.
            at = 5 + 2 + self.header_length + 8
            if self.armed and record[0] == _TLS_APPLICATION_DATA and size > at + 4:
                for index in range(at, at + 4):
                    record[index] ^= 0x5A
                self.tampered_records += 1
            out += record
        return bytes(out)


@contextmanager
def running_proxy(
    simulator: RunningSimulator, directory: Path, impersonate: bool = False
) -> Iterator[ForgingProxy]:
    """Run a :class:`ForgingProxy` in front of ``simulator`` for the ``with`` block."""
    proxy = ForgingProxy(simulator, directory, impersonate)
    try:
        yield proxy
    finally:
        proxy.close()
