"""The demo of the main job, on the embedded default (software keystore + SQLite).

Everything happens in a temporary directory that is removed at the end: the agent starts, a user
is enrolled (URI and QR code shown), the current code is computed the way a phone computes it,
a login goes through the real Linux-PAM stack (pam_start_confdir + pam_exec + the helper + the
agent) and is accepted, and the same code replayed is rejected.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

import pam_helper
from otp_agent.passwordcheck import check_password
from otp_agent.testing import code_for_uri, running_agent

_STACK = """\
# PAM service of the demo: the one-time code checked by otp-agent through pam_exec.
auth     [success=1 ignore=1 default=ignore]  pam_exec.so quiet expose_authtok {helper}
auth     requisite  pam_deny.so
auth     required   pam_permit.so
account  required   pam_permit.so
"""


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_demo() -> int:
    """Run the whole demo; return 0 when acceptance and replay rejection both behaved."""
    directory = Path(tempfile.mkdtemp(prefix="otp-agent-demo-"))
    directory.chmod(0o711)
    user = "alice" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    try:
        _say(f"Starting otp-agent in {directory} (software keystore + SQLite)")
        with running_agent(directory) as agent:
            print(agent.otpctl("status").stdout, end="")
            _say(
                f"Enrolling {user}: the QR code an administrator would show to the user's phone "
                "(a demo token: it is deleted with the demo in a moment, do not scan it)"
            )
            enrolled = agent.otpctl(
                "enroll", user, "--issuer", "otp-agent demo", "--qr", "always", check=True
            )
            print(enrolled.stdout, end="")
            uri = next(line for line in enrolled.stdout.splitlines() if line.startswith("otpauth://"))

            helper_script = Path(pam_helper.__file__).parent / "__main__.py"
            helper = f"{sys.executable} -I -S {helper_script} --socket {agent.socket_path} --code-only"
            confdir = directory / "pam.d"
            confdir.mkdir()
            (confdir / "otp-agent-demo").write_text(_STACK.format(helper=helper))
            _say(
                f"PAM service otp-agent-demo (through pam_start_confdir):\n{(confdir / 'otp-agent-demo').read_text()}"
            )

            code = code_for_uri(uri)
            _say(f"The phone shows {code}; logging in as {user} through Linux-PAM")
            accepted = check_password(
                user, code, service="otp-agent-demo", confdir=str(confdir), check_account=True, timeout=15
            )
            print("PAM_SUCCESS: login accepted" if accepted else "login REJECTED (unexpected)")

            _say(f"Replaying the same code {code}")
            replayed = check_password(
                user, code, service="otp-agent-demo", confdir=str(confdir), check_account=True, timeout=15
            )
            print("login REJECTED: replay refused" if not replayed else "replay ACCEPTED (unexpected)")
        _say("The agent stopped; its audit log (no codes, no secrets):")
        print((directory / "audit.log").read_text(), end="")
        ok = accepted and not replayed
        _say("Demo " + ("succeeded." if ok else "FAILED."))
        return 0 if ok else 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_demo())
