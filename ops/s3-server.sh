#!/usr/bin/env bash
# Build the real S3-compatible server the s3:// tests run against: s3s-fs (the s3s
# project's file-system backend, from crates.io), started by tests/s3_server.py on
# 127.0.0.1 with its own root folder, access key and secret.
#
#   bash ops/s3-server.sh            # builds when missing; prints the binary's path on its last line
#   bash ops/s3-server.sh --print    # only prints where the binary is (or would be)
#
# Building takes about ten minutes on two cores, once: the binary is kept in
# $PREFLIGHT_S3_SERVER_DIR, else the project's ignored build/ folder when it holds one,
# else ${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/s3s-fs-VERSION (kept across fresh
# clones, as the oracle builds are). Pinned: s3s-fs 0.14.1 with its Cargo.lock (--locked).
set -euo pipefail

version="${S3S_FS_VERSION:-0.14.1}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PREFLIGHT_S3_SERVER_DIR:-}" ]; then
    dir="$PREFLIGHT_S3_SERVER_DIR"
elif [ -x "$repo/build/s3s-fs-$version/bin/s3s-fs" ]; then
    dir="$repo/build/s3s-fs-$version"
else
    dir="${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/s3s-fs-$version"
fi
bin="$dir/bin/s3s-fs"
if [ "${1:-}" = "--print" ]; then
    echo "$bin"
    exit 0
fi
# One build at a time: a second run (another checkout's test command) waits here, then
# finds the build done.
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    echo "s3s-fs $version already built"
    echo "$bin"
    exit 0
fi
if ! command -v cargo >/dev/null; then
    echo "ops/s3-server.sh: cargo is needed to build s3s-fs (https://rustup.rs)" >&2
    exit 1
fi
echo "building s3s-fs $version (about ten minutes on two cores)"
mkdir -p "$dir"
target="$(mktemp -d "${TMPDIR:-/tmp}/s3s-fs-build.XXXXXX")"
trap 'rm -rf "$target"' EXIT
cargo install "s3s-fs@$version" --locked --features binary --root "$dir" --target-dir "$target" \
    --jobs "${CARGO_BUILD_JOBS:-2}" --quiet
rm -f "$dir/.crates.toml" "$dir/.crates2.json"
"$bin" --version
echo "$bin"
