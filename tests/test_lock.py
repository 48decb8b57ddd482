"""`preflight lock` and what a lock file does to sync and check."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.hubserver import HubServer, git_blob_sha1
from tests.repos import gguf_file, hf_model
from tests.test_sync import Volume, hf_lane, hub_downloads, sha256, vol  # noqa: F401

GGUF = "tiny.Q8_0.gguf"


@pytest.fixture
def two_lanes(vol: Volume, hub_server: HubServer) -> tuple[Volume, dict[str, bytes], dict[str, bytes], str]:
    model = hf_model()
    tiny = gguf_file(GGUF)
    commit = hub_server.add_repo("org/llm", model)
    hub_server.add_repo("org/gguf", {**tiny, "README.md": b"# tiny\n"})
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main"),
               hf_lane("tiny", f"gguf/{GGUF}", f"hf://org/gguf/{GGUF}@main", kind="gguf")])
    return vol, model, tiny, commit


def test_lock_records_commit_sizes_and_digests(two_lanes) -> None:
    vol, model, tiny, commit = two_lanes
    r = vol.run("lock")
    assert r.code == 0, r.stderr
    lock = json.loads((vol.root / "lanes.lock.json").read_text())
    assert lock["version"] == 1
    llm = lock["lanes"]["llm"]
    assert llm["commit"] == commit and llm["revision"] == "main" and llm["source"] == "hf://org/llm@main"
    assert set(llm["files"]) == set(model)
    weights = llm["files"]["model.safetensors"]
    assert weights == {"size": len(model["model.safetensors"]), "sha256": sha256(model["model.safetensors"])}
    assert llm["files"]["config.json"] == {"size": len(model["config.json"]), "sha1": git_blob_sha1(model["config.json"])}
    assert lock["lanes"]["tiny"]["files"] == {GGUF: {"size": len(tiny[GGUF]), "sha256": sha256(tiny[GGUF])}}


def test_locked_sync_refuses_a_lane_missing_from_the_lock(two_lanes, hub_server: HubServer) -> None:
    vol, *_ = two_lanes
    assert vol.run("lock", "--lane", "llm").code == 0
    r = vol.run("sync", "--locked")
    assert r.code == 2, r.stderr
    assert "lane tiny is not in the lock file" in r.stderr
    assert "preflight lock" in r.stderr
    assert hub_downloads(hub_server) == 0


def test_locked_sync_pins_the_locked_commit(two_lanes, hub_server: HubServer) -> None:
    vol, model, tiny, commit = two_lanes
    assert vol.run("lock").code == 0
    hub_server.add_repo("org/llm", hf_model(extra={"NEW": b"later\n"}))  # main moves on
    r = vol.run("sync", "--locked")
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == model
    assert {q.revision for q in hub_server.requests if q.kind == "resolve" and q.repo_id == "org/llm"} == {commit}


def test_check_against_the_lock_detects_a_changed_file_without_network(two_lanes, hub_server: HubServer) -> None:
    vol, model, tiny, _commit = two_lanes
    assert vol.run("lock").code == 0
    assert vol.run("sync").code == 0
    target = vol.models / "gguf" / GGUF
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, still a well-formed GGUF: only the locked digest can tell
    target.write_bytes(bytes(data))
    hub_server.stop()
    r = vol.run("check", "--json")
    assert r.code == 1, r.stderr
    assert "checksum-mismatch" in r.codes("tiny")
    assert r.lane("llm")["status"] == "ready"
    assert json.loads(r.stdout)["status"] == "not-ready"


def test_check_says_when_the_lock_was_made_for_another_source(two_lanes, hub_server: HubServer) -> None:
    vol, model, tiny, _commit = two_lanes
    other = gguf_file(GGUF, extra_kv={"general.name": "other"})
    hub_server.add_repo("org/other", other)
    assert vol.run("lock").code == 0
    # the manifest moves the gguf lane to another repo; the volume holds that repo's file
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main"),
               hf_lane("tiny", f"gguf/{GGUF}", f"hf://org/other/{GGUF}@main", kind="gguf")])
    assert vol.run("sync").code == 0
    assert (vol.models / "gguf" / GGUF).read_bytes() == other[GGUF]
    hub_server.stop()
    r = vol.run("check", "--json")
    assert r.code == 0, r.stderr  # the stale lock's digests are not held against the new file
    assert r.codes("tiny") == ["lock-drift"]
    message = r.lane("tiny")["problems"][0]["message"]
    assert f"hf://org/gguf/{GGUF}@main" in message and "preflight lock" in message
    assert r.codes("llm") == []


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_sha256sum_format_verifies_with_sha256sum(two_lanes) -> None:
    vol, model, tiny, _commit = two_lanes
    assert vol.run("sync").code == 0
    out = vol.root / "SHA256SUMS"
    r = vol.run("lock", "--format", "sha256sum", "-o", str(out))
    assert r.code == 0, r.stderr
    lines = out.read_text().splitlines()
    assert f"{sha256(tiny[GGUF])}  gguf/{GGUF}" in lines
    assert f"{sha256(model['model.safetensors'])}  vllm/llm/model.safetensors" in lines
    ok = subprocess.run(["sha256sum", "-c", "--strict", str(out)], cwd=vol.models, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == len(lines)

    (vol.models / "vllm/llm/model.safetensors").write_bytes(b"not the weights")
    bad = subprocess.run(["sha256sum", "-c", str(out)], cwd=vol.models, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "vllm/llm/model.safetensors: FAILED" in bad.stdout


def test_sha256sum_of_one_lane_to_stdout(two_lanes) -> None:
    vol, _model, tiny, _commit = two_lanes
    assert vol.run("sync").code == 0
    r = vol.run("lock", "--format", "sha256sum", "-o", "-", "--lane", "tiny")
    assert r.code == 0, r.stderr
    assert r.stdout == f"{sha256(tiny[GGUF])}  {GGUF}\n"
    ok = subprocess.run(["sha256sum", "-c", "-"], input=r.stdout, cwd=vol.models / "gguf", capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
