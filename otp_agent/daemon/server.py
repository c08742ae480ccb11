"""The Unix-socket server: accepts connections, reads frames, answers them.  Knows no OATH.

Each connection is served by the worker thread that accepted it (one of ``max_clients``).  The
peer's credentials come from the kernel (``SO_PEERCRED``, ``SO_PEERGROUPS``) when the connection
is accepted.  Every frame must arrive within ``client_timeout`` seconds; a client that connects
and never writes is dropped then.  :meth:`AgentServer.shutdown` stops accepting; requests in flight finish and are answered.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from otp_agent import wire
from otp_agent.daemon.dispatch import Peer
from otp_agent.errors import ProtocolError

_log = logging.getLogger(__name__)
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")
#: Requests and seconds one connection of a non-root peer may use (the PAM helper needs one or two).
NON_ROOT_MAX_REQUESTS = 64
NON_ROOT_LIFETIME = 30.0
_TICK_SECONDS = 0.5
_BUSY_POLL_SECONDS = 0.05
_BUSY = wire.encode_frame(wire.error_reply("unreachable", "agent busy, try again"))


class _RateLimitedWarning:
    """Logs a repeated warning at most once per interval, with how often it happened."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last = 0.0
        self._count = 0

    def note(self, what: str) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            count, self._count, self._last = self._count, 0, now
        _log.warning("refusing connections: %s (%d refused since the last report)", what, count)


def peer_credentials(connection: socket.socket) -> Peer:
    """Read the connecting process's pid, uid, gid and groups from the kernel."""
    pid, uid, gid = _UCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    groups: tuple[int, ...] = ()
    try:
        raw = connection.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 256)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:
        pass
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups)


class AgentServer:
    """Serves framed requests on a listening Unix stream socket."""

    def __init__(
        self,
        listener: socket.socket,
        handle: Callable[[dict[str, Any], Peer], dict[str, Any]],
        is_admin: Callable[[Peer], bool],
        *,
        client_timeout: float,
        max_clients: int,
    ) -> None:
        self.listener = listener
        self._handle = handle
        self._is_admin = is_admin
        self.client_timeout = client_timeout
        self.max_clients = max_clients
        self._stopping = threading.Event()
        self._leadership = threading.Lock()
        self._state = threading.Condition()
        self._serving = 0
        # One unprivileged user may not hold every slot and lock everyone (root too) out of
        # logins: each non-root uid gets at most a quarter of the slots, and an eighth of them
        # is kept for uid 0 (pam_exec runs the helper as root for sshd and login).
        self._per_uid_limit = max(1, max_clients // 4)
        self._reserved_for_root = max(1, max_clients // 8)
        self._by_uid: dict[int, int] = {}
        self._uid_lock = threading.Lock()
        self._refusals = _RateLimitedWarning()

    def serve_forever(self, tick: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`shutdown`; call ``tick`` about every half second.

        ``max_clients`` worker threads take turns at the listener (leader and followers): the
        one holding the leadership waits for a connection, accepts it, passes the leadership on
        and serves the connection itself, so a request costs no hand-off between threads.  This
        thread ticks, and answers "busy" while every worker is serving.
        """
        self.listener.setblocking(False)
        workers = [
            threading.Thread(target=self._work, name=f"client-{number}", daemon=True)
            for number in range(self.max_clients)
        ]
        for number, worker in enumerate(workers):
            try:
                worker.start()
            except RuntimeError as exc:  # the unit's TasksMax, or the kernel's thread limit
                if not number:
                    raise
                _log.error("only %d of %d worker threads could start: %s", number, len(workers), exc)
                del workers[number:]
                self.max_clients = number
                break
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_tick:
                if tick is not None:
                    tick()
                next_tick = now + _TICK_SECONDS
            with self._state:
                if self._serving < self.max_clients and not self._stopping.is_set():
                    self._state.wait(max(0.0, next_tick - now))
                every_worker_busy = self._serving >= self.max_clients
            if every_worker_busy:
                self._refuse_while_busy()
        for worker in workers:
            worker.join()

    def _work(self) -> None:
        """One worker: lead at the listener in turn, serve what it accepted, again."""
        while not self._stopping.is_set():
            with self._leadership:
                if self._stopping.is_set():
                    return
                try:
                    accepted = self._accept_admitted()
                except Exception:  # A bug must not end the worker (nor leave nobody leading).
                    _log.exception("unexpected error while accepting a connection")
                    time.sleep(0.05)
                    continue
            if accepted is None:
                continue
            connection, peer = accepted
            with self._state:
                self._serving += 1
                if self._serving >= self.max_clients:
                    self._state.notify_all()
            try:
                self._serve_connection(connection, peer)
            finally:
                with self._state:
                    self._serving -= 1

    def _accept_admitted(self) -> tuple[socket.socket, Peer] | None:
        """Wait up to a tick for a connection the per-uid caps admit; None when none came.

        The peer's credentials are read here, and the per-uid cap applies before the connection
        takes a worker, so a flood from one uid can never take the workers root's logins need.
        """
        deadline = time.monotonic() + _TICK_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping.is_set():
                return None
            try:
                readable, _, _ = select.select([self.listener], [], [], remaining)
            except InterruptedError:
                continue
            if not readable:
                return None
            accepted = self._accept()
            if accepted is None:
                continue
            connection, peer = accepted
            if self._admit(peer):
                return connection, peer
            self._refusals.note(f"uid {peer.uid} holds too many connections")
            self._refuse(connection)

    def _accept(self) -> tuple[socket.socket, Peer] | None:
        try:
            connection, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return None  # another thread took it
        except OSError as exc:
            _log.error("accept failed: %s", exc)
            time.sleep(0.05)
            return None
        try:
            return connection, peer_credentials(connection)
        except OSError:
            connection.close()
            return None

    def _refuse_while_busy(self) -> None:
        """Every worker is serving: tell connections waiting now "busy" rather than nothing."""
        try:
            readable, _, _ = select.select([self.listener], [], [], _BUSY_POLL_SECONDS)
        except InterruptedError:
            return
        if not readable:
            return
        while True:
            with self._state:
                if self._serving < self.max_clients:
                    return  # a worker is free again: it will take the connection
            accepted = self._accept()
            if accepted is None:
                return
            self._refusals.note(f"too many clients ({self.max_clients})")
            self._refuse(accepted[0])

    def shutdown(self) -> None:
        """Stop accepting; in-flight requests finish (connections close after their reply)."""
        self._stopping.set()
        with self._state:
            self._state.notify_all()

    @staticmethod
    def _refuse(connection: socket.socket) -> None:
        """Tell a refused client "busy" without ever blocking the accept loop."""
        try:
            connection.setblocking(False)
            connection.send(_BUSY)
        except OSError:
            pass
        finally:
            connection.close()

    def _admit(self, peer: Peer) -> bool:
        if peer.uid == 0:
            return True
        with self._uid_lock:
            non_root = sum(self._by_uid.values())
            if (
                self._by_uid.get(peer.uid, 0) >= self._per_uid_limit
                or non_root >= self.max_clients - self._reserved_for_root
            ):
                return False
            self._by_uid[peer.uid] = self._by_uid.get(peer.uid, 0) + 1
            return True

    def _leave(self, peer: Peer) -> None:
        if peer.uid == 0:
            return
        with self._uid_lock:
            self._by_uid[peer.uid] -= 1
            if not self._by_uid[peer.uid]:
                del self._by_uid[peer.uid]

    def _serve_connection(self, connection: socket.socket, peer: Peer) -> None:
        try:
            self._serve_admitted(connection, peer)
        finally:
            self._leave(peer)

    def _serve_admitted(self, connection: socket.socket, peer: Peer) -> None:
        try:
            with connection:
                connection.setblocking(True)
                max_frame = wire.MAX_ADMIN_FRAME if self._is_admin(peer) else wire.MAX_FRAME
                # An unprivileged connection is bounded in requests and lifetime, so that slots
                # cannot be held for ever with pings.
                bounded = peer.uid != 0
                ends = time.monotonic() + NON_ROOT_LIFETIME
                served = 0
                while not self._stopping.is_set():
                    if bounded and (served >= NON_ROOT_MAX_REQUESTS or time.monotonic() >= ends):
                        _log.info("closing a connection of uid %d after %d requests", peer.uid, served)
                        return
                    deadline = time.monotonic() + self.client_timeout
                    if bounded:
                        deadline = min(deadline, ends)
                    try:
                        request = wire.recv_frame(connection, max_frame=max_frame, deadline=deadline)
                    except ProtocolError as exc:
                        _log.info("protocol error from uid %d pid %d: %s", peer.uid, peer.pid, exc)
                        self._try_send(connection, wire.error_reply(exc.code, str(exc)))
                        return
                    except TimeoutError:
                        _log.info("client uid %d pid %d timed out", peer.uid, peer.pid)
                        return
                    if request is None:
                        return
                    served += 1
                    reply = self._handle(request, peer)
                    connection.settimeout(self.client_timeout)
                    if not self._try_send(connection, reply):
                        return
        except OSError as exc:
            _log.info("client connection failed: %s", exc)
        except Exception:  # A bug must not take the daemon down; the client gets nothing.
            _log.exception("unexpected error while serving a client")

    @staticmethod
    def _try_send(connection: socket.socket, reply: dict[str, Any]) -> bool:
        try:
            wire.send_frame(connection, reply)
            return True
        except (OSError, ProtocolError) as exc:
            _log.info("reply not delivered: %s", exc)
            return False
