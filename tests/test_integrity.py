"""Hashing: the read-ahead path gives the same digests and stops when told."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from preflight.integrity import PIPE_CHUNK, HashBehind, Hasher, WriteBehind, hash_file, hash_files


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(5 * PIPE_CHUNK + 12345)  # several buffers and a partial last one
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    return path, data


def test_pipelined_digests_match_hashlib(data_file) -> None:
    path, data = data_file
    seen: list[int] = []
    got = hash_file(path, ("sha256", "sha1"), progress=seen.append, pipelined=True)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["sha1"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert sum(seen) == len(data) and len(seen) > 1
    assert got == hash_file(path, ("sha256", "sha1"))
    assert hash_files([(str(path), ("sha256",))]) == [{"sha256": got["sha256"]}]


def test_pipelined_hashing_stops_when_told(data_file) -> None:
    path, _data = data_file
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):
        hash_file(path, stop=stop, pipelined=True)
    assert [t for t in threading.enumerate() if t.name == "hash-reader"] == []


MiB = 2**20


def _cached_bytes(path: Path) -> int:
    """How much of the file is in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _write(path: Path, chunks: int, behind: bool) -> None:
    block = os.urandom(MiB)
    with open(path, "wb", buffering=0) as f:
        wb = WriteBehind(f.fileno(), window=MiB)
        for i in range(chunks):
            f.write(block)
            if behind:
                wb.wrote((i + 1) * MiB)
        if behind:
            wb.finish()
        else:
            os.fsync(f.fileno())


@pytest.fixture
def page_cache_dir(tmp_path: Path) -> Path:
    if shutil.which("fincore") is None:
        pytest.skip("fincore (util-linux) is not installed")
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs == "tmpfs":
        pytest.skip("tmpfs files live in the page cache; there is no writeback to drive")
    return tmp_path


def test_write_behind_leaves_a_large_file_out_of_the_page_cache(page_cache_dir: Path) -> None:
    plain, behind = page_cache_dir / "plain", page_cache_dir / "behind"
    _write(plain, 16, behind=False)
    assert _cached_bytes(plain) >= 8 * MiB  # a plain write stays cached: the check below can fail
    _write(behind, 16, behind=True)
    assert behind.stat().st_size == 16 * MiB
    assert _cached_bytes(behind) == 0


def test_write_behind_keeps_a_file_under_one_window_cached(page_cache_dir: Path) -> None:
    small = page_cache_dir / "small"
    block = os.urandom(MiB // 2)
    with open(small, "wb", buffering=0) as f:
        wb = WriteBehind(f.fileno(), window=MiB)
        f.write(block)
        wb.wrote(len(block))
        wb.finish()
    assert small.read_bytes() == block
    assert _cached_bytes(small) == len(block)


def test_write_behind_carries_on_when_the_filesystem_refuses_advice(tmp_path: Path, monkeypatch) -> None:
    def refuse(*_args) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    path = tmp_path / "f"
    with open(path, "wb", buffering=0) as f:
        wb = WriteBehind(f.fileno(), window=MiB)
        for i in range(3):
            f.write(b"x" * MiB)
            wb.wrote((i + 1) * MiB)
        wb.finish()
    assert not wb.enabled
    assert path.stat().st_size == 3 * MiB


def test_hash_behind_hashes_what_the_caller_reads_and_reports_a_failing_hash(tmp_path: Path) -> None:
    data = os.urandom(5 * HashBehind.CHUNK + 12345)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        behind = HashBehind(Hasher(("sha256", "md5")))
        pos = 0
        while pos < len(data):
            pos += behind.read(fd, pos, 3 * 2**19)  # reads cut at CHUNK and at what is asked
        assert behind.read(fd, pos, 10) == 0  # the end: nothing queued
        assert behind.finish() == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
        assert behind.speed() is not None and behind.speed() > 0

        class Broken(Hasher):
            def update(self, data):
                raise OSError("the hash failed")

        broken = HashBehind(Broken(("sha256",)))
        with pytest.raises(OSError, match="the hash failed"):
            for i in range(2 * HashBehind.DEPTH + 2):  # the failure reaches the reader at its next buffer at the latest
                broken.read(fd, 0, HashBehind.CHUNK)
            broken.finish()
        broken.abandon()
    finally:
        os.close(fd)
