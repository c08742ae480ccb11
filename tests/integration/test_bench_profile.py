"""bench/profile_agent.py runs and its tables add up (tiny run, no timing asserted).

The profile is what docs/benchmarks.md quotes for the accept path; this keeps the script working
as the engine changes: every acceptance it makes must be accepted (the script exits non-zero
otherwise), the layers it names must still exist, and the batched-commit experiment must leave
the shipped group commit in place.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "profile_agent.py"


def test_profile_agent_runs_and_accounts_for_every_layer() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--validations", "400"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    layers = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| \d+% \|$", out, re.M))
    for layer in (
        "account lookup (getpwnam_r through NSS)",
        "store read: the user's tokens, rows decoded",
        "HMAC of the likely factor, window, compare",
        "write + durable commit (wall: fsync wait)",
        "audit line, counters, remembered host",
    ):
        # A layer whose function was renamed would read 0.0 here.
        assert float(layers[layer]) > 0, (layer, out)
    whole_row = re.search(r"\*\*Dispatcher\.handle, whole\*\* \| \*\*([\d.]+)\*\*", out)
    assert whole_row is not None, out
    whole = float(whole_row[1])
    assert sum(float(v) for v in layers.values()) <= whole * 1.001
    batches = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [int(size) for size, _wall, _cpu in batches] == [1, 2, 8, 32], out
    assert all(float(cpu) > 0 for _size, _wall, cpu in batches)
