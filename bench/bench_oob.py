"""Out-of-band codes through the real agent, on both key backends (software; payShield over TLS).

Prints, in one run, one Markdown table:
  1. sends per second and send latency p50/p99 with 1, 2 and 4 client processes, over a
     ``command`` channel (a trivial ``/bin/sh`` script that reads its standard input and exits
     0) and over an ``smtp`` channel to an aiosmtpd server on loopback.  A send through the
     command channel includes the channel's own cost, one fork/exec of that script by the agent;
     the bare fork/exec of the same script (as the channel runs it: same argv, environment,
     session, pipes) is measured alone, from the client processes, as a baseline, and so is one
     delivery by the SMTP channel alone (no agent) to the same kind of server;
  2. the latency of validating a sent code (its token remembering 1 send, and 4 sends), against
     the agent's ``ping`` round trip measured the same way (baseline) and an ordinary TOTP code,
     one client, the four kinds in alternating rounds so that they meet the same machine state;
  3. on the payShield backend, the LQ commands the simulator received per operation (its request
     counters): one LQ per send is required.  A column gives the agent's own CPU time per
     operation (from /proc, its threads only: a command channel's child is not counted).

The agent is the real daemon (``otp_agent.testing.running_agent``) with ``oob_resend_interval =
0`` and ``oob_max_per_hour = 1000``, so that the limits never throttle the benchmark, and many
users, each with one token, so that sends are spread.  Clients are processes using the typed
client (``otp_agent.client.AgentClient``, one connection reused).  The simulator and the SMTP
server run in threads of this process; everything shares the machine's cores.  The SMTP server
sets TCP_NODELAY (see :class:`_NoDelaySMTP`): aiosmtpd's line-by-line EHLO reply would otherwise
add a delayed-ACK stall of about 40 ms to every mail, which no production MTA has.

Usage: .venv/bin/python bench/bench_oob.py [--quick] [--seconds S] [--tokens N] [--validations N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import SMTP  # noqa: E402

from otp_agent.channels import Delivery, open_channel, parse_channels  # noqa: E402
from otp_agent.channels.command import ENVIRONMENT  # noqa: E402
from otp_agent.client import AgentClient  # noqa: E402
from otp_agent.payshield_sim.testing import RunningSimulator, running_simulator  # noqa: E402
from otp_agent.testing import code_for_uri, running_agent  # noqa: E402

SCRIPT = (
    "#!/bin/sh\n# Reads the message on standard input, exits 0.\nwhile IFS= read -r _; do :; done\nexit 0\n"
)
#: What the command channel writes to the script (the default template, filled in).
MESSAGE = b"Your otp-agent code is 123456. It expires in 5 minutes.\n"
CLIENTS = (1, 2, 4)
#: Validation rows are measured in this many alternating rounds.
ROUNDS = 3
CODE = re.compile(rb"code is (\d{6})")

# -- the SMTP server on loopback -----------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler that accepts every mail and keeps the last code sent to each address."""

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}
        self.received = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        found = CODE.search(envelope.content)
        with self._lock:
            self.received += 1
            if found:
                for address in envelope.rcpt_tos:
                    self.codes[address] = found.group(1).decode()
        return "250 Message accepted"


class _NoDelaySMTP(SMTP):
    """aiosmtpd's server with TCP_NODELAY on each connection.

    aiosmtpd writes a multi-line reply (EHLO's) one line per write; with Nagle's algorithm the
    second line then waits for the client's delayed ACK, about 40 ms per EHLO on Linux.  A
    production MTA writes the reply at once; so does this server with Nagle off.
    """

    def connection_made(self, transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class _BoundController(Controller):
    """A Controller on a socket bound here to 127.0.0.1 and a free port (no port race)."""

    def __init__(self, handler: Mailbox) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        super().__init__(handler, hostname="127.0.0.1", port=self.listener.getsockname()[1])

    def factory(self) -> SMTP:
        return _NoDelaySMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.listener)


@contextmanager
def smtp_server(handler: Mailbox) -> Iterator[int]:
    """Run aiosmtpd on 127.0.0.1 (a thread of this process); yield its port."""
    controller = _BoundController(handler)
    controller.start()
    try:
        yield controller.listener.getsockname()[1]
    finally:
        controller.stop()
        controller.listener.close()


# -- the client processes ------------------------------------------------------------------------


@dataclass
class Task:
    """What one client process does: ``kind`` over ``items``, for ``seconds`` or once each."""

    kind: str  # send | fork | mail | ping | validate | totp | enroll
    socket_path: str
    items: list[Any]
    start_at: float  # time.monotonic() at which every client of a measurement begins
    seconds: float = 0.0


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    replies: list[Any] = field(default_factory=list)


def _fork_exec(script: str) -> None:
    """Run the script as the command channel does (argv, environment, session, pipes), wait."""
    process = subprocess.Popen(
        [script],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(ENVIRONMENT),
        cwd="/",
        start_new_session=True,
        close_fds=True,
    )
    process.communicate(MESSAGE, timeout=10)
    if process.returncode != 0:
        raise SystemExit(f"the script exited with {process.returncode}")


def _mail(port: int) -> None:
    """Deliver one code with the SMTP channel itself (a new connection per mail, as the agent)."""
    table = {"kind": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "from": "otp@example.com"}
    channel = open_channel(parse_channels({"mail": table}, Path("/"))["mail"])
    channel.deliver(Delivery("bench", "OOB0000", "bench@example.com", "123456", "otp-agent", 300))


def _one(client: AgentClient, kind: str, item: Any) -> Any:
    if kind == "send":
        return client.send_code(item)
    if kind == "fork":
        return _fork_exec(item)
    if kind == "mail":
        return _mail(item)
    if kind == "ping":
        return client.ping()
    if kind == "enroll":
        return client.request("enroll", **item)
    user, code = item
    if kind == "totp":
        code = code_for_uri(code)  # the code a phone shows now
    result = client.validate(user, code)
    if not result.accepted:
        raise SystemExit(f"{kind}: {user}'s code was refused: {result.reason}")
    return None


def client_process(task: Task) -> Outcome:
    """Body of a client process: connect, wait for the common start, time every operation."""
    outcome = Outcome()
    with AgentClient(task.socket_path, timeout=60) as client:
        if task.socket_path:
            client.ping()  # connected before the clock starts
        time.sleep(max(0.0, task.start_at - time.monotonic()))
        outcome.started = time.monotonic()
        deadline = outcome.started + task.seconds
        index = 0
        while (time.monotonic() < deadline) if task.seconds else (index < len(task.items)):
            item = task.items[index % len(task.items)]
            began = time.perf_counter()
            reply = _one(client, task.kind, item)
            outcome.latencies.append(time.perf_counter() - began)
            if task.kind == "enroll":
                outcome.replies.append((item, reply))
            index += 1
        outcome.ended = time.monotonic()
    return outcome


def _ready(_: int) -> int:
    time.sleep(0.2)  # long enough for every idle worker to take one
    return os.getpid()


@dataclass
class Measured:
    latencies: list[float]
    elapsed: float
    replies: list[Any] = field(default_factory=list)
    lq: int = 0  # LQ commands the simulator received
    others: Counter[str] = field(default_factory=Counter)  # its other commands
    agent_cpu: float | None = None  # CPU seconds of the agent process (not of its children)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def __add__(self, other: Measured) -> Measured:
        return Measured(
            self.latencies + other.latencies,
            self.elapsed + other.elapsed,
            self.replies + other.replies,
            self.lq + other.lq,
            self.others + other.others,
            None if self.agent_cpu is None or other.agent_cpu is None else self.agent_cpu + other.agent_cpu,
        )


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` itself."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clients:
    """Up to four client processes (started once), the agent's pid and the simulator's counters."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.simulator: RunningSimulator | None = None
        self.agent_pid: int | None = None
        if len(set(pool.map(_ready, range(max(CLIENTS)), chunksize=1))) != max(CLIENTS):
            raise SystemExit("the client processes did not all start")

    def _requests(self) -> Counter[str]:
        return Counter() if self.simulator is None else Counter(self.simulator.server.requests)

    def _cpu(self) -> float | None:
        return None if self.agent_pid is None else process_cpu(self.agent_pid)

    def run(self, kind: str, socket_path: str, shares: Sequence[list[Any]], seconds: float = 0.0) -> Measured:
        """One client process per share (at most four), all starting at the same instant."""
        assert len(shares) <= max(CLIENTS)
        start_at = time.monotonic() + 0.1
        tasks = [Task(kind, socket_path, list(share), start_at, seconds) for share in shares]
        requests, cpu_before = self._requests(), self._cpu()
        outcomes = self.pool.map(client_process, tasks, chunksize=1)
        cpu_after, requests = self._cpu(), self._requests() - requests
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        lq = requests.pop("LQ", 0)
        latencies = [x for o in outcomes for x in o.latencies]
        elapsed = max(o.ended for o in outcomes) - min(o.started for o in outcomes)
        replies = [r for o in outcomes for r in o.replies]
        return Measured(latencies, elapsed, replies, lq, requests, cpu)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    return [list(items[i::parts]) for i in range(parts)]


# -- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


@dataclass
class Row:
    backend: str
    operation: str
    clients: int
    measured: Measured
    counted: bool = False  # the backend is payShield: LQ commands were counted

    @property
    def lq(self) -> float | None:
        return self.measured.lq / len(self.measured.latencies) if self.counted else None

    def line(self) -> str:
        values = self.measured.latencies
        lq = "-" if self.lq is None else f"{self.lq:.2f}"
        cpu = self.measured.agent_cpu
        shown = "-" if cpu is None else f"{cpu / len(values) * 1000:.2f}"
        return (
            f"| {self.backend} | {self.operation} | {self.clients} | {len(values)} | "
            f"{self.measured.rate:.0f} | {percentile(values, 0.5):.2f} | "
            f"{percentile(values, 0.99):.2f} | {shown} | {lq} |"
        )


HEADER = (
    "| backend | operation | clients | ops | ops/s | p50 ms | p99 ms | agent CPU ms/op | LQ/op |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


# -- one backend ---------------------------------------------------------------------------------


@dataclass
class Sizes:
    seconds: float
    tokens: int
    validations: int


def payshield_sections(simulator: RunningSimulator, agent_directory: Path) -> dict[str, Any]:
    """The ``[keystore]`` table for the simulator, over TLS trusting its certificate."""
    config = simulator.config()
    assert simulator.tls_cert is not None
    return {
        "backend": "payshield",
        "payshield": {
            "hosts": [simulator.address],
            "lmk_check_value": config.lmk_check_value,
            "header_length": config.header_length,
            "request_timeout": 10.0,
            "zmk_file": str(config.zmk_file),
            "zmk_key_block_file": str(config.zmk_key_block_file),
            "fingerprint_key_file": str(agent_directory / "fingerprint.kb"),
            "tls_ca_file": str(simulator.tls_cert),
            "tls_server_name": "localhost",
        },
    }


def oob_tokens(prefix: str, channel: str, count: int) -> list[dict[str, Any]]:
    """Enrolment requests: users PREFIX0.. with one oob token each, address PREFIXi@example.com."""
    return [
        {"user": f"{prefix}{i}", "type": "oob", "channel": channel, "address": f"{prefix}{i}@example.com"}
        for i in range(count)
    ]


def bench_backend(
    backend: str, directory: Path, script: Path, sizes: Sizes, clients: Clients, notes: list[str]
) -> list[Row]:
    """Every measurement on one key backend, against one running agent."""
    mailbox = Mailbox()
    rows: list[Row] = []
    counted = clients.simulator is not None

    def add(operation: str, clients_count: int, measured: Measured) -> None:
        rows.append(Row(backend, operation, clients_count, measured, counted))
        print(rows[-1].line(), flush=True)
        if measured.others:
            notes.append(f"{backend}, {operation}, {clients_count} client(s): also {dict(measured.others)}")

    with smtp_server(mailbox) as port:
        channels = {
            "cmd": {"kind": "command", "command": [str(script)]},
            "mail": {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "from": "otp@example.com",
            },
        }
        sections: dict[str, Any] = {"channel": channels, "audit": {"path": str(directory / "audit.log")}}
        if clients.simulator is not None:
            sections["keystore"] = payshield_sections(clients.simulator, directory)
        policy = {"oob_resend_interval": 0, "oob_max_per_hour": 1000, "lock_threshold": 100}
        with running_agent(directory, policy=policy, sections=sections) as agent:
            path, clients.agent_pid = str(agent.socket_path), agent.process.pid
            count = sizes.validations
            enrolments = (
                oob_tokens("c", "cmd", sizes.tokens)
                + oob_tokens("m", "mail", sizes.tokens)
                + oob_tokens("v", "mail", count)
                + oob_tokens("w", "mail", count)
            )
            enrolled = clients.run("enroll", path, split(enrolments, 4))
            if counted:
                notes.append(
                    f"{backend}: enrolling {len(enrolments)} oob tokens took {enrolled.lq} LQ and "
                    f"{dict(enrolled.others)} (L0: each secret generated inside the HSM; NC and LQ: a new connection's LMK check and self-test)"
                )
            totp_requests = [{"user": f"t{i}", "type": "totp"} for i in range(count)]
            totp = clients.run("enroll", path, split(totp_requests, 4)).replies

            for prefix, operation in (
                ("c", "send, command channel (incl. its fork/exec)"),
                ("m", "send, SMTP channel (aiosmtpd on loopback)"),
            ):
                users = [f"{prefix}{i}" for i in range(sizes.tokens)]
                for n in CLIENTS:
                    before = mailbox.received
                    measured = clients.run("send", path, split(users, n), sizes.seconds)
                    mails = mailbox.received - before
                    if prefix == "m" and mails != len(measured.latencies):
                        raise SystemExit(f"{mails} mails received for {len(measured.latencies)} sends")
                    add(operation, n, measured)

            # Validations: a sent code (its token remembering 1 send, or 4), an ordinary TOTP code
            # and the ping baseline, one client, in alternating rounds so that they share the
            # machine's state; every code is accepted (checked).
            clients.run("send", path, split([f"v{i}" for i in range(count)], 4))
            for _ in range(4):
                clients.run("send", path, split([f"w{i}" for i in range(count)], 4))
            kinds: dict[str, tuple[str, list[Any]]] = {
                "baseline: ping round trip": ("ping", [None] * count),
                "validate a sent code (1 send remembered)": (
                    "validate",
                    [(f"v{i}", mailbox.codes[f"v{i}@example.com"]) for i in range(count)],
                ),
                "validate a sent code (4 sends remembered)": (
                    "validate",
                    [(f"w{i}", mailbox.codes[f"w{i}@example.com"]) for i in range(count)],
                ),
                "validate a TOTP code (window ±1)": (
                    "totp",
                    [(request["user"], reply["uri"]) for request, reply in totp],
                ),
            }
            clients.run("ping", path, [[None] * 50])  # warm-up
            results: dict[str, Measured] = {}
            for round_ in range(ROUNDS):
                for operation, (kind, items) in kinds.items():
                    measured = clients.run(kind, path, [items[round_::ROUNDS]])
                    results[operation] = results[operation] + measured if operation in results else measured
            for operation, measured in results.items():
                add(operation, 1, measured)
        clients.agent_pid = None
    return rows


def baselines(script: Path, seconds: float, clients: Clients) -> list[Row]:
    """The channels' own cost, without the agent: the script's fork/exec, one SMTP delivery."""
    rows = []
    for n in CLIENTS:
        rows.append(
            Row(
                "(none)",
                "baseline: bare fork/exec of the script",
                n,
                clients.run("fork", "", [[str(script)]] * n, seconds),
            )
        )
        print(rows[-1].line(), flush=True)
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        for n in CLIENTS:
            measured = clients.run("mail", "", [[port]] * n, seconds)
            rows.append(Row("(none)", "baseline: the SMTP channel alone, one mail", n, measured))
            print(rows[-1].line(), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test, < 60 s)")
    parser.add_argument("--seconds", type=float, help="per send measurement (default 5, quick 1)")
    parser.add_argument("--tokens", type=int, help="oob tokens per channel (default 2000, quick 200)")
    parser.add_argument("--validations", type=int, help="per validation row (default 600, quick 60)")
    options = parser.parse_args()
    sizes = Sizes(
        options.seconds or (1.0 if options.quick else 5.0),
        options.tokens or (200 if options.quick else 2000),
        options.validations or (60 if options.quick else 600),
    )
    print(
        f"otp-agent out-of-band benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
        f"{sizes.seconds:g} s per send row, {sizes.tokens} oob tokens per channel (one per user), "
        f"{sizes.validations} validations per validation row\n"
    )
    print(
        "Sends over the command channel include the channel's own cost: one fork/exec of a trivial\n"
        "/bin/sh script that reads the message on its standard input and exits 0; the bare fork/exec\n"
        "of that script (as the channel runs it) is a baseline row, and so is one SMTP delivery by the\n"
        "channel alone.  Agent CPU: the daemon's own CPU time per operation (not its children's).\n"
        "LQ/op: LQ commands counted at the payShield simulator per operation.\n"
    )
    print(f"load average before the run: {os.getloadavg()[0]:.2f}\n")
    print(HEADER, flush=True)
    notes: list[str] = []
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")  # this process has threads (simulator, SMTP)
    with (
        tempfile.TemporaryDirectory(prefix="otp-bench-oob-") as temporary,
        context.Pool(max(CLIENTS)) as pool,
    ):
        clients = Clients(pool)
        top = Path(temporary)
        script = top / "deliver.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        rows = baselines(script, sizes.seconds, clients)
        rows += bench_backend("software", top / "software", script, sizes, clients, notes)
        with running_simulator() as simulator:
            clients.simulator = simulator
            rows += bench_backend("payshield (sim, TLS)", top / "payshield", script, sizes, clients, notes)
    print()
    sends = [r for r in rows if r.counted and r.operation.startswith("send")]
    per_send = sorted({f"{r.lq:.2f}" for r in sends})
    verdict = "met" if per_send == ["1.00"] else "NOT MET"
    print(f"LQ per send on payShield: {', '.join(per_send)} (one required): {verdict}")
    for note in notes:
        print(f"note: {note}")
    print(
        f"\nload average after the run: {os.getloadavg()[0]:.2f}; run time {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
