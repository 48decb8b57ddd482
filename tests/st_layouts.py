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
LINEAR = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def decoder(prefix: str = "model.", *, layers: int = L, vocab: int = V, hidden: int = H, head: str | None = "lm_head.weight",
            experts: int = 0) -> Layout:
    """Llama/Qwen2/Mistral naming; `experts` > 0 gives Mixtral-style MoE blocks."""
    t: Layout = {f"{prefix}embed_tokens.weight": ("BF16", (vocab, hidden)), f"{prefix}norm.weight": ("BF16", (hidden,))}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{proj}.weight"] = ("BF16", (hidden, hidden))
        t[p + "input_layernorm.weight"] = ("BF16", (hidden,))
        t[p + "post_attention_layernorm.weight"] = ("BF16", (hidden,))
        if experts:
            for e in range(experts):
                for w, shape in (("w1", (2 * hidden, hidden)), ("w2", (hidden, 2 * hidden)), ("w3", (2 * hidden, hidden))):
                    t[p + f"block_sparse_moe.experts.{e}.{w}.weight"] = ("BF16", shape)
            t[p + "block_sparse_moe.gate.weight"] = ("BF16", (experts, hidden))
        else:
            t[p + "mlp.gate_proj.weight"] = ("BF16", (2 * hidden, hidden))
            t[p + "mlp.up_proj.weight"] = ("BF16", (2 * hidden, hidden))
            t[p + "mlp.down_proj.weight"] = ("BF16", (hidden, 2 * hidden))
    if head:
        t[head] = ("BF16", (vocab, hidden))
    return t


def awq(prefix: str = "model.") -> Layout:
    """AWQ/GPTQ: linear layers as qweight/qzeros/scales (int32 packed), embedding and head in F16."""
    t: Layout = {f"{prefix}embed_tokens.weight": ("F16", (V, H)), "lm_head.weight": ("F16", (V, H))}
    for i in range(L):
        for module in LINEAR:
            p = f"{prefix}layers.{i}.{module}."
            t[p + "qweight"] = ("I32", (H, H // 8))
            t[p + "qzeros"] = ("I32", (1, H // 8))
            t[p + "scales"] = ("F16", (1, H))
    return t


def fp8_compressed() -> Layout:
    """compressed-tensors FP8: F8_E4M3 weights with a weight_scale each."""
    t: Layout = {"model.embed_tokens.weight": ("BF16", (V, H)), "lm_head.weight": ("BF16", (V, H))}
    for i in range(L):
        for module in LINEAR:
            p = f"model.layers.{i}.{module}."
            t[p + "weight"] = ("F8_E4M3", (H, H))
            t[p + "weight_scale"] = ("BF16", (H, 1))
    return t


def bnb4() -> Layout:
    """bitsandbytes nf4: packed U8 weights with absmax/quant_map/quant_state beside them."""
    t: Layout = {"model.embed_tokens.weight": ("F16", (V, H)), "lm_head.weight": ("F16", (V, H))}
    for i in range(L):
        for module in LINEAR:
            p = f"model.layers.{i}.{module}.weight"
            t[p] = ("U8", (H * H // 2, 1))
            t[p + ".absmax"] = ("F32", (4,))
            t[p + ".quant_map"] = ("F32", (16,))
            t[p + ".quant_state.bitsandbytes__nf4"] = ("U8", (8,))
    return t


def gpt2(prefix: str = "transformer.") -> Layout:
    return gpt2_layers(L, prefix)


def gpt_neox() -> Layout:
    t: Layout = {"gpt_neox.embed_in.weight": ("F16", (V, H)), "embed_out.weight": ("F16", (V, H))}
    for i in range(L):
        t[f"gpt_neox.layers.{i}.attention.query_key_value.weight"] = ("F16", (3 * H, H))
    return t


def encoder(prefix: str = "", *, layers: int = L, vocab: int = V, hidden: int = H, inner: int = 4 * H, positions: int = 64) -> Layout:
    """BERT / XLM-RoBERTa (bge-m3: no prefix; the reranker: `roberta.`), every tensor BertModel builds."""
    t: Layout = {f"{prefix}embeddings.word_embeddings.weight": ("F32", (vocab, hidden)),
                 f"{prefix}embeddings.position_embeddings.weight": ("F32", (positions, hidden)),
                 f"{prefix}embeddings.token_type_embeddings.weight": ("F32", (2, hidden)),
                 f"{prefix}embeddings.LayerNorm.weight": ("F32", (hidden,)), f"{prefix}embeddings.LayerNorm.bias": ("F32", (hidden,))}
    for i in range(layers):
        p = f"{prefix}encoder.layer.{i}."
        for module, out, inp in (("attention.self.query", hidden, hidden), ("attention.self.key", hidden, hidden),
                                 ("attention.self.value", hidden, hidden), ("attention.output.dense", hidden, hidden),
                                 ("intermediate.dense", inner, hidden), ("output.dense", hidden, inner)):
            t[p + module + ".weight"] = ("F32", (out, inp))
            t[p + module + ".bias"] = ("F32", (out,))
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = ("F32", (hidden,))
            t[p + ln + ".bias"] = ("F32", (hidden,))
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


def _attention(t: Layout, p: str, hidden: int = H) -> None:
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        t[p + f"self_attn.{proj}.weight"] = ("BF16", (hidden, hidden))
    t[p + "input_layernorm.weight"] = ("BF16", (hidden,))
    t[p + "post_attention_layernorm.weight"] = ("BF16", (hidden,))


def _mlp(t: Layout, p: str, inner: int) -> None:
    t[p + "gate_proj.weight"] = ("BF16", (inner, H))
    t[p + "up_proj.weight"] = ("BF16", (inner, H))
    t[p + "down_proj.weight"] = ("BF16", (H, inner))


def dense_then_moe(layers: int = 4, dense: int = 1, experts: int = 4) -> Layout:
    """DeepSeek V2/V3 (`first_k_dense_replace`): the first layers dense, the rest MoE. Sizes chosen
    so that the router `mlp.gate.weight` has the shape of the dense `mlp.gate_proj.weight`."""
    t: Layout = {"model.embed_tokens.weight": ("BF16", (V, H)), "model.norm.weight": ("BF16", (H,)), "lm_head.weight": ("BF16", (V, H))}
    for i in range(layers):
        p = f"model.layers.{i}."
        _attention(t, p)
        if i < dense:
            _mlp(t, p + "mlp.", experts)
        else:
            for e in range(experts):
                _mlp(t, p + f"mlp.experts.{e}.", 8)
            _mlp(t, p + "mlp.shared_experts.", 8)
            t[p + "mlp.gate.weight"] = ("BF16", (experts, H))
    return t


def interleaved_moe(layers: int = 4, step: int = 2) -> Layout:
    """Llama 4 (`interleave_moe_layer_step`): every step-th layer MoE, the others dense, names alike."""
    t: Layout = {"language_model.model.embed_tokens.weight": ("BF16", (V, H)), "language_model.model.norm.weight": ("BF16", (H,)),
                 "language_model.lm_head.weight": ("BF16", (V, H))}
    for i in range(layers):
        p = f"language_model.model.layers.{i}."
        _attention(t, p)
        if (i + 1) % step == 0:
            t[p + "feed_forward.experts.gate_up_proj"] = ("BF16", (4, H, 2 * H))
            t[p + "feed_forward.experts.down_proj"] = ("BF16", (4, H, H))
            t[p + "feed_forward.router.weight"] = ("BF16", (4, H))
            _mlp(t, p + "feed_forward.shared_expert.", H)
        else:
            _mlp(t, p + "feed_forward.", H)
    return t


def hybrid(types: list[str]) -> Layout:
    """Jamba-like: attention layers among mamba layers (`layers_block_type`)."""
    t: Layout = {"model.embed_tokens.weight": ("BF16", (V, H)), "model.final_layernorm.weight": ("BF16", (H,)),
                 "lm_head.weight": ("BF16", (V, H))}
    for i, kind in enumerate(types):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = ("BF16", (H,))
        t[p + "pre_ff_layernorm.weight"] = ("BF16", (H,))
        if kind == "attention":
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                t[p + f"self_attn.{proj}.weight"] = ("BF16", (H, H))
        else:
            t[p + "mamba.in_proj.weight"] = ("BF16", (4 * H, H))
            t[p + "mamba.out_proj.weight"] = ("BF16", (H, 2 * H))
            t[p + "mamba.conv1d.weight"] = ("BF16", (2 * H, 1, 4))
            t[p + "mamba.A_log"] = ("F32", (2 * H, 16))
            t[p + "mamba.D"] = ("F32", (2 * H,))
        _mlp(t, p + "feed_forward.", 2 * H)
    return t


def gpt2_layers(layers: int, prefix: str = "transformer.") -> Layout:
    """Every tensor GPT2LMHeadModel builds (the head tied to wte, so not stored)."""
    t: Layout = {f"{prefix}wte.weight": ("F32", (V, H)), f"{prefix}wpe.weight": ("F32", (64, H)),
                 f"{prefix}ln_f.weight": ("F32", (H,)), f"{prefix}ln_f.bias": ("F32", (H,))}
    for i in range(layers):
        p = f"{prefix}h.{i}."
        for name, shape in (("attn.c_attn", (H, 3 * H)), ("attn.c_proj", (H, H)), ("mlp.c_fc", (H, 4 * H)), ("mlp.c_proj", (4 * H, H))):
            t[p + name + ".weight"] = ("F32", shape)
            t[p + name + ".bias"] = ("F32", (shape[1],))
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"] = ("F32", (H,))
            t[p + ln + ".bias"] = ("F32", (H,))
    return t
