"""Cloud Storage's APIs for gs:// lanes and `push --to gs://`. Imported only when one is
used (never by `check`).

Credentials, first found:
  CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true   gcloud's own switch: anonymous requests, nothing looked up
  GS_ACCESS_KEY_ID + GS_SECRET_ACCESS_KEY  HMAC keys (gsutil's gs_access_key_id/gs_secret_access_key):
                                           the XML API, every request signed with SigV4 as Cloud
                                           Storage's interoperability accepts it (botocore's signer,
                                           the one the s3:// source uses)
  google-auth's application default credentials
                                           GOOGLE_APPLICATION_CREDENTIALS (a service-account key, an
                                           external account), gcloud's application_default_credentials.json,
                                           the metadata server (GKE workload identity, a VM's service
                                           account): the JSON API with a bearer token
  none of these                            anonymous requests (a public bucket)

google-auth only makes tokens. Listings, object metadata and uploads go over preflight's
own HTTP client (sources/http.request: timeouts, the keep-alive pool, redirects without
the token), and the bytes of every download through sources/http.fetch_to on the JSON
API's alt=media URL (or the XML API's signed URL), never through a client library's
downloader: ranges, resume across processes, stall timeouts, the lease.

Endpoint: STORAGE_EMULATOR_HOST (the variable Google's client libraries read for an
emulator or a private endpoint; `host:port` means http://host:port), else
https://storage.googleapis.com.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from ..errors import AuthError, FetchError, StalledError, UsageError
from ..record import record
from ..redact import register

if TYPE_CHECKING:
    from . import Context, Transfer
    from .http import Timeouts

ENDPOINT = "https://storage.googleapis.com"
READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
SIGN_SECONDS = 3600  # a signed XML URL is checked when its request starts; every attempt signs anew
PAGE_SIZE = 1000
# A listing is bounded whatever the server sends: bytes per page and in all, pages, objects.
MAX_PAGE_BYTES = 16 * 2**20
MAX_LIST_BYTES = 256 * 2**20
MAX_PAGES = 1_000  # a full page holds PAGE_SIZE objects: MAX_OBJECTS needs 20
MAX_OBJECTS = 20_000  # as many as an s3:// lane may list
MAX_META_BYTES = 1 * 2**20  # one object's metadata, an upload's answer, an error body
SIMPLE_UPLOAD_MAX = 8 * 2**20  # up to this, one multipart request (held in memory); above, a resumable upload
CHUNK_MIB = 16  # a resumable upload's request size (a multiple of 256 KiB); PREFLIGHT_GCS_CHUNK_MIB changes it
SEND_BLOCK = 2**20
NOT_RETRIED = 400  # FetchError.status of an answer asking again cannot change (a bounded or malformed listing)
HMAC_VARS = ("GS_ACCESS_KEY_ID", "GS_SECRET_ACCESS_KEY")
AUTH_HINT = ("check the Google credentials: GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), gcloud's application "
             "default credentials, the workload identity of the pod (the metadata server), or GS_ACCESS_KEY_ID/GS_SECRET_ACCESS_KEY "
             "(HMAC keys), and that they may read the bucket")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_XML_CODE = re.compile(r"<Code>([^<]{1,80})</Code>")


# --------------------------------------------------------------------------- configuration


def endpoint_from(env: dict[str, str] | os._Environ) -> str:
    raw = env.get("STORAGE_EMULATOR_HOST", "").strip()
    if not raw:
        return ENDPOINT
    url = raw if "://" in raw else f"http://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(f"STORAGE_EMULATOR_HOST={raw[:200]!r} is not a host:port or an http(s) URL",
                         hint="e.g. STORAGE_EMULATOR_HOST=http://gcs.storage:4443")
    return url.rstrip("/")


def check_environment(env: dict[str, str] | os._Environ) -> None:
    """Settings that cannot work are a usage error naming the variable (google-auth would
    fall through to the next way of finding credentials, or to none)."""
    def has(name: str) -> bool:
        return bool(env.get(name, "").strip())

    a, b = HMAC_VARS
    if has(a) != has(b):
        given, missing = (a, b) if has(a) else (b, a)
        raise UsageError(f"{given} is set and {missing} is not: Cloud Storage HMAC keys need both",
                         hint=f"set {missing} as well, or unset {given}")
    path = env.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if path and not os.path.isfile(os.path.expanduser(path)):
        raise UsageError(f"GOOGLE_APPLICATION_CREDENTIALS names {path}, which is not a readable file",
                         hint="mount the service-account key (a Secret), or unset the variable")
    endpoint_from(env)


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _adc_file() -> str | None:
    """gcloud's application default credentials file, when there is one."""
    base = os.environ.get("CLOUDSDK_CONFIG", "").strip() or os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    path = os.path.join(base, "application_default_credentials.json")
    return path if os.path.isfile(path) else None


class Credentials:
    """How requests are authorised: a bearer token (google-auth), HMAC signatures, or none."""

    def __init__(self, write: bool, timeouts: Timeouts, log: Callable[[str], None]) -> None:
        self.creds: Any = None
        self.hmac: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._request: Any = None
        if _true(os.environ.get("CLOUDSDK_AUTH_DISABLE_CREDENTIALS")):
            self.mode, self.origin = "anonymous", "CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true"
            return
        check_environment(os.environ)
        key, secret = (os.environ.get(n, "").strip() for n in HMAC_VARS)
        if key and secret:
            register(secret)
            try:
                import botocore.auth  # noqa: F401
            except ImportError:
                raise UsageError("gs:// with HMAC keys signs requests with botocore, which is not installed: "
                                 "pip install 'lane-preflight[gcs,s3]' (or use a service account instead of HMAC keys)") from None
            self.mode, self.origin, self.hmac = "hmac", "the HMAC keys in GS_ACCESS_KEY_ID/GS_SECRET_ACCESS_KEY", (key, secret)
            return
        try:
            import google.auth
            from google.auth import exceptions as gx
            from google.auth.transport.requests import Request
        except ImportError:
            raise UsageError("gs:// sources need google-auth (with requests), which is not installed: "
                             "pip install 'lane-preflight[gcs]'") from None
        limit = timeouts.connect + timeouts.stall

        class _Bounded(Request):  # every token request bounded (google-auth's own default waits 120 s)
            def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kw: Any) -> Any:
                return super().__call__(url, method, body, headers, timeout=timeout or limit, **kw)

        self._request = _Bounded()
        scopes = [WRITE_SCOPE if write else READ_SCOPE]
        try:
            self.creds, _project = google.auth.default(scopes=scopes)
        except gx.DefaultCredentialsError as exc:
            if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip() or _adc_file():
                where = "GOOGLE_APPLICATION_CREDENTIALS" if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip() else _adc_file()
                raise UsageError(f"the Google credentials in {where} cannot be used: {str(exc)[:300]}",
                                 hint="check the key file (a service-account JSON key or gcloud's application default credentials)") from None
            self.mode, self.origin = "anonymous", "no credentials"
            log("gs://: no Google credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, a "
                "metadata server) and no HMAC keys: anonymous requests, which read public buckets only")
            return
        self.mode = "oauth"
        self.origin = _origin(self.creds)

    def bearer(self) -> dict[str, str]:
        """The Authorization header of a JSON API request (a token refreshed when it is near its end)."""
        if self.mode != "oauth":
            return {}
        from google.auth import exceptions as gx

        with self._lock:
            if not self.creds.valid:
                try:
                    self.creds.refresh(self._request)
                except gx.RefreshError as exc:
                    raise AuthError(f"Google refused the credentials from {self.origin}: {_first(exc)}", hint=AUTH_HINT) from None
                except gx.TransportError as exc:
                    raise FetchError(f"cannot get a token for the credentials from {self.origin}: {_first(exc)}") from None
                except (gx.GoogleAuthError, ValueError) as exc:
                    raise AuthError(f"the credentials from {self.origin} cannot make a token: {_first(exc)}", hint=AUTH_HINT) from None
            token = self.creds.token
        register(token)
        return {"Authorization": f"Bearer {token}"}

    def expiring(self, within: float = 120.0) -> bool:
        """True when the bearer token ends within `within` seconds (a 401 in the middle of a
        long download is then the token's age, not a refusal)."""
        if self.mode != "oauth" or self.creds is None or getattr(self.creds, "expiry", None) is None:
            return False
        import datetime

        expiry = self.creds.expiry
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) if expiry.tzinfo is None else datetime.datetime.now(datetime.timezone.utc)
        return (expiry - now).total_seconds() < within

    def sign(self, method: str, url: str) -> str:
        """The URL signed for one request (HMAC keys: AWS4-HMAC-SHA256 in the query), else as is."""
        if self.hmac is None:
            return url
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials as Keys

        req = AWSRequest(method=method, url=url)
        S3SigV4QueryAuth(Keys(*self.hmac), "s3", "auto", expires=SIGN_SECONDS).add_auth(req)
        return req.url

    def who(self) -> str:
        """Which credentials were refused, by where they came from (never their value)."""
        if self.mode == "anonymous":
            return f"refused an anonymous request ({self.origin}); a private bucket needs credentials"
        return f"the credentials from {self.origin} were refused"


def _origin(creds: Any) -> str:
    """Where google-auth found the credentials, for messages (no secret in it)."""
    module = type(creds).__module__
    email = getattr(creds, "service_account_email", None)
    email = email if isinstance(email, str) and "@" in email else None
    if module.startswith("google.auth.compute_engine"):
        return "the metadata server (workload identity or the node's service account)"
    where = "GOOGLE_APPLICATION_CREDENTIALS" if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip() else "gcloud's application default credentials"
    if module.startswith("google.oauth2.service_account"):
        return f"{where} (service account {email})" if email else f"{where} (a service account)"
    if module.startswith(("google.auth.external_account", "google.auth.identity_pool", "google.auth.aws", "google.auth.pluggable")):
        return f"{where} (workload identity federation)"
    if module.startswith("google.auth.impersonated_credentials"):
        return f"{where} (impersonated service account)"
    return f"{where} (user credentials)"


def _first(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return str(arg)[:300]


# --------------------------------------------------------------------------- objects


@record(frozen=True)
class ObjectInfo:
    """What the server says about one object."""

    name: str
    size: int
    generation: str | None  # None only from a server that is not Cloud Storage (an S3-compatible one behind HMAC keys)
    crc32c: str | None  # 8 hex digits
    md5: str | None  # 32 hex digits (composite objects have none)
    sha256: str | None  # the `sha256` metadata `preflight push` writes
    etag: str | None = None
    encoding: str | None = None  # the stored Content-Encoding (gzip objects are transcoded on download)


def _b64hex(value: Any, size: int) -> str | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == size else None


def _sha256_meta(meta: Any) -> str | None:
    value = meta.get("sha256") if isinstance(meta, dict) else None
    return value.strip().lower() if isinstance(value, str) and _HEX64.match(value.strip().lower()) else None


def object_from_json(item: Any, where: str) -> ObjectInfo:
    """An object resource of the JSON API, its fields checked (a hostile listing is an
    error, never a traceback)."""
    if not isinstance(item, dict):
        raise FetchError(f"{where}: the listing holds {type(item).__name__} where an object belongs", status=NOT_RETRIED)
    name, size, gen = item.get("name"), item.get("size"), item.get("generation")
    if not isinstance(name, str) or not name or len(name.encode()) > 1024:
        raise FetchError(f"{where}: the listing holds an object without a usable name ({str(name)[:80]!r})", status=NOT_RETRIED)
    if isinstance(size, str) and size.isdigit() and len(size) <= 19:
        size = int(size)
    if type(size) is not int or size < 0:
        raise FetchError(f"{where}: object {name[:200]!r} has no valid size ({str(size)[:40]!r})", status=NOT_RETRIED)
    if isinstance(gen, int) and not isinstance(gen, bool):
        gen = str(gen)
    if not (isinstance(gen, str) and gen.isdigit() and len(gen) <= 19):
        raise FetchError(f"{where}: object {name[:200]!r} has no valid generation ({str(gen)[:40]!r})", status=NOT_RETRIED)
    encoding = item.get("contentEncoding")
    return ObjectInfo(name, size, gen, _b64hex(item.get("crc32c"), 4), _b64hex(item.get("md5Hash"), 16), _sha256_meta(item.get("metadata")),
                      str(item.get("etag") or "")[:200] or None, encoding if isinstance(encoding, str) and encoding else None)


def object_from_headers(name: str, resp: http.client.HTTPResponse) -> ObjectInfo:
    """An XML API HEAD: x-goog-generation, x-goog-hash (crc32c=…, md5=…), x-goog-meta-sha256
    (x-amz-meta-sha256 from an S3-compatible server)."""
    hashes: dict[str, str] = {}
    for value in resp.headers.get_all("x-goog-hash") or []:
        for part in value.split(","):
            k, _, v = part.strip().partition("=")
            hashes[k.strip().lower()] = v.strip()
    length = (resp.getheader("Content-Length") or "").strip()
    gen = (resp.getheader("x-goog-generation") or "").strip()
    meta = {"sha256": resp.getheader("x-goog-meta-sha256") or resp.getheader("x-amz-meta-sha256") or ""}
    encoding = (resp.getheader("x-goog-stored-content-encoding") or "").strip()
    return ObjectInfo(name, int(length) if length.isdigit() else 0, gen if gen.isdigit() and len(gen) <= 19 else None,
                      _b64hex(hashes.get("crc32c"), 4), _b64hex(hashes.get("md5"), 16), _sha256_meta(meta),
                      (resp.getheader("ETag") or "").strip().strip('"')[:200] or None, encoding if encoding not in ("", "identity") else None)


# --------------------------------------------------------------------------- the client


_lock = threading.Lock()
_clients: dict[tuple, GcsClient] = {}
_CONFIG_VARS = ("CLOUDSDK_AUTH_DISABLE_CREDENTIALS", *HMAC_VARS, "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG",
                "STORAGE_EMULATOR_HOST", "GCE_METADATA_HOST", "GCE_METADATA_IP")


def open_client(ctx: Context, write: bool = False) -> GcsClient:
    """One client per process, configuration and purpose (reading or writing scope)."""
    key = (write, ctx.timeouts.connect, ctx.timeouts.stall) + tuple(os.environ.get(n, "") for n in _CONFIG_VARS)
    with _lock:
        if key not in _clients:
            _clients[key] = GcsClient(ctx.timeouts, write, ctx.log)
        return _clients[key]


def gs_url(bucket: str, name: str, generation: str | None = None) -> str:
    return f"gs://{bucket}/{name}" + (f"#{generation}" if generation else "")


class GcsClient:
    """The JSON API (bearer token or anonymous) or the XML API (HMAC keys), with our limits
    and error mapping."""

    def __init__(self, timeouts: Timeouts, write: bool, log: Callable[[str], None]) -> None:
        try:
            import google_crc32c  # noqa: F401  (asked now, not in the middle of a download)
        except ImportError:
            raise UsageError("gs:// sources check objects' CRC32C with google-crc32c, which is not installed: "
                             "pip install 'lane-preflight[gcs]'") from None
        self.timeouts = timeouts
        self.endpoint = endpoint_from(os.environ)
        self.auth = Credentials(write, timeouts, log)
        self.xml = self.auth.mode == "hmac"
        self.where = self.endpoint

    # ------------------------------------------------------------------ URLs

    def _json_object(self, bucket: str, name: str) -> str:
        return f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"

    def _xml_object(self, bucket: str, name: str) -> str:
        return f"{self.endpoint}/{quote(bucket, safe='')}/{quote(name, safe='/~')}"

    def media(self, bucket: str, name: str, generation: str | None) -> tuple[str, dict[str, str]]:
        """The URL and headers that GET the object's bytes (that generation's when given)."""
        if self.xml:
            url = self._xml_object(bucket, name) + (f"?generation={generation}" if generation else "")
            return self.auth.sign("GET", url), {}
        query = {"alt": "media", **({"generation": generation} if generation else {})}
        return f"{self._json_object(bucket, name)}?{urlencode(query)}", self.auth.bearer()

    # ------------------------------------------------------------------ small requests

    def _get(self, url: str, what: str, method: str = "GET", cap: int = MAX_META_BYTES, headers: dict[str, str] | None = None
             ) -> tuple[int, bytes, http.client.HTTPResponse]:
        """One request whose answer is small: (status, body read up to `cap`, response)."""
        from .http import release, request
        from .pool import POOL

        hdrs = {"Accept-Encoding": "identity", **(headers or {})}
        if not self.xml:
            hdrs.update(self.auth.bearer())
        opened = request(self.auth.sign(method, url) if self.xml else url, hdrs, self.timeouts, method=method, pool=POOL)
        try:
            body = b"" if method == "HEAD" else opened.resp.read(cap + 1)
            if method == "HEAD":
                opened.resp.read()
        except (OSError, http.client.HTTPException) as exc:
            release(opened)
            if isinstance(exc, TimeoutError):
                raise StalledError(f"{what}: no data for {self.timeouts.stall:g}s from {self.where}") from None
            raise FetchError(f"{what}: the connection to {self.where} failed ({type(exc).__name__})") from None
        if len(body) > cap:
            release(opened)
            raise FetchError(f"{what}: the answer from {self.where} is larger than {cap // 2**20} MiB; refused", status=NOT_RETRIED)
        release(opened, None, POOL)
        return opened.resp.status, body, opened.resp

    def error(self, status: int, body: bytes, resp: http.client.HTTPResponse | None, what: str) -> FetchError:
        """Our error for an answer that is not a success (401/403: AuthError)."""
        from .http import parse_retry_after

        text = body[:2000].decode("utf-8", "replace")
        detail = ""
        try:
            doc = json.loads(text)
            msg = doc.get("error", {}).get("message") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) else None
            detail = str(msg)[:200] if msg else ""
        except ValueError:
            m = _XML_CODE.search(text)
            detail = m.group(1) if m else ""
        line = f"{what}: HTTP {status}" + (f" ({detail})" if detail else "") + f" from {self.where}"
        if status in (401, 403):
            return AuthError(f"{line}: {self.auth.who()}", url=what, status=status, hint=AUTH_HINT)
        err = FetchError(line, url=what, status=status)
        err.retry_after = parse_retry_after(resp.getheader("Retry-After") if resp is not None else None)
        return err

    # ------------------------------------------------------------------ listing

    def list_page(self, bucket: str, prefix: str, token: str | None, max_results: int = PAGE_SIZE) -> tuple[list[ObjectInfo], str | None, int]:
        """One page of the objects under `prefix`: (objects, next page token, body bytes).
        Objects from the XML API carry no checksums yet (see `stat`)."""
        where = f"gs://{bucket}/{prefix}"
        if self.xml:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_results), **({"continuation-token": token} if token else {})}
            status, body, resp = self._get(f"{self.endpoint}/{quote(bucket, safe='')}?{urlencode(query)}", where, cap=MAX_PAGE_BYTES)
        else:
            query = {"prefix": prefix, "maxResults": str(max_results), **({"pageToken": token} if token else {})}
            status, body, resp = self._get(f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o?{urlencode(query)}", where, cap=MAX_PAGE_BYTES)
        if status == 404:
            raise FetchError(f"bucket {bucket} does not exist at {self.where}", url=where, status=404)
        if status != 200:
            raise self.error(status, body, resp, where)
        objects, nxt = (_xml_page(body, where) if self.xml else _json_page(body, where))
        return objects, nxt, len(body)

    def list_all(self, bucket: str, prefix: str, retrying: Callable[[Callable[[], Any]], Any]) -> list[ObjectInfo]:
        """Every object under `prefix`, page by page, within MAX_PAGES, MAX_OBJECTS and
        MAX_LIST_BYTES; a page token seen before (a listing that would never end) is refused."""
        where = f"gs://{bucket}/{prefix}"
        out: list[ObjectInfo] = []
        seen: set[str] = set()
        token: str | None = None
        pages = total = 0
        while True:
            page, token, size = retrying(lambda token=token: self.list_page(bucket, prefix, token))
            pages += 1
            total += size
            out.extend(page)
            if len(out) > MAX_OBJECTS:
                raise FetchError(f"{where}: the listing holds more than {MAX_OBJECTS} objects; refused", status=NOT_RETRIED,
                                 hint="a lane is a model: point the source at its own prefix")
            if total > MAX_LIST_BYTES:
                raise FetchError(f"{where}: the listing is larger than {MAX_LIST_BYTES // 2**20} MiB; refused", status=NOT_RETRIED)
            if not token:
                return out
            if pages >= MAX_PAGES:
                raise FetchError(f"{where}: the listing goes on past {MAX_PAGES} pages; refused", status=NOT_RETRIED)
            if token in seen:
                raise FetchError(f"{where}: the server sent page token {token[:60]!r} a second time (a listing that never ends); refused",
                                 status=NOT_RETRIED)
            seen.add(token)

    def stat(self, bucket: str, name: str, generation: str | None = None) -> ObjectInfo | None:
        """The object's metadata (that generation's when given); None when there is none."""
        where = gs_url(bucket, name, generation)
        gen = f"?generation={generation}" if generation else ""
        if self.xml:
            status, body, resp = self._get(self._xml_object(bucket, name) + gen, where, method="HEAD")
            if status == 200:
                return object_from_headers(name, resp)
        else:
            status, body, resp = self._get(self._json_object(bucket, name) + gen, where)
            if status == 200:
                try:
                    doc = json.loads(body)
                except ValueError:
                    raise FetchError(f"{where}: the object's metadata from {self.where} is not JSON", status=NOT_RETRIED) from None
                return object_from_json(doc, where)
        if status == 404:
            return None
        raise self.error(status, body, resp, where)

    # ------------------------------------------------------------------ reading an object once (the lock)

    def measure(self, bucket: str, name: str, generation: str | None, expect_crc32c: str | None) -> tuple[int, str]:
        """Size and sha256 of the object (that generation), read once and not kept; the
        bytes must match the object's CRC32C when it has one."""
        import hashlib

        from .http import release, request
        from .pool import POOL
        from ..integrity import Crc32c

        url, headers = self.media(bucket, name, generation)
        where = gs_url(bucket, name, generation)
        opened = request(url, {"Accept-Encoding": "identity", **headers}, self.timeouts, pool=POOL)
        size = 0
        try:
            resp = opened.resp
            if resp.status != 200:
                raise self.error(resp.status, resp.read(2000), resp, where)
            sha, crc = hashlib.sha256(), Crc32c() if expect_crc32c else None
            while True:
                data = resp.read1(2**20)
                if not data:
                    break
                sha.update(data)
                if crc is not None:
                    crc.update(data)
                size += len(data)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{where}: connection lost at byte {size} ({type(exc).__name__})", url=where) from None
        finally:
            release(opened)
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) != size:
            raise FetchError(f"connection closed at byte {size} of {length} while reading {where}", url=where)
        if crc is not None and crc.hexdigest() != expect_crc32c:
            raise FetchError(f"{where}: the bytes read have crc32c {crc.hexdigest()}, the object's is {expect_crc32c}", url=where)
        return size, sha.hexdigest()

    # ------------------------------------------------------------------ uploads (JSON API)

    def upload(self, bucket: str, name: str, path: Path, size: int, sha256: str, crc32c: str, transfer: Transfer | None = None) -> ObjectInfo:
        """One file as object `name`, with its sha256 in the object's metadata and its
        CRC32C given to the server (which refuses bytes that do not match it). Up to
        SIMPLE_UPLOAD_MAX one multipart request; above, a resumable upload in requests of
        CHUNK_MIB, each streamed from the file. The object the server made must have the
        file's size and CRC32C."""
        if self.xml:
            raise UsageError("push --to gs:// uploads through the JSON API with a Google token; HMAC keys (GS_ACCESS_KEY_ID) are "
                             "for pulls only", hint="use a service account (GOOGLE_APPLICATION_CREDENTIALS or workload identity) to push")
        where = gs_url(bucket, name)
        meta = {"name": name, "metadata": {"sha256": sha256}, "crc32c": _hexb64(crc32c), "contentType": "application/octet-stream"}
        if size <= SIMPLE_UPLOAD_MAX:
            info = self._multipart(bucket, where, meta, path)
        else:
            info = self._resumable(bucket, where, meta, path, size, crc32c, transfer)
        if info.size != size or (info.crc32c and info.crc32c != crc32c):
            raise FetchError(f"{where}: the server stored {info.size} bytes with crc32c {info.crc32c}; the file has {size} bytes with "
                             f"crc32c {crc32c}", url=where)
        return info

    def _multipart(self, bucket: str, where: str, meta: dict[str, Any], path: Path) -> ObjectInfo:
        boundary = f"preflight-{uuid.uuid4().hex}"
        head = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(meta)}\r\n"
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        url = f"{self.endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=multipart"
        status, answer, resp = self._send("POST", url, where, body, {"Content-Type": f"multipart/related; boundary={boundary}"})
        if status not in (200, 201):
            raise self.error(status, answer, resp, where)
        return self._resource(answer, where)

    def _resumable(self, bucket: str, where: str, meta: dict[str, Any], path: Path, size: int, crc32c: str,
                   transfer: Transfer | None) -> ObjectInfo:
        url = f"{self.endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=resumable"
        status, answer, resp = self._send("POST", url, where, json.dumps(meta).encode(), {
            "Content-Type": "application/json; charset=UTF-8", "X-Upload-Content-Type": "application/octet-stream",
            "X-Upload-Content-Length": str(size)})
        if status not in (200, 201):
            raise self.error(status, answer, resp, where)
        session = resp.getheader("Location") or ""
        if not session.startswith(("http://", "https://")):
            raise FetchError(f"{where}: the server started a resumable upload without a session URI", url=where)
        register(session)  # the session URI is a credential for this upload: never shown
        for value in (urlsplit(session).query or "").split("&"):
            if value.startswith("upload_id="):
                register(value[len("upload_id="):])
        chunk = chunk_size()
        offset = 0
        stuck = 0
        while True:
            if transfer is not None and transfer.cancel is not None and transfer.cancel.is_set():
                raise FetchError(f"{where}: cancelled")
            end = min(size, offset + chunk)
            headers = {"Content-Range": f"bytes {offset}-{end - 1}/{size}", "Content-Type": "application/octet-stream"}
            if end == size:
                headers["X-Goog-Hash"] = f"crc32c={_hexb64(crc32c)}"  # checked by the server before the object exists
            try:
                status, answer, resp = self._send("PUT", session, where, _Slice(path, offset, end - offset), headers)
            except FetchError:
                status, answer, resp = self._send("PUT", session, where, b"", {"Content-Range": f"bytes */{size}"})  # where are we?
            if status in (200, 201):
                return self._resource(answer, where)
            if status == 308:
                got = resp.getheader("Range") or ""
                m = re.match(r"^bytes=0-(\d+)$", got.strip())
                done = int(m.group(1)) + 1 if m else 0
                stuck = 0 if done > offset else stuck + 1
                if done > size or stuck > 3:
                    raise FetchError(f"{where}: the server holds {done} bytes of a resumable upload of {size} and takes no more", url=where)
                if transfer is not None and transfer.progress is not None and done > offset:
                    transfer.progress(done - offset)
                offset = done
                continue
            if status in (404, 410):
                raise FetchError(f"{where}: the resumable upload session ended (HTTP {status}); the next attempt starts over", url=where)
            raise self.error(status, answer, resp, where)

    def _send(self, method: str, url: str, where: str, body: bytes | _Slice, headers: dict[str, str]) -> tuple[int, bytes, http.client.HTTPResponse]:
        """One request with a body (bytes, or a file slice streamed in SEND_BLOCK pieces)."""
        from .http import connect

        hdrs = {"Accept-Encoding": "identity", **headers, **self.auth.bearer(), "Content-Length": str(len(body))}
        conn, target = connect(url, self.timeouts)
        try:
            conn.connect()
            conn.sock.settimeout(self.timeouts.stall)
            conn.request(method, target, body=body if isinstance(body, bytes) else body.blocks(), headers=hdrs)
            resp = conn.getresponse()
            answer = resp.read(MAX_META_BYTES + 1)
            return resp.status, answer[:MAX_META_BYTES], resp
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{where}: the upload to {self.where} failed ({type(exc).__name__})", url=where) from None
        finally:
            if isinstance(body, _Slice):
                body.close()
            conn.close()

    def _resource(self, answer: bytes, where: str) -> ObjectInfo:
        try:
            return object_from_json(json.loads(answer), where)
        except ValueError:
            raise FetchError(f"{where}: the server's answer to the upload is not an object resource", url=where) from None


def chunk_size() -> int:
    raw = os.environ.get("PREFLIGHT_GCS_CHUNK_MIB", "").strip()
    if not raw:
        return CHUNK_MIB * 2**20
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise UsageError(f"PREFLIGHT_GCS_CHUNK_MIB={raw[:40]!r}: expected a whole number of MiB from 1 to 1024")
    return int(raw) * 2**20  # a multiple of 256 KiB, as resumable uploads require


def _hexb64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _json_page(body: bytes, where: str) -> tuple[list[ObjectInfo], str | None]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise FetchError(f"{where}: the listing is not JSON", status=NOT_RETRIED) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
        raise FetchError(f"{where}: the listing is not an object list", status=NOT_RETRIED)
    token = doc.get("nextPageToken")
    if token is not None and (not isinstance(token, str) or len(token) > 4096):
        raise FetchError(f"{where}: the listing's page token is not a string of at most 4096 characters", status=NOT_RETRIED)
    return [object_from_json(item, where) for item in doc.get("items", [])], token or None


def _xml_page(body: bytes, where: str) -> tuple[list[ObjectInfo], str | None]:
    import xml.etree.ElementTree as ET

    if b"<!DOCTYPE" in body[:4096].upper() or b"<!ENTITY" in body.upper():
        raise FetchError(f"{where}: the listing declares a DOCTYPE or entities; refused", status=NOT_RETRIED)
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise FetchError(f"{where}: the listing is not XML", status=NOT_RETRIED) from None

    def local(el: Any) -> str:
        return str(el.tag).rsplit("}", 1)[-1]

    def child(el: Any, tag: str) -> str | None:
        for c in el:
            if local(c) == tag:
                return (c.text or "").strip()
        return None

    out = []
    for el in root:
        if local(el) != "Contents":
            continue
        name, size, gen = child(el, "Key"), child(el, "Size") or "", child(el, "Generation") or ""
        if not name or len(name.encode()) > 1024 or not size.isdigit() or len(size) > 19:
            raise FetchError(f"{where}: the listing holds an entry without a usable key and size ({str(name)[:80]!r})", status=NOT_RETRIED)
        out.append(ObjectInfo(name, int(size), gen if gen.isdigit() and len(gen) <= 19 else None, None, None, None,
                              (child(el, "ETag") or "").strip('"')[:200] or None))
    truncated = (child(root, "IsTruncated") or "").lower() == "true"
    token = child(root, "NextContinuationToken") if truncated else None
    if truncated and not token:
        raise FetchError(f"{where}: the listing says it is truncated and gives no continuation token", status=NOT_RETRIED)
    if token is not None and len(token) > 4096:
        raise FetchError(f"{where}: the listing's continuation token is longer than 4096 characters", status=NOT_RETRIED)
    return out, token


class _Slice:
    """A window of a file sent as a request body, SEND_BLOCK at a time (bounded memory)."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._f = open(path, "rb")
        self._f.seek(start)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def blocks(self) -> Iterator[bytes]:
        left = self._length
        while left:
            data = self._f.read(min(SEND_BLOCK, left))
            if not data:
                raise FetchError(f"{self._f.name} is shorter than when it was verified")
            left -= len(data)
            yield data

    def close(self) -> None:
        self._f.close()


def file_crc32c(path: Path) -> str:
    from ..integrity import Crc32c

    crc = Crc32c()
    with open(path, "rb") as f:
        while True:
            data = f.read(4 * 2**20)
            if not data:
                return crc.hexdigest()
            crc.update(data)

