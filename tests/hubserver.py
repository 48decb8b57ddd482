"""A Hugging Face Hub compatible HTTP server for tests, with switchable faults.

It speaks the parts of the Hub protocol the real ``huggingface_hub`` client and our own
streaming client use: repo metadata (``/api/{models,datasets,spaces}/...``), tree
listings with cursor pagination, ``paths-info``, refs, ``auth-check``, and file
downloads through ``/{repo_id}/resolve/{revision}/{path}``. Large (LFS) files answer
302 to a "CDN" served on a second port, so the client sees another origin, reads the
file metadata from the redirect itself and drops its ``Authorization`` header, as it
does against the real Hub. Plain static files can be added for ``https://``-style
sources. Every request is logged, and per-file faults reproduce what breaks downloads
in real life: dropped connections, 5xx answers, stalls, corrupted bytes and servers
that ignore ``Range``.

Standard library only, so it can also run on its own::

    python -m tests.hubserver --port 0 --repo org/name=FOLDER --url ViT-B-32.pt=FILE
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode

DEFAULT_TOKEN = "hf_test_token"
LFS_THRESHOLD = 10 * 1024 * 1024
# The extensions the Hub's default .gitattributes stores with git-lfs (the weight formats we serve).
LFS_SUFFIXES: tuple[str, ...] = (
    ".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack",
    ".model", ".npy", ".npz", ".pkl", ".pickle", ".tflite", ".ot", ".zip", ".tar", ".gz",
)
REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}
_PLURAL_TO_TYPE = {plural: kind for kind, plural in REPO_TYPES.items()}
_API_SUBPATHS = {"revision", "tree", "paths-info", "refs", "auth-check"}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_CHUNK = 256 * 1024
_SENDFILE_CHUNK = 8 * 2**20
_PACED_CHUNK = 128 * 1024  # what a rate-capped connection sends at a time
_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: commit dates are deterministic, one minute apart
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


# --------------------------------------------------------------------------- content


class _Content:
    """Bytes served for one file: held in memory, or read from a file on disk on demand."""

    def __init__(self, source: bytes | os.PathLike[str] | str, *, unhashed: bool = False) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data: bytes | None = bytes(source)
            self._path: Path | None = None
            self.size = len(self._data)
        else:
            self._data = None
            self._path = Path(source)
            self.size = self._path.stat().st_size
        if unhashed:  # placeholder digests (not the content's): for benchmarks that read headers of huge sparse files
            tag = f"unhashed:{source}:{self.size}".encode()
            self.git_sha1, self.sha256 = hashlib.sha1(tag).hexdigest(), hashlib.sha256(tag).hexdigest()
            return
        git = hashlib.sha1(b"blob %d\0" % self.size)
        sha256 = hashlib.sha256()
        for offset in range(0, self.size, 4 * 1024 * 1024):
            chunk = self.read(offset, 4 * 1024 * 1024)
            git.update(chunk)
            sha256.update(chunk)
        self.git_sha1 = git.hexdigest()
        self.sha256 = sha256.hexdigest()

    @property
    def path(self) -> Path | None:
        """The file on disk, when the content is served from one."""
        return self._path

    def read(self, offset: int, length: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + length]
        assert self._path is not None
        with open(self._path, "rb") as f:
            f.seek(offset)
            return f.read(length)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as ``oid`` for a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class _File:
    path: str
    content: _Content
    lfs: bool
    oid: str  # git object id: of the content, or of the LFS pointer
    pointer_size: int | None

    @property
    def size(self) -> int:
        return self.content.size

    @property
    def sha256(self) -> str:
        return self.content.sha256

    @property
    def etag(self) -> str:
        return self.content.sha256 if self.lfs else self.content.git_sha1


@dataclass
class _Commit:
    sha: str
    title: str
    date: str
    files: dict[str, _File]
    trees: dict[str, str]  # folder path ("" for the root) -> git tree id
    last_touched: dict[str, str]  # file or folder path -> sha of the commit that last changed it


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool = False
    gated: str | bool = False
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and _HEX40.fullmatch(revision):
            sha = revision
        return self.commits.get(sha) if sha else None


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _git_trees(files: Mapping[str, _File]) -> dict[str, str]:
    """Git tree ids of every folder ("" is the root), computed bottom-up the way git does."""
    children: dict[str, dict[str, tuple[bytes, str]]] = {"": {}}
    for path, f in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            children.setdefault(folder, {})
            children["/".join(parts[: depth - 1])][parts[depth - 1]] = (b"40000", folder)
        children["/".join(parts[:-1])][parts[-1]] = (b"100644", f.oid)
    trees: dict[str, str] = {}
    for folder in sorted(children, key=lambda p: p.count("/") + 1 if p else 0, reverse=True):
        entries = children[folder]
        body = b""
        for name in sorted(entries, key=lambda n: n.encode() + (b"/" if entries[n][0] == b"40000" else b"")):
            mode, ref = entries[name]
            oid = trees[ref] if mode == b"40000" else ref
            body += mode + b" " + name.encode() + b"\0" + bytes.fromhex(oid)
        trees[folder] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    return trees


def _git_commit_sha(tree: str, parent: str | None, timestamp: int, title: str) -> str:
    signature = f"Hub Server <hub@example.invalid> {timestamp} +0000"
    body = f"tree {tree}\n" + (f"parent {parent}\n" if parent else "")
    body += f"author {signature}\ncommitter {signature}\n\n{title}\n"
    raw = body.encode()
    return hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()


# --------------------------------------------------------------------------- faults


@dataclass
class _Switch:
    value: object
    times: int | None  # None: every time


class Fault:
    """Misbehaviour switches for one file (or static URL, or a repo's API calls).

    Byte faults act on each response that carries the file's bytes (a 200/206 body);
    ``times`` limits how many such responses are affected (``None``: all of them).
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._switches: dict[str, _Switch] = {}

    def status(
        self, code: int, times: int | None = 1, *, methods: Collection[str] = ("GET",),
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer ``code`` (e.g. 500, 503, 429) to the next ``times`` requests using ``methods``.

        For a repo file this is whichever request comes first: ``/resolve`` or the CDN GET.
        """
        methods_upper = frozenset(m.upper() for m in methods)
        return self._set("status", (code, methods_upper, dict(headers or {})), times)

    def drop_after(self, n_bytes: int, times: int | None = None) -> Fault:
        """Close the connection after ``n_bytes`` of a response body (headers promise more)."""
        return self._set("drop", n_bytes, times)

    def stall(self, after_bytes: int, seconds: float, times: int | None = None) -> Fault:
        """Stop sending for ``seconds`` after ``after_bytes`` of the body, keeping the socket open."""
        return self._set("stall", (after_bytes, seconds), times)

    def corrupt(self, offset: int, length: int = 1, times: int | None = None) -> Fault:
        """Flip the bits of ``length`` bytes at file ``offset`` in what is served; headers unchanged."""
        return self._set("corrupt", (offset, length), times)

    def ignore_range(self, times: int | None = None) -> Fault:
        """Answer 200 with the whole body to a ``Range`` request."""
        return self._set("ignore_range", True, times)

    def hold(self, start: int = 0, stop: int | None = None) -> Hold:
        """GETs of bytes whose range starts in [start, stop) wait, before any answer, until
        ``release()``: the If-Range check and the body come after. A test waits for
        ``hold.waiting`` instead of sleeping, and releases when it is ready."""
        held = Hold(start, stop)
        self._set("hold", held, None)
        return held

    def corrupt_range(self, offset: int, length: int = 1, times: int | None = None) -> Fault:
        """Like :meth:`corrupt`, but only responses whose bytes cover ``offset`` count toward
        ``times`` (with ranged downloads, most responses do not)."""
        return self._set("corrupt_range", (offset, length), times)

    def range_total(self, total: int, times: int | None = None) -> Fault:
        """206 answers announce ``total`` as the file's length in Content-Range (a server whose
        ranges disagree with its length)."""
        return self._set("range_total", total, times)

    def take_if(self, kind: str, applies: Callable[[object], bool]) -> object | None:
        """The switch's value when ``applies(value)``, consuming one use only then."""
        with self._lock:
            switch = self._switches.get(kind)
            if switch is None or not applies(switch.value):
                return None
            if switch.times is not None:
                switch.times -= 1
                if switch.times <= 0:
                    del self._switches[kind]
            return switch.value

    def clear(self) -> None:
        with self._lock:
            self._switches.clear()

    def _set(self, kind: str, value: object, times: int | None) -> Fault:
        with self._lock:
            self._switches[kind] = _Switch(value, times)
        return self

    def take(self, kind: str, *, method: str | None = None) -> object | None:
        """The switch's value if it applies to this response (consuming one use), else None."""
        with self._lock:
            switch = self._switches.get(kind)
            if switch is None:
                return None
            if kind == "status" and method not in switch.value[1]:  # type: ignore[index]
                return None
            if switch.times is not None:
                switch.times -= 1
                if switch.times <= 0:
                    del self._switches[kind]
            return switch.value


class Hold:
    """A server-side pause of the requests a :meth:`Fault.hold` covers, released explicitly."""

    def __init__(self, start: int, stop: int | None) -> None:
        self.start, self.stop = start, stop
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.waiting = 0  # requests waiting now
        self.arrived = 0  # requests that were held, in all

    def covers(self, first: int) -> bool:
        return first >= self.start and (self.stop is None or first < self.stop)

    def wait(self, stopping: threading.Event) -> None:
        with self._lock:
            self.waiting += 1
            self.arrived += 1
        try:
            while not self._released.wait(0.05) and not stopping.is_set():
                pass
        finally:
            with self._lock:
                self.waiting -= 1

    def release(self) -> None:
        self._released.set()

    def wait_for(self, n: int = 1, timeout: float = 60.0) -> bool:
        """Poll (server side, no timing luck) until ``n`` requests are waiting."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.waiting >= n:
                return True
            time.sleep(0.01)
        return False


# --------------------------------------------------------------------------- request log


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw and answered it."""

    method: str
    path: str  # decoded, without the query string
    query: str
    kind: str  # "api", "resolve", "cdn", "url" or "unknown"
    port: int
    repo_id: str | None
    file: str | None  # path in the repo (resolve and cdn requests)
    revision: str | None
    range: str | None
    if_range: str | None
    authorization: bool  # an Authorization header was sent
    headers: dict[str, str]  # request headers, Authorization left out
    status: int
    bytes_sent: int  # body bytes actually written
    outcome: str  # "complete", "dropped", "stalled" or "client-closed"
    peer: int = 0  # the client's port: requests with the same peer came on one (kept-alive) connection


# --------------------------------------------------------------------------- state


class _State:
    def __init__(self, token: str | None, lfs_threshold: int, lfs_suffixes: tuple[str, ...],
                 tree_page_size: int) -> None:
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.blobs: dict[str, _Content] = {}  # sha256 -> content, what the CDN serves
        self.urls: dict[str, tuple[_Content, dict[str, str]]] = {}
        self.faults: dict[tuple[str, ...], Fault] = {}
        self.log: list[LoggedRequest] = []
        self.tokens: dict[str, bool] = {} if token is None else {token: True}
        self.open_auth = token is None
        self.lfs_threshold = lfs_threshold
        self.lfs_suffixes = lfs_suffixes
        self.tree_page_size = tree_page_size
        self.stopping = threading.Event()
        self.cdn_port = 0
        self.tampers: dict[tuple[str, str], Callable[[dict], dict]] = {}  # a hostile Hub's rewrite of repo info
        self.rate: float | None = None  # bytes per second of file bytes on one connection (None: as fast as it goes)
        self.first_byte = 0.0  # seconds every request waits before its answer (the latency of a far host)

    def fault(self, key: tuple[str, ...]) -> Fault:
        with self.lock:
            if key not in self.faults:
                self.faults[key] = Fault(self.lock)
            return self.faults[key]

    def find_fault(self, key: tuple[str, ...]) -> Fault | None:
        with self.lock:
            return self.faults.get(key)

    def token_state(self, header: str | None) -> tuple[str, bool]:
        """("anonymous" | "valid" | "invalid", has access to gated/private repos)."""
        if not header:
            return "anonymous", False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "invalid", False
        if self.open_auth:
            return "valid", True
        access = self.tokens.get(token.strip())
        return ("invalid", False) if access is None else ("valid", access)


# --------------------------------------------------------------------------- HTTP


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: _State, role: str) -> None:
        self.state = state
        self.role = role
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # type: ignore[no-untyped-def]
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubserver/1"
    timeout = 120
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    # -- request bookkeeping

    def _dispatch(self) -> None:
        self.state = self.server.state
        self._status = 0
        self._sent = 0
        self._outcome = "in-progress"
        self._info: dict[str, str | None] = {"kind": "unknown", "repo_id": None, "file": None, "revision": None}
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        raw_path, _, self._query = self.path.partition("?")
        with self.state.lock:
            self._log_index = len(self.state.log)
            self.state.log.append(self._log_entry(raw_path, self._sent))
        try:
            if self.state.first_byte > 0:
                self.state.stopping.wait(self.state.first_byte)
            self._route(raw_path)
            if self._outcome == "in-progress":
                self._outcome = "complete"
        except (BrokenPipeError, ConnectionResetError):
            self._outcome = "client-closed"
            self.close_connection = True
        finally:
            self._publish(self._sent)

    def _log_entry(self, raw_path: str, bytes_sent: int) -> LoggedRequest:
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        return LoggedRequest(
            method=self.command, path=unquote(raw_path), query=self._query, kind=self._info["kind"] or "unknown",
            port=self.server.server_address[1], repo_id=self._info["repo_id"], file=self._info["file"],
            revision=self._info["revision"], range=self.headers.get("Range"),
            if_range=self.headers.get("If-Range"), authorization="Authorization" in self.headers,
            headers=headers, status=self._status, bytes_sent=bytes_sent,
            outcome="complete" if self._outcome == "in-progress" else self._outcome,
            peer=self.client_address[1] if isinstance(self.client_address, tuple) and len(self.client_address) > 1 else 0,
        )

    def _publish(self, bytes_sent: int) -> None:
        """Update this request's log entry. Called before the last bytes leave, so a client that
        has its answer always finds the request in the log; corrected afterwards if sending fails."""
        entry = self._log_entry(self.path.partition("?")[0], bytes_sent)
        with self.state.lock:
            self.state.log[self._log_index] = entry

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self._sent += len(data)

    def _send(self, code: int, body: bytes, headers: Mapping[str, str] | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        body = b"" if self.command == "HEAD" else body
        self._publish(self._sent + len(body))
        self.end_headers()
        if body:
            self._write(body)

    def _json(self, obj: object, headers: Mapping[str, str] | None = None) -> None:
        self._send(200, json.dumps(obj).encode(), headers)

    def _error(self, code: int, message: str, error_code: str | None = None,
               headers: Mapping[str, str] | None = None) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if error_code:
            extra["X-Error-Code"] = error_code
        self._send(code, json.dumps({"error": message}).encode(), extra)

    def _origin(self, port: int | None = None) -> str:
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        if port is None:
            return f"http://{host}"
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return f"http://{hostname}:{port}"

    # -- routing

    def _route(self, raw_path: str) -> None:
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        if self.server.role == "cdn":
            if len(segments) == 2 and segments[0] == "cdn" and self.command in ("GET", "HEAD"):
                return self._cdn(segments[1])
            return self._error(404, "Not found")
        static_path = unquote(raw_path)
        if static_path in self.state.urls and self.command in ("GET", "HEAD"):
            return self._static(static_path)
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in _PLURAL_TO_TYPE:
            return self._api(_PLURAL_TO_TYPE[segments[1]], segments[2:])
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type = _PLURAL_TO_TYPE[segments[0]]
            segments = segments[1:]
        for n in (2, 1):
            if len(segments) > n + 2 and segments[n] == "resolve" and self.command in ("GET", "HEAD"):
                return self._resolve(repo_type, "/".join(segments[:n]), segments[n + 1], "/".join(segments[n + 2:]))
        return self._error(404, "Not found")

    def _find_repo(self, repo_type: str, parts: list[str]) -> tuple[str, list[str]]:
        """Split ``org/name/sub/...`` or ``name/sub/...`` into the repo id and the rest."""
        if len(parts) >= 2 and (repo_type, "/".join(parts[:2])) in self.state.repos:
            return "/".join(parts[:2]), parts[2:]
        if (repo_type, parts[0]) in self.state.repos:
            return parts[0], parts[1:]
        if len(parts) >= 2 and parts[1] not in _API_SUBPATHS:
            return "/".join(parts[:2]), parts[2:]
        return parts[0], parts[1:]

    def _visible_repo(self, repo_type: str, repo_id: str) -> _Repo | None:
        """The repo, or None after answering as the Hub does (bad token, not found, hidden)."""
        auth, access = self.state.token_state(self.headers.get("Authorization"))
        if auth == "invalid":
            self._error(401, _INVALID_CREDENTIALS)
            return None
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not access):
            self._error(401 if auth == "anonymous" else 404, "Repository not found", "RepoNotFound")
            return None
        return repo

    def _gate(self, repo: _Repo) -> bool:
        """True when the caller may download from ``repo``; otherwise answers the gated error."""
        auth, access = self.state.token_state(self.headers.get("Authorization"))
        if not repo.gated or access:
            return True
        name = f"{repo.repo_type} {repo.repo_id}"
        if auth == "anonymous":
            message = (f"Access to {name} is restricted. You must have access to it and be authenticated "
                       "to access it. Please log in.")
            self._error(401, message, "GatedRepo")
        else:
            message = (f"Access to {name} is restricted and you are not in the authorized list. "
                       f"Visit {self._origin()}/{repo.repo_id} to ask for access.")
            self._error(403, message, "GatedRepo")
        return False

    def _revision(self, repo: _Repo, revision: str) -> _Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _status_fault(self, key: tuple[str, ...]) -> bool:
        fault = self.state.find_fault(key)
        value = fault.take("status", method=self.command) if fault else None
        if value is None:
            return False
        code, _, headers = value  # type: ignore[misc]
        self._error(code, f"Injected error {code}", headers=headers)
        return True

    # -- API

    def _api(self, repo_type: str, parts: list[str]) -> None:
        repo_id, rest = self._find_repo(repo_type, parts)
        self._info.update(kind="api", repo_id=repo_id)
        repo = self._visible_repo(repo_type, repo_id)
        if repo is None or self._status_fault(("api", repo_type, repo_id)):
            return
        params = parse_qs(self._query, keep_blank_values=True)
        if self.command == "POST":
            if len(rest) == 2 and rest[0] == "paths-info":
                return self._paths_info(repo, rest[1])
            return self._error(404, "Not found")
        if not rest or (len(rest) == 2 and rest[0] == "revision"):
            revision = rest[1] if rest else "main"
            self._info["revision"] = revision
            commit = self._revision(repo, revision)
            if commit is not None:
                info = self._repo_info(repo, commit, params)
                tamper = self.state.tampers.get((repo.repo_type, repo.repo_id))
                self._json(tamper(info) if tamper is not None else info)
            return None
        if rest[0] == "tree" and len(rest) >= 2:
            self._info["revision"] = rest[1]
            commit = self._revision(repo, rest[1])
            if commit is not None:
                self._tree(repo, commit, "/".join(rest[2:]).strip("/"), params)
            return None
        if rest == ["refs"]:
            return self._json(self._refs(repo))
        if rest == ["auth-check"]:
            if self._gate(repo):
                self._json({})
            return None
        return self._error(404, "Not found")

    def _repo_info(self, repo: _Repo, commit: _Commit, params: dict[str, list[str]]) -> dict[str, object]:
        blobs = params.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings = []
        for f in sorted(commit.files.values(), key=lambda f: f.path):
            sibling: dict[str, object] = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        first = min(repo.commits.values(), key=lambda c: c.date)
        info: dict[str, object] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": first.date,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if params.get("securityStatus", ["false"])[-1].lower() in ("1", "true"):
            info["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        return info

    @staticmethod
    def _entry(repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict[str, object]:
        if path in commit.files:
            f = commit.files[path]
            entry: dict[str, object] = {"type": "file", "oid": f.oid, "size": f.size, "path": path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            if expand:
                entry["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                               "pickleImportScan": None}
        else:
            entry = {"type": "directory", "oid": commit.trees[path], "size": 0, "path": path}
        if expand:
            last = repo.commits[commit.last_touched[path]]
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry

    def _tree(self, repo: _Repo, commit: _Commit, folder: str, params: dict[str, list[str]]) -> None:
        if folder not in commit.trees:
            return self._error(404, f"Entry not found: {folder}", "EntryNotFound",
                               {"X-Repo-Commit": commit.sha})
        recursive = params.get("recursive", ["false"])[-1].lower() in ("1", "true")
        expand = params.get("expand", ["false"])[-1].lower() in ("1", "true")
        prefix = folder + "/" if folder else ""
        paths = [p for p in [*commit.trees, *commit.files] if p and p.startswith(prefix)]
        if not recursive:
            paths = [p for p in paths if "/" not in p[len(prefix):]]
        paths.sort()
        page_size = min(self.state.tree_page_size, 50) if expand else self.state.tree_page_size
        cursor = params.get("cursor", [""])[-1]
        start = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
        page = paths[start : start + page_size]
        headers: dict[str, str] = {"X-Repo-Commit": commit.sha}
        if start + page_size < len(paths):
            query = [(k, v) for k, values in params.items() if k != "cursor" for v in values]
            query.append(("cursor", base64.urlsafe_b64encode(str(start + page_size).encode()).decode()))
            raw_path = self.path.partition("?")[0]
            headers["Link"] = f'<{self._origin()}{raw_path}?{urlencode(query)}>; rel="next"'
        return self._json([self._entry(repo, commit, p, expand) for p in page], headers)

    def _paths_info(self, repo: _Repo, revision: str) -> None:
        self._info["revision"] = revision
        commit = self._revision(repo, revision)
        if commit is None:
            return
        if (self.headers.get("Content-Type") or "").startswith("application/json"):
            payload = json.loads(self._body or b"{}")
            paths = payload.get("paths") or []
            expand = bool(payload.get("expand"))
        else:
            form = parse_qs(self._body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        found = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in commit.files or (path and path in commit.trees):
                found.append(self._entry(repo, commit, path, expand))
        self._json(found, {"X-Repo-Commit": commit.sha})

    def _refs(self, repo: _Repo) -> dict[str, object]:
        def refs(names: dict[str, str], kind: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha} for n, sha in sorted(names.items())]

        return {"branches": refs(repo.branches, "heads"), "converts": [], "tags": refs(repo.tags, "tags"),
                "pullRequests": []}

    # -- downloads

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        self._info.update(kind="resolve", repo_id=repo_id, revision=revision, file=path)
        repo = self._visible_repo(repo_type, repo_id)
        if repo is None or not self._gate(repo):
            return
        commit = self._revision(repo, revision)
        if commit is None:
            return
        f = commit.files.get(path)
        if f is None:
            return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        key = ("file", repo_type, repo_id, path)
        if self._status_fault(key):
            return None
        common = {"X-Repo-Commit": commit.sha, "Access-Control-Expose-Headers":
                  "X-Repo-Commit,X-Linked-Etag,X-Linked-Size,ETag,Content-Range"}
        if not f.lfs:
            return self._content(f.content, f'"{f.etag}"', key, common)
        query = urlencode({"repo": repo_id, "type": repo_type, "file": path,
                           "expires": str(int(time.time()) + 3600)})
        location = f"{self._origin(self.state.cdn_port)}/cdn/{f.sha256}?{query}"
        body = f"Found. Redirecting to {location}".encode()
        headers = {**common, "Location": location, "ETag": f'"{f.oid}"', "X-Linked-Etag": f'"{f.sha256}"',
                   "X-Linked-Size": str(f.size)}
        return self._send(302, body, headers, content_type="text/plain; charset=utf-8")

    def _cdn(self, sha256: str) -> None:
        params = parse_qs(self._query)
        repo_id, repo_type, path = (params.get(k, [None])[0] for k in ("repo", "type", "file"))
        self._info.update(kind="cdn", repo_id=repo_id, file=path)
        content = self.state.blobs.get(sha256)
        if content is None:
            return self._error(404, "NoSuchKey")
        key = ("file", repo_type or "model", repo_id or "", path or "")
        if self._status_fault(key):
            return None
        extra = {}
        if path:
            name = path.rsplit("/", 1)[-1]
            extra["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        return self._content(content, f'"{sha256}"', key, extra)

    def _static(self, path: str) -> None:
        self._info.update(kind="url", file=path)
        key = ("url", path)
        if self._status_fault(key):
            return None
        content, headers = self.state.urls[path]
        return self._content(content, f'"{content.sha256}"', key, headers)

    def _current(self, content: _Content, etag: str, key: tuple[str, ...]) -> tuple[_Content, str]:
        """After a hold: a static URL's bytes as they are now (a test may have replaced them)."""
        if key[0] == "url" and key[1] in self.state.urls:
            now = self.state.urls[key[1]][0]
            return now, f'"{now.sha256}"'
        return content, etag

    def _content(self, content: _Content, etag: str, key: tuple[str, ...], headers: Mapping[str, str]) -> None:
        """Serve bytes with Range / If-Range support and the byte faults switched on for ``key``."""
        size = content.size
        last_modified = formatdate(_EPOCH, usegmt=True)
        fault = self.state.find_fault(key)
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        start, end, code = 0, size - 1, 200
        held = fault.take("hold") if fault and self.command == "GET" else None
        if held is not None:
            parsed = _parse_range(range_header, size) if range_header else None
            first = parsed[0] if isinstance(parsed, tuple) else 0
            if held.covers(first):  # type: ignore[attr-defined]
                held.wait(self.state.stopping)  # type: ignore[attr-defined]
                if self.state.stopping.is_set():
                    self.close_connection = True
                    return None
            content, etag = self._current(content, etag, key)
            size = content.size
        if range_header and self.command == "GET" and fault and fault.take("ignore_range"):
            range_header = None
        if range_header and (if_range is None or if_range in (etag, last_modified)):
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                return self._send(416, b"", {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes",
                                             "ETag": etag, **headers}, content_type="text/plain")
            if parsed is not None:
                start, end = parsed  # type: ignore[misc]
                code = 206
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        if code == 206:
            told = fault.take("range_total") if fault else None
            self.send_header("Content-Range", f"bytes {start}-{end}/{told if told is not None else size}")
        for name, value in headers.items():
            self.send_header(name, value)
        if self.command == "HEAD":
            self._publish(0)
            self.end_headers()
            return None
        self._stream(content, start, end + 1, fault)
        return None

    def _stream(self, content: _Content, start: int, stop: int, fault: Fault | None) -> None:
        drop = fault.take("drop") if fault else None
        stall = fault.take("stall") if fault else None
        corrupt = fault.take("corrupt") if fault else None
        if corrupt is None and fault is not None:
            corrupt = fault.take_if("corrupt_range", lambda v: start <= v[0] < stop)  # type: ignore[index]
        if drop is not None and int(drop) >= stop - start:  # type: ignore[call-overload]
            drop = None
        if stop == start:
            self._publish(0)
        self.end_headers()
        # Unaltered bytes of a file on disk go out with sendfile (as a CDN's would, at little
        # CPU), in large pieces; a corrupting fault needs the bytes in hand.
        src = open(content.path, "rb") if content.path is not None and corrupt is None else None
        with src or contextlib.nullcontext():
            self._stream_from(content, src, start, stop, drop, stall, corrupt)

    def _stream_from(self, content: _Content, src, start: int, stop: int, drop, stall, corrupt) -> None:
        pos = start
        rate = self.state.rate
        began = time.monotonic()
        while pos < stop:
            limit = min(stop, pos + (_SENDFILE_CHUNK if src is not None else _CHUNK))
            if rate:
                # Paced against the response's start, so late wake-ups do not add up.
                limit = min(limit, pos + _PACED_CHUNK)
                due = began + (pos - start) / rate
                if due > time.monotonic() and self.state.stopping.wait(due - time.monotonic()):
                    self.close_connection = True
                    return
            if drop is not None:
                limit = min(limit, start + int(drop))  # type: ignore[call-overload]
            if stall is not None:
                limit = min(limit, start + stall[0])  # type: ignore[index]
            if limit == stop:
                self._publish(self._sent + limit - pos)
            if src is not None:
                self._sent += self.connection.sendfile(src, pos, limit - pos)
            else:
                data = content.read(pos, limit - pos)
                if corrupt is not None:
                    data = _flip(data, pos, *corrupt)  # type: ignore[misc]
                if data:
                    self._write(data)
            pos = limit
            if drop is not None and self._sent >= int(drop):  # type: ignore[call-overload]
                self._outcome = "dropped"
                self.close_connection = True
                self._publish(self._sent)
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if stall is not None and self._sent >= stall[0]:  # type: ignore[index]
                self._outcome = "stalled"
                self._publish(self._sent)
                self.state.stopping.wait(stall[1])  # type: ignore[index]
                stall = None
                if self.state.stopping.is_set():
                    self.close_connection = True
                    return


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive, "unsatisfiable", or None to ignore the header (answer 200)."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0:
            return "unsatisfiable"
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


def _flip(data: bytes, pos: int, offset: int, length: int) -> bytes:
    lo, hi = max(offset, pos), min(offset + length, pos + len(data))
    if lo >= hi:
        return data
    buf = bytearray(data)
    for i in range(lo - pos, hi - pos):
        buf[i] ^= 0xFF
    return bytes(buf)


# --------------------------------------------------------------------------- public API


class HubServer:
    """A local Hugging Face Hub: ``HubServer()`` as a context manager, then ``HF_ENDPOINT=server.url``.

    ``token`` is the token with access to everything (gated and private repos); other
    tokens are rejected as invalid credentials unless added with :meth:`add_token`.
    ``token=None`` accepts any bearer token as one with full access.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, token: str | None = DEFAULT_TOKEN, *,
        cdn_port: int = 0, lfs_threshold: int = LFS_THRESHOLD, lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES,
        tree_page_size: int = 1000,
    ) -> None:
        self.host = host
        self.token = token
        self._state = _State(token, lfs_threshold, lfs_suffixes, tree_page_size)
        self._servers: list[_HTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._bind(port, cdn_port)
        self.port: int = self._servers[0].server_address[1]
        self.cdn_port: int = self._servers[1].server_address[1]
        self._state.cdn_port = self.cdn_port

    # lifecycle

    def _bind(self, port: int, cdn_port: int) -> None:
        self._servers = [_HTTPServer((self.host, port), self._state, "hub"),
                         _HTTPServer((self.host, cdn_port), self._state, "cdn")]

    def start(self) -> HubServer:
        """Serve (again, on the same ports after :meth:`stop`)."""
        if self._threads:
            return self
        if not self._servers:
            self._bind(self.port, self.cdn_port)
        self._state.stopping.clear()
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"hubserver-{server.role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the ports and every open connection; stalled responses end at once."""
        self._state.stopping.set()
        for server in self._servers:
            if self._threads:
                server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint to use as ``HF_ENDPOINT`` from this machine."""
        return self.url_for("127.0.0.1" if self.host in ("0.0.0.0", "") else self.host)

    def url_for(self, host: str) -> str:
        """The endpoint as seen from elsewhere, e.g. a container reaching the bridge gateway."""
        return f"http://{host}:{self.port}"

    def env(self, *, token: bool = True) -> dict[str, str]:
        """Environment for a subprocess that should use this server (and only it)."""
        env = {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
        if token and self.token:
            env["HF_TOKEN"] = self.token
        return env

    # content

    def add_token(self, token: str, *, access: bool = False) -> None:
        """Accept ``token`` as valid; with ``access=False`` it gets 403 on gated repos and cannot see private ones."""
        self._state.tokens[token] = access

    def add_repo(
        self, repo_id: str, files: Mapping[str, bytes | os.PathLike[str] | str], *, revision: str = "main",
        gated: bool | str | None = None, private: bool | None = None, repo_type: str = "model",
        tags: Collection[str] = (), lfs: Collection[str] | None = None, message: str | None = None,
        unhashed: Collection[str] = (),
    ) -> str:
        """Commit ``files`` (the whole tree) to branch ``revision`` of the repo; returns the 40-hex commit sha.

        Calling again adds a commit on that branch (its parent is the branch's previous head), or
        creates another branch. ``tags`` are also pointed at the new commit. ``gated`` and ``private``
        are kept from earlier calls when left as None. A file is LFS when ``lfs`` lists it, or (when
        ``lfs`` is None) when it is at least ``lfs_threshold`` bytes or has an LFS suffix. Files named
        in ``unhashed`` are listed with placeholder digests instead of their content's (hashing a
        sparse 141 GB folder takes minutes): a download of them fails verification, their ranges serve.
        """
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {sorted(REPO_TYPES)}, got {repo_type!r}")
        if _HEX40.fullmatch(revision):
            raise ValueError("a branch name cannot be a 40-hex commit id")
        entries: dict[str, _File] = {}
        for path, source in files.items():
            path = path.strip("/")
            if not path or any(part in ("", ".", "..") for part in path.split("/")):
                raise ValueError(f"invalid path in repo: {path!r}")
            content = _Content(source, unhashed=True) if path in unhashed else _Content(source)
            is_lfs = path in lfs if lfs is not None else (
                content.size >= self._state.lfs_threshold or path.lower().endswith(self._state.lfs_suffixes))
            if is_lfs:
                pointer = lfs_pointer(content.sha256, content.size)
                entries[path] = _File(path, content, True, git_blob_sha1(pointer), len(pointer))
            else:
                entries[path] = _File(path, content, False, content.git_sha1, None)
        for path in entries:
            parent_dir = path.rpartition("/")[0]
            while parent_dir:
                if parent_dir in entries:
                    raise ValueError(f"{parent_dir!r} cannot be both a file and a folder")
                parent_dir = parent_dir.rpartition("/")[0]
        with self._state.lock:
            repo = self._state.repos.setdefault((repo_type, repo_id), _Repo(repo_id, repo_type))
            if gated is not None:
                repo.gated = ("auto" if gated is True else gated) if gated else False
            if private is not None:
                repo.private = private
            parent = repo.commits.get(repo.branches.get(revision, ""))
            timestamp = _EPOCH + 60 * sum(len(r.commits) for r in self._state.repos.values())
            title = message or (f"Update {revision}" if parent else "Initial commit")
            trees = _git_trees(entries)
            sha = _git_commit_sha(trees[""], parent.sha if parent else None, timestamp, title)
            touched = {}
            for path in [*entries, *trees]:
                same = parent is not None and (
                    (path in entries and path in parent.files and parent.files[path].oid == entries[path].oid)
                    or (path in trees and parent.trees.get(path) == trees[path]))
                touched[path] = parent.last_touched[path] if same else sha  # type: ignore[union-attr]
            repo.commits[sha] = _Commit(sha, title, _iso(timestamp), entries, trees, touched)
            repo.branches[revision] = sha
            for tag in tags:
                repo.tags[tag] = sha
            for f in entries.values():
                if f.lfs:
                    self._state.blobs[f.sha256] = f.content
        return sha

    def tamper(self, repo_id: str, rewrite: Callable[[dict], dict], *, repo_type: str = "model") -> None:
        """Serve the repo's info JSON (the listing) as ``rewrite`` returns it: a hostile Hub that
        lists names, sizes, digests or commit ids it does not hold."""
        with self._state.lock:
            self._state.tampers[(repo_type, repo_id)] = rewrite

    def set_ref(self, repo_id: str, name: str, revision: str, *, tag: bool = False,
                repo_type: str = "model") -> str:
        """Point branch (or tag) ``name`` at the commit ``revision`` resolves to; returns that sha."""
        with self._state.lock:
            repo = self._state.repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id}: unknown revision {revision!r}")
            (repo.tags if tag else repo.branches)[name] = commit.sha
            return commit.sha

    def add_url(self, path: str, data: bytes | os.PathLike[str] | str, *,
                headers: Mapping[str, str] | None = None) -> str:
        """Serve ``data`` at ``path`` (GET/HEAD with Range, no auth); returns its full URL."""
        path = "/" + path.lstrip("/")
        if path.startswith("/api/") or path.startswith("/cdn/"):
            raise ValueError(f"path {path!r} is reserved for the Hub API")
        self._state.urls[path] = (_Content(data), dict(headers or {}))
        return f"{self.url}{quote(path)}"

    def file_url(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> str:
        """The ``/resolve`` URL of a file, as ``huggingface_hub.hf_hub_url`` builds it."""
        prefix = "" if repo_type == "model" else REPO_TYPES[repo_type] + "/"
        return f"{self.url}/{prefix}{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    # faults

    def fault(self, repo_id: str, path: str, *, repo_type: str = "model") -> Fault:
        """Switches for one repo file: on /resolve (status) and on the requests serving its bytes."""
        return self._state.fault(("file", repo_type, repo_id, path.strip("/")))

    def url_fault(self, path: str) -> Fault:
        """Switches for a static URL added with :meth:`add_url`."""
        return self._state.fault(("url", "/" + path.lstrip("/")))

    def api_fault(self, repo_id: str, *, repo_type: str = "model") -> Fault:
        """Switches for a repo's ``/api/...`` calls (only :meth:`Fault.status` applies)."""
        return self._state.fault(("api", repo_type, repo_id))

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def shape(self, *, rate: float | None = None, first_byte: float = 0.0) -> None:
        """Behave like a far host behind a CDN: each connection sends file bytes at most at
        ``rate`` bytes per second, and every request waits ``first_byte`` seconds before its
        answer. ``shape()`` turns both off."""
        self._state.rate = rate if rate and rate > 0 else None
        self._state.first_byte = max(0.0, first_byte)

    # request log

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._state.lock:
            return list(self._state.log)

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.log.clear()

    def count(self, repo_id: str | None = None, path: str | None = None, method: str | None = "GET", *,
              kind: str | None = None, status: int | None = None) -> int:
        """How many logged requests match. ``path`` is a file in the repo, or a static URL path."""
        def matches(r: LoggedRequest) -> bool:
            return ((repo_id is None or r.repo_id == repo_id)
                    and (path is None or r.file == (path if repo_id is not None else "/" + path.lstrip("/")))
                    and (method is None or r.method == method.upper())
                    and (kind is None or r.kind == kind)
                    and (status is None or r.status == status))
        return sum(1 for r in self.requests if matches(r))

    def bytes_sent(self, repo_id: str | None = None, path: str | None = None) -> int:
        """Body bytes served for a repo file (through /resolve and the CDN) or a static URL."""
        return sum(r.bytes_sent for r in self.requests
                   if (repo_id is None or r.repo_id == repo_id)
                   and (path is None or r.file in (path, "/" + path.lstrip("/"))))


try:
    import pytest
except ImportError:  # pragma: no cover - the server also runs without the test tools
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def hub_server() -> Iterator[HubServer]:
        """A started HubServer for one test: ``from tests.hubserver import hub_server``."""
        with HubServer() as server:
            yield server


# --------------------------------------------------------------------------- command line


def _folder_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(folder).parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hubserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for containers)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="token with full access ('' accepts any token)")
    parser.add_argument("--repo", action="append", default=[], metavar="ORG/NAME[@REV]=FOLDER")
    parser.add_argument("--gated", action="append", default=[], metavar="ORG/NAME")
    parser.add_argument("--private", action="append", default=[], metavar="ORG/NAME")
    parser.add_argument("--url", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--rate", type=float, default=None, help="cap each connection's file bytes at this many bytes per second")
    parser.add_argument("--first-byte", type=float, default=0.0, help="seconds every request waits before its answer")
    args = parser.parse_args(argv)

    server = HubServer(args.host, args.port, args.token or None, cdn_port=args.cdn_port)
    server.shape(rate=args.rate, first_byte=args.first_byte)
    for spec in args.repo:
        target, sep, folder = spec.partition("=")
        repo_id, _, revision = target.partition("@")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--repo {spec!r}: expected ORG/NAME[@REV]=FOLDER with an existing folder")
        server.add_repo(repo_id, _folder_files(Path(folder)), revision=revision or "main",
                        gated=repo_id in args.gated, private=repo_id in args.private)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        for spec in args.url:
            name, sep, file = spec.partition("=")
            if not sep or not Path(file).is_file():
                parser.error(f"--url {spec!r}: expected NAME=FILE with an existing file")
            print(f"{server.add_url(name, Path(file))}", file=sys.stderr, flush=True)
        print(server.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
