"""`preflight lock`: resolve sources to commits and per-file digests."""

from __future__ import annotations

from pathlib import Path

from .lockfile import Lock, LockedLane, format_sha256sum, load_lock
from .manifest import FileExpect, load_manifest, split_lanes
from .volume import write_file_atomic


def make_lock(manifest_path: str, output: str | None, fmt: str, lanes: tuple[str, ...], token_file: str | None) -> tuple[str, Path | None]:
    from .sources import Context, Listing, open_source
    from .sources.http import Timeouts
    from .sync import checked_listing

    manifest = load_manifest(manifest_path)
    names = split_lanes(lanes)
    selected = manifest.select(None, names) if names else list(manifest.lanes)
    path = Path(output) if output and output != "-" else manifest.lock_path
    lock = load_lock(path) if (fmt == "json" and path.exists() and output != "-") else Lock(str(path))
    token: list[str | None] = []

    def get_token() -> str | None:
        if not token:
            from .sources.hf import read_token

            token.append(read_token(token_file))
        return token[0]

    ctx = Context(manifest.file, Timeouts(), get_token)

    def lock_one(lane) -> LockedLane:
        src = lane.source
        source = open_source(lane, ctx)
        listing = source.resolve(None)
        files, version = checked_listing(lane, listing)  # refused as sync refuses it (path-escape)
        # sha256 for the Hub's LFS files, its git blob sha1 for the rest; a mirror's files hashed now
        locked_files = source.lock_files(Listing(version, files, unlisted=listing.unlisted))
        entry = LockedLane(lane.name, src.raw, src.revision if version else None, version, locked_files, archive=source.archive_pin())
        if lane.serve is not None:  # what fit needs, so `sync --locked` judges it before a download without the network
            from .serving.before import source_inputs

            got = source_inputs(lane, source, files)
            entry.fit = got.inputs.to_dict() if got.inputs is not None else None
        return entry

    for lane in selected:
        if lane.source is None:
            continue
        lock.lanes[lane.name] = lock_one(lane)
        for variant in lane.variants:
            if variant.source is not None:
                lock.lanes[lane.name].variants[variant.variant] = lock_one(variant)
    if fmt == "sha256sum":
        files: dict[str, FileExpect] = {}
        many = len(selected) > 1 or any(lane.variants for lane in selected)
        for lane in selected:
            entry = lock.lanes.get(lane.name)
            for candidate, locked in ((lane, entry), *((v, entry.variants.get(v.variant) if entry else None) for v in lane.variants)):
                if locked:
                    prefix = candidate.path if candidate.is_dir else str(Path(candidate.path).parent)
                    for rel, e in locked.files.items():
                        files[f"{prefix}/{rel}" if prefix not in ("", ".") and many else rel] = e
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
