"""Composition root of the daemon: config -> key backend + store -> engine -> socket server.

``otp-agent --config FILE`` runs in the foreground; ``--check-config`` checks the file and the
backends and exits; ``otp-agent init --config FILE`` creates what the config names and is
missing (master key with mode 0600, database) and never overwrites anything; that lives in
:mod:`otp_agent.daemon.initialise`.
Exit codes: 0 clean stop, 2 configuration error, 4 key backend or store unavailable.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from otp_agent import __version__
from otp_agent.administration import Administration
from otp_agent.audit import AuditLog
from otp_agent.config import Config, load_config
from otp_agent.daemon.dispatch import Dispatcher
from otp_agent.daemon.server import AgentServer
from otp_agent.daemon.systemd import Notifier, bind_socket, inherited_socket
from otp_agent.errors import (
    ConfigError,
    KeyBackendUnavailable,
    OtpAgentError,
    StoreUnavailable,
    exit_status_of,
)
from otp_agent.keystore import KeyBackend
from otp_agent.metrics import Metrics, TextfileWriter, timed
from otp_agent.oob import OutOfBand
from otp_agent.rowbinding import require_row_binding
from otp_agent.selfservice import SWEEP_SECONDS, PendingSweeper
from otp_agent.sensitive import Secret
from otp_agent.store import TokenStore
from otp_agent.validation import Validator

_log = logging.getLogger("otp_agent")
_CHECK_VALUE_KEY = "key_backend_check_value"
_CHECK_INPUT = b"otp-agent key backend check value v1"


def open_key_backend(config: Config) -> KeyBackend:
    """Build the configured key backend."""
    if config.keystore.backend == "payshield":
        from otp_agent.keystore.payshield.backend import PayShieldKeyBackend

        return PayShieldKeyBackend(config.keystore.payshield)
    from otp_agent.keystore.software import SoftwareKeyBackend

    return SoftwareKeyBackend(config.keystore.master_key_file)


def open_store(config: Config, *, create: bool = False) -> TokenStore:
    """Build the configured token store."""
    if config.store.backend == "postgresql":
        from otp_agent.store.postgresql import PostgreSQLStore

        store: TokenStore = PostgreSQLStore(config.store.dsn, create=create)
        return store
    from otp_agent.store.sqlite import SQLiteStore

    return SQLiteStore(config.store.path, create=create)


def _check_value(keys: KeyBackend) -> str:
    with Secret(_CHECK_INPUT) as probe:
        return keys.fingerprint(probe).hex()[:16]


def require_backend_binding(keys: KeyBackend, store: TokenStore) -> None:
    """Refuse a store that ``otp-agent init`` never bound, or that another key backend did.

    :raises StoreUnavailable: no key backend check value (the store was not made by init).
    :raises KeyBackendUnavailable: the check value is another key backend's.
    """
    stored = store.get_meta(_CHECK_VALUE_KEY)
    if stored is None:
        raise StoreUnavailable(
            "the token store is not bound to a key backend (it was not "
            "created by otp-agent init); refusing to start"
        )
    if stored != _check_value(keys):
        raise KeyBackendUnavailable(
            "the key backend does not match the one this database was created with "
            "(wrong master key file or HSM key); refusing to start"
        )


def bind_backend_to_store(keys: KeyBackend, store: TokenStore) -> None:
    """Record the key backend in a new store; refuse another one than recorded (init only)."""
    value = _check_value(keys)
    # Atomic set-if-absent: of several hosts starting together on an empty shared store, all with
    # different keys, exactly one value wins and the others are refused.
    if store.claim_meta(_CHECK_VALUE_KEY, value) != value:
        raise KeyBackendUnavailable(
            "the key backend does not match the one this database was created with "
            "(wrong master key file or HSM key); refusing to start"
        )


#: The key backend and store calls whose latency the metrics record.
KEYSTORE_TIMED = ("compute_hmacs", "seal_secret", "fingerprint", "generate_secret")
STORE_TIMED = (
    "compare_and_set",
    "tokens_for_user",
    "get",
    "add_tokens",
    "use_backup_code",
    "backup_codes",
    "remembered",
    "remember",
)


class Agent:
    """The running daemon: owns the backends, the engine and the server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self.keys = open_key_backend(config)
        try:
            self.store = open_store(config)
            require_backend_binding(self.keys, self.store)
            require_row_binding(self.store, self.keys)
            # Derive the binding key now, while the key backend answers: backup codes are
            # checked with it, on the host, when the HSM is down (the break-glass path).
            self.keys.binding_tag(b"otp-agent/warm-up")
        except BaseException:
            self.keys.close()
            raise
        self.audit = AuditLog(
            config.audit.path, use_syslog=config.audit.syslog, on_failure=config.audit.on_failure
        )
        self.metrics = Metrics()
        self.audit.subscribe(self.metrics.observe_event)
        observe_failover = getattr(self.keys, "observe_failover", None)
        if observe_failover is not None:
            observe_failover(self._failover)
        # The engine sees the backends through timing wrappers (the latency histograms).
        keys = timed(self.keys, self.metrics, "keystore_seconds", KEYSTORE_TIMED)
        store = timed(self.store, self.metrics, "store_seconds", STORE_TIMED)
        checker = None
        if config.policy.password_service:
            service = config.policy.password_service

            def checker(user: str, password: str) -> bool:
                from otp_agent.passwordcheck import check_password

                return bool(check_password(user, password, service=service))

        self.validator = Validator(store, keys, config.policy, self.audit, password_checker=checker)
        self.admin = Administration(store, keys, self.audit)
        self.dispatcher = Dispatcher(
            self.validator,
            self.admin,
            admin_group=config.agent.admin_group,
            validator_group=config.agent.validator_group,
            status=self.status,
            default_issuer=config.agent.default_issuer,
            metrics=self.render_metrics,
            oob=OutOfBand(
                store,
                keys,
                config.policy,
                self.audit,
                config.channels,
                check_binding=self.validator.check_binding,
                issuer=config.agent.default_issuer,
            ),
        )

    def _failover(self, previous: str, active: str) -> None:
        self.audit.record(
            "failover", None, result="failover", reason="hsm_down", previous=previous, active=active
        )

    def render_metrics(self) -> str:
        """The Prometheus text exposition: the counters, histograms and the gauges read now."""
        gauges: list[tuple[str, tuple[tuple[str, str], ...], float]] = []
        try:
            for kind, state, count in self.store.token_counts(time.time()):
                gauges.append(("tokens", (("state", state), ("type", kind)), float(count)))
            store_up = bool(self.store.health().get("ok"))
        except OtpAgentError:
            store_up = False
        gauges.append(("store_up", (), float(store_up)))
        health = self.keys.health()
        gauges.append(("keystore_up", (("backend", self.keys.name),), float(bool(health.get("ok")))))
        hosts = health.get("hosts")
        for host in hosts if isinstance(hosts, list) else []:
            if isinstance(host, dict):
                gauges.append(
                    ("hsm_up", (("address", str(host.get("address"))),), float(bool(host.get("up"))))
                )
        return self.metrics.render(gauges)

    def status(self) -> dict[str, Any]:
        """Health of the agent, the store and the key backend."""
        return {
            "agent": {
                "ok": True,
                "version": __version__,
                "pid": os.getpid(),
                "uptime": round(time.time() - self.started, 1),
            },
            "store": self.store.health(),
            "keystore": self.keys.health(),
            "audit": self.audit.health(),
        }

    def close(self) -> None:
        """Release every resource."""
        self.keys.close()
        self.store.close()
        self.audit.close()


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="otp-agent", description="OATH second-factor agent daemon.")
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "init"],
        default="run",
        help="run (default) the daemon, or init: create the master key and database",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="configuration file (default $OTP_AGENT_CONFIG or /etc/otp-agent/agent.toml)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="check the configuration and the backends, then exit"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("OTP_AGENT_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    parser.add_argument(
        "--allow-root",
        action="store_true",
        help="run as root even where the agent's directories belong to another user (the service's)",
    )
    parser.add_argument("--version", action="version", version=f"otp-agent {__version__}")
    return parser.parse_args(argv)


def refuse_root_over_service_files(config: Config) -> None:
    """Refuse to run as root where the agent's files belong to another user (the service user).

    A root-run daemon would create the audit log, the database's journal files or the socket as
    root, and the service (user otp-agent) would then fail on them (Permission denied, exit 4)
    while every login needing a code is refused.

    :raises ConfigError: running as root over directories owned by someone else.
    """
    if os.geteuid() != 0:
        return
    directories = [config.agent.socket.parent]
    if config.audit.path is not None:
        directories.append(config.audit.path.parent)
    if config.store.backend == "sqlite":
        directories.append(config.store.path.parent)
    for directory in directories:
        try:
            owner = directory.stat().st_uid
        except OSError:
            continue
        if owner != 0:
            try:
                name = pwd.getpwuid(owner).pw_name
            except KeyError:
                name = str(owner)
            raise ConfigError(
                f"refusing to run as root: {directory} belongs to {name}, the user the service runs "
                f"as, and files created by root there would stop the service. Start the service "
                f"(systemctl start otp-agent), or run it as that user (runuser -u {name} -- otp-agent "
                "...); --allow-root overrides this"
            )


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    notifier = Notifier()
    agent = Agent(config)
    listener = inherited_socket() or bind_socket(config.agent.socket, config.agent.socket_mode)
    server = AgentServer(
        listener,
        agent.dispatcher.handle,
        agent.dispatcher.is_admin,
        client_timeout=config.agent.client_timeout,
        max_clients=config.agent.max_clients,
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal %d: stopping after requests in flight", signum)
        notifier.notify("STOPPING=1")
        server.shutdown()

    def reopen(_signum: int, _frame: FrameType | None) -> None:
        _log.info("SIGHUP: reopening the audit log")
        try:
            agent.audit.reopen()
        except OSError as exc:  # Raised here, it would end serve_forever: keep the old file.
            _log.error("SIGHUP: the audit log cannot be reopened, still writing to the old file: %s", exc)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reopen)
    _log.info(
        "otp-agent %s listening on %s (store %s, key backend %s)",
        __version__,
        config.agent.socket,
        agent.store.name,
        agent.keys.name,
    )
    notifier.notify(f"READY=1\nSTATUS=serving on {config.agent.socket}\nMAINPID={os.getpid()}")
    sweeper = PendingSweeper(agent.admin, min(SWEEP_SECONDS, config.policy.pending_lifetime / 4))
    sweeper.start()
    textfile = None
    if config.metrics.textfile is not None:
        textfile = TextfileWriter(str(config.metrics.textfile), config.metrics.interval, agent.render_metrics)
        textfile.start()
    try:
        server.serve_forever(tick=notifier.watchdog_tick)
    finally:
        if textfile is not None:
            textfile.stop()
        sweeper.stop()
        listener.close()
        agent.close()
    _log.info("otp-agent stopped")
    return 0


#: syslog priorities by logging level: journald reads a "<N>" prefix as the line's priority.
_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    """Lines for journald: it adds the name and pid itself; the priority goes in a prefix."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def on_journal(stream: TextIO | None = None) -> bool:
    """True when standard error is the journal's stream ($JOURNAL_STREAM names its device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if on_journal():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("otp-agent[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``otp-agent``."""
    arguments = _parse_arguments(argv)
    _configure_logging(arguments.log_level)
    try:
        config = load_config(arguments.config)
        if arguments.command == "init":
            # Imported here: the init module builds on this composition root's factories.
            from otp_agent.daemon.initialise import initialise

            for line in initialise(config):
                print(line)
            return 0
        if arguments.check_config:
            agent = Agent(config)
            agent.close()
            print(f"configuration {config.source} is valid; store and key backend are usable")
            return 0
        if not arguments.allow_root:
            refuse_root_over_service_files(config)
        return serve(config)
    except (OtpAgentError, OSError) as exc:
        print(f"otp-agent: {exc}", file=sys.stderr)
        return exit_status_of(exc)


if __name__ == "__main__":
    sys.exit(main())
