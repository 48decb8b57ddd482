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
  - modules: for the common dense decoders (`ARCHITECTURE_MODULES`: Llama, Mistral, Qwen2/3,
    Gemma) every layer must hold the attention and MLP projections the class builds
    (fused `qkv_proj` / `gate_up_proj` count); a renamed one (`mlp.upp_proj`) is a missing
    key to transformers and a refusal to vLLM. A known architecture whose embedding is
    under no usual prefix (`model.`, none, `language_model.model.`,
    `model.language_model.`) is refused likewise.
  - renamed tensors in other architectures: a name only one layer holds, standing where
    at least two layers of its kind hold a name of the same dtype, shape, depth and last
    component, is a rename (`_renamed_in_layer`; heterogeneous layer lists pass).
Quantized layouts are recognised, not flagged: AWQ/GPTQ (`qweight`, `qzeros`,
`scales`), compressed-tensors (`weight_packed`, `weight_scale`), bitsandbytes
(`absmax`, `quant_map`, `SCB`) and FP8 scales only change the linear layers; the
shape checks apply to float 2-D embeddings and heads only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .. import problems as P
from ..problems import Problem
from .hfshapes import BY_ARCHITECTURE, check_shapes
from ..record import record

CONFIG = "config.json"


@record(frozen=True)
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

@record(frozen=True)
class Modules:
    """What transformers' class for an architecture builds under the text model's prefix: a
    checkpoint without one of these leaves it randomly initialised (transformers: "missing keys",
    a warning) and vLLM refuses to start. Each entry of `layer` is a module name, or alternatives
    separated by "|" (vLLM also takes fused projections: `qkv_proj`, `gate_up_proj`). The norms
    are not listed: the projections are what quantizers and converters rename or drop."""
    embedding: str
    layer: tuple[str, ...]


_LLAMA_LAYER = ("self_attn.q_proj|self_attn.qkv_proj", "self_attn.k_proj|self_attn.qkv_proj", "self_attn.v_proj|self_attn.qkv_proj",
                "self_attn.o_proj", "mlp.gate_proj|mlp.gate_up_proj", "mlp.up_proj|mlp.gate_up_proj", "mlp.down_proj")
_LLAMA = Modules("embed_tokens", _LLAMA_LAYER)
# `architectures[0]` -> modules, for the common dense decoders (modeling_llama.py and its copies).
ARCHITECTURE_MODULES: dict[str, Modules] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,
    "Qwen2ForCausalLM": _LLAMA,
    "Qwen3ForCausalLM": Modules("embed_tokens", (*_LLAMA_LAYER, "self_attn.q_norm", "self_attn.k_norm")),
    "GemmaForCausalLM": _LLAMA,
    # Only the embedding is checked for these (their layers differ by kind: MoE, dense-first, sliding).
    **{arch: Modules("embed_tokens", ()) for arch in (
        "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM",
        "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM")},
}
# Where a known architecture's text model may sit: transformers strips or adds its base prefix
# (`model.`), multimodal wrappers keep it under `language_model.model.` or `model.language_model.`.
MODULE_PREFIXES = ("model.", "", "language_model.model.", "model.language_model.")
# Per-layer type lists in configs (hybrid and sliding-window models): layers are compared within a type.
LAYER_TYPE_KEYS = ("layer_types", "layers_block_type")

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


@record
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
    family: str | None = None  # the shape table's family (hfshapes.py)
    tensors_compared: int | None = None  # tensors whose shape was compared with config.json
    shapes_reason: str | None = None  # why the family's shapes were not compared
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
        return facts, _known_architecture_without_layout(config, names)
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
                               f"{P.number_ranges(missing)} under {stem}. (transformers would initialise them randomly, vLLM refuses)"))
        if beyond:
            out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} says {n} layers (0-{n - 1}); the weights also hold "
                               f"{stem}.{P.number_ranges(beyond)}, which no module takes (vLLM fails on them)"))

    arch = _architecture(config)
    shapes = None
    family = BY_ARCHITECTURE.get(arch or "")
    if family is not None and cfg is config and prefix == family.prefix:
        shapes, found = check_shapes(config, tensors, arch)
        out += found
        facts.family, facts.tensors_compared = shapes.family, shapes.tensors_compared
        if shapes.checked:
            checks.append("tensor shapes")
        else:
            facts.shapes_reason = shapes.reason
    if not (shapes is not None and shapes.checked and family is not None and family.strict):
        modules = ARCHITECTURE_MODULES.get(arch or "")
        covered: tuple[str, ...] = ()
        if modules is not None and layout.embedding == modules.embedding + ".weight" and layout.layers == "layers":
            out += _missing_modules(arch or "", modules, prefix, names, n)
            covered = tuple(alt for want in modules.layer for alt in want.split("|"))
        if n is not None:
            out += _renamed_in_layer(prefix + layout.layers + ".", names, tensors, n, _layer_types(cfg, config, n), covered)

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


def _present(names: list[str], module: str) -> bool:
    stem = module + "."
    return any(n.startswith(stem) for n in names)


def _known_architecture_without_layout(config: Mapping[str, Any], names: list[str]) -> list[Problem]:
    """A known architecture whose embedding is nowhere (renamed, or the weights of another model):
    transformers reports it missing and leaves it random; vLLM refuses."""
    arch = _architecture(config)
    modules = ARCHITECTURE_MODULES.get(arch or "")
    if modules is None or any(_present(names, p + modules.embedding) for p in MODULE_PREFIXES):
        return []
    want = f"model.{modules.embedding}.weight"
    return [P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} names {arch}, whose weights hold {want}; no tensor is "
                    f"{modules.embedding}.weight under any prefix (transformers would initialise it randomly, vLLM refuses)")]


def _missing_modules(arch: str, modules: Modules, prefix: str, names: list[str], n: int | None) -> list[Problem]:
    """Every module the architecture's class builds, in every layer (quantized forms count:
    any tensor under the module's name)."""
    out: list[Problem] = []
    stems: dict[str, set[str]] = {}
    layers = prefix + "layers."
    for name in names:
        if name.startswith(layers):
            i, _, rest = name[len(layers):].partition(".")
            stems.setdefault(i, set()).add(rest)
    missing: dict[str, list[int]] = {}
    for i in range(n or 0):
        have = stems.get(str(i))
        if not have:
            continue  # a missing layer is reported with the layer count
        for want in modules.layer:
            if not any(any(r.startswith(alt + ".") for r in have) for alt in want.split("|")):
                missing.setdefault(want.split("|")[0], []).append(i)
    for module, where in missing.items():
        out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{CONFIG} names {arch}, which builds {module} in every layer; the weights "
                           f"have none under {layers}{{{P.number_ranges(where)}}}.{module} (transformers reports it missing, vLLM refuses)"))
    return out


def _layer_types(cfg: Mapping[str, Any], top: Mapping[str, Any], n: int) -> list[str] | None:
    for source in (cfg, top):
        for key in LAYER_TYPE_KEYS:
            v = source.get(key)
            if isinstance(v, list) and len(v) == n and all(isinstance(x, str) for x in v):
                return v
    return None


def _renamed_in_layer(stem: str, names: list[str], tensors: Mapping[str, TensorMeta], n: int,
                      types: list[str] | None, covered: tuple[str, ...] = ()) -> list[Problem]:
    """A tensor renamed inside one layer: the layer holds a name no other layer has, in place of
    one that at least two layers of its kind hold, with the same dtype, shape, depth and last
    component (`mlp.up_proj.weight` -> `mlp.upp_proj.weight`). Every name unique to the layer
    must pair up so, which keeps heterogeneous models apart: a dense first layer among MoE
    layers (DeepSeek `first_k_dense_replace`, Qwen2-MoE `mlp_only_layers`), interleaved MoE
    (Llama 4), attention among mamba layers (Jamba) have unique names of other shapes or depths.
    With fewer than three layers of a kind nothing is said: two layers that differ cannot tell
    which one is renamed, or whether they are of two kinds. Modules in `covered` were judged
    from the architecture's table already."""
    per_layer: dict[int, dict[str, TensorMeta]] = {}
    for name in names:
        if name.startswith(stem):
            i, _, rest = name[len(stem):].partition(".")
            if i.isdigit() and int(i) < n:
                per_layer.setdefault(int(i), {})[rest] = tensors.get(name)
    kinds: dict[str, list[int]] = {}
    for i in sorted(per_layer):
        kinds.setdefault(types[i] if types else "", []).append(i)
    out: list[Problem] = []
    for layers in kinds.values():
        if len(layers) < 3:
            continue
        count: dict[str, int] = {}
        for i in layers:
            for rest in per_layer[i]:
                count[rest] = count.get(rest, 0) + 1
        for j in layers:
            mine = per_layer[j]
            unique = [r for r in mine if count[r] == 1]
            if not unique or len(unique) > 2:
                continue
            absent = [r for r, c in count.items() if c >= 2 and r not in mine]
            pairs = []
            for u in unique:
                m = next((a for a in absent if _same_slot(u, mine[u], a, _meta_of(per_layer, layers, a))), None)
                if m is None:
                    break
                pairs.append((u, m))
            else:
                for u, m in pairs:
                    if any(m.startswith(c + ".") for c in covered):
                        continue
                    out.append(P.error(CONFIG, P.CONFIG_MISMATCH, f"{stem}{j}.{u} stands where the other layers hold "
                                       f"{stem}N.{m} (same shape): a renamed tensor; the model's module is missing in layer {j} "
                                       "(transformers reports missing and unexpected keys, vLLM refuses)"))
    return out


def _meta_of(per_layer: dict[int, dict[str, TensorMeta]], layers: list[int], rest: str) -> TensorMeta:
    return next((per_layer[i][rest] for i in layers if rest in per_layer[i]), None)


def _same_slot(u: str, u_meta: TensorMeta, m: str, m_meta: TensorMeta) -> bool:
    if u_meta is None or m_meta is None or u_meta != m_meta:
        return False
    pu, pm = u.split("."), m.split(".")
    return len(pu) == len(pm) and pu[-1] == pm[-1] and sum(a != b for a, b in zip(pu, pm)) == 1


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
