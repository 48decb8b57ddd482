"""`preflight lock`: resolve sources to commits and per-file digests."""

from __future__ import annotations

from pathlib import Path

from .lockfile import Lock, LockedLane, default_lock_path, format_sha256sum, load_lock
from .manifest import FileExpect, load_manifest, split_lanes
from .volume import write_file_atomic


def make_lock(manifest_path: str, output: str | None, fmt: str, lanes: tuple[str, ...], token_file: str | None) -> tuple[str, Path | None]:
    from .sources import Context, Listing, open_source
    from .sources.http import Timeouts
    from .sync import checked_listing

    manifest = load_manifest(manifest_path)
    names = split_lanes(lanes)
    selected = manifest.select(None, names) if names else list(manifest.lanes)
    path = Path(output) if output and output != "-" else default_lock_path(manifest)
    lock = load_lock(path) if (fmt == "json" and path.exists() and output != "-") else Lock(str(path))
    token: list[str | None] = []

    def get_token() -> str | None:
        if not token:
            from .sources.hf import read_token

            token.append(read_token(token_file))
        return token[0]

    ctx = Context(manifest.file, Timeouts(), get_token)
    for lane in selected:
        src = lane.source
        if src is None:
            continue
        source = open_source(lane, ctx)
        listing = source.resolve(None)
        files, version = checked_listing(lane, listing)  # refused as sync refuses it (path-escape)
        # sha256 for the Hub's LFS files, its git blob sha1 for the rest; a mirror's files hashed now
        locked_files = source.lock_files(Listing(version, files, unlisted=listing.unlisted))
        lock.lanes[lane.name] = LockedLane(lane.name, src.raw, src.revision if version else None, version,
                                           locked_files, source.archive_pin())
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
        write_file_atomic(path, text.encode())
    return text, path
