"""Fit before a download: sync's hooks. Which variant to fetch, and whether the engine would
refuse a lane on this node before its bytes move.

The model facts come from the lock when it carries them (`preflight lock` records them), else
from the source: config.json whole and the weight files' headers through ranged reads
(serving/remote.py, through `Source.read_range`, so no scheme is named here). A lane fit refuses
is not downloaded: its report carries the findings and figures, and the run exits 1.
`--no-fit` (PREFLIGHT_NO_FIT) downloads it anyway; variants are still chosen by fit then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FitRefusedError, PreflightError
from ..manifest import Lane
from .inputs import FitInputs, evaluate
from .remote import RemoteResult, folder_remote, gguf_remote
from .variants import choose, lock_inputs, volume_inputs

if TYPE_CHECKING:
    from ..sources import Entry, Source

NEEDED = ("config.json", "tokenizer_config.json")


def source_inputs(lane: Lane, source: Source, files: dict[str, Entry]) -> RemoteResult:
    """The lane's fit inputs from its source, reading only headers (see serving/remote.py)."""
    from .lane import weight_files

    wanted = set(files) if lane.kind == "gguf" else {*NEEDED, *weight_files(list(files))}
    sizes: dict[str, int | None] = {}
    for rel, entry in files.items():
        if rel in wanted:
            sizes[rel] = entry.expect.size if entry.expect.size is not None else source.size_hint(entry)

    def read(rel: str, start: int, length: int) -> bytes | None:
        return source.read_range(files[rel], start, length)

    if lane.kind == "gguf":
        return gguf_remote(sorted(files)[0], sizes, read)
    return folder_remote(sizes, read)


class Before:
    """The fit inputs of the run's lanes and candidates, each read once."""

    def __init__(self, session, remote, log, offline: bool = False) -> None:
        self.session, self.remote, self.log, self.offline = session, remote, log, offline
        self.read: dict[tuple[str, str | None], tuple[FitInputs | None, str | None]] = {}
        self.bytes = 0

    def inputs(self, lane: Lane, local: bool = True) -> tuple[FitInputs | None, str | None]:
        key = (lane.name, lane.variant)
        if key in self.read:
            return self.read[key]
        got, why = volume_inputs(self.session.ctx, lane) if local else (None, None)
        if got is None:
            got, why = lock_inputs(self.session.ctx, lane)
        if got is None:
            got, why = self._from_source(lane)
        self.read[key] = (got, why)
        return got, why

    def _from_source(self, lane: Lane) -> tuple[FitInputs | None, str | None]:
        if self.offline and not (lane.source is not None and lane.source.scheme == "local"):
            return None, "offline: its source is not read"
        self.remote.resolve(lane)
        if lane.name in self.remote.errors:
            return None, f"its source cannot be listed: {self.remote.errors[lane.name]}"
        source, files = self.remote.sources[lane.name], self.remote.fetchable[lane.name]
        try:
            got = source_inputs(lane, source, files)
        except PreflightError as exc:
            return None, f"its headers cannot be read before the download: {exc}"
        self.bytes += got.counter.bytes
        if got.inputs is not None:
            self.log(f"{lane.label}: fit read from its source before the download: {got.counter.bytes} bytes in "
                     f"{got.counter.requests} ranged reads" + (f" ({got.why_not})" if got.why_not else ""))
        return got.inputs, got.why_not


def choose_variants(session, remote, before: Before) -> None:
    """Lanes whose variant the volume and the lock could not settle are chosen again, with their sources."""
    from .lane import node_of

    ctx = session.ctx
    node = node_of(ctx)
    lanes = []
    for lane in session.lanes:
        report = ctx.variants.get(lane.name)
        if report is None or report.get("decided") != "not judged":
            lanes.append(lane)
            continue
        original = session.manifest.lane(lane.name)
        choice = choose(original, node, before.inputs, ctx.receipts)
        ctx.variants[lane.name] = choice.report
        if choice.record is not None:
            ctx.variant_records[lane.name] = choice.record
        lanes.append(choice.lane)
    session.lanes = lanes


def refuse_unfit(session, remote, before: Before, jobs: list, blocked: dict, no_fit: bool) -> list:
    """Jobs of lanes fit refuses on this node are dropped, the lanes blocked with the reason."""
    from .lane import node_of

    if no_fit:
        return jobs
    node = node_of(session.ctx)
    accel = node.get()
    seen: set[str] = set()
    for job in jobs:
        lane = job.lane
        if lane.serve is None or lane.name in seen or lane.name in blocked:
            continue
        seen.add(lane.name)
        inputs, why = before.inputs(lane, local=False)
        fit = evaluate(inputs, lane.serve, accel)
        if fit is None:
            before.log(f"{lane.label}: fit not judged before the download ({why or 'no model facts'}); judged once it is on the volume")
            continue
        if fit.fits:
            continue
        first = next(p for p in fit.problems if p.is_error)
        variant = session.ctx.variants.get(lane.name)
        others = ""
        if variant and variant.get("none_fits"):
            others = "; no variant fits either: " + "; ".join(f"{r['variant']}: {r.get('reason')}" for r in variant["rejected"][1:])
        figures = {**fit.to_dict(), "node": accel.describe() if accel is not None else None}
        figures.pop("problems", None)
        blocked[lane.name] = FitRefusedError(
            f"lane {lane.name}: not downloaded: {first.message}{others}",
            [p for p in fit.problems], figures,
            hint="serve it with other flags or on a larger node, add a variant that fits, or pass --no-fit (PREFLIGHT_NO_FIT=1) to download it anyway")
    return [j for j in jobs if j.lane.name not in blocked]
