"""The boundary between names from outside and files on the volume.

Two rules, each enforced in one place:

- Every name a source hands us (a Hub listing, a mirror folder, a lock file, and every
  future source: OCI tar entries, S3 keys) passes `safe_rel` before anything is created:
  relative, no `..`, no empty or `.` component, no control characters, no reserved state
  folder, bounded lengths. A listing holding such a name makes its lane fail with
  `path-escape` and nothing is written.
- Every folder this program writes into is opened by `Volume.open_dir`, which walks from
  the models folder's descriptor one component at a time with `O_NOFOLLOW`, creating what
  is missing. A symlink on the way is followed only when its target stays inside the
  models folder; one that leads out is refused with both ends named. The final
  operations (create, rename, symlink) then work relative to that descriptor, so what is
  written lands where it was checked.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path

from .errors import NotReadyError

STATE_DIR = ".preflight"
MAX_COMPONENT = 255  # bytes, as every Linux filesystem
MAX_PATH = 4096
MAX_HOPS = 40  # symlinks followed in one walk, as the kernel's own limit


class UnsafeName(ValueError):
    """A name from a source that must never become a path on the volume."""


def safe_rel(name: object, *, single: bool = False) -> str:
    """`name` as a relative POSIX path that stays inside its lane, or UnsafeName saying why.

    `single`: the name of a single-file lane's file (no folder part)."""
    if not isinstance(name, str) or not name:
        raise UnsafeName(f"{name!r} is not a file name")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise UnsafeName(f"{name!r} holds a control character")
    if "\\" in name:
        raise UnsafeName(f"{name!r} holds a backslash")
    if name.startswith("/"):
        raise UnsafeName(f"{name!r} is an absolute path")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise UnsafeName(f"{name[:40]!r}… is longer than {MAX_PATH} bytes")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeName(f"{name!r} has a {part or 'empty'!r} component" if part else f"{name!r} has an empty component")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT:
            raise UnsafeName(f"{name[:40]!r}… has a component longer than {MAX_COMPONENT} bytes")
        if part == STATE_DIR:
            raise UnsafeName(f"{name!r} names the reserved state folder {STATE_DIR}")
    if single and len(parts) > 1:
        raise UnsafeName(f"{name!r} is not a plain file name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeName(f"{name!r} is not valid UTF-8") from None
    return name


def is_hex_digest(value: object, lengths: tuple[int, ...] = (40, 64)) -> bool:
    """A commit id or content digest as a server may hand it to us for a file or folder name."""
    return isinstance(value, str) and len(value) in lengths and all(c in "0123456789abcdef" for c in value)


class PathEscape(NotReadyError):
    """A write would go through a symlink out of the models folder."""

    problem_code = "path-escape"


class Volume:
    """A models folder (or a state folder given by --state-dir), as the root of every write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def real_root(self) -> str:
        return os.path.realpath(self.root)

    def open_dir(self, rel: str, *, create: bool = True) -> int:
        """A descriptor of folder `rel` (relative, '' for the root), created as needed.

        Raises PathEscape for a symlink out of the root, NotReadyError for a file in the
        way, FileNotFoundError when `create` is false and a folder is missing."""
        parts = [p for p in rel.split("/") if p] if rel else []
        fd = self._open_root(create)
        hops = 0
        i = 0
        try:
            while i < len(parts):
                name = parts[i]
                try:
                    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    here = "/".join(parts[: i + 1])
                    if not stat.S_ISLNK(st.st_mode):
                        raise NotReadyError(f"{self.root / here} is a file where a folder is needed",
                                            hint="move the file away; preflight never deletes what it did not write") from None
                    hops += 1
                    if hops > MAX_HOPS:
                        raise PathEscape(f"{self.root / here}: too many symlinks on the way") from None
                    target = os.readlink(name, dir_fd=fd)
                    parts = self._inside(here, target) + parts[i + 1:]
                    os.close(fd)
                    fd = self._open_root(create)
                    i = 0
                    continue
                os.close(fd)
                fd = nfd
                i += 1
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_root(self, create: bool) -> int:
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _inside(self, link: str, target: str) -> list[str]:
        """The components, from the root, of where the symlink at `link` points; PathEscape
        when that is outside the root."""
        if target.startswith("/"):
            real_root = self.real_root.rstrip("/")
            norm = posixpath.normpath(target)
            if norm != real_root and not norm.startswith(real_root + "/"):
                raise PathEscape(f"{self.root / link} is a symlink to {target}, outside the models folder; refused to write through it",
                                 hint="replace the link with a folder inside the volume, or point models_dir at the real folder")
            rest = norm[len(real_root):]
        else:
            rest = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
            if rest == ".." or rest.startswith("../"):
                raise PathEscape(f"{self.root / link} is a symlink to {target}, outside the models folder; refused to write through it",
                                 hint="replace the link with a folder inside the volume, or point models_dir at the real folder")
        return [p for p in rest.split("/") if p and p != "."]

    def dir_path(self, rel: str, *, create: bool = True) -> Path:
        """Check (and create) folder `rel` as `open_dir` does; its path under the root."""
        os.close(self.open_dir(rel, create=create))
        return self.root / rel if rel else self.root

    def rel_of(self, path: Path) -> str:
        """`path` (under the root) relative to it, POSIX style."""
        rel = os.path.relpath(path, self.root).replace(os.sep, "/")
        if rel == "." :
            return ""
        if rel == ".." or rel.startswith("../"):
            raise PathEscape(f"{path} is not under {self.root}")
        return rel

    def deepest(self, rel: str) -> tuple[Path, str]:
        """The deepest existing folder on the way to `rel` (walked as open_dir does, no
        symlink out), and what is missing below it. For checks before anything is created."""
        parts = [p for p in rel.split("/") if p]
        for n in range(len(parts), -1, -1):
            head = "/".join(parts[:n])
            try:
                fd = self.open_dir(head, create=False)
            except FileNotFoundError:
                continue
            os.close(fd)
            return (self.root / head if head else self.root), "/".join(parts[n:])
        return self.root, rel

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace file `rel` with `data` atomically, in a folder opened as `open_dir` does."""
        from .integrity import atomic_write

        folder, _, name = rel.rpartition("/")
        fd = self.open_dir(folder)
        try:
            atomic_write(Path(name), data, dir_fd=fd)
        finally:
            os.close(fd)


def state_volume(models_dir: Path, state_dir: Path, *, create: bool = True) -> Volume:
    """The state folder as the root of its own writes, once checked: when it lies in the
    models folder (the default `.preflight`), no symlink on the way may lead out of it.
    A `--state-dir` elsewhere is the operator's choice and is taken as it is."""
    rel = os.path.relpath(state_dir, models_dir).replace(os.sep, "/")
    if not (rel == ".." or rel.startswith("../") or os.path.isabs(rel)):
        try:
            Volume(models_dir).dir_path(rel, create=create)
        except FileNotFoundError:
            if create:
                raise
    return Volume(state_dir)


def why_unwritable(path: Path, exc: OSError | None) -> str:
    """The real cause: a read-only mount, another owner, or what the OS said."""
    try:
        if os.statvfs(path if path.exists() else path.parent).f_flag & os.ST_RDONLY:
            return "the filesystem is mounted read-only"
    except OSError:
        pass
    try:
        st = os.stat(path if path.exists() else path.parent)
        if exc is None or exc.errno in (errno.EACCES, errno.EPERM):
            return f"owned by uid {st.st_uid} gid {st.st_gid} with mode {stat.filemode(st.st_mode)}"
    except OSError:
        pass
    return exc.strerror if exc is not None and exc.strerror else "permission denied"
