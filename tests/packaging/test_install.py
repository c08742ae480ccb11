"""Installation test: build the .deb and .rpm, install the .deb, log in over sshd, purge.

Runs as root on a disposable machine (CI): it installs the package system-wide, creates a Unix
user, writes one PAM service file of its own in /etc/pam.d and runs a private sshd on 127.0.0.1.
It never edits an existing system file and removes what it created. Not root on a developer
machine: skipped. Under CI=true a missing prerequisite fails instead.

Figures (lintian and rpmlint findings, the unit's systemd-analyze exposure) are printed in the
"otp-agent packaging figures" section of pytest's summary.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.unit_runner import EmulatedService

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"
VERSION = "0.1.0"
UNIT_DIR = Path("/lib/systemd/system")
EXAMPLES = Path("/usr/share/doc/otp-agent/examples")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXPOSURE_TARGET = 2.0
# otp-radiusd needs the network (UDP): no PrivateNetwork=, IPAddressDeny= or AF_INET ban.
RADIUS_EXPOSURE_TARGET = 2.0

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine; fail under CI=true."""
    if not condition:
        if IN_CI:
            pytest.fail(f"prerequisite missing in CI: {reason}")
        pytest.skip(reason)


def system_env(**extra: str) -> dict[str, str]:
    """An environment free of the virtualenv and pyenv that run pytest: Debian's tools only."""
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
    env.update(extra)
    return env


def run(
    *argv: str, check: bool = True, timeout: float = 300, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        env=system_env(**extra_env),
        text=True,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-4000:]}")
    return result


def apt(*args: str, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """apt-get, waiting for the dpkg lock (another apt run, unattended upgrades) instead of failing."""
    return run("apt-get", "-o", "DPkg::Lock::Timeout=300", *args, check=check, timeout=600, **extra_env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_installed() -> bool:
    result = run("dpkg-query", "-W", "-f=${Status}", "otp-agent", check=False)
    return result.returncode == 0 and "installed" in result.stdout and "not-installed" not in result.stdout


def totp(
    secret_b32: str, *, at: float | None = None, digits: int = 6, period: int = 30, algorithm: str = "sha1"
) -> str:
    """RFC 6238 with the standard library, independent of otp_agent."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8), casefold=True)
    counter = int((time.time() if at is None else at) // period)
    mac = hmac.new(key, struct.pack(">Q", counter), algorithm).digest()
    offset = mac[-1] & 0x0F
    value = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**digits
    return str(value).zfill(digits)


@pytest.fixture(scope="module")
def root_machine() -> None:
    require(os.geteuid() == 0, "the installation test installs a package: run it as root")
    for tool in (
        "dpkg-buildpackage",
        "lintian",
        "rpmbuild",
        "rpmlint",
        "systemd-analyze",
        "unshare",
        "setpriv",
        "/usr/sbin/sshd",
        "ssh-keygen",
        "/usr/bin/python3",
    ):
        require(shutil.which(tool) is not None, f"{tool} is missing (see .ci/apt/packaging.txt)")


@pytest.fixture(scope="module")
def packages(
    root_machine: None, tmp_path_factory: pytest.TempPathFactory, figures: list[str]
) -> dict[str, Path]:
    """Build both packages from a clean copy of this tree; record lintian's and rpmlint's figures."""
    out = tmp_path_factory.mktemp("packages")
    built: dict[str, Path] = {"out": out}
    # The deb is built with the README's one command (build dependencies included).
    for script, options in (("build-deb.sh", ["--install-build-deps"]), ("build-rpm.sh", [])):
        result = run("sh", str(REPO / "packaging" / script), *options, str(out), check=False, timeout=900)
        summary = [line for line in result.stdout.splitlines() if line.startswith(("lintian", "rpmlint"))]
        figures.extend(summary)
        assert result.returncode == 0, f"{script} failed:\n{result.stdout[-4000:]}"
    built["deb"] = out / f"otp-agent_{VERSION}_all.deb"
    built["rpm"] = out / f"otp-agent-{VERSION}-1.noarch.rpm"
    for path in (built["deb"], built["rpm"]):
        assert path.is_file(), f"{path.name} was not built"
    return built


def test_rpm_has_the_deb_layout_and_scripts(packages: dict[str, Path]) -> None:
    """The .rpm installs the same programs, units and configuration as the .deb, with the same
    user and the same script logic (init once, tokens and keys kept on erase)."""
    contents = (packages["out"] / "rpm-contents.txt").read_text(encoding="utf-8")
    listing = run("rpm", "-qpl", str(packages["rpm"])).stdout.split()
    expected = {
        "/usr/sbin/otp-agent",
        "/usr/bin/otpctl",
        "/usr/bin/payshield-sim",
        "/usr/libexec/otp-agent/pam-helper",
        "/etc/otp-agent/agent.toml",
        "/etc/pam.d/otp-agent-password",
        "/etc/logrotate.d/otp-agent",
        "/usr/lib/systemd/system/otp-agent.service",
        "/usr/lib/systemd/system/otp-agent.socket",
        "/usr/lib/sysusers.d/otp-agent.conf",
        "/usr/sbin/otp-radiusd",
        "/usr/lib/systemd/system/otp-radiusd.service",
        "/usr/lib/sysusers.d/otp-radiusd.conf",
        "/usr/share/man/man8/otp-radiusd.8.gz",
        "/usr/lib/tmpfiles.d/otp-agent.conf",
        "/usr/share/man/man8/otp-agent.8.gz",
        "/usr/share/man/man8/otpctl.8.gz",
        "/usr/share/man/man8/otp-agent-pam-helper.8.gz",
        "/usr/share/man/man5/agent.toml.5.gz",
        "/var/lib/otp-agent",
        "/var/log/otp-agent",
    }
    assert expected <= set(listing), f"missing from the rpm: {sorted(expected - set(listing))}"
    assert not [p for p in listing if p.startswith("/usr/com") or "%{" in p], listing
    assert "/usr/bin/otp-pam-helper" not in listing
    assert any(p.endswith("/site-packages/pam_helper/__main__.py") for p in listing)
    # The deb ships the same files (Debian puts units in /lib and Python in dist-packages).
    deb_listing = {
        line.split()[-1].lstrip(".")
        for line in run("dpkg-deb", "-c", str(packages["deb"])).stdout.splitlines()
    }
    for path in expected - {"/var/lib/otp-agent", "/var/log/otp-agent"}:
        debian_path = path.replace("/usr/lib/systemd/system/", "/lib/systemd/system/")
        if path.startswith("/usr/share/man/"):
            debian_path = path
        assert debian_path in deb_listing, f"{debian_path} is in the rpm but not in the deb"

    config = {line.strip() for line in contents.split("== config files")[1].split("==")[0].splitlines()}
    assert {"/etc/otp-agent/agent.toml", "/etc/pam.d/otp-agent-password"} <= config
    file_list = contents.split("== file list")[1].split("==")[0]
    for line in file_list.splitlines():
        if line.endswith((" /var/lib/otp-agent", " /var/log/otp-agent")):
            assert line.startswith("drwxr-x--- otp-agent otp-agent"), line
    scripts = contents.split("== scripts")[1]
    assert "useradd -r -g otp-agent" in scripts
    assert "useradd -r -g otp-radius" in scripts
    # otp-radiusd.service is never enabled by the package (no preset, no enable).
    assert not re.search(r"(preset|enable)\b[^\n]*otp-radiusd", scripts), scripts
    assert "otp-agent init --config /etc/otp-agent/agent.toml" in scripts
    # init creates the database as its directory's owner: no script chowns it (through a link).
    assert not re.search(r"chown\b.*tokens\.db", scripts), scripts
    assert "OTP_AGENT_PURGE_SECRETS" in scripts
    assert "/etc/pam.d/" not in scripts and "sshd_config" not in scripts
    # The wrapper must import pam_helper from where the rpm puts it.
    extract = packages["out"] / "rpm-root"
    extract.mkdir(exist_ok=True)
    cpio = subprocess.run(
        f"rpm2cpio {packages['rpm']} | cpio -idm --quiet",
        shell=True,
        cwd=extract,
        env=system_env(),
        capture_output=True,
    )
    assert cpio.returncode == 0, cpio.stderr
    wrapper = (extract / "usr/libexec/otp-agent/pam-helper").read_text(encoding="utf-8")
    sitelib = re.search(r'^PACKAGE_DIR = "(.*)"$', wrapper, re.M)
    assert sitelib and (extract / sitelib.group(1).lstrip("/") / "pam_helper").is_dir(), wrapper


# ---------------------------------------------------------------------------- deb lifecycle


def assert_confined(proc_status: str) -> None:
    """A service process (its /proc/PID/status) with no capability, no new privileges, seccomp on."""
    for expected in (
        "CapBnd:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ):
        assert expected in proc_status, f"{expected!r} not in\n{proc_status}"


def otpctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("/usr/bin/otpctl", "--config", "/etc/otp-agent/agent.toml", *args, check=check, timeout=60)


def test_deb_install_login_over_sshd_and_purge(
    packages: dict[str, Path], tmp_path: Path, figures: list[str]
) -> None:
    """Install the .deb, start the agent as its unit does, log in over sshd with the shipped PAM
    and sshd files and a code from `otpctl enroll`, then purge: tokens and keys survive a plain
    purge and a reinstall, and go only when OTP_AGENT_PURGE_SECRETS=yes asks."""
    if package_installed():
        # A crashed earlier run: on CI's disposable machine clean up, elsewhere refuse.
        require(IN_CI, "otp-agent is already installed here; this test would replace it")
        apt("purge", "-y", "otp-agent", OTP_AGENT_PURGE_SECRETS="yes")
    watched = [
        Path(p)
        for p in ("/etc/pam.d/sshd", "/etc/pam.d/common-auth", "/etc/pam.d/login", "/etc/ssh/sshd_config")
        if Path(p).exists()
    ]
    before = {path: sha256(path) for path in watched}
    sshd_config_d = (
        sorted(Path("/etc/ssh/sshd_config.d").glob("*")) if Path("/etc/ssh/sshd_config.d").exists() else []
    )

    try:
        _install_and_check(packages, figures)
        serial = _run_agent_and_log_in(tmp_path, figures)
        key_digest = sha256(Path("/etc/otp-agent/master.key"))
        _purge_keeps_secrets_then_reinstall(packages, key_digest, serial, tmp_path, figures)
    finally:
        if package_installed():
            apt("purge", "-y", "otp-agent", check=False, OTP_AGENT_PURGE_SECRETS="yes")
    # The package never touched the system's PAM or sshd configuration.
    assert {path: sha256(path) for path in watched} == before
    now_d = (
        sorted(Path("/etc/ssh/sshd_config.d").glob("*")) if Path("/etc/ssh/sshd_config.d").exists() else []
    )
    assert now_d == sshd_config_d


def _install_and_check(packages: dict[str, Path], figures: list[str]) -> None:
    result = apt("install", "-y", "--no-install-recommends", str(packages["deb"]))
    assert "otp-agent init" not in result.stdout or "failed" not in result.stdout, result.stdout
    user = pwd.getpwnam("otp-agent")
    assert user.pw_uid < 1000 and user.pw_shell == "/usr/sbin/nologin", user
    assert user.pw_dir == "/var/lib/otp-agent"
    # The user of otp-radiusd.service, with a group of the same name (validator_group).
    radius_user = pwd.getpwnam("otp-radius")
    assert radius_user.pw_uid < 1000 and radius_user.pw_shell == "/usr/sbin/nologin", radius_user
    assert grp.getgrgid(radius_user.pw_gid).gr_name == "otp-radius"

    key = Path("/etc/otp-agent/master.key").stat()
    assert stat.S_IMODE(key.st_mode) == 0o600 and key.st_uid == 0, "master key must be 0600 root"
    assert Path("/etc/otp-agent/master.key").stat().st_size > 0
    for directory, mode in (
        ("/var/lib/otp-agent", 0o750),
        ("/var/log/otp-agent", 0o750),
        ("/run/otp-agent", 0o755),
    ):
        info = Path(directory).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (user.pw_uid, mode), directory
    assert Path("/var/lib/otp-agent/tokens.db").stat().st_uid == user.pw_uid
    assert Path("/etc/otp-agent").stat().st_uid == 0
    assert stat.S_IMODE(Path("/etc/otp-agent").stat().st_mode) == 0o755

    postinst = Path("/var/lib/dpkg/info/otp-agent.postinst").read_text(encoding="utf-8")
    assert "otp-agent init" in postinst and not re.search(r"chown\b.*tokens\.db", postinst)
    conffiles = Path("/var/lib/dpkg/info/otp-agent.conffiles").read_text().split()
    assert {
        "/etc/otp-agent/agent.toml",
        "/etc/pam.d/otp-agent-password",
        "/etc/logrotate.d/otp-agent",
    } <= set(conffiles)
    # The pam-auth-update profile is shipped but off: common-auth does not name the helper.
    assert Path("/usr/share/pam-configs/otp-agent").is_file()
    assert "otp-agent" not in Path("/etc/pam.d/common-auth").read_text()
    for program in (
        "/usr/sbin/otp-agent",
        "/usr/sbin/otp-radiusd",
        "/usr/bin/otpctl",
        "/usr/libexec/otp-agent/pam-helper",
    ):
        assert os.access(program, os.X_OK), program
    assert not Path("/usr/bin/otp-pam-helper").exists()
    for program in (
        "/usr/sbin/otp-agent",
        "/usr/sbin/otp-radiusd",
        "/usr/bin/otpctl",
        "/usr/libexec/otp-agent/pam-helper",
    ):
        first = Path(program).read_text().splitlines()[0]
        assert first.startswith("#!/usr/bin/python3"), f"{program}: {first}"
    # Debian's libraries, not bundled copies.
    listing = run("dpkg", "-L", "otp-agent").stdout
    assert not re.search(r"/(cryptography|lxml|segno|psycopg)/", listing)

    # otp-radiusd: installed, runs, not enabled (the administrator enables it).
    helped = run("/usr/sbin/otp-radiusd", "--help")
    assert "--check-config" in helped.stdout and "--config" in helped.stdout, helped.stdout
    assert not Path("/etc/systemd/system/multi-user.target.wants/otp-radiusd.service").exists()
    figures.append("otp-radiusd: /usr/sbin/otp-radiusd --help runs; unit installed, not enabled")

    units = [
        str(UNIT_DIR / "otp-agent.service"),
        str(UNIT_DIR / "otp-agent.socket"),
        str(UNIT_DIR / "otp-radiusd.service"),
    ]
    verify = run("systemd-analyze", "verify", *units, check=False)
    # verify loads what the units are wanted by (multi-user.target) and so every unit enabled on
    # the machine: findings about other packages' units (freeradius.service's MemoryLimit=) are
    # theirs, and reported only.
    ours = [line for line in verify.stdout.splitlines() if "otp-" in line]
    others = [line for line in verify.stdout.splitlines() if "otp-" not in line]
    figures.append(
        f"systemd-analyze verify (otp-agent.service, .socket, otp-radiusd.service): exit "
        f"{verify.returncode}, {len(ours)} message(s) about them"
        + (f"; {len(others)} about other units: {' | '.join(others)[:300]}" if others else "")
    )
    assert verify.returncode == 0 and not ours, verify.stdout
    radius_security = run(
        "systemd-analyze", "security", "--offline=yes", "--no-pager", units[2], check=False
    ).stdout
    radius_match = re.search(
        r"Overall exposure level for otp-radiusd\.service: ([0-9.]+) (\w+)", radius_security
    )
    assert radius_match, radius_security
    figures.append(
        f"systemd-analyze security --offline=yes otp-radiusd.service: exposure "
        f"{radius_match.group(1)} {radius_match.group(2)} (network: AF_INET/AF_INET6 UDP; target <= "
        f"{RADIUS_EXPOSURE_TARGET})"
    )
    assert float(radius_match.group(1)) <= RADIUS_EXPOSURE_TARGET
    security = run("systemd-analyze", "security", "--offline=yes", "--no-pager", units[0], check=False)
    match = re.search(r"Overall exposure level for otp-agent\.service: ([0-9.]+) (\w+)", security.stdout)
    assert match, security.stdout
    exposure = float(match.group(1))
    figures.append(
        f"systemd-analyze security --offline=yes otp-agent.service: exposure "
        f"{exposure} {match.group(2)} (target <= {EXPOSURE_TARGET})"
    )
    failing = [line.split()[1] for line in security.stdout.splitlines() if line.startswith("✗")]
    figures.append("  not set: " + ", ".join(failing))
    assert exposure <= EXPOSURE_TARGET
    # With the shipped drop-ins for the payShield backend (TCP to the HSMs) and for the
    # password+code mode (group shadow), as an administrator would install them.
    with tempfile.TemporaryDirectory() as root:
        unit_dir = Path(root) / "etc/systemd/system"
        (unit_dir / "otp-agent.service.d").mkdir(parents=True)
        for unit in ("otp-agent.service", "otp-agent.socket"):
            shutil.copyfile(UNIT_DIR / unit, unit_dir / unit)
        for dropin in ("payshield.conf", "password-and-code.conf"):
            shutil.copyfile(EXAMPLES / dropin, unit_dir / "otp-agent.service.d" / dropin)
        security = run(
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--no-pager",
            f"--root={root}",
            "otp-agent.service",
            check=False,
        )
    match = re.search(r"Overall exposure level for otp-agent\.service: ([0-9.]+) (\w+)", security.stdout)
    assert match, security.stdout
    figures.append(
        f"  with examples/payshield.conf and password-and-code.conf: exposure "
        f"{match.group(1)} {match.group(2)}"
    )
    assert float(match.group(1)) <= EXPOSURE_TARGET


class _SystemdAgent:
    """The real thing, where systemd is PID 1 (a developer's machine): systemctl."""

    def __init__(self) -> None:
        self.pid = 0

    def start(self) -> list[str]:
        run("systemctl", "restart", "otp-agent.socket", "otp-agent.service")
        show = run(
            "systemctl", "show", "otp-agent.service", "-p", "MainPID", "-p", "StatusText", "-p", "ActiveState"
        ).stdout
        fields = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        assert fields.get("ActiveState") == "active", show
        self.pid = int(fields["MainPID"])
        return [f"ActiveState={fields['ActiveState']}", f"STATUS={fields.get('StatusText', '')}"]

    def stop(self) -> None:
        run("systemctl", "stop", "otp-agent.service", "otp-agent.socket")


@contextlib.contextmanager
def _agent_again(work: Path) -> Iterator[None]:
    """Start the installed agent once more (systemctl, or the emulated unit) and stop it after."""
    if Path("/run/systemd/system").is_dir():
        real = _SystemdAgent()
        real.start()
        try:
            yield
        finally:
            real.stop()
        return
    agent = EmulatedService(
        UNIT_DIR / "otp-agent.service", UNIT_DIR / "otp-agent.socket", work / "agent-again.log"
    )
    try:
        agent.start()
        assert agent.wait_for("READY=1", 30), (work / "agent-again.log").read_text(errors="replace")
        yield
        assert agent.stop(20) == 0
    finally:
        agent.cleanup()


def _run_agent_and_log_in(work: Path, figures: list[str]) -> str:
    """Start the agent, enroll a user and log in over sshd; return the token's serial."""
    pid1 = Path("/proc/1/comm").read_text().strip()
    systemd_running = Path("/run/systemd/system").is_dir()
    figures.append(f"service manager: PID 1 is {pid1}; systemd running: {systemd_running}")
    stack = contextlib.ExitStack()
    agent: EmulatedService | None = None
    try:
        if systemd_running:
            real = _SystemdAgent()
            stack.callback(real.stop)
            figures.append("agent started by systemctl: " + ", ".join(real.start()))
            main_pid = real.pid
        else:
            # No service manager: run the installed unit the way systemd would (unit_runner.py).
            agent = EmulatedService(
                UNIT_DIR / "otp-agent.service",
                UNIT_DIR / "otp-agent.socket",
                work / "agent.log",
                watchdog_seconds=2.0,
            )
            agent.start()
            ready = agent.wait_for("READY=1", 30)
            assert ready, f"no READY=1: {agent.messages}\n{(work / 'agent.log').read_text(errors='replace')}"
            assert agent.wait_for("WATCHDOG=1", 5), f"no WATCHDOG=1: {agent.messages}"
            figures.append(
                "agent started as otp-agent.service's ExecStart (emulated unit): "
                + ", ".join(sorted({m.split("=")[0] for m in agent.messages}))
            )
            assert agent.process is not None
            main_pid = agent.process.pid
        status = otpctl("status", "--json")
        assert json.loads(status.stdout).get("agent", {}).get("ok") is True, status.stdout
        # The daemon runs as otp-agent, with no capability at all.
        proc = Path(f"/proc/{main_pid}/status").read_text()
        uid_line = next(line for line in proc.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {str(pwd.getpwnam("otp-agent").pw_uid)}, uid_line
        assert "CapBnd:\t0000000000000000" in proc and "NoNewPrivs:\t1" in proc

        # The sshd end-to-end harness of tests/e2e, fed with the files the package installed.
        from tests.e2e.sshd import authorize_key, running_sshd, ssh_login
        from tests.pam.support import CONTRIB, local_user

        for shipped in ("pam.d/sshd", "sshd_config.d/otp-agent.conf"):
            assert (EXAMPLES / shipped).read_bytes() == (CONTRIB / shipped).read_bytes(), shipped
        # sshd reads ~/.ssh as the user: homes and sshd files in a directory anyone can traverse.
        open_dir = Path(tempfile.mkdtemp(prefix="otp-install-test-"))
        open_dir.chmod(0o755)
        stack.callback(shutil.rmtree, open_dir, ignore_errors=True)
        with local_user(open_dir / "homes", prefix="otpinst") as user:
            enrolled = otpctl("enroll", user.name, "--json", "--qr", "never", "--issuer", "installation test")
            uri = json.loads(enrolled.stdout)["uri"]
            serial = json.loads(enrolled.stdout)["serial"]
            secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
            key = authorize_key(user, open_dir)
            pam_text = (EXAMPLES / "pam.d" / "sshd").read_text(encoding="utf-8")
            with running_sshd(open_dir / "sshd", pam_text) as server:
                code = totp(secret)
                wrong = f"{(int(code) + 1) % 1_000_000:06d}"
                login = ssh_login(server, user.name, key, wrong, command="id -un")
                assert not login.accepted, f"wrong code accepted: {login}"
                assert login.remaining_after_publickey == ["keyboard-interactive"], login
                login = ssh_login(server, user.name, key, code, command="id -un")
                assert login.accepted and login.output.strip() == user.name, f"{login}\n{server.log()}"
                assert any("Password:" in p for _t, _i, prompts in login.prompts for p in prompts), login
                login = ssh_login(server, user.name, key, code, command="id -un")
                assert not login.accepted, f"replayed code accepted: {login}"
            figures.append(
                "ssh login with the installed helper, shipped PAM stack and sshd drop-in: "
                "wrong code refused, right code accepted, replay refused"
            )
            # The daemon writes audit lines in batches: give the last decision a moment.
            deadline = time.monotonic() + 5
            while True:
                audit = Path("/var/log/otp-agent/audit.log").read_text()
                events = [json.loads(line) for line in audit.splitlines()]
                mine = [e for e in events if e.get("user") == user.name and e.get("event") == "validate"]
                results = [e.get("result") for e in mine]
                if len(results) >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert results == ["reject", "accept", "reject"], mine
            assert mine[2].get("reason") == "replay", mine[2]
            assert code not in audit and wrong not in audit, "a code reached the audit log"
        if agent is not None:
            assert agent.process is not None and agent.process.poll() is None
            assert agent.stop(20) == 0, (work / "agent.log").read_text(errors="replace")
            assert "STOPPING=1" in agent.messages
    finally:
        stack.close()
        if agent is not None:
            agent.cleanup()
    return serial


def _purge_keeps_secrets_then_reinstall(
    packages: dict[str, Path], key_digest: str, serial: str, work: Path, figures: list[str]
) -> None:
    apt("purge", "-y", "otp-agent")
    assert not package_installed()
    for gone in (
        "/usr/sbin/otp-agent",
        "/usr/sbin/otp-radiusd",
        "/usr/bin/otpctl",
        "/usr/libexec/otp-agent",
        "/etc/otp-agent/agent.toml",
        "/etc/pam.d/otp-agent-password",
        str(UNIT_DIR / "otp-agent.service"),
        str(UNIT_DIR / "otp-radiusd.service"),
        "/usr/share/pam-configs/otp-agent",
    ):
        assert not Path(gone).exists(), f"{gone} left after purge"
    kept = ["/etc/otp-agent/master.key", "/var/lib/otp-agent/tokens.db", "/var/log/otp-agent/audit.log"]
    for path in kept:
        assert Path(path).exists(), f"{path} deleted by a plain purge"
    pwd.getpwnam("otp-agent")  # the system users stay, as Debian does
    pwd.getpwnam("otp-radius")
    figures.append("after purge: kept " + ", ".join(kept) + " and user otp-agent")

    apt("install", "-y", "--no-install-recommends", str(packages["deb"]))
    assert sha256(Path("/etc/otp-agent/master.key")) == key_digest, "reinstall replaced the master key"
    agent_uid = pwd.getpwnam("otp-agent").pw_uid
    root_owned = [str(p) for p in Path("/var/lib/otp-agent").iterdir() if p.stat().st_uid != agent_uid]
    assert not root_owned, f"files the daemon cannot write after reinstall: {root_owned}"
    with _agent_again(work):
        shown = otpctl("show", serial, "--json", check=False)
    assert shown.returncode == 0 and serial in shown.stdout, f"token lost across purge: {shown.stdout}"
    figures.append(f"after reinstall: same master key, token {serial} still served")
    apt("purge", "-y", "otp-agent", OTP_AGENT_PURGE_SECRETS="yes")
    for gone in ("/etc/otp-agent", "/var/lib/otp-agent", "/var/log/otp-agent", "/run/otp-agent"):
        assert not Path(gone).exists(), f"{gone} left after purge with OTP_AGENT_PURGE_SECRETS=yes"
    leftovers = [
        p
        for p in (
            "/etc/otp-agent",
            "/var/lib/otp-agent",
            "/var/log/otp-agent",
            "/usr/lib/python3/dist-packages/otp_agent",
        )
        if Path(p).exists()
    ]
    figures.append(
        "after purge with OTP_AGENT_PURGE_SECRETS=yes: left "
        + (", ".join(leftovers) or "nothing but users otp-agent and otp-radius")
    )


def test_pam_auth_update_profile_is_off_until_enabled_and_removable(
    root_machine: None, tmp_path: Path
) -> None:
    """The Debian profile changes nothing when registered, puts the helper before pam_unix when
    the administrator enables it (skipping the daemon's own password service), and is taken out
    again by the prerm's `pam-auth-update --package --remove` (run in a private mount namespace,
    on copies of /etc/pam.d, /usr/share/pam-configs and /var/lib/pam)."""
    require(shutil.which("pam-auth-update") is not None, "pam-auth-update (libpam-runtime) is missing")
    for name, source in (
        ("pam.d", "/etc/pam.d"),
        ("configs", "/usr/share/pam-configs"),
        ("state", "/var/lib/pam"),
    ):
        shutil.copytree(source, tmp_path / name, symlinks=True)
    shutil.copyfile(REPO / "packaging" / "pam-configs" / "otp-agent", tmp_path / "configs" / "otp-agent")
    script = (
        "set -e; mount --bind pam.d /etc/pam.d; mount --bind configs /usr/share/pam-configs;"
        " mount --bind state /var/lib/pam;"
        " pam-auth-update --package; cp /etc/pam.d/common-auth registered;"
        " pam-auth-update --enable otp-agent; cp /etc/pam.d/common-auth enabled;"
        " pam-auth-update --package --remove otp-agent; cp /etc/pam.d/common-auth removed"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=tmp_path,
        env=system_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def auth_lines(name: str) -> list[str]:
        return [
            " ".join(line.split())
            for line in (tmp_path / name).read_text().splitlines()
            if line.startswith("auth")
        ]

    original = auth_lines("pam.d/common-auth")
    assert not any("otp-agent" in line for line in original), "the system already has the profile on"
    assert auth_lines("registered") == original
    enabled = auth_lines("enabled")
    helper = next(i for i, line in enumerate(enabled) if "pam_exec.so" in line)
    unix = next(i for i, line in enumerate(enabled) if "pam_unix.so" in line)
    assert helper < unix
    assert enabled[helper - 1].endswith("pam_succeed_if.so quiet service = otp-agent-password")
    assert "expose_authtok /usr/libexec/otp-agent/pam-helper --password-and-code" in enabled[helper]
    # success jumps past pam_unix and pam_deny to pam_permit; PAM_IGNORE never fails the stack.
    found = re.search(r"success=(\d+)", enabled[helper])
    assert found is not None
    jump = int(found.group(1))
    assert enabled[helper + jump + 1].endswith("pam_permit.so"), enabled
    assert "ignore=ignore" in enabled[helper] and "default=die" in enabled[helper]
    assert auth_lines("removed") == original


RADIUS_PORT = 18120


def _radclient(box: Any, secret: str, user: str, code: str) -> str:
    """One signed Access-Request from radclient inside the container; the reply's name or ''."""
    request = f'User-Name = "{user}"\nUser-Password = "{code}"\nMessage-Authenticator = 0x00\n'
    sent = box.run(
        "radclient", "-x", "-r", "1", "-t", "4", f"127.0.0.1:{RADIUS_PORT}", "auth", secret, input=request
    )
    for line in (sent.stdout + sent.stderr).splitlines():
        if line.startswith("Received "):
            return line.split()[1]
    return ""


def _radiusd_in_container(box: Any, figures: list[str]) -> None:
    """otp-radiusd.service as an administrator sets it up (docs/radius.md): validator_group,
    the clients file (0600 otp-radius), a [radius] table; it starts under systemd as otp-radius
    with no capability and the seccomp filter, READY and watchdog, and answers radclient: a right
    code accepted, its replay refused. The container's writes vanish with it."""
    assert box.run("systemctl", "is-enabled", "otp-radiusd.service").stdout.strip() == "disabled"
    secret = "radius-" + secrets.token_hex(12)
    config = box.run("cat", "/etc/otp-agent/agent.toml").stdout
    assert "\n[agent]\n" in config, config
    config = config.replace("\n[agent]\n", '\n[agent]\nvalidator_group = "otp-radius"\n', 1)
    config += (
        f'\n[radius]\nlisten = ["127.0.0.1:{RADIUS_PORT}"]\n'
        'clients_file = "/etc/otp-agent/radius-clients"\nmode = "code"\n'
    )
    written = box.run("sh", "-c", "cat > /etc/otp-agent/agent.toml", input=config)
    assert written.returncode == 0, written
    clients = box.run(
        "sh",
        "-c",
        "install -m 0600 -o otp-radius -g otp-radius /dev/null /etc/otp-agent/radius-clients"
        " && cat > /etc/otp-agent/radius-clients",
        input=f"# written by the installation test\n127.0.0.1 {secret} installation-test\n",
    )
    assert clients.returncode == 0, clients
    # As the service user: the clients file must belong to root or to the user that reads it.
    checked = box.run(
        "runuser",
        "-u",
        "otp-radius",
        "--",
        "otp-radiusd",
        "--check-config",
        "--config",
        "/etc/otp-agent/agent.toml",
    )
    assert checked.returncode == 0, checked
    assert box.run("systemctl", "restart", "otp-agent.service").returncode == 0
    started = box.run("systemctl", "start", "otp-radiusd.service")
    state = box.wait_active("otp-radiusd.service", 30)
    journal = box.run("journalctl", "--no-pager", "-u", "otp-radiusd.service").stdout
    assert started.returncode == 0 and state == "active", f"{started}\n{state}\n{journal}"
    show = box.run(
        "systemctl", "show", "otp-radiusd.service", "-p", "MainPID", "-p", "WatchdogUSec", "-p", "User"
    ).stdout
    fields = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert fields["User"] == "otp-radius" and fields["WatchdogUSec"] == "30s", fields
    proc = box.run("cat", f"/proc/{fields['MainPID']}/status").stdout
    radius_uid = str(pwd.getpwnam("otp-radius").pw_uid)
    uid_line = next(line for line in proc.splitlines() if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) == {radius_uid}, uid_line
    assert_confined(proc)

    user = "radct" + secrets.token_hex(3)
    enrolled = box.run("otpctl", "enroll", user, "--json", "--qr", "never")
    assert enrolled.returncode == 0, enrolled.stderr
    uri = json.loads(enrolled.stdout)["uri"]
    secret_b32 = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
    code = totp(secret_b32)
    accepted = _radclient(box, secret, user, code)
    journal = box.run("journalctl", "--no-pager", "-u", "otp-radiusd.service").stdout
    assert accepted == "Access-Accept", f"{accepted!r}\n{journal}"
    assert _radclient(box, secret, user, code) == "Access-Reject", "replayed code accepted"
    assert box.run("systemctl", "reload", "otp-radiusd.service").returncode == 0  # SIGHUP: clients again
    assert box.wait_active("otp-radiusd.service", 10) == "active"
    figures.append(
        "otp-radiusd.service under real systemd (nspawn): disabled after install; with validator_group,"
        " a 0600 clients file and [radius] it ran as otp-radius, no capabilities, seccomp; radclient:"
        " right code Access-Accept, replay Access-Reject; reload (SIGHUP) kept it active"
    )


def test_shipped_unit_under_systemd_in_a_container(
    packages: dict[str, Path], tmp_path: Path, figures: list[str]
) -> None:
    """The installed otp-agent.socket/.service, unchanged, under a real systemd (a volatile
    systemd-nspawn container of this machine): started at boot, READY and watchdog, the master key
    through LoadCredential= (still 0600 root on disk), the seccomp filter, MemoryDenyWriteExecute=
    and no capabilities in force; enroll, and a password+code validation with the shipped
    password-and-code.conf drop-in (PAM from inside the confined daemon). Then the installed
    otp-radiusd.service, set up as radius.md says, answers radclient there."""
    from tests.packaging.container import NSPAWN, Container

    require(os.path.exists(NSPAWN), "systemd-nspawn is missing (systemd-container)")
    require(shutil.which("radclient") is not None, "radclient is missing (.ci/apt/radius.txt)")
    require(
        Path("/usr/lib/python3/dist-packages/pyrad").is_dir(),
        "Debian's python3-pyrad is missing (.ci/apt/radius.txt)",
    )
    if package_installed():
        require(IN_CI, "otp-agent is already installed here; this test would replace it")
        apt("purge", "-y", "otp-agent", OTP_AGENT_PURGE_SECRETS="yes")
    apt("install", "-y", "--no-install-recommends", str(packages["deb"]))
    try:
        # The trap of the quick start: the daemon run by hand as root. It refuses (its files
        # would stop the service), and files an older version left owned by root are given
        # back to the service user by the unit before it starts.
        by_hand = run("/usr/sbin/otp-agent", "--config", "/etc/otp-agent/agent.toml", check=False)
        assert by_hand.returncode == 2 and "refusing to run as root" in by_hand.stdout, by_hand
        assert "runuser -u otp-agent" in by_hand.stdout, by_hand.stdout
        left_by_root = Path("/var/log/otp-agent/audit.log")
        left_by_root.write_text("")
        left_by_root.chmod(0o600)
        os.chown(left_by_root, 0, 0)
        dropin = EXAMPLES / "password-and-code.conf"
        binds = {dropin: "/etc/systemd/system/otp-agent.service.d/password-and-code.conf"}
        with Container(binds, tmp_path / "container.log") as box:
            state = box.wait_active("otp-agent.service", 60)
            journal = box.run("journalctl", "--no-pager", "-u", "otp-agent.service").stdout
            assert state == "active", (
                f"{state}\n{journal}\n{(tmp_path / 'container.log').read_text(errors='replace')}"
            )
            show = box.run(
                "systemctl",
                "show",
                "otp-agent.service",
                "-p",
                "MainPID",
                "-p",
                "StatusText",
                "-p",
                "WatchdogUSec",
                "-p",
                "User",
                "-p",
                "SupplementaryGroups",
            ).stdout
            fields = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
            assert fields["User"] == "otp-agent" and fields["WatchdogUSec"] == "30s", fields
            assert fields["StatusText"].startswith("serving on /run/otp-agent/agent.sock"), fields
            pid = fields["MainPID"]
            proc = box.run("cat", f"/proc/{pid}/status").stdout
            assert_confined(proc)
            mounts = box.run("cat", f"/proc/{pid}/mountinfo").stdout
            key_mount = [line for line in mounts.splitlines() if " /etc/otp-agent/master.key " in line]
            assert key_mount and " ro," in key_mount[0], mounts
            on_disk = box.run("stat", "-c", "%a %U", "/etc/otp-agent/master.key").stdout.strip()
            assert on_disk == "600 root", on_disk  # as root, outside the service's namespace
            status = box.run("otpctl", "status", "--json")
            assert status.returncode == 0 and json.loads(status.stdout)["keystore"]["ok"], status
            healed = box.run("stat", "-c", "%U", "/var/log/otp-agent/audit.log").stdout.strip()
            assert healed == "otp-agent", healed  # the root-owned audit log was given back

            user, password = "otpct" + secrets.token_hex(3), "Pw-" + secrets.token_hex(6)
            assert box.run("useradd", "-m", user).returncode == 0
            assert box.run("chpasswd", input=f"{user}:{password}\n").returncode == 0
            enrolled = box.run("otpctl", "enroll", user, "--json", "--qr", "never")
            assert enrolled.returncode == 0, enrolled.stderr
            uri = json.loads(enrolled.stdout)["uri"]
            secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
            pam_env = {"PAM_USER": user, "PAM_SERVICE": "login", "PAM_TYPE": "auth"}
            helper = ("/usr/libexec/otp-agent/pam-helper", "--password-and-code")
            # The previous step's code: whatever the daemon does with the code of a refused
            # password, the current code stays usable.
            wrong_password = box.run(
                *helper, input="Not-" + password + totp(secret, at=time.time() - 30), env=pam_env
            )
            assert wrong_password.returncode == 1, wrong_password
            accepted = box.run(*helper, input=password + totp(secret), env=pam_env)
            assert accepted.returncode == 0, (
                accepted,
                box.run("journalctl", "--no-pager", "-n", "30").stdout,
            )
            replay = box.run(*helper, input=password + totp(secret), env=pam_env)
            assert replay.returncode == 1, replay
            time.sleep(16)  # WatchdogSec=30s: the daemon pings every 15 s
            watchdog = box.run(
                "systemctl",
                "show",
                "otp-agent.service",
                "-p",
                "WatchdogTimestampMonotonic",
                "-p",
                "NRestarts",
            ).stdout
            assert "WatchdogTimestampMonotonic=0" not in watchdog and "NRestarts=0" in watchdog, watchdog
            _radiusd_in_container(box, figures)
        figures.append(
            "root-run daemon refused before the unit; a root-owned audit log given back by the unit; "
            "real systemd (nspawn container of this machine): shipped units started at boot, "
            "LoadCredential + seccomp + MemoryDenyWriteExecute + no capabilities in force, "
            "watchdog pinged; password+code accepted with password-and-code.conf, "
            "wrong password and replay refused"
        )
    finally:
        apt("purge", "-y", "otp-agent", check=False, OTP_AGENT_PURGE_SECRETS="yes")
