"""Model archives (.tar, .tar.gz, .tar.zst, .zip) read as a stream: every entry checked,
each wanted member's bytes handed to a writer the caller owns, hashed on the way.

The standard library reads the formats (`tarfile` in stream mode through
`formats/tarread.py`, which bounds what tarfile leaves unbounded; `zipfile`; zstd through
the optional `zstandard` package); nothing here parses a header by hand, and nothing here
writes a file: the caller's writer is a staging file of the volume's door. Each entry is
judged before a byte of it is written:

- names: a leading `./` is dropped; what is left must pass `volume.safe_rel` (relative, no
  `..`, no empty component, no control character or backslash, no `.preflight`), and a
  name may appear once;
- links: a symbolic or hard link must name a regular file inside the archive (resolved
  through at most MAX_LINK_HOPS links); it becomes a copy of that file. A link out (an
  absolute target, `..` past the root) or to nothing is refused;
- devices, FIFOs and sockets are refused;
- GNU sparse members are refused (a tar of a model has no holes);
- bounds against bombs: at most MAX_MEMBERS entries (every header counts, long-name and
  PAX ones too), MAX_NAMES bytes of names, at most `max_bytes` extracted in all,
  and at most MAX_RATIO times the archive's own size (plus RATIO_SLACK: small archives of
  JSON compress well); a PAX or GNU long-name record of at most MAX_META bytes; a zip's
  central directory of at most MAX_ZIP_DIRECTORY bytes, and each member's declared size at
  most MAX_RATIO times its compressed size (counted again while reading, never trusted).

A refused name, link or special file is UnsafeSourceError (path-escape, exit 1); a bound
passed is ArchiveBombError (archive-bomb, exit 1); bytes the reader cannot read are
ArchiveInvalidError (archive-invalid, exit 3). Memory is bounded by READ per read and by
the member list (names and digests); tarfile's own member list is emptied as it grows.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import field
from typing import BinaryIO, Protocol

from ..errors import ArchiveBombError, ArchiveInvalidError, FetchError, UnsafeSourceError, UsageError
from ..record import record
from ..volume import UnsafeName, safe_rel
from .unpack import GZIP_MAGIC, ZSTD_MAGIC, LimitedExpansion, resolve_inside, zstd_reader

READ = 2**20
MAX_MEMBERS = 20_000  # a model archive holds tens of files; a count past this is a bomb, not a model
MAX_RATIO = 200  # extracted bytes per archive byte (deflate tops out near 1032x)
RATIO_SLACK = 64 * 2**20
MAX_META = 2**20  # one PAX or GNU long-name record
MAX_NAMES = 32 * 2**20  # bytes of entry names and link targets in one archive
MAX_ZIP_DIRECTORY = 16 * 2**20  # one read of a zip's central directory
MAX_LINK_HOPS = 40
MAX_LINK_TARGET = 4096
DEFAULT_MAX_BYTES = 4 * 2**40  # 4 TiB; PREFLIGHT_ARCHIVE_MAX_BYTES lowers it
FINAL = 400  # FetchError.status retry_delay does not retry: the same bytes give the same answer


def max_bytes() -> int:
    """The bound on what one archive may extract to: PREFLIGHT_ARCHIVE_MAX_BYTES or 4 TiB."""
    raw = os.environ.get("PREFLIGHT_ARCHIVE_MAX_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    if not raw.isdigit() or int(raw) <= 0:
        raise UsageError(f"PREFLIGHT_ARCHIVE_MAX_BYTES={raw[:40]!r} is not a positive number of bytes")
    return int(raw)


@record
class Member:
    """One regular file of the archive, by its name inside it."""

    path: str
    size: int = 0
    sha256: str | None = None
    link: str | None = None  # a link's target (a member name); its bytes are the target's


@record
class Scan:
    """Every file the archive holds (links resolved to their targets), in archive order."""

    members: list[Member] = field(default_factory=list)
    read: int = 0  # archive bytes read
    extracted: int = 0  # bytes handed to writers or hashed

    def files(self) -> dict[str, Member]:
        return {m.path: m for m in self.members}


class Writer(Protocol):
    def write(self, data: bytes) -> object: ...


# open_member(name, declared size) → a writer for the member's bytes (closed by the caller of
# `read_archive` through `close_member`), or None to skip it (not selected, not wanted).
OpenMember = Callable[[str, int], "Writer | None"]


def member_name(raw: str, what: str) -> str | None:
    """An entry's name as a path inside the lane; None for the archive's root folder."""
    if "\x00" in raw:
        raise UnsafeSourceError(f"{what} holds an entry name with a NUL byte; nothing was published")
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if name.endswith("/") else name
    if name in ("", "."):
        return None
    if name.startswith("/"):
        raise UnsafeSourceError(f"{what} holds an entry with the absolute name {raw[:200]!r}; nothing was published",
                                hint="the archive is damaged or hostile; repack it with relative names (tar -C DIR .)")
    try:
        return safe_rel(name)
    except UnsafeName as exc:
        raise UnsafeSourceError(f"{what} holds an entry that would leave the lane: {exc}; nothing was published",
                                hint="the archive is damaged or hostile; repack it with plain relative names") from None


def link_target(path: str, target: str) -> str | None:
    """The member a symlink at `path` with `target` names, or None when it leaves the archive."""
    if not target or target.startswith("/") or "\x00" in target:
        return None
    return resolve_inside(posixpath.dirname(path) + "/" + target) or None


class _Counting(io.RawIOBase):
    """The archive's bytes, counted as they are read (the ratio bound's denominator)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.count = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self.count += n or 0
        return n or 0


class _Budget:
    """Members, bytes and expansion so far, against the bounds. The expansion bound is
    against the archive's size when it is known, else against what was read of it so far
    (an archive read as it arrives)."""

    def __init__(self, archive_size: int | None, limit: int, what: str) -> None:
        self.size_known = archive_size is not None
        self.archive_size, self.limit, self.what = archive_size or 0, limit, what
        self.members = 0
        self.out = 0
        self.read: Callable[[], int] = lambda: 0

    @property
    def ratio_limit(self) -> int:
        return max(self.archive_size, self.read()) * MAX_RATIO + RATIO_SLACK

    def entry(self) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise ArchiveBombError(f"{self.what} holds more than {MAX_MEMBERS} entries; refused, nothing was published")

    def add(self, n: int) -> None:
        self.out += n
        if self.out > self.limit:
            raise ArchiveBombError(f"{self.what} expands past {self.limit} bytes (PREFLIGHT_ARCHIVE_MAX_BYTES); refused, nothing was published")
        if self.out > self.ratio_limit:
            raise self.bomb()

    def bomb(self) -> ArchiveBombError:
        return ArchiveBombError(f"{self.what} expands past {MAX_RATIO}x its {max(self.archive_size, self.read())} bytes; refused "
                                "as a compression bomb, nothing was published")

    def declare(self, n: int, name: str) -> None:
        """A member's announced size, before a byte of it is read (against the archive's
        size only when it is known: a member announced early in a stream is read first)."""
        if self.out + n > self.limit:
            raise ArchiveBombError(f"{self.what}: {name} announces {n} bytes, past the {self.limit} bytes an archive may "
                                   "extract to (PREFLIGHT_ARCHIVE_MAX_BYTES); refused, nothing was published")
        if self.size_known and self.out + n > self.ratio_limit:
            raise ArchiveBombError(f"{self.what}: {name} announces {n} bytes, past {MAX_RATIO}x the archive's {self.archive_size} "
                                   "bytes; refused as a compression bomb, nothing was published")


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, KeyError, RuntimeError, NotImplementedError)


def _invalid(what: str, exc: BaseException) -> ArchiveInvalidError:
    return ArchiveInvalidError(f"{what} is not a readable archive ({type(exc).__name__}: {str(exc)[:160]}); nothing was published",
                               status=FINAL)


def read_archive(f: BinaryIO, size: int | None, kind: str, open_member: OpenMember, close_member: Callable[[str, Writer], None],
                 *, what: str = "the archive", limit: int | None = None, hash_skipped: bool = False,
                 progress: Callable[[int], None] | None = None) -> Scan:
    """Read the archive in `f` (`size` bytes; None: it is still arriving, and `f` blocks
    for more until its end) once, front to back. Each regular file's bytes
    go to `open_member(name, declared size)`'s writer (None: skipped; hashed only with
    `hash_skipped`), which `close_member` then closes. Returns every file with its size and
    sha256 (links with their target's), after every check above."""
    budget = _Budget(size, max_bytes() if limit is None else limit, what)
    scan = Scan()
    try:
        if kind == "zip":
            _read_zip(f, budget, scan, open_member, close_member, hash_skipped, progress)
        else:
            _read_tar(f, budget, scan, open_member, close_member, hash_skipped, progress)
    except (FetchError, UsageError):
        raise
    except _READ_ERRORS as exc:
        raise _invalid(what, exc) from None
    scan.extracted = budget.out
    _resolve_links(scan, what)
    return scan


def _copy(read: Callable[[int], bytes], writer: Writer | None, budget: _Budget, hashing: bool,
          progress: Callable[[int], None] | None) -> tuple[int, str | None]:
    h = hashlib.sha256() if (writer is not None or hashing) else None
    n = 0
    while True:
        data = read(READ)
        if not data:
            break
        budget.add(len(data))
        n += len(data)
        if h is not None:
            h.update(data)
        if writer is not None:
            writer.write(data)
        if progress is not None:
            progress(len(data))
    return n, h.hexdigest() if h is not None else None


def _file(name: str, declared: int, read: Callable[[int], bytes], scan: Scan, seen: set[str], budget: _Budget,
          open_member: OpenMember, close_member: Callable[[str, Writer], None], hashing: bool,
          progress: Callable[[int], None] | None) -> None:
    _once(name, seen, budget.what)
    budget.declare(declared, name)
    writer = open_member(name, declared)
    try:
        n, digest = _copy(read, writer, budget, hashing, progress)
    finally:
        if writer is not None:
            close_member(name, writer)
    scan.members.append(Member(name, n, digest))


class _Gunzip(io.RawIOBase):
    """gzip through zlib itself (header, CRC-32 and length checked by zlib, concatenated
    members as gzip reads them), fed READ bytes at a time: gzip.GzipFile's 8 KiB steps cost
    twice the CPU on a large archive."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        want = len(b)
        while True:
            if self._tail:
                out = self._d.decompress(self._tail, want)
            elif self._d.eof:
                rest = self._d.unused_data or self._raw.read(READ)
                if not rest:
                    return 0
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._tail = rest
                continue
            else:
                data = self._raw.read(READ)
                if not data:
                    raise EOFError("the gzip stream ends before its end marker (truncated)")
                out = self._d.decompress(data, want)
            self._tail = self._d.unconsumed_tail
            if out:
                b[: len(out)] = out
                return len(out)


class _Ahead(io.RawIOBase):
    """Decompression on a thread of its own, AHEAD chunks ahead of the reader: zlib and
    zstd release the GIL, so inflating runs on one core while tar parsing, hashing and
    writing run on another (as `curl | tar xz` splits gzip and tar into processes).
    Memory: at most AHEAD chunks of READ bytes."""

    AHEAD = 8

    def __init__(self, inner) -> None:
        import queue
        import threading

        self._inner = inner
        self._q: queue.Queue = queue.Queue(self.AHEAD)
        self._stop = threading.Event()
        self._rest = b""
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="archive-inflate", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _put(self, item) -> None:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._inner.read(READ)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # raised where it is read
            self._put(exc)

    def readinto(self, b) -> int:
        if not self._rest:
            if self._ended:
                return 0
            item = self._q.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if not item:
                self._ended = True
                return 0
            self._rest = item
        n = min(len(b), len(self._rest))
        b[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        super().close()


def _decompressed(raw: io.BufferedReader, head: bytes, what: str) -> io.BufferedIOBase | io.RawIOBase:
    if head.startswith(GZIP_MAGIC):
        return _Gunzip(raw)
    if head.startswith(ZSTD_MAGIC):
        return zstd_reader(raw, READ, what, alternative="repack the archive with gzip or no compression")
    return raw


def _read_tar(f: BinaryIO, budget: _Budget, scan: Scan, open_member: OpenMember,
              close_member: Callable[[str, Writer], None], hashing: bool, progress: Callable[[int], None] | None) -> None:
    from ..formats.tarread import TarError, TarLimit, TarReader

    counting = _Counting(f)
    budget.read = lambda: counting.count
    raw = io.BufferedReader(counting, READ)
    head = raw.peek(4)[:4]
    stream = _decompressed(raw, head, budget.what)
    if stream is not raw:
        stream = _Ahead(LimitedExpansion(stream, lambda: budget.ratio_limit, budget.bomb))
    reader = TarReader(stream, max_entries=MAX_MEMBERS, max_names=MAX_NAMES, max_meta=MAX_META, bufsize=READ)
    seen: set[str] = set()
    try:
        for info in reader:
            name = member_name(info.name, budget.what)
            if name is None and not info.isdir():
                raise UnsafeSourceError(f"{budget.what}: an entry named {info.name[:80]!r} is not a folder; refused, nothing was published")
            if name is None or info.isdir():
                continue
            if info.isreg():
                _file(name, info.size, reader.read, scan, seen, budget, open_member, close_member, hashing, progress)
            elif info.issym() or info.islnk():
                _once(name, seen, budget.what)
                target = link_target(name, info.linkname) if info.issym() else _hard_target(info.linkname, budget.what)
                _link(name, info.linkname, target, scan, budget.what)
            else:
                kind = {tarfile.CHRTYPE: "a device file", tarfile.BLKTYPE: "a device file", tarfile.FIFOTYPE: "a FIFO"}.get(info.type, "a special file")
                raise UnsafeSourceError(f"{budget.what}: {name} is {kind}; refused, nothing was published",
                                        hint="a model archive holds regular files and folders")
    except TarLimit as exc:
        if "sparse" in str(exc):
            raise UnsafeSourceError(f"{budget.what} holds {exc}; refused, nothing was published") from None
        raise ArchiveBombError(f"{budget.what} holds {exc}; refused, nothing was published") from None
    except TarError as exc:
        raise _invalid(budget.what, exc) from None
    finally:
        if isinstance(stream, _Ahead):
            stream.close()


def _once(name: str, seen: set[str], what: str) -> None:
    if name in seen:
        raise UnsafeSourceError(f"{what} holds {name!r} twice; refused (which one would be served?), nothing was published")
    seen.add(name)


def _link(name: str, raw_target: str, target: str | None, scan: Scan, what: str) -> None:
    """A link member, kept with the member it names (followed once the archive is read);
    a link out of the archive (`target` None) is refused."""
    if target is None:
        raise UnsafeSourceError(f"{what}: {name} links to {raw_target[:200]!r}, outside the archive; refused, nothing was published",
                                hint="the archive is damaged or hostile; links must name files inside it")
    scan.members.append(Member(name, link=target))


def _hard_target(linkname: str, what: str) -> str | None:
    try:
        return member_name(linkname, what)
    except UnsafeSourceError:
        return None


class _CappedReads(io.RawIOBase):
    """A seekable file whose single reads are capped: zipfile reads a whole central directory
    in one call, so the cap bounds the entries it builds in memory."""

    def __init__(self, f: BinaryIO, cap: int, what: str) -> None:
        self._f, self._cap, self._what = f, cap, what

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and 0 <= n <= self._cap:
            return self._f.read(n)
        data = self._f.read(self._cap + 1) if n is None or n < 0 else b""
        if n is not None and n > self._cap or len(data) > self._cap:
            raise ArchiveBombError(f"{self._what}: a zip directory or record of more than {self._cap} bytes; refused, nothing was published")
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _read_zip(f: BinaryIO, budget: _Budget, scan: Scan, open_member: OpenMember, close_member: Callable[[str, Writer], None],
              hashing: bool, progress: Callable[[int], None] | None) -> None:
    import zipfile

    try:
        zf = zipfile.ZipFile(_CappedReads(f, MAX_ZIP_DIRECTORY, budget.what))  # type: ignore[arg-type]
    except zipfile.BadZipFile as exc:
        raise _invalid(budget.what, exc) from None
    seen: set[str] = set()
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArchiveBombError(f"{budget.what} holds {len(infos)} entries (at most {MAX_MEMBERS}); refused, nothing was published")
        declared = 0
        for info in infos:
            if not info.is_dir():
                declared += info.file_size
                if info.file_size > max(info.compress_size, 1) * MAX_RATIO + RATIO_SLACK:
                    raise ArchiveBombError(f"{budget.what}: {info.filename[:200]!r} expands {info.file_size} bytes from "
                                           f"{info.compress_size}; refused as a compression bomb, nothing was published")
        budget.declare(declared, "its members")
        for info in infos:
            budget.entry()
            name = member_name(info.filename, budget.what)
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            if info.is_dir() or name is None or stat.S_ISDIR(mode):
                continue
            if stat.S_ISLNK(mode):
                _once(name, seen, budget.what)
                if info.file_size > MAX_LINK_TARGET:
                    raise UnsafeSourceError(f"{budget.what}: {name} is a link with a {info.file_size}-byte target; refused")
                raw_target = zf.read(info).decode("utf-8", "replace")
                _link(name, raw_target, link_target(name, raw_target), scan, budget.what)
                continue
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # type bits set (many writers leave them 0): a special file
                raise UnsafeSourceError(f"{budget.what}: {name} is a special file (mode {stat.filemode(mode)}); refused, nothing was published",
                                        hint="a model archive holds regular files and folders")
            with zf.open(info) as member:
                _file(name, info.file_size, member.read, scan, seen, budget, open_member, close_member, hashing, progress)


def _resolve_links(scan: Scan, what: str) -> None:
    """Each link's target followed to a regular file of the archive; its size and digest copied."""
    files = {m.path: m for m in scan.members}
    for m in scan.members:
        if m.link is None:
            continue
        target, hops = m.link, 0
        while target in files and files[target].link is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise UnsafeSourceError(f"{what}: {m.path} is a loop of links; refused, nothing was published")
            target = files[target].link  # type: ignore[assignment]
        found = files.get(target)
        if found is None:
            raise UnsafeSourceError(f"{what}: {m.path} links to {m.link!r}, which is not a file of the archive; refused, nothing was published",
                                    hint="links in a model archive must name regular files inside it")
        m.link = target
        m.size, m.sha256 = found.size, found.sha256
