"""Folder lanes as revisions: a reader sees one complete revision or the next, never a mix.

The lane path (what the inference server is configured with) is a symlink to a sibling
folder that holds one revision:

    vllm/coder -> .coder.rev-3f2a9c1b0d4e      (the current revision)
    vllm/.coder.rev-3f2a9c1b0d4e/…              (complete, verified)
    vllm/.coder.rev-a91c07d2e5f8/…              (the previous one, kept until `prune`)

A new revision is assembled beside the current one: files that did not change are
hard-linked from it (no copy, no new space), only changed files are fetched into it,
the whole lane is verified there, then one symlink replaces the old one (`rename` of a
new link over it). A lane still laid out in place (a real folder) is converted on its
first switch by exchanging it with the new link in one step (`renameat2`
RENAME_EXCHANGE); the old folder becomes a kept revision. `layout: in-place` keeps the
old behaviour (files replaced one by one inside the folder).

The git-sync pattern, applied to model folders. The cache layout (hf-cache lanes)
already has revisions: a snapshot per commit, switched by `refs/<revision>`, which sync
writes only once the snapshot is complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
import time
from pathlib import Path

from .manifest import FileExpect, Lane
from .record import record
from .volume import Volume

REV = ".rev-"
LINK_TMP = ".lnk-"


def rev_prefix(lane_path: str) -> str:
    return f".{posixpath.basename(lane_path)}{REV}"


def rev_id(version: str | None, expect: dict[str, FileExpect]) -> str:
    """A short, stable name for what the lane holds: the source's version (a commit, a
    manifest digest) when it has one, else a digest of every file's expectations."""
    if version:
        return version.removeprefix("sha256:")[:12]
    h = hashlib.sha256()
    for rel in sorted(expect):
        e = expect[rel]
        h.update(repr((rel, e.size, e.sha256, e.sha1, e.md5) + ((e.crc32c,) if e.crc32c else ())).encode())
    return "x" + h.hexdigest()[:11]


def rev_path(lane: Lane, rid: str) -> str:
    """The models-relative path of revision `rid` of `lane`."""
    parent = posixpath.dirname(lane.path)
    return posixpath.join(parent, rev_prefix(lane.path) + rid) if parent else rev_prefix(lane.path) + rid


@record
class Current:
    """What stands at the lane path now."""

    state: str  # "missing", "revision" (our symlink), "folder" (in place), "other"
    rid: str | None = None  # the revision a symlink points at


def current(models_dir: Path, lane: Lane) -> Current:
    """Read through the door: a folder on the way that links out of the volume raises
    PathEscape (nothing outside is looked at)."""
    vol = Volume(models_dir)
    st = vol.lstat(lane.path)
    if st is None:
        return Current("missing")
    if stat.S_ISLNK(st.st_mode):
        target = vol.read_link(lane.path) or ""
        prefix = rev_prefix(lane.path)
        if "/" not in target and target.startswith(prefix):
            return Current("revision", target[len(prefix):])
        return Current("other")
    return Current("folder" if stat.S_ISDIR(st.st_mode) else "other")


@record
class Revision:
    rid: str
    path: Path
    mtime: float
    current: bool


def revisions(models_dir: Path, lane: Lane) -> list[Revision]:
    """The lane's revision folders, newest first (the current one flagged). Listed through
    the door: PathEscape when the lane's folder leads out of the volume."""
    parent = posixpath.dirname(lane.path)
    prefix = rev_prefix(lane.path)
    cur = current(models_dir, lane)
    out = []
    for name, st in Volume(models_dir).entries(parent):
        if name.startswith(prefix) and stat.S_ISDIR(st.st_mode):
            rid = name[len(prefix):]
            out.append(Revision(rid, models_dir / parent / name, st.st_mtime, cur.state == "revision" and cur.rid == rid))
    out.sort(key=lambda r: (not r.current, -r.mtime))
    return out


def link_unchanged(vol: Volume, old_root: Path, new_rel: str, names: list[str], keys: "ReceiptKeys") -> int:
    """Hard-link into revision folder `new_rel` every file of `names` that the current
    tree at `old_root` has and the new folder lacks. Receipts follow the links (the
    inode is the same; its ctime moved), so nothing is hashed again. Whether a linked
    file is what the new revision wants is then judged like any other file: a changed
    one fails its digest and is fetched over the link, which leaves the old tree alone.
    Returns how many were linked; OSError when the filesystem cannot link."""
    linked = 0
    old_rel = vol.rel_of(old_root)
    for rel in names:
        src = f"{old_rel}/{rel}" if old_rel else rel
        st = vol.lstat(src)  # walked as every write is: a link out of the volume on the way is refused
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        dst = f"{new_rel}/{rel}"
        if vol.lstat(dst) is not None:
            continue  # already there (a rerun after a kill)
        new_st = vol.make_hardlink(src, dst)
        keys.carry(old_root / rel, st, vol.path / new_rel / rel, new_st)
        linked += 1
    return linked


class ReceiptKeys:
    """Receipts carried from a file to its hard link (and refreshed on the old name,
    whose ctime the link moved)."""

    def __init__(self, receipts, key_of) -> None:
        self.receipts = receipts
        self.key_of = key_of

    def carry(self, old: Path, old_st: os.stat_result, new: Path, new_st: os.stat_result) -> None:
        old_key = self.key_of(old)
        digests = self.receipts.lookup(old_key, old_st)
        if digests:
            self.receipts.record(old_key, new_st, digests)
            self.receipts.record(self.key_of(new), new_st, digests)


def flip(vol: Volume, lane: Lane, rid: str, old_rid: str | None = None) -> str | None:
    """Make revision `rid` current: one new symlink replaces what stands at the lane path.
    A real folder there (the in-place layout) is exchanged with the link in one step and
    kept as revision `old_rid`. Returns a note when the exchange had to be done in two
    steps (a moment without the lane path, never a mix)."""
    parent, _, name = lane.path.rpartition("/")
    target = rev_prefix(lane.path) + rid
    here = vol.sub(parent)
    note = None
    _clean_tmp(here, name)
    tmp = f".{name}{LINK_TMP}{os.getpid()}"
    here.make_symlink(tmp, target, replace=False)
    st = here.lstat(name)
    if st is None or stat.S_ISLNK(st.st_mode):
        here.move(tmp, name)
    elif stat.S_ISDIR(st.st_mode):
        kept = rev_prefix(lane.path) + (old_rid or time.strftime("inplace-%Y%m%d%H%M%S"))
        try:
            here.swap(tmp, name)  # now `name` is the link and `tmp` the old folder
            here.move(tmp, kept)
        except OSError as exc:
            here.move(name, kept)
            here.move(tmp, name)
            note = f"{lane.path}: converted to revisions in two renames ({exc.strerror}): the path was absent for a moment"
    else:
        here.remove_file(tmp)
        raise OSError(errno.EEXIST, f"{lane.path} is neither a folder nor a symlink")
    here.fsync_dir()
    return note


def _clean_tmp(here: Volume, name: str) -> None:
    """Leftovers of a flip killed midway: a temporary link, or the old folder parked
    under the temporary name after the exchange (kept as a revision)."""
    prefix = f".{name}{LINK_TMP}"
    for entry, st in here.entries():
        if not entry.startswith(prefix):
            continue
        if stat.S_ISLNK(st.st_mode):
            here.remove_file(entry)
        elif stat.S_ISDIR(st.st_mode):
            here.move(entry, f".{name}{REV}{time.strftime('inplace-%Y%m%d%H%M%S')}")
