"""Can the inference server's uid/gid read the selected lanes? Find out, and optionally fix it.

Files must be readable; folders must be readable and traversable (servers list them),
and every folder from the models folder down to a lane must be traversable.
Classic mode bits only: ACLs and supplementary groups other than `gid` are not consulted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import NotReadyError
from .manifest import Lane
from .record import record
from .volume import PathEscape, Volume

FILE_MODE = {"open": 0o644, "group": 0o640}
DIR_MODE = {"open": 0o755, "group": 0o750}


@record(frozen=True)
class Denied:
    path: Path  # absolute
    rel: str  # relative to the models folder
    is_dir: bool
    need: str  # "read" or "read+traverse" or "traverse"
    mode: int
    uid: int
    gid: int

    def describe(self) -> str:
        kind = "folder" if self.is_dir else "file"
        return f"{self.rel or '.'}: {kind} not {self.need.replace('+', ' and ').replace('read', 'readable').replace('traverse', 'traversable')} (mode {self.mode & 0o7777:04o}, owner {self.uid}:{self.gid})"


def allowed(st: os.stat_result, uid: int, gid: int, want: int) -> bool:
    """Whether `uid`/`gid` gets every bit of `want` (a mask of 4=r, 1=x) from the mode bits."""
    if uid == 0:
        return not (want & 1) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def lane_entries(models_dir: Path, lane: Lane) -> list[tuple[Path, bool]]:
    """(path, needs listing) for the folders leading to a lane and everything inside it."""
    from .check import gguf_split_names

    target = models_dir / lane.path
    out: list[tuple[Path, bool]] = []
    parts = Path(lane.path).parts
    chain = [models_dir] + [models_dir.joinpath(*parts[:i]) for i in range(1, len(parts) if not lane.is_dir else len(parts))]
    out.extend((p, False) for p in chain)
    if lane.is_dir:
        if target.is_dir():
            out.append((target, True))
            for dirpath, dirnames, filenames in os.walk(target):
                dirnames[:] = sorted(d for d in dirnames if d != ".preflight")
                out.extend((Path(dirpath) / d, True) for d in dirnames)
                out.extend((Path(dirpath) / f, False) for f in sorted(filenames))
    else:
        names = gguf_split_names(target.name) if lane.kind == "gguf" else [target.name]
        out.extend((target.parent / n, False) for n in names if (target.parent / n).exists())
    return out


def find_denied(models_dir: Path, lanes: list[Lane], uid: int, gid: int) -> list[Denied]:
    """Every entry of the lanes (and the folders above them) that `uid`/`gid` cannot use; each once."""
    seen: set[Path] = set()
    out: list[Denied] = []
    for lane in lanes:
        for path, listing in lane_entries(models_dir, lane):
            if path in seen:
                continue
            seen.add(path)
            try:
                st = os.stat(path)  # follows hf-cache snapshot links to their blobs
            except OSError:
                continue  # missing files are `check`'s business
            is_dir = stat.S_ISDIR(st.st_mode)
            want = (5 if listing else 1) if is_dir else 4
            if not allowed(st, uid, gid, want):
                need = ("read+traverse" if listing else "traverse") if is_dir else "read"
                rel = os.path.relpath(path, models_dir).replace(os.sep, "/")
                out.append(Denied(path, "" if rel == "." else rel, is_dir, need, st.st_mode, st.st_uid, st.st_gid))
    return out


def fix(models_dir: Path, denied: list[Denied], uid: int, gid: int, style: str = "open") -> list[str]:
    """Make each entry usable: "open" → owner uid:gid, 0644/0755; "group" → group gid, 0640/0750.

    Through the door: the entry itself is changed, never what a link stands for, and a
    link on the way (a lane folder, a cache snapshot's link to its blob) is followed only
    while it stays inside the models folder. Returns one message per entry that could
    not be fixed (chown needs root; a link out of the volume).
    """
    vol = Volume(models_dir)
    errors: list[str] = []
    for d in denied:
        mode = (DIR_MODE if d.is_dir else FILE_MODE)[style]
        try:
            rel = _real_rel(vol, d.rel)
            if style == "open" and (d.uid, d.gid) != (uid, gid):
                vol.set_owner(rel, uid, gid)
            elif style == "group" and d.gid != gid:
                vol.set_owner(rel, -1, gid)
            vol.set_mode(rel, mode)
        except NotReadyError as exc:
            errors.append(f"{d.rel or '.'}: not changed: {exc}")
        except (OSError, ValueError) as exc:
            errors.append(f"{d.rel or '.'}: cannot fix ({getattr(exc, 'strerror', None) or exc})")
    return errors


def _real_rel(vol: Volume, rel: str) -> str:
    """Where entry `rel` really is, relative to the models folder: a link (a cache
    snapshot's link to its blob) is resolved one hop at a time, each hop checked to stay
    inside (PathEscape otherwise). '' is the models folder itself, which is changed by
    its own path."""
    for _ in range(40):
        if not rel:
            return rel
        st = vol.lstat(rel)
        if st is None or not stat.S_ISLNK(st.st_mode):
            return rel
        target = vol.read_link(rel) or ""
        rel = "/".join(vol._inside(rel, target))
    raise PathEscape(f"{vol.root / rel}: too many symlinks")
