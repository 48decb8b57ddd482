"""Progress that shows in `kubectl logs`: on a pipe, one line per active file every few
seconds (bytes, rate, ETA); on a terminal, one line redrawn in place."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import field
from typing import IO

from .record import record
from .report import human_size


@record
class _Item:
    label: str
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    paused: bool = False  # between attempts: nothing is moving, so no line is printed


class Progress:
    def __init__(self, out: IO[str] | None = None, interval: float = 5.0, quiet: bool = False) -> None:
        self.out = out or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.interval = 0.5 if self.tty else interval
        self.quiet = quiet
        self._items: dict[int, _Item] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next = 0

    def log(self, line: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.tty:
                self.out.write("\r\x1b[K")
            print(line, file=self.out, flush=True)

    def start(self, label: str, total: int | None) -> int:
        with self._lock:
            self._next += 1
            self._items[self._next] = _Item(label, total)
            if self._thread is None and not self.quiet:
                self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
                self._thread.start()
            return self._next

    def advance(self, key: int, n: int) -> None:
        item = self._items.get(key)
        if item is not None:
            item.done += n

    def reset(self, key: int) -> None:
        item = self._items.get(key)
        if item is not None:
            item.done = 0
            item.started = time.monotonic()
            item.paused = False

    def pause(self, key: int) -> None:
        """An attempt failed and the next waits: its figures would be stale."""
        item = self._items.get(key)
        if item is not None:
            item.paused = True

    def finish(self, key: int) -> _Item | None:
        with self._lock:
            return self._items.pop(key, None)

    def _line(self, item: _Item) -> str:
        elapsed = max(time.monotonic() - item.started, 1e-6)
        if item.done == 0:
            size = f" of {human_size(item.total)}" if item.total else ""
            return f"{item.label}: waiting for the first byte{size} ({elapsed:.0f}s)"
        rate = item.done / elapsed
        if item.total:
            pct = 100.0 * item.done / item.total
            eta = (item.total - item.done) / rate if rate > 0 else float("inf")
            eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
            return f"{item.label}: {human_size(item.done)}/{human_size(item.total)} ({pct:.0f}%) {human_size(int(rate))}/s ETA {eta_s}"
        return f"{item.label}: {human_size(item.done)} {human_size(int(rate))}/s"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                items = [i for i in self._items.values() if not i.paused]
                if not items:
                    continue
                if self.tty:
                    self.out.write("\r\x1b[K" + " | ".join(self._line(i) for i in items)[: 200])
                    self.out.flush()
                else:
                    for item in items:
                        print(self._line(item), file=self.out, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.tty and not self.quiet:
            self.out.write("\r\x1b[K")
            self.out.flush()
