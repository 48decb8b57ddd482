"""Folder checks (Hugging Face model folders, LoRA adapters) and the pickle policy, on real files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from preflight.check import discover
from preflight.formats.adapter import check_adapter
from preflight.formats.hfdir import check_hf_dir
from preflight.formats.pickle import scan_pickle
from tests.builders import truncate, write_safetensors
from tests.repos import LLAMA_CONFIG, adapter, hf_model, write_tree


def codes(info) -> list[str]:
    return sorted(p.code for p in info.problems if p.is_error)


def hf(root: Path, **kw):
    return check_hf_dir(root, discover(root), **kw)


def test_model_folder_description(tmp_path: Path) -> None:
    cfg = {**LLAMA_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4}}
    info = hf(write_tree(tmp_path, hf_model(config=cfg)))
    assert codes(info) == []
    assert (info.architecture, info.model_type, info.dtype, info.context_length, info.quantization) == (
        "LlamaForCausalLM", "llama", "bfloat16", 2048, "awq 4-bit")
    assert info.tensors["model.layers.0.self_attn.k_proj.weight"] == ("BF16", [8, 16])


@pytest.mark.parametrize("tokenizer", [{"tokenizer.model": b"sp"}, {"vocab.json": b"{}", "merges.txt": b""}, {"vocab.txt": b"a\n"}])
def test_other_tokenizer_layouts(tmp_path: Path, tokenizer: dict[str, bytes]) -> None:
    files = {k: v for k, v in hf_model().items() if k != "tokenizer.json"}
    info = hf(write_tree(tmp_path, {**files, **tokenizer}))
    assert codes(info) == [] and info.tokenizer == list(tokenizer)


def test_half_a_tokenizer_is_missing(tmp_path: Path) -> None:
    files = {k: v for k, v in hf_model().items() if k != "tokenizer.json"}
    info = hf(write_tree(tmp_path, {**files, "vocab.json": b"{}"}))
    assert codes(info) == ["tokenizer-missing"]
    assert codes(hf(tmp_path, serves_text=False)) == []


@pytest.mark.parametrize("config, code", [
    (b"", "empty-file"), (b"{", "config-invalid"), (b'"text"', "config-invalid"),
    (json.dumps({**LLAMA_CONFIG, "quantization_config": "awq"}).encode(), "config-invalid"),
])
def test_config_problems(tmp_path: Path, config: bytes, code: str) -> None:
    info = hf(write_tree(tmp_path, {**hf_model(), "config.json": config}))
    assert codes(info) == [code]


def test_config_missing(tmp_path: Path) -> None:
    files = {k: v for k, v in hf_model().items() if k != "config.json"}
    assert codes(hf(write_tree(tmp_path, files))) == ["config-missing"]


def test_nested_safetensors_are_validated(tmp_path: Path) -> None:
    root = write_tree(tmp_path, hf_model())
    (root / "1_Pooling").mkdir()
    write_safetensors(root / "1_Pooling" / "dense.safetensors", {"w": np.zeros((4, 4), np.float32)})
    assert codes(hf(root)) == []
    truncate(root / "1_Pooling" / "dense.safetensors", by=1)
    info = hf(root)
    assert codes(info) == ["truncated"] and info.problems[0].path == "1_Pooling/dense.safetensors"


def test_pickle_weights_refused_then_scanned(tmp_path: Path) -> None:
    files = {k: v for k, v in hf_model().items() if k != "model.safetensors"}
    root = write_tree(tmp_path, {**files, "pytorch_model.bin": pickle.dumps({"w": [1.0, 2.0]}), "training_args.bin": b"\x80\x04N."})
    # refused pickles are not usable weights; training_args.bin is not weights at all
    assert codes(hf(root)) == ["unsafe-pickle", "weights-missing"]
    info = hf(root, allow_pickle=True)
    assert codes(info) == [] and info.weights == ["pytorch_model.bin"]


def test_scan_pickle(tmp_path: Path) -> None:
    safe = tmp_path / "safe.pkl"
    safe.write_bytes(pickle.dumps({"a": (1, 2.0, "x")}))
    assert scan_pickle(safe) == []
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cposix\nsystem\n(S'id'\ntR.")
    (problem,) = scan_pickle(evil)
    assert problem.code == "dangerous-pickle" and problem.is_error and "posix.system" in problem.message
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x05\xff\xff not a pickle")
    assert [p.code for p in scan_pickle(junk) if p.is_error] == ["dangerous-pickle"]


def test_adapter_against_its_base(tmp_path: Path) -> None:
    base = hf(write_tree(tmp_path / "base", hf_model()))
    good = write_tree(tmp_path / "good", adapter(modules=("q_proj", "k_proj", "v_proj", "o_proj")))
    info = check_adapter(good, discover(good), base=base)
    assert codes(info) == [] and info.rank == 4 and info.tensor_count == 16

    wide = write_tree(tmp_path / "wide", adapter(in_dim=24))
    msgs = [p.message for p in check_adapter(wide, discover(wide), base=base).problems]
    assert msgs and all("input dim 24, the base's" in m for m in msgs)

    wrong_out = write_tree(tmp_path / "out", adapter(out_dims={"q_proj": 16, "v_proj": 16}))
    info = check_adapter(wrong_out, discover(wrong_out), base=base)
    assert codes(info) and set(codes(info)) == {"adapter-base-mismatch"}
    assert any("output dim 16, the base's model.layers.0.self_attn.v_proj gives 8" in p.message for p in info.problems)

    alien = write_tree(tmp_path / "alien", adapter(modules=("c_attn",), out_dims={"c_attn": 48}))
    info = check_adapter(alien, discover(alien), base=base)
    assert "target module 'c_attn' does not exist" in info.problems[0].message


def test_adapter_layers_beyond_the_base(tmp_path: Path) -> None:
    base = hf(write_tree(tmp_path / "base", hf_model(config={**LLAMA_CONFIG, "num_hidden_layers": 1})))
    lora = write_tree(tmp_path / "lora", adapter())
    info = check_adapter(lora, discover(lora), base=base)
    assert any("is for layer 1, the base has 1 layers" in p.message for p in info.problems)


def test_adapter_missing_parts(tmp_path: Path) -> None:
    files = adapter()
    only_config = write_tree(tmp_path / "a", {"adapter_config.json": files["adapter_config.json"]})
    info = check_adapter(only_config, discover(only_config))
    assert codes(info) == ["missing"]
    no_config = write_tree(tmp_path / "b", {"adapter_model.safetensors": files["adapter_model.safetensors"]})
    assert codes(check_adapter(no_config, discover(no_config))) == ["adapter-invalid"]
