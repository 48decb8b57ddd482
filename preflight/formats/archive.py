"""Which members of a zip or tar archive a loader reads, found the way that loader finds them.

Pure and bounded: bytes of one file in, member lists and byte spans out. The pickle check
(`formats/pickle.py`) decides what to walk from these views; nothing here unpickles.

torch's zip reader. `torch.load` and `torch.jit.load` read a zip through miniz (bundled
in PyTorch: miniz 2.0.8, 2.1.0 and 3.0.2 across torch 1.x and 2.x; Debian's torch 1.13.1
carries 2.1.0). Their central-directory reading and name lookup are the same code in all
three (`mz_zip_reader_read_central_dir`, `mz_zip_reader_sort_central_dir_offsets_by_filename`,
`mz_zip_locate_file_binary_search`), and `caffe2/serialize/inline_container.cc` uses them so:

- the record prefix is the first central-directory entry's name up to its first `/`
  (no `/`: torch refuses the archive), whatever the other entries are called;
- a record `R` is looked up as `prefix/R` (a C string: cut at a NUL) with
  `mz_zip_reader_locate_file(..., flags=0)`: a binary search over the entries heap-sorted
  by their ASCII-lower-cased names. Names match case-insensitively (`archive/DATA.PKL` is
  `data.pkl`), and of several entries that match, the one the search lands on is read,
  which depends on the heap sort, not on the order in the archive;
- the directory is where the end record says (no correction for data prepended to the
  archive, which Python's zipfile applies), with as many entries as the end record counts.

`miniz_directory` reads the directory as miniz does, `lookup` finds every entry a record
name matches, and `miniz_pick` says which one of them miniz returns (the heap sort and
binary search replayed, for directories of up to `MAX_REPLAY` entries).

Python's view. NumPy's `np.load` reads a `.npz` through Python's zipfile (members by
content: a member beginning with the `.npy` magic is an array, pickled when its dtype holds
objects); `zipfile_directory` gives that view. The legacy tar format of torch (before
0.4) and tools that ship checkpoints inside tars (`.nemo`) read tars through tarfile;
`tar_members` gives its members (a name looked up there is exact, and the last entry of a
name wins).

Every member is a `Span`: where its bytes sit in the file and how they are compressed, so
an archive stored inside another (a checkpoint inside a tar) is read as a window of the
outer file, never extracted.
"""

from __future__ import annotations

import struct
import zlib

from ..record import record

MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_DIRECTORY = 32 << 20
MAX_TAR_MEMBERS = 40_000
MAX_TAR_NAMES = 32 << 20   # bytes of member names in one tar
MAX_TAR_META = 1 << 20     # one long-name or extended-header record
MAX_REPLAY = 10_000        # directories whose heap sort is replayed to name the member miniz returns

STORED, DEFLATED = 0, 8
_EOCD, _Z64_LOCATOR, _Z64_EOCD, _CDH, _LFH = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06", b"PK\x01\x02", b"PK\x03\x04"


class ArchiveUnreadable(Exception):
    """The reader this view stands for cannot read the archive (it fails too)."""


class ArchiveTooLarge(Exception):
    """The archive exceeds what is read to judge it."""


class Entry:
    """One central-directory entry. `name` is the raw bytes of its name."""

    __slots__ = ("index", "name", "method", "flags", "comp_size", "size", "header_offset", "external_attr")

    def __init__(self, index: int, name: bytes, method: int, flags: int, comp_size: int, size: int,
                 header_offset: int, external_attr: int = 0) -> None:
        self.index, self.name, self.method, self.flags = index, name, method, flags
        self.comp_size, self.size, self.header_offset, self.external_attr = comp_size, size, header_offset, external_attr

    @property
    def shown(self) -> str:
        return self.name.decode("utf-8", "replace")

    def is_dir(self) -> bool:
        return self.name.endswith(b"/") or bool(self.external_attr & 0x10)


@record(frozen=True)
class Span:
    """A member's bytes: `comp_size` bytes from `start` in the file, stored or deflated to `size` bytes."""

    start: int
    comp_size: int
    size: int
    method: int = STORED


class Window:
    """Bytes [start, start + length) of a seekable binary file, as a file of its own."""

    def __init__(self, f, start: int, length: int) -> None:
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        left = self.length - self.pos
        if left <= 0:
            return b""
        n = left if n is None or n < 0 else min(n, left)
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def absolute(self, offset: int) -> int:
        return self.start + offset


def _le(data: bytes, off: int, width: int) -> int:
    return int.from_bytes(data[off:off + width], "little")


def _read_at(f, off: int, n: int) -> bytes:
    f.seek(off)
    return f.read(n)


# ----------------------------------------------------------------------------- miniz's view


def _find_end_record(f, size: int) -> int:
    """mz_zip_reader_locate_header_sig: the last end-of-directory signature with 22 bytes after
    it, searched backwards in 4096-byte windows until 65,535 + 22 bytes from the end."""
    cur = max(size - 4096, 0)
    while not (cur == 0 or size - cur >= 0xFFFF + 22):
        cur = max(cur - (4096 - 3), 0)
    tail = _read_at(f, cur, size - cur)
    i = tail.rfind(_EOCD, 0, len(tail) - 22 + 4)
    if i < 0:
        raise ArchiveUnreadable("no end-of-directory record")
    return cur + i


@record(frozen=True)
class Directory:
    """Where miniz found the directory, and how many of its bytes the entries took."""

    end_record: int
    offset: int
    size: int
    used: int
    zip64: bool


_CDH_STRUCT = struct.Struct("<4sHHHHHHIIIHHHHHII")


def miniz_directory(f, size: int) -> tuple[list[Entry], Directory]:
    """The entries as miniz reads them (mz_zip_reader_read_central_dir, miniz 2.0.8 to 3.0.2).

    Checks that only make miniz refuse the whole archive are not repeated: an archive read
    here that torch refuses costs at most a closer look, never a missed member."""
    if size < 22:
        raise ArchiveUnreadable("shorter than an end-of-directory record")
    eocd_at = _find_end_record(f, size)
    eocd = _read_at(f, eocd_at, 22)
    total, cdir_size, cdir_ofs = _le(eocd, 10, 2), _le(eocd, 12, 4), _le(eocd, 16, 4)
    zip64 = False
    if eocd_at >= 20 + 56:
        locator = _read_at(f, eocd_at - 20, 20)
        if locator[:4] == _Z64_LOCATOR:
            z64_at = _le(locator, 8, 8)
            if z64_at > size - 56:
                raise ArchiveUnreadable("a zip64 end record outside the file")
            z64 = _read_at(f, z64_at, 56)
            if z64[:4] == _Z64_EOCD:
                zip64 = True
                total, cdir_size, cdir_ofs = _le(z64, 32, 8), _le(z64, 40, 8), _le(z64, 48, 8)
                if total > 0xFFFFFFFF or cdir_size > 0xFFFFFFFF:
                    raise ArchiveUnreadable("a zip64 directory larger than miniz reads")
    if total > MAX_ZIP_MEMBERS:
        raise ArchiveTooLarge(f"{total} members (more than {MAX_ZIP_MEMBERS})")
    if cdir_size > MAX_ZIP_DIRECTORY:
        raise ArchiveTooLarge(f"a {cdir_size}-byte member directory (more than {MAX_ZIP_DIRECTORY})")
    if cdir_size < total * 46 or cdir_ofs + cdir_size > size:
        raise ArchiveUnreadable("a member directory that does not fit the file")
    cd = _read_at(f, cdir_ofs, cdir_size)
    entries: list[Entry] = []
    p = 0
    unpack = _CDH_STRUCT.unpack_from
    for i in range(total):
        if len(cd) - p < 46:
            raise ArchiveUnreadable(f"directory entry {i} is not where the directory says")
        (sig, _made, _need, flags, method, _t, _d, _crc, comp, usize, n, m, k, _disk, _iattr, eattr, lho) = unpack(cd, p)
        if sig != _CDH:
            raise ArchiveUnreadable(f"directory entry {i} is not where the directory says")
        if 46 + n + m + k > len(cd) - p:
            raise ArchiveUnreadable(f"directory entry {i} runs past the directory")
        name = cd[p + 46:p + 46 + n]
        if 0xFFFFFFFF in (comp, usize, lho) and m:
            usize, comp, lho = _zip64_extra(cd[p + 46 + n:p + 46 + n + m], usize, comp, lho)
        entries.append(Entry(i, name, method, flags, comp, usize, lho, eattr))
        p += 46 + n + m + k
    return entries, Directory(eocd_at, cdir_ofs, cdir_size, p, zip64)


def _zip64_extra(extra: bytes, usize: int, comp: int, lho: int) -> tuple[int, int, int]:
    """mz_zip_file_stat_internal: the 64-bit sizes and offset from the zip64 extra field."""
    q = 0
    while len(extra) - q >= 4:
        fid, fsize = _le(extra, q, 2), _le(extra, q + 2, 2)
        if q + 4 + fsize > len(extra):
            raise ArchiveUnreadable("a malformed extra field")
        if fid == 0x0001:
            field_, r = extra[q + 4:q + 4 + fsize], 0
            values = [usize, comp, lho]
            for j in range(3):
                if values[j] == 0xFFFFFFFF:
                    if len(field_) - r < 8:
                        raise ArchiveUnreadable("a short zip64 extra field")
                    values[j] = _le(field_, r, 8)
                    r += 8
            return values[0], values[1], values[2]
        q += 4 + fsize
    return usize, comp, lho


def torch_prefix(entries: list[Entry]) -> bytes | None:
    """inline_container.cc: the record folder is the first entry's name up to its first `/`."""
    if not entries:
        return None
    first = entries[0].name
    i = first.find(b"/")
    return None if i < 0 else first[:i]


def record_key(prefix: bytes, record: str) -> bytes:
    """The name torch asks miniz for: `prefix/record`, cut at a NUL as a C string is."""
    return (prefix + b"/" + record.encode()).split(b"\0", 1)[0]


def lower(name: bytes) -> bytes:
    """MZ_TOLOWER: A-Z only."""
    return name.translate(_LOWER)


_LOWER = bytes(c + 32 if 65 <= c <= 90 else c for c in range(256))


def lookup(entries: list[Entry], key: bytes) -> list[Entry]:
    """Every entry mz_zip_reader_locate_file(key, flags=0) may match: equal after lower-casing."""
    want = lower(key)
    return [e for e in entries if len(e.name) == len(want) and lower(e.name) == want]


def miniz_pick(entries: list[Entry], key: bytes) -> Entry | None:
    """The one entry miniz returns for `key` (None when none matches, or the directory is too
    large to replay its sort)."""
    if len(entries) > MAX_REPLAY:
        return None
    keys = [lower(e.name) for e in entries]
    order = _heap_sort(keys)
    want = lower(key)
    lo, hi = 0, len(order) - 1
    while lo <= hi:
        mid = lo + ((hi - lo) >> 1)
        k = keys[order[mid]]
        if k == want:
            return entries[order[mid]]
        if k < want:
            lo = mid + 1
        else:
            hi = mid - 1
    return None


def _heap_sort(keys: list[bytes]) -> list[int]:
    """mz_zip_reader_sort_central_dir_offsets_by_filename, step for step (its order among equal
    names is what decides which of them a lookup returns). Lower-cased bytes compare as
    mz_zip_reader_filename_less compares: byte by byte, a prefix before the longer name."""
    size = len(keys)
    idx = list(range(size))
    if size <= 1:
        return idx

    def sift(root: int, end: int) -> None:
        while True:
            child = (root << 1) + 1
            if child >= end:
                return
            if child + 1 < end and keys[idx[child]] < keys[idx[child + 1]]:
                child += 1
            if not keys[idx[root]] < keys[idx[child]]:
                return
            idx[root], idx[child] = idx[child], idx[root]
            root = child

    for start in range((size - 2) >> 1, -1, -1):
        sift(start, size)
    for end in range(size - 1, 0, -1):
        idx[end], idx[0] = idx[0], idx[end]
        sift(0, end)
    return idx


def local_span(f, size: int, entry: Entry) -> Span:
    """Where a member's bytes start: after its local header's name and extra field, as miniz
    and zipfile both read them."""
    head = _read_at(f, entry.header_offset, 30)
    if len(head) < 30 or head[:4] != _LFH:
        raise ArchiveUnreadable(f"{entry.shown}: no local header where the directory says")
    return _span(entry, entry.header_offset + 30 + _le(head, 26, 2) + _le(head, 28, 2), size)


def _span(entry: Entry, start: int, size: int) -> Span:
    if entry.method == STORED:
        # miniz reads the uncompressed size, zipfile the compressed one: the longer is walked
        n = max(0, min(max(entry.size, entry.comp_size), size - start))
        return Span(start, n, n, STORED)
    if start + entry.comp_size > size:
        raise ArchiveUnreadable(f"{entry.shown}: its data runs past the end of the file")
    return Span(start, entry.comp_size, entry.size, entry.method)


# ----------------------------------------------------------------------------- Python's zipfile


def zipfile_directory(f, size: int) -> list[Entry]:
    """The entries as Python's zipfile (and so np.load) reads them: directory offsets corrected
    for data prepended to the archive, names cut at a NUL and decoded as zipfile decodes them."""
    import zipfile

    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except Exception as exc:  # zipfile raises assorted errors on hostile directories
        raise ArchiveUnreadable(f"{type(exc).__name__}: {exc}") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ArchiveTooLarge(f"{len(infos)} members (more than {MAX_ZIP_MEMBERS})")
    out = []
    for i, info in enumerate(infos):
        name = info.filename.encode("utf-8", "surrogateescape")
        out.append(Entry(i, name, info.compress_type, info.flag_bits, info.compress_size, info.file_size,
                         info.header_offset, info.external_attr))
    return out


def same_for_zipfile(f, size: int, entries: list[Entry], d: Directory) -> bool:
    """Whether Python's zipfile reads exactly the entries miniz read (the usual case): the same
    end record, no data before the archive, no zip64 records, a directory the entries fill
    exactly, no NUL in a name. Then zipfile's own parse is not needed."""
    if d.used != d.size or d.end_record + 22 > size:
        return False
    tail = _read_at(f, max(0, size - (1 << 16) - 22), min(size, (1 << 16) + 22))
    last = tail[-22:]
    if len(last) == 22 and last[:4] == _EOCD and last[-2:] == b"\0\0":
        py_end = size - 22
    else:
        i = tail.rfind(_EOCD)
        if i < 0 or len(tail) - i < 22:
            return False
        py_end = size - len(tail) + i
    if py_end != d.end_record:
        return False
    if d.zip64:
        # zipfile reads the zip64 record just before its locator, miniz where the locator says
        locator = _read_at(f, d.end_record - 20, 20)
        if _le(locator, 8, 8) != d.end_record - 76 or _le(locator, 4, 4) != 0 or _le(locator, 16, 4) > 1:
            return False
        if py_end - 76 - d.size - d.offset != 0:
            return False
    elif py_end - d.size - d.offset != 0 or (d.end_record >= 20 and _read_at(f, d.end_record - 20, 4) == _Z64_LOCATOR):
        return False
    return not any(b"\0" in e.name for e in entries)


def peek(f, size: int, entry: Entry, n: int) -> tuple[Span, bytes]:
    """A member's span and its first `n` bytes (inflated when deflated), in one read when it can."""
    raw = _read_at(f, entry.header_offset, 30 + len(entry.name) + 64 + n)
    if len(raw) < 30 or raw[:4] != _LFH:
        raise ArchiveUnreadable(f"{entry.shown}: no local header where the directory says")
    skip = 30 + _le(raw, 26, 2) + _le(raw, 28, 2)
    span = _span(entry, entry.header_offset + skip, size)
    if span.method == STORED and skip + n <= len(raw):
        return span, raw[skip:skip + min(n, span.size)]
    return span, head_of(f, span, n)


def zip_bounds(f, size: int) -> None:
    """Refuse a directory too large to read before zipfile reads all of it."""
    tail_len = min(size, 22 + 65535)
    tail = _read_at(f, size - tail_len, tail_len)
    i = tail.rfind(_EOCD)
    if i < 0 or len(tail) - i < 22:
        return
    entries, cd_size = _le(tail, i + 10, 2), _le(tail, i + 12, 4)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        loc = tail.rfind(_Z64_LOCATOR, 0, i)
        if loc >= 0 and len(tail) - loc >= 20:
            off = _le(tail, loc + 8, 8)
            if off + 56 <= size:
                rec = _read_at(f, off, 56)
                if rec[:4] == _Z64_EOCD:
                    entries, cd_size = _le(rec, 32, 8), _le(rec, 40, 8)
    if entries > MAX_ZIP_MEMBERS:
        raise ArchiveTooLarge(f"{entries} members (more than {MAX_ZIP_MEMBERS})")
    if cd_size > MAX_ZIP_DIRECTORY:
        raise ArchiveTooLarge(f"a {cd_size}-byte member directory (more than {MAX_ZIP_DIRECTORY})")


# ----------------------------------------------------------------------------- tar


class TarMember:
    """A tar member: its name, where its data is, whether it is a regular file, its first bytes."""

    __slots__ = ("name", "span", "is_file", "head")

    def __init__(self, name: str, span: Span, is_file: bool, head: bytes) -> None:
        self.name, self.span, self.is_file, self.head = name, span, is_file, head


def tar_members(f, size: int, head: int = 6) -> list[TarMember]:
    """The members of an uncompressed tar as tarfile lists them (torch's legacy loader opens
    it with `tarfile.open(mode="r:")`; `tarread` follows tarfile's rules), each with its first
    `head` bytes. Raises ArchiveUnreadable where tarfile raises, which is where torch falls
    back to reading the file as a pickle stream."""
    from .tarread import TarError, TarLimit, TarReader

    f.seek(0)
    out: list[TarMember] = []
    reader = TarReader(f, max_entries=MAX_TAR_MEMBERS, max_names=MAX_TAR_NAMES, max_meta=MAX_TAR_META)
    try:
        for e in reader:
            if e.isreg():
                length = max(0, min(e.size, size - e.offset_data))
                out.append(TarMember(e.name, Span(e.offset_data, length, length), True, reader.read(head) if length else b""))
            else:
                out.append(TarMember(e.name, Span(e.offset_data, 0, 0), False, b""))
    except TarError as exc:
        raise ArchiveUnreadable(f"tar: {exc}") from None
    except TarLimit as exc:
        raise ArchiveTooLarge(str(exc)) from None
    return out


def last_named(members: list[TarMember], name: str) -> TarMember | None:
    """tarfile.getmember: the last member of exactly that name."""
    for m in reversed(members):
        if m.name == name:
            return m
    return None


# ----------------------------------------------------------------------------- reading a span


class Inflated:
    """A deflated span read as a stream of its inflated bytes (at most `limit` of them)."""

    CHUNK = 1 << 16

    def __init__(self, f, span: Span, limit: int) -> None:
        self.f, self.pos, self.left = f, span.start, span.comp_size
        self.out_left = min(span.size, limit)
        self.d = zlib.decompressobj(-15)
        self.pending = b""

    def read(self, n: int) -> bytes:
        out = []
        want = min(n, self.out_left)
        while want > 0:
            if not self.pending:
                if self.d.unconsumed_tail:
                    data = self.d.unconsumed_tail
                elif self.left > 0:
                    self.f.seek(self.pos)
                    data = self.f.read(min(self.CHUNK, self.left))
                    if not data:
                        break
                    self.pos += len(data)
                    self.left -= len(data)
                else:
                    break
                self.pending = self.d.decompress(data, max(want, self.CHUNK))
                if not self.pending and not self.d.unconsumed_tail and (self.left <= 0 or self.d.eof):
                    break
            piece, self.pending = self.pending[:want], self.pending[want:]
            out.append(piece)
            want -= len(piece)
            self.out_left -= len(piece)
        return b"".join(out)


def head_of(f, span: Span, n: int) -> bytes:
    """The first `n` bytes of a member (inflated when deflated); b"" for other methods."""
    if span.method == STORED:
        return _read_at(f, span.start, min(n, span.comp_size))
    if span.method == DEFLATED:
        try:
            return Inflated(f, span, n).read(n)
        except zlib.error:
            return b""
    return b""
