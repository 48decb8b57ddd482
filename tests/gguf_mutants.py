"""GGUF mutants for the oracle campaign (tests/test_gguf_oracle.py): structural edits written by
gguf.GGUFWriter, and seeded truncations and bit flips in each region of a file's header.

A model is described as a list of key/values (key, GGUF value type, value) and a list of
tensors (name, numpy-order shape, quant), so each edit is a small change to a list before
the real writer writes it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
from gguf.constants import GGUFValueType as VT

from preflight import problems as P
from tests.builders import _add_tensor, llama_tensors

N_EMBD, N_FF, N_LAYER, N_VOCAB = 64, 64, 2, 64


@dataclass
class Spec:
    kvs: list[tuple[str, VT, object]]
    tensors: list[tuple[str, tuple[int, ...], str]]
    alignment: int | None = None
    raw_types: dict[str, int] = field(default_factory=dict)  # tensor -> ggml type id patched in after writing
    raw_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tensor -> GGUF dims patched in with it


def vocabulary(n: int = N_VOCAB) -> list[str]:
    return ["<unk>", "<s>", "</s>", *(f"tok{i}" for i in range(3, n))]


def base_spec(n_vocab: int = N_VOCAB) -> Spec:
    """A tiny `llama` model that llama.cpp loads: 2 blocks, 64 wide, an SPM vocabulary."""
    n_head = 4
    kvs: list[tuple[str, VT, object]] = [
        ("general.architecture", VT.STRING, "llama"),
        ("general.name", VT.STRING, "tiny"),
        ("llama.context_length", VT.UINT32, 256),
        ("llama.embedding_length", VT.UINT32, N_EMBD),
        ("llama.block_count", VT.UINT32, N_LAYER),
        ("llama.feed_forward_length", VT.UINT32, N_FF),
        ("llama.attention.head_count", VT.UINT32, n_head),
        ("llama.attention.head_count_kv", VT.UINT32, n_head),
        ("llama.rope.dimension_count", VT.UINT32, N_EMBD // n_head),
        ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-5),
        ("general.file_type", VT.UINT32, 0),
        ("tokenizer.ggml.model", VT.STRING, "llama"),
        ("tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, vocabulary(n_vocab))),
        ("tokenizer.ggml.scores", VT.ARRAY, (VT.FLOAT32, [float(-i) for i in range(n_vocab)])),
        ("tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, [2, 3, 3] + [1] * (n_vocab - 3))),
        ("tokenizer.ggml.bos_token_id", VT.UINT32, 1),
        ("tokenizer.ggml.eos_token_id", VT.UINT32, 2),
        ("tokenizer.ggml.add_bos_token", VT.BOOL, True),
    ]
    tensors = [(n, tuple(s), "F32") for n, s in llama_tensors(n_vocab, N_EMBD, N_LAYER, N_FF).items()]
    return Spec(kvs, tensors)


def write(spec: Spec, path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.kv_data[0].clear()  # the writer's own general.architecture: the spec says what the file holds
    if spec.alignment is not None:
        w.add_custom_alignment(spec.alignment)
    for key, vtype, value in spec.kvs:
        if vtype == VT.ARRAY:
            item, items = value  # type: ignore[misc]
            w.add_key_value(key, items, VT.ARRAY, sub_type=item)
        else:
            w.add_key_value(key, value, vtype)
    for name, shape, quant in spec.tensors:
        _add_tensor(w, name, shape, quant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    if spec.tensors:
        w.write_tensors_to_file()
    else:
        w.write_ti_data_to_file()
    w.close()
    if spec.raw_types:
        reader = gguf.GGUFReader(str(path))
        data = bytearray(path.read_bytes())
        for t in reader.tensors:
            if t.name in spec.raw_types:
                dims_at = t.field.offset + 8 + len(t.name.encode()) + 4
                for j, d in enumerate(spec.raw_dims.get(t.name, ())):
                    data[dims_at + 8 * j : dims_at + 8 * j + 8] = d.to_bytes(8, "little")
                at = dims_at + 8 * len(t.shape)
                data[at : at + 4] = spec.raw_types[t.name].to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- structural edits

def _kv(spec: Spec, key: str) -> int:
    return next(i for i, kv in enumerate(spec.kvs) if kv[0] == key)


def drop_kv(key: str) -> Callable[[Spec], None]:
    return lambda s: s.kvs.pop(_kv(s, key))


def set_kv(key: str, vtype: VT, value: object) -> Callable[[Spec], None]:
    def edit(s: Spec) -> None:
        s.kvs[_kv(s, key)] = (key, vtype, value)
    return edit


def rename_kv(key: str, new: str) -> Callable[[Spec], None]:
    def edit(s: Spec) -> None:
        i = _kv(s, key)
        s.kvs[i] = (new, *s.kvs[i][1:])
    return edit


def add_kv(key: str, vtype: VT, value: object) -> Callable[[Spec], None]:
    return lambda s: s.kvs.append((key, vtype, value))


def drop_tensor(name: str) -> Callable[[Spec], None]:
    return lambda s: s.tensors.pop(next(i for i, t in enumerate(s.tensors) if t[0] == name))


def rename_tensor(name: str, new: str) -> Callable[[Spec], None]:
    def edit(s: Spec) -> None:
        i = next(i for i, t in enumerate(s.tensors) if t[0] == name)
        s.tensors[i] = (new, *s.tensors[i][1:])
    return edit


def shorten(key: str, by: int = 1) -> Callable[[Spec], None]:
    def edit(s: Spec) -> None:
        i = _kv(s, key)
        item, items = s.kvs[i][2]  # type: ignore[misc]
        s.kvs[i] = (key, VT.ARRAY, (item, items[: len(items) - by]))
    return edit


def lengthen(key: str, extra: object) -> Callable[[Spec], None]:
    def edit(s: Spec) -> None:
        i = _kv(s, key)
        item, items = s.kvs[i][2]  # type: ignore[misc]
        s.kvs[i] = (key, VT.ARRAY, (item, [*items, extra]))
    return edit


def quant_as(names: tuple[str, ...], quant: str, raw_type: int | None = None, width: int = 1) -> Callable[[Spec], None]:
    """Write tensors in `quant`, then (raw_type) patch their ggml type to another of the same row size:
    a 64-wide Q2_0 row (one 64-element block) is 18 bytes, as a 32-wide Q4_0 row."""
    def edit(s: Spec) -> None:
        for i, (n, shape, _) in enumerate(s.tensors):
            if n in names:
                s.tensors[i] = (n, (*shape[:-1], shape[-1] // width), quant)
                if raw_type is not None:
                    s.raw_types[n] = raw_type
                    s.raw_dims[n] = tuple(reversed(shape))
    return edit


def with_alignment(value: int) -> Callable[[Spec], None]:
    def edit(s: Spec) -> None:
        s.alignment = value
    return edit


def chain(*edits: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def edit(s: Spec) -> None:
        for e in edits:
            e(s)
    return edit


# --------------------------------------------------------------------------- header regions, random edits

def regions(path: Path) -> dict[str, tuple[int, int]]:
    """Byte ranges of a file's fixed header, key/values, tensor infos, padding and data."""
    reader = gguf.GGUFReader(str(path))
    kv_fields = [f for k, f in reader.fields.items() if not k.startswith("GGUF.")]
    kv_start = min(f.offset for f in kv_fields) if kv_fields else 24
    kv_end = max(f.offset + sum(int(p.nbytes) for p in f.parts) for f in kv_fields) if kv_fields else 24
    out = {"fixed": (0, 24), "kv": (kv_start, kv_end)}
    if reader.tensors:
        last = reader.tensors[-1].field
        ti_end = last.offset + sum(int(p.nbytes) for p in last.parts)
        out["tensor-info"] = (kv_end, ti_end)
        if reader.data_offset > ti_end:
            out["padding"] = (ti_end, reader.data_offset)
        out["data"] = (reader.data_offset, path.stat().st_size)
    return out


def flips(data: bytes, region: tuple[int, int], n: int, rng: random.Random) -> Iterator[bytes]:
    lo, hi = region
    for _ in range(n):
        pos = rng.randrange(lo, hi)
        out = bytearray(data)
        out[pos] ^= 1 << rng.randrange(8)
        yield bytes(out)


def cuts(data: bytes, region: tuple[int, int], n: int, rng: random.Random) -> Iterator[bytes]:
    lo, hi = region
    for _ in range(n):
        yield data[: rng.randrange(lo, hi)]


# The structural edits of the campaign: name -> edit of base_spec().
STRUCTURAL: dict[str, Callable[[Spec], None]] = {
    "unchanged": lambda s: None,
    "untied-output": lambda s: s.tensors.insert(2, ("output.weight", (N_VOCAB, N_EMBD), "F32")),
    "q8_0-matrices": quant_as(tuple(n for n, sh, _ in base_spec().tensors if len(sh) == 2), "Q8_0"),
    "q2_0-type-42": quant_as(("blk.0.ffn_up.weight", "blk.1.ffn_up.weight"), "Q4_0", raw_type=42, width=2),
    "type-43-newer": quant_as(("blk.0.ffn_up.weight",), "Q4_0", raw_type=43, width=2),
    "type-43-last-tensor": quant_as(("blk.1.ffn_down.weight",), "Q4_0", raw_type=43, width=2),
    "type-4-removed": quant_as(("blk.0.ffn_up.weight",), "Q4_0", raw_type=4),
    "nested-array": add_kv("general.nested", VT.ARRAY, (VT.ARRAY, [[1, 2], [3]])),
    "alignment-64": with_alignment(64),
    "alignment-16": with_alignment(16),  # padded so that the data starts 16 bytes past a multiple of 32
    "alignment-8": with_alignment(8),  # ... 8 bytes past
    "alignment-16-lucky": with_alignment(16),  # ... at a multiple of 32: every tensor lands aligned, llama.cpp loads it
    "tensor-missing": drop_tensor("blk.1.ffn_up.weight"),
    "tensor-renamed": rename_tensor("blk.1.ffn_up.weight", "blk.1.ffn_uq.weight"),
    "tensor-renamed-block": rename_tensor("blk.1.attn_norm.weight", "blk.2.attn_norm.weight"),
    "output-norm-missing": drop_tensor("output_norm.weight"),
    "token-embd-missing": drop_tensor("token_embd.weight"),
    "no-tensors": lambda s: s.tensors.clear(),
    "architecture-missing": drop_kv("general.architecture"),
    "architecture-unknown": set_kv("general.architecture", VT.STRING, "llamx"),
    "architecture-f32": set_kv("general.architecture", VT.FLOAT32, 1.0),
    "embedding-length-missing": drop_kv("llama.embedding_length"),
    "embedding-length-renamed": rename_kv("llama.embedding_length", "llama.embedding_lenght"),
    "head-count-missing": drop_kv("llama.attention.head_count"),
    "feed-forward-length-missing": drop_kv("llama.feed_forward_length"),
    "context-length-missing": drop_kv("llama.context_length"),
    "context-length-u64": set_kv("llama.context_length", VT.UINT64, 256),
    "rms-eps-missing": drop_kv("llama.attention.layer_norm_rms_epsilon"),
    "block-count-3": set_kv("llama.block_count", VT.UINT32, 3),
    "block-count-1": set_kv("llama.block_count", VT.UINT32, 1),
    "block-count-0": set_kv("llama.block_count", VT.UINT32, 0),
    "rope-dims-7": set_kv("llama.rope.dimension_count", VT.UINT32, 7),
    "head-count-per-block": set_kv("llama.attention.head_count", VT.ARRAY, (VT.INT32, [4, 4])),
    "head-count-per-block-short": set_kv("llama.attention.head_count", VT.ARRAY, (VT.INT32, [4])),
    "tokenizer-model-missing": drop_kv("tokenizer.ggml.model"),
    "tokenizer-model-unknown": set_kv("tokenizer.ggml.model", VT.STRING, "llamb"),
    "tokens-missing": drop_kv("tokenizer.ggml.tokens"),
    "scores-one-short": shorten("tokenizer.ggml.scores"),
    "token-type-one-short": shorten("tokenizer.ggml.token_type"),
    "scores-one-long": lengthen("tokenizer.ggml.scores", 0.0),
    "tokens-one-short": shorten("tokenizer.ggml.tokens"),
    "token-repeated": set_kv("tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, [*vocabulary()[:-1], "tok5"])),
    "scores-as-strings": set_kv("tokenizer.ggml.scores", VT.ARRAY, (VT.STRING, [str(i) for i in range(N_VOCAB)])),
    "bos-id-f32": set_kv("tokenizer.ggml.bos_token_id", VT.FLOAT32, 1.0),
    "bos-id-out-of-range": set_kv("tokenizer.ggml.bos_token_id", VT.UINT32, 10_000),
    "add-bos-u8": set_kv("tokenizer.ggml.add_bos_token", VT.UINT8, 1),
    "file-type-string": set_kv("general.file_type", VT.STRING, "F32"),
    "unused-known-tensor": lambda s: s.tensors.append(("blk.0.attn_q_norm.weight", (N_EMBD,), "F32")),
    "unused-bias": lambda s: s.tensors.append(("blk.0.attn_norm.bias", (N_EMBD,), "F32")),
    "unused-expert-number": lambda s: s.tensors.append(("blk.0.ffn_up.0.weight", (N_FF, N_EMBD), "F32")),
    "unused-expert-router": lambda s: s.tensors.append(("blk.0.ffn_gate_inp.weight", (4, N_EMBD), "F32")),
    # Tensors the llama loader creates when present (TENSOR_NOT_REQUIRED): llama.cpp loads these.
    "optional-output-bias": lambda s: s.tensors.append(("blk.0.attn_output.bias", (N_EMBD,), "F32")),
    "optional-rope-freqs": lambda s: s.tensors.append(("rope_freqs.weight", (N_EMBD // 8,), "F32")),
    "optional-scale": lambda s: s.tensors.append(("blk.1.ffn_up.scale", (1,), "F32")),
}

# The code each defect of the issue list is reported with.
EXPECTED_CODES: dict[str, str] = {
    "nested-array": P.BAD_VALUE_TYPE, "alignment-16": P.MISALIGNED, "alignment-8": P.MISALIGNED,
    "tensor-missing": P.TENSOR_MISSING, "tensor-renamed": P.TENSOR_UNEXPECTED, "no-tensors": P.WEIGHTS_MISSING,
    "architecture-missing": P.ARCHITECTURE_MISSING, "embedding-length-missing": P.HPARAM_MISSING,
    "embedding-length-renamed": P.HPARAM_MISSING, "block-count-3": P.TENSOR_MISSING, "block-count-1": P.BLOCK_COUNT_MISMATCH,
    "block-count-0": P.HPARAM_INVALID, "rope-dims-7": P.HPARAM_INVALID, "tokens-missing": P.TOKENIZER_MISSING,
    "scores-one-short": P.VOCAB_INVALID, "tokens-one-short": P.BAD_SHAPE, "bos-id-f32": P.KV_TYPE_MISMATCH,
    "token-repeated": P.VOCAB_INVALID, "unused-known-tensor": P.TENSOR_UNEXPECTED, "unused-bias": P.TENSOR_UNEXPECTED,
    "unused-expert-number": P.TENSOR_UNEXPECTED, "type-43-last-tensor": P.BAD_TENSOR_TYPE, "type-4-removed": P.BAD_TENSOR_TYPE,
    "type-43-newer": P.UNKNOWN_TENSOR_TYPE, "unused-expert-router": P.TENSOR_UNEXPECTED, "architecture-unknown": P.UNKNOWN_ARCHITECTURE,
    "tokenizer-model-unknown": P.VOCAB_INVALID,
}


# Where the data of the alignment mutants starts, modulo ggml's tensor alignment (32).
DATA_START_MOD32 = {"alignment-16": 16, "alignment-8": 8, "alignment-16-lucky": 0}


def write_structural(name: str, path: Path) -> Path:
    """The base model with the edit STRUCTURAL[name]; the alignment mutants get a padding key
    sized so that their data starts where DATA_START_MOD32 says."""
    for pad in range(32):
        spec = base_spec()
        STRUCTURAL[name](spec)
        if name in DATA_START_MOD32:
            spec.kvs.append(("general.pad", VT.STRING, "x" * pad))
        write(spec, path)
        if name not in DATA_START_MOD32 or regions(path)["data"][0] % 32 == DATA_START_MOD32[name]:
            return path
    raise AssertionError(f"no padding puts the data of {name} where wanted")
