"""`preflight sync` when the network misbehaves: drops, 5xx, stalls, corrupt bytes, missing
things, auth, and a process killed or stopped in the middle of a download."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.builders import write_safetensors
from tests.hubserver import DEFAULT_TOKEN, HubServer
from tests.repos import hf_model
from tests.test_sync import STATE, Volume, hf_lane, hub_downloads, kill, model_vol, vol  # noqa: F401

WEIGHTS = "model.safetensors"


def big_model(n_bytes: int = 1 << 20) -> dict[str, bytes]:
    """An hf-dir repo whose weights file is about ``n_bytes`` of non-zero data, so byte faults land inside it."""
    with tempfile.TemporaryDirectory() as d:
        rows = n_bytes // 4096
        data = np.arange(rows * 1024, dtype=np.float32).reshape(rows, 1024)
        path = write_safetensors(Path(d) / WEIGHTS, {"model.embed_tokens.weight": data})
        return hf_model(extra={WEIGHTS: path.read_bytes()})


def cdn_requests(hub: HubServer, repo: str, path: str, since: int = 0) -> list:
    """CDN GETs of one LFS file, from log position ``since`` on (the log is never cleared while a
    stalled response may still be writing to it)."""
    return [r for r in hub.requests[since:] if r.kind == "cdn" and r.repo_id == repo and r.file == path]


def cdn_ranges(hub: HubServer, repo: str, path: str, since: int = 0) -> list[str | None]:
    return [r.range for r in cdn_requests(hub, repo, path, since)]


def lane_message(run, name: str) -> str:
    return " ".join(p["message"] for p in run.lane(name)["problems"])




SHARD = "model-00002-of-00003.safetensors"


# --------------------------------------------------------------------------- transient faults recover


def test_dropped_connection_is_resumed_with_range(model_vol, hub_server: HubServer) -> None:
    vol, files = model_vol
    hub_server.fault("org/llm", SHARD).drop_after(100, times=1)
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    ranges = cdn_ranges(hub_server, "org/llm", SHARD)
    assert ranges[0] is None and "bytes=100-" in ranges[1:], ranges
    assert "retry 1/3" in r.stderr
    assert vol.debris() == []


def test_two_503_answers_then_success(model_vol, hub_server: HubServer) -> None:
    vol, files = model_vol
    hub_server.fault("org/llm", "config.json").status(503, times=2)
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert hub_server.count("org/llm", "config.json", status=503) == 2
    assert vol.debris() == []


def test_resume_when_the_server_ignores_range(model_vol, hub_server: HubServer) -> None:
    vol, files = model_vol
    fault = hub_server.fault("org/llm", SHARD)
    fault.drop_after(100, times=1)
    fault.ignore_range(times=1)
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    served = [(q.range, q.status) for q in hub_server.requests if q.kind == "cdn" and q.file == SHARD]
    assert served[-1] == ("bytes=100-", 200), served  # asked to resume, got the whole file: started over
    assert vol.debris() == []


# --------------------------------------------------------------------------- persistent faults fail with 3


def test_persistent_500_exits_3_naming_lane_and_url(model_vol, hub_server: HubServer) -> None:
    vol, _files = model_vol
    hub_server.fault("org/llm", "config.json").status(500, times=None)
    r = vol.run("sync", "--retries", "1")
    assert r.code == 3, r.stderr
    msg = lane_message(r, "llm")
    assert "fetch-failed" in r.codes("llm")
    assert "llm/config.json" in msg and "HTTP 500" in msg
    commit = r.lane("llm")["revision"]
    assert hub_server.file_url("org/llm", "config.json", commit) in msg
    assert "llm" in (r.termination or "")
    assert not (vol.models / "vllm/llm/config.json").exists()
    assert vol.debris() == []


def test_stall_fails_with_3_in_bounded_time(model_vol, hub_server: HubServer) -> None:
    vol, _files = model_vol
    hub_server.fault("org/llm", SHARD).stall(50, 60)
    started = time.monotonic()
    r = vol.run("sync", "--stall-timeout", "1", "--retries", "0", timeout=30)
    assert r.code == 3, r.stderr
    assert time.monotonic() - started < 15
    assert "no data for 1s" in lane_message(r, "llm")
    assert not (vol.models / "vllm/llm" / SHARD).exists()
    assert vol.debris(allow_partial=True) == []


def test_deadline_ends_a_stalled_download_long_before_the_stall_timeout(model_vol, hub_server: HubServer) -> None:
    vol, _files = model_vol
    hub_server.fault("org/llm", SHARD).stall(50, 60)
    started = time.monotonic()
    r = vol.run("sync", "--deadline", "2", "--stall-timeout", "30", timeout=60)
    took = time.monotonic() - started
    assert r.code == 3, r.stderr
    assert "deadline passed" in lane_message(r, "llm")
    assert took < 10, f"took {took:.1f}s with a 2s deadline"
    assert not (vol.models / "vllm/llm" / SHARD).exists()
    assert vol.debris(allow_partial=True) == []


def test_corrupt_bytes_are_never_published_and_valid_files_stay(model_vol, hub_server: HubServer) -> None:
    vol, files = model_vol
    assert vol.run().code == 0
    root = vol.models / "vllm/llm"
    (root / SHARD).unlink()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}
    hub_server.fault("org/llm", SHARD).corrupt(len(files[SHARD]) - 3)  # inside the tensor data: only the digest can tell
    r = vol.run("sync", "--retries", "1")
    assert r.code == 3, r.stderr
    assert "sha256" in lane_message(r, "llm")
    assert len(cdn_ranges(hub_server, "org/llm", SHARD)) == 2 + 1  # first sync, then two attempts
    assert not (root / SHARD).exists()
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}
    assert after == before
    assert vol.debris() == []


def test_corrupt_bytes_do_not_replace_an_invalid_file_either(model_vol, hub_server: HubServer) -> None:
    vol, files = model_vol
    assert vol.run().code == 0
    target = vol.models / "vllm/llm" / SHARD
    target.write_bytes(files[SHARD][:50])
    hub_server.fault("org/llm", SHARD).corrupt(len(files[SHARD]) - 3)
    r = vol.run("sync", "--retries", "0")
    assert r.code == 3, r.stderr
    assert target.read_bytes() == files[SHARD][:50]
    assert vol.debris() == []


# --------------------------------------------------------------------------- not found


def test_missing_file_in_repo_exits_3(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/gguf", {"other.gguf": b"GGUF"})
    vol.write([hf_lane("tiny", "gguf/tiny.gguf", "hf://org/gguf/tiny.gguf@main", kind="gguf")])
    r = vol.run()
    assert r.code == 3, r.stderr
    assert "tiny.gguf is not in org/gguf@main" in lane_message(r, "tiny")
    assert hub_downloads(hub_server) == 0


def test_file_answering_404_exits_3_without_retries(model_vol, hub_server: HubServer) -> None:
    vol, _files = model_vol
    hub_server.fault("org/llm", "tokenizer.json").status(404, times=None)
    r = vol.run()
    assert r.code == 3, r.stderr
    assert hub_server.count("org/llm", "tokenizer.json", status=404) == 1
    assert "HTTP 404" in lane_message(r, "llm")


def test_unknown_revision_exits_3(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", hf_model())
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@v9")])
    r = vol.run()
    assert r.code == 3, r.stderr
    assert "revision 'v9' not found in org/llm" in lane_message(r, "llm")


def test_unknown_repo_with_a_token_exits_3(vol: Volume, hub_server: HubServer) -> None:
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/nope@main")])
    r = vol.run()
    assert r.code == 3, r.stderr
    assert "org/nope not found" in lane_message(r, "llm") or "repository org/nope not found" in lane_message(r, "llm")


def test_unknown_repo_without_a_token_exits_4_and_says_a_token_may_be_needed(vol: Volume, hub_server: HubServer) -> None:
    """The Hub answers 401 to an anonymous request for a repo that is missing or private: it cannot say which."""
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/nope@main")])
    r = vol.run(token=False)
    assert r.code == 4, r.stderr
    assert "org/nope not found, or private or gated and no token was given" in lane_message(r, "llm")


# --------------------------------------------------------------------------- auth and secrets


def test_gated_repo_without_token_exits_4_with_token_file_0(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    files = hf_model()
    hub_server.add_repo("meta/llama", files, gated=True)
    vol.write([hf_lane("llama", "vllm/llama", "hf://meta/llama@main")])
    r = vol.run(token=False)
    assert r.code == 4, r.stderr
    assert "gated" in lane_message(r, "llama")
    assert not (vol.models / "vllm/llama").exists()

    secret = tmp_path / "hf-token"
    secret.write_text(DEFAULT_TOKEN + "\n")
    ok = vol.run("sync", "--token-file", str(secret), token=False)
    assert ok.code == 0, ok.stderr
    assert vol.tree("vllm/llama") == files


def test_token_file_absent_means_no_token_and_unreadable_is_exit_2(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    hub_server.add_repo("meta/llama", hf_model(), gated=True)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    # an optional Kubernetes secret that is not mounted: public lanes still sync, and it is said once
    absent = tmp_path / "secrets" / "hf-token"
    r = vol.run("sync", "--token-file", str(absent), token=False)
    assert r.code == 0, r.stderr
    assert f"note: token file {absent} does not exist; continuing without a token" in r.stderr
    gated = Volume(tmp_path / "gated", hub_server)
    gated.root.mkdir()
    gated.write([hf_lane("llama", "vllm/llama", "hf://meta/llama@main")])
    assert gated.run("sync", "--token-file", str(absent), token=False).code == 4
    # there but unreadable (here: a folder where the file should be): a deployment mistake, exit 2 at once
    since = len(hub_server.requests)
    wrong = tmp_path / "mounted-as-folder"
    wrong.mkdir()
    for command in ("sync", "lock"):
        r = vol.run(command, "--token-file", str(wrong))
        assert r.code == 2, r.stderr
        assert str(wrong) in r.stderr and "BAD" not in r.stderr and "Traceback" not in r.stderr
    assert len(hub_server.requests) == since
    assert r.termination is None or str(wrong) in r.termination


def test_token_never_appears_in_any_output(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    weak = "hf_weakTokenValue0123456789"
    hub_server.add_token(weak, access=False)
    hub_server.add_repo("meta/llama", hf_model(), gated=True)
    hub_server.add_repo("org/llm", hf_model())
    hub_server.fault("org/llm", "config.json").status(500, times=None)
    vol.write([hf_lane("llama", "vllm/llama", "hf://meta/llama@main"),
               hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    runs = [vol.run("sync", "--retries", "0", "--json", env=vol.env(token=False, HF_TOKEN=weak))]
    secret = tmp_path / "hf-token"
    secret.write_text(weak)
    runs.append(vol.run("sync", "--retries", "0", "--token-file", str(secret), token=False))
    for r in runs:
        assert r.code == 4, r.stderr
        assert weak not in r.stdout + r.stderr
        assert weak not in (r.termination or "")
        assert weak not in str(r.report)
    for f in vol.root.rglob("*"):
        if f.is_file() and f != secret:
            assert weak.encode() not in f.read_bytes(), f
    assert all(q.authorization for q in hub_server.requests if q.kind == "api")


# --------------------------------------------------------------------------- interrupted processes


@pytest.mark.slow
def test_killed_processes_resume_with_range_until_done(vol: Volume, hub_server: HubServer) -> None:
    files = big_model()
    size = len(files[WEIGHTS])
    hub_server.add_repo("org/big", files)
    vol.write([hf_lane("big", "vllm/big", "hf://org/big@main")])
    fault = hub_server.fault("org/big", WEIGHTS)
    kill_points = [200_000, 300_000]
    have = 0
    for step in kill_points:
        fault.stall(step, 60, times=1)
        proc, argv = vol.spawn("sync", "--lease-stale", "1")  # the killed run's lease stops beating
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if any(size >= have + step for size in vol.partial_sizes()):
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"no partial bytes arrived: {vol.partial_sizes()}")
        finally:
            kill(proc)
        have += step
        assert max(vol.partial_sizes()) == have
        assert not (vol.models / "vllm/big" / WEIGHTS).exists()
    since = len(hub_server.requests)
    r = vol.run("sync", "--lease-stale", "1")
    assert r.code == 0, r.stderr
    assert "taking over" in r.stderr
    assert vol.tree("vllm/big") == files
    final = cdn_requests(hub_server, "org/big", WEIGHTS, since)
    assert [(q.range, q.status, q.bytes_sent) for q in final] == [(f"bytes={have}-", 206, size - have)]
    assert vol.partials() == []
    assert not (vol.models / STATE / "lease.json").exists()
    assert vol.debris() == []


def test_sigterm_during_download_exits_130_releases_lease_keeps_partial(vol: Volume, hub_server: HubServer) -> None:
    files = big_model(256 * 1024)
    hub_server.add_repo("org/big", files)
    vol.write([hf_lane("big", "vllm/big", "hf://org/big@main")])
    hub_server.fault("org/big", WEIGHTS).stall(100_000, 60, times=1)
    proc, argv = vol.spawn()
    small = [name for name in files if name != WEIGHTS]

    def published() -> bool:  # into the revision being assembled beside the lane path
        return all(any((vol.models / "vllm").glob(f".big.rev-*/{name}")) for name in small)

    try:
        # SIGTERM once the weights are 100 kB in and every small file is published: partials
        # of small files still in flight would be kept too (as they should), so wait for them.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (any(size >= 100_000 for size in vol.partial_sizes()) and published()):
            time.sleep(0.05)
        assert published() and vol.partial_sizes() == [100_000], vol.partial_sizes()
        assert (vol.models / STATE / "lease.json").exists()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        r = vol.finish(proc, argv, timeout=20)
    finally:
        kill(proc)
    assert r.code == 130, r.stderr
    assert time.monotonic() - started < 10
    assert "interrupted (SIGTERM)" in r.stderr
    assert r.termination is not None and r.termination.startswith("interrupted (SIGTERM)")  # kubectl describe pod shows why
    assert not (vol.models / STATE / "lease.json").exists()
    assert vol.partial_sizes() == [100_000]
    assert not (vol.models / "vllm/big" / WEIGHTS).exists()
    assert vol.debris(allow_partial=True) == []
    resumed = vol.run()
    assert resumed.code == 0, resumed.stderr
    assert vol.tree("vllm/big") == files


def _killed_with_a_partial(vol: Volume, hub_server: HubServer) -> tuple[dict[str, bytes], Path]:
    """A sync killed (SIGKILL) while 100 kB of the weights are staged; the repo and that partial."""
    files = big_model(256 * 1024)
    hub_server.add_repo("org/big", files)
    vol.write([hf_lane("big", "vllm/big", "hf://org/big@main")])
    hub_server.fault("org/big", WEIGHTS).stall(100_000, 60, times=1)
    proc, _argv = vol.spawn("sync", "--lease-stale", "1")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(size >= 100_000 for size in vol.partial_sizes()):
            time.sleep(0.05)
    finally:
        kill(proc)
    (partial,) = [p for p in vol.partials() if p.stat().st_size >= 100_000]
    return files, partial


@pytest.mark.parametrize("odd", ["symlink", "folder"])
def test_whatever_stands_at_a_staging_name_is_replaced_never_followed(vol: Volume, hub_server: HubServer, tmp_path: Path, odd: str) -> None:
    files, partial = _killed_with_a_partial(vol, hub_server)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    partial.unlink()
    if odd == "symlink":
        partial.symlink_to(outside)
    else:
        partial.mkdir()
        (partial / "x").write_bytes(b"x")
    r = vol.run("sync", "--lease-stale", "1")
    assert r.code == 0, r.stderr
    assert outside.read_bytes() == b"precious"  # no byte went through the link
    assert vol.tree("vllm/big") == files
    assert vol.debris() == []


def test_a_writer_that_loses_the_lease_stops_waits_and_ends_ready(vol: Volume, hub_server: HubServer) -> None:
    """A paused sync (SIGSTOP: a frozen container) loses the lease to a second one; resumed, it
    stops downloading, waits for the new holder, checks again and exits 0, as the second does."""
    files = big_model(256 * 1024)
    hub_server.add_repo("org/big", files)
    vol.write([hf_lane("big", "vllm/big", "hf://org/big@main")])
    hub_server.fault("org/big", WEIGHTS).stall(100_000, 30, times=1)  # only the first writer's download stalls
    first, first_argv = vol.spawn("sync", "--lease-stale", "1")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(size >= 100_000 for size in vol.partial_sizes()):
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        second = vol.run("sync", "--lease-stale", "1", timeout=60)
        assert second.code == 0, second.stderr
        assert "taking over" in second.stderr
        first.send_signal(signal.SIGCONT)
        r = vol.finish(first, first_argv, timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
        kill(first)
    assert r.code == 0, r.stderr
    assert "lost the volume lease" in r.stderr
    assert vol.tree("vllm/big") == files
    assert vol.debris() == []
    assert not (vol.models / STATE / "lease.json").exists()


# --------------------------------------------------------------------------- a volume that fills up

MiB = 2**20


@pytest.fixture
def small_vol(tmp_path: Path, hub_server: HubServer, request: pytest.FixtureRequest):
    """A Volume whose models folder is a small tmpfs, 80 MiB unless the test asks for
    another size (indirect parametrization); needs root, as the CI machine has."""
    import os
    import subprocess

    vol = Volume(tmp_path, hub_server)
    vol.models.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    size = getattr(request, "param", 80)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(vol.models)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol.models)], check=False)


def zeros_url(hub: HubServer, tmp_path: Path, name: str, size: int) -> tuple[str, str]:
    """A sparse file of zeros served at /files/<name>; its URL and sha256."""
    import hashlib

    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    h = hashlib.sha256()
    block = bytes(MiB)
    for _ in range(size // MiB):
        h.update(block)
    h.update(bytes(size % MiB))
    return hub.add_url(f"/files/{name}", path), h.hexdigest()


def url_gets(hub: HubServer, name: str) -> int:
    return sum(1 for r in hub.requests if r.path == f"/files/{name}" and r.method == "GET")


def test_url_without_size_is_measured_before_fetching_so_a_full_volume_gives_5(small_vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    url, digest = zeros_url(hub_server, tmp_path, "blob.bin", 80 * MiB)  # more than the 80 MiB volume holds
    small_vol.write([{"name": "blob", "kind": "file", "path": "blob.bin", "source": url, "sha256": digest}])
    r = small_vol.run("sync")
    assert r.code == 5, r.stderr
    assert "80.0 MiB to fetch" in r.stderr
    assert url_gets(hub_server, "blob.bin") == 0
    assert small_vol.debris() == []


def test_the_free_space_margin_scales_with_what_is_fetched(small_vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    """70 MiB onto an 80 MiB volume fits: the margin is a fraction of what is fetched (about
    1 MiB here), not a fixed 64 MiB that made small lanes fail on small volumes."""
    url, digest = zeros_url(hub_server, tmp_path, "blob.dat", 70 * MiB)
    small_vol.write([{"name": "blob", "kind": "file", "path": "blob.dat", "source": url, "sha256": digest}])
    r = small_vol.run("sync")
    assert r.code == 0, r.stderr
    assert (small_vol.models / "blob.dat").stat().st_size == 70 * MiB


def test_url_without_size_and_no_head_answer_stops_at_the_announced_length(small_vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    url, digest = zeros_url(hub_server, tmp_path, "big.bin", 100 * MiB)
    hub_server.url_fault("/files/big.bin").status(403, times=None, methods=("HEAD",))  # a URL signed for GET only
    small_vol.write([{"name": "big", "kind": "file", "path": "big.bin", "source": url, "sha256": digest}])
    r = small_vol.run("sync")
    assert r.code == 5, r.stderr
    assert "not enough disk space" in r.lane("big")["problems"][-1]["message"]
    assert "of unknown size" in r.stderr
    assert small_vol.debris() == []  # nothing was written


def test_volume_filling_up_mid_download_gives_5_and_frees_the_partial(small_vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    lanes = []
    for name in ("a.dat", "b.dat"):  # not pickles (.bin would be scanned as one): no format check
        url, digest = zeros_url(hub_server, tmp_path, name, 50 * MiB)  # each fits alone, not both
        fault = hub_server.url_fault(f"/files/{name}")
        fault.status(403, times=None, methods=("HEAD",))
        fault.stall(MiB, 2, times=1)  # both downloads pass their space check before either goes on
        lanes.append({"name": name.split(".")[0], "kind": "file", "path": name, "source": url, "sha256": digest})
    small_vol.write(lanes)
    r = small_vol.run("sync", "--workers", "2")
    assert r.code == 5, r.stderr
    assert "filled up" in r.stderr
    assert small_vol.debris() == []  # the partial that could not finish is gone
    published = [p.name for p in small_vol.models.glob("*.dat")]
    assert len(published) <= 1
    for name in published:
        assert (small_vol.models / name).stat().st_size == 50 * MiB


def test_a_416_to_a_resume_starts_over_from_byte_0_in_the_same_run(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    """A staged prefix longer than the file now is (the file shrank, or an earlier answer
    over-announced its length) gets 416 to its Range request: the partial is dropped and
    the file fetched again from byte 0, not a failed run."""
    import hashlib

    url, digest = zeros_url(hub_server, tmp_path, "shrunk.bin", 3 * MiB)
    hub_server.url_fault("/files/shrunk.bin").status(403, times=None, methods=("HEAD",))  # no size before the body
    vol.write([{"name": "blob", "kind": "file", "path": "shrunk.bin", "source": url, "sha256": digest}])
    staging = vol.models / STATE / "staging"
    staging.mkdir(parents=True)
    name = f"{digest}-{hashlib.sha256(str(vol.models / 'shrunk.bin').encode()).hexdigest()[:12]}.part"
    (staging / name).write_bytes(b"\0" * (3 * MiB + 10))  # past the file's end: Range bytes=3145738- is unsatisfiable
    r = vol.run("sync")
    assert r.code == 0, r.stderr
    assert "416" in r.stderr and "starting over from byte 0" in r.stderr
    ranges = [req.range for req in hub_server.requests if req.path == "/files/shrunk.bin" and req.method == "GET"]
    assert ranges == [f"bytes={3 * MiB + 10}-", None]
    assert (vol.models / "shrunk.bin").stat().st_size == 3 * MiB and vol.debris() == []


@pytest.mark.parametrize("small_vol", [8], indirect=True)
def test_ready_json_that_cannot_be_written_is_not_ready(small_vol: Volume, hub_server: HubServer) -> None:
    """Readiness probes read ready.json, so it is part of ready: a volume that fills up
    after every lane verified is exit 5, with the reason, and no ready.json."""
    hub_server.add_repo("org/llm", hf_model())
    small_vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert small_vol.run("sync").code == 0
    state = small_vol.models / STATE
    for n in ("ready.json", "report.json"):
        (state / n).unlink()
    import os

    fd = os.open(small_vol.models / "filler", os.O_WRONLY | os.O_CREAT)  # fill what is left of the volume
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    r = small_vol.run("sync")
    assert r.code == 5, r.stderr
    assert "ready.json could not be written" in r.report["reason"] and r.report["status"] == "not-ready"
    assert not (state / "ready.json").exists()
    assert "ready.json" in (r.termination or "")


def test_a_state_folder_on_another_filesystem_is_named_before_any_download(small_vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    """Staging must share the models folder's filesystem (a verified file is renamed into
    place): a --state-dir elsewhere is refused up front with the reason, not after the
    download with "Invalid cross-device link"."""
    hub_server.add_repo("org/llm", hf_model())
    small_vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    r = small_vol.run("sync", "--state-dir", str(tmp_path / "state"))
    assert r.code == 1, r.stderr
    assert "another filesystem" in r.stderr and hub_downloads(hub_server, "org/llm") == 0


@pytest.mark.parametrize("what", ["revision", "repo", "file"])
def test_answers_that_will_not_change_are_not_retried(vol: Volume, hub_server: HubServer, what: str) -> None:
    """A revision, repository or file that is not there is said at once: asking again in
    1+2+4 seconds gives the same answer (the listing is asked once)."""
    hub_server.add_repo("org/gguf", {"other.gguf": b"GGUF"})
    source = {"revision": "hf://org/gguf/other.gguf@nope", "repo": "hf://org/absent/x.gguf@main", "file": "hf://org/gguf/tiny.gguf@main"}[what]
    vol.write([hf_lane("tiny", "gguf/tiny.gguf", source, kind="gguf")])
    r = vol.run()
    assert r.code in (3, 4), r.stderr
    assert "retry" not in r.stderr
    assert sum(1 for q in hub_server.requests if q.kind == "api") == 1
