"""The README's first command: the main job on the embedded default, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_step_with_the_expected_exit_code(tmp_path: Path) -> None:
    volume = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "tests.demo", "--keep", str(volume)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    assert "every step gave the expected exit code" in out
    assert "Traceback" not in out
    # the corrupted shard is named, and the repair fetched only it
    assert "truncated" in out and "model-00002-of-00003.safetensors" in out
    assert "fetched 1 (" in out.rsplit("$ preflight sync", 1)[1]
    shard = volume / "models/vllm/tiny-llm/bf16/model-00002-of-00003.safetensors"
    assert (volume / "models/.preflight/ready.json").is_file()
    assert shard.stat().st_size > 0
