"""Account names as the system spells them, and lookups that fail closed.

Owns one question: which account does a user name given by a client (sshd, login, an import file)
name?  With case-insensitive account lookups (e.g. sssd ``case_sensitive = false``) sshd passes
the name as the user typed it; ``ALICE`` must find alice's tokens rather than none, which the
roll-out policy would treat as "not enrolled".

Python's :func:`pwd.getpwnam` raises ``KeyError`` both for "no such user" and for a name service
that failed (an unreadable ``/etc/passwd``, an LDAP server down), and the second must not be
treated as the first: an account that cannot be looked up is refused, never "not enrolled".
So the lookup calls ``getpwnam_r`` itself, which tells the two apart: 0 with no entry means
"no such user", a non-zero return is an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from typing import Any

from otp_agent.errors import AccountLookupError

__all__ = ["AccountLookupError", "canonical_user"]

_BUFFER_START = 4096
_BUFFER_MAX = 1 << 20


class _Passwd(ctypes.Structure):
    _fields_ = [
        ("pw_name", ctypes.c_char_p),
        ("pw_passwd", ctypes.c_char_p),
        ("pw_uid", ctypes.c_uint),
        ("pw_gid", ctypes.c_uint),
        ("pw_gecos", ctypes.c_char_p),
        ("pw_dir", ctypes.c_char_p),
        ("pw_shell", ctypes.c_char_p),
    ]


_libc: ctypes.CDLL | None = None
_libc_lock = threading.Lock()


def _getpwnam_r() -> Any:
    global _libc
    with _libc_lock:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.getpwnam_r.argtypes = [
                ctypes.c_char_p,
                ctypes.POINTER(_Passwd),
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.POINTER(ctypes.POINTER(_Passwd)),
            ]
            _libc.getpwnam_r.restype = ctypes.c_int
        return _libc.getpwnam_r


def lookup_account(name: str) -> str | None:
    """The account's own spelling of ``name``, or None when the system has no such account.

    :raises AccountLookupError: the name service failed (not "no such user").
    """
    if "\x00" in name:
        return None
    function = _getpwnam_r()
    size = _BUFFER_START
    while True:
        entry = _Passwd()
        buffer = ctypes.create_string_buffer(size)
        result = ctypes.POINTER(_Passwd)()
        status = function(os.fsencode(name), ctypes.byref(entry), buffer, size, ctypes.byref(result))
        if status == errno.ERANGE and size < _BUFFER_MAX:
            size *= 4
            continue
        if status != 0:
            raise AccountLookupError(
                f"the account lookup failed ({errno.errorcode.get(status, status)}): "
                "refusing rather than treating the user as unknown"
            )
        if not result:
            return None
        return os.fsdecode(result.contents.pw_name)


def canonical_user(name: str) -> str:
    """The account's own spelling of ``name`` when the system knows it, else ``name`` unchanged.

    :raises AccountLookupError: the name service failed; the caller must refuse.
    """
    found = lookup_account(name)
    return name if found is None else found
