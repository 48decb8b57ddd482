"""What the volume holds that nothing needs, and what each lane takes: `prune` and `status`.

Removable, in the order `prune --dry-run` lists them:
- revisions of a folder lane older than the `--keep` newest (the current one always kept);
- snapshots of a cache lane older than the `--keep` newest (those a ref names always
  kept), then blobs no remaining snapshot links to;
- staging partials (prune holds the volume lease, so their writer is gone);
- with `--unselected`: files under a lane folder that its include/exclude no longer select.

Everything is listed and removed through the door (`volume.Volume`): folders are walked
from the models folder's descriptor and never through a link that leads out of it, a
link found among the items is removed itself (never what it points at), and removal
walks again at the time it runs, so a link swapped in between the listing and the
removal changes nothing outside the volume. A lane whose folders lead out of the
volume is not pruned at all; the refusal is said, with the link named.

Space freed counts a hard-linked file once, and only when every one of its links goes:
revisions share their unchanged files, so dropping an old revision frees only what
changed since.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import field
from pathlib import Path

from .check import SKIP_DIRS, Context, real_key_root, repo_folder, selected
from .errors import NotReadyError
from .manifest import Lane
from .record import record
from .revisions import current, revisions
from .volume import Volume, state_volume


@record
class Item:
    vol: Volume  # removed through this door
    rel: str  # relative to vol's folder
    what: str  # revision | snapshot | blob | partial | unselected
    lane: str | None
    why: str
    is_dir: bool = False
    freed: int = 0  # filled by `measure`

    @property
    def path(self) -> Path:
        return self.vol.path / self.rel

    def to_dict(self) -> dict:
        return {"path": str(self.path), "what": self.what, "lane": self.lane, "why": self.why, "bytes": self.freed}


@record
class Plan:
    items: list[Item] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # what was not pruned, and why (a link out of the volume)


def plan(ctx: Context, lanes: Iterable[Lane], state_dir: Path | None, *, keep: int, unselected: bool) -> Plan:
    out = Plan()
    vol = Volume(ctx.models_dir)
    for lane in lanes:
        try:
            if lane.kind in ("hf-dir", "adapter"):
                out.items += _old_revisions(ctx, vol, lane, keep)
                if unselected and (lane.include or lane.exclude):
                    out.items += _unselected(vol, lane)
            elif lane.kind == "hf-cache" and lane.source is not None and lane.source.repo:
                out.items += _old_snapshots(vol, lane, keep)
        except NotReadyError as exc:  # PathEscape, or a file where a folder should be
            out.refused.append(f"lane {lane.name}: nothing pruned: {exc}")
    if state_dir is not None and ctx.models_dir.is_dir():
        try:
            svol = state_volume(ctx.models_dir, state_dir, create=False)
            for name, st in svol.entries("staging"):
                if stat.S_ISREG(st.st_mode):
                    out.items.append(Item(svol, f"staging/{name}", "partial", None, "a download no writer is resuming"))
        except FileNotFoundError:
            pass
        except NotReadyError as exc:
            out.refused.append(f"staging: nothing pruned: {exc}")
    measure(out.items)
    return out


def _old_revisions(ctx: Context, vol: Volume, lane: Lane, keep: int) -> list[Item]:
    revs = revisions(ctx.models_dir, lane)
    kept = [r for r in revs if r.current]
    for r in revs:
        if len(kept) >= max(keep, 1):
            break
        if not r.current:
            kept.append(r)
    parent = posixpath.dirname(lane.path)
    return [Item(vol, posixpath.join(parent, r.path.name), "revision", lane.name, f"revision {r.rid}, older than the {max(keep, 1)} kept", True)
            for r in revs if r not in kept]


def _unselected(vol: Volume, lane: Lane) -> list[Item]:
    items = []
    for rel, st in _lane_files(vol, lane.path):
        if not selected(rel, lane):
            items.append(Item(vol, f"{lane.path}/{rel}", "unselected", lane.name, f"{rel} is no longer selected by the lane's include/exclude"))
    return items


def _lane_files(vol: Volume, rel: str) -> Iterator[tuple[str, object]]:
    """Files (and links) under a lane folder as `check.discover` sees them: state and VCS
    folders and our own temporary files skipped."""
    for sub, st in vol.walk(rel):
        parts = sub.split("/")
        if any(p in SKIP_DIRS or p.startswith(".preflight") for p in parts[:-1]) or stat.S_ISDIR(st.st_mode):
            continue
        name = parts[-1]
        if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".part")):
            continue
        yield sub, st


def _old_snapshots(vol: Volume, lane: Lane, keep: int) -> list[Item]:
    assert lane.source is not None and lane.source.repo
    repo = f"{lane.path}/{repo_folder(lane.source.repo, lane.source.repo_type)}"
    snaps = f"{repo}/snapshots"
    entries = [(n, st) for n, st in vol.entries(snaps) if stat.S_ISDIR(st.st_mode)]
    if not entries:
        return []
    named = set()
    for rel, st in vol.walk(f"{repo}/refs"):
        if stat.S_ISREG(st.st_mode):
            data = vol.read_bytes(f"{repo}/refs/{rel}", 4096)
            if data:
                named.add(data.decode("utf-8", "replace").strip())
    entries.sort(key=lambda e: -e[1].st_mtime)
    kept = [n for n, _st in entries if n in named]
    for n, _st in entries:
        if len(kept) >= max(keep, 1):
            break
        if n not in kept:
            kept.append(n)
    items = [Item(vol, f"{snaps}/{n}", "snapshot", lane.name, f"snapshot {n[:12]}, older than the {max(keep, 1)} kept", True)
             for n, _st in entries if n not in kept]
    used: set[str] = set()
    for name in kept:
        for rel, st in vol.walk(f"{snaps}/{name}"):
            if stat.S_ISLNK(st.st_mode):
                used.add(posixpath.basename(vol.read_link(f"{snaps}/{name}/{rel}") or ""))
            elif stat.S_ISREG(st.st_mode):
                used.add(posixpath.basename(rel))
    for n, st in vol.entries(f"{repo}/blobs"):
        if stat.S_ISREG(st.st_mode) and n not in used:
            items.append(Item(vol, f"{repo}/blobs/{n}", "blob", lane.name, "a blob no kept snapshot links to"))
    return items


def _stats(item: Item) -> Iterator:
    """The entries an item removes, with their own stat, read through the door."""
    try:
        st = item.vol.lstat(item.rel)
        if st is None:
            return
        yield st
        if stat.S_ISDIR(st.st_mode):
            for _rel, sub in item.vol.walk(item.rel):
                yield sub
    except NotReadyError:
        return


def measure(items: list[Item]) -> None:
    """Bytes each item frees: a file counts only when all its links are removed."""
    links: dict[tuple[int, int], int] = {}
    for item in items:
        for st in _stats(item):
            links[(st.st_dev, st.st_ino)] = links.get((st.st_dev, st.st_ino), 0) + 1
    counted: set[tuple[int, int]] = set()
    for item in items:
        item.freed = 0
        for st in _stats(item):
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and key not in counted and links[key] >= st.st_nlink:
                counted.add(key)
                item.freed += st.st_blocks * 512 if st.st_blocks else st.st_size


def remove(items: list[Item]) -> tuple[int, list[str]]:
    """Remove each item through the door; what changed kind since it was listed (a folder
    that became a link, a file that became a folder) is left alone and said."""
    freed = 0
    notes: list[str] = []
    for item in items:
        try:
            st = item.vol.lstat(item.rel)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode) != item.is_dir:
                notes.append(f"{item.path}: changed since it was listed (now {'a folder' if stat.S_ISDIR(st.st_mode) else 'not a folder'}); left alone")
                continue
            if item.is_dir:
                item.vol.remove_tree(item.rel)
            else:
                item.vol.remove_file(item.rel)
            freed += item.freed
        except NotReadyError as exc:
            notes.append(f"{item.path}: not removed: {exc}")
        except OSError as exc:
            notes.append(f"{item.path}: not removed: {exc.strerror or exc}")
    return freed, notes


# --------------------------------------------------------------------------- status


@record
class LaneStatus:
    name: str
    kind: str
    path: str
    revision: str | None  # the commit (digest, object version) it holds, when known; never a branch name
    layout: str  # revisions | in-place | cache | file | missing | outside
    bytes_on_disk: int = 0  # hard links counted once
    last_verified: str | None = None
    kept_revisions: list[str] = field(default_factory=list)  # older revision folders' ids (12 characters of their commit)
    prune_frees: int = 0
    revision_folder: str | None = None  # the current revision folder's id (revisions layout)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def lane_status(ctx: Context, lane: Lane, items: list[Item]) -> LaneStatus:
    vol = Volume(ctx.models_dir)
    try:
        return _lane_status(ctx, vol, lane, items)
    except NotReadyError:  # a folder on the way leads out of the volume: check reports it (path-escape)
        return LaneStatus(lane.name, lane.kind, lane.path, None, "outside")


def _lane_status(ctx: Context, vol: Volume, lane: Lane, items: list[Item]) -> LaneStatus:
    cur = current(ctx.models_dir, lane)
    folder = None
    synced = ctx.receipts.synced_at(lane.name, lane.source.raw) if lane.source else None
    if lane.kind in ("hf-dir", "adapter"):
        layout = {"revision": "revisions", "folder": "in-place", "missing": "missing"}.get(cur.state, "other")
        folder = cur.rid
        # the full commit when the receipts know it and it is the one the folder is named after
        rev = synced if synced and (cur.state != "revision" or synced.removeprefix("sha256:").startswith(cur.rid or "")) else None
        kept = [r.rid for r in revisions(ctx.models_dir, lane) if not r.current]
    elif lane.kind == "hf-cache":
        layout, rev, kept = "cache", None, []
        if lane.source is not None and lane.source.repo:
            repo = f"{lane.path}/{repo_folder(lane.source.repo, lane.source.repo_type)}"
            data = vol.read_bytes(f"{repo}/refs/{lane.revision or 'main'}", 4096)
            rev = data.decode("utf-8", "replace").strip() if data else None
            if rev is None and lane.revision and vol.lstat(f"{repo}/snapshots/{lane.revision}") is not None:
                rev = lane.revision  # pinned to a commit: no ref is written
            kept = sorted(n[:12] for n, st in vol.entries(f"{repo}/snapshots") if stat.S_ISDIR(st.st_mode) and n != rev)
    else:
        layout, rev, kept = ("file" if vol.lstat(lane.path) is not None else "missing"), synced, []
    size = 0
    seen: set[tuple[int, int]] = set()
    if lane.is_dir:
        stats = (st for _rel, st in vol.walk(lane.path))
    else:
        try:
            stats = iter([os.stat(ctx.models_dir / lane.path)])  # a file lane may be a link to its file
        except OSError:
            stats = iter([])
    for st in stats:
        key = (st.st_dev, st.st_ino)
        if key not in seen and stat.S_ISREG(st.st_mode):
            seen.add(key)
            size += st.st_size
    verified = None
    where = ctx.models_dir / lane.path
    if layout != "missing":
        base = real_key_root(where if lane.is_dir else where.parent, ctx.models_dir)
        keys = ctx.receipts.under(base) if lane.is_dir else [f"{base}/{where.name}" if base != "." else where.name]
        stamps = [ctx.receipts.verified_at(k) for k in keys]
        verified = max((s for s in stamps if s), default=None)
    frees = sum(i.freed for i in items if i.lane == lane.name)
    return LaneStatus(lane.name, lane.kind, lane.path, rev, layout, size, verified, kept, frees, folder)
