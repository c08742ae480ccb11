"""systemd integration with the standard library: sd_notify messages and socket activation."""

from __future__ import annotations

import logging
import os
import socket
import time

#: Connections waiting to be accepted (bursts of logins); the kernel caps it at
#: net.core.somaxconn.  The systemd socket unit sets the same Backlog=.
LISTEN_BACKLOG = 4096

_log = logging.getLogger(__name__)
SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends READY/STOPPING/STATUS/WATCHDOG to ``$NOTIFY_SOCKET`` when it is set; else does nothing."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        self._address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        active = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if active else None
        self._last_ping = 0.0

    def notify(self, message: str) -> None:
        """Send one notification (no-op without ``$NOTIFY_SOCKET``)."""
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            _log.warning("sd_notify failed: %s", exc)

    def watchdog_tick(self) -> None:
        """Send WATCHDOG=1 when half the watchdog interval has passed."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")


def inherited_socket() -> socket.socket | None:
    """Return the listening socket passed by systemd (``$LISTEN_FDS``), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    if count > 1:
        _log.warning("systemd passed %d sockets; using the first", count)
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    if listener.family != socket.AF_UNIX or listener.type != socket.SOCK_STREAM:
        raise OSError("the socket passed by systemd is not a Unix stream socket")
    os.set_inheritable(listener.fileno(), False)
    return listener


def bind_socket(path: os.PathLike[str] | str, mode: int) -> socket.socket:
    """Create the listening socket at ``path`` (replacing a stale one) with ``mode``."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except FileNotFoundError:
        pass
    except OSError:
        os.unlink(path)  # Nobody answers: a stale socket from a previous run.
    else:
        raise OSError(f"another agent is already listening on {path}")
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    listener.listen(LISTEN_BACKLOG)
    return listener
