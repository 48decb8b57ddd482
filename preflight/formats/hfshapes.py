"""Every tensor's shape from config.json, per architecture family, as transformers and vLLM build the modules.

`FAMILIES` is data: per family, the architectures (`architectures[0]`) it covers, the
hyper-parameters it reads (each an alias with its config keys and the fallback the
family's code uses, e.g. `num_key_value_heads` else `num_attention_heads`, `head_dim`
else `hidden_size // num_attention_heads`), and one row per tensor name: its shape as a
formula of those aliases, the condition under which the class builds it (`attention_bias`,
a sparse layer of a MoE), and the names that stand in for it (vLLM takes fused `qkv_proj` /
`gate_up_proj`). `check_shapes` is the one checker that reads it; names and shapes come
from the safetensors headers only.

Rows follow the modeling code of transformers 4.44.2 and 5.25.0 (`modeling_llama.py`,
`modeling_qwen2.py`, `modeling_qwen3.py`, `modeling_mistral.py`, `modeling_gemma*.py`,
`modeling_phi3.py`, `modeling_mixtral.py`, `modeling_qwen2_moe.py`, `modeling_qwen3_moe.py`,
`modeling_gpt2.py`, `modeling_bert.py`): `nn.Linear(in, out)` is stored as [out, in],
GPT-2's `Conv1D(nf, nx)` as [nx, nf], `nn.Embedding(n, d)` as [n, d], norms as [d].

What each loader does with a disagreement, and so what is reported:
  - a shape that differs: transformers "size mismatch for ..." (refused), vLLM's weight
    loader asserts the sizes (refused): `tensor-shape-mismatch`;
  - a tensor the class builds that the checkpoint lacks: transformers "missing keys"
    (left random), vLLM "Following weights were not initialized from checkpoint":
    `tensor-missing`;
  - a tensor the class does not build (decoder families, `strict`): transformers
    "unexpected keys", vLLM "no module or parameter named ..." (KeyError):
    `tensor-unexpected`. Buffers both loaders skip (`rotary_emb.inv_freq`, GPT-2's
    `attn.bias`/`attn.masked_bias`) and a tied model's `lm_head.weight` are fine.
    Encoder families are not strict: a pooler or task head beside the encoder is loaded
    or skipped by design.
Only what a family's config determines is compared: a hyper-parameter absent from
config.json whose default is a constant of the config class (not a formula) leaves its
shapes unchecked, and a condition whose key is absent makes its tensor optional. Nothing
is said when the config declares `quantization_config` or the names carry a quantized
layout (their linear layers are packed), when the text model is not under the family's
prefix, or when the experts are stored fused (newer transformers' in-memory layout).
Layers missing altogether, layers beyond `num_hidden_layers`, the embedding's shape and
an untied model's missing head are `modelcheck.py`'s findings and not repeated here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from .. import problems as P
from ..problems import Problem
from ..record import record

CONFIG = "config.json"
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


# ----------------------------------------------------------------------------- formulas

_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Load, ast.Constant, ast.IfExp,
            ast.List, ast.Tuple, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Not, ast.USub, ast.And, ast.Or,
            ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)


class Formula:
    """An arithmetic/boolean expression over aliases (`nh * hd`, `not tie`); unknown names make it undefined."""

    __slots__ = ("text", "names", "_code")

    def __init__(self, text: str) -> None:
        tree = ast.parse(text, mode="eval")
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED):
                raise ValueError(f"{text!r}: {type(node).__name__} is not allowed in a shape formula")
        self.text = text
        self.names = tuple(sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}))
        self._code = compile(tree, "<formula>", "eval")

    def __call__(self, env: Mapping[str, Any]) -> Any:
        """The value, or None when a name is undefined or the arithmetic fails (a string where a number goes)."""
        if any(env.get(n) is None for n in self.names):
            return None
        try:
            return eval(self._code, {"__builtins__": {}}, env)  # noqa: S307 - the tree is checked above
        except (TypeError, ZeroDivisionError, ValueError):
            return None


# ----------------------------------------------------------------------------- the table

@record(frozen=True)
class Row:
    """One tensor name (relative to the model root; `{i}` a layer, `{e}` an expert) and its shape."""
    name: str
    shape: tuple[str, ...]
    when: str | None = None  # built only when true; unknown (a key absent) makes the tensor optional
    alts: tuple[str, ...] = ()  # names that stand in for this one (vLLM's fused projections)
    tolerated: bool = False  # present although `when` is false is fine (a tied model's lm_head)
    covered: bool = False  # shape and absence judged by modelcheck.py (embedding, LM head)
    optional: bool = False  # may be absent (a fused form, a pooler)


@record(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    prefix: str  # where the text model sits ("model.", "transformer.", "" / "bert." / "roberta.")
    layers: str  # the layer list under the prefix ("layers", "h", "encoder.layer")
    aliases: tuple[tuple[str, tuple[str, ...]], ...]  # name -> alternatives, the first defined wins
    rows: tuple[Row, ...]
    strict: bool = True  # a tensor no row names is refused
    layer_aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()  # aliases of the layer index `i`
    divisible: tuple[tuple[str, str, str | None], ...] = ()  # (numerator, denominator, a config key that lifts the rule)
    experts: str | None = None  # the alias counting experts
    skip: str = r"\.rotary_emb\.inv_freq$"  # buffers both loaders skip


_COMMON = (
    ("V", ("vocab_size",)),
    ("H", ("hidden_size",)),
    ("n", ("num_hidden_layers",)),
    ("nh", ("num_attention_heads",)),
    ("nkv", ("num_key_value_heads", "nh")),
    ("I", ("intermediate_size",)),
    ("tie", ("tie_word_embeddings",)),
)
_DERIVED_HEAD_DIM = ("hd", ("head_dim", "H // nh"))
_HEADS = (("H", "nh", "head_dim"), ("nh", "nkv", None))


def _attention(qkv_bias: str | None, o_bias: str | None, *, fused_ok: bool = True, qk_norm: bool = False) -> tuple[Row, ...]:
    a = "model.layers.{i}.self_attn."
    fused = (a + "qkv_proj.weight",) if fused_ok else ()
    rows = [
        Row(a + "q_proj.weight", ("nh * hd", "H"), alts=fused),
        Row(a + "k_proj.weight", ("nkv * hd", "H"), alts=fused),
        Row(a + "v_proj.weight", ("nkv * hd", "H"), alts=fused),
        Row(a + "o_proj.weight", ("H", "nh * hd")),
    ]
    if fused_ok:
        rows.append(Row(a + "qkv_proj.weight", ("(nh + 2 * nkv) * hd", "H"), optional=True))
    if qkv_bias is not None:
        rows += [Row(a + "q_proj.bias", ("nh * hd",), when=qkv_bias, alts=(a + "qkv_proj.bias",) if fused_ok else ()),
                 Row(a + "k_proj.bias", ("nkv * hd",), when=qkv_bias, alts=(a + "qkv_proj.bias",) if fused_ok else ()),
                 Row(a + "v_proj.bias", ("nkv * hd",), when=qkv_bias, alts=(a + "qkv_proj.bias",) if fused_ok else ())]
        if fused_ok:
            rows.append(Row(a + "qkv_proj.bias", ("(nh + 2 * nkv) * hd",), when=qkv_bias, optional=True))
    if o_bias is not None:
        rows.append(Row(a + "o_proj.bias", ("H",), when=o_bias))
    if qk_norm:
        rows += [Row(a + "q_norm.weight", ("hd",)), Row(a + "k_norm.weight", ("hd",))]
    return tuple(rows)


def _mlp(stem: str, inner: str, *, bias: str | None = None, when: str | None = None, fused_ok: bool = True) -> tuple[Row, ...]:
    m = "model.layers.{i}." + stem
    fused = (m + "gate_up_proj.weight",) if fused_ok else ()
    rows = [
        Row(m + "gate_proj.weight", (inner, "H"), when=when, alts=fused),
        Row(m + "up_proj.weight", (inner, "H"), when=when, alts=fused),
        Row(m + "down_proj.weight", ("H", inner), when=when),
    ]
    if fused_ok:
        rows.append(Row(m + "gate_up_proj.weight", (f"2 * {inner}", "H"), when=when, optional=True))
    if bias is not None:
        both = bias if when is None else f"({bias}) and ({when})"
        rows += [Row(m + "gate_proj.bias", (inner,), when=both), Row(m + "up_proj.bias", (inner,), when=both),
                 Row(m + "down_proj.bias", ("H",), when=both)]
    return tuple(rows)


def _decoder_ends(*norms: str) -> tuple[Row, ...]:
    return (
        Row("model.embed_tokens.weight", ("V", "H"), covered=True),
        Row("model.norm.weight", ("H",)),
        Row("lm_head.weight", ("V", "H"), when="not tie", tolerated=True, covered=True),
        *(Row(f"model.layers.{{i}}.{n}.weight", ("H",)) for n in norms),
    )


_NORMS = ("input_layernorm", "post_attention_layernorm")
_GEMMA2_NORMS = (*_NORMS, "pre_feedforward_layernorm", "post_feedforward_layernorm")
_MOE_ALIASES = (("E", ("num_experts",)), ("mI", ("moe_intermediate_size",)), ("mlp_only", ("mlp_only_layers", "[]")),
                ("step", ("decoder_sparse_step", "1")))
_SPARSE = ("sparse", ("(i not in mlp_only) and E > 0 and (i + 1) % step == 0",))


def _experts(stem: str, inner: str, names: tuple[str, str, str], when: str | None) -> tuple[Row, ...]:
    e = "model.layers.{i}." + stem + "{e}."
    g, u, d = names
    return (Row(e + g + ".weight", (inner, "H"), when=when), Row(e + u + ".weight", (inner, "H"), when=when),
            Row(e + d + ".weight", ("H", inner), when=when))


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("LlamaForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM,
           ("attention_bias", ("attention_bias",)), ("mlp_bias", ("mlp_bias",))),
           (*_decoder_ends(*_NORMS), *_attention("attention_bias", "attention_bias"), *_mlp("mlp.", "I", bias="mlp_bias")),
           divisible=_HEADS),
    Family("mistral", ("MistralForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM),
           (*_decoder_ends(*_NORMS), *_attention(None, None), *_mlp("mlp.", "I")), divisible=_HEADS),
    Family("qwen2", ("Qwen2ForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM),
           (*_decoder_ends(*_NORMS), *_attention("True", None), *_mlp("mlp.", "I")), divisible=_HEADS),
    Family("qwen3", ("Qwen3ForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM,
           ("attention_bias", ("attention_bias",))),
           (*_decoder_ends(*_NORMS), *_attention("attention_bias", "attention_bias", qk_norm=True), *_mlp("mlp.", "I")),
           divisible=_HEADS),
    # Gemma's head_dim defaults to a constant (256), not to hidden_size // heads: only a given one is used.
    Family("gemma", ("GemmaForCausalLM",), "model.", "layers", (*_COMMON, ("hd", ("head_dim",)),
           ("attention_bias", ("attention_bias",))),
           (*_decoder_ends(*_NORMS), *_attention("attention_bias", "attention_bias"), *_mlp("mlp.", "I")),
           divisible=(("nh", "nkv", None),)),
    Family("gemma2", ("Gemma2ForCausalLM",), "model.", "layers", (*_COMMON, ("hd", ("head_dim",)),
           ("attention_bias", ("attention_bias",))),
           (*_decoder_ends(*_GEMMA2_NORMS), *_attention("attention_bias", "attention_bias"), *_mlp("mlp.", "I")),
           divisible=(("nh", "nkv", None),)),
    Family("gemma3-text", ("Gemma3ForCausalLM",), "model.", "layers", (*_COMMON, ("hd", ("head_dim",)),
           ("attention_bias", ("attention_bias",))),
           (*_decoder_ends(*_GEMMA2_NORMS), *_attention("attention_bias", "attention_bias", qk_norm=True), *_mlp("mlp.", "I")),
           divisible=(("nh", "nkv", None),)),
    Family("phi3", ("Phi3ForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM),
           (*_decoder_ends(*_NORMS),
            Row("model.layers.{i}.self_attn.qkv_proj.weight", ("(nh + 2 * nkv) * hd", "H")),
            Row("model.layers.{i}.self_attn.o_proj.weight", ("H", "nh * hd")),
            Row("model.layers.{i}.mlp.gate_up_proj.weight", ("2 * I", "H")),
            Row("model.layers.{i}.mlp.down_proj.weight", ("H", "I"))),
           divisible=_HEADS),
    Family("mixtral", ("MixtralForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM, ("E", ("num_local_experts",))),
           (*_decoder_ends(*_NORMS), *_attention(None, None),
            Row("model.layers.{i}.block_sparse_moe.gate.weight", ("E", "H")),
            *_experts("block_sparse_moe.experts.", "I", ("w1", "w3", "w2"), None)),
           divisible=_HEADS, experts="E"),
    Family("qwen2-moe", ("Qwen2MoeForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM, *_MOE_ALIASES,
           ("sI", ("shared_expert_intermediate_size",)), ("qkv_bias", ("qkv_bias", "True"))),
           (*_decoder_ends(*_NORMS), *_attention("qkv_bias", None),
            *_mlp("mlp.", "I", when="not sparse", fused_ok=False),
            Row("model.layers.{i}.mlp.gate.weight", ("E", "H"), when="sparse"),
            *_experts("mlp.experts.", "mI", ("gate_proj", "up_proj", "down_proj"), "sparse"),
            *_mlp("mlp.shared_expert.", "sI", when="sparse", fused_ok=False),
            Row("model.layers.{i}.mlp.shared_expert_gate.weight", ("1", "H"), when="sparse")),
           layer_aliases=(_SPARSE,), divisible=_HEADS, experts="E"),
    Family("qwen3-moe", ("Qwen3MoeForCausalLM",), "model.", "layers", (*_COMMON, _DERIVED_HEAD_DIM, *_MOE_ALIASES,
           ("attention_bias", ("attention_bias",))),
           (*_decoder_ends(*_NORMS), *_attention("attention_bias", "attention_bias", qk_norm=True),
            *_mlp("mlp.", "I", when="not sparse", fused_ok=False),
            Row("model.layers.{i}.mlp.gate.weight", ("E", "H"), when="sparse"),
            *_experts("mlp.experts.", "mI", ("gate_proj", "up_proj", "down_proj"), "sparse")),
           layer_aliases=(_SPARSE,), divisible=_HEADS, experts="E"),
    Family("gpt2", ("GPT2LMHeadModel",), "transformer.", "h",
           (("V", ("vocab_size",)), ("H", ("n_embd",)), ("n", ("n_layer",)), ("nh", ("n_head",)), ("P", ("n_positions",)),
            ("inner", ("n_inner", "4 * H")), ("tie", ("tie_word_embeddings",))),
           (Row("transformer.wte.weight", ("V", "H"), covered=True),
            Row("transformer.wpe.weight", ("P", "H")),
            Row("transformer.ln_f.weight", ("H",)), Row("transformer.ln_f.bias", ("H",)),
            Row("lm_head.weight", ("V", "H"), when="not tie", tolerated=True, covered=True),
            *(Row(f"transformer.h.{{i}}.{ln}.{w}", ("H",)) for ln in ("ln_1", "ln_2") for w in ("weight", "bias")),
            Row("transformer.h.{i}.attn.c_attn.weight", ("H", "3 * H")), Row("transformer.h.{i}.attn.c_attn.bias", ("3 * H",)),
            Row("transformer.h.{i}.attn.c_proj.weight", ("H", "H")), Row("transformer.h.{i}.attn.c_proj.bias", ("H",)),
            Row("transformer.h.{i}.mlp.c_fc.weight", ("H", "inner")), Row("transformer.h.{i}.mlp.c_fc.bias", ("inner",)),
            Row("transformer.h.{i}.mlp.c_proj.weight", ("inner", "H")), Row("transformer.h.{i}.mlp.c_proj.bias", ("H",))),
           divisible=(("H", "nh", None),), skip=r"\.attn\.(masked_)?bias$"),
)


def _encoder(name: str, archs: tuple[str, ...], prefix: str) -> Family:
    p = prefix
    layer = p + "encoder.layer.{i}."
    linear = (("attention.self.query", "H", "H"), ("attention.self.key", "H", "H"), ("attention.self.value", "H", "H"),
              ("attention.output.dense", "H", "H"), ("intermediate.dense", "I", "H"), ("output.dense", "H", "I"))
    rows = [
        Row(p + "embeddings.word_embeddings.weight", ("V", "H"), covered=True),
        Row(p + "embeddings.position_embeddings.weight", ("P", "H")),
        Row(p + "embeddings.token_type_embeddings.weight", ("T", "H")),
        Row(p + "embeddings.LayerNorm.weight", ("H",), optional=True), Row(p + "embeddings.LayerNorm.bias", ("H",), optional=True),
        Row(p + "pooler.dense.weight", ("H", "H"), optional=True), Row(p + "pooler.dense.bias", ("H",), optional=True),
    ]
    for module, out, inp in linear:
        rows += [Row(layer + module + ".weight", (out, inp)), Row(layer + module + ".bias", (out,))]
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        rows += [Row(layer + ln + ".weight", ("H",), optional=True), Row(layer + ln + ".bias", ("H",), optional=True)]
    aliases = (("V", ("vocab_size",)), ("H", ("hidden_size",)), ("n", ("num_hidden_layers",)), ("nh", ("num_attention_heads",)),
               ("I", ("intermediate_size",)), ("P", ("max_position_embeddings",)), ("T", ("type_vocab_size",)))
    return Family(name, archs, prefix, "encoder.layer", aliases, tuple(rows), strict=False, divisible=(("H", "nh", None),))


FAMILIES += (
    _encoder("bert", ("BertModel", "XLMRobertaModel", "RobertaModel"), ""),
    _encoder("bert", ("BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification"), "bert."),
    _encoder("xlm-roberta", ("XLMRobertaForSequenceClassification", "XLMRobertaForMaskedLM", "RobertaForSequenceClassification",
                             "RobertaForMaskedLM"), "roberta."),
)

BY_ARCHITECTURE: dict[str, Family] = {arch: f for f in FAMILIES for arch in f.architectures}


# ----------------------------------------------------------------------------- the checker

@record
class _Compiled:
    family: Family
    aliases: tuple[tuple[str, tuple[Formula, ...]], ...]
    layer_aliases: tuple[tuple[str, tuple[Formula, ...]], ...]
    rows: dict[str, tuple[Row, tuple[Formula, ...], Formula | None]]  # pattern -> row, shape, when
    divisible: tuple[tuple[str, str, str | None], ...]
    skip: re.Pattern[str]
    index: re.Pattern[str]


def _compile(f: Family) -> _Compiled:
    def alts(spec):
        return tuple((name, tuple(Formula(a) for a in options)) for name, options in spec)
    rows = {r.name: (r, tuple(Formula(s) for s in r.shape), Formula(r.when) if r.when else None) for r in f.rows}
    layer_stem = re.escape(f.prefix + f.layers) + r"\.(\d+)\."
    return _Compiled(f, alts(f.aliases), alts(f.layer_aliases), rows,
                     f.divisible, re.compile(f.skip),
                     re.compile(layer_stem + r"(?:.*?\.experts\.(\d+)\.)?"))


_COMPILED: dict[str, _Compiled] = {}


def _compiled(f: Family) -> _Compiled:
    c = _COMPILED.get(f.name + f.prefix)
    if c is None:
        c = _COMPILED[f.name + f.prefix] = _compile(f)
    return c


@record
class ShapeFacts:
    family: str | None = None
    checked: bool = False
    reason: str | None = None
    tensors_compared: int = 0
    values: dict[str, Any] = field(default_factory=dict)  # the hyper-parameters the formulas used


def _scalar_env(cfg: Mapping[str, Any]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, bool) or (isinstance(v, int) and v >= 0):
            env[k] = v
        elif isinstance(v, list) and all(type(x) is int for x in v):
            env[k] = v
    return env


def _resolve(spec: tuple[tuple[str, tuple[Formula, ...]], ...], env: dict[str, Any], origin: dict[str, str]) -> None:
    for name, options in spec:
        value = None
        for formula in options:
            value = formula(env)
            if value is not None:
                origin[name] = formula.text
                break
        env[name] = value


def _pattern(name: str, c: _Compiled) -> tuple[str, int | None, int | None]:
    m = c.index.match(name)
    if not m:
        return name, None, None
    i = int(m.group(1))
    key = name[: m.start(1)] + "{i}" + name[m.end(1):]
    if m.group(2) is None:
        return key, i, None
    shift = len("{i}") - (m.end(1) - m.start(1))
    s, e = m.start(2) + shift, m.end(2) + shift
    return key[:s] + "{e}" + key[e:], i, int(m.group(2))


def check_shapes(config: Mapping[str, Any], tensors: Mapping[str, tuple[str, tuple[int, ...]] | None],
                 arch: str | None) -> tuple[ShapeFacts, list[Problem]]:
    """Compare every tensor with the shape the family's classes build from `config` (name -> (dtype, shape))."""
    facts = ShapeFacts()
    family = BY_ARCHITECTURE.get(arch or "")
    if family is None:
        facts.reason = "no shape table for this architecture"
        return facts, []
    facts.family = family.name
    if config.get("quantization_config") is not None:
        facts.reason = "quantized (quantization_config): linear layers are packed"
        return facts, []
    names = list(tensors)
    from .modelcheck import QUANT_MARKS  # the quantized layouts' tensor names

    if any(n.endswith(mark) for n in names for mark, _ in QUANT_MARKS):
        facts.reason = "quantized tensor names"
        return facts, []
    if any(meta is None for meta in tensors.values()):
        facts.reason = "not every shard could be read"
        return facts, []
    root = family.prefix + family.layers.split(".")[0]
    if family.prefix and not any(n.startswith(root) or n.startswith(family.prefix) for n in names):
        facts.reason = f"the text model is not under {family.prefix}"
        return facts, []
    if family.experts and any(re.search(r"\.experts\.(gate_up_proj|down_proj|gate_proj|up_proj)$", n) for n in names):
        facts.reason = "experts stored fused"
        return facts, []
    c = _compiled(family)
    env = _scalar_env(config)
    origin: dict[str, str] = {}
    _resolve(c.aliases, env, origin)
    facts.values = {a: env[a] for a, _ in c.aliases if env.get(a) is not None}
    out: list[Problem] = []
    out += _divisibility(c, env, config, origin, arch or "")
    n = env.get("n")
    n = n if isinstance(n, int) and n > 0 else None

    layer_env: dict[int, dict[str, Any]] = {}

    def env_of(i: int | None, e: int | None = None) -> dict[str, Any]:
        if i is None:
            return env
        le = layer_env.get(i)
        if le is None:
            le = dict(env, i=i)
            _resolve(c.layer_aliases, le, {})
            layer_env[i] = le
        return le

    shapes: dict[tuple[str, bool], tuple[int, ...] | None] = {}
    whens: dict[tuple[str, int | None], Any] = {}
    present: set[str] = set()
    layers_present: set[int] = set()
    mismatched: dict[str, list[tuple[str, tuple[int, ...], tuple[int, ...]]]] = {}
    unexpected: dict[str, list[str]] = {}
    for name in names:
        pattern, i, _e = _pattern(name, c)
        if i is not None:
            if n is not None and i >= n:
                continue  # beyond the layer count: modelcheck's finding
            layers_present.add(i)
        spec = c.rows.get(pattern)
        if spec is None:
            if family.strict and not c.skip.search(name):
                unexpected.setdefault(pattern, []).append(name)
            continue
        row, shape_f, when_f = spec
        if _e is not None and isinstance(env.get(family.experts or ""), int) and _e >= env[family.experts or ""]:
            unexpected.setdefault(pattern, []).append(name)  # an expert beyond the config's count
            continue
        present.add(name)
        if when_f is None:
            when = True
        else:
            wkey = (pattern, i)
            when = whens.get(wkey, whens)
            if when is whens:
                when = whens[wkey] = when_f(env_of(i))
        if when is False and not row.tolerated:
            unexpected.setdefault(pattern, []).append(name)
            continue
        meta = tensors.get(name)
        if row.covered or meta is None or meta[0] not in FLOAT_DTYPES:
            continue
        key = (pattern, bool(when))
        if key not in shapes:
            dims = [f(env_of(i)) for f in shape_f]
            shapes[key] = tuple(dims) if all(isinstance(d, int) and not isinstance(d, bool) for d in dims) else None
        want = shapes[key]
        if want is None:
            continue
        facts.tensors_compared += 1
        if tuple(meta[1]) != want:
            mismatched.setdefault(pattern, []).append((name, tuple(meta[1]), want))
    out += _mismatch_problems(mismatched, c, origin, env)
    out += _unexpected_problems(unexpected, arch or "")
    out += _missing(c, env_of, present, layers_present, n, arch or "")
    facts.checked = True
    return facts, out


def _divisibility(c: _Compiled, env: Mapping[str, Any], config: Mapping[str, Any], origin: Mapping[str, str],
                  arch: str) -> list[Problem]:
    out = []
    for num, den, unless in c.divisible:
        a, b = env.get(num), env.get(den)
        if unless is not None and config.get(unless) is not None:
            continue
        if not (isinstance(a, int) and isinstance(b, int)) or b <= 0:
            continue
        if a % b:
            ka, kb = _key(origin, num), _key(origin, den)
            why = ("each key/value head serves the same number of query heads (the attention code repeats key/value "
                   "heads num_attention_heads // num_key_value_heads times)") if num == "nh" else \
                  "the attention code splits hidden_size into heads of hidden_size // num_attention_heads (transformers raises)"
            out.append(P.error(CONFIG, P.HEADS_INDIVISIBLE, f"{CONFIG}: {ka} {a} is not divisible by {kb} {b} ({arch}: {why})"))
    return out


def _key(origin: Mapping[str, str], alias: str) -> str:
    return origin.get(alias, alias)


def _mismatch_problems(found: dict[str, list], c: _Compiled, origin: Mapping[str, str], env: Mapping[str, Any]) -> list[Problem]:
    out = []
    for pattern, items in found.items():
        row, shape_f, _ = c.rows[pattern]
        name, have, want = items[0]
        used = sorted({n for f in shape_f for n in f.names})
        values = ", ".join(f"{_key(origin, a)}={env.get(a)}" for a in used)
        more = f" (and {len(items) - 1} more like it)" if len(items) > 1 else ""
        formula = "[" + ", ".join(row.shape) + "]"
        out.append(P.error(name, P.TENSOR_SHAPE_MISMATCH,
                           f"{name} is {list(have)}{more}; {CONFIG} makes the loaders build {list(want)} = {formula} from {values} "
                           "(transformers: size mismatch, vLLM's weight loader refuses it)"))
    return out


def _unexpected_problems(found: dict[str, list[str]], arch: str) -> list[Problem]:
    out = []
    for pattern, items in found.items():
        more = f" (and {len(items) - 1} more like it)" if len(items) > 1 else ""
        out.append(P.error(items[0], P.TENSOR_UNEXPECTED,
                           f"{items[0]}{more}: {arch} as {CONFIG} configures it has no such tensor "
                           "(transformers reports an unexpected key, vLLM refuses a weight it has no parameter for)"))
    return out


def _missing(c: _Compiled, env_of, present: set[str], layers: set[int], n: int | None, arch: str) -> list[Problem]:
    out = []
    family = c.family
    for pattern, (row, _shape, when_f) in c.rows.items():
        if row.covered or row.optional:
            continue
        if "{i}" not in pattern:
            targets = [(None, pattern)]
        elif n is None:
            continue
        else:
            targets = [(i, pattern.replace("{i}", str(i), 1)) for i in sorted(layers)]
        lacking: list[str] = []
        where: list[int] = []
        for i, name in targets:
            le = env_of(i)
            if when_f is not None and when_f(le) is not True:
                continue
            names = [name]
            if "{e}" in name:
                count = le.get(family.experts or "")
                if not isinstance(count, int):
                    continue
                names = [name.replace("{e}", str(e)) for e in range(count)]
            for one in names:
                if one in present:
                    continue
                alts = [a.replace("{i}", str(i)) if i is not None else a for a in row.alts]
                if any(a in present for a in alts):
                    continue
                lacking.append(one)
                if i is not None and (not where or where[-1] != i):
                    where.append(i)
        if lacking:
            shown = lacking[0] if len(lacking) == 1 else (
                pattern.replace("{i}", "{" + P.number_ranges(where) + "}") + f" ({len(lacking)} tensors)")
            out.append(P.error(lacking[0], P.TENSOR_MISSING,
                               f"{shown} is missing: {arch} as {CONFIG} configures it builds it "
                               "(transformers would leave it randomly initialised, vLLM refuses)"))
    return out
