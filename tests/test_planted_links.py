"""Every command that changes the volume, against links planted in it.

Anyone who can write the volume (another pod on a shared volume, a compromised server
container) can plant a symlink; preflight may run as root. Whatever is planted, and
whenever (before the run, or swapped in between a listing and a removal), nothing
outside the models folder is removed, renamed, written or re-moded: each case checks
the outside folder byte for byte afterwards. Cases: prune (staging, a lane's parent, the
lane path with --unselected, each folder of a cache lane), links to `/` and loops, sync's
revision switch and staging cleanup, perms --fix, and the door itself under swaps.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.hubserver import HubServer
from tests.test_revisions import model, three_revisions
from tests.test_sync import STATE, Volume, hf_lane, vol  # noqa: F401

from preflight import prune as pr
from preflight.volume import PathEscape, Staging, Volume as Door


def outside(tmp_path: Path, *names: str) -> Path:
    """A folder outside the models folder holding files (and folders, for names ending in
    '/') that a careless prune would take for its own."""
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    (out / "precious").write_bytes(b"keep me")
    for n in names:
        if n.endswith("/"):
            (out / n).mkdir(parents=True, exist_ok=True)
            (out / n / "inside").write_bytes(b"keep me too")
        else:
            (out / n).parent.mkdir(parents=True, exist_ok=True)
            (out / n).write_bytes(b"keep " + n.encode())
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under `folder` with its mode and content, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            out[p.relative_to(folder).as_posix()] = (st.st_mode, p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


def swap_for_link(path: Path, target: Path) -> Path:
    """Move a folder aside and leave a symlink to `target` at its name; the moved folder's path."""
    aside = path.with_name(path.name + ".moved")
    path.rename(aside)
    path.symlink_to(target)
    return aside


# --------------------------------------------------------------------------- prune


@pytest.mark.parametrize("to", ["outside", "root", "loop"])
def test_prune_never_removes_through_a_staging_folder_that_links_out(vol: Volume, hub_server: HubServer, tmp_path: Path, to: str) -> None:
    three_revisions(vol, hub_server)
    out = outside(tmp_path, "deadbeef-0123.part", "other.part")
    before, root_before = snapshot(out), sorted(os.listdir("/"))
    staging = vol.models / STATE / "staging"
    if staging.exists():
        os.rmdir(staging) if not any(staging.iterdir()) else None
    if to == "outside":
        staging.symlink_to(out)
    elif to == "root":
        staging.symlink_to("/")
    else:
        (vol.models / STATE / "a").symlink_to("b")
        (vol.models / STATE / "b").symlink_to("a")
        staging.symlink_to("a")
    r = vol.run("prune", "--keep", "1", "--json")
    assert r.code == 1, r.stderr
    doc = json.loads(r.stdout)
    assert not any(i["what"] == "partial" for i in doc["items"])
    assert "staging: nothing pruned" in doc["reason"]
    assert snapshot(out) == before and sorted(os.listdir("/")) == root_before
    # the lane's own old revisions were still pruned
    assert len(list((vol.models / "vllm").glob(".llm.rev-*"))) == 1


def test_prune_never_removes_revisions_through_a_lane_parent_that_links_out(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    shas = three_revisions(vol, hub_server)
    out = outside(tmp_path, f".llm.rev-{'0' * 12}/", f".llm.rev-{shas[0][:12]}/")
    before = snapshot(out)
    swap_for_link(vol.models / "vllm", out)
    r = vol.run("prune", "--keep", "1", "--json")
    assert r.code == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["items"] == [] or all(i["lane"] != "llm" for i in doc["items"])
    assert "lane llm: nothing pruned" in " ".join(doc.get("notes", [])) and "outside the models folder" in r.stdout
    assert snapshot(out) == before


def test_prune_unselected_never_removes_through_a_lane_path_that_links_out(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.add_repo("org/llm", model("A", sharded=False))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", layout="in-place")])
    assert vol.run().code == 0
    out = outside(tmp_path, "notes.bin", "sub/more.bin")
    before = snapshot(out)
    swap_for_link(vol.models / "vllm/llm", out)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", layout="in-place", exclude=["*.bin"])])
    r = vol.run("prune", "--unselected", "--json")
    assert r.code == 1, r.stderr
    assert not json.loads(r.stdout)["items"]
    assert snapshot(out) == before


@pytest.mark.parametrize("planted", ["blobs", "snapshots", "repo", "cache-parent"])
def test_prune_never_removes_cache_blobs_or_snapshots_through_a_link_out(vol: Volume, hub_server: HubServer, tmp_path: Path, planted: str) -> None:
    vol.write([hf_lane("emb", "hf-cache/hub", "hf://org/emb@main", kind="hf-cache")])
    for rev in "ABC":
        hub_server.add_repo("org/emb", model(rev, sharded=False))
        assert vol.run().code == 0
    repo = vol.models / "hf-cache/hub/models--org--emb"
    where = {"blobs": repo / "blobs", "snapshots": repo / "snapshots", "repo": repo, "cache-parent": vol.models / "hf-cache"}[planted]
    out = tmp_path / "outside"
    # the outside folder is a copy of what stood there, plus an orphan-looking blob and old snapshots
    import shutil

    shutil.copytree(where, out, symlinks=True)
    blobs_out = {"blobs": out, "snapshots": None, "repo": out / "blobs", "cache-parent": out / "hub/models--org--emb/blobs"}[planted]
    if blobs_out is not None:
        (blobs_out / ("f" * 64)).write_bytes(b"orphan-looking")
    before = snapshot(out)
    shutil.rmtree(where)
    where.symlink_to(out)
    r = vol.run("prune", "--keep", "1", "--json")
    assert r.code == 1, r.stderr
    assert not [i for i in json.loads(r.stdout)["items"] if i["lane"] == "emb"]
    assert snapshot(out) == before


def test_status_names_a_lane_that_leads_out_and_reads_nothing_there(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    three_revisions(vol, hub_server)
    out = outside(tmp_path, ".llm.rev-aaaaaaaaaaaa/")
    swap_for_link(vol.models / "vllm", out)
    r = vol.run("status", "--json")
    doc = json.loads(r.stdout)
    lane = next(s for s in doc["lane_status"] if s["name"] == "llm")
    assert lane["layout"] == "outside" and lane["bytes_on_disk"] == 0 and lane["kept_revisions"] == []


def test_a_removal_walks_again_so_a_swap_after_the_listing_changes_nothing_outside(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    """Planned on a clean volume, then the lane's parent and the staging folder are swapped
    for links to folders holding the same names: the removal refuses, names each item."""
    shas = three_revisions(vol, hub_server)
    staging = vol.models / STATE / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "abc.part").write_bytes(b"x" * 100)
    from preflight.session import Session

    session = Session.open(command="prune", manifest=str(vol.manifest), models_dir=None, profile=None, lanes=(), lock=None,
                           state_dir=None, verify="auto")
    planned = pr.plan(session.ctx, session.lanes, session.state_dir, keep=1, unselected=False)
    assert sorted(i.what for i in planned.items) == ["partial", "revision", "revision"]
    out = outside(tmp_path, f".llm.rev-{shas[0][:12]}/", f".llm.rev-{shas[1][:12]}/", "staging/abc.part")
    before = snapshot(out)
    swap_for_link(vol.models / "vllm", out)
    swap_for_link(staging, out / "staging")
    freed, notes = pr.remove(planned.items)
    assert freed == 0 and len(notes) == 3 and all("outside the models folder" in n for n in notes)
    assert snapshot(out) == before


def test_a_removal_leaves_an_item_that_became_a_link(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "vllm/.llm.rev-old").mkdir(parents=True)
    out = outside(tmp_path, "x/")
    item = pr.Item(Door(models), "vllm/.llm.rev-old", "revision", "llm", "old", is_dir=True)
    os.rmdir(models / "vllm/.llm.rev-old")
    (models / "vllm/.llm.rev-old").symlink_to(out)
    before = snapshot(out)
    freed, notes = pr.remove([item])
    assert freed == 0 and "changed since it was listed" in notes[0]
    assert snapshot(out) == before and (models / "vllm/.llm.rev-old").is_symlink()


# --------------------------------------------------------------------------- sync


def test_a_planted_temporary_link_beside_a_lane_is_removed_itself_never_its_target(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.add_repo("org/llm", model("A"))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    out = outside(tmp_path, "x/")
    before = snapshot(out)
    (vol.models / "vllm/.llm.lnk-99999").symlink_to(out)  # looks like a flip killed midway
    hub_server.add_repo("org/llm", model("B"))
    r = vol.run()
    assert r.code == 0, r.stderr
    assert not (vol.models / "vllm/.llm.lnk-99999").exists() and snapshot(out) == before


def test_a_link_at_a_staging_name_is_removed_itself_and_the_download_lands_in_staging(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    from preflight.sync import staging_name  # noqa: F401  (the names are digests: plant one for every file)

    files = model("A")
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    out = outside(tmp_path)
    target = out / "precious"
    staging = vol.models / STATE / "staging"
    staging.mkdir(parents=True)
    # a link at every name sync could pick: it learns them from the listing, so plant after a dry listing
    import hashlib

    for rel, data in files.items():
        key = hashlib.sha256(data).hexdigest()
        tgt = hashlib.sha256(str(vol.models / "vllm" / f".llm.rev-{'x' * 12}" / rel).encode()).hexdigest()[:12]
        (staging / f"{key}-{tgt}.part").symlink_to(target)
    (staging / "stray.part").symlink_to(target)
    before = snapshot(out)
    r = vol.run()
    assert r.code == 0, r.stderr
    assert snapshot(out) == before and vol.tree("vllm/llm") == files


# --------------------------------------------------------------------------- perms --fix


def test_perms_fix_never_changes_a_file_outside_through_a_link(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.add_repo("org/llm", model("A", sharded=False))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", layout="in-place")])
    assert vol.run().code == 0
    out = outside(tmp_path, "secret")
    (out / "secret").chmod(0o600)
    (out / "secret-dir").mkdir()
    (out / "secret-dir").chmod(0o700)
    (vol.models / "vllm/llm/planted.json").symlink_to(out / "secret")
    (vol.models / "vllm/llm/planted-dir").symlink_to(out / "secret-dir")
    before = snapshot(out)
    r = vol.run("perms", "--uid", "65532", "--gid", "65532", "--fix")
    assert snapshot(out) == before
    assert stat.S_IMODE(os.stat(out / "secret").st_mode) == 0o600 and stat.S_IMODE(os.stat(out / "secret-dir").st_mode) == 0o700
    assert "outside the models folder" in r.stderr


def test_perms_fix_follows_a_cache_link_to_its_blob_inside_the_volume(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/emb", model("A", sharded=False))
    vol.write([hf_lane("emb", "hf-cache/hub", "hf://org/emb@main", kind="hf-cache")])
    assert vol.run().code == 0
    blobs = list((vol.models / "hf-cache/hub/models--org--emb/blobs").iterdir())
    for b in blobs:
        b.chmod(0o600)
    r = vol.run("perms", "--uid", "65532", "--gid", "65532", "--fix")
    assert r.code == 0, r.stderr
    assert all(stat.S_IMODE(b.stat().st_mode) == 0o644 for b in blobs)


# --------------------------------------------------------------------------- the door itself


def test_a_held_staging_folder_swapped_for_a_link_still_writes_where_it_was_opened(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / ".preflight/staging").mkdir(parents=True)
    out = outside(tmp_path)
    before = snapshot(out)
    held = Staging(Door(models).sub(".preflight/staging"))
    f = held.file("a.part")
    aside = swap_for_link(models / ".preflight/staging", out)
    with f.writer(append=False) as w:
        w.write(b"bytes")
    f.sibling("a.part.map").write_atomic(b"{}")
    f.remove()
    assert snapshot(out) == before
    assert sorted(p.name for p in aside.iterdir()) == ["a.part.map"]
    held.close()


@pytest.mark.parametrize("op", ["write_atomic", "remove_file", "remove_tree", "make_symlink", "make_hardlink", "set_mode", "set_owner", "move"])
def test_every_door_operation_refuses_a_folder_that_links_out(tmp_path: Path, op: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    out = outside(tmp_path, "victim", "victim-dir/")
    (models / "inner").mkdir()
    (models / "inner/f").write_bytes(b"x")
    (models / "via").symlink_to(out)
    before = snapshot(out)
    door = Door(models)
    call = {
        "write_atomic": lambda: door.write_atomic("via/victim", b"owned"),
        "remove_file": lambda: door.remove_file("via/victim"),
        "remove_tree": lambda: door.remove_tree("via/victim-dir"),
        "make_symlink": lambda: door.make_symlink("via/new", "victim"),
        "make_hardlink": lambda: door.make_hardlink("inner/f", "via/new"),
        "set_mode": lambda: door.set_mode("via/victim", 0o777),
        "set_owner": lambda: door.set_owner("via/victim", 65532, 65532),
        "move": lambda: door.move("via/victim", "inner/stolen"),
    }[op]
    with pytest.raises(PathEscape):
        call()
    assert snapshot(out) == before


def test_the_door_removes_a_link_itself_and_never_descends_one(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "tree/sub").mkdir(parents=True)
    out = outside(tmp_path, "victim-dir/")
    (models / "tree/sub/link-out").symlink_to(out / "victim-dir")
    (models / "tree/file-link").symlink_to(out / "precious")
    before = snapshot(out)
    door = Door(models)
    with pytest.raises(OSError):
        door.set_mode("tree/file-link", 0o777)  # a link's target is not ours to change
    assert door.remove_tree("tree") and not (models / "tree").exists()
    assert snapshot(out) == before


def test_a_symlink_the_door_makes_may_not_point_out(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    door = Door(models)
    for target in ("../../etc", "/etc", "a/../../.."):
        with pytest.raises(PathEscape):
            door.make_symlink("x/link", target)
    door.make_symlink("x/link", "../y")  # stays inside
    assert os.readlink(models / "x/link") == "../y"
