"""``otp-agent init`` run by root on a state directory that the service user owns.

The package scripts run ``otp-agent init`` as root on every upgrade, while the state directory
belongs to the daemon's user: whatever that user (a compromised daemon) planted there, init must
not be led into creating or writing root's files.  The real ``otp-agent init`` runs as a
subprocess; the service user is ``nobody``.  Needs root (skipped otherwise, failed under CI=true).
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otp_agent.testing import default_sections, write_config
from tests.conftest import require


@dataclass
class Layout:
    """A configuration whose database lives in ``state`` (owned by ``user``), the rest in root's ``base``."""

    base: Path
    state: Path
    root_only: Path
    config: Path
    user: pwd.struct_passwd

    @property
    def database(self) -> Path:
        return self.state / "tokens.db"

    def init(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def layout(agent_directory: Path) -> Iterator[Layout]:
    """``agent_directory`` (root, 0711) holds the configuration, the master key, a root-only
    directory standing for root's files, and ``state`` owned by nobody (the service's directory)."""
    require(os.geteuid() == 0, "otp-agent init as root: the tests must run as root")
    user = pwd.getpwnam("nobody")
    state = agent_directory / "state"
    state.mkdir(mode=0o750)
    os.chown(state, user.pw_uid, user.pw_gid)
    root_only = agent_directory / "root-only"
    root_only.mkdir(mode=0o700)
    sections = default_sections(agent_directory)
    sections["store"]["path"] = str(state / "tokens.db")
    yield Layout(agent_directory, state, root_only, write_config(agent_directory, sections), user)


def _assert_refused(result: subprocess.CompletedProcess[str], layout: Layout, words: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (layout.base / "master.key").exists(), "a refused init must create nothing"


def test_a_dangling_link_as_database_is_refused_and_its_target_not_created(layout: Layout) -> None:
    target = layout.root_only / "created-by-init"
    layout.database.symlink_to(target)
    os.lchown(layout.database, layout.user.pw_uid, layout.user.pw_gid)
    result = layout.init()
    _assert_refused(result, layout, f"database file {layout.database} is a symbolic link")
    assert not os.path.lexists(target)
    assert layout.database.is_symlink() and os.readlink(layout.database) == str(target)
    assert sorted(p.name for p in layout.state.iterdir()) == ["tokens.db"]


def test_a_link_to_roots_empty_file_is_refused_and_the_file_left_alone(layout: Layout) -> None:
    victim = layout.root_only / "victim"
    victim.write_bytes(b"")
    victim.chmod(0o644)
    layout.database.symlink_to(victim)
    os.lchown(layout.database, layout.user.pw_uid, layout.user.pw_gid)
    result = layout.init()
    _assert_refused(result, layout, "is a symbolic link")
    info = victim.stat()
    assert (info.st_size, info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0, 0o644)
    assert sorted(p.name for p in layout.root_only.iterdir()) == ["victim"]


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_link_as_wal_or_shm_file_is_refused(layout: Layout, suffix: str) -> None:
    target = layout.root_only / f"created{suffix}"
    sibling = Path(f"{layout.database}{suffix}")
    sibling.symlink_to(target)
    result = layout.init()
    _assert_refused(result, layout, f"{sibling} is a symbolic link")
    assert not os.path.lexists(target)
    assert not os.path.lexists(layout.database)


def test_a_leftover_wal_without_its_database_is_refused(layout: Layout) -> None:
    """A new database must not pick up the log of one that was moved away."""
    wal = Path(f"{layout.database}-wal")
    wal.write_bytes(b"left over")
    result = layout.init()
    _assert_refused(result, layout, f"{wal} exists but the database does not")
    assert wal.read_bytes() == b"left over" and not os.path.lexists(layout.database)


def test_a_database_that_is_not_a_regular_file_is_refused(layout: Layout) -> None:
    layout.database.mkdir()
    result = layout.init()
    _assert_refused(result, layout, "is not a regular file")


def test_a_linked_subdirectory_does_not_lead_init_into_roots_directory(layout: Layout) -> None:
    """The database's directory itself reached through a link the service user planted."""
    (layout.state / "db").symlink_to(layout.root_only)
    os.lchown(layout.state / "db", layout.user.pw_uid, layout.user.pw_gid)
    sections = default_sections(layout.base)
    sections["store"]["path"] = str(layout.state / "db" / "tokens.db")
    write_config(layout.base, sections)
    result = layout.init()
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert list(layout.root_only.iterdir()) == []


def test_init_creates_the_database_as_the_directory_owner_and_keeps_it_on_rerun(layout: Layout) -> None:
    first = layout.init()
    assert first.returncode == 0, first.stderr
    assert f"created database {layout.database}" in first.stdout
    created = sorted(p.name for p in layout.state.iterdir())
    assert "tokens.db" in created
    for name in created:
        info = os.lstat(layout.state / name)
        assert stat.S_ISREG(info.st_mode), name
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
            layout.user.pw_uid,
            layout.user.pw_gid,
            0o600,
        ), name
    key = (layout.base / "master.key").stat()
    assert (key.st_uid, stat.S_IMODE(key.st_mode)) == (0, 0o600)
    inode = layout.database.stat().st_ino
    with sqlite3.connect(layout.database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    assert {"meta", "tokens"} <= tables
    # The child that created it also tied it to the key backend and wrote the row-binding marker.
    assert {"key_backend_check_value", "row_binding"} <= set(meta), meta

    again = layout.init()
    assert again.returncode == 0, again.stderr
    assert f"kept existing database {layout.database}" in again.stdout
    assert "kept existing master key" in again.stdout
    info = layout.database.stat()
    assert (info.st_ino, info.st_uid, stat.S_IMODE(info.st_mode)) == (inode, layout.user.pw_uid, 0o600)


def test_a_master_key_directory_reached_through_the_service_users_link_is_refused(layout: Layout) -> None:
    """The master key is created by root only in a directory that only root controls."""
    (layout.state / "keys").symlink_to(layout.root_only)
    os.lchown(layout.state / "keys", layout.user.pw_uid, layout.user.pw_gid)
    sections = default_sections(layout.base)
    sections["store"]["path"] = str(layout.database)
    sections["keystore"]["master_key_file"] = str(layout.state / "keys" / "master.key")
    write_config(layout.base, sections)
    result = layout.init()
    assert result.returncode != 0, result.stdout + result.stderr
    assert "only root controls" in result.stderr, result.stderr
    assert list(layout.root_only.iterdir()) == []
    assert not os.path.lexists(layout.database)


def test_a_failing_init_leaves_no_database_behind(layout: Layout) -> None:
    """An unusable master key: init fails before the database exists, and none is left."""
    key = layout.base / "master.key"
    key.write_bytes(b"short")
    key.chmod(0o600)
    result = layout.init()
    assert result.returncode == 4, result.stdout + result.stderr
    assert "must hold exactly 32 bytes" in result.stderr, result.stderr
    assert list(layout.state.iterdir()) == []
