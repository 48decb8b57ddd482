"""GGUF header check: magic, version, key/values, tensor infos and layout, never tensor data.

Layout (little-endian): b"GGUF", u32 version, u64 tensor_count, u64 kv_count, the
key/values (gguf string key = u64 length + bytes, u32 value type, value), the tensor
infos (name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset relative to the
data start), then the data, which starts at the header end rounded up to
`general.alignment` (default 32).

"Valid" follows what llama.cpp's `gguf_init_from_file` (ggml/src/gguf.cpp) and model loader
accept: version 2 or 3, no duplicate or empty keys, value types 0..12 with no arrays of
arrays (gguf.cpp: "invalid GGUF type 9", although the GGUF spec and the gguf Python reader
allow them), `general.alignment` a u32 power of two, at most 4 dims whose element count
fits in int64, tensor names under 64 bytes, a ggml type whose block divides the row,
tensors laid out in order each padded to the alignment (no gap, no overlap), every
tensor's data inside the file, and every tensor at a file offset that is a multiple of 32
(ggml's TENSOR_ALIGNMENT: the default mmap load asserts it and aborts the process, which
a `general.alignment` of 16 or less can break). A file with no tensors is valid even when
it ends before the aligned data start (tokenizer-only files). A ggml type newer than this
table is a warning when the layout gives its size (the next tensor's offset), since a
newer llama.cpp may know it. Model-level checks (architecture, hyper-parameters, tensors,
vocabulary) are in gguf_model.py.

Bounds (hostile headers are refused in well under a second and a few MB; real models are
far below every limit): at most MAX_KVS key/values and MAX_TENSORS tensors, string arrays
of at most MAX_STRING_ARRAY entries (a 256k vocabulary has 2^18; merges lists stay under
2^20), keys of at most MAX_KEY_BYTES; strings longer than MAX_KEPT_STRING are skipped,
not read (their length is kept).

Speed: the header is read in a few large reads; numeric arrays are skipped by
count x size; string arrays are walked length by length without decoding, so a
32k-token vocabulary costs milliseconds. Every count and length is checked against
the bytes left in the file before it drives a loop or a read.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import NamedTuple

from preflight import problems as P
from preflight.formats.gguf_arch import ENGINE, NAME_TOKENS
from preflight.formats.safetensors import Findings, PathOrFile, Source, os_problem
from preflight.problems import Problem

from ..record import record

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 including the terminating NUL
MAX_KVS = 1 << 16
MAX_TENSORS = 1 << 16  # real models: a few hundred to ~20k (per-expert layouts)
MAX_STRING_ARRAY = 1 << 21
MAX_KEY_BYTES = 1 << 16
MAX_CHECKED_VOCAB = 1 << 19  # vocabularies up to this size are checked for repeated tokens
MAX_KEPT_STRING = 1 << 20  # longer string values are skipped and summarised (chat templates are ~10 KB)
MAX_SHORT_TOKENS = 1 << 12  # tokens of 1-2 bytes recorded (a byte-level BPE vocabulary has ~200)
TENSOR_ALIGNMENT = 32  # ggml-impl.h; ggml_backend_cpu_buffer_from_ptr asserts it for mmap-backed buffers
SMALL_ARRAY = 16  # arrays up to this length are kept in `metadata`; longer ones are summarised
# Numeric arrays of up to one entry per layer (LLAMA_MAX_LAYERS) are kept too, while their total
# stays under MAX_KEPT_NUMBERS (per-layer head counts and the like, which the model checks read).
MAX_LAYER_ARRAY = 512
MAX_KEPT_NUMBERS = 1 << 16

# ggml type id -> (name, block size in elements, bytes per block).
# Copied from gguf.constants.GGML_QUANT_SIZES (gguf 0.19) so the check needs no numpy;
# a test compares it with the installed package.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
    42: ("Q2_0", 64, 18),  # llama.cpp only, not yet in the gguf package
}
# Ids below the newest known one that ggml has removed (Q4_2, Q4_3, the Q4_0_4_4 and IQ4_NL_4_4
# repack families): gguf.cpp refuses them (block size 0). Ids past the table are unknown, not invalid.
REMOVED_GGML_TYPES = frozenset({4, 5, 31, 32, 33, 36, 37, 38})
# ggml adds a type or two a year: an id up to this bound may be a newer llama.cpp's type (a
# warning when the layout gives its size); a larger one is corruption.
MAX_PLAUSIBLE_GGML_TYPE = 64

# general.file_type id -> gguf.constants.LlamaFileType member name (gguf 0.19).
FILE_TYPES: dict[int, str] = {
    0: "ALL_F32",
    1: "MOSTLY_F16",
    2: "MOSTLY_Q4_0",
    3: "MOSTLY_Q4_1",
    7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1",
    10: "MOSTLY_Q2_K",
    11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M",
    13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S",
    15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M",
    18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS",
    20: "MOSTLY_IQ2_XS",
    21: "MOSTLY_Q2_K_S",
    22: "MOSTLY_IQ3_XS",
    23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S",
    25: "MOSTLY_IQ4_NL",
    26: "MOSTLY_IQ3_S",
    27: "MOSTLY_IQ3_M",
    28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M",
    30: "MOSTLY_IQ4_XS",
    31: "MOSTLY_IQ1_M",
    32: "MOSTLY_BF16",
    36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0",
    38: "MOSTLY_MXFP4_MOE",
    39: "MOSTLY_NVFP4",
    40: "MOSTLY_Q1_0",
    1024: "GUESSED",
}

STRING, ARRAY = 8, 9
# GGUF value type id -> (name, struct format) for the fixed-size types.
SCALAR_TYPES: dict[int, tuple[str, str]] = {
    0: ("uint8", "B"),
    1: ("int8", "b"),
    2: ("uint16", "H"),
    3: ("int16", "h"),
    4: ("uint32", "I"),
    5: ("int32", "i"),
    6: ("float32", "f"),
    7: ("bool", "?"),
    10: ("uint64", "Q"),
    11: ("int64", "q"),
    12: ("float64", "d"),
}
_SCALAR = {t: struct.Struct("<" + fmt) for t, (_, fmt) in SCALAR_TYPES.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEAD = struct.Struct("<4sIQQ")

# Counts and lengths at or above llama.cpp's own limits (GGUF_MAX_STRING_LENGTH,
# GGUF_MAX_ARRAY_ELEMENTS) are corrupt; smaller ones that overrun the file mean the
# file was cut short, which is what a user needs to hear about a partial download.
PLAUSIBLE_COUNT = 2**30
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims=0, type, offset
_FIRST_READ = 256 * 1024

_ENGINE = f"llama.cpp {ENGINE['llama.cpp']}"
# Tokens llama_vocab::load looks up by text for some models (gguf_arch.NAME_TOKENS): the token
# array walk records which of them it holds.
_PROBES = {t: t.encode() for tokens in NAME_TOKENS.values() for t in tokens}

_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def value_type_name(vtype: int) -> str:
    if vtype == STRING:
        return "string"
    if vtype == ARRAY:
        return "array"
    return SCALAR_TYPES.get(vtype, (f"unknown({vtype})", ""))[0]


def file_type_name(file_type: int) -> str:
    """"MOSTLY_Q4_K_M" -> "Q4_K_M", "ALL_F32" -> "F32" (the names people use for GGUF files)."""
    raw = FILE_TYPES.get(file_type)
    if raw is None:
        return f"unknown({file_type})"
    return raw.removeprefix("MOSTLY_").removeprefix("ALL_")


@record(frozen=True)
class StringSummary:
    """A string value too long to keep (over MAX_KEPT_STRING bytes): its length."""

    length: int

    def to_dict(self) -> dict:
        return {"string_bytes": self.length}

    def __str__(self) -> str:
        return f"<{self.length}-byte string>"


@record(frozen=True)
class ArraySummary:
    """A metadata array too long to keep (e.g. tokenizer.ggml.tokens): its item type and length."""

    item_type: str
    length: int
    # tokenizer.ggml.tokens only: a token text that appears twice (llama.cpp aborts on it), if any
    duplicate: bytes | None = field(default=None, compare=False)
    # tokenizer.ggml.tokens only: which of PROBE_TOKENS it holds (llama.cpp looks some up by text)
    present: frozenset[str] | None = field(default=None, compare=False)
    # tokenizer.ggml.tokens only: (index, text) of the non-empty tokens shorter than 3 bytes (a byte
    # token's text is read as "<0xXX>": llama.cpp throws on a shorter one), at most MAX_SHORT_TOKENS
    short: tuple[tuple[int, bytes], ...] | None = field(default=None, compare=False)
    # tokenizer.ggml.token_type only (int32, a vocabulary's length at most): the raw little-endian values
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"array": self.item_type, "length": self.length}

    def __str__(self) -> str:
        return f"[{self.length} x {self.item_type}]"


class GGUFTensor(NamedTuple):
    type_name: str
    dims: tuple[int, ...]  # GGUF order: innermost (row) dimension first
    offset: int  # relative to the data start
    nbytes: int


class SplitInfo(NamedTuple):
    no: int  # 0-based, as llama.cpp's gguf-split writes it
    count: int
    tensors_count: int | None


@record
class GGUFInfo:
    name: str
    file_size: int = 0
    version: int = 0
    tensor_count: int = 0
    kv_count: int = 0
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0
    metadata: dict[str, object] = field(default_factory=dict)
    # key -> (GGUF value type, item type for arrays else None), as gguf_model.KVType
    kv_types: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    tensors: dict[str, GGUFTensor] = field(default_factory=dict)
    architecture: str | None = None
    block_count: int | None = None
    vocab_size: int | None = None  # tokens in tokenizer.ggml.tokens (vocab_size for no-vocab models)
    tied_embeddings: bool | None = None  # no output.weight: the output layer reuses token_embd.weight
    vocab_only: bool = False  # a vocabulary file (no tensors), judged as one
    context_length: int | None = None
    quant_types: Counter[str] = field(default_factory=Counter)
    file_type: str | None = None
    parameter_count: int = 0
    split: SplitInfo | None = None
    header_parsed: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.is_error for p in self.problems)


class _Stop(Exception):
    """The header cannot be read further; carries the finding."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _overrun(claim: str, count: int, left: int | None = None) -> _Stop:
    """A count or length that needs more bytes than the file has left."""
    if left is not None:
        claim = f"{claim}, only {left} bytes remain in the file"
    if count >= PLAUSIBLE_COUNT:
        return _Stop(P.COUNT_TOO_LARGE, f"{claim} (corrupt count)")
    return _Stop(P.TRUNCATED, f"{claim} (truncated, or a corrupt count)")


class _Cursor:
    """Sequential reader over the header: a window of the file grown by large reads.

    Skipping past the window (a numeric array) drops it instead of reading the
    skipped bytes.
    """

    def __init__(self, src: Source) -> None:
        self.src = src
        self.size = src.size
        self.base = 0
        self.buf = bytearray()
        self.pos = 0
        self.chunk = _FIRST_READ
        self.kept = 0  # numbers kept from arrays longer than SMALL_ARRAY

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> int:
        """Make bytes [pos, pos+n) available; return pos relative to the window."""
        end = self.pos + n
        if end > self.base + len(self.buf):
            self._fill(end, what)
        return self.pos - self.base

    def _fill(self, end: int, what: str) -> None:
        if end > self.size:
            raise _Stop(P.TRUNCATED, f"file ends at {self.size} bytes while reading {what}, which needs {end} (truncated by {end - self.size} bytes)")
        if self.pos > self.base + len(self.buf):
            self.base, self.buf = self.pos, bytearray()
        have = self.base + len(self.buf)
        want = max(end - have, self.chunk)
        self.chunk *= 2
        self.buf += self.src.read_at(have, want)

    def scalar(self, vtype: int, what: str) -> object:
        st = _SCALAR[vtype]
        off = self.need(st.size, what)
        self.pos += st.size
        return st.unpack_from(self.buf, off)[0]

    def u32(self, what: str) -> int:
        off = self.need(4, what)
        self.pos += 4
        return _U32.unpack_from(self.buf, off)[0]

    def u64(self, what: str) -> int:
        off = self.need(8, what)
        self.pos += 8
        return _U64.unpack_from(self.buf, off)[0]

    def raw_string(self, what: str, limit: int | None = None) -> bytes | int:
        """The string's bytes; only its length when it is longer than `limit` (skipped, not read)."""
        n = self.u64(what)
        if n > self.remaining():
            raise _overrun(f"{what} claims {n} bytes", n, self.remaining())
        if limit is not None and n > limit:
            self.pos += n
            return n
        off = self.need(n, what)
        self.pos += n
        return bytes(self.buf[off : off + n])

    def name(self, what: str, limit: int, code: str, too_long: str) -> bytes:
        raw = self.raw_string(what, limit)
        if isinstance(raw, int):
            raise _Stop(code, f"{what} is {raw} bytes, {too_long}")
        return raw

    def skip_strings(self, count: int, what: str) -> None:
        """Walk `count` gguf strings reading only their lengths (merges and other string arrays)."""
        unpack = _U64.unpack_from
        buf, base = self.buf, self.base
        p = self.pos - base
        end = len(buf)
        ln = 0
        for i in range(count):
            if p + 8 > end:
                self.pos = base + p
                if self.pos > self.size:
                    raise _overrun(f"{what}: string {i - 1} of {count} claims {ln} bytes, ending {self.pos - self.size} bytes past the end of the file", ln)
                self.need(8, f"{what} (string {i} of {count})")
                buf, base = self.buf, self.base
                p = self.pos - base
                end = len(buf)
            ln = unpack(buf, p)[0]
            p += 8 + ln
        self.pos = base + p
        if self.pos > self.size:
            raise _overrun(f"{what}: last string claims {ln} bytes, ending {self.pos - self.size} bytes past the end of the file", ln)

    def _distinct_strings(self, count: int, what: str) -> tuple[bytes | None, frozenset[str], tuple[tuple[int, bytes], ...]]:
        """skip_strings for the token list, in one pass that also hashes each string: the first
        non-empty string seen twice (llama.cpp aborts on it), if any, which of PROBE_TOKENS it
        holds, and its short tokens (see ArraySummary.short)."""
        first = self.pos
        unpack = _U64.unpack_from
        seen: set[bytes] = set()
        add = seen.add
        short: list[tuple[int, bytes]] = []
        data = bytes(self.buf)
        base = self.base
        p = self.pos - base
        end = len(data)
        ln = 0
        for i in range(count):
            if p + 8 > end:
                data, p, end = self._extend(base + p, 8, f"{what} (string {i} of {count})", ln)
                base = self.base
            ln = unpack(data, p)[0]
            q = p + 8
            p = q + ln
            if p > end:
                if base + p > self.size:
                    self.pos = base + p
                    raise _overrun(f"{what}: string {i} of {count} claims {ln} bytes, ending {self.pos - self.size} bytes past the end of the file", ln)
                data, q, end = self._extend(base + q, ln, f"{what} (string {i} of {count})", ln)
                base = self.base
                p = q + ln
            if ln < 3 and ln and len(short) < MAX_SHORT_TOKENS:
                short.append((i, data[q:p]))
            add(data[q:p])
        self.pos = base + p
        present = frozenset(t for t, raw in _PROBES.items() if raw in seen)
        if len(seen) == count or (len(seen) == count - 1 and b"" in seen) or count == 0:
            return None, present, tuple(short)
        return _first_repeat(self._region(first, self.pos), count), present, tuple(short)

    def _extend(self, at: int, n: int, what: str, ln: int) -> tuple[bytes, int, int]:
        """Make [at, at+n) readable; the window as bytes, `at` in it, and its end."""
        if at > self.size:
            self.pos = at
            raise _overrun(f"{what}: the previous string claims {ln} bytes, ending {at - self.size} bytes past the end of the file", ln)
        self.pos = at
        off = self.need(n, what)
        return bytes(self.buf), off, len(self.buf)

    def _region(self, start: int, end: int) -> bytes:
        if self.base <= start and end <= self.base + len(self.buf):
            return bytes(self.buf[start - self.base : end - self.base])
        return self.src.read_at(start, end - start)


def _first_repeat(data: bytes, count: int) -> bytes | None:
    """The first non-empty string of a gguf string array (`data`, already bounds-checked) seen twice."""
    unpack = _U64.unpack_from
    seen: set[bytes] = set()
    p = 0
    for _ in range(count):
        ln = unpack(data, p)[0]
        text = data[p + 8 : p + 8 + ln]
        p += 8 + ln
        if text and text in seen:
            return text
        seen.add(text)
    return None



class Options(NamedTuple):
    """How a lane serves the file: `engine_newer`, the lane runs a llama.cpp newer than the one
    the tables describe (gguf_arch.ENGINE), so names they do not know (architectures, tokenizers,
    ggml types) are warnings instead of the refusals they are for that version; `vocab_only`,
    the lane declares the file a vocabulary (loaded with vocab_only, no weights)."""

    engine_newer: bool = False
    vocab_only: bool = False


def check_gguf(path: PathOrFile, *, name: str | None = None, engine_newer: bool = False, vocab_only: bool = False) -> GGUFInfo:
    """Validate a GGUF file from its header alone; every defect becomes a Problem.

    `path` may be an open binary file object (read, not closed). Reads the header
    region only, whatever the size of the tensor data. `engine_newer` and `vocab_only`:
    see `Options`.
    """
    opts = Options(engine_newer, vocab_only)
    with Source(path, name) as src:
        info = GGUFInfo(src.name)
        if src.problem:
            info.problems.append(src.problem)
            return info
        out = Findings(src.name)
        try:
            _check(src, info, out, opts)
        except _Stop as stop:
            out.error(stop.code, stop.message)
        except OSError as e:
            info.problems.append(os_problem(src.name, e))
        _summarise(info)
        info.problems[:0] = out.problems()
        return info


def _check(src: Source, info: GGUFInfo, out: Findings, opts: Options) -> None:
    size = info.file_size = src.size
    if size == 0:
        out.error(P.EMPTY_FILE, "file is empty (0 bytes)")
        return
    head = src.read_at(0, min(size, _HEAD.size))
    if not MAGIC.startswith(head[:4]):
        out.error(P.BAD_MAGIC, f"starts with {head[:4]!r}, expected {MAGIC!r} (not a GGUF file)")
        return
    if len(head) < _HEAD.size:
        out.error(P.TRUNCATED, f"file is {size} bytes, shorter than the {_HEAD.size}-byte GGUF header")
        return
    _, version, n_tensors, n_kv = _HEAD.unpack(head)
    info.version = version
    if not _version_ok(info, out):
        return
    cur = _Cursor(src)
    cur.pos = _HEAD.size
    info.tensor_count, info.kv_count = n_tensors, n_kv
    left = cur.remaining()
    for count, what, limit in ((n_kv, "key/values", MAX_KVS), (n_tensors, "tensors", MAX_TENSORS)):
        if limit < count and count * 8 <= left:
            out.error(P.COUNT_TOO_LARGE, f"header says {count} {what}, more than preflight's limit of {limit} (no real model comes near it)")
            return
    if n_kv * _MIN_KV_BYTES > left:
        stop = _overrun(f"header says {n_kv} key/values (at least {_MIN_KV_BYTES} bytes each)", n_kv, left)
        out.error(stop.code, stop.message)
        return
    if n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES > left:
        stop = _overrun(f"header says {n_tensors} tensors (at least {_MIN_TENSOR_INFO_BYTES} bytes of info each)", n_tensors, left)
        out.error(stop.code, stop.message)
        return
    vtypes = _read_kvs(cur, n_kv, info, out)
    alignment = _alignment(info, vtypes, out)
    order = _read_tensor_infos(cur, n_tensors, info, out)
    info.header_parsed = True
    header_end = cur.pos
    pad_to = alignment or DEFAULT_ALIGNMENT
    info.data_offset = data_start = -(-header_end // pad_to) * pad_to
    if n_tensors and alignment:
        _check_layout(info, order, header_end, data_start, alignment, out, opts)
    _check_model(info, out, opts)


def _check_model(info: GGUFInfo, out: Findings, opts: Options) -> None:
    from preflight.formats.gguf_model import check_model

    no = info.metadata.get("split.no")
    count = info.metadata.get("split.count")
    split = type(count) is int and count > 1
    if split and no != 0:
        return  # parts after the first hold tensors only; check_gguf_split judges the whole
    facts = check_model(info.name, info.metadata, info.kv_types, {n: t.dims for n, t in info.tensors.items()}, out,
                        tensors_complete=not split, vocab_file=True if opts.vocab_only else None, engine_newer=opts.engine_newer)
    info.block_count, info.vocab_size = facts.block_count, facts.vocab_size
    info.tied_embeddings, info.vocab_only = facts.tied_embeddings, facts.vocab_only


def _version_ok(info: GGUFInfo, out: Findings) -> bool:
    version = info.version
    if version in SUPPORTED_VERSIONS:
        return True
    swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
    if version & 0xFFFF == 0 and swapped in (1, 2, 3):
        info.version = swapped
        out.error(
            P.UNSUPPORTED_VERSION,
            f"is a big-endian GGUF (version {swapped} byte-swapped, read as {version}); "
            "llama.cpp on little-endian hosts (x86-64, ARM) cannot load it, expected a little-endian version 2 or 3 file",
        )
    elif version == 1:
        out.error(P.UNSUPPORTED_VERSION, "is GGUF version 1, which llama.cpp no longer loads; expected version 2 or 3 (re-convert the model)")
    else:
        out.error(P.UNSUPPORTED_VERSION, f"has GGUF version {version}, expected 2 or 3")
    return False


def _read_kvs(cur: _Cursor, n_kv: int, info: GGUFInfo, out: Findings) -> dict[str, int]:
    vtypes: dict[str, int] = {}
    meta = info.metadata
    kv_types = info.kv_types
    for i in range(n_kv):
        raw = cur.name(f"key {i} of {n_kv}", MAX_KEY_BYTES, P.COUNT_TOO_LARGE, f"more than preflight's limit of {MAX_KEY_BYTES}")
        key = raw.decode("utf-8", "surrogateescape")  # gguf.cpp takes any bytes; no known key matches a non-UTF-8 one
        if not key:
            raise _Stop(P.HEADER_INVALID, f"key {i} of {n_kv} is empty")
        if key in vtypes:
            raise _Stop(P.HEADER_INVALID, f"key {key!r} appears twice")
        vtype = cur.u32(f"value type of {key!r}")
        vtypes[key] = vtype
        if vtype == ARRAY:
            itype = cur.u32(f"item type of array {key!r}")
            kv_types[key] = (ARRAY, itype)
            meta[key] = _array(cur, itype, key)
        else:
            kv_types[key] = (vtype, None)
            meta[key] = _value(cur, vtype, key)
    return vtypes


def _value(cur: _Cursor, vtype: int, what: str) -> object:
    if vtype in _SCALAR:
        return cur.scalar(vtype, what)
    if vtype == STRING:
        raw = cur.raw_string(what, MAX_KEPT_STRING)
        return StringSummary(raw) if isinstance(raw, int) else raw.decode("utf-8", "replace")
    raise _Stop(P.BAD_VALUE_TYPE, f"{what} has value type {vtype}, expected 0..12 (uint8 .. float64)")


def _array(cur: _Cursor, itype: int, what: str) -> object:
    count = cur.u64(f"length of array {what}")
    left = cur.remaining()
    if itype in _SCALAR:
        item = _SCALAR[itype].size
        if count * item > left:
            raise _overrun(f"array {what} claims {count} x {value_type_name(itype)} ({count * item} bytes)", count, left)
        if count <= SMALL_ARRAY or (count <= MAX_LAYER_ARRAY and cur.kept + count <= MAX_KEPT_NUMBERS and not what.startswith("tokenizer.")):
            cur.kept += count
            st = struct.Struct(f"<{count}{SCALAR_TYPES[itype][1]}")
            off = cur.need(st.size, f"array {what}")
            cur.pos += st.size
            return list(st.unpack_from(cur.buf, off))
        if what == "tokenizer.ggml.token_type" and itype == 5 and count <= MAX_CHECKED_VOCAB:
            off = cur.need(count * 4, f"array {what}")
            cur.pos += count * 4
            return ArraySummary("int32", count, raw=bytes(cur.buf[off : off + count * 4]))
        cur.pos += count * item
        return ArraySummary(value_type_name(itype), count)
    if itype == STRING:
        if count * 8 > left:
            raise _overrun(f"array {what} claims {count} strings (at least {count * 8} bytes)", count, left)
        if count > MAX_STRING_ARRAY:
            raise _Stop(P.COUNT_TOO_LARGE, f"array {what} claims {count} strings, more than preflight's limit of {MAX_STRING_ARRAY} (a 256k vocabulary has 262144)")
        if count <= SMALL_ARRAY:
            items = [cur.raw_string(f"array {what} string {i}", MAX_KEPT_STRING) for i in range(count)]
            return [str(StringSummary(s)) if isinstance(s, int) else s.decode("utf-8", "replace") for s in items]
        # llama_vocab::load asserts that every token text is distinct (it aborts the process otherwise).
        if what == "tokenizer.ggml.tokens" and count <= MAX_CHECKED_VOCAB:
            dup, present, short = cur._distinct_strings(count, f"array {what}")
            return ArraySummary("string", count, dup, present, short)
        cur.skip_strings(count, f"array {what}")
        return ArraySummary("string", count)
    if itype == ARRAY:
        raise _Stop(P.BAD_VALUE_TYPE, f"array {what} is an array of arrays, which llama.cpp refuses (\"invalid GGUF type 9\")")
    raise _Stop(P.BAD_VALUE_TYPE, f"array {what} has item type {itype}, expected 0..12 (uint8 .. float64)")


def _alignment(info: GGUFInfo, vtypes: dict[str, int], out: Findings) -> int:
    """The data alignment, or 0 when `general.alignment` is unusable (layout checks are then skipped)."""
    if "general.alignment" not in vtypes:
        return DEFAULT_ALIGNMENT
    value = info.metadata["general.alignment"]
    vtype = vtypes["general.alignment"]
    if vtype != 4:
        out.error(P.HEADER_INVALID, f"general.alignment is a {value_type_name(vtype)}, expected uint32")
        return 0
    assert isinstance(value, int)
    if value == 0 or value & (value - 1):
        out.error(P.HEADER_INVALID, f"general.alignment is {value}, expected a power of two")
        return 0
    info.alignment = value
    return value


def _read_tensor_infos(cur: _Cursor, n_tensors: int, info: GGUFInfo, out: Findings) -> list[str]:
    order: list[str] = []
    tensors = info.tensors
    for i in range(n_tensors):
        what = f"tensor info {i} of {n_tensors}"
        raw = cur.name(f"name of {what}", MAX_NAME_BYTES, P.HEADER_INVALID, f"llama.cpp allows at most {MAX_NAME_BYTES}")
        tname = raw.decode("utf-8", "surrogateescape")
        n_dims = cur.u32(f"n_dims of tensor {tname!r}")
        if n_dims > MAX_DIMS:
            raise _Stop(P.HEADER_INVALID, f"tensor {tname!r} has {n_dims} dimensions, llama.cpp allows at most {MAX_DIMS}")
        off = cur.need(8 * n_dims, f"dims of tensor {tname!r}")
        dims = struct.unpack_from(f"<{n_dims}Q", cur.buf, off)
        cur.pos += 8 * n_dims
        ggml_type = cur.u32(f"type of tensor {tname!r}")
        offset = cur.u64(f"offset of tensor {tname!r}")
        if tname in tensors:
            out.error(P.HEADER_INVALID, f"tensor {tname!r} appears twice")
            continue
        if len(raw) > MAX_NAME_BYTES:
            out.error(P.HEADER_INVALID, f"tensor name {tname[:40]!r}... is {len(raw)} bytes, llama.cpp allows at most {MAX_NAME_BYTES}")
        if any(d >= 2**63 for d in dims):
            out.error(P.HEADER_INVALID, f"tensor {tname!r} has dims {list(dims)}, each must be below 2^63")
            continue
        numel = 1
        for d in dims:
            numel *= d
        if numel >= 2**63:
            out.error(P.HEADER_INVALID, f"tensor {tname!r} has dims {list(dims)}, {numel} elements, more than int64 holds (gguf.cpp refuses it)")
            continue
        spec = GGML_TYPES.get(ggml_type)
        if spec is None:
            if ggml_type in REMOVED_GGML_TYPES or ggml_type >= MAX_PLAUSIBLE_GGML_TYPE:
                why = "which ggml no longer has" if ggml_type in REMOVED_GGML_TYPES else "which is no ggml type"
                out.error(P.BAD_TENSOR_TYPE, f"tensor {tname!r} has ggml type {ggml_type}, {why} (llama.cpp refuses it)")
                continue
            # A type newer than this table: its size comes from the layout (_check_layout).
            tensors[tname] = GGUFTensor(f"unknown({ggml_type})", dims, offset, -1)
            order.append(tname)
            continue
        type_name, block, type_size = spec
        if dims and dims[0] % block:
            out.error(P.BAD_SHAPE, f"tensor {tname!r} of type {type_name} has rows of {dims[0]} elements, not a multiple of its block size {block}")
            continue
        tensors[tname] = GGUFTensor(type_name, dims, offset, numel // block * type_size)
        order.append(tname)
    return order


def _check_layout(info: GGUFInfo, order: list[str], header_end: int, data_start: int, alignment: int, out: Findings, opts: Options) -> None:
    size = info.file_size
    if data_start > size:
        out.error(P.TRUNCATED, f"header ends at {header_end} bytes, tensor data should start at {data_start}, file has {size} (truncated by {data_start - size} bytes)")
        return
    expected = 0
    past_end: list[tuple[int, str]] = []
    unaligned = [n for n in order if (data_start + info.tensors[n].offset) % TENSOR_ALIGNMENT] if alignment < TENSOR_ALIGNMENT else []
    if unaligned:
        t = info.tensors[unaligned[0]]
        out.error(P.MISALIGNED, f"general.alignment {alignment} puts {len(unaligned)} tensor(s) at file offsets that are not multiples of "
                  f"{TENSOR_ALIGNMENT} ({unaligned[0]!r} at {data_start + t.offset}); llama.cpp's default (mmap) load aborts on them")
    for index, tname in enumerate(order):
        t = info.tensors[tname]
        if t.nbytes < 0:
            nxt = info.tensors[order[index + 1]] if index + 1 < len(order) else None
            if nxt is None or nxt.offset <= t.offset or t.offset % alignment or (expected >= 0 and t.offset != expected):
                out.error(P.BAD_TENSOR_TYPE, f"tensor {tname!r} has ggml type {t.type_name[8:-1]}, unknown to preflight, and its size cannot be told from the layout")
                expected = -1
            elif opts.engine_newer:
                out.warning(P.UNKNOWN_TENSOR_TYPE, f"tensor {tname!r} has ggml type {t.type_name[8:-1]}, newer than {_ENGINE} (its types end at "
                            f"{max(GGML_TYPES)}); the lane declares a newer llama.cpp; its size is taken from the layout")
                expected = nxt.offset
            else:
                out.error(P.UNKNOWN_TENSOR_TYPE, f"tensor {tname!r} has ggml type {t.type_name[8:-1]}, unknown to {_ENGINE} (its types end at "
                          f"{max(GGML_TYPES)}), which refuses the file (\"tensor '{tname}' has invalid ggml type {t.type_name[8:-1]}\")")
                expected = nxt.offset
            continue
        if t.offset % alignment:
            out.error(P.MISALIGNED, f"tensor {tname!r} starts at data offset {t.offset}, not a multiple of the alignment {alignment}")
        elif expected >= 0 and t.offset != expected:
            if t.offset < expected:
                out.error(P.BAD_OFFSETS, f"tensor {tname!r} starts at data offset {t.offset}, overlapping the previous tensor, which ends at {expected}")
            else:
                out.error(P.BAD_OFFSETS, f"tensor {tname!r} starts at data offset {t.offset}, expected {expected} ({t.offset - expected} byte gap; llama.cpp requires tensors packed in order)")
        expected = t.offset + -(-t.nbytes // alignment) * alignment
        end = data_start + t.offset + t.nbytes
        if end > size:
            past_end.append((end, tname))
    if past_end:
        end, tname = max(past_end)
        out.error(
            P.TENSOR_OUT_OF_BOUNDS,
            f"{len(past_end)} of {len(order)} tensors end past the end of the file; {tname!r} ends at {end} bytes, "
            f"file has {size} (truncated by {end - size} bytes)",
        )


def _summarise(info: GGUFInfo) -> None:
    meta = info.metadata
    arch = meta.get("general.architecture")
    if isinstance(arch, str):
        info.architecture = arch
        ctx = meta.get(f"{arch}.context_length")
        if type(ctx) is int:
            info.context_length = ctx
    ftype = meta.get("general.file_type")
    if type(ftype) is int:
        info.file_type = file_type_name(ftype)
    params = 0
    for t in info.tensors.values():
        info.quant_types[t.type_name] += 1
        n = 1
        for d in t.dims:
            n *= d
        params += n
    info.parameter_count = params
    no, count, total = meta.get("split.no"), meta.get("split.count"), meta.get("split.tensors.count")
    if type(no) is int and type(count) is int:
        info.split = SplitInfo(no, count, total if type(total) is int else None)


def split_sibling_names(file_name: str) -> list[str] | None:
    """All part names of the split `file_name` belongs to, or None when it is not a split name.

    "x-00002-of-00003.gguf" -> ["x-00001-of-00003.gguf", "x-00002-of-00003.gguf", "x-00003-of-00003.gguf"]
    (the names llama.cpp's gguf-split and gguf.GGUFWriter write).
    """
    m = _SPLIT_NAME.match(os.path.basename(file_name))
    if not m:
        return None
    count = int(m["count"])
    if count < 1:
        return None
    return [f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def check_gguf_split(paths: Sequence[str | os.PathLike[str]], *, infos: Mapping[str, GGUFInfo] | None = None,
                     engine_newer: bool = False) -> list[Problem]:
    """Split-level findings for the parts of one split GGUF: completeness and split.* metadata.

    `paths` are the part files as found (any subset; the names say how many there
    should be). Each part's own defects are not repeated here: pass the results of
    `check_gguf` as `infos` (by file name) to avoid parsing headers twice.
    """
    infos = infos or {}
    found: dict[str, str] = {}
    problems: list[Problem] = []
    groups: set[tuple[str, int]] = set()
    for p in paths:
        fname = os.path.basename(os.fspath(p))
        m = _SPLIT_NAME.match(fname)
        if not m or not 1 <= int(m["no"]) <= int(m["count"]):
            problems.append(P.error(fname, P.SPLIT_INVALID, f"{fname}: not a split part name like 'model-00001-of-00003.gguf'"))
            continue
        groups.add((m["prefix"], int(m["count"])))
        found[fname] = os.fspath(p)
    if len(groups) > 1:
        desc = ", ".join(f"{prefix} of {count}" for prefix, count in sorted(groups))
        first = sorted(found)[0]
        problems.append(P.error(first, P.SPLIT_INVALID, f"{first}: parts belong to different splits ({desc})"))
        return problems
    if not groups:
        return problems
    expected = split_sibling_names(next(iter(found))) or []
    count = len(expected)
    present = [n for n in expected if n in found and os.path.isfile(found[n])]
    for n in expected:
        if n not in present:
            problems.append(P.error(n, P.SPLIT_MISSING, f"{n}: part missing; split has {count} parts, found {len(present)}"))
    parts: dict[str, GGUFInfo] = {}
    for n in present:
        info = infos.get(n) or check_gguf(found[n], name=n, engine_newer=engine_newer)
        if info.header_parsed:
            parts[n] = info
    problems.extend(_split_metadata_problems(expected, parts))
    if len(parts) == count and not problems:
        problems.extend(_split_model_problems(expected, parts, engine_newer))
    return problems


def _split_model_problems(expected: list[str], parts: Mapping[str, GGUFInfo], engine_newer: bool) -> list[Problem]:
    """The tensor-level model checks over all parts (the first part holds the key/values and
    was judged for them by check_gguf); llama.cpp loads the parts as one model."""
    from preflight.formats.gguf_model import check_model

    first = parts[expected[0]]
    tensors: dict[str, tuple[int, ...]] = {}
    for n in expected:
        tensors.update((t, parts[n].tensors[t].dims) for t in parts[n].tensors)
    out = Findings(first.name)
    check_model(first.name, first.metadata, first.kv_types, tensors, out, tensors_only=True, engine_newer=engine_newer)
    return out.problems()


def _split_metadata_problems(expected: list[str], parts: Mapping[str, GGUFInfo]) -> list[Problem]:
    problems: list[Problem] = []
    count = len(expected)
    totals: dict[str, int] = {}
    for index, n in enumerate(expected):
        info = parts.get(n)
        if info is None:
            continue
        s = info.split
        if s is None:
            if count > 1:
                problems.append(P.error(n, P.SPLIT_INVALID, f"{n}: has no split.no / split.count metadata, expected part {index} of {count}"))
            continue
        if s.no != index or s.count != count:
            problems.append(P.error(n, P.SPLIT_INVALID, f"{n}: header says split.no={s.no} of split.count={s.count}, file name says part {index} (0-based) of {count}"))
        if s.tensors_count is not None:
            totals[n] = s.tensors_count
    if len(set(totals.values())) > 1:
        desc = ", ".join(f"{n}: {v}" for n, v in totals.items())
        first = next(iter(totals))
        problems.append(P.error(first, P.SPLIT_INVALID, f"{first}: parts disagree on split.tensors.count ({desc})"))
    elif totals and len(parts) == count:
        declared = next(iter(totals.values()))
        actual = sum(i.tensor_count for i in parts.values())
        if declared != actual:
            first = expected[0]
            problems.append(P.error(first, P.SPLIT_INVALID, f"{first}: split.tensors.count says {declared} tensors, the {count} parts hold {actual}"))
    return problems
