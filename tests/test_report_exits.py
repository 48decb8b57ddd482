"""Every exit leaves a report and a reason: --json, --report and the termination log agree,
whatever ended the run (a ready volume, a broken one, a usage or manifest error, a volume
that cannot be written, a failed fetch, an interrupt). And what the human summary says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from preflight.cli import main
from preflight.problems import Problem
from preflight.report import LaneResult
from tests.repos import hf_model, write_tree


class Outcome:
    def __init__(self, code: int, stdout: str, stderr: str, report: Path, tlog: Path) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.json = json.loads(stdout) if stdout.strip() else None
        self.report = json.loads(report.read_text()) if report.exists() else None
        self.tlog = tlog.read_text() if tlog.exists() else None


def run(tmp_path: Path, args: list[str], env: dict[str, str] | None = None, *, flags: bool = True) -> Outcome:
    """The CLI in-process, asking for every output (unless `flags` is off: then only env)."""
    report, tlog = tmp_path / "report.json", tmp_path / "termination.log"
    for p in (report, tlog):
        if p.exists():
            p.unlink()
    extra = ["--json", "--report", str(report), "--termination-log", str(tlog)] if flags else []
    r = CliRunner().invoke(main, [*args, *extra], env={"HF_HUB_OFFLINE": "1", **(env or {})})
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return Outcome(r.exit_code, r.stdout, r.stderr, report, tlog)


def assert_reported(o: Outcome, code: int, says: str, *, lanes: list[str] | None = None) -> dict:
    """The JSON on stdout and the report file are one document, with the exit code and the reason."""
    assert o.code == code, o.stderr
    assert o.json is not None and o.json == o.report, (o.stdout, o.stderr)
    doc = o.json
    assert doc["exit_code"] == code and doc["status"] == ("ready" if code == 0 else "not-ready")
    if code:
        assert says in doc["reason"], doc
        assert o.tlog is not None and says in o.tlog
    if lanes is not None:
        assert [lane["name"] for lane in doc["lanes"]] == lanes
    return doc


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    write_tree(tmp_path / "models" / "vllm" / "tiny", hf_model())
    m = tmp_path / "lanes.yaml"
    m.write_text(f"version: 1\nmodels_dir: {tmp_path / 'models'}\nlanes:\n  - {{name: tiny, kind: hf-dir, path: vllm/tiny, source: hf://org/tiny@main}}\n")
    return m


def test_ready_and_not_ready(tmp_path: Path, manifest: Path) -> None:
    assert_reported(run(tmp_path, ["check", "-m", str(manifest)]), 0, "", lanes=["tiny"])
    (tmp_path / "models" / "vllm" / "tiny" / "config.json").write_text("nope")
    doc = assert_reported(run(tmp_path, ["check", "-m", str(manifest)]), 1, "config.json is not valid JSON", lanes=["tiny"])
    assert doc["lanes"][0]["status"] == "invalid"


@pytest.mark.parametrize("command", ["check", "sync", "lock"])
def test_a_manifest_error_is_reported_with_no_lanes(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "lanes.yaml"
    bad.write_text("version: 1\nlanes:\n  - name: a\n    kind: safetensors\n    path: a\n")
    o = run(tmp_path, [command, "-m", str(bad)])
    doc = assert_reported(o, 2, "unknown kind 'safetensors'", lanes=[])
    assert doc["command"] == command
    assert doc["hint"].startswith("kinds: ")
    assert o.stderr.startswith(f"preflight: error: {bad}:4: lanes[0].kind")


@pytest.mark.parametrize("command, args, says", [
    ("check", ["--verify", "sometimes"], "'sometimes' is not one of"),
    ("check", ["--no-such-option"], "No such option"),
    ("sync", ["--retries", "99"], "99 is not in the range"),
    ("lock", ["--format", "xml"], "'xml' is not one of"),
])
def test_a_usage_error_found_while_parsing_is_reported(tmp_path: Path, manifest: Path, command: str, args: list[str], says: str) -> None:
    o = run(tmp_path, [command, "-m", str(manifest), *args])
    doc = assert_reported(o, 2, says, lanes=[])
    assert doc["reason"].startswith("usage error: ") and doc["command"] == command
    assert "Usage:" in o.stderr


def test_a_usage_error_reports_where_the_environment_says(tmp_path: Path, manifest: Path) -> None:
    report, tlog = tmp_path / "env-report.json", tmp_path / "env-tlog"
    o = run(tmp_path, ["check", "-m", str(manifest), "--verify", "never"], flags=False,
            env={"PREFLIGHT_JSON": "true", "PREFLIGHT_REPORT": str(report), "PREFLIGHT_TERMINATION_LOG": str(tlog)})
    assert o.code == 2 and o.json is not None
    assert json.loads(report.read_text()) == o.json and o.json["exit_code"] == 2
    assert tlog.read_text().startswith("usage error: ")


def test_a_volume_that_cannot_be_written_reports_its_lanes(tmp_path: Path) -> None:
    """sync must fetch, and its state folder cannot be made: exit 1, with the lanes as checked."""
    m = tmp_path / "lanes.yaml"
    m.write_text(f"version: 1\nmodels_dir: {tmp_path / 'models'}\nlanes:\n"
                 f"  - {{name: tiny, kind: file, path: w/tiny.bin, source: '{(tmp_path / 'mirror.bin').as_uri()}'}}\n")
    (tmp_path / "mirror.bin").write_bytes(b"weights")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    o = run(tmp_path, ["sync", "-m", str(m), "--state-dir", str(blocker / "state")], env={"HF_HUB_OFFLINE": ""})
    doc = assert_reported(o, 1, "cannot fetch", lanes=["tiny"])
    assert doc["lanes"][0]["status"] == "missing"
    assert doc["hint"] and "preflight: error: " in o.stderr


def test_a_failed_fetch_leaves_the_lane_missing_with_the_reason(tmp_path: Path) -> None:
    m = tmp_path / "lanes.yaml"
    m.write_text(f"version: 1\nmodels_dir: {tmp_path / 'models'}\nlanes:\n"
                 "  - {name: clip, kind: file, path: clip/ViT-B-32.pt, source: 'http://127.0.0.1:9/ViT-B-32.pt', "
                 f"sha256: '{'a' * 64}', allow_pickle: true}}\n")
    o = run(tmp_path, ["sync", "-m", str(m), "--retries", "0", "--connect-timeout", "2"], env={"HF_HUB_OFFLINE": ""})
    doc = assert_reported(o, 3, "cannot connect", lanes=["clip"])
    lane = doc["lanes"][0]
    assert lane["status"] == "missing"
    assert {p["code"] for p in lane["problems"]} == {"missing", "fetch-failed"}
    assert "MISS clip" in o.stderr and "BAD" not in o.stderr


def test_lock_reports_what_it_pinned(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "a.bin").write_bytes(b"abc")
    m = tmp_path / "lanes.yaml"
    m.write_text(f"version: 1\nmodels_dir: {tmp_path / 'models'}\nlanes:\n  - {{name: mirror, kind: file, path: m/a.bin, source: '{(tmp_path / 'mirror' / 'a.bin').as_uri()}'}}\n")
    o = run(tmp_path, ["lock", "-m", str(m), "-o", str(tmp_path / "out.lock.json")])
    doc = assert_reported(o, 0, "", lanes=["mirror"])
    assert doc["command"] == "lock" and doc["output"] == str(tmp_path / "out.lock.json")
    assert doc["lanes"][0]["files"] == 1 and doc["lanes"][0]["status"] == "ready"
    assert o.tlog is None
    r = CliRunner().invoke(main, ["lock", "-m", str(m), "-o", "-", "--json"])
    assert r.exit_code == 2 and "both write to stdout" in r.stderr and r.stdout.startswith("{")
    r = CliRunner().invoke(main, ["lock", "-m", str(m), "-o", "-"], env={"PREFLIGHT_JSON": "1"})
    assert r.exit_code == 0 and json.loads(r.stdout)["lanes"]["mirror"]["files"]["a.bin"]["size"] == 3  # the lock itself


def read_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration):
        return 0


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/<pid>/io to see the hashing start")
def test_an_interrupt_is_reported(tmp_path: Path) -> None:
    """SIGTERM in the middle of hashing: exit 130, and the report says so."""
    models = tmp_path / "models"
    models.mkdir()
    with open(models / "big.dat", "wb") as f:
        f.truncate(16 << 30)  # sparse: no disk, seconds of hashing
    manifest = tmp_path / "lanes.yaml"
    manifest.write_text(f"version: 1\nlanes:\n  - {{name: big, kind: file, path: big.dat, sha256: '{'0' * 64}'}}\n")
    report, tlog = tmp_path / "report.json", tmp_path / "tlog"
    proc = subprocess.Popen(
        [sys.executable, "-m", "preflight.cli", "check", "-m", str(manifest), "-d", str(models), "--json",
         "--report", str(report), "--termination-log", str(tlog)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while read_bytes(proc.pid) < 256 << 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)  # until it is hashing (a quarter GiB read of the 16)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc == json.loads(report.read_text())
    assert doc["exit_code"] == 130 and doc["reason"].startswith("interrupted (SIGTERM)")
    assert tlog.read_text().startswith("interrupted (SIGTERM)")


# ------------------------------------------------------------------------ lane status and rendering


def test_a_short_file_is_reported_once() -> None:
    lane = LaneResult("llm", "hf-dir", "vllm/llm", problems=[
        Problem("model-00002.safetensors", "size-mismatch", "expected 4632 bytes, found 4582 (truncated by 50 bytes)"),
        Problem("model-00002.safetensors", "truncated", "data ends at 4582, header says 4632"),
        Problem("model-00003.safetensors", "truncated", "data ends early"),
    ])
    lane.settle()
    assert [(p.path, p.code) for p in lane.problems] == [("model-00002.safetensors", "size-mismatch"),
                                                          ("model-00003.safetensors", "truncated")]
    assert lane.status == "invalid"


@pytest.mark.parametrize("codes, status", [
    (["missing", "fetch-failed"], "missing"),
    (["shard-missing", "missing"], "missing"),
    (["fetch-failed"], "missing"),
    (["checksum-mismatch", "fetch-failed"], "invalid"),
    (["config-invalid"], "invalid"),
    ([], "ready"),
])
def test_lane_status(codes: list[str], status: str) -> None:
    lane = LaneResult("a", "hf-dir", "a", problems=[Problem("x", c, c) for c in codes])
    lane.settle()
    assert lane.status == status


def test_the_human_summary_lines_up(tmp_path: Path) -> None:
    write_tree(tmp_path / "models" / "vllm" / "tiny", hf_model())
    m = tmp_path / "lanes.yaml"
    m.write_text(f"version: 1\nmodels_dir: {tmp_path / 'models'}\nlanes:\n  - {{name: tiny, kind: hf-dir, path: vllm/tiny}}\n"
                 "  - {name: a-longer-name, kind: gguf, path: gguf/some/deeper/model.gguf, required: false}\n")
    r = CliRunner().invoke(main, ["check", "-m", str(m), "--termination-log", ""])
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].index("ready") == lines[1].index("missing (optional)")
    assert lines[0].index("[") == lines[1].index("[")
    assert lines[-1].startswith("preflight check: ready (2 lanes, ")
    m.write_text(f"version: 1\nmodels_dir: {tmp_path / 'models'}\nlanes:\n  - {{name: tiny, kind: hf-dir, path: vllm/tiny}}\n")
    assert "ready (1 lane, " in CliRunner().invoke(main, ["check", "-m", str(m), "--termination-log", ""]).stderr
