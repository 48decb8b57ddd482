"""One large file as byte ranges over several connections at once, resumable across processes.

Hosts cap each TCP connection (CDNs, object stores, registries: tens of MB/s), so a
single stream of a 40 GB file runs at one connection's cap however fast the link is.
Here the file is cut into pieces (PIECE, smaller for files that would give fewer
pieces than connections); each connection takes the next missing piece, asks for it
with `Range` (and `If-Range`, the server's validator), and writes what arrives at
its offset in the staging file with pwrite. Connections come from the keep-alive
pool (sources/pool.py), so a piece costs a request, not a connection.

Hashing. sha256 (and the git blob sha1) is sequential. The coordinating thread reads
the contiguous prefix back from the file as it grows and hands it to a hash thread
(integrity.HashBehind), so the read and the hash run on two cores: bytes that arrived
in order are read back from the page cache moments after they were written; bytes
that arrived ahead of the prefix wait in the page cache until the prefix reaches
them (at most about one piece per connection ahead). Reading back costs one memory
copy per byte, ~15% of sha256's time, off the hash's core, and keeps the receiving
threads free to drain their sockets. Behind the read-back prefix, pages are sent to
disk and dropped from the page cache (as integrity.WriteBehind does).

The chunk map. `<staging file>.map` records which byte ranges of the staging file
hold the server's bytes, as JSON: {"version": 1, "size": N, "validator": "\"etag\"",
"done": [[start, end), ...]}. It is written (to a temporary name, then renamed over)
before the first byte lands out of order, then about every CHECKPOINT seconds and
when an attempt ends, each time after an fdatasync of the staging file, so a range
it lists is on disk. A rerun (after SIGKILL, in another process) asks only for what
it does not list, with `If-Range: <validator>`: a file that changed on the server
answers 200, and the download starts over from zero. The map is removed once every
byte is there; a staging file without a map is a plain prefix (the sequential
path's) and resumes as one. A map that cannot be read, or that describes another
size, is not trusted: the staging file starts over.

Fallback. A server that answers a range request with 200 (no Range support, or the
file changed: If-Range), or whose Content-Range disagrees with the expected size or
the range asked for, gets one sequential stream from byte 0 (http.fetch_sequential),
noted once per host.
"""

from __future__ import annotations

import bisect
import errno
import http.client
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import FetchError, IntegrityError, StalledError
from ..integrity import HashBehind, Hasher
from ..volume import StagedFile, as_staged
from . import http as _http
from . import zerocopy
from .http import Cancel, Fetched, Opened, Timeouts, check_free, release, request
from .pool import POOL, Budget

MiB = 2**20
PIECE = 16 * MiB  # what one request asks for, at most
MIN_PIECE = 4 * MiB  # at least (a request costs a round trip or a first-byte latency)
SPLIT_FROM = 16 * MiB  # smaller files are one stream
HASH_STEP = MiB  # read back and hashed at a time
CHECKPOINT = 1.0  # seconds between chunk map writes while bytes arrive
SOLO_PROBE = 0.15  # seconds on the first connection alone before more are opened (when they would help)
SOLO_RECHECK = 1.0  # seconds between later looks while one connection is fast enough
SOLO_SHARE = 0.5  # one connection bringing bytes at this share of the hash speed is enough
SOLO_PIECE = 128 * MiB  # the largest piece one connection asks for while it is the only one
HASH_GUESS = 1e9  # bytes/s assumed for sha256 before this process has timed its own
DROP_BEHIND = 32 * MiB  # hashed bytes kept in the page cache behind the prefix before they are dropped
MAP_MAX = 4 * MiB  # a chunk map larger than this is not read


def worth_splitting(size: int | None, connections: int | None, budget: Budget) -> bool:
    return size is not None and size >= SPLIT_FROM and (connections or budget.limit) > 1


def piece_size(size: int, connections: int) -> int:
    return min(PIECE, max(MIN_PIECE, -(-size // max(1, connections))))


# --------------------------------------------------------------------------- byte ranges


class Ranges:
    """Disjoint, sorted, merged [start, end) spans."""

    def __init__(self, spans: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for a, b in sorted(spans or []):
            self.add(a, b)

    def add(self, a: int, b: int) -> None:
        if b <= a:
            return
        i = bisect.bisect_left(self._ends, a)  # first span that ends at or after a
        j = bisect.bisect_right(self._starts, b)  # spans before j start at or before b
        if i < j:
            a = min(a, self._starts[i])
            b = max(b, self._ends[j - 1])
        self._starts[i:j] = [a]
        self._ends[i:j] = [b]

    def reach(self, pos: int) -> int:
        """The end of the span that holds `pos` (or `pos` itself when none does)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and self._ends[i] > pos:
            return self._ends[i]
        return pos

    def clip(self, limit: int) -> Ranges:
        out = Ranges()
        for a, b in self.spans():
            if a < limit:
                out.add(a, min(b, limit))
        return out

    def missing(self, size: int) -> list[tuple[int, int]]:
        out, pos = [], 0
        for a, b in self.spans():
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < size:
            out.append((pos, size))
        return out

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends))

    def total(self) -> int:
        return sum(b - a for a, b in zip(self._starts, self._ends))


# --------------------------------------------------------------------------- the chunk map


class BadMap(Exception):
    pass


def map_path(partial: StagedFile | Path) -> Path:
    """Where the chunk map of a staging file is (for display and tools)."""
    return Path(str(partial)).with_name(partial.name + ".map")


def map_file(partial: StagedFile) -> StagedFile:
    return partial.sibling(partial.name + ".map")


def load_map(mfile: StagedFile | Path, size: int) -> tuple[Ranges, str | None] | None:
    """(done ranges, validator) from the map beside a staging file; None when there is
    none; BadMap when one is there but cannot be trusted (unreadable, another size,
    ranges out of bounds, a symlink)."""
    mfile = as_staged(mfile)
    try:
        fd = mfile.open(os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadMap(f"cannot open: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAP_MAX + 1)
    except OSError as exc:
        raise BadMap(f"cannot read: {exc.strerror}") from None
    if len(raw) > MAP_MAX:
        raise BadMap("too large")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BadMap("not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("size") != size or not isinstance(doc.get("done"), list):
        raise BadMap("another version or size")
    validator = doc.get("validator")
    if validator is not None and (not isinstance(validator, str) or len(validator) > 512 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in validator)):
        raise BadMap("bad validator")
    done = Ranges()
    for span in doc["done"]:
        if (not isinstance(span, list) or len(span) != 2 or not all(type(v) is int for v in span)
                or not 0 <= span[0] < span[1] <= size):
            raise BadMap("bad range")
        done.add(span[0], span[1])
    return done, validator


def save_map(mfile: StagedFile, size: int, validator: str | None, done: Ranges) -> None:
    """Write the map beside the staging file: to a temporary name (never through a link),
    then renamed over (a link at the map's name is replaced, not followed)."""
    body = json.dumps({"version": 1, "size": size, "validator": validator, "done": [list(s) for s in done.spans()]},
                      separators=(",", ":")).encode()
    mfile.write_atomic(body)


def drop_map(partial: StagedFile) -> None:
    map_file(partial).remove()


# --------------------------------------------------------------------------- notes


_noted: set[tuple[str, str]] = set()
_noted_lock = threading.Lock()


def note_once(log: Callable[[str], None] | None, host: str, kind: str, message: str) -> None:
    """Say `message` once per process for (host, kind): one line, not one per file."""
    with _noted_lock:
        if (host, kind) in _noted:
            return
        _noted.add((host, kind))
    if log is not None:
        log(message)
    else:
        import sys

        print(f"note: {message}", file=sys.stderr, flush=True)


class _Fallback(Exception):
    """Ranges cannot be used: start over with one stream (`opened`: a 200 already in hand)."""

    def __init__(self, kind: str, message: str, opened: Opened | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.opened = kind, message, opened


class _Halted(Exception):
    pass


class _Watch(Cancel):
    """The sockets of one download: tripped, it ends them all (an error on one connection,
    the deadline); the run's Cancel (SIGTERM) sees them too."""

    def __init__(self, outer: Cancel | None) -> None:
        super().__init__()
        self.outer = outer

    def is_set(self) -> bool:
        return super().is_set() or (self.outer is not None and self.outer.is_set())

    def watch(self, sock: socket.socket | None) -> None:
        super().watch(sock)
        if self.outer is not None:
            self.outer.watch(sock)

    def forget(self, sock: socket.socket | None) -> None:
        super().forget(sock)
        if self.outer is not None:
            self.outer.forget(sock)


def _content_range(resp: http.client.HTTPResponse) -> tuple[int, int, int] | None:
    """(first, last, total) of a 206's Content-Range, None when it says something else."""
    value = (resp.getheader("Content-Range") or "").strip()
    try:
        unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        first, _, last = span.partition("-")
        if unit.lower() != "bytes":
            return None
        return int(first), int(last), int(total)
    except ValueError:
        return None


def _validator(resp: http.client.HTTPResponse) -> str | None:
    """What If-Range may carry for this response: a strong ETag, else Last-Modified."""
    etag = (resp.getheader("ETag") or "").strip()
    if etag.startswith('"') and etag.endswith('"') and len(etag) <= 512:
        return etag
    modified = (resp.getheader("Last-Modified") or "").strip()
    return modified[:128] or None


# --------------------------------------------------------------------------- the ranged download


def fetch_ranged(
    url: str,
    partial: StagedFile,
    *,
    headers: Mapping[str, str],
    size: int,
    algos: tuple[str, ...],
    etag: str | None,
    timeouts: Timeouts,
    progress: Callable[[int], None] | None,
    deadline: float | None,
    cancel: Cancel | None,
    may_write: Callable[[], bool] | None,
    budget: Budget,
    connections: int | None,
    log: Callable[[str], None] | None,
) -> Fetched:
    """One attempt at `url` into `partial` as parallel ranges (see the module's docstring)."""
    mfile = map_file(partial)
    have = partial.size()
    try:
        saved = load_map(mfile, size)
    except BadMap as exc:
        note_once(log, partial.name, "bad-map", f"{partial.name}: its chunk map cannot be trusted ({exc}); starting over")
        saved = None
        partial.remove()
        drop_map(partial)
        have = 0
    if saved is None:
        if have > size:
            partial.remove()
            have = 0
        done = Ranges([(0, have)]) if have else Ranges()
        validator = f'"{etag}"' if (etag and have) else None  # a plain prefix resumes as the sequential path would
    else:
        done, validator = saved[0].clip(have), saved[1]
    job = _Ranged(url, partial, dict(headers), size, algos, timeouts, progress, deadline, cancel, may_write, budget,
                  connections or budget.limit, log)
    try:
        return job.run(done, validator)
    except _Fallback as fb:
        host = _http.urlsplit(url).netloc
        note_once(log, host, fb.kind, fb.message)
        partial.remove()
        drop_map(partial)
        return _http.fetch_sequential(url, partial, headers=dict(headers), expected_size=size, algos=algos, etag=None,
                                      timeouts=timeouts, progress=progress, deadline=deadline, cancel=cancel,
                                      may_write=may_write, budget=budget, opened=fb.opened, log=log)


class _Ranged:
    def __init__(self, url, partial, headers, size, algos, timeouts, progress, deadline, cancel, may_write, budget, conns, log) -> None:
        self.url, self.partial, self.headers, self.size, self.algos = url, partial, headers, size, algos
        self.timeouts: Timeouts = timeouts
        self.progress, self.deadline, self.may_write = progress, deadline, may_write
        self.outer = cancel
        self.cancel = _Watch(cancel)
        self.budget: Budget = budget
        self.conns = max(1, conns)
        self.log = log
        self.mfile = map_file(partial)
        self.cond = threading.Condition()
        self.halt = threading.Event()
        self.done = Ranges()
        self.pending: deque[tuple[int, int]] = deque()
        self.error: BaseException | None = None
        self.active = 0
        self.threads: list[threading.Thread] = []
        self.received = 0
        self.fd = -1
        self.validator: str | None = None
        self.target_url = url
        self.target_headers: dict[str, str] = {}
        self.dirty = False
        # more than the first connection may be opened (see _widen); PREFLIGHT_RAMP=0: all at once
        self.wide = conns <= 1 or os.environ.get("PREFLIGHT_RAMP", "").strip() == "0"
        self.solo_piece = 0
        self.look = (0.0, 0)  # (when, bytes arrived by then): the last look at the first connection's rate
        self.splice = True  # plain-HTTP bodies go socket -> file in the kernel (sources/zerocopy.py) until refused
        self._local = threading.local()

    # -- the coordinator (the calling thread)

    def run(self, done: Ranges, validator: str | None) -> Fetched:
        size = self.size
        self.done, self.validator = done, validator
        resumed = done.total()
        missing = done.missing(size)
        self.piece = piece_size(size, self.conns)
        self.solo_piece = self.piece // 2
        self.pending.extend(missing)
        if missing:
            check_free(self.partial, sum(b - a for a, b in missing))
        if self.outer is not None and self.outer.is_set():
            raise FetchError("cancelled", url=self.url)
        opened = first = None
        if self.pending:
            first = self._cut()
            self.budget.first()
            try:
                opened = self._ask(self.url, self.headers, first, probe=True)
            except BaseException:
                self.budget.release()
                raise
            self.target_url, self.target_headers = opened.url, {k: v for k, v in opened.headers.items() if k.lower() not in ("range", "if-range")}
            self.validator = _validator(opened.resp) or self.validator
        final_url = self.target_url
        ok = False
        try:
            if self.may_write is not None and not self.may_write():
                raise FetchError("another writer holds the volume now", url=self.url)
            self.fd = self.partial.open(os.O_RDWR | os.O_CREAT)
            if opened is not None:
                save_map(self.mfile, size, self.validator, self.done)  # before the first byte lands out of order
                extra = min(self.conns - 1, -(-self.left // MIN_PIECE)) if self.wide else 0
                self._start(opened, first)
                opened = None
                for _ in range(extra):
                    if not self.budget.extra():
                        break
                    self._start(None, None)
            self.look = (time.monotonic(), 0)
            if self.progress and resumed:
                self.progress(resumed)
            digests = self._hash_while_receiving()
            self._stop(graceful=True)
            os.fsync(self.fd)
            on_disk = os.fstat(self.fd).st_size
            if on_disk != size:
                raise IntegrityError(f"the staging file holds {on_disk} bytes after every range of {size} arrived: another writer "
                                     "wrote to it; discarded", url=self.url)
            try:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except (AttributeError, OSError):
                pass
            ok = True
            drop_map(self.partial)
            return Fetched(size, digests, resumed, final_url)
        except BaseException as exc:
            self._stop()
            if opened is not None:
                release(opened, self.cancel, None)
                self.budget.release()
            if isinstance(exc, _Fallback) or isinstance(exc, IntegrityError) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
                drop_map(self.partial)  # the staging file is going away
            elif self.fd >= 0 and not ok:
                self._checkpoint()  # what arrived is kept for the next attempt
            if isinstance(exc, _Halted):
                raise FetchError("cancelled", url=self.url) from None
            raise
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _widen(self, arrived: int, hash_speed: float) -> bool:
        """Whether to open more connections than the one the download started on: when that
        one brings bytes slower than SOLO_SHARE of what this process hashes per second.
        A connection a host caps (tens of MB/s) is far below; one that already brings bytes
        about as fast as they can be hashed (a registry or mirror on the same host or
        LAN) gains nothing from more, and their CPU (here and on the server) is taken from
        the hash, which is the limit then. Looked at after SOLO_PROBE seconds, then every
        SOLO_RECHECK seconds while the one connection stays fast."""
        since, base = self.look
        now = time.monotonic()
        if now - since < (SOLO_PROBE if base == 0 else SOLO_RECHECK):
            return False
        if (arrived - base) / (now - since) < SOLO_SHARE * hash_speed:
            return True
        self.look = (now, arrived)
        return False

    def _hash_while_receiving(self) -> dict[str, str]:
        size = self.size
        behind = HashBehind(Hasher(self.algos, size))  # this thread reads the prefix back, another hashes it
        try:
            return self._read_back(behind)
        except BaseException:
            behind.abandon()
            raise

    def _read_back(self, behind: HashBehind) -> dict[str, str]:
        """The coordinator's loop: read the contiguous prefix back as it grows (the hash runs
        behind, on its own thread), checkpoint, widen, and answer errors and cancels."""
        size = self.size
        hashed = dropped = 0
        last_checkpoint = time.monotonic()
        arrived = 0
        while hashed < size:
            with self.cond:
                reach = self.done.reach(hashed)
                if reach == hashed and self.error is None:
                    self.cond.wait(0.5 if self.wide else SOLO_PROBE / 2)
                    reach = self.done.reach(hashed)
                err, self.error = self.error, None
                got, self.received = self.received, 0
                spare = self.active < self.conns and self.left > self.active * MIN_PIECE
            arrived += got
            if not self.wide and spare and self._widen(arrived, behind.speed() or HASH_GUESS):
                with self.cond:
                    self.wide = True
            if got and self.progress:
                self.progress(got)
            if err is not None:
                raise err
            if self.outer is not None and self.outer.is_set():
                raise FetchError(f"cancelled at byte {hashed}", url=self.url)
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise StalledError("the run's deadline passed during the download", url=self.url)
            while hashed < reach:
                n = behind.read(self.fd, hashed, min(HASH_STEP, reach - hashed))
                if n <= 0:
                    raise IntegrityError(f"the staging file ends at byte {hashed}, where this process wrote bytes; discarded", url=self.url)
                hashed += n
                if hashed - dropped >= 2 * DROP_BEHIND:
                    self._drop_behind(dropped, hashed - DROP_BEHIND)
                    dropped = hashed - DROP_BEHIND
                if self.halt.is_set():
                    break
            if time.monotonic() - last_checkpoint >= CHECKPOINT:
                self._checkpoint()
                last_checkpoint = time.monotonic()
            if self.wide and spare and self.budget.extra():
                self._start(None, None)
            elif self.active == 0 and self.pending and self.error is None:
                self.budget.first()  # every connection left (the budget asked them to): this file keeps one
                self._start(None, None)
        return behind.finish()

    def _drop_behind(self, start: int, end: int) -> None:
        try:
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass

    def _checkpoint(self) -> None:
        """The chunk map, after the ranges it lists reached the disk."""
        with self.cond:
            snapshot = Ranges(self.done.spans())
        if self.may_write is not None and not self.may_write():
            return
        try:
            os.fdatasync(self.fd)
            save_map(self.mfile, self.size, self.validator, snapshot)
        except OSError:
            pass  # the next checkpoint tries again; a lost map costs a refetch, never wrong bytes (the digest decides)

    def _stop(self, graceful: bool = False) -> None:
        """End every connection: after success they are only returning theirs to the pool
        (joined first, so they do); otherwise their sockets are shut down at once."""
        if graceful:
            for t in self.threads:
                t.join(timeout=5)
        self.halt.set()
        self.cancel.trip()
        for t in self.threads:
            t.join(timeout=10)

    # -- connections

    def _start(self, opened: Opened | None, piece: tuple[int, int] | None) -> None:
        with self.cond:
            self.active += 1
        t = threading.Thread(target=self._connection, args=(opened, piece), name="http-range", daemon=True)
        self.threads.append(t)
        t.start()

    def _next(self) -> tuple[int, int] | None:
        with self.cond:
            if self.halt.is_set() or not self.pending:
                return None
            if self.budget.over() and self.active > 1:
                return None  # another download needs the slot
            return self._cut()

    @property
    def left(self) -> int:
        return sum(b - a for a, b in self.pending)

    def _cut(self) -> tuple[int, int]:
        """The next piece, from the front of what is missing: PIECE while much is left, then
        smaller (about a connection's share of half what is left, at least MIN_PIECE), so the
        last pieces end together instead of one connection finishing a long one alone.
        While the download runs on one connection (see `_widen`), larger pieces."""
        a, b = self.pending[0]
        if self.wide:
            want = min(self.piece, max(MIN_PIECE, self.left // (2 * self.conns)))
        else:
            # one connection: each request asks for twice the last (a request costs the server
            # its auth and open; a registry spent ~6 ms of CPU on each), up to SOLO_PIECE
            self.solo_piece = want = min(SOLO_PIECE, 2 * self.solo_piece)
        if b - a <= want + MIN_PIECE // 2:
            self.pending.popleft()
            return a, b
        self.pending[0] = (a + want, b)
        return a, a + want

    def _connection(self, opened: Opened | None, piece: tuple[int, int] | None) -> None:
        try:
            while True:
                if opened is None:
                    piece = self._next()
                    if piece is None:
                        return
                    opened = self._ask(self.target_url, self.target_headers, piece, probe=False)
                assert piece is not None
                self._receive(opened, piece)
                release(opened, self.cancel, POOL)
                opened = None
        except BaseException as exc:
            if opened is not None:
                release(opened, self.cancel, None)
            with self.cond:
                if self.error is None and not (isinstance(exc, _Halted) and self.halt.is_set()):
                    self.error = exc
                self.cond.notify_all()
            self.halt.set()
        finally:
            self.budget.release()
            with self.cond:
                self.active -= 1
                self.cond.notify_all()

    def _ask(self, url: str, headers: Mapping[str, str], piece: tuple[int, int], probe: bool) -> Opened:
        a, b = piece
        hdrs = {**headers, "Range": f"bytes={a}-{b - 1}"}
        if self.validator:
            hdrs["If-Range"] = self.validator
        opened = request(url, hdrs, self.timeouts, cancel=self.cancel, pool=POOL)
        resp = opened.resp
        try:
            if resp.status == 200:
                sent = hdrs.get("If-Range")
                now = _validator(resp)
                if sent and now and now != sent:
                    kind, msg = "changed", f"{opened.url.split('?')[0][:200]} changed on the server (If-Range): the download starts over from byte 0"
                else:
                    kind, msg = "no-range", f"{_http.urlsplit(opened.url).netloc} does not serve byte ranges: one stream per file"
                raise _Fallback(kind, msg, opened if probe else None)
            if resp.status != 206:
                if resp.status == 416:
                    raise _Fallback("range-416", f"{_http.urlsplit(opened.url).netloc} refused a byte range inside the expected "
                                    f"{self.size} bytes (416): one stream per file")
                raise _http._http_error(resp, opened.url)
            span = _content_range(resp)
            length = resp.getheader("Content-Length")
            if span is None or span[2] != self.size or span[0] != a or span[1] != b - 1 or not (length and length.strip() == str(b - a)):
                raise _Fallback("range-mismatch", f"{_http.urlsplit(opened.url).netloc} answered bytes {a}-{b - 1} with Content-Range "
                                f"{resp.getheader('Content-Range')!r} (expected size {self.size}): one stream per file")
            now = _validator(resp)
            if self.validator and self.validator.startswith('"') and now and now.startswith('"') and now != self.validator:
                raise _Fallback("changed", f"{opened.url.split('?')[0][:200]} changed on the server (ETag): the download starts over from byte 0")
        except _Fallback as fb:
            if fb.opened is None:
                release(opened, self.cancel, None)
            raise
        except BaseException:
            release(opened, self.cancel, None)
            raise
        return opened

    def _receive(self, opened: Opened, piece: tuple[int, int]) -> None:
        """The piece's bytes into the staging file at their offsets. `readinto` fills a reused
        buffer from the socket in C (many recv calls, one Python round per RECV_CHUNK): on a
        paced link `read1` hands over each small packet, and the Python per call, times 16
        connections, was most of the process's CPU."""
        a, b = piece
        pos = a
        resp = opened.resp
        if self.splice and zerocopy.usable(resp, opened.sock):
            assert opened.sock is not None
            try:
                for n in zerocopy.splice_body(resp, opened.sock, self.fd, pos, b - pos, stall=self.timeouts.stall, url=self.url,
                                              check=self._may_land):
                    self._landed(pos, n)
                    pos += n
                return
            except zerocopy.Refused:
                self.splice = False  # this filesystem takes no splice: buffered reads from here on
            except FetchError:
                if self.halt.is_set():
                    raise _Halted() from None
                if self.outer is not None and self.outer.is_set():
                    raise FetchError(f"cancelled at byte {pos}", url=self.url) from None
                raise
        buf = self._buffer()
        while pos < b:
            if self.halt.is_set():
                raise _Halted()
            want = min(len(buf), b - pos)
            try:
                n = resp.readinto(buf[:want])
            except (socket.timeout, TimeoutError):
                raise StalledError(f"no data for {self.timeouts.stall:g}s (stalled at byte {pos})", url=self.url) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self.halt.is_set():
                    raise _Halted() from None
                if self.outer is not None and self.outer.is_set():
                    raise FetchError(f"cancelled at byte {pos}", url=self.url) from None
                raise FetchError(f"connection lost at byte {pos}: {type(exc).__name__}", url=self.url) from None
            if not n:
                raise FetchError(f"connection closed at byte {pos} (range {a}-{b - 1})", url=self.url)
            self._may_land(pos)
            view = buf[:n]
            at = pos
            while view:
                k = os.pwrite(self.fd, view, at)
                view, at = view[k:], at + k
            self._landed(pos, n)
            pos += n

    def _may_land(self, pos: int) -> None:
        """Before bytes are written at `pos` (and while a splice waits for data)."""
        if self.halt.is_set():
            raise _Halted()
        if self.may_write is not None and not self.may_write():
            raise FetchError(f"stopped at byte {pos}: another writer holds the volume now", url=self.url)

    def _landed(self, pos: int, n: int) -> None:
        with self.cond:
            self.done.add(pos, pos + n)
            self.received += n
            self.cond.notify_all()

    def _buffer(self) -> memoryview:
        local = self._local
        if getattr(local, "buf", None) is None:
            local.buf = memoryview(bytearray(_http.RECV_CHUNK))
        return local.buf
