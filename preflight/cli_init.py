"""`preflight init`: a first manifest (and lock) from a models folder and/or sources."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import click

from .cli import guarded, opt
from .errors import ExitCode, UsageError


@click.command("init")
@click.argument("sources", nargs=-1)
@opt("--models-dir", "-d", default=None, type=click.Path(file_okay=False),
     help="An existing models folder to adopt as it is: read only, nothing in it is moved, written or created.")
@opt("--output", "-o", default="lanes.yaml", show_default=True, type=click.Path(dir_okay=False), help="Where to write the manifest.")
@opt("--lock", "with_lock", is_flag=True,
     help="Also write the lock (<output>.lock.json): every adopted file's size and sha256; sources resolved as `preflight lock` does.")
@opt("--force", is_flag=True, help="Overwrite --output (and the lock) when they exist.")
@opt("--token-file", default=None, type=click.Path(dir_okay=False), help="The Hub token for --lock of hf:// sources. Else HF_TOKEN.")
@guarded
def init_command(sources: tuple[str, ...], models_dir: str | None, output: str, with_lock: bool, force: bool,
                 token_file: str | None = None, termination_log: str | None = None) -> int:
    """Write a first manifest from what you already have: a models folder, sources, or both.

    Each folder or file of --models-dir gets the kind its content has (hf-dir, adapter,
    hf-cache, gguf with its splits, file) and is checked as `check` will check it; the
    manifest says why, with a comment per lane. SOURCES (hf://, s3://, oci://,
    https://…#sha256=…, a path) become lanes of their own, or give an adopted lane at the
    same path its source. Exit 0 when every adopted lane passes `check` as written.

    \b
    Examples:
      preflight init -d /srv/models -o lanes.yaml --lock
      preflight init hf://Qwen/Qwen2.5-0.5B-Instruct 's3://models/embed/' -o lanes.yaml
      preflight init -d /srv/models hf://org/coder@main      # adopt, and say where vllm/coder comes from
    """
    from . import init as I
    from .manifest import load_manifest

    if not sources and not models_dir:
        raise UsageError("nothing to start from: give --models-dir (an existing models folder) and/or sources",
                         hint="preflight init -d /srv/models   or   preflight init hf://ORG/REPO")
    out = Path(output).absolute()
    found: list = []
    skipped: list[str] = []
    root: Path | None = None
    if models_dir:
        root = Path(models_dir).absolute()
        if not root.is_dir():
            raise UsageError(f"{models_dir}: not a folder")
        if out == root or root in out.parents:
            raise UsageError(f"{output} is inside the models folder {root}, which init leaves as it is",
                             hint="write the manifest elsewhere (-o), e.g. beside your compose file or ConfigMap")
        found, skipped = I.scan(root)
        if any(f.lane.path == "." for f in found):  # the folder is itself a cache root: lanes live one level up
            top = root.name
            root = root.parent
            found = [replace_path(f, top) for f in found]
            skipped = [f"{top}/{s}" for s in skipped]
    adopted = {f.lane.name for f in found}
    found = I.from_sources(list(sources), found)
    if root is not None:
        I.settle(root, [f for f in found if f.lane.name in adopted])
    if not found:
        raise UsageError(f"no lanes found in {models_dir}" if models_dir else "no lanes", hint="; ".join(skipped[:3]) or None)
    lock_path = None
    if with_lock:
        lock_path = out.parent / (out.stem + ".lock.json")
        if lock_path.exists() and not force:
            raise UsageError(f"{lock_path} exists; not overwritten", hint="pass --force")
    origin = f"from {root}" if root is not None else "from sources"
    models = str(root) if root is not None else "${MODELS_PATH:-/models}"
    text = I.render(models, found, skipped, lock_path.name if lock_path else None, origin)
    I.write(out, text, force)
    manifest = load_manifest(out)  # what we wrote must read back as written
    if lock_path is not None:
        assert root is not None or not adopted
        if root is not None:
            lock = I.adopted_lock(root, [f for f in found if f.lane.name in adopted], lock_path)
            lock.save()
        from_sources = [f.lane.name for f in found if f.lane.source is not None and f.lane.kind != "hf-cache"]
        if from_sources:
            from .cli_sync import _readable
            from .locking import make_lock

            if token_file:
                _readable(token_file)
            make_lock(str(out), None, "json", tuple(from_sources), token_file)
        assert manifest.lock_path == lock_path
    code = ExitCode.READY
    if root is not None:
        code = _verify(manifest, lock_path, adopted, found)
    kinds = sorted({f.lane.kind for f in found})
    click.echo(f"preflight init: wrote {out} ({len(found)} lanes: {', '.join(kinds)})" + (f" and {lock_path}" if lock_path else "")
               + (f"; not adopted: {len(skipped)} (listed at its end)" if skipped else ""), err=True)
    return code


def replace_path(f, top: str):
    f.lane = replace(f.lane, path=top if f.lane.path == "." else f"{top}/{f.lane.path}")
    return f


def _verify(manifest, lock_path: Path | None, adopted: set[str], found: list | None = None) -> int:
    """`check` of the adopted lanes as written (in memory: nothing is written to the volume)."""
    from .check import Context, check_lanes
    from .integrity import Receipts
    from .lockfile import load_lock

    lock = load_lock(lock_path) if lock_path is not None else None
    root = Path(os.path.expandvars(manifest.models_dir))
    lanes = [lane for lane in manifest.lanes if lane.name in adopted]
    results = check_lanes(Context(manifest, root, Receipts(None), lock), lanes)
    bad = [r for r in results if r.errors]
    notes = {f.lane.name: [n for n in f.notes if n.startswith("does not pass")] for f in found or []}
    for r in bad:
        why = (notes.get(r.name) or [None])[0] or "does not pass check: " + "; ".join(f"{p.path}: {p.code}" for p in r.problems if p.is_error)
        click.echo(f"preflight init: lane {r.name} ({r.path}) {why[:400]}", err=True)
    return ExitCode.NOT_READY if bad else ExitCode.READY
