"""Config values, tokenizer files and the newer families' shapes, on folders made with the real writer.

The campaign (tests/folder_campaign.py) judges these rules against transformers 4.44; what 4.44
cannot build (Qwen3, Qwen3-MoE, Gemma 2/3 text) and what it reads leniently is pinned here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.check import discover
from preflight.formats.hfconfig import check_config_values
from preflight.formats.hfdir import check_hf_dir
from preflight.formats.hfshapes import check_shapes
from preflight.formats.tokenizerfiles import tokenizer_defects
from tests.st_layouts import write_folder

H, V, NH, NKV, HD, I = 16, 32, 2, 1, 8, 24


def decoder(*, qk_norm: bool = False, ffn_norms: bool = False, moe: int = 0, tie: bool = False) -> dict:
    t = {"model.embed_tokens.weight": ("BF16", (V, H)), "model.norm.weight": ("BF16", (H,))}
    if not tie:
        t["lm_head.weight"] = ("BF16", (V, H))
    for i in range(2):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": ("BF16", (NH * HD, H)), p + "self_attn.k_proj.weight": ("BF16", (NKV * HD, H)),
              p + "self_attn.v_proj.weight": ("BF16", (NKV * HD, H)), p + "self_attn.o_proj.weight": ("BF16", (H, NH * HD)),
              p + "input_layernorm.weight": ("BF16", (H,)), p + "post_attention_layernorm.weight": ("BF16", (H,))}
        if qk_norm:
            t |= {p + "self_attn.q_norm.weight": ("BF16", (HD,)), p + "self_attn.k_norm.weight": ("BF16", (HD,))}
        if ffn_norms:
            t |= {p + "pre_feedforward_layernorm.weight": ("BF16", (H,)), p + "post_feedforward_layernorm.weight": ("BF16", (H,))}
        if moe:
            t[p + "mlp.gate.weight"] = ("BF16", (moe, H))
            for e in range(moe):
                t |= {p + f"mlp.experts.{e}.gate_proj.weight": ("BF16", (8, H)), p + f"mlp.experts.{e}.up_proj.weight": ("BF16", (8, H)),
                      p + f"mlp.experts.{e}.down_proj.weight": ("BF16", (H, 8))}
        else:
            t |= {p + "mlp.gate_proj.weight": ("BF16", (I, H)), p + "mlp.up_proj.weight": ("BF16", (I, H)),
                  p + "mlp.down_proj.weight": ("BF16", (H, I))}
    return t


def config(arch: str, model_type: str, **over) -> dict:
    return {"architectures": [arch], "model_type": model_type, "hidden_size": H, "num_hidden_layers": 2, "num_attention_heads": NH,
            "num_key_value_heads": NKV, "head_dim": HD, "intermediate_size": I, "vocab_size": V, "tie_word_embeddings": False,
            "hidden_act": "silu", **over}


NEWER = {
    "qwen3": (config("Qwen3ForCausalLM", "qwen3", attention_bias=False), decoder(qk_norm=True)),
    "qwen3-moe": (config("Qwen3MoeForCausalLM", "qwen3_moe", num_experts=4, moe_intermediate_size=8, mlp_only_layers=[],
                         decoder_sparse_step=1, attention_bias=False), decoder(qk_norm=True, moe=4)),
    "gemma2": (config("Gemma2ForCausalLM", "gemma2", hidden_activation="gelu_pytorch_tanh", attention_bias=False,
                      tie_word_embeddings=True), decoder(ffn_norms=True, tie=True)),
    "gemma3-text": (config("Gemma3ForCausalLM", "gemma3_text", hidden_activation="gelu_pytorch_tanh", attention_bias=False,
                           tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 8.0}),
                    decoder(qk_norm=True, ffn_norms=True, tie=True)),
}


@pytest.mark.parametrize("name", sorted(NEWER))
def test_newer_families_pass_whole_and_are_caught_when_changed(tmp_path: Path, name: str) -> None:
    cfg, tensors = NEWER[name]
    facts, found = check_shapes(cfg, tensors, cfg["architectures"][0])
    assert facts.checked and found == [] and facts.tensors_compared > 10
    assert check_config_values(cfg, cfg["architectures"][0]) == []
    _, found = check_shapes({**cfg, "head_dim": 2 * HD}, tensors, cfg["architectures"][0])
    assert {p.code for p in found} == {P.TENSOR_SHAPE_MISMATCH}
    fewer = {k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    _, found = check_shapes(cfg, fewer, cfg["architectures"][0])
    assert [p.code for p in found] == [P.TENSOR_MISSING]


def test_qwen3_needs_its_qk_norms(tmp_path: Path) -> None:
    cfg, tensors = NEWER["qwen3"]
    _, found = check_shapes(cfg, {k: v for k, v in tensors.items() if "q_norm" not in k}, "Qwen3ForCausalLM")
    (p,) = found
    assert p.code == P.TENSOR_MISSING and "model.layers.{0-1}.self_attn.q_norm.weight" in p.message


def test_moe_expert_beyond_the_count_is_unexpected() -> None:
    cfg, tensors = NEWER["qwen3-moe"]
    extra = {**tensors, "model.layers.0.mlp.experts.4.up_proj.weight": ("BF16", (8, H))}
    (p,) = check_shapes(cfg, extra, "Qwen3MoeForCausalLM")[1]
    assert p.code == P.TENSOR_UNEXPECTED


def test_quantized_configs_are_not_shape_checked() -> None:
    cfg, tensors = NEWER["qwen3"]
    facts, found = check_shapes({**cfg, "quantization_config": {"quant_method": "awq"}}, tensors, "Qwen3ForCausalLM")
    assert not facts.checked and found == [] and "quantized" in (facts.reason or "")


def test_absent_hyper_parameters_leave_shapes_unchecked() -> None:
    cfg, tensors = NEWER["qwen3"]
    facts, found = check_shapes({k: v for k, v in cfg.items() if k != "intermediate_size"}, tensors, "Qwen3ForCausalLM")
    assert facts.checked and found == []


@pytest.mark.parametrize("over, code", [
    ({"model_type": "llama_x9"}, P.UNKNOWN_MODEL_TYPE),
    ({"hidden_act": "gelu_x9"}, P.UNKNOWN_ACTIVATION),
    ({"torch_dtype": "bfloat17"}, P.DTYPE_INVALID),
    ({"rope_scaling": {"rope_type": "fancy_x9", "factor": 2.0}}, P.ROPE_SCALING_INVALID),
    ({"rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}}, P.ROPE_SCALING_INVALID),
    ({"rope_scaling": {"type": "linear", "factor": "2"}}, P.ROPE_SCALING_INVALID),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "nope_x9"}}},
     P.ROPE_SCALING_INVALID),
])
def test_config_values_the_loaders_refuse(over: dict, code: str) -> None:
    cfg = {**config("LlamaForCausalLM", "llama"), **over}
    assert [p.code for p in check_config_values(cfg, "LlamaForCausalLM")] == [code]


@pytest.mark.parametrize("over", [
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}},  # omp filled by 5.x
    {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
    {"rope_scaling": {"rope_type": "deepseek_yarn", "factor": 40}},  # vLLM builds it
    {"rope_scaling": None}, {"torch_dtype": "float8_e4m3fn"}, {"dtype": "bfloat16"},
    {"model_type": "chatglm"},  # vLLM's own registry
    {"model_type": "my_own", "auto_map": {"AutoConfig": "configuration_mine.MyConfig"}},  # remote code brings its config
])
def test_config_values_the_loaders_take(over: dict) -> None:
    cfg = {**config("LlamaForCausalLM", "llama"), **over}
    assert check_config_values(cfg, "LlamaForCausalLM") == []


def test_gemma1_activation_is_refused_only_when_both_keys_are_bad() -> None:
    cfg = config("GemmaForCausalLM", "gemma", hidden_act="gelu_x9")
    assert check_config_values({**cfg, "hidden_activation": "gelu_pytorch_tanh"}, "GemmaForCausalLM") == []
    assert [p.code for p in check_config_values({**cfg, "hidden_activation": "gelu_x9"}, "GemmaForCausalLM")] == [P.UNKNOWN_ACTIVATION]


BPE = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}


@pytest.mark.parametrize("doc, why", [
    ({**BPE, "version": "2.0"}, "version"),
    ({**BPE, "model": {**BPE["model"], "type": "BPX"}}, "model.type"),
    ({**BPE, "model": {**BPE["model"], "merges": ["a c"]}}, "MergeTokenOutOfVocabulary"),
    ({**BPE, "model": {**BPE["model"], "merges": ["b a"]}}, "'ba'"),
    ({**BPE, "model": {**BPE["model"], "merges": ["a b c"]}}, "BadMerges"),
    ({**BPE, "model": {**BPE["model"], "vocab": [["a", 0.0]]}}, "expected an object"),
    ({"model": {"type": "Unigram", "vocab": [["a", -1.0]], "unk_id": 3}}, "UnkIdNotInVocabulary"),
    ({"model": {"type": "WordPiece", "vocab": {"a": "x"}}}, "token id"),
    ({**BPE, "added_tokens": [{"content": "<s>"}]}, "added_tokens[0]"),
    ([], "expected an object"),
])
def test_tokenizer_json_the_library_refuses(doc, why: str) -> None:
    (msg,) = tokenizer_defects(doc)
    assert why in msg


@pytest.mark.parametrize("doc", [
    BPE, {**BPE, "model": {**BPE["model"], "merges": [["a", "b"]]}},
    {"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}},
    {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["a", -1.0]], "unk_id": 0}},
    {"model": {"type": "WordLevel", "vocab": {"a": 0}}},
    {**BPE, "added_tokens": [{"id": 3, "content": "<s>", "special": True, "lstrip": False}]},
])
def test_tokenizer_json_the_library_loads(doc) -> None:
    assert tokenizer_defects(doc) == []


def test_folder_files_as_the_loaders_read_them(tmp_path: Path) -> None:
    cfg, tensors = NEWER["qwen3"]
    root = write_folder(tmp_path / "m", cfg, tensors)
    assert check_hf_dir(root, discover(root)).ok
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NoSuchTokenizerX9"}))
    (root / "generation_config.json").write_text("{\"bos")
    info = check_hf_dir(root, discover(root))
    assert {p.code: p.severity for p in info.problems} == {P.UNKNOWN_TOKENIZER_CLASS: "error", P.GENERATION_CONFIG_INVALID: "warning"}
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer"}))
    (root / "generation_config.json").write_text("[]")
    assert [p.code for p in check_hf_dir(root, discover(root)).problems] == [P.GENERATION_CONFIG_INVALID]
