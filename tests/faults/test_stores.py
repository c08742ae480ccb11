"""Store faults, repeated: a full disk, a read-only database, a database deleted or replaced
under load, an empty or foreign file at start, damaged bytes.  Never an acceptance that is not
durable, never a replay or a wrong code accepted, never a crash.

tests/integration/test_store_faults.py holds one test of each kind with its exact messages; here
each fault is repeated (rounds, variants, random moments, random damage) and counted.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from otp_agent.audit import AuditLog
from otp_agent.config import PolicyConfig
from otp_agent.keystore.software import SoftwareKeyBackend, create_master_key
from otp_agent.store.sqlite import SQLiteStore
from otp_agent.testing import RunningAgent, running_agent, start_agent
from otp_agent.validation import Validator
from tests.conftest import tmpfs
from tests.faults.conftest import Figures
from tests.faults.support import (
    NOBODY,
    count,
    hotp_code,
    open_directory,
    outcome,
    request,
    require_root,
    rng,
    wrong_code,
)

DATABASE_FILES = ("tokens.db", "tokens.db-wal", "tokens.db-shm")
POLICY = {"hotp_lookahead": 10, "lock_threshold": 100}


def _database(agent: RunningAgent) -> Path:
    return agent.directory / "tokens.db"


def _answer(agent: RunningAgent, user: str, code: str) -> tuple[str, str]:
    try:
        return outcome(request(agent.socket_path, "validate", timeout=10, user=user, code=code))
    except OSError as exc:
        return "exception", type(exc).__name__


def _run_daemon(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- full disk


def _fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its filesystem is full; the filler's path."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * 65536
    try:
        while True:  # unbuffered: nothing is left to flush (and fail) at close
            if os.write(descriptor, block) < len(block):
                block = block[:4096]
    except OSError:
        pass
    finally:
        os.close(descriptor)
    return filler


def test_full_disk_rounds(figures: Figures) -> None:
    """Each round: the store's filesystem is filled, codes are submitted, space comes back.

    While the disk is full a code may still be accepted when SQLite commits into WAL pages it
    already owns; such an acceptance must be durable (it is a replay after SIGKILL and restart).
    Every other answer is a refusal with the store reason, and the agent keeps answering pings.
    """
    require_root()
    rounds, per_round = count(3, 25), count(8, 40)
    with open_directory() as directory, tmpfs(directory / "fs") as filesystem:
        sections = {"store": {"path": str(filesystem / "tokens.db")}}
        with running_agent(directory / "agent", policy=POLICY, sections=sections) as first:
            agent = first
            _serial, uri = agent.enroll("alice", "--type", "hotp")
            for i in range(200):  # grow the WAL so that commits must allocate
                request(agent.socket_path, "enroll", user=f"padding{i}")
            answers: Counter[str] = Counter()
            accepted_while_full: list[int] = []
            pings = 0
            counter = 0
            try:
                for _round in range(rounds):
                    filler = _fill(filesystem)
                    try:
                        for _ in range(per_round):
                            result, reason = _answer(agent, "alice", hotp_code(uri, counter))
                            answers[f"{result}:{reason}"] += 1
                            if result == "accept":
                                accepted_while_full.append(counter)
                                counter += 1
                            else:
                                assert (result, reason) == ("reject", "store"), (result, reason)
                            assert request(agent.socket_path, "ping")["ok"] is True
                            pings += 1
                    finally:
                        filler.unlink()
                    # Space is back: the code refused while full was not consumed.
                    assert _answer(agent, "alice", hotp_code(uri, counter)) == ("accept", "accepted")
                    counter += 1
                # Whatever was accepted while the disk was full is durable.
                os.kill(agent.process.pid, signal.SIGKILL)
                agent.process.wait(30)
                agent = start_agent(first.directory, first.config_path, first.socket_path)
                replays = Counter(
                    _answer(agent, "alice", hotp_code(uri, c)) for c in accepted_while_full[-1:]
                )
                after = _answer(agent, "alice", hotp_code(uri, counter - 1))
            finally:
                if agent.process.poll() is None:
                    agent.stop()
        refused = answers.get("reject:store", 0)
        figures.report(
            f"stores full disk (tmpfs 4 MB): {rounds} rounds x {per_round} codes while full: "
            f"{refused} refused (store), {len(accepted_while_full)} accepted into space SQLite already "
            f"held (durable after SIGKILL: {dict(replays) or 'none to check'}), {pings} pings answered; "
            f"every round's refused code accepted once space was back; last code after restart: {after}"
        )
        assert after == ("reject", "replay")
        assert all(key == ("reject", "replay") for key in replays), replays
        assert refused > 0


# --------------------------------------------------------------------------- read-only


def test_query_only_store_refuses_every_write(figures: Figures, tmp_path: Path) -> None:
    """The engine on a store whose writing connection is ``PRAGMA query_only``: 4 threads submit
    the same valid codes; all refused with the store reason; writable again, the code is accepted."""
    rounds, attempts = count(5, 100), 8
    create_master_key(tmp_path / "master.key")
    keys = SoftwareKeyBackend(tmp_path / "master.key")
    store = SQLiteStore(tmp_path / "tokens.db", create=True)
    audit = AuditLog(tmp_path / "audit.log")
    try:
        from otp_agent.administration import Administration
        from otp_agent.audit import RequestContext
        from otp_agent.oath import HashAlgorithm, OathParams, TokenType

        context = RequestContext(0, os.getpid(), "faults", None, None)
        admin = Administration(store, keys, audit)
        validator = Validator(store, keys, PolicyConfig(hotp_lookahead=10, lock_threshold=100), audit)
        enrolled = admin.enroll(
            "alice", OathParams(TokenType.HOTP, HashAlgorithm.SHA1, 6, 30), "faults", context
        )
        uri = enrolled["uri"]
        answers: Counter[str] = Counter()
        for round_number in range(rounds):
            code = hotp_code(uri, round_number)
            store._writer.submit(lambda connection: connection.execute("PRAGMA query_only = ON"))
            results: list[tuple[bool, str]] = []

            def submit() -> None:
                for _ in range(attempts // 4):
                    decision = validator.validate("alice", code, context)
                    results.append(
                        (decision.accepted, str(getattr(decision.reason, "value", decision.reason)))
                    )

            threads = [threading.Thread(target=submit) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            answers.update(f"{'accept' if a else 'reject'}:{r}" for a, r in results)
            # BEGIN IMMEDIATE fails on a query_only connection: switch it back directly.
            writer = store._writer._connection
            assert writer is not None
            writer.execute("PRAGMA query_only = OFF")
            decision = validator.validate("alice", code, context)
            assert (decision.accepted, decision.reason) == (True, "accepted"), decision
        figures.report(
            f"stores read-only (PRAGMA query_only): {rounds} rounds x {attempts} submissions of a valid "
            f"code from 4 threads: {dict(answers)}; each code accepted once writable again"
        )
        assert set(answers) == {"reject:store"}, answers
    finally:
        store.close()
        keys.close()
        audit.close()


def test_read_only_database_at_start(figures: Figures) -> None:
    """The daemon runs as nobody; tokens.db is made read-only (chmod 0444, and the directory
    0555 too) before it starts: it refuses to start, or starts and refuses every write; then,
    writable again, the code refused is accepted."""
    require_root()
    rounds = count(1, 10)
    outcomes: Counter[str] = Counter()
    with open_directory() as directory:
        with running_agent(directory / "agent", policy=POLICY) as setup:
            _serial, uri = setup.enroll("alice", "--type", "hotp")
        agent_dir = setup.directory
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(agent_dir)], check=True)
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        counter = 0
        for _round in range(rounds):
            for variant in ("file 0444", "file 0444 + directory 0555"):
                database = agent_dir / "tokens.db"
                database.chmod(0o444)
                if "directory" in variant:
                    agent_dir.chmod(0o555)
                try:
                    try:
                        agent = start_agent(
                            agent_dir, setup.config_path, setup.socket_path, wrapper=as_nobody, timeout=20
                        )
                    except RuntimeError as exc:
                        assert "exited with 4" in str(exc), str(exc)[-1500:]
                        outcomes[f"{variant}: refused to start"] += 1
                    else:
                        try:
                            answers = {_answer(agent, "alice", hotp_code(uri, counter)) for _ in range(4)}
                            outcomes[f"{variant}: started, answers {sorted(answers)}"] += 1
                            assert all(a[0] == "reject" and a[1].startswith("store") for a in answers), (
                                answers
                            )
                            assert request(agent.socket_path, "ping")["ok"] is True
                        finally:
                            agent.stop()
                finally:
                    agent_dir.chmod(0o711)
                    # SQLite made the -wal and -shm files with the database's mode (0444): all back.
                    for name in DATABASE_FILES:
                        if (agent_dir / name).exists():
                            (agent_dir / name).chmod(0o600)
                agent = start_agent(agent_dir, setup.config_path, setup.socket_path, wrapper=as_nobody)
                try:
                    assert _answer(agent, "alice", hotp_code(uri, counter)) == ("accept", "accepted")
                    counter += 1
                finally:
                    agent.stop()
    figures.report(
        f"stores read-only at start (daemon as uid {NOBODY}): {rounds} round(s) x 2 variants: "
        + "; ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))
        + "; the refused code accepted each time once writable"
    )


# --------------------------------------------------------------------------- deleted under load

DELETIONS = {
    "unlink tokens.db, -wal and -shm": "all",
    "unlink tokens.db (its -wal and -shm left)": "main",
    "replace tokens.db by a copy": "copy",
    "replace tokens.db by a backup from before enrollment": "backup",
}


# Found by this suite and fixed: tokens.db unlinked while the agent ran, its -wal and -shm
# left, a connection opened afterwards (a new worker thread) made a new empty tokens.db at the
# path, read the user's tokens from it as none, and with unenrolled = allow the user was accepted
# without a code.  Connections now never create the file, and reads check it too.
@pytest.mark.parametrize("variant", list(DELETIONS))
def test_database_deleted_or_replaced_under_load(variant: str, figures: Figures) -> None:
    """Clients validate successive codes; at a random moment the database is unlinked (or
    replaced), then 48 requests arrive at once (new worker threads, new connections).  With
    ``unenrolled = allow``, where a read that lost the user's tokens would let the user in, no
    request sent after that moment may be accepted; the status fails and pings are answered."""
    require_root()
    rounds = count(1, 8)
    random = rng(f"deleted {variant}")
    late_accepts: list[str] = []
    answers_after: Counter[str] = Counter()
    accepted_before = 0
    statuses: Counter[str] = Counter()
    kind = DELETIONS[variant]
    with open_directory() as directory:
        for round_number in range(rounds):
            policy = {**POLICY, "unenrolled": "allow"}
            with running_agent(directory / f"agent{round_number}", policy=policy) as agent:
                database = _database(agent)
                shutil.copy(database, directory / "backup.db")
                uris = {f"user{i}": agent.enroll(f"user{i}", "--type", "hotp")[1] for i in range(3)}
                stop = threading.Event()
                log: list[tuple[float, str, tuple[str, str]]] = []

                def client(user: str, uri: str) -> None:
                    counter = 0
                    while not stop.is_set():
                        sent = time.monotonic()
                        answer = _answer(agent, user, hotp_code(uri, counter))
                        log.append((sent, user, answer))
                        if answer[0] == "accept":
                            counter += 1

                threads = [threading.Thread(target=client, args=item) for item in uris.items()]
                for thread in threads:
                    thread.start()
                time.sleep(random.uniform(0.05, 0.4))
                if kind == "copy":
                    shutil.copy(database, directory / "copy.db")
                    os.replace(directory / "copy.db", database)
                elif kind == "backup":
                    os.replace(directory / "backup.db", database)
                else:
                    for name in DATABASE_FILES if kind == "all" else DATABASE_FILES[:1]:
                        (agent.directory / name).unlink(missing_ok=True)
                gone = time.monotonic()
                burst = [
                    threading.Thread(
                        target=lambda u=user, c=uri: log.append(
                            (time.monotonic(), u, _answer(agent, u, wrong_code(c, 0)))
                        )
                    )
                    for user, uri in uris.items()
                    for _ in range(16)
                ]
                for thread in burst:
                    thread.start()
                for thread in burst:
                    thread.join(30)
                time.sleep(0.2)
                stop.set()
                for thread in threads:
                    thread.join(30)
                status = request(agent.socket_path, "status")
                statuses[f"store ok={status['store']['ok']}"] += 1
                assert request(agent.socket_path, "ping")["ok"] is True
                for sent, user, answer in log:
                    if sent > gone:
                        answers_after[f"{answer[0]}:{answer[1]}"] += 1
                        if answer[0] == "accept":
                            late_accepts.append(f"round {round_number}: {user} {answer}")
                    elif answer[0] == "accept":
                        accepted_before += 1
    figures.report(
        f"stores {variant}, under load (3 clients, then 48 at once), unenrolled = allow: {rounds} "
        f"round(s): {accepted_before} acceptances before, requests sent after: "
        f"{dict(sorted(answers_after.items()))}; {len(late_accepts)} accepted after; status {dict(statuses)}"
    )
    assert not late_accepts, late_accepts[:5]
    assert statuses == {"store ok=False": rounds}
    assert sum(answers_after.values()) >= 48 * rounds


# --------------------------------------------------------------------------- empty, foreign


def _foreign_files(directory: Path) -> dict[str, bytes]:
    random = rng("foreign")
    empty_sqlite = directory / "empty-sqlite.db"
    with sqlite3.connect(empty_sqlite) as connection:
        connection.execute("PRAGMA user_version = 1")
    other_schema = directory / "other-schema.db"
    with sqlite3.connect(other_schema) as connection:
        connection.execute("CREATE TABLE tokens (serial TEXT, secret TEXT)")
        connection.execute("INSERT INTO tokens VALUES ('x', 'y')")
    files = {
        "0 bytes": b"",
        "1 NUL byte": b"\0",
        "4096 NUL bytes": b"\0" * 4096,
        "SQLite header only": b"SQLite format 3\0" + b"\0" * 84,
        "SQLite file without tables": empty_sqlite.read_bytes(),
        "SQLite file with another schema": other_schema.read_bytes(),
        "text": b"tokens go here\n",
    }
    for i in range(count(2, 30)):
        files[f"random {i}"] = random.randbytes(random.choice([16, 100, 4096, 65536]))
    return files


def test_empty_or_foreign_database_at_start(figures: Figures) -> None:
    """Every file that is not an otp-agent database made by init is refused at start (exit 4,
    no traceback) and left as it was; with unenrolled = allow this is what keeps the door shut."""
    require_root()
    outcomes: Counter[str] = Counter()
    with open_directory() as directory:
        with running_agent(directory / "agent", policy={**POLICY, "unenrolled": "allow"}) as setup:
            setup.enroll("alice")
        database = setup.directory / "tokens.db"
        files = _foreign_files(directory)
        for name, content in files.items():
            for with_wal in (False, True):
                database.write_bytes(content)
                for suffix in ("-wal", "-shm"):
                    Path(f"{database}{suffix}").unlink(missing_ok=True)
                if with_wal:
                    Path(f"{database}-wal").write_bytes(b"\0" * 32)
                result = _run_daemon(setup.config_path)
                key = f"exit {result.returncode}"
                outcomes[key] += 1
                assert result.returncode == 4, (name, with_wal, result.stderr[-1500:])
                assert "Traceback" not in result.stderr, result.stderr
                assert database.read_bytes() == content, name
    figures.report(
        f"stores empty or foreign file at start: {sum(outcomes.values())} starts ({len(files)} files, "
        f"with and without a stray -wal): {dict(outcomes)}; every file left unchanged"
    )


# --------------------------------------------------------------------------- damaged


def _damage(path: Path, random: object, kind: str) -> str:
    import random as random_module

    assert isinstance(random, random_module.Random)
    data = bytearray(path.read_bytes())
    if kind == "header":
        where, size = random.randrange(0, 100), random.randint(1, 8)
    elif kind == "page":
        page = random.randrange(1, max(2, len(data) // 4096))
        where, size = page * 4096, 4096
    else:
        where, size = random.randrange(0, len(data)), random.randint(1, 64)
    data[where : where + size] = random.randbytes(min(size, len(data) - where))
    path.write_bytes(bytes(data))
    return f"{kind} at {where}+{size}"


# Found by this suite and fixed: a damaged sqlite_master whose object name is not UTF-8 made
# SQLite's error message undecodable (UnicodeDecodeError), which SQLiteStore did not turn into a
# StoreError: otp-agent and --check-config died with a traceback, and a running agent left a
# client unanswered.  test_damaged_schema_name_is_refused_without_a_traceback keeps it fixed.


def test_damaged_database(figures: Figures) -> None:
    """Random bytes overwrite part of tokens.db (header, a page, a few bytes), with the agent
    stopped, then started: it refuses to start (exit 4), or it starts and then neither the last
    accepted code (a replay) nor a wrong code is accepted, and it keeps answering.  The same
    damage is also done under a running agent."""
    require_root()
    rounds, live_rounds = count(6, 150), count(2, 50)
    random = rng("damaged")
    outcomes: Counter[str] = Counter()
    accepted_bad: list[str] = []
    crashes: list[str] = []
    with open_directory() as directory:
        with running_agent(directory / "agent", policy=POLICY) as setup:
            _serial, uri = setup.enroll("alice", "--type", "hotp")
            for i in range(30):
                setup.enroll(f"user{i}")
            for counter in range(5):
                assert _answer(setup, "alice", hotp_code(uri, counter))[0] == "accept"
        database = setup.directory / "tokens.db"
        pristine = database.read_bytes()
        assert not Path(f"{database}-wal").exists() or Path(f"{database}-wal").stat().st_size == 0
        replay, wrong, fresh = hotp_code(uri, 4), wrong_code(uri, 5), hotp_code(uri, 5)

        def traceback_in(text: str, where: str) -> None:
            if "Traceback" not in text:
                return
            crashes.append(f"{where}: {text[-3000:]}")

        for round_number in range(rounds + live_rounds):
            live = round_number >= rounds
            database.write_bytes(pristine)
            for suffix in ("-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
            kind = random.choice(["header", "page", "bytes", "bytes"])
            if not live:
                where = _damage(database, random, kind)
            log_start = len(setup.log())
            try:
                agent = start_agent(setup.directory, setup.config_path, setup.socket_path, timeout=20)
            except RuntimeError as exc:
                if "exited with 4" in str(exc):
                    outcomes["refused to start (exit 4)"] += 1
                else:
                    traceback_in(setup.log()[log_start:], "start")
                    if "Traceback" not in setup.log()[log_start:]:
                        crashes.append(f"start: {str(exc)[-2000:]}")
                continue
            try:
                if live:
                    where = _damage(database, random, kind)
                answers = {
                    "replay": _answer(agent, "alice", replay),
                    "wrong": _answer(agent, "alice", wrong),
                    "next": _answer(agent, "alice", fresh),
                }
                for what in ("replay", "wrong"):
                    if answers[what][0] == "accept":
                        accepted_bad.append(f"{what} accepted after damage {where} (live={live})")
                outcomes[
                    f"{'damaged while running' if live else 'started'}: next code "
                    f"{'accepted' if answers['next'][0] == 'accept' else 'refused'}"
                ] += 1
                assert request(agent.socket_path, "ping")["ok"] is True
                assert agent.process.poll() is None
            finally:
                status = agent.stop()
            if status != 0:
                crashes.append(f"exit {status} after damage {where}: {agent.log()[log_start:][-2000:]}")
            traceback_in(agent.log()[log_start:], "serving")
    figures.report(
        f"stores damaged file: {rounds} damaged before start + {live_rounds} while running "
        f"(header, whole page or 1-64 bytes): {dict(sorted(outcomes.items()))}; replays or wrong "
        f"codes accepted: {len(accepted_bad)}; other crashes: {len(crashes)}"
    )
    assert not accepted_bad, accepted_bad
    assert not crashes, crashes[:3]


def test_damaged_schema_name_is_refused_without_a_traceback() -> None:
    """The reproducer: the name and SQL of the tokens_by_user index overwritten with 0xB4 bytes."""
    require_root()
    with open_directory() as directory:
        with running_agent(directory / "agent", policy=POLICY) as setup:
            setup.enroll("alice", "--type", "hotp")
        database = setup.directory / "tokens.db"
        data = bytearray(database.read_bytes())
        for text in (b"tokens_by_user", b"CREATE INDEX"):
            where = data.find(text)
            assert where > 0, text
            data[where : where + len(text)] = b"\xb4" * len(text)
        database.write_bytes(bytes(data))
        for extra in (["--check-config"], []):
            result = subprocess.run(
                [sys.executable, "-m", "otp_agent.daemon", "--config", str(setup.config_path), *extra],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "Traceback" not in result.stderr, result.stderr[-1500:]
            assert result.returncode == 4, result.stderr[-1500:]
