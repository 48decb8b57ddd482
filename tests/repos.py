"""Small but real model repos (bytes by relative path) for the Hub server and volumes."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from tests.builders import write_gguf, write_gguf_split, write_safetensors, write_sharded

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32,
    "max_position_embeddings": 2048, "torch_dtype": "bfloat16",
}
TOKENIZER = {"version": "1.0", "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(32)}, "merges": []}}


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def llama_weights() -> dict[str, tuple[str, tuple[int, ...]]]:
    t: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("BF16", (32, 16)), "lm_head.weight": ("BF16", (32, 16)),
                                                 "model.norm.weight": ("BF16", (16,))}
    for layer in range(2):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = ("BF16", (16,))
        t[p + "post_attention_layernorm.weight"] = ("BF16", (16,))
        t[p + "self_attn.q_proj.weight"] = ("BF16", (16, 16))
        t[p + "self_attn.k_proj.weight"] = ("BF16", (8, 16))
        t[p + "self_attn.v_proj.weight"] = ("BF16", (8, 16))
        t[p + "self_attn.o_proj.weight"] = ("BF16", (16, 16))
        t[p + "mlp.gate_proj.weight"] = ("BF16", (32, 16))
        t[p + "mlp.up_proj.weight"] = ("BF16", (32, 16))
        t[p + "mlp.down_proj.weight"] = ("BF16", (16, 32))
    return t


def hf_model(*, sharded: bool = False, config: dict | None = None, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """A vLLM-loadable folder: config.json, tokenizer files, safetensors weights (single or sharded)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "config.json").write_text(json.dumps(config or LLAMA_CONFIG))
        (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1}))
        (root / "tokenizer.json").write_text(json.dumps(TOKENIZER))
        (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
        if sharded:
            write_sharded(root, 3, tensors=llama_weights())
        else:
            write_safetensors(root / "model.safetensors", llama_weights(), metadata={"format": "pt"})
        files = _read_tree(root)
    files.update(extra or {})
    return files


def adapter(*, rank: int = 4, modules=("q_proj", "v_proj"), out_dims: dict[str, int] | None = None, in_dim: int = 16) -> dict[str, bytes]:
    """A PEFT LoRA adapter for the LLAMA_CONFIG base."""
    out_dims = out_dims or {"q_proj": 16, "k_proj": 8, "v_proj": 8, "o_proj": 16}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": rank, "lora_alpha": 8, "target_modules": list(modules),
            "base_model_name_or_path": "org/base",
        }))
        tensors = {}
        for layer in range(2):
            for m in modules:
                name = f"base_model.model.model.layers.{layer}.self_attn.{m}"
                tensors[f"{name}.lora_A.weight"] = np.zeros((rank, in_dim), np.float32)
                tensors[f"{name}.lora_B.weight"] = np.zeros((out_dims[m], rank), np.float32)
        write_safetensors(root / "adapter_model.safetensors", tensors)
        (root / "tokenizer.json").write_text(json.dumps(TOKENIZER))
        return _read_tree(root)


def gguf_file(name: str = "tiny.Q8_0.gguf", **kw) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        p = write_gguf(Path(d) / name, quant=kw.pop("quant", "Q8_0"), **kw)
        return {name: p.read_bytes()}


def gguf_split(stem: str = "big", n: int = 3) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        paths = write_gguf_split(Path(d), stem, n_splits=n)
        return {p.name: p.read_bytes() for p in paths}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def served(root: Path) -> dict[str, bytes]:
    """What a model server sees under `root`: every file but the state folder's (.preflight)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".preflight" not in p.relative_to(root).parts}


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz of `files`, named ./NAME as `tar -C DIR .` writes them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
