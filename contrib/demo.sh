#!/bin/sh
# The otp-agent demo on the embedded default (software keystore + SQLite, temporary directory):
# agent up, user enrolled, QR code shown, a login through the real PAM stack accepted, its replay
# rejected.  Needs only python3 (as root it installs python3-venv if missing).
set -eu
cd "$(dirname "$0")/.."
. ./.ci/bootstrap.sh
otp_bootstrap ""
exec .venv/bin/python -m otp_agent.demo
