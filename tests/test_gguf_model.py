"""Model-level GGUF checks (preflight/formats/gguf_model.py) on files written by gguf.GGUFWriter:
each defect of the issue list with its code, real llama.cpp vocabulary files, and the facts
GGUFInfo exposes. The same edits are judged against llama.cpp itself in test_gguf_oracle.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.formats.gguf import check_gguf, check_gguf_split
from preflight.formats.gguf_arch import ARCH_CLASSES, ENGINE, KNOWN_ARCHITECTURES
from preflight.formats.gguf_programs import functions
from tests import gguf_families as F
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


def _unknown_pre(path: Path) -> Path:
    spec = F.spec(F.FAMILIES["llama-bpe"])
    return M.write(F.Spec([(k, t, "gpt-9" if k == "tokenizer.ggml.pre" else v) for k, t, v in spec.kvs], spec.tensors), path)


@pytest.mark.parametrize(("name", "code"), [("type-43-newer", P.UNKNOWN_TENSOR_TYPE), ("tokenizer-model-unknown", P.VOCAB_INVALID),
                                           ("pre-tokenizer-unknown", P.VOCAB_INVALID)])
def test_what_this_llama_cpp_does_not_know_is_refused_unless_the_lane_runs_a_newer_one(tmp_path: Path, name: str, code: str) -> None:
    path = _unknown_pre(tmp_path / "model.gguf") if name == "pre-tokenizer-unknown" else M.write_structural(name, tmp_path / "model.gguf")
    refused = check_gguf(path)
    assert errors(refused) == [code], refused.problems
    assert ENGINE["llama.cpp"] in next(p.message for p in refused.problems if p.code == code)
    newer = check_gguf(path, engine_newer=True)
    assert newer.ok and warnings(newer) == [code], newer.problems


def test_extra_scores_are_a_warning(tmp_path: Path) -> None:
    info = check_gguf(M.write_structural("scores-one-long", tmp_path / "model.gguf"))
    assert info.ok and warnings(info) == [P.VOCAB_INVALID], info.problems


def test_the_issue_messages_name_what_is_wrong(tmp_path: Path) -> None:
    def message(name: str, code: str) -> str:
        info = check_gguf(M.write_structural(name, tmp_path / f"{name}.gguf"))
        return next(p.message for p in info.problems if p.code == code)

    assert "'blk.1.ffn_uq.weight' is not one llama.cpp's llama loader reads" in message("tensor-renamed", P.TENSOR_UNEXPECTED)
    assert "has no tensor 'blk.1.ffn_up.weight'" in message("tensor-renamed", P.TENSOR_MISSING)
    assert "has no llama.embedding_length" in message("embedding-length-renamed", P.HPARAM_MISSING)
    assert "key not found in model: llama.embedding_length" in message("embedding-length-renamed", P.HPARAM_MISSING)
    assert "tokenizer.ggml.scores has 63 entries for 64 tokens" in message("scores-one-short", P.VOCAB_INVALID)
    assert "tokenizer.ggml.bos_token_id is float32, llama.cpp reads it as uint32" in message("bos-id-f32", P.KV_TYPE_MISMATCH)
    assert "block_count is 1 but tensors of block 1 are present" in message("block-count-1", P.BLOCK_COUNT_MISMATCH)
    assert "invalid n_rot: 7, expected 16" in message("rope-dims-7", P.HPARAM_INVALID)
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
    assert "set vocab_only: true on the lane" in stripped.problems[0].message
    declared = check_gguf(tmp_path / "model.gguf", vocab_only=True)
    assert declared.ok and declared.vocab_only and declared.vocab_size == M.N_VOCAB, declared.problems


def test_an_unknown_architecture_gets_the_generic_checks(tmp_path: Path) -> None:
    spec = M.base_spec()
    for i, (k, t, v) in enumerate(spec.kvs):
        spec.kvs[i] = (k.replace("llama.", "newarch."), t, "newarch" if k == "general.architecture" else v)
    M.drop_kv("newarch.block_count")(spec)
    M.rename_tensor("blk.0.attn_q.weight", "blk.0.new_kind_of_tensor.weight")(spec)
    info = check_gguf(M.write(spec, tmp_path / "m.gguf"), engine_newer=True)
    assert warnings(info) == [P.UNKNOWN_ARCHITECTURE]
    assert errors(info) == [P.HPARAM_MISSING]  # block_count; the new tensor name is not judged
    refused = check_gguf(tmp_path / "m.gguf")
    assert errors(refused) == [P.UNKNOWN_ARCHITECTURE]  # llama.cpp stops there
    assert "unknown model architecture: 'newarch'" in refused.problems[0].message


def test_split_model_checks_see_every_part(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "m", n_splits=3, tensors_per_split=4)
    assert [errors(check_gguf(p)) for p in parts] == [[], [], []]
    assert check_gguf_split(parts) == []


def _creates(function: str) -> dict[str, str]:
    """tensor name pattern -> the dims formula of each create_tensor in a program."""
    out: dict[str, str] = {}

    def walk(x: object) -> None:
        if isinstance(x, list) and x:
            if x[0] == "create" and x[1][0] == "tn" and x[1][1][0] == "s":
                suffix = x[1][2][1] if x[1][2] else ""
                out.setdefault(f"{x[1][1][1]}.{suffix}", x[4])
            for y in (x[1:] if isinstance(x[0], str) else x):
                walk(y)

    walk(json.loads(functions()[function]))
    return out


def test_the_architecture_tables() -> None:
    """Generated from llama.cpp's sources; spot checks of what they must say."""
    assert {"llama", "qwen2", "qwen3", "gemma3", "phi3", "gpt-oss", "mistral3", "deepseek2"} <= KNOWN_ARCHITECTURES
    assert ARCH_CLASSES["llama"] == ("llama_model_llama", "llama_model_base")
    assert ENGINE["llama.cpp"].startswith("b") and ENGINE["llama-cpp-python"] == "0.3.36"
    llama = _creates("llama_model_llama::load_arch_tensors")
    assert llama["token_embd.weight"] == "{n_embd, n_vocab}"
    assert llama["blk.%d.ffn_up_exps.weight"] == "{n_embd, n_ff, n_expert}"
    assert _creates("llama_model_phi3::load_arch_tensors")["blk.%d.ffn_up.weight"] == "{n_embd, 2 * n_ff}"  # the fused FFN, from the source
    qkv = _creates("llama_model_base::create_tensor_qkv")
    assert qkv["blk.%d.attn_qkv.weight"] == "{n_embd_, n_embd_qkv}" and qkv["blk.%d.attn_q.weight"] == "{n_embd_, n_embd_q_}"
    assert "llama_model_base::load_hparams" in functions() and "llama_hparams::n_embd_k_gqa" in functions()


def test_the_programs_file_is_one_json_object_that_functions_reads_line_by_line() -> None:
    """gguf_programs.json.gz is plain JSON for any reader; functions() splits its lines rather
    than parse it all, and each text it gives is exactly that function's program."""
    import gzip

    from preflight.formats import gguf_programs

    whole = json.loads(gzip.decompress(Path(gguf_programs.__file__).with_name("gguf_programs.json.gz").read_bytes()))
    assert len(whole) > 400 and {name: json.loads(text) for name, text in functions().items()} == whole


_OPENS_PROGRAMS = """
import sys
opened = []
sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == "open" and a and isinstance(a[0], (str, bytes)) else None)
from preflight.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print("CODE", exc.code, "PROGRAMS", any(p.endswith("gguf_programs.json.gz") for p in opened),
          "EVAL", "preflight.formats.gguf_eval" in sys.modules, file=sys.stderr)
"""


def test_the_programs_are_read_by_a_cold_check_of_a_gguf_and_not_by_a_warm_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    models = tmp_path / "models"
    (models / "gguf").mkdir(parents=True)
    write_gguf(models / "gguf" / "tiny.gguf")
    served = tmp_path / "served.json"
    served.write_text(json.dumps({"version": 1, "models_dir": str(models), "lanes": [{"name": "g", "kind": "gguf", "path": "gguf/tiny.gguf"}]}))

    def check() -> str:
        p = subprocess.run([sys.executable, "-c", _OPENS_PROGRAMS, "check", "-m", str(served), "--termination-log", ""],
                           capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
        return p.stderr.strip().splitlines()[-1]

    assert check() == "CODE 0 PROGRAMS True EVAL True"  # the load path was run over the file
    assert check() == "CODE 0 PROGRAMS False EVAL False"  # the receipts say it is unchanged


def test_real_llama_cpp_vocabulary_files_pass() -> None:
    folder = vocab_dir()
    if folder is None:
        if os.environ.get("CI") == "true":
            pytest.fail("llama.cpp's vocabulary files are missing: run bash ops/oracle-llama.sh")
        pytest.skip("llama.cpp's vocabulary files come with ops/oracle-llama.sh")
    for name, n in (("ggml-vocab-llama-spm.gguf", 32000), ("ggml-vocab-gemma-4.gguf", 262144)):
        info = check_gguf(folder / name)
        assert info.ok and info.problems == [] and info.vocab_only and info.vocab_size == n, info.problems


def test_the_tables_are_what_llama_cpp_s_source_gives() -> None:
    """gguf_arch.py and gguf_programs.py regenerate identically from the sdist the oracle builds."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    cache = Path(os.environ.get("PREFLIGHT_WHEEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lane-preflight" / "wheels")
    if not (cache / f"llama_cpp_python-{ENGINE['llama-cpp-python']}.tar.gz").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("the llama-cpp-python sdist is missing: run bash ops/oracle-llama.sh")
        pytest.skip("the llama-cpp-python sdist comes with ops/oracle-llama.sh")
    out = subprocess.run([sys.executable, str(repo / "ops" / "gen-gguf-arch.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_declared_engine_version_is_told_newer_or_not() -> None:
    from preflight.formats.gguf_model import engine_is_newer

    build = int(ENGINE["llama.cpp"][1:])
    assert engine_is_newer(f"b{build + 1}") and engine_is_newer(str(build + 100)) and engine_is_newer("0.3.40")
    assert not engine_is_newer(f"b{build}") and not engine_is_newer("b6000") and not engine_is_newer("0.3.36")
    assert not engine_is_newer(None) and not engine_is_newer("latest") and not engine_is_newer("server-cuda")


def test_the_ggml_type_table_is_the_tables_llama_cpp_s() -> None:
    """gguf.GGML_TYPES (kept by hand beside the gguf package's table) ends where ggml's enum of the
    tables' llama.cpp does: a type it does not know is refused as that llama.cpp refuses it."""
    from preflight.formats.gguf import GGML_TYPES
    from preflight.formats.gguf_arch import GGML_TYPE_COUNT

    assert max(GGML_TYPES) + 1 == GGML_TYPE_COUNT


def test_a_lane_that_declares_a_newer_llama_cpp_gets_warnings_for_what_these_tables_do_not_know(tmp_path: Path) -> None:
    """The target engine is explicit: an architecture this llama.cpp does not know is
    refused, unless the lane's `serve:` names a newer llama.cpp (then a warning)."""
    from click.testing import CliRunner

    from preflight.cli import main

    spec = M.base_spec()
    for i, (k, t, v) in enumerate(spec.kvs):
        spec.kvs[i] = (k.replace("llama.", "newarch."), t, "newarch" if k == "general.architecture" else v)
    models = tmp_path / "models"
    models.mkdir()
    M.write(spec, models / "m.gguf")

    def check(serve: str) -> tuple[int, list[dict]]:
        (tmp_path / "m.yaml").write_text(f"version: 1\nlanes:\n  - {{name: m, kind: gguf, path: m.gguf{serve}}}\n")
        r = CliRunner().invoke(main, ["check", "-m", str(tmp_path / "m.yaml"), "-d", str(models), "--json", "--termination-log", ""])
        doc = json.loads(r.stdout)
        return r.exit_code, doc["lanes"][0]["problems"]

    code, problems = check("")
    assert code == 1 and [p["code"] for p in problems if p.get("severity", "error") == "error"] == [P.UNKNOWN_ARCHITECTURE]
    code, problems = check(f", serve: {{engine: llama.cpp, version: b{int(ENGINE['llama.cpp'].removeprefix('b')) + 1000}}}")
    unknown = [p for p in problems if p["code"] == P.UNKNOWN_ARCHITECTURE]
    assert unknown and unknown[0]["severity"] == "warning" and "newer llama.cpp" in unknown[0]["message"]
    assert not [p for p in problems if p.get("severity", "error") == "error" and p["code"] == P.UNKNOWN_ARCHITECTURE]
