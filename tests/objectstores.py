"""What the s3:// and gs:// tests share: a server started for a module's tests (or a
proxy for one test), fresh bucket names, a volume, lanes, a user's environment for a
store, the lanes that must each fail naming their cause, and a sync killed in the middle
of one object then run again."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from tests.s3_proxy import S3Proxy
from tests.test_sync import Run, Volume, kill


class Startable(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


def served(server: S) -> Iterator[S]:
    """`server` started for as long as the fixture that yields from this lives."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


_bucket_seq = iter(range(10**6))


def bucket_name(kind: str = "models") -> str:
    """A bucket name no other test (or test process) uses."""
    return f"{kind}-{os.getpid()}-{next(_bucket_seq)}"


@pytest.fixture
def vol(tmp_path: Path) -> Volume:
    return Volume(tmp_path, None)


def lane(name: str, path: str, source: str, kind: str = "hf-dir", **extra: object) -> dict:
    return {"name": name, "kind": kind, "path": path, "source": source, **extra}


def store_env(vol: Volume, drop: tuple[str, ...], settings: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """A user's environment for one store: none of the caller's variables that start with
    `drop`, HOME at the volume's root (no ~/.aws, no ~/.config/gcloud), the store's
    `settings`, then a test's `extra` (an empty value unsets a variable)."""
    env = {k: v for k, v in vol.env(token=False).items() if not k.startswith(drop)}
    env.update(HOME=str(vol.root), **settings)
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def each_fails(vol: Volume, env: dict[str, str], cases: list[tuple[dict, str]]) -> None:
    """Each lane alone: sync exits 3 with its cause (`words`) on stderr and in the report,
    the lane is not ready and nothing of it is published."""
    for spec, words in cases:
        vol.write([spec])
        r = vol.run("sync", "--retries", "0", env=env)
        assert r.code == 3, (spec, r.stderr)
        assert words in r.stderr and words in r.report["reason"], (words, r.stderr)
        assert r.lane(spec["name"])["status"] != "ready"
        assert not (vol.models / spec["path"]).exists()


def killed_mid_object_then_rerun(vol: Volume, proxy: S3Proxy, env: dict[str, str], path: str, published: Path,
                                 at: int = 300_000) -> Run:
    """A sync killed while the object at the proxy's `path` stalls after `at` bytes (those
    bytes kept as a partial, nothing published at `published`), then run again with the
    proxy's log cleared: that second run."""
    stall = proxy.fault(path, "stall", after=at)
    proc, _argv = vol.spawn("sync", "--lease-stale", "1", env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and at not in vol.partial_sizes():
            time.sleep(0.05)
        # small files may still be in flight on a loaded machine: their partials resume too
        assert at in vol.partial_sizes()
    finally:
        kill(proc)
        stall.release.set()
    assert not published.exists()
    proxy.clear()
    return vol.run("sync", "--lease-stale", "1", env=env)
