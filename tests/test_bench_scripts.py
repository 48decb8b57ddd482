"""The benchmarks are not run by the suite (minutes each, gigabytes of data), but each must
still load against the current code: a renamed constant or module breaks them silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))


def test_every_benchmark_is_listed() -> None:
    assert {"bench_headers.py", "bench_recheck.py", "bench_sync.py", "bench_verify.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_loads_and_shows_its_usage(script: str) -> None:
    proc = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
