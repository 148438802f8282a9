"""Smoke test of the capacity bench: the quick ramp runs end to end and meets its targets.

It runs ``bench/capacity.py --quick`` as a user would (serve, the load
generator, the counting receiver and the naive baseline as real processes
on loopback) and checks the table it prints: both implementations carried
10 and 20 calls with no frame dropped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _rows(stdout: str) -> dict[tuple[str, int], list[str]]:
    rows: dict[tuple[str, int], list[str]] = {}
    for line in stdout.splitlines():
        for impl in ("serve (batched)", "naive per-call"):
            if line.startswith(impl):
                cells = line[len(impl) :].split()
                rows[(impl, int(cells[0]))] = cells
    return rows


def test_quick_ramp_prints_the_table_with_zero_drops() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "capacity.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(result.stdout)
    assert set(rows) == {
        ("serve (batched)", 10),
        ("naive per-call", 10),
        ("serve (batched)", 20),
        ("naive per-call", 20),
    }, result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("impl"))
    # the rows' cells start at N; the header's at "impl"
    dropped = header.replace("CPU %", "CPU%").replace("sys %", "sys%").split().index("dropped") - 1
    for key, cells in rows.items():
        assert cells[dropped] == "0", f"{key}: frames dropped at small N\n{result.stdout}"
    assert "batching gain" in result.stdout
    assert "RSS over the window" in result.stdout
