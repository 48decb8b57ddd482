"""`preflight push`: publish verified lanes from the volume to a registry or a bucket."""

from __future__ import annotations

import os
import time

import click

from .cli import common_volume_options, guarded, opt
from .cli_sync import registry_options
from .errors import ExitCode, NotReadyError, UsageError


@click.command()
@click.argument("lane_names", metavar="LANE...", nargs=-1)
@opt("--to", "dest", required=True, help="Where: oci://REGISTRY/REPO[:TAG], s3://BUCKET/PREFIX or gs://BUCKET/PREFIX.")
@opt("--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for a connection.")
@opt("--stall-timeout", type=float, default=60.0, show_default=True, help="Seconds without progress before an attempt fails.")
@opt("--retries", type=click.IntRange(0, 20), default=3, show_default=True, help="Retries per request, with backoff.")
@common_volume_options
@registry_options
@guarded(report="push")
def push(lane_names, dest, connect_timeout, stall_timeout, retries, **kw) -> int:
    """Publish verified lanes (checked first; a lane that is not ready is not pushed).

    \b
    Examples:
      preflight push coder --to oci://registry.internal:5000/models/coder:v1 -m lanes.yaml
      preflight push embed rerank --to s3://models/prod -m lanes.yaml
      preflight push coder --to gs://models-prod/coder -m lanes.yaml
    """
    from .report import human_size
    from .session import Session
    from .sources import Context, Transfer, open_destination
    from .sources.http import Timeouts

    if lane_names:
        kw["lanes"] = tuple(kw.get("lanes") or ()) + tuple(lane_names)
    session = Session.open(command="push", **kw)
    report = session.check()
    code = report.finish()
    if code != ExitCode.READY:
        return session.finish(report)
    timeouts = Timeouts(connect_timeout, stall_timeout)
    ctx = Context(session.manifest.file, timeouts, retries=retries, log=lambda msg: click.echo(msg, err=True))
    destination = open_destination(dest, ctx)
    for result in report.lanes:
        lane = session.manifest.lane(result.name)
        started = time.monotonic()
        pushed = destination.push(push_lane(session, lane, result.revision), Transfer(timeouts))
        result.note = pushed.ref
        click.echo(f"{lane.name}: pushed {pushed.uploaded_files} file(s), {human_size(pushed.uploaded_bytes)} "
                   f"({pushed.skipped_files} already there, {human_size(pushed.skipped_bytes)}) to {pushed.ref} "
                   f"in {time.monotonic() - started:.1f}s", err=True)
    return session.finish(report)


def push_lane(session, lane, revision: str | None):
    """The lane's verified files with their sha256 (from receipts when the stat still
    matches, else hashed now), as a pull must recreate them."""
    from .check import discover, files_root, lane_root, selected, state_key
    from .integrity import hash_file
    from .sources import PushFile, PushLane

    ctx = session.ctx
    if lane.kind == "hf-cache":
        raise UsageError(f"lane {lane.name}: an hf-cache lane is a cache layout; push the model as an hf-dir lane")
    root = files_root(ctx, lane, revision) if lane.is_dir else lane_root(ctx, lane)
    if lane.is_dir:
        rels = [rel for rel in discover(root) if selected(rel, lane)]
    else:
        from .check import gguf_split_names

        name = os.path.basename(lane.path)
        rels = gguf_split_names(name) if lane.kind == "gguf" else [name]
    files = []
    for rel in rels:
        path = root / rel
        st = os.stat(path)
        digests = ctx.receipts.lookup(state_key(ctx.models_dir, path), st) or {}
        sha256 = digests.get("sha256") or hash_file(path)["sha256"]
        files.append(PushFile(rel, path, st.st_size, sha256))
    if not files:
        raise NotReadyError(f"lane {lane.name}: no files to push under {root}")
    return PushLane(lane, files, revision)
