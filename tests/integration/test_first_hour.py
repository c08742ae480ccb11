"""The traps of an administrator's first hour, each held by a test.

QR codes that scan on dark and light terminals (decoded with zbar), images of them, the issuer
an app shows, the daemon refusing to run as root over the service's files, journal lines
without a doubled prefix, and clear errors where there were tracebacks.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from otp_agent.testing import RunningAgent, running_agent
from tests.conftest import require

ZBARIMG = "/usr/bin/zbarimg"
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
#: (default foreground, default background) of the two kinds of terminal theme, as grey levels.
THEMES = {"dark": (255, 0), "light": (0, 255)}


def rasterise(text: str, theme: str, scale: int = 4) -> bytes:
    """Draw terminal output made of half blocks and SGR colours as a PGM image, in a theme.

    Only what a QR code uses is understood: SGR 0 (reset), 30 (black foreground), 47 (white
    background), the blocks U+2580, U+2584, U+2588 and spaces.
    """
    default_fg, default_bg = THEMES[theme]
    rows: list[list[int]] = []
    for line in text.splitlines():
        fg, bg = default_fg, default_bg
        top: list[int] = []
        bottom: list[int] = []
        position = 0
        for match in list(_SGR.finditer(line)) + [None]:
            end = match.start() if match else len(line)
            for char in line[position:end]:
                upper = fg if char in "\u2588\u2580" else bg
                lower = fg if char in "\u2588\u2584" else bg
                top.append(upper)
                bottom.append(lower)
            if match is None:
                break
            for code in (match.group(1) or "0").split(";"):
                if code in ("0", ""):
                    fg, bg = default_fg, default_bg
                elif code == "30":
                    fg = 0
                elif code == "47":
                    bg = 255
            position = match.end()
        if top:
            rows += [top, bottom]
    width = max(len(row) for row in rows)
    pixels = bytearray()
    for row in rows:
        padded = row + [default_bg] * (width - len(row))
        scanline = bytes(value for value in padded for _ in range(scale))
        pixels += scanline * scale
    return b"P5\n%d %d\n255\n" % (width * scale, len(rows) * scale) + bytes(pixels)


def decode(path: Path) -> list[str]:
    """What zbar finds in an image: the decoded QR payloads."""
    require(shutil.which(ZBARIMG) is not None, "zbarimg is not installed (apt-get install zbar-tools)")
    result = subprocess.run([ZBARIMG, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    return result.stdout.splitlines()


def _uri(output: str) -> str:
    match = re.search(r"otpauth://\S+", output)
    assert match is not None, output
    return match.group()


def test_terminal_qr_code_scans_on_dark_and_light_themes_and_images_too(
    agent: RunningAgent, tmp_path: Path
) -> None:
    png, svg = tmp_path / "alice.png", tmp_path / "alice.svg"
    enrolled = agent.otpctl("enroll", "alice", "--qr", "always", "--qr-png", str(png), "--qr-svg", str(svg))
    assert enrolled.returncode == 0, enrolled.stderr
    uri = _uri(enrolled.stdout)
    for theme in THEMES:
        image = tmp_path / f"terminal-{theme}.pgm"
        image.write_bytes(rasterise(enrolled.stdout, theme))
        assert decode(image) == [uri], theme
    assert decode(png) == [uri]
    assert png.stat().st_mode & 0o777 == 0o600 and svg.stat().st_mode & 0o777 == 0o600
    assert svg.read_text().lstrip().startswith("<?xml") and "<path" in svg.read_text()
    # Never over an existing file, and then no token is made for it.
    again = agent.otpctl("enroll", "bob", "--qr-png", str(png))
    assert again.returncode == 2 and "exists" in again.stderr
    assert agent.otpctl("show", "bob").returncode == 1


def test_the_old_uncoloured_rendering_fails_on_a_light_theme(tmp_path: Path) -> None:
    """The control: segno's plain half blocks scan only where the theme is dark."""
    import segno

    uri = "otpauth://totp/host:alice?secret=JBSWY3DPEHPK3PXP&issuer=host"
    plain = io.StringIO()
    segno.make(uri, error="m").terminal(out=plain, compact=True)
    found = {}
    for theme in THEMES:
        image = tmp_path / f"plain-{theme}.pgm"
        image.write_bytes(rasterise(plain.getvalue(), theme))
        found[theme] = decode(image)
    assert found == {"dark": [uri], "light": []}


def test_the_issuer_is_the_host_name_or_the_configured_one(agent: RunningAgent, tmp_path: Path) -> None:
    uri = _uri(agent.otpctl("enroll", "carol", "--qr", "never", check=True).stdout)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    assert query["issuer"] == [socket.gethostname()]
    assert urllib.parse.unquote(urllib.parse.urlparse(uri).path).startswith(f"/{socket.gethostname()}:carol")
    with running_agent(tmp_path / "named", sections={"agent": {"issuer": "Bastion Paris"}}) as named:
        uri = _uri(named.otpctl("enroll", "dave", "--qr", "never", check=True).stdout)
        assert urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["issuer"] == ["Bastion Paris"]
        explicit = _uri(
            named.otpctl("enroll", "erin", "--issuer", "ACME", "--qr", "never", check=True).stdout
        )
        assert "issuer=ACME" in explicit


def test_the_daemon_refuses_root_over_the_service_users_files(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the refusal concerns root")
    with running_agent(tmp_path / "agent") as agent:
        agent.stop()
        logs = tmp_path / "agent"
        nobody = 65534
        os.chown(logs, nobody, nobody)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "otp_agent.daemon", "--config", str(agent.config_path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.chown(logs, 0, 0)
        assert result.returncode == 2, result
        assert "refusing to run as root" in result.stderr and "belongs to nobody" in result.stderr
        assert "runuser -u nobody" in result.stderr and "Traceback" not in result.stderr


def test_journal_lines_carry_a_priority_and_no_doubled_prefix(tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    program = (
        "import logging; from otp_agent.daemon.main import _configure_logging; "
        "_configure_logging('INFO'); logging.getLogger('otp_agent.x').warning('hello %s', 1)"
    )
    with open(log, "wb") as stderr:
        stat = os.fstat(stderr.fileno())
        for journal in (f"{stat.st_dev}:{stat.st_ino}", ""):
            environment = {**os.environ, "JOURNAL_STREAM": journal}
            subprocess.run(
                [sys.executable, "-c", program], stderr=stderr, env=environment, check=True, timeout=60
            )
    under_journal, plain = log.read_text().splitlines()
    assert under_journal == "<4>WARNING otp_agent.x: hello 1"
    assert re.fullmatch(r"otp-agent\[[0-9]+\]: WARNING otp_agent\.x: hello 1", plain)


def test_make_zmk_into_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "otp_agent.payshield_sim.main",
            "--lmk-file",
            str(tmp_path / "lmk.hex"),
            "--make-zmk",
            str(tmp_path / "missing"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "is not a directory" in result.stderr, result
    assert "Traceback" not in result.stderr
