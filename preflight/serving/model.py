"""The facts of a model that fit needs, read as the engines read them: config.json (vLLM) or GGUF metadata (llama.cpp).

config.json is read as vLLM 0.19.1's `ModelArchConfigConvertorBase` reads it
(vllm/transformers_utils/model_arch_config_convertor.py): the text config of a multimodal
model, `head_dim` else hidden_size / num_attention_heads, KV heads from `n_head_kv`,
`num_kv_heads`, `num_key_value_heads`, `multi_query_group_num` (else the attention heads;
Falcon's `multi_query` is one), DeepSeek-style MLA (`kv_lora_rank` on the model types vLLM
lists) with head size kv_lora_rank + qk_rope_head_dim, and the derived maximum length of
`_get_and_verify_max_len` (the smallest of the length keys, `model_max_length` winning,
multiplied by the rope scaling factor unless the rope type is su/longrope/llama3; yarn
starts from `original_max_position_embeddings`; gemma3 is already scaled).

Sliding-window layers: `layer_types` when the config lists them; Gemma 2 every other layer
(even ones slide), Gemma 3 all but every `sliding_window_pattern`-th (default 6); a
`sliding_window` with `use_sliding_window: false` (Qwen2) is off; otherwise a
`sliding_window` applies to every layer (Mistral 7B v0.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from ..record import record

MLA_MODEL_TYPES = ("AXK1", "deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_mtp", "glm_moe_dsa", "glm4_moe_lite",
                   "kimi_k2", "kimi_linear", "longcat_flash", "pangu_ultra_moe", "bailing_hybrid")
_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
             "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
_DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4}


@record
class ConfigFacts:
    architecture: str | None
    model_type: str | None
    layers: int
    heads: int
    kv_heads: int
    head_size: int
    hidden: int
    vocab: int
    intermediate: int
    dtype: str | None  # torch_dtype as written
    mla: bool = False
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    sliding_window: int | None = None
    layer_types: list[str] | None = None  # per layer: "full" | "sliding" | "other" (no KV: mamba, linear attention)
    derived_max_len: float = float("inf")
    max_len_key: str | None = None
    quant_method: str | None = None
    tied: bool = False
    auto_map: bool = False
    hybrid_unknown: bool = False  # a hybrid model whose layer kinds could not be told
    notes: list[str] = field(default_factory=list)

    @property
    def sliding_layers(self) -> int:
        return sum(1 for t in self.layer_types or () if t == "sliding")


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("text_config", "llm_config", "language_config"):
        sub = config.get(key)
        if isinstance(sub, Mapping) and (sub.get("num_hidden_layers") or sub.get("hidden_size")):
            return sub
    return config


def _num(m: Mapping[str, Any], *keys: str, default: Any = 0) -> Any:
    for k in keys:
        v = m.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return default


def config_facts(config: Mapping[str, Any]) -> ConfigFacts:
    """What vLLM derives from config.json (see the module docstring)."""
    text = text_config(config)
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    model_type = text.get("model_type") if isinstance(text.get("model_type"), str) else config.get("model_type")
    heads = int(_num(text, "num_attention_heads", "n_head", "num_heads"))
    hidden = int(_num(text, "hidden_size", "n_embd", "d_model"))
    layers = int(_num(text, "num_hidden_layers", "n_layer", "num_layers"))
    mla = model_type in MLA_MODEL_TYPES and text.get("kv_lora_rank") is not None
    rope = int(_num(text, "qk_rope_head_dim")) if mla else 0
    lora = int(_num(text, "kv_lora_rank")) if mla else 0
    if mla:
        head = lora + rope
    elif text.get("head_dim") is not None:
        head = int(text["head_dim"])
    elif text.get("hidden_size_per_head") is not None:
        head = int(text["hidden_size_per_head"])
    else:
        head = hidden // heads if heads else 0
    if model_type in ("falcon", "RefinedWeb", "RefinedWebModel") and not text.get("new_decoder_architecture") and text.get("multi_query"):
        kv = 1
    else:
        kv = int(_num(text, "n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num", default=heads))
    attn_cfg = text.get("attn_config")
    if isinstance(attn_cfg, Mapping) and isinstance(attn_cfg.get("kv_n_heads"), int):
        kv = attn_cfg["kv_n_heads"]  # MPT, DBRX
    vocab = int(_num(text, "vocab_size", "padded_vocab_size", "n_vocab"))
    inter = int(_num(text, "intermediate_size", "ffn_hidden_size", "n_inner", default=4 * hidden))
    dtype = config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or text.get("dtype")
    facts = ConfigFacts(arch, model_type, layers, heads, kv, head, hidden, vocab, inter, dtype if isinstance(dtype, str) else None,
                        mla, lora, rope)
    facts.tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    facts.auto_map = isinstance(config.get("auto_map"), Mapping)
    q = config.get("quantization_config") or config.get("compression_config") or (text.get("quantization_config") if text is not config else None)
    if isinstance(q, Mapping):
        method = str(q.get("quant_method") or "").lower().replace("compressed_tensors", "compressed-tensors")
        producer = q.get("producer")
        if isinstance(producer, Mapping) and producer.get("name") == "modelopt":
            algo = str((q.get("quantization") or {}).get("quant_algo", "")).upper()
            method = "modelopt_fp4" if algo == "NVFP4" else "modelopt"
        facts.quant_method = method or None
    _max_len(config, text, facts)
    _layer_types(text, facts)
    return facts


# Every key config_facts reads (top level, and inside text_config / llm_config / language_config):
# what the lock and the receipts keep of a config.json (`slim_config`), so a config with a 2 MB
# id2label map costs them a few hundred bytes.
_SUB_CONFIGS = ("text_config", "llm_config", "language_config")
FIT_CONFIG_KEYS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "tie_word_embeddings", "auto_map", "quantization_config",
    "compression_config", *_SUB_CONFIGS, "num_attention_heads", "n_head", "num_heads", "hidden_size", "n_embd", "d_model",
    "num_hidden_layers", "n_layer", "num_layers", "kv_lora_rank", "qk_rope_head_dim", "head_dim", "hidden_size_per_head",
    "new_decoder_architecture", "multi_query", "n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num",
    "attn_config", "vocab_size", "padded_vocab_size", "n_vocab", "intermediate_size", "ffn_hidden_size", "n_inner", *_LEN_KEYS,
    "rope_parameters", "rope_scaling", "sliding_window", "layer_types", "layers_block_type", "sliding_window_pattern",
    "use_sliding_window", "mamba_d_state", "ssm_state_size", "attn_layer_indices", "linear_attn_config", "full_attention_interval",
})
_QUANT_KEYS = ("quant_method", "producer", "quantization")


def slim_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config.json that config_facts reads: config_facts(slim_config(c)) == config_facts(c)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key not in FIT_CONFIG_KEYS:
            continue
        if key in _SUB_CONFIGS and isinstance(value, Mapping):
            value = slim_config(value)
        elif key in ("quantization_config", "compression_config") and isinstance(value, Mapping):
            value = {k: value[k] for k in _QUANT_KEYS if k in value}
        out[key] = value
    return out


def _max_len(config: Mapping[str, Any], text: Mapping[str, Any], facts: ConfigFacts) -> None:
    derived, key = float("inf"), None
    for k in _LEN_KEYS:
        v = text.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if v < derived:
                key = k
            derived = min(derived, v)
    if isinstance(text.get("model_max_length"), (int, float)) and text.get("model_max_length"):
        derived, key = text["model_max_length"], "model_max_length"
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    if isinstance(rope, Mapping) and rope and "gemma3" not in str(config.get("model_type", "")):
        groups = rope.values() if all(isinstance(v, Mapping) for v in rope.values()) else [rope]
        factor = 1.0
        for rp in groups:
            rtype = rp.get("rope_type", rp.get("type", "default"))
            if rtype not in ("su", "longrope", "llama3"):
                factor = rp.get("factor", factor)
                if rtype == "yarn" and rp.get("original_max_position_embeddings"):
                    derived = rp["original_max_position_embeddings"]
        derived *= factor if factor is not None else 1.0
    facts.derived_max_len, facts.max_len_key = derived, key


def _layer_types(text: Mapping[str, Any], facts: ConfigFacts) -> None:
    n = facts.layers
    window = text.get("sliding_window")
    window = int(window) if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    types = text.get("layer_types")
    mt = facts.model_type or ""
    if isinstance(types, list) and len(types) == n:
        out = []
        for t in types:
            t = str(t)
            out.append("sliding" if "sliding" in t or t == "chunked_attention" else "full" if "attention" in t and "linear" not in t else "other")
        facts.layer_types = out
    elif isinstance(text.get("layers_block_type"), list):
        facts.layer_types = ["full" if t in ("attention", "hybrid") else "other" for t in text["layers_block_type"]]
    elif mt == "gemma2" and window:
        facts.layer_types = ["sliding" if i % 2 == 0 else "full" for i in range(n)]
    elif mt in ("gemma3", "gemma3_text") and window:
        pattern = int(text.get("sliding_window_pattern") or 6)
        facts.layer_types = ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n)]
    elif window and text.get("use_sliding_window", True) is not False and mt not in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        facts.layer_types = ["sliding"] * n
    else:
        if any(k in text for k in ("mamba_d_state", "ssm_state_size", "attn_layer_indices", "linear_attn_config", "full_attention_interval")):
            facts.hybrid_unknown = True
        facts.layer_types = ["full"] * n
    if facts.layer_types and any(t == "sliding" for t in facts.layer_types):
        if window is None:
            facts.layer_types = ["full" if t == "sliding" else t for t in facts.layer_types]
        facts.sliding_window = window


def dtype_bytes(name: str | None) -> int:
    return _DTYPE_BYTES.get(str(name or "").replace("torch.", ""), 2)


# --------------------------------------------------------------------------- GGUF

# llama.cpp's default sliding-window pattern (load_swa_pattern(ml, N) in src/models/<arch>.cpp,
# llama-cpp-python 0.3.36) and default window where the file may leave it out. The
# `{arch}.attention.sliding_window_pattern` key, when present, wins.
LLAMA_SWA = {"gemma2": (2, 4096), "gemma3": (6, None), "gemma3n": (5, None), "cohere2": (4, None), "exaone4": (4, 4096),
             "gpt-oss": (2, None), "afmoe": (4, None), "exaone-moe": (4, 128)}
# architectures whose SWA or recurrent state llama.cpp sizes in ways not modelled here: figures are estimates
LLAMA_SWA_OTHER = frozenset({"llama4", "cohere2moe", "deepseek4", "granite-swa", "laguna", "lfm2", "lfm2moe", "mimo2", "phi3",
                             "phimoe", "plamo3", "smallthinker", "step35", "olmo2", "gemma4", "gemma-embedding", "modern-bert"})


@record
class GGUFFacts:
    architecture: str
    layers: int
    n_embd: int
    heads: list[int]
    kv_heads: list[int]
    key_length: int
    value_length: int
    ctx_train: int
    swa: list[bool]
    n_swa: int = 0
    mla: bool = False
    estimate: str | None = None  # why the KV figure is only an estimate


def _per_layer(value: Any, n: int) -> list[int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(x, int) for x in value):
        return list(value)
    return None


def gguf_facts(metadata: Mapping[str, Any]) -> GGUFFacts | None:
    """llama.cpp's hparams from GGUF metadata, or None when the file is no model it can size."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return None
    p = arch + "."
    n = metadata.get(p + "block_count")
    embd = metadata.get(p + "embedding_length")
    if not isinstance(n, int) or not isinstance(embd, int) or n <= 0:
        return None
    heads = _per_layer(metadata.get(p + "attention.head_count"), n)
    if heads is None:
        return None
    kv = _per_layer(metadata.get(p + "attention.head_count_kv", metadata.get(p + "attention.head_count")), n) or heads
    h0 = max(heads) or 1
    k_len = metadata.get(p + "attention.key_length", embd // h0)
    v_len = metadata.get(p + "attention.value_length", embd // h0)
    ctx = metadata.get(p + "context_length", 0)
    facts = GGUFFacts(arch, n, embd, heads, kv, int(k_len), int(v_len), int(ctx) if isinstance(ctx, int) else 0, [False] * n)
    window = metadata.get(p + "attention.sliding_window")
    pattern_key = metadata.get(p + "attention.sliding_window_pattern")
    if arch in LLAMA_SWA:
        default_pattern, default_window = LLAMA_SWA[arch]
        n_swa = window if isinstance(window, int) else default_window
        if arch == "gemma3" and not (isinstance(window, int) and window > 0):
            n_swa = None
        if n_swa:
            if isinstance(pattern_key, (list, tuple)) and len(pattern_key) == n:
                facts.swa = [bool(x) for x in pattern_key]
            else:
                pat = pattern_key if isinstance(pattern_key, int) else default_pattern
                facts.swa = [pat == 0 or (il % pat < pat - 1) for il in range(n)]
            facts.n_swa = int(n_swa)
    elif arch in LLAMA_SWA_OTHER or isinstance(window, int) and window > 0:
        facts.estimate = f"llama.cpp sizes the {arch} cache with its own sliding-window or state rules; the full-size cache is shown"
    if metadata.get(p + "attention.kv_lora_rank") is not None:
        facts.mla = True
        facts.estimate = "MLA cache (DeepSeek) in llama.cpp: the figure assumes K and V rows of key_length / value_length"
    if metadata.get(p + "ssm.state_size") is not None or metadata.get(p + "wkv.head_size") is not None:
        facts.estimate = f"{arch} keeps a recurrent state llama.cpp sizes apart; only the attention cache is counted"
    return facts
