"""The RADIUS server: UDP datagrams in, the agent's decision out as Access-Accept/Reject/Challenge.

Owns the packet checks and signatures, the three modes, the challenge States, the cache of
recent replies (retransmissions) and the pool of threads that call the agent.

A datagram is answered only when it comes from a client of the clients file, within that
client's rate limit, and is authentic: its Message-Authenticator (RFC 3579 section 3.2) checks
out with the client's secret, and it has one when ``require_message_authenticator`` is on (always
for a Status-Server, RFC 5997).  Anything else is dropped unanswered, with a throttled log line:
an unauthenticated request is never answered (BlastRADIUS, CVE-2024-3596).  The Request
Authenticator of an Access-Request is a nonce (RFC 2865 section 3): it cannot be verified, and
only one of sixteen zero octets is refused as bad.  Every reply carries a Message-Authenticator
as its first attribute and the Response Authenticator of RFC 2865 section 3; both are computed
here (the same with every pyrad release), pyrad decodes the attributes and encodes the reply's.

A request repeated by the same address, port, Identifier and Request Authenticator within
:data:`DUPLICATE_SECONDS` is a retransmission: it gets the cached reply (or nothing while the
first is still being decided), never a second decision.  The agent is called from a bounded pool
of threads, one connection (:class:`~otp_agent.client.AgentClient`) each, so the event loop never
waits; each request has ``timeout`` seconds for all its agent calls, after which it is rejected
(fail closed).  No password, code or secret is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from pyrad.dictionary import Dictionary
from pyrad.packet import AuthPacket

from otp_agent import wire
from otp_agent.client import AgentClient
from otp_agent.errors import (
    AgentUnreachable,
    ChannelError,
    ConfigError,
    NotFound,
    OtpAgentError,
    PermissionDenied,
    SendRefused,
)
from otp_agent.radius.clients import Client, ClientTable, IPAddress, RateLimiter, ThrottledLog, source_address
from otp_agent.radius.config import ListenAddress, RadiusConfig

_log = logging.getLogger("otp_agent.radius")
T = TypeVar("T")

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE, STATUS_SERVER = 1, 2, 3, 11, 12
CODE_NAMES = {
    ACCESS_ACCEPT: "Access-Accept",
    ACCESS_REJECT: "Access-Reject",
    ACCESS_CHALLENGE: "Access-Challenge",
}
USER_NAME, USER_PASSWORD, CHAP_PASSWORD, STATE, NAS_IDENTIFIER, CALLING_STATION_ID = 1, 2, 3, 24, 32, 31
PROXY_STATE, EAP_MESSAGE, MESSAGE_AUTHENTICATOR = 33, 79, 80
#: The largest RADIUS packet (RFC 2865 section 3, RFC 7930).
MAX_PACKET = 4096
#: Threads (and agent connections) deciding requests; below the agent's per-uid connection cap.
WORKERS = 8
#: Requests being decided at once; more are dropped (the NAS retransmits).
MAX_IN_FLIGHT = 1024
DUPLICATE_SECONDS = 30.0
MAX_RECENT = 65536
MAX_CHALLENGES = 65536
STATE_BYTES = 32
CHALLENGE_MESSAGE = "Enter your one-time code"
#: The service name the agent audits RADIUS decisions under.
SERVICE = "radius"
DICTIONARY = Path(__file__).with_name("dictionary")
_GRACE = 0.5


def load_dictionary() -> Any:
    """The pyrad dictionary shipped beside this module.  :raises ConfigError: missing or bad."""
    try:
        return Dictionary(str(DICTIONARY))
    except Exception as exc:  # OSError, pyrad's ParseError
        raise ConfigError(f"{DICTIONARY}: the RADIUS dictionary cannot be read: {exc}") from None


class Dropped(Exception):
    """A datagram that gets no answer; the message says why (never a secret)."""


def printable(value: str, limit: int = 64) -> str:
    """``value`` fit for a log line: control characters replaced, cut at ``limit``."""
    text = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return text + ("..." if len(value) > limit else "")


# --------------------------------------------------------------------------- the wire


def _attributes(body: bytes) -> list[tuple[int, int, int]]:
    """(type, offset, length) of each attribute in ``body``.  :raises Dropped: malformed."""
    found, offset = [], 0
    while offset < len(body):
        if offset + 2 > len(body) or body[offset + 1] < 2 or offset + body[offset + 1] > len(body):
            raise Dropped("malformed attribute list")
        found.append((body[offset], offset, body[offset + 1]))
        offset += body[offset + 1]
    return found


def authenticate_request(data: bytes, secret: bytes, *, require_message_authenticator: bool) -> bytes:
    """Check a request's framing and Message-Authenticator; return it without padding.

    :raises Dropped: malformed, a zero Request Authenticator, or a Message-Authenticator that is
        missing (when required, and always in a Status-Server), repeated or wrong.
    """
    if len(data) < 20:
        raise Dropped("shorter than a RADIUS header")
    length = int.from_bytes(data[2:4], "big")
    if not 20 <= length <= min(len(data), MAX_PACKET):
        raise Dropped("bad Length field")
    data = data[:length]
    if data[4:20] == bytes(16):
        raise Dropped("zero Request Authenticator")
    found = [(o, n) for kind, o, n in _attributes(data[20:]) if kind == MESSAGE_AUTHENTICATOR]
    if not found:
        if require_message_authenticator or data[0] == STATUS_SERVER:
            raise Dropped("no Message-Authenticator")
        return data
    if len(found) > 1 or found[0][1] != 18:
        raise Dropped("malformed Message-Authenticator")
    start = 20 + found[0][0] + 2
    expected = hmac.new(secret, data[:start] + bytes(16) + data[start + 16 :], hashlib.md5).digest()
    if not hmac.compare_digest(expected, data[start : start + 16]):
        raise Dropped("wrong Message-Authenticator (not signed with this client's secret)")
    return data


def raw_values(data: bytes, kind: int) -> list[bytes]:
    """The values of every attribute ``kind`` of an authenticated packet, in order."""
    return [data[20 + o + 2 : 20 + o + n] for k, o, n in _attributes(data[20:]) if k == kind]


def encode_reply(
    dictionary: Any, request: bytes, code: int, secret: bytes, attributes: tuple[tuple[str, Any], ...] = ()
) -> bytes:
    """A reply to ``request``: Message-Authenticator first, the attributes, the Proxy-States."""
    reply = AuthPacket(code=code, id=request[1], secret=secret, authenticator=request[4:20], dict=dictionary)
    reply.message_authenticator = None  # signed below, not by pyrad (older releases cannot)
    reply[MESSAGE_AUTHENTICATOR] = [bytes(16)]
    for name, value in attributes:
        reply.AddAttribute(name, value)
    proxy_states = raw_values(request, PROXY_STATE)
    if proxy_states:
        reply[PROXY_STATE] = proxy_states
    unsigned: bytes = reply.ReplyPacket()
    if unsigned[20] != MESSAGE_AUTHENTICATOR:  # pragma: no cover - pyrad keeps insertion order
        raise RuntimeError("pyrad did not encode the Message-Authenticator first")
    header, body = unsigned[:4], unsigned[20:]
    signature = hmac.new(secret, header + request[4:20] + body, hashlib.md5).digest()
    body = body[:2] + signature + body[18:]
    return header + hashlib.md5(header + request[4:20] + body + secret).digest() + body


# --------------------------------------------------------------------------- the agent


class AgentGateway:
    """The agent's calls, made from a bounded pool of threads with one connection each.

    :class:`AgentClient` replaces a connection before the agent closes it (idle, old or much
    used: the agent ends a non-root peer's connection after 64 requests or 30 s) and never sends
    a ``validate`` twice, so a connection that breaks under a request fails that request closed.
    """

    def __init__(self, socket_path: Path, timeout: float, workers: int = WORKERS) -> None:
        self.socket_path, self.timeout = socket_path, timeout
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otp-radiusd-agent")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[AgentClient] = []

    def _client(self, deadline: float) -> AgentClient:
        client: AgentClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = AgentClient(self.socket_path, timeout=self.timeout)
            with self._lock:
                self._clients.append(client)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentUnreachable(f"no answer from the agent within {self.timeout:g} s (queued too long)")
        client.timeout = remaining  # this thread's own client: the request's remaining time
        return client

    def validate(
        self, user: str, answer: str, *, combined: bool, context: dict[str, str], deadline: float
    ) -> wire.ValidateReply:
        """``validate`` with the code alone, or password and code (``combined``)."""
        field_name = "password_and_code" if combined else "code"
        fields = {"user": user, field_name: answer, **context}
        return wire.ValidateReply.parse(self._client(deadline).request("validate", **fields))

    def verify_password(
        self, user: str, password: str, *, context: dict[str, str], deadline: float
    ) -> wire.ValidateReply:
        """``verify_password``: accepted, or rejected with reason bad_password_or_code."""
        fields = {"user": user, "password": password, **context}
        return wire.ValidateReply.parse(self._client(deadline).request("verify_password", **fields))

    def send(self, user: str, *, context: dict[str, str], deadline: float) -> wire.SentCode | None:
        """Have the agent send the user's ``oob`` code; None when the user has no such token."""
        try:
            return wire.SentCode.parse(self._client(deadline).request("send", user=user, **context))
        except NotFound:
            return None

    def probe(self, deadline: float) -> str:
        """The agent's version, after checking that it lets this process validate for anyone."""
        client = self._client(deadline)
        version = client.ping()
        if os.geteuid() != 0:
            client.enrolled("root")  # PermissionDenied unless a validator (uid 0 or the group)
        return version

    def close(self) -> None:
        """Wait for the calls in flight (each bounded by its timeout), close the connections."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Outcome:
    """The answer to one Access-Request and why (an agent reason or one of ours)."""

    code: int
    reason: str
    attributes: tuple[tuple[str, Any], ...] = ()
    note: str = ""


def _reject(reason: str, note: str = "") -> Outcome:
    return Outcome(ACCESS_REJECT, reason, note=note)


@dataclass(frozen=True)
class _Challenge:
    client: str
    user: str
    expires: float


@dataclass
class _Recent:
    reply: bytes | None
    expires: float


@dataclass(frozen=True)
class _Request:
    """An authenticated Access-Request: who, from where, and the answer (kept out of repr)."""

    data: bytes
    client: Client
    address: tuple[Any, ...]
    source: IPAddress
    user: str
    answer: str = field(repr=False)
    state: bytes | None
    nas: str
    received: float

    @property
    def context(self) -> dict[str, str]:
        """What the agent audits: service radius, the NAS address as rhost, its name as tty."""
        return {"service": SERVICE, "rhost": str(self.source), "tty": f"nas:{self.nas}"}


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: RadiusServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass in 3.11

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.transport is not None
        try:
            self.server.datagram(data, addr, self.transport)
        except Exception:  # one bad datagram must never stop the loop
            _log.exception("unexpected error on a datagram from %s", addr[0])

    def error_received(self, exc: Exception) -> None:
        _log.debug("UDP error: %s", exc)


class RadiusServer:
    """Serves Access-Requests (and Status-Server) on every listen address of ``config``."""

    def __init__(
        self,
        config: RadiusConfig,
        clients: ClientTable,
        gateway: AgentGateway,
        dictionary: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self.clients, self.gateway, self.dictionary = config, clients, gateway, dictionary
        self._clock = clock
        self._limiter = RateLimiter(config.rate_limit, clock)
        self._warn = ThrottledLog(_log, logging.WARNING)
        self._error = ThrottledLog(_log, logging.ERROR)
        self._recent: OrderedDict[tuple[Any, ...], _Recent] = OrderedDict()
        self._challenges: OrderedDict[bytes, _Challenge] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: list[asyncio.DatagramTransport] = []
        self.agent_down = False
        self._closing = False
        self._sources: dict[str, IPAddress] = {}  # parsed source addresses, by the socket's text

    # -- sockets ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listen address.  :raises OSError: naming the address that failed."""
        loop = asyncio.get_running_loop()
        for address in self.config.listen:
            sock = _bind(address)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
            self._transports.append(transport)

    async def close(self) -> None:
        """Stop receiving, let the requests in flight be answered (bounded), close the pool."""
        self._closing = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.timeout + 2 * _GRACE)
        for transport in self._transports:
            transport.close()
        await asyncio.get_running_loop().run_in_executor(None, self.gateway.close)

    def reload_clients(self, clients: ClientTable) -> None:
        """Use a new clients table from now on (SIGHUP)."""
        self.clients = clients

    # -- one datagram ----------------------------------------------------------------------

    def datagram(self, data: bytes, address: tuple[Any, ...], transport: asyncio.DatagramTransport) -> None:
        """Check one datagram and answer it, at once or through a task; or drop it."""
        if self._closing:
            return
        source = self._sources.get(address[0])
        if source is None:
            try:
                source = source_address(address[0])
            except ValueError:
                return
            if len(self._sources) >= 4096:
                self._sources.clear()
            self._sources[address[0]] = source
        client = self.clients.lookup(source)
        if client is None:
            self._warn.note("unknown", "dropping datagrams from %s: no client of the clients file", source)
            return
        if not self._limiter.allow(source):
            self._warn.note(
                f"rate {client.name}",
                "client %s (%s) is over the rate limit of %g requests/s: dropping requests",
                client.name,
                source,
                self.config.rate_limit,
            )
            return
        try:
            data = authenticate_request(
                data, client.secret, require_message_authenticator=self.config.require_message_authenticator
            )
        except Dropped as exc:
            self._warn.note(
                f"drop {client.name} {exc}",
                "dropping a datagram from client %s (%s): %s",
                client.name,
                source,
                exc,
            )
            return
        now = self._clock()
        if data[0] == STATUS_SERVER:
            transport.sendto(encode_reply(self.dictionary, data, ACCESS_ACCEPT, client.secret), address)
            return
        if data[0] != ACCESS_REQUEST:
            self._warn.note(
                f"code {client.name}",
                "dropping a packet of code %d from client %s: not served",
                data[0],
                client.name,
            )
            return
        key = (address[0], address[1], data[1], data[4:20])
        recent = self._recent.get(key)
        if recent is not None and recent.expires > now:
            if recent.reply is not None:
                transport.sendto(recent.reply, address)
                _log.debug("retransmission from %s: the same reply again", client.name)
            else:
                _log.debug("retransmission from %s while the request is being decided: dropped", client.name)
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._warn.note("busy", "%d requests are being decided: dropping new ones", MAX_IN_FLIGHT)
            return
        request = self._parse(data, client, address, source, now)
        if isinstance(request, Outcome):
            self._complete(key, data, client, address, transport, request, None)
            return
        self._remember(key, _Recent(None, now + self.config.timeout + DUPLICATE_SECONDS))
        task = asyncio.get_running_loop().create_task(self._answer(key, request, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _parse(
        self, data: bytes, client: Client, address: tuple[Any, ...], source: IPAddress, now: float
    ) -> _Request | Outcome:
        """Read User-Name, User-Password, State and NAS-Identifier; an Outcome when unusable."""
        try:
            packet = AuthPacket(packet=data, secret=client.secret, dict=self.dictionary)
        except Exception:  # pyrad's PacketError: the framing was checked, an attribute is not
            return _reject("malformed")

        def raw(kind: int) -> list[bytes]:  # pyrad keeps the raw values by attribute number
            return list(dict.get(packet, kind) or [])

        names, passwords = raw(USER_NAME), raw(USER_PASSWORD)
        if not passwords:
            unsupported = raw(CHAP_PASSWORD) or raw(EAP_MESSAGE)
            return _reject("unsupported" if unsupported else "no_password", "CHAP and EAP are not offered")
        try:
            user = names[0].decode("utf-8") if len(names) == 1 else ""
            answer = packet.PwDecrypt(passwords[0])
            nas = raw(NAS_IDENTIFIER)
            nas_name = nas[0].decode("utf-8") if nas else client.name
        except Exception:  # UnicodeDecodeError, pyrad's PacketError, ...
            return _reject("malformed")
        if not user or len(names[0]) > 253 or not user.isprintable() or not isinstance(answer, str):
            return _reject("malformed", "bad User-Name")
        states = raw(STATE)
        return _Request(
            data,
            client,
            address,
            source,
            user,
            answer,
            states[0] if states else None,
            printable(nas_name),
            now,
        )

    async def _answer(
        self, key: tuple[Any, ...], request: _Request, transport: asyncio.DatagramTransport
    ) -> None:
        try:
            outcome = await self._decide(request)
        except Exception:
            _log.exception("deciding a request of client %s failed", request.client.name)
            outcome = _reject("internal_error")
        self._complete(key, request.data, request.client, request.address, transport, outcome, request)

    def _complete(
        self,
        key: tuple[Any, ...],
        data: bytes,
        client: Client,
        address: tuple[Any, ...],
        transport: asyncio.DatagramTransport,
        outcome: Outcome,
        request: _Request | None,
    ) -> None:
        reply = encode_reply(self.dictionary, data, outcome.code, client.secret, outcome.attributes)
        self._remember(key, _Recent(reply, self._clock() + DUPLICATE_SECONDS))
        transport.sendto(reply, address)
        user = printable(request.user) if request else "?"
        nas = request.nas if request else "?"
        _log.info(
            "%s for user %s from client %s (%s, NAS %s): %s%s",
            CODE_NAMES[outcome.code],
            user,
            client.name,
            address[0],
            nas,
            outcome.reason,
            f"; {outcome.note}" if outcome.note else "",
        )

    def _remember(self, key: tuple[Any, ...], entry: _Recent) -> None:
        self._recent[key] = entry
        self._recent.move_to_end(key)
        now = self._clock()
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if oldest.expires > now and len(self._recent) <= MAX_RECENT:
                break
            self._recent.popitem(last=False)

    # -- decisions -------------------------------------------------------------------------

    async def _decide(self, request: _Request) -> Outcome:
        mode = self.config.mode
        if mode == "challenge" and request.state is not None:
            challenge = self._challenges.pop(request.state, None)
            if challenge is None or challenge.expires <= self._clock():
                return _reject("unknown_state", "no such State, or it expired or was used")
            if (challenge.client, challenge.user) != (request.client.name, request.user):
                return _reject("unknown_state", "the State was given to another client or user")
        if mode == "challenge" and request.state is None:
            return await self._first_step(request)
        combined = mode == "password+code"
        reply = await self._call(
            request,
            lambda deadline: self.gateway.validate(
                request.user, request.answer, combined=combined, context=request.context, deadline=deadline
            ),
        )
        if isinstance(reply, Outcome):
            return reply
        return Outcome(ACCESS_ACCEPT if reply.accepted else ACCESS_REJECT, reply.reason.value)

    async def _first_step(self, request: _Request) -> Outcome:
        def password_then_send(deadline: float) -> tuple[wire.ValidateReply, str]:
            checked = self.gateway.verify_password(
                request.user, request.answer, context=request.context, deadline=deadline
            )
            if not checked.accepted:
                return checked, ""
            try:
                sent = self.gateway.send(request.user, context=request.context, deadline=deadline)
            except (SendRefused, ChannelError) as exc:  # a code sent lately may still be used
                return checked, f"no code sent ({exc.code}: {exc})"
            return checked, f"code sent over {sent.channel} to {sent.address}" if sent else ""

        result = await self._call(request, password_then_send)
        if isinstance(result, Outcome):
            return result
        checked, note = result
        if not checked.accepted:
            return Outcome(ACCESS_REJECT, checked.reason.value, note="password step")
        now = self._clock()
        while self._challenges and next(iter(self._challenges.values())).expires <= now:
            self._challenges.popitem(last=False)
        if len(self._challenges) >= MAX_CHALLENGES:
            return _reject("busy", f"{MAX_CHALLENGES} challenges pending")
        state = secrets.token_bytes(STATE_BYTES)
        self._challenges[state] = _Challenge(
            request.client.name, request.user, now + self.config.challenge_lifetime
        )
        attributes = (("State", state), ("Reply-Message", CHALLENGE_MESSAGE))
        return Outcome(ACCESS_CHALLENGE, "password_accepted", attributes, note)

    async def _call(self, request: _Request, job: Callable[[float], T]) -> T | Outcome:
        """Run ``job(deadline)`` in the pool; the agent's failures become rejections (fail closed)."""
        deadline = request.received + self.config.timeout
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self.gateway.pool, job, deadline)
            result = await asyncio.wait_for(future, timeout=max(0.0, deadline - self._clock()) + _GRACE)
        except (TimeoutError, AgentUnreachable) as exc:
            text = str(exc) or f"no answer within {self.config.timeout:g} s"
            self._error.note(
                "unreachable", "the agent at %s failed: %s: rejecting", self.gateway.socket_path, text
            )
            self.agent_down = True
            return _reject("agent_unreachable")
        except PermissionDenied:
            self._error.note(
                "permission",
                "the agent refuses otp-radiusd (uid %d): run it as root or in [agent] validator_group: rejecting",
                os.geteuid(),
            )
            return _reject("agent_permission")
        except OtpAgentError as exc:
            self._warn.note(f"agent {exc.code}", "the agent answered %s: %s: rejecting", exc.code, exc)
            return _reject(f"agent_{exc.code}")
        if self.agent_down:
            self.agent_down = False
            _log.info("the agent at %s answers again", self.gateway.socket_path)
        return result

    async def probe_agent(self) -> None:
        """Say at start-up whether the agent answers and lets otp-radiusd validate."""
        deadline = self._clock() + self.config.timeout
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(self.gateway.pool, self.gateway.probe, deadline)
        except AgentUnreachable as exc:
            self.agent_down = True
            _log.error(
                "the agent at %s does not answer (%s): every request is rejected until it does",
                self.gateway.socket_path,
                exc,
            )
        except PermissionDenied:
            _log.error(
                "the agent refuses otp-radiusd (uid %d): run it as root or in [agent] validator_group; "
                "every request is rejected until then",
                os.geteuid(),
            )
        except OtpAgentError as exc:
            _log.error("the agent at %s answered %s: %s", self.gateway.socket_path, exc.code, exc)
        else:
            _log.info("the agent %s at %s answers", version, self.gateway.socket_path)


def _bind(address: ListenAddress) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # [::] is IPv6 only
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock
