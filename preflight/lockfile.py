"""The lock file: each lane's revision resolved to a commit, each file's size and digest.

JSON (which is YAML), sorted, so diffs review well. Checking a volume against a
lock needs no network.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import field
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .record import record
from .volume import write_file_atomic
from .manifest import FileExpect, normalise_rel

LOCK_VERSION = 1
_SHA256SUM_LINE = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}) [ *](?P<path>.+)$")


@record
class LockedLane:
    name: str
    source: str | None = None
    revision: str | None = None
    commit: str | None = None
    files: dict[str, FileExpect] = field(default_factory=dict)
    fit: dict[str, Any] | None = None  # what fit needs (serving/inputs.py): sync --locked judges fit before a download, offline
    variants: dict[str, LockedLane] = field(default_factory=dict)  # the lane's variants, by name
    archive: FileExpect | None = None  # a lane filled from an archive: the archive's size and sha256 (files: its members)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source, "revision": self.revision, "commit": self.commit,
            "files": {rel: _expect_dict(e) for rel, e in sorted(self.files.items())},
        }
        if self.fit is not None:
            d["fit"] = self.fit
        if self.variants:
            d["variants"] = {n: v.to_dict() for n, v in sorted(self.variants.items())}
        if self.archive is not None:
            d["archive"] = _expect_dict(self.archive)
        return d


def _expect_dict(e: FileExpect) -> dict[str, Any]:
    return {k: v for k, v in (("size", e.size), ("sha256", e.sha256), ("sha1", e.sha1), ("generation", e.generation)) if v is not None}


@record
class Lock:
    path: str
    lanes: dict[str, LockedLane] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": LOCK_VERSION, "schema_version": LOCK_VERSION,
                           "lanes": {n: l.to_dict() for n, l in sorted(self.lanes.items())}}, indent=2, sort_keys=False) + "\n"

    def save(self) -> None:
        write_file_atomic(Path(self.path), self.to_json().encode())


def load_lock(path: str | os.PathLike) -> Lock:
    p = Path(path)
    try:
        data = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise ManifestError("lock file not found", file=str(p), hint="run `preflight lock` to create it") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"lock file is not valid JSON ({exc})", file=str(p)) from None
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(data.get("lanes"), dict):
        raise ManifestError(f"not a version-{LOCK_VERSION} lock file (expected {{'version': 1, 'lanes': {{...}}}})", file=str(p))
    lock = Lock(str(p))
    for name, raw in data["lanes"].items():
        lock.lanes[name] = _locked_lane(name, raw, str(p), f"lanes.{name}")
        variants = raw.get("variants", {})
        if not isinstance(variants, dict):
            raise ManifestError("malformed variants", file=str(p), field=f"lanes.{name}.variants")
        for vname, vraw in variants.items():
            lock.lanes[name].variants[vname] = _locked_lane(name, vraw, str(p), f"lanes.{name}.variants.{vname}")
    return lock


def _locked_lane(name: str, raw: Any, file: str, where: str) -> LockedLane:
    if not isinstance(raw, dict) or not isinstance(raw.get("files", {}), dict):
        raise ManifestError("malformed lane entry", file=file, field=where)
    files = {}
    for rel, exp in raw.get("files", {}).items():
        norm = normalise_rel(rel)
        if norm is None or not isinstance(exp, dict):
            raise ManifestError(f"bad file entry {rel!r}", file=file, field=f"{where}.files")
        size = exp.get("size")
        generation = exp.get("generation")
        if generation is not None and not (isinstance(generation, str) and generation.isdigit() and len(generation) <= 19):
            raise ManifestError(f"bad generation {str(generation)[:40]!r} for {rel!r} (expected the object generation as a string of digits)",
                                file=file, field=f"{where}.files")
        files[norm] = FileExpect(size if isinstance(size, int) else None, exp.get("sha256"), exp.get("sha1"), generation=generation,
                                 origin=f"{file} ({where}.files)")
    fit = raw.get("fit") if isinstance(raw.get("fit"), dict) else None
    archive = None
    if raw.get("archive") is not None:
        a = raw["archive"]
        if not isinstance(a, dict) or not isinstance(a.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", a["sha256"]):
            raise ManifestError("malformed archive entry (expected {size, sha256})", file=file, field=f"{where}.archive")
        archive = FileExpect(a.get("size") if isinstance(a.get("size"), int) else None, a["sha256"], origin=f"{file} ({where}.archive)")
    return LockedLane(name, raw.get("source"), raw.get("revision"), raw.get("commit"), files, fit, archive=archive)


def lock_entry(lock: Lock | None, lane) -> LockedLane | None:
    """The lock's entry for a lane, or for the variant of it that `lane` is."""
    entry = lock.lanes.get(lane.name) if lock is not None else None
    if entry is not None and getattr(lane, "variant", None):
        return entry.variants.get(lane.variant)
    return entry


def parse_sha256sum(text: str, file: str) -> dict[str, FileExpect]:
    """Read `sha256sum` output (`<hex>  <path>` or `<hex> *<path>`)."""
    out: dict[str, FileExpect] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _SHA256SUM_LINE.match(line.rstrip("\n"))
        if not m:
            raise ManifestError("expected '<64 hex>  <path>' (sha256sum format)", file=file, line=i)
        rel = normalise_rel(m["path"].removeprefix("./"))
        if rel is None:
            raise ManifestError(f"path {m['path']!r} escapes the lane folder", file=file, line=i)
        out[rel] = FileExpect(None, m["hex"].lower(), None, origin=f"{file}:{i}")
    return out


def format_sha256sum(files: dict[str, FileExpect]) -> str:
    return "".join(f"{e.sha256}  {rel}\n" for rel, e in sorted(files.items()) if e.sha256)
