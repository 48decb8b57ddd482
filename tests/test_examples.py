"""The shipped examples, end to end against stand-in repos on a local Hub server.

Each test copies `examples/<name>/` as it ships, serves tiny models under the same repo
ids and file names, then runs the real commands: sync → 0, check → 0, one corruption →
the failure a user would see.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import example_repos as ex
from tests import repos
from tests.hubserver import HubServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Deployment:
    """One example copied into a temp folder, with the environment its commands run in."""

    def __init__(self, name: str, tmp: Path, hub: HubServer, **env: str) -> None:
        self.dir = tmp / name
        shutil.copytree(EXAMPLES / name, self.dir)
        self.manifest = self.dir / "manifest.yaml"
        self.models = tmp / "volume"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFLIGHT_", "MODEL", "TRANSFORMERS_"))}
        self.env = {**base, **hub.env(), "HF_HOME": str(tmp / "hf-home"), **env}

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "preflight.cli", *args], capture_output=True, text=True, timeout=120,
                              env={**self.env, **(env or {})}, cwd=cwd)

    def report(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
        res = self.run(*args, "-m", str(self.manifest), "--json", "-q", env=env)
        try:
            return res.returncode, json.loads(res.stdout)
        except ValueError:
            raise AssertionError(f"exit {res.returncode}, no JSON report:\n{res.stderr}") from None


def codes(report: dict, lane: str) -> set[tuple[str, str]]:
    found = next(l for l in report["lanes"] if l["name"] == lane)
    return {(p["path"], p["code"]) for p in found["problems"]}


def flip_byte(path: Path, offset: int = -1) -> None:
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


# ----------------------------------------------------------------------------- 1. per-model folders


def build_per_model_folders(hub: HubServer, tmp_path: Path) -> tuple[Deployment, dict, dict]:
    """The deployment's volume, synced as a user would (also tests/test_init.py's starting point)."""
    llama = ex.llama_like(sharded=True)
    bge = ex.encoder(ex.XLMR_CONFIG)
    hub.add_repo("meta-llama/Llama-3.1-8B-Instruct", {**llama, "original/consolidated.00.pth": b"not fetched", "LICENSE": b"terms"}, gated=True)
    hub.add_repo("Qwen/Qwen2.5-Coder-7B-Instruct", ex.llama_like(sharded=False, config={**repos.LLAMA_CONFIG, "model_type": "qwen2"}))
    hub.add_repo("Qwen/Qwen2.5-72B-Instruct-AWQ", ex.llama_like(sharded=True, config=ex.AWQ_CONFIG))
    hub.add_repo("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", ex.llama_like(sharded=False))
    hub.add_repo("BAAI/bge-m3", {**bge, "colbert_linear.pt": b"excluded", "onnx/model.onnx": b"excluded"})
    hub.add_repo("BAAI/bge-reranker-v2-m3", ex.encoder({**ex.XLMR_CONFIG, "architectures": ["XLMRobertaForSequenceClassification"]}))
    d = Deployment("per-model-folders", tmp_path, hub, MODEL_BASE_PATH=str(tmp_path / "volume"))

    # direction 1: preflight writes the sha256sum file (from the Hub's LFS digests) ...
    lock = d.run("lock", "-m", str(d.manifest), "--format", "sha256sum", "--lane", "llama-3.1-8b-instruct",
                 "-o", str(d.dir / "checksums/Meta-Llama-3.1-8B-Instruct.sha256"))
    assert lock.returncode == 0, lock.stderr
    # direction 2: the real tool writes one from a trusted copy, preflight reads it
    trusted = repos.write_tree(tmp_path / "trusted-bge-m3", bge)
    made = subprocess.run("sha256sum *.json *.safetensors", shell=True, cwd=trusted, capture_output=True, text=True, check=True)
    (d.dir / "checksums/bge-m3.sha256").write_text(made.stdout)

    return d, llama, bge


def test_per_model_folders(hub: HubServer, tmp_path: Path) -> None:
    d, llama, bge = build_per_model_folders(hub, tmp_path)
    no_token = d.run("sync", "-m", str(d.manifest), "-q", "--lane", "llama-3.1-8b-instruct", env={"HF_TOKEN": ""})
    assert no_token.returncode == 4, no_token.stderr

    code, report = d.report("sync")
    assert code == 0, json.dumps(report, indent=1)
    llama_dir = d.models / "Meta-Llama-3.1-8B-Instruct"
    assert sorted(p.name for p in llama_dir.iterdir()) == sorted(llama)
    assert not (d.models / "bge-m3" / "colbert_linear.pt").exists()
    assert json.loads((d.models / "Qwen2.5-72B-Instruct-AWQ" / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    assert d.report("check")[0] == 0

    # both checksum files pass the real `sha256sum -c` on the synced volume
    for folder, name in ((llama_dir, "Meta-Llama-3.1-8B-Instruct.sha256"), (d.models / "bge-m3", "bge-m3.sha256")):
        listed = (d.dir / "checksums" / name).read_text()
        assert ".safetensors" in listed
        ok = subprocess.run(["sha256sum", "-c", str(d.dir / "checksums" / name)], cwd=folder, capture_output=True, text=True)
        assert ok.returncode == 0, ok.stdout + ok.stderr

    shard = llama_dir / "model-00002-of-00003.safetensors"
    flip_byte(shard)
    code, report = d.report("check")
    assert code == 1
    assert (shard.name, "checksum-mismatch") in codes(report, "llama-3.1-8b-instruct")
    bad = subprocess.run(["sha256sum", "-c", str(d.dir / "checksums/Meta-Llama-3.1-8B-Instruct.sha256")], cwd=llama_dir, capture_output=True, text=True)
    assert bad.returncode == 1 and f"{shard.name}: FAILED" in bad.stdout

    vocab = d.models / "bge-m3" / "tokenizer_config.json"
    assert len(vocab.read_bytes()) == len(b'{"model_max_length": 256}')
    vocab.write_text('{"model_max_length": 256}')  # same length, other bytes: only the checksum file can tell
    code, report = d.report("check")
    assert code == 1
    assert codes(report, "bge-m3") == {("tokenizer_config.json", "checksum-mismatch")}

    code, report = d.report("sync")
    assert code == 0, json.dumps(report, indent=1)
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == hashlib.sha256(llama[shard.name]).hexdigest()

    os.chmod(shard, 0o600)
    perms = d.run("perms", "-m", str(d.manifest), "--uid", "65532", "--gid", "65532")
    assert perms.returncode == 1
    assert f"Meta-Llama-3.1-8B-Instruct/{shard.name}: file not readable (mode 0600" in perms.stderr


# ----------------------------------------------------------------------------- 2. RAG backend


def build_rag_backend(hub: HubServer, tmp_path: Path) -> Deployment:
    gguf = ex.gguf_q4_k_m("mistral-7b-instruct-v0.2.Q4_K_M.gguf")
    clip, whisper = ex.clip_checkpoint(), ex.whisper_checkpoint()
    hub.add_repo("sentence-transformers/all-MiniLM-L6-v2", {**ex.sentence_transformer(), "onnx/model.onnx": b"excluded"})
    urls = {
        "MISTRAL_GGUF_URL": hub.add_url("TheBloke/mistral-7b-instruct-v0.2.Q4_K_M.gguf", gguf),
        "CLIP_URL": hub.add_url("clip/ViT-B-32.pt", clip),
        "WHISPER_URL": hub.add_url("whisper/small.pt", whisper),
    }
    sums = {"MISTRAL_GGUF_SHA256": gguf, "CLIP_SHA256": clip, "WHISPER_SHA256": whisper}
    return Deployment("rag-backend", tmp_path, hub, MODELS_DIR=str(tmp_path / "volume"), **urls,
                      **{k: hashlib.sha256(v).hexdigest() for k, v in sums.items()})


def test_rag_backend(hub: HubServer, tmp_path: Path) -> None:
    d = build_rag_backend(hub, tmp_path)
    code, report = d.report("sync")
    assert code == 0, json.dumps(report, indent=1)
    assert (d.models / "embeddings/all-MiniLM-L6-v2/1_Pooling/config.json").is_file()
    assert not (d.models / "embeddings/all-MiniLM-L6-v2/onnx").exists()
    assert d.report("check")[0] == 0
    flip_byte(d.models / "clip/ViT-B-32.pt", 100)
    code, report = d.report("check")
    assert code == 1 and codes(report, "clip") == {("ViT-B-32.pt", "checksum-mismatch")}
    assert d.report("sync")[0] == 0

    env = d.run("env", "-m", str(d.manifest))
    assert env.returncode == 0, env.stderr
    assert env.stdout.splitlines() == [
        f"TEXT_MODEL_PATH='{d.models}/llm/mistral-7b-instruct-v0.2.Q4_K_M.gguf'",
        f"EMBEDDING_MODEL_PATH='{d.models}/embeddings/all-MiniLM-L6-v2'",
        f"CLIP_MODEL_PATH='{d.models}/clip/ViT-B-32.pt'",
        f"WHISPER_MODEL_PATH='{d.models}/whisper/small.pt'",
    ]

    # offline, the way the app's own variables say: nothing fetched, a missing file is named
    hub.clear_requests()
    (d.models / "whisper/small.pt").unlink()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        code, report = d.report("sync", env={var: "1"})
        assert code == 1
        assert codes(report, "whisper") == {("small.pt", "missing")}
    assert hub.requests == []

    # a checkpoint that runs code on load fails even with its own sha256 pinned
    evil = ex.malicious_checkpoint()
    evil_url = hub.add_url("whisper/evil/small.pt", evil)
    code, report = d.report("sync", env={"WHISPER_URL": evil_url, "WHISPER_SHA256": hashlib.sha256(evil).hexdigest()})
    assert code == 1
    assert ("whisper/small.pt", "dangerous-pickle") in codes(report, "whisper")
    assert not (d.models / "whisper/small.pt").exists()  # refused before publishing


# ----------------------------------------------------------------------------- 3. model lanes


def build_model_lanes(hub: HubServer, tmp_path: Path) -> tuple[Deployment, str]:
    for repo in ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "Qwen/Qwen2.5-Coder-32B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"):
        hub.add_repo(repo, ex.distinct(ex.llama_like(sharded=repo.startswith("deepseek")), repo))
    nemotron = "Llama-3.1-Nemotron-8B-UltraLong-4M-Instruct-q4_k_m.gguf"
    hub.add_repo("org/nemotron-gguf", {nemotron: ex.gguf_q4_k_m(nemotron)})
    hub.add_repo("ibm-granite/granite-3.3-8b-instruct-GGUF", {"granite-3.3-8b-instruct-Q4_K_M.gguf": ex.gguf_q4_k_m("granite-3.3-8b-instruct-Q4_K_M.gguf")})
    hub.add_repo("TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", {"tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf": ex.gguf_q4_k_m("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf")})
    embed_commit = hub.add_repo("BAAI/bge-m3", ex.encoder(ex.XLMR_CONFIG))
    d = Deployment("model-lanes", tmp_path, hub, MODELS_PATH=str(tmp_path / "volume"), SUPER_READER_REPO="org/nemotron-gguf", ENABLE_CODER="false")
    return d, embed_commit


def test_model_lanes(hub: HubServer, tmp_path: Path) -> None:
    from preflight.smoke import endpoints_from_manifest

    d, embed_commit = build_model_lanes(hub, tmp_path)
    code, report = d.report("sync")
    assert code == 0, json.dumps(report, indent=1)
    assert [l["name"] for l in report["lanes"]] == ["orchestrator", "fast_rag", "super_reader", "governance", "embeddings"]
    assert not (d.models / "vllm/coder").exists() and not (d.models / "vllm/tinyllama").exists()
    snapshot = d.models / "hf-cache/models--BAAI--bge-m3/snapshots" / embed_commit
    assert (snapshot / "model.safetensors").is_symlink() and (snapshot / "config.json").is_file()
    assert (d.models / "hf-cache/models--BAAI--bge-m3/refs/main").read_text().strip() == embed_commit
    assert d.report("check")[0] == 0

    code, report = d.report("sync", "--profile", "minimal")
    assert code == 0, json.dumps(report, indent=1)
    assert [l["name"] for l in report["lanes"]] == ["tiny-llm", "tiny-gguf"]
    assert (d.models / "gguf/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf").is_file()

    granite = d.models / "gguf/granite-3.3-8b-instruct-Q4_K_M.gguf"
    with open(granite, "r+b") as f:
        f.truncate(granite.stat().st_size - 100)
    code, report = d.report("check")
    assert code == 1
    assert {path for path, _code in codes(report, "governance")} == {granite.name}
    assert next(l for l in report["lanes"] if l["name"] == "super_reader")["status"] == "ready"

    eps = endpoints_from_manifest(d.manifest, env={"GOVERNANCE_URL": "http://127.0.0.1:8081"})
    assert [(e.name, e.kind, e.lane) for e in eps] == [
        ("orchestrator", "vllm", "orchestrator"), ("coder", "vllm", "coder"), ("fast_rag", "vllm", "fast_rag"),
        ("super_reader", "llama.cpp", "super_reader"), ("governance", "llama.cpp", "governance"),
    ]
    assert eps[-1].url.startswith("http://127.0.0.1:8081")



# ----------------------------------------------------------------------------- 4. base + LoRA adapters


def build_lora_adapters(hub: HubServer, tmp_path: Path) -> Deployment:
    hub.add_repo("meta-llama/Llama-3.1-8B-Instruct", ex.distinct(ex.llama_like(sharded=False), "base"), gated=True)
    hub.add_repo("acme-ml/support-lora", repos.adapter(rank=4), private=True)
    hub.add_repo("acme-ml/globex-claims-lora", ex.distinct(repos.adapter(rank=8, modules=("q_proj", "k_proj", "v_proj")), "globex"), private=True)
    return Deployment("lora-adapters", tmp_path, hub, MODELS_PATH=str(tmp_path / "volume"))


def test_lora_adapters(hub: HubServer, tmp_path: Path) -> None:
    d = build_lora_adapters(hub, tmp_path)
    code, report = d.report("sync")
    assert code == 0, json.dumps(report, indent=1)
    assert sorted(p.name for p in (d.models / "trained/acme/support-lora").iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert (d.models / "hf-cache/models--meta-llama--Llama-3.1-8B-Instruct/refs/main").is_file()
    assert d.report("check")[0] == 0

    # an adapter trained on a base with another hidden size, published under the same name
    hub.add_repo("acme-ml/globex-claims-lora", repos.adapter(in_dim=32))
    code, report = d.report("sync")
    assert code == 1, json.dumps(report, indent=1)
    assert any(c == "adapter-base-mismatch" for _p, c in codes(report, "globex-claims"))
    assert next(l for l in report["lanes"] if l["name"] == "acme-support")["status"] == "ready"
    assert any(c == "not-switched" for _p, c in codes(report, "globex-claims"))
    # the refused revision was never switched to: the volume still serves the adapter that fits its base
    code, report = d.report("check", "--lane", "globex-claims")
    assert code == 0, json.dumps(report, indent=1)


# ----------------------------------------------------------------------------- 5. DVC-tracked folders


def build_dvc_tracked(hub: HubServer, tmp_path: Path) -> Deployment:
    from tests.test_dvc import dvc_track_dir

    d = Deployment("dvc-tracked", tmp_path, hub, MODELS_PATH=str(tmp_path / "volume"), DVC_WORKSPACE=str(tmp_path / "checkout"))
    classifier = ex.encoder(ex.BERT_CONFIG, extra={"vocab.txt": b"a\nb\n"})
    repos.write_tree(tmp_path / "checkout/models/intent-classifier", classifier)
    dvc_track_dir(d.dir, "models/intent-classifier", classifier, dvc3=True)
    gguf = ex.gguf_q4_k_m("ranker.Q4_K_M.gguf")
    repos.write_tree(tmp_path / "checkout/models", {"ranker.Q4_K_M.gguf": gguf})
    (d.dir / "models/ranker.Q4_K_M.gguf.dvc").write_text(
        f"outs:\n- md5: {hashlib.md5(gguf).hexdigest()}\n  size: {len(gguf)}\n  hash: md5\n  path: ranker.Q4_K_M.gguf\n")
    return d


def test_dvc_tracked(hub: HubServer, tmp_path: Path) -> None:
    d = build_dvc_tracked(hub, tmp_path)
    code, report = d.report("sync")
    assert code == 0, json.dumps(report, indent=1)
    assert (d.models / "intent-classifier/vocab.txt").read_bytes() == b"a\nb\n"
    assert d.report("check")[0] == 0

    # the checkout drifts from what DVC pinned: sync refuses to publish it, check names the file
    (d.models / "intent-classifier/vocab.txt").write_bytes(b"a\nc\n")
    (tmp_path / "checkout/models/intent-classifier/vocab.txt").write_bytes(b"a\nc\n")
    code, report = d.report("check")
    assert code == 1 and codes(report, "intent-classifier") == {("vocab.txt", "checksum-mismatch")}
    code, report = d.report("sync")
    assert code != 0
    assert ("vocab.txt", "checksum-mismatch") in codes(report, "intent-classifier")
