"""A local mirror (a folder or NFS share): copy into staging, reflinked when the
filesystem can, hashing as the bytes pass."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import FetchError
from ..integrity import READ_CHUNK, Hasher, WriteBehind, hash_file, nofollow, staged_size
from ..manifest import FileExpect, Lane

FICLONE = 0x40049409


def mirror_root(lane: Lane, manifest_file: str) -> Path:
    assert lane.source is not None and lane.source.local is not None
    p = Path(lane.source.local)
    if not p.is_absolute():
        p = Path(manifest_file).parent / p
    return p


def listing(lane: Lane, manifest_file: str) -> dict[str, tuple[Path, FileExpect]]:
    from ..check import discover, gguf_split_names, selected

    root = mirror_root(lane, manifest_file)
    if lane.is_dir:
        if not root.is_dir():
            raise FetchError(f"mirror folder {root} does not exist")
        return {rel: (root / rel, FileExpect(size=(root / rel).stat().st_size)) for rel in discover(root) if selected(rel, lane)}
    names = gguf_split_names(root.name) if lane.kind == "gguf" else [root.name]
    out = {}
    for n in names:
        p = root.parent / n
        if not p.is_file():
            raise FetchError(f"mirror file {p} does not exist")
        out[n] = (p, FileExpect(size=p.stat().st_size))
    return out


def copy_to(src: Path, partial: Path, algos: tuple[str, ...], progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """Reflink when possible (then hash the result), else a streamed copy hashed on the way."""
    try:
        s = open(src, "rb", buffering=0)
    except OSError as exc:
        raise FetchError(f"cannot read mirror file {src}: {exc.strerror}") from None
    staged_size(partial)  # clears a symlink or folder standing at the staging name
    with s, open(partial, "wb", buffering=0, opener=nofollow) as d:
        size = os.fstat(s.fileno()).st_size
        try:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
            os.fsync(d.fileno())
            return hash_file(partial, algos, progress)
        except OSError:
            pass
        hasher = Hasher(algos, size)
        behind = WriteBehind(d.fileno())
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        done = 0
        while True:
            n = s.readinto(buf)
            if not n:
                break
            d.write(view[:n])
            hasher.update(view[:n])
            done += n
            behind.wrote(done)
            if progress:
                progress(n)
        behind.finish()
    return hasher.hexdigests()
