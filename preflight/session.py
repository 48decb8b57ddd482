"""One run of check or sync: options → context → report → exit code."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .check import STATE_DIR, Context, check_lanes
from .errors import ExitCode, UsageError
from .integrity import Receipts, atomic_write
from .lockfile import Lock, default_lock_path, load_lock
from .manifest import Lane, Manifest, load_manifest, split_lanes
from .report import Outputs, Report, emit, track


@dataclass
class Session:
    manifest: Manifest
    lanes: list[Lane]
    ctx: Context
    report: Report
    opts: dict
    state_dir: Path | None
    writable: bool
    started: float

    @classmethod
    def open(cls, *, command: str, manifest: str, models_dir: str | None, profile: str | None, lanes: tuple[str, ...],
             lock: str | None, state_dir: str | None, verify: str, **opts) -> Session:
        started = time.monotonic()
        m = load_manifest(manifest)
        root = Path(models_dir or m.models_dir)
        report = track(Report(command, str(root)))
        selected = m.select(profile, split_lanes(lanes))
        if not selected:
            raise UsageError("no lanes selected (every lane is disabled, or the profile/lane filter matched none)")
        lock_obj: Lock | None = None
        lock_path = Path(lock) if lock else default_lock_path(m)
        if lock or lock_path.exists():
            lock_obj = load_lock(lock_path)
        if command == "check" and not root.is_dir():  # sync creates it
            report.notes.append(f"models folder {root} " + ("is not a folder" if root.exists() else "does not exist"))
        sdir = Path(state_dir) if state_dir else root / STATE_DIR
        if root.is_dir():
            from .volume import state_volume

            state_volume(root, sdir, create=False)  # a .preflight that leads out of the volume is refused, not read or written
        writable = _writable(sdir if sdir.exists() else (sdir.parent if sdir.parent.exists() else root))
        receipts = Receipts(sdir if sdir.exists() or writable else None)
        ctx = Context(m, root, receipts, lock_obj, verify)
        declared = opts.get("accelerator") or m.accelerator
        if declared:
            from .serving.accel import AcceleratorError, parse_declared
            from .serving.lane import NodeAccelerator

            try:
                parse_declared(declared)
            except AcceleratorError as exc:
                raise UsageError(f"--accelerator {declared!r}: {exc}") from None
            ctx.accelerator = NodeAccelerator(declared)
        return cls(m, selected, ctx, report, opts, sdir, writable, started)

    def check(self, remotes=None) -> Report:
        results = check_lanes(self.ctx, self.lanes, remotes)
        self.report.lanes = results
        return self.report

    def save_receipts(self) -> None:
        if self.ctx.receipts._dirty:
            if not self.writable:
                from .volume import why_unwritable

                where = self.state_dir if self.state_dir is not None and self.state_dir.exists() else self.ctx.models_dir
                self.report.notes.append(f"receipts not written: {where} is not writable by uid {os.getuid()} ({why_unwritable(where, None)}); "
                                         "pass --state-dir to keep them elsewhere")
                return
            if self.ctx.receipts.state_dir is None:
                self.ctx.receipts.state_dir = self.state_dir
            if not self.ctx.receipts.save():
                self.report.notes.append(f"could not write receipts under {self.state_dir}")

    def finish(self, report: Report, *, ready_file: bool = False) -> int:
        self.save_receipts()
        report.elapsed_s = time.monotonic() - self.started
        code = report.finish()
        if ready_file and code == ExitCode.READY and self.writable and self.state_dir is not None:
            try:
                atomic_write(self.state_dir / "report.json", report.to_json().encode())
                atomic_write(self.state_dir / "ready.json", json.dumps({
                    "status": "ready", "lanes": [l.name for l in report.lanes],
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }).encode())
            except OSError as exc:
                report.notes.append(f"could not write ready.json: {exc.strerror}")
        emit(report, Outputs.from_options(self.opts))
        return code


def _writable(path: Path) -> bool:
    try:
        return os.access(path, os.W_OK)
    except OSError:
        return False
