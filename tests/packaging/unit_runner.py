"""Run an installed systemd service the way systemd would, on a machine where it is not PID 1.

CI machines run the installation test without systemd as PID 1, so ``systemctl start`` is not
available. :class:`EmulatedService` reads the installed ``.service`` and ``.socket`` files and
reproduces what matters for otp-agent, as systemd 252 does it:

* the socket unit: ``ListenStream=`` bound by the manager (root) with ``SocketMode=``,
  ``SocketUser=``/``SocketGroup=``, handed over as fd 3 with ``LISTEN_FDS``/``LISTEN_PID``;
* ``Type=notify``: ``NOTIFY_SOCKET`` is a datagram socket read here (READY=1, STOPPING=1,
  WATCHDOG=1), and ``WATCHDOG_USEC`` comes from ``WatchdogSec=`` unless the caller shortens it;
* ``RuntimeDirectory=``, ``StateDirectory=``, ``LogsDirectory=`` with their modes and owner;
* ``LoadCredential=`` copied into ``/run/credentials/UNIT`` (0400, owned by ``User=``) and
  ``BindReadOnlyPaths=`` with ``%d`` and the ``-`` prefix;
* in a private mount namespace: ``PrivateTmp=`` (fresh /tmp and /var/tmp), ``ProtectHome=``
  (empty read-only /home, /root, /run/user), ``ProtectSystem=strict`` (read-only /usr, /etc,
  /var, /opt, /srv, /boot with the unit's directories writable again);
* ``User=``/``Group=`` with their supplementary groups, ``UMask=``, ``NoNewPrivileges=`` and an
  empty ``CapabilityBoundingSet=`` through setpriv(1);
* ``ExecStart=`` exec'd in place, so the service keeps the pid that ``LISTEN_PID`` names.

The seccomp filter, ``MemoryDenyWriteExecute=``, address-family and namespace restrictions are
not reproduced (they need the manager); ``systemd-analyze security`` scores them. Where systemd
is PID 1 the installation test uses systemctl instead of this module.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SETPRIV = "/usr/bin/setpriv"
UNSHARE = "/usr/bin/unshare"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> every assignment in order (an empty assignment resets the list)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path}: cannot parse {raw!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if value == "":
            current[key] = []
        else:
            current.setdefault(key, []).append(value)
    return sections


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


class EmulatedService:
    """One run of a service unit (and its socket unit) without systemd as PID 1."""

    def __init__(
        self, service_file: Path, socket_file: Path, log_file: Path, *, watchdog_seconds: float | None = None
    ) -> None:
        self.name = service_file.name
        self.service = parse_unit(service_file)["Service"]
        self.socket_unit = parse_unit(socket_file)["Socket"]
        self.log_file = log_file
        self.watchdog_seconds = watchdog_seconds
        self.messages: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        self._notify: socket.socket | None = None
        self._notify_dir: Path | None = None
        self.credentials = Path("/run/credentials") / self.name

    def one(self, key: str, default: str | None = None) -> str | None:
        values = self.service.get(key)
        return values[-1] if values else default

    # ------------------------------------------------------------------ set-up as the manager

    def _directories(self, user: pwd.struct_passwd) -> list[str]:
        writable = []
        for key, root in (
            ("RuntimeDirectory", "/run"),
            ("StateDirectory", "/var/lib"),
            ("LogsDirectory", "/var/log"),
        ):
            mode = int(self.one(key + "Mode", "0755") or "0755", 8)
            for name in " ".join(self.service.get(key, [])).split():
                path = Path(root) / name
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, user.pw_uid, user.pw_gid)
                path.chmod(mode)
                writable.append(str(path))
        return writable

    def _listen(self) -> socket.socket:
        path = Path(self.socket_unit["ListenStream"][-1])
        directory_mode = int(self.socket_unit.get("DirectoryMode", ["0755"])[-1], 8)
        path.parent.mkdir(mode=directory_mode, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        path.chmod(int(self.socket_unit.get("SocketMode", ["0666"])[-1], 8))
        owner = self.socket_unit.get("SocketUser", ["root"])[-1]
        group = self.socket_unit.get("SocketGroup", ["root"])[-1]
        os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        listener.listen(128)
        return listener

    def _load_credentials(self, user: pwd.struct_passwd) -> None:
        if self.credentials.exists():
            shutil.rmtree(self.credentials)
        self.credentials.mkdir(parents=True, mode=0o700)
        for entry in self.service.get("LoadCredential", []):
            ident, _, source = entry.partition(":")
            target = self.credentials / ident
            shutil.copyfile(source, target)  # a missing file fails, as in systemd 252
            os.chown(target, user.pw_uid, user.pw_gid)
            target.chmod(0o400)
        os.chown(self.credentials, user.pw_uid, user.pw_gid)
        self.credentials.chmod(0o500)

    def _namespace_script(self, writable: list[str], command: list[str]) -> str:
        lines = ["set -e", "mount --make-rprivate /"]
        if self.one("PrivateTmp") == "yes":
            lines += [
                "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp",
                "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp",
            ]
        if self.one("ProtectHome") == "yes":
            lines += [
                f"if [ -d {d} ]; then mount -t tmpfs -o ro,mode=0755 tmpfs {d}; fi"
                for d in ("/home", "/root", "/run/user")
            ]
        if self.one("ProtectSystem") == "strict":
            for d in ("/usr", "/etc", "/var", "/opt", "/srv", "/boot"):
                lines.append(f"if [ -d {d} ]; then mount --rbind {d} {d}; mount -o remount,bind,ro {d}; fi")
            for d in writable:
                lines.append(f"mount --bind {d} {d}; mount -o remount,bind,rw {d}")
        for entry in self.service.get("BindReadOnlyPaths", []):
            optional = entry.startswith("-")
            source, _, target = entry.lstrip("-").partition(":")
            source = source.replace("%d", str(self.credentials))
            target = target or source
            test = f"[ -e {shlex.quote(source)} ] && " if optional else ""
            lines.append(
                f"{test}mount --bind {shlex.quote(source)} {shlex.quote(target)}"
                f" && mount -o remount,bind,ro {shlex.quote(target)} || {'true' if optional else 'exit 1'}"
            )
        lines.append(f"umask {self.one('UMask', '0022')}")
        lines.append("export LISTEN_PID=$$")
        lines.append("exec " + " ".join(shlex.quote(part) for part in command))
        return "\n".join(lines)

    def start(self) -> None:
        """Set everything up and exec ExecStart= as the unit's user."""
        user = pwd.getpwnam(self.one("User") or "root")
        group = grp.getgrnam(self.one("Group") or user.pw_name)
        writable = self._directories(user)
        self._listener = self._listen()
        self._load_credentials(user)

        self._notify_dir = Path(f"/run/otp-agent-test-notify.{os.getpid()}")
        self._notify_dir.mkdir(mode=0o755, exist_ok=True)
        notify_path = self._notify_dir / "notify"
        if notify_path.exists():
            notify_path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        notify_path.chmod(0o666)

        exec_start = shlex.split(self.one("ExecStart") or "")
        bounding = "-all" if self.service.get("CapabilityBoundingSet", None) == [] else None
        setpriv = [
            SETPRIV,
            f"--reuid={user.pw_uid}",
            f"--regid={group.gr_gid}",
            "--init-groups",
            "--inh-caps=-all",
        ]
        if bounding:
            setpriv.append(f"--bounding-set={bounding}")
        if self.one("NoNewPrivileges") == "yes":
            setpriv.append("--no-new-privs")
        command = [*setpriv, "--", *exec_start]
        script = self._namespace_script(writable, command)

        watchdog = self.watchdog_seconds
        if watchdog is None and self.one("WatchdogSec"):
            watchdog = _seconds(self.one("WatchdogSec") or "0")
        environment = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": user.pw_dir,
            "USER": user.pw_name,
            "LOGNAME": user.pw_name,
            "SHELL": user.pw_shell,
            "NOTIFY_SOCKET": str(notify_path),
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": self.name.replace(".service", ".socket"),
            "CREDENTIALS_DIRECTORY": str(self.credentials),
        }
        if watchdog:
            environment["WATCHDOG_USEC"] = str(int(watchdog * 1_000_000))
        for key, variable in (
            ("RuntimeDirectory", "RUNTIME_DIRECTORY"),
            ("StateDirectory", "STATE_DIRECTORY"),
            ("LogsDirectory", "LOGS_DIRECTORY"),
        ):
            if self.one(key):
                root = {
                    "RuntimeDirectory": "/run",
                    "StateDirectory": "/var/lib",
                    "LogsDirectory": "/var/log",
                }[key]
                environment[variable] = f"{root}/{self.one(key)}"
        listen_fd = self._listener.fileno()

        def as_fd_3() -> None:
            os.dup2(listen_fd, 3)
            os.set_inheritable(3, True)

        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [UNSHARE, "--mount", "--", "/bin/sh", "-c", script],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                preexec_fn=as_fd_3,
                pass_fds=(3,) if listen_fd != 3 else (),
                close_fds=True,
            )

    # ------------------------------------------------------------------ notifications and stop

    def _receive(self, timeout: float) -> str | None:
        assert self._notify is not None
        self._notify.settimeout(timeout)
        try:
            data = self._notify.recv(4096)
        except TimeoutError:
            return None
        for message in data.decode().split("\n"):
            if message:
                self.messages.append(message)
        return data.decode()

    def wait_for(self, message: str, timeout: float) -> bool:
        """Wait until the service sent ``message`` (e.g. READY=1); False on timeout or exit."""
        deadline = time.monotonic() + timeout
        while message not in self.messages:
            assert self.process is not None
            if self.process.poll() is not None:
                # Drain what it sent before it died.
                while self._receive(0.01):
                    pass
                return message in self.messages
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._receive(min(left, 0.2))
        return True

    def stop(self, timeout: float) -> int | None:
        """SIGTERM the main process, as ``systemctl stop`` does; its exit status or None."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        while self._notify is not None and self._receive(0.05):
            pass
        return self.process.returncode

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for item in (self._listener, self._notify):
            if item is not None:
                item.close()
        if self._notify_dir is not None:
            shutil.rmtree(self._notify_dir, ignore_errors=True)
        shutil.rmtree(self.credentials, ignore_errors=True)
        socket_path = Path(self.socket_unit["ListenStream"][-1])
        if socket_path.exists():
            socket_path.unlink()
