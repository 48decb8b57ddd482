"""No false alarm across the architectures llama.cpp knows: a sweep over files built from what
each loader asks for (tests/gguf_autobuild.py), judged by llama.cpp (load, context, one decoded
token). preflight must pass every one llama.cpp accepts, and its evaluator must never fault.

The families campaign (test_gguf_families.py) holds refusals to account; here a file llama.cpp
refuses is informative only (the builder picks small values that some architectures do not
take), and is listed with -s.

Needs llama-cpp-python (bash ops/oracle-llama.sh); skipped without it, except under CI=true.
"""

from __future__ import annotations

from preflight.formats import gguf_eval
from preflight.formats.gguf import check_gguf
from preflight.formats.gguf_arch import ARCH_CLASSES
from tests import gguf_autobuild as B
from tests import gguf_mutants as M
from tests.gguf_oracle import judge, require

require()

MIN_BUILT = 95  # of the 151 architectures with a loader (the rest need values the builder does not guess)
MIN_LOADED = 75


def test_no_architecture_llama_cpp_loads_is_refused(tmp_path, monkeypatch) -> None:
    faults: list[str] = []
    run = gguf_eval.run

    def watched(*args, **kw):  # every run of the evaluator, the checks' own included
        out = run(*args, **kw)
        if out.fault:
            faults.append(f"{args[0]}: {out.fault}")
        return out

    monkeypatch.setattr(gguf_eval, "run", watched)
    built, skipped = [], []
    for arch in sorted(ARCH_CLASSES):
        spec, why = B.build(arch)
        if spec is None:
            skipped.append((arch, why))
            continue
        built.append((arch, M.write(spec, tmp_path / f"{arch}.gguf")))
    verdicts = judge([(str(p), "decode") for _, p in built])
    false_alarms, refused = [], []
    for (arch, path), v in zip(built, verdicts):
        info = check_gguf(path)
        if v.ok and not info.ok:
            false_alarms.append((arch, [p.message for p in info.problems if p.is_error]))
        if not v.ok:
            refused.append((arch, v.stage, "preflight refuses it too" if not info.ok else "preflight passes it", v.reason[-120:]))
    print(f"\n{len(built)} architectures built, {sum(v.ok for v in verdicts)} loaded and decoded by llama.cpp; "
          f"{len(skipped)} not built")
    for row in refused:
        print("  llama.cpp refuses", *row)
    assert not faults, faults
    assert not false_alarms, "\n".join(map(str, false_alarms))
    assert len(built) >= MIN_BUILT and sum(v.ok for v in verdicts) >= MIN_LOADED
