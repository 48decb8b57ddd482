"""DVC-tracked lanes: expectations read from `.dvc` files and the DVC cache, checked by md5."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from preflight.dvc import dvc_expectations
from preflight.errors import ManifestError
from preflight.manifest import load_manifest
from tests import repos


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def dvc_track_dir(project: Path, folder_rel: str, files: dict[str, bytes], *, dvc3: bool = True) -> Path:
    """Write what `dvc add <folder>` leaves behind: the .dvc file and the .dir listing in the cache."""
    listing = [{"relpath": rel, "md5": md5(data)} for rel, data in sorted(files.items())]
    raw = json.dumps(listing, sort_keys=True).encode()
    dir_md5 = md5(raw)
    cache = project / ".dvc" / "cache"
    entry = (cache / "files" / "md5" if dvc3 else cache) / dir_md5[:2] / (dir_md5[2:] + ".dir")
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_bytes(raw)
    out = {"md5": f"{dir_md5}.dir", "size": sum(len(d) for d in files.values()), "nfiles": len(files), "path": Path(folder_rel).name}
    if dvc3:
        out["hash"] = "md5"
    dvc_file = project / (folder_rel + ".dvc")
    dvc_file.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    dvc_file.write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
    return dvc_file


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preflight.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    files = repos.hf_model()
    models = tmp_path / "models"
    repos.write_tree(models / "classifier", files)
    proj = tmp_path / "project"
    dvc_track_dir(proj, "models/classifier", files)
    (proj / "lanes.yaml").write_text(
        f"version: 1\nmodels_dir: {models}\nlanes:\n  - {{name: classifier, kind: hf-dir, path: classifier, dvc: models/classifier.dvc}}\n"
    )
    return proj, models, files


@pytest.mark.parametrize("dvc3", [True, False])
def test_dir_out_gives_md5_per_file_from_either_cache_layout(tmp_path: Path, dvc3: bool) -> None:
    files = {"config.json": b"{}", "sub/w.bin": b"\x00" * 10}
    dvc_track_dir(tmp_path, "data/clf", files, dvc3=dvc3)
    (tmp_path / "m.yaml").write_text("version: 1\nlanes:\n  - {name: clf, kind: hf-dir, path: clf, dvc: data/clf.dvc}\n")
    m = load_manifest(tmp_path / "m.yaml")
    got = dvc_expectations(m, m.lane("clf"))
    assert {rel: e.md5 for rel, e in got.items()} == {rel: md5(d) for rel, d in files.items()}


def test_file_out_gives_md5_and_size(tmp_path: Path) -> None:
    data = b"GGUF" + b"\x01" * 20
    (tmp_path / "model.gguf.dvc").write_text(f"outs:\n- md5: {md5(data)}\n  size: {len(data)}\n  hash: md5\n  path: model.gguf\n")
    (tmp_path / "m.yaml").write_text("version: 1\nlanes:\n  - {name: g, kind: file, path: gguf/model.gguf, dvc: model.gguf.dvc}\n")
    m = load_manifest(tmp_path / "m.yaml")
    exp = dvc_expectations(m, m.lane("g"))["model.gguf"]
    assert (exp.md5, exp.size) == (md5(data), len(data))


def test_missing_cache_listing_is_a_manifest_error_naming_the_place(tmp_path: Path) -> None:
    dvc_file = dvc_track_dir(tmp_path, "clf", {"a.json": b"{}"})
    for p in (tmp_path / ".dvc" / "cache").rglob("*.dir"):
        p.unlink()
    (tmp_path / "m.yaml").write_text("version: 1\nlanes:\n  - {name: clf, kind: hf-dir, path: clf, dvc: clf.dvc}\n")
    m = load_manifest(tmp_path / "m.yaml")
    with pytest.raises(ManifestError, match=r"no listing for folder .*files/md5"):
        dvc_expectations(m, m.lane("clf"))
    assert dvc_file.exists()


def test_check_passes_then_names_the_changed_file_by_md5(project) -> None:
    proj, models, _files = project
    ok = run(["check", "-m", str(proj / "lanes.yaml"), "--json", "-q"])
    assert ok.returncode == 0, ok.stderr
    (models / "classifier" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096}))
    bad = run(["check", "-m", str(proj / "lanes.yaml"), "--json", "-q"])
    assert bad.returncode == 1
    problems = json.loads(bad.stdout)["lanes"][0]["problems"]
    assert [(p["path"], p["code"]) for p in problems] == [("tokenizer_config.json", "checksum-mismatch")]
    assert "md5" in problems[0]["message"]


def test_check_reports_a_file_the_listing_names_but_the_volume_lacks(project) -> None:
    proj, models, _files = project
    (models / "classifier" / "generation_config.json").unlink()
    res = run(["check", "-m", str(proj / "lanes.yaml"), "--json", "-q"])
    assert res.returncode == 1
    codes = {(p["path"], p["code"]) for p in json.loads(res.stdout)["lanes"][0]["problems"]}
    assert ("generation_config.json", "missing") in codes


def test_sync_from_a_mirror_restores_a_corrupted_file(project, tmp_path: Path) -> None:
    proj, models, files = project
    mirror = repos.write_tree(tmp_path / "mirror", files)
    text = (proj / "lanes.yaml").read_text().replace("dvc: models/classifier.dvc}", f"dvc: models/classifier.dvc, source: {mirror}}}")
    (proj / "lanes.yaml").write_text(text)
    target = models / "classifier" / "config.json"
    target.write_text('{"model_type": "other"}')
    res = run(["sync", "-m", str(proj / "lanes.yaml"), "-q"])
    assert res.returncode == 0, res.stderr
    assert target.read_bytes() == files["config.json"]
