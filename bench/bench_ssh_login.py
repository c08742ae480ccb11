"""The whole SSH login, measured: otp-agent against pam_oath and pam_google_authenticator, one run.

Prints one Markdown table: complete logins over loopback to Debian's real sshd (publickey, then
the one-time code at the keyboard-interactive prompt, then a session that runs ``true`` and is
closed) with three PAM stacks, each the shipped contrib/pam.d/sshd with its auth lines:
  * otp-agent (the helper and the real agent, HOTP token, software keystore, SQLite),
  * pam_oath (Debian's libpam-oath, a usersfile, HOTP, ``window=5``),
  * pam_google_authenticator (Debian's libpam-google-authenticator, HOTP),
the three in alternating rounds so that they meet the same machine state; the client is paramiko
(the same for all three).  The figure is the median wall time of a login, and its ratio to
pam_oath's (target: within 1.10x).

Run as root (it creates a user and three sshd): ``.venv/bin/python bench/bench_ssh_login.py
[--logins N]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otp_agent.testing import code_for_uri  # noqa: E402
from tests.e2e.sshd import authorize_key, running_sshd, ssh_login  # noqa: E402
from tests.pam.support import CONTRIB, local_user, make_wrapper, real_agent, render_stack  # noqa: E402

KEY = b"12345678901234567890"


def hotp(counter: int) -> str:
    digest = hmac.new(KEY, struct.pack(">Q", counter), "sha1").digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**6:06d}"


def with_auth(auth: str) -> str:
    """contrib/pam.d/sshd with its auth lines replaced by ``auth`` (account and session kept)."""
    text = (CONTRIB / "pam.d" / "sshd").read_text(encoding="utf-8")
    rest = [line for line in text.splitlines() if line.strip() and not line.startswith(("auth", "#"))]
    return auth + "\n".join(rest) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_ssh_login: run as root (it creates a user and runs sshd)", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="otp-bench-ssh-"))
        stack.callback(shutil.rmtree, base, True)
        base.chmod(0o755)
        user = stack.enter_context(local_user(base / "homes"))
        key = authorize_key(user, base)
        agent = stack.enter_context(real_agent(base / "agent", lock_threshold=100))
        _serial, uri = agent.enroll(user.name, "--type", "hotp")
        oath_file = base / "users.oath"
        oath_file.write_text(f"HOTP\t{user.name}\t-\t{KEY.hex()}\t0\n", encoding="utf-8")
        oath_file.chmod(0o600)
        ga_dir = base / "ga"
        ga_dir.mkdir(mode=0o700)
        ga_file = ga_dir / user.name
        ga_file.write_text(base64.b32encode(KEY).decode() + '\n" HOTP_COUNTER 1\n', encoding="utf-8")
        ga_file.chmod(0o400)
        for path in (ga_dir, ga_file):
            os.chown(path, user.uid, user.gid)
        helper = f"{make_wrapper(base)} --socket {agent.socket_path}"
        servers = {
            "otp-agent": stack.enter_context(running_sshd(base / "ours", render_stack("sshd", helper))),
            "pam_oath": stack.enter_context(
                running_sshd(
                    base / "oath", with_auth(f"auth required pam_oath.so usersfile={oath_file} window=5\n")
                )
            ),
            "pam_google_authenticator": stack.enter_context(
                running_sshd(
                    base / "ga",
                    with_auth(f"auth required pam_google_authenticator.so secret={ga_dir}/${{USER}}\n"),
                )
            ),
        }

        def ours(i: int) -> str:
            return code_for_uri(uri, counter=i)

        def google(i: int) -> str:
            return hotp(i + 1)  # the module's counter starts at 1

        codes: dict[str, Callable[[int], str]] = {
            "otp-agent": ours,
            "pam_oath": hotp,
            "pam_google_authenticator": google,
        }
        for round_number in range(arguments.logins + arguments.warmup):
            for name, server in servers.items():
                answer = codes[name](round_number)
                start = time.perf_counter()
                login = ssh_login(server, user.name, key, answer, command="true")
                elapsed = time.perf_counter() - start
                if not login.accepted or login.exit_status != 0:
                    print(
                        f"bench_ssh_login: {name} login {round_number} failed: {login.error}", file=sys.stderr
                    )
                    return 1
                if round_number >= arguments.warmup:
                    times.setdefault(name, []).append(elapsed)
    base_median = statistics.median(times["pam_oath"])
    print(
        f"# bench_ssh_login: {platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{arguments.logins} logins each after {arguments.warmup} warm-up rounds, alternating; paramiko client"
    )
    print("| stack | logins | median ms | p90 ms | median / pam_oath |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        ordered = sorted(values)
        median = statistics.median(values)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        print(
            f"| {name} | {len(values)} | {median * 1000:.1f} | {p90 * 1000:.1f} | {median / base_median:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
