"""config.json values the loaders refuse, before any tensor is compared.

- `model_type`: AutoConfig (transformers, and vLLM through it) raises "The checkpoint you
  are trying to load has model type X but Transformers does not recognize this
  architecture" for a type it has no config class for, unless the folder brings its own
  (`auto_map`, trust_remote_code) or vLLM registers it itself (`hf_tables.VLLM_MODEL_TYPES`).
  Only configs whose `architectures` names a class transformers builds are held to it:
  other tools (a VAD, a CTranslate2 export) keep a config.json of their own.
- the activation a family's MLP looks up in `ACT2FN` (`hidden_act`; Gemma 2/3
  `hidden_activation`, GPT-2 `activation_function`): a KeyError at model construction.
  Gemma 1: 4.44 reads `hidden_activation` (a default when null), 5.x `hidden_act`, so it is
  refused only when both name no activation.
- `rope_scaling` (5.x also `rope_parameters`) of the decoder families: an object; its
  `rope_type` (or legacy `type`) one that transformers or vLLM builds (`ROPE_INIT_FUNCTIONS`
  raise KeyError, vLLM's `get_rope` "Unknown RoPE scaling type"); the keys every version's
  validator requires of that type (`_check_received_keys` raises KeyError); numbers where
  the RoPE computation does arithmetic with them.
- `torch_dtype` / `dtype`: a string is looked up with `getattr(torch, value)` when the
  config is built (AttributeError otherwise): it must name a torch dtype.
- heads: `tensor shapes` (hfshapes.py) checks that heads divide as the attention code needs.

Every table is generated from the libraries' source (hf_tables.py, ops/gen-hf-tables.py),
except the torch dtype names below (torch's own `torch.<name>` dtype attributes, 2.x).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import problems as P
from ..problems import Problem
from .hf_tables import ACTIVATIONS, ARCHITECTURES, MODEL_TYPES, ROPE_REQUIRED_KEYS, ROPE_TYPES, VLLM_MODEL_TYPES, VLLM_ROPE_TYPES, \
    TRANSFORMERS_VERSIONS
from .hfshapes import BY_ARCHITECTURE

CONFIG = "config.json"
TORCH_DTYPES = frozenset({
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex32", "chalf", "complex64", "cfloat",
    "complex128", "cdouble", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "short", "int32", "int", "int64", "long",
    "bool", "quint8", "qint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
})
# The activation key each family's MLP reads (None: not checked, see the module docstring).
# Gemma 1: 4.44 reads hidden_activation (hidden_act ignored, a default when it is null), 5.x hidden_act: refused
# only when both name no activation.
ACTIVATION_KEYS: dict[str, tuple[str, ...]] = {"gemma": ("hidden_act", "hidden_activation"), "gemma2": ("hidden_activation",),
                                               "gemma3-text": ("hidden_activation",), "gpt2": ("activation_function",)}
ROPE_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3-text", "phi3", "mixtral", "qwen2-moe",
                           "qwen3-moe"})
_VERSIONS = " and ".join(TRANSFORMERS_VERSIONS)


def check_config_values(config: Mapping[str, Any], arch: str | None) -> list[Problem]:
    out: list[Problem] = []
    remote = config.get("auto_map") is not None
    mt = config.get("model_type")
    served = arch in ARCHITECTURES  # a transformers model class (other tools keep a config.json of their own)
    if isinstance(mt, str) and served and not remote and mt not in MODEL_TYPES and mt not in VLLM_MODEL_TYPES:
        out.append(P.error(CONFIG, P.UNKNOWN_MODEL_TYPE,
                           f"{CONFIG}: model_type {mt!r} is known to neither transformers ({_VERSIONS}) nor vLLM (AutoConfig: "
                           "\"does not recognize this architecture\"); use the model type the checkpoint was saved with, or ship "
                           "its configuration code with an auto_map"))
    for key in ("torch_dtype", "dtype"):
        v = config.get(key)
        if isinstance(v, str) and v not in TORCH_DTYPES:
            out.append(P.error(CONFIG, P.DTYPE_INVALID, f"{CONFIG}: {key} {v!r} names no torch dtype (transformers looks it up as "
                               "torch.<name> when it reads the config); expected e.g. \"bfloat16\", \"float16\", \"float32\""))
    family = BY_ARCHITECTURE.get(arch or "")
    if family is None or remote:
        return out
    keys = ACTIVATION_KEYS.get(family.name, ("hidden_act",))
    acts = [config.get(k) for k in keys]
    if all(isinstance(a, str) and a not in ACTIVATIONS for a in acts):
        said = " and ".join(f"{k} {a!r}" for k, a in zip(keys, acts))
        out.append(P.error(CONFIG, P.UNKNOWN_ACTIVATION,
                           f"{CONFIG}: {said}: not an activation transformers knows (ACT2FN: "
                           f"{', '.join(sorted(ACTIVATIONS)[:8])}, ...); {arch} looks it up when it builds its MLP"))
    if family.name in ROPE_FAMILIES:
        for key in ("rope_scaling", "rope_parameters"):
            if config.get(key) is not None:
                out += _rope(key, config[key])
    return out


def _rope(key: str, value: Any) -> list[Problem]:
    if not isinstance(value, dict):
        return [P.error(CONFIG, P.ROPE_SCALING_INVALID, f"{CONFIG}: {key} is a JSON {type(value).__name__}, expected an object "
                        "with rope_type and its parameters (or null)")]
    nested = [v for v in value.values() if isinstance(v, dict)]
    if nested and len(nested) == len(value):  # per layer type (5.x: {"full_attention": {...}, ...})
        return [p for k, v in value.items() for p in _rope_one(f"{key}.{k}", v)]
    return _rope_one(key, value)


def _rope_one(key: str, rope: dict) -> list[Problem]:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if not isinstance(kind, str) or (kind not in ROPE_TYPES and kind not in VLLM_ROPE_TYPES):
        known = ", ".join(sorted(ROPE_TYPES | VLLM_ROPE_TYPES))
        return [P.error(CONFIG, P.ROPE_SCALING_INVALID, f"{CONFIG}: {key} has rope_type {kind!r}, which neither transformers nor "
                        f"vLLM builds (known: {known})")]
    out = []
    missing = [k for k in ROPE_REQUIRED_KEYS.get(kind, ()) if k not in rope]
    if missing:
        out.append(P.error(CONFIG, P.ROPE_SCALING_INVALID, f"{CONFIG}: {key} of rope_type {kind!r} lacks {', '.join(missing)} "
                           "(transformers: \"Missing required keys in `rope_scaling`\")"))
    for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings", "attention_factor",
              "beta_fast", "beta_slow"):
        v = rope.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            out.append(P.error(CONFIG, P.ROPE_SCALING_INVALID, f"{CONFIG}: {key}.{k} is {v!r}, expected a number (the RoPE "
                               "frequencies are computed with it)"))
    for k in ("short_factor", "long_factor"):
        v = rope.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            out.append(P.error(CONFIG, P.ROPE_SCALING_INVALID, f"{CONFIG}: {key}.{k} is {str(v)[:40]}, expected a list of numbers"))
    return out
