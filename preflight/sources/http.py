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

from ..errors import AuthError, DiskSpaceError, FetchError, StalledError
from ..integrity import READ_CHUNK, Hasher, WriteBehind, nofollow, staged_size
from ..report import human_size

MAX_REDIRECTS = 10
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


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _connect(url: str, timeouts: Timeouts) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"unsupported URL {url}", url=url)
    port = parts.port
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, port, timeout=timeouts.connect, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeouts.connect)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return conn, target


def open_stream(url: str, headers: Mapping[str, str], timeouts: Timeouts, method: str = "GET") -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, str]:
    """GET (or HEAD) following redirects; Authorization is dropped when the host changes (CDN)."""
    hdrs = dict(headers)
    origin = urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS):
        conn, target = _connect(url, timeouts)
        try:
            conn.request(method, target, headers=hdrs)
            conn.sock.settimeout(timeouts.stall)
            resp = conn.getresponse()
        except (socket.timeout, TimeoutError) as exc:
            conn.close()
            raise StalledError(f"no answer from {urlsplit(url).netloc} within {timeouts.connect:g}s", url=url) from exc
        except OSError as exc:
            conn.close()
            raise FetchError(f"cannot connect to {urlsplit(url).netloc}: {exc.strerror or exc}", url=url) from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise FetchError(f"bad HTTP answer from {urlsplit(url).netloc}: {type(exc).__name__}", url=url) from exc
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            resp.read()
            conn.close()
            if not location:
                raise FetchError(f"HTTP {resp.status} without Location", url=url, status=resp.status)
            url = urljoin(url, location)
            if urlsplit(url).netloc != origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            continue
        return resp, conn, url
    raise FetchError(f"more than {MAX_REDIRECTS} redirects", url=url)


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
    return FetchError(text, url=url, status=resp.status)


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
) -> Fetched:
    """One attempt: append to `partial` (resuming when it holds bytes), return digests of the whole file.

    Raises FetchError (retryable) or AuthError. Bytes already in `partial` are kept
    on failure, so the next attempt, or the next process, resumes.
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
    resp, conn, final_url = open_stream(url, headers, timeouts)
    sock = conn.sock
    if cancel is not None:
        cancel.watch(sock)
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
            with open(partial, mode, buffering=0, opener=nofollow) as f:
                behind = WriteBehind(f.fileno(), have)
                while True:
                    if deadline is not None and time.monotonic() > deadline:
                        raise StalledError("the run's deadline passed during the download", url=url)
                    data = chunks.next(have, timeout=1.0)
                    if data is None:
                        continue
                    if not data:
                        break
                    _write_all(f, data)
                    hasher.update(data)
                    have += len(data)
                    behind.wrote(have)
                    if progress:
                        progress(len(data))
                    if expected_size is not None and have > expected_size:
                        raise FetchError(f"server sent more than the expected {expected_size} bytes", url=url)
                behind.finish()
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
