"""A response body moved from the socket into the staging file inside the kernel (splice).

Over plain HTTP on a fast link the download is bound by CPU, not by the network: reading
the body into a Python buffer and writing it out costs two copies per byte (and the
buffer falls out of the CPU cache at 1 MiB), while sha256 needs a core of its own. Here
the bytes go socket -> pipe -> file with splice(2): one copy, made by the kernel into
the page cache, and no Python per byte. Whoever hashes reads the written prefix back
(integrity.PrefixHasher, the ranged coordinator), on the other core.

Only where it can work: Linux (os.splice), a plain socket (TLS bytes must be decrypted
in user space), a body of known length that is not chunked, a staging file opened
without O_APPEND (splice refuses those). `body_splicer` says None otherwise, and at the
first refusal of the kernel (a filesystem that does not take splice) the caller goes
on with its buffered loop: `Refused` carries how many bytes already landed.
"""

from __future__ import annotations

import errno
import http.client
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator

from ..errors import FetchError, StalledError

PIPE_SIZE = 2**20  # asked of F_SETPIPE_SZ; the kernel may give less (pipe-max-size)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class Refused(Exception):
    """The kernel would not splice here (EINVAL, ENOSYS, ...) before any byte of this call moved."""


def usable(resp: http.client.HTTPResponse, sock: socket.socket | None) -> bool:
    return (hasattr(os, "splice") and sock is not None and not isinstance(sock, ssl.SSLSocket) and sock.fileno() >= 0
            and not resp.chunked and resp.length is not None)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe: more calls, same bytes
    return r, w


def splice_body(resp: http.client.HTTPResponse, sock: socket.socket, fd: int, offset: int, length: int, *,
                stall: float, url: str, check: Callable[[int], None] | None = None) -> Iterator[int]:
    """Move the next `length` bytes of `resp`'s body into `fd` at `offset`, yielding each
    count once it is in the file. What http.client already buffered is written first.
    Raises Refused (nothing moved by the kernel yet: continue with buffered reads),
    StalledError after `stall` seconds without a byte, FetchError when the connection ends
    early. `check(pos)` is called before each write and while waiting for data; it raises
    to stop (cancel, deadline, the lease lost)."""
    assert resp.length is not None and length <= resp.length
    pos, end = offset, offset + length
    # The bytes http.client read past the headers: taken through the response, so its
    # own count of what is left stays right.
    try:
        held = resp.fp.peek() if pos < end and resp.fp is not None else b""
    except (socket.timeout, TimeoutError):
        raise StalledError(f"no data for {stall:g}s (stalled at byte {pos})", url=url) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(f"connection lost at byte {pos}: {type(exc).__name__}", url=url) from None
    if held:
        if check is not None:
            check(pos)
        data = resp.read(min(len(held), end - pos))
        view = memoryview(data)
        while view:
            k = os.pwrite(fd, view, pos)
            view, pos = view[k:], pos + k
        yield len(data)
    if pos >= end:
        return
    sfd = sock.fileno()
    r, w = _pipe()
    poller = select.poll()
    poller.register(sfd, select.POLLIN | select.POLLPRI)
    moved_any = False
    try:
        last = time.monotonic()
        while pos < end:
            try:
                n = os.splice(sfd, w, min(PIPE_SIZE, end - pos), flags=_FLAGS)
            except BlockingIOError:
                if check is not None:
                    check(pos)
                if time.monotonic() - last > stall:
                    raise StalledError(f"no data for {stall:g}s (stalled at byte {pos})", url=url) from None
                poller.poll(min(1.0, stall) * 1000)
                continue
            except OSError as exc:
                if not moved_any and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                    raise Refused(str(exc)) from None
                raise FetchError(f"connection lost at byte {pos}: {exc.strerror or exc}", url=url) from None
            if n == 0:
                raise FetchError(f"connection closed at byte {pos}", url=url)
            last = time.monotonic()
            if check is not None:
                check(pos)
            left = n
            while left:
                try:
                    k = os.splice(r, fd, left, offset_dst=pos)
                except OSError as exc:
                    if not moved_any and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        # the filesystem takes no splice: what is in the pipe is read out and written
                        while left:
                            view = memoryview(os.read(r, left))
                            while view:
                                k = os.pwrite(fd, view, pos)
                                view, pos, left = view[k:], pos + k, left - k
                        resp.length -= n
                        yield n
                        raise Refused(str(exc)) from None
                    raise
                pos += k
                left -= k
            moved_any = True
            resp.length -= n
            yield n
    finally:
        os.close(r)
        os.close(w)
