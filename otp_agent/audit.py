"""The audit log: one JSON line per decision, never a code or a secret.

Each event records time, event kind, user, serial, PAM service, remote host, tty, the peer's uid
and pid (from SO_PEERCRED), result and reason.  Lines go to an append-only file (flushed per
event, mode 0640) and, if configured, to syslog (facility authpriv).
"""

from __future__ import annotations

import json
import logging
import os
import syslog
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)
_MAX_FIELD = 256


@dataclass(frozen=True)
class RequestContext:
    """Who asked and from where: the peer's kernel credentials plus untrusted PAM context."""

    peer_uid: int
    peer_pid: int
    service: str | None = None
    rhost: str | None = None
    tty: str | None = None


def _clean(value: object) -> object:
    """Cap untrusted strings and strip control characters so a log line stays one line."""
    if isinstance(value, str):
        value = "".join(ch if ch.isprintable() else "?" for ch in value[:_MAX_FIELD])
    return value


class AuditLog:
    """Writes decision events; thread-safe."""

    def __init__(self, path: Path | None, *, use_syslog: bool = False) -> None:
        self._path = path
        self._syslog = use_syslog
        self._lock = threading.Lock()
        self._handle = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._handle = os.fdopen(descriptor, "a", encoding="utf-8", buffering=1)
        if use_syslog:
            syslog.openlog("otp-agent", syslog.LOG_PID, syslog.LOG_AUTHPRIV)

    def record(self, event: str, context: RequestContext | None, **fields: Any) -> None:
        """Write one event; ``fields`` must never include a code, password or secret."""
        entry: dict[str, Any] = {"time": round(time.time(), 3), "event": event}
        if context is not None:
            entry.update(peer_uid=context.peer_uid, peer_pid=context.peer_pid,
                         service=context.service, rhost=context.rhost, tty=context.tty)
        entry.update(fields)
        line = json.dumps({k: _clean(v) for k, v in entry.items()}, separators=(",", ":"))
        with self._lock:
            if self._handle is not None:
                try:
                    self._handle.write(line + "\n")
                except OSError as exc:
                    _log.error("audit log %s cannot be written: %s", self._path, exc.strerror)
            if self._syslog:
                syslog.syslog(syslog.LOG_INFO, line)

    def close(self) -> None:
        """Close the audit file."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
