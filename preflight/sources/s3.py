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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FetchError, UsageError
from ..manifest import FileExpect, Lane, parse_source
from . import Context, Destination, Entry, Listing, Pushed, PushFile, PushLane, Source, Transfer

if TYPE_CHECKING:
    from ..volume import StagedFile
    from ..lockfile import LockedLane
    from .http import Fetched
    from .s3_client import S3Client

CHANGED = 410  # FetchError.status of an object that no longer holds the locked bytes: asking again cannot help
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_KEYS = 20_000           # objects listed under one lane's prefix
MAX_PAGES = 200             # listing pages for one lane (S3 gives 1000 objects a page)
MAX_LIST_BYTES = 64 << 20   # listing bodies for one lane (a page is capped in s3_listing)
LIST_SECONDS = 600.0        # one lane's listing, when the run has no sooner --deadline (PREFLIGHT_S3_LIST_SECONDS)


@dataclass(frozen=True)
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


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _split_locator(locator: str) -> tuple[str, str | None]:
    key, _, etag = locator.rpartition("#")
    return key, etag or None


def _locator(key: str, etag: str | None) -> str:
    """The object's key and the ETag it was listed with: a staging file is named after the
    locator when no digest names it, so bytes of an overwritten object are never resumed
    as if they were the new object's."""
    return f"{key}#{etag or ''}"


class S3Source(Source):
    """s3://BUCKET/PREFIX (folder lanes: every object under PREFIX/, include/exclude on the
    names below it) or s3://BUCKET/KEY (file lanes; a GGUF's split parts beside it)."""

    def __init__(self, lane: Lane, ctx: Context) -> None:
        super().__init__(lane, ctx)
        src = lane.source
        assert src is not None and src.repo
        self.bucket = src.repo
        self.key = src.path_in_repo or ""
        self.from_lock = False
        self._client: S3Client | None = None
        self._said: set[str] = set()

    @property
    def client(self) -> S3Client:
        if self._client is None:
            from .s3_client import open_client

            self._client = open_client(self.ctx)
        return self._client

    @property
    def where(self) -> str:
        return s3_url(self.bucket, self.key + ("/" if self.lane.is_dir and self.key else ""))

    # ------------------------------------------------------------------ resolve

    def resolve(self, locked: LockedLane | None) -> Listing:
        if locked is not None and locked.files and all(e.sha256 and e.size is not None for e in locked.files.values()):
            return self._from_lock(locked)
        infos = self._list_folder() if self.lane.is_dir else self._list_file()
        files: dict[str, Entry] = {}
        names = self._lane_names(list(infos))
        for rel, info in infos.items():
            exp = self.lane.files.get(names[rel], FileExpect())  # the manifest, then the lock, then the object
            if locked is not None and names[rel] in locked.files:
                exp = exp.merge(locked.files[names[rel]])
            exp = exp.merge(FileExpect(info.size, info.sha256))
            files[rel] = Entry(exp, _locator(info.key, info.etag), info.etag or None, info.stamp)
        if not self.lane.is_dir:
            bare = sum(1 for e in files.values() if not e.expect.sha256)
            if bare:
                self._say_bare()
        return Listing(None, files)

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

    def _lane_names(self, rels: list[str]) -> dict[str, str]:
        """Source name → the name sync gives it on the volume (a single-file lane's own name)."""
        if self.lane.is_dir:
            return {r: r for r in rels}
        from ..sync import place_names

        return {src: lane for lane, src in place_names(self.lane, {r: r for r in rels}).items()}

    def _from_lock(self, locked: LockedLane) -> Listing:
        """Every file pinned by size and sha256: nothing to ask the server until a byte is
        needed (fetch asks then, and refuses an object that changed)."""
        self.from_lock = True
        files = {}
        if self.lane.is_dir:
            for rel, exp in locked.files.items():
                key = f"{self.key}/{rel}" if self.key else rel
                files[rel] = Entry(self.lane.files.get(rel, FileExpect()).merge(exp), _locator(key, None))
            return Listing(None, files)
        folder, _, first = self.key.rpartition("/")
        names = self._source_names(first)
        lane_names = sorted(locked.files)
        if len(names) != len(lane_names):
            raise UsageError(f"lane {self.lane.name}: the lock pins {len(lane_names)} file(s), the source names {len(names)}",
                             hint="run `preflight lock` again")
        for src_name, lane_name in zip(sorted(names), lane_names):
            key = f"{folder}/{src_name}" if folder else src_name
            files[src_name] = Entry(self.lane.files.get(lane_name, FileExpect()).merge(locked.files[lane_name]), _locator(key, None))
        return Listing(None, files)

    def _source_names(self, first: str) -> list[str]:
        if self.lane.kind == "gguf":
            from ..check import gguf_split_names

            return gguf_split_names(first)
        return [first]

    def _list_file(self) -> dict[str, ObjectInfo]:
        if not self.key:
            raise FetchError(f"{self.where}: a {self.lane.kind} lane's source names an object: s3://BUCKET/KEY",
                             hint="add the object's key, e.g. s3://models/gguf/model.Q4_K_M.gguf")
        folder, _, first = self.key.rpartition("/")
        names = self._source_names(first)
        out = {}
        for i, name in enumerate(names):
            key = f"{folder}/{name}" if folder else name
            part = f" (split part {i + 1} of {len(names)})" if len(names) > 1 else ""
            out[name] = object_info(key, self._retrying(lambda key=key, part=part: self._head_file(key, part)))
        return out

    def _head_file(self, key: str, part: str) -> dict[str, Any]:
        """The object's HEAD; a clear error when there is none, or when the key names a folder
        (S3 answers 404; a file-system backed server may answer 500)."""
        try:
            head = self.client.head(self.bucket, key)
        except FetchError as exc:
            if (exc.status or 0) >= 500 and self._is_folder(key):
                raise self._folder(key) from None
            raise
        if head is None:
            if self._is_folder(key):
                raise self._folder(key)
            raise FetchError(f"{s3_url(self.bucket, key)}: no such object{part} in bucket {self.bucket}", status=404)
        return head

    def _is_folder(self, key: str) -> bool:
        return bool(self.client.list_page(self.bucket, key.rstrip("/") + "/", max_keys=1))

    def _folder(self, key: str) -> FetchError:
        return FetchError(f"{s3_url(self.bucket, key)} is a folder (a prefix with objects under it), and a {self.lane.kind} lane needs an object",
                          hint="name the object's key, or make the lane a folder kind (hf-dir, …)", status=404)

    def _list_folder(self) -> dict[str, ObjectInfo]:
        """Every object under the prefix, page by page, within bounds: MAX_KEYS objects,
        MAX_PAGES pages, MAX_LIST_BYTES of listing bodies, LIST_SECONDS (or the run's deadline,
        when sooner); a continuation token the server hands out twice ends the listing with an
        error (it would never end). Size and ETag come from the listing: no request per object."""
        import time

        from ..check import selected

        prefix = f"{self.key}/" if self.key else ""
        found: dict[str, ObjectInfo] = {}
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
                if not obj.key.startswith(prefix):
                    raise FetchError(f"{self.where}: the listing of this prefix holds {obj.key[:200]!r}, which is not under it",
                                     status=400, hint="the server does not filter its listing by prefix")
                rel = obj.key[len(prefix):]
                if not rel or rel.endswith("/"):
                    continue  # a "folder marker" object some tools write
                if selected(rel, self.lane):
                    found[rel] = ObjectInfo(obj.key, obj.size, obj.etag, obj.modified, None)
            token = page.next_token
            if not token:
                break
            if token in tokens:
                raise FetchError(f"{self.where}: {self.client.where} handed out the same continuation token twice ({pages} pages "
                                 "in): its listing would never end", status=400, hint="the S3 server is broken; the listing was stopped")
            tokens.add(token)
            if pages >= MAX_PAGES:
                raise self._too_big(f"more than {MAX_PAGES} listing pages ({keys} objects)")
        if not found:
            what = "match the lane's include/exclude" if (self.lane.include or self.lane.exclude) else "exist"
            raise FetchError(f"{self.where}: no objects under this prefix {what} in bucket {self.bucket}; nothing to fetch",
                             hint="check the prefix (s3://BUCKET/PREFIX lists the objects under PREFIX/)", status=404)
        return found

    def _too_big(self, what: str) -> FetchError:
        return FetchError(f"{self.where}: {what} from {self.client.where}; the listing was stopped", status=400,
                          hint="a lane's prefix should hold one model: point the source at a narrower prefix")

    def _head_info(self, key: str) -> ObjectInfo:
        head = self._retrying(lambda: self.client.head(self.bucket, key))
        if head is None:  # deleted between the listing and now
            raise FetchError(f"{s3_url(self.bucket, key)} disappeared after the prefix was listed", status=404)
        return object_info(key, head)

    def _retrying(self, call: Callable[[], Any]) -> Any:
        return self.ctx.retrying(self.lane.name, call)

    # ------------------------------------------------------------------ fetch

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        from .http import Fetched, fetch_to

        key, etag = _split_locator(entry.locator)
        where = s3_url(self.bucket, key)
        exp = entry.expect
        if etag is None:
            # Listed from the lock: the object's ETag guards the resume, and an object that
            # no longer matches the lock is refused before a byte moves.
            head = self.client.head(self.bucket, key)
            if head is None:
                raise FetchError(f"{where}: no such object in bucket {self.bucket} (the lock pins it)", status=404)
            info = object_info(key, head)
            if exp.size is not None and info.size != exp.size:
                raise self._changed(where, f"it holds {info.size} bytes, the lock pins {exp.size}")
            if exp.sha256 and info.sha256 and info.sha256 != exp.sha256:
                raise self._changed(where, f"its sha256 is {info.sha256}, the lock pins {exp.sha256}")
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
        if self.from_lock and exp.sha256 and got.resumed_from == 0 and got.digests.get("sha256") not in (None, exp.sha256):
            partial.remove()  # whole and wrong: nothing in it is worth resuming
            raise self._changed(where, f"its bytes hash to sha256 {got.digests['sha256']}, the lock pins {exp.sha256}")
        return Fetched(got.size, got.digests, got.resumed_from, where)

    def _changed(self, where: str, how: str) -> FetchError:
        return FetchError(f"{where} changed on the server since the lock: {how}; nothing of it was published",
                          hint="if the new object is the one to serve, run `preflight lock` again", status=CHANGED)

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        """Size and sha256 of every file: a digest the object (or manifest) vouches for, else
        measured now by reading the object once."""
        out = {}
        todo = {rel: e for rel, e in listing.files.items() if not e.expect.sha256}
        if todo:
            total = sum(e.expect.size or 0 for e in todo.values())
            self.ctx.log(f"{self.lane.name}: reading the objects of {len(todo)} file(s) ({total} bytes) that vouch for no sha256, to pin it")
        for rel, entry in sorted(listing.files.items()):
            if rel in todo:
                key, _etag = _split_locator(entry.locator)
                vouched = self._head_info(key) if self.lane.is_dir else None
                if vouched is not None and vouched.sha256 and vouched.size == entry.expect.size:
                    out[rel] = FileExpect(vouched.size, vouched.sha256)  # the object vouches for it: no need to read it
                    continue
                size, sha = self._retrying(lambda key=key: self.client.measure(self.bucket, key, self.ctx.timeouts))
                if entry.expect.size is not None and size != entry.expect.size:
                    raise FetchError(f"{s3_url(self.bucket, key)} changed while it was locked: listed with {entry.expect.size} bytes, read {size}")
                out[rel] = FileExpect(size, sha)
            else:
                out[rel] = FileExpect(entry.expect.size, entry.expect.sha256)
        return out


# --------------------------------------------------------------------------- push


class S3Destination(Destination):
    """push --to s3://BUCKET/PREFIX: each file of a lane to PREFIX/<its path in the lane>,
    with its sha256 as the object's checksum (single PUT) or in its metadata (multipart),
    so a pull is verified end to end. An object already there with the same size and
    sha256 is not sent again."""

    def __init__(self, url: str, ctx: Context) -> None:
        super().__init__(url, ctx)
        try:
            src = parse_source(url)
        except ValueError as exc:
            raise UsageError(f"--to {url}: {exc}") from None
        assert src.repo is not None
        self.bucket = src.repo
        self.prefix = src.path_in_repo or ""
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            from .s3_client import open_client

            self._client = open_client(self.ctx)
        return self._client

    def push(self, lane: PushLane, transfer: Transfer) -> Pushed:
        name = lane.lane.name
        keys = {f.rel: (f"{self.prefix}/{f.rel}" if self.prefix else f.rel) for f in lane.files}
        first = keys[sorted(keys)[0]]
        ref = s3_url(self.bucket, self.prefix) if lane.lane.is_dir else s3_url(self.bucket, first)
        pushed = Pushed(name, ref)
        for f in lane.files:
            if transfer.cancel is not None and transfer.cancel.is_set():
                raise FetchError(f"{name}: cancelled")
            key = keys[f.rel]
            head = self.ctx.retrying(name, lambda key=key: self.client.head(self.bucket, key))
            if head is not None:
                info = object_info(key, head)
                if info.size == f.size and info.sha256 == f.sha256:
                    pushed.skipped_files += 1
                    pushed.skipped_bytes += f.size
                    continue
            self._upload(name, f, key, transfer)
            pushed.uploaded_files += 1
            pushed.uploaded_bytes += f.size
        return pushed

    def _upload(self, name: str, f: PushFile, key: str, transfer: Transfer) -> None:
        self.ctx.log(f"{name}: uploading {f.rel} ({f.size} bytes) to {s3_url(self.bucket, key)}")
        self.ctx.retrying(name, lambda: self.client.upload(self.bucket, key, f.path, f.size, f.sha256, transfer))
        if transfer.progress:
            transfer.progress(f.size)
