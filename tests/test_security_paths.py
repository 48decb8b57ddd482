"""A hostile source or a hostile volume must never get a byte written outside the models
folder: names from listings (Hub, lock, mirror), commit and blob ids, symlinks on the way
to a lane, a state folder or its staging that leads out. Each case also checks that
nothing reached the outside folder and that the lane failed with `path-escape`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.hubserver import HubServer
from tests.repos import hf_model
from tests.test_sync import STATE, Volume, hf_lane, hub_downloads, kill, vol  # noqa: F401

from preflight.volume import UnsafeName, Volume as Vol, is_hex_digest, safe_rel


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def outside_dir(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    (out / "precious").write_bytes(b"keep")
    return out


def problem_codes(run, lane: str) -> list[str]:
    return [p["code"] for p in run.lane(lane)["problems"]]


# --------------------------------------------------------------------------- names, one function


@pytest.mark.parametrize("name", [
    "../x", "../../x", "/etc/passwd", "sub/../../../x", "a//b", "./a", "a/.", "", "a\x00b", "a\nb", "a\\..\\b",
    ".preflight/receipts.json", "sub/.preflight", "x" * 256, "a/" * 2100,
])
def test_safe_rel_refuses_every_name_that_could_leave_the_lane(name: str) -> None:
    with pytest.raises(UnsafeName):
        safe_rel(name)


@pytest.mark.parametrize("name", ["config.json", "1_Pooling/config.json", "onnx/model.onnx", "tokenizer.model",
                                  "..hidden", "a..b", "x" * 255, "données/modèle.safetensors"])
def test_safe_rel_keeps_real_repo_names(name: str) -> None:
    assert safe_rel(name) == name


def test_hex_digest_check() -> None:
    assert is_hex_digest("a" * 40) and is_hex_digest("0" * 64)
    assert not is_hex_digest("../../" + "a" * 34) and not is_hex_digest("A" * 40) and not is_hex_digest(None)


# --------------------------------------------------------------------------- a hostile Hub listing


def rename_sibling(old: str, new: str):
    def rewrite(info: dict) -> dict:
        for s in info["siblings"]:
            if s["rfilename"] == old:
                s["rfilename"] = new
        return info
    return rewrite


@pytest.mark.parametrize("kind", ["hf-dir", "hf-cache"])
@pytest.mark.parametrize("hostile", ["../../escaped.json", "/tmp/escaped-abs.json", "sub/../../../escaped.json",
                                     ".preflight/receipts.json", "a\x00b.json"])
def test_a_listing_with_a_name_that_leaves_the_lane_writes_nothing(vol: Volume, hub_server: HubServer, tmp_path: Path,
                                                                   kind: str, hostile: str) -> None:
    hub_server.add_repo("org/evil", hf_model())
    hub_server.tamper("org/evil", rename_sibling("generation_config.json", hostile))
    vol.write([hf_lane("evil", "hf/evil", "hf://org/evil@main", kind=kind)])
    before = set(tree(tmp_path))
    r = vol.run()
    assert r.code == 1, r.stderr
    assert "path-escape" in problem_codes(r, "evil")
    assert "would leave the lane" in r.stderr
    assert hub_downloads(hub_server, "org/evil") == 0  # refused before the first byte
    assert not (vol.models / "hf").exists()
    new = set(tree(tmp_path)) - before
    assert all(p.startswith(("models/.preflight", "report-", "termination-", "hf-home")) for p in new), new
    assert not Path("/tmp/escaped-abs.json").exists()


def set_commit(info: dict) -> dict:
    info["sha"] = "../../../../escaped"
    return info


def set_blob_id(info: dict) -> dict:
    for s in info["siblings"]:
        if s["rfilename"] == "model.safetensors":
            s["lfs"]["sha256"] = "../../../../../escaped"
    return info


@pytest.mark.parametrize("rewrite, says", [(set_commit, "not a commit id"), (set_blob_id, "not a digest")])
def test_an_id_that_is_a_path_writes_nothing(vol: Volume, hub_server: HubServer, tmp_path: Path, rewrite, says: str) -> None:
    """A commit id and a cache blob id become folder and file names: both must be digests."""
    hub_server.add_repo("org/evil", hf_model())
    hub_server.tamper("org/evil", rewrite)
    vol.write([hf_lane("evil", "hf/evil", "hf://org/evil@main", kind="hf-cache")])
    r = vol.run()
    assert r.code == 1, r.stderr
    assert "path-escape" in problem_codes(r, "evil")
    assert says in r.stderr
    assert hub_downloads(hub_server, "org/evil") == 0
    assert not (vol.models / "hf").exists() and not list(tmp_path.rglob("escaped"))


def test_a_lock_file_with_a_hostile_name_is_refused_too(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run("lock").code == 0
    lock_path = vol.manifest.with_suffix(".lock.json")
    lock = json.loads(lock_path.read_text())
    lane = lock["lanes"]["llm"]
    lane["files"]["../../../escaped.json"] = lane["files"].pop("generation_config.json")
    lock_path.write_text(json.dumps(lock))
    r = vol.run("sync", "--locked")
    assert r.code == 2, r.stderr  # the lock is the operator's file: a usage error naming the entry
    assert "bad file entry '../../../escaped.json'" in r.stderr
    assert not (tmp_path / "escaped.json").exists() and not (vol.models / "vllm").exists()


# --------------------------------------------------------------------------- symlinks on the volume


def test_a_lane_folder_whose_parent_links_out_of_the_volume_is_refused(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    out = outside_dir(tmp_path)
    hub_server.add_repo("org/llm", hf_model())
    vol.models.mkdir()
    (vol.models / "hf").symlink_to(out)
    vol.write([hf_lane("llm", "hf/minilm", "hf://org/llm@main")])
    r = vol.run()
    assert r.code == 1, r.stderr
    assert "path-escape" in problem_codes(r, "llm")
    assert tree(out) == ["precious"]
    assert str(out) in r.stderr  # says where the link leads


def test_a_lane_folder_linked_inside_the_volume_is_followed(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    (vol.models / "releases" / "v2").mkdir(parents=True)
    (vol.models / "current").symlink_to("releases/v2")
    vol.write([hf_lane("llm", "current/llm", "hf://org/llm@main")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("releases/v2/llm") == files


@pytest.mark.parametrize("link", [STATE, f"{STATE}/staging"])
@pytest.mark.parametrize("command", ["sync", "check"])
def test_a_state_folder_that_links_out_is_refused(vol: Volume, hub_server: HubServer, tmp_path: Path, link: str, command: str) -> None:
    out = outside_dir(tmp_path)
    hub_server.add_repo("org/llm", hf_model())
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    (vol.models / link).parent.mkdir(parents=True, exist_ok=True)
    (vol.models / link).symlink_to(out)
    r = vol.run(command)
    if command == "check" and link != STATE:
        assert r.code == 1, r.stderr  # the lane is missing; staging is not touched by check
    else:
        assert r.code == 1, r.stderr
        assert "outside the models folder" in r.stderr
    assert tree(out) == ["precious"]
    assert hub_downloads(hub_server) == 0


def test_a_target_folder_that_is_a_file_is_named(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", hf_model())
    vol.models.mkdir()
    (vol.models / "vllm").write_bytes(b"not a folder")
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    r = vol.run()
    assert r.code == 1, r.stderr
    assert (vol.models / "vllm").read_bytes() == b"not a folder"


def test_volume_walk_refuses_relative_links_that_climb_out(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "a").mkdir(parents=True)
    (root / "a" / "up").symlink_to("../../")
    from preflight.volume import PathEscape

    with pytest.raises(PathEscape):
        Vol(root).open_dir("a/up/x")
    assert not (tmp_path / "x").exists()


def test_volume_walk_bounds_symlink_loops(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    from preflight.volume import PathEscape

    with pytest.raises(PathEscape):
        Vol(root).open_dir("a/x")


# --------------------------------------------------------------------------- the staged file is what gets published


def test_bytes_appended_to_the_staging_file_by_another_writer_are_never_published(vol: Volume, hub_server: HubServer) -> None:
    """A stray writer (one that lost the lease while paused) appends to the partial mid-download:
    the size check on the staged file catches it, the download starts again, the result is exact."""
    from tests.test_sync_faults import WEIGHTS, big_model

    files = big_model(1 << 20)
    hub_server.add_repo("org/big", files)
    vol.write([hf_lane("big", "vllm/big", "hf://org/big@main")])
    hub_server.fault("org/big", WEIGHTS).stall(100_000, 4, times=1)
    proc, argv = vol.spawn()
    try:
        deadline = time.monotonic() + 30
        partial = None
        while time.monotonic() < deadline and partial is None:
            partial = next((p for p in (vol.models / STATE / "staging").glob("*.part") if p.stat().st_size >= 100_000), None)
            time.sleep(0.02)
        assert partial is not None
        proc.send_signal(signal.SIGSTOP)  # the writer sits between two writes
        with open(partial, "ab") as f:
            f.write(b"\0" * 4096)
        proc.send_signal(signal.SIGCONT)
        r = vol.finish(proc, argv, timeout=60)
    finally:
        kill(proc)
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/big") == files
    assert "another writer" in r.stderr


def test_a_writer_that_lost_the_lease_stops_writing(tmp_path: Path) -> None:
    from preflight.lease import Lease

    lease = Lease(tmp_path, stale_after=0.2, heartbeat=60)
    lease.acquire(1, lambda _m: None)
    try:
        assert lease.still_ours()
        lease.path.write_text(json.dumps({"owner": "another-host:1:abc"}))
        time.sleep(0.15)  # past half the stale time: the next write asks the lease file
        assert not lease.still_ours() and lease.lost
    finally:
        lease.release()
    assert lease.path.exists()  # not ours, so not removed


# --------------------------------------------------------------------------- unwritable folders, before the first byte


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_an_unwritable_lane_folder_is_found_before_any_download(vol: Volume, hub_server: HubServer) -> None:
    """The state folder is writable, the lane's folder is not (a read-only mount): exit 1 before
    the first byte, naming the folder and the cause, instead of a failed rename after the download."""
    hub_server.add_repo("org/llm", hf_model())
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    ro = vol.models / "vllm"
    ro.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        r = vol.run()
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert r.code == 1, r.stderr
    assert f"the folder {ro} is not writable by uid 0: the filesystem is mounted read-only" in r.stderr
    assert hub_downloads(hub_server) == 0


# --------------------------------------------------------------------------- retries of the listing, Retry-After


def test_the_listing_is_retried_after_503_and_429(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    hub_server.api_fault("org/llm").status(503, times=1)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert "listing retry 1/3" in r.stderr
    hub_server.api_fault("org/llm").status(429, times=1, headers={"Retry-After": "1"})
    r = vol.run("sync", "--lane", "llm")
    assert r.code == 0, r.stderr


def test_a_retry_after_past_the_deadline_fails_at_once_and_says_so(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", hf_model())
    hub_server.api_fault("org/llm").status(429, times=5, headers={"Retry-After": "3600"})
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    started = time.monotonic()
    r = vol.run("sync", "--deadline", "30")
    assert r.code == 3, r.stderr
    assert time.monotonic() - started < 25
    assert "asked to retry after 3600s" in r.stderr


def test_a_file_answering_429_with_retry_after_is_fetched_after_the_wait(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    hub_server.fault("org/llm", "config.json").status(429, times=1, headers={"Retry-After": "2"})
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert "retry 1/3 in 2s" in r.stderr
    assert vol.tree("vllm/llm") == files


# --------------------------------------------------------------------------- secrets read strictly, messages that name the cause


@pytest.mark.parametrize("raw, want", [("hf_abcdefgh\n", "hf_abcdefgh"), ("hf_abcdefgh\r\n", "hf_abcdefgh"),
                                       ("  hf_abcdefgh  \nsecond line\n", "hf_abcdefgh"), ("\n", None), ("", None)])
def test_a_token_is_its_first_line_stripped(raw: str, want: str | None) -> None:
    from preflight.sources.hf import clean_token

    assert clean_token(raw, "test") == want


@pytest.mark.parametrize("raw", ["hf_abc\x00defgh", "hf_abc\x1bdefgh", "hf_abc defgh", "hf_abc\tdefgh"])
def test_a_token_with_a_control_character_is_a_usage_error_that_hides_it(raw: str) -> None:
    from preflight.errors import UsageError
    from preflight.sources.hf import clean_token

    with pytest.raises(UsageError) as caught:
        clean_token(raw, "the token file /run/secrets/hf")
    assert "defgh" not in str(caught.value) and "hf_abc" not in str(caught.value)
    assert "/run/secrets/hf" in str(caught.value)


def test_retry_policy() -> None:
    from preflight.errors import AuthError, FetchError
    from preflight.sources.http import DNS_FAILURE, retry_delay

    assert retry_delay(1, FetchError("x", status=503), None) == 1
    assert retry_delay(3, FetchError("x", status=None), None) == 4
    assert retry_delay(1, FetchError("x", status=404), None) is None
    assert retry_delay(1, FetchError("x", status=DNS_FAILURE), None) is None  # a name that does not resolve will not heal in seconds
    assert retry_delay(1, AuthError("x", status=401), None) is None
    err = FetchError("x", status=429)
    err.retry_after = 7
    assert retry_delay(1, err, None) == 7
    err.retry_after = 3600
    assert retry_delay(1, err, time.monotonic() + 60) is None and "asked to retry after 3600s" in err.message


def test_a_server_that_accepts_but_never_answers_is_a_stall_not_a_connect_timeout() -> None:
    import socket

    from preflight.errors import StalledError
    from preflight.sources.http import Timeouts, open_stream

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/x"
        with pytest.raises(StalledError) as caught:
            open_stream(url, {}, Timeouts(connect=5, stall=0.5))
    assert "sent no response within 0.5s (--stall-timeout)" in str(caught.value)
