"""Fixtures of the fault suite: the figure reporter and the end-of-session summary.

Each test reports one line or more ("faults: races 200 rounds x 8 processes: ..."), before it
asserts, so a failing run still shows what it measured.  A line is printed at once (seen with
``-s``), appended to ``faults-figures.txt`` in the session's pytest temporary directory, attached
to the test as a ``figure`` user property (JUnit XML), and repeated in a "fault suite figures"
section at the end of the terminal summary, so it is in CI's output without ``-s``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import MODE

_FIGURES: list[str] = []
_RESULTS: list[Path] = []


class Figures:
    """Reports the figures of one test."""

    def __init__(self, request: pytest.FixtureRequest, results: Path) -> None:
        self._node = request.node
        self._results = results

    def report(self, text: str) -> None:
        line = f"faults[{MODE}]: {text}"
        print(line, flush=True)
        with open(self._results, "a", encoding="utf-8") as handle:
            handle.write(f"{self._node.nodeid}\t{line}\n")
        self._node.user_properties.append(("figure", line))
        _FIGURES.append(line)


@pytest.fixture(scope="session")
def figures_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "faults-figures.txt"
    if path not in _RESULTS:
        _RESULTS.append(path)
    return path


@pytest.fixture
def figures(request: pytest.FixtureRequest, figures_file: Path) -> Figures:
    """``figures.report("races ...: 200 single acceptances, 0 double")``."""
    return Figures(request, figures_file)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for line in _FIGURES:
        terminalreporter.write_line(line)
    for path in _RESULTS:
        terminalreporter.write_line(f"(also written to {path})")
