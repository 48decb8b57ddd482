"""llama.cpp (llama-cpp-python) as the oracle of the llama.cpp fit figures: real GGUF models made
with gguf.GGUFWriter, loaded in a child process that reports what llama.cpp logged when it
created its KV cache, or whether it loaded and decoded at all under a memory limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np


def write_model(path: Path, arch: str = "llama", *, n_embd: int = 256, n_head: int = 8, n_head_kv: int = 2, n_layer: int = 4,
                n_vocab: int = 64, n_ff: int = 512, ctx: int = 4096, head_dim: int | None = None, swa: int | None = None,
                pad_bytes: int = 0) -> Path:
    """A model llama.cpp loads: `llama` (GQA) or `gemma2` (interleaved sliding window).
    `pad_bytes` adds an unused-by-shape but real tensor budget through a wider FFN, so the
    file has the size a memory-limit case needs."""
    head_dim = head_dim or n_embd // n_head
    if pad_bytes:
        n_ff = max(n_ff, pad_bytes // (3 * n_embd * 2 * n_layer) // 32 * 32)
    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    if arch == "gemma2":
        w.add_sliding_window(swa or 64)
        w.add_float32("gemma2.attn_logit_softcapping", 50.0)
        w.add_float32("gemma2.final_logit_softcapping", 30.0)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(n_vocab)])
    w.add_token_scores([float(-i) for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    rng = np.random.default_rng(0)

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16 if len(shape) > 1 else np.float32))

    t("token_embd.weight", n_vocab, n_embd)
    t("output_norm.weight", n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        t(b + "attn_norm.weight", n_embd)
        t(b + "attn_q.weight", n_head * head_dim, n_embd)
        t(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        t(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        t(b + "attn_output.weight", n_embd, n_head * head_dim)
        t(b + "ffn_norm.weight", n_embd)
        t(b + "ffn_gate.weight", n_ff, n_embd)
        t(b + "ffn_up.weight", n_ff, n_embd)
        t(b + "ffn_down.weight", n_embd, n_ff)
        if arch == "gemma2":
            t(b + "post_attention_norm.weight", n_embd)
            t(b + "post_ffw_norm.weight", n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_CHILD = r'''
import json, sys, ctypes
import llama_cpp as L
req = json.loads(sys.argv[1])
lines = []
@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def log(level, text, user):
    lines.append(text.decode("utf-8", "replace"))
L.llama_log_set(log, None)
L.llama_backend_init()
mp = L.llama_model_default_params()
mp.use_mmap = req["mmap"]
mp.n_gpu_layers = 0
model = L.llama_model_load_from_file(req["path"].encode(), mp)
if not model:
    print(json.dumps({"loaded": False, "log": lines[-5:]})); sys.exit(3)
cp = L.llama_context_default_params()
cp.n_ctx = req["n_ctx"]
cp.n_seq_max = req["n_seq"]
cp.kv_unified = req["unified"]
cp.swa_full = req["swa_full"]
cp.n_batch = req["n_batch"]
cp.n_ubatch = req["n_ubatch"]
cp.n_threads = 1
cp.n_threads_batch = 1
cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if req["fa"] else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
types = {"f16": 1, "f32": 0, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "bf16": 30, "iq4_nl": 20}
cp.type_k = types[req["type_k"]]
cp.type_v = types[req["type_v"]]
ctx = L.llama_init_from_model(model, cp)
if not ctx:
    print(json.dumps({"loaded": True, "context": False, "log": lines})); sys.exit(4)
decoded = None
if req.get("decode"):
    n = 8
    toks = (L.llama_token * n)(*([1] * n))  # kept alive: the batch only points at it
    batch = L.llama_batch_get_one(toks, n)
    rc = L.llama_decode(ctx, batch)
    decoded = rc == 0
    lines.append(f"decode rc={rc}")
print(json.dumps({"loaded": True, "context": True, "decoded": decoded, "log": [l for l in lines if "llama_kv_cache" in l or "n_ctx" in l or "decode" in l]}))
'''


def run(path: Path, *, n_ctx: int, n_seq: int = 1, unified: bool = False, type_k: str = "f16", type_v: str = "f16", swa_full: bool = False,
        n_batch: int = 2048, n_ubatch: int = 512, fa: bool = False, mmap: bool = True, decode: bool = False,
        cgroup: Path | None = None, timeout: float = 600) -> dict:
    """Create a llama.cpp context in a child process (inside `cgroup` when given) and return what happened."""
    req = {"path": os.fspath(path), "n_ctx": n_ctx, "n_seq": n_seq, "unified": unified, "type_k": type_k, "type_v": type_v,
           "swa_full": swa_full, "n_batch": n_batch, "n_ubatch": n_ubatch, "fa": fa, "mmap": mmap, "decode": decode}
    pre = None
    if cgroup is not None:
        procs = os.fspath(cgroup / "cgroup.procs")
        pre = lambda: Path(procs).write_text(str(os.getpid()))  # noqa: E731 - runs in the child before exec
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(req)], capture_output=True, text=True, timeout=timeout, preexec_fn=pre)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out = {"loaded": False, "killed": proc.returncode < 0 or proc.returncode == 137}
    out["returncode"] = proc.returncode
    return out


def kv_lines(result: dict) -> list[dict]:
    """llama_kv_cache: size = X MiB (C cells, L layers, s/S seqs), K (t): A MiB, V (t): B MiB -> numbers."""
    import re

    pat = re.compile(r"size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\), K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB")
    out = []
    for line in result.get("log", []):
        m = pat.search(line)
        if m:
            out.append({"mib": float(m[1]), "cells": int(m[2]), "layers": int(m[3]), "seqs": int(m[4]), "streams": int(m[5]),
                        "k_mib": float(m[7]), "v_mib": float(m[9])})
    return out
