"""Model-level checks (config.json against the weights): no false alarms on real layouts, one finding per defect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.check import discover
from preflight.formats.hfdir import check_hf_dir
from tests import example_repos
from tests.repos import write_tree
from tests.st_layouts import (
    H,
    L,
    V,
    awq,
    bnb4,
    decoder,
    dense_then_moe,
    encoder,
    fp8_compressed,
    gpt2,
    gpt2_layers,
    gpt_neox,
    hybrid,
    interleaved_moe,
    llama_config,
    vision_tower,
    write_folder,
)


def check(root: Path):
    return check_hf_dir(root, discover(root))


def mismatches(info) -> list[str]:
    return [p.message for p in info.problems if p.code == P.CONFIG_MISMATCH]


LLAVA_TEXT = {"model_type": "llama", "hidden_size": H, "num_hidden_layers": L, "vocab_size": V}
REAL_LAYOUTS = {
    "llama-untied": (llama_config(), decoder(), 0),
    "llama-tied": (llama_config(tie_word_embeddings=True), decoder(head=None), 0),
    "llama-sharded": (llama_config(), decoder(), 3),
    "mixtral-moe": (llama_config(architectures=["MixtralForCausalLM"], num_local_experts=4), decoder(experts=4), 2),
    "padded-vocabulary": (llama_config(vocab_size=64), decoder(vocab=64), 0),  # tokenizer has 32 tokens
    "deepseek-mtp-layer": (llama_config(architectures=["DeepseekV3ForCausalLM"], num_nextn_predict_layers=1), decoder(layers=L + 1), 0),
    "opt-decoder-prefix": (llama_config(architectures=["OPTForCausalLM"], word_embed_proj_dim=H), decoder("model.decoder."), 0),
    "llava-old-naming": ({"architectures": ["LlavaForConditionalGeneration"], "text_config": LLAVA_TEXT,
                          "vision_config": {"num_hidden_layers": 3}, "tie_word_embeddings": False},
                         {**decoder("language_model.model.", head="language_model.lm_head.weight"), **vision_tower()}, 0),
    "llava-new-naming": ({"architectures": ["LlavaForConditionalGeneration"], "text_config": LLAVA_TEXT, "tie_word_embeddings": False},
                         {**decoder("model.language_model."), **vision_tower("model.vision_tower.vision_model.")}, 0),
    "mllama-image-token-rows": ({"architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama", "tie_word_embeddings": False,
                                "text_config": {**LLAVA_TEXT, "model_type": "mllama_text_model"}},
                               {**decoder("language_model.model.", vocab=V + 8, head=None), "language_model.lm_head.weight": ("BF16", (V, H)),
                                **vision_tower("vision_model.")}, 0),
    "gpt2": ({"architectures": ["GPT2LMHeadModel"], "n_layer": L, "n_embd": H, "vocab_size": V}, gpt2(), 0),
    "gpt-neox": ({"architectures": ["GPTNeoXForCausalLM"], "num_hidden_layers": L, "hidden_size": H, "vocab_size": V,
                  "tie_word_embeddings": False}, gpt_neox(), 0),
    "bge-m3-xlmr": ({"architectures": ["XLMRobertaModel"], "num_hidden_layers": L, "hidden_size": H, "vocab_size": V}, encoder(), 0),
    "reranker-roberta-prefix": ({"architectures": ["XLMRobertaForSequenceClassification"], "num_hidden_layers": L,
                                 "hidden_size": H, "vocab_size": V}, {**encoder("roberta."), "classifier.dense.weight": ("F32", (H, H))}, 0),
    "awq": (llama_config(quantization_config={"quant_method": "awq", "bits": 4}), awq(), 0),
    "fp8-compressed-tensors": (llama_config(quantization_config={"quant_method": "compressed-tensors"}), fp8_compressed(), 0),
    "bitsandbytes-nf4": (llama_config(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}), bnb4(), 0),
    # Heterogeneous layer lists: none is a renamed tensor.
    "deepseek-dense-first": (llama_config(architectures=["DeepseekV3ForCausalLM"], num_hidden_layers=4, first_k_dense_replace=1),
                             dense_then_moe(), 0),
    "deepseek-two-dense": (llama_config(architectures=["DeepseekV3ForCausalLM"], num_hidden_layers=5, first_k_dense_replace=2),
                           dense_then_moe(layers=5, dense=2), 0),
    "llama4-interleaved-moe": ({"architectures": ["Llama4ForConditionalGeneration"], "tie_word_embeddings": False,
                                "text_config": {"num_hidden_layers": 6, "hidden_size": H, "vocab_size": V, "interleave_moe_layer_step": 2}},
                               interleaved_moe(layers=6), 0),
    "llama4-one-moe-layer": ({"architectures": ["Llama4ForConditionalGeneration"], "tie_word_embeddings": False,
                              "text_config": {"num_hidden_layers": 3, "hidden_size": H, "vocab_size": V, "interleave_moe_layer_step": 2}},
                             interleaved_moe(layers=3), 0),
    "jamba-hybrid": (llama_config(architectures=["JambaForCausalLM"], num_hidden_layers=8,
                                  layers_block_type=["mamba"] * 4 + ["attention"] + ["mamba"] * 3), hybrid(["mamba"] * 4 + ["attention"] + ["mamba"] * 3), 0),
    "jamba-no-type-list": (llama_config(architectures=["JambaForCausalLM"], num_hidden_layers=4),
                           hybrid(["mamba", "attention", "mamba", "mamba"]), 0),
    "llama-fused-projections": (llama_config(), {k.replace("q_proj", "qkv_proj").replace("gate_proj", "gate_up_proj"): v
                                                 for k, v in decoder().items() if "k_proj" not in k and "v_proj" not in k and "up_proj" not in k
                                                 or "gate_up_proj" in k}, 0),
}


@pytest.mark.parametrize("name", sorted(REAL_LAYOUTS))
def test_real_layouts_are_recognised_and_pass(tmp_path: Path, name: str) -> None:
    config, tensors, shards = REAL_LAYOUTS[name]
    info = check(write_folder(tmp_path / name, config, tensors, shards=shards))
    assert info.ok, info.problems
    assert info.model is not None and info.model.checked, info.model
    assert "layers" in info.model.checks and "vocab_size" in info.model.checks


def test_quantized_layouts_are_named(tmp_path: Path) -> None:
    for name, expected in (("awq", "AWQ/GPTQ"), ("bitsandbytes-nf4", "bitsandbytes 4-bit"), ("fp8-compressed-tensors", "FP8")):
        config, tensors, _ = REAL_LAYOUTS[name]
        info = check(write_folder(tmp_path / name, config, tensors))
        assert expected in (info.model.quantized_layout or ""), info.model


def test_example_folders_pass(tmp_path: Path) -> None:
    """The stand-ins of the shipped examples: sentence-transformers, bge-m3, the AWQ folder."""
    for name, files in (("st", example_repos.sentence_transformer()), ("xlmr", example_repos.encoder(example_repos.XLMR_CONFIG)),
                        ("awq", example_repos.llama_like(config=example_repos.AWQ_CONFIG))):
        info = check(write_tree(tmp_path / name, files))
        assert info.ok and info.model.checked, (name, info.problems, info.model)


def _mutated(tmp_path: Path, config: dict, tensors: dict) -> list[str]:
    return mismatches(check(write_folder(tmp_path / "m", config, tensors)))


def test_a_dropped_layer(tmp_path: Path) -> None:
    tensors = {k: v for k, v in decoder(layers=4).items() if ".layers.2." not in k}
    (msg,) = _mutated(tmp_path, llama_config(num_hidden_layers=4), tensors)
    assert "says 4 layers; the weights have none for 2 under model.layers" in msg


def test_a_layer_beyond_the_config(tmp_path: Path) -> None:
    (msg,) = _mutated(tmp_path, llama_config(), decoder(layers=L + 1))
    assert f"says {L} layers (0-{L - 1}); the weights also hold model.layers.{L}" in msg


def test_vocabulary_rows_off(tmp_path: Path) -> None:
    msgs = _mutated(tmp_path, llama_config(vocab_size=V + 8), decoder())
    assert f"vocab_size {V + 8}; model.embed_tokens.weight has {V} rows" in msgs[0]
    assert any("lm_head.weight has" in m for m in msgs)


def test_hidden_size_off(tmp_path: Path) -> None:
    (msg,) = _mutated(tmp_path, llama_config(hidden_size=2 * H), decoder())
    assert f"says hidden_size {2 * H}; model.embed_tokens.weight is {H} wide" in msg


def test_untied_model_without_lm_head(tmp_path: Path) -> None:
    (msg,) = _mutated(tmp_path, llama_config(), decoder(head=None))
    assert "tie_word_embeddings false, but there is no lm_head.weight" in msg


def test_encoder_layer_count(tmp_path: Path) -> None:
    (msg,) = _mutated(tmp_path, {"architectures": ["BertModel"], "num_hidden_layers": 3, "hidden_size": H, "vocab_size": V}, encoder())
    assert "says 3 layers; the weights have none for 2 under encoder.layer" in msg


def test_a_missing_shard_is_one_finding_not_a_missing_layer(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "m", llama_config(), decoder(), shards=3)
    (root / "model-00002-of-00003.safetensors").unlink()
    info = check(root)
    assert P.SHARD_MISSING in {p.code for p in info.problems} and mismatches(info) == []


@pytest.mark.parametrize("config, tensors, reason", [
    ({"architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True, "num_layers": 2, "vocab_size": V},
     {"shared.weight": ("F32", (V, H)), "encoder.block.0.layer.0.SelfAttention.q.weight": ("F32", (H, H))}, "encoder-decoder"),
    ({"architectures": ["SileroVAD"], "hidden": 8}, {"stft.forward_basis": ("F32", (4, 1, 8)), "encoder.0.weight": ("F32", (8, 4))},
     "match no known layout"),
])
def test_unknown_layouts_are_not_checked_and_not_flagged(tmp_path: Path, config: dict, tensors: dict, reason: str) -> None:
    root = write_folder(tmp_path / "m", config, tensors)
    info = check_hf_dir(root, discover(root), serves_text=False)
    assert info.ok and not info.model.checked and reason in info.model.reason


def test_adapter_folders_get_no_model_checks(tmp_path: Path) -> None:
    from preflight.formats.adapter import check_adapter
    from tests.repos import adapter

    root = write_tree(tmp_path / "lora", adapter())
    (root / "config.json").write_text(json.dumps(llama_config(num_hidden_layers=9)))
    assert check_adapter(root, discover(root)).model is None


def test_a_tensor_renamed_in_a_layer_of_a_known_architecture(tmp_path: Path) -> None:
    """The family's table names every tensor: the old name is missing, the new one unexpected."""
    tensors = {k.replace("layers.0.mlp.up_proj", "layers.0.mlp.upp_proj"): v for k, v in decoder().items()}
    info = check(write_folder(tmp_path / "m", llama_config(), tensors))
    assert mismatches(info) == []
    found = {p.code: p.message for p in info.problems}
    assert "model.layers.0.mlp.up_proj.weight is missing: LlamaForCausalLM" in found[P.TENSOR_MISSING]
    assert "model.layers.0.mlp.upp_proj.weight: LlamaForCausalLM as config.json configures it has no such tensor" in found[P.TENSOR_UNEXPECTED]


def test_a_quantized_module_renamed_in_a_layer(tmp_path: Path) -> None:
    tensors = {k.replace("layers.1.self_attn.k_proj", "layers.1.self_attn.kk_proj"): v for k, v in awq().items()}
    (msg,) = _mutated(tmp_path, llama_config(quantization_config={"quant_method": "awq"}), tensors)
    assert "builds self_attn.k_proj in every layer" in msg and "model.layers.{1}" in msg


def test_the_embedding_renamed_in_a_known_architecture(tmp_path: Path) -> None:
    tensors = {k.replace("embed_tokens", "embed_tokenz"): v for k, v in decoder().items()}
    info = check(write_folder(tmp_path / "m", llama_config(), tensors))
    (msg,) = mismatches(info)
    assert "names LlamaForCausalLM, whose weights hold model.embed_tokens.weight; no tensor is embed_tokens.weight" in msg
    assert not info.model.checked


@pytest.mark.parametrize("prefix", ["", "model.", "language_model.model."])
def test_the_embedding_under_any_usual_prefix_is_found(tmp_path: Path, prefix: str) -> None:
    """No numbered layers (a stripped test folder): the embedding is still where the class wants it."""
    tensors = {f"{prefix}embed_tokens.weight": ("BF16", (V, H)), "lm_head.weight": ("BF16", (V, H))}
    assert _mutated(tmp_path, llama_config(), tensors) == []


def test_a_tensor_renamed_in_one_layer_of_many(tmp_path: Path) -> None:
    """An architecture without a shape table: the renamed name stands alone where three layers agree."""
    tensors = {k.replace("h.2.mlp.c_fc", "h.2.mlp.c_fcc"): v for k, v in gpt2_layers(4).items()}
    config = {"architectures": ["CodeGenForCausalLM"], "n_layer": 4, "n_embd": H, "vocab_size": V}
    bias, msg = _mutated(tmp_path, config, tensors)
    assert "transformer.h.2.mlp.c_fcc.bias stands where" in bias
    assert "transformer.h.2.mlp.c_fcc.weight stands where the other layers hold transformer.h.N.mlp.c_fc.weight" in msg


def test_a_rename_within_a_layer_type(tmp_path: Path) -> None:
    types = ["mamba", "attention", "mamba", "attention", "mamba", "attention", "mamba", "mamba"]
    tensors = {k.replace("layers.3.self_attn.v_proj", "layers.3.self_attn.w_proj"): v for k, v in hybrid(types).items()}
    config = llama_config(architectures=["JambaForCausalLM"], num_hidden_layers=8, layers_block_type=types)
    (msg,) = _mutated(tmp_path, config, tensors)
    assert "model.layers.3.self_attn.w_proj.weight stands where" in msg


def test_two_layers_that_differ_are_not_judged(tmp_path: Path) -> None:
    """With two layers nothing tells a rename from two kinds of layer: not flagged where no table
    names the family's tensors; GPT-2's table does."""
    tensors = {k.replace("h.1.mlp.c_fc", "h.1.mlp.c_fcc"): v for k, v in gpt2_layers(2).items()}
    config = {"architectures": ["CodeGenForCausalLM"], "n_layer": 2, "n_embd": H, "vocab_size": V}
    assert _mutated(tmp_path, config, tensors) == []
    info = check(write_folder(tmp_path / "gpt2", {**config, "architectures": ["GPT2LMHeadModel"]}, tensors))
    assert {p.code for p in info.problems if p.is_error} == {P.TENSOR_MISSING, P.TENSOR_UNEXPECTED}
