"""Model-level GGUF checks: what llama.cpp's model loader needs beyond a file `gguf_init_from_file` reads.

One generic checker walks the key/values and tensor names of a parsed header against two
tables: `KEY_TYPES` below (keys every llama.cpp model load reads, with the types it accepts)
and `gguf_arch.ARCHITECTURES` (what each architecture requires). Each rule says which loader
behaviour it mirrors; only what llama.cpp refuses is an error, so a model it loads passes.

Facts found on the way (architecture, block count, vocabulary size, tied embeddings) are
returned for `GGUFInfo`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import NamedTuple

from preflight import problems as P
from preflight.formats.gguf_arch import (
    ARCHITECTURES, KNOWN_ARCHITECTURES, SCALE_COMPANIONS, TENSOR_BASE_NAMES, TENSOR_NAMES, TENSOR_RAW_NAMES, TENSOR_SUFFIXES,
)
from preflight.formats.safetensors import Findings

# GGUF value type ids (gguf.cpp's enum gguf_type).
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
TYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64")
_BY_NAME = {n: i for i, n in enumerate(TYPE_NAMES)}

LLAMA_MAX_LAYERS = 512  # src/llama-hparams.h; load_hparams asserts 0 < block_count <= it (abort)
LLAMA_MAX_EXPERTS = 512  # src/llama-hparams.h; load_hparams asserts expert_count <= it (abort)

# (vtype, item type or None). A scalar key is (type, None); an array (ARR, item type).
KVType = tuple[int, "int | None"]


class Key(NamedTuple):
    types: frozenset[KVType]  # what llama.cpp accepts
    when: str  # "always": read on every load; "model": read when the weights are loaded (not vocab_only)
    why: str


def _s(*types: int) -> frozenset[KVType]:
    return frozenset((t, None) for t in types)


def _a(*items: int) -> frozenset[KVType]:
    return frozenset((ARR, t) for t in items)


# Keys read with the type-strict `get_key` (src/llama-model-loader.cpp: "key X has wrong type
# T but expected type U") or an explicit type test. "{arch}" is general.architecture.
# Per-layer keys read with `get_key_or_arr` may be a scalar or an array of one value per block.
KEY_TYPES: dict[str, Key] = {
    "general.architecture": Key(_s(STR), "always", "llama_model_loader reads it as a string to pick the model class"),
    "general.name": Key(_s(STR), "always", "load_hparams reads it first, also for vocab_only"),
    "general.file_type": Key(_s(U32), "always", "the loader reads the file type as uint32"),
    "tokenizer.ggml.model": Key(_s(STR), "always", "llama_vocab::load: the tokenizer kind"),
    "tokenizer.ggml.pre": Key(_s(STR), "always", "llama_vocab::load: the pre-tokenizer"),
    "tokenizer.ggml.tokens": Key(_a(STR), "always", "llama_vocab::load: 'invalid gguf type' unless an array of strings"),
    "tokenizer.ggml.scores": Key(_a(F32, I32), "always", "llama_vocab::load: float32 or int32 array"),
    "tokenizer.ggml.token_type": Key(_a(I32), "always", "llama_vocab::load: int32 array"),
    "tokenizer.ggml.merges": Key(_a(STR), "always", "llama_vocab::load (BPE): array of strings"),
    "tokenizer.ggml.token_type_count": Key(_s(U32), "always", "llama_vocab::load reads it as uint32"),
    "tokenizer.ggml.add_bos_token": Key(_s(BOOL), "always", "read as bool"),
    "tokenizer.ggml.add_eos_token": Key(_s(BOOL), "always", "read as bool"),
    "tokenizer.ggml.add_sep_token": Key(_s(BOOL), "always", "read as bool"),
    "tokenizer.ggml.add_space_prefix": Key(_s(BOOL), "always", "read as bool"),
    "tokenizer.ggml.remove_extra_whitespaces": Key(_s(BOOL), "always", "read as bool"),
    **{
        f"tokenizer.ggml.{name}_token_id": Key(_s(U32), "always", "special token ids are read as uint32")
        for name in ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask",
                     "prefix", "suffix", "middle", "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")
    },
    "{arch}.vocab_size": Key(_s(U32), "always", "read as uint32 (the vocabulary size of no-vocab models)"),
    "{arch}.context_length": Key(_s(U32), "model", "load_hparams: required uint32"),
    "{arch}.embedding_length": Key(_s(U32), "model", "load_hparams: required uint32"),
    "{arch}.block_count": Key(_s(U32), "model", "load_hparams: required uint32"),
    "{arch}.feed_forward_length": Key(_s(U32) | _a(U32, I32, BOOL), "model", "get_key_or_arr: uint32 or one per block"),
    "{arch}.attention.head_count": Key(_s(U32) | _a(U32, I32, BOOL), "model", "get_key_or_arr: uint32 or one per block"),
    "{arch}.attention.head_count_kv": Key(_s(U32) | _a(U32, I32, BOOL), "model", "get_key_or_arr: uint32 or one per block"),
    "{arch}.expert_count": Key(_s(U32), "model", "read as uint32"),
    "{arch}.expert_used_count": Key(_s(U32) | _a(U32, I32, BOOL), "model", "get_key_or_arr: uint32 or one per block"),
    "{arch}.attention.key_length": Key(_s(U32), "model", "read as uint32"),
    "{arch}.attention.value_length": Key(_s(U32), "model", "read as uint32"),
    "{arch}.rope.dimension_count": Key(_s(U32), "model", "read as uint32"),
    "{arch}.rope.freq_base": Key(_s(F32), "model", "read as float32"),
    "{arch}.rope.scaling.type": Key(_s(STR), "model", "read as string"),
    "{arch}.rope.scaling.factor": Key(_s(F32), "model", "read as float32"),
    "{arch}.rope.scaling.original_context_length": Key(_s(U32), "model", "read as uint32"),
    "{arch}.attention.layer_norm_epsilon": Key(_s(F32), "model", "read as float32"),
    "{arch}.attention.layer_norm_rms_epsilon": Key(_s(F32), "model", "read as float32"),
    "{arch}.attention.causal": Key(_s(BOOL), "model", "read as bool"),
    "{arch}.pooling_type": Key(_s(U32), "model", "read as uint32"),
}

# Architectures whose loader insists rope.dimension_count equals the head size
# (load_hparams: "invalid n_rot: N, expected M").
ROPE_IS_HEAD_SIZE = frozenset({"llama", "deci", "falcon", "llama-embed"})

# tokenizer.ggml.model values llama_vocab::load knows ("unknown tokenizer" otherwise).
TOKENIZER_MODELS = frozenset({"no_vocab", "none", "llama", "bert", "gpt2", "hybriddna", "whitespace", "t5", "rwkv", "test", "plamo2", "gemma4"})
NO_VOCAB = frozenset({"no_vocab", "none"})

# What architecture and tokenizer names look like (llama.cpp's are lower-case words): another
# one may be a newer llama.cpp's, a name outside this shape is corruption.
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_BLOCK = re.compile(r"^(?:[a-z_]+\.)?blk\.(\d+)\.")


@lru_cache(maxsize=1)
def _tensor_name_re() -> re.Pattern[str]:
    bases = "|".join(re.escape(b).replace("%d", r"\d+") for b in sorted(TENSOR_BASE_NAMES, key=len, reverse=True))
    suffixes = "|".join(TENSOR_SUFFIXES)
    return re.compile(rf"^(?:{bases})(?:\.(?:{suffixes}))?$")


class ModelFacts(NamedTuple):
    architecture: str | None
    block_count: int | None
    vocab_size: int | None
    tied_embeddings: bool | None
    vocab_only: bool


def _kv_type_name(kt: KVType) -> str:
    t, item = kt
    return f"array of {TYPE_NAMES[item]}" if t == ARR and item is not None and item < len(TYPE_NAMES) else TYPE_NAMES[t]


def _expected(types: frozenset[KVType]) -> str:
    return " or ".join(sorted(_kv_type_name(t) for t in types))


def _length(value: object) -> int | None:
    if isinstance(value, list):
        return len(value)
    n = getattr(value, "length", None)
    return n if isinstance(n, int) else None


def check_model(
    name: str,
    meta: Mapping[str, object],
    kv_types: Mapping[str, KVType],
    tensors: Mapping[str, tuple[int, ...]],
    out: Findings,
    *,
    tensors_complete: bool = True,
    tensors_only: bool = False,
    vocab_file: bool | None = None,
) -> ModelFacts:
    """Judge one model's metadata and tensor set; findings go to `out`.

    `tensors` maps names to GGUF dims (innermost first). `tensors_complete` is False for one
    part of a split (the tensor checks then wait for check_gguf_split); `tensors_only`
    reports the tensor checks alone (the key/values were judged already). `vocab_file`: the
    file is a vocabulary file (no tensors), as llama.cpp's ggml-vocab-*.gguf; None decides
    from the file.
    """
    arch_kv = kv_types.get("general.architecture")
    arch = meta.get("general.architecture") if arch_kv == (STR, None) else None
    assert arch is None or isinstance(arch, str)
    has_vocab = "tokenizer.ggml.tokens" in kv_types or meta.get("tokenizer.ggml.model") in NO_VOCAB
    if vocab_file is None:
        # No tensors and a vocabulary: a vocabulary file when it says so by its name, as
        # llama.cpp's ggml-vocab-*.gguf do, or carries no architecture hyper-parameters;
        # otherwise a model file that lost its weights.
        vocab_file = tensors_complete and not tensors and has_vocab and (
            "vocab" in name.lower() or not (arch and f"{arch}.block_count" in kv_types))
    facts = ModelFacts(arch, None, None, None, vocab_file)
    kv_out = Findings(out.name) if tensors_only else out

    _check_key_types(meta, kv_types, arch, vocab_file, kv_out)
    if arch_kv is None:
        kv_out.error(P.ARCHITECTURE_MISSING, "has no general.architecture; llama.cpp cannot choose a model for it (\"unknown model architecture: ''\")")
    if arch is None or arch == "clip":  # clip: a multimodal projector, loaded beside a model, never as one
        return facts
    if arch not in KNOWN_ARCHITECTURES and not _NAME.match(arch):
        kv_out.error(P.HPARAM_INVALID, f"general.architecture {arch!r} is not an architecture name (llama.cpp: \"unknown model architecture\")")
        return facts
    if arch not in KNOWN_ARCHITECTURES:
        kv_out.warning(P.UNKNOWN_ARCHITECTURE, f"architecture {arch!r} is not known to preflight (nor to llama.cpp as of llama-cpp-python 0.3.36); only its generic parts were checked")
    row = ARCHITECTURES.get(arch)
    n_vocab = _vocabulary(meta, kv_types, arch, kv_out)
    facts = facts._replace(vocab_size=n_vocab)
    if vocab_file:
        return facts
    if tensors_complete and not tensors:
        out.error(P.WEIGHTS_MISSING, "has no tensors: a model file without its weights (a vocabulary-only file is named like ggml-vocab-*.gguf)")
    n_embd, n_layer = _hparams(meta, kv_types, arch, row, kv_out)
    facts = facts._replace(block_count=n_layer)
    if not tensors_complete or not tensors:
        return facts
    if "token_embd.weight" in tensors or "output.weight" in tensors:
        facts = facts._replace(tied_embeddings="output.weight" not in tensors)
    _tensor_names(tensors, arch, row, out)
    _blocks(tensors, meta, arch, row, n_layer, out)
    if row is not None:
        _required_tensors(tensors, row, out)
        if n_layer is not None:
            # The layer loop runs over block_count minus the next-token-prediction layers.
            nextn = _u32(meta, kv_types, f"{arch}.nextn_predict_layers") or 0
            dense = not _u32(meta, kv_types, f"{arch}.expert_count")
            _block_requirements(tensors, row, max(0, n_layer - nextn), dense, out)
        _shapes(tensors, meta, kv_types, arch, row, n_embd, n_vocab, n_layer, out)
    return facts


def _check_key_types(meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str | None, vocab_file: bool, out: Findings) -> None:
    """Mirrors the type-strict reads: a known key of another type fails the load."""
    prefix = f"{arch}." if arch else None
    for key, kt in kv_types.items():
        spec = KEY_TYPES.get(key)
        if spec is None and prefix and key.startswith(prefix):
            spec = KEY_TYPES.get("{arch}." + key[len(prefix):])
        if spec is None or (vocab_file and spec.when == "model"):
            continue
        if kt not in spec.types:
            out.error(P.KV_TYPE_MISMATCH, f"{key} is {_kv_type_name(kt)}, llama.cpp reads it as {_expected(spec.types)} ({spec.why}; \"key {key} has wrong type\")")


def _vocabulary(meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str, out: Findings) -> int | None:
    """llama_vocab::load: tokenizer.ggml.model is required; then the token list, and scores /
    token types at least as long as it ("Index out of array bounds for scores (N < M)")."""
    model = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.model" not in kv_types:
        out.error(P.TOKENIZER_MISSING, "has no tokenizer.ggml.model; llama.cpp needs the tokenizer even to list the vocabulary (\"key not found in model: tokenizer.ggml.model\")")
        return None
    if not isinstance(model, str):
        return None  # wrong type: reported with the key types
    if model in NO_VOCAB:
        size = meta.get(f"{arch}.vocab_size")
        return size if type(size) is int else 0
    if model not in TOKENIZER_MODELS and not _NAME.match(model):
        out.error(P.VOCAB_INVALID, f"tokenizer.ggml.model {model!r} is not a tokenizer name (llama.cpp: \"unknown tokenizer\")")
    elif model not in TOKENIZER_MODELS:
        out.warning(P.VOCAB_INVALID, f"tokenizer.ggml.model {model!r} is not known to preflight (llama.cpp as of llama-cpp-python 0.3.36 refuses it as an unknown tokenizer)")
    if "tokenizer.ggml.tokens" not in kv_types:
        out.error(P.TOKENIZER_MISSING, "has no tokenizer.ggml.tokens (\"cannot find tokenizer vocab in model file\")")
        return None
    if kv_types["tokenizer.ggml.tokens"] != (ARR, STR):
        return None
    tokens = meta["tokenizer.ggml.tokens"]
    n_tokens = _length(tokens)
    assert n_tokens is not None
    if isinstance(tokens, list):
        texts = [t for t in tokens if t]
        dup = next((t for i, t in enumerate(texts) if t in texts[:i]), None)
    else:
        dup = getattr(tokens, "duplicate", None)
    if dup is not None:
        out.error(P.VOCAB_INVALID, f"tokenizer.ggml.tokens holds the token {dup!r} twice; llama.cpp aborts the process on it (GGML_ASSERT id_to_token.size() == token_to_id.size())")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        n = _length(meta.get(key)) if key in kv_types and kv_types[key][0] == ARR else None
        if n is None:
            continue
        if n < n_tokens:
            out.error(P.VOCAB_INVALID, f"{key} has {n} entries for {n_tokens} tokens; llama.cpp refuses it (index out of array bounds)")
        elif n > n_tokens:
            out.warning(P.VOCAB_INVALID, f"{key} has {n} entries for {n_tokens} tokens; llama.cpp ignores the extra {n - n_tokens}")
    if model == "gpt2" and "tokenizer.ggml.merges" not in kv_types and meta.get("tokenizer.ggml.pre") != "kimi-k2":
        out.error(P.TOKENIZER_MISSING, "is a BPE (gpt2) tokenizer without tokenizer.ggml.merges (\"cannot find tokenizer merges in model file\")")
    return n_tokens


def _u32(meta: Mapping[str, object], kv_types: Mapping[str, KVType], key: str) -> int | None:
    value = meta.get(key)
    return value if kv_types.get(key) == (U32, None) and type(value) is int else None


def _hparams(meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str, row: object, out: Findings) -> tuple[int | None, int | None]:
    """llama_model_base::load_hparams and the architecture's load_arch_hparams."""
    required: dict[str, str] = {"context_length": "uint32", "embedding_length": "uint32", "block_count": "uint32"}
    if row is not None:
        required |= row.hparams  # type: ignore[attr-defined]
    for rel, type_name in required.items():
        key = f"{arch}.{rel}"
        kt = kv_types.get(key)
        if kt is None:
            out.error(P.HPARAM_MISSING, f"has no {key} ({type_name}), which llama.cpp requires for {arch} (\"key not found in model: {key}\")")
        elif kt != (_BY_NAME[type_name], None) and key not in _key_specs_for(arch):
            out.error(P.KV_TYPE_MISMATCH, f"{key} is {_kv_type_name(kt)}, llama.cpp reads it as {type_name} (\"key {key} has wrong type\")")
    n_embd = _u32(meta, kv_types, f"{arch}.embedding_length")
    n_layer = _u32(meta, kv_types, f"{arch}.block_count")
    if n_layer is not None and not 0 < n_layer <= LLAMA_MAX_LAYERS:
        out.error(P.HPARAM_INVALID, f"{arch}.block_count is {n_layer}, llama.cpp needs 1..{LLAMA_MAX_LAYERS} (it aborts the process otherwise)")
        n_layer = None
    n_expert = _u32(meta, kv_types, f"{arch}.expert_count") or 0
    if n_expert > LLAMA_MAX_EXPERTS:
        out.error(P.HPARAM_INVALID, f"{arch}.expert_count is {n_expert}, llama.cpp allows at most {LLAMA_MAX_EXPERTS} (it aborts the process otherwise)")
    used = _u32(meta, kv_types, f"{arch}.expert_used_count")
    if used is not None and used > n_expert:
        out.error(P.HPARAM_INVALID, f"{arch}.expert_used_count is {used} with {n_expert} experts; llama.cpp aborts unless it is at most expert_count")
    for key in (f"{arch}.feed_forward_length", f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv", f"{arch}.expert_used_count"):
        # get_key_or_arr: an array must have one entry per block ("key ... has wrong array length").
        if n_layer is not None and kv_types.get(key, (0, None))[0] == ARR:
            n = _length(meta[key])
            if n != n_layer:
                out.error(P.HPARAM_INVALID, f"{key} has {n} entries, one per block was expected ({n_layer}); llama.cpp refuses it (\"wrong array length\")")
    if row is not None and row.qkv and f"{arch}.attention.head_count" not in kv_types:  # type: ignore[attr-defined]
        # Optional to load_hparams, but without it the model has 0 heads and the attention
        # tensors' shapes cannot match ("tensor 'blk.0.attn_q.weight' has wrong shape").
        out.error(P.HPARAM_MISSING, f"has no {arch}.attention.head_count; llama.cpp then takes 0 attention heads and refuses the attention tensors")
    if arch in ROPE_IS_HEAD_SIZE:
        _rope(meta, kv_types, arch, n_embd, out)
    return n_embd, n_layer


def _key_specs_for(arch: str) -> frozenset[str]:
    """Keys KEY_TYPES already judged (so a wrong type is reported once)."""
    return frozenset(k.replace("{arch}", arch) for k in KEY_TYPES)


def _rope(meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str, n_embd: int | None, out: Findings) -> None:
    """load_hparams for llama/deci/falcon: rope.dimension_count must equal the head size
    (attention.key_length, else embedding_length / head_count): "invalid n_rot"."""
    n_rot = _u32(meta, kv_types, f"{arch}.rope.dimension_count")
    if n_rot is None:
        return
    head = _u32(meta, kv_types, f"{arch}.attention.key_length")
    n_head = _u32(meta, kv_types, f"{arch}.attention.head_count")
    if head is None and n_embd and n_head:
        head = n_embd // n_head
    if head is not None and n_rot != head:
        out.error(P.HPARAM_INVALID, f"{arch}.rope.dimension_count is {n_rot}, llama.cpp requires the head size {head} for {arch} (\"invalid n_rot\")")


def _tensor_names(tensors: Mapping[str, tuple[int, ...]], arch: str, row: object, out: Findings) -> None:
    """llama.cpp refuses a file with a tensor its model never reads: it counts the tensors the
    architecture's loader created against the file's ("wrong number of tensors; expected N, got M").
    The names each architecture's loader may create (required or optional) come from
    gguf_arch.TENSOR_NAMES; a known architecture without such a list is held to the names any
    architecture reads. Judged for architectures llama.cpp knows only: a newer one may read new names."""
    if arch not in KNOWN_ARCHITECTURES:
        return
    allowed = _allowed_names(arch)
    if allowed is None:
        pattern = _tensor_name_re()
        for tname in tensors:
            if tname not in TENSOR_RAW_NAMES and not pattern.match(tname):
                out.error(P.TENSOR_UNEXPECTED, f"tensor {tname!r} is not a name llama.cpp reads; it refuses files with tensors it does not use (\"wrong number of tensors\")")
        return
    unexpected = [t for t in tensors if _NUMBER.sub(".%d", t) not in allowed]
    for tname in unexpected[:_MAX_NAMED]:
        out.error(P.TENSOR_UNEXPECTED, f"tensor {tname!r} is not one llama.cpp's {arch} loader reads; it refuses files with tensors it does not use (\"wrong number of tensors\")")
    if len(unexpected) > _MAX_NAMED:
        out.error(P.TENSOR_UNEXPECTED, f"and {len(unexpected) - _MAX_NAMED} more tensors llama.cpp's {arch} loader does not read")


_NUMBER = re.compile(r"\.\d+(?=\.|$)")  # a block or expert number: "blk.12.attn_q.weight" -> "blk.%d.attn_q.weight"
_MAX_NAMED = 20  # a file of another architecture would otherwise list every tensor


@lru_cache(maxsize=None)
def _allowed_names(arch: str) -> frozenset[str] | None:
    """The tensor names `arch`'s loader may create, with the generic pass's scale companions."""
    names = TENSOR_NAMES.get(arch)
    if names is None:
        return None
    base = frozenset(names.split())
    extra = {f"{b}.{s}" for b in SCALE_COMPANIONS if f"{b}.weight" in base for s in ("scale", "input_scale")}
    return base | extra


def _blocks(tensors: Mapping[str, tuple[int, ...]], meta: Mapping[str, object], arch: str, row: object, n_layer: int | None, out: Findings) -> None:
    """block_count against the blk.N tensors: a block past the count is never read (llama.cpp
    refuses the file), a block below it without tensors misses every layer tensor."""
    if n_layer is None:
        return
    present: dict[int, int] = {}
    for tname in tensors:
        m = _BLOCK.match(tname)
        if m:
            n = int(m[1])
            present[n] = present.get(n, 0) + 1
    beyond = sorted(n for n in present if n >= n_layer)
    if beyond:
        out.error(P.BLOCK_COUNT_MISMATCH, f"{arch}.block_count is {n_layer} but tensors of block {beyond[0]}"
                  f"{f' to {beyond[-1]}' if len(beyond) > 1 else ''} are present; llama.cpp never reads them and refuses the file")
    empty = [n for n in range(n_layer) if n not in present]
    if empty and present:
        out.error(P.BLOCK_COUNT_MISMATCH, f"{arch}.block_count is {n_layer} but block{'s' if len(empty) > 1 else ''} "
                  f"{P.number_ranges(empty)} {'have' if len(empty) > 1 else 'has'} no tensors")


def _required_tensors(tensors: Mapping[str, tuple[int, ...]], row: object, out: Findings) -> None:
    """create_tensor(..., 0) fails with "missing tensor '<name>'" (src/llama-model-loader.cpp)."""
    for tname in row.tensors:  # type: ignore[attr-defined]
        if tname not in tensors:
            out.error(P.TENSOR_MISSING, f"has no tensor {tname!r}, which llama.cpp requires (\"missing tensor '{tname}'\")")


def _block_requirements(tensors: Mapping[str, tuple[int, ...]], row: object, n_layer: int, dense: bool, out: Findings) -> None:
    patterns = [*row.block, *(row.dense if dense else ())]  # type: ignore[attr-defined]
    for i in range(n_layer):
        for pattern in patterns:
            tname = pattern.replace("%d", str(i))
            if tname not in tensors:
                out.error(P.TENSOR_MISSING, f"has no tensor {tname!r}, which llama.cpp requires in every block (\"missing tensor '{tname}'\")")
        if row.qkv:  # type: ignore[attr-defined]
            fused = f"blk.{i}.attn_qkv.weight"
            split = [f"blk.{i}.attn_{x}.weight" for x in "qkv"]
            if fused not in tensors and any(s not in tensors for s in split):
                missing = next(s for s in split if s not in tensors)
                out.error(P.TENSOR_MISSING, f"has no tensor {missing!r} (nor a fused {fused!r}), which llama.cpp requires (\"missing tensor '{missing}'\")")


def _shapes(tensors: Mapping[str, tuple[int, ...]], meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str,
            row: object, n_embd: int | None, n_vocab: int | None, n_layer: int | None, out: Findings) -> None:
    """create_tensor checks every shape: "tensor 'token_embd.weight' has wrong shape"."""
    ff_key = f"{arch}.feed_forward_length"
    # feed_forward_length is optional to load_hparams: absent, n_ff is 0 and the shapes say so.
    sizes = {"n_embd": n_embd, "n_vocab": n_vocab, "n_ff": _u32(meta, kv_types, ff_key) if ff_key in kv_types else 0}
    for pattern, symbols in row.shapes.items():  # type: ignore[attr-defined]
        want = [sizes[s] for s in symbols]
        if any(w is None for w in want):
            continue
        names = [pattern.replace("%d", str(i)) for i in range(n_layer or 0)] if "%d" in pattern else [pattern]
        for tname in names:
            dims = tensors.get(tname)
            if dims is None:
                continue
            got = tuple(dims) + (1,) * (len(want) - len(dims))
            if got[: len(want)] != tuple(want) or any(d != 1 for d in got[len(want):]):
                desc = ", ".join(f"{s}={sizes[s]}" for s in dict.fromkeys(symbols))
                out.error(P.BAD_SHAPE, f"tensor {tname!r} has shape {list(dims)}, llama.cpp expects {want} ({desc}; \"wrong shape\")")
