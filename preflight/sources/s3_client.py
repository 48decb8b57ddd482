"""The S3 API through botocore: configuration as the AWS SDKs read it, errors mapped to
ours, presigned GETs, HEAD/list, uploads. Imported only when an s3:// lane or
destination is used (never by `check`).

Configuration, all from the conventions S3 users already have:
  credentials  AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN); AWS_PROFILE with
               AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE; AWS_WEB_IDENTITY_TOKEN_FILE +
               AWS_ROLE_ARN (EKS IRSA, through STS AssumeRoleWithWebIdentity); the rest of
               botocore's chain (container and instance roles); none at all: unsigned
               requests (a public bucket).
  endpoint     AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else the profile's, else AWS.
               A custom endpoint is addressed path-style (http://host/bucket/key) unless
               the profile's `s3 = addressing_style` says otherwise.
  region       AWS_REGION, else AWS_DEFAULT_REGION, else the profile's, else us-east-1.
  KServe's     S3_ENDPOINT (+ S3_USE_HTTPS=0 for http) when no AWS_ENDPOINT_URL* is set;
  variables    awsAnonymousCredential=true (unsigned requests, whatever credentials are set);
               S3_VERIFY_SSL=0 (no certificate check); AWS_CA_BUNDLE (a CA file, for the GETs
               as for botocore); S3_USER_VIRTUAL_BUCKET=true (virtual-hosted addressing);
               S3_USE_ACCELERATE=true (the accelerate endpoint). As KServe's storage
               initializer reads them (python/storage/kserve_storage/kserve_storage.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import AuthError, FetchError, UsageError
from ..record import record
from ..redact import register

if TYPE_CHECKING:
    import http.client

    from . import Context, Transfer
    from .http import Timeouts
    from .s3_listing import Listed

PRESIGN_SECONDS = 3600  # a GET URL is checked when the request starts; a retry presigns anew
PART_MIB = 64  # files larger than this go up in parts of (at least) this size; PREFLIGHT_S3_PART_MIB changes it (5 at least)
MAX_PARTS = 10_000
PARTS_IN_PARALLEL = 4
AUTH_HINT = ("check the S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), AWS_PROFILE, "
             "or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, and that they may read the bucket")
CREDENTIALS = "credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or AWS_WEB_IDENTITY_TOKEN_FILE+AWS_ROLE_ARN"
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
               "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidIdentityToken",
               "ExpiredTokenException", "AuthorizationHeaderMalformed", "403", "401"}
_XML_CODE = re.compile(r"<Code>([^<]{1,80})</Code>")


@record(frozen=True)
class ListedPage:
    """One listing page: its objects, the token of the next (None at the end), its body's size."""

    objects: list[Listed]
    next_token: str | None
    truncated: bool
    bytes: int


def check_environment(env: dict[str, str] | os._Environ) -> None:
    """Credentials set halfway are a usage error that names the missing variable (botocore
    would silently fall through to the next provider, or to no credentials at all)."""
    def has(name: str) -> bool:
        return bool(env.get(name, "").strip())

    pairs = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"))
    for a, b in pairs:
        if has(a) != has(b):
            given, missing = (a, b) if has(a) else (b, a)
            raise UsageError(f"{given} is set and {missing} is not: S3 credentials need both",
                             hint=f"set {missing} as well, or unset {given}")
    if has("AWS_SESSION_TOKEN") and not has("AWS_ACCESS_KEY_ID"):
        raise UsageError("AWS_SESSION_TOKEN is set without AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                         hint="temporary credentials are the three together")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if has(name):
            parts = urlsplit(env[name].strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UsageError(f"{name}={env[name].strip()[:200]!r} is not an http(s) URL", hint="e.g. http://minio.storage:9000")
            break
    # A shared credentials or config file that is not there is no file (an optional Secret
    # that is not mounted), as for botocore; a web identity token file must be there.
    path = env.get("AWS_WEB_IDENTITY_TOKEN_FILE", "").strip()
    if path and not os.path.isfile(os.path.expanduser(path)):
        raise UsageError(f"AWS_WEB_IDENTITY_TOKEN_FILE names {path}, which is not a readable file",
                         hint="mount the projected service account token (EKS does so with IRSA), or unset the variable")


def _is_aws(endpoint: str | None) -> bool:
    host = (urlsplit(endpoint).hostname or "") if endpoint else "amazonaws.com"
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn")) or host == "amazonaws.com"


_lock = threading.Lock()
_clients: dict[tuple, S3Client] = {}


def open_client(ctx: Context) -> S3Client:
    """One client per process and configuration (sources and destinations share it)."""
    key = (ctx.timeouts.connect, ctx.timeouts.stall) + tuple(os.environ.get(n, "") for n in _CONFIG_VARS)
    with _lock:
        if key not in _clients:
            _clients[key] = S3Client(ctx.timeouts)
        return _clients[key]


_CONFIG_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CA_BUNDLE", "S3_ENDPOINT", "S3_USE_HTTPS",
                "S3_VERIFY_SSL", "awsAnonymousCredential", "S3_USER_VIRTUAL_BUCKET", "S3_USE_ACCELERATE")
_TRUE = ("1", "true", "yes", "on")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def kserve_endpoint() -> str | None:
    """KServe's S3_ENDPOINT (a host[:port], or a URL), http when S3_USE_HTTPS=0."""
    raw = os.environ.get("S3_ENDPOINT", "").strip()
    if not raw:
        return None
    if raw.lower().startswith(("http://", "https://")):
        return raw
    return ("http://" if os.environ.get("S3_USE_HTTPS", "").strip() == "0" else "https://") + raw


def tls_verify() -> bool | str:
    """False when S3_VERIFY_SSL says 0/false; a CA bundle's path (AWS_CA_BUNDLE); else True."""
    raw = os.environ.get("S3_VERIFY_SSL", "").strip().lower()
    if raw in ("0", "false"):
        return False
    bundle = os.environ.get("AWS_CA_BUNDLE", "").strip()
    if bundle:
        if not os.path.isfile(bundle):
            raise UsageError(f"AWS_CA_BUNDLE names {bundle}, which is not a readable file",
                             hint="mount the CA bundle there (KServe: the s3-cabundle annotation), or unset the variable")
        return bundle
    return True


class S3Client:
    """A botocore S3 client configured from the environment, with our error mapping."""

    def __init__(self, timeouts: Timeouts) -> None:
        check_environment(os.environ)
        for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            register(os.environ.get(name))
        try:
            import botocore.session
            from botocore import UNSIGNED
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError
        except ImportError:
            from ..errors import MissingExtra

            raise MissingExtra("an s3:// source", "s3", "botocore") from None
        session = botocore.session.get_session()
        try:
            scoped = session.get_scoped_config()
            creds = session.get_credentials()
        except BotoCoreError as exc:  # a profile that does not exist, a config file that does not parse
            raise UsageError(f"the AWS configuration cannot be used: {exc}",
                             hint="check AWS_PROFILE, AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE") from None
        self.anonymous = creds is None or _flag("awsAnonymousCredential")
        self.creds = None if self.anonymous else creds
        endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "").strip() or None
        if endpoint is None:
            endpoint = kserve_endpoint() or _profile_endpoint(scoped)
        self.endpoint = endpoint
        self.verify = tls_verify()
        self.region = ((os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "").strip()
                       or scoped.get("region") or "us-east-1")
        style = (scoped.get("s3") or {}).get("addressing_style") if isinstance(scoped.get("s3"), dict) else None
        if _flag("S3_USER_VIRTUAL_BUCKET"):
            style = "virtual"
        style = style or ("auto" if _is_aws(endpoint) else "path")
        from .. import __version__

        config = Config(
            signature_version=UNSIGNED if self.anonymous else "s3v4",
            s3={"addressing_style": style, **({"use_accelerate_endpoint": True} if _flag("S3_USE_ACCELERATE") else {})},
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.stall,
            retries={"max_attempts": 1, "mode": "standard"},  # retries are ours: --retries, backoff, the deadline
            max_pool_connections=16,
            request_checksum_calculation="when_required",  # no aws-chunked CRC trailers: S3-compatible servers differ
            response_checksum_validation="when_required",
            user_agent_extra=f"lane-preflight/{__version__}",
        )
        self.timeouts = timeouts
        self.client = session.create_client("s3", region_name=self.region, endpoint_url=endpoint, config=config, verify=self.verify)
        self.where = endpoint or f"AWS S3 ({self.region})"
        if self.verify is not True and endpoint:
            self._trust(endpoint)

    def _trust(self, endpoint: str) -> None:
        """The presigned GETs (preflight's own client) check the endpoint's certificate as botocore does."""
        import ssl

        from .pool import trust_host

        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            return
        if self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=str(self.verify))
        trust_host(parts.hostname, parts.port or 443, context)

    # ------------------------------------------------------------------ credentials

    def _frozen(self) -> None:
        """Resolve credentials now (a web identity's STS call happens here) and mask them."""
        if self.creds is None:
            return
        try:
            frozen = self.creds.get_frozen_credentials()
        except Exception as exc:
            raise self._map(exc, "the credentials") from None
        register(frozen.secret_key)
        register(frozen.token)

    # ------------------------------------------------------------------ requests

    def _call(self, what: str, op: str, **params: Any) -> Any:
        self._frozen()
        try:
            return getattr(self.client, op)(**params)
        except Exception as exc:
            raise self._map(exc, what) from None

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The object's HEAD (with its checksum when it has one), None when there is none."""
        from botocore.exceptions import ClientError

        self._frozen()
        try:
            return self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _status(exc) == 404 and _code(exc) in ("404", "NoSuchKey", "NotFound"):
                self._bucket_exists(bucket)
                return None
            raise self._map(exc, f"s3://{bucket}/{key}") from None
        except Exception as exc:
            raise self._map(exc, f"s3://{bucket}/{key}") from None

    def _bucket_exists(self, bucket: str) -> None:
        """A HEAD's 404 has no body: a listing tells a missing bucket from a missing key."""
        self.list_page(bucket, "", max_keys=1)

    def list_page(self, bucket: str, prefix: str, max_keys: int = 1000) -> list[Listed]:
        return self.list_objects(bucket, prefix, None, max_keys).objects

    def list_objects(self, bucket: str, prefix: str, token: str | None, max_keys: int = 1000) -> ListedPage:
        """One ListObjectsV2 page, fetched from a presigned URL and parsed as it streams in
        (s3_listing: a byte cap, no entities, a clear error for anything that is not a
        listing). botocore signs the request and reads nothing: its parser holds a whole
        body of any size in memory, and turns malformed listings into internal errors."""
        what = f"s3://{bucket}/{prefix}"
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys, "EncodingType": "url"}
        if token:
            params["ContinuationToken"] = token
        self._frozen()
        try:
            url = self.client.generate_presigned_url("list_objects_v2", Params=params, ExpiresIn=PRESIGN_SECONDS)
        except Exception as exc:
            raise self._map(exc, what) from None
        return self._get_listing(url, what, max_keys)

    def _get_listing(self, url: str, what: str, max_keys: int) -> ListedPage:
        import http.client
        import socket

        from .s3_listing import MAX_PAGE_BYTES, ListingError, PageParser

        conn = _connection(url, self.timeouts)
        seen = 0
        try:
            resp = _get(conn, url, self.timeouts.stall)
            if resp.status != 200:
                body = resp.read(64 * 1024).decode("utf-8", "replace")
                code, message = _xml_field(body, "Code"), _xml_field(body, "Message")
                raise self._from_error(code or str(resp.status), resp.status, message, what, {"retry-after": resp.getheader("Retry-After")})
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > MAX_PAGE_BYTES:
                raise ListingError(f"a listing page of {int(length)} bytes (at most {MAX_PAGE_BYTES})")
            parser = PageParser(max_keys=max_keys)
            while True:
                data = resp.read1(64 * 1024)
                if not data:
                    break
                seen += len(data)
                parser.feed(data)
            if length and length.isdigit() and seen != int(length):
                raise FetchError(f"{what}: the listing from {self.where} was cut at byte {seen} of {length}", url=what)
            page = parser.close()
        except ListingError as exc:
            raise FetchError(f"{what}: {self.where} answered the listing with something that cannot be used: {exc}",
                             url=what, status=400, hint="the server is not an S3 ListObjectsV2 endpoint, or is broken") from None
        except (socket.timeout, TimeoutError):
            raise FetchError(f"{what}: the listing from {self.where} sent nothing for {self.timeouts.stall:g}s", url=what) from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{what}: the listing from {self.where} failed ({type(exc).__name__})", url=what) from None
        finally:
            conn.close()
        return ListedPage(page.objects, page.next_token if page.truncated else None, page.truncated, seen)

    def presign_get(self, bucket: str, key: str) -> str:
        self._frozen()
        try:
            return self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS)
        except Exception as exc:
            raise self._map(exc, f"s3://{bucket}/{key}") from None

    def rewrite(self, exc: FetchError, url: str, where: str) -> FetchError:
        """An error of a presigned GET, told without the URL (it is a credential for an
        hour), with the S3 error code its body carried."""
        text = exc.message.replace(url, where)
        m = _XML_CODE.search(text)
        if m and exc.status:
            text = f"HTTP {exc.status} for {where} ({m.group(1)} from {self.where})"
        if isinstance(exc, AuthError):
            new: FetchError = AuthError(f"{text}: {self._who()}", url=where, status=exc.status, hint=AUTH_HINT)
        else:
            new = type(exc)(text, url=where, status=exc.status, hint=exc.hint)
        new.retry_after = exc.retry_after
        return new

    def measure(self, bucket: str, key: str, timeouts: Timeouts) -> tuple[int, str]:
        """Size and sha256 of the object, read once and not kept (for the lock)."""
        import http.client
        import socket

        from .http import parse_retry_after

        url = self.presign_get(bucket, key)
        where = f"s3://{bucket}/{key}"
        conn = _connection(url, timeouts)
        size = 0
        try:
            resp = _get(conn, url, timeouts.stall)
            if resp.status != 200:
                body = resp.read(2000).decode("utf-8", "replace")
                m = _XML_CODE.search(body)
                text = f"HTTP {resp.status} for {where}" + (f" ({m.group(1)} from {self.where})" if m else "")
                if resp.status in (401, 403):
                    raise AuthError(f"{text}: {self._who()}", url=where, status=resp.status, hint=AUTH_HINT)
                err = FetchError(text, url=where, status=resp.status)
                err.retry_after = parse_retry_after(resp.getheader("Retry-After"))
                raise err
            h = hashlib.sha256()
            while True:
                data = resp.read1(2**20)
                if not data:
                    break
                h.update(data)
                size += len(data)
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) != size:
                raise FetchError(f"connection closed at byte {size} of {length} while reading {where}", url=where)
            return size, h.hexdigest()
        except (socket.timeout, TimeoutError):
            raise FetchError(f"{where}: no data for {timeouts.stall:g}s (stalled at byte {size})", url=where) from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"{where}: connection lost at byte {size}: {type(exc).__name__}", url=where) from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ uploads

    def upload(self, bucket: str, key: str, path: Path, size: int, sha256: str, transfer: Transfer | None = None) -> None:
        """One PUT with x-amz-checksum-sha256 (the server refuses bytes that do not match), or
        a multipart upload whose every part carries its own; either way the object's
        metadata holds the whole file's sha256 for the pulls (a multipart checksum of SHA-256
        is a digest of part digests, not of the content)."""
        where = f"s3://{bucket}/{key}"
        meta = {"sha256": sha256}
        part = part_size()
        if size <= part:
            with open(path, "rb") as body:
                self._call(where, "put_object", Bucket=bucket, Key=key, Body=body, ContentLength=size,
                           ChecksumSHA256=_b64(sha256), Metadata=meta)
            return
        part = max(part, -(-size // MAX_PARTS))
        upload_id = self._call(where, "create_multipart_upload", Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256",
                               Metadata=meta)["UploadId"]
        try:
            def one(n: int) -> dict[str, Any]:
                if transfer is not None and transfer.cancel is not None and transfer.cancel.is_set():
                    raise FetchError(f"{where}: cancelled")
                start = (n - 1) * part
                length = min(part, size - start)
                digest = _b64(_slice_sha256(path, start, length))
                with _Slice(path, start, length) as body:
                    resp = self._call(f"{where} part {n}", "upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                                      PartNumber=n, Body=body, ContentLength=length, ChecksumSHA256=digest)
                return {"PartNumber": n, "ETag": resp["ETag"], "ChecksumSHA256": digest}

            count = -(-size // part)
            with ThreadPoolExecutor(min(PARTS_IN_PARALLEL, count), thread_name_prefix="s3-part") as pool:
                parts = list(pool.map(one, range(1, count + 1)))
            self._call(where, "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass
            raise

    # ------------------------------------------------------------------ errors

    def _who(self) -> str:
        """Which credentials were refused, by where they came from (never their value)."""
        if self.anonymous:
            absent = [f"{n} names {os.environ[n].strip()}, which does not exist" for n in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
                      if os.environ.get(n, "").strip() and not os.path.isfile(os.path.expanduser(os.environ[n].strip()))]
            return ("refused without credentials (unsigned request)" + (f"; {'; '.join(absent)}" if absent else "")
                    + "; a private bucket needs " + CREDENTIALS)
        method = getattr(self.creds, "method", "") or ""
        where = {"env": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", "shared-credentials-file": "the shared credentials file",
                 "config-file": "the AWS config file", "assume-role-with-web-identity": "the web identity (AWS_ROLE_ARN)"}.get(method, method)
        return f"the credentials from {where or 'the AWS credential chain'} were refused; S3 reads " + CREDENTIALS

    def _from_error(self, code: str, status: int | None, message: str, what: str, headers: dict, *, auth: bool = False,
                    bucket: str | None = None) -> FetchError:
        """An S3 error answer (from botocore, or read from a response body) as ours."""
        from .http import parse_retry_after

        msg = message.strip()[:200]
        text = f"{what}: {code}" + (f" ({msg})" if msg and msg != code and not msg.isdigit() else "") + f" from {self.where}"
        if auth or code in _AUTH_CODES or status in (401, 403):
            return AuthError(f"{text}: {self._who()}", url=what, status=status or 403, hint=AUTH_HINT)
        if code == "NoSuchBucket":
            bucket = bucket or what.removeprefix("s3://").split("/", 1)[0]
            return FetchError(f"bucket {bucket} does not exist at {self.where}", url=what, status=404)
        if code in ("NoSuchKey", "404", "NotFound"):
            return FetchError(f"{what}: no such object at {self.where}", url=what, status=404)
        err = FetchError(text, url=what, status=status)
        err.retry_after = parse_retry_after((headers or {}).get("retry-after"))
        return err

    def _map(self, exc: BaseException, what: str) -> FetchError | UsageError:
        from botocore import exceptions as bx

        if isinstance(exc, FetchError):
            return exc
        if isinstance(exc, bx.ClientError):
            msg = str((exc.response.get("Error") or {}).get("Message") or "")
            headers = (exc.response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            auth = (getattr(exc, "operation_name", "") or "") == "AssumeRoleWithWebIdentity"
            return self._from_error(_code(exc), _status(exc), msg, what, headers, auth=auth,
                                    bucket=(exc.response.get("Error") or {}).get("BucketName"))
        if isinstance(exc, bx.NoCredentialsError):
            return AuthError(f"{what}: no S3 credentials", url=what, hint=AUTH_HINT)
        if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
            return FetchError(f"{what}: {self.where} did not answer in time ({type(exc).__name__})", url=what)
        if isinstance(exc, bx.EndpointConnectionError):
            return FetchError(f"{what}: cannot connect to {self.where}", url=what)
        if isinstance(exc, (bx.ConnectionClosedError, bx.HTTPClientError)):
            return FetchError(f"{what}: the connection to {self.where} failed ({type(exc).__name__})", url=what)
        if isinstance(exc, bx.ParamValidationError):
            return UsageError(f"{what}: {exc}")
        if isinstance(exc, bx.BotoCoreError):
            return FetchError(f"{what}: {type(exc).__name__}: {str(exc)[:200]}", url=what)
        if isinstance(exc, OSError):
            return FetchError(f"{what}: {exc.strerror or exc}", url=what)
        return FetchError(f"{what}: {type(exc).__name__}: {str(exc)[:200]}", url=what)


def _connection(url: str, timeouts: Timeouts):
    import http.client

    from .pool import tls_context

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeouts.connect, context=tls_context(host, port or 443))
    return http.client.HTTPConnection(host, port, timeout=timeouts.connect)


def _get(conn: http.client.HTTPConnection, url: str, stall: float) -> http.client.HTTPResponse:
    """GET a presigned `url` on `conn` (closed by the caller), every read bounded by `stall`."""
    parts = urlsplit(url)
    conn.connect()
    conn.sock.settimeout(stall)
    conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers={"Accept-Encoding": "identity"})
    return conn.getresponse()


def _xml_field(body: str, name: str) -> str:
    m = re.search(f"<{name}>([^<]{{0,400}})</{name}>", body)
    return m.group(1).strip() if m else ""


def part_size() -> int:
    raw = os.environ.get("PREFLIGHT_S3_PART_MIB", "").strip()
    if not raw:
        return PART_MIB * 2**20
    if not raw.isdigit() or not 5 <= int(raw) <= 5 * 1024:
        raise UsageError(f"PREFLIGHT_S3_PART_MIB={raw[:40]!r}: expected a whole number of MiB from 5 to 5120 (S3's part limits)")
    return int(raw) * 2**20


def _profile_endpoint(scoped: dict[str, Any]) -> str | None:
    """The profile's endpoint_url (`services` section's s3 endpoint first), as the AWS SDKs read it."""
    value = scoped.get("endpoint_url")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _code(exc: Any) -> str:
    return str((exc.response.get("Error") or {}).get("Code") or "")


def _status(exc: Any) -> int | None:
    return (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _slice_sha256(path: Path, start: int, length: int) -> str:
    h = hashlib.sha256()
    with _Slice(path, start, length) as f:
        while True:
            data = f.read(2**20)
            if not data:
                break
            h.update(data)
    return h.hexdigest()


class _Slice:
    """A read-only window of a file, for one part's body (seekable, so a signer may read it twice)."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._f = open(path, "rb")
        self._start, self._length = start, length
        self._f.seek(start)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        if n is None or n < 0 or n > left:
            n = left
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        self._f.seek(self._start + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Slice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
