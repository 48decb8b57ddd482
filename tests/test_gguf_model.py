"""Model-level GGUF checks (preflight/formats/gguf_model.py) on files written by gguf.GGUFWriter:
each defect of the issue list with its code, real llama.cpp vocabulary files, and the facts
GGUFInfo exposes. The same edits are judged against llama.cpp itself in test_gguf_oracle.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.formats.gguf import check_gguf, check_gguf_split
from preflight.formats.gguf_arch import ARCHITECTURES, KNOWN_ARCHITECTURES
from tests import gguf_mutants as M
from tests.builders import write_gguf, write_gguf_split
from tests.gguf_oracle import vocab_dir


def errors(info) -> list[str]:
    return [p.code for p in info.problems if p.is_error]


def warnings(info) -> list[str]:
    return [p.code for p in info.problems if not p.is_error]


@pytest.mark.parametrize("name", sorted(M.EXPECTED_CODES))
def test_each_defect_has_its_code(tmp_path: Path, name: str) -> None:
    info = check_gguf(M.write_structural(name, tmp_path / "model.gguf"), name="gguf/model.gguf")
    assert M.EXPECTED_CODES[name] in errors(info), info.problems
    hit = next(p for p in info.problems if p.code == M.EXPECTED_CODES[name])
    assert hit.path == "gguf/model.gguf" and hit.message.startswith("gguf/model.gguf: ")


@pytest.mark.parametrize("name", ["unchanged", "untied-output", "q8_0-matrices", "q2_0-type-42", "alignment-64",
                                  "alignment-16-lucky", "head-count-per-block", "scores-one-long", "bos-id-out-of-range",
                                  "optional-output-bias", "optional-rope-freqs", "optional-scale"])
def test_valid_variants_pass(tmp_path: Path, name: str) -> None:
    info = check_gguf(M.write_structural(name, tmp_path / "model.gguf"))
    assert errors(info) == [], info.problems


@pytest.mark.parametrize(("name", "code"), [("type-43-newer", P.UNKNOWN_TENSOR_TYPE), ("tokenizer-model-unknown", P.VOCAB_INVALID), ("scores-one-long", P.VOCAB_INVALID)])
def test_what_a_newer_llama_cpp_may_accept_is_a_warning(tmp_path: Path, name: str, code: str) -> None:
    info = check_gguf(M.write_structural(name, tmp_path / "model.gguf"))
    assert info.ok and warnings(info) == [code], info.problems


def test_the_issue_messages_name_what_is_wrong(tmp_path: Path) -> None:
    def message(name: str, code: str) -> str:
        info = check_gguf(M.write_structural(name, tmp_path / f"{name}.gguf"))
        return next(p.message for p in info.problems if p.code == code)

    assert "'blk.1.ffn_uq.weight' is not one llama.cpp's llama loader reads" in message("tensor-renamed", P.TENSOR_UNEXPECTED)
    assert "has no tensor 'blk.1.ffn_up.weight'" in message("tensor-renamed", P.TENSOR_MISSING)
    assert "has no llama.embedding_length (uint32)" in message("embedding-length-renamed", P.HPARAM_MISSING)
    assert "tokenizer.ggml.scores has 63 entries for 64 tokens" in message("scores-one-short", P.VOCAB_INVALID)
    assert "tokenizer.ggml.bos_token_id is float32, llama.cpp reads it as uint32" in message("bos-id-f32", P.KV_TYPE_MISMATCH)
    assert "block_count is 1 but tensors of block 1 are present" in message("block-count-1", P.BLOCK_COUNT_MISMATCH)
    assert "rope.dimension_count is 7, llama.cpp requires the head size 16" in message("rope-dims-7", P.HPARAM_INVALID)
    assert "general.alignment 16 puts" in message("alignment-16", P.MISALIGNED) and "aborts" in message("alignment-16", P.MISALIGNED)
    assert "arrays of arrays" in message("nested-array", P.BAD_VALUE_TYPE) or "array of arrays" in message("nested-array", P.BAD_VALUE_TYPE)


def test_model_facts(tmp_path: Path) -> None:
    info = check_gguf(M.write_structural("unchanged", tmp_path / "m.gguf"))
    assert (info.architecture, info.block_count, info.vocab_size, info.tied_embeddings, info.vocab_only) == ("llama", 2, 64, True, False)
    untied = check_gguf(M.write_structural("untied-output", tmp_path / "u.gguf"))
    assert untied.tied_embeddings is False


def test_a_vocabulary_file_is_judged_as_one(tmp_path: Path) -> None:
    info = check_gguf(write_gguf(tmp_path / "tokenizer.gguf", tensors={}, n_vocab=100))
    assert info.ok and info.vocab_only and info.vocab_size == 100, info.problems
    stripped = check_gguf(M.write_structural("no-tensors", tmp_path / "model.gguf"))
    assert errors(stripped) == [P.WEIGHTS_MISSING] and not stripped.vocab_only


def test_an_unknown_architecture_gets_the_generic_checks(tmp_path: Path) -> None:
    spec = M.base_spec()
    for i, (k, t, v) in enumerate(spec.kvs):
        spec.kvs[i] = (k.replace("llama.", "newarch."), t, "newarch" if k == "general.architecture" else v)
    M.drop_kv("newarch.block_count")(spec)
    M.rename_tensor("blk.0.attn_q.weight", "blk.0.new_kind_of_tensor.weight")(spec)
    info = check_gguf(M.write(spec, tmp_path / "m.gguf"))
    assert warnings(info) == [P.UNKNOWN_ARCHITECTURE]
    assert errors(info) == [P.HPARAM_MISSING]  # block_count; the new tensor name is not judged


def test_split_model_checks_see_every_part(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "m", n_splits=3, tensors_per_split=4)
    assert [errors(check_gguf(p)) for p in parts] == [[], [], []]
    assert check_gguf_split(parts) == []


def test_the_architecture_table() -> None:
    """Generated from llama.cpp's sources; spot checks of what it must say."""
    assert {"llama", "qwen2", "qwen3", "gemma3", "phi3", "gpt-oss", "mistral3", "deepseek2"} <= KNOWN_ARCHITECTURES
    llama = ARCHITECTURES["llama"]
    assert llama.hparams == {"attention.layer_norm_rms_epsilon": "float32"}
    assert llama.tensors == ("token_embd.weight", "output_norm.weight") and llama.qkv
    assert "blk.%d.ffn_up.weight" in llama.dense and "output.weight" not in llama.tensors
    assert ARCHITECTURES["gpt-oss"].tensors[-1] == "output.weight"  # no tied output there


def test_real_llama_cpp_vocabulary_files_pass() -> None:
    folder = vocab_dir()
    if folder is None:
        if os.environ.get("CI") == "true":
            pytest.fail("llama.cpp's vocabulary files are missing: run bash ops/oracle-llama.sh")
        pytest.skip("llama.cpp's vocabulary files come with ops/oracle-llama.sh")
    for name, n in (("ggml-vocab-llama-spm.gguf", 32000), ("ggml-vocab-gemma-4.gguf", 262144)):
        info = check_gguf(folder / name)
        assert info.ok and info.problems == [] and info.vocab_only and info.vocab_size == n, info.problems
