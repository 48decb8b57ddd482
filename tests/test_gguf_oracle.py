"""preflight's GGUF verdicts against llama.cpp's own loader (tests/gguf_oracle.py).

A mutation campaign with fixed seeds over two bases: a tiny `llama` model written by
gguf.GGUFWriter that llama.cpp loads, and llama.cpp's own 32k vocabulary file
(ggml-vocab-llama-spm.gguf from the llama-cpp-python sdist, kept by ops/oracle-llama.sh).
Mutants: structural edits (the defects of the issue list), truncations, and bit flips in
each header region. Every mutant is judged by both; a disagreement fails the test unless
EXPLAINED lists its reason. The figures are in docs/oracle-gguf.md.

Needs llama-cpp-python (bash ops/oracle-llama.sh); skipped without it, except under CI=true.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.formats.gguf import check_gguf
from tests import gguf_mutants as M
from tests.gguf_oracle import Verdict, judge, require, tally, vocab_dir

require()

SEED = 20260511

# (class, mutant name) -> why preflight and llama.cpp disagree on it. None today: the names this
# llama.cpp does not know (an architecture, a tokenizer, ggml type 43) are refused as it refuses
# them, and a tensor its loader creates only under a condition that does not hold (the expert
# router of a model without experts) is found by running the loader.
EXPLAINED: dict[tuple[str, str], str] = {}


@dataclass
class Mutant:
    cls: str
    name: str
    path: Path
    mode: str  # "model" or "vocab"


@dataclass
class Outcome:
    mutant: Mutant
    ours: bool
    codes: list[str]
    warnings: list[str]
    theirs: Verdict


def _model_mutants(folder: Path, rng: random.Random) -> list[Mutant]:
    out = []
    for name in M.STRUCTURAL:
        path = M.write_structural(name, folder / f"m-{name}.gguf")
        out.append(Mutant("structural", name, path, "model"))
    base = M.write(M.base_spec(), folder / "m-base.gguf")
    data = base.read_bytes()
    regions = M.regions(base)
    counts = {"fixed": 16, "kv": 60, "tensor-info": 50, "padding": 4, "data": 6}
    for region, n in counts.items():
        if region in regions:
            for i, blob in enumerate(M.flips(data, regions[region], n, rng)):
                p = folder / f"m-flip-{region}-{i}.gguf"
                p.write_bytes(blob)
                out.append(Mutant(f"model flip: {region}", f"{region}-{i}", p, "model"))
    header_end = regions["tensor-info"][1]
    for i, blob in enumerate([*M.cuts(data, (0, header_end), 20, rng), *M.cuts(data, (header_end, len(data)), 10, rng)]):
        p = folder / f"m-cut-{i}.gguf"
        p.write_bytes(blob)
        out.append(Mutant("model truncation", f"cut-{len(blob)}", p, "model"))
    return out


def _vocab_mutants(folder: Path, real: Path, rng: random.Random) -> list[Mutant]:
    base = folder / "ggml-vocab-base.gguf"
    shutil.copy(real, base)
    out = [Mutant("real vocab", "unchanged", base, "vocab")]
    data = base.read_bytes()
    regions = M.regions(base)
    # The vocabulary arrays fill most of the key/values; the first 2 KB hold the other keys.
    kv_lo, kv_hi = regions["kv"]
    parts = {"fixed": (regions["fixed"], 12), "kv-head": ((kv_lo, min(kv_hi, kv_lo + 2048)), 40), "kv-arrays": ((kv_lo + 2048, kv_hi), 30)}
    for region, (span, n) in parts.items():
        for i, blob in enumerate(M.flips(data, span, n, rng)):
            p = folder / f"ggml-vocab-flip-{region}-{i}.gguf"
            p.write_bytes(blob)
            out.append(Mutant(f"real vocab flip: {region}", f"{region}-{i}", p, "vocab"))
    for i, blob in enumerate(M.cuts(data, (0, len(data)), 16, rng)):
        p = folder / f"ggml-vocab-cut-{i}.gguf"
        p.write_bytes(blob)
        out.append(Mutant("real vocab truncation", f"cut-{len(blob)}", p, "vocab"))
    return out


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    folder = tmp_path_factory.mktemp("oracle")
    rng = random.Random(SEED)
    mutants = _model_mutants(folder, rng)
    real = vocab_dir()
    if real is None:
        if os.environ.get("CI") == "true":
            pytest.fail("llama.cpp's vocabulary GGUFs are missing: run bash ops/oracle-llama.sh", pytrace=False)
    else:
        mutants += _vocab_mutants(folder, real / "ggml-vocab-llama-spm.gguf", rng)
    verdicts = judge([(str(m.path), m.mode) for m in mutants])
    outcomes = []
    for m, v in zip(mutants, verdicts):
        info = check_gguf(m.path)
        outcomes.append(Outcome(m, info.ok, [p.code for p in info.problems if p.is_error],
                                [p.code for p in info.problems if not p.is_error], v))
    return outcomes


def test_the_unchanged_files_load_in_llama_cpp(campaign: list[Outcome]) -> None:
    for o in campaign:
        if o.mutant.name == "unchanged":
            assert o.theirs.ok and o.ours, (o.mutant.cls, o.theirs, o.codes)


def test_every_mutant_is_judged_alike_unless_the_difference_is_explained(campaign: list[Outcome]) -> None:
    rows: dict[str, Counter[str]] = {}
    disagreements = []
    for o in campaign:
        c = rows.setdefault(o.mutant.cls, Counter())
        c["mutants"] += 1
        c["llama.cpp refuses"] += not o.theirs.ok
        c["llama.cpp aborts"] += o.theirs.reason.startswith("abort")
        if tally(c, o.ours, o.theirs.ok, (o.mutant.cls, o.mutant.name) in EXPLAINED):
            disagreements.append((o.mutant.cls, o.mutant.name, "preflight", o.ours, o.codes, "llama.cpp", o.theirs))
    print("\n| class | mutants | llama.cpp refuses (aborts) | agree | explained | false OK | false alarm |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for cls, c in rows.items():
        print(f"| {cls} | {c['mutants']} | {c['llama.cpp refuses']} ({c['llama.cpp aborts']}) | {c['agree']} | {c['explained']} | {c['false OK']} | {c['false alarm']} |")
    assert not disagreements, "\n".join(map(str, disagreements))


def test_each_structural_defect_is_refused_with_its_code(campaign: list[Outcome]) -> None:
    """The issue's list, each with the code a user reads."""
    by_name = {o.mutant.name: o for o in campaign if o.mutant.cls == "structural"}
    for name, code in M.EXPECTED_CODES.items():
        assert code in by_name[name].codes, (name, by_name[name].codes)
    assert by_name["q2_0-type-42"].ours and by_name["q2_0-type-42"].theirs.ok
    newer = check_gguf(by_name["type-43-newer"].mutant.path, engine_newer=True)  # a lane that runs a newer llama.cpp
    assert newer.ok and [p.code for p in newer.problems] == [P.UNKNOWN_TENSOR_TYPE]
