"""Test and demo support: run a real agent in a temporary directory.

:func:`running_agent` writes a configuration whose every path lies in one directory, runs
``otp-agent init``, starts the daemon as a subprocess on its own socket and stops it afterwards.
Used by the test suite, the benchmarks and the demo; it is not a fake: it is the real daemon.
"""

from __future__ import annotations

import base64
import hmac
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from otp_agent.oath import format_code, time_step


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(directory: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``agent.toml`` in ``directory`` from nested mappings; return its path."""
    lines: list[str] = []
    for name, table in sections.items():
        nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
        for sub, subtable in nested.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in subtable.items()]
    path = directory / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def default_sections(directory: Path) -> dict[str, dict[str, Any]]:
    """The embedded default (software keystore + SQLite) with every path in ``directory``."""
    return {
        "agent": {"socket": str(directory / "agent.sock"), "client_timeout": 5.0},
        "store": {"backend": "sqlite", "path": str(directory / "tokens.db")},
        "keystore": {"backend": "software", "master_key_file": str(directory / "master.key")},
        "policy": {"totp_window": 1, "hotp_lookahead": 10},
        "audit": {"path": str(directory / "audit.log")},
    }


def code_for_uri(uri: str, *, steps: int = 0, counter: int | None = None, now: float | None = None) -> str:
    """Compute the code an authenticator app shows for an otpauth:// URI (as a phone would)."""
    parsed = urlparse(uri)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    secret_text = query["secret"]
    secret = base64.b32decode(secret_text + "=" * (-len(secret_text) % 8))
    digits = int(query.get("digits", 6))
    algorithm = query.get("algorithm", "SHA1").lower()
    if parsed.netloc == "totp":
        moving = time_step(time.time() if now is None else now, int(query.get("period", 30))) + steps
    else:
        moving = int(query.get("counter", 0)) if counter is None else counter
    return format_code(hmac.new(secret, moving.to_bytes(8, "big"), algorithm).digest(), digits)


@dataclass
class RunningAgent:
    """A daemon started by :func:`running_agent`."""

    directory: Path
    config_path: Path
    socket_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    environment: dict[str, str] = field(default_factory=dict)

    def otpctl(
        self, *args: str, input: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``otpctl`` against this agent."""
        return subprocess.run(
            [sys.executable, "-m", "otp_agent.cli", "--config", str(self.config_path), *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
            env=self.environment or None,
        )

    def enroll(self, user: str, *options: str) -> tuple[str, str]:
        """Enroll ``user``; return (serial, otpauth URI)."""
        import json

        result = self.otpctl("enroll", user, "--json", *options, check=True)
        reply = json.loads(result.stdout)
        return reply["serial"], reply["uri"]

    def code_for(self, uri: str, steps: int = 0) -> str:
        """The code a phone shows now for ``uri`` (``steps`` time steps later or earlier)."""
        return code_for_uri(uri, steps=steps)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the daemon and wait for it; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        """What the daemon wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_agent(
    directory: Path,
    config_path: Path,
    socket_path: Path,
    *,
    timeout: float = 20.0,
    environment: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> RunningAgent:
    """Start the daemon on an existing configuration and wait until it answers.

    ``wrapper`` is a command that runs the daemon's command line (e.g. in a private mount
    namespace, as the fault tests do).
    """
    log_path = directory / "agent.log"
    env = dict(environment or os.environ)
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "otp_agent.daemon", "--config", str(config_path)],
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    log.close()
    agent = RunningAgent(directory, config_path, socket_path, process, log_path, env)
    deadline = time.monotonic() + timeout
    import socket

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"otp-agent exited with {process.returncode}: {agent.log()[-2000:]}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(socket_path))
            return agent
        except OSError:
            time.sleep(0.02)
        finally:
            probe.close()
    agent.stop(signal.SIGKILL)
    raise RuntimeError(f"otp-agent did not listen on {socket_path} within {timeout} s")


@contextmanager
def running_agent(
    directory: Path,
    *,
    policy: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    environment: dict[str, str] | None = None,
) -> Iterator[RunningAgent]:
    """Init and start an agent whose files all live in ``directory``; stop it afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    config_sections = default_sections(directory)
    for name, table in (sections or {}).items():
        config_sections[name] = {**config_sections.get(name, {}), **table}
    config_sections["policy"].update(policy or {})
    config_path = write_config(directory, config_sections)
    subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(config_path)],
        check=True,
        capture_output=True,
        timeout=60,
        env=environment,
    )
    agent = start_agent(
        directory, config_path, Path(config_sections["agent"]["socket"]), environment=environment
    )
    try:
        yield agent
    finally:
        if agent.process.poll() is None:
            agent.stop()
