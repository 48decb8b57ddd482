"""Results, their human and JSON rendering, and the termination log."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import field
from pathlib import Path
from typing import IO, Any

from . import problems as P
from .errors import ExitCode
from .problems import Problem
from .record import record
from .redact import redact
from .volume import overwrite_file, write_file_atomic

READY, MISSING, INVALID, SKIPPED = "ready", "missing", "invalid", "skipped"
# Errors that say a file is not there (yet): a lane with only these is missing, not invalid.
ABSENT = frozenset({P.MISSING, P.SHARD_MISSING, P.SPLIT_MISSING, P.WEIGHTS_MISSING, P.CONFIG_MISSING})
# Format findings that repeat what a size-mismatch on the same file already says.
SAID_BY_SIZE = frozenset({P.TRUNCATED, P.TRAILING_DATA, P.TENSOR_OUT_OF_BOUNDS})


# The version of every JSON document this program writes (the report, status, inspect,
# env, perms, smoke, the lock): fields may be added within a version, never renamed or
# retyped. JSON Schemas: `preflight schema NAME`, and schemas/ in the repository.
SCHEMA_VERSION = 1

@record
class LaneResult:
    """What was found of one lane: its status, problems and figures."""

    name: str
    kind: str
    path: str
    required: bool = True
    status: str = READY
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    hashed_bytes: int = 0
    fetched_bytes: int = 0
    fetched_files: int = 0
    source: str | None = None
    revision: str | None = None
    note: str | None = None
    fit: dict[str, Any] | None = None  # serving fit on this node (serving/fit.py): figures and verdict
    variant: dict[str, Any] | None = None  # a lane with variants: which one this node serves, and why not the ones before
    serving: dict[str, Any] | None = None  # a folder lane whose new revision is not ready: what its path still serves
    signature: dict[str, Any] | None = None  # a signed lane: the policy that held, the signer, verified now or from a receipt

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    def settle(self) -> None:
        """Fold repeated findings, then derive status from problems.

        A file whose size is wrong is reported once: its format findings that say the
        same (truncated, trailing data, tensors past the end) are dropped. A lane is
        missing when every error says a file is absent or could not be fetched
        (`fetch-failed` says why it is still absent), invalid when any other error
        stands, ready when none does.
        """
        sized = {p.path for p in self.problems if p.code == P.SIZE_MISMATCH and p.is_error}
        if sized:
            self.problems = [p for p in self.problems if not (p.path in sized and p.code in SAID_BY_SIZE)]
        if self.status == SKIPPED:
            return
        errs = self.errors
        if not errs:
            self.status = READY
        elif all(p.code in ABSENT or p.code == P.FETCH_FAILED for p in errs):
            self.status = MISSING
        else:
            self.status = INVALID

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "path": self.path, "required": self.required, "status": self.status,
            "problems": [p.to_dict() for p in self.problems], "files": self.files, "bytes": self.bytes,
            "hashed_bytes": self.hashed_bytes,
        }
        if self.fetched_files:
            d["fetched_files"] = self.fetched_files
            d["fetched_bytes"] = self.fetched_bytes
        if self.source:
            d["source"] = self.source
        if self.revision:
            d["revision"] = self.revision
        if self.note:
            d["note"] = self.note
        if self.fit is not None:
            d["fit"] = self.fit
        if self.variant is not None:
            d["variant"] = self.variant
        if self.serving is not None:
            d["serving"] = self.serving
        if self.signature is not None and self.status == READY:
            d["signature"] = self.signature
        return d


@record
class Report:
    """The report of one command: every lane's result, the exit code and the reason."""

    command: str
    models_dir: str | None
    lanes: list[LaneResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exit_code: int = ExitCode.READY
    reason: str | None = None
    hint: str | None = None
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    emitted: bool = False

    @property
    def status(self) -> str:
        return "ready" if self.exit_code == ExitCode.READY else "not-ready"

    def finish(self) -> int:
        """Exit 0 only when every required, selected lane is ready."""
        for lane in self.lanes:
            lane.settle()
        if self.exit_code == ExitCode.READY:
            bad = [lane for lane in self.lanes if lane.required and lane.status not in (READY, SKIPPED)]
            if bad:
                self.exit_code = ExitCode.NOT_READY
                if not self.reason:
                    self.reason = summarise(bad)
        return int(self.exit_code)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": self.status, "exit_code": int(self.exit_code), "command": self.command,
            "models_dir": self.models_dir, "lanes": [lane.to_dict() for lane in self.lanes],
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if self.reason:
            d["reason"] = self.reason
        if self.hint:
            d["hint"] = self.hint
        if self.notes:
            d["notes"] = self.notes
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        """The report as it leaves the program: every registered secret masked."""
        return redact(json.dumps(self.to_dict(), indent=2))

    def fail(self, exit_code: int, reason: str, hint: str | None = None, errors: list[dict] | None = None) -> None:
        """The run ended early (an error, an interrupt): keep the lanes known so far.
        `errors`: a manifest's errors, one located object each."""
        for lane in self.lanes:
            lane.settle()
        self.exit_code = exit_code
        self.reason = reason
        self.hint = hint
        if errors:
            self.extra["errors"] = errors


def summarise(bad: list[LaneResult]) -> str:
    parts = []
    for lane in bad[:3]:
        first = lane.errors[0] if lane.errors else None
        parts.append(f"lane {lane.name} {lane.status}" + (f": {first.message}" if first else ""))
    more = f" (+{len(bad) - 3} more lanes)" if len(bad) > 3 else ""
    return "; ".join(parts) + more


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") and word[-2:-1] not in "aeiou" else f"{n} {word}s"


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


_MARK = {READY: "ok  ", MISSING: "MISS", INVALID: "BAD ", SKIPPED: "skip"}


def _state(lane: LaneResult) -> str:
    state = lane.status
    if lane.serving is not None:
        old = lane.serving.get("revision") or "the in-place folder"
        state = f"serves {old}, {lane.serving.get('wanted')} {lane.status}"
    return state + ("" if lane.required else " (optional)")


def render_human(report: Report, out: IO[str] | None = None) -> None:
    """One line per lane, then the reasons for anything not ready, then the verdict."""
    out = out or sys.stderr
    width = max([len(lane.name) for lane in report.lanes] + [4])
    path_width = max([len(lane.path) for lane in report.lanes] + [4])
    state_width = max([len(_state(lane)) for lane in report.lanes] + [5])
    for lane in report.lanes:
        extra = f"{plural(lane.files, 'file')}, {human_size(lane.bytes)}"
        if lane.fetched_files:
            extra += f", fetched {lane.fetched_files} ({human_size(lane.fetched_bytes)})"
        if lane.hashed_bytes:
            extra += f", hashed {human_size(lane.hashed_bytes)}"
        if lane.status == SKIPPED:
            extra = lane.note or "skipped"
        mark = "OLD " if lane.serving is not None else _MARK.get(lane.status, "?   ")
        print(f"{mark} {lane.name:<{width}}  {lane.kind:<8} {lane.path:<{path_width}}  {_state(lane):<{state_width}}  [{extra}]", file=out)
    for lane in report.lanes:
        if lane.variant:
            print(f"  {lane.name}: variant: {variant_line(lane.variant)}", file=out)
        if lane.fit:
            print(f"  {lane.name}: fit: {fit_line(lane.fit)}", file=out)
        if lane.signature and lane.status == READY:
            sig = lane.signature
            when = "verified now" if sig.get("verified") == "now" else f"verified {sig.get('verified_at') or 'before'} (receipt)"
            print(f"  {lane.name}: signed by {sig.get('signer') or '?'}: {sig.get('policy')} policy ({sig.get('trusted')}), {when}", file=out)
        for p in lane.problems:
            if lane.status == READY and p.is_error:
                continue
            tag = "warning" if not p.is_error else p.code
            print(f"  {lane.name}: {p.path}: {tag}: {p.message.removeprefix(p.path + ': ')}", file=out)
    for note in report.notes:
        print(f"note: {note}", file=out)
    if report.exit_code == ExitCode.READY:
        print(f"preflight {report.command}: ready ({plural(len(report.lanes), 'lane')}, {report.elapsed_s:.2f}s)", file=out)
    else:
        print(f"preflight {report.command}: NOT READY (exit {int(report.exit_code)}): {report.reason or 'see above'}", file=out)
        if report.hint:
            print(f"  hint: {report.hint}", file=out)


def variant_line(variant: dict[str, Any]) -> str:
    """Which variant this node serves and why not the ones before it."""
    rejected = variant.get("rejected") or []
    why = "; ".join(f"{r.get('variant')} does not fit ({', '.join(r.get('codes') or []) or r.get('verdict')})" for r in rejected)
    text = f"{variant.get('chosen')} at {variant.get('path')} ({variant.get('decided')})"
    if variant.get("none_fits"):
        text = f"none fits this node; judged as {variant.get('chosen')}"
    elif variant.get("why_not_judged"):
        text += f": {variant['why_not_judged']}"
    return text + (f"; {why}" if why and not variant.get("none_fits") else f": {why}" if why else "")


def fit_line(fit: dict[str, Any]) -> str:
    """One line of a lane's fit figures: what the user sizes a deployment by."""
    parts = [f"{fit.get('engine')} {fit.get('verdict')}"]
    if fit.get("weights_bytes_per_gpu") is not None:
        parts.append(f"weights {human_size(fit['weights_bytes_per_gpu'])}/GPU")
    elif fit.get("weights_bytes") is not None:
        parts.append(f"weights {human_size(fit['weights_bytes'])}")
    if fit.get("kv_bytes_per_token") is not None:
        parts.append(f"KV {human_size(fit['kv_bytes_per_token'])}/token")
    if fit.get("kv_cache_bytes") is not None:
        parts.append(f"KV cache {human_size(fit['kv_cache_bytes'])} (n_ctx {fit.get('n_ctx')})")
    if fit.get("longest_context") is not None:
        parts.append(f"longest context {fit['longest_context']}")
    if fit.get("concurrency_at_max_len") is not None:
        parts.append(f"{fit['concurrency_at_max_len']}x at {fit.get('max_model_len')} tokens")
    if fit.get("headroom_bytes") is not None:
        parts.append(f"headroom {human_size(fit['headroom_bytes'])}")
    if fit.get("node"):
        parts.append(f"on {fit['node']}")
    return ", ".join(parts)


DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def write_termination_log(path: str | None, message: str) -> None:
    """Kubernetes shows this file's content in `kubectl describe pod` (4 KiB max)."""
    target = path
    if target is None:
        if not os.path.exists(DEFAULT_TERMINATION_LOG):
            return
        target = DEFAULT_TERMINATION_LOG
    if not target:
        return
    data = redact(message).encode("utf-8", "replace")[:4000]
    try:
        p = Path(target)
        if p.exists() and not p.is_file():  # a device or a bind-mounted file we cannot replace
            overwrite_file(p, data)
        else:
            try:
                write_file_atomic(p, data, fsync=False)
            except OSError:
                overwrite_file(p, data)  # a bind-mounted file cannot be renamed over
    except OSError:
        pass


def write_report_file(path: str, report: Report) -> None:
    write_file_atomic(Path(path), report.to_json().encode() + b"\n", fsync=False)


# --------------------------------------------------------------------------- every exit


@record
class Outputs:
    """Where a run's report goes: --json (stdout), --report FILE, --termination-log, --quiet."""

    as_json: bool = False
    report: str | None = None
    termination_log: str | None = None
    quiet: bool = False

    @classmethod
    def from_options(cls, opts: dict[str, Any]) -> Outputs:
        return cls(bool(opts.get("as_json")), opts.get("report") or None, opts.get("termination_log"), bool(opts.get("quiet")))


_current: Report | None = None


def track(report: Report | None) -> Report | None:
    """Make `report` the run's report: an error that ends the run reports its lanes."""
    global _current
    _current = report
    return report


def current() -> Report | None:
    return _current


def emit(report: Report, out: Outputs, *, human: bool = True) -> None:
    """The one way a report leaves: human summary (stderr), JSON (stdout), report file,
    termination log (on failure). Once per run; a report file that cannot be written is
    said on stderr and does not change the exit code."""
    if report.emitted:
        return
    report.emitted = True
    if human and not out.quiet:
        render_human(report, sys.stderr)
    if out.as_json:
        sys.stdout.write(report.to_json() + "\n")
        sys.stdout.flush()
    if out.report:
        try:
            write_report_file(out.report, report)
        except OSError as exc:
            print(f"preflight: cannot write the report to {out.report}: {exc.strerror or exc}", file=sys.stderr)
    if report.exit_code != ExitCode.READY:
        write_termination_log(out.termination_log, report.reason or "not ready")
