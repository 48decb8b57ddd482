"""Stream one URL into a staging file: resume with Range/If-Range, hash while writing,
connect and stall timeouts. Standard library only (http.client reaches curl's speed)."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from typing import TYPE_CHECKING

from ..errors import AuthError, DiskSpaceError, FetchError, IntegrityError, StalledError, UsageError
from ..manifest import FileExpect
from . import Entry, Listing, Source, Transfer
from ..integrity import READ_CHUNK, Hasher, WriteBehind
from ..record import record
from ..volume import StagedFile, as_staged
from ..report import human_size
from .pool import POOL, Budget, Pool, default_budget, tls_context

if TYPE_CHECKING:
    from ..lockfile import LockedLane

MAX_REDIRECTS = 10
DNS_FAILURE = -1  # FetchError.status of a name that does not resolve: not retried (it will not heal in seconds)
TLS_UNTRUSTED = -2  # FetchError.status of a certificate this machine does not trust: not retried either
# The receiving thread's read size: whatever the socket holds, up to this (4 MiB reads
# were slower here; bench/bench_sync.py --chunk-kib sizes a change).
RECV_CHUNK = 2**20


@record
class Timeouts:
    connect: float = 10.0
    stall: float = 60.0  # no byte for this long → give up on this attempt


class Cancel:
    """Ends every download in progress at once (SIGTERM), from any thread.

    A worker blocked in recv() on a stalled server would otherwise hold the process
    until its stall timeout; shutting its socket down wakes it immediately.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._event = threading.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when cancelled."""
        return self._event.wait(seconds)

    def trip(self) -> None:
        self._event.set()
        with self._lock:
            for sock in self._socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.add(sock)
        if self._event.is_set():
            self.trip()

    def forget(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socks.discard(sock)  # type: ignore[arg-type]


@record
class Fetched:
    size: int
    digests: dict[str, str]
    resumed_from: int
    url: str


def _target(url: str) -> tuple[tuple[str, str, int], str]:
    """The pool key (scheme, host, port) and the request target of `url`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"unsupported URL {url}", url=url)
    try:
        port = parts.port
    except ValueError:
        raise FetchError(f"bad port in URL {url[:200]}", url=url) from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return (parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)), target


def connect(url: str, timeouts: Timeouts) -> tuple[http.client.HTTPConnection, str]:
    """A new (unpooled) connection to `url`'s host and the request target; nothing sent yet."""
    key, target = _target(url)
    if key[0] == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(key[1], key[2], timeout=timeouts.connect, context=tls_context(key[1], key[2]))
    else:
        conn = http.client.HTTPConnection(key[1], key[2], timeout=timeouts.connect)
    return conn, target


# A reused keep-alive connection the server has closed meanwhile fails like this before any
# answer; the request is sent again once on a new connection (GET and HEAD are idempotent).
_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@record
class Opened:
    """A response with its headers read: the connection it came on, the URL that answered
    after redirects, and the headers sent there (Authorization dropped across hosts)."""

    resp: http.client.HTTPResponse
    conn: http.client.HTTPConnection
    sock: socket.socket | None
    url: str
    headers: dict[str, str]
    key: tuple[str, str, int]


def request(url: str, headers: Mapping[str, str], timeouts: Timeouts, method: str = "GET",
            cancel: Cancel | None = None, pool: Pool | None = None) -> Opened:
    """GET (or HEAD) following redirects; Authorization is dropped when the host changes (CDN).

    With `pool`, connections come from and go back to it (see `release`); the socket is
    watched by `cancel` from the moment it connects."""
    hdrs = dict(headers)
    origin = urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS):
        key, target = _target(url)
        host = urlsplit(url).netloc
        for fresh_try in (False, True):
            if pool is not None and not fresh_try:
                conn, reused = pool.get(key, timeouts.connect)
            else:
                conn, reused = connect(url, timeouts)[0], False
            stage = "connect"
            try:
                if conn.sock is None:
                    conn.connect()
                sock = conn.sock
                if cancel is not None:
                    cancel.watch(sock)
                stage = "headers"
                conn.sock.settimeout(timeouts.connect if not reused else timeouts.stall)
                conn.request(method, target, headers=hdrs)
                conn.sock.settimeout(timeouts.stall)
                resp = conn.getresponse()
            except _STALE as exc:
                _close(conn, cancel)
                if reused:
                    continue
                if cancel is not None and cancel.is_set():
                    raise FetchError("cancelled", url=url) from exc
                if isinstance(exc, OSError):
                    raise FetchError(f"cannot connect to {host}: {exc.strerror or exc}", url=url) from exc
                raise FetchError(f"bad HTTP answer from {host}: {type(exc).__name__}", url=url) from exc
            except (socket.timeout, TimeoutError) as exc:
                _close(conn, cancel)
                if stage == "connect":
                    raise StalledError(f"cannot connect to {host}: no answer within {timeouts.connect:g}s (--connect-timeout)", url=url) from exc
                raise StalledError(f"{host} accepted the connection but sent no response within {timeouts.stall:g}s (--stall-timeout)", url=url) from exc
            except OSError as exc:
                _close(conn, cancel)
                if cancel is not None and cancel.is_set():
                    raise FetchError("cancelled", url=url) from exc
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise FetchError(f"{host}: its TLS certificate is not trusted here ({exc.verify_message or exc})", url=url,
                                     status=TLS_UNTRUSTED, hint="trust its CA: SSL_CERT_FILE, or KServe's global CA bundle "
                                     "(CA_BUNDLE_CONFIGMAP_NAME, mounted at CA_BUNDLE_VOLUME_MOUNT_POINT/cabundle.crt)") from exc
                if isinstance(exc, socket.gaierror):
                    raise FetchError(f"cannot resolve host {urlsplit(url).hostname}: {exc.strerror or exc}", url=url, status=DNS_FAILURE) from exc
                raise FetchError(f"cannot connect to {host}: {exc.strerror or exc}", url=url) from exc
            except http.client.HTTPException as exc:
                _close(conn, cancel)
                raise FetchError(f"bad HTTP answer from {host}: {type(exc).__name__}", url=url) from exc
            break
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            try:
                resp.read(64 * 1024)
            except (OSError, http.client.HTTPException):
                pass
            release(Opened(resp, conn, sock, url, hdrs, key), cancel, pool)
            if not location:
                raise FetchError(f"HTTP {resp.status} without Location", url=url, status=resp.status)
            url = urljoin(url, location)
            if urlsplit(url).netloc != origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            continue
        return Opened(resp, conn, sock, url, hdrs, key)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects", url=url)


def release(opened: Opened, cancel: Cancel | None = None, pool: Pool | None = None) -> None:
    """Done with a response: its connection goes back to `pool` when the body was read to
    the end and the server keeps it open; otherwise it is closed."""
    if cancel is not None:
        cancel.forget(opened.sock)
    resp, conn = opened.resp, opened.conn
    # read1 leaves a body read to its last byte open (length 0): closing the response then
    # lets the connection take the next request.
    complete = resp.isclosed() or (not resp.chunked and resp.length == 0)
    if pool is not None and complete and not resp.will_close and conn.sock is not None and not (cancel is not None and cancel.is_set()):
        resp.close()
        pool.put(opened.key, conn)
    else:
        conn.close()


def open_stream(url: str, headers: Mapping[str, str], timeouts: Timeouts, method: str = "GET",
                cancel: Cancel | None = None, *, pool: Pool | None = None) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, str]:
    """GET (or HEAD) following redirects; Authorization is dropped when the host changes (CDN).

    `cancel` watches the socket from the moment it connects, so an interrupt also ends a
    request still waiting for its response headers (the caller forgets it). The caller
    closes the connection; with `pool` (e.g. sources.pool.POOL) it may instead hand the
    fully read response back with `release(…)` (use `request`, which returns what that needs)."""
    opened = request(url, headers, timeouts, method, cancel, pool)
    return opened.resp, opened.conn, opened.url


def _close(conn: http.client.HTTPConnection, cancel: Cancel | None) -> None:
    if cancel is not None:
        cancel.forget(conn.sock)
    conn.close()


def content_length(url: str, headers: Mapping[str, str] | None = None, timeouts: Timeouts | None = None) -> int | None:
    """The size a HEAD request announces, or None when it cannot tell (no HEAD support, a URL
    signed for GET only, no Content-Length). For planning only: the GET is what is checked."""
    try:
        opened = request(url, {"Accept-Encoding": "identity", **(headers or {})}, timeouts or Timeouts(), method="HEAD", pool=POOL)
    except FetchError:
        return None
    try:
        length = opened.resp.getheader("Content-Length") or ""
        return int(length) if opened.resp.status == 200 and length.isdigit() else None
    finally:
        try:
            opened.resp.read()  # a HEAD answer has no body: this marks it complete
        except (OSError, http.client.HTTPException):
            pass
        release(opened, None, POOL)


def read_range(url: str, headers: Mapping[str, str] | None, start: int, length: int, timeouts: Timeouts) -> bytes:
    """Bytes [start, start + length) of `url` (fewer at its end, none past it), for reading a
    header before a download. Never more than `length` bytes are kept: a server that ignores
    Range (200) is read only up to start + length, then its connection is closed."""
    if length <= 0:
        return b""
    hdrs = {"Accept-Encoding": "identity", **(headers or {}), "Range": f"bytes={start}-{start + length - 1}"}
    opened = request(url, hdrs, timeouts, pool=POOL)
    resp = opened.resp
    complete = False
    try:
        if resp.status == 416:
            return b""
        if resp.status == 206:
            crange = resp.getheader("Content-Range") or ""
            try:
                first = int(crange.split()[1].split("-")[0])
            except (IndexError, ValueError):
                first = -1
            if first != start:
                raise FetchError(f"asked for bytes from {start}, the server sent {crange!r}", url=url)
            skip = 0
        elif resp.status == 200:
            skip = start
        else:
            raise _http_error(resp, url)
        out = bytearray()
        while skip or len(out) < length:
            try:
                data = resp.read1(min(RECV_CHUNK, (skip or length - len(out))))
            except (socket.timeout, TimeoutError):
                raise StalledError(f"no data for {timeouts.stall:g}s", url=url) from None
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"connection lost: {type(exc).__name__}", url=url) from None
            if not data:
                break
            if skip:
                cut = min(skip, len(data))
                skip -= cut
                data = data[cut:]
            out += data[: length - len(out)]
        complete = resp.status == 206 and resp.length == 0
        return bytes(out)
    finally:
        release(opened, None, POOL if complete else None)


def _http_error(resp: http.client.HTTPResponse, url: str) -> FetchError:
    body = b""
    try:
        body = resp.read(2000)
    except Exception:
        pass
    code = resp.getheader("X-Error-Code") or ""
    msg = resp.getheader("X-Error-Message") or body.decode("utf-8", "replace").strip()[:200]
    text = f"HTTP {resp.status} for {url}" + (f" ({code}: {msg})" if code else (f": {msg}" if msg else ""))
    if resp.status in (401, 403):
        return AuthError(text, url=url, status=resp.status, hint="the server refused this client: check the credentials the source needs")
    err = FetchError(text, url=url, status=resp.status)
    err.retry_after = parse_retry_after(resp.getheader("Retry-After"))
    return err


NO_RETRY = {400, 404, 410, 416, DNS_FAILURE, TLS_UNTRUSTED}  # asking again gives the same answer
MAX_RETRY_AFTER = 300.0  # the longest wait a server's Retry-After gets when the run has no deadline


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()[:64]
    if value.isdigit():
        return float(min(int(value), 10**7))
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def retry_delay(attempt: int, exc: FetchError, deadline: float | None) -> float | None:
    """How long to wait before attempt `attempt` (1, 2, ...) after `exc`, or None when
    retrying cannot help: an answer that will not change, or a Retry-After that reaches
    past the run's deadline (or past MAX_RETRY_AFTER without one). The reason is then
    added to the error's message."""
    from ..errors import UnsafeSourceError

    if isinstance(exc, (AuthError, UnsafeSourceError)) or exc.status in NO_RETRY or exc.permanent:
        return None
    delay = float(min(2 ** (attempt - 1), 8))
    asked = getattr(exc, "retry_after", None)
    if asked is not None:
        delay = max(delay, asked)
        left = (deadline - time.monotonic()) if deadline is not None else MAX_RETRY_AFTER
        if delay > left:
            limit = "the run's deadline" if deadline is not None else f"the {MAX_RETRY_AFTER:g}s limit"
            exc.message = f"{exc.message} (the server asked to retry after {asked:g}s, past {limit})"
            return None
    if deadline is not None and time.monotonic() + delay > deadline:
        return None
    return delay


def fetch_to(
    url: str,
    partial: StagedFile | Path,
    *,
    headers: Mapping[str, str] | None = None,
    expected_size: int | None = None,
    algos: tuple[str, ...] = ("sha256",),
    etag: str | None = None,
    timeouts: Timeouts | None = None,
    progress: Callable[[int], None] | None = None,
    deadline: float | None = None,
    cancel: Cancel | None = None,
    may_write: Callable[[], bool] | None = None,
    budget: Budget | None = None,
    connections: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Fetched:
    """One attempt: fill `partial` (resuming what it holds), return digests of the whole file.

    A file of known size large enough to split is fetched as byte ranges over several
    connections at once (sources/transfer.py: written at their offsets, a chunk map beside
    the staging file for resuming, hashed as the contiguous prefix completes); anything
    else, or a server without usable ranges, is one stream appended to `partial`.
    Connections come from a keep-alive pool per host; `budget` (default: the process's,
    PREFLIGHT_CONNECTIONS or 16) bounds how many the run holds, `connections` how many
    one file may use. `log` gets the one-time notes (a server without ranges).

    Raises FetchError (retryable) or AuthError. Bytes already in `partial` are kept
    on failure, so the next attempt, or the next process, resumes. `may_write` is asked
    before every write (the volume lease); the file's final size must be exactly what
    this process accounted for, so bytes another writer added are never taken for ours.
    """
    partial = as_staged(partial)
    timeouts = timeouts or Timeouts()
    headers = dict(headers or {})
    headers.setdefault("Accept-Encoding", "identity")
    budget = budget or default_budget()
    if cancel is not None and cancel.is_set():
        raise FetchError("cancelled", url=url)
    from . import transfer

    if transfer.worth_splitting(expected_size, connections, budget):
        assert expected_size is not None
        return transfer.fetch_ranged(url, partial, headers=headers, size=expected_size, algos=algos, etag=etag, timeouts=timeouts,
                                     progress=progress, deadline=deadline, cancel=cancel, may_write=may_write, budget=budget,
                                     connections=connections, log=log)
    return fetch_sequential(url, partial, headers=headers, expected_size=expected_size, algos=algos, etag=etag, timeouts=timeouts,
                            progress=progress, deadline=deadline, cancel=cancel, may_write=may_write, budget=budget, log=log)


def fetch_sequential(
    url: str,
    partial: StagedFile,
    *,
    headers: dict[str, str],
    expected_size: int | None,
    algos: tuple[str, ...],
    etag: str | None,
    timeouts: Timeouts,
    progress: Callable[[int], None] | None,
    deadline: float | None,
    cancel: Cancel | None,
    may_write: Callable[[], bool] | None,
    budget: Budget,
    opened: Opened | None = None,
    log: Callable[[str], None] | None = None,
) -> Fetched:
    """One stream appended to `partial`, hashed as it is written. With `opened` (a 200 the
    ranged path got instead of a 206), that response is the stream, from byte 0."""
    headers = dict(headers)
    if opened is None:
        have = partial.size()
        if expected_size is not None and have > expected_size:
            partial.remove()
            have = 0
        if expected_size is not None and have == expected_size and have > 0:
            return Fetched(have, _hash_existing(partial, algos, expected_size, progress), have, url)
        if have:
            headers["Range"] = f"bytes={have}-"
            if etag:
                headers["If-Range"] = f'"{etag}"'
        if cancel is not None and cancel.is_set():
            raise FetchError("cancelled", url=url)
        opened = request(url, headers, timeouts, cancel=cancel, pool=POOL)
    else:
        have = 0
    resp, final_url = opened.resp, opened.url
    budget.first()
    complete = False
    restart = False
    try:
        if resp.status == 206 and have:
            crange = resp.getheader("Content-Range") or ""
            try:
                start = int(crange.split()[1].split("-")[0])
            except (IndexError, ValueError):
                start = -1
            if start != have:
                raise FetchError(f"server resumed at byte {start}, asked for {have} (Content-Range: {crange!r})", url=url)
            mode = "ab"
        elif resp.status == 200:
            have, mode = 0, "wb"  # server ignored Range (or If-Range failed): start over
        elif resp.status == 416 and have:
            # The staged prefix is not a prefix of what the server holds now (the file
            # shrank, or an earlier answer over-announced its length): start over from
            # byte 0 in this same attempt. The second request asks for no range, so this
            # happens at most once per attempt.
            partial.remove()
            restart = True
            raise _Restart()
        else:
            raise _http_error(resp, url)
        resumed_from = have
        total = None
        length = resp.getheader("Content-Length")
        if length and length.isdigit():
            total = have + int(length)
        size = expected_size if expected_size is not None else total
        if expected_size is not None and total is not None and total != expected_size:
            raise FetchError(f"server announces {total} bytes, expected {expected_size}", url=url)
        if total is not None:
            check_free(partial, total - have)
        hasher = Hasher(algos, size) if ("sha1" not in algos or size is not None) else Hasher(tuple(a for a in algos if a != "sha1"))
        if have:
            _feed(partial, hasher, have, progress)
        # A receiving thread keeps the socket drained while this one writes and hashes
        # (one thread doing both lets the server's send window fill and stall). Unbuffered
        # writes of whatever has arrived: a process killed or stalled loses at most the
        # few chunks in flight.
        chunks = _Receiver(resp, opened.sock, timeouts, cancel, url)
        try:
            if may_write is not None and not may_write():  # not even create the file: it may be another writer's name now
                raise FetchError("another writer holds the volume now", url=url)
            if mode == "wb":
                with partial.writer(append=False):
                    pass  # emptied; every write appends, so a stray writer can only add bytes, which the size check catches
            with partial.writer(append=True) as f:
                behind = WriteBehind(f.fileno(), have)
                while True:
                    if deadline is not None and time.monotonic() > deadline:
                        raise StalledError("the run's deadline passed during the download", url=url)
                    data = chunks.next(have, timeout=1.0)
                    if data is None:
                        continue
                    if not data:
                        break
                    if may_write is not None and not may_write():
                        raise FetchError(f"stopped at byte {have}: another writer holds the volume now", url=url)
                    _write_all(f, data)
                    hasher.update(data)
                    have += len(data)
                    behind.wrote(have)
                    if progress:
                        progress(len(data))
                    if expected_size is not None and have > expected_size:
                        raise FetchError(f"server sent more than the expected {expected_size} bytes", url=url)
                complete = True
                behind.finish()
                on_disk = os.fstat(f.fileno()).st_size
                if on_disk != have:
                    raise IntegrityError(f"the staging file holds {on_disk} bytes, this process wrote up to {have}: another writer "
                                         "appended to it; discarded", url=url)
        finally:
            chunks.stop(ended=complete)
        if total is not None and have != total:
            raise FetchError(f"connection closed at byte {have} of {total}", url=url)
        if expected_size is not None and have != expected_size:
            raise FetchError(f"got {have} bytes, expected {expected_size}", url=url)
        return Fetched(have, hasher.hexdigests(), resumed_from, final_url)
    except _Restart:
        pass
    finally:
        budget.release()
        release(opened, cancel, POOL if complete else None)
    assert restart
    if log is not None:
        log(f"{partial.name}: the server refused to resume at byte {have} (416); starting over from byte 0")
    return fetch_sequential(url, partial, headers={k: v for k, v in headers.items() if k not in ("Range", "If-Range")},
                            expected_size=expected_size, algos=algos, etag=etag, timeouts=timeouts, progress=progress,
                            deadline=deadline, cancel=cancel, may_write=may_write, budget=budget, log=log)


class _Restart(Exception):
    """The staged bytes were dropped: fetch again from byte 0."""


def check_free(partial: StagedFile, more: int) -> None:
    import shutil

    free = shutil.disk_usage(partial.parent).free
    if more > free:
        raise DiskSpaceError(f"not enough disk space on {partial.parent}: {human_size(more)} more to write, {human_size(free)} free")


class _Receiver:
    """Chunks read from the response on a thread; errors are raised where they are consumed."""

    DEPTH = 8

    def __init__(self, resp: http.client.HTTPResponse, sock: socket.socket | None, timeouts: Timeouts, cancel: Cancel | None, url: str) -> None:
        import queue

        self._q: queue.Queue = queue.Queue(self.DEPTH)
        self._halt = threading.Event()
        self._ended = False
        self._resp, self._sock, self._timeouts, self._cancel, self._url = resp, sock, timeouts, cancel, url
        self._thread = threading.Thread(target=self._run, name="http-receive", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        import queue

        while not self._halt.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                data = self._resp.read1(RECV_CHUNK)
            except BaseException as exc:
                self._put(exc)
                return
            if not data:
                self._ended = True
            self._put(data)
            if not data:
                return

    def next(self, have: int, timeout: float) -> bytes | None:
        """The next chunk, b"" at the end, None when nothing arrived within `timeout`."""
        import queue

        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            self._halt.set()
            if isinstance(item, (socket.timeout, TimeoutError)):
                raise StalledError(f"no data for {self._timeouts.stall:g}s (stalled at byte {have})", url=self._url) from None
            if isinstance(item, (OSError, http.client.HTTPException, ValueError)):
                if self._cancel is not None and self._cancel.is_set():
                    raise FetchError(f"cancelled at byte {have}", url=self._url) from None
                raise FetchError(f"connection lost at byte {have}: {type(item).__name__}", url=self._url) from None
            raise item
        return item

    def stop(self, ended: bool = False) -> None:
        """End the thread now, even when it is blocked in a read of a stalled socket: closing
        the response would otherwise wait for that read (the reader's lock) until the stall
        timeout, past the run's deadline. After the end of the body (`ended`) the thread is
        only returning, and the connection is kept for reuse."""
        self._halt.set()
        if ended and self._ended:
            self._thread.join(timeout=5)
        if self._thread.is_alive() and self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)


def _write_all(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _feed(partial: StagedFile, hasher: Hasher, n: int, progress) -> None:
    with partial.reader() as f:
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        left = n
        while left:
            k = f.readinto(buf)
            if not k:
                break
            k = min(k, left)
            hasher.update(view[:k])
            left -= k
            if progress:
                progress(k)


def _hash_existing(partial: StagedFile, algos, size, progress) -> dict[str, str]:
    hasher = Hasher(algos, size)
    _feed(partial, hasher, size, progress)
    return hasher.hexdigests()


class UrlSource(Source):
    """https://…: one file, fetched into the lane's path; the manifest (or lock) pins its digest."""

    def resolve(self, locked: LockedLane | None) -> Listing:
        lane = self.lane
        assert lane.source is not None and lane.source.url
        name = Path(lane.path).name
        exp = lane.files.get(name, FileExpect())
        if locked and name in locked.files:
            exp = exp.merge(locked.files[name])
        return Listing(None, {name: Entry(exp, lane.source.url, exp.sha256)})

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        return fetch_to(entry.locator, partial, headers=self.headers(entry.locator), expected_size=entry.expect.size, algos=algos,
                        etag=entry.etag, **transfer.http())

    def size_hint(self, entry: Entry) -> int | None:
        return content_length(entry.locator, self.headers(entry.locator), timeouts=self.ctx.timeouts)

    @staticmethod
    def headers(url: str) -> dict[str, str]:
        """KServe's https secret: `<host>-headers` holds a JSON object of headers for that
        host (masked in every output, as a token is). Dropped on a redirect to another host."""
        from ..kserve import url_headers
        from ..redact import register

        found = url_headers(os.environ, urlsplit(url).hostname or "")
        for value in found.values():
            register(value)
        return found

    def read_range(self, entry: Entry, start: int, length: int) -> bytes | None:
        return self.ctx.retrying(self.lane.name, lambda: read_range(entry.locator, None, start, length, self.ctx.timeouts))

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        for name, entry in listing.files.items():
            if not entry.expect.sha256:
                raise UsageError(f"lane {self.lane.name}: a URL source is locked from the manifest's sha256, and it has none")
        return super().lock_files(listing)
