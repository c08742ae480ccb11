"""The peers' state files read by otp_agent.migration, against the peers' own programs.

References: files written by Debian's ``google-authenticator`` binary (and updated by the real
pam_google_authenticator module through PAM, as root), users.oath lines updated by the real
liboath (``oath_authenticate_usersfile`` through ctypes), and codes computed by ``oathtool``.
A missing program skips on a developer machine and fails under CI=true.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import hmac
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otp_agent.config import PolicyConfig
from otp_agent.errors import MigrationRefused, OtpAgentError
from otp_agent.migration import FORMATS, Migration, read_google_authenticator, read_users_oath
from otp_agent.oath import codes_for, time_step
from otp_agent.wire import TokenRecord
from tests.conftest import require

POLICY = PolicyConfig()
KEY = "3132333435363738393031323334353637383930"  # RFC 4226's 20-byte secret, in hex
KEY2 = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
KEY3 = "00112233445566778899aabbccddeeff00112233"
NEW_YEAR = 1767261600  # 2026-01-01 10:00:00 UTC
OATH_OK, OATH_INVALID_OTP, OATH_REPLAYED_OTP = 0, -6, -7


# --------------------------------------------------------------------------- helpers


def program(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def oathtool(*args: str) -> str:
    result = subprocess.run([program("oathtool"), *args], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def google_authenticator(path: Path, *args: str) -> bytes:
    """A file written by the real google-authenticator binary (non-interactive)."""
    subprocess.run(
        [program("google-authenticator"), "-f", "-q", "-s", str(path), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    return path.read_bytes()


def secret_of(record: TokenRecord) -> bytes:
    assert record.secret_b64 is not None
    return base64.b64decode(record.secret_b64, validate=True)


def code(record: TokenRecord, factor: int) -> str:
    """The code of ``factor`` (counter or time step) for the record's secret and digits."""
    secret = secret_of(record)
    return codes_for(
        lambda messages: [hmac.new(secret, m, "sha1").digest() for m in messages], [factor], record.digits
    )[0]


def totp_now(record: TokenRecord, unix: int) -> str:
    return code(record, time_step(unix, record.period) + record.drift)


def only(migration: Migration) -> TokenRecord:
    assert len(migration.records) == 1
    return migration.records[0]


def refused(excinfo: pytest.ExceptionInfo[MigrationRefused]) -> str:
    """Everything a refusal shows: its message and each problem."""
    return "\n".join([str(excinfo.value), *excinfo.value.problems])


def everything_shown(migration: Migration) -> str:
    return "\n".join([repr(migration), *migration.warnings])


def ga(text: str, user: str = "alice", **policy: Any) -> Migration:
    return read_google_authenticator(
        text.encode(), user, policy=PolicyConfig(**policy) if policy else POLICY, source_name="ga"
    )


def oath(text: str, timezone_offset: Callable[[float], float] | None = None) -> Migration:
    return read_users_oath(
        text.encode(), policy=POLICY, source_name="users.oath", timezone_offset=timezone_offset
    )


def utc(wall: float) -> float:
    return 0.0


# --------------------------------------------------------------------------- google-authenticator


def test_totp_file_written_by_google_authenticator(tmp_path: Path) -> None:
    data = google_authenticator(tmp_path / "ga", "-t", "-d", "-r", "3", "-R", "30", "-w", "3", "-e", "5")
    lines = data.decode().splitlines()
    assert '" DISALLOW_REUSE' in lines and '" RATE_LIMIT 3 30' in lines
    migration = read_google_authenticator(data, "alice", policy=POLICY, source_name="/home/alice/.ga")
    record = only(migration)
    assert migration.source == "google-authenticator" == FORMATS[0]
    assert re.fullmatch(r"OATO[0-9]{8}", record.serial)
    assert (record.type, record.algorithm, record.digits, record.period, record.t0) == (
        "totp",
        "sha1",
        6,
        30,
        0,
    )
    assert (record.user, record.issuer, record.drift, record.counter, record.last_step) == (
        "alice",
        None,
        0,
        0,
        None,
    )
    assert secret_of(record) == base64.b32decode(lines[0] + "=" * (-len(lines[0]) % 8))
    assert len(secret_of(record)) == 16  # this version's google-authenticator: 128 bits
    for moment in (NEW_YEAR, NEW_YEAR + 29, NEW_YEAR + 30, 1_900_000_000):
        assert totp_now(record, moment) == oathtool("--totp", "-s", "30", "-N", f"@{moment}", "-b", lines[0])
    assert migration.scratch_codes == {"alice": tuple(lines[-5:])}
    assert all(re.fullmatch(r"[1-9][0-9]{7}", c) for c in migration.scratch_codes["alice"])
    assert len(migration.warnings) == 2
    rate, short = migration.warnings
    assert rate.startswith("/home/alice/.ga line 2: RATE_LIMIT (3 logins per 30 s)")
    assert "lock after 5 wrong codes" in rate
    assert record.serial in short and "16-byte" in short and short.startswith("/home/alice/.ga line 1:")
    shown = everything_shown(migration)
    assert record.secret_b64 is not None
    assert lines[0] not in shown and record.secret_b64 not in shown
    assert not any(c in shown for c in migration.scratch_codes["alice"])


def test_hotp_file_written_by_google_authenticator(tmp_path: Path) -> None:
    data = google_authenticator(tmp_path / "ga", "-c", "-w", "5", "-u", "-e", "2")
    lines = data.decode().splitlines()
    assert '" HOTP_COUNTER 1' in lines
    migration = read_google_authenticator(data, "bob", policy=POLICY)
    record = only(migration)
    assert re.fullmatch(r"OAHO[0-9]{8}", record.serial)
    assert (record.type, record.digits, record.counter, record.last_step) == ("hotp", 6, 1, None)
    hex_secret = secret_of(record).hex()
    for counter in (1, 2, 7):
        assert code(record, counter) == oathtool("-c", str(counter), hex_secret)
    assert oathtool("-c", "1", "-b", lines[0]) == code(record, record.counter)
    assert migration.scratch_codes == {"bob": tuple(lines[-2:])}
    window = [w for w in migration.warnings if "WINDOW_SIZE" in w]
    assert window == [
        "FILE line 2: WINDOW_SIZE 5: the module accepted the codes of 5 counters from the expected "
        "one; otp-agent's policy applies instead (11 counters: hotp_lookahead = 10)"
    ]
    same_window = read_google_authenticator(data, "bob", policy=PolicyConfig(hotp_lookahead=4))
    assert not any("WINDOW_SIZE" in w for w in same_window.warnings)


def test_step_size_60_file_written_by_google_authenticator(tmp_path: Path) -> None:
    data = google_authenticator(tmp_path / "ga", "-t", "-D", "-S", "60", "-w", "17", "-u", "-e", "10")
    lines = data.decode().splitlines()
    assert '" STEP_SIZE 60' in lines and '" WINDOW_SIZE 17' in lines
    migration = read_google_authenticator(data, "carol", policy=POLICY)
    record = only(migration)
    assert (record.period, record.last_step) == (60, None)
    for moment in (NEW_YEAR, NEW_YEAR + 59, NEW_YEAR + 60):
        assert totp_now(record, moment) == oathtool("--totp", "-s", "60", "-N", f"@{moment}", "-b", lines[0])
    assert totp_now(record, NEW_YEAR) != oathtool(
        "--totp", "-s", "30", "-N", f"@{NEW_YEAR + 30}", "-b", lines[0]
    )
    assert len(migration.scratch_codes["carol"]) == 10
    assert any(
        "WINDOW_SIZE 17: the module accepted 17 codes" in w and "3 codes" in w for w in migration.warnings
    )
    assert any("DISALLOW_REUSE is absent" in w for w in migration.warnings)
    wide = read_google_authenticator(data, "carol", policy=PolicyConfig(totp_window=8))
    assert not any("WINDOW_SIZE" in w for w in wide.warnings)


@contextlib.contextmanager
def pam_google_authenticator(directory: Path, options: str = "") -> Iterator[str]:
    """A temporary PAM service running the real module on ``directory``/USER (needs root)."""
    from tests.pam.support import pam_service, require_root

    require_root()
    modules = [
        Path(d) / "security" / "pam_google_authenticator.so"
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/security")
    ]
    require(
        any(m.exists() for m in modules),
        "pam_google_authenticator is not installed (libpam-google-authenticator)",
    )
    line = f"auth required pam_google_authenticator.so secret={directory}/${{USER}} {options}\n"
    with pam_service(line) as name:
        yield name


def _login(service: str, answer: str, rhost: str | None = None) -> int:
    from tests.pam.support import pam_transaction

    items = {4: rhost} if rhost else None  # PAM_RHOST
    return pam_transaction(service, "root", [answer], items=items, account=False, setcred=False).authenticate


def test_state_written_by_the_google_authenticator_module(tmp_path: Path) -> None:
    """A used code (DISALLOW_REUSE), a used scratch code and a grace-period entry, as the real
    module writes them, become the last used step, a shorter code list and a warning."""
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    path = directory / "root"
    google_authenticator(path, "-t", "-d", "-r", "3", "-R", "30", "-w", "3", "-e", "3")
    before = read_google_authenticator(path.read_bytes(), "root", policy=POLICY)
    record = only(before)
    scratch = before.scratch_codes["root"]
    with pam_google_authenticator(directory, "grace_period=600") as service:
        step = time_step(time.time(), 30)
        assert _login(service, code(record, step), rhost="client.example") == 0
        assert _login(service, scratch[1]) == 0
        assert _login(service, code(record, step)) != 0  # the module refuses the replay
    text = path.read_text()
    assert f'" DISALLOW_REUSE {step}' in text and '" LAST0 client.example ' in text
    after = read_google_authenticator(path.read_bytes(), "root", policy=POLICY)
    migrated = only(after)
    assert migrated.last_step == step
    assert secret_of(migrated) == secret_of(record)
    assert after.scratch_codes["root"] == (scratch[0], scratch[2])
    assert any("grace-period state (LAST0 to LAST9: 1 recent login)" in w for w in after.warnings)
    assert any("RATE_LIMIT (3 logins per 30 s)" in w for w in after.warnings)


def test_time_skew_learnt_by_the_google_authenticator_module(tmp_path: Path) -> None:
    """Three codes from a phone 100 s late (1-second steps): the module first keeps them in
    RESETTING_TIME_SKEW (not carried over), then sets TIME_SKEW -100, the token's drift."""
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    path = directory / "root"
    google_authenticator(path, "-t", "-D", "-u", "-S", "1", "-w", "3", "-e", "1")
    record = only(read_google_authenticator(path.read_bytes(), "root", policy=POLICY))
    results = []
    halfway = None
    with pam_google_authenticator(directory) as service:
        for attempt in range(3):
            time.sleep(1.2 - time.time() % 1)  # each attempt in a later one-second step
            results.append(_login(service, code(record, int(time.time()) - 100)))
            if attempt == 1:
                halfway = read_google_authenticator(path.read_bytes(), "root", policy=POLICY)
    assert results[0] != 0 and results[1] != 0 and results[2] == 0
    assert halfway is not None and only(halfway).drift == 0
    assert any("RESETTING_TIME_SKEW" in w and "not carried over" in w for w in halfway.warnings)
    assert '" TIME_SKEW -100' in path.read_text()
    learnt = read_google_authenticator(path.read_bytes(), "root", policy=POLICY)
    migrated = only(learnt)
    assert (migrated.period, migrated.drift) == (1, -100)
    assert totp_now(migrated, NEW_YEAR) == oathtool(
        "--totp", "-s", "1", "-N", f"@{NEW_YEAR - 100}", secret_of(migrated).hex()
    )
    assert not any("RESETTING_TIME_SKEW" in w for w in learnt.warnings)
    assert any("TIME_SKEW -100" in w and "totp_max_drift (4)" in w for w in learnt.warnings)
    assert not any(
        "TIME_SKEW" in w
        for w in read_google_authenticator(
            path.read_bytes(), "root", policy=PolicyConfig(totp_max_drift=100)
        ).warnings
    )


SECRET32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # the RFC 4226 secret in base32


def test_disallow_reuse_skew_and_unknown_options() -> None:
    migration = ga(
        f'{SECRET32}\n" TOTP_AUTH\n" DISALLOW_REUSE 59000001 59000007 59000003\n" TIME_SKEW -3\n'
        '" TIME_STEP_SIZE 60\n" WINDOW_SIZE 3\n'
    )
    record = only(migration)
    assert (record.last_step, record.drift, record.period) == (59000007, -3, 30)
    assert secret_of(record) == bytes.fromhex(KEY)
    assert migration.warnings == (
        "ga line 5: unknown option 'TIME_STEP_SIZE' is ignored (the module ignores it too)",
    )
    assert migration.scratch_codes == {}


def test_the_first_option_line_wins_like_the_module() -> None:
    migration = ga(f'{SECRET32}\n" TOTP_AUTH\n" STEP_SIZE 60\n" DISALLOW_REUSE\n" STEP_SIZE 30\n')
    assert only(migration).period == 60
    assert migration.warnings == (
        "ga line 5: option STEP_SIZE appears again (first on line 3); the module reads only the first, and so does the import",
    )


def test_large_time_skew_is_kept_with_a_warning_or_refused_past_1000() -> None:
    migration = ga(f'{SECRET32}\n" TOTP_AUTH\n" DISALLOW_REUSE\n" TIME_SKEW 9\n')
    assert only(migration).drift == 9
    assert len(migration.warnings) == 1 and "TIME_SKEW 9" in migration.warnings[0]
    assert ga(f'{SECRET32}\n" TOTP_AUTH\n" DISALLOW_REUSE\n" TIME_SKEW 4\n').warnings == ()
    with pytest.raises(MigrationRefused) as excinfo:
        ga(f'{SECRET32}\n" TOTP_AUTH\n" TIME_SKEW -1001\n')
    assert excinfo.value.problems == [
        "ga line 3: TIME_SKEW -1001 is beyond the 1000 time steps otp-agent accepts"
    ]


def test_transient_and_grace_state_is_named_in_warnings() -> None:
    migration = ga(
        f'{SECRET32}\n" RESETTING_TIME_SKEW 59000001-40 59000002-40\n" LAST0 10.0.0.1 1767261600\n'
        '" LAST1 host.example 1767261700\n" TOTP_AUTH\n" DISALLOW_REUSE\n'
    )
    assert only(migration).drift == 0
    assert [w.split(":")[0] for w in migration.warnings] == ["ga line 3", "ga line 2"]
    assert "2 recent logins" in migration.warnings[0] and "no grace period" in migration.warnings[0]
    assert "RESETTING_TIME_SKEW" in migration.warnings[1]
    quiet = ga(f'{SECRET32}\n" RESETTING_TIME_SKEW \n" TOTP_AUTH\n" DISALLOW_REUSE\n')
    assert quiet.warnings == ()  # the module leaves the line empty once the skew is set


def test_hotp_counter_wins_over_totp_auth_and_totp_options_are_ignored() -> None:
    migration = ga(f'{SECRET32}\n" HOTP_COUNTER 42\n" TOTP_AUTH\n" DISALLOW_REUSE 5\n" WINDOW_SIZE 11\n')
    record = only(migration)
    assert (record.type, record.counter, record.last_step) == ("hotp", 42, None)
    assert code(record, 42) == oathtool("-c", "42", KEY)
    assert migration.warnings == (
        "ga line 3: TOTP_AUTH and HOTP_COUNTER are both present: the module uses the counter (HOTP), and so does the import",
        "ga line 4: DISALLOW_REUSE has no effect on a counter-based token (nor in the module); ignored",
    )


def test_base32_is_decoded_the_module_way() -> None:
    spaced = ga('jbsw y3dp-ehpk 3pxp\n" TOTP_AUTH\n" DISALLOW_REUSE\n')
    mistyped = ga('J8SWY3DPEHPK3PXP\n" TOTP_AUTH\n" DISALLOW_REUSE\n')  # the module reads 8 as B
    assert secret_of(only(spaced)) == secret_of(only(mistyped)) == base64.b32decode("JBSWY3DPEHPK3PXP")
    assert len(spaced.warnings) == 1 and "10-byte secret" in spaced.warnings[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====\n" TOTP_AUTH\n',
            "ga line 1: the secret on the first line is not valid base32",
        ),
        ('JBSWY3DP\n" TOTP_AUTH\n', "ga line 1: the secret has 5 bytes; at least 10 (80 bits) are needed"),
        ('\n" TOTP_AUTH\n', "ga line 1: the first line holds no secret"),
        (
            f"{SECRET32}\n12345678\n",
            "ga: neither TOTP_AUTH nor HOTP_COUNTER is present: the module accepts no one-time code from this secret, so there is no token to migrate",
        ),
        (
            f'{SECRET32}\n" HOTP_COUNTER 0\n',
            "ga line 2: HOTP_COUNTER must be a whole number from 1 to 9223372036854775807",
        ),
        (
            f'{SECRET32}\n" TOTP_AUTH\n" WINDOW_SIZE 101\n',
            "ga line 3: WINDOW_SIZE must be a whole number from 1 to 100",
        ),
        (
            f'{SECRET32}\n" TOTP_AUTH\n" STEP_SIZE 61\n',
            "ga line 3: STEP_SIZE must be a whole number from 1 to 60",
        ),
        (
            f'{SECRET32}\n" TOTP_AUTH\n" DISALLOW_REUSE 12 x\n',
            "ga line 3: DISALLOW_REUSE must list used time steps (whole numbers)",
        ),
        (
            f'{SECRET32}\n" TOTP_AUTH\n" RATE_LIMIT 0 30\n',
            "ga line 3: RATE_LIMIT is malformed (the module refuses every login with it)",
        ),
        (
            f'{SECRET32}\n" TOTP_AUTH\n01234567\n',
            "ga line 3: is neither an option line nor an 8-digit scratch code",
        ),
        (
            f'{SECRET32}\n" TOTP_AUTH\nsecret stuff\n',
            "ga line 3: is neither an option line nor an 8-digit scratch code",
        ),
    ],
)
def test_google_authenticator_refusals(text: str, problem: str) -> None:
    with pytest.raises(MigrationRefused) as excinfo:
        ga(text)
    assert excinfo.value.problems == [problem]
    assert (excinfo.value.code, excinfo.value.exit_status) == ("migration_refused", 1)
    assert isinstance(excinfo.value, OtpAgentError)
    assert "JBSWY3DP" not in refused(excinfo) and SECRET32 not in refused(excinfo)


def test_every_problem_is_collected_and_no_value_is_shown() -> None:
    with pytest.raises(MigrationRefused) as excinfo:
        ga('JBSWY3DP\n" TOTP_AUTH\n" STEP_SIZE 0\n87654321 trailing\n', user="bad user")
    assert excinfo.value.problems == [
        "ga: user name 'bad user' has a space or a character that is not printable",
        "ga line 1: the secret has 5 bytes; at least 10 (80 bits) are needed",
        "ga line 4: is neither an option line nor an 8-digit scratch code",
        "ga line 3: STEP_SIZE must be a whole number from 1 to 60",
    ]
    assert str(excinfo.value) == "ga: migration refused, nothing was imported (4 problems)"
    assert "87654321" not in refused(excinfo) and "JBSWY3DP" not in refused(excinfo)


def test_scratch_codes_keep_file_order_once_each_and_stay_out_of_repr() -> None:
    migration = ga(f'{SECRET32}\n" TOTP_AUTH\n" DISALLOW_REUSE\n55555555\n11111111\n\n55555555\n99999999\n')
    assert migration.scratch_codes == {"alice": ("55555555", "11111111", "99999999")}
    assert migration.warnings == ("ga line 7: repeats the scratch code of line 4; it is kept once",)
    shown = everything_shown(migration)
    assert "55555555" not in shown and "11111111" not in shown and SECRET32 not in shown
    with pytest.raises(TypeError):
        migration.scratch_codes["alice"] = ()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        migration.source = "other"  # type: ignore[misc]


def test_crlf_file_reads_like_lf_and_bytes_must_be_utf8() -> None:
    text = f'{SECRET32}\n" TOTP_AUTH\n" DISALLOW_REUSE 59000001\n" STEP_SIZE 60\n12345678\n'
    lf, crlf = ga(text), ga(text.replace("\n", "\r\n"))
    assert dataclasses.replace(only(lf), serial="x") == dataclasses.replace(only(crlf), serial="x")
    assert only(crlf).period == 60 and only(crlf).last_step == 59000001
    assert crlf.scratch_codes == {"alice": ("12345678",)}
    with pytest.raises(MigrationRefused) as excinfo:
        read_google_authenticator(
            f'{SECRET32}\n" TOTP_AUTH\n" LAST0 h\xe9 1\n'.encode("latin-1"), "alice", policy=POLICY
        )
    assert excinfo.value.problems == ["FILE line 3: the file is not valid UTF-8 text"]
    with pytest.raises(MigrationRefused) as excinfo:
        read_google_authenticator(b"A" * (1024 * 1024 + 1), "alice", policy=POLICY)
    assert excinfo.value.problems == ["FILE: the file has 1048577 bytes, more than the 1048576 accepted"]


# --------------------------------------------------------------------------- users.oath


@pytest.fixture
def liboath() -> Iterator[Any]:
    """liboath's oath_authenticate_usersfile, the function pam_oath calls (libpam-oath)."""
    try:
        library = ctypes.CDLL("liboath.so.0")
    except OSError:
        library = None
    require(library is not None, "liboath is not installed (libpam-oath)")
    assert library is not None
    assert library.oath_init() == OATH_OK
    function = library.oath_authenticate_usersfile
    function.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_long),
    ]
    function.restype = ctypes.c_int
    yield function
    library.oath_done()


def authenticate(function: Any, path: Path, user: str, otp: str, window: int = 5) -> int:
    """What pam_oath does for a code typed alone: the password part is empty."""
    last = ctypes.c_long(0)
    return int(function(str(path).encode(), user.encode(), otp.encode(), window, b"", ctypes.byref(last)))


@pytest.fixture(params=["UTC0", "XST-5:30"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The process's local time zone (what liboath writes and time.mktime reads): UTC, UTC+5:30."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_every_type_form_against_oathtool() -> None:
    forms = {
        "HOTP": ("hotp", 6, 30), "HOTP/E": ("hotp", 6, 30), "HOTP/E/6": ("hotp", 6, 30),
        "HOTP/E/8": ("hotp", 8, 30), "HOTP/T30": ("totp", 6, 30), "HOTP/T30/6": ("totp", 6, 30),
        "HOTP/T30/8": ("totp", 8, 30), "HOTP/T60": ("totp", 6, 60), "HOTP/T60/6": ("totp", 6, 60),
        "HOTP/T60/8": ("totp", 8, 60),
    }  # fmt: skip
    keys = [f"{index:02x}" * 20 for index in range(1, len(forms) + 1)]
    text = "".join(
        f"{kind}\tuser{index}\t-\t{key}\n" for index, (kind, key) in enumerate(zip(forms, keys, strict=True))
    )
    migration = oath(text)
    assert migration.source == "users.oath" == FORMATS[1]
    assert len(migration.records) == len(forms) and migration.warnings == () and migration.scratch_codes == {}
    assert len({r.serial for r in migration.records}) == len(forms)
    for record, (kind, (token_type, digits, period)), key in zip(
        migration.records, forms.items(), keys, strict=True
    ):
        assert (record.type, record.digits, record.period, record.algorithm) == (
            token_type,
            digits,
            period,
            "sha1",
        )
        assert (record.counter, record.drift, record.last_step, record.t0) == (0, 0, None, 0)
        assert secret_of(record).hex() == key and record.user is not None
        assert re.fullmatch(("OAHO" if token_type == "hotp" else "OATO") + r"[0-9]{8}", record.serial)
        if token_type == "hotp":
            assert code(record, 5) == oathtool("-c", "5", "-d", str(digits), key), kind
        else:
            expected = oathtool("--totp", "-s", str(period), "-d", str(digits), "-N", f"@{NEW_YEAR}", key)
            assert totp_now(record, NEW_YEAR) == expected, kind


def test_hotp_counter_state_as_liboath_writes_and_reads_it(tmp_path: Path, liboath: Any) -> None:
    path = tmp_path / "users.oath"
    path.write_text(f"HOTP\talice\t-\t{KEY}\nHOTP bob - {KEY2} 7\n# a comment\n")
    # Without field 6, liboath starts at field 5 (7): bob's code 6 fails, code 7 passes.
    assert only_user(oath(path.read_text()), "bob").counter == 7
    assert authenticate(liboath, path, "bob", oathtool("-c", "6", KEY2)) == OATH_INVALID_OTP
    assert only_user(oath(path.read_text()), "alice").counter == 0
    assert authenticate(liboath, path, "alice", oathtool("-c", "3", KEY)) == OATH_OK
    line = path.read_text().splitlines()[0].split("\t")
    assert line[:6] == ["HOTP", "alice", "-", KEY, "3", oathtool("-c", "3", KEY)]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dL", line[6])
    migrated = only_user(oath(path.read_text()), "alice")
    assert migrated.counter == 4  # field 5 is the counter of the last accepted code
    assert authenticate(liboath, path, "alice", oathtool("-c", "3", KEY)) == OATH_REPLAYED_OTP
    assert authenticate(liboath, path, "alice", oathtool("-c", "4", KEY)) == OATH_OK
    assert only_user(oath(path.read_text()), "alice").counter == 5
    assert only_user(oath(path.read_text()), "bob").counter == 7
    assert oath("HOTP/E/8 carol - " + KEY3 + " 0 12345678\n").records[0].counter == 1


def only_user(migration: Migration, user: str) -> TokenRecord:
    found = [r for r in migration.records if r.user == user]
    assert len(found) == 1
    return found[0]


def test_totp_last_step_from_a_line_liboath_wrote(tmp_path: Path, liboath: Any, local_zone: str) -> None:
    path = tmp_path / "users.oath"
    path.write_text(f"HOTP/T30\tdave\t-\t{KEY}\nHOTP/T60/8\terin\t-\t{KEY2}\n")
    now = time.time()
    for user, key, period, digits in (("dave", KEY, 30, 6), ("erin", KEY2, 60, 8)):
        sent = oathtool("--totp", "-s", str(period), "-d", str(digits), "-N", f"@{int(now) - period}", key)
        assert authenticate(liboath, path, user, sent) == OATH_OK
    migration = oath(path.read_text())
    assert only_user(migration, "dave").last_step == time_step(now, 30) - 1
    assert only_user(migration, "erin").last_step == time_step(now, 60) - 1
    assert migration.warnings == ()


def test_totp_last_step_from_fields_6_and_7_against_oathtool() -> None:
    used = NEW_YEAR - 120  # accepted two minutes before the login time written
    sent = oathtool("--totp", "-s", "60", "-d", "8", "-N", f"@{used}", KEY)
    line = f"HOTP/T60/8 frank - {KEY} 3 {sent} 2026-01-01T10:00:00L\n"
    assert only(oath(line, timezone_offset=utc)).last_step == used // 60
    in_paris = line.replace("T10:00:00L", "T11:00:00L")  # the same moment, written at UTC+1
    assert only(oath(in_paris, timezone_offset=lambda wall: 3600)).last_step == used // 60
    with pytest.raises(MigrationRefused) as excinfo:
        oath(in_paris, timezone_offset=utc)  # 62 steps away: beyond the 30 searched
    assert excinfo.value.problems[0].startswith(
        "users.oath line 1: the last one-time code (field 6) is the code of no time step"
    )
    assert sent not in refused(excinfo)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            f"HOTP/T30 gina - {KEY} 0 123456\n",
            "has a last one-time code (field 6) but no last login time (field 7)",
        ),
        (f"HOTP/T30 gina - {KEY} 0 12345678 2026-01-01T10:00:00L\n", "has 8 digits but the type says 6"),
        (
            f"HOTP/T30 gina - {KEY} 0 12a456 2026-01-01T10:00:00L\n",
            "the last one-time code (field 6) is not made of digits",
        ),
        (
            f"HOTP gina - {KEY} 0 123456 2026-01-01T10:00:00L x\n",
            "has 8 fields; a token line has at most seven",
        ),
        (f"HOTP gina - {KEY} 0 123456 2026-13-01T10:00:00L\n", "the last login time (field 7) is not a time"),
        (f"HOTP gina - {KEY} -1\n", "the counter (field 5) must be a whole number"),
        (
            f"HOTP gina - {KEY} 9223372036854775807 123456\n",
            "the counter (field 5) is beyond 9223372036854775807",
        ),
        (f"HOTP/E/7 gina - {KEY}\n", "7-digit codes: otp-agent supports 6 and 8 digits"),
        (f"HOTP/T30/7 gina - {KEY}\n", "7-digit codes: otp-agent supports 6 and 8 digits"),
        (f"HOTP/T45 gina - {KEY}\n", "type 'HOTP/T45': pam_oath reads only the periods T30 and T60"),
        (f"HOTP/T120/6 gina - {KEY}\n", "type 'HOTP/T120/6': pam_oath reads only the periods T30 and T60"),
        (f"TOTP gina - {KEY}\n", "unknown token type 'TOTP' (pam_oath skips this line)"),
        (f"hotp gina - {KEY}\n", "unknown token type 'hotp' (pam_oath skips this line)"),
        ("HOTP gina -\n", "a token line needs at least four fields"),
        (f"HOTP gina - {KEY}0\n", "the secret (field 4) is not valid hex"),
        ("HOTP gina - 3132zz3435363738393031323334353637383930\n", "the secret (field 4) is not valid hex"),
        ("HOTP gina - 313233343536373839\n", "the secret has 9 bytes; at least 10 (80 bits) are needed"),
        (f"HOTP gina\x0b - {KEY}\n", "has a space or a character that is not printable"),
        (f"HOTP {'g' * 257} - {KEY}\n", "a user name must have 1 to 256 characters"),
        ("# only a comment\n\n", "no token line found"),
    ],
)
def test_users_oath_refusals(line: str, problem: str) -> None:
    with pytest.raises(MigrationRefused) as excinfo:
        oath("# header\n" + line)
    assert len(excinfo.value.problems) == 1
    where = "users.oath: " if problem == "no token line found" else "users.oath line 2: "
    assert excinfo.value.problems[0].startswith(where) and problem in excinfo.value.problems[0]
    assert KEY not in refused(excinfo) and "123456" not in refused(excinfo)


def test_static_password_is_refused_without_being_shown() -> None:
    text = f"HOTP alice - {KEY}\nHOTP/T30 bob Sup3r-S3cret! {KEY2}\nHOTP carol + {KEY3}\n"
    with pytest.raises(MigrationRefused) as excinfo:
        oath(text)
    assert excinfo.value.problems == [
        "users.oath line 2: field 3 holds a static password, which is not migrated (otp-agent keeps "
        "no passwords): set it to '-' and keep the password in the system's password store"
    ]
    shown = refused(excinfo) + repr(excinfo.value) + repr(excinfo.value.args)
    assert "Sup3r-S3cret!" not in shown and KEY2 not in shown
    migration = oath(text.replace("Sup3r-S3cret!", "-"))
    assert [r.user for r in migration.records] == ["alice", "bob", "carol"]
    assert migration.warnings == (
        "users.oath line 3: the password field is '+' (checked by another module) on line 3: "
        "otp-agent checks the code only, so keep that password module in the PAM stack",
    )


def test_duplicates_are_refused_and_several_tokens_per_user_kept() -> None:
    two = oath(f"HOTP alice - {KEY}\nHOTP/T30 alice - {KEY2}\n")
    assert [(r.user, r.type) for r in two.records] == [("alice", "hotp"), ("alice", "totp")]
    assert two.records[0].serial != two.records[1].serial
    with pytest.raises(MigrationRefused) as excinfo:
        oath(
            f"HOTP alice - {KEY}\nHOTP/T30 bob - {KEY2}\nHOTP alice - {KEY.upper()} 5\nHOTP/T60 carol - {KEY2}\n"
        )
    assert excinfo.value.problems == [
        "users.oath line 3: the same token as line 1 (same user and secret)",
        "users.oath line 4: the same secret as line 2 (user 'bob'): otp-agent keeps one token per secret",
    ]


def test_comments_blank_lines_crlf_and_all_problems() -> None:
    text = f"# users\n\n   \n\t# indented comment\nHOTP\talice\t-\t{KEY}\t4\n  HOTP/T30 bob - {KEY2}\n"
    lf, crlf = oath(text), oath(text.replace("\n", "\r\n"))
    assert [(r.user, r.counter, r.period) for r in lf.records] == [("alice", 4, 30), ("bob", 0, 30)]
    assert [dataclasses.replace(r, serial="x") for r in lf.records] == [
        dataclasses.replace(r, serial="x") for r in crlf.records
    ]
    with pytest.raises(MigrationRefused) as excinfo:
        oath(f"HOTP/E/7 a - {KEY}\nHOTP b pw {KEY2}\nHOTP c - xyz\n")
    assert [p.split(":")[0] for p in excinfo.value.problems] == [
        "users.oath line 1",
        "users.oath line 2",
        "users.oath line 3",
    ]
    assert str(excinfo.value) == "users.oath: migration refused, nothing was imported (3 problems)"
    with pytest.raises(MigrationRefused) as excinfo:
        read_users_oath(f"HOTP alice - {KEY}\nHOTP b\xf6b - {KEY2}\n".encode("latin-1"), policy=POLICY)
    assert excinfo.value.problems == ["FILE line 2: the file is not valid UTF-8 text"]
    with pytest.raises(MigrationRefused) as excinfo:
        read_users_oath(b"#" * (1024 * 1024 + 1), policy=POLICY)
    assert "more than the 1048576 accepted" in excinfo.value.problems[0]


def test_secret_sizes_short_warned_long_warned_for_liboath() -> None:
    short, long = "a5" * 16, "5a" * 40
    migration = oath(f"HOTP alice - {short}\nHOTP/T30 bob - {long}\n")
    alice, bob = migration.records
    assert len(secret_of(alice)) == 16 and len(secret_of(bob)) == 40
    assert migration.warnings == (
        f"users.oath line 1: token {alice.serial} of user 'alice' has a 16-byte secret, shorter than "
        "the 20 bytes otp-agent asks of new tokens; it is imported so the phone keeps working: enroll "
        "a new token for this user when convenient",
        f"users.oath line 2: token {bob.serial} has a 40-byte secret, longer than the 32 bytes liboath "
        "reads: pam_oath could not have accepted its codes",
    )
    with pytest.raises(MigrationRefused) as excinfo:
        oath(f"HOTP alice - {'ab' * 129}\n")
    assert excinfo.value.problems == [
        "users.oath line 1: the secret has 129 bytes; otp-agent accepts at most 128"
    ]


def test_a_zero_hotp_counter_beside_totp_auth_is_a_totp_file_like_the_module() -> None:
    """pam_google_authenticator uses the counter only when it is above 0, else TOTP_AUTH."""
    text = b'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\n" TOTP_AUTH\n" HOTP_COUNTER 0\n" DISALLOW_REUSE\n'
    migration = read_google_authenticator(text, "alice", policy=POLICY)
    assert migration.records[0].type == "totp"
    assert any("HOTP_COUNTER is 0 or less" in w for w in migration.warnings)
    with pytest.raises(MigrationRefused):  # without TOTP_AUTH the module accepts no code at all
        read_google_authenticator(
            b'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\n" HOTP_COUNTER 0\n', "alice", policy=POLICY
        )
