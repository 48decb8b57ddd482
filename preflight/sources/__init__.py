"""Sources: one module per scheme behind one small interface.

A source resolves a lane's reference to an immutable version (a commit, a manifest
digest, an object version) and the files it offers with what each must be (size,
digest); it fetches one file into a staging path it is given; and it says what the
lock pins. It never decides where a file goes on the volume: the names it lists are
checked and placed by sync (`volume.safe_rel`, `sync.place_names`), and its bytes are
verified there before anything is published.

    hf.py     hf://org/repo[/path]@revision   (the Hugging Face Hub or a mirror of it)
    http.py   https://…                        (a plain URL; the manifest pins its digest)
    local.py  file://… or a path               (a mirror folder or file)
    oci.py    oci://REGISTRY/REPO[:TAG|@DIGEST][//PATH]  (ModelPack, Docker Model Runner, KitOps, modelcar images)
    s3.py     s3://BUCKET/PREFIX or KEY        (S3-compatible object storage)
    gcs.py    gs://BUCKET/PREFIX or OBJECT[#GENERATION]  (Google Cloud Storage)

    objectstore.py  what s3.py and gcs.py do alike (listing a prefix or an object and its
                    split parts, a lane pinned whole by the lock, changed objects, push)

    archive.py  a folder lane whose source (any of the above but oci://) names a .tar,
                .tar.gz, .tgz, .tar.zst or .zip file: a wrapper around that source's bytes
    unpack.py   what reading an archive (archive_reader.py) and an OCI layer (oci_tar.py)
                share: gzip/zstd by magic bytes, a bounded expansion, links kept inside

Files that come out of one pass (an archive's members) share `Entry.group`; sync hands
the whole group to `Source.fetch_group`, which fills one staging file per member.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import AuthError, FetchError, UsageError
from ..manifest import FileExpect, Lane
from ..record import record

if TYPE_CHECKING:
    from ..volume import StagedFile
    from ..lockfile import LockedLane
    from .http import Cancel, Fetched, Timeouts
    from .pool import Budget

T = TypeVar("T")


@record(frozen=True)
class Entry:
    """One file a source offers for a lane: what it must be, and how the source finds it."""

    expect: FileExpect
    locator: str  # the source's own address of it: a URL, a mirror path, an object key
    etag: str | None = None  # a content id guarding a resume (If-Range); the cache layout's blob name
    stamp: str | None = None  # what tells this version of the file apart when no digest does (a mirror file's size and mtime)
    group: str | None = None  # files fetched together in one pass (an archive's members): the group's key


@record
class Listing:
    """A lane's files at one immutable version, named as the source names them."""

    version: str | None  # a commit, a manifest digest, … (None: the source has no versions)
    files: dict[str, Entry]
    # The lane's files are known only once this entry is fetched (an archive seen for the first
    # time): sync then fetches its group (`Source.fetch_group` with every file wanted).
    unlisted: Entry | None = None


class GroupStaging(abc.ABC):
    """Where one group's bytes go, named by sync: `work()` for the group's own bytes (the
    archive, kept across attempts so a download resumes), `file(rel)` for each member."""

    @abc.abstractmethod
    def work(self) -> StagedFile: ...

    @abc.abstractmethod
    def file(self, rel: str) -> StagedFile: ...


@record
class GroupFetched:
    """What one pass over a group wrote (by name in the lane), and every file the group
    holds with its size and sha256 (what a later resolve may recall instead of reading it)."""

    files: dict[str, Fetched]
    listing: dict[str, FileExpect]


@record
class Transfer:
    """How one fetch attempt runs: limits, interruption, the lease, progress."""

    timeouts: Timeouts
    deadline: float | None = None
    cancel: Cancel | None = None
    may_write: Callable[[], bool] | None = None
    progress: Callable[[int], None] | None = None
    budget: Budget | None = None  # the run's connection budget (None: the process's, PREFLIGHT_CONNECTIONS or 16)
    log: Callable[[str], None] | None = None  # one-time notes of a download (a server without ranges)
    connections: int | None = None  # connections this file may use (1: one stream, front to back)

    def http(self) -> dict:
        """This attempt's limits as `sources.http.fetch_to` takes them (one place, every source)."""
        return {"timeouts": self.timeouts, "progress": self.progress, "deadline": self.deadline, "cancel": self.cancel,
                "may_write": self.may_write, "budget": self.budget, "log": self.log, "connections": self.connections}


@record
class Context:
    """What a source may ask of the run: the token, where the manifest lives, retries."""

    manifest_file: str
    timeouts: Timeouts
    token: Callable[[], str | None] = lambda: None
    retries: int = 3
    deadline: float | None = None
    log: Callable[[str], None] = lambda _msg: None
    requests: list[int] = field(default_factory=lambda: [0])
    # What this volume learned about a group before (an archive's member list, by its key).
    recall: Callable[[str], dict[str, FileExpect] | None] = lambda _key: None

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """A listing request, retried as downloads are (--retries, backoff, Retry-After
        within the deadline): one 503 or 429 must not fail the run."""
        from .http import retry_delay

        last: FetchError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                assert last is not None
                delay = retry_delay(attempt, last, self.deadline)
                if delay is None:
                    break
                self.log(f"{what}: listing retry {attempt}/{self.retries} in {delay:g}s after: {last}")
                time.sleep(delay)
            try:
                self.requests[0] += 1
                return call()
            except AuthError:
                raise
            except FetchError as exc:
                last = exc
        assert last is not None
        raise last


class Source(abc.ABC):
    """One lane's source."""

    deterministic = False  # the same bytes on every attempt (a local mirror): a verification failure is final
    fetched_as = "the downloaded bytes"  # how messages name what fetch delivered

    def __init__(self, lane: Lane, ctx: Context) -> None:
        assert lane.source is not None
        self.lane = lane
        self.ctx = ctx

    @abc.abstractmethod
    def resolve(self, locked: LockedLane | None) -> Listing:
        """The lane's files at an immutable version. With the lock's entry for the lane,
        without the network where the lock says enough."""

    @abc.abstractmethod
    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        """One attempt: `entry`'s bytes into `partial` (resuming what it holds where the
        source can), with the digests of the whole file. FetchError when it fails."""

    def size_hint(self, entry: Entry) -> int | None:
        """The size of a file whose expectation has none, for planning only."""
        return None

    def read_range(self, entry: Entry, start: int, length: int) -> bytes | None:
        """Bytes [start, start + length) of `entry` (fewer at its end), to judge fit before a
        download (config.json, tensor headers). None when this source cannot read part of this
        file (fit then waits for the download); FetchError or AuthError when the read fails.
        Callers bound `length`; nothing read here is trusted more than a download is."""
        return None

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        """What `preflight lock` pins for each file (size and digest)."""
        return {rel: e.expect for rel, e in listing.files.items()}

    def fetch_group(self, group: str, wanted: set[str] | None, staging: GroupStaging, transfer: Transfer) -> GroupFetched:
        """One attempt at a group (entries sharing `Entry.group`): every file of it that the
        lane selects into `staging.file(rel)` (`wanted`: what sync needs, None for all).
        FetchError when it fails; nothing is published here."""
        raise FetchError(f"lane {self.lane.name}: this source fetches files one by one")

    def archive_pin(self) -> FileExpect | None:
        """The size and sha256 of the bytes a lane's files come out of (an archive), for the lock."""
        return None


def open_source(lane: Lane, ctx: Context) -> Source:
    """The source of `lane`, by its scheme; a folder lane whose source names an archive
    file gets that source wrapped (sources/archive.py)."""
    assert lane.source is not None
    if lane.is_dir and lane.kind != "hf-cache":
        from .archive import ArchiveSource, is_archive_source

        if is_archive_source(lane.source):
            return ArchiveSource(lane, ctx)
    scheme = lane.source.scheme
    if scheme == "hf":
        from .hf import HubSource

        return HubSource(lane, ctx)
    if scheme in ("https", "http"):
        from .http import UrlSource

        return UrlSource(lane, ctx)
    if scheme == "local":
        from .local import MirrorSource

        return MirrorSource(lane, ctx)
    if scheme == "oci":
        from .oci import OciSource

        return OciSource(lane, ctx)
    if scheme == "s3":
        from .s3 import S3Source

        return S3Source(lane, ctx)
    if scheme == "gs":
        from .gcs import GcsSource

        return GcsSource(lane, ctx)
    raise UsageError(f"lane {lane.name}: no source handles {scheme}:// yet")


# --------------------------------------------------------------------------- pushing verified lanes


@record(frozen=True)
class PushFile:
    """One verified file of a lane, as a pull must recreate it."""

    rel: str  # path inside the lane (for a single-file lane, its file name)
    path: Path  # where it is on the volume
    size: int
    sha256: str


@record
class PushLane:
    lane: Lane
    files: list[PushFile]
    revision: str | None = None  # what the lane was synced from (a commit, a digest), for annotations


@record
class Pushed:
    """What a push did for one lane: where it is now, and what moved."""

    lane: str
    ref: str  # the pullable reference (oci://…@sha256:…, s3://bucket/prefix, gs://bucket/prefix)
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    skipped_files: int = 0  # already there (same digest): not sent again
    skipped_bytes: int = 0


class Destination(abc.ABC):
    """Where `preflight push` publishes verified lanes (a registry, a bucket)."""

    def __init__(self, url: str, ctx: Context) -> None:
        self.url = url
        self.ctx = ctx

    @abc.abstractmethod
    def push(self, lane: PushLane, transfer: Transfer) -> Pushed:
        """Publish one lane's files so that a lane with this destination as its source
        pulls them back byte for byte. Files already there are not uploaded again."""


def open_destination(url: str, ctx: Context) -> Destination:
    """The destination `--to URL` names, by its scheme."""
    from ..manifest import parse_source

    try:
        scheme = parse_source(url).scheme
    except ValueError as exc:
        raise UsageError(f"--to {url}: {exc}") from None
    if scheme == "oci":
        from .oci import OciDestination

        return OciDestination(url, ctx)
    if scheme == "s3":
        from .s3 import S3Destination

        return S3Destination(url, ctx)
    if scheme == "gs":
        from .gcs import GcsDestination

        return GcsDestination(url, ctx)
    raise UsageError(f"--to {url}: push goes to oci://, s3:// or gs://")
