"""Observe lanes on the volume: paths, sizes, digests (or receipts), formats.

Never touches the network. Used by `check`, and by `sync` before and after it fetches.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from . import problems as P
from .errors import ManifestError
from .integrity import Receipts, hash_files
from .manifest import FileExpect, Lane, Manifest
from .problems import Problem
from .record import record
from .report import LaneResult

if TYPE_CHECKING:
    from .lockfile import Lock, LockedLane

STATE_DIR = ".preflight"
SKIP_DIRS = {STATE_DIR, ".git", ".cache", ".dvc", "__pycache__"}
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@record
class Context:
    """What a check of lanes runs against: the manifest, the volume, its receipts, the lock."""

    manifest: Manifest
    models_dir: Path
    receipts: Receipts
    lock: Lock | None = None
    verify: str = "auto"  # "auto": trust receipts; "full": hash everything with a known digest
    notes: list[str] = field(default_factory=list)
    accelerator: object = None  # serving.lane.NodeAccelerator: this node, for lanes that declare how they are served
    variants: dict = field(default_factory=dict)  # lane name -> the report's `variant` object (serving/variants.py)
    variant_records: dict = field(default_factory=dict)  # lane name -> a choice to remember in the receipts

    @property
    def real_models_dir(self) -> str:
        return os.path.realpath(self.models_dir)


@record
class FileObs:
    """One file a lane should hold, as seen: its stat and, once known, its digests."""

    rel: str  # relative to the lane's folder
    abs: Path
    expect: FileExpect | None
    st: os.stat_result | None = None
    digests: dict[str, str] | None = None
    from_receipt: bool = False


@record
class LanePlan:
    """What a lane should contain and what was seen of it."""

    lane: Lane
    root: Path  # the folder holding the lane's files
    result: LaneResult
    files: dict[str, FileObs] = field(default_factory=dict)
    commit: str | None = None
    escaped: bool = False
    remembered: set[str] = field(default_factory=set)  # expected only because a receipt knows them

    def state_key(self, rel: str) -> str:
        """The receipt key of `rel`: through the real folder (a revision lane's symlink
        resolved, once per lane), so a file keeps its key whichever path reaches it."""
        if self._real_root is None:
            self._real_root = real_key_root(self.root, self.root_models)
        return posixpath.normpath(posixpath.join(self._real_root, rel)) if rel else self._real_root

    root_models: Path = Path(".")
    _real_root: str | None = None


def real_key_root(folder: Path, models_dir: Path) -> str:
    """`folder` relative to the models folder, both with symlinks resolved."""
    return os.path.relpath(os.path.realpath(folder), os.path.realpath(models_dir)).replace(os.sep, "/")


def key_under(base: str, key: str) -> str:
    """A receipt key (models-relative) as a path under folder `base` ("." is the models folder)."""
    return key if base in ("", ".") else key[len(base.rstrip("/")) + 1:]


def state_key(models_dir: Path, path: Path) -> str:
    """The receipt key of the file at `path` (its folder resolved, the file itself not)."""
    return posixpath.normpath(posixpath.join(real_key_root(path.parent, models_dir), path.name))


def repo_folder(repo: str, repo_type: str = "model") -> str:
    return f"{repo_type}s--" + repo.replace("/", "--")


def lane_root(ctx: Context, lane: Lane) -> Path:
    base = ctx.models_dir / lane.path
    return base if lane.is_dir else base.parent


def inside(real_root: str, path: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


def hf_cache_commit(root: Path, lane: Lane, lock_commit: str | None) -> str | None:
    """The snapshot a cache lane points at: lock, then refs/<revision>, then a commit-like revision."""
    if lock_commit:
        return lock_commit
    assert lane.source is not None and lane.source.repo
    rev = lane.source.revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev
    ref = root / repo_folder(lane.source.repo, lane.source.repo_type) / "refs" / rev
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def files_root(ctx: Context, lane: Lane, commit: str | None) -> Path:
    root = lane_root(ctx, lane)
    if lane.kind == "hf-cache":
        assert lane.source is not None and lane.source.repo
        return root / repo_folder(lane.source.repo, lane.source.repo_type) / "snapshots" / (commit or "unknown")
    return root


def selected(rel: str, lane: Lane) -> bool:
    if lane.include and not any(fnmatch.fnmatch(rel, pat) for pat in lane.include):
        return False
    return not any(fnmatch.fnmatch(rel, pat) for pat in lane.exclude)


def discover(root: Path) -> list[str]:
    """Files under a lane folder (relative POSIX paths), skipping state and VCS folders."""
    out: list[str] = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".preflight"))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".part")):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            out.append(rel)
    out.sort()
    return out


def gguf_split_names(name: str) -> list[str]:
    m = _SPLIT.match(name)
    if not m:
        return [name]
    count = int(m["count"])
    return [f"{m['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def locked_lane(ctx: Context, lane: Lane):
    """The lock's entry for the lane, unless the lock was made for another source (then it
    says nothing about this lane: see `lock_drift`)."""
    locked = lock_entry(ctx, lane)
    if locked is not None and lock_drift(locked, lane):
        return None
    return locked


def lock_entry(ctx: Context, lane: Lane) -> LockedLane | None:
    """The lock's entry for the lane, whatever source the lock was made for (the lock module
    loads only when there is a lock)."""
    if ctx.lock is None:
        return None
    from .lockfile import lock_entry

    return lock_entry(ctx.lock, lane)


def lock_drift(locked, lane: Lane) -> bool:
    return locked.source is not None and lane.source is not None and locked.source != lane.source.raw


def expected_files(ctx: Context, lane: Lane, remote: dict[str, FileExpect] | None = None) -> dict[str, FileExpect | None]:
    """Everything known about what the lane must hold: lock, manifest, checksum/DVC files, a remote listing."""
    out: dict[str, FileExpect | None] = {}
    locked = locked_lane(ctx, lane)
    if locked:
        out.update(locked.files)
    if remote:
        for rel, exp in remote.items():
            out[rel] = exp.merge(out.get(rel))
    if lane.checksums:
        for rel, exp in load_checksums(ctx, lane).items():
            out[rel] = exp.merge(out.get(rel))
    if lane.dvc:
        from .dvc import dvc_expectations

        for rel, exp in dvc_expectations(ctx.manifest, lane).items():
            out[rel] = exp.merge(out.get(rel))
    for rel, exp in lane.files.items():
        out[rel] = exp.merge(out.get(rel))
    if not lane.is_dir:
        name = Path(lane.path).name
        names = gguf_split_names(name) if lane.kind == "gguf" else [name]
        for n in names:
            out.setdefault(n, None)
        # a single-file lane holds exactly its file(s)
        out = {k: v for k, v in out.items() if k in names}
    return out


def load_checksums(ctx: Context, lane: Lane) -> dict[str, FileExpect]:
    assert lane.checksums
    p = Path(lane.checksums)
    if not p.is_absolute():
        p = Path(ctx.manifest.file).parent / p
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read checksum file: {exc.strerror}", file=str(p), field=f"lanes.{lane.name}.checksums") from None
    from .lockfile import parse_sha256sum

    return parse_sha256sum(text, str(p))


def observe(ctx: Context, lane: Lane, remote: dict[str, FileExpect] | None = None, remote_commit: str | None = None) -> LanePlan:
    """Stat every expected file, trust or schedule digests, flag escapes. No hashing yet."""
    locked = locked_lane(ctx, lane)
    result = LaneResult(lane.name, lane.kind, lane.path, lane.required, source=lane.source.display() if lane.source else None)
    drifted = lock_entry(ctx, lane) if locked is None else None
    if drifted is not None:
        result.problems.append(P.warning(lane.path, P.LOCK_DRIFT, f"the lock was made for source {drifted.source}, the manifest says "
                                         f"{lane.source.raw if lane.source else None}; its digests are not used (run `preflight lock` again)"))
    commit = remote_commit or (locked.commit if locked else None)
    root = lane_root(ctx, lane)
    if lane.kind == "hf-cache":
        commit = hf_cache_commit(root, lane, commit)
    # Reported as an immutable version only (a commit, a digest), never a branch name: the
    # lock's, the source's, else the one the lane was last synced at.
    result.revision = commit or (ctx.receipts.synced_at(lane.name, lane.source.raw) if lane.source else None)
    froot = files_root(ctx, lane, commit)
    plan = LanePlan(lane, froot, result, commit=commit)
    plan.root_models = ctx.models_dir
    real_models = ctx.real_models_dir
    lane_target = ctx.models_dir / lane.path
    if os.path.lexists(lane_target) and not inside(real_models, os.path.realpath(lane_target)):
        result.problems.append(P.error(lane.path, P.PATH_ESCAPE, f"{lane.path} resolves to {os.path.realpath(lane_target)}, outside the models folder; not read"))
        plan.escaped = True
        return plan
    if lane.kind == "hf-cache" and commit is None:
        result.problems.append(P.error(lane.path, P.MISSING, f"no snapshot of {lane.source.repo}@{lane.revision} in the cache (no refs/{lane.revision})"))
        return plan
    expected = expected_files(ctx, lane, remote)
    if lane.is_dir:
        on_disk = [rel for rel in discover(froot) if selected(rel, lane)]
        for rel in on_disk:
            expected.setdefault(rel, None)
        if remote is None and locked is None:
            # No listing or lock says what the lane holds: what was verified here before still
            # belongs to it, so a file deleted since (a tokenizer_config.json with the chat
            # template) is missing, not silently absent.
            base = plan.state_key("")
            for key in ctx.receipts.under(base):
                rel = key_under(base, key)
                if rel not in expected and selected(rel, lane) and ctx.receipts.verified(key) is not None:
                    expected[rel] = None
                    plan.remembered.add(rel)
        if not froot.exists():
            result.problems.append(P.error(lane.path, P.MISSING, _missing_folder(ctx, lane, froot, commit)))
            for rel, exp in expected.items():
                plan.files[rel] = FileObs(rel, froot / rel, exp)
            return plan
        if not froot.is_dir():
            result.problems.append(P.error(lane.path, P.NOT_A_DIRECTORY, f"{lane.path} is not a folder"))
            return plan
    real_root = os.path.realpath(froot)
    for rel, exp in sorted(expected.items()):
        obs = FileObs(rel, froot / rel, exp)
        plan.files[rel] = obs
        real = realpath_under(real_root, rel)
        if not inside(real_models, real):
            result.problems.append(P.error(rel, P.PATH_ESCAPE, f"{rel} resolves to {real}, outside the models folder; not read"))
            continue
        try:
            st = os.stat(obs.abs)
        except FileNotFoundError:
            code = P.SPLIT_MISSING if lane.kind == "gguf" and len(expected) > 1 else P.MISSING
            why = " (it was verified here before: see .preflight/receipts.json)" if rel in plan.remembered else ""
            result.problems.append(P.error(rel, code, f"{rel} is missing" + (f" (expected {exp.size} bytes)" if exp and exp.size is not None else "") + why))
            continue
        except OSError as exc:
            result.problems.append(P.error(rel, P.UNREADABLE, f"{rel}: cannot stat ({exc.strerror})"))
            continue
        import stat as stat_mod

        if not stat_mod.S_ISREG(st.st_mode):
            result.problems.append(P.error(rel, P.NOT_A_FILE, f"{rel} is not a regular file"))
            continue
        obs.st = st
        result.files += 1
        result.bytes += st.st_size
        if exp is None or not (exp.sha256 or exp.sha1 or exp.crc32c or exp.md5):
            # no digest pinned by manifest, lock, DVC or source (a size at most): hold the file to
            # what was verified when it was published, while its size is still the one pinned
            past = ctx.receipts.verified(plan.state_key(rel))
            if past is not None and ("sha256" in past[1] or "sha1" in past[1]) and (exp is None or exp.size in (None, past[0])):
                exp = FileExpect(past[0], past[1].get("sha256"), None if past[1].get("sha256") else past[1].get("sha1"))
                obs.expect = exp
        if exp is not None and exp.size is not None and st.st_size != exp.size:
            diff = st.st_size - exp.size
            what = f"truncated by {-diff} bytes" if diff < 0 else f"{diff} bytes too long"
            result.problems.append(P.error(rel, P.SIZE_MISMATCH, f"{rel}: expected {exp.size} bytes, found {st.st_size} ({what})"))
            continue
        if exp is not None and _algo(exp) and ctx.verify != "full":
            rec = ctx.receipts.lookup(plan.state_key(rel), st)
            if rec is not None and _algo(exp) in rec:
                obs.digests = rec
                obs.from_receipt = True
    return plan


def realpath_under(real_root: str, rel: str) -> str:
    """`os.path.realpath` of `rel` under a folder whose real path is `real_root`, looking only
    at the components of `rel` (one lstat each, instead of one per component of the whole
    path): a link among them, or a `.`/`..`, is resolved in full."""
    path = real_root
    for part in rel.split("/"):
        path = os.path.join(path, part)
        if part in ("", ".", "..") or os.path.islink(path):
            return os.path.realpath(os.path.join(real_root, rel))
    return path


def _missing_folder(ctx: Context, lane: Lane, froot: Path, commit: str | None) -> str:
    """What exactly is absent: the lane folder, or (cache layout) the repo, or one snapshot."""
    if lane.kind != "hf-cache":
        return f"folder {lane.path} does not exist"
    snapshots = froot.parent
    repo_dir = snapshots.parent
    if not repo_dir.is_dir():
        return f"{repo_dir.name} is not in the cache at {lane.path}"
    have = sorted(p.name for p in snapshots.iterdir())[:5] if snapshots.is_dir() else []
    return f"the cache has no snapshot {commit} of {lane.source.repo if lane.source else repo_dir.name}" + (
        f" (it has: {', '.join(have)})" if have else " (it has no snapshots)")


def _algo(exp: FileExpect) -> str | None:
    """The digest to check a file by: sha256, else git blob sha1, else md5, else a Cloud
    Storage listing's CRC32C, else none."""
    return "sha256" if exp.sha256 else "sha1" if exp.sha1 else "md5" if exp.md5 else "crc32c" if exp.crc32c else None


def verify_digests(ctx: Context, plans: list[LanePlan]) -> None:
    """Hash every file whose digest is known but not vouched for by a receipt, all lanes in parallel."""
    jobs: list[tuple[LanePlan, FileObs]] = []
    for plan in plans:
        for obs in plan.files.values():
            if obs.st is None or obs.expect is None or not _algo(obs.expect):
                continue
            if obs.from_receipt or any(p.path == obs.rel and p.is_error for p in plan.result.problems):
                continue
            jobs.append((plan, obs))
    results = hash_files([(str(obs.abs), (_algo(obs.expect),)) for _plan, obs in jobs])
    for (plan, obs), res in zip(jobs, results):
        if isinstance(res, OSError):
            plan.result.problems.append(P.error(obs.rel, P.UNREADABLE, f"{obs.rel}: read failed ({res.strerror})"))
            continue
        obs.digests = res
        plan.result.hashed_bytes += obs.st.st_size
    for plan in plans:
        for obs in plan.files.values():
            if obs.digests is None or obs.expect is None:
                continue
            algo = _algo(obs.expect)
            if algo is None:
                continue
            want = getattr(obs.expect, algo)
            got = obs.digests.get(algo)
            if got != want:
                label = {"sha256": "sha256", "sha1": "git blob sha1", "md5": "md5", "crc32c": "crc32c"}[algo]
                src = " (from the receipt of an earlier verification)" if obs.from_receipt else ""
                plan.result.problems.append(P.error(obs.rel, P.CHECKSUM_MISMATCH, f"{obs.rel}: {label} is {got}{src}, expected {want}"))
                ctx.receipts.forget(plan.state_key(obs.rel))
            elif not obs.from_receipt:
                try:
                    st = os.stat(obs.abs)
                except OSError:
                    continue
                if st.st_size == obs.st.st_size and st.st_mtime_ns == obs.st.st_mtime_ns:
                    ctx.receipts.record(plan.state_key(obs.rel), st, obs.digests)


def check_formats(ctx: Context, plan: LanePlan, base_info=None):
    """Header-level checks of the lane's files by kind. Returns the folder/file info."""
    lane, result = plan.lane, plan.result
    if plan.escaped:
        return None
    present = [rel for rel, obs in plan.files.items() if obs.st is not None]
    bad = {p.path for p in result.problems if p.is_error}
    info = None
    if lane.kind in ("hf-dir", "hf-cache"):
        if not present and any(p.code == P.MISSING for p in result.problems):
            return None
        from .formats.hfdir import check_hf_dir

        info = check_hf_dir(plan.root, present, serves_text=lane.serves_text, allow_pickle=lane.allow_pickle)
    elif lane.kind == "adapter":
        if not present:
            return None
        from .formats.adapter import check_adapter

        info = check_adapter(plan.root, present, base=base_info)
    elif lane.kind == "gguf":
        from .formats.gguf import check_gguf, check_gguf_split

        # engine_newer: the lane serves with a llama.cpp newer than the one the GGUF tables describe
        # (gguf_arch.ENGINE; `serve: {engine: llama.cpp, version: b12000}`), so architectures,
        # tokenizers and ggml types those tables do not know are warnings instead of refusals.
        from .formats.gguf_model import engine_is_newer

        engine_newer = engine_is_newer(declared_llama_cpp(lane))
        names = [rel for rel in plan.files]
        for rel in names:
            if rel in present:
                info_one = check_gguf(plan.root / rel, name=rel, engine_newer=engine_newer, vocab_only=lane.vocab_only)
                result.problems.extend(info_one.problems)
                info = info if info is not None else info_one
        if len(names) > 1 and all(n in present for n in names):
            result.problems.extend(check_gguf_split([plan.root / n for n in names], engine_newer=engine_newer))
    elif lane.kind == "file":
        for rel in present:
            if rel in bad:
                continue
            result.problems.extend(check_single_file(plan.root / rel, rel, lane.allow_pickle))
    if info is not None and lane.kind != "gguf":
        seen = {(p.path, p.code, p.message) for p in result.problems}
        result.problems.extend(p for p in info.problems if (p.path, p.code, p.message) not in seen)
    return info


def check_single_file(path: Path, rel: str, allow_pickle: bool) -> list[Problem]:
    """A `.safetensors` or `.gguf` name is checked as that format; any other file as what its
    bytes are (safetensors, GGUF, a pickle or PyTorch checkpoint, or plain data), whatever its name."""
    low = rel.lower()
    if path.stat().st_size == 0:
        return [P.error(rel, P.EMPTY_FILE, f"{rel} is empty (0 bytes)")]
    if low.endswith(".safetensors"):
        from .formats.safetensors import check_safetensors

        return list(check_safetensors(path, name=rel).problems)
    if low.endswith(".gguf"):
        from .formats.gguf import check_gguf

        return list(check_gguf(path, name=rel).problems)
    from .formats.pickle import check_by_content

    return check_by_content(path, rel, allow_pickle)


def check_lanes(ctx: Context, lanes: list[Lane], remotes: dict[str, tuple[dict[str, FileExpect], str | None]] | None = None) -> list[LaneResult]:
    """Observe, hash (in parallel across lanes), then format-check every lane."""
    remotes = remotes or {}
    plans = [observe(ctx, lane, *remotes.get(lane.name, (None, None))) for lane in lanes]
    verify_digests(ctx, plans)
    infos: dict[str, object] = {}
    fingerprints: dict[str, str] = {}
    bases = {lane.base for lane in lanes if lane.base}
    order = sorted(plans, key=lambda p: p.lane.kind == "adapter")  # bases before adapters
    for plan in order:
        # A lane whose exact files (names and stat keys) passed their format checks before
        # is not parsed again: a warm restart reads no headers. Bases and adapters are
        # always checked, since an adapter is judged against its base's tensors.
        fingerprint = None
        if ctx.verify != "full" and not plan.escaped and not plan.result.errors and not plan.lane.base and plan.lane.name not in bases:
            fingerprint = fingerprints[plan.lane.name] = lane_fingerprint(plan)
            warnings = ctx.receipts.lane_ok(plan.lane.name, fingerprint)
            if warnings is not None:
                plan.result.problems.extend(Problem(w["path"], w["code"], w["message"], "warning") for w in warnings if isinstance(w, dict))
                plan.result.settle()
                continue
        base_info = None
        if plan.lane.base:
            base_info = infos.get(plan.lane.base)
            if base_info is None:
                base_info = _base_info(ctx, plan.lane.base)
        observed = len(plan.result.problems)  # observe's own findings are made again on every run
        infos[plan.lane.name] = check_formats(ctx, plan, base_info)
        plan.result.settle()
        if fingerprint is not None and not plan.result.errors:
            ctx.receipts.mark_lane(plan.lane.name, fingerprint, [p.to_dict() for p in plan.result.problems[observed:]])
    for plan in plans:
        if plan.lane.serve is not None and not plan.escaped and not plan.result.errors:
            from .serving.lane import fit_plan  # will the engine start it on this node (serving/)

            name = plan.lane.name
            fit_plan(ctx, plan, infos.get(name), fingerprints.get(name), warm=name not in infos)
            plan.result.settle()
        if plan.lane.name in ctx.variants:  # which of the lane's variants this is, and why not the ones before
            plan.result.variant = ctx.variants[plan.lane.name]
    for plan in plans:
        if plan.lane.signature is not None:  # the publisher's signature over the digests just verified (signing.py)
            from .signing import verify_lane

            plan.result.problems.extend(verify_lane(ctx, plan))
            plan.result.settle()
    return [p.result for p in plans]


def lane_fingerprint(plan: LanePlan) -> str:
    """What a lane's format checks depend on: its settings and each file's name and stat key.
    Kept as text and compared whole: a digest of it would load OpenSSL on every warm re-check."""
    lane = plan.lane
    parts = [repr((lane.kind, lane.path, lane.serves_text, lane.allow_pickle, lane.vocab_only, declared_llama_cpp(lane), str(plan.root)))]
    for rel, obs in sorted(plan.files.items()):
        st = obs.st
        parts.append(repr((rel, None if st is None else (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))))
    return "\n".join(parts)


def declared_llama_cpp(lane: Lane) -> str | None:
    """The one serve setting a lane's format checks read: a GGUF lane's declared llama.cpp
    version (a newer engine than the tables describe turns unknown names into warnings). How
    else a lane is served is judged by fit, so serving it or not keeps its fingerprint."""
    serve = lane.serve
    return serve.version if lane.kind == "gguf" and serve is not None and serve.engine == "llama.cpp" else None


def _base_info(ctx: Context, name: str):
    """The base lane's folder info when it is not among the selected lanes (read headers only)."""
    try:
        base = ctx.manifest.lane(name)
    except KeyError:
        return None
    plan = observe(ctx, base)
    return check_formats(ctx, plan) if not plan.escaped else None
