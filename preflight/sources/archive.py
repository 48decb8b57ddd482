"""A folder lane filled from one model archive (.tar, .tar.gz, .tgz, .tar.zst, .zip) that
any other source delivers: https://…/model.tar.gz, s3://bucket/model.tar.gz, a mirror's
file, an hf:// file.

A wrapper, not a scheme of its own: the archive's bytes are the inner source's (its
resume, ranges, retries, credentials and digests unchanged), and this module adds what an
archive needs on top of them. So every source can carry an archive, and an archive is
never read by code that does not know where its bytes came from.

- The archive is one file of the inner source, staged whole (one stream, resumable like
  any download) and checked against its digest (the manifest's or lock's sha256, else what
  the source vouches for) before anything from it is published.
- A tar is unpacked while it arrives, from the growing staging file, in one pass
  (`archive_reader`: names, links, devices, bounds), into staging files sync names; the
  bytes the unpacking read are hashed and must be the archive that matched its digest. A
  zip (its directory is at its end) is unpacked once it is complete. Sync verifies each
  member like any downloaded file and publishes them only when every one passed.
- The lane's files are the archive's members (include/exclude apply to their names). They
  are known without reading the archive when the lock pins them, or when this volume
  unpacked the same archive before (sync remembers each archive's member list by its
  digest); otherwise the listing is `unlisted` and the first sync learns it.
- Receipts are kept per extracted file, so `check` never opens the archive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
import threading
import time
from typing import TYPE_CHECKING

from ..errors import FetchError, IntegrityError, StalledError, UnsafeSourceError
from ..manifest import FileExpect, Lane, Source as SourceRef, archive_kind, archive_name
from . import Context, Entry, GroupFetched, GroupStaging, Listing, Source, Transfer
from .archive_reader import Scan, read_archive

if TYPE_CHECKING:
    from ..lockfile import LockedLane
    from ..volume import StagedFile
    from .http import Cancel, Fetched


def inner_lane(lane: Lane) -> Lane:
    """The lane as the inner source sees it: a file lane holding the archive alone."""
    assert lane.source is not None
    name = archive_name(lane.source)
    assert name is not None
    pin = lane.archive or FileExpect()
    return dataclasses.replace(lane, kind="file", path=posixpath.join(lane.path, name) if lane.path != "." else name,
                               include=(), exclude=(), files={name: pin}, archive=None, signature=None, serve=None,
                               checksums=None, dvc=None, base=None, layout="in-place")


def group_key(expect: FileExpect, entry: Entry | None) -> str:
    """What an archive is known by: its sha256, else its locator, size and version stamp."""
    if expect.sha256:
        return f"sha256:{expect.sha256}"
    assert entry is not None
    raw = f"{entry.locator}|{expect.size}|{entry.etag}|{entry.stamp}"
    return "archive:" + hashlib.sha256(raw.encode()).hexdigest()


def group_version(key: str) -> str:
    """The lane's version from its archive's key (what a revision is named by)."""
    return key if key.startswith("sha256:") else key.split(":", 1)[1]


class ArchiveSource(Source):
    """A folder lane whose source names an archive file."""

    def __init__(self, lane: Lane, ctx: Context) -> None:
        super().__init__(lane, ctx)
        from . import open_source

        self.inner_lane = inner_lane(lane)
        self.inner = open_source(self.inner_lane, ctx)
        self.name = archive_name(lane.source)  # type: ignore[arg-type]
        self.kind = archive_kind(self.name or "") or "tar"
        self._archive: Entry | None = None  # the inner source's entry for the archive, once resolved
        self._pin = lane.archive or FileExpect()

    def _selected(self, rel: str) -> bool:
        from ..check import selected

        return selected(rel, self.lane)

    def resolve(self, locked: LockedLane | None) -> Listing:
        pin = self._pin
        if locked is not None and locked.archive is not None:
            pin = pin.merge(locked.archive)
        members: dict[str, FileExpect] | None = None
        if pin.sha256:
            key = group_key(pin, None)
            if locked is not None and locked.archive is not None and locked.files:
                members = dict(locked.files)
            else:
                members = self.ctx.recall(key)
            if members is not None:  # nothing to ask the source until a byte is needed
                self._pin = pin
                return self._listing(key, members)
        listing = self.inner.resolve(None)
        if len(listing.files) != 1:
            raise FetchError(f"lane {self.lane.name}: the source lists {len(listing.files)} files for the archive {self.name}, expected one")
        (entry,) = listing.files.values()
        expect = pin.merge(entry.expect)
        self._archive = dataclasses.replace(entry, expect=expect)
        self._pin = expect
        key = group_key(expect, entry)
        if members is None:
            members = self.ctx.recall(key)
        if members is not None:
            return self._listing(key, members)
        return Listing(group_version(key), {}, unlisted=dataclasses.replace(self._archive, group=key))

    def _listing(self, key: str, members: dict[str, FileExpect]) -> Listing:
        files = {rel: Entry(exp, rel, group=key) for rel, exp in members.items() if self._selected(rel)}
        return Listing(group_version(key), files)

    def archive_pin(self) -> FileExpect | None:
        return self._pin if (self._pin.sha256 or self._pin.size is not None) else None

    def size_hint(self, entry: Entry) -> int | None:
        """The archive's size (what a fetch downloads first)."""
        archive = self._archive_entry()
        return archive.expect.size if archive.expect.size is not None else self.inner.size_hint(archive)

    def _archive_entry(self) -> Entry:
        if self._archive is None:
            listing = self.inner.resolve(None)
            (entry,) = listing.files.values()
            expect = self._pin.merge(entry.expect)
            if self._pin.sha256 and entry.expect.sha256 and entry.expect.sha256 != self._pin.sha256:
                raise IntegrityError(f"{self.lane.name}: the source now offers {self.name} with sha256 {entry.expect.sha256}, "
                                     f"the lock pins {self._pin.sha256}; nothing was fetched", status=400,
                                     hint="run `preflight lock` again to accept the new archive")
            self._archive = dataclasses.replace(entry, expect=expect)
        return self._archive

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        raise FetchError(f"{self.lane.name}: an archive's member is fetched with its archive (fetch_group)")

    # ------------------------------------------------------------------ one pass: the archive, then its members

    def fetch_group(self, group: str, wanted: set[str] | None, staging: GroupStaging, transfer: Transfer) -> GroupFetched:
        """The archive staged (one stream, front to back, resumable) while a tar is unpacked
        from the growing file; a zip (whose directory is at its end) once it is complete.
        Every byte the unpacking read is hashed: it must be the archive that matched its
        digest, else (a download that started over under the reader) the staged archive is
        unpacked again from its start. Nothing here is published; sync verifies, then does."""
        archive = self._archive_entry()
        work = staging.work()
        what = f"{self.lane.name}: archive {self.name}"
        writers = _Writers(staging, transfer, what)
        started = time.monotonic()
        try:
            if self.kind == "zip":
                got = self._download(archive, work, transfer, what)
                with work.reader() as f:
                    scan = self._unpack(f, got.size, writers, what)
            else:
                got, scan, read_sha = self._download_and_unpack(archive, work, transfer, writers, what)
                if read_sha != got.digests.get("sha256"):
                    writers.abort()
                    if transfer.log is not None:
                        transfer.log(f"{what}: the staged bytes changed under the unpacking (the download started over); "
                                     "unpacking the archive again")
                    with work.reader() as f:
                        scan = self._unpack(f, got.size, writers, what)
        except BaseException:
            writers.abort()
            raise
        return self._result(scan, wanted, writers, what, started, transfer)

    def _verify_archive(self, got: Fetched, what: str) -> None:
        exp = self._archive_entry().expect
        if exp.size is not None and got.size != exp.size:
            raise IntegrityError(f"{what}: got {got.size} bytes, expected {exp.size}; nothing was published")
        if exp.sha256 and got.digests.get("sha256") != exp.sha256:
            raise IntegrityError(f"{what}: its sha256 is {got.digests.get('sha256')}, expected {exp.sha256}; nothing was published",
                                 hint="the archive changed at the source, or the pinned digest is wrong: run `preflight lock` "
                                      "against a trusted copy")

    def _download(self, archive: Entry, work: StagedFile, transfer: Transfer, what: str) -> Fetched:
        """The whole archive first (a zip): ranged over several connections where the source can."""
        got = self.inner.fetch(archive, work, ("sha256",), transfer)
        self._verify_archive(got, what)
        return got

    def _download_and_unpack(self, archive: Entry, work: StagedFile, transfer: Transfer, writers: _Writers,
                             what: str) -> tuple[Fetched, Scan, str]:
        from .http import Cancel

        own = Cancel()  # stops this download alone when the unpacking fails
        done = threading.Event()
        result: dict = {}

        def download() -> None:
            try:
                result["got"] = self.inner.fetch(archive, work, ("sha256",), dataclasses.replace(transfer, connections=1, cancel=own))
            except BaseException as exc:  # handed to the reading side, which raises it
                result["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=download, name="archive-download", daemon=True)
        thread.start()
        follow = _Follow(work, done, result, transfer, own, what)
        try:
            scan = self._unpack(follow, archive.expect.size, writers, what)
            follow.drain()  # the archive's end after the tar's end marker: hashed too
        except (KeyboardInterrupt, SystemExit):
            own.trip()
            thread.join(timeout=max(5.0, transfer.timeouts.stall + 5))
            raise
        except BaseException:
            failed_first = done.is_set() and isinstance(result.get("error"), FetchError)
            if failed_first:  # the download broke off on its own: that, not the short stream the reader saw, is the cause
                raise result["error"] from None
            if follow.read_is_prefix_of(work):
                own.trip()
                thread.join(timeout=max(5.0, transfer.timeouts.stall + 5))
                raise
            # The bytes the reader judged are no longer the staged file's (a download that started
            # over under it): judge the archive itself once it is complete.
            if transfer.log is not None:
                transfer.log(f"{what}: the staged bytes changed under the unpacking (the download started over); "
                             "unpacking the archive again once it is complete")
            writers.abort()
            thread.join()
            if "error" in result:
                raise result["error"] from None
            got = result["got"]
            self._verify_archive(got, what)
            return got, scan_from_start(self, work, got.size, writers, what), got.digests.get("sha256", "")
        finally:
            follow.close()
        thread.join()
        if "error" in result:
            raise result["error"]
        got = result["got"]
        self._verify_archive(got, what)
        return got, scan, follow.sha256()

    def _unpack(self, f, size: int | None, writers: _Writers, what: str) -> Scan:
        """One pass of the archive in `f` into staging files (the lane's include/exclude applied)."""
        def open_member(name: str, declared: int):
            return writers.open(name, declared) if self._selected(name) else None

        return read_archive(f, size, self.kind, open_member, writers.close, what=what)

    def _result(self, scan: Scan, wanted: set[str] | None, writers: _Writers, what: str, started: float,
                transfer: Transfer) -> GroupFetched:
        from .http import Fetched

        files: dict[str, Fetched] = {}
        listing: dict[str, FileExpect] = {}
        try:
            for m in scan.members:
                if not self._selected(m.path):
                    continue
                listing[m.path] = FileExpect(m.size, m.sha256)
                if m.link is not None:
                    if not self._selected(m.link):
                        raise UnsafeSourceError(f"{what}: {m.path} links to {m.link}, which the lane's include/exclude leaves out; "
                                                "nothing was published", hint="include the link's target, or exclude the link too")
                    writers.copy(m.link, m.path)
                files[m.path] = Fetched(m.size, {"sha256": m.sha256 or ""}, 0, f"{self.lane.source.raw}#{m.path}")  # type: ignore[union-attr]
            if wanted is not None:
                missing = sorted(wanted - set(listing))
                if missing:
                    raise IntegrityError(f"{what}: holds no {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
                                         + ", which the lock or an earlier unpack of the same archive listed", status=400)
        except BaseException:
            writers.abort()
            raise
        if transfer.log is not None:
            transfer.log(f"{what}: {len(files)} files, {scan.extracted} bytes unpacked in {time.monotonic() - started:.1f}s")
        return GroupFetched(files, listing)

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        """Every member's size and sha256, measured by reading the archive once (staged in a
        private scratch folder, checked against its digest first); or the listing when it
        already holds them (a lock, an earlier unpack)."""
        if listing.files and listing.unlisted is None:
            return {rel: e.expect for rel, e in listing.files.items()}
        from ..volume import scratch_staging

        archive = self._archive_entry()
        with scratch_staging() as held:
            work = held.file("archive.part")
            got = self.inner.fetch(archive, work, ("sha256",), Transfer(self.ctx.timeouts, self.ctx.deadline, log=self.ctx.log))
            if archive.expect.sha256 and got.digests.get("sha256") != archive.expect.sha256:
                raise IntegrityError(f"{self.lane.name}: archive {self.name} has sha256 {got.digests.get('sha256')}, "
                                     f"expected {archive.expect.sha256}; not locked", status=400)
            self._pin = FileExpect(got.size, got.digests.get("sha256"))
            with work.reader() as f:
                scan: Scan = read_archive(f, got.size, self.kind, lambda _n, _s: None, lambda _n, _w: None,
                                          what=f"{self.lane.name}: archive {self.name}", hash_skipped=True)
        return {m.path: FileExpect(m.size, m.sha256) for m in scan.members if self._selected(m.path)}


def scan_from_start(source: ArchiveSource, work: StagedFile, size: int, writers: _Writers, what: str) -> Scan:
    with work.reader() as f:
        return source._unpack(f, size, writers, what)


class _Follow(io.RawIOBase):
    """The staged archive read as the download grows it (one stream, appended front to
    back), hashed as it is read; the end is the download's end."""

    def __init__(self, work: StagedFile, done: threading.Event, result: dict, transfer: Transfer, own: Cancel, what: str) -> None:
        self.work, self.done, self.result, self.transfer, self.own, self.what = work, done, result, transfer, own, what
        self.f = None
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def _wait(self) -> None:
        parent = self.transfer.cancel
        if parent is not None and parent.is_set():
            self.own.trip()
            raise FetchError(f"{self.what}: cancelled")
        if self.transfer.deadline is not None and time.monotonic() > self.transfer.deadline:
            self.own.trip()
            raise StalledError(f"{self.what}: the run's deadline passed while it was unpacked")
        self.done.wait(0.02)

    def readinto(self, b) -> int:
        while self.f is None:
            if self.work.exists():
                self.f = self.work.reader()
            elif self.done.is_set():
                self._failed()
                return 0
            else:
                self._wait()
        while True:
            finished = self.done.is_set()
            n = self.f.readinto(b)
            if n:
                self.hash.update(memoryview(b)[:n])
                self.count += n
                return n
            if finished:
                self._failed()
                return 0
            self._wait()

    def _failed(self) -> None:
        if "error" in self.result:
            raise self.result["error"]

    def drain(self) -> None:
        buf = bytearray(2**20)
        while self.readinto(buf):
            pass

    def sha256(self) -> str:
        return self.hash.hexdigest()

    def read_is_prefix_of(self, work: StagedFile) -> bool:
        """Whether what was read is still what the staged file begins with."""
        h = hashlib.sha256()
        left = self.count
        try:
            with work.reader() as f:
                while left:
                    data = f.read(min(left, 2**20))
                    if not data:
                        return False
                    h.update(data)
                    left -= len(data)
        except OSError:
            return False
        return h.hexdigest() == self.hash.hexdigest()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        super().close()


class _Writers:
    """Members written into their staging files through the door: appends only, the lease
    asked before every write, write-behind for large members, interrupt and deadline honoured."""

    def __init__(self, staging: GroupStaging, transfer: Transfer, what: str) -> None:
        self.staging, self.transfer, self.what = staging, transfer, what
        self.opened: list[StagedFile] = []

    def open(self, name: str, size: int):
        from .http import check_free

        partial = self.staging.file(name)
        t = self.transfer
        if t.cancel is not None and t.cancel.is_set():
            raise FetchError(f"{self.what}: cancelled")
        if t.may_write is not None and not t.may_write():
            raise FetchError(f"{self.what}: stopped before {name}: another writer holds the volume now")
        partial.size()  # clears whatever stands at the staging name
        check_free(partial, size)
        self.opened.append(partial)
        return _MemberOut(partial, t, self.what, name)

    def close(self, name: str, out: _MemberOut) -> None:  # type: ignore[override]
        out.close()

    def copy(self, src: str, dst: str) -> None:
        """A link's bytes: a copy of its target's staged file (a model server reads files, not links)."""
        from ..integrity import READ_CHUNK

        source, target = self.staging.file(src), self.staging.file(dst)
        self.opened.append(target)
        out = _MemberOut(target, self.transfer, self.what, dst)
        try:
            with source.reader() as f:
                buf = bytearray(READ_CHUNK)
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    out.write(bytes(buf[:n]))
        finally:
            out.close()

    def abort(self) -> None:
        for partial in self.opened:
            partial.remove()


class _MemberOut:
    def __init__(self, partial: StagedFile, transfer: Transfer, what: str, name: str) -> None:
        from ..integrity import WriteBehind

        self.transfer, self.what, self.name = transfer, what, name
        self.f = partial.writer(append=False)
        self.behind = WriteBehind(self.f.fileno())
        self.n = 0

    def write(self, data: bytes) -> None:
        t = self.transfer
        if t.cancel is not None and t.cancel.is_set():
            raise FetchError(f"{self.what}: cancelled while extracting {self.name}")
        if t.deadline is not None and time.monotonic() > t.deadline:
            raise StalledError(f"{self.what}: the run's deadline passed while extracting {self.name}")
        if t.may_write is not None and not t.may_write():
            raise FetchError(f"{self.what}: stopped extracting {self.name}: another writer holds the volume now")
        view = memoryview(data)
        while view:
            view = view[self.f.write(view):]
        self.n += len(data)
        self.behind.wrote(self.n)

    def close(self) -> None:
        if not self.f.closed:
            try:
                self.behind.finish()
                if os.fstat(self.f.fileno()).st_size != self.n:
                    raise IntegrityError(f"{self.what}: the staging file of {self.name} changed under this process "
                                         "(another writer?); discarded")
            finally:
                self.f.close()


def is_archive_source(src: SourceRef | None) -> bool:
    return src is not None and src.scheme != "oci" and archive_kind(archive_name(src) or "") is not None

