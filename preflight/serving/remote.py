"""Fit inputs read from a source before a download: config.json whole, and only the headers of
the weight files, through ranged reads (`Source.read_range`). Schemes are the sources' business.

A remote file is handed to the format checks as a `RangeView`: a read-only file object of the
file's listed size that fetches the byte ranges the check asks for. The checks are the same
pure code that judges files on the volume (their bounds included: a safetensors header of at
most 16 MiB, GGUF counts against the file size), so a hostile header costs what it costs
there, and never more than `RANGE_LIMIT` bytes of one file are read.

- safetensors: the first `PROBE` bytes (8 of length and, usually, the whole header), then the
  rest of the header when it is longer: one request per shard for most models (a 70B shard's
  header is ~3 KiB), at most 8 + 16 MiB.
- GGUF: the header as the check walks it (the first 256 KiB, growing by doubling). The
  hyper-parameters come before the tokenizer arrays in files written by llama.cpp's tools
  (gguf-py's writer, llama-quantize, gguf-split), so once the read passes `GGUF_BUDGET` with
  the architecture's keys seen, it stops: the vocabulary's strings are not needed.
- config.json (at most CONFIG_LIMITS) and tokenizer_config.json (at most `TOKENIZER_CONFIG_LIMIT`), whole.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field

from .fit import WeightGroups
from .inputs import FitInputs, folder_inputs, gguf_inputs, tokenizer_max_len
from ..record import record

PROBE = 8 * 2**10
GGUF_BUDGET = 1 * 2**20
RANGE_LIMIT = 8 + 16 * 2**20 + 2**16  # bytes of one file read at most (a safetensors header's own cap)
GGUF_LIMIT = 32 * 2**20  # bytes of a GGUF header walked at most when the hyper-parameters are not found sooner
TOKENIZER_CONFIG_LIMIT = 1 * 2**20
READERS = 8  # shards read at once

Reader = Callable[[str, int, int], "bytes | None"]  # (name in the lane, start, length) -> bytes, None: cannot


class OutOfBudget(OSError):
    """A ranged read would pass its budget: the check stops where it is (an OSError, which the
    format checks report as unreadable; the caller knows why)."""


class CannotRead(Exception):
    """The source cannot read part of this file."""


@record
class Counter:
    bytes: int = 0
    requests: int = 0


class RangeView(io.RawIOBase):
    """A remote file as the format checks read it: seekable, of the listed size, its bytes
    fetched as ranges when asked for (one window kept; a read past it starts a new one)."""

    def __init__(self, read: Callable[[int, int], bytes | None], size: int, budget: int, first: int = PROBE,
                 counter: Counter | None = None) -> None:
        self._read, self._size, self.budget, self._first = read, size, budget, first
        self._pos = 0
        self._base = 0
        self._buf = b""
        self.fetched = 0
        self.out_of_budget = False
        self.counter = counter or Counter()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        n = min(len(b), max(0, self._size - self._pos))
        if n == 0:
            return 0
        start, end = self._pos, self._pos + n
        have_end = self._base + len(self._buf)
        if not (self._base <= start and end <= have_end):
            if self._base <= start <= have_end and self._buf:
                got = self._fetch(have_end, max(end - have_end, self._first))
                self._buf = self._buf[start - self._base:] + got
                self._base = start
            else:
                self._buf = self._fetch(start, max(n, self._first))
                self._base = start
        off = start - self._base
        chunk = self._buf[off:off + n]
        b[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def _fetch(self, start: int, length: int) -> bytes:
        length = min(length, self._size - start)
        if self.fetched + length > self.budget:
            self.out_of_budget = True
            raise OutOfBudget(f"reading {length} more bytes at {start} passes the {self.budget}-byte budget for this header")
        data = self._read(start, length)
        if data is None:
            raise CannotRead()
        self.fetched += len(data)
        self.counter.bytes += len(data)
        self.counter.requests += 1
        if len(data) < length:
            raise OSError(f"the source sent {len(data)} bytes at {start}, {length} asked (the file is shorter than listed)")
        return data


@record
class RemoteResult:
    inputs: FitInputs | None
    why_not: str | None = None  # why fit could not be read before the download
    counter: Counter = field(default_factory=Counter)


def read_whole(read: Callable[[int, int], bytes | None], size: int | None, limit: int, counter: Counter) -> bytes | None:
    """A small file read whole (None: too large, or not readable in part)."""
    if size is not None and size > limit:
        return None
    data = read(0, (size if size is not None else limit + 1))
    if data is None:
        return None
    counter.bytes += len(data)
    counter.requests += 1
    return data if len(data) <= limit else None


def folder_remote(files: Mapping[str, int | None], read: Reader) -> RemoteResult:
    """A vLLM folder's fit inputs from its source: `files` maps each file the lane lists to its size."""
    from ..formats.jsonfile import CONFIG_LIMITS, parse_json
    from .lane import weight_files

    counter = Counter()
    if "config.json" not in files:
        return RemoteResult(None, "the source lists no config.json", counter)
    try:
        raw = read_whole(lambda s, n: read("config.json", s, n), files["config.json"], CONFIG_LIMITS.max_bytes, counter)
    except CannotRead:
        raw = None
    if raw is None:
        return RemoteResult(None, "config.json cannot be read in part from this source, or is too large", counter)
    config, err = parse_json(raw, CONFIG_LIMITS)
    if err is not None or not isinstance(config, dict):
        return RemoteResult(None, f"the source's config.json {err.message if err else 'is not a JSON object'}", counter)
    tok = None
    if "tokenizer_config.json" in files:
        tok = tokenizer_max_len(read_whole(lambda s, n: read("tokenizer_config.json", s, n), files["tokenizer_config.json"],
                                           TOKENIZER_CONFIG_LIMIT, counter))
    shards = weight_files(list(files))
    if not shards:
        return RemoteResult(folder_inputs(config, None, tok, "source"), None, counter)
    if any(files[s] is None for s in shards):
        return RemoteResult(folder_inputs(config, None, tok, "source"), "the source gives no size for a weight file", counter)

    def one(name: str) -> WeightGroups | str:
        from ..formats.safetensors import check_safetensors

        view = RangeView(lambda s, n: read(name, s, n), files[name] or 0, RANGE_LIMIT, PROBE, counter)
        try:
            st = check_safetensors(view, name=name)
        except CannotRead:
            return f"{name} cannot be read in part from this source"
        if not st.header_parsed or not st.ok:
            first = next((p.message for p in st.problems if p.is_error), "unreadable")
            return f"the source's {first}"
        return WeightGroups.of({n: (t.dtype, tuple(t.shape)) for n, t in st.tensors.items()})

    groups = WeightGroups()
    with ThreadPoolExecutor(min(READERS, len(shards)), thread_name_prefix="fit-read") as pool:
        for got in pool.map(one, shards):
            if isinstance(got, str):
                return RemoteResult(folder_inputs(config, None, tok, "source"), got, counter)
            groups.merge(got)
    return RemoteResult(folder_inputs(config, groups, tok, "source"), None, counter)


_REQUIRED = ("block_count", "embedding_length", "attention.head_count")


def gguf_remote(first: str, sizes: Mapping[str, int | None], read: Reader) -> RemoteResult:
    """A GGUF lane's fit inputs from the header of its first part; weights are the listed sizes of every part."""
    from ..formats.gguf import ArraySummary, check_gguf

    counter = Counter()
    size = sizes.get(first)
    if size is None:
        return RemoteResult(None, "the source gives no size for the GGUF file", counter)
    weights = sum(v for v in sizes.values() if v is not None) if all(v is not None for v in sizes.values()) else None
    view = RangeView(lambda s, n: read(first, s, n), size, GGUF_BUDGET, 64 * 2**10, counter)
    try:
        info = check_gguf(view, name=first)
    except CannotRead:
        return RemoteResult(None, f"{first} cannot be read in part from this source", counter)
    meta = info.metadata
    arch = meta.get("general.architecture")
    enough = isinstance(arch, str) and all(f"{arch}.{k}" in meta for k in _REQUIRED)
    partial = None
    if not info.header_parsed and view.out_of_budget:
        if enough:
            partial = f"the first {view.fetched} bytes of the GGUF header: {len(meta)} of its {info.kv_count} key/values"
        else:  # the hyper-parameters come later than usual: walk on, up to the hard limit
            view = RangeView(lambda s, n: read(first, s, n), size, GGUF_LIMIT, 256 * 2**10, counter)
            info = check_gguf(view, name=first)
            meta = info.metadata
            arch = meta.get("general.architecture")
    if partial is None and (not info.header_parsed or not info.ok):
        first_error = next((p.message for p in info.problems if p.is_error), "unreadable")
        return RemoteResult(None, f"the source's {first_error}", counter)
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = info.vocab_size or (tokens.length if isinstance(tokens, ArraySummary) else len(tokens) if isinstance(tokens, list) else 0)
    if not n_vocab and isinstance(arch, str) and isinstance(meta.get(f"{arch}.vocab_size"), int):
        n_vocab = meta[f"{arch}.vocab_size"]
    inputs = gguf_inputs(meta, weights, n_vocab, "source", partial)
    return RemoteResult(inputs, None if inputs is not None else "the GGUF header names no architecture", counter)
