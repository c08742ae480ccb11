"""Migration from the peers' state files: google-authenticator-libpam and pam_oath.

The package reads a peer's file (bytes) and returns a :class:`Migration`: the import records of
its tokens (fresh serials, secrets in base64, the peer's counter, drift and last used step
carried over), the users' scratch codes, and one warning per setting that otp-agent does not
carry over.  It is pure: it writes nothing, opens no file, store or socket; ``otpctl import``
sends the records to the agent, which seals every secret.  Any problem refuses the whole file
(:class:`~otp_agent.errors.MigrationRefused`, every problem with its line); no message holds a
secret, a scratch code, a static password or a one-time code.  docs/migration.md is the guide.
"""

from __future__ import annotations

from otp_agent.errors import MigrationRefused
from otp_agent.migration.google_authenticator import read_google_authenticator
from otp_agent.migration.model import MAX_FILE_SIZE, Migration
from otp_agent.migration.users_oath import read_users_oath

#: The format names, as ``Migration.source`` and ``otpctl import --format`` spell them.
FORMATS = ("google-authenticator", "users.oath")

__all__ = [
    "FORMATS",
    "MAX_FILE_SIZE",
    "Migration",
    "MigrationRefused",
    "read_google_authenticator",
    "read_users_oath",
]
