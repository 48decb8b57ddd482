"""`preflight env`: the paths an application reads, as sourceable shell lines or JSON."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import click

from .cli import DEFAULT_MANIFEST, guarded, opt
from .errors import ExitCode, ManifestError, UsageError
from .manifest import Manifest, load_manifest, split_lanes

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def lane_env(manifest: Manifest, models_dir: str | None = None, profile: str | None = None, lanes: tuple[str, ...] = (),
             state_dir: str | None = None, accelerator: str | None = None) -> dict[str, str]:
    """NAME → absolute path of every selected lane that carries `env: NAME`, in manifest order.
    A lane with variants gives the path of the one this node serves (see `chosen`)."""
    root = Path(models_dir or manifest.models_dir).absolute()
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    selected = manifest.select(profile, lanes)
    if any(lane.variants for lane in selected):
        selected = chosen(manifest, selected, root, state_dir, accelerator)
    for lane in selected:
        if not lane.env:
            continue
        if not _ENV_NAME.match(lane.env):
            raise ManifestError(f"env {lane.env!r} is not a shell variable name (letters, digits, '_')", file=manifest.file, line=lane.line, field=f"lanes.{lane.name}.env")
        if lane.env in owner:
            raise ManifestError(f"env {lane.env} is set by both lane {owner[lane.env]!r} and lane {lane.name!r}", file=manifest.file, line=lane.line, field=f"lanes.{lane.name}.env")
        owner[lane.env] = lane.name
        out[lane.env] = str(root / lane.path)
    return out


def chosen(manifest: Manifest, selected: list, root: Path, state_dir: str | None, accelerator: str | None) -> list:
    """The variant of each lane this node serves: the one sync or check chose here before (the
    receipts), else the first that fits by the volume and the lock. Reads the state folder and,
    without a remembered choice, the candidates' config and headers; writes nothing."""
    from .check import STATE_DIR, Context
    from .integrity import Receipts
    from .lockfile import default_lock_path, load_lock
    from .serving.accel import AcceleratorError, parse_declared
    from .serving.lane import NodeAccelerator
    from .serving.variants import apply

    declared = accelerator or manifest.accelerator
    if declared:
        try:
            parse_declared(declared)
        except AcceleratorError as exc:
            raise UsageError(f"--accelerator {declared!r}: {exc}") from None
    sdir = Path(state_dir) if state_dir else root / STATE_DIR
    lock_path = default_lock_path(manifest)
    ctx = Context(manifest, root, Receipts(sdir if sdir.is_dir() else None), load_lock(lock_path) if lock_path.exists() else None)
    ctx.accelerator = NodeAccelerator(declared)
    return apply(ctx, selected)


def render_env(values: dict[str, str]) -> str:
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


@click.command("env")
@opt("--manifest", "-m", default=DEFAULT_MANIFEST, show_default=True, type=click.Path(dir_okay=False), help="Manifest (YAML or JSON).")
@opt("--models-dir", "-d", default=None, help="Models folder; overrides the manifest's models_dir.")
@opt("--profile", "-p", default=None, help="Only the lanes of this profile.")
@click.option("--lane", "-l", "lanes", multiple=True, envvar="PREFLIGHT_LANES", show_envvar=True, help="Only this lane (repeatable).")
@opt("--format", "fmt", type=click.Choice(["env", "json"]), default="env", show_default=True, help="env: NAME='path' lines for `source` / --env-file; json: an object.")
@opt("--state-dir", default=None, type=click.Path(file_okay=False), help="Where receipts live (default <models-dir>/.preflight): a lane with variants exports the one chosen there.")
@opt("--accelerator", default=None, help="This node's accelerator, for lanes with variants (as for check).")
@guarded
def env_command(manifest: str, models_dir: str | None, profile: str | None, lanes: tuple[str, ...], fmt: str, state_dir: str | None = None,
                accelerator: str | None = None, termination_log: str | None = None) -> int:
    """Print the paths the application reads, from each lane's `env: NAME`.

    Never uses the network and never writes; pair it with `check` to know the paths hold valid files.
    A lane with variants exports the path of the variant this node serves: the one sync or check
    chose on this node (remembered in the state folder), else the first that fits by the volume and the lock.

    \b
    Examples:
      preflight env -m lanes.yaml > /shared/models.env && . /shared/models.env
      preflight env -m lanes.yaml --format json
    """
    values = lane_env(load_manifest(manifest), models_dir, profile, split_lanes(lanes), state_dir, accelerator)
    if not values:
        raise UsageError("no selected lane has `env: NAME`", hint="add `env: TEXT_MODEL_PATH` (for example) to the lanes the application reads")
    sys.stdout.write(json.dumps(values, indent=2) + "\n" if fmt == "json" else render_env(values))
    return ExitCode.READY
