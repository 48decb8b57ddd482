"""The OCI distribution API, client side (standard library only).

Auth as container users expect it: anonymous; credentials from a Docker `config.json`
(`PREFLIGHT_REGISTRY_AUTH` — a file such as a mounted `kubernetes.io/dockerconfigjson`
secret —, then `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`,
`$REGISTRY_AUTH_FILE`); Basic; and the Bearer token flow from `WWW-Authenticate`
(realm, service, scope; an `identitytoken` is exchanged as an OAuth2 refresh token).
Manifests are read by tag or digest and their digest is always computed from the bytes
(asked by digest, the bytes must hash to it). Blob bytes are streamed by
`sources.http.fetch_to` (Range resume, redirects to storage without the Authorization
header); uploads are HEAD first, cross-repo mount when offered, then a monolithic or
chunked upload. Plain HTTP only for loopback hosts and those in
`PREFLIGHT_INSECURE_REGISTRY` (comma-separated HOST[:PORT]).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote, urlencode, urljoin, urlsplit

from ..errors import AuthError, FetchError, IntegrityError, StalledError, UsageError
from .http import Cancel, Timeouts, connect, parse_retry_after
from ..record import record

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_MANIFEST = 4 * 2**20  # the distribution registry's own limit
MAX_SMALL_BODY = 16 * 2**20  # a config blob, a token answer, an error body
MAX_JSON_ITEMS = 200_000  # members and items of one manifest, index or answer (a 4096-layer manifest has about 40 000)


def loads(raw: bytes | str) -> object:
    """JSON from a registry or an auth file, within bounds (size, members, 64 levels of
    nesting: `formats.jsonfile`); ValueError for anything else, RecursionError included."""
    from ..formats.jsonfile import Limits, parse_json

    data = raw.encode() if isinstance(raw, str) else raw
    value, err = parse_json(data, Limits(max_bytes=max(MAX_SMALL_BODY, len(data)), max_items=MAX_JSON_ITEMS))
    if err is not None:
        raise ValueError(err.message)
    return value
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
AUTH_FILE_ENV = "PREFLIGHT_REGISTRY_AUTH"
INSECURE_ENV = "PREFLIGHT_INSECURE_REGISTRY"
CHUNK_ENV = "PREFLIGHT_REGISTRY_CHUNK_MIB"  # upload in PATCH chunks of this size (0 or unset: one PUT)
SEND_CHUNK = 2**20


# --------------------------------------------------------------------------- where and who


def insecure_hosts() -> set[str]:
    raw = os.environ.get(INSECURE_ENV, "")
    return {h.strip().lower() for h in re.split(r"[,\s]+", raw) if h.strip()}


def is_plain_http(host: str) -> bool:
    """Loopback registries and the ones the operator listed speak plain HTTP."""
    host = host.lower()
    name = urlsplit(f"//{host}").hostname or host
    if host in insecure_hosts() or name in insecure_hosts():
        return True
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@record(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None  # an OAuth2 refresh token (`docker login` to some registries)
    registry_token: str | None = None  # a bearer token to send as is
    origin: str = ""  # the file it came from (for messages)


def _config_files() -> list[tuple[Path, bool]]:
    """(path, explicit): an explicit file must be readable; the defaults may be absent."""
    out: list[tuple[Path, bool]] = []
    if os.environ.get(AUTH_FILE_ENV):
        out.append((Path(os.environ[AUTH_FILE_ENV]), True))
    if os.environ.get("DOCKER_CONFIG"):
        out.append((Path(os.environ["DOCKER_CONFIG"]) / "config.json", False))
    out.append((Path.home() / ".docker" / "config.json", False))
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append((Path(os.environ["REGISTRY_AUTH_FILE"]), False))
    return out


def _auth_key(key: str) -> str:
    """`https://index.docker.io/v1/`, `http://host:5000`, `host:5000/` → the host."""
    key = key.strip().lower()
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def load_credentials(host: str) -> Credentials | None:
    """The first config file with an entry for `host`. Every secret read is registered for
    masking at once; a malformed file is a usage error naming the file, never a value."""
    from ..redact import register, register_login

    want = host.lower()
    for path, explicit in _config_files():
        try:
            raw = path.read_bytes()[: 4 * 2**20]
        except FileNotFoundError:
            if explicit:
                raise UsageError(f"the registry auth file {path} does not exist ({AUTH_FILE_ENV} / --registry-auth)") from None
            continue
        except OSError as exc:
            if explicit:
                raise UsageError(f"cannot read the registry auth file {path}: {exc.strerror}") from None
            continue
        try:
            data = loads(raw)
        except ValueError:
            raise UsageError(f"{path} is not JSON (expected a Docker config.json: {{\"auths\": {{\"HOST\": {{\"auth\": \"…\"}}}}}}); its content is not shown") from None
        if not isinstance(data, dict):
            continue
        auths = data.get("auths")
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if not isinstance(key, str) or _auth_key(key) != want or not isinstance(entry, dict):
                continue
            user = entry.get("username") if isinstance(entry.get("username"), str) else None
            password = entry.get("password") if isinstance(entry.get("password"), str) else None
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                register(entry["auth"])
                try:
                    decoded = base64.b64decode(entry["auth"], validate=False).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    raise UsageError(f"{path}: the auth of {key} is not base64 of USER:PASSWORD; its value is not shown") from None
                user, sep, password = decoded.partition(":")
                if not sep:
                    raise UsageError(f"{path}: the auth of {key} is not base64 of USER:PASSWORD; its value is not shown")
            identity = entry.get("identitytoken") if isinstance(entry.get("identitytoken"), str) else None
            rtoken = entry.get("registrytoken") if isinstance(entry.get("registrytoken"), str) else None
            for secret in (password, identity, rtoken):
                register(secret)
            register_login(user, password)
            if user or identity or rtoken:
                return Credentials(user or None, password, identity or None, rtoken or None, str(path))
    return None


# --------------------------------------------------------------------------- challenges and tokens


_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` → ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"') for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


@record
class _Token:
    value: str
    expires: float


@record
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def registry_error(resp: Response, what: str) -> FetchError:
    """The registry's error JSON (`{"errors": [{"code", "message"}]}`) as one message."""
    detail = ""
    try:
        errs = loads(resp.body or b"{}").get("errors") or []
        detail = "; ".join(f"{e.get('code', '?')}: {str(e.get('message', ''))[:200]}" for e in errs[:3] if isinstance(e, dict))
    except (ValueError, AttributeError):
        detail = resp.body[:200].decode("utf-8", "replace").strip()
    text = f"{what}: HTTP {resp.status}" + (f" ({detail})" if detail else "")
    if resp.status in (401, 403):
        return AuthError(text, url=resp.url, status=resp.status)
    err = FetchError(text, url=resp.url, status=resp.status)
    err.retry_after = parse_retry_after(resp.header("Retry-After"))
    return err


class Registry:
    """One registry host: its auth challenge, tokens per scope, and small requests."""

    def __init__(self, host: str, timeouts: Timeouts, cancel: Cancel | None = None) -> None:
        self.host = host
        self.base = f"{'http' if is_plain_http(host) else 'https'}://{host}"
        self.timeouts = timeouts
        self.cancel = cancel
        self._lock = threading.Lock()
        self._creds: Credentials | None = None
        self._creds_read = False
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._tokens: dict[str, _Token] = {}

    # -- credentials and tokens

    @property
    def credentials(self) -> Credentials | None:
        if not self._creds_read:
            self._creds = load_credentials(self.host)
            self._creds_read = True
        return self._creds

    def _denied(self, status: int, what: str, url: str, detail: str = "") -> AuthError:
        creds = self.credentials
        who = f"with the credentials for {self.host} from {creds.origin}" if creds else "anonymously (no credentials for it were found)"
        hint = (f"give credentials for {self.host}: a Docker config.json ({AUTH_FILE_ENV} / --registry-auth FILE, "
                "DOCKER_CONFIG, ~/.docker/config.json) with auths[\"" + self.host + "\"]")
        return AuthError(f"registry {self.host} refused {what} (HTTP {status}) {who}" + (f": {detail}" if detail else ""),
                         url=url, status=status, hint=hint)

    def auth_headers(self, scope: str) -> dict[str, str]:
        """Authorization for `scope` (`repository:NAME:pull[,push]`, several joined by a space)."""
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return {}
        scheme, params = challenge
        creds = self.credentials
        if scheme == "basic":
            if creds and creds.username is not None:
                raw = f"{creds.username}:{creds.password or ''}".encode()
                value = base64.b64encode(raw).decode()
                from ..redact import register

                register(value)
                return {"Authorization": f"Basic {value}"}
            return {}
        if scheme == "bearer":
            if creds and creds.registry_token:
                return {"Authorization": f"Bearer {creds.registry_token}"}
            return {"Authorization": f"Bearer {self._token(scope, params)}"}
        return {}

    def _token(self, scope: str, params: dict[str, str]) -> str:
        with self._lock:
            tok = self._tokens.get(scope)
            if tok is not None and tok.expires - 10 > time.monotonic():
                return tok.value
        realm = params.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise FetchError(f"registry {self.host} asked for a token without a usable realm ({str(realm)[:100]!r})")
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in scope.split(" ") if s]
        creds = self.credentials
        headers = {"Accept": "application/json"}
        if creds and creds.identity_token:
            form = urlencode([("grant_type", "refresh_token"), ("refresh_token", creds.identity_token), ("client_id", "lane-preflight"),
                              *query]).encode()
            resp = self.call("POST", realm, {**headers, "Content-Type": "application/x-www-form-urlencoded"}, form, auth=False)
        else:
            if creds and creds.username is not None:
                raw = base64.b64encode(f"{creds.username}:{creds.password or ''}".encode()).decode()
                from ..redact import register

                register(raw)
                headers["Authorization"] = f"Basic {raw}"
            sep = "&" if urlsplit(realm).query else "?"
            resp = self.call("GET", realm + (sep + urlencode(query) if query else ""), headers, auth=False)
        if resp.status in (401, 403):
            raise self._denied(resp.status, f"a token for {scope}", resp.url)
        if resp.status != 200:
            raise registry_error(resp, f"token from {urlsplit(realm).netloc}")
        try:
            data = loads(resp.body)
            value = data.get("token") or data.get("access_token")
            ttl = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise FetchError(f"the token server of {self.host} answered something that is not a token") from None
        if not isinstance(value, str) or not value or any(c.isspace() or ord(c) < 0x20 for c in value):
            raise FetchError(f"the token server of {self.host} answered something that is not a token")
        from ..redact import register

        register(value)
        with self._lock:
            self._tokens[scope] = _Token(value, time.monotonic() + max(ttl, 15.0))
        return value

    def forget_token(self, scope: str) -> None:
        with self._lock:
            self._tokens.pop(scope, None)

    def _learn(self, resp: Response) -> bool:
        """A 401 with a challenge we did not answer yet: remember it (True: ask again)."""
        header = resp.header("WWW-Authenticate")
        if not header:
            return False
        challenge = parse_challenge(header)
        with self._lock:
            known = self._challenge
            self._challenge = challenge
        if known is None or known[0] != challenge[0]:
            return True
        # A bearer challenge that names an error (expired token) or more scope: fetch a fresh token once.
        return challenge[0] == "bearer" and bool(challenge[1].get("error") or challenge[1].get("scope"))

    # -- requests

    def call(self, method: str, url: str, headers: Mapping[str, str] | None = None, body: bytes | None = None, *,
             auth: bool = True, scope: str = "", limit: int = MAX_SMALL_BODY, follow: bool = True) -> Response:
        """One small request (a manifest, a HEAD, an upload step, a token), answering the
        registry's auth challenge once. Bodies larger than `limit` are refused."""
        if not url.startswith(("http://", "https://")):
            url = self.base + url
        hdrs = dict(headers or {})
        for attempt in range(2):
            sent = {**hdrs, **(self.auth_headers(scope) if auth else {})}
            resp = self._send(method, url, sent, body, limit, follow)
            if resp.status == 401 and auth and attempt == 0:
                if self._learn(resp):
                    self.forget_token(scope)
                    continue
            return resp
        return resp

    def _send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, limit: int, follow: bool) -> Response:
        origin = urlsplit(url).netloc
        hdrs = dict(headers)
        for _hop in range(10):
            conn, target = connect(url, self.timeouts)
            try:
                try:
                    conn.connect()
                    if self.cancel is not None:
                        self.cancel.watch(conn.sock)
                    conn.request(method, target, body=body, headers=hdrs)
                    conn.sock.settimeout(self.timeouts.stall)
                    raw = conn.getresponse()
                    data = b"" if method == "HEAD" else raw.read(limit + 1)
                except (socket.timeout, TimeoutError):
                    raise StalledError(f"{urlsplit(url).netloc} did not answer within {self.timeouts.stall:g}s (--stall-timeout)", url=url) from None
                except OSError as exc:
                    if self.cancel is not None and self.cancel.is_set():
                        raise FetchError("cancelled", url=url) from None
                    raise FetchError(f"cannot reach registry {urlsplit(url).netloc}: {exc.strerror or exc}", url=url) from None
                except http.client.HTTPException as exc:
                    raise FetchError(f"bad HTTP answer from {urlsplit(url).netloc}: {type(exc).__name__}", url=url) from None
            finally:
                if self.cancel is not None:
                    self.cancel.forget(conn.sock)
                conn.close()
            if len(data) > limit:
                raise FetchError(f"{urlsplit(url).netloc} answered more than {limit} bytes for {method} {urlsplit(url).path[:200]}", url=url)
            if follow and raw.status in (301, 302, 303, 307, 308) and raw.getheader("Location") and method in ("GET", "HEAD"):
                url = urljoin(url, raw.getheader("Location"))
                if urlsplit(url).netloc != origin:
                    hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
                continue
            return Response(raw.status, raw.headers, data, url)
        raise FetchError("more than 10 redirects", url=url)

    def ping(self) -> None:
        """GET /v2/: learn the auth challenge (once per run)."""
        with self._lock:
            if self._challenge is not None:
                return
        resp = self._send("GET", self.base + "/v2/", {}, None, MAX_SMALL_BODY, True)
        if resp.status == 401:
            self._learn(resp)
        elif resp.status >= 500 or resp.status == 429:
            raise registry_error(resp, f"registry {self.host}")
        elif resp.status == 404:
            raise FetchError(f"{self.host} does not speak the OCI distribution API (GET /v2/ gave 404)", url=resp.url, status=404)


# --------------------------------------------------------------------------- one repository


@record(frozen=True)
class Manifest:
    digest: str  # sha256:… of the bytes as served
    media_type: str
    data: dict
    raw: bytes


class Repository:
    """A repository on a registry: manifests, blobs, uploads."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name

    @property
    def pull(self) -> str:
        return f"repository:{self.name}:pull"

    @property
    def push_scope(self) -> str:
        return f"repository:{self.name}:pull,push"

    def ref(self, reference: str) -> str:
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"{self.registry.host}/{self.name}{sep}{reference}"

    def blob_url(self, digest: str) -> str:
        return f"{self.registry.base}/v2/{self.name}/blobs/{digest}"

    def _checked(self, resp: Response, what: str, scope: str) -> Response:
        if resp.status in (401, 403):
            detail = ""
            try:
                errs = loads(resp.body or b"{}").get("errors") or []
                detail = "; ".join(f"{e.get('code')}: {str(e.get('message'))[:120]}" for e in errs[:2] if isinstance(e, dict))
            except (ValueError, AttributeError):
                pass
            raise self.registry._denied(resp.status, what, resp.url, detail)
        return resp

    def manifest(self, reference: str) -> Manifest:
        """The manifest (or index) `reference` names, its digest computed from the bytes."""
        self.registry.ping()
        what = f"oci://{self.ref(reference)}"
        resp = self._checked(self.registry.call("GET", f"/v2/{self.name}/manifests/{reference}", {"Accept": ACCEPT},
                                                scope=self.pull, limit=MAX_MANIFEST), f"pulling {what}", self.pull)
        if resp.status == 404:
            raise registry_error(resp, f"{what}: not found")
        if resp.status != 200:
            raise registry_error(resp, what)
        digest = "sha256:" + hashlib.sha256(resp.body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise IntegrityError(f"{what}: the registry served a manifest whose sha256 is {digest}; nothing was written")
        try:
            data = loads(resp.body)
        except ValueError as exc:  # the same bytes give the same answer: not retried (status 400)
            raise IntegrityError(f"{what}: the manifest is not JSON that can be read: it {exc}", status=400) from None
        if not isinstance(data, dict):
            raise IntegrityError(f"{what}: the manifest is not a JSON object")
        media = data.get("mediaType") or (resp.header("Content-Type") or "").split(";")[0].strip()
        if media not in MANIFEST_TYPES + INDEX_TYPES:
            if "manifests" in data:
                media = OCI_INDEX
            elif "layers" in data and "config" in data:
                media = OCI_MANIFEST
            else:
                raise IntegrityError(f"{what}: unknown manifest media type {str(media)[:100]!r} (expected an OCI or Docker v2 manifest or index)")
        return Manifest(digest, media, data, resp.body)

    def small_blob(self, digest: str, size: int, limit: int = MAX_SMALL_BODY) -> bytes:
        """A config blob, verified by digest."""
        if size > limit:
            raise IntegrityError(f"oci://{self.ref(digest)}: a config blob of {size} bytes (at most {limit})")
        resp = self._checked(self.registry.call("GET", f"/v2/{self.name}/blobs/{digest}", scope=self.pull, limit=limit),
                             f"pulling blob {digest}", self.pull)
        if resp.status != 200:
            raise registry_error(resp, f"blob {digest} of {self.registry.host}/{self.name}")
        if "sha256:" + hashlib.sha256(resp.body).hexdigest() != digest:
            raise IntegrityError(f"blob {digest} of {self.registry.host}/{self.name} does not match its digest")
        return resp.body

    # -- pushing

    def has_blob(self, digest: str) -> int | None:
        resp = self._checked(self.registry.call("HEAD", f"/v2/{self.name}/blobs/{digest}", scope=self.push_scope),
                             f"access to {self.name}", self.push_scope)
        if resp.status == 200:
            length = resp.header("Content-Length") or ""
            return int(length) if length.isdigit() else -1
        if resp.status == 404:
            return None
        raise registry_error(resp, f"HEAD blob {digest}")

    def mount(self, digest: str, source_repo: str) -> bool:
        """Cross-repo mount: True when the registry linked the blob without an upload."""
        scope = f"{self.push_scope} repository:{source_repo}:pull"
        resp = self._checked(self.registry.call("POST", f"/v2/{self.name}/blobs/uploads/?mount={quote(digest)}&from={quote(source_repo)}",
                                                {"Content-Length": "0"}, b"", scope=scope), f"push to {self.name}", scope)
        if resp.status == 201:
            return True
        if resp.status == 202:
            self._cancel_upload(resp)
            return False
        return False

    def _cancel_upload(self, resp: Response) -> None:
        loc = resp.header("Location")
        if loc:
            try:
                self.registry.call("DELETE", urljoin(resp.url, loc), scope=self.push_scope)
            except FetchError:
                pass

    def upload(self, path: Path, digest: str, size: int, progress: Callable[[int], None] | None = None,
               chunk: int | None = None, deadline: float | None = None) -> None:
        """POST an upload session, then one PUT of the whole file (or PATCH chunks + PUT)."""
        start = self._checked(self.registry.call("POST", f"/v2/{self.name}/blobs/uploads/", {"Content-Length": "0"}, b"",
                                                 scope=self.push_scope), f"push to {self.name}", self.push_scope)
        if start.status not in (202, 201):
            raise registry_error(start, f"starting an upload to {self.registry.host}/{self.name}")
        location = urljoin(start.url, start.header("Location") or "")
        if not start.header("Location"):
            raise FetchError(f"{self.registry.host} started an upload without a Location")
        if chunk is None:
            mib = os.environ.get(CHUNK_ENV, "").strip()
            chunk = int(float(mib) * 2**20) if mib and float(mib) > 0 else 0
        offset = 0
        if chunk and size > chunk:
            while offset < size:
                n = min(chunk, size - offset)
                resp = self._stream("PATCH", location, path, offset, n, {"Content-Range": f"{offset}-{offset + n - 1}",
                                                                          "Content-Type": "application/octet-stream"}, progress, deadline)
                if resp.status != 202:
                    raise registry_error(resp, f"uploading {digest} to {self.registry.host}/{self.name}")
                location = urljoin(resp.url, resp.header("Location") or location)
                offset += n
        sep = "&" if urlsplit(location).query else "?"
        final = f"{location}{sep}digest={quote(digest)}"
        resp = self._stream("PUT", final, path, offset, size - offset, {"Content-Type": "application/octet-stream"}, progress, deadline)
        if resp.status != 201:
            err = registry_error(resp, f"uploading {digest} to {self.registry.host}/{self.name}")
            if resp.status == 400 and b"DIGEST_INVALID" in resp.body:
                raise IntegrityError(f"{err} (the file changed while it was sent?)")
            raise err

    def _stream(self, method: str, url: str, path: Path, offset: int, length: int, headers: dict[str, str],
                progress: Callable[[int], None] | None, deadline: float | None) -> Response:
        """Send `length` bytes of `path` from `offset` as the body (Content-Length known)."""
        conn, target = connect(url, self.registry.timeouts)
        cancel = self.registry.cancel
        try:
            try:
                conn.connect()
                if cancel is not None:
                    cancel.watch(conn.sock)
                conn.sock.settimeout(self.registry.timeouts.stall)
                conn.putrequest(method, target, skip_accept_encoding=True)
                for k, v in {**headers, **self.registry.auth_headers(self.push_scope), "Content-Length": str(length)}.items():
                    conn.putheader(k, v)
                conn.endheaders()
                sent = 0
                with open(path, "rb", buffering=0) as f:
                    f.seek(offset)
                    buf = bytearray(SEND_CHUNK)
                    view = memoryview(buf)
                    while sent < length:
                        if deadline is not None and time.monotonic() > deadline:
                            raise StalledError("the run's deadline passed during an upload", url=url)
                        k = f.readinto(view[: min(SEND_CHUNK, length - sent)])
                        if not k:
                            raise IntegrityError(f"{path} shrank while it was uploaded", url=url)
                        conn.sock.sendall(view[:k])
                        sent += k
                        if progress:
                            progress(k)
                raw = conn.getresponse()
                data = raw.read(MAX_SMALL_BODY)
            except (socket.timeout, TimeoutError):
                raise StalledError(f"{self.registry.host} stalled during an upload ({self.registry.timeouts.stall:g}s, --stall-timeout)", url=url) from None
            except OSError as exc:
                if cancel is not None and cancel.is_set():
                    raise FetchError("cancelled", url=url) from None
                raise FetchError(f"upload to {self.registry.host} failed: {exc.strerror or exc}", url=url) from None
            except http.client.HTTPException as exc:
                raise FetchError(f"bad HTTP answer from {self.registry.host}: {type(exc).__name__}", url=url) from None
        finally:
            if cancel is not None:
                cancel.forget(conn.sock)
            conn.close()
        resp = Response(raw.status, raw.headers, data, url)
        if resp.status == 401 and self.registry._learn(resp):
            self.registry.forget_token(self.push_scope)  # an expired token: the retry gets a fresh one
            raise FetchError(f"{self.registry.host} asked for new credentials during an upload", url=url)
        return self._checked(resp, f"push to {self.name}", self.push_scope)

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        resp = self._checked(self.registry.call("PUT", f"/v2/{self.name}/manifests/{reference}", {"Content-Type": media_type}, body,
                                                scope=self.push_scope), f"push to {self.name}", self.push_scope)
        if resp.status not in (200, 201):
            raise registry_error(resp, f"putting the manifest {self.ref(reference)}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        served = resp.header("Docker-Content-Digest")
        if served and served != digest:
            raise IntegrityError(f"{self.registry.host} stored the manifest as {served}, its bytes hash to {digest}")
        return digest
