"""Tensor layouts of real model families, tiny, for the model-level checks (written with the real writer).

Names and shapes follow what transformers' `save_pretrained` writes for each family
(the same names the Hub's checkpoints carry); sizes are shrunk to a few elements.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.builders import write_safetensors, write_sharded
from tests.repos import TOKENIZER

Layout = dict[str, tuple[str, tuple[int, ...]]]

H, V, L = 16, 32, 2  # hidden size, vocabulary, layers


def decoder(prefix: str = "model.", *, layers: int = L, vocab: int = V, hidden: int = H, head: str | None = "lm_head.weight",
            experts: int = 0) -> Layout:
    """Llama/Qwen2/Mistral naming; `experts` > 0 gives Mixtral-style MoE blocks."""
    t: Layout = {f"{prefix}embed_tokens.weight": ("BF16", (vocab, hidden)), f"{prefix}norm.weight": ("BF16", (hidden,))}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        t[p + "self_attn.q_proj.weight"] = ("BF16", (hidden, hidden))
        t[p + "input_layernorm.weight"] = ("BF16", (hidden,))
        if experts:
            for e in range(experts):
                t[p + f"block_sparse_moe.experts.{e}.w1.weight"] = ("BF16", (2 * hidden, hidden))
            t[p + "block_sparse_moe.gate.weight"] = ("BF16", (experts, hidden))
        else:
            t[p + "mlp.up_proj.weight"] = ("BF16", (2 * hidden, hidden))
    if head:
        t[head] = ("BF16", (vocab, hidden))
    return t


def awq(prefix: str = "model.") -> Layout:
    """AWQ/GPTQ: linear layers as qweight/qzeros/scales (int32 packed), embedding and head in F16."""
    t: Layout = {f"{prefix}embed_tokens.weight": ("F16", (V, H)), "lm_head.weight": ("F16", (V, H))}
    for i in range(L):
        p = f"{prefix}layers.{i}.self_attn.q_proj."
        t[p + "qweight"] = ("I32", (H, H // 8))
        t[p + "qzeros"] = ("I32", (1, H // 8))
        t[p + "scales"] = ("F16", (1, H))
    return t


def fp8_compressed() -> Layout:
    """compressed-tensors FP8: F8_E4M3 weights with a weight_scale each."""
    t: Layout = {"model.embed_tokens.weight": ("BF16", (V, H)), "lm_head.weight": ("BF16", (V, H))}
    for i in range(L):
        p = f"model.layers.{i}.mlp.down_proj."
        t[p + "weight"] = ("F8_E4M3", (H, H))
        t[p + "weight_scale"] = ("BF16", (H, 1))
    return t


def bnb4() -> Layout:
    """bitsandbytes nf4: packed U8 weights with absmax/quant_map/quant_state beside them."""
    t: Layout = {"model.embed_tokens.weight": ("F16", (V, H)), "lm_head.weight": ("F16", (V, H))}
    for i in range(L):
        p = f"model.layers.{i}.mlp.down_proj.weight"
        t[p] = ("U8", (H * H // 2, 1))
        t[p + ".absmax"] = ("F32", (4,))
        t[p + ".quant_map"] = ("F32", (16,))
        t[p + ".quant_state.bitsandbytes__nf4"] = ("U8", (8,))
    return t


def gpt2(prefix: str = "transformer.") -> Layout:
    t: Layout = {f"{prefix}wte.weight": ("F32", (V, H)), f"{prefix}wpe.weight": ("F32", (64, H))}
    for i in range(L):
        t[f"{prefix}h.{i}.attn.c_attn.weight"] = ("F32", (H, 3 * H))
    return t


def gpt_neox() -> Layout:
    t: Layout = {"gpt_neox.embed_in.weight": ("F16", (V, H)), "embed_out.weight": ("F16", (V, H))}
    for i in range(L):
        t[f"gpt_neox.layers.{i}.attention.query_key_value.weight"] = ("F16", (3 * H, H))
    return t


def encoder(prefix: str = "", *, layers: int = L, vocab: int = V, hidden: int = H) -> Layout:
    """BERT / XLM-RoBERTa (bge-m3: no prefix; the reranker: `roberta.`)."""
    t: Layout = {f"{prefix}embeddings.word_embeddings.weight": ("F32", (vocab, hidden)),
                 f"{prefix}embeddings.position_embeddings.weight": ("F32", (64, hidden))}
    for i in range(layers):
        t[f"{prefix}encoder.layer.{i}.attention.self.query.weight"] = ("F32", (hidden, hidden))
    return t


def vision_tower(prefix: str = "vision_tower.vision_model.", layers: int = 3) -> Layout:
    t: Layout = {f"{prefix}embeddings.patch_embedding.weight": ("F32", (H, 3, 2, 2))}
    for i in range(layers):
        t[f"{prefix}encoder.layers.{i}.self_attn.q_proj.weight"] = ("F32", (H, H))
    return t


def llama_config(**over) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "num_hidden_layers": L,
            "vocab_size": V, "tie_word_embeddings": False, **over}


def write_folder(root: Path, config: dict, tensors: Layout, *, shards: int = 0, tokenizer: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (root / "tokenizer.json").write_text(json.dumps(TOKENIZER))
    if shards:
        write_sharded(root, shards, tensors=tensors)
    else:
        write_safetensors(root / "model.safetensors", tensors, metadata={"format": "pt"})
    return root
