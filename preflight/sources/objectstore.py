"""What the object-store sources (s3.py, gcs.py) do alike.

A lane's source is a bucket and a prefix (a folder lane: every object under PREFIX/,
include/exclude on the names below it) or a key (a file lane: that object, and a GGUF's
split parts beside it). A lane the lock pins whole is resolved without a request, and an
object that no longer holds what the lock pins is refused before anything is published.
A push sends each file of a lane to PREFIX/<its path in the lane>, unless the object
there already holds its bytes.

Each store's module keeps what is its own: its client (credentials, signing, the APIs),
how a listed object is addressed (an S3 ETag, a Cloud Storage generation), and which
digests the store vouches for.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ..errors import FetchError, UsageError
from ..manifest import FileExpect, Lane, parse_source
from . import Context, Destination, Entry, Listing, Pushed, PushFile, PushLane, Source, Transfer

if TYPE_CHECKING:
    from ..lockfile import LockedLane
    from ..volume import StagedFile
    from .http import Fetched

CHANGED = 410  # FetchError.status of an object that no longer holds what was listed or locked: asking again cannot help
NOT_UNDER = 400  # FetchError.status of a listing that names an object outside the prefix: asking again cannot help

ClientT = TypeVar("ClientT")


class _LazyClient(Generic[ClientT]):
    """The store's client, opened on first use (never by `check`)."""

    _client: ClientT | None = None

    @abc.abstractmethod
    def _open_client(self) -> ClientT: ...

    @property
    def client(self) -> ClientT:
        if self._client is None:
            self._client = self._open_client()
        return self._client


class ObjectStoreSource(_LazyClient[ClientT], Source):
    """SCHEME://BUCKET/PREFIX (folder lanes) or SCHEME://BUCKET/KEY (file lanes).

    A store's source lists objects (`_listed`, `_file_info`), makes an entry of each listed
    object (`_entry`) or of each file the lock pins (`_pinned`, `_locked_locator`), says
    where an entry's bytes are (`_media`), and measures what the lock pins (`_lock_file`)."""

    scheme: ClassVar[str]  # "s3", "gs"
    object_form: ClassVar[str]  # how a source names one object: "s3://BUCKET/KEY"
    object_noun: ClassVar[str]  # what names an object in a bucket: "key", "name"

    def __init__(self, lane: Lane, ctx: Context) -> None:
        super().__init__(lane, ctx)
        src = lane.source
        assert src is not None and src.repo
        self.bucket = src.repo
        self.key = src.path_in_repo or ""
        self.from_lock = False

    @property
    def where(self) -> str:
        return self._url(self.key) + ("/" if self.lane.is_dir and self.key else "")

    def _url(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    def _retrying(self, call: Callable[[], Any]) -> Any:
        return self.ctx.retrying(self.lane.name, call)

    # ------------------------------------------------------------------ resolve

    def resolve(self, locked: LockedLane | None) -> Listing:
        if locked is not None and locked.files and all(self._pinned(e) for e in locked.files.values()):
            return self._from_lock(locked)
        infos = self._list_folder() if self.lane.is_dir else self._list_file()
        names = self._lane_names(list(infos))
        files: dict[str, Entry] = {}
        for rel, info in infos.items():
            expect = self.lane.files.get(names[rel], FileExpect())  # the manifest, then the lock, then the object
            pinned = locked.files.get(names[rel]) if locked is not None else None
            files[rel] = self._entry(info, expect, pinned)
        return Listing(None, files)

    def _pinned(self, exp: FileExpect) -> bool:
        """The lock says all a fetch needs of this file: no listing."""
        return bool(exp.sha256) and exp.size is not None

    @abc.abstractmethod
    def _entry(self, info: Any, expect: FileExpect, pinned: FileExpect | None) -> Entry:
        """The entry of a listed object: what the manifest (`expect`), the lock (`pinned`)
        and the object itself say it must be, and how to fetch that very object."""

    @abc.abstractmethod
    def _locked_locator(self, key: str, exp: FileExpect) -> str:
        """The locator of an object known from the lock alone."""

    def _lane_names(self, rels: list[str]) -> dict[str, str]:
        """Source name → the name sync gives it on the volume (a single-file lane's own name)."""
        if self.lane.is_dir:
            return {r: r for r in rels}
        from ..sync import place_names

        return {src: lane for lane, src in place_names(self.lane, {r: r for r in rels}).items()}

    def _from_lock(self, locked: LockedLane) -> Listing:
        """Every file pinned by the lock: nothing to ask the server until a byte is needed
        (fetch asks then, and refuses an object that changed)."""
        self.from_lock = True
        if self.lane.is_dir:
            found = [(rel, rel, f"{self.key}/{rel}" if self.key else rel) for rel in locked.files]
        else:
            parts = self._parts()
            lane_names = sorted(locked.files)
            if len(parts) != len(lane_names):
                raise UsageError(f"lane {self.lane.name}: the lock pins {len(lane_names)} file(s), the source names {len(parts)}",
                                 hint="run `preflight lock` again")
            found = [(name, lane_name, key) for (name, key), lane_name in zip(sorted(parts), lane_names)]
        files = {}
        for rel, lane_name, key in found:
            exp = self.lane.files.get(lane_name, FileExpect()).merge(locked.files[lane_name])
            files[rel] = Entry(exp, self._locked_locator(key, exp))
        return Listing(None, files)

    def _parts(self) -> list[tuple[str, str]]:
        """(name, key) of the object a file lane's source names and, for a GGUF, of each
        split part beside it."""
        folder, _, first = self.key.rpartition("/")
        if self.lane.kind == "gguf":
            from ..check import gguf_split_names

            names = gguf_split_names(first)
        else:
            names = [first]
        return [(name, f"{folder}/{name}" if folder else name) for name in names]

    def _list_file(self) -> dict[str, Any]:
        if not self.key:
            raise FetchError(f"{self.where}: a {self.lane.kind} lane's source names an object: {self.object_form}",
                             hint=f"add the object's {self.object_noun}, e.g. {self.scheme}://models/gguf/model.Q4_K_M.gguf")
        parts = self._parts()
        out = {}
        for i, (name, key) in enumerate(parts):
            part = f" (split part {i + 1} of {len(parts)})" if len(parts) > 1 else ""
            out[name] = self._file_info(key, part)
        return out

    @abc.abstractmethod
    def _file_info(self, key: str, part: str) -> Any:
        """What the store says of the object a file lane names (`part`: which split part, for
        messages); FetchError when there is none."""

    def _folder(self, url: str) -> FetchError:
        return FetchError(f"{url} is a folder (a prefix with objects under it), and a {self.lane.kind} lane needs an object",
                          hint="name the object, or make the lane a folder kind (hf-dir, …)", status=404)

    def _list_folder(self) -> dict[str, Any]:
        from ..check import selected

        prefix = f"{self.key}/" if self.key else ""
        found = {}
        for key, info in self._listed(prefix):
            if not key.startswith(prefix):
                raise FetchError(f"{self.where}: the server listed {key[:200]!r}, which is not under the prefix; refused",
                                 status=NOT_UNDER, hint="the server does not filter its listing by prefix")
            rel = key[len(prefix):]
            if not rel or rel.endswith("/"):
                continue  # a "folder" placeholder object the console and some tools write
            if selected(rel, self.lane):
                found[rel] = info
        if not found:
            what = "match the lane's include/exclude" if (self.lane.include or self.lane.exclude) else "exist"
            raise FetchError(f"{self.where}: no objects under this prefix {what} in bucket {self.bucket}; nothing to fetch",
                             hint=f"check the prefix ({self.scheme}://BUCKET/PREFIX lists the objects under PREFIX/)", status=404)
        return found

    @abc.abstractmethod
    def _listed(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """(key, what the listing says of it) of every object under `prefix`, within the
        store's bounds on a listing."""

    # ------------------------------------------------------------------ fetch

    def _check_pinned(self, where: str, exp: FileExpect, size: int, sha256: str | None) -> None:
        """An object that no longer holds what the lock pins is refused before a byte moves."""
        if exp.size is not None and size != exp.size:
            raise self._changed(where, f"it holds {size} bytes, the lock pins {exp.size}")
        if exp.sha256 and sha256 and sha256 != exp.sha256:
            raise self._changed(where, f"its sha256 is {sha256}, the lock pins {exp.sha256}")

    def _fetched(self, where: str, exp: FileExpect, partial: StagedFile, got: Fetched) -> Fetched:
        """What fetch_to delivered, named by the object; whole bytes of a lane the lock pins
        that hash to another sha256 are refused as an object changed since the lock."""
        from .http import Fetched

        if self.from_lock and exp.sha256 and got.resumed_from == 0 and got.digests.get("sha256") not in (None, exp.sha256):
            partial.remove()  # whole and wrong: nothing in it is worth resuming
            raise self._changed(where, f"its bytes hash to sha256 {got.digests['sha256']}, the lock pins {exp.sha256}")
        return Fetched(got.size, got.digests, got.resumed_from, where)

    def _changed(self, where: str, how: str) -> FetchError:
        return FetchError(f"{where} changed on the server since the lock: {how}; nothing of it was published",
                          hint="if the new object is the one to serve, run `preflight lock` again", status=CHANGED)

    def read_range(self, entry: Entry, start: int, length: int) -> bytes | None:
        from .http import read_range

        url, headers, where = self._media(entry)
        try:
            return self._retrying(lambda: read_range(url, headers, start, length, self.ctx.timeouts))
        except FetchError as exc:
            raise self._rewrite(exc, url, where) from None

    @abc.abstractmethod
    def _media(self, entry: Entry) -> tuple[str, dict[str, str] | None, str]:
        """(URL, headers, the object's own name for messages) of the bytes of `entry`."""

    @abc.abstractmethod
    def _rewrite(self, exc: FetchError, url: str, where: str) -> FetchError:
        """An error of a request to `url`, told by the object's name (a signed URL is a credential)."""

    # ------------------------------------------------------------------ lock

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        """What the lock pins of every file: a sha256 the manifest or the object vouches for,
        else measured now by reading the object once."""
        todo = {rel for rel, e in listing.files.items() if not e.expect.sha256}
        if todo:
            total = sum(listing.files[rel].expect.size or 0 for rel in todo)
            self.ctx.log(f"{self.lane.name}: reading {len(todo)} object(s) ({total} bytes) that vouch for no sha256, to pin it")
        return {rel: self._lock_file(entry, rel in todo) for rel, entry in sorted(listing.files.items())}

    @abc.abstractmethod
    def _lock_file(self, entry: Entry, measure: bool) -> FileExpect:
        """What the lock pins of one file; `measure`: its sha256 is known only by reading it."""

    def _measured(self, key: str, entry: Entry, size: int) -> None:
        if entry.expect.size is not None and size != entry.expect.size:
            raise FetchError(f"{self._url(key)} changed while it was locked: listed with {entry.expect.size} bytes, read {size}")


# --------------------------------------------------------------------------- push


class ObjectStoreDestination(_LazyClient[ClientT], Destination):
    """push --to SCHEME://BUCKET/PREFIX: each file of a lane to PREFIX/<its path in the lane>;
    a file whose object is already there with the same bytes is not sent again."""

    scheme: ClassVar[str]

    def __init__(self, url: str, ctx: Context) -> None:
        super().__init__(url, ctx)
        try:
            src = parse_source(url)
        except ValueError as exc:
            raise UsageError(f"--to {url}: {exc}") from None
        assert src.repo is not None
        self.bucket = src.repo
        self.prefix = src.path_in_repo or ""
        self.revision = src.revision

    def _url(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    def push(self, lane: PushLane, transfer: Transfer) -> Pushed:
        name = lane.lane.name
        keys = {f.rel: (f"{self.prefix}/{f.rel}" if self.prefix else f.rel) for f in lane.files}
        first = keys[sorted(keys)[0]]
        pushed = Pushed(name, self._url(self.prefix if lane.lane.is_dir else first))
        for f in lane.files:
            if transfer.cancel is not None and transfer.cancel.is_set():
                raise FetchError(f"{name}: cancelled")
            if self._push_file(name, f, keys[f.rel], transfer):
                pushed.uploaded_files += 1
                pushed.uploaded_bytes += f.size
            else:
                pushed.skipped_files += 1
                pushed.skipped_bytes += f.size
        return pushed

    @abc.abstractmethod
    def _push_file(self, lane_name: str, f: PushFile, key: str, transfer: Transfer) -> bool:
        """Send `f` to `key` unless the object there already holds its bytes; True when sent."""

    def _upload(self, lane_name: str, f: PushFile, key: str, transfer: Transfer, send: Callable[[], object]) -> None:
        self.ctx.log(f"{lane_name}: uploading {f.rel} ({f.size} bytes) to {self._url(key)}")
        self.ctx.retrying(lane_name, send)
        if transfer.progress:
            transfer.progress(f.size)
