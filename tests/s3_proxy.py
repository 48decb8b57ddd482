"""A small HTTP proxy in front of a real object store (the S3 server, the Cloud Storage
server): it logs every request (method, path, query, headers, Range, status, body bytes
sent) and injects faults into the responses of one object: stall after N bytes (until
released), drop the connection after N bytes, close a connection without answering, or
flip one byte of the body at offset N. `gate` may refuse a request before it is
forwarded (an authorization check the server itself does not make). Signatures pass
through untouched: the client signs for the proxy's host, which is the Host header the
server sees.

`listing` stands in for the server's ListObjectsV2 answers: a function of the request's
query that returns the body (bytes, or an iterator of chunks sent without a length), for
hostile listings a real server would not produce.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str  # /bucket/key, unquoted, no query
    range: str | None
    status: int = 0
    bytes_sent: int = 0
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names


@dataclass
class Fault:
    """What the next `times` GETs of one object get."""

    kind: str  # "stall" (after `after` body bytes, until released), "drop" (after `after` bytes), "refuse" (no answer),
    # "corrupt" (the body byte at offset `after` flipped)
    after: int = 0
    times: int = 1
    release: threading.Event = field(default_factory=threading.Event)


class S3Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[Request] = []
        self.faults: dict[str, list[Fault]] = {}
        self.gate: Callable[[Request], tuple[int, bytes] | None] | None = None  # (status, JSON body) refuses the request
        self.listing: Callable[[dict[str, str]], bytes | Iterator[bytes]] | None = None
        self.listings = 0  # listing requests answered by `listing`
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            for faults in self.faults.values():
                for f in faults:
                    f.release.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fault(self, path: str, kind: str, after: int = 0, times: int = 1) -> Fault:
        """Fault the next `times` GETs of /bucket/key `path`."""
        f = Fault(kind, after, times)
        with self._lock:
            self.faults.setdefault(path, []).append(f)
        return f

    def gets(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path == path]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ serving

    def _take_fault(self, method: str, path: str) -> Fault | None:
        if method != "GET":
            return None
        with self._lock:
            for f in self.faults.get(path, []):
                if f.times > 0:
                    f.times -= 1
                    return f
        return None

    def _serve(self, sock: socket.socket) -> None:
        rfile = sock.makefile("rb")
        try:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = rfile.readline(65537)
                if not line:
                    return
                head += line
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            body = rfile.read(length) if length else None
            path = unquote(urlsplit(target).path)
            rng = next((v for k, v in headers if k.lower() == "range"), None)
            req = Request(method, path, rng, query=urlsplit(target).query, headers={k.lower(): v for k, v in headers})
            with self._lock:
                self.requests.append(req)
            refused = self.gate(req) if self.gate is not None else None
            if refused is not None:
                req.status = refused[0]
                sock.sendall(f"HTTP/1.1 {refused[0]} Refused\r\nContent-Type: application/json\r\nContent-Length: {len(refused[1])}\r\n"
                             "Connection: close\r\n\r\n".encode() + refused[1])
                return
            query = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
            if method == "GET" and query.get("list-type") == "2" and self.listing is not None:
                self._list(sock, req, self.listing(query))
                return
            fault = self._take_fault(method, path)
            if fault is not None and fault.kind == "refuse":
                sock.shutdown(socket.SHUT_RDWR)
                return
            up = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
            try:
                fwd = {k: v for k, v in headers if k.lower() != "connection"}
                fwd["Connection"] = "close"
                up.request(method, target, body=body, headers=fwd)
                resp = up.getresponse()
                req.status = resp.status
                out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in ("connection", "transfer-encoding", "content-length")]
                data_len = resp.getheader("Content-Length")
                whole = None
                if data_len is None and method != "HEAD":
                    whole = resp.read()
                    data_len = str(len(whole))
                if data_len is not None:
                    out_headers.append(("Content-Length", data_len))
                out_headers.append(("Connection", "close"))
                status_line = f"HTTP/1.1 {resp.status} {resp.reason}\r\n"
                sock.sendall((status_line + "".join(f"{k}: {v}\r\n" for k, v in out_headers) + "\r\n").encode("latin-1"))
                if method == "HEAD":
                    return
                self._stream(sock, resp, whole, req, fault)
            finally:
                up.close()
        except (OSError, ValueError):
            return
        finally:
            try:
                rfile.close()
                sock.close()
            except OSError:
                pass

    def _list(self, sock: socket.socket, req: Request, body: bytes | Iterator[bytes]) -> None:
        with self._lock:
            self.listings += 1
        req.status = 200
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        chunks = iter([body]) if isinstance(body, bytes) else body
        if isinstance(body, bytes):
            head += f"Content-Length: {len(body)}\r\n"
        sock.sendall((head + "\r\n").encode())
        for chunk in chunks:
            sock.sendall(chunk)
            req.bytes_sent += len(chunk)

    def _stream(self, sock: socket.socket, resp: http.client.HTTPResponse, whole: bytes | None, req: Request, fault: Fault | None) -> None:
        chunks = iter([whole]) if whole is not None else iter(lambda: resp.read1(65536), b"")
        for chunk in chunks:
            if fault is not None and fault.kind == "corrupt" and req.bytes_sent <= fault.after < req.bytes_sent + len(chunk):
                at = fault.after - req.bytes_sent
                chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1:]
            elif fault is not None and fault.kind != "corrupt" and req.bytes_sent + len(chunk) >= fault.after:
                cut = fault.after - req.bytes_sent
                sock.sendall(chunk[:cut])
                req.bytes_sent += cut
                if fault.kind == "stall":
                    fault.release.wait(120)
                sock.shutdown(socket.SHUT_RDWR)
                return
            sock.sendall(chunk)
            req.bytes_sent += len(chunk)
