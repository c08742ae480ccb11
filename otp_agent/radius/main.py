"""The ``otp-radiusd`` process: command line, start-up checks, signals, sd_notify and logging.

``otp-radiusd [--config FILE] [--check-config] [--log-level LEVEL]`` reads the ``[radius]``
table of agent.toml (``$OTP_AGENT_CONFIG`` or /etc/otp-agent/agent.toml by default) and the
clients file it names, binds every listen address, tells systemd READY=1 and serves until
SIGTERM or SIGINT; the requests being decided then are answered first.  SIGHUP reads the clients
file again (a bad one is logged and the old table kept).  ``--check-config`` checks the table
and the clients file and exits.

Start-up does not wait for the agent: otp-radiusd starts, and says in its log whether the agent
answers and lets it validate (uid 0 or ``[agent] validator_group``).  While the agent cannot be
reached, every Access-Request is answered with an Access-Reject (fail closed) and an ERROR line;
a Status-Server is still answered, as it concerns otp-radiusd itself.

Exit codes: 0 clean stop, 2 configuration error (the message names the key, the file and the
line), 4 a listen address cannot be bound or pyrad is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from otp_agent import __version__
from otp_agent.daemon.main import _configure_logging, on_journal
from otp_agent.daemon.systemd import Notifier
from otp_agent.errors import ConfigError, OtpAgentError, exit_status_of
from otp_agent.radius.clients import RECOMMENDED_SECRET_LENGTH, ClientTable, load_clients
from otp_agent.radius.config import RadiusConfig, load_radius_config

_log = logging.getLogger("otp_agent.radius")
#: Exit status when pyrad cannot be imported (the environment lacks a dependency).
MISSING_DEPENDENCY_EXIT = 4


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="otp-radiusd", description="RADIUS front end to the otp-agent second-factor daemon."
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="configuration file, its [radius] table (default $OTP_AGENT_CONFIG or /etc/otp-agent/agent.toml)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="check the [radius] table and the clients file, then exit"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("OTP_AGENT_LOG_LEVEL", "INFO"),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    parser.add_argument("--version", action="version", version=f"otp-radiusd {__version__}")
    return parser.parse_args(argv)


def configure_logging(level: str) -> None:
    """The agent's logging (a priority prefix for journald), with otp-radiusd's name elsewhere."""
    _configure_logging(level)
    if not on_journal():
        for handler in logging.getLogger().handlers:
            handler.setFormatter(
                logging.Formatter("otp-radiusd[%(process)d]: %(levelname)s %(name)s: %(message)s")
            )


def _warn_weak(clients: ClientTable) -> None:
    for name in clients.weak:
        _log.warning(
            "client %s: its shared secret is shorter than %d characters (RFC 2865 section 3)",
            name,
            RECOMMENDED_SECRET_LENGTH,
        )


async def _serve(config: RadiusConfig, clients: ClientTable, dictionary: object, notifier: Notifier) -> int:
    from otp_agent.radius.server import AgentGateway, RadiusServer

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    gateway = AgentGateway(config.agent_socket, config.timeout)
    server = RadiusServer(config, clients, gateway, dictionary)

    def stop(signum: int) -> None:
        _log.info("signal %d: stopping after the requests in flight", signum)
        notifier.notify("STOPPING=1")
        stopping.set()

    def reload() -> None:
        try:
            table = load_clients(config.clients_file)
        except ConfigError as exc:
            _log.error("SIGHUP: %s; keeping the %d clients read before", exc, len(server.clients.clients))
            return
        server.reload_clients(table)
        _log.info("SIGHUP: %d clients read from %s", len(table.clients), config.clients_file)
        _warn_weak(table)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await server.start()
        where = ", ".join(str(address) for address in config.listen)
        _log.info(
            "otp-radiusd %s listening on %s (mode %s, %d clients, agent %s)",
            __version__,
            where,
            config.mode,
            len(clients.clients),
            config.agent_socket,
        )
        notifier.notify(f"READY=1\nSTATUS=serving RADIUS on {where}\nMAINPID={os.getpid()}")
        probe = loop.create_task(server.probe_agent())
        interval = min(1.0, notifier.watchdog_interval or 1.0)
        while not stopping.is_set():
            notifier.watchdog_tick()
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except TimeoutError:
                pass
        await probe
    finally:
        await server.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    _log.info("otp-radiusd stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``otp-radiusd``."""
    arguments = _parse_arguments(argv)
    configure_logging(arguments.log_level)
    try:
        from otp_agent.radius.server import load_dictionary
    except ImportError as exc:
        print(
            f"otp-radiusd: {exc}: install pyrad (Debian: python3-pyrad; pip: otp-agent[radius])",
            file=sys.stderr,
        )
        return MISSING_DEPENDENCY_EXIT
    try:
        config = load_radius_config(arguments.config)
        clients = load_clients(config.clients_file)
        dictionary = load_dictionary()
        if arguments.check_config:
            print(
                f"configuration {config.source} is valid: mode {config.mode}, {len(clients.clients)} "
                f"clients in {config.clients_file}, agent socket {config.agent_socket}"
            )
            return 0
        _warn_weak(clients)
        return asyncio.run(_serve(config, clients, dictionary, Notifier()))
    except (OtpAgentError, OSError) as exc:
        print(f"otp-radiusd: {exc}", file=sys.stderr)
        return exit_status_of(exc)


if __name__ == "__main__":
    sys.exit(main())
