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

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

from ..errors import AuthError, FetchError, IntegrityError, UsageError
from ..manifest import FileExpect, Lane, parse_source
from . import Context, Destination, Entry, Listing, Pushed, PushFile, PushLane, Source, Transfer

if TYPE_CHECKING:
    from ..lockfile import LockedLane
    from ..volume import StagedFile
    from .gcs_client import GcsClient, ObjectInfo
    from .http import Fetched

HEADS_IN_PARALLEL = 8
CHANGED = 410  # FetchError.status of an object that no longer holds what was listed or locked: asking again cannot help


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


class GcsSource(Source):
    """gs://BUCKET/PREFIX (folder lanes: every object under PREFIX/, include/exclude on the
    names below it) or gs://BUCKET/OBJECT[#GENERATION] (file lanes; a GGUF's split parts
    beside it)."""

    def __init__(self, lane: Lane, ctx: Context) -> None:
        super().__init__(lane, ctx)
        src = lane.source
        assert src is not None and src.repo
        self.bucket = src.repo
        self.name = src.path_in_repo or ""
        self.generation = src.revision
        self.from_lock = False
        self._client: GcsClient | None = None

    @property
    def client(self) -> GcsClient:
        if self._client is None:
            from .gcs_client import open_client

            self._client = open_client(self.ctx)
        return self._client

    @property
    def where(self) -> str:
        return f"gs://{self.bucket}/{self.name}" + ("/" if self.lane.is_dir and self.name else "")

    def _retrying(self, call: Callable[[], Any]) -> Any:
        return self.ctx.retrying(self.lane.name, call)

    # ------------------------------------------------------------------ resolve

    def resolve(self, locked: LockedLane | None) -> Listing:
        if locked is not None and locked.files and all(e.sha256 and e.size is not None and e.generation for e in locked.files.values()):
            return self._from_lock(locked)
        infos = self._list_folder() if self.lane.is_dir else self._list_file()
        names = self._lane_names(list(infos))
        files: dict[str, Entry] = {}
        for rel, info in infos.items():
            if info.encoding == "gzip":
                from .gcs_client import NOT_RETRIED, gs_url

                raise FetchError(f"{gs_url(self.bucket, info.name)} is stored with Content-Encoding: gzip: Cloud Storage decompresses it "
                                 "on download, so its size and checksums describe other bytes than the ones served",
                                 hint="store model files without a content encoding (gsutil cp without -z/-Z)", status=NOT_RETRIED)
            exp = self.lane.files.get(names[rel], FileExpect())  # the manifest, then the lock, then the object
            pinned = locked.files.get(names[rel]) if locked is not None else None
            generation = info.generation
            if pinned is not None and pinned.generation and pinned.generation != info.generation:
                # the lock pins another generation than the live one: fetch the pinned one, by what the lock says of it
                exp = exp.merge(pinned)
                generation = pinned.generation
            else:
                exp = exp.merge(pinned).merge(FileExpect(info.size, info.sha256, crc32c=info.crc32c, md5=None if info.crc32c else info.md5,
                                                         generation=info.generation))
            files[rel] = Entry(exp, _locator(info.name, generation, info.etag), None if generation else info.etag,
                               f"{info.size}:{generation or info.etag}")
        return Listing(None, files)

    def _lane_names(self, rels: list[str]) -> dict[str, str]:
        """Source name → the name sync gives it on the volume (a single-file lane's own name)."""
        if self.lane.is_dir:
            return {r: r for r in rels}
        from ..sync import place_names

        return {src: lane for lane, src in place_names(self.lane, {r: r for r in rels}).items()}

    def _from_lock(self, locked: LockedLane) -> Listing:
        """Every file pinned by size, sha256 and generation: nothing to ask the server until
        a byte is needed (fetch asks for that generation then)."""
        self.from_lock = True
        files = {}
        if self.lane.is_dir:
            for rel, exp in locked.files.items():
                name = f"{self.name}/{rel}" if self.name else rel
                files[rel] = Entry(self.lane.files.get(rel, FileExpect()).merge(exp), _locator(name, exp.generation))
            return Listing(None, files)
        folder, _, first = self.name.rpartition("/")
        names = self._source_names(first)
        lane_names = sorted(locked.files)
        if len(names) != len(lane_names):
            raise UsageError(f"lane {self.lane.name}: the lock pins {len(lane_names)} file(s), the source names {len(names)}",
                             hint="run `preflight lock` again")
        for src_name, lane_name in zip(sorted(names), lane_names):
            name = f"{folder}/{src_name}" if folder else src_name
            exp = self.lane.files.get(lane_name, FileExpect()).merge(locked.files[lane_name])
            if self.generation and exp.generation != self.generation:
                raise UsageError(f"lane {self.lane.name}: the source pins generation {self.generation}, the lock {exp.generation}",
                                 hint="run `preflight lock` again")
            files[src_name] = Entry(exp, _locator(name, exp.generation))
        return Listing(None, files)

    def _source_names(self, first: str) -> list[str]:
        if self.lane.kind == "gguf":
            from ..check import gguf_split_names

            return gguf_split_names(first)
        return [first]

    def _list_file(self) -> dict[str, ObjectInfo]:
        if not self.name:
            raise FetchError(f"{self.where}: a {self.lane.kind} lane's source names an object: gs://BUCKET/OBJECT",
                             hint="add the object's name, e.g. gs://models/gguf/model.Q4_K_M.gguf")
        folder, _, first = self.name.rpartition("/")
        names = self._source_names(first)
        if self.generation and len(names) > 1:
            raise UsageError(f"lane {self.lane.name}: #{self.generation} pins one object, and a split GGUF has {len(names)} parts",
                             hint="drop the #GENERATION: `preflight lock` pins the generation of every part")
        out = {}
        for i, src_name in enumerate(names):
            name = f"{folder}/{src_name}" if folder else src_name
            part = f" (split part {i + 1} of {len(names)})" if len(names) > 1 else ""
            out[src_name] = self._retrying(lambda name=name, part=part: self._stat_file(name, part))
        return out

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
            raise FetchError(f"{gs_url(self.bucket, name)} is a folder (a prefix with objects under it), and a {self.lane.kind} lane needs "
                             "an object", hint="name the object, or make the lane a folder kind (hf-dir, …)", status=404)
        raise FetchError(f"{gs_url(self.bucket, name, self.generation)}: no such object{part} in bucket {self.bucket}", status=404)

    def _list_folder(self) -> dict[str, ObjectInfo]:
        from ..check import selected

        prefix = f"{self.name}/" if self.name else ""
        found: dict[str, ObjectInfo] = {}
        for info in self.client.list_all(self.bucket, prefix, self._retrying):
            if not info.name.startswith(prefix):
                from .gcs_client import NOT_RETRIED

                raise FetchError(f"{self.where}: the server listed {info.name[:200]!r}, which is not under the prefix; refused",
                                 status=NOT_RETRIED)
            rel = info.name[len(prefix):]
            if not rel or rel.endswith("/"):
                continue  # a "folder" placeholder object the console and some tools write
            if selected(rel, self.lane):
                found[rel] = info
        if not found:
            what = "match the lane's include/exclude" if (self.lane.include or self.lane.exclude) else "exist"
            raise FetchError(f"{self.where}: no objects under this prefix {what} in bucket {self.bucket}; nothing to fetch",
                             hint="check the prefix (gs://BUCKET/PREFIX lists the objects under PREFIX/)", status=404)
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
        from .gcs_client import gs_url
        from .http import Fetched, fetch_to

        name, generation, _etag = _split(entry.locator)
        where = gs_url(self.bucket, name, generation)
        exp = entry.expect
        if self.from_lock:
            # Listed from the lock: that generation must still be there, as locked, before a byte moves.
            info = self.client.stat(self.bucket, name, generation)
            if info is None:
                raise self._changed(where, "that generation no longer exists (overwritten or deleted in a bucket without object "
                                           "versioning)")
            if exp.size is not None and info.size != exp.size:
                raise self._changed(where, f"it holds {info.size} bytes, the lock pins {exp.size}")
            if exp.sha256 and info.sha256 and info.sha256 != exp.sha256:
                raise self._changed(where, f"its sha256 metadata is {info.sha256}, the lock pins {exp.sha256}")
        check = [] if exp.sha256 else ["crc32c"] if exp.crc32c else ["md5"] if exp.md5 else []
        url, headers = self.client.media(self.bucket, name, generation)
        try:
            got = fetch_to(url, partial, headers=headers, expected_size=exp.size, algos=tuple(dict.fromkeys((*algos, *check))),
                           etag=entry.etag, **transfer.http())
        except AuthError as exc:
            if self.client.auth.expiring():
                raise FetchError(f"{where}: the token ran out during the download; the next attempt gets a new one and resumes", url=where) from None
            raise AuthError(f"{where}: {exc.message.replace(url, where)}: {self.client.auth.who()}", url=where, status=exc.status,
                            hint=_auth_hint()) from None
        except FetchError as exc:
            new = type(exc)(exc.message.replace(url, where), url=where, status=exc.status, hint=exc.hint)
            new.retry_after = exc.retry_after
            raise new from None
        for algo in check:
            want, have = getattr(exp, algo), got.digests.get(algo)
            if have != want:
                partial.remove()  # whole and wrong: nothing in it is worth resuming
                raise IntegrityError(f"{where}: the bytes received have {algo} {have}, the object's is {want}; nothing was published",
                                     url=where)
        if self.from_lock and exp.sha256 and got.resumed_from == 0 and got.digests.get("sha256") not in (None, exp.sha256):
            partial.remove()
            raise self._changed(where, f"its bytes hash to sha256 {got.digests['sha256']}, the lock pins {exp.sha256}")
        return Fetched(got.size, got.digests, got.resumed_from, where)

    def _changed(self, where: str, how: str) -> FetchError:
        return FetchError(f"{where} changed on the server since the lock: {how}; nothing of it was published",
                          hint="if the new object is the one to serve, run `preflight lock` again", status=CHANGED)

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        """Size, sha256 and generation of every file: a sha256 the manifest or the object
        vouches for, else measured now by reading that generation once (its CRC32C checked)."""
        out = {}
        todo = {rel: e for rel, e in listing.files.items() if not e.expect.sha256}
        if todo:
            total = sum(e.expect.size or 0 for e in todo.values())
            self.ctx.log(f"{self.lane.name}: reading {len(todo)} object(s) ({total} bytes) to pin their sha256")
        for rel, entry in sorted(listing.files.items()):
            name, generation, _etag = _split(entry.locator)
            sha = entry.expect.sha256
            if rel in todo:
                size, sha = self._retrying(lambda name=name, generation=generation, crc=entry.expect.crc32c:
                                           self.client.measure(self.bucket, name, generation, crc))
                if entry.expect.size is not None and size != entry.expect.size:
                    raise FetchError(f"gs://{self.bucket}/{name} changed while it was locked: listed with {entry.expect.size} bytes, read {size}")
            out[rel] = FileExpect(entry.expect.size, sha, generation=generation)
        return out


def _auth_hint() -> str:
    from .gcs_client import AUTH_HINT

    return AUTH_HINT


# --------------------------------------------------------------------------- push


class GcsDestination(Destination):
    """push --to gs://BUCKET/PREFIX: each file of a lane to PREFIX/<its path in the lane>,
    with its sha256 in the object's metadata and its CRC32C checked by the server, so a pull
    is verified end to end. An object already there with the same size and the same sha256
    metadata (or, without it, the same CRC32C) is not sent again."""

    def __init__(self, url: str, ctx: Context) -> None:
        super().__init__(url, ctx)
        try:
            src = parse_source(url)
        except ValueError as exc:
            raise UsageError(f"--to {url}: {exc}") from None
        if src.revision:
            raise UsageError(f"--to {url}: a push makes new generations; drop the #GENERATION")
        assert src.repo is not None
        self.bucket = src.repo
        self.prefix = src.path_in_repo or ""
        self._client: GcsClient | None = None

    @property
    def client(self) -> GcsClient:
        if self._client is None:
            from .gcs_client import open_client

            self._client = open_client(self.ctx, write=True)
        return self._client

    def push(self, lane: PushLane, transfer: Transfer) -> Pushed:
        from .gcs_client import file_crc32c, gs_url

        name = lane.lane.name
        keys = {f.rel: (f"{self.prefix}/{f.rel}" if self.prefix else f.rel) for f in lane.files}
        first = keys[sorted(keys)[0]]
        ref = f"gs://{self.bucket}/{self.prefix}" if lane.lane.is_dir else gs_url(self.bucket, first)
        pushed = Pushed(name, ref)
        for f in lane.files:
            if transfer.cancel is not None and transfer.cancel.is_set():
                raise FetchError(f"{name}: cancelled")
            key = keys[f.rel]
            there = self.ctx.retrying(name, lambda key=key: self.client.stat(self.bucket, key))
            crc = None
            if there is not None and there.size == f.size:
                if there.sha256 is None and there.crc32c:
                    crc = file_crc32c(f.path)
                if there.sha256 == f.sha256 or (there.sha256 is None and there.crc32c == crc):
                    pushed.skipped_files += 1
                    pushed.skipped_bytes += f.size
                    continue
            self._upload(name, f, key, crc or file_crc32c(f.path), transfer)
            pushed.uploaded_files += 1
            pushed.uploaded_bytes += f.size
        return pushed

    def _upload(self, name: str, f: PushFile, key: str, crc: str, transfer: Transfer) -> None:
        from .gcs_client import gs_url

        self.ctx.log(f"{name}: uploading {f.rel} ({f.size} bytes) to {gs_url(self.bucket, key)}")
        self.ctx.retrying(name, lambda: self.client.upload(self.bucket, key, f.path, f.size, f.sha256, crc, transfer))
        if transfer.progress:
            transfer.progress(f.size)
