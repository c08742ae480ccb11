"""Check a user's password through Linux-PAM, for the agent's password-and-code mode.

Owns one thing: running ``pam_authenticate`` on a dedicated PAM service (by default
``otp-agent-password``, shipped as contrib/pam.d/otp-agent-password, which includes Debian's
common-auth) with a conversation that answers the password prompt, and reporting yes or no.

What it must not do: log, raise or keep anything that contains the password; sleep for the PAM
failure delay (the delay is replaced by a no-op so that a wrong password and a wrong code take the
same time; the calling login stack keeps its own ``pam_faildelay``); decide anything about codes.

Privilege: pam_unix reads /etc/shadow directly only as root (or as a member of group ``shadow``);
otherwise it runs unix_chkpwd, which checks only the calling user's own password.  The daemon
must therefore run as root or in group ``shadow`` for this mode.

The PAM transaction runs in a worker thread so that a stuck module cannot hold the caller past
``timeout``: the caller then gets ``False`` and the thread is abandoned (daemon thread).  At most
:data:`MAX_TRANSACTIONS` transactions, running or abandoned, exist at once: when every slot is
held (stuck modules), further checks fail closed at once, returning ``False`` without starting a
thread, and a warning naming the service (never a password) is logged at most every
:data:`_WARNING_INTERVAL` seconds.  A slot is freed when its transaction really ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from typing import Any

__all__ = ["check_password", "PasswordCheckUnavailable"]

PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_CONV_ERR = 19
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4
PAM_SILENT = 0x8000
PAM_DISALLOW_NULL_AUTHTOK = 0x0001
PAM_TTY = 3
PAM_RHOST = 4
PAM_FAIL_DELAY = 10

_MAX_FIELD = 512

#: PAM transactions (running, or abandoned after their time-out) that may exist at once.
MAX_TRANSACTIONS = 16
_WARNING_INTERVAL = 10.0
_slots = threading.BoundedSemaphore(MAX_TRANSACTIONS)
_log = logging.getLogger("otp_agent.passwordcheck")


class PasswordCheckUnavailable(Exception):
    """libpam cannot be loaded; raised only by :func:`_library` (never carries a password)."""


class _PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(_PamMessage)),
    ctypes.POINTER(ctypes.POINTER(_PamResponse)),
    ctypes.c_void_p,
)
_DELAY_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class _PamConv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


_libs: tuple[Any, Any] | None = None
_libs_lock = threading.Lock()


def _library() -> tuple[Any, Any]:
    """Load libpam and libc once, with the prototypes used here."""
    global _libs
    with _libs_lock:
        if _libs is None:
            try:
                pam = ctypes.CDLL(ctypes.util.find_library("pam") or "libpam.so.0")
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError as exc:
                raise PasswordCheckUnavailable("cannot load libpam") from exc
            handle_p = ctypes.POINTER(ctypes.c_void_p)
            pam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_PamConv), handle_p]
            pam.pam_start.restype = ctypes.c_int
            if hasattr(pam, "pam_start_confdir"):
                pam.pam_start_confdir.argtypes = [
                    ctypes.c_char_p,
                    ctypes.c_char_p,
                    ctypes.POINTER(_PamConv),
                    ctypes.c_char_p,
                    handle_p,
                ]
                pam.pam_start_confdir.restype = ctypes.c_int
            for name in ("pam_authenticate", "pam_acct_mgmt", "pam_end"):
                getattr(pam, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
                getattr(pam, name).restype = ctypes.c_int
            pam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            pam.pam_set_item.restype = ctypes.c_int
            libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
            libc.calloc.restype = ctypes.c_void_p
            libc.malloc.argtypes = [ctypes.c_size_t]
            libc.malloc.restype = ctypes.c_void_p
            _libs = (pam, libc)
        return _libs


def _clean(value: str | None) -> bytes | None:
    """Encode a PAM item, refusing NULs, control characters and over-long values."""
    if value is None:
        return None
    if not value or len(value) > _MAX_FIELD or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("bad PAM item")
    return value.encode("utf-8")


def _transaction(
    service: bytes,
    user: bytes,
    secret: bytes,
    confdir: bytes | None,
    rhost: bytes | None,
    tty: bytes | None,
    check_account: bool,
) -> bool:
    """One PAM transaction; True only when authentication (and, if asked, the account) passed."""
    pam, libc = _library()

    def converse(n_messages: int, messages: Any, responses: Any, _appdata: Any) -> int:
        if n_messages <= 0 or n_messages > 32:
            return PAM_CONV_ERR
        array = libc.calloc(n_messages, ctypes.sizeof(_PamResponse))
        if not array:
            return PAM_BUF_ERR
        replies = ctypes.cast(array, ctypes.POINTER(_PamResponse))
        for index in range(n_messages):
            if messages[index].contents.msg_style == PAM_PROMPT_ECHO_OFF:
                buffer = libc.malloc(len(secret) + 1)
                if not buffer:
                    return PAM_BUF_ERR  # libpam frees nothing here; a tiny leak on OOM only.
                ctypes.memmove(buffer, secret, len(secret))
                ctypes.memset(buffer + len(secret), 0, 1)
                replies[index].resp = buffer
            # Other prompts get no answer; informational messages are dropped.
        responses[0] = replies
        return PAM_SUCCESS

    conv = _PamConv(_CONV_FUNC(converse), None)
    no_delay = _DELAY_FUNC(lambda _status, _usec, _appdata: None)
    handle = ctypes.c_void_p()
    if confdir is not None:
        status = pam.pam_start_confdir(service, user, ctypes.byref(conv), confdir, ctypes.byref(handle))
    else:
        status = pam.pam_start(service, user, ctypes.byref(conv), ctypes.byref(handle))
    if status != PAM_SUCCESS:
        return False
    try:
        status = pam.pam_set_item(handle, PAM_FAIL_DELAY, ctypes.cast(no_delay, ctypes.c_void_p))
        if status == PAM_SUCCESS and rhost is not None:
            status = pam.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost))
        if status == PAM_SUCCESS and tty is not None:
            status = pam.pam_set_item(handle, PAM_TTY, ctypes.c_char_p(tty))
        if status == PAM_SUCCESS:
            status = pam.pam_authenticate(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)
        if status == PAM_SUCCESS and check_account:
            status = pam.pam_acct_mgmt(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)
        return bool(status == PAM_SUCCESS)
    finally:
        pam.pam_end(handle, status)


def check_password(
    user: str,
    password: str,
    *,
    service: str = "otp-agent-password",
    timeout: float = 5.0,
    confdir: str | None = None,
    rhost: str | None = None,
    tty: str | None = None,
    check_account: bool = False,
) -> bool:
    """Return True only if PAM service ``service`` authenticates ``user`` with ``password``.

    Every failure (wrong password, unknown user, missing service, libpam missing, time-out, bad
    argument, every transaction slot held) gives ``False``; nothing is raised, and nothing is
    logged here but the (rate-limited, password-free) warning that every slot is held.  ``confdir`` uses
    ``pam_start_confdir`` (libpam >= 1.4) with a private directory of service files instead of
    /etc/pam.d, for tests.  ``check_account`` also runs the service's account stack.
    """
    try:
        arguments = (
            _clean(service),
            _clean(user),
            password.encode("utf-8"),
            _clean(confdir),
            _clean(rhost),
            _clean(tty),
            check_account,
        )
        _library()
    except (ValueError, UnicodeError, PasswordCheckUnavailable):
        return False
    if not arguments[2] or b"\0" in arguments[2] or len(arguments[2]) > _MAX_FIELD:
        return False
    if not _slots.acquire(blocking=False):
        _refused(service)
        return False
    outcome: list[bool] = []

    def work() -> None:
        try:
            outcome.append(_transaction(*arguments))  # type: ignore[arg-type]
        except Exception:
            outcome.append(False)
        finally:
            _slots.release()

    worker = threading.Thread(target=work, name="pam-password-check", daemon=True)
    try:
        worker.start()
    except RuntimeError:  # No thread can be started: the slot is not used.
        _slots.release()
        return False
    worker.join(timeout)
    return bool(outcome and outcome[0])


class _Refusals:
    """Counts checks refused for want of a slot; logs them, at most every _WARNING_INTERVAL s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._logged_at = float("-inf")

    def __call__(self, service: str) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._logged_at < _WARNING_INTERVAL:
                return
            count, self._count, self._logged_at = self._count, 0, now
        _log.warning(
            "PAM service %s: %d password checks still running (a module is stuck?); "
            "%d check(s) refused without asking PAM",
            service,
            MAX_TRANSACTIONS,
            count,
        )


_refused = _Refusals()
