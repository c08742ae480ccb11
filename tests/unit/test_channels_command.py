"""The command channel with real programs written by the tests (Python and /bin/sh scripts)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from otp_agent.channels import Delivery, open_channel, parse_channels
from otp_agent.channels.command import STDERR_LIMIT
from otp_agent.errors import ChannelError
from otp_agent.sensitive import Secret

CODE = "730914"
PHONE = "+49151234589"

RECORDER = """
import json, os, sys
message = sys.stdin.read()
with open(sys.argv[1], "w") as out:
    json.dump({"argv": sys.argv, "env": dict(os.environ), "stdin": message, "cwd": os.getcwd()}, out)
"""


def channel(tmp_path: Path, command: list[str], **table: Any) -> Any:
    config = {"kind": "command", "command": command} | table
    return open_channel(parse_channels({"sms": config}, tmp_path)["sms"])


def script(tmp_path: Path, source: str, name: str = "program.py") -> list[str]:
    path = tmp_path / name
    path.write_text(source)
    return [sys.executable, str(path)]


def delivery(address: str = PHONE, **changes: Any) -> Delivery:
    values: dict[str, Any] = {
        "user": "alice",
        "serial": "OOB0001",
        "address": address,
        "code": Secret(CODE.encode()),
        "issuer": "Example",
        "validity_seconds": 120,
    }
    return Delivery(**(values | changes))


def refusal(call: Any) -> str:
    with pytest.raises(ChannelError) as caught:
        call()
    text = str(caught.value)
    assert CODE not in text and "\n" not in text
    return text


def gone(pid: int, within: float = 5.0) -> bool:
    """The process no longer exists, or is a zombie waiting for its (new) parent."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_the_message_goes_to_stdin_and_never_to_argv_or_environment(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    command = [*script(tmp_path, RECORDER), str(out), "--to", "{address}", "--user={user}", "{serial}"]
    channel(tmp_path, command).deliver(delivery())
    seen = json.loads(out.read_text())
    assert seen["argv"][1:] == [str(out), "--to", PHONE, "--user=alice", "OOB0001"]
    assert seen["env"] == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    assert seen["stdin"] == f"Your Example code is {CODE}. It expires in 2 minutes.\n"
    assert seen["cwd"] == "/"
    assert CODE not in json.dumps(seen["argv"]) and CODE not in json.dumps(seen["env"])


def test_a_shell_script_and_an_e_mail_address(tmp_path: Path) -> None:
    sh = tmp_path / "send.sh"
    sh.write_text(
        '#!/bin/sh\nout="$1"; shift\nprintf "%s\\n" "$@" > "$out.argv"\nenv > "$out.env"\ncat > "$out"\n'
    )
    sh.chmod(0o755)
    out = tmp_path / "out"
    channel(tmp_path, ["./send.sh", str(out), "{address}"], message="{user}: {code}").deliver(
        delivery("bob@example.com", user="bob")
    )
    assert out.read_text() == f"bob: {CODE}\n"
    assert out.with_suffix(".argv").read_text() == "bob@example.com\n"
    assert CODE not in out.with_suffix(".env").read_text()


def test_a_missing_or_unexecutable_program(tmp_path: Path) -> None:
    text = refusal(lambda: channel(tmp_path, [str(tmp_path / "missing"), "{address}"]).deliver(delivery()))
    assert text == f"channel sms: command {tmp_path / 'missing'}: not found"
    assert "not found" in refusal(lambda: channel(tmp_path, ["no-such-sms-program"]).deliver(delivery()))
    (tmp_path / "plain").write_text("#!/bin/sh\nexit 0\n")
    assert "not executable" in refusal(
        lambda: channel(tmp_path, [str(tmp_path / "plain")]).deliver(delivery())
    )


def test_a_failing_program_is_quoted_without_the_code(tmp_path: Path) -> None:
    source = (
        "import sys\nm = sys.stdin.read()\nsys.stderr.write('gateway said no to ' + m + '\\n')\nsys.exit(3)\n"
    )
    text = refusal(lambda: channel(tmp_path, script(tmp_path, source)).deliver(delivery()))
    assert text.endswith(
        "exited with status 3: gateway said no to Your Example code is ******. It expires in 2 minutes."
    )


def test_a_program_killed_by_a_signal(tmp_path: Path) -> None:
    source = "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n"
    assert "killed by signal 15" in refusal(
        lambda: channel(tmp_path, script(tmp_path, source)).deliver(delivery())
    )


def test_a_hanging_program_is_killed_with_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    source = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{__import__(\"os\").getpid()}} {{child.pid}}')\n"
        "sys.stderr.write('waiting for the gateway\\n'); sys.stderr.flush()\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    text = refusal(lambda: channel(tmp_path, script(tmp_path, source), timeout=1).deliver(delivery()))
    assert time.monotonic() - started < 5
    assert text.endswith("timed out after 1 s (killed): waiting for the gateway")
    program, child = (int(pid) for pid in pids.read_text().split())
    assert gone(program) and gone(child)


def test_a_program_flooding_stderr_is_cut_and_memory_stays_bounded(tmp_path: Path) -> None:
    source = (
        "import sys\n"
        "m = sys.stdin.read()\n"
        "sys.stderr.write('error: ' + m.replace('\\n', ' '))\n"
        "for _ in range(40):\n"
        "    sys.stderr.write('x' * (512 * 1024))\n"
        "sys.exit(1)\n"
    )
    flood = channel(tmp_path, script(tmp_path, source), message="{code} {code}", timeout=60)
    tracemalloc.start()
    try:
        text = refusal(lambda: flood.deliver(delivery()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    prefix = "channel sms: command " + sys.executable + ": exited with status 1: "
    assert text.startswith(prefix)
    shown = text.removeprefix(prefix)
    assert len(shown) == 200 and shown.startswith("error: ****** ****** xxx")
    assert peak < 16 * STDERR_LIMIT, peak  # while 20 MiB went through


def test_a_program_that_leaves_a_child_holding_stderr(tmp_path: Path) -> None:
    """It exits 0 while its child keeps stderr open: delivered, without waiting for the timeout."""
    pid_file = tmp_path / "child"
    source = f"import subprocess\nchild = subprocess.Popen(['sleep', '30'])\nopen({str(pid_file)!r}, 'w').write(str(child.pid))\n"
    started = time.monotonic()
    channel(tmp_path, script(tmp_path, source), timeout=20).deliver(delivery())
    assert time.monotonic() - started < 5
    os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_program_that_does_not_read_its_stdin(tmp_path: Path) -> None:
    channel(tmp_path, ["/bin/true"]).deliver(delivery())
    long = "{code}" + "x" * 1990
    assert "status 1" in refusal(lambda: channel(tmp_path, ["/bin/false"], message=long).deliver(delivery()))


def test_unsafe_values_are_refused_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = [*script(tmp_path, f"open({str(marker)!r}, 'w')\n"), "{user}", "{address}"]
    sms = channel(tmp_path, command)
    assert "could be taken for an option" in refusal(lambda: sms.deliver(delivery(user="-rf")))
    assert "the user contains a control character" in refusal(lambda: sms.deliver(delivery(user="a\nb")))
    assert "the serial contains a control character" in refusal(lambda: sms.deliver(delivery(serial="S\x00")))
    for address in ("+49 151 234589", "alice@example.com\r\nX: y", "-oQ@example.com", ""):
        assert "channel sms: " in refusal(lambda: sms.deliver(delivery(address)))
    assert not marker.exists()
    channel(tmp_path, [*command[:2], "--user={user}"]).deliver(delivery(user="-rf"))  # not at the start: fine
    assert marker.exists()
