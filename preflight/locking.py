"""`preflight lock`: resolve sources to commits and per-file digests."""

from __future__ import annotations

from pathlib import Path

from .cli import split_lanes
from .errors import UsageError
from .integrity import hash_file
from .lockfile import Lock, LockedLane, default_lock_path, format_sha256sum, load_lock
from .manifest import FileExpect, load_manifest


def checked_names(lane, files: dict) -> dict:
    """The listing under the names sync will use, refused as sync refuses it (path-escape)."""
    from .errors import UnsafeSourceError
    from .sync import place_names
    from .volume import UnsafeName, safe_rel

    placed = place_names(lane, files)
    for rel in placed:
        try:
            safe_rel(rel)
        except UnsafeName as exc:
            raise UnsafeSourceError(f"lane {lane.name}: the source lists a name that would leave the lane: {exc}; not locked") from None
    return placed


def make_lock(manifest_path: str, output: str | None, fmt: str, lanes: tuple[str, ...], token_file: str | None) -> tuple[str, Path | None]:
    manifest = load_manifest(manifest_path)
    names = split_lanes(lanes)
    selected = manifest.select(None, names) if names else list(manifest.lanes)
    path = Path(output) if output and output != "-" else default_lock_path(manifest)
    lock = load_lock(path) if (fmt == "json" and path.exists() and output != "-") else Lock(str(path))
    token = None
    for lane in selected:
        src = lane.source
        if src is None:
            continue
        if src.scheme == "hf":
            from .sources.hf import read_token, resolve

            if token is None:
                token = read_token(token_file) or ""
            listing = resolve(lane, token or None)
            # sha256 for LFS files, git blob sha1 for the rest (RemoteFile.expect)
            lock.lanes[lane.name] = LockedLane(lane.name, src.raw, src.revision, listing.commit,
                                               checked_names(lane, {rel: f.expect for rel, f in listing.files.items()}))
        elif src.scheme in ("https", "http"):
            name = Path(lane.path).name
            exp = lane.files.get(name)
            if exp is None or not exp.sha256:
                raise UsageError(f"lane {lane.name}: a URL source is locked from the manifest's sha256, and it has none")
            lock.lanes[lane.name] = LockedLane(lane.name, src.raw, None, None, {name: exp})
        else:
            from .sources.local import listing as local_listing

            files = {}
            for rel, (p, e) in local_listing(lane, manifest.file).items():
                files[rel] = FileExpect(e.size, hash_file(p)["sha256"], None)
            lock.lanes[lane.name] = LockedLane(lane.name, src.raw, None, None, checked_names(lane, files))
    if fmt == "sha256sum":
        files: dict[str, FileExpect] = {}
        for lane in selected:
            locked = lock.lanes.get(lane.name)
            if locked:
                prefix = lane.path if lane.is_dir else str(Path(lane.path).parent)
                for rel, e in locked.files.items():
                    files[f"{prefix}/{rel}" if prefix not in ("", ".") and len(selected) > 1 else rel] = e
        text = format_sha256sum(files)
    else:
        text = lock.to_json()
    if output == "-":
        return text, None
    if fmt == "json":
        lock.save()
    else:
        path.write_text(text)
    return text, path
