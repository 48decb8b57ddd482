"""`preflight init`: a first manifest (and optionally its lock) from what a user already has.

Two inputs, which may be combined:
- an existing models folder, adopted as it is: read only (never a byte moved, written or
  created in it, no receipts). Each folder or file is given the kind its content has:
    hf-cache   a folder holding `models--ORG--NAME` repos (one lane per repo, its source
               hf://ORG/NAME at the ref that names the snapshot, else the commit)
    adapter    a folder with adapter_config.json
    hf-dir     a folder with config.json (everything below it is the lane's)
    gguf       a .gguf file (a split's first part; the other parts are the lane's)
    file       any other weights file (FILE_KINDS) outside those folders
  A folder lane laid out as revisions (a link to its `.NAME.rev-…` sibling) is adopted at
  the link. Then each lane is checked as `check` will check it, and only declarations are
  adjusted: `serves_text: false` for a folder without a tokenizer, `allow_pickle: true`
  (or `torchscript`) for a pickle that holds only weights, `base:` for an adapter whose
  base is another adopted lane. What still fails is written with its reason as a comment.
- sources (`hf://…`, `s3://…`, `oci://…`, `https://…#sha256=…`, a path): one lane each, the
  kind by `preflight fetch`'s rule; a source whose lane path an adopted lane has gives
  that lane its source.
`--lock` pins every adopted file's size and sha256 (read once), and resolves the sources'
lanes as `preflight lock` does.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import time
from dataclasses import field, replace
from pathlib import Path

from .errors import UsageError
from .manifest import FileExpect, Lane, Manifest, parse_source
from .record import record
from .volume import write_file_atomic

CACHE_REPO = re.compile(r"^(models|datasets)--(.+?)--(.+)$")
REV = re.compile(r"^\.(.+)\.rev-[0-9A-Za-z]+$")
FILE_KINDS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".onnx", ".h5", ".keras", ".tflite",
              ".npz", ".npy", ".msgpack", ".llamafile")
_SKIP = {".preflight", ".git", ".dvc", "__pycache__", ".cache", ".ipynb_checkpoints"}
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@record
class Found:
    """One lane found on the volume (or given as a source), with why."""

    lane: Lane
    why: str
    notes: list[str] = field(default_factory=list)
    repo_type: str = "model"
    commit: str | None = None  # hf-cache: the snapshot adopted


def lane_name(path: str, taken: set[str]) -> str:
    """A lane name from a path: its components joined by '-', only the characters names allow."""
    base = _NAME.sub("-", path.replace("/", "-")).strip("-.") or "lane"
    if not base[0].isalnum():
        base = "lane-" + base
    base = base[:200]
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _size(folder: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in _SKIP]
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            files += 1
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return files, total


def scan(root: Path) -> tuple[list[Found], list[str]]:
    """Every lane the folder holds, and what was left out (with why)."""
    found: list[Found] = []
    skipped: list[str] = []
    taken: set[str] = set()
    _scan_dir(root, root, "", found, skipped, taken)
    return found, skipped


def _rel(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _scan_dir(root: Path, folder: Path, rel: str, found: list[Found], skipped: list[str], taken: set[str]) -> None:
    entries = _entries(folder)
    names = {e.name for e in entries}
    if rel and ("adapter_config.json" in names or "config.json" in names):
        _folder_lane(root, rel, folder, found, taken)
        return
    repos = [e for e in entries if e.is_dir(follow_symlinks=False) and CACHE_REPO.match(e.name)]
    for e in repos:
        _cache_lane(root, rel, folder / e.name, e.name, found, skipped, taken)
    revision_dirs: set[str] = set()
    for e in entries:
        if e.is_symlink():
            target = os.readlink(e.path)
            m = REV.match(target) if "/" not in target else None
            if m and m.group(1) == e.name and (folder / target).is_dir():
                revision_dirs.add(target)
                _folder_lane(root, _rel(rel, e.name), folder / target, found, taken, revisions=True)
            else:
                skipped.append(f"{_rel(rel, e.name)}: a symlink (to {target}); lanes are adopted where their files are")
    firsts = _gguf_firsts([e.name for e in entries if e.is_file(follow_symlinks=False)])
    for e in entries:
        here = _rel(rel, e.name)
        if e.name in revision_dirs or e in repos or e.is_symlink():
            continue
        if e.is_dir(follow_symlinks=False):
            if e.name in _SKIP or e.name.startswith("."):
                if e.name not in (".preflight",):
                    skipped.append(f"{here}/: a hidden folder")
                continue
            _scan_dir(root, folder / e.name, here, found, skipped, taken)
            continue
        if not e.is_file(follow_symlinks=False):
            skipped.append(f"{here}: not a regular file")
            continue
        low = e.name.lower()
        if low.endswith(".gguf"):
            if e.name in firsts:
                parts = firsts[e.name]
                lane = Lane(name=lane_name(posixpath.splitext(here)[0], taken), kind="gguf", path=here)
                why = "a GGUF file" if parts == 1 else f"a GGUF split in {parts} parts"
                found.append(Found(lane, why))
            continue
        if low.endswith(FILE_KINDS) and not e.name.startswith("."):
            found.append(Found(Lane(name=lane_name(posixpath.splitext(here)[0], taken), kind="file", path=here), f"a {posixpath.splitext(low)[1]} file"))
            continue
        skipped.append(f"{here}: not a model file preflight knows (a lane of kind file can hold it)")


def _gguf_firsts(names: list[str]) -> dict[str, int]:
    """GGUF files that start a lane (a plain file, or a split's first part) → number of parts."""
    from .check import gguf_split_names

    out: dict[str, int] = {}
    have = set(names)
    for n in names:
        if not n.lower().endswith(".gguf"):
            continue
        parts = gguf_split_names(n)
        if parts[0] == n:
            out[n] = len(parts)
        elif parts[0] not in have:  # a part without its first: adopt it as a file of its own
            out[n] = 1
    return out


def _folder_lane(root: Path, rel: str, folder: Path, found: list[Found], taken: set[str], revisions: bool = False) -> None:
    names = {e.name for e in _entries(folder)}
    kind = "adapter" if "adapter_config.json" in names else "hf-dir"
    files, total = _size(folder)
    why = f"{'adapter_config.json' if kind == 'adapter' else 'config.json'} with {files} files ({_human(total)})"
    if revisions:
        why += f"; laid out as revisions ({os.readlink(root / rel)})"
    lane = Lane(name=lane_name(rel, taken), kind=kind, path=rel, layout="revisions" if revisions else "in-place")
    found.append(Found(lane, why))


def _cache_lane(root: Path, rel: str, repo_dir: Path, folder_name: str, found: list[Found], skipped: list[str], taken: set[str]) -> None:
    m = CACHE_REPO.match(folder_name)
    assert m
    repo_type = "dataset" if m.group(1) == "datasets" else "model"
    repo = f"{m.group(2)}/{m.group(3)}"
    snapshots = sorted(e.name for e in _entries(repo_dir / "snapshots") if e.is_dir(follow_symlinks=False))
    refs: dict[str, str] = {}
    for e in _entries(repo_dir / "refs"):
        try:
            refs[e.name] = Path(e.path).read_text()[:100].strip()
        except OSError:
            pass
    where = _rel(rel, folder_name)
    if not snapshots:
        skipped.append(f"{where}: a cache entry without snapshots")
        return
    by_ref = {sha: ref for ref, sha in sorted(refs.items(), key=lambda kv: kv[0] == "main")}  # main wins
    named = [sha for sha in snapshots if sha in by_ref]
    commit = refs["main"] if refs.get("main") in snapshots else named[0] if named else snapshots[-1]
    revision = by_ref.get(commit, commit)
    prefix = "hf://datasets/" if repo_type == "dataset" else "hf://"
    source = parse_source(f"{prefix}{repo}@{revision}")
    lane = Lane(name=lane_name(repo.split("/")[-1] if rel else repo, taken), kind="hf-cache", path=rel or ".", source=source)
    others = [s for s in snapshots if s != commit]
    why = f"{folder_name} in a Hugging Face cache, snapshot {commit[:12]}" + (f" (refs/{revision})" if revision != commit else "")
    f = Found(lane, why, repo_type=repo_type, commit=commit)
    if others:
        f.notes.append(f"{len(others)} other snapshot(s) left as they are")
    found.append(f)


def _human(n: int) -> str:
    from .report import human_size

    return human_size(n)


# --------------------------------------------------------------------------- making each lane pass as it is


def settle(root: Path, found: list[Found]) -> None:
    """Check each lane as `check` would; adjust only what is a declaration (tokenizer, pickle
    policy, an adapter's base), and note what still fails."""
    from .check import Context, check_lanes
    from .integrity import Receipts

    by_name = {f.lane.name: f for f in found}

    def errors(lane: Lane) -> set[str] | None:
        lanes = _with_base(lane, by_name)
        manifest = Manifest(str(root / "(init)"), 1, str(root), tuple(lanes), {})
        res = check_lanes(Context(manifest, root, Receipts(None)), lanes)[0]
        codes = {p.code for p in res.problems if p.is_error}
        return codes or None

    for f in sorted(found, key=lambda f: f.lane.kind == "adapter"):  # bases are settled before their adapters
        lane = f.lane
        base = _adapter_base(root, f, found) if lane.kind == "adapter" else None
        if base is not None:
            lane = replace(lane, base=base.lane.name)
        codes = errors(lane)
        if codes and "tokenizer-missing" in codes and lane.kind in ("hf-dir", "hf-cache"):
            lane = replace(lane, serves_text=False)
            codes = errors(lane)
        shown = lane
        if codes and {"unsafe-pickle", "dangerous-pickle", "torchscript"} & codes:
            for policy in (True, "torchscript"):
                if errors(replace(lane, allow_pickle=policy)) is None:
                    lane, codes = replace(lane, allow_pickle=policy), None
                    break
            else:
                shown = replace(lane, allow_pickle=True)  # why it fails even where state-dict pickles are allowed
        if codes and lane.base is not None and errors(replace(lane, base=None)) is None:
            f.notes.append(f"its base_model_name_or_path names lane {lane.base}, whose weights it does not fit: no base: set")
            lane, codes = replace(lane, base=None), None
        if codes:
            manifest = Manifest(str(root / "(init)"), 1, str(root), tuple(_with_base(shown, by_name)), {})
            res = check_lanes(Context(manifest, root, Receipts(None)), _with_base(shown, by_name))[0]
            f.notes.append("does not pass `check` as it stands: " + "; ".join(f"{p.path}: {p.code}" for p in res.problems if p.is_error)[:400])
        if lane.serves_text is False:
            f.notes.append("no tokenizer here: serves_text: false (an embedding or vision model; say true to require one)")
        if lane.allow_pickle:
            f.notes.append(f"pickles that hold only {'weights and TorchScript' if lane.allow_pickle == 'torchscript' else 'weights'}: "
                           f"allow_pickle: {str(lane.allow_pickle).lower()}")
        if lane.base:
            f.notes.append(f"checked against its base, lane {lane.base}")
        f.lane = lane
        by_name[lane.name] = f


def _with_base(lane: Lane, by_name: dict[str, Found]) -> list[Lane]:
    return [lane] + ([by_name[lane.base].lane] if lane.base and lane.base in by_name else [])


def _adapter_base(root: Path, f: Found, found: list[Found]) -> Found | None:
    """The adopted lane an adapter names as its base (base_model_name_or_path: a repo id, or a folder)."""
    try:
        config = json.loads((root / f.lane.path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        return None
    for other in found:
        if other.lane.kind == "hf-cache" and other.lane.source is not None and other.lane.source.repo == base:
            return other
        if other.lane.kind == "hf-dir" and (other.lane.path == base.strip("/") or posixpath.basename(other.lane.path) == posixpath.basename(base.rstrip("/"))):
            return other
    return None


# --------------------------------------------------------------------------- sources


def from_sources(sources: list[str], found: list[Found]) -> list[Found]:
    """A lane for each source (kind by fetch's rule); one whose path an adopted lane has gives it its source."""
    from .fetchlane import detect_kind
    from .kserve import storage_uri
    from .manifest import archive_name, source_file_name

    taken = {f.lane.name for f in found}
    by_path = {f.lane.path: f for f in found}
    out = list(found)
    for raw in sources:
        uri, pin = storage_uri(raw)
        try:
            src = parse_source(uri)
        except ValueError as exc:
            raise UsageError(f"source {raw[:200]!r}: {exc}") from None
        kind = detect_kind(uri)
        file_name = source_file_name(src)
        if kind in ("hf-dir", "adapter"):
            stem = archive_name(src) or file_name or (src.path_in_repo or src.repo or src.local or "model")
            stem = re.sub(r"\.(tar\.gz|tgz|tar\.zst|tar\.zstd|tzst|tar|zip)$", "", posixpath.basename(str(stem).rstrip("/")), flags=re.I)
            if src.scheme == "oci" and src.repo:
                stem = posixpath.basename(src.repo)
            path = stem or "model"
        else:
            path = file_name or posixpath.basename(src.path_in_repo or "") or "model"
        if src.scheme in ("https", "http") and not pin:
            raise UsageError(f"{raw[:200]}: a URL carries no digest; append #sha256=<64 hex> so the manifest can pin it")
        files = {}
        archive = None
        if pin:
            if kind in ("hf-dir", "adapter"):
                archive = FileExpect(sha256=pin)
            else:
                files[posixpath.basename(path)] = FileExpect(sha256=pin)
        adopted = by_path.get(path)
        if adopted is not None and adopted.lane.source is None:
            adopted.lane = replace(adopted.lane, source=src, files={**adopted.lane.files, **files}, archive=archive)
            adopted.notes.append(f"source given: {uri}")
            continue
        lane = Lane(name=lane_name(path, taken), kind=kind, path=path, source=src, files=files, archive=archive)
        out.append(Found(lane, f"from {uri} ({'an archive' if archive_name(src) else kind})"))
    return out


# --------------------------------------------------------------------------- writing


def _q(value: str) -> str:
    """A YAML scalar: plain when safe, else double-quoted JSON."""
    if re.fullmatch(r"[A-Za-z0-9_./@:+-]+", value) and not value[0] in "@:-" and ": " not in value and value.lower() not in ("true", "false", "null", "yes", "no", "on", "off"):
        return value
    return json.dumps(value)


def render(models_dir: str, found: list[Found], skipped: list[str], lock_name: str | None, origin: str) -> str:
    lines = [
        f"# Written by `preflight init` {origin} on {time.strftime('%Y-%m-%d')}.",
        "# Every lane below was checked as `preflight check` checks it. Lanes without a `source:`",
        "# are checked but never fetched: add where each comes from (hf://ORG/REPO@REVISION,",
        "# s3://BUCKET/PREFIX, oci://REGISTRY/REPO:TAG, https://…, a mirror path) so `preflight sync`",
        "# can repair it. README.md, \"Manifest reference\", lists every field.",
        "version: 1",
        f"models_dir: {_q(models_dir)}",
    ]
    if lock_name:
        lines.append(f"lock: {_q(lock_name)}                # sizes and sha256 of every file, as adopted")
    lines.append("lanes:")
    for f in found:
        lane = f.lane
        lines.append(f"  # {f.why}")
        for note in f.notes:
            lines.append(f"  # {note}")
        lines.append(f"  - name: {_q(lane.name)}")
        lines.append(f"    kind: {lane.kind}")
        lines.append(f"    path: {_q(lane.path)}")
        if lane.source is not None:
            lines.append(f"    source: {_q(lane.source.raw)}")
        else:
            lines.append("    # source: hf://ORG/REPO@REVISION")
        if lane.archive is not None and lane.archive.sha256:
            lines.append(f"    sha256: {lane.archive.sha256}              # the archive's")
        for rel, exp in lane.files.items():
            if exp.sha256 and lane.kind not in ("hf-dir", "adapter", "hf-cache"):
                lines.append(f"    sha256: {exp.sha256}")
        if lane.kind in ("hf-dir", "adapter") and lane.layout == "in-place":
            lines.append("    layout: in-place                   # as found; `revisions` switches whole folders atomically on upgrades")
        if not lane.serves_text:
            lines.append("    serves_text: false")
        if lane.allow_pickle:
            lines.append(f"    allow_pickle: {str(lane.allow_pickle).lower()}")
        if lane.base:
            lines.append(f"    base: {_q(lane.base)}")
        lines.append("")
    if skipped:
        lines.append("# Not adopted:")
        lines.extend(f"#   {s}" for s in skipped[:50])
        if len(skipped) > 50:
            lines.append(f"#   … and {len(skipped) - 50} more")
    return "\n".join(lines).rstrip() + "\n"


def adopted_lock(root: Path, found: list[Found], lock_path: Path):
    """A lock pinning every adopted file (size and sha256, each file read once)."""
    from .check import Context, files_root, observe
    from .integrity import Receipts, hash_files
    from .lockfile import Lock, LockedLane

    manifest = Manifest(str(root / "(init)"), 1, str(root), tuple(f.lane for f in found), {})
    ctx = Context(manifest, root, Receipts(None))
    lock = Lock(str(lock_path))
    for f in found:
        if f.lane.source is not None and f.lane.kind != "hf-cache":
            continue  # resolved from its source as `preflight lock` does (make_lock)
        plan = observe(ctx, f.lane, remote_commit=f.commit)
        present = sorted(rel for rel, obs in plan.files.items() if obs.st is not None)
        froot = files_root(ctx, f.lane, f.commit)
        digests = hash_files([(str(froot / rel), ("sha256",)) for rel in present])
        files = {}
        for rel, got in zip(present, digests):
            if isinstance(got, OSError):
                raise UsageError(f"{froot / rel}: cannot read it to pin it ({got.strerror})")
            files[rel] = FileExpect(plan.files[rel].st.st_size, got["sha256"])  # type: ignore[union-attr]
        src = f.lane.source
        lock.lanes[f.lane.name] = LockedLane(f.lane.name, src.raw if src else None, src.revision if src else None, f.commit, files)
    return lock


def write(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} exists; not overwritten", hint="pass --force, or another --output")
    write_file_atomic(path, text.encode())
