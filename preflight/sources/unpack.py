"""What reading a model archive (archive_reader.py) and reading an OCI tar layer
(oci_tar.py) share: compression told by its magic bytes, a decompressed stream that may
not expand past a bound, and a link's target resolved inside the tree it belongs to.
Errors are the caller's own (an archive bomb, a layer that does not match its descriptor).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_reader(raw: io.BufferedReader, read_size: int, what: str, alternative: str) -> Any:
    """The zstd-decompressed stream of `raw`; MissingExtra (naming `what` and a way around it)
    when the zstandard package is not installed."""
    try:
        import zstandard
    except ImportError:
        from ..errors import MissingExtra

        raise MissingExtra(f"{what}, compressed with zstd,", "zstd", "zstandard", alternative=alternative) from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_size=read_size)


class LimitedExpansion(io.RawIOBase):
    """A decompressed stream that may not expand past `limit()` bytes (a compression bomb):
    every byte it gives counts, headers and padding too. Past the bound it raises `refused()`."""

    def __init__(self, inner: Any, limit: Callable[[], int], refused: Callable[[], Exception]) -> None:
        self._inner, self._limit, self._refused, self.count = inner, limit, refused, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        n = len(data)
        self.count += n
        if self.count > self._limit():
            raise self._refused()
        b[:n] = data
        return n


def resolve_inside(path: str) -> str | None:
    """`path` (slash-separated, relative to the tree's root) with `.` and `..` resolved;
    None when a `..` climbs above the root."""
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)
