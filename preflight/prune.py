"""What the volume holds that nothing needs, and what each lane takes: `prune` and `status`.

Removable, in the order `prune --dry-run` lists them:
- revisions of a folder lane older than the `--keep` newest (the current one always kept);
- snapshots of a cache lane older than the `--keep` newest (those a ref names always
  kept), then blobs no remaining snapshot links to;
- staging partials (prune holds the volume lease, so their writer is gone);
- with `--unselected`: files under a lane folder that its include/exclude no longer select.

Space freed counts a hard-linked file once, and only when every one of its links goes:
revisions share their unchanged files, so dropping an old revision frees only what
changed since.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .check import Context, discover, lane_root, real_key_root, repo_folder, selected
from .manifest import Lane
from .revisions import current, revisions


@dataclass
class Item:
    path: Path
    what: str  # revision | snapshot | blob | partial | unselected
    lane: str | None
    why: str
    freed: int = 0  # filled by `measure`

    def to_dict(self) -> dict:
        return {"path": str(self.path), "what": self.what, "lane": self.lane, "why": self.why, "bytes": self.freed}


def plan(ctx: Context, lanes: Iterable[Lane], state_dir: Path | None, *, keep: int, unselected: bool) -> list[Item]:
    items: list[Item] = []
    for lane in lanes:
        if lane.kind in ("hf-dir", "adapter"):
            items += _old_revisions(ctx, lane, keep)
            if unselected and (lane.include or lane.exclude):
                root = lane_root(ctx, lane)
                for rel in discover(root):
                    if not selected(rel, lane):
                        items.append(Item(root / rel, "unselected", lane.name, f"{rel} is no longer selected by the lane's include/exclude"))
        elif lane.kind == "hf-cache" and lane.source is not None and lane.source.repo:
            items += _old_snapshots(ctx, lane, keep)
    if state_dir is not None and (state_dir / "staging").is_dir():
        for entry in os.scandir(state_dir / "staging"):
            if entry.is_file(follow_symlinks=False):
                items.append(Item(Path(entry.path), "partial", None, "a download no writer is resuming"))
    measure(items)
    return items


def _old_revisions(ctx: Context, lane: Lane, keep: int) -> list[Item]:
    revs = revisions(ctx.models_dir, lane)
    kept = [r for r in revs if r.current]
    for r in revs:
        if len(kept) >= max(keep, 1):
            break
        if not r.current:
            kept.append(r)
    return [Item(r.path, "revision", lane.name, f"revision {r.rid}, older than the {max(keep, 1)} kept") for r in revs if r not in kept]


def _old_snapshots(ctx: Context, lane: Lane, keep: int) -> list[Item]:
    assert lane.source is not None and lane.source.repo
    repo = lane_root(ctx, lane) / repo_folder(lane.source.repo, lane.source.repo_type)
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return []
    named = set()
    refs = repo / "refs"
    if refs.is_dir():
        for dirpath, _dirs, files in os.walk(refs):
            for f in files:
                try:
                    named.add((Path(dirpath) / f).read_text().strip())
                except (OSError, UnicodeDecodeError):
                    pass
    entries = sorted((e for e in os.scandir(snaps) if e.is_dir(follow_symlinks=False)),
                     key=lambda e: -e.stat(follow_symlinks=False).st_mtime)
    kept = [e.name for e in entries if e.name in named]
    for e in entries:
        if len(kept) >= max(keep, 1):
            break
        if e.name not in kept:
            kept.append(e.name)
    items = [Item(Path(e.path), "snapshot", lane.name, f"snapshot {e.name[:12]}, older than the {max(keep, 1)} kept")
             for e in entries if e.name not in kept]
    used: set[str] = set()
    for name in kept:
        for dirpath, _dirs, files in os.walk(snaps / name):
            for f in files:
                target = os.path.realpath(os.path.join(dirpath, f))
                used.add(os.path.basename(target))
    blobs = repo / "blobs"
    if blobs.is_dir():
        for e in os.scandir(blobs):
            if e.is_file(follow_symlinks=False) and e.name not in used:
                items.append(Item(Path(e.path), "blob", lane.name, "a blob no kept snapshot links to"))
    return items


def _files(path: Path) -> Iterable[os.stat_result]:
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                try:
                    yield os.lstat(os.path.join(dirpath, f))
                except OSError:
                    pass
    else:
        yield st


def measure(items: list[Item]) -> None:
    """Bytes each item frees: a file counts only when all its links are removed."""
    links: dict[tuple[int, int], int] = {}
    for item in items:
        for st in _files(item.path):
            links[(st.st_dev, st.st_ino)] = links.get((st.st_dev, st.st_ino), 0) + 1
    counted: set[tuple[int, int]] = set()
    for item in items:
        item.freed = 0
        for st in _files(item.path):
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and key not in counted and links[key] >= st.st_nlink:
                counted.add(key)
                item.freed += st.st_blocks * 512 if st.st_blocks else st.st_size


def remove(items: list[Item]) -> int:
    freed = 0
    for item in items:
        try:
            if item.path.is_dir() and not item.path.is_symlink():
                shutil.rmtree(item.path)
            else:
                os.unlink(item.path)
            freed += item.freed
        except FileNotFoundError:
            pass
    return freed


# --------------------------------------------------------------------------- status


@dataclass
class LaneStatus:
    name: str
    kind: str
    path: str
    revision: str | None
    layout: str  # revisions | in-place | cache | file | missing
    bytes_on_disk: int = 0  # hard links counted once
    last_verified: str | None = None
    kept_revisions: list[str] = field(default_factory=list)
    prune_frees: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def lane_status(ctx: Context, lane: Lane, items: list[Item]) -> LaneStatus:
    root = lane_root(ctx, lane)
    cur = current(ctx.models_dir, lane)
    if lane.kind in ("hf-dir", "adapter"):
        layout = {"revision": "revisions", "folder": "in-place", "missing": "missing"}.get(cur.state, "other")
        rev = cur.rid
        kept = [r.rid for r in revisions(ctx.models_dir, lane) if not r.current]
    elif lane.kind == "hf-cache":
        layout, rev, kept = "cache", None, []
        if lane.source is not None and lane.source.repo:
            repo = root / repo_folder(lane.source.repo, lane.source.repo_type)
            try:
                rev = (repo / "refs" / (lane.revision or "main")).read_text().strip()[:12]
            except (OSError, UnicodeDecodeError):
                rev = None
            snaps = repo / "snapshots"
            kept = sorted(p.name[:12] for p in snaps.iterdir() if p.name[:12] != rev) if snaps.is_dir() else []
    else:
        layout, rev, kept = ("file" if os.path.lexists(ctx.models_dir / lane.path) else "missing"), None, []
    size = 0
    seen: set[tuple[int, int]] = set()
    where = root if lane.is_dir else ctx.models_dir / lane.path
    for st in _files(Path(os.path.realpath(where))) if os.path.exists(where) else []:
        key = (st.st_dev, st.st_ino)
        if key not in seen and stat.S_ISREG(st.st_mode):
            seen.add(key)
            size += st.st_size
    verified = None
    if os.path.exists(where):
        base = real_key_root(where if lane.is_dir else where.parent, ctx.models_dir)
        keys = ctx.receipts.under(base) if lane.is_dir else [f"{base}/{where.name}" if base != "." else where.name]
        stamps = [ctx.receipts.verified_at(k) for k in keys]
        verified = max((s for s in stamps if s), default=None)
    frees = sum(i.freed for i in items if i.lane == lane.name)
    return LaneStatus(lane.name, lane.kind, lane.path, rev, layout, size, verified, kept, frees)
