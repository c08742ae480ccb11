"""Talking to a set of HSMs: pools, failover, back-off, health, licence pacing.

Owns a private asyncio event loop in a daemon thread, so that the synchronous key-backend API
can pipeline many requests on persistent connections.  HSMs are used in the configured order:
the first one that is up takes the traffic; a failed HSM is marked down and retried after an
exponential back-off, by the next request or by the periodic health check, and takes the
traffic back once it answers.  When every HSM is down, waiting for the back-off would only
delay the recovery: a request may then try to reconnect once ``retry_floor`` seconds have
passed since the last attempt on that HSM, so a returning HSM is used again within about that
time while a dead one gets at most one attempt per floor (plus the back-off's).  What is known
of each HSM, and the back-off itself, is :class:`~otp_agent.keystore.payshield.hosts.HostState`.

Every new connection starts with NC and is refused if the LMK check value differs from the
configured one, then runs the known-answer self-test (an LQ whose HMAC is known,
:class:`~otp_agent.keystore.payshield.selftest.SelfTest`), as does every health check: an HSM
that gets it wrong is marked down like a dead one, so that its wrong HMACs are never taken for
wrong codes.  A request that fails is never retried: the caller fails closed and the next
request goes to the next HSM.

Also owns the TLS client context: certificate and host name always verified (CA from
``tls_ca_file`` or the system store), optional client certificate.  The check value NC returns
is public, so only TLS tells the real HSM from anyone on the path; plain TCP
(``insecure_plaintext``) is logged as a warning when the transport starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from otp_agent.errors import KeyBackendError, KeyBackendUnavailable
from otp_agent.keystore.payshield import codec
from otp_agent.keystore.payshield.config import (
    PLAINTEXT_WARNING,
    PREFIX,
    PayShieldConfig,
)
from otp_agent.keystore.payshield.connection import HsmConnection
from otp_agent.keystore.payshield.errors import LmkMismatch, PayShieldBusy, PayShieldUnavailable
from otp_agent.keystore.payshield.hosts import HostState, lmk_matches
from otp_agent.keystore.payshield.selftest import SelfTest, SelfTestFailed

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class Transport:
    """Synchronous facade over pipelined connections to one or more HSMs."""

    def __init__(self, config: PayShieldConfig, self_test: SelfTest | None = None) -> None:
        self.config = config
        self._self_test = self_test
        self._tls = self._tls_context(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="payshield-transport", daemon=True
        )
        self._thread.start()
        self._hosts: list[HostState] = self._call(self._make_hosts(), 5.0)
        self._next_slot = 0.0
        self._health_task: asyncio.Task[None] | None = None
        self._closed = False
        #: The HSM that served the last request, and who is told when another one takes over:
        #: ``on_failover(previous, active)`` (called in the transport's thread; must not block).
        self._active: str | None = None
        self.on_failover: Callable[[str, str], None] | None = None

    @property
    def _connect_budget(self) -> float:
        """Longest time a connection may take to be ready: TCP and TLS, NC, the self-test."""
        commands = 2 if self._self_test is not None else 1
        return self.config.connect_timeout + commands * self.config.request_timeout

    async def _make_hosts(self) -> list[HostState]:
        state = "not run" if self._self_test is not None else ""
        return [HostState(address, self_test=state) for address in self.config.hosts]

    @staticmethod
    def _tls_context(config: PayShieldConfig) -> ssl.SSLContext | None:
        """The client context: TLS 1.2 or later, certificate and host name always checked.

        :raises KeyBackendUnavailable: a CA, certificate or key file cannot be loaded.
        """
        if not config.tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(config.tls_ca_file) if config.tls_ca_file else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise KeyBackendUnavailable(
                f"{PREFIX}.tls_ca_file: cannot load {config.tls_ca_file}: {type(exc).__name__}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.tls_cert_file and config.tls_key_file:
            try:
                context.load_cert_chain(str(config.tls_cert_file), str(config.tls_key_file))
            except (OSError, ssl.SSLError) as exc:
                raise KeyBackendUnavailable(
                    f"{PREFIX}.tls_cert_file, tls_key_file: cannot load {config.tls_cert_file} "
                    f"with {config.tls_key_file}: {type(exc).__name__}"
                ) from None
        return context

    # -- the synchronous bridge ----------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PayShieldUnavailable("payShield request did not complete in time") from None

    def start(self) -> None:
        """Connect to every HSM (NC check); raise unless one is usable and none mismatches.

        :raises LmkMismatch: an HSM reports another LMK check value.
        :raises PayShieldUnavailable: no HSM could be reached.
        """
        if self.config.insecure_plaintext:
            logger.warning("%s", PLAINTEXT_WARNING)
        self._call(self._start(), self._connect_budget)
        if self.config.health_interval > 0:
            self._loop.call_soon_threadsafe(self._start_health_loop)

    def exchange(self, payloads: Sequence[bytes], pipelined: bool = True) -> list[bytes]:
        """Send requests to the active HSM and return their response payloads, in order.

        Pipelined, every request is written at once on one connection and the answers are
        collected in about one round trip; otherwise they are sent one after the other.
        """
        per_host = self._connect_budget
        budget = per_host * len(self._hosts) + self.config.request_timeout * (
            1 if pipelined else max(1, len(payloads))
        )
        return self._call(self._exchange(list(payloads), pipelined), budget)

    def health(self) -> dict[str, object]:
        """Probe every HSM now (NO, or a reconnection if due) and report.

        The report always says how the link is protected (``transport``: ``tls`` or
        ``plaintext (insecure)``), with a ``warning`` for plain TCP, even if the probe fails.
        """
        link: dict[str, object] = {"transport": self.config.transport_label}
        if self.config.insecure_plaintext:
            link["warning"] = PLAINTEXT_WARNING
        try:
            probed = self._call(self._health(), self._connect_budget)
        except KeyBackendError as exc:
            return {**link, "ok": False, "error": str(exc)}
        return {**link, **probed}

    def close(self) -> None:
        """Close every connection and stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._close(), 5.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            if not self._thread.is_alive():
                self._loop.close()

    # -- inside the loop -----------------------------------------------------------------------

    async def _start(self) -> None:
        results = await asyncio.gather(*(self._connect(host) for host in self._hosts), return_exceptions=True)
        for host, result in zip(self._hosts, results, strict=True):
            if isinstance(result, LmkMismatch):
                raise result
            if isinstance(result, BaseException):
                logger.warning("payShield %s unavailable at start-up: %s", host.address, result)
        if not any(host.up for host in self._hosts):
            reasons = "; ".join(host.last_error for host in self._hosts)
            raise PayShieldUnavailable(f"no payShield reachable at start-up ({reasons})")

    async def _connect(self, host: HostState) -> HsmConnection:
        """Open a connection, check the LMK with NC, and mark the host up."""
        config = self.config
        host.last_attempt = time.monotonic()
        try:
            connection = await HsmConnection.open(
                host.address,
                config.header_length,
                config.max_in_flight,
                config.connect_timeout,
                self._tls,
                config.tls_server_name,
            )
            try:
                future = await connection.submit(codec.encode_nc())
                check, firmware = codec.parse_nd(await asyncio.wait_for(future, config.request_timeout))
            except TimeoutError:
                await connection.close()
                raise PayShieldUnavailable(f"payShield {host.address} did not answer NC") from None
            except BaseException:
                await connection.close()
                raise
            if not lmk_matches(config.lmk_check_value, check):
                await connection.close()
                raise LmkMismatch(
                    f"payShield {host.address} has LMK check value {check[:6]}, "
                    f"configured {config.lmk_check_value[:6]}: refusing to use it"
                )
            try:
                await self._run_self_test(host, connection)
            except BaseException:
                await connection.close()
                raise
        except KeyBackendError as exc:
            host.mark_down(exc, self.config)
            raise
        host.lmk_check_value, host.firmware = check, firmware
        if not host.up:
            logger.info("payShield %s is up (firmware %s)", host.address, firmware)
        host.up, host.failures, host.last_error = True, 0, ""
        host.connections.append(connection)
        return connection

    async def _run_self_test(self, host: HostState, connection: HsmConnection) -> None:
        """Ask for the known answer on ``connection``; a wrong one (or a refusal) is fatal.

        :raises SelfTestFailed: the HMAC differs from the known answer, or the HSM refused it.
        :raises PayShieldUnavailable: no answer within ``request_timeout``, or the link failed.
        """
        test = self._self_test
        if test is None:
            return
        request = codec.encode_lq("FF", len(test.expected), test.key, test.message)
        future = await connection.submit(request)
        try:
            answer = codec.parse_lr(
                await asyncio.wait_for(future, self.config.request_timeout), len(test.expected)
            )
        except TimeoutError:
            raise PayShieldUnavailable(f"payShield {host.address} did not answer the self-test LQ") from None
        except PayShieldUnavailable:
            raise
        except KeyBackendError as exc:  # An error code: the HSM cannot compute the test HMAC.
            host.self_test = f"failed: LQ refused ({exc})"
            raise SelfTestFailed(
                f"payShield {host.address} failed its known-answer self-test: LQ refused ({exc}); not used"
            ) from None
        if not hmac.compare_digest(answer, test.expected):
            if host.self_test != "failed: wrong HMAC":
                logger.error(
                    "payShield %s answered the known-answer self-test with a wrong HMAC: "
                    "not used until it answers right",
                    host.address,
                )
            host.self_test = "failed: wrong HMAC"
            raise SelfTestFailed(
                f"payShield {host.address} failed its known-answer self-test: wrong HMAC for the "
                "self-test key, so its answers cannot be trusted (a faulty, misconfigured or "
                "impersonated HSM); not used"
            )
        host.self_test = "passed"

    async def _connection(self) -> HsmConnection:
        """Return a connection to the first usable HSM, reconnecting where the back-off allows
        (or, when every HSM is down, the floor)."""
        every_host_down = not any(host.up for host in self._hosts)
        for host in self._hosts:
            if not host.due(every_host_down, self.config):
                continue
            reusable = host.reusable(self.config)
            if reusable is not None:
                return self._serving(host, reusable)
            async with host.opening:
                reusable = host.reusable(self.config)  # Another request may have opened one.
                if reusable is not None:
                    return self._serving(host, reusable)
                if host.due(every_host_down, self.config):
                    try:
                        return self._serving(host, await self._connect(host))
                    except KeyBackendError:
                        continue
        reasons = "; ".join(f"{h.address}: {h.last_error or 'down'}" for h in self._hosts)
        raise PayShieldUnavailable(f"no payShield available ({reasons})")

    def _serving(self, host: HostState, connection: HsmConnection) -> HsmConnection:
        """Note which HSM serves; a change from one that served before is a failover."""
        address = str(host.address)
        previous, self._active = self._active, address
        if previous is not None and previous != address:
            logger.warning("payShield failover: %s took over from %s", address, previous)
            if self.on_failover is not None:
                try:
                    self.on_failover(previous, address)
                except Exception:
                    logger.exception("failover observer failed")
        return connection

    async def _pace(self, count: int, deadline: float) -> None:
        """Wait for ``count`` slots under the licence limit, or fail if past the deadline."""
        cps = self.config.calls_per_second
        if cps <= 0:
            return
        now = time.monotonic()
        start = max(now, self._next_slot)
        last = start + (count - 1) / cps
        if last > deadline:
            raise PayShieldBusy(
                f"calls-per-second limit of {cps:g} reached: request not sent "
                f"within {self.config.request_timeout:g}s"
            )
        self._next_slot = last + 1.0 / cps
        if last > now:
            await asyncio.sleep(last - now)

    async def _exchange(self, payloads: list[bytes], pipelined: bool) -> list[bytes]:
        timeout = self.config.request_timeout * (1 if pipelined else max(1, len(payloads)))
        await self._pace(len(payloads), time.monotonic() + self.config.request_timeout)
        connection = await self._connection()
        host = next(h for h in self._hosts if h.address == connection.address)
        try:
            return await asyncio.wait_for(self._send(connection, payloads, pipelined), timeout)
        except TimeoutError:
            error = PayShieldUnavailable(
                f"payShield {host.address} did not answer within {timeout:g}s "
                "(down, hanging, or queueing beyond its licensed calls per second)"
            )
            connection.fail(error)
            host.mark_down(error, self.config)
            raise error from None
        except KeyBackendError as exc:
            host.mark_down(exc, self.config)
            raise

    @staticmethod
    async def _send(connection: HsmConnection, payloads: list[bytes], pipelined: bool) -> list[bytes]:
        """Write every request at once and gather (pipelined), or one after the other."""
        if pipelined:
            futures = [await connection.submit(payload) for payload in payloads]
            return list(await asyncio.gather(*futures))
        return [await (await connection.submit(payload)) for payload in payloads]

    async def _probe(self, host: HostState) -> None:
        """NO on a live connection; otherwise reconnect (with NC) if up or due for a retry."""
        host.connections = [c for c in host.connections if not c.closed]
        if host.up and host.connections:
            connection = min(host.connections, key=lambda c: c.in_flight)
            try:
                future = await connection.submit(codec.encode_no())
                host.status = codec.parse_np(await asyncio.wait_for(future, self.config.request_timeout))
                await self._run_self_test(host, connection)
            except TimeoutError:
                host.mark_down(
                    PayShieldUnavailable(f"payShield {host.address} did not answer NO"), self.config
                )
            except KeyBackendError as exc:
                host.mark_down(exc, self.config)
        elif host.up or time.monotonic() >= host.next_retry:
            async with host.opening:
                try:
                    await self._connect(host)
                except KeyBackendError:
                    pass

    async def _health(self) -> dict[str, object]:
        await asyncio.gather(*(self._probe(host) for host in self._hosts))
        active = next((str(h.address) for h in self._hosts if h.up), None)
        return {
            "ok": active is not None,
            "active": active,
            "self_test": "enabled" if self._self_test is not None else "not configured",
            "hosts": [host.report() for host in self._hosts],
        }

    def _start_health_loop(self) -> None:
        self._health_task = self._loop.create_task(self._health_loop())

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            try:
                await self._health()
            except Exception:  # The loop must survive anything; the error is in host state.
                logger.exception("payShield health check failed")

    async def _close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        for host in self._hosts:
            for connection in host.connections:
                await connection.close()
            host.connections.clear()
            host.up = False
