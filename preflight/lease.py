"""The volume lease: one writer at a time, where flock cannot be trusted (NFS, Lustre).

An exclusively created file whose content changes on every heartbeat. A waiter
judges it stale by watching it not change for `stale_after` seconds of its own
monotonic clock, so clock skew between hosts does not matter. Correctness never
rests on the lease: every writer stages privately and verifies before it
publishes; the lease only keeps a file from being fetched twice.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import LeaseError
from .volume import Volume

LEASE = "lease.json"
LEASE_SIZE = 512


class Lease:
    def __init__(self, state: Path | Volume, *, stale_after: float = 60.0, heartbeat: float | None = None) -> None:
        self.vol = state if isinstance(state, Volume) else Volume(Path(state))  # every change through the door
        self.path = self.vol.path / LEASE
        self.stale_after = stale_after
        self.heartbeat = heartbeat if heartbeat is not None else max(0.5, stale_after / 4)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False
        self.lost = False
        self.confirmed = 0.0  # monotonic time this process last saw the lease as its own
        self.on_lost: Callable[[], None] | None = None  # called from the heartbeat thread

    def _content(self) -> bytes:
        """The lease's JSON, padded to one fixed size: a heartbeat rewrites it in place with
        one write, so a reader never sees a shorter or longer file mid-beat."""
        data = json.dumps({
            "owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(), "pidns": _pid_namespace(),
            "beat": self._beats, "at": time.time(),
        }).encode()
        return data.ljust(LEASE_SIZE) if len(data) < LEASE_SIZE else data

    def _holder_is_gone(self, holder: dict) -> bool:
        """A holder in our own host and PID namespace whose process no longer runs (a
        container restarted after a crash, often as the same PID) needs no stale wait."""
        if holder.get("host") != socket.gethostname() or holder.get("pidns") != _pid_namespace() or holder.get("pidns") is None:
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        if pid == os.getpid():
            return holder.get("owner") != self.owner
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def holder(self) -> dict | None:
        if self.vol.lstat(LEASE) is None:
            return None
        try:
            data = json.loads(self._read() or b"")
            return data if isinstance(data, dict) else {"owner": "?"}
        except ValueError:
            return {"owner": "unknown (unreadable lease)"}

    def _read(self) -> bytes | None:
        return self.vol.read_bytes(LEASE, 64 * 1024)

    def _try_create(self) -> bool:
        try:
            fd = self.vol.open_file(LEASE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._content())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _snapshot(self) -> tuple | None:
        st = self.vol.lstat(LEASE)
        data = self._read()
        if st is None or data is None:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, data)

    def _break(self, seen: tuple) -> None:
        """Move a stale lease aside, only if it is still the one we judged stale."""
        aside = f"{LEASE}.stale.{uuid.uuid4().hex[:8]}"
        try:
            self.vol.move(LEASE, aside)
        except OSError:
            return
        try:
            st = self.vol.lstat(aside)
            if st is not None and (st.st_mtime_ns, st.st_ino) != (seen[0], seen[2]):
                # lost a race: a fresh lease was moved; put it back if the slot is still empty
                try:
                    self.vol.make_hardlink(aside, LEASE)
                except OSError:
                    pass
        finally:
            try:
                self.vol.remove_file(aside)
            except OSError:
                pass

    def acquire(self, wait: float, log: Callable[[str], None], poll: float = 1.0) -> None:
        self.vol.make_dirs("")
        started = time.monotonic()
        last_seen: tuple | None = None
        unchanged_since = time.monotonic()
        last_log = 0.0
        while True:
            if self._try_create():
                self.held = True
                self.confirmed = time.monotonic()
                self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
                self._thread.start()
                return
            seen = self._snapshot()
            now = time.monotonic()
            holder = self.holder()
            if seen is not None and holder is not None and self._holder_is_gone(holder):
                log(f"lease held by {holder.get('owner', '?')}, whose process is gone: taking over")
                self._break(seen)
                last_seen = None
                continue
            if seen != last_seen:
                last_seen, unchanged_since = seen, now
            elif seen is not None and now - unchanged_since >= self.stale_after:
                holder = self.holder() or {}
                log(f"lease held by {holder.get('owner', '?')} has not moved for {now - unchanged_since:.0f}s: taking over")
                self._break(seen)
                last_seen = None
                continue
            if now - started >= wait:
                holder = self.holder() or {}
                raise LeaseError(
                    f"another writer ({holder.get('owner', '?')}) has held the volume for more than {wait:g}s",
                    hint="raise --lease-wait, or remove .preflight/lease.json if that writer is gone",
                )
            if now - last_log >= 5:
                holder = self.holder() or {}
                log(f"waiting for {holder.get('owner', '?')}, which is syncing this volume ({now - started:.0f}s)")
                last_log = now
            time.sleep(poll)

    def _beat(self) -> None:
        """Rewrite the lease in place through a descriptor, while it is still ours. A writer
        that takes a stale lease over moves it aside and creates a new file, so a beat of a
        process paused between its check and its write (SIGSTOP) lands in the old, unlinked
        file, never over the new holder's lease."""
        while not self._stop.wait(self.heartbeat):
            try:
                fd = self.vol.open_file(LEASE, os.O_RDWR)
            except OSError:
                self._lose()
                return
            try:
                if _owner(os.pread(fd, 64 * 1024, 0)) != self.owner:
                    self._lose()
                    return
                self._beats += 1
                content = self._content()
                os.pwrite(fd, content, 0)
                os.ftruncate(fd, len(content))
                self.confirmed = time.monotonic()
            except OSError:
                self._lose()
                return
            finally:
                os.close(fd)

    def still_ours(self) -> bool:
        """Whether this process may still write into staging, asked before every write.

        Cheap while the heartbeat has confirmed the lease recently. A process that was
        paused (SIGSTOP, a frozen node) past half the stale time reads the lease again
        before its next write, so bytes queued before the pause never land in a file a
        new holder now owns."""
        if self.lost or not self.held:
            return False
        if time.monotonic() - self.confirmed < self.stale_after / 2:
            return True
        try:
            ours = _owner(self._read() or b"") == self.owner
        except OSError:
            ours = False
        if not ours:
            self._lose()
            return False
        self.confirmed = time.monotonic()
        return True

    def _lose(self) -> None:
        self.lost = True
        if self.on_lost is not None:
            self.on_lost()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            try:
                if _owner(self._read() or b"") == self.owner:
                    self.vol.remove_file(LEASE)
            except OSError:
                pass
        self.held = False


def _owner(data: bytes) -> str | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc.get("owner") if isinstance(doc, dict) else None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
