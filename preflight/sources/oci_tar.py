"""Tar layers, read as a stream: list and hash their members, or copy one member out, with
strict checks on every entry.

A layer blob is read once from the start, its compressed bytes hashed on the way, so a
listing taken from a layer whose digest does not match is refused. Headers are read by
the standard library's tarfile through `formats.tarread` (one pass, its member list
emptied as it goes, bounds checked as each header is parsed). Every entry's name is normalised (a leading `/` is the image
root, as in the image-layer spec) and refused when it would leave the artifact (`..`);
links must stay inside; devices and FIFOs are recorded (an artifact refuses them; an image
skips them outside the selected folder).

Bounds, each checked before what it bounds is read: MAX_ENTRIES entries of every kind
(directories, links and extended headers count), MAX_NAMES bytes of names and link
targets, MAX_META for one long-name or PAX record, and how far a compressed layer may
expand. A layer past a bound is refused at that point: 40,001 empty entries in about
0.8 s of CPU (tarfile parses a header in about 20 us).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import time
import zlib
from collections.abc import Callable, Iterator

from ..errors import FetchError, IntegrityError, StalledError, UnsafeSourceError, UsageError
from ..formats.tarread import TarEntry, TarError, TarLimit, TarReader
from .unpack import GZIP_MAGIC, ZSTD_MAGIC, LimitedExpansion, resolve_inside, zstd_reader
from ..record import record

MAX_ENTRIES = 40_000  # entries of every kind in one layer (tarfile reads one in about 20 us)
MAX_NAMES = 32 * 2**20  # bytes of entry names and link targets in one layer
MAX_META = 1 * 2**20  # one PAX or GNU long-name record
MAX_EXPANSION = 1100  # decompressed / compressed (deflate cannot exceed ~1032x)
EXPANSION_SLACK = 64 * 2**20
READ = 2**20

FINAL = 400  # FetchError.status that sources.http.retry_delay does not retry: the same bytes give the same answer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@record
class Member:
    """One entry of a tar layer, by its normalised path inside the artifact."""

    path: str
    kind: str  # file, dir, hardlink, symlink, special, whiteout, opaque
    size: int = 0
    sha256: str | None = None
    link: str | None = None  # hardlink: the normalised path it names; symlink: the raw target


def normalise(name: str, layer: str) -> str:
    """A tar entry's name as a path inside the artifact; UnsafeSourceError for `..`."""
    if "\x00" in name:
        raise UnsafeSourceError(f"layer {layer} holds an entry name with a NUL byte; nothing was written", status=FINAL)
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeSourceError(f"layer {layer} holds an entry {name[:200]!r} that leaves the artifact ('..'); nothing was written",
                                hint="the artifact is damaged or hostile; repack it without '..' in its tar entries", status=FINAL)
    return "/".join(parts)


def symlink_target(path: str, target: str) -> str | None:
    """Where a symlink at `path` points, inside the artifact; None when it leaves it."""
    base = "" if target.startswith("/") else posixpath.dirname(path)
    return resolve_inside(base + "/" + target)


class BlobReader(io.RawIOBase):
    """The raw bytes of a layer blob from an iterator of chunks, hashed and counted;
    `finish()` reads what is left and checks size and digest."""

    def __init__(self, chunks: Iterator[bytes], digest: str, size: int, deadline: float | None, what: str) -> None:
        self._chunks = chunks
        self._buf = b""
        self._hash = hashlib.sha256()
        self.count = 0
        self.digest, self.size, self.deadline, self.what = digest, size, deadline, what

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise StalledError(f"the run's deadline passed while reading {self.what}")
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
            self._hash.update(self._buf)
            self.count += len(self._buf)
            if self.count > self.size:
                raise IntegrityError(f"{self.what}: the registry sent more than its {self.size} bytes")
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def finish(self) -> None:
        while self.read(READ):
            pass
        got = "sha256:" + self._hash.hexdigest()
        if self.count != self.size or got != self.digest:
            raise IntegrityError(f"{self.what}: the layer does not match its descriptor (got {self.count} bytes, sha256 {got[7:19]}…; "
                                 f"expected {self.size} bytes, {self.digest[7:19]}…); nothing from it was published")


def open_tar(raw: BlobReader, head: bytes) -> TarReader:
    """The layer's tar entries over the blob, decompressed by its magic bytes (not its media
    type: a registry or packer that mislabels compression still reads right)."""
    limit = raw.size * MAX_EXPANSION + EXPANSION_SLACK

    def bomb() -> Exception:
        return IntegrityError(f"{raw.what}: expands past {limit} bytes ({MAX_EXPANSION}x its size); refused")

    stream: io.RawIOBase | io.BufferedIOBase
    if head.startswith(GZIP_MAGIC):
        import gzip

        stream = LimitedExpansion(gzip.GzipFile(fileobj=io.BufferedReader(raw, READ), mode="rb"), lambda: limit, bomb)
    elif head.startswith(ZSTD_MAGIC):
        zstd = zstd_reader(io.BufferedReader(raw, READ), READ, raw.what, alternative="repack the artifact with gzip or no compression")
        stream = LimitedExpansion(zstd, lambda: limit, bomb)
    else:
        stream = raw
    return TarReader(io.BufferedReader(stream, READ), max_entries=MAX_ENTRIES, max_names=MAX_NAMES, max_meta=MAX_META)  # type: ignore[arg-type]


def _kind(info: TarEntry, name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base == OPAQUE:
        return "opaque"
    if base.startswith(WHITEOUT):
        return "whiteout"
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.islnk():
        return "hardlink"
    if info.issym():
        return "symlink"
    return "special"


def _entries(tf: TarReader, what: str) -> Iterator[tuple[TarEntry, Member]]:
    try:
        for info in tf:
            path = normalise(info.name, what)
            kind = _kind(info, path)
            m = Member(path, kind, info.size if kind == "file" else 0)
            if kind == "hardlink":
                m.link = normalise(info.linkname, what)
            elif kind == "symlink":
                m.link = info.linkname
            yield info, m
    except TarLimit as exc:
        raise IntegrityError(f"{what}: {exc}; refused, nothing from it was published", status=FINAL) from None


def _tar_error(what: str, exc: BaseException) -> FetchError:
    return IntegrityError(f"{what}: not a readable tar layer ({type(exc).__name__}: {str(exc)[:160]}); nothing from it was published")


_READ_ERRORS = (TarError, EOFError, zlib.error, OSError, ValueError)


def scan(raw: BlobReader, head: bytes, hash_members: bool = True, progress: Callable[[int], None] | None = None) -> list[Member]:
    """Every entry of the layer (regular files hashed), then the layer's digest checked."""
    out: list[Member] = []
    try:
        tf = open_tar(raw, head)
        for info, m in _entries(tf, raw.what):
            if m.kind == "file" and hash_members:
                h = hashlib.sha256()
                n = 0
                while True:
                    data = tf.read(READ)
                    if not data:
                        break
                    n += len(data)
                    h.update(data)
                    if progress:
                        progress(len(data))
                if n != info.size:
                    raise EOFError(f"{m.path[:200]} ends after {n} of its {info.size} bytes")
                m.sha256 = h.hexdigest()
            out.append(m)
        raw.finish()
    except (FetchError, UsageError):
        raise
    except _READ_ERRORS as exc:
        raise _tar_error(raw.what, exc) from None
    return out


def extract(raw: BlobReader, head: bytes, path: str, write: Callable[[bytes], None], whole: bool) -> int | None:
    """Copy the member at `path` out through `write`; its size, or None when the layer has
    no such regular file. With `whole`, the rest of the layer is read and its digest
    checked (what vouches for the member when nothing else pins its sha256)."""
    found: int | None = None
    try:
        tf = open_tar(raw, head)
        for info, m in _entries(tf, raw.what):
            if m.path != path or m.kind != "file":
                continue
            n = 0
            while True:
                data = tf.read(READ)
                if not data:
                    break
                write(data)
                n += len(data)
            if n != info.size:
                raise EOFError(f"{m.path[:200]} ends after {n} of its {info.size} bytes")
            found = n
            if not whole:
                return found
        if whole:
            raw.finish()
    except (FetchError, UsageError):
        raise
    except _READ_ERRORS as exc:
        raise _tar_error(raw.what, exc) from None
    return found
