"""S3-compatible object storage: s3://BUCKET/PREFIX (a folder lane) or s3://BUCKET/KEY (a
file or GGUF lane), and `preflight push --to s3://BUCKET/PREFIX`.

botocore does what the AWS SDKs define and S3 users already configure: the credential
chain (AWS_ACCESS_KEY_ID/…, AWS_PROFILE and the shared files, web identity on EKS),
AWS_ENDPOINT_URL(_S3), regions, SigV4, listing and multipart uploads (s3_client.py).
The bytes of a GET do not go through botocore: each object is fetched from a presigned
URL by sources/http.fetch_to, which resumes with Range/If-Range across processes, hashes
while writing and honours the stall timeout, the deadline and cancellation like every
other source.

What a pulled object must be: the manifest's or lock's sha256 first; else the object's
full-object x-amz-checksum-sha256; else the sha256 `preflight push` stored in its
metadata; else its size (and format), with the ETag guarding a resume. `preflight lock`
measures the sha256 of every object that has none, so a locked lane is held to content
digests.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import FetchError, UsageError
from ..manifest import FileExpect, Lane
from . import Context, Entry, Listing, PushFile, Transfer
from .objectstore import CHANGED, ObjectStoreDestination, ObjectStoreSource
from ..record import record

if TYPE_CHECKING:
    from ..volume import StagedFile
    from ..lockfile import LockedLane
    from .http import Fetched
    from .s3_client import S3Client

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_KEYS = 20_000           # objects listed under one lane's prefix
MAX_PAGES = 200             # listing pages for one lane (S3 gives 1000 objects a page)
MAX_LIST_BYTES = 64 << 20   # listing bodies for one lane (a page is capped in s3_listing)
LIST_SECONDS = 600.0        # one lane's listing, when the run has no sooner --deadline (PREFLIGHT_S3_LIST_SECONDS)


@record(frozen=True)
class ObjectInfo:
    """What a HEAD says about one object."""

    key: str
    size: int
    etag: str  # without quotes
    modified: str
    sha256: str | None  # a full-object digest: the object's checksum, else the one push stored

    @property
    def stamp(self) -> str:
        return f"{self.size}:{self.etag}:{self.modified}"


def object_info(key: str, head: dict[str, Any]) -> ObjectInfo:
    etag = str(head.get("ETag") or "").strip('"')
    modified = head.get("LastModified")
    return ObjectInfo(key, int(head.get("ContentLength") or 0), etag,
                      modified.isoformat() if hasattr(modified, "isoformat") else str(modified or ""), full_object_sha256(head))


def full_object_sha256(head: dict[str, Any]) -> str | None:
    """The object's content digest, when it has one: x-amz-checksum-sha256 of the whole
    object (a multipart upload's composite checksum, `…-N`, is a digest of part digests and
    says nothing about the content), else the `sha256` metadata `preflight push` writes."""
    value = head.get("ChecksumSHA256")
    if isinstance(value, str) and "-" not in value and head.get("ChecksumType") in (None, "FULL_OBJECT"):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raw = b""
        if len(raw) == 32:
            return raw.hex()
    meta = (head.get("Metadata") or {}).get("sha256")
    if isinstance(meta, str) and _HEX64.match(meta.strip().lower()):
        return meta.strip().lower()
    return None


_said_lock = threading.Lock()


def list_seconds() -> float:
    raw = os.environ.get("PREFLIGHT_S3_LIST_SECONDS", "").strip()
    if not raw:
        return LIST_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise UsageError(f"PREFLIGHT_S3_LIST_SECONDS={raw[:40]!r}: expected seconds, more than 0 and at most 86400")
    return value


def _split_locator(locator: str) -> tuple[str, str | None]:
    key, _, etag = locator.rpartition("#")
    return key, etag or None


def _locator(key: str, etag: str | None) -> str:
    """The object's key and the ETag it was listed with: a staging file is named after the
    locator when no digest names it, so bytes of an overwritten object are never resumed
    as if they were the new object's."""
    return f"{key}#{etag or ''}"


class S3Source(ObjectStoreSource["S3Client"]):
    """s3://BUCKET/PREFIX (folder lanes) or s3://BUCKET/KEY (file lanes; a GGUF's split parts
    beside it). A listed object is fetched by key and guarded by the ETag it was listed with."""

    scheme = "s3"
    object_form = "s3://BUCKET/KEY"
    object_noun = "key"

    def __init__(self, lane: Lane, ctx: Context) -> None:
        super().__init__(lane, ctx)
        self._said: set[str] = set()

    def _open_client(self) -> S3Client:
        from .s3_client import open_client

        return open_client(self.ctx)

    # ------------------------------------------------------------------ resolve

    def resolve(self, locked: LockedLane | None) -> Listing:
        listing = super().resolve(locked)
        if not self.lane.is_dir and any(not e.expect.sha256 for e in listing.files.values()):
            self._say_bare()
        return listing

    def _entry(self, info: ObjectInfo, expect: FileExpect, pinned: FileExpect | None) -> Entry:
        exp = expect.merge(pinned).merge(FileExpect(info.size, info.sha256))
        return Entry(exp, _locator(info.key, info.etag), info.etag or None, info.stamp)

    def _locked_locator(self, key: str, exp: FileExpect) -> str:
        return _locator(key, None)

    def _say_bare(self) -> None:
        """Said once per lane: objects that vouch for no content digest are checked by size,
        ETag and format only."""
        with _said_lock:
            if self.lane.name in self._said:
                return
            self._said.add(self.lane.name)
        self.ctx.log(f"{self.lane.name}: objects under {self.where} have no content digest (no sha256 in the manifest or "
                     "lock, no full-object x-amz-checksum-sha256, no sha256 from push): checked by size, ETag and format "
                     "only; `preflight lock` pins their sha256")

    def _file_info(self, key: str, part: str) -> ObjectInfo:
        return object_info(key, self._retrying(lambda: self._head_file(key, part)))

    def _head_file(self, key: str, part: str) -> dict[str, Any]:
        """The object's HEAD; a clear error when there is none, or when the key names a folder
        (S3 answers 404; a file-system backed server may answer 500)."""
        try:
            head = self.client.head(self.bucket, key)
        except FetchError as exc:
            if (exc.status or 0) >= 500 and self._is_folder(key):
                raise self._folder(self._url(key)) from None
            raise
        if head is None:
            if self._is_folder(key):
                raise self._folder(self._url(key))
            raise FetchError(f"{self._url(key)}: no such object{part} in bucket {self.bucket}", status=404)
        return head

    def _is_folder(self, key: str) -> bool:
        return bool(self.client.list_page(self.bucket, key.rstrip("/") + "/", max_keys=1))

    def _listed(self, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        """Every object under the prefix, page by page, within bounds: MAX_KEYS objects,
        MAX_PAGES pages, MAX_LIST_BYTES of listing bodies, LIST_SECONDS (or the run's deadline,
        when sooner); a continuation token the server hands out twice ends the listing with an
        error (it would never end). Size and ETag come from the listing: no request per object."""
        token: str | None = None
        tokens: set[str] = set()
        pages = keys = body = 0
        limit = list_seconds()
        until = time.monotonic() + limit
        if self.ctx.deadline is not None:
            until = min(until, self.ctx.deadline)
        while True:
            if time.monotonic() > until:
                raise self._too_big(f"the listing did not end within {limit:g}s (or the run's deadline): {pages} pages, {keys} objects so far")
            page = self._retrying(lambda token=token: self.client.list_objects(self.bucket, prefix, token))
            pages, keys, body = pages + 1, keys + len(page.objects), body + page.bytes
            if keys > MAX_KEYS:
                raise self._too_big(f"more than {MAX_KEYS} objects under this prefix")
            if body > MAX_LIST_BYTES:
                raise self._too_big(f"more than {MAX_LIST_BYTES >> 20} MiB of listing")
            for obj in page.objects:
                yield obj.key, ObjectInfo(obj.key, obj.size, obj.etag, obj.modified, None)
            token = page.next_token
            if not token:
                return
            if token in tokens:
                raise FetchError(f"{self.where}: {self.client.where} handed out the same continuation token twice ({pages} pages "
                                 "in): its listing would never end", status=400, hint="the S3 server is broken; the listing was stopped")
            tokens.add(token)
            if pages >= MAX_PAGES:
                raise self._too_big(f"more than {MAX_PAGES} listing pages ({keys} objects)")

    def _too_big(self, what: str) -> FetchError:
        return FetchError(f"{self.where}: {what} from {self.client.where}; the listing was stopped", status=400,
                          hint="a lane's prefix should hold one model: point the source at a narrower prefix")

    def _head_info(self, key: str) -> ObjectInfo:
        head = self._retrying(lambda: self.client.head(self.bucket, key))
        if head is None:  # deleted between the listing and now
            raise FetchError(f"{self._url(key)} disappeared after the prefix was listed", status=404)
        return object_info(key, head)

    # ------------------------------------------------------------------ fetch

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        from .http import fetch_to

        key, etag = _split_locator(entry.locator)
        where = self._url(key)
        exp = entry.expect
        if etag is None:
            # Listed from the lock: the object's ETag guards the resume, and an object that
            # no longer matches the lock is refused before a byte moves.
            head = self.client.head(self.bucket, key)
            if head is None:
                raise FetchError(f"{where}: no such object in bucket {self.bucket} (the lock pins it)", status=404)
            info = object_info(key, head)
            self._check_pinned(where, exp, info.size, info.sha256)
            etag = info.etag or None
        vouched = None
        if not exp.sha256 and not self.from_lock:
            # Listed by size and ETag alone: the object's HEAD says whether it vouches for a
            # digest (its checksum, push's metadata), and that it is still what was listed.
            info = self._head_info(key)
            if etag and info.etag and info.etag != etag:
                raise FetchError(f"{where} changed on the server while the lane was synced (ETag {etag} when listed, "
                                 f"{info.etag} now); run again", status=CHANGED)
            vouched = info.sha256
            if vouched is None:
                self._say_bare()
        url = self.client.presign_get(self.bucket, key)
        try:
            got = fetch_to(url, partial, expected_size=exp.size, algos=algos, etag=etag, **transfer.http())
        except FetchError as exc:
            raise self.client.rewrite(exc, url, where) from None
        if vouched and got.digests.get("sha256") not in (None, vouched):
            partial.remove()  # whole and wrong: nothing in it is worth resuming
            raise FetchError(f"{where}: its bytes hash to sha256 {got.digests['sha256']}, the object's own checksum says {vouched}; "
                             "nothing of it was published", status=CHANGED)
        return self._fetched(where, exp, partial, got)

    def _media(self, entry: Entry) -> tuple[str, dict[str, str] | None, str]:
        key, _etag = _split_locator(entry.locator)
        return self.client.presign_get(self.bucket, key), None, self._url(key)

    def _rewrite(self, exc: FetchError, url: str, where: str) -> FetchError:
        return self.client.rewrite(exc, url, where)

    # ------------------------------------------------------------------ lock

    def _lock_file(self, entry: Entry, measure: bool) -> FileExpect:
        """Size and sha256: a digest the object (or manifest) vouches for, else measured now."""
        if not measure:
            return FileExpect(entry.expect.size, entry.expect.sha256)
        key, _etag = _split_locator(entry.locator)
        vouched = self._head_info(key) if self.lane.is_dir else None
        if vouched is not None and vouched.sha256 and vouched.size == entry.expect.size:
            return FileExpect(vouched.size, vouched.sha256)  # the object vouches for it: no need to read it
        size, sha = self._retrying(lambda: self.client.measure(self.bucket, key, self.ctx.timeouts))
        self._measured(key, entry, size)
        return FileExpect(size, sha)


# --------------------------------------------------------------------------- push


class S3Destination(ObjectStoreDestination["S3Client"]):
    """push --to s3://BUCKET/PREFIX, with each file's sha256 as the object's checksum (single
    PUT) or in its metadata (multipart), so a pull is verified end to end. An object already
    there with the same size and sha256 is not sent again."""

    scheme = "s3"

    def _open_client(self) -> S3Client:
        from .s3_client import open_client

        return open_client(self.ctx)

    def _push_file(self, lane_name: str, f: PushFile, key: str, transfer: Transfer) -> bool:
        head = self.ctx.retrying(lane_name, lambda: self.client.head(self.bucket, key))
        if head is not None:
            info = object_info(key, head)
            if info.size == f.size and info.sha256 == f.sha256:
                return False
        self._upload(lane_name, f, key, transfer, lambda: self.client.upload(self.bucket, key, f.path, f.size, f.sha256, transfer))
        return True
