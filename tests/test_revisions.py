"""Folder lanes as revisions: a new revision is assembled beside the current one (unchanged
files hard-linked), verified, then one symlink flips; readers never see a mix. `prune`
removes what nothing needs; `status` says what each lane takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.hubserver import HubServer
from tests.repos import LLAMA_CONFIG, hf_model
from tests.test_sync import STATE, Volume, hf_lane, kill, vol  # noqa: F401
from tests.test_sync_faults import small_vol  # noqa: F401


def model(rev: str, *, sharded: bool = True) -> dict[str, bytes]:
    """A sharded model whose config and tokenizer_config name the revision; the shards are the same in every one."""
    files = hf_model(sharded=sharded, config={**LLAMA_CONFIG, "rev": rev})
    files["tokenizer_config.json"] = json.dumps({"model_max_length": 2048, "rev": rev}).encode()
    return files


def resolved(vol: Volume, lane_path: str) -> str:
    return os.readlink(vol.models / lane_path)


def file_gets(hub: HubServer, repo: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in hub.requests:
        if r.repo_id == repo and r.kind in ("resolve", "cdn") and r.file:
            out[r.file] = out.get(r.file, 0) + 1
    return out


def test_a_first_sync_makes_the_lane_a_link_to_one_revision(vol: Volume, hub_server: HubServer) -> None:
    files = model("A")
    sha = hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert resolved(vol, "vllm/llm") == f".llm.rev-{sha[:12]}"
    assert vol.tree("vllm/llm") == files
    assert vol.run("check").code == 0
    again = vol.run()
    assert again.code == 0 and "fetched_files" not in again.lane("llm")


def test_an_upgrade_links_unchanged_files_fetches_only_changes_and_flips(vol: Volume, hub_server: HubServer) -> None:
    old = model("A")
    sha_a = hub_server.add_repo("org/llm", old)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    shard = next(n for n in old if n.endswith(".safetensors"))
    ino = (vol.models / "vllm/llm" / shard).stat().st_ino
    new = model("B")
    sha_b = hub_server.add_repo("org/llm", new)
    hub_server.clear_requests()
    r = vol.run()
    assert r.code == 0, r.stderr
    assert resolved(vol, "vllm/llm") == f".llm.rev-{sha_b[:12]}"
    assert vol.tree("vllm/llm") == new
    assert (vol.models / "vllm/llm" / shard).stat().st_ino == ino  # hard-linked, not copied or fetched
    assert set(file_gets(hub_server, "org/llm")) == {"config.json", "tokenizer_config.json"}
    assert (vol.models / f"vllm/.llm.rev-{sha_a[:12]}").is_dir()  # the previous revision is kept
    assert "unchanged file" in r.stderr and "now at revision" in r.stderr
    assert vol.run("check").code == 0
    assert vol.run("check", "--verify", "full").code == 0


READER = textwrap.dedent("""
    import json, os, sys, time
    lane, limit, out, until_rev = sys.argv[1], time.monotonic() + float(sys.argv[2]), sys.argv[3], sys.argv[4]
    seen, mixed, reads, after = set(), 0, 0, 0
    while time.monotonic() < limit and after < 50:
        try:
            root = os.path.realpath(lane)  # a server resolves its model folder once, then reads inside it
            revs = set()
            for name in ("config.json", "tokenizer_config.json"):
                with open(os.path.join(root, name)) as f:
                    revs.add(json.load(f)["rev"])
            with open(os.path.join(root, "model.safetensors.index.json")) as f:
                shards = set(json.load(f)["weight_map"].values())
            for shard in shards:
                with open(os.path.join(root, shard), "rb") as f:
                    f.read(8)
        except FileNotFoundError:
            continue
        reads += 1
        seen |= revs
        mixed += len(revs) > 1
        after += until_rev in seen
    json.dump({"reads": reads, "mixed": mixed, "seen": sorted(seen)}, open(out, "w"))
""")


def test_a_reader_during_the_whole_switch_sees_one_revision_at_a_time(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    """A reader loops over the lane (config, tokenizer config, the index and every shard it
    names) from before the switch until well after it: no read mixes two revisions."""
    hub_server.add_repo("org/llm", model("A"))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    new = model("B")
    hub_server.add_repo("org/llm", new)
    hub_server.fault("org/llm", "tokenizer_config.json").stall(10, 1, times=1)  # the switch takes a while
    out = tmp_path / "reader.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(vol.models / "vllm/llm"), "120", str(out), "B"])
    try:
        r = vol.run()
        assert r.code == 0, r.stderr
        assert reader.wait(120) == 0
    finally:
        kill(reader)
    seen = json.loads(out.read_text())
    assert seen["mixed"] == 0 and seen["reads"] > 0, seen
    assert "B" in seen["seen"]
    assert vol.tree("vllm/llm") == new


def test_a_switch_killed_while_assembling_keeps_serving_the_old_revision_and_converges(vol: Volume, hub_server: HubServer) -> None:
    old = model("A")
    sha_a = hub_server.add_repo("org/llm", old)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    new = model("B")
    hub_server.add_repo("org/llm", new)
    hub_server.fault("org/llm", "tokenizer_config.json").stall(10, 60, times=1)
    proc, _argv = vol.spawn()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((vol.models / STATE / "staging").glob("*.part")):
            time.sleep(0.05)
    finally:
        kill(proc)
    assert resolved(vol, "vllm/llm") == f".llm.rev-{sha_a[:12]}"  # still the old one
    assert vol.tree("vllm/llm") == old
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == new


def test_a_flip_killed_midway_leaves_what_a_rerun_cleans_up(vol: Volume, hub_server: HubServer) -> None:
    """What a SIGKILL inside the flip can leave: the temporary link, or (converting an
    in-place folder) the old folder parked under the temporary name. A rerun converges."""
    files = model("A")
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    parent = vol.models / "vllm"
    (parent / ".llm.lnk-99999").symlink_to(resolved(vol, "vllm/llm"))
    (parent / ".llm.lnk-99998").mkdir()
    (parent / ".llm.lnk-99998" / "config.json").write_text("{}")
    hub_server.add_repo("org/llm", model("B"))
    r = vol.run()
    assert r.code == 0, r.stderr
    assert not list(parent.glob(".llm.lnk-*"))
    assert vol.run("check").code == 0


def test_an_in_place_lane_is_converted_on_its_first_switch(vol: Volume, hub_server: HubServer) -> None:
    old = model("A")
    hub_server.add_repo("org/llm", old)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", layout="in-place")])
    assert vol.run().code == 0
    assert (vol.models / "vllm/llm").is_dir() and not (vol.models / "vllm/llm").is_symlink()
    held = os.open(vol.models / "vllm/llm", os.O_RDONLY | os.O_DIRECTORY)  # a server with the old folder open
    try:
        new = model("B")
        sha_b = hub_server.add_repo("org/llm", new)
        vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])  # layout: revisions (the default)
        r = vol.run()
        assert r.code == 0, r.stderr
        assert resolved(vol, "vllm/llm") == f".llm.rev-{sha_b[:12]}"
        assert vol.tree("vllm/llm") == new
        kept = list((vol.models / "vllm").glob(".llm.rev-inplace-*"))
        assert len(kept) == 1
        with open(os.open("config.json", os.O_RDONLY, dir_fd=held)) as f:
            assert json.load(f)["rev"] == "A"  # the old folder, still whole under the open descriptor
    finally:
        os.close(held)


def test_layout_in_place_keeps_a_real_folder(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", model("A"))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", layout="in-place")])
    assert vol.run().code == 0
    new = model("B")
    hub_server.add_repo("org/llm", new)
    assert vol.run().code == 0
    assert not (vol.models / "vllm/llm").is_symlink()
    assert vol.tree("vllm/llm") == new
    assert not list((vol.models / "vllm").glob(".llm.rev-*"))


# --------------------------------------------------------------------------- status and prune


def three_revisions(vol: Volume, hub: HubServer) -> list[str]:
    shas = []
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    for rev in "ABC":
        shas.append(hub.add_repo("org/llm", model(rev)))
        r = vol.run()
        assert r.code == 0, r.stderr
    return shas


def test_status_says_what_each_lane_takes(vol: Volume, hub_server: HubServer) -> None:
    shas = three_revisions(vol, hub_server)
    r = vol.run("status", "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    (lane,) = doc["lane_status"]
    assert lane["layout"] == "revisions" and lane["revision"] == shas[2] and lane["revision_folder"] == shas[2][:12]
    assert sorted(lane["kept_revisions"]) == sorted(s[:12] for s in shas[:2])
    assert lane["last_verified"] and lane["bytes_on_disk"] > 0
    assert lane["prune_frees"] > 0  # the oldest revision, beyond --keep 2
    assert doc["volume"]["free_bytes"] > 0


def test_prune_frees_exactly_what_the_dry_run_listed_and_check_stays_ready(vol: Volume, hub_server: HubServer) -> None:
    shas = three_revisions(vol, hub_server)
    staging = vol.models / STATE / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "deadbeef-0123.part").write_bytes(b"x" * 5000)
    dry = vol.run("prune", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    listed = json.loads(dry.stdout)
    paths = sorted(i["path"] for i in listed["items"])
    assert paths == sorted([str(vol.models / f"vllm/.llm.rev-{shas[0][:12]}"), str(staging / "deadbeef-0123.part")])
    assert (vol.models / f"vllm/.llm.rev-{shas[0][:12]}").exists()  # a dry run removes nothing
    # the oldest revision shares its shards with the others: only its own config files free space
    rev_item = next(i for i in listed["items"] if i["what"] == "revision")
    shard_bytes = sum(p.stat().st_size for p in (vol.models / "vllm/llm").glob("*.safetensors"))
    assert 0 < rev_item["bytes"] < shard_bytes
    done = vol.run("prune", "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["freed_bytes"] == listed["frees_bytes"]
    assert sorted(p.name for p in (vol.models / "vllm").iterdir()) == sorted(
        ["llm", f".llm.rev-{shas[1][:12]}", f".llm.rev-{shas[2][:12]}"])
    assert not (staging / "deadbeef-0123.part").exists()
    assert vol.run("check").code == 0
    keep1 = vol.run("prune", "--keep", "1")
    assert keep1.code == 0, keep1.stderr
    assert sorted(p.name for p in (vol.models / "vllm").iterdir()) == sorted(["llm", f".llm.rev-{shas[2][:12]}"])
    assert vol.run("check", "--verify", "full").code == 0


def test_prune_removes_old_cache_snapshots_and_orphan_blobs(vol: Volume, hub_server: HubServer) -> None:
    vol.write([hf_lane("emb", "hf-cache/hub", "hf://org/emb@main", kind="hf-cache")])
    for rev in "ABC":
        hub_server.add_repo("org/emb", model(rev, sharded=False))
        assert vol.run().code == 0
    repo = vol.models / "hf-cache/hub/models--org--emb"
    assert len(list((repo / "snapshots").iterdir())) == 3
    r = vol.run("prune", "--keep", "1", "--json")
    assert r.code == 0, r.stderr
    assert len(list((repo / "snapshots").iterdir())) == 1
    kinds = sorted({i["what"] for i in json.loads(r.stdout)["items"]})
    assert kinds == ["blob", "snapshot"]
    assert vol.run("check", "--verify", "full").code == 0


def test_prune_waits_for_another_writer_and_gives_6(vol: Volume, hub_server: HubServer) -> None:
    three_revisions(vol, hub_server)
    from preflight.lease import Lease

    holder = Lease(vol.models / STATE, stale_after=60)
    holder.acquire(1, lambda _m: None)
    try:
        r = vol.run("prune", "--lease-wait", "1")
    finally:
        holder.release()
    assert r.code == 6, r.stderr
    assert len(list((vol.models / "vllm").glob(".llm.rev-*"))) == 3  # nothing removed


def test_prune_unselected_is_opt_in(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", model("A", sharded=False))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    (vol.models / "vllm/llm/notes.bin").write_bytes(b"\0" * 100)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", exclude=["*.bin"])])
    assert vol.run("prune").code == 0
    assert (vol.models / "vllm/llm/notes.bin").exists()
    r = vol.run("prune", "--unselected")
    assert r.code == 0, r.stderr
    assert not (vol.models / "vllm/llm/notes.bin").exists()
    assert vol.run("check").code == 0


@pytest.mark.parametrize("small_vol", [48], indirect=True)
def test_an_upgrade_needs_space_only_for_what_changed(small_vol: Volume, hub_server: HubServer) -> None:
    """30 MiB of weights on a 48 MiB volume: a second full copy would not fit, the changed config does."""
    big = os.urandom(30 * 2**20)
    files = {**model("A", sharded=False), "extra.bin": big}
    hub_server.add_repo("org/llm", files)
    small_vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert small_vol.run().code == 0
    hub_server.add_repo("org/llm", {**model("B", sharded=False), "extra.bin": big})
    r = small_vol.run()
    assert r.code == 0, r.stderr
    assert json.loads((small_vol.models / "vllm/llm/config.json").read_text())["rev"] == "B"


def test_revisions_are_reported_as_commits_never_branch_names(vol: Volume, hub_server: HubServer) -> None:
    sha = hub_server.add_repo("org/llm", model("A"))
    hub_server.add_repo("org/emb", model("E", sharded=False))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main"), hf_lane("emb", "hf-cache/hub", "hf://org/emb@main", kind="hf-cache")])
    sync = vol.run("sync", "--json")
    assert sync.code == 0, sync.stderr
    check = vol.run("check", "--json")  # no lock, no network: the receipts remember the commit
    for doc in (json.loads(sync.stdout), json.loads(check.stdout)):
        revs = {l["name"]: l.get("revision") for l in doc["lanes"]}
        assert revs["llm"] == sha and len(revs["emb"]) == 40 and "main" not in revs.values(), revs
    status = json.loads(vol.run("status", "--json").stdout)["lane_status"]
    assert {s["name"]: len(s["revision"]) for s in status} == {"llm": 40, "emb": 40}
