"""preflight's vLLM arithmetic against real vLLM startup logs (tests/data/vllm_startup_logs.json, each row with its source).

Given the memory vLLM logged as available for the KV cache, the token or block count it logged
is reproduced within 2%; the weights per GPU computed from tensor headers (reconstructed from
the model's public config) match "Loading model weights took" within 2%; the refusals are
predicted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preflight.serving.accel import parse_declared
from preflight.serving.args import parse_args
from preflight.serving.fit import (
    KV_CACHE_TOO_LARGE, _one_request, kv_layer_bytes, served_dtype, stage_layers, vllm_fit, vllm_logged_tokens, vllm_v0_blocks,
    weights_per_rank,
)
from preflight.serving.model import config_facts

GiB = 2**30
DATA = json.loads((Path(__file__).parent / "data" / "vllm_startup_logs.json").read_text())
ROWS = {r["id"]: r for r in DATA["rows"]}


def headers(cfg: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensor headers of a dense Llama/Qwen2 checkpoint as its config.json describes it
    (int8 weights with per-channel scales for compressed-tensors w8a8; q/k/v biases for qwen2)."""
    h, n, v, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    int8 = (cfg.get("quantization_config") or {}).get("quant_method") == "compressed-tensors"
    t = {"model.embed_tokens.weight": ("BF16", (v, h)), "lm_head.weight": ("BF16", (v, h)), "model.norm.weight": ("BF16", (h,))}
    for i in range(n):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, q)), ("mlp.gate_proj", (inter, h)), ("mlp.up_proj", (inter, h)), ("mlp.down_proj", (h, inter))):
            t[p + name + ".weight"] = ("I8" if int8 else "BF16", shape)
            if int8:
                t[p + name + ".weight_scale"] = ("BF16", (shape[0], 1))
            if cfg["model_type"] == "qwen2" and name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                t[p + name + ".bias"] = ("BF16", (shape[0],))
        t[p + "input_layernorm.weight"] = ("BF16", (h,))
        t[p + "post_attention_layernorm.weight"] = ("BF16", (h,))
    return t


def row_facts(row):
    cfg = DATA["configs"][row["model"]]
    return cfg, config_facts(cfg), parse_args("vllm", row["args"])


def near(ours: float, logged: float, tol: float = 0.02) -> bool:
    return abs(ours - logged) <= tol * abs(logged)


@pytest.mark.parametrize("rid", [r["id"] for r in DATA["rows"] if "gpu_blocks" in r["logged"] and "kv_cache_gib" in r["logged"]])
def test_v0_gpu_blocks_from_the_logged_kv_memory(rid):
    row = ROWS[rid]
    _cfg, facts, args = row_facts(row)
    blocks = vllm_v0_blocks(facts, args, int(row["logged"]["kv_cache_gib"] * GiB))
    assert near(blocks, row["logged"]["gpu_blocks"]), (blocks, row["logged"])


@pytest.mark.parametrize("rid", [r["id"] for r in DATA["rows"] if "tokens" in r["logged"]])
def test_v1_kv_cache_tokens_from_the_logged_available_memory(rid):
    row = ROWS[rid]
    _cfg, facts, args = row_facts(row)
    tokens = vllm_logged_tokens(facts, args, int(row["logged"]["available_gib"] * GiB))
    assert near(tokens, row["logged"]["tokens"]), (tokens, row["logged"])


@pytest.mark.parametrize("rid", [r["id"] for r in DATA["rows"] if "weights_gib" in r["logged"]])
def test_weights_per_gpu_match_loading_model_weights_took(rid):
    row = ROWS[rid]
    cfg, facts, args = row_facts(row)
    per_rank = max(weights_per_rank(facts, headers(cfg), args, served_dtype(facts, args, None)))
    assert near(per_rank / GiB, row["logged"]["weights_gib"]), (per_rank / GiB, row["logged"])


@pytest.mark.parametrize("rid", [r["id"] for r in DATA["rows"] if "concurrency" in r["logged"]])
def test_maximum_concurrency_as_logged(rid):
    row = ROWS[rid]
    _cfg, facts, args = row_facts(row)
    blocks = row["logged"]["gpu_blocks"]
    assert near(blocks * args["block_size"] / args["max_model_len"], row["logged"]["concurrency"], 0.01)


def test_v0_refusal_when_the_cache_holds_fewer_tokens_than_max_len():
    row = ROWS["llama31-8b-3090-v0-29k"]
    _cfg, facts, args = row_facts(row)
    capacity = vllm_v0_blocks(facts, args, int(row["logged"]["kv_cache_gib"] * GiB)) * args["block_size"]
    assert capacity < args["max_model_len"]
    assert near(capacity, 23648)
    ok = ROWS["llama31-8b-3090-v0-20k"]
    _c, f2, a2 = row_facts(ok)
    assert vllm_v0_blocks(f2, a2, int(ok["logged"]["kv_cache_gib"] * GiB)) * 16 >= a2["max_model_len"]  # the 20k run started


def test_mla_kv_for_one_request_and_the_refusal():
    row = ROWS["deepseek-v2-lite-mla"]
    _cfg, facts, args = row_facts(row)
    per_layer = kv_layer_bytes(facts, args, "bfloat16")
    assert per_layer == (512 + 64) * 2  # MLA: one latent per token per layer, not K and V
    needed = _one_request(stage_layers(facts, 1)[0], per_layer, 32768, None, 16)
    assert near(needed / GiB, row["logged"]["needed_gib"])
    assert needed > row["logged"]["available_gib"] * GiB  # the refusal vLLM logged


def test_derived_max_len_as_vllm_logs_it():
    for rid in ("deepseek-v2-derived-len", "r1-distill-qwen14b-2x4090-tp2"):
        row = ROWS[rid]
        _cfg, facts, _args = row_facts(row)
        assert facts.derived_max_len == row["logged"]["max_seq_len"]


def test_refusal_predicted_before_download_on_two_4090s():
    row = ROWS["r1-distill-qwen14b-2x4090-tp2"]
    cfg, facts, args = row_facts(row)
    fit = vllm_fit(facts, headers(cfg), args, parse_declared(row["gpu"]))
    assert any(p.code == KV_CACHE_TOO_LARGE and p.is_error for p in fit.problems), fit.to_dict()
    assert near(fit.figures["weights_bytes_per_gpu"] / GiB, row["logged"]["weights_gib"])


def test_every_row_names_its_source():
    assert all(r["source"].startswith("https://github.com/") for r in DATA["rows"])
    assert all(r["model"] in DATA["configs"] for r in DATA["rows"])
