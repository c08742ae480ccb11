"""Figures of the packaging tests (lintian, rpmlint, systemd exposure) in pytest's summary.

Tests add lines through the ``figures`` fixture; this hook prints them at the end of every run,
so CI's log shows them without ``-s``, and also writes them to ``$OTP_AGENT_PACKAGING_REPORT``
when that is set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> list[str]:
    """A list of report lines printed in the terminal summary."""
    return pytestconfig.stash.setdefault(_FIGURES, [])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if not lines:
        return
    terminalreporter.section("otp-agent packaging figures")
    for line in lines:
        terminalreporter.write_line(line)
    target = os.environ.get("OTP_AGENT_PACKAGING_REPORT")
    if target:
        Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")
