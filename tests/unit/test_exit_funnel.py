"""One error funnel per executable: the same error gives the same exit status everywhere."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import pytest

from otp_agent.cli import main as cli_main
from otp_agent.errors import (
    OS_ERROR_EXIT_STATUS,
    KeyBackendUnavailable,
    StoreError,
    UsageError,
    exit_status_of,
)
from otp_agent.testing import default_sections, write_config


@pytest.mark.parametrize(
    "error,status",
    [
        (UsageError("x"), 2),
        (StoreError("x"), 4),
        (KeyBackendUnavailable("x"), 4),
        (OSError(13, "x"), 4),
        (ValueError("x"), 1),
    ],
)
def test_exit_status_of(error: BaseException, status: int) -> None:
    assert exit_status_of(error) == status


def test_an_os_error_exits_the_same_from_otpctl_and_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = default_sections(tmp_path)
    (tmp_path / "not-a-directory").write_text("")
    sections["agent"]["socket"] = str(tmp_path / "not-a-directory" / "agent.sock")
    config = write_config(tmp_path, sections)
    subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "init", "--config", str(config)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    daemon = subprocess.run(
        [sys.executable, "-m", "otp_agent.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daemon.returncode == OS_ERROR_EXIT_STATUS, daemon.stderr

    def failing(arguments: argparse.Namespace, client: object, out: object) -> int:
        raise PermissionError(13, "Permission denied", "/some/file")

    parser = cli_main.build_parser()
    original = parser.parse_args

    def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
        namespace = original(argv)
        namespace.handler = failing
        return namespace

    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", parse_args)
    assert cli_main.main(["--config", str(config), "list"], out=io.StringIO()) == OS_ERROR_EXIT_STATUS
