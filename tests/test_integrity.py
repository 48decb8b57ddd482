"""Hashing: the read-ahead path gives the same digests and stops when told."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from preflight.integrity import PIPE_CHUNK, hash_file, hash_files


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
