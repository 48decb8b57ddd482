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
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple, Union

from preflight import problems as P
from preflight.problems import Problem

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]

DEFAULT_MAX_HEADER_BYTES = 100 * 2**20
# safetensors (the library vLLM and transformers load with) refuses larger headers.
LIBRARY_MAX_HEADER_BYTES = 100_000_000

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


@dataclass
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
    path: PathOrFile, *, name: str | None = None, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
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
            _check(src, info, out, min(max_header_bytes, LIBRARY_MAX_HEADER_BYTES))
        except OSError as e:
            info.problems.append(os_problem(src.name, e))
        info.problems[:0] = out.problems()
        return info


def _check(src: Source, info: SafetensorsInfo, out: Findings, cap: int) -> None:
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
        out.error(P.HEADER_TOO_LARGE, f"header length field says {n} bytes, above the limit of {cap} bytes")
        return
    if 8 + n > size:
        out.error(
            P.TRUNCATED,
            f"header length field says {n} bytes, file has {size - 8} after the length field "
            f"(truncated by {8 + n - size} bytes, or a corrupt length)",
        )
        return
    header = _parse_header(src.read_at(8, n), out)
    if header is None:
        return
    info.header_parsed = True
    _check_metadata(header.pop("__metadata__", None), info, out)
    spans = _check_entries(header, info, out)
    data_end = _check_spans(spans, out)
    expected = 8 + n + data_end
    if size < expected:
        out.error(P.TRUNCATED, f"header says data ends at {expected} bytes, file has {size} (truncated by {expected - size} bytes)")
    elif size > expected:
        out.error(P.TRAILING_DATA, f"header says data ends at {expected} bytes, file has {size} ({size - expected} bytes of trailing data)")


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def _parse_header(raw: bytes, out: Findings) -> dict | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        out.error(P.HEADER_INVALID, f"header is not UTF-8 (bad byte at header offset {e.start})")
        return None
    try:
        header = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        out.error(P.HEADER_INVALID, f"header is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
        return None
    except (ValueError, RecursionError) as e:
        out.error(P.HEADER_INVALID, f"header is not valid JSON: {e}")
        return None
    if not isinstance(header, dict):
        out.error(P.HEADER_INVALID, f"header is a JSON {type(header).__name__}, expected an object of tensors")
        return None
    return header


def _check_metadata(meta: object, info: SafetensorsInfo, out: Findings) -> None:
    if meta is None:
        return
    if not isinstance(meta, dict):
        out.error(P.HEADER_INVALID, f"__metadata__ is a JSON {type(meta).__name__}, expected an object of strings")
        return
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        out.error(P.HEADER_INVALID, f"__metadata__ values must be strings; {len(bad)} are not (first: {bad[0]!r})")
    info.metadata = {k: v for k, v in meta.items() if isinstance(v, str)}


def _check_entries(header: dict, info: SafetensorsInfo, out: Findings) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    tensors = info.tensors
    dtypes = info.dtypes
    bits_of = DTYPE_BITS
    limit = _U64_LIMIT
    params = 0
    for tname, entry in header.items():
        # Fast path: a well-formed entry costs a few dict lookups and one loop over the shape.
        try:
            dtype = entry["dtype"]
            shape = entry["shape"]
            begin, end = entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            _explain_entry(tname, entry, out)
            continue
        if type(dtype) is not str or type(shape) is not list or type(begin) is not int or type(end) is not int:
            _explain_entry(tname, entry, out)
            continue
        numel = 1
        for d in shape:
            if type(d) is not int or d < 0 or d >= limit:
                numel = -1
                break
            numel *= d
            if numel >= limit:
                break
        if numel < 0 or not (0 <= begin < limit and 0 <= end < limit):
            _explain_entry(tname, entry, out)
            continue
        tensors[tname] = TensorInfo(dtype, tuple(shape), (begin, end))
        dtypes[dtype] += 1
        if end < begin:
            out.error(P.BAD_OFFSETS, f"tensor {tname!r}: data_offsets [{begin}, {end}] end before they begin")
        else:
            spans.append((begin, end, tname))
        bits = bits_of.get(dtype)
        if bits is None:
            out.error(P.BAD_DTYPE, f"tensor {tname!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})")
            continue
        nbits = numel * bits
        if nbits >= limit:
            out.error(P.BAD_SHAPE, f"tensor {tname!r}: shape {_short(shape)} of {dtype} overflows a 64-bit byte count")
            continue
        params += numel
        if nbits % 8:
            out.error(P.BAD_SHAPE, f"tensor {tname!r}: shape {shape} of {dtype} is {nbits} bits, not a whole number of bytes")
        elif end >= begin and nbits >> 3 != end - begin:
            out.error(
                P.BAD_SHAPE,
                f"tensor {tname!r}: shape {shape} of {dtype} needs {nbits >> 3} bytes, data_offsets [{begin}, {end}] span {end - begin}",
            )
    info.parameter_count = params
    return spans


def _is_u64(x: object) -> bool:
    return type(x) is int and 0 <= x < _U64_LIMIT  # bool is not a count


def _explain_entry(tname: str, entry: object, out: Findings) -> None:
    """Say what is malformed in a tensor entry (the slow path, taken only for bad entries)."""
    if not isinstance(entry, dict):
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: entry is a JSON {type(entry).__name__}, expected an object with dtype, shape, data_offsets")
        return
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offs = entry.get("data_offsets")
    if not isinstance(dtype, str):
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: dtype is {_short(dtype)}, expected a string such as 'BF16'")
    elif not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: shape is {_short(shape)}, expected a list of integers in [0, 2^64)")
    else:
        out.error(P.HEADER_INVALID, f"tensor {tname!r}: data_offsets is {_short(offs)}, expected [begin, end] integers in [0, 2^64)")


def _check_spans(spans: list[tuple[int, int, str]], out: Findings) -> int:
    """Walk spans in offset order; return where the data ends (the largest end)."""
    spans.sort()
    expected = 0
    data_end = 0
    prev = None
    for begin, end, tname in spans:
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
