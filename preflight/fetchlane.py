"""`preflight fetch SRC DEST`: one lane built in memory from a source and a folder.

The kind comes from what the source names (`--kind` overrides it):
- an archive (.tar, .tar.gz, .tgz, .tar.zst, .zip; not oci://): a folder lane (hf-dir)
  filled with the archive's members;
- a file ending .gguf: a gguf lane (a split's first part brings the others);
- a file with another model-file suffix (FILE_SUFFIXES), and any http(s) URL: a file lane;
- anything else (a repo, a prefix, a folder, an image): a folder lane (hf-dir).
A folder lane is DEST itself, laid out in place (the mount point cannot become a link to a
revision); a file lane is DEST/<the source's file name>, as KServe's initializer puts it.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from .errors import UsageError
from .manifest import DIR_KINDS, KINDS, FileExpect, Lane, Manifest, archive_name, parse_source, source_file_name

FILE_SUFFIXES = (
    ".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".onnx", ".pb", ".h5", ".keras",
    ".tflite", ".mar", ".json", ".txt", ".model", ".npz", ".npy", ".msgpack", ".bst", ".ubj", ".pmml", ".llamafile",
)
LANE_NAME = "model"


def detect_kind(raw: str) -> str:
    """The lane kind for a source, by the rule above."""
    src = parse_source(raw)
    if archive_name(src):
        return "hf-dir"
    name = source_file_name(src)
    if src.scheme == "oci":
        name = posixpath.basename(src.path_in_repo or "") or None
    if name and name.lower().endswith(".gguf"):
        return "gguf"
    if src.scheme in ("https", "http"):
        return "file"
    if name and name.lower().endswith(FILE_SUFFIXES):
        return "file"
    return "hf-dir"


def build(raw: str, dest: str, *, kind: str | None = None, sha256: str | None = None, include: tuple[str, ...] = (),
          exclude: tuple[str, ...] = (), allow_pickle: bool | str = False, serves_text: bool = True) -> Manifest:
    """A manifest of one lane: `raw` into the folder `dest`."""
    try:
        src = parse_source(raw)
    except ValueError as exc:
        raise UsageError(f"source {raw[:200]!r}: {exc}") from None
    if not dest.strip():
        raise UsageError("the destination folder is empty")
    chosen = kind or detect_kind(raw)
    if chosen not in KINDS or chosen == "hf-cache":
        raise UsageError(f"--kind {chosen!r}: fetch fills a folder (hf-dir, adapter) or a file (gguf, file)")
    files: dict[str, FileExpect] = {}
    archive = None
    if chosen in DIR_KINDS:
        path = "."
        if archive_name(src):
            archive = FileExpect(sha256=sha256) if sha256 else None
        elif sha256:
            raise UsageError("--sha256 pins a single file or an archive; this source names a folder",
                             hint="pin a folder's files with a lock (`preflight lock`) or a manifest, and use `preflight sync`")
        if src.scheme in ("https", "http") and not archive_name(src):
            raise UsageError(f"a URL names one file, and a {chosen} lane is a folder",
                             hint="name an archive (.tar, .tar.gz, .tgz, .tar.zst, .zip), or pass --kind file")
    else:
        name = source_file_name(src) or (posixpath.basename(src.path_in_repo or "") if src.scheme == "oci" else None)
        if not name:
            raise UsageError(f"a {chosen} lane needs a source that names a file: {raw[:200]}",
                             hint="name the file (hf://org/repo/model.gguf, s3://bucket/key, oci://…//model.gguf)")
        path = name
        if sha256:
            files[name] = FileExpect(sha256=sha256)
    if src.scheme in ("https", "http") and not sha256:
        raise UsageError(f"{raw[:200]}: a URL carries no digest to verify its bytes against",
                         hint="pin it: append #sha256=<64 hex> to the URI, or pass --sha256 (PREFLIGHT_SHA256)")
    lane = Lane(name=LANE_NAME, kind=chosen, path=path, source=src, include=include, exclude=exclude, files=files,
                allow_pickle=allow_pickle, serves_text=serves_text, layout="in-place", archive=archive)
    models_dir = str(Path(dest))
    return Manifest(file=os.path.join(os.getcwd(), "(fetch)"), version=1, models_dir=models_dir, lanes=(lane,), profiles={})
