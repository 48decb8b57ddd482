"""Tar members read by the standard library's tarfile, one pass, with bounds and no memory per entry.

`TarReader` walks a tar from a binary stream (a file, a window of one, or a decompressing
stream) with `tarfile.open(mode="r|")`, so names, ustar prefixes, GNU long names and
links, PAX extended and global headers, and where the tar ends are exactly what tarfile
(and so torch's legacy loader, and any tool) reads. What tarfile itself leaves unbounded
is bounded here, each before it is read:

- `max_entries`: headers of every kind (directories, links, long-name and extended
  headers count), counted as tarfile parses them (`TarInfo.frombuf`);
- `max_names`: bytes of names and link targets together;
- `max_meta`: one GNU long-name or PAX record, which tarfile would read whole into memory;
- tarfile keeps every member it has read (`TarFile.members`, about 1.7 kB each): the
  list is emptied as the walk goes, so memory stays flat whatever the count.

A member costs tarfile about 20 microseconds, so the entry bound is what bounds the time
of a hostile tar (OCI layers and archive members: 40 000 entries, well under a second).
Sparse members (GNU 'S', GNU sparse PAX records) are refused: nothing here needs them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator


class TarError(Exception):
    """The stream is not a tar tarfile reads (`first`: not even its first header)."""

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
        return self.type in tarfile.REGULAR_TYPES

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def issym(self) -> bool:
        return self.type == tarfile.SYMTYPE

    def islnk(self) -> bool:
        return self.type == tarfile.LNKTYPE


class _Counter:
    def __init__(self, max_entries: int, max_meta: int) -> None:
        self.entries = 0
        self.max_entries, self.max_meta = max_entries, max_meta


def _bounded_info(counter: _Counter) -> type[tarfile.TarInfo]:
    """A TarInfo class that counts every header tarfile reads and refuses oversized records."""

    class BoundedInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf, encoding, errors):  # every header that reads, long-name and extended ones included
            info = super().frombuf(buf, encoding, errors)
            counter.entries += 1
            if counter.entries > counter.max_entries:
                raise TarLimit(f"more than {counter.max_entries} entries")
            return info

        def _proc_gnulong(self, tf):
            if self.size > counter.max_meta:
                raise TarLimit(f"a {self.size}-byte long name (at most {counter.max_meta})")
            return super()._proc_gnulong(tf)

        def _proc_pax(self, tf):
            if self.size > counter.max_meta:
                raise TarLimit(f"a {self.size}-byte extended header (at most {counter.max_meta})")
            return super()._proc_pax(tf)

        def _proc_sparse(self, tf):
            raise TarLimit("a GNU sparse member, which is not read here")

        def _apply_pax_info(self, pax_headers, encoding, errors):
            if any(k.startswith("GNU.sparse.") for k in pax_headers):
                raise TarLimit("a GNU sparse member, which is not read here")
            return super()._apply_pax_info(pax_headers, encoding, errors)

    return BoundedInfo


class TarReader:
    """Iterate over the members of a tar on `stream` (anything with read(n)); `read(n)` reads
    the current member's data."""

    def __init__(self, stream, *, max_entries: int, max_names: int, max_meta: int, bufsize: int = tarfile.RECORDSIZE) -> None:
        self.max_names = max_names
        self.bufsize = bufsize  # tarfile's read size from `stream` (larger: fewer copies of a large member)
        self.names = 0
        self._counter = _Counter(max_entries, max_meta)
        self._stream = stream
        self._tf: tarfile.TarFile | None = None
        self._data = None

    @property
    def entries(self) -> int:
        return self._counter.entries

    def read(self, n: int = -1) -> bytes:
        """The current member's data (at most what is left of it)."""
        if self._data is None:
            return b""
        return self._data.read(None if n is None or n < 0 else n)

    def __iter__(self) -> Iterator[TarEntry]:
        try:
            self._tf = tarfile.open(fileobj=self._stream, mode="r|", tarinfo=_bounded_info(self._counter), bufsize=self.bufsize)
        except tarfile.ReadError as exc:
            raise TarError(str(exc) or "not a tar", first=True) from None
        tf = self._tf
        while True:
            try:
                info = tf.next()
            except tarfile.ReadError as exc:
                raise TarError(str(exc) or "unreadable header") from None
            except tarfile.HeaderError as exc:  # raised where tarfile gives up on the first header
                raise TarError(str(exc), first=True) from None
            tf.members.clear()  # tarfile keeps every member: memory stays flat
            if info is None:
                return
            self.names += len(info.name.encode("utf-8", "surrogateescape")) + len(info.linkname.encode("utf-8", "surrogateescape"))
            if self.names > self.max_names:
                raise TarLimit(f"more than {self.max_names} bytes of entry names")
            self._data = tf.extractfile(info) if info.isreg() else None
            yield TarEntry(info.name, info.type, info.size, info.linkname, info.offset, info.offset_data)
