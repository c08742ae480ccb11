"""A failing name service fails closed, with the real daemon and a really failing lookup.

The daemon runs as root without capabilities, in a private mount namespace whose /etc/passwd is
a copy it may not read (owned by nobody, mode 0600) and whose nsswitch.conf says ``files``: the
lookup then fails with EACCES, which is what an agent running as its own user sees when the name
service breaks.  Before the fix such an error looked like "no such user": with
``unenrolled = "allow"`` the user was let in without a code, and the roll-out stack skipped it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otp_agent.testing import RunningAgent, default_sections, start_agent, write_config
from tests.conftest import require
from tests.integration.agentclient import request
from tests.pam.support import run_helper, unshare_works


@pytest.fixture
def broken_name_service(agent_directory: Path) -> Path:
    require(
        unshare_works() and shutil.which("setpriv") is not None,
        "needs root, unshare -m and setpriv (util-linux)",
    )
    passwd = agent_directory / "passwd"
    shutil.copyfile("/etc/passwd", passwd)
    shutil.chown(passwd, 65534, 65534)
    passwd.chmod(0o600)
    (agent_directory / "nsswitch.conf").write_text("passwd: files\ngroup: files\nshadow: files\n")
    return agent_directory


def _agent(directory: Path, broken: bool) -> Iterator[RunningAgent]:
    sections = default_sections(directory)
    sections["policy"]["unenrolled"] = "allow"
    config = write_config(directory, sections)
    subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(config)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wrapper: list[str] = []
    if broken:
        script = (
            f"mount --bind {directory / 'passwd'} /etc/passwd && "
            f"mount --bind {directory / 'nsswitch.conf'} /etc/nsswitch.conf && "
            'exec setpriv --bounding-set=-all "$@"'
        )
        wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    agent = start_agent(directory, config, Path(sections["agent"]["socket"]), wrapper=wrapper)
    try:
        yield agent
    finally:
        agent.stop()


def test_lookup_error_refuses_validate_and_enrolled(broken_name_service: Path) -> None:
    for agent in _agent(broken_name_service, broken=True):
        reply = request(agent.socket_path, "validate", user="daemon", code="123456", service="sshd")
        assert (reply["result"], reply["reason"]) == ("reject", "account_lookup")
        assert request(agent.socket_path, "enrolled", user="daemon")["error"]["code"] == "account_lookup"
        # The roll-out stack's helper (--not-enrolled) must not let the user skip the code.
        helper = run_helper(agent.socket_path, "--not-enrolled", user="daemon")
        assert helper.returncode != 0
        assert "account lookup failed" in agent.log()


def test_control_the_same_agent_with_a_working_name_service_lets_the_unenrolled_in(
    broken_name_service: Path,
) -> None:
    """The control: the same policy with a working lookup accepts (so the test above can fail)."""
    for agent in _agent(broken_name_service, broken=False):
        reply = request(agent.socket_path, "validate", user="daemon", code="123456", service="sshd")
        assert (reply["result"], reply["reason"]) == ("accept", "not_enrolled")
        helper = run_helper(agent.socket_path, "--not-enrolled", user="daemon")
        assert helper.returncode == 0
