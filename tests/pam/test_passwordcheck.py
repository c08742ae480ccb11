"""otp_agent.passwordcheck: the password half of password-and-code, through Linux-PAM.

Runs against contrib/pam.d/otp-agent-password in a private PAM configuration directory
(pam_start_confdir), so /etc/pam.d is not involved; pam_unix needs root to read /etc/shadow.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent import passwordcheck
from otp_agent.passwordcheck import check_password
from tests.pam.support import CONTRIB, LocalUser, local_user, require_root


@pytest.fixture(scope="module")
def confdir(open_dir: Path) -> Path:
    directory = open_dir / "pam-confdir"
    directory.mkdir()
    for name in ("common-auth", "common-account"):
        shutil.copy(Path("/etc/pam.d") / name, directory / name)
    shutil.copy(CONTRIB / "pam.d" / "otp-agent-password", directory / "otp-agent-password")
    (directory / "hangs").write_text("auth required pam_exec.so quiet /bin/sleep 5\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def user(open_dir: Path) -> Iterator[LocalUser]:
    require_root()
    with local_user(open_dir / "pwhomes") as created:
        yield created


def test_right_password(user: LocalUser, confdir: Path) -> None:
    assert check_password(user.name, user.password, confdir=str(confdir)) is True
    assert check_password(user.name, user.password, confdir=str(confdir), check_account=True) is True


@pytest.mark.parametrize("password", ["", "wrong", "x" * 513, "pw\0pw"])
def test_wrong_or_malformed_password(user: LocalUser, confdir: Path, password: str) -> None:
    assert check_password(user.name, password, confdir=str(confdir)) is False


def test_right_password_with_suffix_is_wrong(user: LocalUser, confdir: Path) -> None:
    assert check_password(user.name, user.password + "1", confdir=str(confdir)) is False


@pytest.mark.parametrize("name", ["no-such-user-zz", "", "bad\nname", "x" * 600])
def test_unknown_or_malformed_user(confdir: Path, name: str) -> None:
    assert check_password(name, "anything", confdir=str(confdir)) is False


def test_missing_service_is_false_not_other(user: LocalUser, confdir: Path) -> None:
    """With a confdir a missing service is PAM_ABORT (no fall-back to 'other'): False."""
    assert check_password(user.name, user.password, service="absent", confdir=str(confdir)) is False


def test_stuck_module_is_cut_off_by_the_timeout(user: LocalUser, confdir: Path) -> None:
    """A PAM stack that never finishes gives False once ``timeout`` has passed."""
    assert (
        check_password(user.name, user.password, service="hangs", confdir=str(confdir), timeout=0.5) is False
    )


def test_system_service(user: LocalUser) -> None:
    """Through /etc/pam.d: the shipped service file installed under a test name."""
    from tests.pam.support import password_service

    with password_service() as name:
        assert check_password(user.name, user.password, service=name) is True
        assert check_password(user.name, user.password[:-1], service=name) is False


@pytest.mark.parametrize("in_shadow_group", [True, False])
def test_unprivileged_daemon_needs_group_shadow(
    user: LocalUser, open_dir: Path, in_shadow_group: bool
) -> None:
    """As the packaged daemon runs (a system user, no_new_privs): the password check works with
    group shadow (pam_unix reads /etc/shadow itself) and never without (unix_chkpwd refuses)."""
    import grp
    import subprocess

    from tests.conftest import require
    from tests.pam.support import REPO, SYSTEM_PYTHON, password_service

    require(shutil.which("setpriv") is not None, "setpriv (util-linux) missing")
    try:
        shadow_gid = grp.getgrnam("shadow").gr_gid
    except KeyError:
        require(False, "no shadow group on this system")
    groups = [f"--groups={shadow_gid}"] if in_shadow_group else ["--clear-groups"]
    # A copy in a world-readable directory: the checkout itself may not be readable by nobody.
    public = open_dir / f"pwcheck-{in_shadow_group}"
    public.mkdir(mode=0o755)
    shutil.copy(REPO / "otp_agent" / "passwordcheck.py", public / "passwordcheck.py")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from passwordcheck import check_password; "
        "print(check_password(sys.argv[2], sys.stdin.read(), service=sys.argv[3]))"
    )
    with password_service() as name:
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                *groups,
                "--no-new-privs",
                SYSTEM_PYTHON,
                "-c",
                script,
                str(public),
                user.name,
                name,
            ],
            input=user.password,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.stdout.strip() == str(in_shadow_group), result.stderr


def _alive_checks() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "pam-password-check")


def _wait_for_no_checks(seconds: float) -> int:
    """Wait until no PAM check thread is left (those of a stuck stack end with its sleep)."""
    deadline = time.monotonic() + seconds
    while _alive_checks() and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive_checks()


def test_stuck_modules_hold_a_bounded_number_of_threads(
    user: LocalUser, confdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Many checks against a stack that hangs: at most MAX_TRANSACTIONS threads are left behind,
    the checks beyond them fail at once (logged, without the password), and once the stuck
    transactions end the checks work again."""
    assert _wait_for_no_checks(20) == 0, "threads of an earlier test are still running"
    limit = passwordcheck.MAX_TRANSACTIONS
    callers = 3 * limit
    barrier = threading.Barrier(callers)
    results: list[bool] = []

    def call() -> None:
        barrier.wait()
        results.append(
            check_password(user.name, user.password, service="hangs", confdir=str(confdir), timeout=1.0)
        )

    with caplog.at_level(logging.WARNING, logger="otp_agent.passwordcheck"):
        threads = [threading.Thread(target=call) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == [False] * callers
        assert 0 < _alive_checks() <= limit
        started = time.monotonic()
        assert check_password(user.name, user.password, confdir=str(confdir)) is False
        assert time.monotonic() - started < 0.5, "a check with every slot busy must fail at once"
        assert _alive_checks() <= limit
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings and "still running" in warnings[0], warnings
    assert not any(user.password in message for message in warnings)
    assert _wait_for_no_checks(20) == 0
    assert check_password(user.name, user.password, confdir=str(confdir)) is True
