"""Migration end to end, one test per peer, over Debian's real sshd.

Each test runs the peer as its users have it: the peer's real PAM module
(pam_google_authenticator.so from libpam-google-authenticator, pam_oath.so from libpam-oath)
checks a real SSH login and writes its state file; then ``otpctl import`` reads that file (dry
run first, then for real) without changing it, and sshd is switched to otp-agent's stack
(contrib/pam.d/sshd through pam_exec and the packaged helper wrapper) against the real agent.
What the peer had already accepted must be refused there (a replay, as the agent's audit log
says), the phone's next code must be accepted, and a scratch or backup code must work once.
The test computes the phone's codes itself from the secret (RFC 4226/6238, SHA-1, 6 digits).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest

from otp_agent.oath import format_code, time_step
from otp_agent.testing import RunningAgent
from tests.conftest import require
from tests.e2e.sshd import Login, SshServer, authorize_key, running_sshd, ssh_login
from tests.pam.support import (
    CONTRIB,
    LocalUser,
    local_user,
    make_wrapper,
    real_agent,
    render_stack,
    require_root,
)

pytestmark = pytest.mark.e2e

GOOGLE_AUTHENTICATOR = "/usr/bin/google-authenticator"
GA_MODULE = "pam_google_authenticator.so"
OATH_MODULE = "pam_oath.so"
#: Seconds per time step of the google-authenticator token (-S): short, so that waiting for the
#: phone's next code stays short, and different from the default, so the import must carry it.
GA_STEP = 10


# --------------------------------------------------------------------------- the phone


def hotp(secret: bytes, moving_factor: int, digits: int = 6) -> str:
    """The code an authenticator shows for ``moving_factor`` (a counter or a time step)."""
    return format_code(hmac.new(secret, moving_factor.to_bytes(8, "big"), "sha1").digest(), digits)


def current_step(period: int) -> int:
    return time_step(time.time(), period)


def wait_for_step(step: int, period: int) -> float:
    """Sleep until time step ``step`` has begun (not at all when it has); return the wait."""
    wait = step * period - time.time()
    if wait > 0:
        time.sleep(wait + 0.05)
    assert current_step(period) >= step
    return max(wait, 0.0)


def base32_secret(text: str) -> bytes:
    """The secret of a google-authenticator first line, as a phone app decodes it."""
    text = text.strip().upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


# --------------------------------------------------------------------------- the world


def module_path(name: str) -> str | None:
    """Where Debian installed the PAM module ``name``, or None."""
    patterns = (f"usr/lib/*/security/{name}", f"lib/*/security/{name}")
    found = [path for pattern in patterns for path in sorted(Path("/").glob(pattern))]
    return str(found[0]) if found else None


def peer_stack(auth_lines: str) -> str:
    """The /etc/pam.d/sshd a site has before switching: contrib/pam.d/sshd with its four auth
    lines replaced by the peer's, the account and session lines (Debian's) kept as they are
    (docs/migration.md, "Switching over", is the same edit the other way round)."""
    text = (CONTRIB / "pam.d" / "sshd").read_text(encoding="utf-8")
    ours = [line for line in text.splitlines() if line.startswith("auth")]
    rest = [line for line in text.splitlines() if line.strip() and not line.startswith(("auth", "#"))]
    assert len(ours) == 4 and any(line.startswith("account") for line in rest), text
    return auth_lines.rstrip("\n") + "\n" + "\n".join(rest) + "\n"


@dataclass
class Account:
    user: LocalUser
    key: paramiko.PKey


@dataclass
class World:
    base: Path
    agent: RunningAgent
    helper: str  # the pam_exec command line of contrib/pam.d/sshd, pointed at this agent
    new_account: Callable[[], Account]
    #: How many validate decisions of each user the agent has made so far (all are awaited).
    decided: dict[str, int] = field(default_factory=dict)

    def otpctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.agent.otpctl(*args)

    def otp_agent_sshd(self, name: str) -> contextlib.AbstractContextManager[SshServer]:
        """sshd switched to otp-agent: contrib/pam.d/sshd with the test helper and agent."""
        return running_sshd(self.base / name, render_stack("sshd", self.helper))

    def audit(self) -> str:
        path = self.agent.directory / "audit.log"  # [audit] path of otp_agent.testing
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def decisions(self, user: str, expect: int, wait: float = 3.0) -> list[tuple[str, str]]:
        """(result, reason) of the agent's validate decisions for ``user`` so far, waiting up
        to ``wait`` s for at least ``expect`` of them (the audit file is written in batches)."""
        deadline = time.monotonic() + wait
        while True:
            entries = [json.loads(line) for line in self.audit().splitlines() if line.strip()]
            found = [
                (str(e.get("result")), str(e.get("reason")))
                for e in entries
                if e.get("event") == "validate" and e.get("user") == user
            ]
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def logs(self, server: SshServer) -> str:
        return (
            f"\n--- sshd log (tail) ---\n{server.log()[-3000:]}"
            f"\n--- agent log (tail) ---\n{self.agent.log()[-3000:]}"
            f"\n--- audit log (tail) ---\n{self.audit()[-2000:]}"
        )

    def login(
        self, server: SshServer, account: Account, answer: str, *, accepted: bool, reason: str | None = None
    ) -> Login:
        """One SSH login answered with ``answer``; assert it was ``accepted`` (or refused) and,
        for a login through otp-agent (``reason`` given), that the agent made exactly one
        decision for it, with that reason."""
        name = account.user.name
        before = self.decided.get(name, 0)
        login = ssh_login(server, name, account.key, answer)
        outcome = "accepted" if accepted else "refused"
        assert login.remaining_after_publickey == ["keyboard-interactive"], login
        assert login.accepted is accepted, f"expected the login to be {outcome}: {login}" + self.logs(server)
        if accepted:
            assert login.output.strip() == f"hello-{name}" and login.exit_status == 0, login
        else:
            assert login.output == "", login
        if reason is not None:
            found = self.decisions(name, before + 1)
            assert len(found) == before + 1, f"{found}" + self.logs(server)
            assert found[-1] == ("accept" if accepted else "reject", reason), f"{found}" + self.logs(server)
            self.decided[name] = before + 1
        return login

    def shown(self, user: str) -> dict[str, Any] | None:
        """``otpctl show USER --json``, or None when the agent does not know the user (exit 1)."""
        result = self.otpctl("show", user, "--json")
        if result.returncode == 1:
            assert "no token" in result.stdout + result.stderr, result.stdout + result.stderr
            return None
        assert result.returncode == 0, result.stdout + result.stderr
        reply: dict[str, Any] = json.loads(result.stdout)
        return reply


@pytest.fixture(scope="module")
def world(open_dir: Path) -> Iterator[World]:
    require_root()
    base = open_dir / "e2e-migration"
    base.mkdir()
    base.chmod(0o755)
    wrapper = make_wrapper(base)
    with contextlib.ExitStack() as stack:
        agent = stack.enter_context(real_agent(base / "agent"))
        helper = f"{wrapper} --socket {agent.socket_path} --timeout 5"

        def new_account() -> Account:
            user = stack.enter_context(local_user(base / "homes", prefix="otpm"))
            return Account(user, authorize_key(user, base))

        yield World(base, agent, helper, new_account)


@dataclass(frozen=True)
class FileState:
    """What must not change when a file is only read."""

    data: bytes
    inode: int
    mode: int
    owner: tuple[int, int]
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileState:
        info = path.stat()
        return cls(
            path.read_bytes(),
            info.st_ino,
            info.st_mode,
            (info.st_uid, info.st_gid),
            info.st_mtime_ns,
            info.st_ctime_ns,
        )


def run_import(world: World, *args: str) -> dict[str, Any]:
    result = world.otpctl("import", *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr + world.agent.log()[-3000:]
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["ok"] is True, document
    return document


def summary(document: dict[str, Any], user: str) -> tuple[Any, ...]:
    """(type, digits, period, next counter, last used step) of ``user``'s one imported token."""
    (token,) = [t for t in document["tokens"] if t["user"] == user]
    return token["type"], token["digits"], token["period"], token["counter"], token["last_step"]


# --------------------------------------------------------------------------- google-authenticator


def test_google_authenticator_to_otp_agent(world: World) -> None:
    """A TOTP user of pam_google_authenticator logs in over sshd (the module records the used
    step in DISALLOW_REUSE) and spends a scratch code; after the import and the switch, that
    code is refused as a replay, the spent scratch code is refused, another scratch code works
    once, and the phone's next code (STEP_SIZE 10 carried over) is accepted."""
    require(
        os.path.exists(GOOGLE_AUTHENTICATOR),
        "google-authenticator missing (apt-get install libpam-google-authenticator)",
    )
    require(
        module_path(GA_MODULE) is not None,
        f"{GA_MODULE} missing (apt-get install libpam-google-authenticator)",
    )
    account = world.new_account()
    name = account.user.name
    state_file = account.user.home / ".google_authenticator"
    made = subprocess.run(
        [GOOGLE_AUTHENTICATOR, "-t", "-d", "-f", "-q", "-C", "-r", "3", "-R", "30", "-w", "3",
         "-S", str(GA_STEP), "-e", "3", "-s", str(state_file)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    os.chown(state_file, account.user.uid, account.user.gid)  # made by root; the module wants the user's
    lines = state_file.read_text(encoding="ascii").splitlines()
    assert oct(state_file.stat().st_mode & 0o777) == "0o400" and f'" STEP_SIZE {GA_STEP}' in lines, lines
    secret = base32_secret(lines[0])  # what the phone scanned
    scratch = [line for line in lines if len(line) == 8 and line.isdigit()]
    assert len(scratch) == 3, lines

    # 1. The peer, as it ran before the migration.
    with running_sshd(world.base / "ga-peer", peer_stack(f"auth required {GA_MODULE}")) as peer:
        used_step = current_step(GA_STEP)
        used_code = hotp(secret, used_step)
        world.login(peer, account, used_code, accepted=True)
        world.login(peer, account, scratch[0], accepted=True)
    after_peer = state_file.read_text(encoding="ascii").splitlines()
    assert f'" DISALLOW_REUSE {used_step}' in after_peer, after_peer  # the module's replay state
    assert scratch[0] not in after_peer and scratch[1] in after_peer and scratch[2] in after_peer, after_peer

    # 2. The import: a dry run writes nothing, the real one carries step size, used step and
    # the two unused scratch codes; neither touches the file.
    before = FileState.of(state_file)
    source = ["--format", "google-authenticator", str(state_file), "--user", name]
    dry = run_import(world, *source, "--dry-run")
    assert dry["dry_run"] is True and dry["imported"] == 0, dry
    assert world.shown(name) is None, "a dry run must not create the user's token"
    assert FileState.of(state_file) == before
    done = run_import(world, *source)
    assert done["dry_run"] is False and done["imported"] == 1, done
    assert summary(done, name) == ("totp", 6, GA_STEP, None, used_step), done
    assert done["backup_codes"] == {name: 2}, done
    assert FileState.of(state_file) == before, "the import changed the google-authenticator file"
    shown = world.shown(name)
    assert shown is not None and shown["backup_codes_remaining"] == 2, shown

    # 3. The switch: sshd now asks otp-agent.
    with world.otp_agent_sshd("ga-switched") as sshd:
        world.login(sshd, account, used_code, accepted=False, reason="replay")
        world.login(sshd, account, scratch[0], accepted=False, reason="bad_code")  # spent with the peer
        world.login(sshd, account, scratch[1], accepted=True, reason="backup_code")
        world.login(sshd, account, scratch[1], accepted=False, reason="replay")
        shown = world.shown(name)
        assert shown is not None and shown["backup_codes_remaining"] == 1, shown
        # The phone's next code: wait (at most one GA_STEP, less the time spent above) until
        # the phone shows it, i.e. until the step after the one the peer accepted has begun.
        wait_for_step(used_step + 1, GA_STEP)
        world.login(sshd, account, hotp(secret, current_step(GA_STEP)), accepted=True, reason="accepted")
    assert FileState.of(state_file) == before


# --------------------------------------------------------------------------- pam_oath


def test_pam_oath_users_file_to_otp_agent(world: World) -> None:
    """An HOTP user and a TOTP (HOTP/T30) user of pam_oath log in over sshd (pam_oath writes
    counter, last code and login time into users.oath); after the import and the switch, the
    codes pam_oath accepted are refused as replays, the next ones are accepted, and a backup
    code given to the HOTP user works once."""
    require(module_path(OATH_MODULE) is not None, f"{OATH_MODULE} missing (apt-get install libpam-oath)")
    counter_user, time_user = world.new_account(), world.new_account()
    counter_secret, time_secret = secrets.token_bytes(20), secrets.token_bytes(20)
    users_file = world.base / f"users-{secrets.token_hex(3)}.oath"
    users_file.write_text(
        f"# pam_oath users file\n"
        f"HOTP\t{counter_user.user.name}\t-\t{counter_secret.hex()}\n"
        f"HOTP/T30\t{time_user.user.name}\t-\t{time_secret.hex()}\n",
        encoding="ascii",
    )
    users_file.chmod(0o600)

    # 1. The peer. The HOTP phone has shown (and its user not used) codes 0 to 2: the login
    # uses counter 3, inside pam_oath's window=20.
    stack = peer_stack(f"auth requisite {OATH_MODULE} usersfile={users_file} window=20")
    with running_sshd(world.base / "oath-peer", stack) as peer:
        world.login(peer, counter_user, hotp(counter_secret, 3), accepted=True)
        used_step = current_step(30)
        used_code = hotp(time_secret, used_step)
        world.login(peer, time_user, used_code, accepted=True)
    rows = {
        line.split()[1]: line.split()
        for line in users_file.read_text(encoding="ascii").splitlines()
        if line.split() and not line.startswith("#")
    }
    assert rows[counter_user.user.name][4:6] == ["3", hotp(counter_secret, 3)], rows  # counter, last OTP
    assert rows[time_user.user.name][5] == used_code and len(rows[time_user.user.name]) == 7, rows
    assert oct(users_file.stat().st_mode & 0o777) == "0o600", "pam_oath rewrote the file with another mode"

    # 2. The import.
    before = FileState.of(users_file)
    source = ["--format", "users.oath", str(users_file)]
    dry = run_import(world, *source, "--dry-run")
    assert dry["dry_run"] is True and dry["imported"] == 0, dry
    assert world.shown(counter_user.user.name) is None and world.shown(time_user.user.name) is None
    assert FileState.of(users_file) == before
    done = run_import(world, *source)
    assert done["imported"] == 2, done
    assert summary(done, counter_user.user.name) == ("hotp", 6, None, 4, None), done  # 3 was used
    assert summary(done, time_user.user.name) == ("totp", 6, 30, None, used_step), done
    assert FileState.of(users_file) == before, "the import changed users.oath"
    codes = world.otpctl("backup-codes", counter_user.user.name, "--count", "2", "--json")
    assert codes.returncode == 0, codes.stdout + codes.stderr
    backup_code = json.loads(codes.stdout)["codes"][0]

    # 3. The switch.
    with world.otp_agent_sshd("oath-switched") as sshd:
        world.login(sshd, counter_user, hotp(counter_secret, 3), accepted=False, reason="replay")
        world.login(sshd, counter_user, hotp(counter_secret, 4), accepted=True, reason="accepted")
        world.login(sshd, counter_user, backup_code, accepted=True, reason="backup_code")
        world.login(sshd, counter_user, backup_code, accepted=False, reason="replay")
        world.login(sshd, time_user, used_code, accepted=False, reason="replay")
        # The phone's next code: that of the following step, which otp-agent's window
        # (totp_window = 1) accepts already; or the current one, if the step has moved on.
        next_step = max(used_step + 1, current_step(30))
        world.login(sshd, time_user, hotp(time_secret, next_step), accepted=True, reason="accepted")
    assert FileState.of(users_file) == before
