"""Benchmark: pam_authenticate latency of our PAM path against its floors and the Debian peers.

Measures, in one run and round-robin (each round calls every case once, so drift and noise hit
all cases alike), the time of the ``pam_authenticate`` call alone for:

* ``pam_exec /bin/true``: the cost of pam_exec's fork/exec (the fd-closing loop dominates);
* ``pam_exec python3 -I -S -c pass``: the floor for any Python helper;
* ``otp-agent (contrib sshd stack)``: contrib/pam.d/sshd with contrib/pam-helper, a fresh valid
  HOTP code each time, validated and committed by the real otp-agent (software keystore, SQLite);
* ``pam_oath HOTP``: Debian's libpam-oath, usersfile, a fresh valid code each time;
* ``pam_google_authenticator HOTP``: Debian's libpam-google-authenticator, a fresh valid code.

Every call must return PAM_SUCCESS (the count of other results is reported and must be 0).
Setup (needs root): installs libpam-oath, oathtool and libpam-google-authenticator with apt-get
when their modules are missing, creates a benchmark user, PAM services /etc/pam.d/otp-bench-*,
state files in a temporary directory; everything it created is removed at the end.

Usage: ``.venv/bin/python bench/bench_pam.py [--iterations N] [--warmup N] [--markdown]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import hmac
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECURITY = Path("/lib/x86_64-linux-gnu/security")
RFC4226_KEY = b"12345678901234567890"
PACKAGED_HELPER = "/usr/libexec/otp-agent/pam-helper"


def hotp(key: bytes, counter: int, digits: int = 6) -> str:
    """RFC 4226 HOTP (the benchmark's own phone)."""
    mac = hmac.new(key, counter.to_bytes(8, "big"), "sha1").digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


@dataclass
class Case:
    """One benchmarked PAM service and the answer source for its prompts."""

    label: str
    service: str
    answer: Callable[[int], str]
    samples: list[float] = field(default_factory=list)
    failures: int = 0


class Pam:
    """Minimal libpam binding: one transaction per call, timing pam_authenticate only."""

    def __init__(self) -> None:
        import pamela

        self.pamela = pamela
        libc = ctypes.CDLL("libc.so.6")
        libc.calloc.restype = ctypes.c_void_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.strdup.restype = ctypes.c_void_p
        libc.strdup.argtypes = [ctypes.c_char_p]
        self.libc = libc
        self.answer = b""
        self.conv_func = pamela.CONV_FUNC(self._converse)
        self.conv = pamela.PamConv(self.conv_func, 0)

    def _converse(self, n: int, messages: object, responses: object, _data: object) -> int:
        array = self.libc.calloc(n, ctypes.sizeof(self.pamela.PamResponse))
        replies = ctypes.cast(array, ctypes.POINTER(self.pamela.PamResponse))
        for i in range(n):
            if messages[i].contents.msg_style == self.pamela.PAM_PROMPT_ECHO_OFF:  # type: ignore[index]
                replies[i].resp = ctypes.cast(self.libc.strdup(self.answer), ctypes.POINTER(ctypes.c_char))
        responses[0] = replies  # type: ignore[index]
        return 0

    def authenticate(self, service: str, user: str, answer: str) -> tuple[int, float]:
        """Return (PAM status, seconds spent in pam_authenticate)."""
        pamela = self.pamela
        self.answer = answer.encode()
        handle = pamela.PamHandle()
        status = pamela.PAM_START(
            service.encode(), user.encode(), ctypes.byref(self.conv), ctypes.byref(handle)
        )
        if status != 0:
            raise RuntimeError(f"pam_start({service}) failed with {status}")
        try:
            start = time.perf_counter()
            status = pamela.PAM_AUTHENTICATE(handle, 0)
            return status, time.perf_counter() - start
        finally:
            pamela.PAM_END(handle, 0)


def ensure_debian_packages() -> None:
    """Install the peers' PAM modules from Debian if they are missing."""
    wanted = {"pam_oath.so": "libpam-oath", "pam_google_authenticator.so": "libpam-google-authenticator"}
    missing = [package for module, package in wanted.items() if not (SECURITY / module).exists()]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing, "oathtool"], check=True, env=env)


@contextlib.contextmanager
def services(texts: dict[str, str]) -> Iterator[dict[str, str]]:
    """Install PAM services with unique names; remove them afterwards."""
    suffix = secrets.token_hex(3)
    names = {key: f"otp-bench-{key}-{suffix}" for key in texts}
    try:
        for key, text in texts.items():
            (Path("/etc/pam.d") / names[key]).write_text(
                text + "account required pam_permit.so\nsession required pam_permit.so\n", encoding="utf-8"
            )
        yield names
    finally:
        for name in names.values():
            (Path("/etc/pam.d") / name).unlink(missing_ok=True)


@contextlib.contextmanager
def bench_user(home_root: Path) -> Iterator[str]:
    name = f"otpbench{secrets.token_hex(2)}"
    subprocess.run(
        ["useradd", "-M", "-d", str(home_root / name), "-s", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", "-f", name], capture_output=True)


def make_wrapper(directory: Path) -> Path:
    text = (REPO / "contrib" / "pam-helper").read_text(encoding="utf-8")
    text = text.replace('PACKAGE_DIR = "/usr/lib/python3/dist-packages"', f'PACKAGE_DIR = "{REPO}"')
    path = directory / "pam-helper"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(fraction * len(ordered)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--markdown", action="store_true", help="print only the Markdown table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "bench_pam.py needs root (PAM services in /etc/pam.d, a benchmark user, apt-get)", file=sys.stderr
        )
        return 2
    if not os.path.exists("/usr/bin/python3"):
        print("/usr/bin/python3 is missing", file=sys.stderr)
        return 2
    ensure_debian_packages()
    from otp_agent.testing import code_for_uri, running_agent

    total = args.iterations + args.warmup
    with contextlib.ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="otp-bench-"))
        stack.callback(shutil.rmtree, base, True)
        base.chmod(0o755)
        user = stack.enter_context(bench_user(base))
        # Peers' state: pam_oath usersfile (root, 0600); GA per-user file (owned by the user).
        oath_file = base / "users.oath"
        oath_file.write_text(f"HOTP\t{user}\t-\t{RFC4226_KEY.hex()}\t0\n", encoding="utf-8")
        oath_file.chmod(0o600)
        ga_dir = base / "ga"
        ga_dir.mkdir(mode=0o700)
        ga_file = ga_dir / user
        ga_file.write_text(base64.b32encode(RFC4226_KEY).decode() + '\n" HOTP_COUNTER 1\n', encoding="utf-8")
        ga_file.chmod(0o400)
        for path in (ga_dir, ga_file):
            shutil.chown(path, user, user)
        # Our agent, with an HOTP token for the user.
        agent = stack.enter_context(running_agent(base / "agent", policy={"lock_threshold": 100}))
        _, uri = agent.enroll(user, "--type", "hotp")
        wrapper = make_wrapper(base)
        sshd_stack = (REPO / "contrib" / "pam.d" / "sshd").read_text(encoding="utf-8")
        sshd_auth = "".join(line + "\n" for line in sshd_stack.splitlines() if line.startswith("auth"))
        ours = sshd_auth.replace(PACKAGED_HELPER, f"{wrapper} --socket {agent.socket_path}")
        names = stack.enter_context(
            services(
                {
                    "true": "auth required pam_exec.so quiet /bin/true\n",
                    "python": "auth required pam_exec.so quiet /usr/bin/python3 -I -S -c pass\n",
                    "ours": ours,
                    "oath": f"auth required pam_oath.so usersfile={oath_file} window=5\n",
                    "ga": f"auth required pam_google_authenticator.so secret={ga_dir}/${{USER}}\n",
                }
            )
        )
        cases = [
            Case("pam_exec /bin/true", names["true"], lambda i: ""),
            Case("pam_exec python3 -I -S -c pass (floor)", names["python"], lambda i: ""),
            Case(
                "otp-agent: contrib sshd stack + pam-helper + agent (accept)",
                names["ours"],
                lambda i: code_for_uri(uri, counter=i),
            ),
            Case("pam_oath HOTP (accept)", names["oath"], lambda i: hotp(RFC4226_KEY, i)),
            Case("pam_google_authenticator HOTP (accept)", names["ga"], lambda i: hotp(RFC4226_KEY, i + 1)),
        ]
        pam = Pam()
        for i in range(total):
            for case in cases:
                status, seconds = pam.authenticate(case.service, user, case.answer(i))
                if i >= args.warmup:
                    case.samples.append(seconds)
                    case.failures += status != 0
                elif status != 0:
                    case.failures += 1

    floor = statistics.median(cases[1].samples)
    lines = [
        "| case | calls | not PAM_SUCCESS | median ms | p99 ms | median / python floor |",
        "|---|---|---|---|---|---|",
    ]
    for case in cases:
        median = statistics.median(case.samples)
        lines.append(
            f"| {case.label} | {len(case.samples)} | {case.failures} | {median * 1e3:.2f} | "
            f"{percentile(case.samples, 0.99) * 1e3:.2f} | {median / floor:.2f} |"
        )
    if not args.markdown:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(
            f"# bench_pam: {platform.node()} {platform.platform()}, {os.cpu_count()} CPUs, "
            f"RLIMIT_NOFILE {nofile}, {args.iterations} calls per case after {args.warmup} warm-up rounds, "
            "round-robin; time of pam_authenticate only"
        )
    print("\n".join(lines))
    ratio = statistics.median(cases[2].samples) / floor
    if not args.markdown:
        print(f"\notp-agent full path / python3 -I -S floor = {ratio:.2f} (target <= 1.20)")
    return 0 if all(case.failures == 0 for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
