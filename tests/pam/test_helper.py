"""The pam_exec helper on its own: what it sends, when it exits 0, and how it fails closed.

Most tests run the helper exactly as pam_exec does (a bare environment, the answer on stdin, no
tty) against a scripted fake agent, because faults such as a hanging agent or a garbled reply
cannot be produced by the real daemon; the tests marked with the real agent use otp-agent itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.pam.support import (
    HELPER_SOURCE,
    REPO,
    SYSTEM_PYTHON,
    SyslogCapture,
    accept_code,
    fake_agent,
    local_user,
    real_agent,
    require_root,
    run_helper,
)

GOOD = "123456"


def audit_events(path: Path) -> list[dict[str, Any]]:
    """The complete lines of the agent's audit log (one being written is left out)."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def test_right_code_is_accepted_and_request_is_exact(work: Path) -> None:
    """A right code gives exit 0 and the request carries exactly the protocol fields."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        result = run_helper(agent.path, answer=GOOD.encode(), env={"PAM_TTY": "ssh"})
    assert result.returncode == 0
    assert agent.requests == [
        {
            "v": 1,
            "op": "validate",
            "user": "alice",
            "code": GOOD,
            "service": "sshd",
            "rhost": "127.0.0.1",
            "tty": "ssh",
        }
    ]
    assert result.stdout == b"" and result.stderr == b""


def test_wrapper_runs_the_same_helper(work: Path, wrapper: Path) -> None:
    """contrib/pam-helper (as packaged, pointed at this checkout) behaves like the module."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        assert run_helper(agent.path, answer=GOOD.encode(), wrapper=wrapper).returncode == 0
        assert run_helper(agent.path, answer=b"654321", wrapper=wrapper).returncode == 1


def test_console_script_entry_point(work: Path) -> None:
    """``pam_helper.__main__:main`` (the otp-pam-helper console script) reads sys.argv."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        result = subprocess.run(
            [
                sys.executable,
                "-I",
                "-c",
                "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from pam_helper.__main__ import main; sys.exit(main())",
                str(REPO),
                "--socket",
                str(agent.path),
            ],
            input=GOOD.encode(),
            env={"PAM_USER": "alice"},
            capture_output=True,
            timeout=30,
        )
    assert result.returncode == 0


@pytest.mark.parametrize("answer", [f"{GOOD}\n", f"{GOOD}\r\n", f"{GOOD}\0", f"{GOOD}\0\0"])
def test_trailing_newline_or_nul_is_tolerated(work: Path, answer: str) -> None:
    """pam_exec sends no newline, but a newline or NUL after the code does no harm."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        assert run_helper(agent.path, answer=answer.encode()).returncode == 0
    assert agent.requests[0]["code"] == GOOD


def test_wrong_code_exits_1(work: Path) -> None:
    """The agent's rejection gives exit 1 (pam_exec: PAM_SYSTEM_ERR; the stack: PAM_AUTH_ERR)."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        assert run_helper(agent.path, answer=b"000000").returncode == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"\n",
        b"\0",
        b"12345",
        b"123456789",
        b"12345a",
        b" 123456",
        b"123456 ",
        b"12 3456",
        "١٢٣٤٥٦".encode(),
        b"\xff\xfe\xfd\xfc\xfb\xfa",
        b"-12345",
        b"+123456",
    ],
    ids=[
        "empty",
        "newline",
        "nul",
        "5digits",
        "9digits",
        "letter",
        "lead-space",
        "trail-space",
        "inner-space",
        "arabic-digits",
        "not-utf8",
        "minus",
        "plus",
    ],
)
def test_answers_that_cannot_be_codes_never_reach_the_agent(work: Path, answer: bytes) -> None:
    """Empty answers, non-digits and wrong lengths are refused locally (exit 1)."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        assert run_helper(agent.path, answer=answer).returncode == 1
    assert agent.requests == []


@pytest.mark.parametrize("size", [511, 512, 600, 4096])
def test_overlong_answers_are_refused(work: Path, size: int) -> None:
    """pam_exec passes at most 511 bytes; 511 digits (or more) are refused without a request."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        result = run_helper(agent.path, answer=b"1" * size)
    assert result.returncode == 1
    assert agent.requests == []


@pytest.mark.parametrize(
    "user",
    [None, b"", b"al\nice", b"al\x1bice", b"al\x7fice", "al\u0085ice".encode(), b"\xffalice", b"a" * 257],
    ids=["missing", "empty", "newline", "escape", "del", "c1-control", "not-utf8", "too-long"],
)
def test_malformed_pam_user_is_refused(work: Path, user: bytes | None) -> None:
    """PAM_USER is untrusted: missing, over-long, non-UTF-8 or control characters give exit 1."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        assert run_helper(agent.path, answer=GOOD.encode(), user=user).returncode == 1
    assert agent.requests == []


def test_malformed_context_items_are_dropped(work: Path, syslog: SyslogCapture) -> None:
    """A bad PAM_RHOST/PAM_TTY/PAM_SERVICE is left out of the request and noted in syslog."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        result = run_helper(
            agent.path,
            *syslog.option,
            answer=GOOD.encode(),
            env={"PAM_RHOST": "evil\nhost", "PAM_TTY": "t" * 65, "PAM_SERVICE": "sshd"},
        )
    assert result.returncode == 0
    assert agent.requests[0].keys() == {"v", "op", "user", "code", "service"}
    assert any("ignored malformed PAM_RHOST" in line for line in syslog.helper_lines())


def test_agent_socket_missing(work: Path, syslog: SyslogCapture) -> None:
    """No agent socket: exit 3 and a clear syslog line."""
    result = run_helper(work / "absent.sock", *syslog.option, answer=GOOD.encode())
    assert result.returncode == 3
    (line,) = syslog.helper_lines()
    assert "does not exist" in line and "user=alice" in line and "service=sshd" in line
    assert line.startswith("<83>")  # facility authpriv, severity err, as syslog(3) writes it


def test_agent_not_listening(work: Path) -> None:
    """A socket file nobody listens on (agent crashed): exit 3."""
    path = work / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    assert run_helper(path, answer=GOOD.encode()).returncode == 3


def test_hanging_agent_fails_within_the_timeout(work: Path, syslog: SyslogCapture) -> None:
    """An agent that accepts and never answers: the helper gives up at --timeout, exit 3."""
    with fake_agent(work, lambda request: "hang") as agent:
        result = run_helper(agent.path, "--timeout", "1", *syslog.option, answer=GOOD.encode(), timeout=20)
    assert result.returncode == 3
    (line,) = syslog.helper_lines()
    assert "did not answer within 1 s (timeout)" in line


def test_agent_that_never_accepts(work: Path) -> None:
    """A listening socket whose backlog is full: connect() is bounded too."""
    path = work / "full.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                pass
            fillers.append(filler)
        assert run_helper(path, "--timeout", "1", answer=GOOD.encode(), timeout=20).returncode == 3
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    "reply",
    [
        "close",
        b"\x00\x00",
        _frame(b"not json"),
        _frame(b"[1]"),
        b"\x00\x00\x00\x00",
        b"\xff\xff\xff\xff" + b"{}",
        _frame(b'{"v":2,"ok":true,"result":"accept"}'),
        _frame(b'{"v":1,"ok":true}'),
        _frame(b'{"v":1,"ok":"true","result":"accept"}'),
        _frame(b'{"v":1,"ok":true,"result":"ACCEPT"}'),
        _frame(b'{"v":1,"ok":true,"result":"accept"} x'),
        _frame(b'{"v":1,"ok":true,"result":"accept","n":NaN}'),
        _frame(b'{"v":1,"ok":true,"result":"accept"'),
        _frame(b'{"v":1,"ok":false,"error":{"code":"store_unavailable","message":"x"}}'),
        _frame('{"v":1,"ok":true,"result":"accept"}'.encode("utf-16")),
    ],
    ids=[
        "closed",
        "short-header",
        "not-json",
        "not-object",
        "zero-length",
        "huge-length",
        "version-2",
        "no-result",
        "ok-string",
        "result-case",
        "trailing-garbage",
        "nan",
        "truncated-json",
        "error-reply",
        "utf16",
    ],
)
def test_unusable_replies_fail_closed(work: Path, reply: Any) -> None:
    """Anything but a well-formed v1 reply with ok=true and result=accept is a refusal."""
    with fake_agent(work, lambda request: reply) as agent:
        result = run_helper(agent.path, "--timeout", "2", answer=GOOD.encode())
    assert result.returncode in (1, 3)
    assert result.returncode != 0


def test_nothing_secret_is_printed_or_logged(work: Path, syslog: SyslogCapture) -> None:
    """Neither stdout, stderr nor syslog carry the code or the password, whatever the outcome."""
    secret_code, password = "987654", "Sup3r-Secret-Pw"
    with fake_agent(work, accept_code(GOOD)) as agent:
        log = syslog.option
        outputs = [
            run_helper(agent.path, *log, answer=secret_code.encode()),
            run_helper(agent.path, "--password-and-code", *log, answer=(password + secret_code).encode()),
            run_helper(agent.path, "--password-and-code", *log, answer=password.encode()),
            run_helper(agent.path, *log, answer=(password + secret_code).encode()),
            run_helper(work / "absent.sock", *log, answer=secret_code.encode()),
        ]
    assert [r.returncode for r in outputs] == [1, 1, 1, 1, 3]
    lines = syslog.helper_lines(expect=5)
    assert len(lines) == 5
    for text in [*lines, *(r.stdout.decode() + r.stderr.decode() for r in outputs)]:
        assert secret_code not in text and password not in text
        assert "Sup3r" not in text


def test_password_and_code_mode(work: Path) -> None:
    """The whole answer goes as password_and_code; a short or code-less answer never leaves."""
    with fake_agent(work, accept_code("pässwörd" + GOOD)) as agent:
        assert (
            run_helper(agent.path, "--password-and-code", answer=("pässwörd" + GOOD).encode()).returncode == 0
        )
        assert run_helper(agent.path, "--password-and-code", answer=b"password").returncode == 1
        assert run_helper(agent.path, "--password-and-code", answer=GOOD.encode()).returncode == 1
        assert run_helper(agent.path, "--password-and-code", answer=b"pw\0" + GOOD.encode()).returncode == 1
        assert run_helper(agent.path, "--password-and-code", answer=b"\xffpw" + GOOD.encode()).returncode == 1
        assert (
            run_helper(agent.path, "--password-and-code", answer=b"x" * 506 + GOOD.encode()).returncode == 1
        )
    assert len(agent.requests) == 1
    assert agent.requests[0]["password_and_code"] == "pässwörd" + GOOD
    assert "code" not in agent.requests[0]


def test_enrolment_modes_answer_without_reading_stdin(work: Path) -> None:
    """--enrolled / --not-enrolled ask the agent and exit 0 only on the matching explicit answer."""
    with fake_agent(work, accept_code(GOOD)) as agent:
        assert run_helper(agent.path, "--enrolled", answer=b"ignored", user="alice").returncode == 0
        assert run_helper(agent.path, "--not-enrolled", user="alice").returncode == 1
        assert run_helper(agent.path, "--enrolled", user="newcomer").returncode == 1
        assert run_helper(agent.path, "--not-enrolled", user="newcomer").returncode == 0
    assert {r["op"] for r in agent.requests} == {"enrolled"}
    assert all(set(r) == {"v", "op", "user"} for r in agent.requests)


@pytest.mark.parametrize(
    "reply",
    [
        "hang",
        "close",
        {"v": 1, "ok": True},
        {"v": 1, "ok": True, "enrolled": "no"},
        {"v": 1, "ok": False, "error": {"code": "permission", "message": "x"}},
    ],
)
def test_enrolment_modes_fail_closed(work: Path, reply: Any) -> None:
    """When the agent cannot say, neither --enrolled nor --not-enrolled exits 0 (so the
    roll-out stack falls through to the code prompt instead of letting the user in)."""
    with fake_agent(work, lambda request: reply) as agent:
        for mode in ("--enrolled", "--not-enrolled"):
            assert run_helper(agent.path, mode, "--timeout", "1", timeout=20).returncode != 0
    assert run_helper(work / "absent.sock", "--not-enrolled").returncode == 3


@pytest.mark.parametrize(
    "arguments",
    [
        ["--bogus"],
        ["--timeout"],
        ["--timeout", "abc"],
        ["--timeout", "0"],
        ["--timeout", "1000"],
        ["--code-only", "--enrolled"],
        ["--socket", "relative.sock"],
        ["extra"],
    ],
)
def test_usage_errors_exit_2(arguments: list[str]) -> None:
    """A mistake in the PAM line is a usage error (exit 2), never an acceptance."""
    result = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", str(HELPER_SOURCE), *arguments],
        input=GOOD.encode(),
        env={"PAM_USER": "alice"},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert GOOD.encode() not in result.stderr


def test_import_budget() -> None:
    """The helper imports no costly or project module (importing ``socket`` doubles the helper's start-up: docs/benchmarks.md)."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); "
        "import pam_helper.__main__; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", "-c", probe, str(REPO)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    loaded = set(result.stdout.split())
    assert loaded <= {
        "pam_helper",
        "pam_helper.__main__",
        "_socket",
        "_signal",
        "posix",
        "select",
        "time",
        "sys",
    }, loaded
    for heavy in (
        "socket",
        "json",
        "_json",
        "os",
        "argparse",
        "typing",
        "enum",
        "signal",
        "otp_agent",
        "syslog",
    ):
        assert heavy not in loaded


def test_forged_pam_user_from_unprivileged_caller_is_refused(work: Path) -> None:
    """An ordinary user running the helper with PAM_USER set to someone else gets nothing:
    the real agent answers only for the peer's own user name (SO_PEERCRED)."""
    require_root()
    with (
        local_user(work / "homes") as caller,
        local_user(work / "homes") as victim,
        real_agent(work / "agent") as agent,
    ):
        (work / "agent").chmod(0o755)
        _, victim_uri = agent.enroll(victim.name, "--type", "hotp")
        _, caller_uri = agent.enroll(caller.name, "--type", "hotp")
        from otp_agent.testing import code_for_uri

        def as_caller() -> None:
            os.setgid(caller.gid)
            os.setgroups([])
            os.setuid(caller.uid)

        # The caller runs a world-readable copy (the checkout may not be readable by others).
        script = work / "helper.py"
        shutil.copy(HELPER_SOURCE, script)
        script.chmod(0o644)
        forged = run_helper(
            agent.socket_path,
            answer=code_for_uri(victim_uri, counter=0).encode(),
            user=victim.name,
            preexec_fn=as_caller,
            script=script,
        )
        assert forged.returncode != 0
        forged_enrolled = run_helper(
            agent.socket_path, "--not-enrolled", user=victim.name, preexec_fn=as_caller, script=script
        )
        assert forged_enrolled.returncode != 0
        # The same code is still good for the victim's real login (nothing was consumed).
        assert (
            run_helper(
                agent.socket_path, answer=code_for_uri(victim_uri, counter=0).encode(), user=victim.name
            ).returncode
            == 0
        )
        # Positive control: the caller may validate its own code.
        own = run_helper(
            agent.socket_path,
            answer=code_for_uri(caller_uri, counter=0).encode(),
            user=caller.name,
            preexec_fn=as_caller,
            script=script,
        )
        assert own.returncode == 0


def test_real_agent_accept_replay_wrong(work: Path) -> None:
    """Against the real daemon: right code 0, the same code again 1 (replay), wrong code 1."""
    with real_agent(work / "agent") as agent:
        _, uri = agent.enroll("alice", "--type", "hotp")
        from otp_agent.testing import code_for_uri

        code = code_for_uri(uri, counter=0)
        assert run_helper(agent.socket_path, answer=code.encode()).returncode == 0
        assert run_helper(agent.socket_path, answer=code.encode()).returncode == 1
        wrong = "000000" if code != "000000" else "111111"
        assert run_helper(agent.socket_path, answer=wrong.encode()).returncode == 1
        events = audit_events(work / "agent" / "audit.log")
        assert all(code not in map(str, event.values()) for event in events)  # never the code


def test_password_and_code_never_says_which_part_was_wrong(work: Path, syslog: SyslogCapture) -> None:
    """Wrong password with the right code, and right password with a wrong code: the same exit
    status, the same syslog line and the same audit reason; both right: accepted."""
    require_root()
    from otp_agent.testing import code_for_uri
    from tests.pam.support import password_service

    with (
        password_service() as service,
        local_user(work / "homes") as person,
        real_agent(work / "agent", password_service=service) as agent,
    ):
        _, uri = agent.enroll(person.name, "--type", "hotp")
        right = code_for_uri(uri, counter=0)
        wrong = next(
            f"{n:06d}"
            for n in range(10**6)
            if f"{n:06d}" not in {code_for_uri(uri, counter=c) for c in range(12)}
        )
        attempts = [("x" + person.password, right), (person.password, wrong)]
        results = [
            run_helper(
                agent.socket_path,
                "--password-and-code",
                *syslog.option,
                user=person.name,
                answer=(password + code).encode(),
            )
            for password, code in attempts
        ]
        assert [r.returncode for r in results] == [1, 1]
        lines = [line.split("]: ", 1)[1] for line in syslog.helper_lines(expect=2)]
        assert len(lines) == 2 and lines[0] == lines[1]
        assert "reason=bad_password_or_code" in lines[0]
        for _ in range(100):  # the agent may write its audit line just after replying
            events = audit_events(work / "agent" / "audit.log")
            reasons = [e.get("reason") for e in events if e.get("event") == "validate"]
            if len(reasons) >= 2:
                break
            time.sleep(0.05)
        assert reasons == ["bad_password_or_code", "bad_password_or_code"]
        accepted = run_helper(
            agent.socket_path,
            "--password-and-code",
            user=person.name,
            answer=(person.password + right).encode(),
        )
        assert accepted.returncode == 0


def test_wrapper_ignores_python_environment_variables(work: Path, wrapper: Path) -> None:
    """PAM environment entries (which users can sometimes influence) cannot make the packaged
    wrapper load other code: PYTHONPATH, PYTHONSTARTUP and PYTHONINSPECT are ignored (-I)."""
    evil = work / "evil" / "pam_helper"
    evil.mkdir(parents=True)
    (evil / "__init__.py").write_text("", encoding="utf-8")
    (evil / "__main__.py").write_text("import posix\nposix._exit(0)\n", encoding="utf-8")
    (work / "startup.py").write_text("import posix\nposix._exit(0)\n", encoding="utf-8")
    with fake_agent(work, accept_code(GOOD)) as agent:
        result = run_helper(
            agent.path,
            answer=b"000000",
            wrapper=wrapper,
            env={
                "PYTHONPATH": str(work / "evil"),
                "PYTHONSTARTUP": str(work / "startup.py"),
                "PYTHONINSPECT": "1",
                "PYTHONHOME": str(work),
            },
        )
    assert result.returncode == 1
    assert len(agent.requests) == 1
