"""What a volume remembers between runs, and the names and modes of what sync writes:
a file verified before and deleted since is missing; a refused download is not fetched
again until something changes; a single-file lane's path names its file whatever the
source calls it; everything written is readable by the inference server's uid."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.hubserver import HubServer
from tests.repos import gguf_file, gguf_split, hf_model, write_tree
from tests.test_sync import STATE, Volume, hf_lane, hub_downloads, sha256, vol  # noqa: F401


def test_a_file_verified_before_and_deleted_since_is_missing(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])  # no lock: receipts are all check has
    assert vol.run().code == 0
    (vol.models / "vllm/llm/tokenizer_config.json").unlink()  # the chat template is gone
    r = vol.run("check")
    assert r.code == 1, r.stderr
    assert ("tokenizer_config.json", "missing") in [(p["path"], p["code"]) for p in r.lane("llm")["problems"]]
    assert "verified here before" in r.stderr
    r = vol.run()  # sync brings it back
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files


def test_a_file_the_new_revision_dropped_is_not_expected_back(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    newer = {k: v for k, v in files.items() if k != "generation_config.json"}
    hub_server.add_repo("org/llm", newer)
    assert vol.run().code == 0
    (vol.models / "vllm/llm/generation_config.json").unlink()  # the old revision's leftover
    r = vol.run("check")
    assert r.code == 0, r.stderr


def test_a_refused_download_is_not_fetched_again_until_its_source_changes(vol: Volume, hub_server: HubServer) -> None:
    from tests.example_repos import malicious_checkpoint, whisper_checkpoint

    evil, good = malicious_checkpoint(), whisper_checkpoint()
    lane = {"name": "whisper", "kind": "file", "path": "whisper/small.pt", "allow_pickle": True}
    vol.write([{**lane, "source": hub_server.add_url("/files/evil.pt", evil), "sha256": sha256(evil)}])
    first = vol.run()
    assert first.code == 1, first.stderr
    assert hub_server.count(path="/files/evil.pt") == 1
    again = vol.run()
    assert again.code == 1, again.stderr
    assert hub_server.count(path="/files/evil.pt") == 1  # remembered: no second download
    assert "dangerous-pickle" in again.codes("whisper")
    assert "not fetched again" in again.stderr
    vol.write([{**lane, "source": hub_server.add_url("/files/good.pt", good), "sha256": sha256(good)}])
    fixed = vol.run()
    assert fixed.code == 0, fixed.stderr
    assert (vol.models / "whisper/small.pt").read_bytes() == good


@pytest.mark.parametrize("source_kind", ["mirror", "hub"])
def test_a_single_file_lane_path_names_the_file_whatever_the_source_calls_it(vol: Volume, hub_server: HubServer,
                                                                          tmp_path: Path, source_kind: str) -> None:
    files = gguf_file("upstream-name.Q8_0.gguf")
    if source_kind == "mirror":
        write_tree(tmp_path / "mirror", files)
        source = str(tmp_path / "mirror" / "upstream-name.Q8_0.gguf")
    else:
        hub_server.add_repo("org/gguf", files)
        source = "hf://org/gguf/upstream-name.Q8_0.gguf@main"
    vol.write([{"name": "reader", "kind": "gguf", "path": "gguf/reader.gguf", "source": source}])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert (vol.models / "gguf/reader.gguf").read_bytes() == files["upstream-name.Q8_0.gguf"]
    assert not (vol.models / "gguf/upstream-name.Q8_0.gguf").exists()
    assert vol.run("check").code == 0


def test_split_parts_are_placed_by_number(vol: Volume, tmp_path: Path) -> None:
    files = gguf_split("upstream", 3)
    write_tree(tmp_path / "mirror", files)
    first = sorted(files)[0]
    vol.write([{"name": "big", "kind": "gguf", "path": "gguf/reader-00001-of-00003.gguf", "source": str(tmp_path / "mirror" / first)}])
    r = vol.run()
    assert r.code == 0, r.stderr
    for i, name in enumerate(sorted(files), 1):
        assert (vol.models / f"gguf/reader-{i:05d}-of-00003.gguf").read_bytes() == files[name]


def test_a_split_source_for_a_single_file_path_is_a_usage_error(vol: Volume, tmp_path: Path) -> None:
    files = gguf_split("upstream", 3)
    write_tree(tmp_path / "mirror", files)
    vol.write([{"name": "big", "kind": "gguf", "path": "gguf/reader.gguf", "source": str(tmp_path / "mirror" / sorted(files)[0])}])
    r = vol.run()
    assert r.code == 2, r.stderr
    assert "NAME-00001-of-00003.gguf" in r.stderr


@pytest.mark.parametrize("case", ["folder-for-file", "file-for-folder", "no-parent"])
def test_mirror_messages_name_the_real_cause(vol: Volume, tmp_path: Path, case: str) -> None:
    mirror = tmp_path / "mirror"
    write_tree(mirror, gguf_file("m.gguf"))
    if case == "folder-for-file":
        lane, want = {"kind": "gguf", "path": "gguf/m.gguf", "source": str(mirror)}, "is a folder, and a gguf lane needs a file"
    elif case == "file-for-folder":
        lane, want = {"kind": "hf-dir", "path": "vllm/m", "source": str(mirror / "m.gguf")}, "is a file, and a hf-dir lane needs a folder"
    else:
        lane, want = {"kind": "gguf", "path": "gguf/m.gguf", "source": str(tmp_path / "nowhere" / "m.gguf")}, "mirror folder"
    vol.write([{"name": "m", **lane}])
    r = vol.run()
    assert r.code == 3, r.stderr
    assert want in r.stderr


def test_a_pinned_commit_missing_from_the_cache_is_named(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    hub_server.add_repo("org/emb", files)
    vol.write([hf_lane("emb", "hf-cache/hub", "hf://org/emb@main", kind="hf-cache")])
    assert vol.run().code == 0
    vol.write([hf_lane("emb", "hf-cache/hub", "hf://org/emb@" + "1" * 40, kind="hf-cache")])
    r = vol.run("check")
    assert r.code == 1, r.stderr
    assert f"the cache has no snapshot {'1' * 40} of org/emb (it has: " in r.stderr


# --------------------------------------------------------------------------- modes: another uid serves these files


def readable_by(uid: int, root: Path) -> list[str]:
    """Files and folders under root that uid cannot read (or, folders, enter)."""
    script = 'find "$1" \\( -type f ! -readable \\) -o \\( -type d \\( ! -readable -o ! -executable \\) \\) -print'
    p = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c", script, "sh", str(root)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return sorted(p.stdout.split())


@pytest.fixture
def open_vol(hub_server: HubServer):
    """A Volume in a folder every uid may enter (pytest's own temp folders are 0700)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="preflight-uid-"))
    os.chmod(root, 0o755)
    try:
        yield Volume(root, hub_server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_everything_sync_writes_is_readable_by_another_uid(open_vol: Volume, hub_server: HubServer) -> None:
    """vLLM or llama.cpp as uid 1000 reads weights, refs and ready.json written by the init
    container's uid, with the common umask 022, as it would after `hf download` or `cp`."""
    hub_server.add_repo("org/llm", hf_model())
    hub_server.add_repo("org/emb", hf_model())
    vol = open_vol
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main"),
               hf_lane("emb", "hf-cache/hub", "hf://org/emb@main", kind="hf-cache")])
    env = vol.env()
    r = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *vol.argv("sync")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (vol.models / "hf-cache/hub/models--org--emb/refs/main").exists()
    assert readable_by(1000, vol.models) == []
    for name in ("ready.json", "report.json", "receipts.json"):
        assert (vol.models / STATE / name).stat().st_mode & 0o044 == 0o044, name


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_a_restrictive_umask_is_what_the_operator_asked_for(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    """umask 077 keeps files to the writer's uid: the documented switch is the umask
    (or fsGroup + umask 007 for a group-shared volume); sync follows it, it does not widen it."""
    hub_server.add_repo("org/llm", hf_model())
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    r = subprocess.run(["sh", "-c", 'umask 077 && exec "$@"', "sh", *vol.argv("sync")], env=vol.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (vol.models / "vllm/llm/config.json").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("layout", ["revisions", "in-place"])
def test_a_file_verified_while_staged_is_not_hashed_again(vol: Volume, hub_server: HubServer, layout: str) -> None:
    """The receipt written at publish vouches for the file in the check that ends the sync
    and in the next one: each byte is hashed once, as it arrives."""
    files = hf_model(extra={"big.safetensors.part2": bytes(range(256)) * (3 << 12)})  # 3 MiB that is no pickle
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", layout=layout)])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert r.lane("llm")["hashed_bytes"] == 0, r.lane("llm")
    again = vol.run("check")
    assert again.code == 0 and again.lane("llm")["hashed_bytes"] == 0


def test_a_file_lane_at_the_top_of_the_volume_is_not_hashed_again(vol: Volume, tmp_path: Path) -> None:
    """The same for a single file directly under the models folder (its receipt key has no folder part)."""
    data = bytes(range(256)) * (3 << 12)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "blob.dat").write_bytes(data)
    vol.write([{"name": "blob", "kind": "file", "path": "blob.dat", "source": str(tmp_path / "mirror" / "blob.dat"),
                "sha256": sha256(data)}])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert r.lane("blob")["hashed_bytes"] == 0, r.lane("blob")
    assert vol.run("check").lane("blob")["hashed_bytes"] == 0
    # one receipt, under the key check looks up: the one written at publish vouched for the file
    keys = list(json.loads((vol.models / STATE / "receipts.json").read_text())["files"])
    assert keys == ["blob.dat"], keys
