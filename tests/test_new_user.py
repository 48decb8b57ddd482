"""What a new user runs into first, each as a class: a lane that cannot be fetched does not
stop the others, a size the server tells before the body plans the transfer, local errors
that cannot change are said at once with their cause, offline still reads local mirrors,
and messages never state what did not happen."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.hubserver import HubServer
from tests.repos import hf_model
from tests.test_revisions import model
from tests.test_sync import Volume, hf_lane, sha256, vol  # noqa: F401
from tests.test_sync_faults import MiB, zeros_url

from preflight.progress import Progress


def lane(run, name: str) -> dict:
    return next(l for l in run.report["lanes"] if l["name"] == name)


# --------------------------------------------------------------------------- one lane does not stop the others


def test_a_gated_lane_without_a_token_fails_alone_and_says_how_to_give_one(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("meta/llama", hf_model(), gated=True)
    hub_server.add_repo("org/one", hf_model(sharded=False))
    hub_server.add_repo("org/two", model("B", sharded=False))
    vol.write([hf_lane("llama", "vllm/llama", "hf://meta/llama@main"), hf_lane("one", "vllm/one", "hf://org/one@main"),
               hf_lane("two", "vllm/two", "hf://org/two@main")])
    r = vol.run(token=False)
    assert r.code == 4, r.stderr
    assert lane(r, "one")["status"] == "ready" and lane(r, "two")["status"] == "ready"
    gated = lane(r, "llama")
    assert gated["status"] == "missing" and "gated" in gated["problems"][-1]["message"]
    assert "llama" in r.report["reason"]
    for words in ("--token-file", "HF_TOKEN", "hf auth login", "licence"):
        assert words in r.report["hint"], r.report["hint"]
    assert "hf auth login" in r.stderr


def test_a_rejected_token_gets_the_same_hint(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/one", hf_model(sharded=False), private=True)
    vol.write([hf_lane("one", "vllm/one", "hf://org/one@main")])
    r = vol.run(env={**vol.env(token=False), "HF_TOKEN": "hf_not_a_valid_token"})
    assert r.code == 4, r.stderr
    assert "--token-file" in r.report["hint"] and "HF_TOKEN" in r.report["hint"]


# --------------------------------------------------------------------------- a size told before the body plans the transfer


def test_a_url_lane_without_size_is_fetched_in_ranged_pieces(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    """The HEAD answer the space check asks for also plans the transfer: a 48 MiB file
    without `size:` goes over several connections, as one with `size:` does."""
    url, digest = zeros_url(hub_server, tmp_path, "big.bin", 48 * MiB)
    vol.write([{"name": "blob", "kind": "file", "path": "big.bin", "source": url, "sha256": digest}])
    r = vol.run()
    assert r.code == 0, r.stderr
    gets = [req.range for req in hub_server.requests if req.path == "/files/big.bin" and req.method == "GET"]
    assert len(gets) >= 3 and all(g and g.startswith("bytes=") for g in gets), gets
    assert (vol.models / "big.bin").stat().st_size == 48 * MiB


# --------------------------------------------------------------------------- local errors that cannot change


def _mirror_manifest(vol: Volume, src: Path, **extra) -> None:
    vol.write([{"name": "w", "kind": "file", "path": "w/weights.bin", "source": str(src), **extra}])


def test_a_wrong_pin_against_a_local_mirror_is_said_once_with_the_line_it_came_from(vol: Volume, tmp_path: Path) -> None:
    src = tmp_path / "mirror.bin"
    src.write_bytes(os.urandom(100_000))
    _mirror_manifest(vol, src, sha256="0" * 64)
    r = vol.run()
    assert r.code == 3, r.stderr
    msg = lane(r, "w")["problems"][-1]["message"]
    assert "copied from the mirror" in msg and "downloaded" not in msg
    assert f"pinned at {vol.manifest}:" in msg
    assert "retry" not in r.stderr  # the same bytes every time: one copy, one hash


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="dropping the DAC override capability needs root and setpriv")
def test_an_unreadable_mirror_file_is_said_at_once_with_uid_owner_and_mode(vol: Volume, tmp_path: Path) -> None:
    """Root without CAP_DAC_OVERRIDE reads by the mode bits like any uid: a mirror file
    private to another uid is a permission error that names both, with no retries."""
    src = tmp_path / "mirror.bin"
    src.write_bytes(b"x" * 1000)
    os.chown(src, 65532, 65532)
    os.chmod(src, 0o600)
    _mirror_manifest(vol, src)
    argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *vol.argv("sync")]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=vol.env(), cwd=vol.root)
    assert p.returncode == 3, p.stderr
    assert "retry" not in p.stderr
    report = json.loads(Path(argv[argv.index("--report") + 1]).read_text())
    msg = report["lanes"][0]["problems"][-1]["message"]
    assert "uid 0" in msg and "owned by uid 65532" in msg and "-rw-------" in msg, msg


# --------------------------------------------------------------------------- offline still reads local mirrors


@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE=1"])
def test_offline_reads_local_mirrors_and_touches_no_network(vol: Volume, hub_server: HubServer, tmp_path: Path, how: str) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = hf_model(sharded=False)
    for rel, data in files.items():
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(data)
    hub_server.add_repo("org/remote", hf_model(sharded=False))
    vol.write([hf_lane("local", "vllm/local", f"file://{mirror}"), hf_lane("remote", "vllm/remote", "hf://org/remote@main")])
    before = len(hub_server.requests)
    args, env = (["--offline"], vol.env()) if how == "--offline" else ([], {**vol.env(), "HF_HUB_OFFLINE": "1"})
    r = vol.run("sync", *args, env=env)
    assert len(hub_server.requests) == before  # no network at all
    assert lane(r, "local")["status"] == "ready" and vol.tree("vllm/local") == files
    assert lane(r, "remote")["status"] == "missing" and r.code == 1
    assert any("offline" in n and "remote source" in n for n in r.report["notes"])


# --------------------------------------------------------------------------- messages never state what did not happen


def test_a_first_sync_that_fails_does_not_claim_a_folder_is_still_served(vol: Volume, hub_server: HubServer) -> None:
    files = model("A")
    hub_server.add_repo("org/llm", files)
    shard = next(n for n in files if n.endswith(".safetensors"))
    hub_server.fault("org/llm", shard).status(500, times=None)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    r = vol.run("sync", "--retries", "0")
    assert r.code == 3, r.stderr
    codes = [p["code"] for p in lane(r, "llm")["problems"]]
    assert "not-switched" not in codes and "still serves" not in r.stderr and "serving" not in lane(r, "llm")


def test_an_older_revision_still_served_is_shown_as_such(vol: Volume, hub_server: HubServer) -> None:
    sha_a = hub_server.add_repo("org/llm", model("A"))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    files_b = model("B")
    sha_b = hub_server.add_repo("org/llm", files_b)
    hub_server.fault("org/llm", "config.json").status(500, times=None)
    r = vol.run("sync", "--retries", "0")
    assert r.code == 3, r.stderr
    serving = lane(r, "llm")["serving"]
    assert serving == {"revision": sha_a[:12], "layout": "revisions", "wanted": sha_b[:12]}
    line = next(l for l in r.stderr.splitlines() if " llm " in l and "hf-dir" in l)
    assert line.startswith("OLD ") and f"serves {sha_a[:12]}" in line, line


def test_progress_prints_no_stale_figures_between_attempts_and_no_zero_rate_lines() -> None:
    out = io.StringIO()
    p = Progress(out, interval=0.05)
    key = p.start("lane/file", 1000)
    deadline = time.monotonic() + 30
    while "waiting for the first byte of 1000 B" not in out.getvalue():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.advance(key, 500)
    while "500 B/1000 B" not in out.getvalue():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.pause(key)
    time.sleep(0.1)  # let a tick that was already printing finish
    seen = out.getvalue()
    time.sleep(0.3)  # several ticks while paused: nothing new
    assert out.getvalue() == seen
    p.reset(key)
    p.close()
    import re

    assert not re.search(r"(?<![\d.])0 B/1000 B", out.getvalue()) and "ETA ?" not in out.getvalue()


# --------------------------------------------------------------------------- a missing extra names the fix

BLOCKER = """
import importlib.abc, os, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in os.environ["BLOCK_MODULES"].split(","):
            raise ImportError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, _Blocked())
"""


@pytest.mark.parametrize("extra", ["s3", "signing", "docker", "zstd", "nvml"])
def test_a_missing_extra_names_the_pip_command(vol: Volume, tmp_path: Path, extra: str) -> None:
    """Each optional dependency, made absent for real (its import fails), in the place a
    user meets it: the message names `pip install 'lane-preflight[EXTRA]'`."""
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    block = {"s3": "botocore", "signing": "model_signing", "docker": "docker", "zstd": "zstandard", "nvml": "pynvml"}[extra]
    env = {**vol.env(), "BLOCK_MODULES": block, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    (vol.models / "llm").mkdir(parents=True)
    (vol.models / "llm/config.json").write_text("{}")
    if extra == "s3":
        vol.write([hf_lane("llm", "llm", "s3://bucket/llm")])
        argv = vol.argv("sync")
    elif extra == "signing":
        key = tmp_path / "pub.pem"
        key.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
        (vol.models / "llm/model.sig").write_text("{}")
        vol.write([{"name": "llm", "kind": "hf-dir", "path": "llm", "signature": {"method": "key", "key": str(key)}}])
        argv = vol.argv("check")
    elif extra == "docker":
        vol.write([{"name": "llm", "kind": "hf-dir", "path": "llm"}])
        argv = [sys.executable, "-m", "preflight.cli", "docker", "check", "-m", str(vol.manifest), "--host-dir", str(vol.models)]
    elif extra == "zstd":
        code = ("from preflight.sources.oci_tar import BlobReader, ZSTD_MAGIC, open_tar\n"
                "from preflight.errors import PreflightError\n"
                "try:\n    open_tar(BlobReader(iter([]), 'sha256:' + '0' * 64, 10, None, 'layer 0'), ZSTD_MAGIC)\n"
                "except PreflightError as exc:\n    print(exc, exc.hint)\n")
        argv = [sys.executable, "-c", code]
    else:
        argv = [sys.executable, "-c", "from preflight.serving.accel import detect_nvidia; print(detect_nvidia())"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=vol.root)
    said = p.stdout + p.stderr
    assert f"pip install 'lane-preflight[{extra}]'" in said, said
    assert "Traceback" not in said


def test_sync_env_file_holds_the_lane_paths_once_ready_and_never_after_a_failure(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.add_repo("org/llm", hf_model(sharded=False))
    vol.write([{**hf_lane("llm", "vllm/llm", "hf://org/llm@main"), "env": "LLM_MODEL_PATH"}])
    env_file = tmp_path / "run/models.env"
    r = vol.run("sync", "--env-file", str(env_file))
    assert r.code == 0, r.stderr
    assert env_file.read_text() == vol.run("env").stdout == f"LLM_MODEL_PATH='{vol.models / 'vllm/llm'}'\n"
    (vol.models / "vllm/llm/config.json").write_text("{")
    hub_server.fault("org/llm", "config.json").status(500, times=None)
    bad = vol.run("sync", "--env-file", str(env_file), "--retries", "0")
    assert bad.code == 3
    assert "LLM_MODEL_PATH" not in env_file.read_text()  # a server sourcing it does not start on a broken lane


def test_status_answers_on_stdout_and_names_an_absent_models_folder(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", hf_model(sharded=False))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    absent = vol.run("status")
    assert f"the models folder {vol.models} does not exist" in absent.stdout
    assert vol.run().code == 0
    r = vol.run("status")
    assert r.stdout.startswith("llm: revisions @") and "volume:" in r.stdout  # `preflight status | less` shows it
    doc = json.loads(vol.run("status", "--json").stdout)
    assert doc["status"] == "ready" and doc["lane_status"][0]["name"] == "llm"
