"""Model-level GGUF checks: what llama.cpp's model loader needs beyond a file `gguf_init_from_file` reads.

Three sources, each mirroring llama.cpp b-release of gguf_arch.ENGINE:
- `KEY_TYPES` below: keys every llama.cpp load reads type-strictly, the vocabulary's included;
- `llama_vocab::load`: the tokenizer model and pre-tokenizer names it accepts, the arrays it
  indexes (gguf_arch.TOKENIZER_MODELS, BPE_PRE_TOKENIZERS, NAME_TOKENS: generated from
  llama-vocab.cpp);
- the architecture's own load path, run by gguf_eval over the key/values and tensor infos:
  hyper-parameters derived as llama.cpp derives them, with its asserts and throws, every tensor
  asked for with the shape llama.cpp asks for, the tensors no path creates, and the assertions
  of the graph a context builds before its first decode.

Only what llama.cpp refuses is an error, so a model it loads passes. Names llama.cpp's version
of the tables does not know (an architecture, a tokenizer, a pre-tokenizer) are errors for that
version and warnings when the lane declares a newer engine (`engine_newer`).

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
    ARCH_CLASSES, BPE_PRE_TOKENIZERS, ENGINE, KNOWN_ARCHITECTURES, MERGES_OPTIONAL_PRE, NAME_TOKENS, SCALE_COMPANIONS,
    TENSOR_BASE_NAMES, TENSOR_NAMES, TENSOR_RAW_NAMES, TENSOR_SUFFIXES, TOKENIZER_MODELS,
)
from preflight.formats.safetensors import Findings

# GGUF value type ids (gguf.cpp's enum gguf_type).
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
TYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64")
_BY_NAME = {n: i for i, n in enumerate(TYPE_NAMES)}

LLAMA_MAX_LAYERS = 512  # src/llama-hparams.h; load_hparams asserts 0 < block_count <= it (abort)
ENGINE_NAME = f"llama.cpp {ENGINE['llama.cpp']}"  # the version the tables describe, as messages say it

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
    "tokenizer.ggml.suppress_tokens": Key(_a(I32), "always", "llama_vocab::load: int32 array"),
    **{
        f"tokenizer.ggml.{name}_token_id": Key(_s(U32), "always", "special token ids are read as uint32")
        for name in ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask",
                     "prefix", "suffix", "middle", "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")
    },
    "{arch}.vocab_size": Key(_s(U32), "always", "read as uint32 (the vocabulary size of no-vocab models)"),
}

NO_VOCAB = frozenset(m for m, t in TOKENIZER_MODELS.items() if t == "NONE")

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


def engine_is_newer(version: str | None) -> bool:
    """Whether a declared llama.cpp version is newer than the one the tables describe (ENGINE):
    a release tag ("b6000", "6000") or a llama-cpp-python version ("0.3.40"). Anything else
    (None, "latest", an image tag) cannot be told newer: False."""
    if not version:
        return False
    v = version.strip().lower().removeprefix("v")
    m = re.fullmatch(r"b?(\d{3,6})", v)
    if m:
        return int(m[1]) > int(ENGINE["llama.cpp"].removeprefix("b"))
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", v)
    if m:
        return tuple(map(int, m.groups())) > tuple(map(int, ENGINE["llama-cpp-python"].split(".")))
    return False


def _newer(out: Findings, engine_newer: bool, code: str, message: str) -> None:
    """A name this llama.cpp does not know: its refusal, or a warning when the lane runs a newer one."""
    if engine_newer:
        out.warning(code, f"{message}; the lane declares a newer llama.cpp, which may know it")
    else:
        out.error(code, message)


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
    engine_newer: bool = False,
) -> ModelFacts:
    """Judge one model's metadata and tensor set; findings go to `out`.

    `tensors` maps names to GGUF dims (innermost first). `tensors_complete` is False for one
    part of a split (the tensor checks then wait for check_gguf_split); `tensors_only`
    reports the tensor checks alone (the key/values were judged already). `vocab_file`: the
    file is a vocabulary file (no tensors), as llama.cpp's ggml-vocab-*.gguf; None decides
    from the file. `engine_newer`: the lane runs a llama.cpp newer than the tables' (names
    they do not know are warnings, not errors).
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

    _check_key_types(meta, kv_types, arch, kv_out)
    if arch_kv is None:
        kv_out.error(P.ARCHITECTURE_MISSING, "has no general.architecture; llama.cpp cannot choose a model for it (\"unknown model architecture: ''\")")
    if arch is None or arch == "clip":  # clip: a multimodal projector, loaded beside a model, never as one
        return facts
    if arch not in KNOWN_ARCHITECTURES and not _NAME.match(arch):
        kv_out.error(P.HPARAM_INVALID, f"general.architecture {arch!r} is not an architecture name (llama.cpp: \"unknown model architecture\")")
        return facts
    if arch not in KNOWN_ARCHITECTURES:
        _newer(kv_out, engine_newer, P.UNKNOWN_ARCHITECTURE, f"architecture {arch!r} is unknown to {ENGINE_NAME} "
               f"(\"unknown model architecture: '{arch}'\")")
        if not engine_newer:
            return facts  # llama.cpp stops there
    n_vocab = _vocabulary(meta, kv_types, arch, kv_out, engine_newer)
    facts = facts._replace(vocab_size=n_vocab)
    if vocab_file:
        return facts
    if tensors_complete and not tensors:
        out.error(P.WEIGHTS_MISSING, "has no tensors: a model file without its weights (if this file is a vocabulary only, "
                  "set vocab_only: true on the lane)")
    if arch not in ARCH_CLASSES:
        n_layer = _generic_hparams(meta, kv_types, arch, kv_out)
        facts = facts._replace(block_count=n_layer)
        if tensors_complete and tensors:
            facts = _tensor_facts(facts, tensors)
            _tensor_names(tensors, arch, out)
            _blocks(tensors, arch, n_layer, out)
        return facts
    from preflight.formats import gguf_eval

    n_token_types = meta.get("tokenizer.ggml.token_type_count")
    run = gguf_eval.run(arch, meta, kv_types, tensors if tensors_complete and tensors else None,
                        n_vocab if n_vocab is not None else gguf_eval.UNK,
                        n_token_types if type(n_token_types) is int and kv_types.get("tokenizer.ggml.token_type_count") == (U32, None) else 0)
    if run.hparams is not None and not (run.hparams.kind == "key-type" and run.hparams.key in KEY_TYPES):  # reported with the key types
        _report(run.hparams, arch, kv_out, "hparams")
    n_layer = run.values.get("n_layer_all")
    facts = facts._replace(block_count=n_layer if type(n_layer) is int else _u32(meta, kv_types, f"{arch}.block_count"))
    if not tensors_complete or not tensors:
        return facts
    facts = _tensor_facts(facts, tensors)
    beyond = _blocks(tensors, arch, facts.block_count if run.followed else None, out)
    if run.tensors is not None:
        _report(run.tensors, arch, out, "tensors")
    if run.complete:
        unused = [t for t in run.unused if not (_block_of(t) is not None and _block_of(t) in beyond)]
        for tname in unused[:_MAX_NAMED]:
            out.error(P.TENSOR_UNEXPECTED, f"tensor {tname!r} is not one llama.cpp's {arch} loader creates for these hyper-parameters; "
                      f"it refuses files with tensors it does not use (\"wrong number of tensors\")")
        if len(unused) > _MAX_NAMED:
            out.error(P.TENSOR_UNEXPECTED, f"and {len(unused) - _MAX_NAMED} more tensors llama.cpp's {arch} loader does not create")
    else:
        _tensor_names(tensors, arch, out)
    if run.graph is not None:
        _report(run.graph, arch, out, "graph")
    return facts


def _tensor_facts(facts: ModelFacts, tensors: Mapping[str, tuple[int, ...]]) -> ModelFacts:
    if "token_embd.weight" in tensors or "output.weight" in tensors:
        return facts._replace(tied_embeddings="output.weight" not in tensors)
    return facts


def _report(err: object, arch: str, out: Findings, stage: str) -> None:
    """One failure of llama.cpp's load path, with its code and llama.cpp's own words."""
    kind, message, key, tensor, detail = err.kind, err.message, err.key, err.tensor, err.detail  # type: ignore[attr-defined]
    said = f"{message} ({detail})" if detail else message
    if kind == "key-missing":
        out.error(P.HPARAM_MISSING, f"has no {key}, which {ENGINE_NAME} requires for {arch} (\"{message}\")")
    elif kind == "key-type":
        out.error(P.KV_TYPE_MISMATCH, f"{key or 'a key'} has a type llama.cpp does not read (\"{message}\")")
    elif kind == "tensor-missing":
        name = message.split("'")[1] if "'" in message else message
        out.error(P.TENSOR_MISSING, f"has no tensor {name!r}, which llama.cpp's {arch} loader requires with these hyper-parameters (\"{message}\")")
    elif kind == "tensor-shape":
        out.error(P.BAD_SHAPE, f"llama.cpp's {arch} loader refuses it (\"{message}\"): {detail}")
    elif stage == "graph":
        out.error(P.HPARAM_INVALID, f"{ENGINE_NAME} aborts when it builds this model's first graph (creating a context, before the "
                  f"first decode): \"{said}\"")
    elif kind == "assert" or kind == "abort":
        out.error(P.HPARAM_INVALID, f"{ENGINE_NAME} aborts the process loading this model: \"{said}\"")
    else:
        out.error(P.HPARAM_INVALID, f"{ENGINE_NAME} refuses this model: \"{said}\"")


def _check_key_types(meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str | None, out: Findings) -> None:
    """Mirrors the type-strict reads of the vocabulary (the architecture's keys are judged by its load path)."""
    prefix = f"{arch}." if arch else None
    for key, kt in kv_types.items():
        spec = KEY_TYPES.get(key)
        if spec is None and prefix and key.startswith(prefix):
            spec = KEY_TYPES.get("{arch}." + key[len(prefix):])
        if spec is None:
            continue
        if kt not in spec.types:
            out.error(P.KV_TYPE_MISMATCH, f"{key} is {_kv_type_name(kt)}, llama.cpp reads it as {_expected(spec.types)} ({spec.why}; \"key {key} has wrong type\")")


def _vocabulary(meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str, out: Findings, engine_newer: bool) -> int | None:
    """llama_vocab::load: tokenizer.ggml.model is required and known; BPE needs a known
    pre-tokenizer and merges; then the token list, and scores / token types at least as long as
    it ("Index out of array bounds for scores (N < M)"), no token twice, and the tokens it looks
    up by text for some models."""
    model = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.model" not in kv_types:
        out.error(P.TOKENIZER_MISSING, "has no tokenizer.ggml.model; llama.cpp needs the tokenizer even to list the vocabulary (\"key not found in model: tokenizer.ggml.model\")")
        return None
    if not isinstance(model, str):
        return None  # wrong type: reported with the key types
    if model in NO_VOCAB:
        size = meta.get(f"{arch}.vocab_size")
        return size if type(size) is int else 0
    vtype = TOKENIZER_MODELS.get(model)
    if vtype is None:
        if not _NAME.match(model):
            out.error(P.VOCAB_INVALID, f"tokenizer.ggml.model {model!r} is not a tokenizer name (llama.cpp: \"unknown tokenizer\")")
        else:
            _newer(out, engine_newer, P.VOCAB_INVALID, f"tokenizer.ggml.model {model!r} is unknown to {ENGINE_NAME} (\"unknown tokenizer: '{model}'\")")
    pre = meta.get("tokenizer.ggml.pre") if kv_types.get("tokenizer.ggml.pre") == (STR, None) else None
    if vtype == "BPE" and model != "gemma4" and isinstance(pre, str) and pre and pre not in BPE_PRE_TOKENIZERS:
        _newer(out, engine_newer, P.VOCAB_INVALID, f"tokenizer.ggml.pre {pre!r} is unknown to {ENGINE_NAME} for a BPE vocabulary "
               f"(\"unknown pre-tokenizer type: '{pre}'\")")
    if vtype == "BPE" and "tokenizer.ggml.merges" not in kv_types and (model == "gemma4" or pre != MERGES_OPTIONAL_PRE):
        out.error(P.TOKENIZER_MISSING, f"is a BPE ({model}) tokenizer without tokenizer.ggml.merges (\"cannot find tokenizer merges in model file\")")
    charsmap = kv_types.get("tokenizer.ggml.precompiled_charsmap")
    if vtype == "UGM" and charsmap is not None:
        n = _length(meta.get("tokenizer.ggml.precompiled_charsmap"))
        if charsmap not in ((ARR, U8), (ARR, I8)):
            out.error(P.KV_TYPE_MISMATCH, "tokenizer.ggml.precompiled_charsmap is not an array of int8/uint8 "
                      "(\"invalid gguf type for tokenizer.ggml.precompiled_charsmap\")")
        elif n is not None and n < 4:
            out.error(P.VOCAB_INVALID, "tokenizer.ggml.precompiled_charsmap has fewer than 4 bytes (\"precompiled_charsmap too small for xcda_blob_size header!\")")
    if "tokenizer.ggml.tokens" not in kv_types:
        out.error(P.TOKENIZER_MISSING, "has no tokenizer.ggml.tokens (\"cannot find tokenizer vocab in model file\")")
        return None
    if kv_types["tokenizer.ggml.tokens"] != (ARR, STR):
        return None
    tokens = meta["tokenizer.ggml.tokens"]
    n_tokens = _length(tokens)
    assert n_tokens is not None
    present: frozenset[str] | None
    if isinstance(tokens, list):
        texts = [t for t in tokens if t]
        dup = next((t for i, t in enumerate(texts) if t in texts[:i]), None)
        present = frozenset(tokens)
    else:
        dup = getattr(tokens, "duplicate", None)
        present = getattr(tokens, "present", None)
    if dup is not None:
        out.error(P.VOCAB_INVALID, f"tokenizer.ggml.tokens holds the token {dup!r} twice; llama.cpp aborts the process on it (GGML_ASSERT id_to_token.size() == token_to_id.size())")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        n = _length(meta.get(key)) if key in kv_types and kv_types[key][0] == ARR else None
        if n is None:
            continue
        if n < n_tokens:
            what = "scores" if key.endswith("scores") else "toktypes"
            out.error(P.VOCAB_INVALID, f"{key} has {n} entries for {n_tokens} tokens; llama.cpp refuses it (\"Index out of array bounds for {what} ({n} < {n_tokens})\")")
        elif n > n_tokens:
            out.warning(P.VOCAB_INVALID, f"{key} has {n} entries for {n_tokens} tokens; llama.cpp ignores the extra {n - n_tokens}")
    _name_tokens(meta, kv_types, present, out)
    if vtype in ("SPM", "UGM", "BPE"):
        _byte_tokens(tokens, meta.get("tokenizer.ggml.token_type") if kv_types.get("tokenizer.ggml.token_type") == (ARR, I32) else None, out)
    return n_tokens


BYTE = 6  # LLAMA_TOKEN_TYPE_BYTE


def _byte_tokens(tokens: object, types: object, out: Findings) -> None:
    """llama_vocab::load builds every token's piece; a byte token's is read from its text as
    "<0xXX>" (token_to_byte: text.substr(3, 2)), which throws for a text under 3 bytes."""
    if isinstance(tokens, list):
        short = [(i, t.encode()) for i, t in enumerate(tokens) if 0 < len(t.encode()) < 3]
    else:
        short = list(getattr(tokens, "short", None) or ())
    if not short or types is None:
        return
    if isinstance(types, list):
        def type_of(i: int) -> int | None:
            return types[i] if i < len(types) else None
    else:
        raw = getattr(types, "raw", None)
        if raw is None:
            return

        def type_of(i: int) -> int | None:
            return int.from_bytes(raw[4 * i : 4 * i + 4], "little", signed=True) if 4 * i + 4 <= len(raw) else None
    for i, text in short:
        if type_of(i) == BYTE:
            out.error(P.VOCAB_INVALID, f"tokenizer.ggml.token_type marks token {i} ({text.decode('utf-8', 'replace')!r}) as a byte token, "
                      f"but a byte token's text is \"<0xXX>\"; llama.cpp's vocabulary load throws (\"basic_string::substr\")")
            return


def _name_tokens(meta: Mapping[str, object], kv_types: Mapping[str, KVType], present: frozenset[str] | None, out: Findings) -> None:
    """llama_vocab::load sets attributes of some tokens by their text when general.name contains a
    word (phi-3: "</s>", "<unk>", ...); `token_to_id.at(text)` throws when one is absent."""
    name = meta.get("general.name")
    if present is None or not isinstance(name, str) or kv_types.get("general.name") != (STR, None):
        return
    low = name.lower()
    for word, needed in NAME_TOKENS.items():
        if word in low:
            missing = [t for t in needed if t not in present]
            if missing:
                out.error(P.VOCAB_INVALID, f"general.name {name!r} makes llama.cpp look up the token {missing[0]!r}, which "
                          f"tokenizer.ggml.tokens lacks; the vocabulary load throws (token_to_id.at: \"unordered_map::at\")")
            return


def _u32(meta: Mapping[str, object], kv_types: Mapping[str, KVType], key: str) -> int | None:
    value = meta.get(key)
    return value if kv_types.get(key) == (U32, None) and type(value) is int else None


def _generic_hparams(meta: Mapping[str, object], kv_types: Mapping[str, KVType], arch: str, out: Findings) -> int | None:
    """For an architecture without a load path in the tables: what llama_model_base::load_hparams
    requires of every model (context_length, embedding_length, block_count as uint32)."""
    for rel in ("context_length", "embedding_length", "block_count"):
        key = f"{arch}.{rel}"
        kt = kv_types.get(key)
        if kt is None:
            out.error(P.HPARAM_MISSING, f"has no {key}, which llama.cpp requires of every model (\"key not found in model: {key}\")")
        elif kt != (U32, None):
            out.error(P.KV_TYPE_MISMATCH, f"{key} is {_kv_type_name(kt)}, llama.cpp reads it as uint32 (\"key {key} has wrong type\")")
    n_layer = _u32(meta, kv_types, f"{arch}.block_count")
    if n_layer is not None and not 0 < n_layer <= LLAMA_MAX_LAYERS:
        out.error(P.HPARAM_INVALID, f"{arch}.block_count is {n_layer}, llama.cpp needs 1..{LLAMA_MAX_LAYERS} (it aborts the process otherwise)")
        return None
    return n_layer


def _tensor_names(tensors: Mapping[str, tuple[int, ...]], arch: str, out: Findings) -> None:
    """For a load path that could not be followed to the end: llama.cpp refuses a file with a
    tensor its model never reads ("wrong number of tensors"). The names each architecture's
    loader may create under any condition come from gguf_arch.TENSOR_NAMES (a superset); a known
    architecture without such a list is held to the names any architecture reads. Judged for
    architectures llama.cpp knows only: a newer one may read new names."""
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


def _block_of(tname: str) -> int | None:
    m = _BLOCK.match(tname)
    return int(m[1]) if m else None


def _blocks(tensors: Mapping[str, tuple[int, ...]], arch: str, n_layer: int | None, out: Findings) -> set[int]:
    """block_count against the blk.N tensors: a block past the count is never read (llama.cpp
    refuses the file), a block below it without tensors misses every layer tensor. Returns the
    blocks past the count."""
    if n_layer is None:
        return set()
    present: dict[int, int] = {}
    for tname in tensors:
        n = _block_of(tname)
        if n is not None:
            present[n] = present.get(n, 0) + 1
    beyond = sorted(n for n in present if n >= n_layer)
    if beyond:
        out.error(P.BLOCK_COUNT_MISMATCH, f"{arch}.block_count is {n_layer} but tensors of block {beyond[0]}"
                  f"{f' to {beyond[-1]}' if len(beyond) > 1 else ''} are present; llama.cpp never reads them and refuses the file")
    empty = [n for n in range(n_layer) if n not in present]
    if empty and present:
        out.error(P.BLOCK_COUNT_MISMATCH, f"{arch}.block_count is {n_layer} but block{'s' if len(empty) > 1 else ''} "
                  f"{P.number_ranges(empty)} {'have' if len(empty) > 1 else 'has'} no tensors")
    return set(beyond)
