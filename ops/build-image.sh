#!/usr/bin/env bash
# Build the lane-preflight image with no registry: a debootstrapped base image, then
# every wheel from a local wheelhouse. Prints the size the project adds to the base.
#
#   ops/build-image.sh [TAG]        default: lane-preflight:latest and lane-preflight:<version>
#                                   (the tag ops/k8s/ names)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${1:-lane-preflight:latest}"
base="${BASE_IMAGE:-lane-preflight-base:bookworm}"

"$repo/ops/base-image/build.sh" "$base"
"$repo/ops/wheelhouse.sh" "$repo/wheelhouse"
version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")"
revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
tags=(-t "$tag")
if [[ $# -eq 0 ]]; then
    tags+=(-t "lane-preflight:$version")
fi
docker build --force-rm --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" "${tags[@]}" "$repo"

base_size="$(docker image inspect --format '{{.Size}}' "$base")"
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "$tag: $((size / 1000000)) MB; base $base: $((base_size / 1000000)) MB; added: $(((size - base_size) / 1000000)) MB"
