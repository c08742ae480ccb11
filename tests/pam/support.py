"""Shared machinery for the PAM and end-to-end tests.

Owns: a scripted fake agent (for helper faults the real daemon cannot be made to show), the
test wrapper that runs the repository's helper exactly like contrib/pam-helper, rendering of the
contrib PAM stacks with that wrapper, temporary PAM services in /etc/pam.d (unique names,
always removed), a recording PAM driver built on pamela's ctypes types, a syslog capture socket,
and throw-away Unix users.  Nothing here changes a system file it did not create,
except through :func:`private_mounts`, whose bind mounts live in a private mount namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"
HELPER_SOURCE = REPO / "pam_helper" / "__main__.py"
PACKAGED_HELPER = "/usr/libexec/otp-agent/pam-helper"
SYSTEM_PYTHON = "/usr/bin/python3"


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (writes /etc/pam.d, creates users, runs sshd)")


# --------------------------------------------------------------------------- the helper


def make_wrapper(directory: Path) -> Path:
    """Write contrib/pam-helper with its package directory pointed at this checkout.

    The result is what pam_exec runs in these tests, so the packaged wrapper is what is tested.
    """
    require(os.path.exists(SYSTEM_PYTHON), f"{SYSTEM_PYTHON} (Debian's python3) is missing")
    text = (CONTRIB / "pam-helper").read_text(encoding="utf-8")
    assert 'PACKAGE_DIR = "/usr/lib/python3/dist-packages"' in text
    text = text.replace('PACKAGE_DIR = "/usr/lib/python3/dist-packages"', f'PACKAGE_DIR = "{REPO}"')
    path = directory / "pam-helper"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    for parent in [directory, *directory.parents]:
        # Let unprivileged callers (the forged-PAM_USER test) reach the wrapper.
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if parent.stat().st_uid == os.geteuid() and not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    return path


def run_helper(
    socket_path: Path | str,
    *options: str,
    answer: bytes = b"",
    user: str | bytes | None = "alice",
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    wrapper: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
    script: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the helper the way pam_exec does: answer on stdin, a bare PAM environment."""
    environment: dict[str, Any] = {"PAM_TYPE": "auth", "PAM_SERVICE": "sshd", "PAM_RHOST": "127.0.0.1"}
    if user is not None:
        environment["PAM_USER"] = user
    environment.update(env or {})
    environb = {
        (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in environment.items()
    }
    command = [str(wrapper)] if wrapper else [SYSTEM_PYTHON, "-I", "-S", str(script or HELPER_SOURCE)]
    return subprocess.run(
        [*command, "--socket", str(socket_path), *options],
        input=answer,
        env=environb,
        capture_output=True,
        timeout=timeout,
        cwd="/",
        preexec_fn=preexec_fn,
    )


# --------------------------------------------------------------------------- a fake agent


@dataclass
class FakeAgent:
    """A scripted agent on a Unix socket: ``behaviour(request)`` returns a reply dict, raw bytes,
    or one of the strings "hang" (accept and never answer) and "close" (close at once)."""

    path: Path
    behaviour: Callable[[dict[str, Any]], Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self._server.listen(16)
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import json
        import struct

        self._server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._open.append(conn)
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                self.peers.append(struct.unpack("3i", creds)[1])
                conn.settimeout(5)
                header = conn.recv(4, socket.MSG_WAITALL)
                body = conn.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
                request = json.loads(body)
                self.requests.append(request)
                reply = self.behaviour(request)
                if reply == "hang":
                    continue
                if reply == "close":
                    conn.close()
                    continue
                if isinstance(reply, dict):
                    payload = json.dumps(reply).encode()
                    reply = len(payload).to_bytes(4, "big") + payload
                conn.sendall(reply)
                conn.close()
            except Exception:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(2)
        for conn in self._open:
            conn.close()


@contextlib.contextmanager
def fake_agent(directory: Path, behaviour: Callable[[dict[str, Any]], Any]) -> Iterator[FakeAgent]:
    """Run a :class:`FakeAgent` on ``directory``/fake.sock for the duration of the block."""
    agent = FakeAgent(directory / "fake.sock", behaviour)
    try:
        yield agent
    finally:
        agent.close()


def accept_code(good: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A fake-agent behaviour accepting exactly ``good`` (code or password+code), once."""
    used: set[str] = set()

    def behaviour(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") == "enrolled":
            return {"v": 1, "ok": True, "enrolled": request.get("user") != "newcomer"}
        answer = request.get("code", request.get("password_and_code"))
        if answer == good and answer not in used:
            used.add(answer)
            return {"v": 1, "ok": True, "result": "accept", "reason": "accepted", "serial": "S1"}
        return {"v": 1, "ok": True, "result": "reject", "reason": "bad_code"}

    return behaviour


# --------------------------------------------------------------------------- PAM services


def render_stack(name: str, helper_command: str) -> str:
    """Return contrib/pam.d/``name`` with the packaged helper path replaced by ``helper_command``."""
    text = (CONTRIB / "pam.d" / name).read_text(encoding="utf-8")
    assert PACKAGED_HELPER in text or name == "otp-agent-password"
    return text.replace(PACKAGED_HELPER, helper_command)


@contextlib.contextmanager
def pam_service(text: str, prefix: str = "otp-test") -> Iterator[str]:
    """Install ``text`` as a new service /etc/pam.d/<unique name>; remove it afterwards."""
    require_root()
    name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}".lower()
    path = Path("/etc/pam.d") / name
    assert not path.exists()
    path.write_text(text, encoding="utf-8")
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


_NO_DELAY = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)(lambda *args: None)


@dataclass
class PamOutcome:
    """What one PAM transaction did: return codes and the conversation, in order."""

    authenticate: int
    acct_mgmt: int | None
    setcred: int | None
    messages: list[tuple[int, str]]


def pam_transaction(
    service: str,
    user: str,
    answers: list[str],
    *,
    items: dict[int, str] | None = None,
    account: bool = True,
    setcred: bool = True,
    fail_delay: bool = False,
) -> PamOutcome:
    """Run pam_authenticate (then acct_mgmt and setcred on success) with a recording conversation.

    Built on pamela's ctypes types; ECHO_OFF prompts get ``answers`` in turn.  Unless
    ``fail_delay``, the failure delay of pam_faildelay/pam_unix is replaced by a no-op (as login
    would sleep it; the tests only need the return codes).
    """
    import pamela

    messages: list[tuple[int, str]] = []
    pending = list(answers)
    libc = ctypes.CDLL("libc.so.6")
    libc.calloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]

    def converse(n: int, msgs: Any, resps: Any, _data: Any) -> int:
        array = libc.calloc(n, ctypes.sizeof(pamela.PamResponse))
        replies = ctypes.cast(array, ctypes.POINTER(pamela.PamResponse))
        for i in range(n):
            style = msgs[i].contents.msg_style
            text = (ctypes.cast(msgs[i].contents.msg, ctypes.c_char_p).value or b"").decode(
                "utf-8", "replace"
            )
            messages.append((style, text))
            if style == pamela.PAM_PROMPT_ECHO_OFF:
                if not pending:
                    return 19  # PAM_CONV_ERR
                replies[i].resp = ctypes.cast(
                    libc.strdup(pending.pop(0).encode()), ctypes.POINTER(ctypes.c_char)
                )
        resps[0] = replies
        return 0

    conv_func = pamela.CONV_FUNC(converse)
    conv = pamela.PamConv(conv_func, 0)
    handle = pamela.PamHandle()
    status = pamela.PAM_START(service.encode(), user.encode(), ctypes.byref(conv), ctypes.byref(handle))
    assert status == 0, f"pam_start failed with {status}"
    try:
        for item, value in (items or {}).items():
            handle.set_item(item, value)
        if not fail_delay:
            set_item = ctypes.CDLL("libpam.so.0").pam_set_item
            set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            set_item(handle.handle, 10, ctypes.cast(_NO_DELAY, ctypes.c_void_p))  # PAM_FAIL_DELAY
        auth = pamela.PAM_AUTHENTICATE(handle, 0)
        acct = cred = None
        if auth == 0 and account:
            acct = pamela.PAM_ACCT_MGMT(handle, 0)
        if auth == 0 and setcred:
            cred = pamela.PAM_SETCRED(handle, pamela.PAM_ESTABLISH_CRED)
        return PamOutcome(auth, acct, cred, messages)
    finally:
        pamela.PAM_END(handle, 0)


def setcred_without_authenticate(service: str, user: str) -> int:
    """What sshd's monitor does: pam_setcred on a fresh handle that never authenticated."""
    import pamela

    conv_func = pamela.CONV_FUNC(lambda n, m, r, d: 19)
    conv = pamela.PamConv(conv_func, 0)
    handle = pamela.PamHandle()
    assert pamela.PAM_START(service.encode(), user.encode(), ctypes.byref(conv), ctypes.byref(handle)) == 0
    try:
        return int(pamela.PAM_SETCRED(handle, pamela.PAM_ESTABLISH_CRED))
    finally:
        pamela.PAM_END(handle, 0)


# --------------------------------------------------------------------------- syslog


class SyslogCapture:
    """A datagram socket standing in for /dev/log; the helper writes to it when given
    ``*capture.option`` (``--syslog-socket PATH``) on its command line."""

    def __init__(self, directory: Path) -> None:
        self.lines: list[str] = []
        self.path = directory / "log.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self.option = ["--syslog-socket", str(self.path)]
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines.append(data.decode("utf-8", "replace"))

    def helper_lines(self, wait: float = 2.0, expect: int = 1) -> list[str]:
        """The helper's lines so far, waiting up to ``wait`` s for at least ``expect`` of them."""
        deadline = time.monotonic() + wait
        while True:
            found = [line for line in self.lines if "otp-pam-helper[" in line]
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self._sock.close()


def unshare_works() -> bool:
    """Whether this process can make a private mount namespace (root, CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


def private_mounts(binds: dict[str, Path]) -> list[str]:
    """An argv prefix that runs a command in a private mount namespace where each target path
    (e.g. /etc/pam.d/login) is bind-mounted over by a test file.  The host never sees it."""
    script = " && ".join(f'mount --bind "{source}" "{target}"' for target, source in binds.items())
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{script} && exec "$@"', "sh"]


# --------------------------------------------------------------------------- users


@dataclass
class LocalUser:
    """A throw-away local account with a known password and home directory."""

    name: str
    password: str
    home: Path
    uid: int
    gid: int


@contextlib.contextmanager
def local_user(home_root: Path, prefix: str = "otpt") -> Iterator[LocalUser]:
    """Create a local user (useradd) with a random password; delete it afterwards.

    ``home_root`` must be traversable by the user (sshd reads ~/.ssh as the user)."""
    require_root()
    require(shutil.which("useradd") is not None, "useradd missing")
    name = f"{prefix}{secrets.token_hex(3)}"
    home = home_root / name
    home_root.mkdir(parents=True, exist_ok=True)
    home_root.chmod(0o755)
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name], check=True, capture_output=True)
    password = "Pw-" + secrets.token_hex(6)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    try:
        yield LocalUser(name, password, home, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def open_dir() -> Iterator[Path]:
    """A session directory (mode 0755) that unprivileged test users and sshd can traverse."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="otp-pam-tests-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def work(open_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh traversable directory for one test."""
    directory = open_dir / f"{request.node.name[:40]}-{secrets.token_hex(3)}".replace("/", "_")
    directory.mkdir()
    directory.chmod(0o755)
    return directory


@pytest.fixture(scope="session")
def wrapper(open_dir: Path) -> Path:
    """contrib/pam-helper pointed at this checkout."""
    return make_wrapper(open_dir)


@pytest.fixture
def syslog(work: Path) -> Iterator[SyslogCapture]:
    """A capture of what the helper sends to syslog (pass ``*syslog.option`` to the helper)."""
    capture = SyslogCapture(work)
    yield capture
    capture.close()


@contextlib.contextmanager
def password_service() -> Iterator[str]:
    """contrib/pam.d/otp-agent-password installed under a unique test name."""
    with pam_service(
        (CONTRIB / "pam.d" / "otp-agent-password").read_text(encoding="utf-8"), prefix="otp-test-password"
    ) as name:
        yield name


@contextlib.contextmanager
def real_agent(directory: Path, **policy: Any) -> Iterator[Any]:
    """The real daemon (otp_agent.testing.running_agent) in ``directory``, socket open to all."""
    try:
        from otp_agent.testing import running_agent
    except ImportError:  # pragma: no cover - the daemon is part of this repository
        require(False, "otp_agent.testing.running_agent is not available")
        raise
    with running_agent(directory, policy=policy) as agent:
        yield agent


class HotpCodes:
    """The codes an HOTP authenticator enrolled from ``uri`` shows, in order (the user's phone)."""

    def __init__(self, uri: str | None, counter: int = 0) -> None:
        self.uri = uri
        self.counter = counter

    def code(self, counter: int) -> str:
        from otp_agent.testing import code_for_uri

        assert self.uri is not None
        return code_for_uri(self.uri, counter=counter)

    def next_code(self) -> str:
        code = self.code(self.counter)
        self.counter += 1
        return code

    def wrong(self) -> str:
        """A code that matches none of the counters the agent could accept now."""
        near = {self.code(c) for c in range(max(0, self.counter - 2), self.counter + 40)}
        return next(f"{n:06d}" for n in range(1000000) if f"{n:06d}" not in near)
