#!/usr/bin/env bash
# Build the lane-preflight image with no registry: a debootstrapped base image, then
# every wheel from a local wheelhouse. Prints the size the project adds to the base.
#
#   ops/build-image.sh [TAG]        default: lane-preflight:latest and lane-preflight:<version>
#                                   (the tag ops/k8s/ names)
#
# The first run builds the base image with debootstrap: it needs root and takes a few
# minutes; later runs reuse it. Each step says what it does, and the build prints its
# steps as they run.
#
# Nothing untagged is left behind: the builder stage (and any image an earlier build of
# this project left untagged) is removed after the build. KEEP_BUILDER=1 keeps the
# builder stage tagged as lane-preflight-builder:latest instead, so the next build
# reuses its dependency layer (about a minute saved; one ~60 MB image kept).
#
# Environment: BASE_IMAGE (default lane-preflight-base:bookworm), KEEP_BUILDER.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${1:-lane-preflight:latest}"
base="${BASE_IMAGE:-lane-preflight-base:bookworm}"
builder_tag=lane-preflight-builder:latest
start=$SECONDS

step() { echo "==> [$1/4] $2 ($((SECONDS - start))s elapsed)"; }

step 1 "base image $base"
"$repo/ops/base-image/build.sh" "$base"

step 2 "wheelhouse (every wheel the image installs)"
"$repo/ops/wheelhouse.sh" "$repo/wheelhouse"

version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")"
revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
tags=(-t "$tag")
if [[ $# -eq 0 ]]; then
    tags+=(-t "lane-preflight:$version")
fi
args=(--force-rm --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" --build-arg "REVISION=$revision")
# BuildKit (buildx) prints its own plain progress; the classic builder prints each step.
if docker buildx version >/dev/null 2>&1; then
    args+=(--progress plain)
fi

step 3 "docker build $tag (version $version)"
if [[ "${KEEP_BUILDER:-0}" == 1 ]]; then
    docker build "${args[@]}" --target builder -t "$builder_tag" "$repo"
fi
docker build "${args[@]}" "${tags[@]}" "$repo"

step 4 "removing untagged images of earlier builds and the builder stage"
docker image prune -f --filter "label=io.lane-preflight.stage" >/dev/null
if [[ "${KEEP_BUILDER:-0}" == 1 ]]; then
    echo "kept $builder_tag for the next build (docker rmi $builder_tag frees it)"
fi

base_size="$(docker image inspect --format '{{.Size}}' "$base")"
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "$tag: $((size / 1000000)) MB; base $base: $((base_size / 1000000)) MB; added: $(((size - base_size) / 1000000)) MB ($((SECONDS - start))s)"
