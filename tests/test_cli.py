"""The command line as a contract: help text, exit codes, and never a traceback for bad input."""

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

from preflight.cli import LazyGroup, main
from tests.repos import hf_model, write_tree

COMMANDS = ["check", "sync", "lock", "inspect", "smoke", "fetch", "init"]


def cli(args: list[str], env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, args, env=env or {})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def test_top_level_help_lists_commands_and_exit_codes() -> None:
    r = cli(["--help"])
    assert r.exit_code == 0
    for name in [*COMMANDS, "docker"]:
        assert f"  {name}" in r.stdout
    assert "0 ready, 1 not ready, 2 usage or manifest error" in r.stdout
    assert "130 interrupted" in r.stdout and "Examples:" in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_shows_examples_and_env_vars(command: str) -> None:
    r = cli([command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Examples:" in r.stdout and f"preflight {command}" in r.stdout
    assert "env var: PREFLIGHT_" in r.stdout
    if command in ("check", "sync", "lock"):
        assert "PREFLIGHT_MANIFEST" in r.stdout
    if command in ("check", "sync"):
        for var in ("PREFLIGHT_MODELS_DIR", "PREFLIGHT_LANES", "PREFLIGHT_STATE_DIR", "PREFLIGHT_TERMINATION_LOG"):
            assert var in r.stdout, var


def test_every_lazy_command_loads() -> None:
    for name in LazyGroup.lazy:
        r = cli([name, "--help"])
        assert r.exit_code == 0 and "Usage: " in r.stdout, name


@pytest.fixture()
def ready(tmp_path: Path) -> Path:
    write_tree(tmp_path / "models" / "vllm" / "tiny", hf_model())
    manifest = tmp_path / "lanes.yaml"
    manifest.write_text(f"version: 1\nmodels_dir: {tmp_path / 'models'}\nlanes:\n  - {{name: tiny, kind: hf-dir, path: vllm/tiny}}\n")
    return manifest


def test_exit_0_ready(ready: Path) -> None:
    r = cli(["check", "-m", str(ready)])
    assert r.exit_code == 0 and r.stdout == ""
    assert r.stderr.splitlines()[-1].startswith("preflight check: ready (1 lane, ")


def test_exit_0_with_options_from_env(ready: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    r = cli(["check"], env={"PREFLIGHT_MANIFEST": str(ready), "PREFLIGHT_JSON": "1", "PREFLIGHT_QUIET": "1", "PREFLIGHT_REPORT": str(report)})
    assert r.exit_code == 0 and r.stderr == ""
    assert json.loads(r.stdout)["status"] == "ready" == json.loads(report.read_text())["status"]


def test_exit_1_not_ready_writes_termination_log(ready: Path, tmp_path: Path) -> None:
    (tmp_path / "models" / "vllm" / "tiny" / "config.json").write_text("nope")
    tlog = tmp_path / "termination-log"
    r = cli(["check", "-m", str(ready)], env={"PREFLIGHT_TERMINATION_LOG": str(tlog)})
    assert r.exit_code == 1
    assert "BAD  tiny" in r.stderr and "config.json: config-invalid:" in r.stderr
    assert tlog.read_text().startswith("lane tiny invalid: config.json is not valid JSON")


@pytest.mark.parametrize("args", [
    ["check", "--verify", "sometimes"],
    ["check", "--no-such-option"],
    ["nosuchcommand"],
    ["inspect"],
])
def test_exit_2_usage(args: list[str], ready: Path) -> None:
    r = cli([*args, "-m", str(ready)] if args[0] == "check" else args)
    assert r.exit_code == 2 and "Usage:" in r.stderr


def test_exit_2_manifest_error_writes_termination_log(tmp_path: Path) -> None:
    bad = tmp_path / "lanes.yaml"
    bad.write_text("version: 1\nlanes:\n  - name: a\n    kind: safetensors\n    path: a\n")
    tlog = tmp_path / "tlog"
    r = cli(["check", "-m", str(bad), "--termination-log", str(tlog)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"preflight: error: {bad}:4: lanes[0].kind: unknown kind 'safetensors'")
    assert "hint: kinds: hf-dir, gguf, adapter, hf-cache, file" in r.stderr
    assert "unknown kind 'safetensors'" in tlog.read_text()


def test_exit_2_inspect_missing_path(tmp_path: Path) -> None:
    r = cli(["inspect", str(tmp_path / "nothing.gguf")])
    assert r.exit_code == 2 and "no such file or folder" in r.stderr


GARBAGE = [
    b"", b"\x00\x01\x02", b"lanes: 5", b"lanes:\n  - 5\n", b"- - - -", b"{{{{", b"lanes: [{name: [], kind: {}, path: 1}]",
    b"lanes:\n  - {name: a, kind: file, path: a, files: {a: [1]}}", b"\xef\xbb\xbflanes: []", "lanes: \u2028".encode(),
    b"lanes:\n  - {name: a, kind: hf-dir, path: a, endpoint: 5}",
    b"lanes:\n  - {name: a, kind: file, path: a, checksums: missing-file.txt}",
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_bad_manifest_never_tracebacks(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "m.yaml"
    p.write_bytes(data)
    commands = ("check", "sync") if b"checksums" in data else ("check", "sync", "lock")  # lock does not read checksum files
    for command in commands:
        args = [command, "-m", str(p)] + (["-d", str(tmp_path / "models"), "--termination-log", ""] if command != "lock" else [])
        r = cli(args, env={"HF_HUB_OFFLINE": "1"})
        assert r.exit_code == 2, (command, r.output)
        assert r.stderr.startswith(f"preflight: error: {tmp_path}")


def test_bad_files_under_inspect_never_traceback(tmp_path: Path) -> None:
    for name, data in [("x.safetensors", b"\xff" * 16), ("x.gguf", b"GGUF" + b"\xff" * 40), ("x.pt", b"\x80\x05junk"), ("x.bin", b"")]:
        (tmp_path / name).write_bytes(data)
        r = cli(["inspect", str(tmp_path / name)])
        assert r.exit_code == 1, (name, r.output)
    r = cli(["inspect", str(tmp_path)])
    assert r.exit_code == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_exit_130_on_interrupt(tmp_path: Path, signum: int) -> None:
    """Ctrl-C, or the SIGTERM Kubernetes sends on pod stop, in the middle of hashing ends with 130, promptly.

    No timing luck: the signal goes only once the process is hashing (it has read 64 MiB,
    from /proc/PID/io), and the files are large enough (2 x 256 GiB, sparse) that hashing
    them to the end would take minutes on any machine, so an exit 130 well inside the
    bound can only come from the interrupt."""
    models = tmp_path / "models"
    models.mkdir()
    lanes = []
    for i in range(2):
        with open(models / f"big{i}.dat", "wb") as f:
            f.truncate(256 << 30)  # sparse: costs no disk
        lanes.append(f"  - {{name: big{i}, kind: file, path: big{i}.dat, sha256: '{'0' * 64}'}}")
    manifest = tmp_path / "lanes.yaml"
    manifest.write_text("version: 1\nlanes:\n" + "\n".join(lanes) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "preflight.cli", "check", "-m", str(manifest), "-d", str(models), "--termination-log", ""],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while _bytes_read(proc.pid) < 64 << 20:
            assert proc.poll() is None, "finished before it could be interrupted"
            assert time.monotonic() < deadline, "never started hashing"
            time.sleep(0.1)
        sent = time.monotonic()
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert time.monotonic() - sent < 60
    assert b"interrupted" in err and b"Traceback" not in err


def _bytes_read(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration):
        return 0


@pytest.mark.parametrize("args, says", [
    (["sync", "--bogus"], "No such option '--bogus'"),
    (["sync", "--token-file", "{tmp}"], "is a directory"),
    (["check", "--verify", "sometimes"], "sometimes"),
])
def test_usage_errors_found_while_parsing_also_reach_the_termination_log(tmp_path: Path, args: list[str], says: str) -> None:
    tlog = tmp_path / "termination-log"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--termination-log", str(tlog)]
    proc = subprocess.run([sys.executable, "-m", "preflight.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert tlog.read_text().startswith("usage error: ") and says in tlog.read_text()
