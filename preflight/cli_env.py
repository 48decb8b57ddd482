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


def lane_env(manifest: Manifest, models_dir: str | None = None, profile: str | None = None, lanes: tuple[str, ...] = ()) -> dict[str, str]:
    """NAME → absolute path of every selected lane that carries `env: NAME`, in manifest order."""
    root = Path(models_dir or manifest.models_dir).absolute()
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for lane in manifest.select(profile, lanes):
        if not lane.env:
            continue
        if not _ENV_NAME.match(lane.env):
            raise ManifestError(f"env {lane.env!r} is not a shell variable name (letters, digits, '_')", file=manifest.file, line=lane.line, field=f"lanes.{lane.name}.env")
        if lane.env in owner:
            raise ManifestError(f"env {lane.env} is set by both lane {owner[lane.env]!r} and lane {lane.name!r}", file=manifest.file, line=lane.line, field=f"lanes.{lane.name}.env")
        owner[lane.env] = lane.name
        out[lane.env] = str(root / lane.path)
    return out


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
@guarded
def env_command(manifest: str, models_dir: str | None, profile: str | None, lanes: tuple[str, ...], fmt: str, as_json: bool = False,
                termination_log: str | None = None) -> int:
    """Print the paths the application reads, from each lane's `env: NAME`.

    Never touches the volume or the network; pair it with `check` to know the paths hold valid files.

    \b
    Examples:
      preflight env -m lanes.yaml > /shared/models.env && . /shared/models.env
      preflight env -m lanes.yaml --json
      preflight env -m lanes.yaml --format docker > models.env && docker run --env-file models.env …
    """
    values = lane_env(load_manifest(manifest), models_dir, profile, split_lanes(lanes))
    if not values:
        raise UsageError("no selected lane has `env: NAME`", hint="add `env: TEXT_MODEL_PATH` (for example) to the lanes the application reads")
    if as_json or fmt == "json":
        sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, "env": values}, indent=2) + "\n")
    else:
        sys.stdout.write(render_docker_env(values) if fmt == "docker" else render_env(values))
    return ExitCode.READY
