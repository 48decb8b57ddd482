"""`preflight status` and `preflight prune`: what the volume holds, and removing what nothing needs."""

from __future__ import annotations

import shutil

import click

from .cli import common_volume_options, guarded, opt


def _keep_option(fn):
    return opt("--keep", type=click.IntRange(1, 1000), default=2, show_default=True,
               help="Revisions (and cache snapshots) kept per lane, the current one included.")(fn)


@click.command()
@_keep_option
@common_volume_options
@guarded(report="status")
def status(keep, **kw) -> int:
    """Per lane: its current revision, size on disk (hard links counted once), when it was
    last verified, older revisions kept, what `prune` would free; and the free space.

    \b
    Examples:
      preflight status -m lanes.yaml
      preflight status -m lanes.yaml --json
    """
    from . import prune as pr
    from .report import human_size
    from .session import Session

    session = Session.open(command="status", **kw)
    report = session.check()
    planned = pr.plan(session.ctx, session.lanes, session.state_dir, keep=keep, unselected=False)
    items = planned.items
    report.notes.extend(planned.refused)
    lanes = [pr.lane_status(session.ctx, lane, items) for lane in session.lanes]
    free = shutil.disk_usage(session.ctx.models_dir).free if session.ctx.models_dir.exists() else None
    report.extra.update({"volume": {"free_bytes": free, "prune_frees": sum(i.freed for i in items)},
                         "lane_status": [s.to_dict() for s in lanes]})
    by_name = {s.name: s for s in lanes}
    for res in report.lanes:
        s = by_name[res.name]
        res.note = (f"{s.layout}" + (f" @{s.revision}" if s.revision else f" (folder {s.revision_folder})" if s.revision_folder else "") + f", {human_size(s.bytes_on_disk)} on disk"
                    + (f", verified {s.last_verified}" if s.last_verified else "")
                    + (f", {len(s.kept_revisions)} older kept" if s.kept_revisions else "")
                    + (f", prune frees {human_size(s.prune_frees)}" if s.prune_frees else ""))
    if not kw.get("as_json"):  # the answer of a query goes to stdout (`preflight status | less`); --json puts the report there
        for res in report.lanes:
            click.echo(f"{res.name}: {res.note}")
        if session.ctx.models_dir.is_dir():
            click.echo(f"volume: {human_size(free) if free is not None else '?'} free; prune would free "
                       f"{human_size(sum(i.freed for i in items))} (staging partials included)")
        else:
            click.echo(f"volume: the models folder {session.ctx.models_dir} does not exist")
    return session.finish(report)


@click.command()
@_keep_option
@opt("--dry-run", is_flag=True, help="List what would go and how much space it frees; remove nothing.")
@opt("--unselected", is_flag=True, help="Also remove files under a lane folder that its include/exclude no longer select.")
@opt("--lease-wait", type=float, default=1800.0, show_default=True, help="Seconds to wait for a writer holding the volume before exit 6.")
@opt("--lease-stale", type=float, default=60.0, show_default=True, help="A lease whose heartbeat stopped this long ago is taken over.")
@common_volume_options
@guarded(report="prune")
def prune(keep, dry_run, unselected, lease_wait, lease_stale, **kw) -> int:
    """Remove what nothing needs: revisions and cache snapshots beyond --keep, blobs no
    snapshot links to, staging partials, and (with --unselected) files a lane no longer
    selects. Never while another writer holds the volume.

    \b
    Examples:
      preflight prune -m lanes.yaml --dry-run
      preflight prune -m lanes.yaml --keep 1
    """
    from . import prune as pr
    from .lease import Lease
    from .report import human_size
    from .session import Session

    session = Session.open(command="prune", **kw)
    lease = None
    if not dry_run and session.state_dir is not None and session.state_dir.exists():
        from .volume import state_volume

        lease = Lease(state_volume(session.ctx.models_dir, session.state_dir, create=False), stale_after=lease_stale)
        lease.acquire(lease_wait, lambda msg: click.echo(msg, err=True))
    try:
        planned = pr.plan(session.ctx, session.lanes, session.state_dir, keep=keep, unselected=unselected)
        items = planned.items
        total = sum(i.freed for i in items)
        for item in items:
            click.echo(f"{'would remove' if dry_run else 'remove'} {item.path} ({item.what}: {item.why}; frees {human_size(item.freed)})", err=True)
        freed, notes = (0, []) if dry_run else pr.remove(items)
    finally:
        if lease is not None:
            lease.release()
    report = session.check()
    report.notes.extend(planned.refused + notes)
    if planned.refused and report.exit_code == 0:
        # A link planted in the volume kept part of it from being pruned: not an error of
        # the lanes, but not something to pass over silently either.
        from .errors import ExitCode

        report.exit_code = ExitCode.NOT_READY
        report.reason = planned.refused[0]
        report.hint = "a folder of the volume is a symlink that leads out of it; replace it with a real folder"
    report.extra.update({"dry_run": dry_run, "items": [i.to_dict() for i in items],
                         "frees_bytes": total, "freed_bytes": freed})
    click.echo(f"preflight prune: {'would free' if dry_run else 'freed'} {human_size(total if dry_run else freed)} "
               f"({len(items)} item{'s' if len(items) != 1 else ''})", err=True)
    return session.finish(report)
