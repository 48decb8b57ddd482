"""What the README shows must work as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from preflight.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


def yaml_blocks_after(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


def test_the_manifest_reference_loads_as_printed(tmp_path: Path) -> None:
    (block,) = yaml_blocks_after("## Manifest reference")
    manifest = tmp_path / "lanes.yaml"
    manifest.write_text(block)
    (tmp_path / "reader.sha256").write_text("0" * 64 + "  config.json\n")
    m = load_manifest(manifest, env={"MODELS_PATH": str(tmp_path / "models")})
    names = [lane.name for lane in m.lanes]
    assert names == ["orchestrator", "coder", "super_reader", "reader-vocab", "embeddings", "support-lora", "clip", "reader-config",
                     "fleet-coder", "bucket-embed", "gcs-reader", "release-classifier"]
    assert set(m.profiles["minimal"]) <= set(names)
    # and the CLI accepts it: offline, every lane is simply missing (exit 1), never a usage error (2)
    env = {"MODELS_PATH": str(tmp_path / "models"), "PATH": "/usr/bin:/bin"}
    for args in (["--profile", "minimal"], []):
        proc = subprocess.run([sys.executable, "-m", "preflight.cli", "check", "-m", str(manifest), "--termination-log", "", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_the_readme_lists_every_problem_code() -> None:
    import preflight.problems as P

    text = (ROOT / "README.md").read_text()
    codes = [v for k, v in vars(P).items() if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z0-9-]+", v)]
    assert codes and [c for c in codes if f"`{c}`" not in text] == []
