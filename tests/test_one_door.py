"""One door for the volume: no module but `preflight/volume.py` changes the filesystem.

This reads every module of the package (as an import linter does) and fails on any call
that creates, writes, renames, links, removes or changes the mode or owner of a path:
`os.unlink`, `os.replace`, `shutil.rmtree`, `Path.write_bytes`, `open(..., "w")`,
`os.open` with a write or create flag, an archive's `extract`, and their relatives.
Everything of the kind goes through `volume.Volume` / `volume.Staging` (descriptor-
relative, a link out of the models folder never followed) or, for files outside the
volume the user names, through `volume.write_file_atomic` and its neighbours.

Operations on a descriptor the door handed out (`os.pwrite`, `os.ftruncate`,
`os.fsync`, `os.fdopen`) are not path operations and are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "preflight"
DOOR = {"volume.py"}

OS_CHANGES = {
    "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "mkdir", "makedirs", "symlink",
    "link", "chmod", "lchmod", "chown", "lchown", "truncate", "utime", "mkfifo", "mknod", "chflags", "lchflags",
    "setxattr", "removexattr",
}
SHUTIL_CHANGES = {"rmtree", "move", "copy", "copy2", "copyfile", "copytree", "copymode", "copystat", "chown", "make_archive",
                  "unpack_archive"}
PATH_CHANGES = {"unlink", "rename", "mkdir", "rmdir", "write_text", "write_bytes", "touch", "symlink_to", "hardlink_to",
                "chmod", "lchmod", "link_to"}
ARCHIVE_CHANGES = {"extract", "extractall", "_extract_member"}
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_EXCL", "O_TMPFILE"}
READ_FLAGS = {"O_RDONLY", "O_NOFOLLOW", "O_CLOEXEC", "O_NONBLOCK", "O_DIRECTORY", "O_PATH", "O_NOATIME", "O_LARGEFILE"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in DOOR)


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _str_value(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _mode_of_open(call: ast.Call) -> str | None:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return _str_value(mode) if mode is not None else "r"


def _writing_flags(node: ast.AST) -> set[str]:
    """The flags of an os.open call that may write: named write flags, and anything that
    is not a named read-only flag (a variable could hold O_WRONLY)."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("O_"):
            name = n.value  # getattr(os, "O_NOFOLLOW", 0)
        elif isinstance(n, ast.Attribute) and n.attr.startswith("O_"):
            name = n.attr
        elif isinstance(n, ast.Name) and n.id not in ("os", "getattr"):
            name = n.id
        else:
            continue
        if name not in READ_FLAGS:
            out.add(name)
    return out


def violations(source: str, filename: str) -> list[str]:
    """Every call in `source` that changes the filesystem by path."""
    tree = ast.parse(source, filename)
    out: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"{filename}:{node.lineno}"
        if isinstance(func, ast.Attribute):
            owner, attr = _name(func.value), func.attr
            if owner == "os" and attr in OS_CHANGES:
                out.append(f"{where}: os.{attr}")
            elif owner == "shutil" and attr in SHUTIL_CHANGES:
                out.append(f"{where}: shutil.{attr}")
            elif owner == "os" and attr == "open" and (len(node.args) < 2 or _writing_flags(node.args[1])):
                out.append(f"{where}: os.open with {sorted(_writing_flags(node.args[1])) if len(node.args) > 1 else 'unknown'} flags")
            elif attr in ARCHIVE_CHANGES:
                out.append(f"{where}: .{attr}() writes an archive's members to disk")
            elif owner == "tarfile" and attr == "open" and not any(k.arg == "fileobj" for k in node.keywords):
                mode = _str_value(node.args[1]) if len(node.args) > 1 else _str_value(next((k.value for k in node.keywords if k.arg == "mode"), None))
                if mode is None or mode[:1] in "wax":
                    out.append(f"{where}: tarfile.open({mode!r}) on a path")
            elif attr in PATH_CHANGES and owner not in ("os", "shutil"):
                out.append(f"{where}: .{attr}() (a pathlib change)")
            elif attr == "replace" and len(node.args) == 1 and not node.keywords and owner not in ("dataclasses",):
                out.append(f"{where}: .replace(target) (a pathlib rename)")
        elif isinstance(func, ast.Name) and func.id == "open":
            mode = _mode_of_open(node)
            if mode is None or any(c in mode for c in "wax+"):
                out.append(f"{where}: open(..., {mode!r})")
    return out


@pytest.mark.parametrize("module", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_but_the_door_changes_the_filesystem(module: Path) -> None:
    found = violations(module.read_text(), module.relative_to(PACKAGE.parent).as_posix())
    assert not found, "change the volume through volume.Volume / volume.Staging (or volume.write_file_atomic for files outside it):\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "import os\nos.unlink(p)", "import os\nos.replace(a, b)", "import os\nos.rename(a, b, src_dir_fd=fd)",
    "import shutil\nshutil.rmtree(p)", "p.write_bytes(b'x')", "p.unlink(missing_ok=True)", "Path(x).mkdir(parents=True)",
    "open(p, 'wb')", "open(p, mode='a')", "open(p, 'r+b')", "open(p, m)", "import os\nos.open(p, os.O_WRONLY | os.O_CREAT)",
    "import os\nos.open(p, flags)", "import os\nos.symlink(t, n, dir_fd=fd)", "import os\nos.chmod(p, 0o644)",
    "import os\nos.chown(p, 0, 0)", "tf.extractall(d)", "zf.extract(m, d)", "import tarfile\ntarfile.open(p, 'w:gz')",
    "tmp.replace(target)",
])
def test_the_linter_sees_each_kind_of_change(snippet: str) -> None:
    assert violations(snippet, "x.py"), snippet


@pytest.mark.parametrize("snippet", [
    "s.replace('a', 'b')", "import dataclasses\ndataclasses.replace(x, path=p)", "open(p, 'rb')", "open(p)",
    "import os\nos.open(p, os.O_RDONLY | os.O_NOFOLLOW)", "import os\nos.pwrite(fd, b, 0)", "import os\nos.fdopen(fd, 'wb')",
    "import tarfile\ntarfile.open(fileobj=buf, mode='w')", "vol.remove_file(rel)", "vol.write_atomic(rel, data)",
])
def test_the_linter_lets_reads_and_descriptor_writes_pass(snippet: str) -> None:
    assert not violations(snippet, "x.py"), snippet
