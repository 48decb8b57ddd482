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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from typing import TYPE_CHECKING

from ..errors import AuthError, DiskSpaceError, FetchError, IntegrityError, StalledError, UsageError
from ..manifest import FileExpect
from . import Entry, Listing, Source, Transfer
from ..integrity import READ_CHUNK, Hasher, WriteBehind, nofollow, staged_size
from ..report import human_size

if TYPE_CHECKING:
    from ..lockfile import LockedLane

MAX_REDIRECTS = 10
DNS_FAILURE = -1  # FetchError.status of a name that does not resolve: not retried (it will not heal in seconds)
# The receiving thread's read size: whatever the socket holds, up to this (4 MiB reads
# were slower here; bench/bench_sync.py --chunk-kib sizes a change).
RECV_CHUNK = 2**20


@dataclass
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


@dataclass
class Fetched:
    size: int
    digests: dict[str, str]
    resumed_from: int
    url: str


def _connect(url: str, timeouts: Timeouts) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"unsupported URL {url}", url=url)
    try:
        port = parts.port
    except ValueError:
        raise FetchError(f"bad port in URL {url[:200]}", url=url) from None
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, port, timeout=timeouts.connect, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeouts.connect)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return conn, target


def open_stream(url: str, headers: Mapping[str, str], timeouts: Timeouts, method: str = "GET",
                cancel: Cancel | None = None) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, str]:
    """GET (or HEAD) following redirects; Authorization is dropped when the host changes (CDN).

    `cancel` watches the socket from the moment it connects, so an interrupt also ends a
    request still waiting for its response headers (the caller forgets it)."""
    hdrs = dict(headers)
    origin = urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS):
        conn, target = _connect(url, timeouts)
        host = urlsplit(url).netloc
        stage = "connect"
        try:
            conn.connect()
            if cancel is not None:
                cancel.watch(conn.sock)
            stage = "headers"
            conn.request(method, target, headers=hdrs)
            conn.sock.settimeout(timeouts.stall)
            resp = conn.getresponse()
        except (socket.timeout, TimeoutError) as exc:
            _close(conn, cancel)
            if stage == "connect":
                raise StalledError(f"cannot connect to {host}: no answer within {timeouts.connect:g}s (--connect-timeout)", url=url) from exc
            raise StalledError(f"{host} accepted the connection but sent no response within {timeouts.stall:g}s (--stall-timeout)", url=url) from exc
        except OSError as exc:
            _close(conn, cancel)
            if cancel is not None and cancel.is_set():
                raise FetchError("cancelled", url=url) from exc
            if isinstance(exc, socket.gaierror):
                raise FetchError(f"cannot resolve host {urlsplit(url).hostname}: {exc.strerror or exc}", url=url, status=DNS_FAILURE) from exc
            raise FetchError(f"cannot connect to {host}: {exc.strerror or exc}", url=url) from exc
        except http.client.HTTPException as exc:
            _close(conn, cancel)
            raise FetchError(f"bad HTTP answer from {host}: {type(exc).__name__}", url=url) from exc
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            resp.read()
            _close(conn, cancel)
            if not location:
                raise FetchError(f"HTTP {resp.status} without Location", url=url, status=resp.status)
            url = urljoin(url, location)
            if urlsplit(url).netloc != origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            continue
        return resp, conn, url
    raise FetchError(f"more than {MAX_REDIRECTS} redirects", url=url)


def _close(conn: http.client.HTTPConnection, cancel: Cancel | None) -> None:
    if cancel is not None:
        cancel.forget(conn.sock)
    conn.close()


def content_length(url: str, headers: Mapping[str, str] | None = None, timeouts: Timeouts | None = None) -> int | None:
    """The size a HEAD request announces, or None when it cannot tell (no HEAD support, a URL
    signed for GET only, no Content-Length). For planning only: the GET is what is checked."""
    try:
        resp, conn, _url = open_stream(url, {"Accept-Encoding": "identity", **(headers or {})}, timeouts or Timeouts(), method="HEAD")
    except FetchError:
        return None
    try:
        length = resp.getheader("Content-Length") or ""
        return int(length) if resp.status == 200 and length.isdigit() else None
    finally:
        conn.close()


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
        return AuthError(text, url=url, status=resp.status, hint="check the token (HF_TOKEN, HF_TOKEN_PATH or --token-file) and that it has access to the repo")
    err = FetchError(text, url=url, status=resp.status)
    err.retry_after = parse_retry_after(resp.getheader("Retry-After"))
    return err


NO_RETRY = {400, 404, 410, 416, DNS_FAILURE}  # asking again gives the same answer
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
    if isinstance(exc, AuthError) or exc.status in NO_RETRY:
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
    partial: Path,
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
) -> Fetched:
    """One attempt: append to `partial` (resuming when it holds bytes), return digests of the whole file.

    Raises FetchError (retryable) or AuthError. Bytes already in `partial` are kept
    on failure, so the next attempt, or the next process, resumes. `may_write` is asked
    before every write (the volume lease); the file is appended to only, and its size
    must be exactly what this process accounted for at the end, so bytes another writer
    appended are never taken for ours.
    """
    timeouts = timeouts or Timeouts()
    headers = dict(headers or {})
    headers.setdefault("Accept-Encoding", "identity")
    have = staged_size(partial)
    if expected_size is not None and have > expected_size:
        partial.unlink()
        have = 0
    if expected_size is not None and have == expected_size and have > 0:
        return Fetched(have, _hash_existing(partial, algos, expected_size, progress), have, url)
    if have:
        headers["Range"] = f"bytes={have}-"
        if etag:
            headers["If-Range"] = f'"{etag}"'
    if cancel is not None and cancel.is_set():
        raise FetchError("cancelled", url=url)
    resp, conn, final_url = open_stream(url, headers, timeouts, cancel=cancel)
    sock = conn.sock
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
            resp.read()
            partial.unlink()
            raise FetchError("server refused to resume (416); partial bytes discarded", url=url, status=416)
        else:
            raise _http_error(resp, url)
        total = None
        length = resp.getheader("Content-Length")
        if length and length.isdigit():
            total = have + int(length)
        size = expected_size if expected_size is not None else total
        if expected_size is not None and total is not None and total != expected_size:
            raise FetchError(f"server announces {total} bytes, expected {expected_size}", url=url)
        if total is not None:
            import shutil

            free = shutil.disk_usage(partial.parent).free
            if total - have > free:
                raise DiskSpaceError(f"not enough disk space on {partial.parent}: {human_size(total - have)} more to write, {human_size(free)} free")
        hasher = Hasher(algos, size) if ("sha1" not in algos or size is not None) else Hasher(tuple(a for a in algos if a != "sha1"))
        if have:
            _feed(partial, hasher, have, progress)
        # A receiving thread keeps the socket drained while this one writes and hashes
        # (one thread doing both lets the server's send window fill and stall). Unbuffered
        # writes of whatever has arrived: a process killed or stalled loses at most the
        # few chunks in flight.
        chunks = _Receiver(resp, sock, timeouts, cancel, url)
        try:
            if mode == "wb":
                with open(partial, "wb", buffering=0, opener=nofollow):
                    pass  # emptied; every write appends, so a stray writer can only add bytes, which the size check catches
            with open(partial, "ab", buffering=0, opener=nofollow) as f:
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
                behind.finish()
                on_disk = os.fstat(f.fileno()).st_size
                if on_disk != have:
                    raise IntegrityError(f"the staging file holds {on_disk} bytes, this process wrote up to {have}: another writer "
                                         "appended to it; discarded", url=url)
        finally:
            chunks.stop()
        if total is not None and have != total:
            raise FetchError(f"connection closed at byte {have} of {total}", url=url)
        if expected_size is not None and have != expected_size:
            raise FetchError(f"got {have} bytes, expected {expected_size}", url=url)
        return Fetched(have, hasher.hexdigests(), int(headers.get("Range", "bytes=0-")[6:-1] or 0), final_url)
    finally:
        if cancel is not None:
            cancel.forget(sock)
        conn.close()


class _Receiver:
    """Chunks read from the response on a thread; errors are raised where they are consumed."""

    DEPTH = 8

    def __init__(self, resp: http.client.HTTPResponse, sock: socket.socket | None, timeouts: Timeouts, cancel: Cancel | None, url: str) -> None:
        import queue

        self._q: queue.Queue = queue.Queue(self.DEPTH)
        self._halt = threading.Event()
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

    def stop(self) -> None:
        """End the thread now, even when it is blocked in a read of a stalled socket: closing
        the response would otherwise wait for that read (the reader's lock) until the stall
        timeout, past the run's deadline."""
        self._halt.set()
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


def _feed(path: Path, hasher: Hasher, n: int, progress) -> None:
    with open(path, "rb", buffering=0) as f:
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


def _hash_existing(path: Path, algos, size, progress) -> dict[str, str]:
    hasher = Hasher(algos, size)
    _feed(path, hasher, size, progress)
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

    def fetch(self, entry: Entry, partial: Path, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        return fetch_to(entry.locator, partial, expected_size=entry.expect.size, algos=algos, etag=entry.etag,
                        timeouts=transfer.timeouts, progress=transfer.progress, deadline=transfer.deadline,
                        cancel=transfer.cancel, may_write=transfer.may_write)

    def size_hint(self, entry: Entry) -> int | None:
        return content_length(entry.locator, timeouts=self.ctx.timeouts)

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        for name, entry in listing.files.items():
            if not entry.expect.sha256:
                raise UsageError(f"lane {self.lane.name}: a URL source is locked from the manifest's sha256, and it has none")
        return super().lock_files(listing)
