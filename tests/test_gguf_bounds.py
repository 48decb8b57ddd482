"""Hostile GGUF headers are refused quickly and in little memory (issue 9), real models still pass.

Each case runs check_gguf in a fresh child of a fresh wrapper process, which reports the
child's peak RSS and CPU time from getrusage(RUSAGE_CHILDREN): deterministic, unlike wall
time. Bounds: 100 MB of RSS; CPU time with a generous margin for a loaded machine (the
cases take a few to a few hundred milliseconds). Big files are sparse: only the header is
written.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.formats.gguf import MAX_KVS, MAX_STRING_ARRAY, MAX_TENSORS
from tests.gguf_oracle import vocab_dir

REPO = Path(__file__).resolve().parents[1]
MAX_RSS_KB = 100 * 1024
MAX_CPU_S = 3.0

STRING, ARRAY, U32, U8 = 8, 9, 4, 0

WRAPPER = r"""
import json, resource, subprocess, sys
child = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True, text=True, check=True)
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rss_kb": use.ru_maxrss, "cpu_s": use.ru_utime + use.ru_stime, "result": json.loads(child.stdout)}))
"""
CHECK = r"""
import json, sys
from preflight.formats.gguf import check_gguf
info = check_gguf(sys.argv[1])
print(json.dumps({"ok": info.ok, "codes": [p.code for p in info.problems if p.is_error], "messages": [p.message for p in info.problems]}))
"""


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAPPER, CHECK, str(path)], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def write(path: Path, head: bytes, size: int | None = None) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        if size is not None and size > len(head):
            f.truncate(size)
    return path


def nested_arrays(path: Path) -> Path:
    """One KV: an array of 2^26 arrays (the 1.46 GiB file of the issue, as a sparse file)."""
    count = 1 << 26
    return write(path, header(0, 1) + s("general.nested") + struct.pack("<IIQ", ARRAY, ARRAY, count), 24 + 30 + count * 24)


def nested_arrays_dense(path: Path) -> Path:
    """200,000 real inner arrays of one u8 each."""
    inner = struct.pack("<IQB", U8, 1, 7)
    return write(path, header(0, 1) + s("general.nested") + struct.pack("<IIQ", ARRAY, ARRAY, 200_000) + inner * 200_000)


def many_tensors(path: Path) -> Path:
    """2M tensor infos claimed (the 651 MiB file of the issue), sparse."""
    n = 2_000_000
    return write(path, header(n, 0), 24 + n * 32)


def tensors_at_the_limit(path: Path) -> Path:
    """MAX_TENSORS real 1-D F32 tensor infos with names llama.cpp never reads."""
    infos = b"".join(s(f"t{i}") + struct.pack("<IQIQ", 1, 8, 0, i * 32) for i in range(MAX_TENSORS))
    head = header(MAX_TENSORS, 1) + s("general.architecture") + struct.pack("<I", STRING) + s("llama") + infos
    return write(path, head, -(-len(head) // 32) * 32 + MAX_TENSORS * 32)


def many_kvs(path: Path) -> Path:
    n = MAX_KVS + 1
    return write(path, header(0, n), 24 + n * 16)


def kvs_at_the_limit(path: Path) -> Path:
    kvs = b"".join(s(f"k{i}") + struct.pack("<IB", U8, 1) for i in range(MAX_KVS))
    return write(path, header(0, MAX_KVS) + kvs)


def huge_string_array(path: Path) -> Path:
    n = MAX_STRING_ARRAY + 1
    return write(path, header(0, 1) + s("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, n), 128 + n * 8)


def empty_strings_at_the_limit(path: Path) -> Path:
    """MAX_STRING_ARRAY empty strings (all zero bytes: a sparse file reads as zero lengths)."""
    n = MAX_STRING_ARRAY
    return write(path, header(0, 1) + s("general.junk") + struct.pack("<IIQ", ARRAY, STRING, n), 64 + n * 8)


def repeated_tokens_at_the_limit(path: Path) -> Path:
    """A 2^19-token vocabulary of one-byte tokens: checked for repeats, and refused for them."""
    n = 1 << 19
    tokens = s(b"a") * n
    return write(path, header(0, 3) + s("general.architecture") + struct.pack("<I", STRING) + s("llama")
                 + s("tokenizer.ggml.model") + struct.pack("<I", STRING) + s("llama")
                 + s("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, n) + tokens)


def long_string_value(path: Path) -> Path:
    """A 512 MiB string value, sparse: skipped, never read."""
    n = 512 << 20
    return write(path, header(0, 1) + s("general.description") + struct.pack("<IQ", STRING, n), 64 + n)


def long_key(path: Path) -> Path:
    n = 1 << 30
    return write(path, header(0, 1) + struct.pack("<Q", n), 32 + n + 16)


def long_tensor_name(path: Path) -> Path:
    n = 1 << 29
    return write(path, header(1, 0) + struct.pack("<Q", n), 32 + n + 64)


def dims_overflow(path: Path) -> Path:
    info = s("a") + struct.pack("<I4QIQ", 4, 2**20, 2**20, 2**20, 2**20, 0, 0)
    return write(path, header(1, 0) + info, 4096)


def _kv(key: str, value: int | str) -> bytes:
    if isinstance(value, str):
        return s(key) + struct.pack("<I", STRING) + s(value)
    return s(key) + struct.pack("<II", U32, value)


def deepest_load_path(path: Path) -> Path:
    """A llama header at llama.cpp's limits: 512 blocks of 1024 experts, every tensor the loader
    asks for present (infos only, data sparse), one dimension of the last block's last tensor off:
    the whole load path runs before the refusal."""
    n_layer, n_expert, e, ff = 512, 1024, 64, 64
    kvs = [("general.architecture", "llama"), ("llama.context_length", 256), ("llama.embedding_length", e),
           ("llama.block_count", n_layer), ("llama.feed_forward_length", ff), ("llama.attention.head_count", 4),
           ("llama.expert_count", n_expert), ("llama.expert_used_count", 2), ("tokenizer.ggml.model", "llama")]
    body = b"".join(_kv(k, v) for k, v in kvs) + s("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 4) + s("a") + s("b") + s("c") + s("d")
    body += s("llama.attention.layer_norm_rms_epsilon") + struct.pack("<If", 6, 1e-5)
    shapes = {"token_embd.weight": (e, 4), "output_norm.weight": (e,)}
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes |= {b + "attn_norm.weight": (e,), b + "attn_q.weight": (e, e), b + "attn_k.weight": (e, e), b + "attn_v.weight": (e, e),
                   b + "attn_output.weight": (e, e), b + "ffn_norm.weight": (e,), b + "ffn_gate_inp.weight": (e, n_expert),
                   b + "ffn_gate_exps.weight": (e, ff, n_expert), b + "ffn_down_exps.weight": (ff, e, n_expert),
                   b + "ffn_up_exps.weight": (e, ff, n_expert + (1 if i == n_layer - 1 else 0))}
    infos, offset = b"", 0
    for name, dims in shapes.items():
        infos += s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, offset)
        n = 4
        for d in dims:
            n *= d
        offset += -(-n // 32) * 32
    head = header(len(shapes), len(kvs) + 2) + body + infos
    return write(path, head, -(-len(head) // 32) * 32 + offset)


CASES = {
    "load-path-512-blocks-1024-experts": (deepest_load_path, P.BAD_SHAPE),
    "nested-arrays-1.5GiB": (nested_arrays, P.BAD_VALUE_TYPE),
    "nested-arrays-200k": (nested_arrays_dense, P.BAD_VALUE_TYPE),
    "2M-tensors": (many_tensors, P.COUNT_TOO_LARGE),
    "tensors-at-the-limit": (tensors_at_the_limit, P.TENSOR_UNEXPECTED),
    "kv-count-past-the-limit": (many_kvs, P.COUNT_TOO_LARGE),
    "kvs-at-the-limit": (kvs_at_the_limit, P.ARCHITECTURE_MISSING),
    "string-array-past-the-limit": (huge_string_array, P.COUNT_TOO_LARGE),
    "empty-strings-at-the-limit": (empty_strings_at_the_limit, P.ARCHITECTURE_MISSING),
    "repeated-tokens-at-the-limit": (repeated_tokens_at_the_limit, P.VOCAB_INVALID),
    "512MiB-string-value": (long_string_value, P.ARCHITECTURE_MISSING),
    "1GiB-key": (long_key, P.COUNT_TOO_LARGE),
    "512MiB-tensor-name": (long_tensor_name, P.HEADER_INVALID),
    "dims-overflow-int64": (dims_overflow, P.HEADER_INVALID),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_header_is_refused_in_bounded_memory_and_time(tmp_path: Path, case: str) -> None:
    build, code = CASES[case]
    m = measure(build(tmp_path / "hostile.gguf"))
    assert not m["result"]["ok"] and code in m["result"]["codes"], m["result"]
    assert m["rss_kb"] < MAX_RSS_KB, f"{case}: {m['rss_kb'] // 1024} MB"
    assert m["cpu_s"] < MAX_CPU_S, f"{case}: {m['cpu_s']:.2f} s CPU"


def test_a_262k_vocabulary_still_passes_within_the_bounds() -> None:
    folder = vocab_dir()
    if folder is None:
        if os.environ.get("CI") == "true":
            pytest.fail("llama.cpp's vocabulary files are missing: run bash ops/oracle-llama.sh")
        pytest.skip("llama.cpp's vocabulary files come with ops/oracle-llama.sh")
    m = measure(folder / "ggml-vocab-gemma-4.gguf")
    assert m["result"]["ok"] and m["result"]["messages"] == [], m["result"]
    assert m["rss_kb"] < MAX_RSS_KB and m["cpu_s"] < MAX_CPU_S, m
