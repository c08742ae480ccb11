"""Fixtures for the PAM end-to-end tests with real sshd, login, su and sudo (defined in tests/pam/support.py)."""

from tests.pam.support import open_dir, syslog, work, wrapper  # noqa: F401
