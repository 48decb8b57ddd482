"""A local mirror (a folder or NFS share): copy into staging, reflinked when the
filesystem can, else copied by the kernel while a second thread hashes the copied prefix."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import FetchError, IntegrityError
from ..integrity import READ_CHUNK, Hasher, PrefixHasher, WriteBehind, hash_file
from ..volume import StagedFile, as_staged
from ..manifest import FileExpect, Lane
from . import Entry, Listing, Source, Transfer

if TYPE_CHECKING:
    from ..lockfile import LockedLane
    from .http import Fetched

FICLONE = 0x40049409


def mirror_root(lane: Lane, manifest_file: str) -> Path:
    assert lane.source is not None and lane.source.local is not None
    p = Path(lane.source.local)
    if not p.is_absolute():
        p = Path(manifest_file).parent / p
    return p


def listing(lane: Lane, manifest_file: str) -> dict[str, tuple[Path, FileExpect]]:
    """The mirror's files for the lane, keyed by their names in the mirror (sync places
    them: a single-file lane's path names the target, whatever the mirror calls it)."""
    from ..check import discover, gguf_split_names, selected

    root = mirror_root(lane, manifest_file)
    if lane.is_dir:
        if not root.exists():
            raise FetchError(f"mirror folder {root} does not exist")
        if not root.is_dir():
            raise FetchError(f"mirror source {root} is a file, and a {lane.kind} lane needs a folder",
                             hint="point the source at the folder that holds the model's files")
        return {rel: (root / rel, FileExpect(size=(root / rel).stat().st_size)) for rel in discover(root) if selected(rel, lane)}
    if root.is_dir():
        raise FetchError(f"mirror source {root} is a folder, and a {lane.kind} lane needs a file",
                         hint="name the file in the source, e.g. /mnt/mirror/model.Q4_K_M.gguf")
    names = gguf_split_names(root.name) if lane.kind == "gguf" else [root.name]
    out = {}
    for n in names:
        p = root.parent / n
        if not p.parent.is_dir():
            raise FetchError(f"mirror folder {p.parent} does not exist (the source names {p})")
        if not p.exists():
            raise FetchError(f"mirror file {p} does not exist" + (f" (split part {n} of {len(names)})" if len(names) > 1 else ""))
        if not p.is_file():
            raise FetchError(f"mirror source {p} is not a regular file")
        out[n] = (p, FileExpect(size=p.stat().st_size))
    return out


def copy_to(src: Path, partial: StagedFile | Path, algos: tuple[str, ...], progress: Callable[[int], None] | None = None,
            may_write: Callable[[], bool] | None = None) -> dict[str, str]:
    """Reflink when possible (then hash the result), else a copy made by the kernel
    (copy_file_range: one copy, no Python per byte) hashed by a second thread as the copied
    prefix grows, so the copy and the hash overlap. As for downloads: `may_write` before
    every write, and the file must end exactly as long as what this process wrote."""
    partial = as_staged(partial)
    try:
        s = open(src, "rb", buffering=0)
    except OSError as exc:
        err = FetchError(f"cannot read mirror file {src}: {exc.strerror}{_why(src, exc)}",
                         hint="make the mirror readable by this uid (mode, owner or group), or run as a uid that can read it")
        err.permanent = exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ELOOP)
        raise err from None
    partial.size()  # clears a symlink or folder standing at the staging name
    if may_write is not None and not may_write():  # not even create the file: it may be another writer's name now
        s.close()
        raise FetchError(f"stopped before copying {src}: another writer holds the volume now")
    with s:
        # Read and written at offsets (a clone target and copy_file_range refuse append-only descriptors).
        with os.fdopen(partial.open(os.O_RDWR | os.O_CREAT | os.O_TRUNC), "r+b", buffering=0) as d:
            try:
                fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
                os.fsync(d.fileno())
                return hash_file(partial, algos, progress, pipelined=True)
            except OSError:
                pass
            return _copy(s, d, src, algos, progress, may_write)


COPY_CHUNK = 8 * 2**20  # asked of copy_file_range at a time (the hash follows in steps this size)


def _copy(s, d, src: Path, algos: tuple[str, ...], progress: Callable[[int], None] | None,
          may_write: Callable[[], bool] | None) -> dict[str, str]:
    size = os.fstat(s.fileno()).st_size
    prefix = PrefixHasher(d.fileno(), Hasher(algos, size))
    behind = WriteBehind(d.fileno(), hashed=lambda: prefix.hashed)
    kernel = hasattr(os, "copy_file_range")
    buf = view = None
    done = 0
    try:
        while True:
            if may_write is not None and not may_write():
                raise FetchError(f"stopped copying {src}: another writer holds the volume now")
            n = -1
            if kernel:
                try:
                    n = os.copy_file_range(s.fileno(), d.fileno(), COPY_CHUNK, done, done)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                        raise
                    kernel = False  # not between these filesystems: through a buffer
            if n < 0:
                if buf is None:
                    buf = bytearray(READ_CHUNK * 8)
                    view = memoryview(buf)
                n = os.preadv(s.fileno(), [view], done)
                _pwrite_all(d.fileno(), view[:n], done)
            if not n:
                break
            done += n
            prefix.advance(done)
            behind.wrote(done)
            if progress:
                progress(n)
        digests = prefix.finish(done)
    except BaseException:
        prefix.abandon()
        raise
    behind.finish()
    if os.fstat(d.fileno()).st_size != done:
        raise IntegrityError(f"the staging copy of {src} changed under this process (another writer?); discarded")
    return digests


def _pwrite_all(fd: int, data: memoryview, at: int) -> None:
    while data:
        k = os.pwrite(fd, data, at)
        data, at = data[k:], at + k


def _why(path: Path, exc: OSError) -> str:
    """For a permission error: who this process is and what the file allows."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return ""
    try:
        st = os.stat(path)
        import stat as _stat

        return (f" (this process runs as uid {os.getuid()} gid {os.getgid()}; the file is owned by uid {st.st_uid} "
                f"gid {st.st_gid} with mode {_stat.filemode(st.st_mode)})")
    except OSError:
        return f" (this process runs as uid {os.getuid()} gid {os.getgid()}; a folder on the way is not searchable)"


def _stamp(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


class MirrorSource(Source):
    """file://… or a path: a folder (folder lanes) or a file (single-file lanes) on a mounted share."""

    deterministic = True
    fetched_as = "the bytes copied from the mirror"

    def resolve(self, locked: LockedLane | None) -> Listing:
        files = listing(self.lane, self.ctx.manifest_file)
        return Listing(None, {rel: Entry(exp, str(path), stamp=_stamp(path)) for rel, (path, exp) in files.items()})

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        from .http import Fetched

        digests = copy_to(Path(entry.locator), partial, algos, transfer.progress, transfer.may_write)
        st = partial.lstat()
        return Fetched(st.st_size if st is not None else 0, digests, 0, entry.locator)

    def read_range(self, entry: Entry, start: int, length: int) -> bytes | None:
        try:
            with open(entry.locator, "rb", buffering=0) as f:
                f.seek(start)
                return f.read(length)
        except OSError as exc:
            raise FetchError(f"cannot read mirror file {entry.locator}: {exc.strerror or exc}") from None

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        """A mirror lists sizes only: the lock pins what its files hash to now."""
        return {rel: FileExpect(e.expect.size, hash_file(e.locator)["sha256"], None) for rel, e in listing.files.items()}
