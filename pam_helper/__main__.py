"""The pam_exec helper: one bounded, fail-closed validation request to the otp-agent daemon.

Owns: reading the answer pam_exec writes on standard input, the PAM_* variables, one request on
the agent's Unix socket (docs/protocol.md framing, implemented here), and the exit status, which
is the only thing pam_exec looks at.  Exit 0 means "accepted" (or, for the enrolment modes, that
the agent positively answered the question asked); every other outcome is non-zero:

* 1: the agent (or this helper, for an answer that cannot be a code) rejected the attempt;
* 2: bad command line;
* 3: the agent could not be asked or gave no usable answer (down, hanging, protocol error).

It must not decide anything itself, print anything useful to an attacker, or let a code or a
password reach a log, an exception text or argv.  Failures go to syslog (facility authpriv) with
the user, the service and the reason only, written the way glibc's syslog(3) writes them, to
/dev/log or to ``--syslog-socket PATH`` (a chroot, a container, a test).

Start-up cost is the point of this module (it runs once per login): it imports only modules
built into Debian's interpreter (``posix``, ``_socket``, ``_signal``, ``select``, ``time``), so
importing it reads no directory and loads no shared library; never ``os``, ``socket``, ``json``
or ``_json`` (a shared library: it alone cost more than the rest), ``argparse`` or
``otp_agent``.  The JSON it needs (string values out, small replies in) is implemented here,
strictly.  Run it through contrib/pam-helper (packaged as /usr/libexec/otp-agent/pam-helper), as
``python3 -I -m pam_helper``, or as ``python3 -I -S .../pam_helper/__main__.py`` (no package
import needed, but then the source is compiled at every start).
"""

import _signal  # type: ignore[import-not-found]  # no stub; ``signal`` would import enum
import _socket
import posix
import select
import sys
import time

DEFAULT_SOCKET = "/run/otp-agent/agent.sock"
DEFAULT_SYSLOG_SOCKET = "/dev/log"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 60.0
#: pam_exec copies the answer into a PAM_MAX_RESP_SIZE (512) buffer: at most 511 bytes arrive.
MAX_ANSWER = 511
#: The agent's protocol as the helper speaks it (it cannot import otp_agent.wire; a test pins
#: these to that module): version, reply size cap, operations, request fields and verdicts.
PROTOCOL_VERSION = 1
MAX_REPLY = 65536
OP_VALIDATE, OP_ENROLLED, OP_SEND, OP_REMEMBERED = "validate", "enrolled", "send", "remembered"
FIELD_USER, FIELD_CODE, FIELD_PASSWORD_AND_CODE = "user", "code", "password_and_code"
RESULT_ACCEPT, RESULT_REJECT = "accept", "reject"
#: Seconds between connection attempts while the agent's listen backlog is full.
_BACKLOG_RETRY = 0.005
CODE_DIGITS = (6, 8)
#: Backup codes (the agent's otp_agent.backup; a test pins these): ten letters of this alphabet,
#: any case, separators optional; printed ``xxxx-xxxx-xx``.  Never digits, so never a code.
BACKUP_ALPHABET = "abcdefghjkmnpqrstuvwxyz"
BACKUP_LENGTH = 10
BACKUP_PRINTED_LENGTH = 12
_BACKUP_LETTERS = frozenset((BACKUP_ALPHABET + BACKUP_ALPHABET.upper()).encode())

EXIT_ACCEPT = 0
EXIT_REJECT = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

MODES = ("--code-only", "--password-and-code", "--enrolled", "--not-enrolled", "--send-code", "--remembered")
USAGE = (
    "usage: pam-helper [--socket PATH] [--timeout SECONDS] [--syslog-socket PATH] [--tell-user]"
    " [--code-only | --password-and-code | --enrolled | --not-enrolled | --send-code | --remembered]\n"
)
#: ``--tell-user``: the one line shown (through pam_exec's ``stdout``) for a refusal whose reason
#: the user may know.  Nothing else is ever told: not which part of a password+code answer was
#: wrong (the agent says only bad_password_or_code), not whether the user exists or is enrolled.
TOLD = {
    "locked": "too many failed attempts: try again in {retry_after} s",
    "replay": "this code was already used: wait for the next one",
    "expired": "this code has expired: ask for a new one",
}

#: Untrusted PAM items: (environment name, request field, byte limit).
_CONTEXT = ((b"PAM_SERVICE", "service", 64), (b"PAM_RHOST", "rhost", 255), (b"PAM_TTY", "tty", 64))
_USER_LIMIT = 256
_WORD = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")


class Failure(Exception):
    """Why the helper exits non-zero: an exit status and a log line free of secrets."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class Options:
    """The parsed command line."""

    def __init__(
        self, mode: str, socket_path: str, timeout: float, syslog_path: str, tell_user: bool = False
    ) -> None:
        self.mode = mode
        self.socket_path = socket_path
        self.timeout = timeout
        self.syslog_path = syslog_path
        self.tell_user = tell_user


def parse_args(argv: list[str]) -> Options:
    """Parse the helper's options (no argparse: it costs more than the whole helper).

    :raises Failure: with EXIT_USAGE for an unknown option or a bad value.
    """
    mode = "--code-only"
    timeout = DEFAULT_TIMEOUT
    paths = {"--socket": DEFAULT_SOCKET, "--syslog-socket": DEFAULT_SYSLOG_SOCKET}
    modes_seen = 0
    tell_user = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        value = None
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        if arg in MODES and value is None:
            mode = arg
            modes_seen += 1
        elif arg == "--tell-user" and value is None:
            tell_user = True
        elif arg in ("--socket", "--syslog-socket", "--timeout"):
            if value is None:
                if not args:
                    raise Failure(EXIT_USAGE, f"option {arg} needs a value")
                value = args.pop(0)
            if arg in paths:
                if not value.startswith("/") or "\0" in value or len(value.encode()) > 107:
                    raise Failure(EXIT_USAGE, f"{arg} needs an absolute path of at most 107 bytes")
                paths[arg] = value
            else:
                try:
                    timeout = float(value)
                except ValueError:
                    raise Failure(EXIT_USAGE, "--timeout needs a number of seconds") from None
                if not 0.1 <= timeout <= MAX_TIMEOUT:
                    raise Failure(EXIT_USAGE, f"--timeout must be between 0.1 and {MAX_TIMEOUT:g}")
        else:
            raise Failure(EXIT_USAGE, "unknown argument")
    if modes_seen > 1:
        raise Failure(EXIT_USAGE, "give at most one mode")
    return Options(mode, paths["--socket"], timeout, paths["--syslog-socket"], tell_user)


def clean_text(raw: bytes, limit: int) -> str | None:
    """Return ``raw`` as text if it is non-empty UTF-8 of at most ``limit`` bytes with no control
    character (C0, DEL, C1); ``None`` otherwise."""
    if not raw or len(raw) > limit:
        return None
    try:
        text = raw.decode("utf-8", "strict")
    except UnicodeDecodeError:
        return None
    for char in text:
        point = ord(char)
        if point < 0x20 or 0x7F <= point <= 0x9F:
            return None
    return text


def pam_items(environ: dict[bytes, bytes]) -> tuple[str, dict[str, str], list[str]]:
    """Read PAM_USER and the context items from pam_exec's environment.

    Every value is a claim, not a fact (the daemon decides with the peer's credentials).  The user
    must be clean or the attempt fails; a malformed context item is dropped and named in the
    returned list of notes.

    :raises Failure: with EXIT_REJECT when PAM_USER is missing or malformed.
    """
    user = clean_text(environ.get(b"PAM_USER", b""), _USER_LIMIT)
    if user is None:
        raise Failure(EXIT_REJECT, "PAM_USER is missing or malformed")
    context: dict[str, str] = {}
    notes: list[str] = []
    for env_name, field, limit in _CONTEXT:
        raw = environ.get(env_name)
        if raw is None or raw == b"":
            continue
        value = clean_text(raw, limit)
        if value is None:
            notes.append(f"ignored malformed {env_name.decode('ascii')}")
        else:
            context[field] = value
    return user, context, notes


def read_answer(deadline: float, fd: int = 0) -> bytes:
    """Read what pam_exec wrote on ``fd`` (the answer, no newline, then EOF), at most 512 bytes.

    A trailing NUL and a trailing newline (``\\n`` or ``\\r\\n``) are tolerated and removed.

    :raises Failure: EXIT_REJECT for an over-long answer; EXIT_UNAVAILABLE when the writer does
        not close the pipe before the deadline.
    """
    data = b""
    while len(data) <= MAX_ANSWER:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failure(EXIT_UNAVAILABLE, "timed out reading the answer on standard input")
        try:
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = posix.read(fd, MAX_ANSWER + 1 - len(data))
        except OSError:
            break  # No usable standard input: same as an empty answer.
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_ANSWER:
        raise Failure(EXIT_REJECT, f"answer longer than {MAX_ANSWER} bytes")
    data = data.rstrip(b"\0")
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data


def is_backup_code(answer: bytes) -> bool:
    """True when the answer has the shape of a backup code (the agent decides whether it is one)."""
    if len(answer) > 2 * BACKUP_LENGTH:
        return False
    letters = answer.replace(b"-", b"").replace(b" ", b"")
    return len(letters) == BACKUP_LENGTH and all(byte in _BACKUP_LETTERS for byte in letters)


def _backup_tail(answer: bytes) -> bool:
    """True when the answer ends with a backup code: printed (``xxxx-xxxx-xx``) or bare."""
    printed = answer[-BACKUP_PRINTED_LENGTH:]
    if (
        len(answer) > BACKUP_PRINTED_LENGTH
        and printed[4:5] == printed[9:10] == b"-"
        and is_backup_code(printed)
        and printed.count(b"-") == 2
    ):
        return True
    bare = answer[-BACKUP_LENGTH:]
    return len(answer) > BACKUP_LENGTH and bare.isalpha() and is_backup_code(bare)


def code_field(answer: bytes) -> str:
    """Check that the answer can be a code (6 to 8 ASCII digits) or a backup code; return it.

    :raises Failure: with EXIT_REJECT and a reason that does not contain the answer.
    """
    if not answer:
        raise Failure(EXIT_REJECT, "empty answer")
    if is_backup_code(answer):
        return answer.decode("ascii")
    if not answer.isdigit() or not CODE_DIGITS[0] <= len(answer) <= CODE_DIGITS[1]:
        raise Failure(EXIT_REJECT, "answer is not a 6- to 8-digit code nor a backup code")
    return answer.decode("ascii")


def password_and_code_field(answer: bytes) -> str:
    """Check that the answer can be a password immediately followed by a code, and return it.

    :raises Failure: with EXIT_REJECT and a reason that does not contain the answer.
    """
    if not answer:
        raise Failure(EXIT_REJECT, "empty answer")
    if b"\0" in answer:
        raise Failure(EXIT_REJECT, "answer contains a NUL byte")
    digits_tail = len(answer) > CODE_DIGITS[0] and answer[-CODE_DIGITS[0] :].isdigit()
    if not digits_tail and not _backup_tail(answer):
        raise Failure(EXIT_REJECT, "answer is not a password followed by a code")
    try:
        return answer.decode("utf-8", "strict")
    except UnicodeDecodeError:
        raise Failure(EXIT_REJECT, "answer is not UTF-8") from None


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_DEPTH = 16


def json_string(text: str) -> str:
    """Quote ``text`` as a JSON string made of printable ASCII only (non-ASCII as \\u escapes)."""
    out = ['"']
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif " " <= char <= "~":
            out.append(char)
        else:
            point = ord(char)
            if point > 0xFFFF:
                point -= 0x10000
                out.append(f"\\u{0xD800 | (point >> 10):04x}\\u{0xDC00 | (point & 0x3FF):04x}")
            else:
                out.append(f"\\u{point:04x}")
    out.append('"')
    return "".join(out)


def encode_request(fields: dict[str, str]) -> bytes:
    """Frame a request: 4-byte big-endian length, then a compact ASCII JSON object.

    Only string values are needed, so the encoder is :func:`json_string` (importing ``json``
    or even ``_json`` costs more than the rest of the helper).
    """
    body = (
        '{"v":'
        + str(PROTOCOL_VERSION)
        + "".join("," + json_string(k) + ":" + json_string(v) for k, v in fields.items())
        + "}"
    )
    payload = body.encode("ascii")
    return len(payload).to_bytes(4, "big") + payload


class JSONError(ValueError):
    """The reply is not strict JSON (RFC 8259 without NaN/Infinity, nesting at most 16)."""


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _hex4(text: str, pos: int) -> int:
    digits = text[pos : pos + 4]
    if len(digits) != 4 or not set(digits) <= _HEX:
        raise JSONError("bad \\u escape")
    return int(digits, 16)


def _string(text: str, pos: int) -> tuple[str, int]:
    """Parse a string whose opening quote is at ``pos - 1``."""
    out = []
    while True:
        end = pos
        while end < len(text) and text[end] not in '"\\' and text[end] >= " ":
            end += 1
        out.append(text[pos:end])
        if end >= len(text):
            raise JSONError("unterminated string")
        char = text[end]
        if char == '"':
            return "".join(out), end + 1
        if char != "\\":
            raise JSONError("control character in string")
        escape = text[end + 1 : end + 2]
        if escape == "u":
            point = _hex4(text, end + 2)
            pos = end + 6
            if 0xD800 <= point < 0xDC00 and text[pos : pos + 2] == "\\u":
                low = _hex4(text, pos + 2)
                if 0xDC00 <= low < 0xE000:
                    point = 0x10000 + ((point - 0xD800) << 10) + (low - 0xDC00)
                    pos += 6
            out.append(chr(point))
        elif escape and escape in _UNESCAPES:
            out.append(_UNESCAPES[escape])
            pos = end + 2
        else:
            raise JSONError("bad escape")


def _digits(text: str, pos: int) -> int:
    while pos < len(text) and "0" <= text[pos] <= "9":
        pos += 1
    return pos


def _number(text: str, pos: int) -> tuple[object, int]:
    start = pos
    if text[pos : pos + 1] == "-":
        pos += 1
    first = text[pos : pos + 1]
    if first == "0":
        pos += 1
    elif first and "1" <= first <= "9":
        pos = _digits(text, pos)
    else:
        raise JSONError("unexpected character")
    is_float = False
    if text[pos : pos + 1] == ".":
        after = _digits(text, pos + 1)
        if after == pos + 1:
            raise JSONError("bad fraction")
        pos, is_float = after, True
    if text[pos : pos + 1] in ("e", "E") and pos < len(text):
        pos += 1
        if text[pos : pos + 1] in ("+", "-") and pos < len(text):
            pos += 1
        after = _digits(text, pos)
        if after == pos:
            raise JSONError("bad exponent")
        pos, is_float = after, True
    token = text[start:pos]
    if not is_float:
        if len(token) > 40:
            raise JSONError("integer too long")
        return int(token), pos
    value = float(token)
    if value - value != 0.0:
        raise JSONError("non-finite number")
    return value, pos


def _value(text: str, pos: int, depth: int) -> tuple[object, int]:
    pos = _skip(text, pos)
    char = text[pos : pos + 1]
    if char == '"':
        return _string(text, pos + 1)
    if char in ("{", "[") and char:
        if depth >= _MAX_DEPTH:
            raise JSONError("nested too deeply")
        closing = "}" if char == "{" else "]"
        items: list[object] = []
        members: dict[str, object] = {}
        pos = _skip(text, pos + 1)
        if text[pos : pos + 1] == closing:
            return (members if char == "{" else items), pos + 1
        while True:
            if char == "{":
                pos = _skip(text, pos)
                if text[pos : pos + 1] != '"':
                    raise JSONError("object key is not a string")
                key, pos = _string(text, pos + 1)
                pos = _skip(text, pos)
                if text[pos : pos + 1] != ":":
                    raise JSONError("missing colon")
                members[key], pos = _value(text, pos + 1, depth + 1)
            else:
                item, pos = _value(text, pos, depth + 1)
                items.append(item)
            pos = _skip(text, pos)
            separator = text[pos : pos + 1]
            if separator == closing:
                return (members if char == "{" else items), pos + 1
            if separator != ",":
                raise JSONError("missing comma")
            pos += 1
    for literal, constant in (("true", True), ("false", False), ("null", None)):
        if text.startswith(literal, pos):
            return constant, pos + len(literal)
    return _number(text, pos)


def parse_json(text: str) -> object:
    """Parse one strict JSON document (the agent's replies are small; no ``json`` import).

    :raises JSONError: for anything that is not exactly one JSON value with optional whitespace.
    """
    value, pos = _value(text, 0, 0)
    if _skip(text, pos) != len(text):
        raise JSONError("trailing data")
    return value


def decode_reply(payload: bytes) -> dict[str, object]:
    """Parse a reply body: one UTF-8 JSON object with ``"v": 1``.

    :raises Failure: with EXIT_UNAVAILABLE for anything else.
    """
    try:
        message = parse_json(payload.decode("utf-8", "strict"))
    except (UnicodeDecodeError, JSONError):
        raise Failure(EXIT_UNAVAILABLE, "agent reply is not JSON") from None
    if not isinstance(message, dict):
        raise Failure(EXIT_UNAVAILABLE, "agent reply is not a JSON object")
    if message.get("v") != PROTOCOL_VERSION:
        raise Failure(EXIT_UNAVAILABLE, "agent reply has an unknown protocol version")
    return message


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def _recv_exact(sock: _socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise Failure(EXIT_UNAVAILABLE, "agent closed the connection without a full reply")
        data += chunk
    return data


def exchange(socket_path: str, frame: bytes, deadline: float, timeout: float) -> dict[str, object]:
    """Send one framed request and read one reply, every step bounded by ``deadline``.

    :raises Failure: with EXIT_UNAVAILABLE when the agent is missing, refuses, hangs or answers
        with something that is not a protocol reply.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(_remaining(deadline))
        while True:
            try:
                sock.connect(socket_path)
                break
            except BlockingIOError:  # EAGAIN: the agent's backlog is full; it is busy, not gone.
                if _remaining(deadline) <= _BACKLOG_RETRY:
                    raise TimeoutError from None
                time.sleep(_BACKLOG_RETRY)
        sock.settimeout(_remaining(deadline))
        sock.sendall(frame)
        length = int.from_bytes(_recv_exact(sock, 4, deadline), "big")
        if not 1 <= length <= MAX_REPLY:
            raise Failure(EXIT_UNAVAILABLE, "agent reply has a bad frame length")
        payload = _recv_exact(sock, length, deadline)
    except TimeoutError:
        raise Failure(EXIT_UNAVAILABLE, f"agent did not answer within {timeout:g} s (timeout)") from None
    except FileNotFoundError:
        raise Failure(EXIT_UNAVAILABLE, f"agent socket {socket_path} does not exist") from None
    except ConnectionRefusedError:
        raise Failure(EXIT_UNAVAILABLE, f"agent is not listening on {socket_path}") from None
    except PermissionError:
        raise Failure(EXIT_UNAVAILABLE, f"permission denied on agent socket {socket_path}") from None
    except OSError as exc:
        reason = posix.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise Failure(EXIT_UNAVAILABLE, f"agent socket {socket_path}: {reason}") from None
    finally:
        sock.close()
    return decode_reply(payload)


def _word(value: object) -> str:
    """A reason or error code from the agent, made safe for a log line."""
    if isinstance(value, str) and 0 < len(value) <= 40 and set(value) <= _WORD:
        return value
    return "?"


def judge(mode: str, reply: dict[str, object]) -> int:
    """Turn the agent's reply into the exit status; only an explicit positive answer gives 0.

    :raises Failure: with the reason for every non-zero status.
    """
    if mode == "--send-code":
        # Sent, or the user has no out-of-band token (nothing to do): 0; anything else 1, and
        # the stack line is "optional", so the code prompt follows either way.
        if reply.get("ok") is True:
            return EXIT_ACCEPT
        error = reply.get("error")
        code = _word(error.get("code")) if isinstance(error, dict) else "?"
        if code == "not_found":
            return EXIT_ACCEPT
        reason = _word(error.get("reason")) if isinstance(error, dict) and error.get("reason") else code
        raise Failure(EXIT_REJECT, f"no code sent ({reason})")
    if reply.get("ok") is not True:
        error = reply.get("error")
        code = _word(error.get("code")) if isinstance(error, dict) else "?"
        status = EXIT_REJECT if code == "permission" else EXIT_UNAVAILABLE
        raise Failure(status, f"agent refused the request (error={code})")
    if mode == "--remembered":
        if reply.get("remembered") is True:
            return EXIT_ACCEPT
        raise Failure(EXIT_REJECT, "not remembered")
    if mode in ("--enrolled", "--not-enrolled"):
        enrolled = reply.get("enrolled")
        if enrolled is not True and enrolled is not False:
            raise Failure(EXIT_UNAVAILABLE, "agent reply has no enrolled flag")
        if enrolled is (mode == "--enrolled"):
            return EXIT_ACCEPT
        raise Failure(EXIT_REJECT, "enrolled" if enrolled else "not enrolled")
    result = reply.get("result")
    if result == RESULT_ACCEPT:
        return EXIT_ACCEPT
    if result == RESULT_REJECT:
        raise Failure(EXIT_REJECT, f"rejected (reason={_word(reply.get('reason'))})")
    raise Failure(EXIT_UNAVAILABLE, "agent reply has no result")


_SEVERITY = {"LOG_ERR": 3, "LOG_WARNING": 4, "LOG_NOTICE": 5}
_LOG_AUTHPRIV = 10 << 3


def told(reply: dict[str, object]) -> str | None:
    """The line ``--tell-user`` prints for a refusal, or None when nothing may be said."""
    if reply.get("result") != RESULT_REJECT:
        return None
    reason = reply.get("reason")
    line = TOLD.get(reason) if isinstance(reason, str) else None
    if line is None:
        return None
    retry_after = reply.get("retry_after")
    if "{retry_after}" in line:
        if not isinstance(retry_after, int) or isinstance(retry_after, bool) or not 0 < retry_after < 10**7:
            return "too many failed attempts: try again later"
        return line.format(retry_after=retry_after)
    return line


def log_line(priority_name: str, text: str, path: str = DEFAULT_SYSLOG_SOCKET) -> None:
    """Send one line to the syslog socket at ``path`` (facility authpriv), as syslog(3) would.

    Never called with a code or password in ``text``.  Best effort and non-blocking: a missing
    or full log socket loses the line but never changes the outcome.
    """
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime())
    message = f"<{_LOG_AUTHPRIV | _SEVERITY[priority_name]}>{stamp} otp-pam-helper[{posix.getpid()}]: {text}"
    data = message.encode("utf-8", "replace")
    for kind, payload in ((_socket.SOCK_DGRAM, data), (_socket.SOCK_STREAM, data + b"\0")):
        try:
            sock = _socket.socket(_socket.AF_UNIX, kind)
        except OSError:
            return
        try:
            sock.settimeout(0.2)
            sock.connect(path)
            sock.send(payload)
            return
        except OSError as exc:
            if exc.errno != 91:  # EPROTOTYPE: the log socket is a stream socket, try that.
                return
        finally:
            sock.close()


def run(argv: list[str], environ: dict[bytes, bytes]) -> int:
    """Do one attempt and return the exit status; failures are logged, never raised."""
    user_label = "?"
    service_label = "?"
    notes: list[str] = []
    log_path = DEFAULT_SYSLOG_SOCKET
    try:
        options = parse_args(argv)
        log_path = options.syslog_path
        deadline = time.monotonic() + options.timeout
        # Backstop: whatever happens, the default SIGALRM action ends the process (pam_exec then
        # returns PAM_SYSTEM_ERR) shortly after the budget, long before sshd's LoginGraceTime.
        _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)
        _signal.alarm(int(options.timeout) + 2)
        user, context, notes = pam_items(environ)
        user_label = user
        service_label = context.get("service", "?")
        request = {"op": OP_VALIDATE, FIELD_USER: user}
        if options.mode == "--code-only":
            request[FIELD_CODE] = code_field(read_answer(deadline))
        elif options.mode == "--password-and-code":
            request[FIELD_PASSWORD_AND_CODE] = password_and_code_field(read_answer(deadline))
        elif options.mode == "--send-code":
            request = {"op": OP_SEND, FIELD_USER: user}
        elif options.mode == "--remembered":
            request = {"op": OP_REMEMBERED, FIELD_USER: user}
        else:
            request = {"op": OP_ENROLLED, FIELD_USER: user}
        if request["op"] in (OP_VALIDATE, OP_SEND, OP_REMEMBERED):
            request.update(context)
        reply = exchange(options.socket_path, encode_request(request), deadline, options.timeout)
        if options.tell_user and request["op"] == OP_VALIDATE and (line := told(reply)) is not None:
            try:
                sys.stdout.write(line + "\n")
            except Exception:
                pass
        status = judge(options.mode, reply)
        if notes:
            who = f"user={user_label} service={service_label}"
            log_line("LOG_WARNING", f"{who}: " + "; ".join(notes), log_path)
        return status
    except Failure as failure:
        if failure.status == EXIT_USAGE:
            try:
                sys.stderr.write(USAGE)
            except Exception:
                pass
        priority = "LOG_ERR" if failure.status in (EXIT_UNAVAILABLE, EXIT_USAGE) else "LOG_NOTICE"
        # The enrolment modes answer a question; a "no" is not worth a log line.
        if not (
            failure.status == EXIT_REJECT and failure.text in ("enrolled", "not enrolled", "not remembered")
        ):
            extra = ("; " + "; ".join(notes)) if notes else ""
            who = f"user={user_label} service={service_label}"
            log_line(priority, f"refused {who}: {failure.text}{extra}", log_path)
        return failure.status
    except BaseException as exc:  # Fail closed on anything unforeseen, without its (unsafe) text.
        log_line(
            "LOG_ERR",
            f"refused user={user_label} service={service_label}: internal error {type(exc).__name__}",
            log_path,
        )
        return EXIT_UNAVAILABLE


def main() -> int:
    """Console-script entry point: run with ``sys.argv`` and pam_exec's environment."""
    return run(sys.argv[1:], dict(posix.environ))


def exit_now(status: int) -> None:
    """Flush standard streams and end the process at once with ``status``.

    Skipping the interpreter's finalisation is safe here (every socket is already closed, nothing
    else is buffered) and saves a measurable share of the helper's cost on every login.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    posix._exit(status)


if __name__ == "__main__":
    exit_now(main())
