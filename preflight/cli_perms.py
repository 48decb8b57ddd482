"""`preflight perms`: can the serving uid/gid read the lanes; `--fix` makes it so."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli import DEFAULT_MANIFEST, guarded, opt
from .errors import ExitCode, UsageError
from .manifest import load_manifest, split_lanes
from .perms import find_denied, fix as fix_entries
from .report import SCHEMA_VERSION, plural


@click.command("perms")
@opt("--manifest", "-m", default=DEFAULT_MANIFEST, show_default=True, type=click.Path(dir_okay=False), help="Manifest (YAML or JSON).")
@opt("--models-dir", "-d", default=None, help="Models folder; overrides the manifest's models_dir.")
@opt("--profile", "-p", default=None, help="Only the lanes of this profile.")
@click.option("--lane", "-l", "lanes", multiple=True, envvar="PREFLIGHT_LANES", show_envvar=True, help="Only this lane (repeatable).")
@opt("--uid", type=click.IntRange(0), required=True, help="The uid the inference server runs as.")
@opt("--gid", type=click.IntRange(0), required=True, help="Its group id.")
@opt("--fix", is_flag=True, help="Change owner and modes of what the uid/gid cannot use (needs root to change owners).")
@opt("--fix-style", type=click.Choice(["open", "group"]), default="open", show_default=True,
     help="open: owner uid:gid, files 0644, folders 0755; group: group gid, files 0640, folders 0750.")
@opt("--json", "as_json", is_flag=True, help="Print what is denied as JSON on stdout.")
@guarded
def perms(manifest: str, models_dir: str | None, profile: str | None, lanes: tuple[str, ...], uid: int, gid: int,
          fix: bool, fix_style: str, as_json: bool, termination_log: str | None = None) -> int:
    """Report files the server's uid/gid cannot read and folders it cannot traverse.

    Exit 0 when everything is usable (after --fix, when given), 1 otherwise.

    \b
    Examples:
      preflight perms -m lanes.yaml --uid 1000 --gid 1000
      preflight perms -m lanes.yaml --uid 65532 --gid 65532 --fix --fix-style group
    """
    m = load_manifest(manifest)
    root = Path(models_dir or m.models_dir)
    if not root.is_dir():
        raise UsageError(f"models folder {root} does not exist")
    selected = m.select(profile, split_lanes(lanes))
    denied = find_denied(root, selected, uid, gid)
    failures: list[str] = []
    if fix and denied:
        failures = fix_entries(root, denied, uid, gid, fix_style)
        for msg in failures:
            click.echo(f"preflight perms: {msg}", err=True)
        fixed = len(denied)
        denied = find_denied(root, selected, uid, gid)
        click.echo(f"preflight perms: changed {fixed - len(denied)} of {plural(fixed, 'entry')} for uid {uid} gid {gid}", err=True)
    if as_json:
        click.echo(json.dumps({"schema_version": SCHEMA_VERSION, "uid": uid, "gid": gid, "denied": [
            {"path": d.rel or ".", "kind": "dir" if d.is_dir else "file", "need": d.need, "mode": f"{d.mode & 0o7777:04o}", "owner": f"{d.uid}:{d.gid}"}
            for d in denied]}, indent=2))
    for d in denied:
        click.echo(f"preflight perms: {d.describe()}", err=True)
    if denied:
        click.echo(f"preflight perms: {plural(len(denied), 'entry')} not usable by uid {uid} gid {gid}" + ("" if fix else " (--fix changes them)"), err=True)
        return ExitCode.NOT_READY
    click.echo(f"preflight perms: {plural(len(selected), 'lane')} usable by uid {uid} gid {gid}", err=True)
    return ExitCode.READY

