"""What llama.cpp derives from a model's hyper-parameters, judged by llama.cpp itself.

Eight families of tiny valid models (tests/gguf_families.py: llama, qwen2, qwen3, gemma, phi3
with its fused feed-forward, qwen2moe and llama with experts; SPM and GPT-2 BPE vocabularies)
and their mutants: each hyper-parameter the loaders' shape formulas read (changed with the
tensors kept, or with the tensors rebuilt to match so only llama.cpp's asserts and graph can
refuse it), each dimension of each tensor, each tensor dropped, the tokenizer's names and
arrays, a ggml type past llama.cpp's table; plus every vocabulary file llama.cpp ships. llama.cpp loads each file, creates
a context and decodes one token (tests/gguf_oracle.py); preflight checks it. A disagreement fails
the test unless EXPLAINED gives its reason. The figures are in docs/oracle-gguf.md.

Needs llama-cpp-python (bash ops/oracle-llama.sh); skipped without it, except under CI=true.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.formats import gguf_eval
from preflight.formats.gguf import check_gguf
from preflight.formats.gguf_arch import ENGINE
from tests import gguf_families as F
from tests import gguf_mutants as M
from tests.gguf_oracle import Verdict, judge, require, tally, vocab_dir

require()

# (family, mutant name) -> why preflight and llama.cpp disagree on it. None today.
EXPLAINED: dict[tuple[str, str], str] = {}
N_VOCAB_FILES = 19  # vendor/llama.cpp/models/ggml-vocab-*.gguf in llama-cpp-python 0.3.36


@dataclass
class Case:
    family: str
    kind: str
    name: str
    path: Path
    mode: str
    expect_ok: bool | None


@dataclass
class Outcome:
    case: Case
    ours: bool
    errors: list[P.Problem]
    theirs: Verdict

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.errors]


def _vocab_files() -> list[Path]:
    folder = vocab_dir()
    files = sorted(folder.glob("ggml-vocab-*.gguf")) if folder is not None else []
    if len(files) < N_VOCAB_FILES:
        if os.environ.get("CI") == "true":
            pytest.fail("llama.cpp's vocabulary files are missing: run bash ops/oracle-llama.sh", pytrace=False)
        pytest.skip("llama.cpp's vocabulary files come with ops/oracle-llama.sh")
    return files


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    folder = tmp_path_factory.mktemp("families")
    cases: list[Case] = []
    for family, base in F.FAMILIES.items():
        for i, mu in enumerate(F.mutants(base)):
            path = M.write(mu.spec, folder / f"{family}-{i:03d}.gguf")
            cases.append(Case(family, mu.kind, mu.name, path, mu.mode, mu.expect_ok))
    for path in _vocab_files():
        cases.append(Case("llama.cpp vocabulary files", "good", path.name, path, "vocab", True))
    verdicts = judge([(str(c.path), c.mode) for c in cases])
    outcomes = []
    run = gguf_eval.run
    with pytest.MonkeyPatch.context() as mp:
        def watched(*args, **kw):  # the evaluator never faults on these files
            out = run(*args, **kw)
            assert out.fault is None, (args[0], out.fault)
            return out

        mp.setattr(gguf_eval, "run", watched)
        for c, v in zip(cases, verdicts):
            info = check_gguf(c.path)
            outcomes.append(Outcome(c, info.ok, [p for p in info.problems if p.is_error], v))
    return outcomes


def test_every_good_variant_and_vocabulary_file_loads_and_passes(campaign: list[Outcome]) -> None:
    good = [o for o in campaign if o.case.kind == "good"]
    assert len([o for o in good if o.case.mode == "vocab"]) == N_VOCAB_FILES
    bad = [(o.case.family, o.case.name, o.theirs, o.codes) for o in good if not (o.theirs.ok and o.ours)]
    assert not bad, "\n".join(map(str, bad))


def test_the_campaign_is_what_it_says(campaign: list[Outcome]) -> None:
    """Mutants built to load do, those built to be refused are (by llama.cpp): the campaign tests what it claims."""
    wrong = [(o.case.family, o.case.name, o.case.expect_ok, o.theirs) for o in campaign
             if o.case.expect_ok is not None and o.case.expect_ok != o.theirs.ok]
    assert not wrong, "\n".join(map(str, wrong))
    by_kind = Counter((o.case.kind, o.theirs.stage) for o in campaign)
    assert by_kind[("hparam", "load")] and by_kind[("hparam-rebuilt", "decode")] and by_kind[("dim", "load")] and by_kind[("drop", "load")]


def test_every_file_is_judged_as_llama_cpp_judges_it(campaign: list[Outcome]) -> None:
    rows: dict[str, Counter[str]] = {}
    disagreements = []
    for o in campaign:
        c = rows.setdefault(o.case.family, Counter())
        c["files"] += 1
        c["refused at load"] += o.theirs.stage in ("parse", "load")
        c["refused at decode"] += o.theirs.stage == "decode"
        c["aborts"] += o.theirs.reason.startswith("abort")
        if tally(c, o.ours, o.theirs.ok, (o.case.family, o.case.name) in EXPLAINED):
            disagreements.append((o.case.family, o.case.kind, o.case.name, "preflight", o.ours, o.codes, "llama.cpp", o.theirs))
    print(f"\nllama.cpp {ENGINE['llama.cpp']} (llama-cpp-python {ENGINE['llama-cpp-python']}): load, context, one decoded token")
    print("| family | files | refused at load | refused at decode (aborts) | agree | false OK | false alarm |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    total: Counter[str] = Counter()
    for family, c in rows.items():
        total.update(c)
        print(f"| {family} | {c['files']} | {c['refused at load']} | {c['refused at decode']} ({c['aborts']}) | {c['agree']} | {c['false OK']} | {c['false alarm']} |")
    print(f"| all | {total['files']} | {total['refused at load']} | {total['refused at decode']} ({total['aborts']}) | {total['agree']} | {total['false OK']} | {total['false alarm']} |")
    assert not disagreements, "\n".join(map(str, disagreements))


def _outcome(campaign: list[Outcome], family: str, name: str) -> Outcome:
    return next(o for o in campaign if o.case.family == family and o.case.name == name)


def _said(o: Outcome, code: str) -> str:
    return next(p.message for p in o.errors if p.code == code)


def test_refusals_say_what_llama_cpp_says(campaign: list[Outcome]) -> None:
    """Each kind of refusal with its code and the engine's own words."""
    o = _outcome(campaign, "phi3-spm", "blk.0.ffn_up.weight[0]x2")  # the fused gate+up of phi3: 2 * n_ff rows
    assert "(\"tensor 'blk.0.ffn_up.weight' has wrong shape\"): expected [64, 192] = {n_embd, 2 * n_ff}, got [64, 384]" in _said(o, P.BAD_SHAPE)
    o = _outcome(campaign, "qwen2-bpe", "head-count-kv-3")
    assert "tensor 'blk.0.attn_k.weight' has wrong shape" in _said(o, P.BAD_SHAPE)
    o = _outcome(campaign, "llama-spm", "rope-scaling-unknown")
    assert o.theirs.reason.startswith("abort") and "GGML_ASSERT(hparams.rope_scaling_type_train != LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED)" in _said(o, P.HPARAM_INVALID)
    o = _outcome(campaign, "llama-moe-spm", "expert-used-5")
    assert "GGML_ASSERT(n_expert_used_max <= hparams.n_expert) failed (n_expert_used_max = 5, n_expert = 4)" in _said(o, P.HPARAM_INVALID)
    o = _outcome(campaign, "qwen3-bpe", "kv-heads-3")
    assert o.theirs.stage == "decode" and "ggml_can_mul_mat(k, q)" in _said(o, P.HPARAM_INVALID) and "first graph" in _said(o, P.HPARAM_INVALID)
    o = _outcome(campaign, "gemma-spm", "rope-dims-x2")
    assert o.theirs.stage == "decode" and "n_dims <= ne0" in _said(o, P.HPARAM_INVALID)
    o = _outcome(campaign, "phi3-spm", "key-length-x2")
    assert "GGML_ASSERT(n_embd_head == hparams.n_embd_head_k()) failed (n_embd_head = 16, n_embd_head_k() = 32)" in _said(o, P.HPARAM_INVALID)
    o = _outcome(campaign, "qwen2-bpe", "pre-tokenizer-unknown")
    assert "unknown pre-tokenizer type: 'gpt-9'" in _said(o, P.VOCAB_INVALID)
    o = _outcome(campaign, "llama-spm", "name-phi3-without-endoftext")
    assert "'<|endoftext|>'" in _said(o, P.VOCAB_INVALID)
    o = _outcome(campaign, "llama-bpe", "type-43")
    assert ENGINE["llama.cpp"] in _said(o, P.UNKNOWN_TENSOR_TYPE)
    o = _outcome(campaign, "llama-spm", "head-count-0")
    assert not o.theirs.ok and o.errors
