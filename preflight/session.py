"""One run of check or sync: options → context → report → exit code."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .check import STATE_DIR, Context, check_lanes
from .errors import ExitCode, PreflightError, UsageError
from .integrity import Receipts
from .manifest import Lane, Manifest, load_manifest, split_lanes
from .record import record
from .report import Outputs, Report, emit, track

if TYPE_CHECKING:
    from .lockfile import Lock


@record
class Session:
    """One command's run over the volume: the manifest, the selected lanes, the check context, the report."""

    manifest: Manifest
    lanes: list[Lane]
    ctx: Context
    report: Report
    opts: dict
    state_dir: Path | None
    writable: bool
    started: float

    @classmethod
    def open(cls, *, command: str, manifest: str | Manifest, models_dir: str | None, profile: str | None, lanes: tuple[str, ...],
             lock: str | None, state_dir: str | None, verify: str, **opts) -> Session:
        """`manifest`: a file, or a Manifest built in memory (`preflight fetch`: no lock unless named)."""
        started = time.monotonic()
        built = isinstance(manifest, Manifest)
        m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        root = Path(models_dir or m.models_dir)
        report = track(Report(command, str(root)))
        selected = m.select(profile, split_lanes(lanes))
        if not selected:
            raise UsageError("no lanes selected (every lane is disabled, or the profile/lane filter matched none)")
        lock_obj: Lock | None = None
        lock_path = Path(lock) if lock else m.lock_path
        if lock or (lock_path.exists() and not built):
            from .lockfile import load_lock

            lock_obj = load_lock(lock_path)
        if command in ("check", "status") and not root.is_dir():  # sync creates it
            report.notes.append(f"models folder {root} " + ("is not a folder" if root.exists() else "does not exist"))
        sdir = Path(state_dir) if state_dir else root / STATE_DIR
        svol = None
        if root.is_dir():
            from .volume import state_volume

            svol = state_volume(root, sdir, create=False)  # a .preflight that leads out of the volume is refused, not read or written
        writable = _writable(sdir if sdir.exists() else (sdir.parent if sdir.parent.exists() else root))
        receipts = Receipts(sdir if sdir.exists() or writable else None, svol)
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
        if any(lane.variants for lane in selected):
            from .serving.variants import apply

            selected = apply(ctx, selected)  # the variant this node serves, from memory, the volume or the lock
        return cls(m, selected, ctx, report, opts, sdir, writable, started)

    def check(self, remotes=None) -> Report:
        results = check_lanes(self.ctx, self.lanes, remotes)
        self.report.lanes = results
        return self.report

    def save_receipts(self) -> None:
        for name, choice in self.ctx.variant_records.items():
            self.ctx.receipts.choose_variant(name, choice)
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
            code = self._write_ready(report)
        emit(report, Outputs.from_options(self.opts))
        return code

    def _write_ready(self, report: Report) -> int:
        """report.json, then ready.json: readiness probes read the last, so it is part of
        ready. A volume that fills while it is written is exit 5, any other failure 1."""
        from .volume import state_volume

        assert self.state_dir is not None
        try:
            vol = state_volume(self.ctx.models_dir, self.state_dir)
            vol.write_atomic("report.json", report.to_json().encode())
            vol.write_atomic("ready.json", json.dumps({
                "status": "ready", "lanes": [l.name for l in report.lanes],
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }).encode())
            return int(report.exit_code)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            report.exit_code = ExitCode.DISK_SPACE if full else ExitCode.NOT_READY
            report.reason = (f"every lane verified, but {self.state_dir / 'ready.json'} could not be written "
                             f"({exc.strerror or exc}): readiness probes read it, so the volume is not ready")
            report.hint = "free space on the volume and run sync again" if full else None
            return int(report.exit_code)
        except PreflightError as exc:
            report.exit_code, report.reason, report.hint = exc.exit_code, str(exc), getattr(exc, "hint", None)
            return int(report.exit_code)


def _writable(path: Path) -> bool:
    try:
        return os.access(path, os.W_OK)
    except OSError:
        return False
