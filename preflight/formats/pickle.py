"""Pickle-bearing weights: what a file holds, judged by what its loaders read, never its name.

`classify` says what a file is (a pickle, a PyTorch checkpoint in the zip, legacy or tar
format, a TorchScript archive, a NumPy array, safetensors, GGUF/GGML, another archive or
plain data) and plans every pickle stream a loader would unpickle from it, found the way
that loader finds it:

- a zip (its first bytes `PK\\x03\\x04`, which is how torch.load tells): the records
  torch's zip reader returns (`archive.py`: the prefix taken from the first entry's folder,
  names matched case-insensitively, of several matching entries the one miniz returns;
  `data.pkl`, `constants.pkl` and every `*.pkl`/`*.debug_pkl` entry), and what Python's
  zipfile lists (np.load reads any member that begins with the `.npy` magic; a member
  named like a pickle file, or itself a zip, is judged as a file of its own, so a checkpoint
  inside an archive is judged by torch's rules too). Two entries torch would take for one record
  are refused, naming the one it reads;
- anything else: torch.load first tries the legacy tar format (`storages`, `tensors`,
  `pickle` members, every one unpickled with full imports: refused, not judged), and
  when tarfile cannot read it, unpickles the file from its first byte (the legacy stream:
  five pickles, the first a magic number read with plain `pickle.load`). So a file that
  is also GGUF, safetensors, .npy or a tar, whose first bytes import something when read
  as a pickle, is a pickle (a polyglot), whatever else it is.

A stream that neither declares itself a pickle (PROTO) nor reaches STOP or an import
before it fails cannot run anything under `pickle.load`: such bytes are data.

A pickle is refused unless the lane allows pickles. An allowed pickle must still have
the shape of a state dict: its opcodes are walked without being run (`pickle_walk.py`),
and every global it imports must be on the allowlist of what
`torch.load(weights_only=True)` accepts plus the NumPy array reconstructors; calls,
attribute writes and persistent ids must have torch's shapes; extension codes, globals
named by computed strings and pickles that do not parse to their end are refused. A
TorchScript archive is a program as well as weights (torch.jit.load compiles and runs its
code/), so `allow_pickle: true` does not accept it; `allow_pickle: torchscript` does, after
the same walk of its pickles.

Reads are bounded whatever the input: only pickle streams and member headers are read
(never a torch zip's storages, never what follows a legacy checkpoint's pickles), with caps
on opcodes, memo, stack, archive members (all archives of a file together), nesting,
streams and inflated bytes; a bound that is reached makes the file unjudgeable (refused).
"""

from __future__ import annotations

import os
import struct
from dataclasses import field
from pathlib import Path

from .. import problems as P
from ..problems import Problem
from . import archive as A
from .pickle_walk import MAX_INFLATE, MAX_MEMO, MAX_OPS, Budget, Reader, Rules, Unjudgeable, Walk, walk
from ..record import record

__all__ = ["MAX_INFLATE", "MAX_MEMO", "MAX_OPS", "Found", "classify", "judge", "pickle_policy", "scan_pickle", "check_by_content"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ACCEPT_ON_LANE = "set `allow_pickle: true` on the lane to accept it"  # `inspect` names its flag instead
TORCHSCRIPT_ON_LANE = "set `allow_pickle: torchscript` on the lane to accept TorchScript"

MAX_PICKLES = 16              # pickles read back to back from one stream
MAX_STREAMS = 4096            # pickle streams judged in one file
MAX_NESTING = 3               # archives inside archives
MAX_NPY_HEADER = 1 << 16

TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, storage keys; storages follow
GGML_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt", b"algg": "ggla"}
TORCH_TAR_NAMES = {"sys_info", "pickle", "storages", "tensors"}  # torch.serialization's legacy_load
TORCH_RECORDS = ("data.pkl", "constants.pkl")
TORCH_TAR_LABEL = "a PyTorch checkpoint in the tar format of torch before 0.4"


def is_pickle_name(name: str) -> bool:
    """Names that loaders open with pickle (torch.load, pickle.load); content decides the rest."""
    return name.lower().endswith(PICKLE_SUFFIXES)


def _pickle_record(name: bytes) -> bool:
    low = A.lower(name)
    return low.endswith((b".pkl", b".debug_pkl")) or low.rsplit(b"/", 1)[-1] == b"pickle"


# ----------------------------------------------------------------------------- what a file is


@record(frozen=True)
class Stream:
    """One pickle stream a loader reads from the file.

    how: "pickle" (pickles back to back, as pickle.load and torch's legacy fallback read),
    "legacy" (torch's five), "main" (a torch zip's data.pkl: storages allowed, must be a
    pickle), "torch" (another pickle of a torch zip), "member" (one pickle), "npy" (an .npy
    header, then one pickle)."""

    where: str
    span: A.Span
    how: str


@record(frozen=True)
class Found:
    """What a file holds. `pickled`: a loader unpickles something in it."""

    kind: str  # pickle torch-zip torchscript torch-legacy torch-tar numpy numpy-pickle zip tar gguf ggml safetensors data empty
    label: str
    pickled: bool = False
    members: tuple[str, ...] = ()  # where the pickle streams are, inside the file
    declared: bool = True  # False: opcodes that happen to run into an import or a call, with no PROTO and no STOP
    streams: tuple[Stream, ...] = ()
    refusals: tuple[str, ...] = ()  # refused whatever the streams hold (entries torch confuses, a nested legacy tar)
    unjudged: tuple[str, ...] = ()  # what could not be read within the bounds
    programs: tuple[str, ...] = ()  # TorchScript archives inside an archive
    records: tuple[tuple[str, str], ...] = ()  # (record, member): what torch's zip reader returns for data.pkl, constants.pkl


@record
class _Plan:
    streams: list[Stream] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)
    programs: list[str] = field(default_factory=list)
    records: list[tuple[str, str]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    entries: int = 0
    budget: Budget = field(default_factory=Budget)

    def add(self, where: str, span: A.Span, how: str) -> None:
        if span.start in self.seen:
            return
        if len(self.streams) >= MAX_STREAMS:
            if not self.unjudged or "pickle streams" not in self.unjudged[-1]:
                self.unjudged.append(f"more than {MAX_STREAMS} pickle streams")
            return
        self.seen.add(span.start)
        self.streams.append(Stream(where, span, how))

    def count(self, n: int) -> None:
        self.entries += n
        if self.entries > A.MAX_ZIP_MEMBERS:
            raise A.ArchiveTooLarge(f"more than {A.MAX_ZIP_MEMBERS} archive members in all")


def classify(path: str | os.PathLike) -> Found:
    """What the file holds, and the pickle streams its loaders read. Raises OSError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        plan = _Plan()
        win = A.Window(f, 0, size)
        head = win.read(4096)
        kind, label, declared = _look(f, win, head, size, "", 0, plan)
    pickled = bool(plan.streams or plan.refusals or plan.unjudged or plan.programs) or kind in ("torch-tar", "torchscript")
    members = tuple(s.where for s in plan.streams if s.where)
    if kind in ("zip", "tar") and label in (None, "a tar archive"):
        shown = ", ".join(members[:4]) + (f" and {len(members) - 4} more" if len(members) > 4 else "")
        label = f"a {kind} archive holding pickles ({shown})" if members else (
            f"a {kind} archive that cannot be judged" if pickled else f"a {kind} archive (no pickles in it)")
    return Found(kind, label, pickled, members, declared, tuple(plan.streams), tuple(plan.refusals),
                 tuple(plan.unjudged), tuple(plan.programs), tuple(plan.records))


def _within(where: str, name: str) -> str:
    return f"{where} > {name}" if where else name


def _look(f, win: A.Window, head: bytes, size: int, where: str, depth: int, plan: _Plan) -> tuple[str, str | None, bool]:
    """Plan the streams of the file (or stored member) `win`; returns its kind and label."""
    if not head:
        return "empty", "an empty file", True
    if head[:4] == b"PK\x03\x04":
        return _look_zip(f, win, size, where, depth, plan)
    whole = A.Span(win.start, size, size)
    shape = _magic(win, head, size)
    tar = _look_tar(f, win, size, where, depth, plan)
    if shape is None and tar is None:
        if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
            if _starts_legacy(head):
                plan.add(where, whole, "legacy")
                return "torch-legacy", "a PyTorch checkpoint in the legacy format (torch.save without zip)", True
            plan.add(where, whole, "pickle")
            return "pickle", f"a pickle (protocol {head[1]})", True
        w = walk(Reader(win, 0, size), Rules(), Budget())
        if w.is_pickle:
            plan.add(where, whole, "pickle")
            return "pickle", f"a pickle (protocol {w.proto})", w.began or w.complete
        return "data", "plain data (neither a pickle nor a known weights format)", True
    kind, label = shape or tar
    if kind == "numpy-pickle":
        plan.add(where, whole, "npy")
    # torch.load reads anything that is not a zip from its first byte once tarfile gives up
    # on it: bytes that import something there make the file a pickle, whatever else it is.
    w = walk(Reader(win, 0, size), Rules(), Budget())
    if w.imports:
        plan.add(where, whole, "pickle")
        return "pickle", f"{label}, whose first bytes are also a pickle that torch.load would run", True
    return kind, label, True


def _magic(win: A.Window, head: bytes, size: int) -> tuple[str, str] | None:
    if head[:4] == b"GGUF":
        return "gguf", "a GGUF file"
    if head[:4] in GGML_MAGICS:
        return "ggml", f"a GGML file (the format llama.cpp used before GGUF, magic '{GGML_MAGICS[head[:4]]}')"
    if head[:6] == b"\x93NUMPY":
        if _npy_holds_objects(win, 0):
            return "numpy-pickle", "a NumPy array of Python objects (.npy; its data is a pickle)"
        return "numpy", "a NumPy array (.npy)"
    if _looks_safetensors(head, size):
        return "safetensors", "a safetensors file"
    return None


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
    """A tar header block by its checksum (tarfile's test), for bytes that cannot be opened as a file."""
    if len(head) < 512 or head[:512] == bytes(512):
        return False
    field_ = head[148:156].split(b"\x00", 1)[0].strip()
    try:
        want = int(field_ or b"0", 8)
    except ValueError:
        return False
    block = head[:148] + b" " * 8 + head[156:512]
    return want in (sum(block), sum(struct.unpack("148b8x356b", head[:512])) + 256)


def _look_tar(f, win: A.Window, size: int, where: str, depth: int, plan: _Plan) -> tuple[str, str] | None:
    """A tar as torch's legacy loader (tarfile) reads it; None when tarfile cannot read it."""
    try:
        members = A.tar_members(win, size)
        plan.count(len(members))
    except A.ArchiveUnreadable:
        return None
    except A.ArchiveTooLarge as exc:
        plan.unjudged.append(f"{_within(where, 'the tar')}: {exc}")
        return "tar", "a tar archive too large to judge"
    if not members:
        return None  # tarfile reads bytes that begin with a zero block as an empty tar; nothing in it
    if TORCH_TAR_NAMES & {m.name for m in members}:
        if depth:
            plan.refusals.append(f"{where} is {TORCH_TAR_LABEL}, whose pickles torch unpickles with any import; "
                                 "they are not judged here")
        return "torch-tar", TORCH_TAR_LABEL
    for m in members:
        inside = is_pickle_name(m.name) or m.head[:4] == b"PK\x03\x04"
        if m.is_file and (inside or m.head[:6] == b"\x93NUMPY"):
            _look_member(f, A.Span(win.start + m.span.start, m.span.comp_size, m.span.size), _within(where, m.name),
                         inside, depth, plan)
    return "tar", "a tar archive"


def _look_zip(f, win: A.Window, size: int, where: str, depth: int, plan: _Plan) -> tuple[str, str | None, bool]:
    """A zip as torch's reader (miniz) and Python's zipfile (np.load) each read it."""
    miniz = zipv = None
    why = ""
    try:
        try:
            miniz, directory = A.miniz_directory(win, size)
            if A.same_for_zipfile(win, size, miniz, directory):
                zipv = miniz
        except A.ArchiveUnreadable as exc:
            why = str(exc)
        if zipv is None:
            try:
                A.zip_bounds(win, size)
                zipv = A.zipfile_directory(win, size)
            except A.ArchiveUnreadable as exc:
                why = why or str(exc)
        if miniz is None and zipv is None:
            plan.unjudged.append(f"{_within(where, 'the zip')}: its member directory does not read ({why})")
            return "zip", f"a zip archive that cannot be judged: its member directory does not read ({why})", True
        plan.count(max(len(miniz or ()), len(zipv or ())))
    except A.ArchiveTooLarge as exc:
        plan.unjudged.append(f"{_within(where, 'the zip')}: {exc}")
        return "zip", f"a zip archive that cannot be judged: {exc}", True

    def absolute(span: A.Span) -> A.Span:
        return A.Span(win.start + span.start, span.comp_size, span.size, span.method)

    def span_of(e: A.Entry) -> A.Span | None:
        try:
            return absolute(A.local_span(win, size, e))
        except A.ArchiveUnreadable as exc:
            plan.unjudged.append(_within(where, str(exc)))
            return None

    kind, label = "zip", None
    torch_like = False
    if miniz:
        prefix = A.torch_prefix(miniz)
        found = {r: A.lookup(miniz, A.record_key(prefix, r)) if prefix is not None else [] for r in TORCH_RECORDS}
        for member, matches in found.items():
            if len(matches) > 1:
                plan.refusals.append(_within(where, _confusion(miniz, prefix, member, matches)))
            if matches and not depth:
                pick = A.miniz_pick(miniz, A.record_key(prefix, member))
                plan.records.append((member, pick.shown if pick is not None else "?"))
        data, const = found["data.pkl"], found["constants.pkl"]
        main = {e.index for e in data}
        if const:
            kind = "torchscript"
            code_dir = A.lower(prefix) + b"/code/"
            code = sum(1 for e in miniz if A.lower(e.name).startswith(code_dir) and e.name.endswith(b".py"))
            label = f"a TorchScript archive ({code} code file{'s' if code != 1 else ''} under code/)"
            if depth:
                plan.programs.append(where)
        elif data:
            kind = "torch-zip"
            canonical = A.record_key(prefix, "data.pkl")
            read = A.miniz_pick(miniz, canonical) or data[0]
            label = ("a PyTorch checkpoint (zip, data.pkl)" if read.name == canonical
                     else f"a PyTorch checkpoint (zip; torch reads {read.shown!r} as its data.pkl)")
        torch_like = kind != "zip"
        for e in miniz:
            if _pickle_record(e.name) and (torch_like or not is_pickle_name(e.shown)):
                span = span_of(e)
                if span is not None:
                    plan.add(_within(where, e.shown), span, "main" if e.index in main else "torch" if torch_like else "member")
    if zipv is not None and zipv is not miniz:
        counts: dict[bytes, int] = {}
        for e in zipv:
            if _pickle_record(e.name) or is_pickle_name(e.shown):
                counts[e.name] = counts.get(e.name, 0) + 1
        for name, n in counts.items():
            shown = name.decode("utf-8", "replace")
            if n > 1 and not any(repr(shown) in r for r in plan.refusals):
                plan.refusals.append(_within(where, f"two members named {shown!r}, and zip readers disagree on which one is loaded"))
    for e in zipv if zipv is not None else miniz:
        if e.is_dir():
            continue
        named = is_pickle_name(e.shown) or (not torch_like and _pickle_record(e.name))
        if named:
            span = span_of(e)
            if span is not None and span.start not in plan.seen:
                _look_member(f, span, _within(where, e.shown), True, depth, plan)
            continue
        try:
            rel, head = A.peek(win, size, e, 6)
        except A.ArchiveUnreadable:
            continue  # neither loader reads a member whose local header is not there
        if head[:6] == b"\x93NUMPY" or head[:4] == b"PK\x03\x04" or (rel.method not in (A.STORED, A.DEFLATED) and rel.size):
            _look_member(f, absolute(rel), _within(where, e.shown), head[:4] == b"PK\x03\x04", depth, plan)
    return kind, label, True


def _zipfile_view(win: A.Window, size: int) -> list[A.Entry]:
    A.zip_bounds(win, size)
    return A.zipfile_directory(win, size)


def _confusion(entries: list[A.Entry], prefix: bytes, record: str, matches: list[A.Entry]) -> str:
    pick = A.miniz_pick(entries, A.record_key(prefix, record))
    reads = f"it reads {pick.shown!r}" if pick is not None else "which one it reads depends on its sort of the names"
    names = [m.shown for m in matches]
    if len(set(names)) == 1:
        ordinal = ""
        if pick is not None:
            nth = [m.index for m in matches].index(pick.index) + 1
            ordinal = f" (torch's zip reader reads number {nth} of {len(matches)})"
        return f"two members named {names[0]!r}, and zip readers disagree on which one is loaded{ordinal}"
    shown = ", ".join(repr(n) for n in names[:4])
    return (f"{len(matches)} members that torch's zip reader takes for {record} ({shown}: it matches names "
            f"case-insensitively, and {reads}), and other zip readers may load another")


def _look_member(f, span: A.Span, where: str, named: bool, depth: int, plan: _Plan) -> None:
    """One archive member: an .npy array of objects (np.load reads members by content), or,
    when named like a pickle file or itself a zip (`named`), a file of its own."""
    if span.method not in (A.STORED, A.DEFLATED):
        plan.unjudged.append(f"{where}: compressed with method {span.method}, which is not read here")
        return
    head = A.head_of(f, span, 4096 if named else 6)
    if head[:6] == b"\x93NUMPY":
        if _member_npy_objects(f, span):
            plan.add(where, span, "npy")
        return
    if not named or not head:
        return
    if depth + 1 > MAX_NESTING:
        plan.unjudged.append(f"{where}: nested more than {MAX_NESTING} archives deep")
        return
    if span.method == A.STORED:
        _look(f, A.Window(f, span.start, span.size), head, span.size, where, depth + 1, plan)
        return
    if head[:4] == b"PK\x03\x04" or _is_tar_header(head):
        plan.unjudged.append(f"{where}: a compressed archive inside an archive, which is not read here")
        return
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        plan.add(where, span, "legacy" if _starts_legacy(head) else "pickle")
        return
    try:
        w = walk(Reader(A.Inflated(f, span, MAX_INFLATE), 0, span.size, seekable=False, budget=plan.budget.inflate), Rules(), Budget())
    except Unjudgeable as exc:
        plan.unjudged.append(f"{where}: {exc}")
        return
    except Exception as exc:  # zlib's errors on a hostile deflate stream
        plan.unjudged.append(f"{where}: cannot be inflated ({type(exc).__name__}: {exc})")
        return
    if w.is_pickle:
        plan.add(where, span, "pickle")


def _member_npy_objects(f, span: A.Span) -> bool:
    try:
        if span.method == A.STORED:
            return _npy_holds_objects(A.Window(f, span.start, span.size), 0)
        return _npy_holds_objects(A.Inflated(f, span, MAX_NPY_HEADER + 16), None)
    except Exception:  # zlib and file read errors on hostile members
        return True


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


# ----------------------------------------------------------------------------- judging a file


@record
class _Verdict:
    denied: dict[str, None] = field(default_factory=dict)
    refusals: dict[str, None] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def take(self, w: Walk, where: str) -> None:
        self.denied.update({f"{d} (in {where})" if where else d: None for d in w.denied})
        self.refusals.update({f"{where}: {r}" if where else r: None for r in w.refusals})
        if w.unjudged:
            self.broken.append(f"{where + ': ' if where else ''}too large to judge ({w.unjudged})")
        elif w.error:
            self.broken.append(f"{where + ': ' if where else ''}{w.error}")


def _walk_stream(r: Reader, rules: Rules, budget: Budget, verdict: _Verdict, where: str, *, count: int | None = None) -> list[Walk]:
    """The pickles of one stream back to back: `count` of them, or as many as follow one another."""
    walks: list[Walk] = []
    while True:
        w = walk(r, rules, budget)
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


def _reader(f, span: A.Span, budget: Budget, skip: int = 0) -> Reader:
    if span.method == A.STORED:
        return Reader(f, span.start + skip, span.start + span.size)
    stream = A.Inflated(f, span, MAX_INFLATE)
    if skip:
        stream.read(skip)
    return Reader(stream, skip, span.size, seekable=False, budget=budget.inflate)


def _judge(path: str | os.PathLike, found: Found, torchscript: bool) -> _Verdict:
    verdict = _Verdict()
    budget = Budget()
    verdict.refusals.update(dict.fromkeys(found.refusals))
    verdict.broken.extend(f"{u}, so it cannot be judged" for u in found.unjudged)
    if found.programs and not torchscript:
        for where in found.programs:
            verdict.refusals[f"{where}: a TorchScript archive, whose program torch.jit.load runs ({TORCHSCRIPT_ON_LANE})"] = None
    with open(path, "rb") as f:
        for s in found.streams:
            try:
                _judge_stream(f, s, torchscript, budget, verdict)
            except Unjudgeable as exc:
                verdict.broken.append(f"{_shown(s.where)}too large to judge ({exc})")
            except Exception as exc:  # zlib and file read errors on hostile members
                verdict.broken.append(f"{_shown(s.where)}cannot be read ({type(exc).__name__}: {exc})")
    return verdict


def _shown(where: str) -> str:
    return f"{where}: " if where else ""


def _judge_stream(f, s: Stream, torchscript: bool, budget: Budget, verdict: _Verdict) -> None:
    if s.how == "pickle":
        _walk_stream(_reader(f, s.span, budget), Rules(torchscript=torchscript and bool(s.where)), budget, verdict, s.where)
    elif s.how == "legacy":
        r = _reader(f, s.span, budget)
        for i in range(LEGACY_PICKLES):  # the storages that follow are raw bytes: never read
            if r.at_end():
                verdict.broken.append(f"{_shown(s.where)}the file ends after {i} of the {LEGACY_PICKLES} pickles of the legacy format")
                break
            w = walk(r, Rules(persistent="legacy" if i == 3 else None), budget)
            verdict.take(w, s.where)
            if not w.complete:
                break
    elif s.how == "npy":
        if s.span.method == A.STORED:
            parsed = _npy_header(A.Window(f, s.span.start, s.span.size), 0)
            r = _reader(f, s.span, budget, parsed[1] if parsed else s.span.size)
        else:
            stream = A.Inflated(f, s.span, MAX_INFLATE)
            parsed = _npy_header(stream, None)
            start = parsed[1] if parsed else s.span.size
            r = Reader(stream, start, s.span.size, seekable=False, budget=budget.inflate)
        _walk_stream(r, Rules(), budget, verdict, s.where, count=1)
    else:
        torch_like = s.how in ("main", "torch")
        rules = Rules(persistent="zip" if torch_like else None, torchscript=torchscript)
        walks = _walk_stream(_reader(f, s.span, budget), rules, budget, verdict, s.where, count=1)
        if s.how == "main" and walks and not walks[0].is_pickle:
            verdict.invalid.append(f"{s.where} is not a pickle ({walks[0].error}), so torch.load cannot read this checkpoint")
            verdict.broken = [b for b in verdict.broken if not b.startswith(f"{s.where}: ")]


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
    if (found.kind == "torchscript" or found.programs) and not reasons:
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
