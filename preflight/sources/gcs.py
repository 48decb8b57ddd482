"""Google Cloud Storage: gs://BUCKET/PREFIX (a folder lane), gs://BUCKET/OBJECT[#GENERATION]
(a file or GGUF lane), and `preflight push --to gs://BUCKET/PREFIX`.

Every object is addressed by its generation: a listing names the generation it saw, the
download asks for exactly that one (`generation=N`), so an object overwritten in the
middle of a sync is never mixed into the lane, and the lock pins each file's generation
(a versioned bucket still serves it after the object was replaced). Credentials and the
two APIs are in gcs_client.py; the bytes go through sources/http.fetch_to like every
other source's (ranges, resume across processes, stalls, the deadline, the lease).

What a pulled object must be: the manifest's or lock's sha256 first; else the sha256
`preflight push` stored in its metadata; else the object's CRC32C (every Cloud Storage
object has one; composite objects have no MD5), else its MD5, computed on the bytes as
they arrive and compared before anything is published. `preflight lock` measures the
sha256 of objects that have none and pins it with the generation.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..errors import AuthError, FetchError, IntegrityError, UsageError
from ..manifest import FileExpect, Lane
from . import Context, Entry, PushFile, Transfer
from .objectstore import ObjectStoreDestination, ObjectStoreSource

if TYPE_CHECKING:
    from ..volume import StagedFile
    from .gcs_client import GcsClient, ObjectInfo
    from .http import Fetched

HEADS_IN_PARALLEL = 8


def _split(locator: str) -> tuple[str, str | None, str | None]:
    """(object name, generation, etag) from a locator."""
    name, _, rest = locator.rpartition("#")
    gen, _, etag = rest.partition(":")
    return name, gen or None, etag or None


def _locator(name: str, generation: str | None, etag: str | None = None) -> str:
    """The object's name and the generation it was listed with (its ETag when the server
    has no generations): a staging file is named after the locator when no sha256 names
    it, so bytes of another generation are never resumed as this one's."""
    return f"{name}#{generation or ''}" + (f":{etag}" if etag and not generation else "")


def _renamed(exc: FetchError, url: str, where: str) -> FetchError:
    """An error of a request to a media URL, told by the object's gs:// name (an XML API
    URL is signed: a credential for an hour)."""
    new = type(exc)(exc.message.replace(url, where), url=where, status=exc.status, hint=exc.hint)
    new.retry_after = exc.retry_after
    return new


class GcsSource(ObjectStoreSource["GcsClient"]):
    """gs://BUCKET/PREFIX (folder lanes) or gs://BUCKET/OBJECT[#GENERATION] (file lanes; a
    GGUF's split parts beside it). A listed object is fetched by the generation it was
    listed with."""

    scheme = "gs"
    object_form = "gs://BUCKET/OBJECT"
    object_noun = "name"

    def __init__(self, lane: Lane, ctx: Context) -> None:
        super().__init__(lane, ctx)
        assert lane.source is not None
        self.generation = lane.source.revision

    def _open_client(self) -> GcsClient:
        from .gcs_client import open_client

        return open_client(self.ctx)

    # ------------------------------------------------------------------ resolve

    def _pinned(self, exp: FileExpect) -> bool:
        return super()._pinned(exp) and bool(exp.generation)

    def _entry(self, info: ObjectInfo, expect: FileExpect, pinned: FileExpect | None) -> Entry:
        if info.encoding == "gzip":
            from .gcs_client import NOT_RETRIED, gs_url

            raise FetchError(f"{gs_url(self.bucket, info.name)} is stored with Content-Encoding: gzip: Cloud Storage decompresses it "
                             "on download, so its size and checksums describe other bytes than the ones served",
                             hint="store model files without a content encoding (gsutil cp without -z/-Z)", status=NOT_RETRIED)
        generation = info.generation
        if pinned is not None and pinned.generation and pinned.generation != info.generation:
            # the lock pins another generation than the live one: fetch the pinned one, by what the lock says of it
            exp = expect.merge(pinned)
            generation = pinned.generation
        else:
            exp = expect.merge(pinned).merge(FileExpect(info.size, info.sha256, crc32c=info.crc32c, md5=None if info.crc32c else info.md5,
                                                        generation=info.generation))
        return Entry(exp, _locator(info.name, generation, info.etag), None if generation else info.etag,
                     f"{info.size}:{generation or info.etag}")

    def _locked_locator(self, key: str, exp: FileExpect) -> str:
        if self.generation and exp.generation != self.generation:
            raise UsageError(f"lane {self.lane.name}: the source pins generation {self.generation}, the lock {exp.generation}",
                             hint="run `preflight lock` again")
        return _locator(key, exp.generation)

    def _list_file(self) -> dict[str, ObjectInfo]:
        parts = len(self._parts()) if self.generation else 1
        if parts > 1:
            raise UsageError(f"lane {self.lane.name}: #{self.generation} pins one object, and a split GGUF has {parts} parts",
                             hint="drop the #GENERATION: `preflight lock` pins the generation of every part")
        return super()._list_file()

    def _file_info(self, key: str, part: str) -> ObjectInfo:
        return self._retrying(lambda: self._stat_file(key, part))

    def _stat_file(self, name: str, part: str) -> ObjectInfo:
        from .gcs_client import gs_url

        info = self.client.stat(self.bucket, name, self.generation)
        if info is not None:
            return info
        if self.generation:
            live = self.client.stat(self.bucket, name)
            if live is not None:
                raise FetchError(f"{gs_url(self.bucket, name, self.generation)}: no such generation (the live object is generation "
                                 f"{live.generation}; an overwritten generation is kept only in a bucket with object versioning)",
                                 status=404, hint="pin a generation the bucket holds, or drop #GENERATION")
        page, _token, _size = self.client.list_page(self.bucket, name.rstrip("/") + "/", None, max_results=1)
        if page:
            raise self._folder(gs_url(self.bucket, name))
        raise FetchError(f"{gs_url(self.bucket, name, self.generation)}: no such object{part} in bucket {self.bucket}", status=404)

    def _listed(self, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        for info in self.client.list_all(self.bucket, prefix, self._retrying):
            yield info.name, info

    def _list_folder(self) -> dict[str, ObjectInfo]:
        found = super()._list_folder()
        if self.client.xml:
            return self._heads(found)  # the XML API's listing carries no checksums
        return found

    def _heads(self, listed: dict[str, ObjectInfo]) -> dict[str, ObjectInfo]:
        def one(rel: str) -> tuple[str, ObjectInfo]:
            info = listed[rel]
            got = self._retrying(lambda: self.client.stat(self.bucket, info.name, info.generation))
            if got is None:
                raise FetchError(f"gs://{self.bucket}/{info.name} disappeared while the prefix was listed", status=404)
            return rel, got

        with ThreadPoolExecutor(min(HEADS_IN_PARALLEL, len(listed)), thread_name_prefix="gcs-head") as pool:
            return dict(pool.map(one, sorted(listed)))

    # ------------------------------------------------------------------ fetch

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        from .http import fetch_to

        from .gcs_client import gs_url

        name, generation, _etag = _split(entry.locator)
        where = gs_url(self.bucket, name, generation)
        exp = entry.expect
        if self.from_lock:
            # Listed from the lock: that generation must still be there, as locked, before a byte moves.
            info = self.client.stat(self.bucket, name, generation)
            if info is None:
                raise self._changed(where, "that generation no longer exists (overwritten or deleted in a bucket without object "
                                           "versioning)")
            self._check_pinned(where, exp, info.size, info.sha256)
        check = [] if exp.sha256 else ["crc32c"] if exp.crc32c else ["md5"] if exp.md5 else []
        url, headers, _where = self._media(entry)
        try:
            got = fetch_to(url, partial, headers=headers, expected_size=exp.size, algos=tuple(dict.fromkeys((*algos, *check))),
                           etag=entry.etag, **transfer.http())
        except AuthError as exc:
            if self.client.auth.expiring():
                raise FetchError(f"{where}: the token ran out during the download; the next attempt gets a new one and resumes", url=where) from None
            raise AuthError(f"{where}: {exc.message.replace(url, where)}: {self.client.auth.who()}", url=where, status=exc.status,
                            hint=_auth_hint()) from None
        except FetchError as exc:
            raise _renamed(exc, url, where) from None
        for algo in check:
            want, have = getattr(exp, algo), got.digests.get(algo)
            if have != want:
                partial.remove()  # whole and wrong: nothing in it is worth resuming
                raise IntegrityError(f"{where}: the bytes received have {algo} {have}, the object's is {want}; nothing was published",
                                     url=where)
        return self._fetched(where, exp, partial, got)

    def _media(self, entry: Entry) -> tuple[str, dict[str, str] | None, str]:
        """The listed generation's bytes (a ranged media GET reads part of them: fit before a download)."""
        from .gcs_client import gs_url

        name, generation, _etag = _split(entry.locator)
        url, headers = self.client.media(self.bucket, name, generation)
        return url, headers, gs_url(self.bucket, name, generation)

    def _rewrite(self, exc: FetchError, url: str, where: str) -> FetchError:
        return _renamed(exc, url, where)

    # ------------------------------------------------------------------ lock

    def _lock_file(self, entry: Entry, measure: bool) -> FileExpect:
        """Size, sha256 and generation: a sha256 the manifest or the object vouches for, else
        measured now by reading that generation once (its CRC32C checked)."""
        name, generation, _etag = _split(entry.locator)
        sha = entry.expect.sha256
        if measure:
            size, sha = self._retrying(lambda: self.client.measure(self.bucket, name, generation, entry.expect.crc32c))
            self._measured(name, entry, size)
        return FileExpect(entry.expect.size, sha, generation=generation)


def _auth_hint() -> str:
    from .gcs_client import AUTH_HINT

    return AUTH_HINT


# --------------------------------------------------------------------------- push


class GcsDestination(ObjectStoreDestination["GcsClient"]):
    """push --to gs://BUCKET/PREFIX, with each file's sha256 in the object's metadata and its
    CRC32C checked by the server, so a pull is verified end to end. An object already there
    with the same size and the same sha256 metadata (or, without it, the same CRC32C) is not
    sent again."""

    scheme = "gs"

    def __init__(self, url: str, ctx: Context) -> None:
        super().__init__(url, ctx)
        if self.revision:
            raise UsageError(f"--to {url}: a push makes new generations; drop the #GENERATION")

    def _open_client(self) -> GcsClient:
        from .gcs_client import open_client

        return open_client(self.ctx, write=True)

    def _push_file(self, lane_name: str, f: PushFile, key: str, transfer: Transfer) -> bool:
        from .gcs_client import file_crc32c

        there = self.ctx.retrying(lane_name, lambda: self.client.stat(self.bucket, key))
        crc = None
        if there is not None and there.size == f.size:
            if there.sha256 is None and there.crc32c:
                crc = file_crc32c(f.path)
            if there.sha256 == f.sha256 or (there.sha256 is None and there.crc32c == crc):
                return False
        crc = crc or file_crc32c(f.path)
        self._upload(lane_name, f, key, transfer, lambda: self.client.upload(self.bucket, key, f.path, f.size, f.sha256, crc, transfer))
        return True
