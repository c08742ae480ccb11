"""``otp-agent init``: create the master key and the database the configuration names, safely as root.

The package scripts run ``otp-agent init`` as root on every upgrade, while the database's
directory belongs to the daemon's own user.  Whatever that user (a compromised daemon) planted
there must not lead root into creating or writing root's files, so init never follows a link it
did not make:

* on the way to a directory, links and directories are trusted only while root (or the caller)
  owns them; the first component owned by another user makes that user the owner of the rest
  (:func:`foreign_component`);
* when root runs init and the database's directory belongs to another user, the database is
  created by a forked child that opens the key backend (the master key is root's), then drops
  to that user's uid and gid (no supplementary groups) before it touches the directory: the
  kernel's permissions then protect root's files and no chown is ever needed;
* the database and its ``-wal``/``-shm`` siblings must be regular files, not links (nor a
  ``-wal`` without its database): anything else is refused before anything is created (the
  master key included), and a database made by a run that then fails is removed again;
* root creates the master key (``O_EXCL | O_NOFOLLOW``, mode 0600) only in a directory that only
  root controls.

Existing files are never overwritten: rerunning init keeps the key and the database.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otp_agent.config import Config
from otp_agent.daemon.main import bind_backend_to_store, open_key_backend, open_store
from otp_agent.errors import ERRORS_BY_CODE, KeyBackendUnavailable, OtpAgentError, StoreUnavailable
from otp_agent.keystore import KeyBackend
from otp_agent.rowbinding import bind_existing_rows
from otp_agent.store import TokenStore
from otp_agent.store.migrate import migration_script
from otp_agent.store.sqlite import SQLiteStore

_MAX_LINKS = 40


def foreign_component(directory: Path, *, create: bool = False) -> tuple[Path, os.stat_result] | None:
    """Walk to ``directory`` as the kernel would; return the first component owned by another user.

    "Another user" is anyone but root and the caller.  Links met on the way are followed only
    when root or the caller owns them (a link owned by another user is returned itself), so the
    answer cannot be steered by links that user planted below.  Returns ``None`` when root or the
    caller owns every component that exists.  With ``create``, missing directories are made, but
    only up to the first component owned by another user.

    :raises OSError: a component cannot be examined (not a directory, permission, link loop).
    """
    trusted = {0, os.geteuid()}
    pending = list(directory.absolute().parts[1:])
    current = Path("/")
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(candidate)
            except FileExistsError:
                pass
            info = os.lstat(candidate)
        if info.st_uid not in trusted:
            return candidate, info
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(f"{directory}: too many levels of symbolic links")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
                pending[:0] = list(target.parts[1:])
            else:
                pending[:0] = list(target.parts)
            continue
        current = candidate
    return None


def _database_files(database: Path) -> tuple[Path, Path, Path]:
    return database, Path(f"{database}-wal"), Path(f"{database}-shm")


def refuse_unsafe_database(database: Path) -> bool:
    """Refuse a database, ``-wal`` or ``-shm`` path that is a link or not a regular file.

    Returns whether the database exists.  Uses ``lstat``: a link is never followed.

    :raises StoreUnavailable: one of them is a link or not a regular file, or a ``-wal`` is
        there without its database (a new database would pick up its pages).
    """
    for path in _database_files(database):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise StoreUnavailable(
                f"database file {path} is a symbolic link (to {os.readlink(path)}); otp-agent "
                "init does not follow links in the database's directory: remove the link, or "
                "set [store] path to the real file"
            )
        if not stat.S_ISREG(info.st_mode):
            raise StoreUnavailable(
                f"database file {path} is not a regular file; remove it or set [store] path elsewhere"
            )
    existed = os.path.lexists(database)
    wal = _database_files(database)[1]
    if not existed and os.path.lexists(wal):
        raise StoreUnavailable(
            f"{wal} exists but the database does not (a leftover of a database "
            "moved away?); move it with its database, or remove it"
        )
    return existed


def create_database(database: Path, prepare: Callable[[TokenStore], list[str]]) -> tuple[bool, list[str]]:
    """Create (or open) the SQLite database as the current user, then run ``prepare`` on it.

    Run as the directory's owner (see :func:`run_in_child`).  A database this call created is removed
    again when anything fails.  Returns whether it existed and what ``prepare`` reported.
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    existed = refuse_unsafe_database(database)
    made = [path for path in _database_files(database) if not os.path.lexists(path)]
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(database, flags | (0 if existed else os.O_CREAT | os.O_EXCL), 0o600)
    except OSError as exc:
        raise StoreUnavailable(
            f"database {database} cannot be {'opened' if existed else 'created'} "
            f"as uid {os.geteuid()}: {exc.strerror}"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise StoreUnavailable(f"database file {database} is not a regular file")
        if not existed:
            os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)
    try:
        # An existing file must already hold the schema: an emptied tokens.db is refused, never
        # turned into an empty store (the package runs init on every upgrade).
        store = SQLiteStore(database, create=not existed)
        try:
            return existed, prepare(store)
        finally:
            store.close()
    except BaseException:
        for path in made:
            if os.path.lexists(path):
                os.unlink(path)
        raise


def _drop_to(uid: int, gid: int) -> None:
    """Hold only ``uid`` and ``gid`` from now on (the kernel also makes the process undumpable)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()) != (uid, uid, gid, gid, []):
        raise StoreUnavailable(f"cannot drop to uid {uid} and gid {gid}")


def _child(write_end: int, work: Callable[[], dict[str, Any]]) -> None:
    """In the forked child: run ``work``, send its result or error to the parent; never returns."""
    status = 1
    try:
        try:
            answer: dict[str, Any] = {"result": work()}
        except OtpAgentError as exc:
            answer = {"error": exc.code, "message": str(exc)}
        except OSError as exc:
            answer = {
                "error": StoreUnavailable.code,
                "message": f"{exc.filename or 'database'}: {exc.strerror or exc} (as uid {os.geteuid()})",
            }
        except BaseException as exc:  # Anything: the parent must hear of it, never a traceback here.
            answer = {"error": StoreUnavailable.code, "message": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(answer).encode("utf-8")
        while data:
            data = data[os.write(write_end, data) :]
        status = 0
    finally:
        os._exit(status)


def run_in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child and return its (JSON-able) result.

    The child's deliberate errors are raised again here with their class and message.

    :raises StoreUnavailable: the child died or answered nothing.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        os.close(read_end)
        _child(write_end, work)
    os.close(write_end)
    chunks = []
    try:
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _pid, status = os.waitpid(pid, 0)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise StoreUnavailable(f"the process creating the database failed (wait status {status})") from None
    if "error" in answer:
        raise ERRORS_BY_CODE.get(answer["error"], StoreUnavailable)(answer["message"])
    result: dict[str, Any] = answer["result"]
    return result


def _owner_of(found: tuple[Path, os.stat_result]) -> tuple[int, int, str]:
    """uid, gid (the user's primary group, else the component's group) and name of an owner."""
    info = found[1]
    try:
        entry = pwd.getpwuid(info.st_uid)
    except KeyError:
        return info.st_uid, info.st_gid, f"uid {info.st_uid}"
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def _master_key_directory(path: Path, *, create: bool) -> None:
    """Refuse, as root, to create the master key where another user controls the way to it."""
    found = foreign_component(path.parent, create=create)
    if found is not None and os.geteuid() == 0 and not os.path.lexists(path):
        raise KeyBackendUnavailable(
            f"refusing to create the master key {path}: {found[0]} is owned by "
            f"{_owner_of(found)[2]}; put the master key in a directory only root controls "
            "(such as /etc/otp-agent)"
        )
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)


def _initialise_keys(config: Config) -> list[str]:
    if config.keystore.backend != "software":
        from otp_agent.keystore.payshield.backend import initialise_payshield

        return initialise_payshield(config.keystore.payshield)
    from otp_agent.keystore.software import create_master_key

    path = config.keystore.master_key_file
    _master_key_directory(path, create=True)
    if create_master_key(path):
        return [f"created master key {path} (mode 0600)"]
    return [f"kept existing master key {path}"]


def _prepare_store(keys: KeyBackend, store: TokenStore) -> list[str]:
    """Tie the store to this key backend and bind the rows that predate row binding."""
    bind_backend_to_store(keys, store)
    return bind_existing_rows(store, keys)


def _create_sqlite(config: Config, owner: tuple[int, int] | None) -> tuple[bool, list[str]]:
    """Open the key backend, drop to ``owner`` (uid, gid) if given, then create the database."""
    keys = open_key_backend(config)  # As the caller: the master key is root's.
    try:
        if owner is not None:
            # Whatever the store loads lazily (importlib.resources' readers) is loaded now: the
            # interpreter's own files need not be readable by the owner.
            migration_script("sqlite", 1)
            _drop_to(*owner)
        return create_database(config.store.path, lambda store: _prepare_store(keys, store))
    finally:
        keys.close()


def _initialise_sqlite(config: Config) -> list[str]:
    """Create the database, as its directory's owner (in a child) when that is not root."""
    database = config.store.path
    found = foreign_component(database.parent, create=True)
    if found is not None and os.geteuid() == 0:
        uid, gid, name = _owner_of(found)

        def as_owner() -> dict[str, Any]:
            try:
                existed, lines = _create_sqlite(config, (uid, gid))
            except PermissionError as exc:
                raise StoreUnavailable(
                    f"{exc.filename or database}: permission denied to {name}, who owns "
                    f"{found[0]} and so creates the database (the agent running as {name} "
                    "needs the same access)"
                ) from None
            return {"existed": existed, "lines": lines}

        outcome = run_in_child(as_owner)
        existed, lines, owner = bool(outcome["existed"]), list(outcome["lines"]), f", owner {name}"
    else:
        (existed, lines), owner = _create_sqlite(config, None), ""
    if existed:
        return [f"kept existing database {database}", *lines]
    return [f"created database {database} (mode 0600{owner})", *lines]


def _initialise_postgresql(config: Config) -> list[str]:
    keys = open_key_backend(config)
    try:
        store = open_store(config, create=True)
        try:
            return ["PostgreSQL schema ready", *_prepare_store(keys, store)]
        finally:
            store.close()
    finally:
        keys.close()


def initialise(config: Config) -> list[str]:
    """Create the master key and the database if missing; return what was done.

    :raises StoreUnavailable: the database path (or its ``-wal``/``-shm``) is a link or not a
        regular file, or cannot be created; nothing was created then.
    :raises KeyBackendUnavailable: the master key cannot be created safely, or the database was
        created with another key backend.
    """
    sqlite = config.store.backend == "sqlite"
    if sqlite:  # Before anything is created: a refused init leaves nothing behind.
        refuse_unsafe_database(config.store.path)
    if config.keystore.backend == "software":
        _master_key_directory(config.keystore.master_key_file, create=False)
    done = _initialise_keys(config)
    return done + (_initialise_sqlite(config) if sqlite else _initialise_postgresql(config))
