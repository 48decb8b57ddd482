"""Real model files for tests, made with the real writers, plus byte-level corruption functions.

safetensors files come from the safetensors library's own serializer
(`serialize_file`, the code behind `safetensors.numpy.save_file`), GGUF files from
`gguf.GGUFWriter`. Tensors are tiny so every builder runs in milliseconds. The
sparse builders write a real header and extend the file with a hole, so an 8 GiB
model costs no disk.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Union

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quant_shape_to_byte_shape
from safetensors import TensorSpec, serialize_file

# safetensors header dtype -> the dtype name the safetensors serializer takes.
_WRITER_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "F4": "float4_e2m1fn_x2",
}
_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "U16": 16, "I16": 16, "U32": 32, "I32": 32, "U64": 64, "I64": 64, "F16": 16,
         "BF16": 16, "F32": 32, "F64": 64, "C64": 64, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2": 8, "F8_E5M2FNUZ": 8,
         "F8_E8M0": 8, "F4": 4}

TensorSpecArg = Union[np.ndarray, tuple[str, Sequence[int]]]


# --------------------------------------------------------------------------- safetensors

def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, TensorSpecArg], metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` (name -> ndarray, or name -> (safetensors dtype, logical shape), zero-filled)."""
    keep: list[np.ndarray] = []
    specs: dict[str, TensorSpec] = {}
    for name, t in tensors.items():
        if isinstance(t, np.ndarray):
            arr = np.ascontiguousarray(t)
            if arr.dtype.byteorder == ">":
                arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
            keep.append(arr)
            specs[name] = TensorSpec(dtype=arr.dtype.name, shape=arr.shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes)
            continue
        dtype, shape = t
        shape = tuple(shape)
        nbits = int(np.prod(shape, dtype=object)) * _BITS[dtype]
        buf = np.zeros(max(nbits // 8, 1), np.uint8)
        keep.append(buf)
        if dtype == "F4":  # the serializer takes the packed storage shape (two values per byte)
            shape = (*shape[:-1], shape[-1] // 2)
        specs[name] = TensorSpec(dtype=_WRITER_DTYPES[dtype], shape=shape, data_ptr=buf.ctypes.data, data_len=nbits // 8)
    serialize_file(specs, os.fspath(path), metadata=metadata)
    return Path(path)


class Sharded(NamedTuple):
    index: Path
    shards: list[Path]
    weight_map: dict[str, str]


def write_sharded(
    folder: str | os.PathLike[str],
    n_shards: int = 2,
    *,
    tensors_per_shard: int = 3,
    dtype: str = "BF16",
    shape: Sequence[int] = (4, 8),
    total_size: int | None = None,
    tensors: Mapping[str, tuple[str, Sequence[int]]] | None = None,
) -> Sharded:
    """Shards named like transformers names them, plus `model.safetensors.index.json`.

    `tensors` (name → (dtype, shape)) are dealt out over the shards in order; without
    them each shard gets `tensors_per_shard` generic ones."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    shards: list[Path] = []
    data = 0
    given = list((tensors or {}).items())
    for s in range(n_shards):
        shard = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        if given:
            part = dict(given[s * len(given) // n_shards:(s + 1) * len(given) // n_shards])
        else:
            part = {f"model.layers.{s}.mlp.w{j}.weight": (dtype, shape) for j in range(tensors_per_shard)}
        shards.append(write_safetensors(folder / shard, part, metadata={"format": "pt"}))
        for name, (dt, shp) in part.items():
            weight_map[name] = shard
            data += int(np.prod(shp)) * _BITS[dt] // 8
    index = {"metadata": {"total_size": data if total_size is None else total_size}, "weight_map": dict(sorted(weight_map.items()))}
    index_path = folder / "model.safetensors.index.json"
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return Sharded(index_path, shards, weight_map)


def safetensors_header(path: str | os.PathLike[str]) -> dict:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n])


def patch_safetensors_header(
    path: str | os.PathLike[str],
    edit: Callable[[dict], dict | None] | None = None,
    *,
    raw: bytes | None = None,
) -> Path:
    """Rewrite the JSON header (via `edit`, or replace it by `raw` bytes); the data is kept, the length field updated."""
    p = Path(path)
    blob = p.read_bytes()
    (n,) = struct.unpack_from("<Q", blob)
    data = blob[8 + n :]
    if raw is None:
        header = json.loads(blob[8 : 8 + n])
        assert edit is not None
        result = edit(header)
        if isinstance(result, dict):  # an edit may return a new header or change it in place
            header = result
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return p


def write_sparse_safetensors(path: str | os.PathLike[str], data_bytes: int, *, n_tensors: int = 4, dtype: str = "BF16") -> Path:
    """A header describing `data_bytes` of tensors in `n_tensors` equal slabs, the data left as a hole."""
    item = _BITS[dtype] // 8
    per = data_bytes // n_tensors
    cols = 4096
    assert per % (cols * item) == 0, "data_bytes must split into whole rows"
    rows = per // (cols * item)
    return write_sparse_safetensors_layout(path, {f"layers.{i}.weight": (dtype, (rows, cols)) for i in range(n_tensors)})


def write_sparse_safetensors_layout(path: str | os.PathLike[str], tensors: Mapping[str, tuple[str, Sequence[int]]]) -> Path:
    """A safetensors header for `tensors` (name -> (dtype, shape)), the data left as a hole (sparse file).

    The header is laid out as the serializer lays it out (compact JSON, tensors
    in offset order, space padding to 8 bytes); tests open it with `safe_open`.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        nbytes = int(np.prod(shape, dtype=object)) * _BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return Path(path)


# --------------------------------------------------------------------------- GGUF

def _gguf_type(quant: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[quant]


def _add_tensor(w: gguf.GGUFWriter, name: str, shape: Sequence[int], quant: str) -> None:
    qtype = _gguf_type(quant)
    if qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor(name, np.zeros(shape, np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        w.add_tensor(name, np.zeros(shape, np.float16))
    else:
        byte_shape = quant_shape_to_byte_shape(tuple(shape), qtype)
        w.add_tensor(name, np.zeros(byte_shape, np.uint8), raw_dtype=qtype)


def _add_model_kvs(w: gguf.GGUFWriter, *, n_vocab: int, context_length: int | None, file_type: int | None,
                   alignment: int | None, extra_kv: Mapping[str, object] | None, arch: str = "llama",
                   n_embd: int | None = None, n_layer: int | None = None, n_ff: int | None = None) -> None:
    """The key/values llama.cpp reads for a `llama` model: hyper-parameters (when n_embd is
    given), then an SPM ("llama") tokenizer of `n_vocab` tokens with scores and token types."""
    if context_length is not None:
        w.add_context_length(context_length)
    if n_embd is not None:
        n_head = max(1, n_embd // 16)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer or 1)
        w.add_feed_forward_length(n_ff or n_embd)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head)
        w.add_rope_dimension_count(n_embd // n_head)
        w.add_layer_norm_rms_eps(1e-5)
    if file_type is not None:
        w.add_file_type(file_type)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if n_vocab:
        w.add_tokenizer_model("llama")
        w.add_token_list([f"tok{i}" for i in range(n_vocab)])
        w.add_token_scores([float(-i) for i in range(n_vocab)])
        w.add_token_types([1] * n_vocab)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_array(key, list(value))  # type: ignore[arg-type]


def llama_tensors(n_vocab: int, n_embd: int, n_layer: int = 1, n_ff: int | None = None) -> dict[str, tuple[int, ...]]:
    """The tensors llama.cpp's `llama` architecture reads (numpy order: rows, cols), output tied to token_embd."""
    n_ff = n_ff or n_embd
    tensors: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    for i in range(n_layer):
        tensors |= {
            f"blk.{i}.attn_norm.weight": (n_embd,),
            f"blk.{i}.attn_q.weight": (n_embd, n_embd),
            f"blk.{i}.attn_k.weight": (n_embd, n_embd),
            f"blk.{i}.attn_v.weight": (n_embd, n_embd),
            f"blk.{i}.attn_output.weight": (n_embd, n_embd),
            f"blk.{i}.ffn_norm.weight": (n_embd,),
            f"blk.{i}.ffn_gate.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_down.weight": (n_embd, n_ff),
        }
    return tensors


def _embd_for(quant: str) -> int:
    """The smallest width whose rows hold whole blocks of `quant` (64 for the 32-element quants, 256 for K-quants)."""
    return max(64, GGML_QUANT_SIZES[_gguf_type(quant)][0])


def write_gguf(
    path: str | os.PathLike[str],
    *,
    arch: str = "llama",
    n_vocab: int = 32,
    tensors: Mapping[str, Sequence[int]] | None = None,
    context_length: int | None = 2048,
    quant: str = "F32",
    file_type: int | None = None,
    alignment: int | None = None,
    extra_kv: Mapping[str, object] | None = None,
    big_endian: bool = False,
    n_layer: int = 1,
) -> Path:
    """A GGUF written by gguf.GGUFWriter. By default a complete tiny `llama` model as llama.cpp
    loads it: hyper-parameters, an SPM vocabulary of `n_vocab` tokens, and every tensor of
    `n_layer` blocks (`llama_tensors`), 2-D ones in `quant`, 1-D ones F32 as in real models.
    `tensors=` replaces the tensor set (shapes in numpy order: rows, cols); `tensors={}` gives a
    vocabulary-only file that, like llama.cpp's ggml-vocab-*.gguf, carries no hyper-parameters
    here and ends right after the header with no padding."""
    n_embd = _embd_for(quant)
    if tensors is None:
        tensors = llama_tensors(n_vocab, n_embd, n_layer)
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(os.fspath(path), arch, endianess=endian)
    _add_model_kvs(w, n_vocab=n_vocab, context_length=context_length if tensors else None, file_type=file_type,
                   alignment=alignment, extra_kv=extra_kv, n_embd=n_embd if tensors else None, n_layer=n_layer)
    for name, shape in tensors.items():
        _add_tensor(w, name, shape, quant if len(shape) > 1 else "F32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    if tensors:
        w.write_tensors_to_file()
    else:
        w.write_ti_data_to_file()
    w.close()
    return Path(path)


def write_gguf_split(
    folder: str | os.PathLike[str],
    stem: str = "model",
    *,
    n_splits: int = 3,
    tensors_per_split: int = 1,
    quant: str = "Q8_0",
    n_vocab: int = 32,
) -> list[Path]:
    """Split GGUF parts via GGUFWriter(split_max_tensors=...): names `stem-0000N-of-0000M.gguf`,
    keys split.no (0-based u16), split.count (u16), split.tensors.count (i32), as gguf-split writes.
    The parts hold one tiny `llama` model (as write_gguf) whose tensors fill exactly `n_splits`
    parts of `tensors_per_split` (the blocks are as many as that needs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_embd = _embd_for(quant)
    total = n_splits * tensors_per_split
    n_layer = max(1, -(-(total - 2) // 9))
    tensors = list(llama_tensors(n_vocab, n_embd, n_layer).items())
    assert len(tensors) >= total, "too few tensors for that many parts"
    # drop whole trailing tensors only where llama.cpp does not need them: fill with fewer blocks instead
    tensors = tensors[:total] if len(tensors) == total else tensors
    per = -(-len(tensors) // n_splits)
    w = gguf.GGUFWriter(folder / f"{stem}.gguf", "llama", split_max_tensors=per)
    _add_model_kvs(w, n_vocab=n_vocab, context_length=2048, file_type=None, alignment=None, extra_kv=None, n_embd=n_embd, n_layer=n_layer)
    for name, shape in tensors:
        _add_tensor(w, name, shape, quant if len(shape) > 1 else "F32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    parts = [folder / f"{stem}-{i:05d}-of-{n_splits:05d}.gguf" for i in range(1, n_splits + 1)]
    assert all(p.exists() for p in parts), "the tensors did not fill every part"
    return parts


def write_sparse_gguf(path: str | os.PathLike[str], data_bytes: int, *, n_tensors: int = 4, n_vocab: int = 32) -> Path:
    """A real GGUF header (GGUFWriter) of a `llama` model with about `data_bytes` of F16 tensors
    (4096 wide, about n_tensors / 9 blocks, the feed-forward width sized to fill data_bytes); the data is a hole."""
    n_embd = 4096
    n_layer = max(1, round(n_tensors / 9))
    fixed = n_vocab * n_embd * 2 + n_embd * 4 + n_layer * (2 * n_embd * 4 + 4 * n_embd * n_embd * 2)
    n_ff = max(32, (data_bytes - fixed) // (n_layer * 3 * n_embd * 2) // 32 * 32)
    w = gguf.GGUFWriter(os.fspath(path), "llama")
    _add_model_kvs(w, n_vocab=n_vocab, context_length=2048, file_type=1, alignment=None, extra_kv=None,
                   n_embd=n_embd, n_layer=n_layer, n_ff=n_ff)
    total = 0
    for name, shape in llama_tensors(n_vocab, n_embd, n_layer, n_ff).items():
        dtype = np.dtype(np.float32 if len(shape) == 1 else np.float16)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        w.add_tensor_info(name, shape, dtype, nbytes)
        total += -(-nbytes // 32) * 32
    return _sparse_data(w, path, total)


def write_sparse_gguf_decoder(path: str | os.PathLike[str], *, arch: str, n_embd: int, n_ff: int, n_layer: int, n_head: int,
                              n_head_kv: int, n_vocab: int, qkv_bias: bool = False, tied: bool = False, quant: str = "Q4_K",
                              context_length: int = 8192, pre: str = "llama-bpe") -> Path:
    """A real GGUF header of a dense decoder (`llama`, `qwen2`) as llama.cpp's loader for `arch`
    asks for it, at full size: its hyper-parameters, a BPE ("gpt2") vocabulary of `n_vocab` tokens
    whose merges join two tokens into a third, and every tensor (2-D ones in `quant`, norms and
    biases F32, `output.weight` unless `tied`); the data is a hole, so an 8B model costs no disk."""
    head = n_embd // n_head
    q, kv = n_head * head, n_head_kv * head
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    if not tied:
        shapes["output.weight"] = (n_vocab, n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes |= {b + "attn_norm.weight": (n_embd,), b + "attn_q.weight": (q, n_embd), b + "attn_k.weight": (kv, n_embd),
                   b + "attn_v.weight": (kv, n_embd), b + "attn_output.weight": (n_embd, q), b + "ffn_norm.weight": (n_embd,),
                   b + "ffn_gate.weight": (n_ff, n_embd), b + "ffn_up.weight": (n_ff, n_embd), b + "ffn_down.weight": (n_embd, n_ff)}
        if qkv_bias:
            shapes |= {b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)}
    n_pairs = n_vocab // 3
    pairs = [(f"p{2 * i}", f"p{2 * i + 1}") for i in range(n_pairs)]
    tokens = [t for a, b in pairs for t in (a, b, a + b)] + [f"tok{i}" for i in range(n_vocab - 3 * n_pairs)]
    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_name(f"sparse {arch}")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if quant == "Q4_K" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([1] * n_vocab)
    w.add_token_merges([f"{a} {b}" for a, b in pairs])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    qtype = _gguf_type(quant)
    block, type_size = GGML_QUANT_SIZES[qtype]
    f32 = GGML_QUANT_SIZES[gguf.GGMLQuantizationType.F32][1]
    total = 0
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        if len(shape) == 1:
            w.add_tensor_info(name, shape, np.dtype(np.float32), count * f32)
            nbytes = count * f32
        else:
            nbytes = count // block * type_size
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        total += -(-nbytes // 32) * 32
    return _sparse_data(w, path, total)


class GGUFFieldOffsets(NamedTuple):
    type_offset: int  # where the u32 value type (KV) or ggml type (tensor) is
    value_offset: int  # where the value (KV) or the u64 data offset (tensor) is


def gguf_kv_offsets(path: str | os.PathLike[str], key: str) -> GGUFFieldOffsets:
    """Byte offsets of a key/value's type and value fields (located with gguf.GGUFReader)."""
    field = gguf.GGUFReader(os.fspath(path)).fields[key]
    type_offset = field.offset + 8 + len(key.encode())
    return GGUFFieldOffsets(type_offset, type_offset + 4)


def gguf_tensor_offsets(path: str | os.PathLike[str], tensor: str) -> GGUFFieldOffsets:
    """Byte offsets of a tensor info's ggml type and data offset fields."""
    reader = gguf.GGUFReader(os.fspath(path))
    t = next(t for t in reader.tensors if t.name == tensor)
    type_offset = t.field.offset + 8 + len(tensor.encode()) + 4 + 8 * len(t.shape)
    return GGUFFieldOffsets(type_offset, type_offset + 4)


def gguf_header_end(path: str | os.PathLike[str]) -> int:
    """Where the tensor infos end (before alignment padding), from gguf.GGUFReader."""
    reader = gguf.GGUFReader(os.fspath(path))
    if not reader.tensors:
        return max(f.offset + sum(int(p.nbytes) for p in f.parts) for f in reader.fields.values())
    last = reader.tensors[-1].field
    return last.offset + sum(int(p.nbytes) for p in last.parts)


# --------------------------------------------------------------------------- byte-level corruption

def truncate(path: str | os.PathLike[str], size: int | None = None, *, by: int | None = None) -> Path:
    """Cut a file to `size` bytes, or shorten it `by` bytes."""
    p = Path(path)
    if size is None:
        assert by is not None
        size = p.stat().st_size - by
    with open(p, "r+b") as f:
        f.truncate(size)
    return p


def append_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with open(path, "ab") as f:
        f.write(data)
    return Path(path)


def patch_bytes(path: str | os.PathLike[str], offset: int, data: bytes) -> Path:
    """Overwrite bytes at `offset` in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return Path(path)


def patch_u32(path: str | os.PathLike[str], offset: int, value: int, *, big_endian: bool = False) -> Path:
    return patch_bytes(path, offset, struct.pack(">I" if big_endian else "<I", value))


def patch_u64(path: str | os.PathLike[str], offset: int, value: int) -> Path:
    return patch_bytes(path, offset, struct.pack("<Q", value))


# --------------------------------------------------------------------------- sparse model folders

def llama_folder_tensors(hidden: int, inter: int, layers: int, vocab: int, heads: int, kv_heads: int,
                         tied: bool = False) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor transformers' LlamaForCausalLM builds, as (dtype, shape), BF16."""
    head = hidden // heads
    t: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("BF16", (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": ("BF16", (hidden,)), p + "post_attention_layernorm.weight": ("BF16", (hidden,)),
                  p + "self_attn.q_proj.weight": ("BF16", (heads * head, hidden)), p + "self_attn.k_proj.weight": ("BF16", (kv_heads * head, hidden)),
                  p + "self_attn.v_proj.weight": ("BF16", (kv_heads * head, hidden)), p + "self_attn.o_proj.weight": ("BF16", (hidden, heads * head)),
                  p + "mlp.gate_proj.weight": ("BF16", (inter, hidden)), p + "mlp.up_proj.weight": ("BF16", (inter, hidden)),
                  p + "mlp.down_proj.weight": ("BF16", (hidden, inter))})
    t["model.norm.weight"] = ("BF16", (hidden,))
    if not tied:
        t["lm_head.weight"] = ("BF16", (vocab, hidden))
    return t


def write_sparse_llama_folder(folder: str | os.PathLike[str], *, hidden: int, inter: int, layers: int, vocab: int, heads: int,
                              kv_heads: int, shards: int, max_len: int = 8192, tied: bool = False) -> Path:
    """A vLLM-shaped Llama folder whose shards have real headers and holes for data (sparse):
    config.json, a tokenizer, `shards` safetensors files split by size, and their index.
    A 70B-shaped folder (hidden 8192, 80 layers) is 141 GB on paper and a few MiB on disk."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tensors = llama_folder_tensors(hidden, inter, layers, vocab, heads, kv_heads, tied)
    size = {n: int(np.prod(s, dtype=object)) * 2 for n, (_d, s) in tensors.items()}
    per = sum(size.values()) / shards
    groups: list[dict[str, tuple[str, tuple[int, ...]]]] = [{}]
    filled = 0
    for name, spec in tensors.items():
        if filled >= per * len(groups) and len(groups) < shards:
            groups.append({})
        groups[-1][name] = spec
        filled += size[name]
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        write_sparse_safetensors_layout(root / fname, group)
        weight_map.update(dict.fromkeys(group, fname))
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": sum(size.values())}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
        "max_position_embeddings": max_len, "torch_dtype": "bfloat16", "tie_word_embeddings": tied, "rms_norm_eps": 1e-5}))
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(32)}, "merges": []}}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_len}))
    return root


def _sparse_data(w, path: str | os.PathLike, total: int) -> Path:
    """Write `w`'s header, key/values and tensor infos, then extend the file by `total` bytes
    of tensor data as a hole (aligned to 32): a sparse GGUF with real headers."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        data_start = -(-f.seek(0, os.SEEK_END) // 32) * 32
        f.truncate(data_start + total)
    return Path(path)
