"""`preflight init`: a first manifest from an existing volume (adopted without a byte moved
or written) or from sources, that `check` passes as written. The volumes are the real ones:
the demo's (`python -m tests.demo --keep`) and each reference deployment's after its own
sync (tests/test_examples.py builds them against the Hub stand-in)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import example_repos as ex
from tests import repos
from tests.hubserver import HubServer
from tests.test_examples import (build_dvc_tracked, build_lora_adapters, build_model_lanes, build_per_model_folders,
                                 build_rag_backend)

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFLIGHT_", "MODEL"))}
    return subprocess.run([sys.executable, "-m", "preflight.cli", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})}, cwd=cwd)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root, links not followed: kind, inode, size, mtime, ctime, and a file's digest."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink() else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
    return out


def adopt(tmp: Path, models: Path, *extra: str, lock: bool = True) -> tuple[Path, dict]:
    """init on `models`, then check of what it wrote; the volume must be exactly as it was."""
    before = snapshot(models)
    out = tmp / "adopted.yaml"
    done = cli("init", "-d", models, "-o", out, *(["--lock"] if lock else []), *extra)
    assert done.returncode == 0, done.stderr + (out.read_text() if out.exists() else "")
    assert snapshot(models) == before, "init changed the volume"
    doc = yaml.safe_load(out.read_text())
    checked = cli("check", "-m", out, "--state-dir", tmp / "state", "--termination-log", "", "--json")
    assert checked.returncode == 0, checked.stderr + out.read_text()
    report = json.loads(checked.stdout)
    assert all(lane["status"] == "ready" for lane in report["lanes"])
    assert snapshot(models) == before, "check with --state-dir elsewhere changed the volume"
    return out, doc


def kinds(doc: dict) -> dict[str, str]:
    return {lane["path"]: lane["kind"] for lane in doc["lanes"]}


def test_the_demo_volume(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    built = subprocess.run([sys.executable, "-m", "tests.demo", "--keep", str(keep)], capture_output=True, text=True, timeout=600,
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    out, doc = adopt(tmp_path, keep / "models")
    assert kinds(doc) == {"gguf/tiny.Q8_0.gguf": "gguf", "hf-cache/hub": "hf-cache", "trained/acme/support-lora": "adapter",
                          "vllm/tiny-llm/bf16": "hf-dir"}
    cache = next(lane for lane in doc["lanes"] if lane["kind"] == "hf-cache")
    assert cache["source"] == "hf://demo/embedder@main"
    lock = json.loads((tmp_path / "adopted.lock.json").read_text())["lanes"]
    assert set(lock) == {lane["name"] for lane in doc["lanes"]}
    assert all(f["sha256"] and isinstance(f["size"], int) for entry in lock.values() for f in entry["files"].values())
    text = out.read_text()
    assert "# config.json with" in text and "laid out as revisions" in text and "# source: hf://ORG/REPO@REVISION" in text
    # the lock pins the bytes: one flipped byte of the adopted volume fails check
    shard = next((keep / "models" / "vllm" / "tiny-llm" / "bf16").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = cli("check", "-m", out, "--state-dir", tmp_path / "state2", "--termination-log", "")
    assert bad.returncode == 1 and "checksum-mismatch" in bad.stderr


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def synced(d) -> Path:
    code, report = d.report("sync")
    assert code == 0, json.dumps(report, indent=1)
    return d.models


def test_per_model_folders_volume(hub: HubServer, tmp_path: Path) -> None:
    d, _llama, _bge = build_per_model_folders(hub, tmp_path)
    _out, doc = adopt(tmp_path, synced(d))
    assert kinds(doc) == {name: "hf-dir" for name in ("Meta-Llama-3.1-8B-Instruct", "Qwen2.5-Coder-7B-Instruct", "Qwen2.5-72B-Instruct-AWQ",
                                                      "DeepSeek-R1-Distill-Llama-8B", "bge-m3", "bge-reranker-v2-m3")}


def test_rag_backend_volume(hub: HubServer, tmp_path: Path) -> None:
    d = build_rag_backend(hub, tmp_path)
    out, doc = adopt(tmp_path, synced(d))
    assert kinds(doc) == {"llm/mistral-7b-instruct-v0.2.Q4_K_M.gguf": "gguf", "embeddings/all-MiniLM-L6-v2": "hf-dir",
                          "clip/ViT-B-32.pt": "file", "whisper/small.pt": "file"}
    policy = {lane["path"]: lane.get("allow_pickle") for lane in doc["lanes"]}
    assert policy["clip/ViT-B-32.pt"] == "torchscript" and policy["whisper/small.pt"] is True  # the least each needs
    assert "allow_pickle: torchscript" in out.read_text()


def test_model_lanes_volume(hub: HubServer, tmp_path: Path) -> None:
    d, embed_commit = build_model_lanes(hub, tmp_path)
    _out, doc = adopt(tmp_path, synced(d))
    found = kinds(doc)
    assert found["hf-cache"] == "hf-cache" and found["vllm/orchestrator/bf16"] == "hf-dir"
    assert found["gguf/granite-3.3-8b-instruct-Q4_K_M.gguf"] == "gguf"
    cache = next(lane for lane in doc["lanes"] if lane["kind"] == "hf-cache")
    assert cache["source"] == "hf://BAAI/bge-m3@main"


def test_lora_adapters_volume(hub: HubServer, tmp_path: Path) -> None:
    d = build_lora_adapters(hub, tmp_path)
    out, doc = adopt(tmp_path, synced(d))
    adapters = [lane for lane in doc["lanes"] if lane["kind"] == "adapter"]
    assert len(adapters) == 2
    assert {lane["path"] for lane in adapters} == {"trained/acme/support-lora", "trained/globex/claims-lora"}


def test_dvc_tracked_volume(hub: HubServer, tmp_path: Path) -> None:
    d = build_dvc_tracked(hub, tmp_path)
    _out, doc = adopt(tmp_path, synced(d), lock=False)
    assert kinds(doc) == {"intent-classifier": "hf-dir", "gguf/ranker.Q4_K_M.gguf": "gguf"}


def test_what_does_not_pass_is_written_with_its_reason(tmp_path: Path) -> None:
    models = tmp_path / "models"
    repos.write_tree(models / "llm", repos.hf_model())
    repos.write_tree(models / "encoder", {k: v for k, v in ex.encoder(ex.BERT_CONFIG).items() if "tokenizer" not in k and k != "vocab.txt"})
    (models / "evil.pt").write_bytes(ex.malicious_checkpoint())
    (models / "notes.txt").write_text("hello")
    before = snapshot(models)
    out = tmp_path / "lanes.yaml"
    done = cli("init", "-d", models, "-o", out)
    assert done.returncode == 1, done.stderr
    assert "evil" in done.stderr and "dangerous-pickle" in done.stderr
    assert snapshot(models) == before
    text = out.read_text()
    assert "does not pass `check` as it stands: evil.pt: dangerous-pickle" in text
    assert "notes.txt: not a model file" in text
    doc = yaml.safe_load(text)
    encoder = next(lane for lane in doc["lanes"] if lane["path"] == "encoder")
    assert encoder["serves_text"] is False
    evil = next(lane for lane in doc["lanes"] if lane["path"] == "evil.pt")
    assert "allow_pickle" not in evil  # never allowed to make a dangerous file pass


def test_sources_become_lanes_and_a_lock_resolves_them(hub: HubServer, tmp_path: Path) -> None:
    model = repos.hf_model()
    hub.add_repo("org/tiny", model)
    gguf = repos.gguf_file("tiny.Q8_0.gguf")
    hub.add_repo("org/tiny-gguf", gguf)
    out = tmp_path / "lanes.yaml"
    env = {**hub.env(), "HF_HOME": str(tmp_path / "hf-home")}
    done = cli("init", "hf://org/tiny@main", "hf://org/tiny-gguf/tiny.Q8_0.gguf", "-o", out, "--lock", env=env)
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(out.read_text())
    assert kinds(doc) == {"tiny": "hf-dir", "tiny.Q8_0.gguf": "gguf"}
    lock = json.loads((tmp_path / "lanes.lock.json").read_text())["lanes"]
    assert {lane["name"] for lane in doc["lanes"]} == set(lock) and all(len(e["commit"]) == 40 for e in lock.values())
    synced_ = cli("sync", "-m", out, "--locked", "-d", tmp_path / "volume", "--termination-log", "", env=env)
    assert synced_.returncode == 0, synced_.stderr
    assert (tmp_path / "volume" / "tiny.Q8_0.gguf").read_bytes() == gguf["tiny.Q8_0.gguf"]


def test_a_source_names_where_an_adopted_lane_comes_from(tmp_path: Path) -> None:
    models = tmp_path / "models"
    repos.write_tree(models / "tiny", repos.hf_model())
    out = tmp_path / "lanes.yaml"
    done = cli("init", "-d", models, "hf://org/tiny@main", "-o", out)
    assert done.returncode == 0, done.stderr
    (lane,) = yaml.safe_load(out.read_text())["lanes"]
    assert lane["path"] == "tiny" and lane["source"] == "hf://org/tiny@main"


def test_init_refuses_to_write_into_the_volume_or_over_a_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    repos.write_tree(models / "tiny", repos.hf_model())
    inside = cli("init", "-d", models, "-o", models / "lanes.yaml")
    assert inside.returncode == 2 and "inside the models folder" in inside.stderr
    assert not (models / "lanes.yaml").exists()
    out = tmp_path / "lanes.yaml"
    out.write_text("mine")
    again = cli("init", "-d", models, "-o", out)
    assert again.returncode == 2 and out.read_text() == "mine"
    assert cli("init", "-o", out).returncode == 2
