"""Expected content of a lane from a DVC `.dvc` file, read without running dvc.

A `.dvc` file lists `outs`, each `{md5, size, nfiles, path}`. A file out's md5 is
the file's; a folder out's md5 ends in `.dir` and names a JSON listing
(`[{"relpath": ..., "md5": ...}, ...]`) in the DVC cache:
`.dvc/cache/files/md5/<2>/<30>` (DVC 3, outs carry `hash: md5`) or
`.dvc/cache/<2>/<30>` (DVC 2). The cache is looked for in the `.dvc/` folder of
the nearest parent of the `.dvc` file that has one.

DVC 2 hashed text files after turning CRLF into LF; such an out only matches a
file whose bytes have no CRLF. DVC 3 hashes the bytes as they are.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ManifestError
from .manifest import FileExpect, Lane, Manifest, normalise_rel

_MD5 = re.compile(r"^[0-9a-f]{32}$")


def dvc_file_path(manifest: Manifest, lane: Lane) -> Path:
    assert lane.dvc
    p = Path(lane.dvc)
    return p if p.is_absolute() else Path(manifest.file).parent / p


def dvc_expectations(manifest: Manifest, lane: Lane) -> dict[str, FileExpect]:
    """Per-file md5 (and size when known) the lane must hold, keyed relative to the lane folder.

    For a file lane the key is the file's name.
    """
    path = dvc_file_path(manifest, lane)
    where = f"lanes.{lane.name}.dvc"
    out = _pick_out(_read_outs(path, where), lane, path, where)
    md5 = str(out.get("md5") or "").lower()
    size = out.get("size") if isinstance(out.get("size"), int) else None
    if md5.endswith(".dir"):
        if not lane.is_dir:
            raise ManifestError(f"the DVC out {out['path']!r} is a folder, but lane {lane.name} is a {lane.kind} file lane", file=str(path), field=where)
        listing = _read_dir_listing(path, md5.removesuffix(".dir"), out.get("hash") == "md5", where)
        nfiles = out.get("nfiles")
        if isinstance(nfiles, int) and nfiles != len(listing):
            raise ManifestError(f"the DVC cache listing {md5} names {len(listing)} files, the .dvc file says nfiles: {nfiles}", file=str(path), field=where)
        return listing
    if not _MD5.match(md5):
        raise ManifestError(f"out {out.get('path')!r}: expected md5 to be 32 hex digits (or '<md5>.dir'), found {md5!r}", file=str(path), field=where)
    if lane.is_dir:
        raise ManifestError(f"the DVC out {out['path']!r} is a single file, but lane {lane.name} is a {lane.kind} folder lane", file=str(path), field=where)
    return {posixpath.basename(lane.path): FileExpect(size=size, md5=md5)}


def _read_outs(path: Path, where: str) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError("DVC file not found", file=str(path), field=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read DVC file: {exc}", file=str(path), field=where) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"DVC file is not valid YAML: {exc}", file=str(path), field=where) from None
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or not outs or not all(isinstance(o, dict) and isinstance(o.get("path"), str) for o in outs):
        raise ManifestError("expected `outs:` to be a list of {md5, size, path} entries", file=str(path), field=where)
    return outs


def _pick_out(outs: list[dict[str, Any]], lane: Lane, path: Path, where: str) -> dict[str, Any]:
    """The only out, or the one whose last path part is the lane's folder or file name."""
    if len(outs) == 1:
        return outs[0]
    name = posixpath.basename(lane.path)
    matches = [o for o in outs if posixpath.basename(o["path"].rstrip("/")) == name]
    if len(matches) != 1:
        names = ", ".join(o["path"] for o in outs)
        raise ManifestError(f"the DVC file has several outs ({names}); none is uniquely named {name!r} like lane {lane.name}'s path", file=str(path), field=where)
    return matches[0]


def cache_candidates(dvc_file: Path, md5: str, dvc3: bool) -> list[Path]:
    """Where the `.dir` listing may live: every `.dvc/cache` above the file, the DVC 3 layout first."""
    out: list[Path] = []
    for parent in dvc_file.resolve().parents:
        cache = parent / ".dvc" / "cache"
        if cache.is_dir():
            v3 = cache / "files" / "md5" / md5[:2] / (md5[2:] + ".dir")
            v2 = cache / md5[:2] / (md5[2:] + ".dir")
            out.extend([v3, v2] if dvc3 else [v2, v3])
    return out


def _read_dir_listing(dvc_file: Path, md5: str, dvc3: bool, where: str) -> dict[str, FileExpect]:
    if not _MD5.match(md5):
        raise ManifestError(f"expected a folder md5 of 32 hex digits + '.dir', found {md5!r}.dir", file=str(dvc_file), field=where)
    candidates = cache_candidates(dvc_file, md5, dvc3)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        looked = ", ".join(str(c) for c in candidates[:2]) or "no .dvc/cache folder above the .dvc file"
        raise ManifestError(f"the DVC cache has no listing for folder {md5}.dir (looked in: {looked})", file=str(dvc_file), field=where,
                            hint="run `dvc fetch` / `dvc pull` where the manifest lives, or commit the .dir listing next to it")
    try:
        entries = json.loads(found.read_bytes())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"DVC folder listing is not valid JSON ({exc})", file=str(found), field=where) from None
    if not isinstance(entries, list):
        raise ManifestError("expected a JSON list of {relpath, md5} entries", file=str(found), field=where)
    files: dict[str, FileExpect] = {}
    for e in entries:
        rel = normalise_rel(str(e.get("relpath", ""))) if isinstance(e, dict) else None
        md5_f = str(e.get("md5", "")).lower() if isinstance(e, dict) else ""
        if rel is None or not _MD5.match(md5_f):
            raise ManifestError(f"bad entry {e!r} (expected relpath inside the folder and a 32-hex md5)", file=str(found), field=where)
        size = e.get("size")
        files[rel] = FileExpect(size=size if isinstance(size, int) else None, md5=md5_f)
    return files
