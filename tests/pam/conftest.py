"""Fixtures for the PAM helper and PAM stack tests (defined in tests/pam/support.py)."""

from tests.pam.support import open_dir, syslog, work, wrapper  # noqa: F401
