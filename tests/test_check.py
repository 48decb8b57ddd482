"""`preflight check` on real volumes: ready lanes, every problem code a volume can show,
receipts, state folders, Hugging Face cache lanes, the report and termination log."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from preflight.cli import main
from tests.builders import patch_bytes, truncate
from tests.hubserver import git_blob_sha1
from tests.repos import adapter, gguf_file, gguf_split, hf_model, write_tree

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@dataclass
class Run:
    code: int
    stderr: str
    report: dict

    def lane(self, name: str) -> dict:
        return next(lane for lane in self.report["lanes"] if lane["name"] == name)

    def codes(self, name: str) -> list[str]:
        return [p["code"] for p in self.lane(name)["problems"]]


class Volume:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.models.mkdir()
        self.manifest = root / "lanes.yaml"

    def lanes(self, text: str) -> Volume:
        self.manifest.write_text("version: 1\nlanes:\n" + textwrap.indent(textwrap.dedent(text).strip("\n"), "  ") + "\n")
        return self

    def put(self, folder: str, files: dict[str, bytes]) -> Path:
        return write_tree(self.models / folder, files)

    def check(self, *args: str, env: dict[str, str] | None = None) -> Run:
        result = CliRunner().invoke(main, ["check", "-m", str(self.manifest), "-d", str(self.models), "--json", "--termination-log", "", *args], env=env or {})
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output and "internal error" not in result.output, result.output
        report = json.loads(result.stdout)  # every exit prints the report, usage and manifest errors too
        assert report["exit_code"] == result.exit_code
        if result.exit_code == 2:
            assert report["status"] == "not-ready" and report["reason"]
            return Run(2, result.stderr, report)
        assert report["exit_code"] == result.exit_code
        return Run(result.exit_code, result.stderr, report)


@pytest.fixture()
def vol(tmp_path: Path) -> Volume:
    return Volume(tmp_path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


HF = "- {name: tiny, kind: hf-dir, path: vllm/tiny}"


# ------------------------------------------------------------------------ ready volumes

def test_every_kind_ready_is_exit_0(vol: Volume) -> None:
    vol.put("vllm/tiny", hf_model())
    vol.put("vllm/sharded", hf_model(sharded=True))
    vol.put("gguf", {**gguf_file("tiny.Q8_0.gguf"), **gguf_split("big", 3)})
    vol.put("lora/org1", adapter())
    blob = b"plain bytes\n"
    vol.put("misc", {"notes.txt": blob})
    vol.lanes(f"""
        {HF}
        - {{name: sharded, kind: hf-dir, path: vllm/sharded}}
        - {{name: one-gguf, kind: gguf, path: gguf/tiny.Q8_0.gguf}}
        - {{name: split-gguf, kind: gguf, path: gguf/big-00001-of-00003.gguf}}
        - {{name: lora, kind: adapter, path: lora/org1, base: tiny}}
        - name: notes
          kind: file
          path: misc/notes.txt
          sha256: {sha256(blob)}
          size: {len(blob)}
    """)
    r = vol.check()
    assert r.code == 0, r.stderr
    assert r.report["status"] == "ready"
    assert {lane["name"]: lane["status"] for lane in r.report["lanes"]} == dict.fromkeys(
        ["tiny", "sharded", "one-gguf", "split-gguf", "lora", "notes"], "ready")
    assert r.lane("split-gguf")["files"] == 3 and r.lane("sharded")["files"] >= 6
    assert r.lane("notes")["hashed_bytes"] == len(blob)
    lines = r.stderr.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == 6
    assert lines[-1].startswith("preflight check: ready (6 lanes")
    assert (vol.models / ".preflight" / "receipts.json").is_file()


def test_missing_lane(vol: Volume) -> None:
    vol.lanes(HF + "\n- {name: gg, kind: gguf, path: gguf/x.gguf}")
    r = vol.check()
    assert r.code == 1 and r.report["status"] == "not-ready"
    assert r.lane("tiny")["status"] == "missing" and r.codes("tiny") == ["missing"]
    assert r.lane("gg")["status"] == "missing" and r.codes("gg") == ["missing"]
    assert "MISS tiny" in r.stderr and "NOT READY (exit 1)" in r.stderr


# ------------------------------------------------------------------------ one problem code each

def test_a_gguf_that_is_only_a_vocabulary_is_ready_when_the_lane_says_so(vol: Volume, tmp_path: Path) -> None:
    """A GGUF without tensors but with a model's hyper-parameters (llama.cpp's vocabulary files,
    renamed) is a model without weights unless the lane declares `vocab_only: true`."""
    from tests import gguf_mutants as M

    data = M.write_structural("no-tensors", tmp_path / "v.gguf").read_bytes()
    vol.put("gguf", {"tokenizer.gguf": data})
    vol.lanes("- {name: vocab, kind: gguf, path: gguf/tokenizer.gguf}")
    run = vol.check()
    assert run.code == 1 and run.codes("vocab") == ["weights-missing"]
    assert "set vocab_only: true on the lane" in run.lane("vocab")["problems"][0]["message"]
    vol.lanes("- {name: vocab, kind: gguf, path: gguf/tokenizer.gguf, vocab_only: true}")
    assert vol.check().code == 0
    vol.lanes("- {name: vocab, kind: gguf, path: gguf/tokenizer.gguf}")  # the receipts do not keep the verdict of another setting
    assert vol.check().code == 1


def _hf(vol: Volume, **kw) -> Path:
    root = vol.put("vllm/tiny", hf_model(**kw))
    vol.lanes(HF)
    return root


def _break_truncated(vol: Volume) -> str:
    truncate(_hf(vol) / "model.safetensors", by=10)
    return "truncated"


def _break_shard_missing(vol: Volume) -> str:
    (_hf(vol, sharded=True) / "model-00002-of-00003.safetensors").unlink()
    return "shard-missing"


def _break_index_mismatch(vol: Volume) -> str:
    root = _hf(vol, sharded=True)
    index = json.loads((root / "model.safetensors.index.json").read_text())
    index["weight_map"].pop(next(iter(index["weight_map"])))  # a shard holds a tensor the index does not list
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return "index-mismatch"


def _break_config_invalid(vol: Volume) -> str:
    (_hf(vol) / "config.json").write_text("[1, 2]")
    return "config-invalid"


def _break_config_not_json(vol: Volume) -> str:
    (_hf(vol) / "config.json").write_text("{architectures: ")
    return "config-invalid"


def _break_tokenizer_missing(vol: Volume) -> str:
    (_hf(vol) / "tokenizer.json").unlink()
    return "tokenizer-missing"


def _break_weights_missing(vol: Volume) -> str:
    (_hf(vol) / "model.safetensors").unlink()
    return "weights-missing"


def _break_unsafe_pickle(vol: Volume) -> str:
    (_hf(vol) / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    return "unsafe-pickle"


def _break_header(vol: Volume) -> str:
    patch_bytes(_hf(vol) / "model.safetensors", 8, b"[")
    return "header-invalid"


def _break_checksum_sha256(vol: Volume) -> str:
    root = vol.put("vllm/tiny", hf_model())
    good = sha256((root / "config.json").read_bytes())
    vol.lanes(f"""
        - name: tiny
          kind: hf-dir
          path: vllm/tiny
          files: {{config.json: {{sha256: {good}}}}}
    """)
    (root / "config.json").write_text(json.dumps({**json.loads((root / "config.json").read_text()), "vocab_size": 33}))
    return "checksum-mismatch"


def _break_checksum_sha1(vol: Volume) -> str:
    root = vol.put("vllm/tiny", hf_model())
    good = git_blob_sha1((root / "tokenizer.json").read_bytes())
    vol.lanes(f"""
        - name: tiny
          kind: hf-dir
          path: vllm/tiny
          files: {{tokenizer.json: {{sha1: {good}}}}}
    """)
    data = (root / "tokenizer.json").read_bytes()
    (root / "tokenizer.json").write_bytes(data.replace(b"t1", b"t9", 1))
    return "checksum-mismatch"


def _break_size_mismatch(vol: Volume) -> str:
    data = gguf_file("m.gguf")["m.gguf"]
    vol.put("gguf", {"m.gguf": data})
    vol.lanes(f"- {{name: tiny, kind: gguf, path: gguf/m.gguf, size: {len(data) + 1}}}")
    return "size-mismatch"


def _break_missing_file(vol: Volume) -> str:
    root = vol.put("vllm/tiny", hf_model())
    vol.lanes("""
        - name: tiny
          kind: hf-dir
          path: vllm/tiny
          files: {special_tokens_map.json: {size: 2}}
    """)
    assert root.is_dir()
    return "missing"


def _break_empty(vol: Volume) -> str:
    vol.put("w", {"model.safetensors": b""})
    vol.lanes("- {name: tiny, kind: file, path: w/model.safetensors}")
    return "empty-file"


def _break_bad_magic(vol: Volume) -> str:
    root = vol.put("gguf", gguf_file("m.gguf"))
    patch_bytes(root / "m.gguf", 0, b"GGML")
    vol.lanes("- {name: tiny, kind: gguf, path: gguf/m.gguf}")
    return "bad-magic"


def _break_split_missing(vol: Volume) -> str:
    root = vol.put("gguf", gguf_split("big", 3))
    (root / "big-00003-of-00003.gguf").unlink()
    vol.lanes("- {name: tiny, kind: gguf, path: gguf/big-00001-of-00003.gguf}")
    return "split-missing"


EVIL_PICKLE = b"cos\nsystem\n(S'echo owned'\ntR."


def _break_dangerous_pickle(vol: Volume) -> str:
    vol.put("clip", {"ViT-B-32.pt": EVIL_PICKLE})
    vol.lanes("- {name: tiny, kind: file, path: clip/ViT-B-32.pt, allow_pickle: true}")
    return "dangerous-pickle"


def _break_pickle_refused(vol: Volume) -> str:
    vol.put("clip", {"ViT-B-32.pt": EVIL_PICKLE})
    vol.lanes("- {name: tiny, kind: file, path: clip/ViT-B-32.pt}")
    return "unsafe-pickle"


def _break_symlink_inside_lane(vol: Volume) -> str:
    root = _hf(vol)
    outside = vol.root / "outside"
    outside.mkdir()
    shutil.move(root / "tokenizer.json", outside / "tokenizer.json")
    (root / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    return "path-escape"


def _break_lane_path_is_symlink_out(vol: Volume) -> str:
    outside = write_tree(vol.root / "elsewhere", hf_model())
    (vol.models / "vllm").mkdir()
    (vol.models / "vllm" / "tiny").symlink_to(outside, target_is_directory=True)
    vol.lanes(HF)
    return "path-escape"


def _break_adapter_shapes(vol: Volume) -> str:
    vol.put("vllm/tiny", hf_model())
    vol.put("lora/a", adapter(in_dim=32))
    vol.lanes(HF + "\n- {name: lora, kind: adapter, path: lora/a, base: tiny}")
    return "adapter-base-mismatch"


def _break_adapter_modules(vol: Volume) -> str:
    vol.put("vllm/tiny", hf_model())
    vol.put("lora/a", adapter(modules=("q_proj", "w_pack"), out_dims={"q_proj": 16, "w_pack": 8}))
    vol.lanes(HF + "\n- {name: lora, kind: adapter, path: lora/a, base: tiny}")
    return "adapter-base-mismatch"


def _break_adapter_truncated(vol: Volume) -> str:
    vol.put("vllm/tiny", hf_model())
    truncate(vol.put("lora/a", adapter()) / "adapter_model.safetensors", by=4)
    vol.lanes(HF + "\n- {name: lora, kind: adapter, path: lora/a, base: tiny}")
    return "truncated"


BREAKS = {f.__name__.removeprefix("_break_"): f for f in [
    _break_truncated, _break_shard_missing, _break_index_mismatch, _break_config_invalid, _break_config_not_json,
    _break_tokenizer_missing, _break_weights_missing, _break_unsafe_pickle, _break_header, _break_checksum_sha256,
    _break_checksum_sha1, _break_size_mismatch, _break_missing_file, _break_empty, _break_bad_magic,
    _break_split_missing, _break_dangerous_pickle, _break_pickle_refused, _break_symlink_inside_lane,
    _break_lane_path_is_symlink_out, _break_adapter_shapes, _break_adapter_modules, _break_adapter_truncated,
]}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_problem_code_reaches_report_exit_1(vol: Volume, case: str) -> None:
    code = BREAKS[case](vol)
    report_file = vol.root / "out" / "report.json"
    tlog = vol.root / "termination-log"
    r = vol.check("--report", str(report_file), "--termination-log", str(tlog))
    lane = "lora" if case.startswith("adapter") else "tiny"
    assert r.code == 1, r.stderr
    assert code in r.codes(lane), r.report
    assert r.lane(lane)["status"] in ("missing", "invalid")
    assert json.loads(report_file.read_text()) == r.report
    reason = tlog.read_text()
    assert reason.startswith(f"lane {lane} ") and len(reason) < 4000
    assert f"  {lane}: " in r.stderr and code in r.stderr  # the human reason line names the code
    assert not (vol.models / ".preflight" / "ready.json").exists()


def test_escape_is_not_read(vol: Volume) -> None:
    """A symlink out of the volume is reported, and its target's bytes never vouch for the lane."""
    _break_lane_path_is_symlink_out(vol)
    r = vol.check()
    assert r.lane("tiny")["files"] == 0 and r.lane("tiny")["bytes"] == 0
    assert "outside the models folder" in r.stderr


def test_sha1_and_sha256_that_match_are_ready(vol: Volume) -> None:
    root = vol.put("vllm/tiny", hf_model())
    tok, cfg = (root / "tokenizer.json").read_bytes(), (root / "config.json").read_bytes()
    vol.lanes(f"""
        - name: tiny
          kind: hf-dir
          path: vllm/tiny
          files:
            tokenizer.json: {{sha1: {git_blob_sha1(tok)}, size: {len(tok)}}}
            config.json: {{sha256: {sha256(cfg)}}}
    """)
    r = vol.check()
    assert r.code == 0, r.stderr
    assert r.lane("tiny")["hashed_bytes"] == len(tok) + len(cfg)


def test_checksums_file_is_read(vol: Volume) -> None:
    root = vol.put("vllm/tiny", hf_model())
    sums = vol.root / "SHA256SUMS"
    sums.write_text(f"{sha256((root / 'config.json').read_bytes())}  config.json\n{'0' * 64} *model.safetensors\n")
    vol.lanes("- {name: tiny, kind: hf-dir, path: vllm/tiny, checksums: SHA256SUMS}")
    r = vol.check()
    assert r.code == 1 and r.codes("tiny") == ["checksum-mismatch"]
    assert r.lane("tiny")["problems"][0]["path"] == "model.safetensors"


def test_optional_broken_lane_is_reported_but_ready(vol: Volume) -> None:
    _break_truncated(vol)
    vol.lanes("- {name: tiny, kind: hf-dir, path: vllm/tiny, required: false}")
    r = vol.check()
    assert r.code == 0 and r.lane("tiny")["status"] == "invalid" and "truncated" in r.codes("tiny")
    assert "(optional)" in r.stderr


# ------------------------------------------------------------------------ receipts

def _pinned_file(vol: Volume, data: bytes) -> Path:
    root = vol.put("misc", {"blob.dat": data})
    vol.lanes(f"- {{name: blob, kind: file, path: misc/blob.dat, sha256: {sha256(data)}}}")
    return root / "blob.dat"


def test_receipts_skip_rehash_and_catch_rewrite_in_place(vol: Volume) -> None:
    data = os.urandom(256 * 1024)
    path = _pinned_file(vol, data)
    first = vol.check()
    assert first.code == 0 and first.lane("blob")["hashed_bytes"] == len(data)
    second = vol.check()
    assert second.code == 0 and second.lane("blob")["hashed_bytes"] == 0
    full = vol.check("--verify", "full")
    assert full.code == 0 and full.lane("blob")["hashed_bytes"] == len(data)

    st = os.stat(path)
    with open(path, "r+b") as f:  # same size, one byte changed, mtime put back
        f.seek(1000)
        f.write(bytes([data[1000] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size
    r = vol.check()
    assert r.code == 1 and r.codes("blob") == ["checksum-mismatch"]
    assert r.lane("blob")["hashed_bytes"] == len(data)


# Run in a fresh interpreter: `preflight check`, then, when it exits, the modules loaded (one per
# line) and the classes of preflight's modules whose dataclass methods were compiled by
# dataclasses (as "compiled: module.Class" lines) to argv[1].
_MODULES_AT_EXIT = """
import atexit, sys
out = sys.argv.pop(1)

def compiled():
    for name, module in list(sys.modules.items()):
        if name.startswith("preflight"):
            for value in list(vars(module).values()):
                init = getattr(value, "__init__", None) if isinstance(value, type) else None
                if hasattr(value, "__dataclass_fields__") and getattr(getattr(init, "__code__", None), "co_filename", "") == "<string>":
                    yield f"compiled: {name}.{value.__qualname__}"

atexit.register(lambda: open(out, "w").write("\\n".join([*sorted(sys.modules), *sorted(set(compiled()))])))
sys.argv = ["preflight", *sys.argv[1:]]
from preflight.cli import main
main()
"""

# What a warm re-check of lanes whose files passed before does not need: the format and model
# checks (their verdicts are in the receipts), the lock (there is none), the sources and sync,
# fit, hashing libraries' extras, and the heavy third-party modules.
_NOT_ON_THE_WARM_PATH = ("preflight.formats", "preflight.serving", "preflight.sources", "preflight.sync", "preflight.lockfile",
                         "preflight.signing", "preflight.dvc", "secrets", "hmac", "numpy", "gguf", "safetensors", "httpx",
                         "huggingface_hub", "docker", "concurrent.futures", "logging", "hashlib", "_hashlib")


def _modules_at_exit(vol: Volume, tmp_path: Path) -> tuple[int, set[str]]:
    import subprocess
    import sys

    out = tmp_path / "modules.txt"
    proc = subprocess.run([sys.executable, "-c", _MODULES_AT_EXIT, str(out), "check", "-m", str(vol.manifest), "-d", str(vol.models),
                           "--quiet", "--termination-log", ""], stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return proc.returncode, set(out.read_text().splitlines())


def test_a_warm_recheck_imports_no_format_check_lock_or_source(vol: Volume, tmp_path: Path) -> None:
    vol.put("vllm/tiny", hf_model())
    vol.put("vllm/sharded", hf_model(sharded=True))
    vol.put("gguf", gguf_file("tiny.Q8_0.gguf"))
    vol.lanes(f"""
        {HF}
        - {{name: sharded, kind: hf-dir, path: vllm/sharded}}
        - {{name: one-gguf, kind: gguf, path: gguf/tiny.Q8_0.gguf}}
    """)
    code, cold = _modules_at_exit(vol, tmp_path)
    assert code == 0 and "preflight.formats.gguf" in cold and "preflight.formats.hfdir" in cold
    code, warm = _modules_at_exit(vol, tmp_path)
    assert code == 0 and "preflight.check" in warm
    loaded = sorted(m for m in warm if any(m == n or m.startswith(n + ".") for n in _NOT_ON_THE_WARM_PATH))
    assert loaded == []
    # Every record a warm re-check builds is a preflight.record.record: @dataclass would compile
    # its methods at import, which costs more than the re-check's own work (preflight/record.py).
    assert sorted(m for m in warm if m.startswith("compiled: ")) == []


def test_state_dir_keeps_receipts_elsewhere(vol: Volume) -> None:
    data = b"x" * 4096
    _pinned_file(vol, data)
    state = vol.root / "state"
    r = vol.check("--state-dir", str(state))
    assert r.code == 0
    assert (state / "receipts.json").is_file() and not (vol.models / ".preflight").exists()
    r = vol.check(env={"PREFLIGHT_STATE_DIR": str(state)})
    assert r.lane("blob")["hashed_bytes"] == 0


def test_unwritable_state_dir_still_ready_with_one_note(vol: Volume) -> None:
    _pinned_file(vol, b"y" * 4096)
    blocker = vol.root / "not-a-folder"
    blocker.write_text("a file where the state folder's parent should be")
    r = vol.check("--state-dir", str(blocker / "state"))
    assert r.code == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "receipts" in notes[0]
    assert r.report["notes"] == [notes[0].removeprefix("note: ")]


# ------------------------------------------------------------------------ hf-cache lanes

def _cache(vol: Volume, commit: str, files: dict[str, bytes], ref: str | None = "main") -> Path:
    repo = vol.models / "hf-cache" / "models--org--embed"
    write_tree(repo / "snapshots" / commit, files)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


CACHE_LANE = "- {name: embed, kind: hf-cache, path: hf-cache, source: hf://org/embed}"


def test_hf_cache_lane_via_refs_main(vol: Volume) -> None:
    _cache(vol, COMMIT_A, hf_model())
    vol.lanes(CACHE_LANE)
    r = vol.check()
    assert r.code == 0, r.stderr
    assert r.lane("embed")["revision"] == COMMIT_A and r.lane("embed")["files"] >= 4


def test_hf_cache_lane_without_ref_is_missing(vol: Volume) -> None:
    _cache(vol, COMMIT_A, hf_model(), ref=None)
    vol.lanes(CACHE_LANE)
    r = vol.check()
    assert r.code == 1 and r.codes("embed") == ["missing"] and "refs/main" in r.stderr


def test_hf_cache_lane_via_lock_commit(vol: Volume) -> None:
    good = hf_model()
    repo = _cache(vol, COMMIT_A, hf_model(extra={"model.safetensors": b"broken"}))  # refs/main: a broken snapshot
    write_tree(repo / "snapshots" / COMMIT_B, good)
    vol.lanes(CACHE_LANE)
    assert vol.check().code == 1
    lock = vol.root / "lanes.lock.json"  # found beside the manifest without --lock
    cfg = good["config.json"]
    lock.write_text(json.dumps({"version": 1, "lanes": {"embed": {
        "source": "hf://org/embed", "revision": "main", "commit": COMMIT_B,
        "files": {"config.json": {"size": len(cfg), "sha256": sha256(cfg)}},
    }}}))
    r = vol.check()
    assert r.code == 0, r.stderr
    assert r.lane("embed")["revision"] == COMMIT_B and r.lane("embed")["hashed_bytes"] == len(cfg)
    lock.rename(vol.root / "pinned.json")
    r = vol.check("--lock", str(vol.root / "pinned.json"))
    assert r.code == 0 and r.lane("embed")["revision"] == COMMIT_B
    r = vol.check("--lock", str(vol.root / "absent.json"))
    assert r.code == 2 and "lock file not found" in r.stderr


def test_a_lane_whose_files_passed_is_not_parsed_again_until_one_changes(vol: Volume, monkeypatch) -> None:
    """Warm restarts read no headers; any rewrite of a file (new ctime), or a file added
    or removed, makes the lane's format checks run again."""
    import preflight.formats.gguf as gguf_mod
    import preflight.formats.safetensors as st_mod

    vol.put("gguf", {**gguf_file("one.gguf"), **gguf_split("big", 3)})
    _hf(vol)
    vol.lanes("""
        - {name: one, kind: gguf, path: gguf/one.gguf}
        - {name: split, kind: gguf, path: gguf/big-00001-of-00003.gguf}
        - {name: tiny, kind: hf-dir, path: vllm/tiny}
    """)
    assert vol.check().code == 0
    receipts = json.loads((vol.models / ".preflight" / "receipts.json").read_text())
    assert set(receipts["lanes"]) == {"one", "split", "tiny"}

    parsed: list[str] = []
    for mod, fn in ((gguf_mod, "check_gguf"), (st_mod, "check_safetensors")):
        real = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda path, *a, _real=real, **kw: (parsed.append(str(path)), _real(path, *a, **kw))[1])
    assert vol.check().code == 0
    assert parsed == []

    for name in ("one.gguf", "big-00002-of-00003.gguf"):
        path = vol.models / "gguf" / name
        st = path.stat()
        patch_bytes(path, 0, b"GGUX")  # same size; mtime put back, ctime moves
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    (vol.models / "vllm/tiny/tokenizer.json").unlink()
    r = vol.check()
    assert r.code == 1
    assert "bad-magic" in r.codes("one") and "bad-magic" in r.codes("split")
    assert "tokenizer-missing" in r.codes("tiny")
    assert parsed
    assert vol.check("--verify", "full").code == 1
