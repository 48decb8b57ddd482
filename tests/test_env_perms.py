"""`preflight env` (sourceable paths) and `preflight perms` (can the serving uid read the lanes)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import repos

SERVER_UID = 65532  # the image's non-root user; no such account needs to exist


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preflight.cli", *args], capture_output=True, text=True, timeout=60, **kw)


ENV_MANIFEST = """\
version: 1
models_dir: ${MODELS_PATH:-/models}
lanes:
  - {name: llm, kind: gguf, path: llm/mistral-7b-instruct-v0.2.Q4_K_M.gguf, env: TEXT_MODEL_PATH}
  - {name: clip, kind: file, path: "clip/ViT-B-32 (openai).pt", env: CLIP_MODEL_PATH, allow_pickle: true}
  - {name: embed, kind: hf-dir, path: embeddings/all-MiniLM-L6-v2, env: EMBEDDING_MODEL_PATH, profiles: [text]}
  - {name: extra, kind: file, path: extra/notes.txt}
"""


def test_env_lines_are_sourceable_by_a_real_shell(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(ENV_MANIFEST)
    models = tmp_path / "vol with space"
    res = run(["env", "-m", str(tmp_path / "m.yaml")], env={**os.environ, "MODELS_PATH": str(models)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 3
    shell = subprocess.run(["sh", "-c", f'. "$1" && printf "%s\\n" "$TEXT_MODEL_PATH" "$CLIP_MODEL_PATH" "$EMBEDDING_MODEL_PATH"', "sh", "/dev/stdin"],
                           input=res.stdout, capture_output=True, text=True, check=True)
    assert shell.stdout.splitlines() == [
        f"{models}/llm/mistral-7b-instruct-v0.2.Q4_K_M.gguf", f"{models}/clip/ViT-B-32 (openai).pt", f"{models}/embeddings/all-MiniLM-L6-v2",
    ]


def test_env_json_follows_models_dir_override_and_profile(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(ENV_MANIFEST)
    for how in (["--format", "json"], ["--json"]):
        res = run(["env", "-m", str(tmp_path / "m.yaml"), "-d", "/srv/models", "--profile", "text", *how])
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"schema_version": 1, "env": {"EMBEDDING_MODEL_PATH": "/srv/models/embeddings/all-MiniLM-L6-v2"}}


def test_env_lines_are_quoted_as_the_readme_shows_and_docker_gets_its_own_format(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(ENV_MANIFEST)
    res = run(["env", "-m", str(tmp_path / "m.yaml"), "-d", "/srv/it's models", "--profile", "text"])
    assert res.stdout == "EMBEDDING_MODEL_PATH='/srv/it'\"'\"'s models/embeddings/all-MiniLM-L6-v2'\n"
    shell = subprocess.run(["sh", "-c", '. /dev/stdin && printf "%s" "$EMBEDDING_MODEL_PATH"'], input=res.stdout, capture_output=True, text=True, check=True)
    assert shell.stdout == "/srv/it's models/embeddings/all-MiniLM-L6-v2"
    docker = run(["env", "-m", str(tmp_path / "m.yaml"), "-d", "/srv/models", "--profile", "text", "--format", "docker"])
    assert docker.stdout == "EMBEDDING_MODEL_PATH=/srv/models/embeddings/all-MiniLM-L6-v2\n"


def test_env_rejects_a_name_two_lanes_claim(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(ENV_MANIFEST.replace("env: CLIP_MODEL_PATH", "env: TEXT_MODEL_PATH"))
    res = run(["env", "-m", str(tmp_path / "m.yaml")])
    assert res.returncode == 2
    assert "TEXT_MODEL_PATH is set by both lane 'llm' and lane 'clip'" in res.stderr
    assert res.stdout == ""


PERMS_MANIFEST = """\
version: 1
models_dir: {models}
lanes:
  - {{name: llama, kind: hf-dir, path: Meta-Llama-3.1-8B-Instruct}}
  - {{name: gguf, kind: gguf, path: gguf/tiny.Q8_0.gguf}}
  - {{name: other, kind: hf-dir, path: private-notes, required: false}}
"""


@pytest.fixture
def volume():
    """A models folder outside root-only temp folders, so another uid can reach it."""
    base = Path(tempfile.mkdtemp(prefix="preflight-perms-"))
    os.chmod(base, 0o711)
    models = base / "models"
    repos.write_tree(models / "Meta-Llama-3.1-8B-Instruct", repos.hf_model())
    repos.write_tree(models / "gguf", repos.gguf_file("tiny.Q8_0.gguf"))
    repos.write_tree(models / "private-notes", {"a.txt": b"secret"})
    for p in [models, *models.rglob("*")]:
        os.chown(p, 0, 0)
        os.chmod(p, 0o700 if p.is_dir() else 0o600)
    manifest = base / "m.yaml"
    manifest.write_text(PERMS_MANIFEST.format(models=models))
    yield models, manifest
    shutil.rmtree(base, ignore_errors=True)


def read_as(uid: int, gid: int, path: Path) -> bool:
    return subprocess.run(["cat", str(path)], user=uid, group=gid, extra_groups=[], capture_output=True).returncode == 0


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners and reading as another uid needs root")


@needs_root
def test_perms_lists_what_the_server_uid_cannot_read_then_fix_makes_it_readable(volume) -> None:
    models, manifest = volume
    weights = models / "Meta-Llama-3.1-8B-Instruct" / "model.safetensors"
    assert not read_as(SERVER_UID, SERVER_UID, weights)

    res = run(["perms", "-m", str(manifest), "--uid", str(SERVER_UID), "--gid", str(SERVER_UID), "--lane", "llama,gguf", "--json"])
    assert res.returncode == 1
    denied = {d["path"]: d for d in json.loads(res.stdout)["denied"]}
    assert denied["."]["need"] == "traverse"
    assert denied["Meta-Llama-3.1-8B-Instruct"]["need"] == "read+traverse"
    assert denied["Meta-Llama-3.1-8B-Instruct/model.safetensors"] == {"path": "Meta-Llama-3.1-8B-Instruct/model.safetensors", "kind": "file", "need": "read", "mode": "0600", "owner": "0:0"}
    assert "gguf/tiny.Q8_0.gguf" in denied
    assert not any(p.startswith("private-notes") for p in denied)

    fixed = run(["perms", "-m", str(manifest), "--uid", str(SERVER_UID), "--gid", str(SERVER_UID), "--lane", "llama,gguf", "--fix"])
    assert fixed.returncode == 0, fixed.stderr
    for rel in repos.hf_model():
        path = models / "Meta-Llama-3.1-8B-Instruct" / rel
        assert read_as(SERVER_UID, SERVER_UID, path), rel
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (SERVER_UID, 0o644)
    assert read_as(SERVER_UID, SERVER_UID, models / "gguf" / "tiny.Q8_0.gguf")
    assert stat.S_IMODE((models / "gguf").stat().st_mode) == 0o755
    assert not read_as(SERVER_UID, SERVER_UID, models / "private-notes" / "a.txt"), "a lane not selected was changed"


@needs_root
def test_group_style_fix_keeps_the_owner_and_opens_to_the_group_only(volume) -> None:
    models, manifest = volume
    res = run(["perms", "-m", str(manifest), "--uid", str(SERVER_UID), "--gid", "2000", "--lane", "gguf", "--fix", "--fix-style", "group"])
    assert res.returncode == 0, res.stderr
    gguf = models / "gguf" / "tiny.Q8_0.gguf"
    st = gguf.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 2000, 0o640)
    assert read_as(SERVER_UID, 2000, gguf)
    assert not read_as(SERVER_UID, 3000, gguf)
    again = run(["perms", "-m", str(manifest), "--uid", str(SERVER_UID), "--gid", "3000", "--lane", "gguf"])
    assert again.returncode == 1
    assert "gguf/tiny.Q8_0.gguf: file not readable (mode 0640, owner 0:2000)" in again.stderr
