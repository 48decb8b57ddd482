"""The opcode walk: one pickle stream followed as the C unpickler reads it, running nothing.

`walk` reads a stream's opcodes from a `Reader` (a bounded window of a file, or an inflating
stream) and records what a load would do: every global it imports (and whether the rules
allow it), calls, writes into imported objects, persistent ids, and where and why it stops.
`Rules` say what one stream may hold: the allowlist of what `torch.load(weights_only=True)`
resolves plus NumPy's array reconstructors, torch storages as persistent ids in a
checkpoint's main pickle, TorchScript's own classes when they are allowed.

Work is bounded whatever the input: opcodes, memo entries, stack items and marks are
capped, strings longer than KEEP_STR are skipped rather than read, and inflated bytes
are counted against one budget per file.
"""

from __future__ import annotations

import re
import struct
from dataclasses import field

from ..record import record

MAX_OPS = 2_000_000           # opcodes per file (a state dict needs about 20 a tensor)
MAX_MEMO = 300_000            # memo entries per pickle (about 6 a tensor)
MAX_STACK = 1_000_000         # stack items, marks included
MAX_MARKS = 100_000
KEEP_STR = 256                # strings longer than this are not kept (a global's name never is)
KEEP_BUDGET = 8 << 20         # characters of strings kept per file
MAX_INFLATE = 64 << 20        # bytes inflated from compressed pickle members, per file
MAX_LINE = 16 << 20           # a protocol-0 text argument (STRING, UNICODE)
MAX_NAME_LINE = 64 << 10      # a module name, a number, a persistent id

_NUL = re.compile(rb"\x00")
_NOT_NUMBER = re.compile(rb"[^0-9A-Za-z+\-_. \t\r\x0b\x0c]")
_NOT_ASCII = re.compile(rb"[\x80-\xff]")


class Unjudgeable(Exception):
    """The input exceeds what is read to judge it, or is malformed past reading."""


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


@record
class Rules:
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


class Bad(Exception):
    """The stream is not a pickle from here on (the loader fails at this point too)."""


class Truncated(Bad):
    pass


class Reader:
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
                raise Unjudgeable(f"more than {MAX_INFLATE} bytes of compressed pickle")
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
                raise Truncated("the stream ends before its STOP opcode" if n == 1 else f"an argument of {n} bytes runs past the end")
        return self.buf

    def skip(self, n: int) -> None:
        have = len(self.buf) - self.pos
        if n <= have:
            self.pos += n
            return
        target = self.base + self.pos + n
        if target > self.end:
            raise Truncated(f"an argument of {n} bytes runs past the end")
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
                    raise Unjudgeable(f"more than {MAX_INFLATE} bytes of compressed pickle")
                self.inflate[0] -= step
            data = self.f.read(step)
            if not data:
                raise Truncated("an argument runs past the end")
            self.base += len(data)
            n -= len(data)

    def readline(self, keep: int = 4096, *, limit: int = MAX_LINE, bad: re.Pattern | None = None,
                 why: str = "", first: bytes = b"") -> bytes:
        """A newline-ended argument (without the newline); only its first `keep` bytes are kept.
        `line_len` and `line_last` are the whole line's length and last byte.

        The unpickler reads a whole line before it decodes it, but a line holding a byte that
        `bad` matches (or not starting with one of `first`) fails to decode whatever follows,
        so the walk stops there (Bad) without reading on; a line longer than `limit` is more
        than is read to judge it (Unjudgeable)."""
        out, total = b"", 0
        while True:
            i = self.buf.find(b"\n", self.pos)
            piece = self.buf[self.pos:i] if i >= 0 else self.buf[self.pos:]
            if first and not total and piece and piece[:1] not in first:
                raise Bad(why)
            if bad is not None and bad.search(piece):
                raise Bad(why)
            out += piece[: max(0, keep - len(out))]
            total += len(piece)
            if total > limit:
                raise Unjudgeable(f"a text argument longer than {limit} bytes")
            if piece:
                self.line_last = piece[-1:]
            if i >= 0:
                self.pos = i + 1
                self.line_len = total
                if not total:
                    self.line_last = b""
                if first and not total:
                    raise Bad(why)
                return out
            self.pos = len(self.buf)
            if not self._more(1):
                raise Truncated("a text argument has no newline before the end")


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


@record
class Budget:
    ops: int = 0
    kept: int = 0
    inflate: list[int] = field(default_factory=lambda: [MAX_INFLATE])


@record
class Walk:
    start: int
    end: int | None = None           # offset after STOP
    proto: int = 0
    called: bool = False             # reached an opcode that calls or writes into an imported object
    error: str | None = None         # why the walk stopped before STOP
    unjudged: str | None = None      # a bound was exceeded
    began: bool = False              # the first opcode is PROTO: a pickle by its own declaration
    imports: int = 0                 # imports of a module name an import could find (allowed or not)
    denied: dict[str, None] = field(default_factory=dict)
    refusals: dict[str, None] = field(default_factory=dict)

    @property
    def is_pickle(self) -> bool:
        return self.began or self.end is not None or self.called or self.unjudged is not None

    @property
    def complete(self) -> bool:
        return self.end is not None and self.unjudged is None


def _text(r: Reader, raw: bytes) -> str:
    """A GLOBAL or INST line as the unpickler decodes it (strict UTF-8: it fails otherwise)."""
    if r.line_len <= len(raw):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad("a GLOBAL argument that is not UTF-8") from None
    return raw.decode("utf-8", "replace")


def _memo_put(memo: dict, i: int, value: object) -> None:
    memo[i] = value
    if len(memo) > MAX_MEMO:
        raise Unjudgeable(f"more than {MAX_MEMO} memo entries")


def _memo_get(memo: dict, i: int) -> object:
    if i not in memo:
        raise Bad(f"memo {i} is read before it is written")
    return memo[i]


def walk(r: Reader, rules: Rules, budget: Budget) -> Walk:
    """Follow one pickle's opcodes as the C unpickler would, running nothing."""
    w = Walk(r.tell())
    try:
        _run(r, rules, budget, w)
    except Unjudgeable as exc:
        w.unjudged = str(exc)
    except Bad as exc:
        w.error = f"{exc} (byte {r.tell() - w.start})"
    except IndexError:
        w.error = f"stack underflow (byte {r.tell() - w.start})"
    except (OSError, EOFError, ValueError, OverflowError, MemoryError) as exc:  # zip/zlib/file read errors
        w.error = f"{type(exc).__name__}: {exc} (byte {r.tell() - w.start})"
    return w


def _run(r: Reader, rules: Rules, budget: Budget, w: Walk) -> None:  # noqa: C901 - one branch per opcode
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
        if not module or "\x00" in module:
            raise Bad("an import of an empty module name or one with a NUL byte, which fails")
        w.imports += 1
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
            raise Bad(f"{what} on a value that is not callable")
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
                    raise Unjudgeable(f"more than {MAX_OPS} opcodes in the file")
                if len(st) + saved > MAX_STACK:
                    raise Unjudgeable(f"more than {MAX_STACK} values on the stack")
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
                    raise Bad("a negative string length")
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
                    raise Unjudgeable(f"more than {MAX_MARKS} nested marks")
                marks.append(st)
                saved += len(st)
                st = []
            elif op in _PLAIN:  # NONE NEWTRUE NEWFALSE EMPTY_DICT EMPTY_LIST EMPTY_SET NEXT_BUFFER, BININT BININT1 BININT2 BINFLOAT
                pos += _PLAIN[op]
                st.append(None)
            elif op == 0x74:  # TUPLE
                if not marks:
                    raise Bad("TUPLE without a MARK")
                items, st = st, marks.pop()
                saved -= len(st)
                st.append(tuple(items) if len(items) <= 8 else None)
            elif op in (0x85, 0x86, 0x87):  # TUPLE1 TUPLE2 TUPLE3
                n = op - 0x84
                if len(st) < n:
                    raise Bad("stack underflow")
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
                    raise Bad("a MARK is missing")
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
                        raise Bad("a negative LONG4 length")
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
                    raise Bad(f"unsupported pickle protocol {p}")
                w.proto = p
                if r.base + pos - w.start == 2:
                    w.began = True
            elif op == 0x95:  # FRAME (a buffering hint)
                pos += 8
            elif op in _LINES:  # opcodes whose arguments are newline-ended lines
                r.pos = pos
                if op in (0x63, 0x69):  # GLOBAL INST
                    if op == 0x69 and not marks:
                        raise Bad("INST without a MARK")
                    module = _text(r, r.readline(KEEP_STR, limit=MAX_NAME_LINE, bad=_NUL, why="a module name with a NUL byte, which no import finds"))
                    name = _text(r, r.readline(KEEP_STR, limit=MAX_NAME_LINE))
                    g = make_global(module, name)
                    if op == 0x63:
                        st.append(g)
                    else:
                        items, st = st, marks.pop()
                        saved -= len(st)
                        st.append(call(g, tuple(items) if len(items) <= 8 else None, "INST"))
                elif op in (0x70, 0x67):  # PUT GET
                    try:
                        i = int(r.readline(64, limit=MAX_NAME_LINE, bad=_NOT_NUMBER, why="a memo index that is not a number"))
                    except ValueError:
                        raise Bad("a memo index that is not a number") from None
                    if op == 0x70:
                        if i < 0:
                            raise Bad("a negative memo index")
                        _memo_put(memo, i, st[-1])
                    else:
                        st.append(_memo_get(memo, i))
                elif op == 0x53:  # STRING
                    line = r.readline(KEEP_STR + 2, first=b"'\"", why="a STRING argument that is not quoted")
                    if r.line_len < 2 or line[:1] != r.line_last or line[:1] not in (b"'", b'"'):
                        raise Bad("a STRING argument that is not quoted")
                    st.append(keep(line[1:-1], "escape") if r.line_len <= KEEP_STR + 2 else None)
                elif op == 0x56:  # UNICODE
                    line = r.readline(KEEP_STR)
                    st.append(keep(line, "raw") if r.line_len <= KEEP_STR else None)
                elif op == 0x50:  # PERSID
                    r.readline(KEEP_STR, limit=MAX_NAME_LINE, bad=_NOT_ASCII, why="a text persistent id that is not ASCII")
                    w.called = True
                    w.refusals["a text persistent id (PERSID), which torch never writes"] = None
                    st.append(_STORAGE)
                else:  # INT LONG FLOAT
                    r.readline(64, limit=MAX_NAME_LINE, bad=_NOT_NUMBER, why="a number argument that is not a number")
                    st.append(None)
                buf, pos = r.buf, r.pos
                blen = len(buf)
            elif op in (0x6C, 0x64, 0x91):  # LIST DICT FROZENSET
                if not marks:
                    raise Bad("a collection without a MARK")
                st = marks.pop()
                saved -= len(st)
                st.append(None)
            elif op == 0x6F:  # OBJ
                if not marks:
                    raise Bad("OBJ without a MARK")
                items, st = st, marks.pop()
                saved -= len(st)
                if not items:
                    raise Bad("OBJ without a class")
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
                    raise Bad("stack underflow")
            elif op == 0x31:  # POP_MARK
                if not marks:
                    raise Bad("POP_MARK without a MARK")
                st = marks.pop()
                saved -= len(st)
            elif op == 0x32:  # DUP
                st.append(st[-1])
            elif op == 0x98:  # READONLY_BUFFER
                st[-1]
            else:
                pos -= 1
                raise Bad(f"unknown opcode 0x{op:02x}")
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
