"""Keep-alive connections per host, and the run's connection budget.

A connection goes back to the pool only when its last response was read to the end
and the server did not ask to close it; one that sat idle is checked before reuse
(a server that closed it makes the socket readable), and a request that fails on a
reused connection before any answer is sent again once on a fresh one. Connections
are keyed by (scheme, host, port): a request carries only the headers it is given,
so a token sent to the Hub never rides on a connection to the CDN, pooled or not.
"""

from __future__ import annotations

import http.client
import os
import select
import ssl
import threading

from ..errors import UsageError

IDLE_PER_HOST = 32

_TLS: dict[tuple[str, int], ssl.SSLContext] = {}  # hosts whose certificates are checked otherwise (an S3 endpoint's CA bundle)


def trust_host(host: str, port: int, context: ssl.SSLContext) -> None:
    """Speak TLS to `host:port` with `context` (a custom CA bundle, or no verification where
    the operator asked for none) instead of the system trust store."""
    _TLS[(host.lower(), port)] = context


_DEFAULT_TLS: list[ssl.SSLContext] = []


def tls_context(host: str, port: int) -> ssl.SSLContext:
    """The context a connection to `host:port` checks certificates with: one trusted for
    that host, else the system store plus KServe's global CA bundle when the webhook mounted
    one (CA_BUNDLE_CONFIGMAP_NAME set: <CA_BUNDLE_VOLUME_MOUNT_POINT>/cabundle.crt, default
    /etc/ssl/custom-certs), as KServe's own initializer extends its trust store."""
    own = _TLS.get((host.lower(), port))
    if own is not None:
        return own
    if not _DEFAULT_TLS:
        context = ssl.create_default_context()
        if os.environ.get("CA_BUNDLE_CONFIGMAP_NAME"):
            bundle = os.path.join(os.environ.get("CA_BUNDLE_VOLUME_MOUNT_POINT") or "/etc/ssl/custom-certs", "cabundle.crt")
            if os.path.isfile(bundle):
                try:
                    context.load_verify_locations(cafile=bundle)
                except (OSError, ssl.SSLError) as exc:
                    raise UsageError(f"KServe's CA bundle {bundle} cannot be read as PEM certificates ({exc})") from None
        _DEFAULT_TLS.append(context)
    return _DEFAULT_TLS[0]




class Pool:
    def __init__(self, per_host: int = IDLE_PER_HOST) -> None:
        self.per_host = per_host
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self.opened = 0  # connections made (for tests and benchmarks)
        self.reused = 0

    def get(self, key: tuple[str, str, int], connect_timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to `key` that still looks alive, else a new (unconnected) one;
        and whether it was reused."""
        with self._lock:
            idle = self._idle.get(key) or []
            while idle:
                conn = idle.pop()
                if _alive(conn):
                    self.reused += 1
                    return conn, True
                conn.close()
        scheme, host, port = key
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=connect_timeout, context=tls_context(host, port))
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        with self._lock:
            self.opened += 1
        return conn, False

    def put(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.per_host and conn.sock is not None:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


def _alive(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket has nothing to read; readable means the server closed it
    (or sent something unasked), either way it is not reused."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


POOL = Pool()


class Budget:
    """How many connections the whole run may hold at once, shared by every file.

    Each download's first connection is always granted (a file in flight is never
    starved, so --workers files always progress); more connections for one file are
    granted only while the total is under the limit, and one beyond the limit gives
    its slot back at its next piece boundary. The run therefore holds at most
    max(limit, files in flight) connections.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._used = 0
        self._lock = threading.Lock()
        self.peak = 0

    def first(self) -> None:
        with self._lock:
            self._used += 1
            self.peak = max(self.peak, self._used)

    def extra(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            self.peak = max(self.peak, self._used)
            return True

    def over(self) -> bool:
        with self._lock:
            return self._used > self.limit

    def release(self) -> None:
        with self._lock:
            self._used = max(0, self._used - 1)

    @property
    def used(self) -> int:
        return self._used


DEFAULT_CONNECTIONS = 16
_default: Budget | None = None
_default_lock = threading.Lock()


def default_budget() -> Budget:
    """The process-wide budget when the run passes none: PREFLIGHT_CONNECTIONS or 16."""
    global _default
    with _default_lock:
        if _default is None:
            import os

            raw = (os.environ.get("PREFLIGHT_CONNECTIONS") or "").strip()
            limit = int(raw) if raw.isdigit() and 0 < int(raw) <= 256 else DEFAULT_CONNECTIONS
            _default = Budget(limit)
        return _default
