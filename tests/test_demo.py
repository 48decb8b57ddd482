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
    assert "fetched 1 (" in out.rsplit("preflight sync -m", 1)[1]
    shard = volume / "models/vllm/tiny-llm/bf16/model-00002-of-00003.safetensors"
    assert (volume / "models/.preflight/ready.json").is_file()
    assert shard.stat().st_size > 0


def test_what_the_kept_demo_prints_runs_as_printed(tmp_path: Path) -> None:
    """The closing commands of `--keep` work pasted as they are, in a shell with no demo
    variables (the Hub is gone), and the report line is the last sync's."""
    import shlex

    volume = tmp_path / "kept demo"
    out = subprocess.run([sys.executable, "-m", "tests.demo", "--keep", str(volume)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300).stdout
    assert "report.json (of the last sync): status=ready" in out
    printed = [line.strip() for line in out.split("these work as printed:", 1)[1].splitlines() if line.strip().startswith("preflight ")]
    assert len(printed) == 4
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "PREFLIGHT_", "MODELS_"))}
    for line in printed:
        argv = shlex.split(line)
        p = subprocess.run([sys.executable, "-m", "preflight.cli", *argv[1:]], capture_output=True, text=True, timeout=120, env=env,
                           cwd=tmp_path)
        assert p.returncode == 0, (line, p.stderr)
