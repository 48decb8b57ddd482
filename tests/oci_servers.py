"""A real OCI registry for the tests (the CNCF distribution registry from Debian's
`docker-registry` package, installed by ops/registry.sh), started on a free 127.0.0.1
port with a temporary config: htpasswd basic auth, or token auth with a small token
server here (the registry verifies the RS256 JWTs it signs against a certificate made
for the run). Plus an independent push helper (plain http.client, not preflight's
client) for hand-made artifacts, and a fault proxy that logs, throttles and injects.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from tests.procs import free_port, terminate

USER, PASSWORD = "puller", "s3cret-registry-pass"
SERVICE, ISSUER = "test-registry", "test-token-issuer"


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the registry exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry tokens (RS256 JWTs with the signing certificate in x5c) to USER:PASSWORD,
    and tokens with no access to anyone else (the registry then answers 401)."""

    def __init__(self, root: Path, ttl: int = 300) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
        import datetime

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "preflight test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_pem = root / "token-signer.pem"
        self.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.ttl = ttl
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                q = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                ok = auth == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                server.requests.append({"scope": q.get("scope", []), "service": q.get("service", [None])[0], "basic": bool(auth)})
                if auth and not ok:
                    self.send_response(401)
                    self.end_headers()
                    return
                access = []
                for scope in q.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    repo, _, actions = rest.rpartition(":")
                    if ok:  # the user may pull and push everywhere (oras-py asks for pull only, then pushes)
                        access.append({"type": kind, "name": repo, "actions": sorted({"pull", "push", *actions.split(",")})})
                body = json.dumps({"token": server.sign(access), "expires_in": server.ttl}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, access: list) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + self.ttl, "nbf": now - 10, "iat": now,
                  "jti": os.urandom(8).hex(), "access": access}
        signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64url(sig)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class RegistryServer:
    root: Path
    auth: str  # "htpasswd" | "token" | "none"
    port: int = 0
    proc: subprocess.Popen | None = None
    token: TokenServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def start(self) -> RegistryServer:
        exe = shutil.which("docker-registry")
        if exe is None:
            raise RuntimeError("docker-registry is not installed: run `bash ops/registry.sh` (ops/test.sh does)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        auth = ""
        if self.auth == "htpasswd":
            (self.root / "htpasswd").write_text(htpasswd_line(USER, PASSWORD))
            auth = f"auth:\n  htpasswd:\n    realm: preflight-test\n    path: {self.root / 'htpasswd'}\n"
        elif self.auth == "token":
            self.token = TokenServer(self.root)
            auth = (f"auth:\n  token:\n    realm: {self.token.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                    f"    rootcertbundle: {self.token.cert_pem}\n")
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            "  cache:\n    blobdescriptor: inmemory\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: preflight-test-secret\n" + auth)
        self.proc = subprocess.Popen([shutil.which("docker-registry") or "docker-registry", "serve", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "registry.log", "ab"))
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        terminate(self.proc)
        if self.token is not None:
            self.token.close()

    def docker_config(self, folder: Path, host: str | None = None, password: str = PASSWORD) -> Path:
        """A Docker config folder (DOCKER_CONFIG) with credentials for this registry."""
        folder.mkdir(parents=True, exist_ok=True)
        auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
        (folder / "config.json").write_text(json.dumps({"auths": {host or self.host: {"auth": auth}}}))
        return folder

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def tag_link(self, repo: str, tag: str) -> Path:
        return self.storage / "docker/registry/v2/repositories" / repo / "_manifests/tags" / tag / "current/link"


# --------------------------------------------------------------------------- an independent pusher


class Pusher:
    """Pushes hand-made artifacts with plain http.client (basic auth or a token for the
    scope), so fixtures do not depend on the client under test."""

    def __init__(self, reg: RegistryServer) -> None:
        self.reg = reg

    def _auth(self, repo: str) -> dict[str, str]:
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.reg.auth == "htpasswd":
            return {"Authorization": basic}
        if self.reg.auth == "token":
            assert self.reg.token is not None
            tok = self.reg.token.sign([{"type": "repository", "name": repo, "actions": ["pull", "push"]}])
            return {"Authorization": f"Bearer {tok}"}
        return {}

    def _req(self, method: str, path: str, repo: str, body: bytes = b"", headers: dict | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.reg.port, timeout=30)
        conn.request(method, path, body=body, headers={**self._auth(repo), **(headers or {})})
        resp = conn.getresponse()
        resp.data = resp.read()  # type: ignore[attr-defined]
        conn.close()
        return resp

    def blob(self, repo: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = self._req("POST", f"/v2/{repo}/blobs/uploads/", repo)
        assert r.status == 202, (r.status, r.data)
        loc = urlsplit(r.getheader("Location"))
        path = loc.path + "?" + (loc.query + "&" if loc.query else "") + f"digest={digest}"
        r = self._req("PUT", path, repo, data, {"Content-Type": "application/octet-stream"})
        assert r.status == 201, (r.status, r.data)
        return {"digest": digest, "size": len(data)}

    def manifest(self, repo: str, ref: str, doc: dict, media_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
        body = json.dumps(doc).encode()
        r = self._req("PUT", f"/v2/{repo}/manifests/{ref}", repo, body, {"Content-Type": media_type})
        assert r.status == 201, (r.status, r.data)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def artifact(self, repo: str, tag: str, layers: list[tuple[str, bytes, dict]], config: bytes = b"{}",
                 config_type: str = "application/vnd.cncf.model.config.v1+json", artifact_type: str | None = None) -> str:
        """layers: (media type, bytes, annotations). Returns the manifest digest."""
        cfg = self.blob(repo, config)
        descs = []
        for media, data, ann in layers:
            d = self.blob(repo, data)
            descs.append({"mediaType": media, **d, **({"annotations": ann} if ann else {})})
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": config_type, **cfg}, "layers": descs}
        if artifact_type:
            doc["artifactType"] = artifact_type
        return self.manifest(repo, tag, doc)


def tar_bytes(entries: list[tuple], gzip_it: bool = False) -> bytes:
    """entries: (name, bytes) regular files, (name, None, 'dir'), (name, target, 'symlink'|'hardlink'|'fifo')."""
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            name, data = e[0], e[1]
            kind = e[2] if len(e) > 2 else "file"
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = data
            tf.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gzip_it else raw


# --------------------------------------------------------------------------- a fault proxy


@dataclass
class ProxyLog:
    lines: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)


class FaultProxy:
    """Forwards HTTP to the registry; logs request lines and Range headers; can slow blob
    bodies to `rate` bytes/s, or answer the next `fail` requests with a status."""

    def __init__(self, upstream_port: int, rate: float | None = None) -> None:
        self.upstream = upstream_port
        self.rate = rate
        self.log = ProxyLog()
        self.fail: list[tuple[int, dict]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                proxy.log.lines.append(f"{self.command} {self.path}")
                if self.headers.get("Range"):
                    proxy.log.ranges.append(self.headers["Range"])
                if proxy.fail:
                    status, hdrs = proxy.fail.pop(0)
                    self.send_response(status)
                    for k, v in hdrs.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=hdrs)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(k, v)
                data_len = resp.getheader("Content-Length")
                if data_len is None:
                    data = resp.read()
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    conn.close()
                    return
                self.end_headers()
                if self.command == "HEAD":
                    conn.close()
                    return
                try:
                    while True:
                        chunk = resp.read(64 * 1024)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        if proxy.rate and "/blobs/" in self.path:
                            time.sleep(len(chunk) / proxy.rate)
                except OSError:
                    pass
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def many_entries_tar(n: int, kind: str = "file", name_bytes: int = 0, gzip_it: bool = True) -> bytes:
    """A tar of `n` empty entries of one kind ("file" or "dir"), written block by block (tarfile
    takes seconds for 100,000 entries); with `name_bytes`, each entry's name comes from a PAX
    record that long."""
    import gzip
    import io
    import tarfile

    template = tarfile.TarInfo("x")
    template.mtime = 0
    template.type = tarfile.DIRTYPE if kind == "dir" else tarfile.REGTYPE
    block = bytearray(template.tobuf(tarfile.USTAR_FORMAT))
    out = io.BytesIO()
    for i in range(n):
        if name_bytes:
            long = tarfile.TarInfo(f"d/{i:08d}" + "n" * (name_bytes - 11))
            long.type = template.type
            out.write(long.tobuf(tarfile.PAX_FORMAT))
            continue
        b = bytearray(block)
        b[0:100] = f"e{i}".encode().ljust(100, b"\0")
        b[148:156] = b" " * 8
        b[148:156] = b"%06o\0 " % sum(b)
        out.write(b)
    out.write(bytes(1024))
    raw = out.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gzip_it else raw
