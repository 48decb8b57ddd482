"""`preflight env`: the paths an application reads, as sourceable shell lines or JSON."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from .cli import DEFAULT_MANIFEST, guarded, opt
from .errors import ExitCode, ManifestError, UsageError
from .manifest import Manifest, load_manifest, split_lanes
from .report import SCHEMA_VERSION

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def lane_env(manifest: Manifest, models_dir: str | None = None, profile: str | None = None, lanes: tuple[str, ...] = (),
             state_dir: str | None = None, accelerator: str | None = None, chosen: list | None = None) -> dict[str, str]:
    """NAME → absolute path of every selected lane that carries `env: NAME`, in manifest order.
    A lane with variants gives the path of the one this node serves: `chosen` (sync's lanes),
    else what `chosen_variants` finds."""
    root = Path(models_dir or manifest.models_dir).absolute()
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    selected = chosen if chosen is not None else manifest.select(profile, lanes)
    if chosen is None and any(lane.variants for lane in selected):
        selected = chosen_variants(manifest, selected, root, state_dir, accelerator)
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


def chosen_variants(manifest: Manifest, selected: list, root: Path, state_dir: str | None, accelerator: str | None) -> list:
    """The variant of each lane this node serves: the one sync or check chose here before (the
    receipts), else the first that fits by the volume and the lock. Reads the state folder and,
    without a remembered choice, the candidates' config and headers; writes nothing."""
    from .check import STATE_DIR, Context
    from .integrity import Receipts
    from .lockfile import load_lock
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
    lock_path = manifest.lock_path
    ctx = Context(manifest, root, Receipts(sdir if sdir.is_dir() else None), load_lock(lock_path) if lock_path.exists() else None)
    ctx.accelerator = NodeAccelerator(declared)
    return apply(ctx, selected)


def render_env(values: dict[str, str]) -> str:
    """NAME='path' lines: sourceable by any POSIX shell and read as-is by Compose's env_file."""
    return "".join(f"{name}='" + value.replace("'", "'\"'\"'") + "'\n" for name, value in values.items())


def render_docker_env(values: dict[str, str]) -> str:
    """NAME=path lines for `docker run --env-file`, which takes values literally (no quotes)."""
    bad = [n for n, v in values.items() if "\n" in v or "\r" in v]
    if bad:
        raise UsageError(f"the path of {bad[0]} holds a line break, which docker's --env-file cannot carry", hint="use --format env or --json")
    return "".join(f"{name}={value}\n" for name, value in values.items())


@click.command("env")
@opt("--manifest", "-m", default=DEFAULT_MANIFEST, show_default=True, type=click.Path(dir_okay=False), help="Manifest (YAML or JSON).")
@opt("--models-dir", "-d", default=None, help="Models folder; overrides the manifest's models_dir.")
@opt("--profile", "-p", default=None, help="Only the lanes of this profile.")
@click.option("--lane", "-l", "lanes", multiple=True, envvar="PREFLIGHT_LANES", show_envvar=True, help="Only this lane (repeatable).")
@opt("--format", "fmt", type=click.Choice(["env", "docker", "json"]), default="env", show_default=True,
     help="env: NAME='path' lines for `source` and Compose env_file; docker: NAME=path for `docker run --env-file`; json: an object.")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json (as every other command's --json).")
@opt("--state-dir", default=None, type=click.Path(file_okay=False), help="Where receipts live (default <models-dir>/.preflight): a lane with variants exports the one chosen there.")
@opt("--accelerator", default=None, help="This node's accelerator, for lanes with variants (as for check).")
@guarded
def env_command(manifest: str, models_dir: str | None, profile: str | None, lanes: tuple[str, ...], fmt: str, as_json: bool = False,
                state_dir: str | None = None, accelerator: str | None = None, termination_log: str | None = None) -> int:
    """Print the paths the application reads, from each lane's `env: NAME`.

    Never uses the network and never writes; pair it with `check` to know the paths hold valid files.
    A lane with variants exports the path of the variant this node serves: the one sync or check
    chose on this node (remembered in the state folder), else the first that fits by the volume and the lock.

    \b
    Examples:
      preflight env -m lanes.yaml > /shared/models.env && . /shared/models.env
      preflight env -m lanes.yaml --json
      preflight env -m lanes.yaml --format docker > models.env && docker run --env-file models.env …
    """
    values = lane_env(load_manifest(manifest), models_dir, profile, split_lanes(lanes), state_dir, accelerator)
    if not values:
        raise UsageError("no selected lane has `env: NAME`", hint="add `env: TEXT_MODEL_PATH` (for example) to the lanes the application reads")
    if as_json or fmt == "json":
        sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, "env": values}, indent=2) + "\n")
    else:
        sys.stdout.write(render_docker_env(values) if fmt == "docker" else render_env(values))
    return ExitCode.READY
