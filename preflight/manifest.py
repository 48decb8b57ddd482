"""Manifest, Lane, Source: YAML → typed objects with located errors."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .yamlloc import Located, load_yaml

KINDS = ("hf-dir", "gguf", "adapter", "hf-cache", "file")
DIR_KINDS = ("hf-dir", "adapter", "hf-cache")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_LANE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Source:
    """Where a lane's bytes come from.

    scheme: "hf" (repo, path_in_repo, revision), "https"/"http" (url), "local" (path).
    """

    scheme: str
    raw: str
    repo: str | None = None
    path_in_repo: str | None = None
    revision: str | None = None
    url: str | None = None
    local: str | None = None
    repo_type: str = "model"

    def display(self) -> str:
        return self.raw


def parse_source(raw: str, revision: str | None = None) -> Source:
    """Parse `hf://org/repo[/path]@rev`, `https://…`, `file://…` or a path."""
    raw = raw.strip()
    if raw.startswith("hf://"):
        rest = raw[len("hf://") :]
        rev = None
        if "@" in rest:
            rest, rev = rest.rsplit("@", 1)
            if not rev:
                raise ValueError("empty revision after '@'")
        repo_type = "model"
        parts = [p for p in rest.split("/") if p]
        if parts and parts[0] in ("datasets", "models") and len(parts) >= 3:
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            parts = parts[1:]
        if len(parts) < 2:
            raise ValueError("expected hf://ORG/REPO[/path/in/repo][@revision]")
        if any(p in (".", "..") for p in parts):
            raise ValueError("'.' and '..' are not allowed in a repo path")
        repo = "/".join(parts[:2])
        path_in_repo = "/".join(parts[2:]) or None
        if revision and rev and revision != rev:
            raise ValueError(f"revision given twice: @{rev} in source and revision: {revision}")
        return Source("hf", raw, repo=repo, path_in_repo=path_in_repo, revision=rev or revision or "main", repo_type=repo_type)
    if raw.startswith(("https://", "http://")):
        return Source(raw.split(":", 1)[0], raw, url=raw)
    if raw.startswith("file://"):
        return Source("local", raw, local=raw[len("file://") :])
    if "://" in raw:
        scheme = raw.split("://", 1)[0]
        raise ValueError(f"unsupported source scheme {scheme}:// (supported: hf://, https://, http://, file://, a path)")
    return Source("local", raw, local=raw)


@dataclass(frozen=True)
class FileExpect:
    """What the manifest or lock says a file must be."""

    size: int | None = None
    sha256: str | None = None
    sha1: str | None = None  # git blob sha1 (small files on the Hub)
    md5: str | None = None  # DVC-tracked files

    def merge(self, other: FileExpect | None) -> FileExpect:
        if other is None:
            return self
        return FileExpect(self.size if self.size is not None else other.size, self.sha256 or other.sha256, self.sha1 or other.sha1, self.md5 or other.md5)


@dataclass(frozen=True)
class Lane:
    name: str
    kind: str
    path: str  # relative to models_dir, normalised, never escaping it
    source: Source | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    files: Mapping[str, FileExpect] = field(default_factory=dict)
    required: bool = True
    enabled: bool = True
    profiles: tuple[str, ...] = ()
    allow_pickle: bool = False
    serves_text: bool = True
    base: str | None = None  # adapter: name of the base lane
    checksums: str | None = None  # a `sha256sum -c` file (relative to the manifest or absolute)
    dvc: str | None = None  # a `.dvc` file pinning the content
    env: str | None = None  # variable `preflight env` sets to the lane's path
    line: int | None = None

    @property
    def revision(self) -> str | None:
        return self.source.revision if self.source else None

    @property
    def is_dir(self) -> bool:
        return self.kind in DIR_KINDS


@dataclass(frozen=True)
class Manifest:
    file: str
    version: int
    models_dir: str
    lanes: tuple[Lane, ...]
    profiles: Mapping[str, tuple[str, ...]]
    endpoints: tuple[Mapping[str, Any], ...] = ()
    lock: str | None = None

    def lane(self, name: str) -> Lane:
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise KeyError(name)

    def select(self, profile: str | None = None, names: tuple[str, ...] = ()) -> list[Lane]:
        """Lanes to act on: a profile's lanes, or named lanes, or every enabled lane."""
        known = {lane.name for lane in self.lanes}
        for n in names:
            if n not in known:
                raise ManifestError(f"no lane named {n!r} (lanes: {', '.join(sorted(known))})", file=self.file)
        wanted: set[str] | None = None
        if profile:
            if profile not in self.profiles:
                members = [lane.name for lane in self.lanes if profile in lane.profiles]
                if not members:
                    listed = ", ".join(sorted(set(self.profiles) | {p for lane in self.lanes for p in lane.profiles})) or "none"
                    raise ManifestError(f"no profile named {profile!r} (profiles: {listed})", file=self.file)
                wanted = set(members)
            else:
                wanted = set(self.profiles[profile]) | {lane.name for lane in self.lanes if profile in lane.profiles}
        if names:
            wanted = set(names) if wanted is None else wanted & set(names)
        out = []
        for lane in self.lanes:
            if wanted is not None:
                if lane.name in wanted:
                    out.append(lane)
            elif lane.enabled:
                out.append(lane)
        return out


_TOP_KEYS = {"version", "models_dir", "defaults", "profiles", "lanes", "endpoints", "lock"}
_LANE_KEYS = {
    "name", "kind", "path", "source", "revision", "include", "exclude", "files", "sha256", "sha1", "size",
    "required", "enabled", "profiles", "allow_pickle", "serves_text", "base", "checksums", "dvc", "endpoint", "env",
}
_DEFAULT_KEYS = {"revision", "include", "exclude", "required", "allow_pickle", "serves_text"}


def _type_name(t: type | tuple) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a mapping"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


class _Reader:
    def __init__(self, doc: Located) -> None:
        self.doc = doc

    def get(self, obj: Mapping, key: tuple, name: str, typ: type | tuple, default: Any = None, required: bool = False) -> Any:
        if name not in obj or obj[name] is None:
            if required:
                raise self.doc.error(key, f"missing required field {name!r}")
            return default
        value = obj[name]
        ok = isinstance(value, typ) and not (typ in (int, (int,)) and isinstance(value, bool))
        if not ok:
            raise self.doc.error(key + (name,), f"expected {_type_name(typ)}, found {type(value).__name__} {value!r}")
        return value

    def strings(self, obj: Mapping, key: tuple, name: str, default: tuple = ()) -> tuple[str, ...]:
        value = obj.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.doc.error(key + (name,), f"expected a list of strings, found {value!r}")
        return tuple(value)

    def unknown(self, obj: Mapping, key: tuple, allowed: set[str], what: str) -> None:
        for k in obj:
            if k not in allowed:
                close = _close_match(k, allowed)
                raise self.doc.error(
                    key + (k,),
                    f"unknown {what} key {k!r}" + (f" (did you mean {close!r}?)" if close else ""),
                    hint=f"allowed: {', '.join(sorted(allowed))}",
                )


def _close_match(word: str, options: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.7)
    return found[0] if found else None


def normalise_rel(path: str) -> str | None:
    """A relative POSIX path inside its root, or None when it escapes or is absolute."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        return None
    return norm


def _expect(r: _Reader, obj: Any, key: tuple) -> FileExpect:
    if not isinstance(obj, dict):
        raise r.doc.error(key, f"expected a mapping with sha256/sha1/size, found {obj!r}")
    r.unknown(obj, key, {"sha256", "sha1", "size"}, "file")
    size = r.get(obj, key, "size", int)
    if size is not None and size < 0:
        raise r.doc.error(key + ("size",), f"size must be >= 0, found {size}")
    sha256 = r.get(obj, key, "sha256", str)
    if sha256 is not None:
        sha256 = sha256.lower().removeprefix("sha256:")
        if not _HEX64.match(sha256):
            raise r.doc.error(key + ("sha256",), f"expected 64 hex digits, found {sha256!r}")
    sha1 = r.get(obj, key, "sha1", str)
    if sha1 is not None:
        sha1 = sha1.lower()
        if not _HEX40.match(sha1):
            raise r.doc.error(key + ("sha1",), f"expected 40 hex digits (git blob sha1), found {sha1!r}")
    return FileExpect(size, sha256, sha1)


def parse_manifest(doc: Located) -> Manifest:
    r = _Reader(doc)
    top = doc.value
    if top is None:
        raise doc.error((), "the manifest is empty", hint="see README.md, 'Manifest reference'")
    if not isinstance(top, dict):
        raise doc.error((), f"expected a mapping at the top level, found {type(top).__name__}")
    r.unknown(top, (), _TOP_KEYS, "top-level")
    version = r.get(top, (), "version", int, default=1)
    if version != 1:
        raise doc.error(("version",), f"unsupported manifest version {version} (this preflight reads version 1)")
    models_dir = r.get(top, (), "models_dir", str, default="/models")
    defaults = r.get(top, (), "defaults", dict, default={})
    r.unknown(defaults, ("defaults",), _DEFAULT_KEYS, "defaults")
    profiles_raw = r.get(top, (), "profiles", dict, default={})
    lanes_raw = r.get(top, (), "lanes", list, required=True)
    if not lanes_raw:
        raise doc.error(("lanes",), "no lanes: a manifest needs at least one lane")
    lanes: list[Lane] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(lanes_raw):
        key = ("lanes", i)
        if not isinstance(raw, dict):
            raise doc.error(key, f"expected a lane mapping, found {raw!r}")
        lane = _parse_lane(r, raw, key, defaults)
        if lane.name in seen:
            raise doc.error(key + ("name",), f"duplicate lane name {lane.name!r} (first at line {seen[lane.name]})")
        seen[lane.name] = doc.line(*key) or 0
        lanes.append(lane)
    names = set(seen)
    profiles: dict[str, tuple[str, ...]] = {}
    for pname, members in profiles_raw.items():
        key = ("profiles", pname)
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise doc.error(key, f"expected a list of lane names, found {members!r}")
        for j, m in enumerate(members):
            if m not in names:
                raise doc.error(key + (j,), f"profile {pname!r} names unknown lane {m!r}")
        profiles[pname] = tuple(members)
    by_name = {lane.name: lane for lane in lanes}
    for i, lane in enumerate(lanes):
        if lane.base is not None:
            if lane.base not in by_name:
                raise doc.error(("lanes", i, "base"), f"base lane {lane.base!r} is not defined")
            if lane.base == lane.name:
                raise doc.error(("lanes", i, "base"), "a lane cannot be its own base")
    _check_overlaps(doc, lanes)
    endpoints = r.get(top, (), "endpoints", list, default=[])
    for i, lane_raw in enumerate(lanes_raw):
        ep = lane_raw.get("endpoint")
        if ep is not None:
            if not isinstance(ep, dict):
                raise doc.error(("lanes", i, "endpoint"), f"expected a mapping {{kind, url, model}}, found {ep!r}")
            endpoints = [*endpoints, {"name": lanes[i].name, "lane": lanes[i].name, **ep}]
    lock = r.get(top, (), "lock", str)
    return Manifest(doc.file, version, models_dir, tuple(lanes), profiles, tuple(endpoints), lock)


def _parse_lane(r: _Reader, raw: dict, key: tuple, defaults: Mapping) -> Lane:
    doc = r.doc
    r.unknown(raw, key, _LANE_KEYS, "lane")
    name = r.get(raw, key, "name", str, required=True)
    if not _LANE_NAME.match(name):
        raise doc.error(key + ("name",), f"lane name {name!r} must be letters, digits, '-', '_' or '.'")
    kind = r.get(raw, key, "kind", str, required=True)
    if kind not in KINDS:
        close = _close_match(kind, set(KINDS))
        raise doc.error(key + ("kind",), f"unknown kind {kind!r}" + (f" (did you mean {close!r}?)" if close else ""), hint=f"kinds: {', '.join(KINDS)}")
    path_raw = r.get(raw, key, "path", str, required=True)
    path = normalise_rel(path_raw)
    if path is None or path == ".":
        raise doc.error(key + ("path",), f"path {path_raw!r} must be relative and stay inside models_dir", hint="path-escape")
    revision = r.get(raw, key, "revision", str)
    source = None
    src_raw = r.get(raw, key, "source", str)
    if src_raw is not None:
        try:
            # a default revision yields to an explicit `@rev` in the source; the lane's own `revision:` must agree with it
            pinned = "@" in src_raw.strip().removeprefix("hf://")
            source = parse_source(src_raw, revision or (None if pinned else defaults.get("revision")))
        except ValueError as exc:
            raise doc.error(key + ("source",), f"bad source {src_raw!r}: {exc}") from None
    files: dict[str, FileExpect] = {}
    files_raw = r.get(raw, key, "files", dict, default={})
    for rel, exp in files_raw.items():
        norm = normalise_rel(rel)
        if norm is None:
            raise doc.error(key + ("files", rel), f"file path {rel!r} must be relative and stay inside the lane", hint="path-escape")
        files[norm] = _expect(r, exp if exp is not None else {}, key + ("files", rel))
    direct = {k: raw[k] for k in ("sha256", "sha1", "size") if k in raw}
    if direct:
        if kind in ("hf-dir", "adapter", "hf-cache"):
            raise doc.error(key + (next(iter(direct)),), f"a {kind} lane is a folder: give digests per file under 'files:'")
        files[posixpath.basename(path)] = _expect(r, direct, key).merge(files.get(posixpath.basename(path)))
    required = r.get(raw, key, "required", bool, default=defaults.get("required", True))
    enabled = r.get(raw, key, "enabled", bool, default=True)
    allow_pickle = r.get(raw, key, "allow_pickle", bool, default=defaults.get("allow_pickle", False))
    serves_text = r.get(raw, key, "serves_text", bool, default=defaults.get("serves_text", True))
    include = r.strings(raw, key, "include", tuple(defaults.get("include") or ()))
    exclude = r.strings(raw, key, "exclude", tuple(defaults.get("exclude") or ()))
    profiles = r.strings(raw, key, "profiles")
    base = r.get(raw, key, "base", str)
    if base is not None and kind != "adapter":
        raise doc.error(key + ("base",), f"'base' applies to adapter lanes, not {kind}")
    if source is not None and source.scheme in ("https", "http") and kind not in DIR_KINDS:
        fname = posixpath.basename(path)
        if not files.get(fname, FileExpect()).sha256 and not r.get(raw, key, "checksums", str) and not r.get(raw, key, "dvc", str):
            raise doc.error(
                key + ("source",),
                "a URL source needs the file's sha256 (plain URLs carry no digest to verify against)",
                hint="add `sha256: <64 hex>` to the lane, or run `preflight lock` against a trusted copy",
            )
    if kind == "hf-cache" and (source is None or source.scheme != "hf"):
        raise doc.error(key + ("source",), "an hf-cache lane needs an hf:// source (the repo whose cache entry it is)")
    return Lane(
        name=name, kind=kind, path=path, source=source, include=include, exclude=exclude, files=files,
        required=required, enabled=enabled, profiles=profiles, allow_pickle=allow_pickle, serves_text=serves_text,
        base=base, checksums=r.get(raw, key, "checksums", str), dvc=r.get(raw, key, "dvc", str), env=r.get(raw, key, "env", str), line=doc.line(*key),
    )


def _check_overlaps(doc: Located, lanes: list[Lane]) -> None:
    """Two lanes writing the same file would fight; nested hf-cache roots are fine."""
    for i, a in enumerate(lanes):
        for b in lanes[i + 1 :]:
            if a.kind == b.kind == "hf-cache":
                continue
            if a.path == b.path or (a.is_dir and b.path.startswith(a.path + "/")) or (b.is_dir and a.path.startswith(b.path + "/")):
                line = doc.line("lanes", lanes.index(b))
                raise ManifestError(f"lanes {a.name!r} and {b.name!r} overlap ({a.path} / {b.path})", file=doc.file, line=line, field="path")


def load_manifest(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Manifest:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError("manifest not found", file=str(p), hint="pass --manifest FILE or set PREFLIGHT_MANIFEST") from None
    except IsADirectoryError:
        raise ManifestError("manifest path is a folder, expected a YAML file", file=str(p)) from None
    except UnicodeDecodeError:
        raise ManifestError("manifest is not UTF-8 text", file=str(p)) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}", file=str(p)) from None
    return parse_manifest(load_yaml(text, str(p), env))
