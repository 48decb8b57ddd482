"""plan → preflight → lease → fetch into staging → verify → publish → receipts → report.

A valid file on the volume is never deleted or replaced by anything unverified:
new bytes land in `<models_dir>/.preflight/staging/` (same filesystem), are
checked for size, digest and format, fsynced, then renamed over the target.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Callable
from typing import TypeVar
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from pathlib import Path

from . import problems as P
from .check import key_under, lock_drift, real_key_root, repo_folder, state_key
from .errors import (
    AuthError,
    DiskSpaceError,
    ExitCode,
    FetchError,
    IntegrityError,
    ManifestError,
    NotReadyError,
    PreflightError,
    UnsafeContentError,
    UnsafeSourceError,
    UsageError,
)
from .lease import Lease
from .manifest import FileExpect, Lane
from .progress import Progress
from .record import record
from .report import LaneResult, Report, human_size, plural
from .session import Session
from .redact import redact as mask
from .sources import Context as SourceContext
from .sources import Entry, GroupStaging, Listing, Source, Transfer, open_source
from .sources.http import Cancel, Timeouts, retry_delay
from .volume import PathEscape, StagedFile, Staging, UnsafeName, Volume, is_hex_digest, safe_rel, state_volume, why_unwritable

T = TypeVar("T")

FIXABLE = {
    P.MISSING, P.EMPTY_FILE, P.TRUNCATED, P.TRAILING_DATA, P.HEADER_TOO_LARGE, P.HEADER_INVALID, P.BAD_OFFSETS,
    P.BAD_DTYPE, P.BAD_SHAPE, P.BAD_MAGIC, P.UNSUPPORTED_VERSION, P.COUNT_TOO_LARGE,
    P.BAD_VALUE_TYPE, P.BAD_TENSOR_TYPE, P.MISALIGNED, P.TENSOR_OUT_OF_BOUNDS, P.SPLIT_MISSING, P.SPLIT_INVALID,
    P.CONFIG_INVALID, P.CONFIG_MISSING, P.CHECKSUM_MISMATCH, P.SIZE_MISMATCH, P.INDEX_INVALID, P.NOT_A_FILE,
    P.ADAPTER_INVALID, P.UNREADABLE,
}
# Not here: shard-missing is reported on the index file, which is fine; the absent shard
# has its own `missing` problem, and refetching the index would rewrite a valid file.


@record
class Options:
    offline: bool = False
    locked: bool = False
    token_file: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: int = 3
    workers: int = 16
    deadline: float | None = None  # seconds for the whole run
    lease_wait: float = 1800.0
    stale_after: float = 60.0
    connections: int = 16  # connections open at once in the run (ranged pieces of large files, small files)
    no_fit: bool = False  # download lanes fit refuses on this node (serving/before.py)


@record
class Job:
    lane: Lane
    rel: str
    target: Path  # where the verified file is published
    expect: FileExpect
    entry: Entry  # what the source offers
    source: Source
    link: Path | None = None  # hf-cache: snapshot symlink → target (the blob)
    size_hint: int | None = None  # a file's size from the source when the manifest gives none: planning only
    fetched: int | None = None  # bytes of the published file, once published
    files: int = 1  # files it published (an unpacked group's members)

    @property
    def label(self) -> str:
        return f"{self.lane.name}/{self.rel}"

    @property
    def size(self) -> int | None:
        return self.expect.size if self.expect.size is not None else self.size_hint


class Remote:
    """What each lane's source says the lane must hold, resolved once per run."""

    def __init__(self, session: Session, opts: Options, progress: Progress, deadline: float | None = None) -> None:
        self.session = session
        self.opts = opts
        self.progress = progress
        self.deadline = deadline
        self.token: str | None = None
        self._token_read = False
        self.expect: dict[str, tuple[dict[str, FileExpect], str | None]] = {}
        self.fetchable: dict[str, dict[str, Entry]] = {}
        self.sources: dict[str, Source] = {}
        self.errors: dict[str, PreflightError] = {}
        self._resolved: dict[tuple[str, str | None], tuple[Source, dict[str, Entry], str | None, Entry | None]] = {}
        self.unlisted: dict[str, Entry] = {}  # lanes whose files come out of a group not unpacked here yet
        self.ctx = SourceContext(session.manifest.file, opts.timeouts, self.get_token, opts.retries, deadline, progress.log,
                                 recall=self.recall)

    def recall(self, key: str) -> dict[str, FileExpect] | None:
        """An archive's member list as this volume unpacked it before (by the archive's key)."""
        files = self.session.ctx.receipts.group_files(key)
        return None if files is None else {rel: FileExpect(size, sha) for rel, (size, sha) in files.items()}

    def learn(self, lane: Lane, group: str, listing: dict[str, FileExpect]) -> None:
        """A group was unpacked: its files are the lane's listing from now on (and next run)."""
        version = self.expect.get(lane.name, ({}, None))[1]
        files = {rel: Entry(exp, rel, group=group) for rel, exp in listing.items()}
        pins = self._pinned(lane, files)
        self.expect[lane.name] = ({rel: e.expect for rel, e in pins.items()}, version)
        self.fetchable[lane.name] = pins
        self.unlisted.pop(lane.name, None)
        self.session.ctx.receipts.remember_group(group, {rel: (e.size or 0, e.sha256 or "") for rel, e in listing.items()})

    @property
    def requests(self) -> int:
        return self.ctx.requests[0]

    def get_token(self) -> str | None:
        if not self._token_read:
            from .sources.hf import read_token

            self.token = read_token(self.opts.token_file)
            self._token_read = True
        return self.token

    def resolve(self, lane: Lane) -> None:
        src = lane.source
        if src is None:
            return
        from .lockfile import lock_entry

        lock = self.session.ctx.lock
        locked = lock_entry(lock, lane)
        if locked is not None and lock_drift(locked, lane):
            if self.opts.locked:
                raise ManifestError(f"lane {lane.name}: the lock was made for source {locked.source}, the manifest says {src.raw}", file=lock.path, hint="run `preflight lock` again")
            self.progress.log(f"{lane.name}: the lock is stale (source changed); resolving again")
            locked = None
        if locked is None and self.opts.locked:
            raise ManifestError(f"lane {lane.name} is not in the lock file", file=lock.path if lock else None, hint="run `preflight lock`")
        self.errors.pop(lane.name, None)
        done = self._resolved.get((lane.name, lane.variant))  # a variant judged before it was chosen: listed once
        if done is None:
            try:
                source = open_source(lane, self.ctx)
                listing = source.resolve(locked)
                files, version = checked_listing(lane, listing)
                done = self._resolved[(lane.name, lane.variant)] = (source, self._pinned(lane, files), version, listing.unlisted)
            except PreflightError as exc:
                self.errors[lane.name] = exc
                return
        source, files, version, unlisted = done
        if unlisted is not None:
            self.unlisted[lane.name] = unlisted
        else:
            self.unlisted.pop(lane.name, None)
        self.sources[lane.name] = source
        self.expect[lane.name] = ({rel: e.expect for rel, e in files.items()}, version)
        self.fetchable[lane.name] = files


    def _pinned(self, lane: Lane, files: dict[str, Entry]) -> dict[str, Entry]:
        """What the manifest, a checksum or DVC file and the lock pin wins over what the
        source lists: a download is verified against the pin before it is published."""
        from .check import expected_files

        pins = expected_files(self.session.ctx, lane)
        out = {}
        for rel, entry in files.items():
            pin = pins.get(rel)
            out[rel] = dataclasses.replace(entry, expect=pin.merge(entry.expect)) if pin is not None else entry
        return out


def checked_listing(lane: Lane, listing: Listing) -> tuple[dict[str, Entry], str | None]:
    """The one door for every source's listing: names are checked (`safe_rel`) and placed
    (a single-file lane's path names its file, whatever the source calls it), ids that
    become names (a commit, a cache blob) must be digests, before anything is planned."""
    version = listing.version
    if lane.kind == "hf-cache" and not is_hex_digest(version, (40, 64)):
        raise UnsafeSourceError(f"the source gave {str(version)[:80]!r} as the commit, which is not a commit id; nothing was written")
    files = place_names(lane, listing.files)
    bad = []
    for rel, entry in files.items():
        try:
            safe_rel(rel)
        except UnsafeName as exc:
            bad.append(str(exc))
        if lane.kind == "hf-cache" and entry.etag is not None and not is_hex_digest(entry.etag):
            bad.append(f"{rel!r} comes with {str(entry.etag)[:80]!r} as its blob id, which is not a digest")
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UnsafeSourceError(f"the source lists names that would leave the lane: {'; '.join(bad[:3])}{more}; nothing was written",
                                hint="the source (a mirror, a lock file or a server) is damaged or hostile")
    return files, version


def place_names(lane: Lane, fetchable: dict[str, T]) -> dict[str, T]:
    """A single-file lane's files under the lane's own name(s): `path: gguf/reader.gguf`
    with a source file `upstream.gguf` is fetched into reader.gguf (split parts by number)."""
    if lane.is_dir or not fetchable:
        return fetchable
    from .check import gguf_split_names

    want = gguf_split_names(Path(lane.path).name) if lane.kind == "gguf" else [Path(lane.path).name]
    have = sorted(fetchable)
    if len(have) != len(want):
        raise UsageError(f"lane {lane.name}: the source holds {plural(len(have), 'file')} ({', '.join(have[:3])}), the lane path names "
                         f"{len(want)}; a split GGUF lane's path is named like its first part: NAME-00001-of-{len(have):05d}.gguf")
    if have == want:
        return fetchable
    return {w: fetchable[h] for h, w in zip(have, want)}


UNLISTED = "*"  # the job that unpacks a group whose files are not known yet (an archive new to this volume)


def plan_jobs(session: Session, remote: Remote, results: list[LaneResult]) -> list[Job]:
    jobs: list[Job] = []
    by_name = {r.name: r for r in results}
    for lane in session.lanes:
        res = by_name[lane.name]
        pending = remote.unlisted.get(lane.name)
        if pending is not None:
            # Nothing vouches that what stands there came out of this archive: unpack it.
            jobs.append(Job(lane, UNLISTED, session.ctx.models_dir / lane.path / UNLISTED, pending.expect, pending, remote.sources[lane.name]))
            continue
        fetchable = remote.fetchable.get(lane.name) or {}
        if not fetchable:
            continue
        bad = {p.path for p in res.problems if p.is_error and p.code in FIXABLE}
        lane_missing = any(p.path == lane.path and p.code == P.MISSING for p in res.problems)
        commit = remote.expect.get(lane.name, ({}, None))[1]
        for rel, entry in fetchable.items():
            if not (lane_missing or rel in bad):
                continue
            jobs.append(_job(session, remote, lane, rel, entry, commit))
    return jobs


def _job(session: Session, remote: Remote, lane: Lane, rel: str, entry: Entry, commit: str | None) -> Job:
    root = session.ctx.models_dir / lane.path
    source = remote.sources[lane.name]
    if lane.kind == "hf-cache":
        assert lane.source is not None and lane.source.repo and commit
        repo_dir = root / repo_folder(lane.source.repo, lane.source.repo_type)
        blob = entry.etag or hashlib.sha256(rel.encode()).hexdigest()
        return Job(lane, rel, repo_dir / "blobs" / blob, entry.expect, entry, source, repo_dir / "snapshots" / commit / rel)
    target = root / rel if lane.is_dir else root.parent / rel
    return Job(lane, rel, target, entry.expect, entry, source)


def staging_name(job: Job) -> str:
    """Named by the expected digest and the target, so a later process resumes the same
    bytes, and two lanes fetching identical files (shared tokenizers) never share one."""
    key = job.expect.sha256 or job.expect.sha1
    if not key:
        key = hashlib.sha256(f"{job.entry.locator}|{job.expect.size}".encode()).hexdigest()[:40]
    target = hashlib.sha256(str(job.link or job.target).encode()).hexdigest()[:12]
    return f"{key}-{target}.part"


MAX_LEASE_ROUNDS = 3  # lose the lease, wait, check again: at most this many times


class _GroupPlaces(GroupStaging):
    """Staging names of one group for one lane: the group's own bytes by the group's key
    (a later process resumes the archive's download), each member by a digest of its name."""

    def __init__(self, held: Staging, group: str, lane_root: str) -> None:
        self.held = held
        self.key = hashlib.sha256(group.encode()).hexdigest()[:32]
        self.lane = hashlib.sha256(lane_root.encode()).hexdigest()[:12]
        self.members: dict[str, StagedFile] = {}

    def work(self) -> StagedFile:
        return self.held.file(f"{self.key}-{self.lane}.group.part")

    def file(self, rel: str) -> StagedFile:
        if rel not in self.members:
            name = hashlib.sha256(f"{self.lane}|{rel}".encode()).hexdigest()[:32]
            self.members[rel] = self.held.file(f"{self.key[:16]}-{name}.member.part")
        return self.members[rel]

    def drop_members(self) -> None:
        for partial in self.members.values():
            partial.remove()


class Fetcher:
    def __init__(self, session: Session, remote: Remote, opts: Options, progress: Progress, deadline: float | None) -> None:
        self.session = session
        self.remote = remote
        self.opts = opts
        self.progress = progress
        self.deadline = deadline
        assert session.state_dir is not None
        self.staging = session.state_dir / "staging"
        self.volume = Volume(session.ctx.models_dir)
        self.cancel = Cancel()
        self.may_write: Callable[[], bool] | None = None  # the lease's still_ours
        from .sources.pool import Budget

        self.budget = Budget(opts.connections)  # each file's first connection is granted anyway; extra pieces share the rest

    def run(self, jobs: list[Job]) -> dict[str, list[tuple[Job, PreflightError]]]:
        """Fetch every job; on an interrupt (SIGTERM arrives as KeyboardInterrupt) stop all
        downloads at once, keeping their partial bytes, and re-raise."""
        # Opened once through the door and held: a staging folder swapped for a link later changes nothing.
        with Staging(state_volume(self.session.ctx.models_dir, self.staging.parent).sub("staging")) as held:
            self.held = held
            return self._run(jobs)

    def _run(self, jobs: list[Job]) -> dict[str, list[tuple[Job, PreflightError]]]:
        failures: dict[str, list[tuple[Job, PreflightError]]] = {}
        tasks: list[list[Job]] = []
        groups: dict[tuple[str, str], list[Job]] = {}
        for job in jobs:
            if job.entry.group is None:
                tasks.append([job])
            else:  # one pass fills every file of the group (an archive's members)
                key = (job.lane.name, job.entry.group)
                if key not in groups:
                    groups[key] = []
                    tasks.append(groups[key])
                groups[key].append(job)
        workers = max(1, min(self.opts.workers, len(tasks)))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        try:
            for task, err in zip(tasks, pool.map(self._task, tasks)):
                if err is not None:
                    failures.setdefault(task[0].lane.name, []).append((task[0], err))
        except BaseException:
            self.cancel.trip()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return failures

    def _task(self, task: list[Job]) -> PreflightError | None:
        if task[0].entry.group is None:
            return self._one(task[0])
        try:
            self._group(task)
            return None
        except PreflightError as exc:
            return exc
        except OSError as exc:
            return FetchError(f"{task[0].lane.name}: {exc.strerror or exc}")

    def _one(self, job: Job) -> PreflightError | None:
        try:
            self._fetch(job)
            return None
        except PreflightError as exc:
            return exc
        except OSError as exc:
            return FetchError(f"{job.label}: {exc.strerror or exc}")

    def _group(self, jobs: list[Job]) -> None:
        """One group (an archive): fetched and unpacked in one pass into staging, every
        member verified like a downloaded file, then all of them published (none when one
        fails). Retried as single files are; a download resumes from the staged archive."""
        first = jobs[0]
        lane, group, source = first.lane, first.entry.group, first.source
        assert group is not None
        wanted = None if any(j.rel == UNLISTED for j in jobs) else {j.rel for j in jobs}
        by_rel = {j.rel: j for j in jobs if j.rel != UNLISTED}
        places = _GroupPlaces(self.held, group, str(self.session.ctx.models_dir / lane.path))
        archive_label = f"{lane.name}/{lane.source.raw.rsplit('/', 1)[-1] if lane.source else group}"
        key = self.progress.start(archive_label, first.size if first.rel == UNLISTED else None)
        transfer = Transfer(self.opts.timeouts, self.deadline, self.cancel, self.may_write, lambda n: self.progress.advance(key, n),
                            self.budget, self.progress.log)
        started = time.monotonic()
        last: PreflightError | None = None
        try:
            for attempt in range(self.opts.retries + 1):
                if not self._before_attempt(attempt, last, key, archive_label, lane.name):
                    break
                try:
                    got = source.fetch_group(group, wanted, places, transfer)
                    members = [(self._member_job(lane, rel, got.listing[rel], by_rel.get(rel)), fetched) for rel, fetched in sorted(got.files.items())]
                    for job, fetched in members:  # every member verified before any is published
                        self._verify(job, places.file(job.rel), fetched.size, fetched.digests)
                    if self.cancel.is_set():
                        raise FetchError(f"{lane.name}: cancelled before publishing")
                    total = published = 0
                    for job, fetched in members:
                        if wanted is None or job.rel in wanted:
                            self._publish(job, places.file(job.rel), fetched.size, fetched.digests)
                            total += fetched.size
                            published += 1
                            job.fetched = fetched.size
                        else:
                            places.file(job.rel).remove()
                    for j in jobs:
                        if j.rel == UNLISTED:
                            j.fetched, j.files = total, published
                    places.work().remove()
                    self.remote.learn(lane, group, got.listing)
                    self.progress.finish(key)
                    key = None
                    secs = time.monotonic() - started
                    self.progress.log(f"{archive_label}: {plural(published, 'file')}, {human_size(total)} published in {secs:.1f}s")
                    return
                except AuthError:
                    raise
                except OSError as exc:
                    places.drop_members()
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    places.work().remove()
                    raise DiskSpaceError(f"{lane.name}: the volume filled up while the archive was fetched or unpacked; "
                                         "its staging files were removed") from None
                except IntegrityError as exc:
                    last = exc
                    places.drop_members()
                    places.work().remove()
                except FetchError as exc:
                    last = exc
                    places.drop_members()
            assert last is not None
            raise last
        finally:
            if key is not None:
                self.progress.finish(key)

    def _member_job(self, lane: Lane, rel: str, measured: FileExpect, planned: Job | None) -> Job:
        """The job of one member: what the manifest, lock or checksum files pin for it wins
        over what the pass measured (a pinned digest the member does not have is refused)."""
        from .check import expected_files

        if planned is not None:
            return planned
        pins = expected_files(self.session.ctx, lane)
        pin = pins.get(rel)
        expect = pin.merge(FileExpect(measured.size)) if pin is not None else FileExpect(measured.size)
        try:
            safe_rel(rel)
        except UnsafeName as exc:
            raise UnsafeSourceError(f"{lane.name}: the archive names {exc}; nothing was published") from None
        root = self.session.ctx.models_dir / lane.path
        return Job(lane, rel, root / rel, expect, Entry(expect, rel), self.remote.sources[lane.name])

    def _fetch(self, job: Job) -> None:
        partial = self.held.file(staging_name(job))
        algos = fetch_algos(job.expect)
        key = self.progress.start(job.label, job.size)
        transfer = Transfer(self.opts.timeouts, self.deadline, self.cancel, self.may_write, lambda n: self.progress.advance(key, n),
                            self.budget, self.progress.log)
        started = time.monotonic()
        last: PreflightError | None = None
        try:
            for attempt in range(self.opts.retries + 1):
                if not self._before_attempt(attempt, last, key, job.label, job.label):
                    break
                try:
                    got = job.source.fetch(self._planned(job), partial, algos, transfer)
                    digests, size = got.digests, got.size
                    self._verify(job, partial, size, digests)
                    if self.cancel.is_set():
                        raise FetchError(f"{job.label}: cancelled before publishing")
                    self._publish(job, partial, size, digests)
                    job.fetched = size
                    self.progress.finish(key)
                    key = None
                    secs = time.monotonic() - started
                    self.progress.log(f"{job.label}: {human_size(size)} in {secs:.1f}s ({human_size(int(size / max(secs, 1e-6)))}/s) from {job.lane.source.raw if job.lane.source else '?'}")
                    return
                except AuthError:
                    raise
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    # The partial cannot be completed, and it holds the space others need.
                    partial.remove()
                    raise DiskSpaceError(f"{job.label}: the volume filled up during the download; the partial file was removed") from None
                except IntegrityError as exc:
                    last = exc
                    partial.remove()
                    if isinstance(exc, UnsafeContentError):
                        from . import __version__

                        self.session.ctx.receipts.refuse(refusal_key(job), {
                            "lane": job.lane.name, "file": job.rel, "reason": mask(str(exc))[:500],
                            "version": __version__, "allow_pickle": job.lane.allow_pickle})
                        break
                    if job.source.deterministic:
                        break  # a local copy gives the same bytes every time: asking again cannot help
                except FetchError as exc:
                    last = exc
            assert last is not None
            msg = str(last)
            err = type(last)(f"{job.label}: {msg}" if not msg.startswith(job.label) else msg, url=getattr(last, "url", None),
                             status=getattr(last, "status", None), hint=last.hint)
            err.permanent = last.permanent
            raise err
        finally:
            if key is not None:
                self.progress.finish(key)

    def _before_attempt(self, attempt: int, last: PreflightError | None, key: int, label: str, name: str) -> bool:
        """Whether attempt `attempt` (0: the first) of a file or an archive is made: a cancel
        raises; a retry waits out its delay (its progress line paused) unless the delay
        would pass the deadline (False: no more attempts); a deadline already passed raises."""
        if self.cancel.is_set():
            raise FetchError(f"{name}: cancelled")
        if attempt:
            assert last is not None
            delay = retry_delay(attempt, last, self.deadline)
            if delay is None:
                return False
            self.progress.pause(key)
            self.progress.log(f"{label}: retry {attempt}/{self.opts.retries} in {delay:g}s after: {last}")
            if self.cancel.wait(delay):
                raise FetchError(f"{name}: cancelled")
            self.progress.reset(key)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise FetchError(f"{label}: the run's deadline passed")
        return True

    def _planned(self, job: Job) -> Entry:
        """The entry as the transfer should plan it: a size the source told before the body
        (a URL's HEAD) makes a large file eligible for parallel ranges, as a size in the
        manifest does. The size is then also required of the body; the manifest's own
        expectations (`job.expect`) are what the bytes are verified against."""
        if job.entry.expect.size is None and job.size_hint is not None:
            return dataclasses.replace(job.entry, expect=dataclasses.replace(job.entry.expect, size=job.size_hint))
        return job.entry

    def _verify(self, job: Job, partial: StagedFile, size: int, digests: dict[str, str]) -> None:
        exp = job.expect
        what = job.source.fetched_as  # "the downloaded bytes", "the bytes copied from the mirror"
        pinned = f" (pinned at {exp.origin})" if exp.origin else " (as the source lists it)"
        if exp.size is not None and size != exp.size:
            raise IntegrityError(f"{job.label}: {what} are {size} bytes long, expected {exp.size}{pinned}")
        if exp.sha256 and digests.get("sha256") != exp.sha256:
            raise IntegrityError(f"{job.label}: {what} hash to sha256 {digests.get('sha256')}, expected {exp.sha256}{pinned}")
        if not exp.sha256 and exp.sha1 and digests.get("sha1") != exp.sha1:
            raise IntegrityError(f"{job.label}: {what} hash to git blob sha1 {digests.get('sha1')}, expected {exp.sha1}{pinned}")
        if not exp.sha256 and not exp.sha1 and exp.crc32c and digests.get("crc32c") != exp.crc32c:
            raise IntegrityError(f"{job.label}: {what} have crc32c {digests.get('crc32c')}, expected {exp.crc32c}{pinned}")
        from .check import check_single_file

        # read through the held staging descriptor (StagedFile.__fspath__)
        problems = [p for p in check_single_file(Path(os.fspath(partial)), job.rel, job.lane.allow_pickle or True) if p.is_error]
        for p in problems:
            if p.code == P.DANGEROUS_PICKLE:
                raise UnsafeContentError(f"{job.label}: the downloaded file is refused, not published: {p.message}")
        if problems:
            raise IntegrityError(f"{job.label}: the downloaded file is not valid: {problems[0].message}")

    def _publish(self, job: Job, partial: StagedFile, size: int, digests: dict[str, str]) -> None:
        """Rename the verified staged file into place, through folders opened without
        following any symlink out of the volume. The staged file itself must still be the
        size that was verified (a writer that lost the lease may have appended to it)."""
        vol = self.volume
        try:
            st = partial.publish(vol, vol.rel_of(job.target), size)
        except ValueError as exc:
            raise IntegrityError(f"{job.label}: {exc}; discarded") from None
        if job.link is not None:
            vol.make_symlink(vol.rel_of(job.link), os.path.relpath(job.target, job.link.parent))
        self.session.ctx.receipts.record(state_key(self.session.ctx.models_dir, job.link or job.target), st, digests)


def fetch_algos(exp: FileExpect) -> tuple[str, ...]:
    """What a download hashes while it writes: the digest it is held to. sha256 when pinned
    (and when nothing else is known: receipts keep it); the git blob sha1 of a small Hub
    file; a Cloud Storage object's CRC32C alone when that is all the source vouches for
    (several GB/s, where sha256 would be the slowest step of a fast download)."""
    if exp.sha256:
        return ("sha256",)
    if exp.sha1 and exp.size is not None:
        return ("sha1",)
    if exp.crc32c and not exp.sha1:
        return ("crc32c",)
    return ("sha256",)


def settle_listings(session: Session, remote: Remote) -> None:
    """Once the volume agrees with the sources' listings (`session.report` holds the
    check just made): ready hf-cache lanes get refs/<revision> → commit (as
    huggingface_hub writes it), and receipts of files a
    folder lane's listing no longer holds (an older revision's) are dropped, so `check`
    does not expect them back."""
    from .check import files_root

    receipts = session.ctx.receipts
    for lane in session.lanes:
        if lane.is_dir and lane.name in remote.expect and lane.name not in remote.errors:
            listing, commit = remote.expect[lane.name]
            base = real_key_root(files_root(session.ctx, lane, commit), session.ctx.models_dir)
            for key in receipts.under(base):
                if key_under(base, key) not in listing:
                    receipts.forget(key)
    ready = {r.name for r in session.report.lanes if not r.errors}
    for lane in session.lanes:  # what each ready lane now holds, for `check` and `status` to report as a commit
        version = remote.expect.get(lane.name, ({}, None))[1]
        if lane.name in ready and version and lane.source is not None:
            receipts.mark_synced(lane.name, lane.source.raw, version)
            for r in session.report.lanes:
                if r.name == lane.name:
                    r.revision = version
    for lane in session.lanes:
        if lane.kind != "hf-cache" or lane.name not in remote.expect or lane.name not in ready:
            continue  # refs/<revision> moves only to a complete, verified snapshot
        commit = remote.expect[lane.name][1]
        rev = lane.source.revision if lane.source else None
        if not commit or not rev or rev == commit:
            continue
        rel = f"{lane.path}/{repo_folder(lane.source.repo, lane.source.repo_type)}/refs/{rev}"
        vol = Volume(session.ctx.models_dir)
        try:
            if (vol.read_bytes(rel, 4096) or b"").strip() == commit.encode():
                continue
        except PathEscape:
            pass
        try:
            vol.write_atomic(rel, commit.encode())
        except OSError as exc:
            session.report.notes.append(f"could not write {rel}: {exc.strerror}")


def learn_sizes(jobs: list[Job], known: dict[str, int | None]) -> None:
    """Ask the source the size of each file the manifest gives none for (a URL's HEAD), so
    the space check and the progress lines count it; unanswered, the download checks
    space once it starts. `known` keeps the answers for the run: a file is asked once."""
    for job in jobs:
        if job.size is None:
            if job.entry.locator not in known:
                known[job.entry.locator] = job.source.size_hint(job.entry)
            job.size_hint = known[job.entry.locator]


def need_bytes(jobs: list[Job], staging: Path) -> int:
    total = 0
    for job in jobs:
        size = job.size or 0
        partial = staging / staging_name(job)
        try:
            st = os.lstat(partial)
            have = st.st_size if stat.S_ISREG(st.st_mode) else 0
        except OSError:
            have = 0
        total += max(0, size - have)
    return total


def check_space(session: Session, jobs: list[Job], staging: Path) -> None:
    """What must be fetched, plus a margin that grows with it (1/64, at least 1 MiB, at
    most 64 MiB, and 1% beyond 6.4 GiB), must fit in what is free."""
    need = need_bytes(jobs, staging)
    margin = max(min(64 * 2**20, max(2**20, need // 64)), need // 100)
    probe = staging if staging.exists() else session.ctx.models_dir
    free = shutil.disk_usage(probe).free
    if need + margin > free:
        raise DiskSpaceError(
            f"not enough disk space on {session.ctx.models_dir}: {human_size(need)} to fetch (+{human_size(margin)} margin), {human_size(free)} free"
        )


def check_writable(session: Session, jobs: list[Job]) -> dict[str, PreflightError]:
    """Before the first byte: the state folder and every folder a file will be published
    in must be writable by this uid, and reachable without a symlink out of the volume.
    A lane whose folder leads out fails alone (path-escape); anything else unwritable
    stops the run (exit 1) with the folder named."""
    root = session.ctx.models_dir
    sdir = session.state_dir
    assert sdir is not None
    if os.path.lexists(root) and not root.is_dir():
        raise NotReadyError(f"the models folder {root} is a file, not a folder; cannot fetch", hint="point --models-dir / models_dir at a folder")
    try:
        Volume(root).make_dirs("")  # sync creates the models folder (also when --state-dir is elsewhere)
    except OSError as exc:
        raise NotReadyError(f"cannot create the models folder {root}: {why_unwritable(root, exc)}; cannot fetch", hint=_OWNER_HINT) from None
    try:
        staging = state_volume(root, sdir).sub("staging")
        probe = f".write-probe-{os.getpid()}"
        os.close(staging.open_file(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create_dirs=True))
        staging.remove_file(probe)
    except PathEscape:
        raise
    except OSError as exc:
        raise NotReadyError(f"cannot write the state folder {sdir}: {why_unwritable(sdir, exc)}; cannot fetch", hint=_OWNER_HINT) from None
    if os.stat(staging.path).st_dev != os.stat(root).st_dev:
        raise NotReadyError(f"the state folder {sdir} is on another filesystem than the models folder {root}: a verified download "
                            "is renamed into place from staging, which needs one filesystem; cannot fetch",
                            hint="leave --state-dir unset for sync (the state folder is then <models_dir>/.preflight), or put it on the volume")
    vol = Volume(root)
    escaped: dict[str, PreflightError] = {}
    seen: set[str] = set()
    for job in jobs:
        for folder in filter(None, (job.target.parent, job.link.parent if job.link else None)):
            rel = vol.rel_of(folder)
            if rel in seen or job.lane.name in escaped:
                continue
            seen.add(rel)
            try:
                existing, _missing = vol.deepest(rel)
            except PathEscape as exc:
                escaped[job.lane.name] = exc
                continue
            if not os.access(existing, os.W_OK | os.X_OK):
                raise NotReadyError(f"the folder {existing} is not writable by uid {os.getuid()}: {why_unwritable(existing, None)}; cannot fetch lane {job.lane.name}",
                                    hint=_OWNER_HINT)
    session.writable = True
    session.ctx.receipts.state_dir = sdir
    session.ctx.receipts.volume = state_volume(root, sdir)
    return escaped


_OWNER_HINT = "mount the volume read-write, or give it to this uid (chown, or fsGroup in Kubernetes; the image runs as uid 65532)"


def run_sync(session: Session, opts: Options) -> Report:
    report = session.report
    progress = Progress(quiet=bool(session.opts.get("quiet")))
    deadline = time.monotonic() + opts.deadline if opts.deadline else None
    try:
        remote = Remote(session, opts, progress, deadline)
        before = None
        if any(lane.serve is not None for lane in session.lanes):
            from .serving.before import Before, choose_variants

            before = Before(session, remote, progress.log, opts.offline)  # fit before the download (serving/before.py)
            choose_variants(session, remote, before)
        offline_skipped = 0
        for lane in session.lanes:
            if opts.offline and not (lane.source is not None and lane.source.scheme == "local"):
                offline_skipped += lane.source is not None
                continue  # offline means no network: local mirrors are still read
            remote.resolve(lane)
        if opts.offline:
            report.notes.append("offline: nothing was fetched over the network" + (
                f" ({plural(offline_skipped, 'lane')} with a remote source checked as they stand)" if offline_skipped else ""))
        # A lane whose source failed (a gated repo without a token, a server down) fails
        # alone: every other lane is still fetched, and the exit code names the worst.
        blocked: dict[str, PreflightError] = dict(remote.errors)
        results = session.check(remote.expect).lanes
        jobs = held_back(session, plan_jobs(session, remote, results), blocked)
        if before is not None:
            from .serving.before import refuse_unfit

            jobs = refuse_unfit(session, remote, before, jobs, blocked, opts.no_fit)
        if not jobs:
            settle_listings(session, remote)
            _report_errors(report, blocked)
            return report
        blocked.update(check_writable(session, jobs))
        jobs = [j for j in jobs if j.lane.name not in blocked]
        staging = session.state_dir / "staging"
        sizes: dict[str, int | None] = {}
        learn_sizes(jobs, sizes)
        check_space(session, jobs, staging)
        lease = Lease(state_volume(session.ctx.models_dir, session.state_dir), stale_after=opts.stale_after)
        lease.acquire(opts.lease_wait, progress.log)
        fetched: dict[str, list[int]] = {}
        try:
            for _round in range(MAX_LEASE_ROUNDS):
                # pick up another writer's receipts
                session.ctx.receipts = type(session.ctx.receipts)(session.state_dir, state_volume(session.ctx.models_dir, session.state_dir))
                real_lanes = session.lanes
                switches = prepare_switches(session, remote, progress)
                session.lanes = [switches[l.name].staged if l.name in switches else l for l in real_lanes]
                try:
                    results = session.check(remote.expect).lanes
                    jobs = held_back(session, plan_jobs(session, remote, results), blocked)
                    failures: dict[str, list[tuple[Job, PreflightError]]] = {}
                    if jobs:
                        learn_sizes(jobs, sizes)
                        total = sum(j.size or 0 for j in jobs)
                        unknown = sum(1 for j in jobs if j.size is None)
                        more = f" and {unknown} of unknown size" if unknown else ""
                        progress.log(f"fetching {plural(len(jobs), 'file')} ({human_size(total)}{more}) for {plural(len({j.lane.name for j in jobs}), 'lane')}")
                        fetcher = Fetcher(session, remote, opts, progress, deadline)
                        lease.on_lost = fetcher.cancel.trip  # stop downloading at once: another writer has the volume
                        fetcher.may_write = lease.still_ours  # and never write a byte after a pause that let another writer in
                        failures = fetcher.run(jobs)
                        session.ctx.receipts.save()
                        for j in jobs:
                            if j.fetched is not None and not any(j is fj for fj, _e in failures.get(j.lane.name, [])):
                                f = fetched.setdefault(j.lane.name, [0, 0])
                                f[0] += j.files
                                f[1] += j.fetched
                    elif not blocked and not switches:
                        progress.log("another writer already fetched everything; verified")
                    if lease.lost:
                        # This process stalled past --lease-stale (a paused container, a frozen node) and
                        # another writer took the volume over: wait for it, then judge the volume again.
                        progress.log("lost the volume lease to another writer; waiting for it, then checking again")
                        lease.release()
                        lease = Lease(state_volume(session.ctx.models_dir, session.state_dir), stale_after=opts.stale_after)
                        lease.acquire(opts.lease_wait, progress.log)
                        continue
                    if jobs:
                        results = session.check(remote.expect).lanes
                    staged_results = {r.name: r for r in results}
                    for name, sw in switches.items():
                        # with --no-fit, what fit says of this node does not hold the new revision back (path "serve")
                        errors = [p for p in staged_results[name].errors if not (opts.no_fit and p.path == "serve")]
                        if not errors and lease.still_ours():
                            note = sw.flip(session)
                            progress.log(f"{name}: now at revision {sw.rid}" + (f" ({note})" if note else ""))
                            sw.flipped = True
                finally:
                    session.lanes = real_lanes
                results = session.check(remote.expect).lanes
                for r in results:
                    sw = switches.get(r.name)
                    if sw is not None and not sw.flipped:
                        # Why the new revision is not ready is what matters; the lane path still serves
                        # what stood there before, if anything did.
                        r.problems = list(staged_results[r.name].problems)
                        if sw.was != "missing":
                            serves = f"revision {sw.old_rid}" if sw.old_rid else "the folder as it was (in place)"
                            r.serving = {"revision": sw.old_rid, "layout": "revisions" if sw.old_rid else "in-place", "wanted": sw.rid}
                            r.problems.append(P.warning(r.path, P.NOT_SWITCHED,
                                f"{r.path} still serves {serves}: revision {sw.rid} is assembled in {sw.staged.path} "
                                "and becomes current once it is ready"))
                        r.settle()
                settle_listings(session, remote)
                for r in results:
                    if r.name in fetched:
                        r.fetched_files, r.fetched_bytes = fetched[r.name]
                _report_errors(report, {**blocked, **{name: fl[0][1] for name, fl in failures.items()}})
                break
            else:  # the lease was lost every round: report the volume as it stands now
                session.check(remote.expect)
        finally:
            lease.release()
        return report
    finally:
        progress.close()


@record
class Switch:
    """A folder lane moving to another revision: assembled at `staged.path`, then flipped."""

    lane: Lane
    staged: Lane
    rid: str
    old_rid: str | None
    was: str = "missing"  # what stood at the lane path: "missing", "revision", "folder"
    flipped: bool = False

    def flip(self, session: Session) -> str | None:
        from .revisions import flip

        return flip(Volume(session.ctx.models_dir), self.lane, self.rid, self.old_rid)


def prepare_switches(session: Session, remote: Remote, progress: Progress) -> dict[str, Switch]:
    """Folder lanes (layout: revisions) whose listing is not the revision in place get a
    revision folder beside it, with every file the current tree already has hard-linked
    in. Sync then fills and verifies that folder as the lane, and flips the lane path to
    it only when the whole lane is ready."""
    from .check import lane_root
    from .revisions import ReceiptKeys, current, link_unchanged, rev_id, rev_path

    ctx = session.ctx
    out: dict[str, Switch] = {}
    for lane in session.lanes:
        if lane.kind not in ("hf-dir", "adapter") or lane.layout != "revisions" or lane.name not in remote.expect:
            continue
        expect, version = remote.expect[lane.name]
        rid = rev_id(version, expect)
        try:
            cur = current(ctx.models_dir, lane)
        except NotReadyError:
            continue  # a folder on the way leads out of the volume: the lane fails alone (check_writable, observe)
        if cur.state == "revision" and cur.rid == rid:
            continue  # repairs happen inside the current revision: the same bytes, no mix
        if cur.state == "other":
            continue  # a file or a foreign link stands there: observe reports it
        if cur.state == "folder" and lane.name not in remote.unlisted and _lane_ready(session, remote, lane):
            continue  # in place and already this revision: nothing to switch
        staged = dataclasses.replace(lane, path=rev_path(lane, rid))
        vol = Volume(ctx.models_dir)
        if cur.state != "missing":
            try:
                vol.dir_path(staged.path)
                keys = ReceiptKeys(ctx.receipts, lambda p: state_key(ctx.models_dir, p))
                linked = link_unchanged(vol, lane_root(ctx, lane), staged.path, sorted(expect), keys)
            except OSError as exc:
                progress.log(f"{lane.name}: cannot hard-link into a new revision ({exc.strerror}); updating in place")
                continue
            if linked:
                progress.log(f"{lane.name}: revision {rid} assembled beside {cur.rid or 'the current folder'} ({plural(linked, 'unchanged file')} linked)")
        out[lane.name] = Switch(lane, staged, rid, cur.rid, cur.state)
    return out


def _lane_ready(session: Session, remote: Remote, lane: Lane) -> bool:
    from .check import check_lanes

    (res,) = check_lanes(session.ctx, [lane], {lane.name: remote.expect[lane.name]})
    return not res.errors


def held_back(session: Session, jobs: list[Job], blocked: dict[str, PreflightError]) -> list[Job]:
    """Jobs of blocked lanes are dropped; so is a file refused before (a dangerous pickle)
    while neither its source nor this program changed: it would only be refused again."""
    from . import __version__

    out = []
    for job in jobs:
        if job.lane.name in blocked:
            continue
        rec = session.ctx.receipts.refusal(refusal_key(job))
        if rec is not None and rec.get("version") == __version__ and rec.get("allow_pickle") == job.lane.allow_pickle:
            blocked[job.lane.name] = UnsafeContentError(
                f"{job.label}: refused at {rec.get('at', '?')} and not fetched again: {rec.get('reason', '?')}",
                hint="the lane becomes ready when its source holds other bytes (a new revision or digest)")
            continue
        out.append(job)
    return [j for j in out if j.lane.name not in blocked]


def refusal_key(job: Job) -> str:
    """What a refusal is remembered by: the expected digest, else the source and its size
    (and a mirror file's mtime), so any change to the bytes on offer clears it."""
    if job.expect.sha256:
        return f"sha256:{job.expect.sha256}"
    if job.expect.sha1:
        return f"sha1:{job.expect.sha1}"
    return "source:" + hashlib.sha256(f"{job.entry.locator}|{job.expect.size}|{job.entry.stamp}".encode()).hexdigest()


def _report_errors(report: Report, errors: dict[str, PreflightError]) -> None:
    if errors:
        _attach(report, errors)
        _fail_with(report, errors)


def _attach(report: Report, errors: dict[str, PreflightError]) -> None:
    for lane in report.lanes:
        err = errors.get(lane.name)
        if err is not None:
            if getattr(err, "problems", None):  # a lane fit refused before its download: the findings and figures
                lane.problems.extend(err.problems)
                lane.fit = err.fit
            else:
                lane.problems.append(P.error(lane.path, getattr(err, "problem_code", P.FETCH_FAILED), str(err)))
            lane.settle()


def _fail_with(report: Report, errors: dict[str, PreflightError]) -> None:
    """The exit code of the most telling failure among required lanes: auth, then fetch."""
    required = {l.name for l in report.lanes if l.required}
    relevant = [(n, e) for n, e in errors.items() if n in required]
    if not relevant:
        return
    lanes_ok = all(l.status in ("ready", "skipped") for l in report.lanes if l.required)
    if lanes_ok:
        return
    ranked = sorted(relevant, key=lambda ne: {ExitCode.AUTH: 0, ExitCode.DISK_SPACE: 1, ExitCode.FETCH: 2}.get(ne[1].exit_code, 3))
    name, first = ranked[0]
    report.exit_code = first.exit_code
    said = str(first)
    report.reason = said if said.startswith(f"{name}/") or said.startswith(f"lane {name}") else f"lane {name}: {said}"
    if len(ranked) > 1:
        report.reason += f" (and {plural(len(ranked) - 1, 'more lane')})"
    report.hint = getattr(first, "hint", None) or report.hint
