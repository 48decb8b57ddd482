"""llama.cpp fit against llama.cpp itself (llama-cpp-python 0.3.36): the KV cache it allocates, and
whether it survives a real memory limit (a cgroup made for the test)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from preflight.formats.gguf import check_gguf
from preflight.serving.accel import Accelerator, MiB
from preflight.serving.args import parse_args
from preflight.serving.fit import MEMORY_LIMIT, llama_fit, llama_kv_bytes
from preflight.serving.model import gguf_facts
from tests import llama_fit_oracle as O

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by ops/oracle-llama.sh")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit-models")
    return {
        "gqa": O.write_model(d / "gqa.gguf", n_embd=256, n_head=8, n_head_kv=2, n_layer=4),
        "mha": O.write_model(d / "mha.gguf", n_embd=320, n_head=5, n_head_kv=5, n_layer=3, head_dim=64),
        "gemma2": O.write_model(d / "gemma2.gguf", arch="gemma2", n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_layer=6, swa=200),
    }


def facts_of(path: Path):
    info = check_gguf(path)
    assert info.ok, info.problems
    return gguf_facts(info.metadata)


CASES = [  # (model, n_ctx, n_seq, unified, type_k, type_v, swa_full)
    ("gqa", 1000, 1, False, "f16", "f16", False),
    ("gqa", 4096, 1, False, "q8_0", "q8_0", False),
    ("gqa", 3000, 3, False, "q4_0", "f16", False),
    ("gqa", 3000, 3, True, "f16", "q8_0", False),
    ("mha", 777, 1, False, "f32", "f16", False),
    ("mha", 2048, 2, False, "q5_1", "q4_1", False),
    ("gemma2", 3000, 1, False, "f16", "f16", False),
    ("gemma2", 3000, 2, False, "f16", "f16", False),
    ("gemma2", 3000, 2, True, "q8_0", "q8_0", False),
    ("gemma2", 3000, 1, False, "f16", "f16", True),
]


@pytest.mark.parametrize("model,n_ctx,n_seq,unified,tk,tv,swa_full", CASES)
def test_kv_cache_equals_what_llama_cpp_allocates(models, model, n_ctx, n_seq, unified, tk, tv, swa_full):
    facts = facts_of(models[model])
    fa = tv not in ("f16", "f32", "bf16")  # llama.cpp: "quantized V cache requires flash_attn to be enabled"
    args = parse_args("llama.cpp", f"-c {n_ctx} -np {n_seq} -ctk {tk} -ctv {tv} -fa {'on' if fa else 'off'} -ub 512 -b 2048"
                      + (" -kvu" if unified else "") + (" --swa-full" if swa_full else ""))
    ours = llama_kv_bytes(facts, args)
    got = O.run(models[model], n_ctx=n_ctx, n_seq=n_seq, unified=unified, type_k=tk, type_v=tv, swa_full=swa_full, fa=fa)
    assert got["context"], got
    logged = O.kv_lines(got)
    full = [x for x in logged if x["cells"] == ours["n_ctx_seq"]]
    assert full, (logged, ours)
    if facts.n_swa and not swa_full:
        swa = [x for x in logged if x is not full[0]]
        assert len(swa) == 1 and swa[0]["cells"] == ours["swa_cells"], (logged, ours)
    assert sum(x["streams"] for x in logged[:1]) == ours["streams"]
    # llama.cpp prints MiB with two decimals: the figure agrees to that precision, cells and layers exactly
    k_logged = sum(x["k_mib"] for x in logged)
    v_logged = sum(x["v_mib"] for x in logged)
    assert abs(ours["k_bytes"] / MiB - k_logged) <= 0.005 * len(logged), (ours, logged)
    assert abs(ours["v_bytes"] / MiB - v_logged) <= 0.005 * len(logged), (ours, logged)
    assert sum(x["layers"] for x in logged) == facts.layers


def test_quantized_v_cache_without_flash_attention_is_refused_as_llama_cpp_refuses_it(models):
    facts = facts_of(models["gqa"])
    args = parse_args("llama.cpp", "-c 1024 -ctv q8_0 -fa off")
    fit = llama_fit(facts, models["gqa"].stat().st_size, 64, args, None)
    assert any(p.is_error and "quantized V cache requires flash_attn" in p.message for p in fit.problems)
    got = O.run(models["gqa"], n_ctx=1024, type_v="q8_0", fa=False)
    assert got["loaded"] and not got["context"]
    ok = llama_fit(facts, models["gqa"].stat().st_size, 64, parse_args("llama.cpp", "-c 1024 -ctv q8_0 -fa on"), None)
    assert ok.fits


# --------------------------------------------------------------------------- memory limit

def _cgroup(limit: int) -> Path:
    """A memory cgroup with `limit` bytes and no swap (v2 when the memory controller is there, else v1)."""
    name = f"preflight-fit-{uuid.uuid4().hex[:8]}"
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists() and "memory" in (v2 / "cgroup.controllers").read_text():
        cg = v2 / name
        cg.mkdir()
        (cg / "memory.max").write_text(str(limit))
        (cg / "memory.swap.max").write_text("0")
        return cg
    v1 = Path("/sys/fs/cgroup/memory")
    cg = v1 / name
    cg.mkdir()
    (cg / "memory.limit_in_bytes").write_text(str(limit))
    try:
        (cg / "memory.memsw.limit_in_bytes").write_text(str(limit))
    except OSError:
        pass
    return cg


def _can_make_cgroups() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        cg = _cgroup(512 * MiB)
    except OSError:
        return False
    cg.rmdir()
    return True


LIMIT_CASES = [  # (n_ctx, mmap, limit MiB): on both sides of the line
    (2048, False, 512),
    (8192, False, 640),
    (8192, False, 160),
    (16384, False, 256),
    (4096, True, 400),
    (16384, True, 200),
]


@pytest.mark.skipif(not _can_make_cgroups(), reason="needs root and a writable memory cgroup")
@pytest.mark.parametrize("n_ctx,mmap,limit_mib", LIMIT_CASES)
def test_verdict_agrees_with_llama_cpp_under_a_memory_limit(tmp_path, n_ctx, mmap, limit_mib):
    path = O.write_model(tmp_path / "big.gguf", n_embd=512, n_head=8, n_head_kv=4, n_layer=8, n_vocab=256, n_ff=2048, ctx=32768)
    assert path.stat().st_size > 40 * MiB
    info = check_gguf(path)
    facts = gguf_facts(info.metadata)
    limit = limit_mib * MiB
    args = parse_args("llama.cpp", f"-c {n_ctx} -np 1 -fa off" + ("" if mmap else " --no-mmap"))
    fit = llama_fit(facts, info.file_size, 256, args, Accelerator(memory_limit=limit, source="declared"))
    cg = _cgroup(limit)
    try:
        got = O.run(path, n_ctx=n_ctx, mmap=mmap, decode=True, cgroup=cg, timeout=300)
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)
    survived = bool(got.get("context")) and got.get("decoded") is True
    refused = any(p.code == MEMORY_LIMIT and p.is_error for p in fit.problems)
    if refused:
        assert not survived, (fit.to_dict(), got)  # no false refusal
    if fit.verdict == "fits":
        assert survived, (fit.to_dict(), got)  # no missed kill
    assert refused or fit.verdict in ("fits", "tight")
