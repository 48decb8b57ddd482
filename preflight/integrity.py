"""Hashing (streamed, parallel across files) and receipts (stat-keyed digest cache)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .record import record
from .volume import Volume

# File reads: small enough that the copy out of the page cache stays in the CPU cache
# for the hash that follows (4 MiB reads ran ~1.3x slower than openssl; see bench/).
READ_CHUNK = 128 * 2**10


class Hasher:
    """sha256, git-blob sha1, md5 (DVC) and/or crc32c (Cloud Storage) over a stream, fed
    chunk by chunk.

    The git blob sha1 needs the size up front ("blob <size>\\0" prefix), which
    is what the Hub's `blobId` of a small file is.
    """

    def __init__(self, algos: Iterable[str], size: int | None = None) -> None:
        import hashlib  # here, not at the top: loading OpenSSL costs a warm re-check, which hashes nothing

        self._h: dict[str, "hashlib._Hash | Crc32c"] = {}
        for algo in algos:
            if algo == "sha256":
                self._h[algo] = hashlib.sha256()
            elif algo == "sha1":
                if size is None:
                    raise ValueError("git blob sha1 needs the size up front")
                h = hashlib.sha1()
                h.update(b"blob %d\0" % size)
                self._h[algo] = h
            elif algo == "md5":
                self._h[algo] = hashlib.md5(usedforsecurity=False)
            elif algo == "crc32c":
                self._h[algo] = Crc32c()
            else:
                raise ValueError(f"unknown digest {algo}")

    def update(self, data: bytes | memoryview) -> None:
        for h in self._h.values():
            h.update(data)

    def hexdigests(self) -> dict[str, str]:
        return {k: h.hexdigest() for k, h in self._h.items()}


class Crc32c:
    """CRC32C (Castagnoli) as Cloud Storage reports it, hashlib-shaped. google-crc32c's C
    extension runs at several GB/s here (a pure-Python CRC would be a thousand times
    slower than the sha256 beside it); it is part of the `gcs` extra, imported only when
    a gs:// object's checksum is checked."""

    def __init__(self) -> None:
        try:
            import google_crc32c
        except ImportError:
            from .errors import UsageError

            raise UsageError("checking a Cloud Storage CRC32C needs google-crc32c, which is not installed: "
                             "pip install 'lane-preflight[gcs]'") from None
        self._extend = google_crc32c.extend
        self._crc = 0

    def update(self, data: bytes | memoryview) -> None:
        # the C extension takes bytes only (not a view of a reused buffer): one memcpy, ~6 GB/s
        self._crc = self._extend(self._crc, data if isinstance(data, bytes) else bytes(data))

    def hexdigest(self) -> str:
        return f"{self._crc:08x}"


def hash_file(path: str | os.PathLike, algos: Iterable[str] = ("sha256",), progress: Callable[[int], None] | None = None,
              stop: threading.Event | None = None, *, pipelined: bool = False) -> dict[str, str]:
    """Digest a file in READ_CHUNK-sized reads into one reused buffer (hashlib drops the GIL).

    `pipelined` reads ahead on a second thread while this one hashes (worth it when a
    core would otherwise idle: one large file). `stop` set by another thread ends the
    work within one chunk (InterruptedError)."""
    algos = tuple(algos)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        hasher = Hasher(algos, size)
        if pipelined and size >= 4 * PIPE_CHUNK:
            _hash_pipelined(f, hasher, progress, stop)
            return hasher.hexdigests()
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        while True:
            if stop is not None and stop.is_set():
                raise InterruptedError("hashing stopped")
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
            if progress:
                progress(n)
    return hasher.hexdigests()


PIPE_CHUNK = 2**20  # a pipelined hash's reads (HashBehind's buffers)


def _hash_pipelined(f, hasher: Hasher, progress: Callable[[int], None] | None, stop: threading.Event | None) -> None:
    """This thread reads while a HashBehind hashes: read and hash overlap."""
    behind = HashBehind(hasher)
    pos = 0
    try:
        while True:
            if stop is not None and stop.is_set():
                raise InterruptedError("hashing stopped")
            n = behind.read(f.fileno(), pos, PIPE_CHUNK)
            if not n:
                break
            pos += n
            if progress:
                progress(n)
    except BaseException:
        behind.abandon()
        raise
    behind.finish()


def hash_files(jobs: list[tuple[str, tuple[str, ...]]], workers: int | None = None) -> list[dict[str, str] | OSError]:
    """Hash several files at once, one thread per core; results in input order."""
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))

    stop = threading.Event()

    def one(job: tuple[str, tuple[str, ...]]) -> dict[str, str] | OSError:
        try:
            return hash_file(job[0], job[1], stop=stop, pipelined=len(jobs) == 1)
        except OSError as exc:
            return exc

    if workers == 1:
        return [one(j) for j in jobs]
    from concurrent.futures import ThreadPoolExecutor  # not on the warm path, where nothing is hashed

    pool = ThreadPoolExecutor(workers)
    try:
        return list(pool.map(one, jobs))
    except BaseException:
        # Ctrl-C lands in this thread while workers hash: stop them now rather than after every file is read
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@record(frozen=True)
class StatKey:
    """What a receipt holds a file to: it is trusted while these are unchanged."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class Receipts:
    """Per-file proof of a past full verification, keyed by path relative to models_dir.

    A receipt is trusted only while (size, mtime_ns, ctime_ns, inode) are unchanged;
    ctime cannot be set from user space, so a rewrite in place always invalidates it.
    """

    FILE = "receipts.json"

    def __init__(self, state_dir: Path | None, volume: Volume | None = None) -> None:
        self.state_dir = state_dir
        self.volume = volume  # the state folder as the door sees it (volume.state_volume); else its own root
        self._files: dict[str, dict] = {}
        self._lanes: dict[str, dict] = {}  # lane name -> fingerprint of a passed format check
        self._refused: dict[str, dict] = {}  # refusal key -> why fetched bytes were not published
        self._variants: dict[str, dict] = {}  # lane name -> the variant chosen on a node (serving/variants.py)
        self._commits: dict[str, dict] = {}  # lane name -> {"source", "commit"}: the version it was last synced at
        self._groups: dict[str, dict] = {}  # group key (an archive's digest) -> the files it held, as unpacked here
        self._dropped: set[str] = set()  # files forgotten here, not to come back from disk on save
        self._dirty = False
        if state_dir is not None:
            data = self._on_disk()
            for section in self.SECTIONS:
                setattr(self, f"_{section}", data[section])

    # The sections of receipts.json: each a mapping held as self._<section>, merged key by
    # key with what another process wrote when saved (this process's entries win).
    SECTIONS = ("files", "lanes", "refused", "variants", "commits", "groups")

    def _on_disk(self) -> dict[str, dict]:
        try:
            assert self.state_dir is not None
            data = json.loads((self.state_dir / self.FILE).read_bytes())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        return {s: data[s] if isinstance(data.get(s), dict) else {} for s in self.SECTIONS}

    def lookup(self, rel: str, st: os.stat_result) -> dict[str, str] | None:
        rec = self._files.get(rel)
        if not isinstance(rec, dict):
            return None
        key = StatKey.of(st)
        if (rec.get("size"), rec.get("mtime_ns"), rec.get("ctime_ns"), rec.get("ino")) != (key.size, key.mtime_ns, key.ctime_ns, key.ino):
            return None
        digests = rec.get("digests")
        return digests if isinstance(digests, dict) else None

    def lane_ok(self, name: str, fingerprint: str) -> list[dict] | None:
        """The warnings of a past folder/format check of exactly these files (same names and
        stat keys), or None when the lane must be checked again."""
        rec = self._lanes.get(name)
        if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint and isinstance(rec.get("warnings"), list):
            return rec["warnings"]
        return None

    def mark_lane(self, name: str, fingerprint: str, warnings: list[dict], info: dict | None = None) -> None:
        self._lanes[name] = {"fingerprint": fingerprint, "warnings": warnings,
                             "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **({"info": info} if info else {})}
        self._dirty = True

    def lane_fit(self, name: str, fingerprint: str) -> dict | None:
        """The fit inputs kept with a past check of exactly these files (serving/inputs.py), if any."""
        rec = self._lanes.get(name)
        if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint and isinstance(rec.get("fit_inputs"), dict):
            return rec["fit_inputs"]
        return None

    def keep_fit(self, name: str, fingerprint: str, inputs: dict) -> None:
        """Keep a lane's fit inputs beside its fingerprint: a warm re-check judges fit without a header read."""
        rec = self._lanes.get(name)
        if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint and rec.get("fit_inputs") != inputs:
            rec["fit_inputs"] = inputs
            self._dirty = True

    def lane_verdict(self, name: str, fingerprint: str, key: str) -> dict | None:
        """A lane's fit verdict kept for these files, these serve flags and this node (`key`)."""
        rec = self._lanes.get(name)
        if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint and isinstance(rec.get("fit_verdicts"), dict):
            got = rec["fit_verdicts"].get(key)
            return got if isinstance(got, dict) else None
        return None

    def keep_verdict(self, name: str, fingerprint: str, key: str, verdict: dict, most: int = 4) -> None:
        rec = self._lanes.get(name)
        if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint:
            kept = rec.get("fit_verdicts") if isinstance(rec.get("fit_verdicts"), dict) else {}
            if kept.get(key) != verdict:
                kept = {k: v for k, v in kept.items() if k != key}
                rec["fit_verdicts"] = {**dict(list(kept.items())[-(most - 1):]), key: verdict}
                self._dirty = True

    def variant(self, name: str) -> dict | None:
        """The variant chosen for a lane on a node before (serving/variants.py)."""
        rec = self._variants.get(name)
        return rec if isinstance(rec, dict) else None

    def choose_variant(self, name: str, record: dict) -> None:
        old = self._variants.get(name)
        if not isinstance(old, dict) or {k: v for k, v in old.items() if k != "at"} != record:
            self._variants[name] = {**record, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._dirty = True

    def lane_info(self, name: str) -> tuple[dict, str | None]:
        """What a past check of lane `name` noted (e.g. who signed it), and when it ran."""
        rec = self._lanes.get(name)
        if not isinstance(rec, dict):
            return {}, None
        info = rec.get("info")
        return (info if isinstance(info, dict) else {}), rec.get("checked_at") if isinstance(rec.get("checked_at"), str) else None

    def verified(self, rel: str) -> tuple[int, dict[str, str]] | None:
        """Size and digests recorded when `rel` was last verified, whatever its stat is now."""
        rec = self._files.get(rel)
        if isinstance(rec, dict) and isinstance(rec.get("digests"), dict) and isinstance(rec.get("size"), int):
            return rec["size"], rec["digests"]
        return None

    def record(self, rel: str, st: os.stat_result, digests: dict[str, str]) -> None:
        key = StatKey.of(st)
        self._files[rel] = {
            "size": key.size, "mtime_ns": key.mtime_ns, "ctime_ns": key.ctime_ns, "ino": key.ino,
            "digests": dict(digests), "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._dirty = True

    def forget(self, rel: str) -> None:
        if self._files.pop(rel, None) is not None:
            self._dropped.add(rel)
            self._dirty = True

    def verified_at(self, rel: str) -> str | None:
        rec = self._files.get(rel)
        return rec.get("verified_at") if isinstance(rec, dict) else None

    def under(self, prefix: str) -> list[str]:
        """Keys of files verified under folder `prefix` (relative to the models folder; "."
        or "" for the models folder itself)."""
        if prefix in ("", "."):
            return list(self._files)
        head = prefix.rstrip("/") + "/"
        return [k for k in self._files if k.startswith(head)]

    def synced_at(self, lane: str, source: str) -> str | None:
        """The commit (manifest digest, object version) `lane` was last synced at from
        `source`; None when unknown or synced from another source."""
        rec = self._commits.get(lane)
        if isinstance(rec, dict) and rec.get("source") == source and isinstance(rec.get("commit"), str):
            return rec["commit"]
        return None

    def mark_synced(self, lane: str, source: str, commit: str) -> None:
        if self._commits.get(lane) != {"source": source, "commit": commit}:
            self._commits[lane] = {"source": source, "commit": commit}
            self._dirty = True

    def refusal(self, key: str) -> dict | None:
        rec = self._refused.get(key)
        return rec if isinstance(rec, dict) else None

    def refuse(self, key: str, record: dict) -> None:
        self._refused[key] = {**record, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._dirty = True

    def group_files(self, key: str) -> dict[str, tuple[int, str]] | None:
        """The files (size, sha256) a group (an archive, by its key) held when it was
        unpacked here; None when it never was, or the record is damaged."""
        rec = self._groups.get(key)
        files = rec.get("files") if isinstance(rec, dict) else None
        if not isinstance(files, dict) or not files:
            return None
        out = {}
        for rel, f in files.items():
            if not (isinstance(rel, str) and isinstance(f, dict) and isinstance(f.get("size"), int) and isinstance(f.get("sha256"), str)):
                return None
            out[rel] = (f["size"], f["sha256"])
        return out

    def remember_group(self, key: str, files: dict[str, tuple[int, str]]) -> None:
        self._groups[key] = {"files": {rel: {"size": size, "sha256": sha} for rel, (size, sha) in sorted(files.items())},
                             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._dirty = True

    def save(self) -> bool:
        """Merge with what is on disk (another process may have written) and replace atomically."""
        if self.state_dir is None or not self._dirty:
            return False
        try:
            merged = {s: {**on_disk, **getattr(self, f"_{s}")} for s, on_disk in self._on_disk().items()}
            for rel in self._dropped:
                merged["files"].pop(rel, None)
            vol = self.volume if self.volume is not None and self.volume.path == self.state_dir else Volume(self.state_dir)
            vol.write_atomic(self.FILE, json.dumps({"version": 1, **merged}, indent=0, sort_keys=True).encode())
        except OSError:
            return False
        self._dirty = False
        return True


WRITE_BEHIND = 32 * 2**20


class WriteBehind:
    """Write-behind for one large file written front to back: every WRITE_BEHIND bytes,
    start writeback of the window just written and drop the windows before it from the
    page cache once they are clean.

    Without it a download leaves the whole file dirty in memory (charged to the init
    container's memory cgroup) and the fsync before publishing waits for all of it at
    the end; with it the disk works while the network does, dirty pages stay at about
    two windows, and the fsync has one window left. `start` is where this writer began
    (bytes before it came from an earlier process and are covered by the final fsync).
    """

    def __init__(self, fd: int, start: int = 0, window: int = WRITE_BEHIND, hashed: Callable[[], int] | None = None) -> None:
        self.fd, self.window = fd, window
        self.hashed = hashed  # where a PrefixHasher reading the file back has got to: pages past it stay cached
        self.started = self.dropped = start
        self.enabled = hasattr(os, "posix_fadvise")
        self.engaged = False

    def wrote(self, end: int) -> None:
        """`end`: the file's size now. Cheap when less than a window is new."""
        if end - self.started < self.window or not self.enabled:
            return
        try:
            # On Linux, DONTNEED starts writeback of dirty pages in the range (without
            # waiting) and drops the clean ones; the window just written is all dirty.
            os.posix_fadvise(self.fd, self.started, end - self.started, os.POSIX_FADV_DONTNEED)
            # The window before it has had a window's time to reach the disk; drop what is
            # clean from there back to what was dropped before (a page still being written
            # stays cached; `finish` sweeps it).
            upto = self.started - self.window
            if self.hashed is not None:
                upto = min(upto, self.hashed())
            if upto > self.dropped:
                os.posix_fadvise(self.fd, self.dropped, upto - self.dropped, os.POSIX_FADV_DONTNEED)
                self.dropped = upto
        except OSError:
            self.enabled = False  # a filesystem that refuses advice: plain writes
        self.started, self.engaged = end, True

    def finish(self) -> None:
        """fsync; then, for a file large enough to have been written behind, drop the
        rest of it from the page cache (small files stay cached for the checks that follow)."""
        os.fsync(self.fd)
        if self.enabled and self.engaged:
            try:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass


class HashBehind:
    """A Hasher fed on a thread of its own: the caller reads the bytes (`read`: a copy out
    of the page cache into one of a few buffers) and this thread hashes them, so the read
    and the hash run on two cores. Reading and hashing in one thread cost 1.44 s for 2 GiB
    here against 1.21 s split (sha256 is the limit of a verified download or copy on a fast
    link or a local disk; the read is ~15% on top of it). `speed` is the hash's own rate."""

    DEPTH = 4  # buffers in flight (read ahead of the hash)
    CHUNK = PIPE_CHUNK

    def __init__(self, hasher: Hasher) -> None:
        import queue

        self.hasher = hasher
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.DEPTH):
            self._free.put(bytearray(self.CHUNK))
        self._error: BaseException | None = None
        self._busy, self._bytes = 0.0, 0
        self._thread = threading.Thread(target=self._run, name="hash-behind", daemon=True)
        self._thread.start()

    def read(self, fd: int, pos: int, most: int) -> int:
        """Read up to `most` bytes of `fd` at `pos` (at most CHUNK) and queue them for the hash; the count read."""
        buf = self._free.get()
        if buf is None:  # the hash thread failed
            self._free.put(None)
            raise self._error or RuntimeError("hash thread stopped")
        n = os.preadv(fd, [memoryview(buf)[: min(most, self.CHUNK)]], pos)
        if n > 0:
            self._full.put((buf, n))
        else:
            self._free.put(buf)
        return n

    def speed(self) -> float | None:
        """Bytes a second the hash has run at so far (None before 4 MiB)."""
        return self._bytes / self._busy if self._bytes >= 4 * self.CHUNK and self._busy > 0 else None

    def finish(self) -> dict[str, str]:
        """Wait until every queued byte is hashed; the digests."""
        self._full.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.hasher.hexdigests()

    def abandon(self) -> None:
        self._full.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buf, n = item
            try:
                t0 = time.perf_counter()
                self.hasher.update(memoryview(buf)[:n])
                self._busy += time.perf_counter() - t0
                self._bytes += n
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
                self._error = exc
                self._free.put(None)
                return
            self._free.put(buf)


class PrefixHasher:
    """Hashes a file from `start` while a writer fills it front to back: the writer says how
    far it has written (`advance`), a thread of this class reads that prefix back from the
    page cache and a HashBehind hashes it. The write, the read and the hash overlap, and a
    verified copy or download costs about the slowest of them instead of their sum. `fd`
    must be open for reading (and is not closed here)."""

    def __init__(self, fd: int, hasher: Hasher, start: int = 0) -> None:
        self.fd, self.hasher = fd, hasher
        self.hashed = start  # read back (and handed to the hash) up to here
        self._written = start
        self._end: int | None = None
        self._stop = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._behind = HashBehind(hasher)
        self._thread = threading.Thread(target=self._run, name="hash-prefix", daemon=True)
        self._thread.start()

    def advance(self, written: int) -> None:
        with self._cond:
            self._written = written
            self._cond.notify()

    def finish(self, end: int) -> dict[str, str]:
        """Wait until the first `end` bytes are hashed; their digests."""
        with self._cond:
            self._written = self._end = end
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            self._behind.abandon()
            raise self._error
        return self._behind.finish()

    def abandon(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()
        self._behind.abandon()

    def _run(self) -> None:
        dropped = self.hashed
        try:
            while True:
                with self._cond:
                    while self.hashed >= self._written and self._end is None and not self._stop:
                        self._cond.wait()
                    if self._stop or (self._end is not None and self.hashed >= self._end):
                        return
                    reach = self._written
                while self.hashed < reach:
                    n = self._behind.read(self.fd, self.hashed, reach - self.hashed)
                    if n <= 0:
                        from .errors import IntegrityError

                        raise IntegrityError(f"the file ends at byte {self.hashed}, where this process wrote bytes (another writer?); discarded")
                    self.hashed += n
                    if self.hashed - dropped >= 2 * WRITE_BEHIND:
                        _drop(self.fd, dropped, self.hashed - WRITE_BEHIND)
                        dropped = self.hashed - WRITE_BEHIND
                    if self._stop:
                        return
        except BaseException as exc:
            self._error = exc


def _drop(fd: int, start: int, end: int) -> None:
    """Hashed pages behind the hash go from the page cache (those already written back)."""
    try:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass
