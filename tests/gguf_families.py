"""Tiny valid GGUF models of several llama.cpp architectures, and mutants of what its loader
derives from their hyper-parameters (tests/test_gguf_families.py judges them against llama.cpp).

A model is a `Model`: its architecture, hyper-parameters and vocabulary. `spec(model)` gives the
key/values and tensors (numpy order: rows first) as llama.cpp's loader for that architecture
asks for them (read from src/models/<arch>.cpp of the llama.cpp the oracle runs); the writer is
gguf.GGUFWriter (tests/gguf_mutants.write). Mutants either change a key/value and keep the
tensors ("the shapes no longer match"), rebuild the tensors from the changed hyper-parameters
("consistent shapes, values llama.cpp refuses or asserts on"), change one dimension of one
tensor, or change the vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gguf.constants import GGUFValueType as VT

from tests.gguf_mutants import Spec


@dataclass(frozen=True)
class Model:
    arch: str
    vocab: str  # "spm" | "bpe"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    head_k: int | None = None  # attention.key_length (None: absent, llama.cpp takes n_embd / n_head)
    head_v: int | None = None  # attention.value_length
    n_rot: int | None = -1  # rope.dimension_count; -1: the head size; None: absent
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    tied: bool = True  # no output.weight (token_embd is reused)
    fused_qkv: bool = False
    qkv_bias: bool = False
    per_layer_heads: bool = False  # head_count as an array of one entry per block
    rope_scaling: str | None = None
    name: str = "tiny"

    @property
    def family(self) -> str:
        return f"{self.arch}{'-moe' if self.arch == 'llama' and self.n_expert else ''}-{self.vocab}"

    @property
    def hk(self) -> int:
        return self.head_k if self.head_k is not None else self.n_embd // self.n_head

    @property
    def hv(self) -> int:
        return self.head_v if self.head_v is not None else self.n_embd // self.n_head


# The base model of each family, as llama.cpp loads it (n_ff differs from n_embd, GQA heads, so a
# swapped dimension shows).
FAMILIES: dict[str, Model] = {m.family: m for m in (
    Model("llama", "spm"),
    Model("llama", "bpe"),
    Model("qwen2", "bpe", qkv_bias=True),
    Model("qwen3", "bpe"),
    Model("gemma", "spm", n_head_kv=4),
    Model("phi3", "spm", n_head_kv=4, fused_qkv=True, tied=False, name="Phi-3 tiny"),
    Model("qwen2moe", "bpe", n_expert=4, n_expert_used=2, n_ff_exp=32, n_ff_shexp=48, tied=False, qkv_bias=True),
    Model("llama", "spm", n_expert=4, n_expert_used=2),
)}

# ------------------------------------------------------------------ vocabularies


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (its BPE vocabularies start with these 256)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


BPE_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "e r", "Ġ a", "o n"]


def vocabulary(kind: str) -> tuple[list[str], list[float], list[int], list[str] | None]:
    """tokens, scores, token types and merges (None for SPM) of a small vocabulary of `kind`."""
    if kind == "spm":
        words = ["▁the", "▁a", "▁to", "▁of", "▁and", "▁in", "<|endoftext|>"]
        tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *words]
        types = [2, 3, 3, *([6] * 256), 1, 1, 1, 1, 1, 1, 3]
        return tokens, [float(-i) for i in range(len(tokens))], types, None
    chars = _bytes_to_unicode()
    merged = [m.replace(" ", "") for m in BPE_MERGES]
    tokens = [*chars, *merged, "<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    return tokens, [0.0] * len(tokens), types, list(BPE_MERGES)


def special_ids(kind: str) -> tuple[int, int]:
    tokens = vocabulary(kind)[0]
    if kind == "spm":
        return 1, 2
    eot = tokens.index("<|endoftext|>")
    return eot, eot


# ------------------------------------------------------------------ key/values and tensors

def key_values(m: Model) -> list[tuple[str, VT, object]]:
    a = m.arch
    tokens, scores, types, merges = vocabulary(m.vocab)
    bos, eos = special_ids(m.vocab)
    kvs: list[tuple[str, VT, object]] = [
        ("general.architecture", VT.STRING, a),
        ("general.name", VT.STRING, m.name),
        (f"{a}.context_length", VT.UINT32, 256),
        (f"{a}.embedding_length", VT.UINT32, m.n_embd),
        (f"{a}.block_count", VT.UINT32, m.n_layer),
        (f"{a}.feed_forward_length", VT.UINT32, m.n_ff),
        (f"{a}.attention.head_count", VT.ARRAY, (VT.UINT32, [m.n_head] * m.n_layer)) if m.per_layer_heads
        else (f"{a}.attention.head_count", VT.UINT32, m.n_head),
        (f"{a}.attention.head_count_kv", VT.UINT32, m.n_head_kv),
        (f"{a}.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-6),
        ("general.file_type", VT.UINT32, 0),
    ]
    if m.head_k is not None:
        kvs.append((f"{a}.attention.key_length", VT.UINT32, m.head_k))
    if m.head_v is not None:
        kvs.append((f"{a}.attention.value_length", VT.UINT32, m.head_v))
    if m.n_rot is not None:
        kvs.append((f"{a}.rope.dimension_count", VT.UINT32, m.hk if m.n_rot == -1 else m.n_rot))
    if m.rope_scaling is not None:
        kvs.append((f"{a}.rope.scaling.type", VT.STRING, m.rope_scaling))
        kvs.append((f"{a}.rope.scaling.factor", VT.FLOAT32, 2.0))
    if m.n_expert:
        kvs.append((f"{a}.expert_count", VT.UINT32, m.n_expert))
        kvs.append((f"{a}.expert_used_count", VT.UINT32, m.n_expert_used))
    if m.n_ff_exp:
        kvs.append((f"{a}.expert_feed_forward_length", VT.UINT32, m.n_ff_exp))
    if m.n_ff_shexp:
        kvs.append((f"{a}.expert_shared_feed_forward_length", VT.UINT32, m.n_ff_shexp))
    kvs += [
        ("tokenizer.ggml.model", VT.STRING, "llama" if m.vocab == "spm" else "gpt2"),
        ("tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, tokens)),
        ("tokenizer.ggml.scores", VT.ARRAY, (VT.FLOAT32, scores)),
        ("tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, types)),
        ("tokenizer.ggml.bos_token_id", VT.UINT32, bos),
        ("tokenizer.ggml.eos_token_id", VT.UINT32, eos),
    ]
    if merges is not None:
        kvs.insert(-4, ("tokenizer.ggml.pre", VT.STRING, "qwen2" if a.startswith("qwen") else "llama-bpe"))
        kvs.insert(-4, ("tokenizer.ggml.merges", VT.ARRAY, (VT.STRING, merges)))
    return kvs


def tensors(m: Model) -> dict[str, tuple[int, ...]]:
    """Name -> numpy shape (the reverse of llama.cpp's ne order) as the architecture's loader asks."""
    e, ff, hk, hv = m.n_embd, m.n_ff, m.hk, m.hv
    n_vocab = len(vocabulary(m.vocab)[0])
    q_out = hk * m.n_head
    kv_k, kv_v = hk * m.n_head_kv, hv * m.n_head_kv
    if m.arch in ("qwen2", "qwen2moe", "phi3"):
        q_out = e  # these loaders ask for {n_embd, n_embd}
        kv_k = kv_v = kv_v if m.arch != "phi3" else kv_v
    o_in = e if m.arch in ("qwen2", "qwen2moe", "phi3") else hv * m.n_head
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, e), "output_norm.weight": (e,)}
    if not m.tied:
        out["output.weight"] = (n_vocab, e)
    for i in range(m.n_layer):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = (e,)
        if m.fused_qkv:
            out[b + "attn_qkv.weight"] = (q_out + kv_k + kv_v, e)
        else:
            out[b + "attn_q.weight"] = (q_out, e)
            out[b + "attn_k.weight"] = (kv_k, e)
            out[b + "attn_v.weight"] = (kv_v, e)
        if m.qkv_bias and not m.fused_qkv:
            out[b + "attn_q.bias"] = (q_out,)
            out[b + "attn_k.bias"] = (kv_k,)
            out[b + "attn_v.bias"] = (kv_v,)
        out[b + "attn_output.weight"] = (e, o_in)
        if m.arch == "qwen3":
            out[b + "attn_q_norm.weight"] = (hk,)
            out[b + "attn_k_norm.weight"] = (hk,)
        out[b + "ffn_norm.weight"] = (e,)
        if m.arch == "phi3":
            out[b + "ffn_up.weight"] = (2 * ff, e)  # gate and up fused: llama.cpp asks for {n_embd, 2 * n_ff}
            out[b + "ffn_down.weight"] = (e, ff)
        elif m.arch == "qwen2moe":
            fe = m.n_ff_exp or ff // m.n_expert_used
            out[b + "ffn_gate_inp.weight"] = (m.n_expert, e)
            out[b + "ffn_gate_exps.weight"] = (m.n_expert, fe, e)
            out[b + "ffn_down_exps.weight"] = (m.n_expert, e, fe)
            out[b + "ffn_up_exps.weight"] = (m.n_expert, fe, e)
            fs = m.n_ff_shexp or ff
            out[b + "ffn_gate_inp_shexp.weight"] = (e,)
            out[b + "ffn_gate_shexp.weight"] = (fs, e)
            out[b + "ffn_down_shexp.weight"] = (e, fs)
            out[b + "ffn_up_shexp.weight"] = (fs, e)
        elif m.n_expert:
            out[b + "ffn_gate_inp.weight"] = (m.n_expert, e)
            out[b + "ffn_gate_exps.weight"] = (m.n_expert, ff, e)
            out[b + "ffn_down_exps.weight"] = (m.n_expert, e, ff)
            out[b + "ffn_up_exps.weight"] = (m.n_expert, ff, e)
        else:
            out[b + "ffn_gate.weight"] = (ff, e)
            out[b + "ffn_down.weight"] = (e, ff)
            out[b + "ffn_up.weight"] = (ff, e)
    return out


def spec(m: Model) -> Spec:
    return Spec(key_values(m), [(n, s, "F32") for n, s in tensors(m).items()])


# ------------------------------------------------------------------ mutants

@dataclass
class Mutant:
    family: str
    kind: str  # "good", "hparam", "hparam-rebuilt", "dim", "drop", "vocab", "type"
    name: str
    spec: Spec
    mode: str = "decode"  # what the oracle does: "decode" loads, creates a context and decodes one token
    expect_ok: bool | None = None  # what the mutant is by construction, when known
    notes: list[str] = field(default_factory=list)


def _set(s: Spec, key: str, vtype: VT, value: object) -> Spec:
    kvs = [kv for kv in s.kvs if kv[0] != key]
    return Spec([*kvs, (key, vtype, value)], list(s.tensors), s.alignment, dict(s.raw_types), dict(s.raw_dims))


def _drop(s: Spec, key: str) -> Spec:
    return Spec([kv for kv in s.kvs if kv[0] != key], list(s.tensors), s.alignment, dict(s.raw_types), dict(s.raw_dims))


def good_variants(base: Model) -> Iterator[tuple[str, Model]]:
    """Consistent variants of a family that llama.cpp loads: other head layouts, explicit head
    sizes, per-block arrays, an untied output, fused or split attention, rope scaling."""
    r = dataclasses.replace
    yield "unchanged", base
    yield "more-heads", r(base, n_head=8, n_head_kv=8 if base.arch in ("gemma", "phi3") else 2)
    if base.arch not in ("gemma", "phi3"):
        yield "mqa", r(base, n_head_kv=1)
        yield "kv-heads-equal", r(base, n_head_kv=base.n_head)
    yield "key-length-explicit", r(base, head_k=base.n_embd // base.n_head, head_v=base.n_embd // base.n_head)
    yield "rope-absent", r(base, n_rot=None)
    yield "per-layer-heads", r(base, per_layer_heads=True)
    yield "three-blocks", r(base, n_layer=3)
    yield "wider-ffn", r(base, n_ff=160)
    if base.arch not in ("gemma", "qwen2moe"):  # gemma always reuses token_embd, qwen2moe always has output.weight
        yield "untied" if base.tied else "tied", r(base, tied=not base.tied)
    if base.arch in ("llama", "qwen2", "qwen3", "gemma"):
        yield "fused-qkv", r(base, fused_qkv=True, qkv_bias=False)
    if base.arch == "phi3":
        yield "split-qkv", r(base, fused_qkv=False)
    if base.arch in ("llama", "qwen3", "gemma"):
        yield "head-size-32", r(base, head_k=32, head_v=32)  # n_head * head size != n_embd: the loaders ask for head_k * n_head
    yield "rope-yarn", r(base, rope_scaling="yarn")
    yield "rope-linear", r(base, rope_scaling="linear")
    if base.n_expert:
        yield "experts-used-1", r(base, n_expert_used=1)
        yield "experts-8", r(base, n_expert=8)
    if base.arch == "qwen2moe":
        yield "expert-ffn-absent", r(base, n_ff_exp=0)
        yield "shared-ffn-absent", r(base, n_ff_shexp=0)


def hparam_mutants(base: Model) -> Iterator[tuple[str, str, VT, object]]:
    """(name, key, type, value) edits of one key/value, the tensors kept as they are."""
    a = base.arch
    e, h = base.n_embd, base.n_head
    yield "head-count-x2", f"{a}.attention.head_count", VT.UINT32, h * 2
    yield "head-count-half", f"{a}.attention.head_count", VT.UINT32, h // 2
    yield "head-count-3", f"{a}.attention.head_count", VT.UINT32, 3
    yield "head-count-0", f"{a}.attention.head_count", VT.UINT32, 0
    yield "head-count-kv-x2", f"{a}.attention.head_count_kv", VT.UINT32, base.n_head_kv * 2
    yield "head-count-kv-1", f"{a}.attention.head_count_kv", VT.UINT32, 1
    yield "head-count-kv-3", f"{a}.attention.head_count_kv", VT.UINT32, 3
    yield "head-count-kv-0", f"{a}.attention.head_count_kv", VT.UINT32, 0
    yield "key-length-x2", f"{a}.attention.key_length", VT.UINT32, base.hk * 2
    yield "key-length-half", f"{a}.attention.key_length", VT.UINT32, base.hk // 2
    yield "value-length-x2", f"{a}.attention.value_length", VT.UINT32, base.hv * 2
    yield "value-length-half", f"{a}.attention.value_length", VT.UINT32, base.hv // 2
    yield "rope-dims-half", f"{a}.rope.dimension_count", VT.UINT32, base.hk // 2
    yield "rope-dims-x2", f"{a}.rope.dimension_count", VT.UINT32, base.hk * 2
    yield "rope-dims-7", f"{a}.rope.dimension_count", VT.UINT32, 7
    yield "rope-scaling-unknown", f"{a}.rope.scaling.type", VT.STRING, "quadratic"
    yield "rope-scaling-longrope", f"{a}.rope.scaling.type", VT.STRING, "longrope"
    yield "embedding-length-x2", f"{a}.embedding_length", VT.UINT32, e * 2
    yield "embedding-length-half", f"{a}.embedding_length", VT.UINT32, e // 2
    yield "feed-forward-x2", f"{a}.feed_forward_length", VT.UINT32, base.n_ff * 2
    yield "feed-forward-half", f"{a}.feed_forward_length", VT.UINT32, base.n_ff // 2
    yield "feed-forward-absent", f"{a}.feed_forward_length", VT.UINT32, None
    yield "head-count-kv-absent", f"{a}.attention.head_count_kv", VT.UINT32, None
    yield "head-count-per-block-mismatch", f"{a}.attention.head_count", VT.ARRAY, (VT.UINT32, [h] + [h * 2] * (base.n_layer - 1))
    yield "expert-count-3", f"{a}.expert_count", VT.UINT32, 3
    yield "expert-count-0", f"{a}.expert_count", VT.UINT32, 0
    yield "expert-used-5", f"{a}.expert_used_count", VT.UINT32, 5
    yield "expert-used-0", f"{a}.expert_used_count", VT.UINT32, 0
    if base.n_expert:
        yield "expert-count-absent", f"{a}.expert_count", VT.UINT32, None
        yield "expert-count-2000", f"{a}.expert_count", VT.UINT32, 2000
    if base.arch == "qwen2moe":
        yield "expert-ffn-x2", f"{a}.expert_feed_forward_length", VT.UINT32, base.n_ff_exp * 2
        yield "shared-ffn-x2", f"{a}.expert_shared_feed_forward_length", VT.UINT32, base.n_ff_shexp * 2
        yield "expert-ffn-absent", f"{a}.expert_feed_forward_length", VT.UINT32, None


def rebuilt_mutants(base: Model) -> Iterator[tuple[str, Model]]:
    """Hyper-parameters changed with the tensors built to match them: what is left for llama.cpp
    to refuse is the values themselves (its asserts, its graph)."""
    r = dataclasses.replace
    yield "key-length-32-value-16", r(base, head_k=32, head_v=16)
    yield "key-length-8", r(base, head_k=8, head_v=8)
    yield "rope-dims-half", r(base, n_rot=base.hk // 2)
    yield "rope-dims-x2", r(base, n_rot=base.hk * 2)
    yield "heads-3", r(base, n_head=3, n_head_kv=3, head_k=16, head_v=16)
    yield "kv-heads-3", r(base, n_head_kv=3)
    yield "rope-scaling-unknown", r(base, rope_scaling="quadratic")
    if base.n_expert:
        yield "experts-used-5", r(base, n_expert_used=5)
        yield "experts-used-0", r(base, n_expert_used=0)


def vocab_mutants(base: Model) -> Iterator[tuple[str, Callable[[Spec], Spec], bool | None]]:
    """(name, edit, expected to load) of the vocabulary."""
    tokens, scores, types, merges = vocabulary(base.vocab)
    yield "tokenizer-model-unknown", lambda s: _set(s, "tokenizer.ggml.model", VT.STRING, "llamb"), False
    yield "scores-one-short", lambda s: _set(s, "tokenizer.ggml.scores", VT.ARRAY, (VT.FLOAT32, scores[:-1])), False
    yield "token-type-one-short", lambda s: _set(s, "tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, types[:-1])), False
    yield "scores-int32", lambda s: _set(s, "tokenizer.ggml.scores", VT.ARRAY, (VT.INT32, [int(x) for x in scores])), True
    yield "scores-as-strings", lambda s: _set(s, "tokenizer.ggml.scores", VT.ARRAY, (VT.STRING, [str(x) for x in scores])), False
    yield "token-type-uint32", lambda s: _set(s, "tokenizer.ggml.token_type", VT.ARRAY, (VT.UINT32, types)), False
    yield "tokens-as-ints", lambda s: _set(s, "tokenizer.ggml.tokens", VT.ARRAY, (VT.INT32, list(range(len(tokens))))), False
    yield "token-repeated", lambda s: _set(s, "tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, [*tokens[:-1], tokens[3]])), False
    yield "token-empty", lambda s: _set(s, "tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, [*tokens[:-2], "", tokens[-1]])), True
    yield "bos-out-of-range", lambda s: _set(s, "tokenizer.ggml.bos_token_id", VT.UINT32, 100_000), True
    yield "token-type-99", lambda s: _set(s, "tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, [99] * len(types))), None
    yield "token-type-all-byte", lambda s: _set(s, "tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, [6] * len(types))), None
    short = next((i for i, t in enumerate(tokens) if len(t.encode()) < 3), None)
    if short is not None:
        yield "short-token-typed-byte", lambda s: _set(s, "tokenizer.ggml.token_type", VT.ARRAY,
                                                       (VT.INT32, [6 if i == short else t for i, t in enumerate(types)])), False
    yield "name-phi3-without-endoftext", lambda s: _set(_set(s, "general.name", VT.STRING, "phi3 mini"), "tokenizer.ggml.tokens", VT.ARRAY,
                                                            (VT.STRING, [t if t != "<|endoftext|>" else "<|end|>" for t in tokens])), False
    yield "name-phi3", lambda s: _set(s, "general.name", VT.STRING, "phi3 mini"), None
    if merges is not None:
        yield "pre-tokenizer-unknown", lambda s: _set(s, "tokenizer.ggml.pre", VT.STRING, "gpt-9"), False
        yield "pre-tokenizer-absent", lambda s: _drop(s, "tokenizer.ggml.pre"), True
        yield "pre-tokenizer-gpt-2", lambda s: _set(s, "tokenizer.ggml.pre", VT.STRING, "gpt-2"), True
        yield "pre-tokenizer-kimi-k2-no-merges", lambda s: _drop(_set(s, "tokenizer.ggml.pre", VT.STRING, "kimi-k2"), "tokenizer.ggml.merges"), None
        yield "merges-absent", lambda s: _drop(s, "tokenizer.ggml.merges"), False
        yield "merges-as-ints", lambda s: _set(s, "tokenizer.ggml.merges", VT.ARRAY, (VT.INT32, [1, 2, 3])), False
        yield "merges-without-space", lambda s: _set(s, "tokenizer.ggml.merges", VT.ARRAY, (VT.STRING, [m.replace(" ", "") for m in merges])), None
        yield "tokenizer-gemma4-model", lambda s: _set(s, "tokenizer.ggml.model", VT.STRING, "gemma4"), None
    else:
        yield "pre-tokenizer-unknown-spm", lambda s: _set(s, "tokenizer.ggml.pre", VT.STRING, "gpt-9"), True
        yield "tokenizer-gpt2-without-merges", lambda s: _set(s, "tokenizer.ggml.model", VT.STRING, "gpt2"), False


def mutants(base: Model) -> Iterator[Mutant]:
    """Every mutant of one family: the good variants, then the edits."""
    fam = base.family
    for name, m in good_variants(base):
        yield Mutant(fam, "good", name, spec(m), expect_ok=True)
    s0 = spec(base)
    for name, key, vtype, value in hparam_mutants(base):
        s = _drop(s0, key) if value is None else _set(s0, key, vtype, value)
        yield Mutant(fam, "hparam", name, s)
    for name, m in rebuilt_mutants(base):
        yield Mutant(fam, "hparam-rebuilt", name, spec(m))
    for tname, shape, _ in s0.tensors:
        if tname.startswith("blk.") and not tname.startswith("blk.0."):
            continue
        for axis in range(len(shape)):
            for how, f in (("x2", lambda d: d * 2), ("+1", lambda d: d + 1)):
                if how == "+1" and axis != len(shape) - 1 and len(shape) > 1:
                    continue
                new = list(shape)
                new[axis] = f(new[axis])
                s = Spec(list(s0.kvs), [(n, tuple(new) if n == tname else sh, q) for n, sh, q in s0.tensors])
                yield Mutant(fam, "dim", f"{tname}[{axis}]{how}", s, expect_ok=False)
    for tname, _, _ in s0.tensors:
        if tname.startswith("blk.") and not tname.startswith("blk.0."):
            continue
        s = Spec(list(s0.kvs), [t for t in s0.tensors if t[0] != tname])
        yield Mutant(fam, "drop", f"{tname} dropped", s)
    for name, edit, ok in vocab_mutants(base):
        yield Mutant(fam, "vocab", name, edit(s0), expect_ok=ok)
    # a ggml type past llama.cpp's table (43): llama.cpp refuses it as invalid
    first = next(n for n, sh, _ in s0.tensors if n == "blk.0.attn_q.weight" or n == "blk.0.attn_qkv.weight")
    s = Spec(list(s0.kvs), [(n, (sh[0], sh[1] // 2) if n == first else sh, "Q4_0" if n == first else q) for n, sh, q in s0.tensors],
             raw_types={first: 43}, raw_dims={first: tuple(reversed(next(sh for n, sh, _ in s0.tensors if n == first)))})
    yield Mutant(fam, "type", "type-43", s, expect_ok=False)
