"""`preflight inspect PATH`: what a file or folder is, in text and JSON, and its problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from preflight.cli import main
from tests.builders import patch_bytes, truncate
from tests.repos import adapter, gguf_file, gguf_split, hf_model, write_tree


def inspect(*args: str):
    result = CliRunner().invoke(main, ["inspect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output
    return result


def as_json(path: Path, *extra: str) -> tuple[int, dict]:
    """The JSON of `inspect --json`, its schema_version checked and set aside."""
    r = inspect(path, "--json", *extra)
    doc = json.loads(r.stdout)
    assert doc.pop("schema_version") == 1
    return r.exit_code, doc


def fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(("error:", "warning:")):
            out[key.strip()] = value.strip()
    return out


def test_safetensors_file(tmp_path: Path) -> None:
    path = write_tree(tmp_path, hf_model()) / "model.safetensors"
    r = inspect(path)
    assert r.exit_code == 0
    f = fields(r.stdout)
    assert f["format"] == "safetensors" and f["tensor count"] == "21" and f["dtypes"] == "BF16: 21"
    assert f["parameter count"] == "5.71K (5712)" and f["size"] == str(path.stat().st_size)
    assert "problems:         none" in r.stdout
    code, j = as_json(path)
    assert code == 0 and j["format"] == "safetensors" and j["tensor_count"] == 21 and j["parameter_count"] == 5712
    assert j["dtypes"] == {"BF16": 21} and j["metadata"] == {"format": "pt"} and j["problems"] == []


def test_truncated_safetensors_is_exit_1_with_problem(tmp_path: Path) -> None:
    path = truncate(write_tree(tmp_path, hf_model()) / "model.safetensors", by=3)
    r = inspect(path)
    assert r.exit_code == 1
    assert any(line.startswith("error: model.safetensors: truncated: ") for line in r.stdout.splitlines())
    code, j = as_json(path)
    assert code == 1 and [p["code"] for p in j["problems"]] == ["truncated"] and j["problems"][0]["severity"] == "error"


def test_hf_folder_single_and_sharded(tmp_path: Path) -> None:
    single = write_tree(tmp_path / "single", hf_model())
    sharded = write_tree(tmp_path / "sharded", hf_model(sharded=True))
    r = inspect(single)
    f = fields(r.stdout)
    assert r.exit_code == 0
    assert (f["format"], f["architecture"], f["model type"], f["dtype"], f["context length"]) == ("hf-dir", "LlamaForCausalLM", "llama", "bfloat16", "2048")
    assert f["tokenizer"] == "tokenizer.json" and f["weights"] == "model.safetensors" and f["files"] == "5"
    code, j = as_json(sharded)
    assert code == 0 and j["weights"] == ["model.safetensors.index.json"] and j["tensor_count"] == 21 and j["files"] == 8


def test_hf_folder_problems_are_listed(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "m", hf_model(sharded=True))
    (root / "tokenizer.json").unlink()
    (root / "model-00002-of-00003.safetensors").unlink()
    (root / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    r = inspect(root)
    assert r.exit_code == 1
    codes = {line.split(": ")[2] for line in r.stdout.splitlines() if line.startswith("error: ")}
    assert {"tokenizer-missing", "shard-missing", "unsafe-pickle"} <= codes
    code, j = as_json(root, "--allow-pickle")
    assert code == 1 and "unsafe-pickle" not in {p["code"] for p in j["problems"]}


def test_gguf_file(tmp_path: Path) -> None:
    path = write_tree(tmp_path, gguf_file("tiny.Q8_0.gguf")) / "tiny.Q8_0.gguf"
    r = inspect(path)
    f = fields(r.stdout)
    assert r.exit_code == 0
    assert (f["format"], f["architecture"], f["context length"], f["tensor count"]) == ("gguf v3", "llama", "2048", "11")
    assert f["quant types"] == "Q8_0: 8, F32: 3"
    code, j = as_json(path)
    assert code == 0 and j["quant_types"] == {"Q8_0": 8, "F32": 3} and j["split"] is None and j["kv_count"] > 0


def test_gguf_bad_magic(tmp_path: Path) -> None:
    path = patch_bytes(write_tree(tmp_path, gguf_file("m.gguf")) / "m.gguf", 0, b"GGJT")
    code, j = as_json(path)
    assert code == 1 and [p["code"] for p in j["problems"]] == ["bad-magic"]


def test_gguf_split(tmp_path: Path) -> None:
    write_tree(tmp_path, gguf_split("big", 3))
    part = tmp_path / "big-00002-of-00003.gguf"
    r = inspect(part)
    assert r.exit_code == 0
    assert fields(r.stdout)["split"] == "3 parts: big-00001-of-00003.gguf, big-00002-of-00003.gguf, big-00003-of-00003.gguf"
    (tmp_path / "big-00003-of-00003.gguf").unlink()
    code, j = as_json(part)
    assert code == 1 and j["problems"] == [{"path": "big-00003-of-00003.gguf", "code": "split-missing", "message": "split big-00003-of-00003.gguf is missing", "severity": "error"}]


def test_adapter_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "lora", adapter(rank=8, modules=("q_proj", "k_proj", "v_proj")))
    r = inspect(root)
    f = fields(r.stdout)
    assert r.exit_code == 0
    assert (f["format"], f["rank"], f["target modules"], f["base model"]) == ("adapter", "8", "q_proj, k_proj, v_proj", "org/base")
    assert f["weights"] == "adapter_model.safetensors" and f["tensor count"] == "12"
    code, j = as_json(root)
    assert code == 0 and j["peft_type"] == "LORA" and j["rank"] == 8


@pytest.mark.parametrize("config, code", [
    ({"peft_type": "LORA", "r": 0, "target_modules": ["q_proj"]}, "adapter-invalid"),
    ({"peft_type": "LORA", "r": 4, "target_modules": []}, "adapter-invalid"),
    ({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj", "v_proj"]}, "adapter-invalid"),  # tensors have rank 4
])
def test_adapter_config_problems(tmp_path: Path, config: dict, code: str) -> None:
    root = write_tree(tmp_path / "lora", adapter())
    (root / "adapter_config.json").write_text(json.dumps(config))
    status, j = as_json(root)
    assert status == 1 and code in {p["code"] for p in j["problems"]}


def test_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    status, j = as_json(tmp_path / "notes.txt")
    assert status == 0 and j == {"path": str(tmp_path / "notes.txt"), "format": "file", "size": 5, "problems": []}
    (tmp_path / "w.pt").write_bytes(b"cos\nsystem\n(S'echo x'\ntR.")
    status, j = as_json(tmp_path / "w.pt")
    assert status == 1 and [p["code"] for p in j["problems"]] == ["unsafe-pickle"]
    assert "--allow-pickle" in j["problems"][0]["message"] and "allow_pickle: true" not in j["problems"][0]["message"]
    status, j = as_json(tmp_path / "w.pt", "--allow-pickle")
    assert status == 1 and [p["code"] for p in j["problems"]] == ["dangerous-pickle"] and "os.system" in j["problems"][0]["message"]


COMMIT = "a" * 40


def hf_cache(hub: Path, repo: str, files: dict[str, bytes], *, commit: str = COMMIT, ref: bool = True) -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out: blobs, refs/main, snapshot symlinks."""
    import hashlib

    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    for rel, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (rel.count("/") + 2)) / "blobs" / blob.name)
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir


def test_hf_cache_tree_is_read_at_its_snapshot(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    repo_dir = hf_cache(hub, "org/tiny", hf_model(sharded=True))
    for target in (hub, repo_dir):
        code, j = as_json(target)
        assert code == 0, j["problems"]
        assert (j["format"], j["repo"], j["revision"]) == ("hf-cache", "org/tiny", COMMIT)
        assert j["tensor_count"] == 21 and j["architecture"] == "LlamaForCausalLM"
    r = inspect(hub)
    assert fields(r.stdout)["repo"] == "org/tiny" and "config-missing" not in r.stdout


def test_hf_cache_without_refs_uses_its_only_snapshot_and_says_when_it_cannot_choose(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    repo_dir = hf_cache(hub, "org/tiny", hf_model(), ref=False)
    code, j = as_json(hub)
    assert code == 0 and j["revision"] == COMMIT
    hf_cache(hub, "org/tiny", hf_model(), commit="b" * 40, ref=False)
    code, j = as_json(repo_dir)
    assert code == 1 and j["problems"][0]["code"] == "missing" and "2 snapshots" in j["problems"][0]["message"]
    hf_cache(hub, "org/other", hf_model())
    code, j = as_json(hub)
    assert code == 1 and "2 cached repos" in j["problems"][0]["message"]


def test_a_model_that_serves_no_text_needs_no_tokenizer(tmp_path: Path) -> None:
    """A voice-activity detector: its own config.json, no vocabulary, no tokenizer."""
    from tests.builders import write_safetensors

    root = tmp_path / "vad"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"architectures": ["SileroVADModel"], "model_type": "silero_vad", "sample_rate": 16000}))
    write_safetensors(root / "model.safetensors", {"stft.forward_basis": ("F32", (258, 1, 256)), "decoder.weight": ("F32", (1, 128))})
    code, j = as_json(root)
    assert code == 0, j["problems"]
    assert j["serves_text"]["value"] is False and "no vocabulary" in j["serves_text"]["because"]
    assert j["model"]["checked"] is False
    r = inspect(root)
    assert fields(r.stdout)["serves text"].startswith("no (") and fields(r.stdout)["model checks"].startswith("none (")


def test_a_text_model_without_tokenizer_is_still_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "m", hf_model())
    (root / "tokenizer.json").unlink()
    code, j = as_json(root)
    assert code == 1 and "tokenizer-missing" in {p["code"] for p in j["problems"]}
    assert j["serves_text"] == {"value": True, "because": "config.json has a vocabulary size"}


def test_model_facts_are_shown(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "m", hf_model())
    f = fields(inspect(root).stdout)
    assert (f["layers"], f["vocabulary size"], f["hidden size"]) == ("2 (found 2)", "32", "16")
    assert f["tied embeddings"] == "not set in config.json; LM head present"
    assert f["model checks"] == "layers, tensor shapes, vocab_size, hidden_size"
    (root / "config.json").write_text(json.dumps({**json.loads((root / "config.json").read_text()), "num_hidden_layers": 3}))
    code, j = as_json(root)
    assert code == 1 and [p["code"] for p in j["problems"]] == ["config-mismatch"]


def test_inspect_shows_the_gguf_model_facts_it_checked(tmp_path: Path) -> None:
    from tests.builders import write_gguf

    path = write_gguf(tmp_path / "m.gguf")
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    doc = json.loads(result.stdout)
    assert (doc["architecture"], doc["blocks"], doc["vocabulary_size"]) == ("llama", 1, 32)
    assert doc["tied_embeddings"] is True  # no output.weight: llama.cpp reuses token_embd
    from preflight.formats.gguf_arch import ENGINE

    assert doc["checked_against"] == f"llama.cpp {ENGINE['llama.cpp']} (llama-cpp-python 0.3.36)"
    text = CliRunner().invoke(main, ["inspect", str(path)]).output
    assert f"checked against:  llama.cpp {ENGINE['llama.cpp']}" in text
