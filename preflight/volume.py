"""The boundary between names from outside and files on the volume: the one door.

Three rules, each enforced in one place:

- Every name a source hands us (a Hub listing, a mirror folder, a lock file, OCI tar
  entries, S3 keys) passes `safe_rel` before anything is created: relative, no `..`, no
  empty or `.` component, no control characters, no reserved state folder, bounded
  lengths. A listing holding such a name makes its lane fail with `path-escape` and
  nothing is written.
- Every folder this program reads a removal plan from or writes into is opened by
  `Volume.open_dir`, which walks from the models folder's descriptor one component at a
  time with `O_NOFOLLOW`, creating what is missing when asked. A symlink on the way is
  followed only when its target stays inside the models folder; one that leads out is
  refused with both ends named.
- Every change to the volume goes through `Volume` (or `Staging` for the staging folder,
  held open once): create, write, rename, exchange, link, symlink, unlink, recursive
  removal, mode and owner. Each works relative to the descriptor of the folder `open_dir`
  returned, on a last component that is never followed (a link there is removed or
  replaced itself, never what it points at; recursive removal never descends a link).
  So what is changed is what was checked, whatever links are planted in the volume or
  swapped in between a listing and a removal. No other module of the package calls a
  function that changes the filesystem; `tests/test_one_door.py` reads every module
  and fails when one does.

Files outside the volume that the user names (the report, the termination log, the lock
file) and temporary copies are written by `write_file_atomic` / `private_copy` below, so
that this module stays the only one that writes at all.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import NotReadyError

STATE_DIR = ".preflight"
MAX_COMPONENT = 255  # bytes, as every Linux filesystem
MAX_PATH = 4096
MAX_HOPS = 40  # symlinks followed in one walk, as the kernel's own limit

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
_PROC_FD = os.path.isdir("/proc/self/fd")


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


_ESCAPE_HINT = "replace the link with a folder inside the volume, or point models_dir at the real folder"


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _split(rel: str) -> tuple[str, str]:
    """(folder, last component) of a relative path; the last must be a real name."""
    folder, _, name = rel.strip("/").rpartition("/")
    if name in ("", ".", ".."):
        raise ValueError(f"{rel!r} names no file")
    return folder, name


class Volume:
    """A models folder (or a state folder given by --state-dir) as the root of every change.

    `base`: a folder under the root this object works in (the state folder `.preflight`,
    a revision folder); paths given to the methods are relative to it, and every walk
    still starts at the root, so a link planted anywhere on the way is judged against
    the whole models folder."""

    def __init__(self, root: Path, base: str = "") -> None:
        self.root = Path(root)
        self.base = base.strip("/")

    @property
    def path(self) -> Path:
        return self.root / self.base if self.base else self.root

    @property
    def real_root(self) -> str:
        return os.path.realpath(self.root)

    def sub(self, rel: str) -> Volume:
        """The folder `rel` as a Volume of its own, with the same root."""
        return Volume(self.root, _join(self.base, rel))

    # ------------------------------------------------------------------ walking

    def open_dir(self, rel: str = "", *, create: bool = True) -> int:
        """A descriptor of folder `rel` (relative, '' for this Volume's folder), created as needed.

        Raises PathEscape for a symlink out of the root, NotReadyError for a file in the
        way, FileNotFoundError when `create` is false and a folder is missing."""
        full = _join(self.base, rel)
        parts = [p for p in full.split("/") if p]
        fd = self._open_root(create)
        hops = 0
        i = 0
        try:
            while i < len(parts):
                name = parts[i]
                if name == "..":
                    raise PathEscape(f"{self.root / full}: '..' on the way")
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
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

    @contextmanager
    def folder(self, rel: str = "", *, create: bool = False) -> Iterator[int]:
        fd = self.open_dir(rel, create=create)
        try:
            yield fd
        finally:
            os.close(fd)

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
                raise PathEscape(f"{self.root / link} is a symlink to {target}, outside the models folder; refused to go through it",
                                 hint=_ESCAPE_HINT)
            rest = norm[len(real_root):]
        else:
            rest = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
            if rest == ".." or rest.startswith("../"):
                raise PathEscape(f"{self.root / link} is a symlink to {target}, outside the models folder; refused to go through it",
                                 hint=_ESCAPE_HINT)
        return [p for p in rest.split("/") if p and p != "."]

    def dir_path(self, rel: str, *, create: bool = True) -> Path:
        """Check (and create) folder `rel` as `open_dir` does; its path."""
        os.close(self.open_dir(rel, create=create))
        return self.path / rel if rel else self.path

    make_dirs = dir_path

    def rel_of(self, path: Path | str) -> str:
        """`path` (under this Volume's folder) relative to it, POSIX style."""
        rel = os.path.relpath(path, self.path).replace(os.sep, "/")
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith("../"):
            raise PathEscape(f"{path} is not under {self.path}")
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
            return (self.path / head if head else self.path), "/".join(parts[n:])
        return self.path, rel

    @contextmanager
    def _at(self, rel: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """The folder holding `rel`, opened as open_dir does, and `rel`'s last component."""
        folder, name = _split(rel)
        fd = self.open_dir(folder, create=create)
        try:
            yield fd, name
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading, never through a link out

    def lstat(self, rel: str) -> os.stat_result | None:
        """`rel` itself (a link is not followed); None when it or a folder on the way is missing."""
        try:
            with self._at(rel) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def entries(self, rel: str = "") -> list[tuple[str, os.stat_result]]:
        """The entries of folder `rel` with their own stat (links not followed), sorted by
        name; [] when the folder is missing."""
        try:
            fd = self.open_dir(rel, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            out = []
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        out.append((e.name, e.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        pass
            return sorted(out)
        finally:
            os.close(fd)

    def walk(self, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """Every entry under folder `rel` (folders too), as (path relative to `rel`, its
        own stat), parents before children. Never descends a link; each folder is opened
        with O_NOFOLLOW relative to its parent's descriptor."""
        try:
            fd = self.open_dir(rel, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        yield from _walk_fd(fd, "")

    def read_link(self, rel: str) -> str | None:
        try:
            with self._at(rel) as (fd, name):
                return os.readlink(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None

    def read_bytes(self, rel: str, limit: int = 1 << 20) -> bytes | None:
        """A small regular file's content (a ref, a lease); None when it is missing, not a
        regular file, or larger than `limit`."""
        try:
            with self._at(rel) as (dfd, name):
                fd = os.open(name, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            return os.read(fd, limit + 1)[:limit]
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ the door: every change

    def open_file(self, rel: str, flags: int, mode: int = 0o666, *, create_dirs: bool = False) -> int:
        """A descriptor of file `rel`, opened with `flags` relative to its folder's descriptor;
        a link at `rel` is never followed (ELOOP)."""
        with self._at(rel, create=create_dirs) as (fd, name):
            return os.open(name, flags | _NOFOLLOW, mode, dir_fd=fd)

    def write_atomic(self, rel: str, data: bytes, *, fsync: bool = True) -> None:
        """Replace file `rel` with `data` atomically (a link there is replaced, not followed)."""
        with self._at(rel, create=True) as (fd, name):
            _atomic_in(fd, name, data, fsync)

    def remove_file(self, rel: str) -> bool:
        """Unlink `rel` (a file, or a link itself: never what it points at). False when it
        was not there."""
        try:
            with self._at(rel) as (fd, name):
                os.unlink(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False

    def remove_tree(self, rel: str) -> bool:
        """Remove `rel` and everything under it, descriptor-relative, never descending a
        link (a link at `rel` or inside is removed itself). False when it was not there."""
        try:
            with self._at(rel) as (fd, name):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return False
                if stat.S_ISDIR(st.st_mode):
                    _rmtree_at(fd, name)
                else:
                    os.unlink(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False

    def move(self, src: str, dst: str) -> None:
        """Rename `src` to `dst` (replacing a file or link there), both walked as open_dir does."""
        with self._at(src) as (sfd, sname), self._at(dst) as (dfd, dname):
            os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)

    def swap(self, a: str, b: str) -> None:
        """Exchange two names atomically (renameat2 RENAME_EXCHANGE); OSError when the
        kernel or filesystem cannot."""
        with self._at(a) as (afd, aname), self._at(b) as (bfd, bname):
            _exchange(afd, aname, bfd, bname)

    def make_hardlink(self, src: str, dst: str) -> os.stat_result:
        """A new name `dst` for the file `src` (a link at `src` is not followed); its stat."""
        with self._at(src) as (sfd, sname), self._at(dst, create=True) as (dfd, dname):
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            return os.stat(dname, dir_fd=dfd, follow_symlinks=False)

    def make_symlink(self, rel: str, target: str, *, replace: bool = True) -> None:
        """A symlink at `rel` to `target` (relative to the link's folder), which must stay
        inside the models folder; with `replace`, swapped in atomically over what is there."""
        self._inside(_join(self.base, rel), target)
        with self._at(rel, create=True) as (fd, name):
            if not replace:
                os.symlink(target, name, dir_fd=fd)
                return
            tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.lnk"
            os.symlink(target, tmp, dir_fd=fd)
            try:
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                _quiet_unlink(tmp, fd)
                raise

    def set_mode(self, rel: str, mode: int) -> None:
        """chmod `rel` itself ('' for this Volume's folder); a link there is refused (its
        target is not ours to change)."""
        if not rel.strip("/"):
            with self.folder("") as fd:
                os.fchmod(fd, mode)
            return
        with self._at(rel) as (dfd, name):
            fd = os.open(name, getattr(os, "O_PATH", os.O_RDONLY) | _NOFOLLOW, dir_fd=dfd)
            try:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    raise OSError(errno.ELOOP, "a symlink: its target is not changed")
                try:
                    os.chmod(f"/proc/self/fd/{fd}", mode)
                except FileNotFoundError:  # no /proc: the kernel's own no-follow chmod
                    os.chmod(name, mode, dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(fd)

    def set_owner(self, rel: str, uid: int, gid: int) -> None:
        """chown `rel` itself (lchown: a link there is changed, never its target)."""
        if not rel.strip("/"):
            with self.folder("") as fd:
                os.fchown(fd, uid, gid)
            return
        with self._at(rel) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def fsync_dir(self, rel: str = "") -> None:
        try:
            with self.folder(rel) as fd:
                os.fsync(fd)
        except OSError:
            pass


def _walk_fd(fd: int, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under the folder `fd` (which this closes), folders included, each
    opened relative to its parent's descriptor with O_NOFOLLOW before it is descended."""
    try:
        with os.scandir(fd) as it:
            entries = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        for name, st in entries:
            rel = prefix + name
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:  # gone, or swapped for a link since the listing
                    continue
                yield from _walk_fd(sub, rel + "/")
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2


def _renameat2():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(afd: int, a: str, bfd: int, b: str) -> None:
    import ctypes

    fn = _renameat2()
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(afd, a.encode(), bfd, b.encode(), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _rmtree_at(dir_fd: int, name: str) -> None:
    """shutil.rmtree relative to `dir_fd`: its descriptor-based walk never follows links."""
    shutil.rmtree(name, dir_fd=dir_fd)


def _quiet_unlink(name: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _atomic_in(dir_fd: int | None, name: str, data: bytes, fsync: bool) -> None:
    tmp = f".{os.path.basename(name)}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    if dir_fd is None:
        tmp = os.path.join(os.path.dirname(name), tmp)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    fd = os.open(tmp, flags, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _quiet_unlink(tmp, dir_fd)
        raise


# --------------------------------------------------------------------------- staging


class Staging:
    """The staging folder, opened once through the door and held: every staged file is
    created, written, renamed and removed relative to this descriptor, so a staging
    folder swapped for a link while a download runs changes nothing."""

    def __init__(self, vol: Volume, *, create: bool = True) -> None:
        self.vol = vol
        self.path = vol.path
        self.fd = vol.open_dir("", create=create)

    def file(self, name: str) -> StagedFile:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"{name!r} is not a staging file name")
        return StagedFile(self, name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StagedFile(os.PathLike):
    """One file in a `Staging` folder. Readable as a path (`open(f, "rb")`, `os.stat(f)`);
    every change goes through its methods, relative to the staging descriptor."""

    __slots__ = ("staging", "name")

    def __init__(self, staging: Staging, name: str) -> None:
        self.staging = staging
        self.name = name

    @property
    def path(self) -> Path:
        return self.staging.path / self.name

    @property
    def parent(self) -> Path:
        return self.staging.path

    def __fspath__(self) -> str:
        """For reading by path (format checks, hashing): through the held staging
        descriptor, so a staging folder swapped for a link cannot change what is read."""
        if _PROC_FD:
            return f"/proc/self/fd/{self.staging.fd}/{self.name}"
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"StagedFile({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StagedFile) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def sibling(self, name: str) -> StagedFile:
        return self.staging.file(name)

    def open(self, flags: int, mode: int = 0o666) -> int:
        return os.open(self.name, flags | _NOFOLLOW, mode, dir_fd=self.staging.fd)

    def reader(self) -> "os.FileIO":
        return os.fdopen(self.open(os.O_RDONLY), "rb", buffering=0)

    def writer(self, *, append: bool) -> "os.FileIO":
        """An unbuffered binary file for writing: appending, or emptied first."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        return os.fdopen(self.open(flags), "ab" if append else "wb", buffering=0)

    def lstat(self) -> os.stat_result | None:
        try:
            return os.stat(self.name, dir_fd=self.staging.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def stat(self) -> os.stat_result:
        """The staged file itself (a link there is not followed); FileNotFoundError when absent."""
        return os.stat(self.name, dir_fd=self.staging.fd, follow_symlinks=False)

    def exists(self) -> bool:
        return self.lstat() is not None

    def size(self) -> int:
        """Bytes already staged. Whatever stands at the name that is not a regular file (a
        link, a folder) is removed, never followed: staging is ours."""
        st = self.lstat()
        if st is None:
            return 0
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(self.staging.fd, self.name)
        else:
            os.unlink(self.name, dir_fd=self.staging.fd)
        return 0

    def remove(self) -> None:
        try:
            os.unlink(self.name, dir_fd=self.staging.fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            _rmtree_at(self.staging.fd, self.name)

    def write_atomic(self, data: bytes, *, fsync: bool = False) -> None:
        _atomic_in(self.staging.fd, self.name, data, fsync)

    def publish(self, vol: Volume, rel: str, size: int) -> os.stat_result:
        """Rename this file to `rel` in `vol` (its folder walked as open_dir does), fsync
        that folder; the stat of what now stands there. It must still be a regular file of
        the `size` that was verified (a writer that lost the lease may have appended to it):
        ValueError otherwise, and nothing is renamed."""
        st = self.lstat()
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != size:
            got = "nothing" if st is None else (f"{st.st_size} bytes" if stat.S_ISREG(st.st_mode) else "not a regular file")
            raise ValueError(f"the staged file changed after it was verified ({got}, verified {size} bytes)")
        with vol._at(rel, create=True) as (dfd, dname):
            os.replace(self.name, dname, src_dir_fd=self.staging.fd, dst_dir_fd=dfd)
            try:
                os.fsync(dfd)
            except OSError:
                pass
            return os.stat(dname, dir_fd=dfd, follow_symlinks=False)


def as_staged(partial: StagedFile | os.PathLike | str) -> StagedFile:
    """A staging file for callers that name one by path (tools, tests): its folder is
    opened and held as a Staging of its own."""
    if isinstance(partial, StagedFile):
        return partial
    p = Path(partial)
    return Staging(Volume(p.parent)).file(p.name)


# --------------------------------------------------------------------------- the state folder


def state_volume(models_dir: Path, state_dir: Path, *, create: bool = True) -> Volume:
    """The state folder as a Volume: when it lies in the models folder (the default
    `.preflight`), a sub-folder walked from the models folder, so no symlink on the way
    may lead out of it, now or later. A `--state-dir` elsewhere is the operator's choice
    and is its own root."""
    rel = os.path.relpath(state_dir, models_dir).replace(os.sep, "/")
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        return Volume(state_dir)
    vol = Volume(models_dir).sub(rel)
    try:
        os.close(vol.open_dir("", create=create))
    except FileNotFoundError:
        if create:
            raise
    return vol


# --------------------------------------------------------------------------- files outside the volume


def write_file_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """A file the user named outside the volume (the report, the lock, the termination
    log): written beside the target, fsynced, renamed over it; readers see old or new.
    Mode 0666 less the umask, as every other tool's files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_in(None, str(path), data, fsync)


def overwrite_file(path: Path, data: bytes) -> None:
    """Write into an existing file that cannot be renamed over (a device, a bind-mounted
    termination log)."""
    with open(path, "wb") as f:
        f.write(data)


def private_copy(data: bytes, name: str, mode: int = 0o444) -> tuple[Path, Callable[[], None]]:
    """`data` in a new 0700 temporary folder as `name` with `mode`; returns its path and
    the function that removes the folder."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="preflight-"))
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path, lambda: shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch_staging() -> Iterator[Staging]:
    """A private 0700 temporary folder as a Staging (for bytes that are measured and never
    published: `preflight lock` reading an archive), removed with everything in it after."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="preflight-scratch-"))
    held = Staging(Volume(folder), create=False)
    try:
        yield held
    finally:
        held.close()
        shutil.rmtree(folder, ignore_errors=True)


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
