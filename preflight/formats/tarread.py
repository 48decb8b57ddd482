"""Tar headers read as CPython's tarfile (3.11) reads them, with bounds and a small cost per entry.

`TarReader` walks an uncompressed tar from a binary stream (a file, a window of one, or a
decompressing stream) and yields one `TarEntry` per member with the name, type, size and
link that `tarfile` would report: ustar prefixes joined, GNU long names and links ('L',
'K'), POSIX extended headers ('x', 'X', and global 'g' applied to every later member), an
old-style directory (a regular entry whose name ends in '/'), and data skipped only for the
types tarfile skips it for. It stops where tarfile stops: at the first zero block, or at a
header whose checksum or number fields do not read (an error when that is the very first
header, or when an extended header is followed by one that does not read).

Why not tarfile itself: it keeps every member it has read (a TarInfo of about 1.7 kB each)
and spends about 30 us a member, so a hostile layer of 200,000 empty entries costs seconds
and hundreds of megabytes before any bound is reached. Here an entry costs a few
microseconds and nothing is kept; `max_entries` counts every header (directories, links,
extended headers included), `max_names` the bytes of names and links together, and
`max_meta` one long-name or extended-header record, each checked before it is read.

Sparse members (GNU 'S', GNU sparse PAX records) are refused: nothing here needs them.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator

BLOCK = 512
REGULAR = {b"0", b"\x00", b"7"}
SUPPORTED = REGULAR | {b"1", b"2", b"3", b"4", b"5", b"6", b"L", b"K", b"S"}
EXTENDED = {b"x", b"X", b"g"}
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_CACHE_MAX = 4096
READ_AHEAD = 1 << 16
_HEADER = struct.Struct("100s24s12s12s8s1s100s6s2s32s32s16s155s")
_ZERO = bytes(BLOCK)


class TarError(Exception):
    """The stream is not a tar tarfile would read (`first`: its first header does not read)."""

    def __init__(self, message: str, *, first: bool = False) -> None:
        super().__init__(message)
        self.first = first


class TarLimit(Exception):
    """The tar exceeds a bound."""


class TarEntry:
    """One member: `offset` is where its first header starts, `offset_data` where its data does."""

    __slots__ = ("name", "type", "size", "linkname", "offset", "offset_data")

    def __init__(self, name: str, type_: bytes, size: int, linkname: str, offset: int, offset_data: int) -> None:
        self.name, self.type, self.size, self.linkname, self.offset, self.offset_data = name, type_, size, linkname, offset, offset_data

    def isreg(self) -> bool:
        return self.type in REGULAR

    def isdir(self) -> bool:
        return self.type == b"5"

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"


def _nts(s: bytes) -> str:
    p = s.find(b"\0")
    if p != -1:
        s = s[:p]
    return s.decode("utf-8", "surrogateescape")


_numbers: dict[bytes, int] = {}
_valid: set[bytes] = set()  # groups of number fields seen to read


def _remember(fields: bytes) -> None:
    if len(_valid) < _CACHE_MAX:
        _valid.add(fields)


def _nti(s: bytes) -> int:
    """tarfile.nti: base-256 or octal (what int(..., 8) takes after cutting at NUL)."""
    got = _numbers.get(s)
    if got is not None:
        return got
    if s[0] in (0o200, 0o377):
        n = int.from_bytes(s[1:], "big")
        if s[0] == 0o377:
            n = -(256 ** (len(s) - 1) - n)
    else:
        p = s.find(b"\0")
        t = s[:p] if p != -1 else s
        try:
            n = int(t.decode("ascii").strip() or "0", 8)
        except (ValueError, UnicodeDecodeError):
            raise TarError("invalid header") from None
    if len(_numbers) < _CACHE_MAX:
        _numbers[s] = n
    return n


def _block(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _checksum_ok(buf: bytes, field_: bytes) -> bool:
    """tarfile.calc_chksums: the header's bytes summed with the checksum field as spaces,
    unsigned or signed. The sum comes from adler32 (its low half is 1 + the byte sum modulo
    65521) whenever the header's non-zero bytes cannot reach 65521."""
    want = _nti(field_)
    if (BLOCK - buf.count(0)) * 255 < 65521:
        total = ((zlib.adler32(buf) & 0xFFFF) - 1) % 65521
    else:
        total = sum(buf)
    plain = 256 + total - sum(field_)
    if want == plain:
        return True
    high = sum(1 for c in buf if c > 127) - sum(1 for c in field_ if c > 127)
    return high > 0 and want == plain - 256 * high


class TarReader:
    """Iterate over the members of a tar on `stream` (anything with read(n); seek(n, 1) is
    used to skip data when the stream is seekable). `read(n)` reads the current member's data."""

    def __init__(self, stream, *, max_entries: int, max_names: int, max_meta: int) -> None:
        self.stream = stream
        self.max_entries, self.max_names, self.max_meta = max_entries, max_names, max_meta
        self.pos = 0            # bytes of the tar consumed
        self.entries = 0        # headers read, extended ones included
        self.names = 0
        self.pax_global: dict[str, str] = {}
        self._data_left = 0     # unread data of the current member
        self._skip_after = 0    # padding (and unread data) before the next header
        self._buf, self._at = b"", 0  # read ahead of `pos`
        self._seekable = bool(getattr(stream, "seekable", lambda: False)())

    # -- low-level reading

    def _read(self, n: int) -> bytes:
        have = len(self._buf) - self._at
        if have >= n:
            out = self._buf[self._at:self._at + n]
            self._at += n
            self.pos += n
            return out
        parts = [self._buf[self._at:]]
        need = n - have
        self._buf, self._at = b"", 0
        while need > 0:
            data = self.stream.read(max(need, READ_AHEAD))
            if not data:
                break
            if len(data) > need:
                parts.append(data[:need])
                self._buf, self._at = data, need
                need = 0
            else:
                parts.append(data)
                need -= len(data)
        out = b"".join(parts)
        self.pos += len(out)
        return out

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        have = len(self._buf) - self._at
        if n <= have:
            self._at += n
            self.pos += n
            return
        self._buf, self._at = b"", 0
        self.pos += have
        n -= have
        if self._seekable:
            self.stream.seek(n, 1)
            self.pos += n
            return
        while n > 0:
            data = self.stream.read(min(n, 1 << 20))
            if not data:
                return
            n -= len(data)
            self.pos += len(data)

    def read(self, n: int = -1) -> bytes:
        """The current member's data (at most what is left of it)."""
        n = self._data_left if n is None or n < 0 else min(n, self._data_left)
        data = self._read(n)
        self._data_left -= len(data)
        self._skip_after -= len(data)
        return data

    # -- headers

    def _count(self, name_bytes: int) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise TarLimit(f"more than {self.max_entries} entries")
        self.names += name_bytes
        if self.names > self.max_names:
            raise TarLimit(f"more than {self.max_names} bytes of entry names")

    def _member(self, first: bool = True, start: int | None = None) -> TarEntry | None:
        """The next member (its long-name and extended headers applied), None at the end, or
        TarError where tarfile raises."""
        at = self.pos
        buf = self._read(BLOCK)
        if len(buf) != BLOCK or buf == _ZERO:
            if at == 0 and buf != _ZERO:
                raise TarError("empty file" if not buf else "truncated header", first=True)
            if first and buf == _ZERO:
                return None
            if first:
                return None
            raise TarError("no header after an extended header")
        (raw_name, mode_ids, raw_size, mtime, chksum, kind, raw_link, _magic, _ver, _u, _g, devs,
         raw_prefix) = _HEADER.unpack_from(buf)
        try:
            ok = _checksum_ok(buf, chksum)
            if ok:
                if mode_ids not in _valid:
                    for lo in (0, 8, 16):
                        _nti(mode_ids[lo:lo + 8])
                    _remember(mode_ids)
                if devs not in _valid:
                    _nti(devs[:8])
                    _nti(devs[8:])
                    _remember(devs)
                _nti(mtime)
                size = _nti(raw_size)
        except TarError:
            ok = False
        if not ok:
            if at == 0:
                raise TarError("bad checksum or number field", first=True)
            if not first:
                raise TarError("bad checksum or number field after an extended header")
            return None
        name = _nts(raw_name)
        link = _nts(raw_link) if raw_link[:1] != b"\0" else ""
        prefix = _nts(raw_prefix) if raw_prefix[:1] != b"\0" else ""
        if kind == b"\x00" and name.endswith("/"):
            kind = b"5"
        if kind == b"S":
            raise TarLimit("a GNU sparse member, which is not read here")
        if kind == b"5":
            name = name.rstrip("/")
        if prefix and kind not in (b"L", b"K", b"S"):
            name = prefix + "/" + name
        self._count(len(name) + len(link))
        start = at if start is None else start

        if kind in (b"L", b"K"):
            if size > self.max_meta:
                raise TarLimit(f"a {size}-byte long name (at most {self.max_meta})")
            data = self._read(_block(size))
            nxt = self._member(first=False, start=start)
            if nxt is None:
                raise TarError("a long name with no member after it")
            long = _nts(data)
            self._count(len(long))
            if kind == b"L":
                nxt.name = long.removesuffix("/") if nxt.isdir() else long
            else:
                nxt.linkname = long
            return nxt
        if kind in EXTENDED:
            if size > self.max_meta:
                raise TarLimit(f"a {size}-byte extended header (at most {self.max_meta})")
            data = self._read(_block(size))
            pax = self.pax_global if kind == b"g" else dict(self.pax_global)
            self._pax_records(data, pax)
            if any(k.startswith("GNU.sparse.") for k in pax):
                raise TarLimit("a GNU sparse member, which is not read here")
            nxt = self._member(first=False, start=start)
            if nxt is None:
                raise TarError("an extended header with no member after it")
            if kind != b"g":
                self._apply(nxt, pax)
                if "size" in pax:
                    self._skip_after = _block(nxt.size) if (nxt.isreg() or nxt.type not in SUPPORTED) else 0
                    self._data_left = nxt.size if nxt.isreg() or nxt.type not in SUPPORTED else 0
            return nxt

        entry = TarEntry(name, kind, size, link, start, self.pos)
        if self.pax_global:
            self._apply(entry, self.pax_global)
            if entry.isdir():
                entry.name = entry.name.rstrip("/")
        skips = entry.isreg() or kind not in SUPPORTED
        self._data_left = entry.size if skips else 0
        self._skip_after = _block(entry.size) if skips else 0
        return entry

    def _pax_records(self, buf: bytes, pax: dict[str, str]) -> None:
        pos = 0
        while True:
            m = _PAX_RECORD.match(buf, pos)
            if not m:
                break
            length = int(m.group(1))
            if length == 0:
                raise TarError("invalid extended header")
            value = buf[m.end(2) + 1:m.start(1) + length - 1]
            key = m.group(2).decode("utf-8", "surrogateescape")
            pax[key] = value.decode("utf-8", "surrogateescape")
            pos += length

    def _apply(self, entry: TarEntry, pax: dict[str, str]) -> None:
        for key, value in pax.items():
            if key == "path":
                entry.name = value.rstrip("/")
            elif key == "linkpath":
                entry.linkname = value
            elif key == "size":
                try:
                    entry.size = int(value)
                except ValueError:
                    entry.size = 0
        if "path" in pax or "linkpath" in pax:
            self._count(len(pax.get("path", "")) + len(pax.get("linkpath", "")))
            self.entries -= 1

    def __iter__(self) -> Iterator[TarEntry]:
        while True:
            self._skip(self._skip_after)
            self._skip_after = self._data_left = 0
            entry = self._member()
            if entry is None:
                return
            yield entry
