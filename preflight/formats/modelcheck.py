"""Model-level checks: does config.json describe the weights beside it?

A folder whose every file is well formed can still fail to load: a shard from another
revision with one layer fewer, a vocabulary resized in the config but not in the
weights, an untied model without its LM head. These checks compare config.json with
the tensor names and shapes from the safetensors headers (no tensor data is read).

Where a family keeps its token embedding, its layers and its LM head is data, not
code: `LAYOUTS` holds one row per naming scheme and `check_model` walks it. The text
model may sit under any prefix (`model.`, `transformer.`, `gpt_neox.`, `bert.`,
`model.language_model.`, `language_model.model.`, or none), found from where the
embedding is. A folder whose names match no row, or match several (encoder-decoder
models), is not checked at model level: that is said in the facts (`inspect`
shows it), never reported as a problem.

Each check mirrors what the loaders do with the same disagreement:
  - layers: transformers builds `num_hidden_layers` layers and leaves any missing from
    the checkpoint randomly initialised (a warning only); vLLM refuses to start
    ("weights not initialized from checkpoint") and fails on a layer index it has no
    module for. Layers 0..N-1 must all be there, and none beyond (plus the
    `num_nextn_predict_layers` multi-token-prediction layers DeepSeek-V3 and GLM keep
    after the last one).
  - vocabulary: both build the embedding as `vocab_size` x `hidden_size` and refuse a
    checkpoint tensor of another shape (transformers: "size mismatch"; vLLM: an
    assertion in VocabParallelEmbedding). Rows must equal `vocab_size` exactly. A
    vocabulary padded beyond the tokenizer (Qwen2.5: 152064 rows for 151665 tokens)
    is normal and never compared with the tokenizer.
  - hidden size: the embedding width must equal `hidden_size` (or the family's
    embedding width: OPT's `word_embed_proj_dim`, ALBERT's `embedding_size`).
  - tied embeddings: with `tie_word_embeddings: false` a causal LM needs its own head
    (`lm_head.weight`, GPT-NeoX `embed_out.weight`, InternLM2 `output.weight`);
    transformers would initialise a missing one randomly (garbage output, a warning),
    vLLM refuses. When the config does not say, the model class's default decides
    and nothing is checked.
Quantized layouts are recognised, not flagged: AWQ/GPTQ (`qweight`, `qzeros`,
`scales`), compressed-tensors (`weight_packed`, `weight_scale`), bitsandbytes
(`absmax`, `quant_map`, `SCB`) and FP8 scales only change the linear layers; the
shape checks apply to float 2-D embeddings and heads only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import problems as P
from ..problems import Problem

CONFIG = "config.json"


@dataclass(frozen=True)
class Layout:
    name: str
    embedding: str  # the token embedding, after the text model's prefix
    layers: str  # the layer list, after that prefix: "<layers>.<i>."
    heads: tuple[str, ...]  # the LM head module, after the prefix or any parent of it
    families: str  # who uses it (for readers)


LAYOUTS: tuple[Layout, ...] = (
    Layout("embed_tokens + layers.N", "embed_tokens.weight", "layers", ("lm_head",),
           "Llama, Mistral, Mixtral, Qwen2/3 (MoE too), Gemma 1-3, Phi-3, DeepSeek V2/V3, OPT (model.decoder.), "
           "text models of multimodal configs (model.language_model., language_model.model.)"),
    Layout("wte + h.N", "wte.weight", "h", ("lm_head",), "GPT-2, GPT-J, StarCoder (gpt_bigcode), CodeGen, Qwen-1"),
    Layout("word_embeddings + h.N", "word_embeddings.weight", "h", ("lm_head",), "BLOOM, Falcon"),
    Layout("embed_in + layers.N", "embed_in.weight", "layers", ("embed_out",), "GPT-NeoX, Pythia"),
    Layout("tok_embeddings + layers.N", "tok_embeddings.weight", "layers", ("output",), "InternLM2"),
    Layout("embeddings.word_embeddings + encoder.layer.N", "embeddings.word_embeddings.weight", "encoder.layer", (),
           "BERT, RoBERTa, XLM-RoBERTa (bge-m3, bge-reranker), sentence-transformers folders"),
    Layout("embeddings.word_embeddings + transformer.layer.N", "embeddings.word_embeddings.weight", "transformer.layer", (),
           "DistilBERT"),
)

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
VOCAB_KEYS = ("vocab_size", "n_vocab", "padded_vocab_size")
WIDTH_KEYS = ("word_embed_proj_dim", "embedding_size", "hidden_size", "n_embd", "d_model")
TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")
LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Families whose embedding has rows beyond vocab_size by construction (model_type -> extra rows):
# Llama 3.2 Vision (MllamaTextModel) builds nn.Embedding(vocab_size + 8, ...) for its image tokens.
EMBEDDING_EXTRA_ROWS = {"mllama": 8, "mllama_text_model": 8}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})
# Tensor-name endings that mark a quantized layout, and what it is.
QUANT_MARKS = (
    (".qweight", "AWQ/GPTQ packed int"),
    (".weight_packed", "compressed-tensors packed int"),
    (".weight_scale", "FP8 / compressed-tensors scaled"),
    (".weight_scale_inv", "FP8 block-scaled"),
    (".absmax", "bitsandbytes 4-bit"),
    (".SCB", "bitsandbytes 8-bit"),
)

TensorMeta = tuple[str, tuple[int, ...]] | None  # (dtype, shape); None when only the index names it


@dataclass
class ModelFacts:
    checked: bool = False
    reason: str | None = None  # why nothing was checked
    layout: str | None = None
    prefix: str | None = None
    layers: int | None = None
    layers_found: int | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    embedding_shape: list[int] | None = None
    tied_embeddings: bool | None = None
    lm_head: bool | None = None
    quantized_layout: str | None = None
    checks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v not in (None, ())}
        d["checks"] = list(self.checks)
        return d


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's config: `text_config` (multimodal) when there is one."""
    for key in TEXT_CONFIG_KEYS:
        sub = config.get(key)
        if isinstance(sub, dict):
            return sub
    return config


def _int(cfg: Mapping[str, Any], top: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for source in (cfg, top):
        for key in keys:
            v = source.get(key)
            if type(v) is int and v > 0:
                return v
    return None


_INDEX = re.compile(r"(\d+)\.")


def _match(layout: Layout, names: list[str]) -> list[tuple[str, set[int]]]:
    """(prefix, layer indices) for each place this layout's embedding and layers are found."""
    found = []
    for name in names:
        if not name.endswith(layout.embedding):
            continue
        prefix = name[: -len(layout.embedding)]
        if prefix and not prefix.endswith("."):
            continue
        stem = prefix + layout.layers + "."
        indices = set()
        for other in names:
            if other.startswith(stem):
                m = _INDEX.match(other, len(stem))
                if m:
                    indices.add(int(m.group(1)))
        if indices:
            found.append((prefix, indices))
    return found


def check_model(config: Mapping[str, Any], tensors: Mapping[str, TensorMeta]) -> tuple[ModelFacts, list[Problem]]:
    """Compare config.json with the model's tensors (name -> (dtype, shape), or None if only indexed)."""
    facts = ModelFacts()
    if not tensors:
        facts.reason = "no safetensors weights to compare with"
        return facts, []
    if config.get("is_encoder_decoder") is True:
        facts.reason = "encoder-decoder models are not checked at model level"
        return facts, []
    names = list(tensors)
    facts.quantized_layout = next((what for mark, what in QUANT_MARKS if any(n.endswith(mark) for n in names)), None)
    matches = [(layout, prefix, idx) for layout in LAYOUTS for prefix, idx in _match(layout, names)]
    if not matches:
        facts.reason = "tensor names match no known layout (embedding + numbered layers)"
        return facts, []
    if len(matches) > 1:
        where = ", ".join(f"{p or '(root)'}{layout.embedding}" for layout, p, _ in matches)
        facts.reason = f"several text models in one folder ({where})"
        return facts, []
    (layout, prefix, indices), = matches
    cfg = text_config(config)
    facts.checked, facts.layout, facts.prefix = True, layout.name, prefix
    facts.layers_found = len(indices)
    out: list[Problem] = []
    checks = []

    n = facts.layers = _int(cfg, config, LAYER_KEYS)
    if n is not None:
        checks.append("layers")
        extra_ok = _int(cfg, config, ("num_nextn_predict_layers",)) or 0
        missing = sorted(set(range(n)) - indices)
        beyond = sorted(i for i in indices if i >= n + extra_ok)
        stem = prefix + layout.layers
        if missing:
            out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} says {n} layers; the weights have none for "
                               f"{_ranges(missing)} under {stem}. (transformers would initialise them randomly, vLLM refuses)"))
        if beyond:
            out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} says {n} layers (0-{n - 1}); the weights also hold "
                               f"{stem}.{_ranges(beyond)}, which no module takes (vLLM fails on them)"))

    vocab = facts.vocab_size = _int(cfg, config, VOCAB_KEYS)
    width = facts.hidden_size = _int(cfg, config, WIDTH_KEYS)
    emb_name = prefix + layout.embedding
    emb = tensors.get(emb_name)
    if emb is not None and len(emb[1]) == 2 and emb[0] in FLOAT_DTYPES:
        rows, cols = emb[1]
        facts.embedding_shape = [rows, cols]
        if vocab is not None:
            checks.append("vocab_size")
            extra = EMBEDDING_EXTRA_ROWS.get(cfg.get("model_type"), EMBEDDING_EXTRA_ROWS.get(config.get("model_type"), 0))
            if rows != vocab + extra:
                out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} says vocab_size {vocab}; {emb_name} has {rows} rows "
                                   "(both loaders build the embedding from vocab_size and refuse another shape)"))
        if width is not None:
            checks.append("hidden_size")
            if cols != width:
                key = next(k for k in WIDTH_KEYS if _int(cfg, config, (k,)) == width)
                out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} says {key} {width}; {emb_name} is {cols} wide"))

    arch = _architecture(config)
    if layout.heads and arch is not None and arch.endswith(LM_SUFFIXES):
        tie = cfg.get("tie_word_embeddings", config.get("tie_word_embeddings"))
        facts.tied_embeddings = tie if isinstance(tie, bool) else None
        head_name, head = _find_head(layout, prefix, tensors)
        facts.lm_head = head_name is not None
        if tie is False:
            checks.append("tie_word_embeddings")
            if head_name is None:
                want = " or ".join(f"{h}.weight" for h in layout.heads)
                out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} says tie_word_embeddings false, but there is no {want} "
                                   "(transformers would initialise the head randomly, vLLM refuses)"))
        if head is not None and len(head[1]) == 2 and head[0] in FLOAT_DTYPES and vocab is not None and head[1][0] != vocab:
            out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} says vocab_size {vocab}; {head_name} has {head[1][0]} rows"))
    facts.checks = tuple(checks)
    return facts, out


def _architecture(config: Mapping[str, Any]) -> str | None:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None


def _find_head(layout: Layout, prefix: str, tensors: Mapping[str, TensorMeta]) -> tuple[str | None, TensorMeta]:
    """The LM head under the text model's prefix or any parent of it (quantized heads count)."""
    parts = prefix.split(".")[:-1] if prefix else []
    parents = [".".join(parts[:i]) + "." if i else "" for i in range(len(parts), -1, -1)]
    for parent in parents:
        for head in layout.heads:
            for suffix in (".weight", ".qweight", ".weight_packed"):
                name = parent + head + suffix
                if name in tensors:
                    return name, tensors[name]
    return None, None


def _ranges(nums: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (first few runs)."""
    runs: list[str] = []
    start = prev = nums[0]
    for x in nums[1:] + [None]:  # type: ignore[list-item]
        if x is not None and x == prev + 1:
            prev = x
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(runs[:6]) + (f" and {len(runs) - 6} more ranges" if len(runs) > 6 else "")
