"""Hostile manifests are refused with exit 2 and a located message, in bounded memory and CPU time.

Each case is loaded by load_manifest in a child process that reports its own peak RSS
(VmHWM) and CPU time (not wall time: the suite runs on a loaded machine)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from preflight.cli import main
from preflight.errors import ManifestErrors
from preflight.manifest import MAX_LANES, load_manifest
from preflight.yamlloc import MAX_BYTES, MAX_DEPTH, MAX_STRING, MAX_VALUES

RSS_LIMIT_MB = 100
CPU_LIMIT_S = 5.0  # every case takes well under a second alone; generous for a loaded 2-core machine

LANE = "  - {name: a, kind: file, path: a.bin}\n"
HEAD = "version: 1\n"


def _laughs() -> str:
    lines = [HEAD + "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = "a" if i == 1 else f"l{i - 1}"
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\nlanes:\n" + LANE


def _lanes(n: int, same_folder: bool = False) -> str:
    """n valid lanes (file lanes with a Hub source and digest), or n folder lanes that all claim one folder."""
    out = [HEAD, "lanes:\n"]
    for i in range(n):
        if same_folder:
            out.append(f"  - {{name: l{i}, kind: hf-dir, path: shared}}\n")
        else:
            out.append(f"  - {{name: l{i}, kind: file, path: d{i % 97}/f{i}.bin, source: hf://org/r{i}@main, sha256: {'a%063x' % i}}}\n")
    return "".join(out)


# name → (manifest text, or None for a sparse 50 MB file; environment; expected message fragment or None when it loads)
CASES: dict[str, tuple[str | None, dict[str, tuple[str, int]], str | None]] = {
    "50MB-file": (None, {}, f"larger than {MAX_BYTES >> 20} MiB"),
    "dollar-string-40k-aliases": (HEAD + "big: &s \"" + "$$" * 30_000 + "\"\nrefs: [" + ", ".join(["*s"] * 40_000) + "]\nlanes:\n" + LANE,
                                  {}, "of text (anchors, aliases or variables expand too far)"),
    "billion-laughs": (_laughs(), {}, "aliases expand too far"),
    "variable-blowup": (HEAD + "models_dir: \"" + "${X}" * 16_000 + "\"\nlanes:\n" + LANE, {"X": ("y", 100_000)},
                        f"longer than {MAX_STRING} characters once variables are expanded"),
    "huge-env-models-dir": (HEAD + "models_dir: ${BIG}\nlanes:\n" + LANE, {"BIG": ("m", 50 << 20)}, "once variables are expanded"),
    "2M-values-flow": (HEAD + "x: [" + "1," * ((MAX_BYTES - 40) // 2) + "1]\n", {}, f"more than {MAX_VALUES} values"),
    "1M-values-block": (HEAD + "x:\n" + "- 1\n" * ((MAX_BYTES - 40) // 4), {}, f"more than {MAX_VALUES} values"),
    "400k-keys": (HEAD + "".join(f"k{i}: 1\n" for i in range(MAX_BYTES // 11)), {}, f"more than {MAX_VALUES} values"),
    "deep-nesting": (HEAD + "x: " + "[" * 200_000 + "]" * 200_000 + "\n", {}, f"nested more than {MAX_DEPTH} levels deep"),
    "deep-nesting-mappings": (HEAD + "x: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n", {}, f"nested more than {MAX_DEPTH} levels deep"),
    "deep-nesting-block": (HEAD + "x:\n" + "".join("  " * i + "- \n" for i in range(1, 2000)), {}, f"nested more than {MAX_DEPTH} levels deep"),
    "deep-aliases": (HEAD + "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n", {}, "levels deep"),
    "long-key": (HEAD + "? " + "k" * (MAX_STRING + 1) + "\n: 1\n", {}, "a key longer than"),
    "long-value": (HEAD + "models_dir: " + "m" * (MAX_STRING + 1) + "\n", {}, "a value longer than"),
    "long-models-dir": (HEAD + "models_dir: /" + "m/" * 2100 + "\nlanes:\n" + LANE, {}, "models_dir '/m/m"),
    "too-many-lanes": (_lanes(MAX_LANES + 1), {}, f"at most {MAX_LANES} in one manifest"),
    "10k-lanes-in-one-folder": (_lanes(MAX_LANES, same_folder=True), {}, "overlap"),
    "10k-valid-lanes": (_lanes(MAX_LANES), {}, None),
}

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from preflight.errors import ManifestError
    from preflight.manifest import load_manifest

    def peak_rss_mb():
        # VmHWM: this process's own peak. ru_maxrss is not: Linux carries the parent's peak
        # at fork across execve, so a child of a big pytest process would report pytest's size.
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out = []
    for path, env in json.loads(sys.stdin.read()):
        env = {k: ch * n for k, (ch, n) in env.items()}
        t0 = time.process_time()
        try:
            m = load_manifest(path, env=env)
            result = {"lanes": len(m.lanes)}
        except ManifestError as exc:
            result = {"error": str(exc)[:2000], "length": len(str(exc)), "exit_code": int(exc.exit_code), "file": exc.file, "line": exc.line}
        result["cpu_s"] = time.process_time() - t0
        result["rss_mb"] = peak_rss_mb()
        out.append(result)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, dict]:
    """Every case loaded once, in one child process (peak RSS is cumulative, so each case stays under it)."""
    root = tmp_path_factory.mktemp("hostile")
    specs = []
    for name, (text, env, _fragment) in CASES.items():
        p = root / f"{name}.yaml"
        if text is None:
            with open(p, "wb") as f:
                f.truncate(50 << 20)
        else:
            p.write_text(text)
        specs.append((str(p), env))
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(specs), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return dict(zip(CASES, json.loads(proc.stdout)))


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_manifest_is_refused_in_bounded_memory_and_cpu(measured: dict[str, dict], name: str) -> None:
    fragment = CASES[name][2]
    result = measured[name]
    if fragment is None:
        assert result.get("lanes") == MAX_LANES, result
    else:
        assert result.get("exit_code") == 2, result
        assert fragment in result["error"], result["error"][:500]
        assert result["error"].startswith(result["file"]), result["error"][:200]
        assert name in ("50MB-file",) or result["line"], result["error"][:200]  # located: file and line
        assert result["length"] < 8000  # values are quoted cut short, at most 21 errors are listed
    assert result["cpu_s"] < CPU_LIMIT_S, result
    assert result["rss_mb"] < RSS_LIMIT_MB, result


def test_every_overlap_is_reported_in_one_error(tmp_path: Path) -> None:
    """The overlap check is sorted, not pairwise: every conflict, reported in one error."""
    p = tmp_path / "m.yaml"
    p.write_text(_lanes(2000, same_folder=True))
    with pytest.raises(ManifestErrors) as info:
        load_manifest(p, env={})
    exc = info.value
    assert len(exc.errors) == 1999
    assert str(exc).startswith(f"{p}:4: lanes[1].path: lanes 'l0' and 'l1' overlap")
    assert "… and 1978 more" in str(exc)


def test_a_50MB_manifest_is_exit_2_through_the_cli(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    with open(p, "wb") as f:
        f.truncate(50 << 20)
    r = CliRunner().invoke(main, ["check", "-m", str(p), "-d", str(tmp_path), "--termination-log", ""], env={})
    assert r.exit_code == 2
    assert r.stderr.startswith(f"preflight: error: {p}: the manifest is larger than 4 MiB")


def test_a_manifest_just_under_the_size_limit_loads(tmp_path: Path) -> None:
    body = HEAD + "lanes:\n" + LANE
    p = tmp_path / "m.yaml"
    p.write_text(body + "#" * (MAX_BYTES - len(body) - 1) + "\n")
    assert p.stat().st_size == MAX_BYTES
    assert [lane.name for lane in load_manifest(p, env={}).lanes] == ["a"]
