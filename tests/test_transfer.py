"""Parallel ranged downloads, the chunk map, the connection pool and the fallbacks.

End to end with `preflight sync` against the local Hub server where a user would see
it (exit code, files on the volume, what the server was asked for), and with
`fetch_to` directly where the case is about one download. No timing luck: the server
holds requests until the test releases them (`Fault.hold`), and the tests poll for
the state they need (the chunk map on disk, requests waiting) with deadlines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from preflight.errors import FetchError
from preflight.sources import pool as poolmod
from preflight.sources import transfer
from preflight.sources.http import Cancel, Timeouts, fetch_to
from preflight.sources.pool import Budget
from tests.builders import write_safetensors
from tests.hubserver import HubServer, hub_server  # noqa: F401
from tests.repos import hf_model
from tests.test_sync import STATE, Volume, hf_lane, kill, vol  # noqa: F401

MiB = 2**20
WEIGHTS = "model.safetensors"
SIZE = 40 * MiB


def big_weights(n_bytes: int = SIZE, seed: int = 0) -> bytes:
    """A valid safetensors file of about ``n_bytes`` whose data differs at every offset."""
    with tempfile.TemporaryDirectory() as d:
        rows = n_bytes // 4096
        data = (np.arange(rows * 1024, dtype=np.uint32) * 2654435761 + seed).view(np.float32).reshape(rows, 1024)
        return write_safetensors(Path(d) / WEIGHTS, {"model.embed_tokens.weight": data}).read_bytes()


def pieces(size: int) -> int:
    """The piece length the client uses for a file of `size` with the default budget."""
    return transfer.piece_size(size, poolmod.DEFAULT_CONNECTIONS)


def parse(rng: str | None, size: int) -> tuple[int, int]:
    """[start, end) of a Range header (None: the whole file)."""
    if rng is None:
        return 0, size
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
    assert m, rng
    return int(m.group(1)), (int(m.group(2)) + 1 if m.group(2) else size)


def cdn_gets(hub: HubServer, path: str, since: int = 0) -> list:
    return [r for r in hub.requests[since:] if r.kind == "cdn" and r.file == path and r.method == "GET"]


def union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def wait_until(what: str, cond, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def chunk_map(vol: Volume) -> dict | None:
    maps = list((vol.models / STATE / "staging").glob("*.part.map"))
    if len(maps) != 1:
        return None
    try:
        return json.loads(maps[0].read_bytes())
    except (OSError, ValueError):
        return None


@pytest.fixture
def big_repo(vol: Volume, hub_server: HubServer) -> tuple[Volume, dict[str, bytes]]:
    files = hf_model(extra={WEIGHTS: big_weights()})
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    return vol, files


# --------------------------------------------------------------------------- the ranged download itself


def test_a_large_file_arrives_as_ranges_on_several_connections_byte_identical(big_repo, hub_server: HubServer) -> None:
    vol, files = big_repo
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert vol.debris() == []  # the chunk map went with the finished download
    size = len(files[WEIGHTS])
    gets = cdn_gets(hub_server, WEIGHTS)
    assert len(gets) >= 8
    assert all(g.status == 206 for g in gets)
    assert union([parse(g.range, size) for g in gets]) == [(0, size)]
    assert sum(g.bytes_sent for g in gets) == size  # every byte asked for once
    assert len({g.peer for g in gets}) > 1  # on several connections at once


def test_sigkill_mid_download_then_rerun_fetches_only_the_missing_ranges(big_repo, hub_server: HubServer) -> None:
    vol, files = big_repo
    size = len(files[WEIGHTS])
    piece = pieces(size)
    hold = hub_server.fault("org/llm", WEIGHTS).hold(2 * piece, 4 * piece)  # two pieces in the middle wait
    proc, argv = vol.spawn("sync")
    try:
        hold.wait_for(2)
        # Every other piece arrives; the chunk map on disk then lists all but the held two.
        want = [[0, 2 * piece], [4 * piece, size]]
        saved = wait_until("the chunk map to list every piece but the held ones",
                           lambda: (m := chunk_map(vol)) is not None and m["done"] == want and m)
    finally:
        kill(proc)
    proc.communicate()
    assert saved["size"] == size and saved["validator"]
    before = len(hub_server.requests)
    hold.release()
    hub_server.clear_faults()

    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert vol.debris() == []
    again = cdn_gets(hub_server, WEIGHTS, before)
    asked = union([parse(g.range, size) for g in again])
    assert asked == [(2 * piece, 4 * piece)], asked  # only the missing ranges, nothing listed as done
    assert all(g.status == 206 and g.if_range == saved["validator"] for g in again)
    for name in files:  # the other files were published by the first run and not fetched again
        if name != WEIGHTS:
            assert hub_server.count("org/llm", name, kind="resolve", status=200) == 1


def test_one_corrupted_range_publishes_nothing_and_only_that_file_is_fetched_again(big_repo, hub_server: HubServer) -> None:
    vol, files = big_repo
    size = len(files[WEIGHTS])
    hub_server.fault("org/llm", WEIGHTS).corrupt_range(size // 2, 16, times=1)
    r = vol.run("sync", "--retries", "0")
    assert r.code != 0
    assert "sha256" in json.dumps(r.report)
    assert not (vol.models / "vllm/llm" / WEIGHTS).exists()
    assert vol.debris() == []  # the bad bytes and their chunk map are gone
    others = {n: hub_server.count("org/llm", n, kind="resolve") for n in files if n != WEIGHTS}
    before = len(hub_server.requests)

    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert {n: hub_server.count("org/llm", n, kind="resolve") for n in others} == others  # nothing else re-fetched
    assert union([parse(g.range, size) for g in cdn_gets(hub_server, WEIGHTS, before)]) == [(0, size)]


def test_a_server_that_ignores_range_gets_one_stream_per_file_said_once(vol: Volume, hub_server: HubServer) -> None:
    second = "model-extra.safetensors"
    files = hf_model(extra={WEIGHTS: big_weights(), second: big_weights(24 * MiB, seed=7)})
    hub_server.add_repo("org/llm", files)
    for name in (WEIGHTS, second):
        hub_server.fault("org/llm", name).ignore_range()
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", exclude=[second]),
               {"name": "extra", "kind": "file", "path": "extra/extra.safetensors", "source": f"hf://org/llm/{second}@main"}])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == {k: v for k, v in files.items() if k != second}
    assert (vol.models / "extra/extra.safetensors").read_bytes() == files[second]
    for name in (WEIGHTS, second):
        gets = cdn_gets(hub_server, name)
        assert [(g.status, g.bytes_sent) for g in gets] == [(200, len(files[name]))]  # the probe's 200 was the stream
    assert r.stderr.count("does not serve byte ranges") == 1
    assert vol.debris() == []


def test_ranges_that_disagree_with_the_length_fall_back_to_one_stream(tmp_path: Path, hub_server: HubServer) -> None:
    data = big_weights(20 * MiB)
    url = hub_server.add_url("/files/w.bin", data)
    hub_server.url_fault("/files/w.bin").range_total(len(data) + 1)
    notes: list[str] = []
    got = fetch_to(url, tmp_path / "w.part", expected_size=len(data), timeouts=Timeouts(10, 30), log=notes.append)
    assert got.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "w.part").read_bytes() == data
    assert len(notes) == 1 and "Content-Range" in notes[0]
    gets = [r for r in hub_server.requests if r.method == "GET"]
    assert gets[-1].range is None and gets[-1].status == 200 and gets[-1].bytes_sent == len(data)
    assert not transfer.map_path(tmp_path / "w.part").exists()


def test_if_range_mismatch_midway_starts_over_from_zero(tmp_path: Path, hub_server: HubServer) -> None:
    old, new = big_weights(seed=1), big_weights(seed=2)
    assert len(old) == len(new) and old != new
    url = hub_server.add_url("/files/w.bin", old)
    piece = pieces(len(old))
    hold = hub_server.url_fault("/files/w.bin").hold(4 * piece)  # pieces from here on wait before their answer
    partial = tmp_path / "w.part"
    result: dict = {}

    def fetch() -> None:
        try:
            result["got"] = fetch_to(url, partial, expected_size=len(old), timeouts=Timeouts(10, 60), log=lambda m: result.setdefault("notes", []).append(m))
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    t = threading.Thread(target=fetch)
    t.start()
    hold.wait_for(1)
    hub_server.add_url("/files/w.bin", new)  # the file changes on the server mid-way
    hold.release()
    t.join(60)
    assert "error" not in result, result.get("error")
    got = result["got"]
    assert got.digests["sha256"] == hashlib.sha256(new).hexdigest() and got.resumed_from == 0
    assert partial.read_bytes() == new
    assert any("changed on the server" in n for n in result["notes"])
    gets = [r for r in hub_server.requests if r.method == "GET"]
    changed = [g for g in gets if g.if_range and g.status == 200]
    assert changed, [(g.range, g.status) for g in gets]
    assert gets[-1].range is None and gets[-1].status == 200 and gets[-1].bytes_sent == len(new)  # from byte 0
    assert not transfer.map_path(partial).exists()


# --------------------------------------------------------------------------- the connection pool


def test_the_token_never_reaches_another_host_through_the_pool(tmp_path: Path, hub_server: HubServer) -> None:
    files = hf_model(extra={WEIGHTS: big_weights(), **{f"extra/n{i}.json": b"{}" for i in range(12)}})
    hub_server.add_repo("org/private", files, private=True)
    vol = Volume(tmp_path, hub_server)
    vol.write([hf_lane("p", "vllm/p", "hf://org/private@main")])
    r = vol.run(env=vol.env(PREFLIGHT_CONNECTIONS="2"))  # fewer connections than pieces: each carries several
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/p") == files
    cdn = [q for q in hub_server.requests if q.kind == "cdn"]
    hub = [q for q in hub_server.requests if q.kind == "resolve"]
    assert len(cdn) >= 3 and not any(q.authorization for q in cdn)
    assert hub and all(q.authorization for q in hub)
    # kept-alive connections carried several requests each, on both hosts
    assert len({q.peer for q in cdn}) < len(cdn)
    assert len({q.peer for q in hub}) < len(hub)


def test_small_files_reuse_connections(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model(extra={f"extra/n{i:03d}.json": json.dumps({"i": i}).encode() for i in range(40)})
    hub_server.add_repo("org/many", files)
    vol.write([hf_lane("many", "vllm/many", "hf://org/many@main")])
    r = vol.run("sync", "--workers", "4")
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/many") == files
    resolves = [q for q in hub_server.requests if q.kind == "resolve"]
    assert len(resolves) == len(files)
    assert len({q.peer for q in resolves}) <= 8  # about one connection per worker, not one per file


def test_a_pooled_connection_the_server_closed_is_replaced(tmp_path: Path, hub_server: HubServer) -> None:
    data = b"x" * 1000
    url = hub_server.add_url("/files/a.txt", data)
    pool = poolmod.POOL
    fetch_to(url, tmp_path / "a.part", expected_size=len(data), timeouts=Timeouts(5, 5))
    hub_server.stop()  # closes every kept-alive connection
    hub_server.start()
    (tmp_path / "a.part").unlink()
    got = fetch_to(url, tmp_path / "a.part", expected_size=len(data), timeouts=Timeouts(5, 5))
    assert got.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert pool.opened >= 2


def test_one_fast_connection_stays_alone_and_asks_for_growing_pieces(tmp_path: Path, hub_server: HubServer, monkeypatch) -> None:
    """PREFLIGHT_RAMP on: a first connection judged fast enough (SOLO_SHARE 0: always) is the
    only one, and each request asks for twice the last (fewer requests for the server to
    authorise and open), up to SOLO_PIECE."""
    data = big_weights(40 * MiB)
    url = hub_server.add_url("/files/solo.bin", data)
    monkeypatch.setenv("PREFLIGHT_RAMP", "1")
    monkeypatch.setattr(transfer, "SOLO_SHARE", 0.0)
    got = fetch_to(url, tmp_path / "w.part", expected_size=len(data), timeouts=Timeouts(10, 30), budget=Budget(16))
    assert got.digests["sha256"] == hashlib.sha256(data).hexdigest()
    gets = [r for r in hub_server.requests if r.method == "GET" and r.path == "/files/solo.bin"]
    spans = [parse(g.range, len(data)) for g in gets]
    assert union(spans) == [(0, len(data))] and sum(b - a for a, b in spans) == len(data)
    first = pieces(len(data))
    assert [b - a for a, b in spans][:3] == [first, 2 * first, 4 * first]
    assert len({g.peer for g in gets}) == 1


def test_a_slow_first_connection_opens_the_others(tmp_path: Path, hub_server: HubServer, monkeypatch) -> None:
    """PREFLIGHT_RAMP on: while the first connection waits (held by the server), its rate is
    below SOLO_SHARE of the hash speed, so the other connections are opened and fetch the rest."""
    data = big_weights(40 * MiB)
    url = hub_server.add_url("/files/slow.bin", data)
    monkeypatch.setenv("PREFLIGHT_RAMP", "1")
    first = pieces(len(data))
    hold = hub_server.url_fault("/files/slow.bin").hold(first, 3 * first)  # the first connection's second request waits
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(got=fetch_to(url, tmp_path / "w.part", expected_size=len(data),
                                                                     timeouts=Timeouts(10, 60), budget=Budget(16))))
    t.start()
    try:
        wait_until("other connections to fetch past the held piece",
                   lambda: len({r.peer for r in hub_server.requests if r.method == "GET" and r.path == "/files/slow.bin"}) > 1)
    finally:
        hold.release()
        t.join(60)
    assert result["got"].digests["sha256"] == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- limits, interruption, the staging file


def test_the_budget_bounds_connections(tmp_path: Path, hub_server: HubServer) -> None:
    data = big_weights(24 * MiB)
    url = hub_server.add_url("/files/w.bin", data)
    budget = Budget(3)
    got = fetch_to(url, tmp_path / "w.part", expected_size=len(data), timeouts=Timeouts(10, 30), budget=budget)
    assert got.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert budget.peak == 3 and budget.used == 0
    assert len({r.peer for r in hub_server.requests if r.method == "GET"}) <= 3


def test_a_writer_that_may_no_longer_write_stops_and_never_writes_again(tmp_path: Path, hub_server: HubServer) -> None:
    data = big_weights(24 * MiB)
    url = hub_server.add_url("/files/w.bin", data)
    calls = {"n": 0, "after": None}
    partial = tmp_path / "w.part"

    def may_write() -> bool:
        calls["n"] += 1
        if calls["n"] > 5:
            if calls["after"] is None:
                calls["after"] = partial.stat().st_size if partial.exists() else 0
            return False
        return True

    with pytest.raises(FetchError, match="another writer holds the volume"):
        fetch_to(url, partial, expected_size=len(data), timeouts=Timeouts(10, 30), may_write=may_write)
    size_then = partial.stat().st_size
    assert size_then <= len(data)
    m = transfer.load_map(transfer.map_path(partial), len(data))
    assert m is not None and m[0].total() <= size_then  # the map never claims more than was written


def test_sigterm_ends_every_connection_at_once_and_the_rerun_resumes(big_repo, hub_server: HubServer) -> None:
    vol, files = big_repo
    size = len(files[WEIGHTS])
    piece = pieces(size)
    hold = hub_server.fault("org/llm", WEIGHTS).hold(3 * piece)
    proc, argv = vol.spawn("sync", "--stall-timeout", "600")
    try:
        hold.wait_for(1)
        wait_until("the chunk map", lambda: (m := chunk_map(vol)) is not None and m["done"] == [[0, 3 * piece]])
        proc.send_signal(signal.SIGTERM)
        r = vol.finish(proc, argv, timeout=60)  # long before the 600 s stall timeout
    finally:
        kill(proc)
    assert r.code == 130, r.stderr
    assert not (vol.models / STATE / "lease.json").exists()
    before = len(hub_server.requests)
    hold.release()
    hub_server.clear_faults()
    again = vol.run()
    assert again.code == 0, again.stderr
    assert vol.tree("vllm/llm") == files
    asked = union([parse(g.range, size) for g in cdn_gets(hub_server, WEIGHTS, before)])
    assert asked == [(3 * piece, size)]


def test_deadline_ends_a_held_ranged_download(big_repo, hub_server: HubServer) -> None:
    vol, files = big_repo
    hub_server.fault("org/llm", WEIGHTS).hold(pieces(len(files[WEIGHTS])))
    r = vol.run("sync", "--deadline", "5", "--stall-timeout", "600", "--retries", "0", timeout=120)
    assert r.code == 3, r.stderr
    assert "deadline" in r.stderr


@pytest.mark.parametrize("odd", ["partial", "map"])
def test_links_at_the_staging_names_are_never_followed(tmp_path: Path, hub_server: HubServer, odd: str) -> None:
    data = big_weights(24 * MiB)
    url = hub_server.add_url("/files/w.bin", data)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    staging = tmp_path / "staging"
    staging.mkdir()
    partial = staging / "w.part"
    link = partial if odd == "partial" else transfer.map_path(partial)
    link.symlink_to(outside)
    got = fetch_to(url, partial, expected_size=len(data), timeouts=Timeouts(10, 30))
    assert got.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert outside.read_bytes() == b"precious"
    assert not partial.is_symlink() and partial.read_bytes() == data


def test_a_damaged_chunk_map_starts_the_file_over(tmp_path: Path, hub_server: HubServer) -> None:
    data = big_weights(24 * MiB)
    url = hub_server.add_url("/files/w.bin", data)
    partial = tmp_path / "w.part"
    partial.write_bytes(b"\0" * (8 * MiB))  # holes a map claimed were filled
    transfer.map_path(partial).write_text('{"version": 1, "size": 12, "done": [[0, 99999999999]]}')
    got = fetch_to(url, partial, expected_size=len(data), timeouts=Timeouts(10, 30), log=lambda m: None)
    assert got.digests["sha256"] == hashlib.sha256(data).hexdigest() and got.resumed_from == 0
    assert not transfer.map_path(partial).exists()


def test_ranges_unit() -> None:
    r = transfer.Ranges([(10, 20), (0, 5), (18, 30)])
    assert r.spans() == [(0, 5), (10, 30)]
    r.add(5, 10)
    assert r.spans() == [(0, 30)] and r.reach(0) == 30 and r.reach(31) == 31
    assert transfer.Ranges([(2, 4), (6, 8)]).missing(10) == [(0, 2), (4, 6), (8, 10)]
    assert transfer.Ranges([(0, 8)]).clip(5).spans() == [(0, 5)]
