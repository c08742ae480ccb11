"""PostgreSQL test support: a throw-away database per test and a TCP proxy that can cut the link.

The server is the machine's PostgreSQL (``OTP_TEST_PG_DSN``, default the trust-auth ``test``
database on 127.0.0.1:5432).  It is never stopped: "PostgreSQL down" is simulated by stopping
:class:`TcpProxy`, through which a store or a daemon reaches the server.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from tests.conftest import require

ADMIN_DSN = os.environ.get("OTP_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@lru_cache(maxsize=1)
def _unreachable_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg 3 is not installed (the test extra)"
    try:
        psycopg.connect(ADMIN_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at OTP_TEST_PG_DSN is unreachable: {' '.join(str(exc).split())}"
    return None


def require_postgresql() -> None:
    """Skip (developer machine) or fail (CI=true) when the test server cannot be reached."""
    reason = _unreachable_reason()
    require(reason is None, reason or "")


def dsn_for(
    database: str, *, host: str | None = None, port: int | None = None, password: str | None = None
) -> str:
    """The admin DSN pointed at another database (and optionally another address or password)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: v for k, v in conninfo_to_dict(ADMIN_DSN).items() if v is not None}
    params["dbname"] = database
    if host is not None:
        params["host"] = host
    if port is not None:
        params["port"] = str(port)
    if password is not None:
        params["password"] = password
    return make_conninfo(**params)  # type: ignore[arg-type]


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database ``otp_test_<random>``; yield its DSN; drop it afterwards."""
    require_postgresql()
    import psycopg

    name = f"otp_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    try:
        yield dsn_for(name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def server_address() -> tuple[str, int]:
    """Host and port of the test server (TCP)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(ADMIN_DSN)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


class TcpProxy:
    """Forwards a local port to the PostgreSQL server; :meth:`cut` is "the server went away".

    Cutting closes the listening socket (new connections are refused) and resets every
    forwarded connection; :meth:`restore` listens again on the same port.  :meth:`freeze` is "the
    server hangs": connections stay open and are accepted, but nothing is forwarded until
    :meth:`thaw`.
    """

    def __init__(self) -> None:
        self.target = server_address()
        self.port = 0
        self._listener: socket.socket | None = None
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.restore()

    def freeze(self) -> None:
        """Hold every byte in both directions (TCP stays up)."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again, held bytes first."""
        self._flowing.set()

    def restore(self) -> None:
        """Accept and forward connections (again)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset the established ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            links, self._links = self._links, []
        if listener is not None:
            listener.close()
        for link in links:
            try:
                link.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            link.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _address = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._links += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
