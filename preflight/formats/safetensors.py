"""safetensors header check: reads the 8-byte length and the JSON header, never the data.

Layout: u64 little-endian N, N bytes of UTF-8 JSON (tensor name -> {"dtype",
"shape", "data_offsets": [begin, end]} relative to the data start at 8 + N, plus an
optional "__metadata__" of str -> str), then the data. A file is valid when the
header parses, every dtype is known, every shape x dtype size equals its span, the
spans sorted by offset tile [0, data_end) without gap or overlap, and the file is
exactly 8 + N + data_end bytes long.

Code choices: a shape whose byte size differs from its span is `bad-shape` (the
offsets may be fine, the shape is what disagrees); gaps, overlaps, spans not starting
at 0 and end < begin are `bad-offsets`. Like the safetensors library, entries are
ordered by their offsets, not by their position in the JSON object.

This module also holds the two pieces every format check here shares: `Source`
(open a path or take a file object, map OS errors to problems) and `Findings`
(messages prefixed with the file name, capped per code).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from dataclasses import field
from typing import BinaryIO, NamedTuple, Union

from preflight import problems as P
from preflight.problems import Problem

from ..record import record

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]

# Limits: what one hostile header may cost (measured in docs and tests: a header at
# either limit is refused in well under a second and 100 MB of memory).
# safetensors (the library vLLM and transformers load with) refuses headers above 100 MB;
# we stop at 16 MiB: a published shard's header is at most a few MB (a 100k-tensor file
# would need about 12 MB), and parsing 100 MB of JSON in Python costs over a GiB.
DEFAULT_MAX_HEADER_BYTES = 16 * 2**20
LIBRARY_MAX_HEADER_BYTES = 100_000_000
# Tensors in one file: the largest MoE shards hold some ten thousand; a file beyond 50,000
# is refused, and so is a header with more JSON strings or commas than such a file needs
# (see `_parse_header`).
MAX_TENSORS = 50_000
STRINGS_PER_TENSOR = 6
COMMAS_PER_TENSOR = 8

# Element size in bits, from the safetensors `Dtype::bitsize` table (0.8).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

_U64_LIMIT = 2**64
_U64 = struct.Struct("<Q")
_SURROGATE_HINT = re.compile("[\ud800-\udfff]")


class Findings:
    """Collects problems for one file; at most `limit` per code, then one summary line.

    A corrupt header can yield a finding per tensor; the first few say what is
    wrong, the count says how widespread it is.
    """

    def __init__(self, name: str, limit: int = 5) -> None:
        self.name = name
        self.limit = limit
        self._problems: list[Problem] = []
        self._counts: Counter[str] = Counter()
        self._severity: dict[str, str] = {}

    def error(self, code: str, message: str) -> None:
        self._add(code, message, "error")

    def warning(self, code: str, message: str) -> None:
        self._add(code, message, "warning")

    def _add(self, code: str, message: str, severity: str) -> None:
        self._counts[code] += 1
        self._severity.setdefault(code, severity)
        if self._counts[code] <= self.limit:
            self._problems.append(Problem(self.name, code, f"{self.name}: {message}", severity))

    def has(self, code: str) -> bool:
        return code in self._counts

    def problems(self) -> list[Problem]:
        out = list(self._problems)
        for code, count in self._counts.items():
            if count > self.limit:
                more = count - self.limit
                out.append(Problem(self.name, code, f"{self.name}: {more} more '{code}' finding(s) not shown", self._severity[code]))
        return out


class Source:
    """The one file a check reads: a path it opens and closes, or a caller's binary file object.

    Opening failures become a problem (`missing`, `not-a-file`, `unreadable`)
    instead of an exception. `read_at` never reads past the size seen at open.
    """

    def __init__(self, src: PathOrFile, name: str | None) -> None:
        self._src = src
        self._owned = not hasattr(src, "read")
        if name is None:
            raw = os.fspath(src) if self._owned else getattr(src, "name", "<stream>")  # type: ignore[arg-type]
            name = os.path.basename(str(raw)) or str(raw)
        self.name = name
        self.file: BinaryIO | None = None
        self.size = 0
        self.problem: Problem | None = None

    def __enter__(self) -> "Source":
        try:
            if self._owned:
                path = os.fspath(self._src)  # type: ignore[arg-type]
                if os.path.isdir(path):
                    self.problem = P.error(self.name, P.NOT_A_FILE, f"{self.name}: is a directory, expected a file")
                    return self
                self.file = open(path, "rb")
            else:
                self.file = self._src  # type: ignore[assignment]
            self.size = self.file.seek(0, os.SEEK_END)
        except FileNotFoundError:
            self.problem = P.error(self.name, P.MISSING, f"{self.name}: does not exist")
        except OSError as e:
            self.problem = os_problem(self.name, e)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned and self.file is not None:
            self.file.close()

    def read_at(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        assert self.file is not None
        self.file.seek(offset)
        data = self.file.read(n)
        if len(data) != n:
            raise OSError(f"short read: wanted {n} bytes at offset {offset}, got {len(data)} (file changed while reading?)")
        return data


def os_problem(name: str, e: OSError) -> Problem:
    reason = e.strerror or str(e)
    return P.error(name, P.UNREADABLE, f"{name}: cannot be read: {reason}")


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@record
class SafetensorsInfo:
    name: str
    file_size: int = 0
    header_size: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    dtypes: Counter[str] = field(default_factory=Counter)
    parameter_count: int = 0
    header_parsed: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.is_error for p in self.problems)

    @property
    def data_size(self) -> int:
        """Bytes of tensor data the header describes (sum of spans)."""
        return sum(t.nbytes for t in self.tensors.values())


def check_safetensors(
    path: PathOrFile, *, name: str | None = None, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_tensors: int = MAX_TENSORS,
) -> SafetensorsInfo:
    """Validate a safetensors file from its header alone; every defect becomes a Problem.

    `path` may be an open binary file object (it is read, not closed). Reads
    8 + header bytes whatever the file size, and never allocates a header length
    before checking it against the file size and `max_header_bytes`.
    """
    with Source(path, name) as src:
        info = SafetensorsInfo(src.name)
        if src.problem:
            info.problems.append(src.problem)
            return info
        out = Findings(src.name)
        try:
            _check(src, info, out, min(max_header_bytes, LIBRARY_MAX_HEADER_BYTES), max_tensors)
        except OSError as e:
            info.problems.append(os_problem(src.name, e))
        info.problems[:0] = out.problems()
        return info


def _check(src: Source, info: SafetensorsInfo, out: Findings, cap: int, max_tensors: int) -> None:
    size = info.file_size = src.size
    if size == 0:
        out.error(P.EMPTY_FILE, "file is empty (0 bytes)")
        return
    if size < 8:
        out.error(P.TRUNCATED, f"file is {size} bytes, shorter than the 8-byte header length field")
        return
    (n,) = _U64.unpack(src.read_at(0, 8))
    info.header_size = n
    if n > cap:
        library = "" if cap >= LIBRARY_MAX_HEADER_BYTES or n > LIBRARY_MAX_HEADER_BYTES else \
            f"; the safetensors library reads up to {LIBRARY_MAX_HEADER_BYTES}, no published model comes near"
        out.error(P.HEADER_TOO_LARGE, f"header length field says {n} bytes, above the limit of {cap} bytes{library}")
        return
    if 8 + n > size:
        out.error(
            P.TRUNCATED,
            f"header length field says {n} bytes, file has {size - 8} after the length field "
            f"(truncated by {8 + n - size} bytes, or a corrupt length)",
        )
        return
    header = _parse_header(_read_text(src, n, out), out, max_tensors)
    if header is None:
        return
    info.header_parsed = True
    _check_metadata(header.pop("__metadata__", None), info, out)
    spans = _check_entries(header, info, out)
    data_end = _check_spans(spans, info.tensors, out)
    expected = 8 + n + data_end
    if size < expected:
        out.error(P.TRUNCATED, f"header says data ends at {expected} bytes, file has {size} (truncated by {expected - size} bytes)")
    elif size > expected:
        out.error(P.TRAILING_DATA, f"header says data ends at {expected} bytes, file has {size} ({size - expected} bytes of trailing data)")


# ----------------------------------------------------------------------------- header JSON
#
# The safetensors library parses the header with serde_json into
#     struct HashMetadata { #[serde(rename = "__metadata__")] metadata: Option<HashMap<String, String>>,
#                           #[serde(flatten)] tensors: HashMap<String, TensorInfo> }
#     struct TensorInfo { dtype: Dtype, shape: Vec<usize>, data_offsets: (usize, usize) }
# Python's json accepts more than that; what serde_json refuses, this parser refuses too:
#   - a struct field given twice: a second `__metadata__`, or `dtype`/`shape`/`data_offsets`
#     twice in one entry ("duplicate field"). Repeated keys elsewhere are not an error there:
#     a repeated tensor name or `__metadata__` key keeps the last value, as a HashMap does, and
#     objects inside ignored fields are skipped unread;
#   - a lone UTF-16 surrogate escape (`\ud800` not followed by a low surrogate), in any string;
#   - `-0` (serde_json reads it as the float -0.0), and any fraction or exponent where an
#     unsigned integer is expected; a number too large for a double anywhere;
#   - NaN / Infinity (not JSON);
#   - nesting of 128 containers or more (serde_json's recursion limit);
#   - `__metadata__` values that are not strings (null as the whole `__metadata__` is fine).
# Both allow JSON whitespace before and after the object (the writer pads with spaces to a
# multiple of 8 bytes) and unknown fields inside an entry, which they ignore.
# Two forms serde's derive also takes are refused here on purpose: an entry written as an
# array `[dtype, shape, data_offsets]` and a dtype written as `{"F32": null}`. No writer emits
# them, and the Python readers of headers (huggingface_hub's metadata parser, tools that
# index `entry["dtype"]`) do not take them either.
#
# Speed: an object hook turns each well-formed entry into a TensorInfo as it is parsed, so
# a header of N tensors costs one small tuple per tensor, not a dict, and it stops at
# `max_tensors` objects. The hooks for `-0` and surrogates run only when the raw text has a
# `-0` or a `\ud`/`\uD` escape in it.

_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")
_INTERNED_DTYPES = {d: d for d in DTYPE_BITS}
SERDE_MAX_DEPTH = 127  # serde_json refuses the 128th nested array/object


class _Duplicated(dict):
    """An object whose keys repeat: maps each key to its last value; `pairs` keeps them all."""

    __slots__ = ("pairs",)


class _NegZero:
    """`-0` as written: serde_json reads it as the float -0.0, so it is no unsigned integer."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "-0"


_NEG_ZERO = _NegZero()


class _TooManyObjects(Exception):
    pass


class _NumberOutOfRange(ValueError):
    pass


def _float(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):
        raise _NumberOutOfRange(f"number {text[:20]}{'...' if len(text) > 20 else ''} is out of range for a double")
    return value


_INF = float("inf")


def _int_or_neg_zero(text: str) -> object:
    return _NEG_ZERO if text == "-0" else int(text)


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def _entry_hook(max_objects: int):
    """The object_pairs_hook: a well-formed entry becomes a TensorInfo, anything else a dict."""
    count = 0
    limit = _U64_LIMIT
    interned = _INTERNED_DTYPES

    def hook(pairs: list) -> object:
        nonlocal count
        count += 1
        if count > max_objects:
            raise _TooManyObjects
        d = dict(pairs)
        if len(d) != len(pairs):
            dup = _Duplicated(d)
            dup.pairs = pairs
            return dup
        if len(d) == 3:
            dtype = d.get("dtype")
            shape = d.get("shape")
            offsets = d.get("data_offsets")
            if type(dtype) is str and type(shape) is list and type(offsets) is list and len(offsets) == 2:
                begin, end = offsets
                if type(begin) is int and type(end) is int and 0 <= begin < limit and 0 <= end < limit:
                    for dim in shape:
                        if type(dim) is not int or not 0 <= dim < limit:
                            return d
                    return TensorInfo(interned.get(dtype, dtype), tuple(shape), (begin, end))
        return d

    return hook


def _read_text(src: Source, n: int, out: Findings) -> str | None:
    """The header as text; the bytes are let go at once (a header may be 16 MiB)."""
    raw = src.read_at(8, n)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        out.error(P.HEADER_INVALID, f"header is not UTF-8 (bad byte at header offset {e.start})")
        return None


def _parse_header(text: str | None, out: Findings, max_tensors: int = MAX_TENSORS) -> dict | None:
    if text is None:
        return None
    # Python holds every JSON value as an object (~50-100 bytes a string, 8 bytes a list
    # slot), so bound strings and commas (list items, object members) before parsing.
    # A tensor entry has 5 strings (name, 3 field names, dtype) and 3-7 commas; the
    # metadata gets the rest. Escaped quotes and commas inside strings count too, so
    # the bounds only err on the generous side for real headers.
    for what, found, per in (("JSON strings", (text.count('"') - text.count('\\"')) // 2, STRINGS_PER_TENSOR),
                             ("commas", text.count(","), COMMAS_PER_TENSOR)):
        if found > per * max_tensors:
            out.error(P.HEADER_TOO_LARGE, f"header holds {found} {what}, above the limit of {per * max_tensors} "
                                          f"({per} per tensor for up to {max_tensors} tensors)")
            return None
    # Objects = tensors + __metadata__ + the header itself (+ any inside ignored fields).
    hook = _entry_hook(max_tensors + 2)
    parse_int = _int_or_neg_zero if "-0" in text else None
    try:
        header = json.loads(text, object_pairs_hook=hook, parse_constant=_reject_constant, parse_float=_float, parse_int=parse_int)
    except _TooManyObjects:
        out.error(P.HEADER_TOO_LARGE, f"header holds more than {max_tensors} tensors, above the limit of {max_tensors}")
        return None
    except json.JSONDecodeError as e:
        out.error(P.HEADER_INVALID, f"header is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
        return None
    except RecursionError:
        out.error(P.HEADER_INVALID, f"header is not valid JSON to the safetensors parser: nested deeper than {SERDE_MAX_DEPTH} levels")
        return None
    except ValueError as e:
        out.error(P.HEADER_INVALID, f"header is not valid JSON: {e}")
        return None
    if not isinstance(header, dict):
        kind = "object that reads as one tensor entry" if isinstance(header, TensorInfo) else type(header).__name__
        out.error(P.HEADER_INVALID, f"header is a JSON {kind}, expected an object of tensors")
        return None
    if ("\\ud" in text or "\\uD" in text) and _lone_surrogate(header, out):
        return None
    if isinstance(header, _Duplicated) and not _top_level_repeats(header, out):
        return None
    return header


def _lone_surrogate(value: object, out: Findings) -> bool:
    """Report the first string holding a lone UTF-16 surrogate (serde_json refuses those)."""
    found = _find_surrogate(value, 0)
    if found is None:
        return False
    out.error(P.HEADER_INVALID, f"header is not valid JSON to the safetensors parser: {found} holds a lone UTF-16 surrogate escape")
    return True


def _has_surrogate(s: str) -> bool:
    return _SURROGATE_HINT.search(s) is not None


def _find_surrogate(value: object, depth: int) -> str | None:
    if depth > SERDE_MAX_DEPTH:
        return None  # refused for its depth by the caller's checks
    if isinstance(value, str):
        return _short(value) if _has_surrogate(value) else None
    if isinstance(value, TensorInfo):
        return f"dtype {_short(value.dtype)}" if _has_surrogate(value.dtype) else None
    if isinstance(value, dict):
        items = value.pairs if isinstance(value, _Duplicated) else value.items()
        for k, v in items:
            if _has_surrogate(k):
                return f"key {_short(k)}"
            hit = _find_surrogate(v, depth + 1)
            if hit is not None:
                return hit
    elif isinstance(value, list):
        for v in value:
            hit = _find_surrogate(v, depth + 1)
            if hit is not None:
                return hit
    return None


def _top_level_repeats(header: _Duplicated, out: Findings) -> bool:
    """A second `__metadata__` is an error; a repeated tensor name keeps its last entry (a warning)."""
    seen: dict[str, int] = {}
    for key, _value in header.pairs:
        seen[key] = seen.get(key, 0) + 1
    if seen.get("__metadata__", 0) > 1:
        out.error(P.HEADER_INVALID, "header is not valid JSON to the safetensors parser: duplicate field '__metadata__'")
        return False
    repeated = [k for k, c in seen.items() if c > 1]
    last = {id(v) for v in header.values()}
    for key, value in header.pairs:
        if key in repeated and id(value) not in last and not isinstance(value, TensorInfo):
            out.error(P.HEADER_INVALID, f"tensor {key!r} is given more than once and an earlier entry is malformed: {_short(value)}")
            return False
    for key in repeated:
        out.warning(P.HEADER_INVALID, f"tensor {key!r} is given {seen[key]} times; loaders keep the last entry")
    return True


def _check_metadata(meta: object, info: SafetensorsInfo, out: Findings) -> None:
    if meta is None:
        return
    if not isinstance(meta, dict):
        kind = "object of tensor fields" if isinstance(meta, TensorInfo) else type(meta).__name__
        out.error(P.HEADER_INVALID, f"__metadata__ is a JSON {kind}, expected an object of strings")
        return
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        out.error(P.HEADER_INVALID, f"__metadata__ values must be strings; {len(bad)} are not (first: {bad[0]!r})")
    info.metadata = {k: v for k, v in meta.items() if isinstance(v, str)}


def _check_entries(header: dict, info: SafetensorsInfo, out: Findings) -> list[tuple[int, int]]:
    """Check each entry; `header` becomes `info.tensors` (malformed entries dropped from it).

    Returns the spans (begin, end) that do not end before they begin, unsorted."""
    spans: list[tuple[int, int]] = []
    dtypes = info.dtypes
    bits_of = DTYPE_BITS
    limit = _U64_LIMIT
    params = 0
    malformed = []
    for tname, entry in header.items():
        if type(entry) is not TensorInfo:
            entry = _entry_from(tname, entry, out)
            if entry is None:
                malformed.append(tname)
                continue
            header[tname] = entry
        dtype, shape, offsets = entry
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
            if numel >= limit:
                break
        dtypes[dtype] += 1
        if end < begin:
            out.error(P.BAD_OFFSETS, f"tensor {tname!r}: data_offsets [{begin}, {end}] end before they begin")
        else:
            spans.append(offsets)
        bits = bits_of.get(dtype)
        if bits is None:
            out.error(P.BAD_DTYPE, f"tensor {tname!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})")
            continue
        nbits = numel * bits
        if nbits >= limit:
            out.error(P.BAD_SHAPE, f"tensor {tname!r}: shape {_short(list(shape))} of {dtype} overflows a 64-bit byte count")
            continue
        params += numel
        if nbits % 8:
            out.error(P.BAD_SHAPE, f"tensor {tname!r}: shape {list(shape)} of {dtype} is {nbits} bits, not a whole number of bytes")
        elif end >= begin and nbits >> 3 != end - begin:
            out.error(
                P.BAD_SHAPE,
                f"tensor {tname!r}: shape {list(shape)} of {dtype} needs {nbits >> 3} bytes, data_offsets [{begin}, {end}] span {end - begin}",
            )
    info.parameter_count = params
    for tname in malformed:
        del header[tname]
    info.tensors = header
    return spans


def _is_u64(x: object) -> bool:
    return type(x) is int and 0 <= x < _U64_LIMIT  # bool is not a count


def _entry_from(tname: str, entry: object, out: Findings) -> TensorInfo | None:
    """The slow path, for entries the hook did not take: repeated or unknown fields, or malformed."""
    if not isinstance(entry, dict):
        what = "an array (serde reads it as [dtype, shape, data_offsets]; no writer emits it)" if isinstance(entry, list) else f"a JSON {type(entry).__name__}"
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: entry is {what}, expected an object with dtype, shape, data_offsets")
        return None
    if isinstance(entry, _Duplicated):
        counts: dict[str, int] = {}
        for k, _v in entry.pairs:
            counts[k] = counts.get(k, 0) + 1
        twice = [f for f in _ENTRY_FIELDS if counts.get(f, 0) > 1]
        if twice:
            out.error(P.HEADER_INVALID, f"tensor {tname!r}: duplicate field {twice[0]!r} (the safetensors parser refuses repeated fields)")
            return None
    for key, value in entry.items():
        if key in _ENTRY_FIELDS:
            continue
        problem = _ignored_value_problem(value, 3)
        if problem:
            out.error(P.HEADER_INVALID, f"tensor {tname!r}: field {key!r} {problem}")
            return None
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offs = entry.get("data_offsets")
    neg_zero = " (-0 is the float -0.0 to the safetensors parser)" if _holds_neg_zero(shape) or _holds_neg_zero(offs) else ""
    if not isinstance(dtype, str):
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: dtype is {_short(dtype)}, expected a string such as 'BF16'")
    elif not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: shape is {_short(shape)}, expected a list of integers in [0, 2^64){neg_zero}")
    elif not isinstance(offs, list) or len(offs) != 2 or not all(_is_u64(d) for d in offs):
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: data_offsets is {_short(offs)}, expected [begin, end] integers in [0, 2^64){neg_zero}")
    else:
        return TensorInfo(_INTERNED_DTYPES.get(dtype, dtype), tuple(shape), (offs[0], offs[1]))
    return None


def _holds_neg_zero(value: object) -> bool:
    return isinstance(value, list) and any(v is _NEG_ZERO for v in value)


def _ignored_value_problem(value: object, depth: int) -> str | None:
    """What serde_json refuses in a value it otherwise skips: nesting, numbers beyond a double."""
    if depth > SERDE_MAX_DEPTH:
        return f"nests deeper than {SERDE_MAX_DEPTH} levels (the safetensors parser's limit)"
    if isinstance(value, TensorInfo):
        return None if depth + 1 <= SERDE_MAX_DEPTH else _ignored_value_problem([[]], depth)
    if type(value) is int and not -_MAX_DOUBLE_INT < value < _MAX_DOUBLE_INT:
        return "holds an integer too large for a double (the safetensors parser refuses it)"
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        if isinstance(child, (dict, list)):
            problem = _ignored_value_problem(child, depth + 1)
        elif type(child) is int:
            problem = _ignored_value_problem(child, depth)
        else:
            continue
        if problem:
            return problem
    return None


_MAX_DOUBLE_INT = 2**1024


def _check_spans(spans: list[tuple[int, int]], tensors: dict[str, TensorInfo], out: Findings) -> int:
    """Walk spans in offset order; return where the data ends (the largest end).

    The spans carry no names (each tensor's tuple is already in `tensors`); only when
    they do not tile is the walk repeated with names, to say which tensors are at fault."""
    spans.sort()
    expected = 0
    for begin, end in spans:
        if begin != expected:
            break
        expected = end
    else:
        return expected
    named = sorted((b, e, name) for name, (_d, _s, (b, e)) in tensors.items() if e >= b)
    expected = 0
    data_end = 0
    prev = None
    for begin, end, tname in named:
        if begin > expected:
            where = f"after tensor {prev!r} ends at {expected}" if prev is not None else "data starts at 0"
            out.error(P.BAD_OFFSETS, f"tensor {tname!r}: data begins at {begin}, expected {expected} ({where}; {begin - expected} byte gap)")
        elif begin < expected:
            out.error(P.BAD_OFFSETS, f"tensor {tname!r}: data [{begin}, {end}] overlaps tensor {prev!r}, which ends at {expected}")
        expected = end
        data_end = max(data_end, end)
        prev = tname
    return data_end


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
