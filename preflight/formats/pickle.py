"""Pickle-bearing weights: what a file holds, judged by its bytes, never its name.

`classify` reads a few bytes (and, for an archive, its member list) and says what a
file is: a pickle, a PyTorch checkpoint (zip, legacy or tar), a TorchScript archive,
a NumPy array, safetensors, GGUF/GGML, another archive or plain data. A file holds a
pickle when a loader would unpickle something in it: a stream that begins with the
PROTO opcode, or one that reaches STOP or an opcode that calls something before it
fails (bytes that fail first cannot run anything under `pickle.load`, so they are
data, whatever the file is called).

A pickle is refused unless the lane allows pickles. An allowed pickle must still have
the shape of a state dict: its opcodes are walked without being run, and every global
it imports must be on the allowlist of what `torch.load(weights_only=True)` accepts
plus the NumPy array reconstructors; calls, attribute writes and persistent ids must
have torch's shapes; extension codes, globals named by computed strings and pickles
that do not parse to their end are refused. A TorchScript archive is a program as well
as weights (torch.jit.load compiles and runs its code/), so `allow_pickle: true` does
not accept it; `allow_pickle: torchscript` does, after the same walk of its pickles.

Reads are bounded whatever the input: only the pickle streams are read (never a torch
zip's storages, never what follows a legacy checkpoint's pickles), with caps on
opcodes, memo, stack, archive members and inflated bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .. import problems as P
from ..problems import Problem

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ACCEPT_ON_LANE = "set `allow_pickle: true` on the lane to accept it"  # `inspect` names its flag instead
TORCHSCRIPT_ON_LANE = "set `allow_pickle: torchscript` on the lane to accept TorchScript"

MAX_OPS = 2_000_000           # opcodes per file (a state dict needs about 20 a tensor)
MAX_MEMO = 300_000            # memo entries per pickle (about 6 a tensor)
MAX_STACK = 1_000_000         # stack items, marks included
MAX_MARKS = 100_000
KEEP_STR = 256                # strings longer than this are not kept (a global's name never is)
KEEP_BUDGET = 8 << 20         # characters of strings kept per file
MAX_PICKLES = 16              # pickles read back to back from one stream
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_DIRECTORY = 32 << 20
MAX_PICKLE_MEMBERS = 4096
MAX_INFLATE = 64 << 20        # bytes inflated from compressed pickle members, per file
MAX_TAR_MEMBERS = 10_000
MAX_NPY_HEADER = 1 << 16

TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, storage keys; storages follow
GGML_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt", b"algg": "ggla"}


def is_pickle_name(name: str) -> bool:
    """Names that loaders open with pickle (torch.load, pickle.load); content decides the rest."""
    return name.lower().endswith(PICKLE_SUFFIXES)


# ----------------------------------------------------------------------------- what a file is


@dataclass(frozen=True)
class Found:
    """What a file holds. `pickled`: a loader unpickles something in it."""

    kind: str  # pickle torch-zip torchscript torch-legacy torch-tar numpy numpy-pickle zip tar gguf ggml safetensors data empty
    label: str
    pickled: bool = False
    members: tuple[str, ...] = ()  # the pickle members of an archive
    declared: bool = True  # False: opcodes that happen to run into an import or a call, with no PROTO and no STOP


def classify(path: str | os.PathLike) -> Found:
    """What the file holds, from its first bytes (and an archive's member list). Raises OSError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4096)
        return _classify(f, head, size)


def _classify(f, head: bytes, size: int) -> Found:
    if not head:
        return Found("empty", "an empty file")
    if head[:4] == b"PK\x03\x04":
        return _classify_zip(f, size)
    if head[:4] == b"GGUF":
        return Found("gguf", "a GGUF file")
    if head[:4] in GGML_MAGICS:
        return Found("ggml", f"a GGML file (the format llama.cpp used before GGUF, magic '{GGML_MAGICS[head[:4]]}')")
    if head[:6] == b"\x93NUMPY":
        if _npy_holds_objects(f, 0):
            return Found("numpy-pickle", "a NumPy array of Python objects (.npy; its data is a pickle)", True)
        return Found("numpy", "a NumPy array (.npy)")
    if _is_tar_header(head):
        return _classify_tar(f)
    if _looks_safetensors(head, size):
        return Found("safetensors", "a safetensors file")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        if _starts_legacy(head):
            return Found("torch-legacy", "a PyTorch checkpoint in the legacy format (torch.save without zip)", True)
        return Found("pickle", f"a pickle (protocol {head[1]})", True)
    walk = _walk(_Reader(f, 0, size), _Rules(), _Budget())
    if walk.is_pickle:
        return Found("pickle", f"a pickle (protocol {walk.proto})", True, declared=walk.began or walk.complete)
    return Found("data", "plain data (neither a pickle nor a known weights format)")


def _looks_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{" and head[9:10] in b'"} \t\r\n'


def _starts_legacy(head: bytes) -> bool:
    """torch.save(..., _use_new_zipfile_serialization=False) begins with a pickle of its magic number."""
    tail = b"\x8a\x0a" + TORCH_MAGIC + b"."
    i = head.find(tail, 0, 40)
    return i >= 2


def _is_tar_header(head: bytes) -> bool:
    """A tar header block, checked the way tarfile (and so torch.load) checks it: by its checksum."""
    if len(head) < 512 or head[:512] == bytes(512):
        return False
    field_ = head[148:156].replace(b"\x00", b" ").strip()
    try:
        want = int(field_, 8)
    except ValueError:
        return False
    block = head[:148] + b" " * 8 + head[156:512]
    return want in (sum(block), sum(struct.unpack("148b8x356b", head[:512])) + 256)


def _classify_tar(f) -> Found:
    import tarfile

    f.seek(0)
    names: set[str] = set()
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for i, member in enumerate(tar):
                if i >= MAX_TAR_MEMBERS:
                    break
                names.add(member.name)
    except Exception:  # tarfile raises assorted errors on hostile headers; what was listed stands
        pass
    if {"sys_info", "pickle", "storages", "tensors"} & names:
        return Found("torch-tar", "a PyTorch checkpoint in the tar format of torch before 0.4", True, ("pickle", "storages", "tensors"))
    return Found("tar", "a tar archive")


# ----------------------------------------------------------------------------- zip archives


class _Unjudgeable(Exception):
    """The input exceeds what is read to judge it, or is malformed past reading."""


def _zip_directory_bounds(f, size: int) -> None:
    """Refuse a zip whose central directory is too large before zipfile reads all of it."""
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) - i < 22:
        raise _Unjudgeable("no end-of-directory record (not a readable zip)")
    entries, cd_size = struct.unpack_from("<H", tail, i + 10)[0], struct.unpack_from("<I", tail, i + 12)[0]
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        loc = tail.rfind(b"PK\x06\x07", 0, i)
        if loc >= 0 and len(tail) - loc >= 20:
            off = struct.unpack_from("<Q", tail, loc + 8)[0]
            if off + 56 <= size:
                f.seek(off)
                rec = f.read(56)
                if rec[:4] == b"PK\x06\x06":
                    entries, cd_size = struct.unpack_from("<QQ", rec, 32)
    if entries > MAX_ZIP_MEMBERS:
        raise _Unjudgeable(f"{entries} members (more than {MAX_ZIP_MEMBERS})")
    if cd_size > MAX_ZIP_DIRECTORY:
        raise _Unjudgeable(f"a {cd_size}-byte member directory (more than {MAX_ZIP_DIRECTORY})")


def _open_zip(f, size: int):
    import zipfile

    _zip_directory_bounds(f, size)
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except Exception as exc:  # zipfile raises assorted errors on hostile directories
        raise _Unjudgeable(f"its member directory does not read ({type(exc).__name__}: {exc})") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise _Unjudgeable(f"{len(infos)} members (more than {MAX_ZIP_MEMBERS})")
    return zf, infos


def _torch_records(infos) -> tuple[str | None, dict[str, str]]:
    """torch's reader finds records under the first member's top folder: {record: member name}."""
    if not infos:
        return None, {}
    first = infos[0].filename
    prefix = first.split("/", 1)[0] if "/" in first else ""
    records = {}
    for info in infos:
        if prefix and info.filename.startswith(prefix + "/"):
            records[info.filename[len(prefix) + 1:]] = info.filename
    return prefix, records


def _duplicate(names: tuple[str, ...] | list[str]) -> str | None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def _pickle_member(name: str) -> bool:
    return name.endswith((".pkl", ".debug_pkl")) or name.rsplit("/", 1)[-1] == "pickle"


def _classify_zip(f, size: int) -> Found:
    try:
        zf, infos = _open_zip(f, size)
    except _Unjudgeable as exc:
        return Found("zip", f"a zip archive that cannot be judged: {exc}", True)
    names = [i.filename for i in infos]
    _prefix, records = _torch_records(infos)
    pickles = tuple(n for n in names if _pickle_member(n))
    dup = _duplicate(pickles)
    if dup is not None:
        return Found("zip", f"a zip archive with two pickle members named {dup!r}", True, pickles)
    if "constants.pkl" in records:
        code = sum(1 for n in records if n.startswith("code/") and n.endswith(".py"))
        return Found("torchscript", f"a TorchScript archive ({code} code file{'s' if code != 1 else ''} under code/)", True, pickles)
    if "data.pkl" in records:
        return Found("torch-zip", "a PyTorch checkpoint (zip, data.pkl)", True, pickles)
    npy = [i for i in infos if i.filename.endswith(".npy")]
    objects = tuple(i.filename for i in npy[:MAX_PICKLE_MEMBERS] if _member_npy_objects(zf, i))
    if pickles or objects:
        shown = ", ".join((pickles + objects)[:4])
        return Found("zip", f"a zip archive holding pickles ({shown})", True, pickles + objects)
    return Found("zip", "a zip archive (no pickles in it)")


def _member_npy_objects(zf, info) -> bool:
    try:
        with zf.open(info) as m:
            return _npy_holds_objects(m, None)
    except Exception:
        return False


# ----------------------------------------------------------------------------- numpy .npy


def _npy_header(f, start: int | None) -> tuple[object, int] | None:
    """The header dict of an .npy stream and the offset of its data (relative to start)."""
    if start is not None:
        f.seek(start)
    pre = f.read(10)
    if len(pre) < 10 or pre[:6] != b"\x93NUMPY":
        return None
    major = pre[6]
    if major == 1:
        hlen, off = struct.unpack_from("<H", pre, 8)[0], 10
    elif major in (2, 3):
        pre += f.read(2)
        hlen, off = struct.unpack_from("<I", pre, 8)[0], 12
    else:
        return None
    if hlen > MAX_NPY_HEADER:
        return None
    raw = pre[off:] + f.read(hlen - len(pre[off:])) if len(pre) > off else f.read(hlen)
    import ast

    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        return None
    return header, off + hlen


def _npy_holds_objects(f, start: int | None) -> bool:
    parsed = _npy_header(f, start)
    if parsed is None or not isinstance(parsed[0], dict):
        return False
    return _descr_has_object(parsed[0].get("descr"), 0)


def _descr_has_object(descr: object, depth: int) -> bool:
    if depth > 32:
        return True
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, (list, tuple)):
        return any(_descr_has_object(d, depth + 1) for d in descr)
    return False


# ----------------------------------------------------------------------------- the allowlist


def _pairs(*specs: str) -> set[tuple[str, str]]:
    out = set()
    for spec in specs:
        module, names = spec.split(":")
        out.update((module, n) for n in names.split())
    return out


_DTYPES = (
    "float32 float float64 double float16 half bfloat16 complex32 chalf complex64 cfloat complex128 cdouble "
    "uint8 uint16 uint32 uint64 int8 int16 short int32 int int64 long bool quint8 qint8 qint32 quint4x2 quint2x4 "
    "float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz float8_e8m0fnu float4_e2m1fn_x2 "
    "bits1x8 bits2x4 bits4x2 bits8 bits16 uint1 uint2 uint3 uint4 uint5 uint6 uint7 int1 int2 int3 int4 int5 int6 int7"
)
_KINDS = "Float Double Half BFloat16 Long Int Short Char Byte Bool ComplexFloat ComplexDouble"
_STORAGES = " ".join(f"{k}Storage" for k in (_KINDS + " QUInt8 QInt8 QInt32 QUInt4x2 QUInt2x4").split())
_TENSORS = " ".join(f"{k}Tensor" for k in _KINDS.split())
_REBUILD = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter _rebuild_parameter_with_state "
    "_rebuild_qtensor _rebuild_sparse_tensor _rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass "
    "_rebuild_device_tensor_from_numpy _rebuild_device_tensor_from_cpu_tensor"
)

# What torch.load(weights_only=True) resolves, and what NumPy arrays and scalars need.
STATE_DICT_GLOBALS = frozenset(_pairs(
    "collections:OrderedDict Counter",
    "builtins:set frozenset bytearray bytes complex",
    "_codecs:encode",
    f"torch:Size Tensor device UntypedStorage TypedStorage {_DTYPES} {_STORAGES} {_TENSORS} "
    "per_tensor_affine per_tensor_symmetric per_channel_affine per_channel_symmetric per_channel_affine_float_qparams",
    f"torch.cuda:{_STORAGES} {_TENSORS}",
    "torch.storage:UntypedStorage TypedStorage",
    "torch.nn.parameter:Parameter",
    "torch.serialization:_get_layout",
    f"torch._utils:{_REBUILD}",
    "torch._tensor:_rebuild_from_type_v2",
    "numpy:ndarray dtype",
    "numpy.core.multiarray:_reconstruct scalar",
    "numpy._core.multiarray:_reconstruct scalar",
    "numpy.core.numeric:_frombuffer",
    "numpy._core.numeric:_frombuffer",
))
# What a TorchScript archive's pickles add: its own classes and list builders.
TORCHSCRIPT_GLOBALS = frozenset(_pairs(
    "torch.jit._pickle:build_intlist build_tensorlist build_doublelist build_boollist build_tensor_from_id restore_type_tag",
))


@dataclass
class _Rules:
    """What one pickle stream may hold."""

    persistent: str | None = None  # "zip" or "legacy": torch storage references allowed
    torchscript: bool = False

    def allowed(self, module: str, name: str) -> bool:
        if (module, name) in STATE_DICT_GLOBALS:
            return True
        if self.torchscript:
            return (module, name) in TORCHSCRIPT_GLOBALS or module == "__torch__" or module.startswith("__torch__.")
        return False


def _resolve(module: str, name: str, proto: int) -> tuple[str, str]:
    """The name the loader looks up: Python 2 spellings below protocol 3, torch's one rename."""
    if proto < 3:
        import _compat_pickle

        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    if module == "torch.tensor":
        module = "torch._tensor"
    return module, name


# ----------------------------------------------------------------------------- reading a stream


class _Bad(Exception):
    """The stream is not a pickle from here on (the loader fails at this point too)."""


class _Truncated(_Bad):
    pass


class _Reader:
    """Bytes [start, end) of a binary file, buffered; large arguments are skipped, not read."""

    CHUNK = 1 << 20

    def __init__(self, f, start: int, end: int, *, seekable: bool = True, budget: list[int] | None = None) -> None:
        self.f, self.end, self.seekable = f, end, seekable
        self.base, self.buf, self.pos = start, b"", 0
        self.inflate = budget  # [bytes left] shared by a file's compressed members
        self.line_len, self.line_last = 0, b""
        if seekable:
            f.seek(start)

    def tell(self) -> int:
        return self.base + self.pos

    def at_end(self) -> bool:
        return self.tell() >= self.end

    def _more(self, want: int) -> bool:
        """Append at least `want` bytes to the buffer, or all that is left."""
        left = self.end - (self.base + len(self.buf))
        n = min(max(want, self.CHUNK), left)
        if n <= 0:
            return False
        if self.inflate is not None:
            if self.inflate[0] < n:
                raise _Unjudgeable(f"more than {MAX_INFLATE} bytes of compressed pickle")
            self.inflate[0] -= n
        data = self.f.read(n)
        if not data:
            return False
        self.base += self.pos
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def refill(self, pos: int, n: int) -> bytes:
        """The buffer with at least `n` bytes from `pos` on (`self.pos` is then where `pos` went)."""
        self.pos = pos
        while len(self.buf) - self.pos < n:
            if not self._more(n - (len(self.buf) - self.pos)):
                raise _Truncated("the stream ends before its STOP opcode" if n == 1 else f"an argument of {n} bytes runs past the end")
        return self.buf

    def skip(self, n: int) -> None:
        have = len(self.buf) - self.pos
        if n <= have:
            self.pos += n
            return
        target = self.base + self.pos + n
        if target > self.end:
            raise _Truncated(f"an argument of {n} bytes runs past the end")
        if self.seekable:
            self.f.seek(target)
            self.base, self.buf, self.pos = target, b"", 0
            return
        n -= have
        self.base, self.buf, self.pos = self.base + len(self.buf), b"", 0
        while n > 0:
            step = min(n, 1 << 20)
            if self.inflate is not None:
                if self.inflate[0] < step:
                    raise _Unjudgeable(f"more than {MAX_INFLATE} bytes of compressed pickle")
                self.inflate[0] -= step
            data = self.f.read(step)
            if not data:
                raise _Truncated("an argument runs past the end")
            self.base += len(data)
            n -= len(data)

    def readline(self, keep: int = 4096) -> bytes:
        """A newline-ended argument (without the newline); only its first `keep` bytes are kept.
        `line_len` and `line_last` are the whole line's length and last byte."""
        out, total = b"", 0
        while True:
            i = self.buf.find(b"\n", self.pos)
            piece = self.buf[self.pos:i] if i >= 0 else self.buf[self.pos:]
            out += piece[: max(0, keep - len(out))]
            total += len(piece)
            if piece:
                self.line_last = piece[-1:]
            if i >= 0:
                self.pos = i + 1
                self.line_len = total
                if not total:
                    self.line_last = b""
                return out
            self.pos = len(self.buf)
            if not self._more(1):
                raise _Truncated("a text argument has no newline before the end")


# ----------------------------------------------------------------------------- the opcode walk


class _Global:
    __slots__ = ("module", "name", "shown", "ok")

    def __init__(self, module: str, name: str, shown: str, ok: bool) -> None:
        self.module, self.name, self.shown, self.ok = module, name, shown, ok


class _Made:
    """An object made by calling an imported global."""

    __slots__ = ("by",)

    def __init__(self, by: _Global) -> None:
        self.by = by


_STORAGE = _Made(_Global("torch", "storage", "a torch storage", True))


@dataclass
class _Budget:
    ops: int = 0
    kept: int = 0
    inflate: list[int] = field(default_factory=lambda: [MAX_INFLATE])


@dataclass
class _Walk:
    start: int
    end: int | None = None           # offset after STOP
    proto: int = 0
    called: bool = False             # reached an opcode that calls or writes into an imported object
    error: str | None = None         # why the walk stopped before STOP
    unjudged: str | None = None      # a bound was exceeded
    began: bool = False              # the first opcode is PROTO: a pickle by its own declaration
    denied: dict[str, None] = field(default_factory=dict)
    refusals: dict[str, None] = field(default_factory=dict)

    @property
    def is_pickle(self) -> bool:
        return self.began or self.end is not None or self.called or self.unjudged is not None

    @property
    def complete(self) -> bool:
        return self.end is not None and self.unjudged is None


def _memo_put(memo: dict, i: int, value: object) -> None:
    memo[i] = value
    if len(memo) > MAX_MEMO:
        raise _Unjudgeable(f"more than {MAX_MEMO} memo entries")


def _memo_get(memo: dict, i: int) -> object:
    if i not in memo:
        raise _Bad(f"memo {i} is read before it is written")
    return memo[i]


def _walk(r: _Reader, rules: _Rules, budget: _Budget) -> _Walk:
    """Follow one pickle's opcodes as the C unpickler would, running nothing."""
    w = _Walk(r.tell())
    try:
        _run(r, rules, budget, w)
    except _Unjudgeable as exc:
        w.unjudged = str(exc)
    except _Bad as exc:
        w.error = f"{exc} (byte {r.tell() - w.start})"
    except IndexError:
        w.error = f"stack underflow (byte {r.tell() - w.start})"
    except (OSError, EOFError, ValueError, OverflowError, MemoryError) as exc:  # zip/zlib/file read errors
        w.error = f"{type(exc).__name__}: {exc} (byte {r.tell() - w.start})"
    return w


def _run(r: _Reader, rules: _Rules, budget: _Budget, w: _Walk) -> None:  # noqa: C901 - one branch per opcode
    st: list = []
    marks: list[list] = []
    saved = 0  # values held in the frames below the marks
    memo: dict[int, object] = {}
    ops = budget.ops
    buf, pos = r.buf, r.pos
    blen = len(buf)
    unpack_from = struct.unpack_from

    def keep(data: bytes, how: str) -> str | None:
        if budget.kept > KEEP_BUDGET:
            return None
        budget.kept += len(data)
        try:
            if how == "utf8":
                return data.decode("utf-8", "surrogatepass")
            if how == "escape":
                import codecs

                return codecs.escape_decode(data)[0].decode("latin-1")
            if how == "raw":
                return data.decode("raw-unicode-escape")
            return data.decode("latin-1")
        except (UnicodeDecodeError, ValueError):
            return None

    def make_global(module: str, name: str) -> _Global:
        shown = f"{module}.{name}"
        mod, nm = _resolve(module, name, w.proto)
        ok = rules.allowed(mod, nm)
        if not ok:
            alias = f"{mod}.{nm}"
            w.denied[shown if alias == shown else f"{shown} ({alias})"] = None
        return _Global(mod, nm, shown, ok)

    def into(target: object, what: str) -> None:
        """A container opcode on `target`: on anything but plain data it calls the target's methods."""
        if target is None or isinstance(target, (str, tuple)):
            return
        w.called = True
        if isinstance(target, _Global):
            w.refusals[f"{what} writes into {target.shown} itself"] = None

    def call(func: object, args: object, what: str) -> object:
        if func is None or isinstance(func, (str, tuple)):
            raise _Bad(f"{what} on a value that is not callable")
        w.called = True
        if not isinstance(func, _Global):
            w.refusals[f"{what} calls an object that is not an imported global"] = None
            return _Made(_Global("?", "?", "?", False))
        if (func.module, func.name) == ("_codecs", "encode"):
            enc = args[1] if isinstance(args, tuple) and len(args) == 2 else None
            if not isinstance(enc, str) or enc.lower().replace("-", "") != "latin1":
                w.refusals[f"_codecs.encode is called with an encoding that is not latin1 ({enc!r})"] = None
        return _Made(func)

    def persistent(pid: object) -> None:
        w.called = True
        if rules.persistent is None:
            w.refusals["a persistent id, which only a torch checkpoint's main pickle holds"] = None
            return
        want = 5 if rules.persistent == "zip" else 6
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            w.refusals["a persistent id that restores a whole nn.Module class with its source"] = None
        elif not (isinstance(pid, tuple) and len(pid) == want and pid[0] == "storage"
                  and isinstance(pid[1], _Global) and pid[1].ok and pid[1].name.endswith("Storage")):
            w.refusals["a persistent id that is not a torch storage reference"] = None

    try:
        while True:
            if pos >= blen:
                buf = r.refill(pos, 1)
                pos, blen = r.pos, len(buf)
            op = buf[pos]
            pos += 1
            ops += 1
            if not ops & 0xFFF:
                budget.ops = ops
                if ops > MAX_OPS:
                    raise _Unjudgeable(f"more than {MAX_OPS} opcodes in the file")
                if len(st) + saved > MAX_STACK:
                    raise _Unjudgeable(f"more than {MAX_STACK} values on the stack")
            # fixed-size arguments: make sure the longest (8 bytes) is in the buffer
            if pos + 8 > blen and op in _FIXED:
                buf = r.refill(pos, _FIXED[op])
                pos, blen = r.pos, len(buf)

            if op == 0x71:  # BINPUT
                memo[buf[pos]] = st[-1]
                pos += 1
            elif op == 0x68:  # BINGET
                st.append(_memo_get(memo, buf[pos]))
                pos += 1
            elif op in _STRINGS:  # BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8 BINSTRING SHORT_BINSTRING
                width, fmt, how = _STRINGS[op]
                n = unpack_from(fmt, buf, pos)[0]
                pos += width
                if n < 0:
                    raise _Bad("a negative string length")
                if n <= KEEP_STR:
                    if pos + n > blen:
                        buf = r.refill(pos, n)
                        pos, blen = r.pos, len(buf)
                    value = keep(buf[pos:pos + n], how) if how else None
                    pos += n
                else:
                    r.pos = pos
                    r.skip(n)
                    buf, pos = r.buf, r.pos
                    blen = len(buf)
                    value = None
                st.append(value)
            elif op == 0x28:  # MARK
                if len(marks) >= MAX_MARKS:
                    raise _Unjudgeable(f"more than {MAX_MARKS} nested marks")
                marks.append(st)
                saved += len(st)
                st = []
            elif op in _PLAIN:  # NONE NEWTRUE NEWFALSE EMPTY_DICT EMPTY_LIST EMPTY_SET NEXT_BUFFER, BININT BININT1 BININT2 BINFLOAT
                pos += _PLAIN[op]
                st.append(None)
            elif op == 0x74:  # TUPLE
                if not marks:
                    raise _Bad("TUPLE without a MARK")
                items, st = st, marks.pop()
                saved -= len(st)
                st.append(tuple(items) if len(items) <= 8 else None)
            elif op in (0x85, 0x86, 0x87):  # TUPLE1 TUPLE2 TUPLE3
                n = op - 0x84
                if len(st) < n:
                    raise _Bad("stack underflow")
                t = tuple(st[-n:])
                del st[-n:]
                st.append(t)
            elif op == 0x29:  # EMPTY_TUPLE
                st.append(())
            elif op == 0x52:  # REDUCE
                args = st.pop()
                st[-1] = call(st[-1], args, "REDUCE")
            elif op == 0x51:  # BINPERSID
                persistent(st.pop())
                st.append(_STORAGE)
            elif op in (0x75, 0x65, 0x90):  # SETITEMS APPENDS ADDITEMS
                if not marks:
                    raise _Bad("a MARK is missing")
                items, st = st, marks.pop()
                saved -= len(st)
                target = st[-1]
                if items:
                    into(target, {0x65: "APPENDS", 0x75: "SETITEMS", 0x90: "ADDITEMS"}[op])
            elif op == 0x73:  # SETITEM
                st.pop()
                st.pop()
                into(st[-1], "SETITEM")
            elif op == 0x61:  # APPEND
                st.pop()
                into(st[-1], "APPEND")
            elif op in (0x72, 0x6A):  # LONG_BINPUT LONG_BINGET
                i = unpack_from("<I", buf, pos)[0]
                pos += 4
                if op == 0x72:
                    _memo_put(memo, i, st[-1])
                else:
                    st.append(_memo_get(memo, i))
            elif op == 0x94:  # MEMOIZE
                _memo_put(memo, len(memo), st[-1])
            elif op == 0x2E:  # STOP
                st.pop()
                pos_end = pos
                w.end = r.base + pos_end
                return
            elif op == 0x62:  # BUILD
                st.pop()
                inst = st[-1]
                if isinstance(inst, _Global):
                    w.called = True
                    w.refusals[f"BUILD sets attributes of {inst.shown} itself"] = None
                elif isinstance(inst, _Made):
                    w.called = True
            elif op == 0x81:  # NEWOBJ
                args = st.pop()
                st[-1] = call(st[-1], args, "NEWOBJ")
            elif op == 0x92:  # NEWOBJ_EX
                st.pop()
                args = st.pop()
                st[-1] = call(st[-1], args, "NEWOBJ_EX")
            elif op in (0x8A, 0x8B):  # LONG1 LONG4
                if op == 0x8A:
                    n = buf[pos]
                    pos += 1
                else:
                    n = unpack_from("<i", buf, pos)[0]
                    pos += 4
                    if n < 0:
                        raise _Bad("a negative LONG4 length")
                r.pos = pos
                r.skip(n)
                buf, pos = r.buf, r.pos
                blen = len(buf)
                st.append(None)
            elif op == 0x93:  # STACK_GLOBAL
                name = st.pop()
                module = st.pop()
                if isinstance(module, str) and isinstance(name, str):
                    st.append(make_global(module, name))
                else:
                    w.refusals["STACK_GLOBAL imports a name that is not a plain string in the pickle"] = None
                    st.append(_Global("?", "?", "?", False))
            elif op == 0x80:  # PROTO
                p = buf[pos]
                pos += 1
                if p > 5:
                    raise _Bad(f"unsupported pickle protocol {p}")
                w.proto = p
                if r.base + pos - w.start == 2:
                    w.began = True
            elif op == 0x95:  # FRAME (a buffering hint)
                pos += 8
            elif op in _LINES:  # opcodes whose arguments are newline-ended lines
                r.pos = pos
                if op in (0x63, 0x69):  # GLOBAL INST
                    if op == 0x69 and not marks:
                        raise _Bad("INST without a MARK")
                    module = r.readline(KEEP_STR).decode("utf-8", "replace")
                    name = r.readline(KEEP_STR).decode("utf-8", "replace")
                    g = make_global(module, name)
                    if op == 0x63:
                        st.append(g)
                    else:
                        items, st = st, marks.pop()
                        saved -= len(st)
                        st.append(call(g, tuple(items) if len(items) <= 8 else None, "INST"))
                elif op in (0x70, 0x67):  # PUT GET
                    try:
                        i = int(r.readline(64))
                    except ValueError:
                        raise _Bad("a memo index that is not a number") from None
                    if op == 0x70:
                        if i < 0:
                            raise _Bad("a negative memo index")
                        _memo_put(memo, i, st[-1])
                    else:
                        st.append(_memo_get(memo, i))
                elif op == 0x53:  # STRING
                    line = r.readline(KEEP_STR + 2)
                    if r.line_len < 2 or line[:1] != r.line_last or line[:1] not in (b"'", b'"'):
                        raise _Bad("a STRING argument that is not quoted")
                    st.append(keep(line[1:-1], "escape") if r.line_len <= KEEP_STR + 2 else None)
                elif op == 0x56:  # UNICODE
                    line = r.readline(KEEP_STR)
                    st.append(keep(line, "raw") if r.line_len <= KEEP_STR else None)
                elif op == 0x50:  # PERSID
                    r.readline(KEEP_STR)
                    w.called = True
                    w.refusals["a text persistent id (PERSID), which torch never writes"] = None
                    st.append(_STORAGE)
                else:  # INT LONG FLOAT
                    r.readline(64)
                    st.append(None)
                buf, pos = r.buf, r.pos
                blen = len(buf)
            elif op in (0x6C, 0x64, 0x91):  # LIST DICT FROZENSET
                if not marks:
                    raise _Bad("a collection without a MARK")
                st = marks.pop()
                saved -= len(st)
                st.append(None)
            elif op == 0x6F:  # OBJ
                if not marks:
                    raise _Bad("OBJ without a MARK")
                items, st = st, marks.pop()
                saved -= len(st)
                if not items:
                    raise _Bad("OBJ without a class")
                st.append(call(items[0], tuple(items[1:]) if len(items) <= 9 else None, "OBJ"))
            elif op in (0x82, 0x83, 0x84):  # EXT1 EXT2 EXT4
                width = {0x82: 1, 0x83: 2, 0x84: 4}[op]
                code = int.from_bytes(buf[pos:pos + width], "little")
                pos += width
                w.refusals[f"EXT{width} {code}, an import through copyreg's extension registry"] = None
                st.append(_Global("?", "?", f"extension {code}", False))
            elif op == 0x30:  # POP
                if st:
                    st.pop()
                elif marks:
                    st = marks.pop()
                    saved -= len(st)
                else:
                    raise _Bad("stack underflow")
            elif op == 0x31:  # POP_MARK
                if not marks:
                    raise _Bad("POP_MARK without a MARK")
                st = marks.pop()
                saved -= len(st)
            elif op == 0x32:  # DUP
                st.append(st[-1])
            elif op == 0x98:  # READONLY_BUFFER
                st[-1]
            else:
                pos -= 1
                raise _Bad(f"unknown opcode 0x{op:02x}")
    finally:
        r.pos = pos if r.buf is buf else r.pos
        budget.ops = ops


# Argument widths: fixed-size ones (checked against the buffer before the opcode runs).
_FIXED = {
    0x71: 1, 0x68: 1, 0x72: 4, 0x6A: 4, 0x4A: 4, 0x4B: 1, 0x4D: 2, 0x47: 8, 0x80: 1, 0x95: 8, 0x8A: 1, 0x8B: 4,
    0x82: 1, 0x83: 2, 0x84: 4, 0x58: 4, 0x8C: 1, 0x8D: 8, 0x42: 4, 0x43: 1, 0x8E: 8, 0x96: 8, 0x54: 4, 0x55: 1,
}
# Strings: (width of the length, its format, how the value is kept; "" = not kept).
_STRINGS = {
    0x58: (4, "<I", "utf8"), 0x8C: (1, "<B", "utf8"), 0x8D: (8, "<Q", "utf8"),
    0x42: (4, "<I", "latin1"), 0x43: (1, "<B", "latin1"), 0x8E: (8, "<Q", "latin1"), 0x96: (8, "<Q", ""),
    0x54: (4, "<i", "latin1"), 0x55: (1, "<B", "latin1"),
}
# Plain values and the width of their argument.
_PLAIN = {0x4E: 0, 0x88: 0, 0x89: 0, 0x7D: 0, 0x5D: 0, 0x8F: 0, 0x97: 0, 0x4A: 4, 0x4B: 1, 0x4D: 2, 0x47: 8}
_LINES = {0x63, 0x69, 0x70, 0x67, 0x53, 0x56, 0x50, 0x49, 0x4C, 0x46}


# ----------------------------------------------------------------------------- judging a file


@dataclass
class _Verdict:
    denied: dict[str, None] = field(default_factory=dict)
    refusals: dict[str, None] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def take(self, w: _Walk, where: str) -> None:
        self.denied.update(w.denied)
        self.refusals.update({f"{where}: {r}" if where else r: None for r in w.refusals})
        if w.unjudged:
            self.broken.append(f"{where + ': ' if where else ''}too large to judge ({w.unjudged})")
        elif w.error:
            self.broken.append(f"{where + ': ' if where else ''}{w.error}")


def _walk_stream(r: _Reader, rules: _Rules, budget: _Budget, verdict: _Verdict, where: str, *, count: int | None = None) -> list[_Walk]:
    """The pickles of one stream back to back: `count` of them, or as many as follow one another."""
    walks: list[_Walk] = []
    while True:
        w = _walk(r, rules, budget)
        if walks and not w.is_pickle and count is None:
            verdict.warnings.append(f"{where or 'the file'}: {r.end - w.start} bytes after the pickle's STOP are not a pickle (loaders ignore them)")
            break
        walks.append(w)
        verdict.take(w, where)
        if not w.complete or (count is not None and len(walks) >= count):
            break
        if r.at_end() or len(walks) >= MAX_PICKLES:
            break
    if count is not None and len(walks) < count and all(x.complete for x in walks):
        verdict.broken.append(f"{where + ': ' if where else ''}the file ends after {len(walks)} of its {count} pickles")
    return walks


def _judge(path: str | os.PathLike, found: Found, torchscript: bool) -> _Verdict:
    verdict = _Verdict()
    budget = _Budget()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if found.kind == "pickle":
            _walk_stream(_Reader(f, 0, size), _Rules(), budget, verdict, "")
        elif found.kind == "torch-legacy":
            r = _Reader(f, 0, size)
            for i in range(LEGACY_PICKLES):  # the storages that follow are raw bytes: never read
                if r.at_end():
                    verdict.broken.append(f"the file ends after {i} of the {LEGACY_PICKLES} pickles of the legacy format")
                    break
                w = _walk(r, _Rules(persistent="legacy" if i == 3 else None), budget)
                verdict.take(w, "")
                if not w.complete:
                    break
        elif found.kind == "numpy-pickle":
            parsed = _npy_header(f, 0)
            start = parsed[1] if parsed else size
            _walk_stream(_Reader(f, start, size), _Rules(), budget, verdict, "", count=1)
        elif found.kind in ("torch-zip", "torchscript", "zip"):
            _judge_zip(f, size, found, torchscript, budget, verdict)
    return verdict


def _judge_zip(f, size: int, found: Found, torchscript: bool, budget: _Budget, verdict: _Verdict) -> None:
    import zipfile

    try:
        zf, infos = _open_zip(f, size)
    except _Unjudgeable as exc:
        verdict.broken.append(f"the zip cannot be judged: {exc}")
        return
    dup = _duplicate([i.filename for i in infos if i.filename in found.members])
    if dup is not None:
        verdict.refusals[f"two members named {dup!r}, and zip readers disagree on which one is loaded"] = None
    torch_like = found.kind in ("torch-zip", "torchscript")
    rules = _Rules(persistent="zip" if torch_like else None, torchscript=torchscript)
    wanted = [i for i in infos if i.filename in found.members]
    if len(wanted) > MAX_PICKLE_MEMBERS:
        verdict.broken.append(f"more than {MAX_PICKLE_MEMBERS} pickle members")
        return
    _prefix, records = _torch_records(infos)
    main = records.get("data.pkl")
    for info in wanted:
        where = info.filename
        try:
            if info.filename.endswith(".npy"):
                with zf.open(info) as m:
                    parsed = _npy_header(m, None)
                    start = parsed[1] if parsed else info.file_size
                    r = _Reader(m, start, info.file_size, seekable=False, budget=budget.inflate)
                    _walk_stream(r, rules, budget, verdict, where, count=1)
                continue
            if info.compress_type == zipfile.ZIP_STORED:
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise _Bad("its local header is missing")
                n, m = struct.unpack_from("<HH", local, 26)
                start = info.header_offset + 30 + n + m
                r = _Reader(f, start, start + info.compress_size)
                walks = _walk_stream(r, rules, budget, verdict, where, count=1)
            else:
                with zf.open(info) as stream:
                    r = _Reader(stream, 0, info.file_size, seekable=False, budget=budget.inflate)
                    walks = _walk_stream(r, rules, budget, verdict, where, count=1)
        except _Unjudgeable as exc:
            verdict.broken.append(f"{where}: too large to judge ({exc})")
            continue
        except Exception as exc:  # zipfile, zlib and lzma raise assorted errors on hostile members
            verdict.broken.append(f"{where}: cannot be read ({type(exc).__name__}: {exc})")
            continue
        if info.filename == main and walks and not walks[0].is_pickle:
            verdict.invalid.append(f"{where} is not a pickle ({walks[0].error}), so torch.load cannot read this checkpoint")
            verdict.broken = [b for b in verdict.broken if not b.startswith(f"{where}: ")]


# ----------------------------------------------------------------------------- findings


def refuse(name: str, found: Found | None = None) -> Problem:
    what = found.label if found is not None else "a pickle file"
    return P.error(
        name, P.UNSAFE_PICKLE,
        f"{name} is {what}, which can run code when loaded; {ACCEPT_ON_LANE} "
        "(it is then checked against what a state dict may hold)",
    )


def pickle_policy(path: str | os.PathLike, name: str, allow_pickle: bool | str) -> list[Problem]:
    """The pickle findings for one file, judged by its content: [] when it holds no pickle."""
    try:
        found = classify(path)
    except OSError as exc:
        return [P.error(name, P.UNREADABLE, f"{name}: cannot read ({exc.strerror})")]
    return judge(path, name, found, allow_pickle)


def judge(path: str | os.PathLike, name: str, found: Found, allow_pickle: bool | str) -> list[Problem]:
    """Refuse, or walk and judge, a file `classify` found to hold pickles."""
    if not found.pickled:
        return []
    if not allow_pickle:
        return [refuse(name, found)]
    torchscript = allow_pickle == "torchscript"
    if found.kind == "torch-tar":
        return [P.error(name, P.DANGEROUS_PICKLE, f"{name} is {found.label}: its pickles are interleaved with raw storage "
                        "data and are not judged here; load it once with a trusted torch and torch.save it again")]
    if found.kind == "torchscript" and not torchscript:
        return [P.error(name, P.DANGEROUS_PICKLE, f"{name} is {found.label}: torch.jit.load compiles and runs the program "
                        f"it carries, which is more than weights and is not judged here; {TORCHSCRIPT_ON_LANE}")]
    try:
        verdict = _judge(path, found, torchscript)
    except OSError as exc:
        return [P.error(name, P.UNREADABLE, f"{name}: cannot read ({exc.strerror})")]
    out: list[Problem] = []
    reasons = []
    if verdict.denied:
        shown = list(verdict.denied)
        more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
        reasons.append(f"imports {', '.join(shown[:8])}{more}, which a state dict never needs (tensors, storages, "
                       "dtypes, OrderedDict and NumPy arrays are what it may hold)")
    if verdict.refusals:
        reasons.append("holds " + "; ".join(list(verdict.refusals)[:4]))
    if verdict.broken:
        reasons.append("does not parse to its end (" + "; ".join(verdict.broken[:3]) + "), so it cannot be shown to be safe")
    if reasons:
        out.append(P.error(name, P.DANGEROUS_PICKLE, f"{name} is {found.label} that " + "; it ".join(reasons) + "; refusing it"))
    for why in verdict.invalid:
        out.append(P.error(name, P.ARCHIVE_INVALID, f"{name} is {found.label}, but {why}"))
    for why in verdict.warnings:
        out.append(P.warning(name, P.TRAILING_DATA, f"{name}: {why}"))
    if found.kind == "torchscript" and not reasons:
        out.append(P.warning(name, P.TORCHSCRIPT, f"{name} is {found.label}: its pickles hold only weights and TorchScript "
                             "classes, but the program torch.jit.load runs is not judged here; pin its sha256"))
    return out


def scan_pickle(path: str | os.PathLike, *, name: str | None = None) -> list[Problem]:
    """Findings for one file that pickles are allowed for ([] when it holds no pickle)."""
    return pickle_policy(path, name or Path(path).name, True)


def check_by_content(path: str | os.PathLike, name: str, allow_pickle: bool | str) -> list[Problem]:
    """A file whose name promises no format: checked as what its bytes are."""
    try:
        found = classify(path)
    except OSError as exc:
        return [P.error(name, P.UNREADABLE, f"{name}: cannot read ({exc.strerror})")]
    if found.kind == "safetensors":
        from .safetensors import check_safetensors

        return list(check_safetensors(path, name=name).problems)
    if found.kind == "gguf":
        from .gguf import check_gguf

        return list(check_gguf(path, name=name).problems)
    if found.kind == "pickle" and not found.declared and not is_pickle_name(name):
        # Binary data (a compressed blob, an ONNX graph) often reads as a few protocol-0
        # opcodes that reach an import before failing. A file whose name promises no pickle,
        # that neither declares itself one (PROTO) nor parses to STOP, is loaded by its own
        # reader, and pickle.load would stop at its first bad byte: data, not a refusal.
        return []
    return judge(path, name, found, allow_pickle)
