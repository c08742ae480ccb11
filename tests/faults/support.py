"""Shared machinery of the fault suite: the mode and its counts, agents in open directories,
raw socket clients, and client processes (as root or as another uid) that stay up between
requests so that each round costs a request, not a fork.

The mode is ``OTP_FAULTS``: ``short`` (default, in CI with the normal pytest run) or ``long``
(counts like the outside fault campaign's).  ``OTP_FAULTS_SEED`` changes the seed of every
randomised run (default 1), so a run is repeatable and another seed explores elsewhere.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from otp_agent import wire
from otp_agent.testing import code_for_uri
from tests.conftest import require

MODE = "long" if os.environ.get("OTP_FAULTS", "short").strip().lower() == "long" else "short"
LONG = MODE == "long"
SEED = int(os.environ.get("OTP_FAULTS_SEED", "1"))
REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
NOBODY = 65534


def count(short: int, long: int) -> int:
    """The count of this mode."""
    return long if LONG else short


def rng(name: str) -> random.Random:
    """A random generator of its own for one run, from the suite's seed and the run's name."""
    return random.Random(f"{SEED}:{name}")


def require_root() -> None:
    require(os.geteuid() == 0, "the fault suite needs root (other uids, tmpfs mounts, SIGKILL)")


@contextmanager
def open_directory(prefix: str = "otp-faults-") -> Iterator[Path]:
    """A temporary directory that other uids can traverse (to reach the agent's socket)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def hotp_code(uri: str, counter: int) -> str:
    """The code an HOTP authenticator enrolled from ``uri`` shows at ``counter``."""
    return code_for_uri(uri, counter=counter)


def wrong_code(uri: str, counter: int, span: int = 64) -> str:
    """A code that matches none of the counters ``counter - 2 .. counter + span``."""
    near = {hotp_code(uri, c) for c in range(max(0, counter - 2), counter + span)}
    return next(f"{n:06d}" for n in range(1, 1_000_000) if f"{n:06d}" not in near)


def request(socket_path: Path | str, op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """One request on a fresh connection; the reply (raises OSError/ProtocolError on failure)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        reply = wire.exchange(connection, {"v": 1, "op": op, **fields}, max_frame=wire.MAX_FRAME)
        if reply is None:
            raise ConnectionResetError("agent closed the connection without a reply")
        return reply


def outcome(reply: dict[str, Any]) -> tuple[str, str]:
    """(result or "error", reason or error code) of a reply."""
    if reply.get("ok"):
        return str(reply.get("result", "ok")), str(reply.get("reason", ""))
    return "error", str(reply.get("error", {}).get("code", "?"))


def send_raw(
    socket_path: Path | str, payload: bytes, *, half_close: bool = True, timeout: float = 10.0
) -> tuple[bytes, bool, float]:
    """Send bytes on a fresh connection and read until the agent closes.

    Returns (what came back, whether the agent closed within ``timeout``, seconds from the last
    byte sent to the close).  A refused write (the agent closed first) is not an error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        try:
            connection.sendall(payload)
            if half_close:
                connection.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        started = time.monotonic()
        data = b""
        try:
            while chunk := connection.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            return data, False, time.monotonic() - started
        return data, True, time.monotonic() - started


def split_replies(data: bytes) -> list[dict[str, Any]] | str:
    """The reply frames in ``data``, or a description of what is wrong with them."""
    replies: list[dict[str, Any]] = []
    position = 0
    while position < len(data):
        if len(data) - position < 4:
            return f"{len(data) - position} stray bytes after {len(replies)} replies"
        (length,) = struct.unpack(">I", data[position : position + 4])
        body = data[position + 4 : position + 4 + length]
        if len(body) != length:
            return f"reply frame of {length} bytes cut at {len(body)}"
        try:
            message = json.loads(body)
        except ValueError:
            return f"reply frame is not JSON: {body[:80]!r}"
        if not isinstance(message, dict) or message.get("v") != 1 or not isinstance(message.get("ok"), bool):
            return f"reply is not a protocol reply: {body[:80]!r}"
        replies.append(message)
        position += 4 + length
    return replies


# --------------------------------------------------------------------------- client processes


def _drop_to(uid: int) -> None:
    if uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _serve_calls(connection: Connection, uid: int, barrier: Any) -> None:  # pragma: no cover - child
    """Child loop: run each (function name, args) it receives, after the barrier if one is set."""
    _drop_to(uid)
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        name, args, wait = job
        try:
            if wait and barrier is not None:
                barrier.wait()
            result: Any = ("ok", CALLS[name](*args))
        except Exception as exc:  # Reported to the parent, which decides.
            result = ("exception", f"{type(exc).__name__}: {exc}")
        connection.send(result)


def _call_request(socket_path: str, op: str, fields: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        return request(socket_path, op, timeout=timeout, **fields)
    except OSError as exc:
        return {"exception": type(exc).__name__}
    except Exception as exc:  # e.g. ProtocolError: the reply was not a frame.
        return {"exception": type(exc).__name__, "message": str(exc)[:200]}


def _call_raw(
    socket_path: str, payload: bytes, half_close: bool, timeout: float
) -> tuple[bytes, bool, float]:
    try:
        return send_raw(socket_path, payload, half_close=half_close, timeout=timeout)
    except OSError as exc:
        return f"{type(exc).__name__}".encode(), True, 0.0


CALLS: dict[str, Callable[..., Any]] = {"request": _call_request, "raw": _call_raw}


class Clients:
    """``size`` client processes (forked, optionally as ``uid``) that run requests on demand.

    :meth:`race` sends one job to every process; they wait on a shared barrier and then all
    connect at once, like simultaneous logins.  :meth:`call` runs one job on the first process.
    """

    def __init__(self, size: int, uid: int = 0) -> None:
        context = multiprocessing.get_context("fork")
        self.barrier = context.Barrier(size, timeout=60) if size > 1 else None
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        for _ in range(size):
            parent, child = context.Pipe()
            process = context.Process(target=_serve_calls, args=(child, uid, self.barrier), daemon=True)
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    def _collect(self, pipe: Connection, timeout: float) -> Any:
        if not pipe.poll(timeout):
            raise TimeoutError(f"a client process gave no result within {timeout} s")
        status, value = pipe.recv()
        if status != "ok":
            raise RuntimeError(f"a client process failed: {value}")
        return value

    def race(self, jobs: list[tuple[str, tuple[Any, ...]]], timeout: float = 60.0) -> list[Any]:
        """Run ``jobs[i]`` on process i, all released together; their results in order."""
        assert len(jobs) == len(self._pipes)
        for pipe, (name, args) in zip(self._pipes, jobs, strict=True):
            pipe.send((name, args, True))
        return [self._collect(pipe, timeout) for pipe in self._pipes]

    def call(self, name: str, *args: Any, timeout: float = 60.0) -> Any:
        pipe = self._pipes[0]
        pipe.send((name, args, False))
        return self._collect(pipe, timeout)

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self._pipes:
            pipe.close()


@contextmanager
def clients(size: int, uid: int = 0) -> Iterator[Clients]:
    pool = Clients(size, uid)
    try:
        yield pool
    finally:
        pool.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
