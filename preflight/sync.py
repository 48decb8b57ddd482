"""plan → preflight → lease → fetch into staging → verify → publish → receipts → report.

A valid file on the volume is never deleted or replaced by anything unverified:
new bytes land in `<models_dir>/.preflight/staging/` (same filesystem), are
checked for size, digest and format, fsynced, then renamed over the target.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import problems as P
from .check import lock_drift, repo_folder
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
)
from .lease import Lease
from .manifest import FileExpect, Lane
from .progress import Progress
from .report import LaneResult, Report, human_size, plural
from .session import Session
from .sources.http import Cancel, Timeouts, fetch_to, redact

FIXABLE = {
    P.MISSING, P.EMPTY_FILE, P.TRUNCATED, P.TRAILING_DATA, P.HEADER_TOO_LARGE, P.HEADER_INVALID, P.BAD_OFFSETS,
    P.BAD_DTYPE, P.BAD_SHAPE, P.BAD_MAGIC, P.UNSUPPORTED_VERSION, P.COUNT_TOO_LARGE,
    P.BAD_VALUE_TYPE, P.BAD_TENSOR_TYPE, P.MISALIGNED, P.TENSOR_OUT_OF_BOUNDS, P.SPLIT_MISSING, P.SPLIT_INVALID,
    P.CONFIG_INVALID, P.CONFIG_MISSING, P.CHECKSUM_MISMATCH, P.SIZE_MISMATCH, P.INDEX_INVALID, P.NOT_A_FILE,
    P.ADAPTER_INVALID, P.UNREADABLE,
}
# Not here: shard-missing is reported on the index file, which is fine; the absent shard
# has its own `missing` problem, and refetching the index would rewrite a valid file.


@dataclass
class Options:
    offline: bool = False
    locked: bool = False
    token_file: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: int = 3
    workers: int = 4
    deadline: float | None = None  # seconds for the whole run
    lease_wait: float = 1800.0
    stale_after: float = 60.0


@dataclass
class Job:
    lane: Lane
    rel: str
    target: Path  # where the verified file is published
    expect: FileExpect
    etag: str | None = None
    url: str | None = None
    mirror: Path | None = None
    link: Path | None = None  # hf-cache: snapshot symlink → target (the blob)
    size_hint: int | None = None  # a URL file's size from HEAD when the manifest gives none: planning only
    fetched: int | None = None  # bytes of the published file, once published

    @property
    def label(self) -> str:
        return f"{self.lane.name}/{self.rel}"

    @property
    def size(self) -> int | None:
        return self.expect.size if self.expect.size is not None else self.size_hint


class Remote:
    """What each lane's source says the lane must hold, resolved once per run."""

    def __init__(self, session: Session, opts: Options, progress: Progress) -> None:
        self.session = session
        self.opts = opts
        self.progress = progress
        self.token: str | None = None
        self._token_read = False
        self.expect: dict[str, tuple[dict[str, FileExpect], str | None]] = {}
        self.fetchable: dict[str, dict[str, dict]] = {}
        self.errors: dict[str, PreflightError] = {}
        self.requests = 0

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
        lock = self.session.ctx.lock
        locked = lock.lanes.get(lane.name) if lock else None
        if locked is not None and lock_drift(locked, lane):
            if self.opts.locked:
                raise ManifestError(f"lane {lane.name}: the lock was made for source {locked.source}, the manifest says {src.raw}", file=lock.path, hint="run `preflight lock` again")
            self.progress.log(f"{lane.name}: the lock is stale (source changed); resolving again")
            locked = None
        if locked is None and self.opts.locked:
            raise ManifestError(f"lane {lane.name} is not in the lock file", file=lock.path if lock else None, hint="run `preflight lock`")
        try:
            if src.scheme == "hf":
                self._resolve_hf(lane, locked)
            elif src.scheme in ("https", "http"):
                name = Path(lane.path).name
                exp = lane.files.get(name, FileExpect())
                if locked and name in locked.files:
                    exp = exp.merge(locked.files[name])
                self.expect[lane.name] = ({name: exp}, None)
                self.fetchable[lane.name] = {name: {"url": src.url, "expect": exp, "etag": exp.sha256}}
            elif src.scheme == "local":
                from .sources.local import listing

                files = listing(lane, self.session.manifest.file)
                self.expect[lane.name] = ({rel: e for rel, (_p, e) in files.items()}, None)
                self.fetchable[lane.name] = {rel: {"mirror": p, "expect": e} for rel, (p, e) in files.items()}
        except PreflightError as exc:
            self.errors[lane.name] = exc

    def _resolve_hf(self, lane: Lane, locked) -> None:
        from .sources.hf import file_url, resolve

        src = lane.source
        if locked is not None and locked.commit and locked.files:
            files = {}
            for rel, exp in locked.files.items():
                if lane.is_dir:
                    path_in_repo = f"{src.path_in_repo}/{rel}" if src.path_in_repo else rel
                else:
                    folder = src.path_in_repo.rsplit("/", 1)[0] + "/" if "/" in (src.path_in_repo or "") else ""
                    path_in_repo = folder + rel
                files[rel] = (path_in_repo, exp)
            commit = locked.commit
        else:
            token = self.get_token()
            listing = resolve(lane, token, timeout=max(self.opts.timeouts.connect, 10.0))
            self.requests += 1
            if listing.gated and not token:
                raise AuthError(
                    f"{src.repo} is gated: a token is needed and none was given",
                    hint="accept the model's terms on the Hub, then pass a token (HF_TOKEN, HF_TOKEN_PATH or --token-file)",
                )
            commit = listing.commit
            files = {rel: (f.path_in_repo, f.expect) for rel, f in listing.files.items()}
        self.expect[lane.name] = ({rel: e for rel, (_p, e) in files.items()}, commit)
        self.fetchable[lane.name] = {
            rel: {"url": file_url(src.repo, pir, commit, src.repo_type), "expect": e, "etag": e.sha256 or e.sha1, "commit": commit}
            for rel, (pir, e) in files.items()
        }


def plan_jobs(session: Session, remote: Remote, results: list[LaneResult]) -> list[Job]:
    jobs: list[Job] = []
    by_name = {r.name: r for r in results}
    for lane in session.lanes:
        res = by_name[lane.name]
        fetchable = remote.fetchable.get(lane.name) or {}
        if not fetchable:
            continue
        bad = {p.path for p in res.problems if p.is_error and p.code in FIXABLE}
        lane_missing = any(p.path == lane.path and p.code == P.MISSING for p in res.problems)
        commit = remote.expect.get(lane.name, ({}, None))[1]
        for rel, spec in fetchable.items():
            if not (lane_missing or rel in bad):
                continue
            jobs.append(_job(session, lane, rel, spec, commit))
    return jobs


def _job(session: Session, lane: Lane, rel: str, spec: dict, commit: str | None) -> Job:
    root = session.ctx.models_dir / lane.path
    exp: FileExpect = spec["expect"]
    if lane.kind == "hf-cache":
        assert lane.source is not None and lane.source.repo and commit
        repo_dir = root / repo_folder(lane.source.repo, lane.source.repo_type)
        etag = spec.get("etag") or hashlib.sha256(rel.encode()).hexdigest()
        return Job(lane, rel, repo_dir / "blobs" / etag, exp, etag, spec.get("url"), spec.get("mirror"), repo_dir / "snapshots" / commit / rel)
    target = root / rel if lane.is_dir else root.parent / rel
    return Job(lane, rel, target, exp, spec.get("etag"), spec.get("url"), spec.get("mirror"))


def staging_name(job: Job) -> str:
    """Named by the expected digest and the target, so a later process resumes the same
    bytes, and two lanes fetching identical files (shared tokenizers) never share one."""
    key = job.expect.sha256 or job.expect.sha1
    if not key:
        key = hashlib.sha256(f"{job.url or job.mirror}|{job.expect.size}".encode()).hexdigest()[:40]
    target = hashlib.sha256(str(job.link or job.target).encode()).hexdigest()[:12]
    return f"{key}-{target}.part"


MAX_LEASE_ROUNDS = 3  # lose the lease, wait, check again: at most this many times


class Fetcher:
    def __init__(self, session: Session, remote: Remote, opts: Options, progress: Progress, deadline: float | None) -> None:
        self.session = session
        self.remote = remote
        self.opts = opts
        self.progress = progress
        self.deadline = deadline
        assert session.state_dir is not None
        self.staging = session.state_dir / "staging"
        self.cancel = Cancel()

    def run(self, jobs: list[Job]) -> dict[str, list[tuple[Job, PreflightError]]]:
        """Fetch every job; on an interrupt (SIGTERM arrives as KeyboardInterrupt) stop all
        downloads at once, keeping their partial bytes, and re-raise."""
        self.staging.mkdir(parents=True, exist_ok=True)
        failures: dict[str, list[tuple[Job, PreflightError]]] = {}
        workers = max(1, min(self.opts.workers, len(jobs)))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        try:
            for job, err in zip(jobs, pool.map(self._one, jobs)):
                if err is not None:
                    failures.setdefault(job.lane.name, []).append((job, err))
        except BaseException:
            self.cancel.trip()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return failures

    def _one(self, job: Job) -> PreflightError | None:
        try:
            self._fetch(job)
            return None
        except PreflightError as exc:
            return exc
        except OSError as exc:
            return FetchError(f"{job.label}: {exc.strerror or exc}")

    def _fetch(self, job: Job) -> None:
        partial = self.staging / staging_name(job)
        algos: tuple[str, ...] = ("sha256",) if (job.expect.sha256 or not job.expect.sha1) else ("sha1",)
        if job.expect.sha1 and job.expect.size is None:
            algos = ("sha256",)
        token = self.remote.token if job.url and job.lane.source and job.lane.source.scheme == "hf" else None
        headers = {}
        if job.url and job.lane.source and job.lane.source.scheme == "hf":
            from .sources.hf import auth_headers

            headers = auth_headers(token)
        key = self.progress.start(job.label, job.size)
        started = time.monotonic()
        last: PreflightError | None = None
        try:
            for attempt in range(self.opts.retries + 1):
                if self.cancel.is_set():
                    raise FetchError(f"{job.label}: cancelled")
                if attempt:
                    if self.deadline is not None and time.monotonic() > self.deadline:
                        break
                    delay = min(2 ** (attempt - 1), 8)
                    self.progress.log(f"{job.label}: retry {attempt}/{self.opts.retries} in {delay}s after: {last}")
                    if self.cancel.wait(delay):
                        raise FetchError(f"{job.label}: cancelled")
                    self.progress.reset(key)
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise FetchError(f"{job.label}: the run's deadline passed")
                try:
                    if job.mirror is not None:
                        from .sources.local import copy_to

                        digests = copy_to(job.mirror, partial, algos, lambda n: self.progress.advance(key, n))
                        size = partial.stat().st_size
                    else:
                        got = fetch_to(job.url, partial, headers=headers, expected_size=job.expect.size, algos=algos, etag=job.etag,
                                       timeouts=self.opts.timeouts, progress=lambda n: self.progress.advance(key, n), deadline=self.deadline,
                                       cancel=self.cancel)
                        digests, size = got.digests, got.size
                    self._verify(job, partial, size, digests)
                    if self.cancel.is_set():
                        raise FetchError(f"{job.label}: cancelled before publishing")
                    self._publish(job, partial, digests)
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
                    _unlink(partial)
                    raise DiskSpaceError(f"{job.label}: the volume filled up during the download; the partial file was removed") from None
                except IntegrityError as exc:
                    last = exc
                    _unlink(partial)
                    if isinstance(exc, UnsafeContentError):
                        break
                except FetchError as exc:
                    last = exc
                    if exc.status is not None and exc.status in (404, 400, 410):
                        break
            assert last is not None
            msg = redact(str(last), token)
            raise type(last)(f"{job.label}: {msg}" if not msg.startswith(job.label) else msg, url=getattr(last, "url", None), status=getattr(last, "status", None))
        finally:
            if key is not None:
                self.progress.finish(key)

    def _verify(self, job: Job, partial: Path, size: int, digests: dict[str, str]) -> None:
        exp = job.expect
        if exp.size is not None and size != exp.size:
            raise IntegrityError(f"{job.label}: got {size} bytes, expected {exp.size}")
        if exp.sha256 and digests.get("sha256") != exp.sha256:
            raise IntegrityError(f"{job.label}: downloaded sha256 is {digests.get('sha256')}, expected {exp.sha256}")
        if not exp.sha256 and exp.sha1 and digests.get("sha1") != exp.sha1:
            raise IntegrityError(f"{job.label}: downloaded git blob sha1 is {digests.get('sha1')}, expected {exp.sha1}")
        from .check import check_single_file

        problems = [p for p in check_single_file(partial, job.rel, True) if p.is_error]
        for p in problems:
            if p.code == P.DANGEROUS_PICKLE:
                raise UnsafeContentError(f"{job.label}: the downloaded file is refused, not published: {p.message}")
        if problems:
            raise IntegrityError(f"{job.label}: the downloaded file is not valid: {problems[0].message}")

    def _publish(self, job: Job, partial: Path, digests: dict[str, str]) -> None:
        job.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, job.target)
        _fsync_dir(job.target.parent)
        if job.link is not None:
            job.link.parent.mkdir(parents=True, exist_ok=True)
            rel_target = os.path.relpath(job.target, job.link.parent)
            tmp = job.link.with_name(f".{job.link.name}.{os.getpid()}.lnk")
            _unlink(tmp)
            os.symlink(rel_target, tmp)
            os.replace(tmp, job.link)
        st = os.stat(job.target)
        key = os.path.relpath(job.link or job.target, self.session.ctx.models_dir).replace(os.sep, "/")
        self.session.ctx.receipts.record(key, st, digests)


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_cache_refs(session: Session, remote: Remote) -> None:
    """hf-cache lanes: refs/<revision> → commit, as huggingface_hub writes it."""
    for lane in session.lanes:
        if lane.kind != "hf-cache" or lane.name not in remote.expect:
            continue
        commit = remote.expect[lane.name][1]
        rev = lane.source.revision if lane.source else None
        if not commit or not rev or rev == commit:
            continue
        ref = session.ctx.models_dir / lane.path / repo_folder(lane.source.repo, lane.source.repo_type) / "refs" / rev
        try:
            if ref.exists() and ref.read_text().strip() == commit:
                continue
            from .integrity import atomic_write

            atomic_write(ref, commit.encode())
        except OSError:
            pass


def learn_sizes(jobs: list[Job], opts: Options, known: dict[str, int | None]) -> None:
    """Ask (HEAD) the size of each URL file the manifest gives none for, so the space check
    and the progress lines count it; unanswered, the download checks space once it starts.
    `known` keeps the answers for the run: a URL is asked once."""
    from .sources.http import content_length

    for job in jobs:
        if job.url and job.size is None and job.mirror is None and not (job.lane.source and job.lane.source.scheme == "hf"):
            if job.url not in known:
                known[job.url] = content_length(job.url, timeouts=opts.timeouts)
            job.size_hint = known[job.url]


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
    need = need_bytes(jobs, staging)
    margin = max(64 * 2**20, need // 100)
    probe = staging if staging.exists() else session.ctx.models_dir
    free = shutil.disk_usage(probe).free
    if need + margin > free:
        raise DiskSpaceError(
            f"not enough disk space on {session.ctx.models_dir}: {human_size(need)} to fetch (+{human_size(margin)} margin), {human_size(free)} free"
        )


def check_writable(session: Session) -> None:
    sdir = session.state_dir
    assert sdir is not None
    try:
        session.ctx.models_dir.mkdir(parents=True, exist_ok=True)
        (sdir / "staging").mkdir(parents=True, exist_ok=True)
        probe = sdir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise NotReadyError(
            f"the models folder {session.ctx.models_dir} is not writable by uid {os.getuid()} ({exc.strerror}); cannot fetch",
            hint="mount the volume read-write, or fix its owner (e.g. chown 65532 for the image's user)",
        ) from None
    session.writable = True
    session.ctx.receipts.state_dir = sdir


def run_sync(session: Session, opts: Options) -> Report:
    report = session.report
    progress = Progress(quiet=bool(session.opts.get("quiet")))
    deadline = time.monotonic() + opts.deadline if opts.deadline else None
    try:
        if opts.offline:
            session.check()
            report.notes.append("offline: nothing was fetched")
            return report
        remote = Remote(session, opts, progress)
        for lane in session.lanes:
            remote.resolve(lane)
        if remote.errors:
            if any(l.required for l in session.lanes if l.name in remote.errors):
                session.check(remote.expect)
                _attach(report, remote.errors)
                _fail_with(report, remote.errors)
                return report
        results = session.check(remote.expect).lanes
        jobs = plan_jobs(session, remote, results)
        if not jobs:
            write_cache_refs(session, remote)
            return report
        check_writable(session)
        staging = session.state_dir / "staging"
        sizes: dict[str, int | None] = {}
        learn_sizes(jobs, opts, sizes)
        check_space(session, jobs, staging)
        lease = Lease(session.state_dir, stale_after=opts.stale_after)
        lease.acquire(opts.lease_wait, progress.log)
        fetched: dict[str, list[int]] = {}
        try:
            for _round in range(MAX_LEASE_ROUNDS):
                session.ctx.receipts = type(session.ctx.receipts)(session.state_dir)  # pick up another writer's receipts
                results = session.check(remote.expect).lanes
                jobs = plan_jobs(session, remote, results)
                if not jobs:
                    write_cache_refs(session, remote)
                    progress.log("another writer already fetched everything; verified")
                    break
                learn_sizes(jobs, opts, sizes)
                total = sum(j.size or 0 for j in jobs)
                unknown = sum(1 for j in jobs if j.size is None)
                more = f" and {unknown} of unknown size" if unknown else ""
                progress.log(f"fetching {plural(len(jobs), 'file')} ({human_size(total)}{more}) for {plural(len({j.lane.name for j in jobs}), 'lane')}")
                fetcher = Fetcher(session, remote, opts, progress, deadline)
                lease.on_lost = fetcher.cancel.trip  # stop downloading at once: another writer has the volume
                failures = fetcher.run(jobs)
                session.ctx.receipts.save()
                for j in jobs:
                    if j.fetched is not None and not any(j is fj for fj, _e in failures.get(j.lane.name, [])):
                        f = fetched.setdefault(j.lane.name, [0, 0])
                        f[0] += 1
                        f[1] += j.fetched
                if lease.lost:
                    # This process stalled past --lease-stale (a paused container, a frozen node) and
                    # another writer took the volume over: wait for it, then judge the volume again.
                    progress.log("lost the volume lease to another writer; waiting for it, then checking again")
                    lease.release()
                    lease = Lease(session.state_dir, stale_after=opts.stale_after)
                    lease.acquire(opts.lease_wait, progress.log)
                    continue
                write_cache_refs(session, remote)
                results = session.check(remote.expect).lanes
                for r in results:
                    if r.name in fetched:
                        r.fetched_files, r.fetched_bytes = fetched[r.name]
                if failures:
                    errs = {name: fl[0][1] for name, fl in failures.items()}
                    _attach(report, errs)
                    _fail_with(report, errs)
                break
            else:  # the lease was lost every round: report the volume as it stands now
                session.check(remote.expect)
        finally:
            lease.release()
        return report
    finally:
        progress.close()


def _attach(report: Report, errors: dict[str, PreflightError]) -> None:
    for lane in report.lanes:
        err = errors.get(lane.name)
        if err is not None:
            lane.problems.append(P.error(lane.path, getattr(err, "problem_code", P.FETCH_FAILED), str(err)))
            lane.settle()


def _fail_with(report: Report, errors: dict[str, PreflightError]) -> None:
    """The exit code of the most telling failure among required lanes: auth, then fetch."""
    required = {l.name for l in report.lanes if l.required}
    relevant = [e for n, e in errors.items() if n in required]
    if not relevant:
        return
    lanes_ok = all(l.status in ("ready", "skipped") for l in report.lanes if l.required)
    if lanes_ok:
        return
    ranked = sorted(relevant, key=lambda e: {ExitCode.AUTH: 0, ExitCode.DISK_SPACE: 1, ExitCode.FETCH: 2}.get(e.exit_code, 3))
    report.exit_code = ranked[0].exit_code
    report.reason = str(ranked[0])
