#!/usr/bin/env bash
# Fill a named Docker volume (created when missing) with the lanes of a manifest.
# The Hub token, when HF_TOKEN_FILE names one, is mounted read-only as a file.
#
#   ops/sync-volume.sh VOLUME MANIFEST [preflight sync options...]
#   e.g. HF_TOKEN_FILE=~/.cache/huggingface/token ops/sync-volume.sh models compose/manifest.yaml
#
# Environment: PREFLIGHT_IMAGE (default lane-preflight:latest), HF_TOKEN_FILE, HF_ENDPOINT,
# DOCKER_NETWORK (a network for the container, e.g. host).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
[[ -f "$2" ]] || { echo "no such manifest: $2" >&2; exit 2; }
if [[ -n "${HF_TOKEN_FILE:-}" && ! -r "$HF_TOKEN_FILE" ]]; then
    echo "cannot read HF_TOKEN_FILE=$HF_TOKEN_FILE" >&2
    exit 2
fi
volume="$1"
manifest="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
shift 2

args=(--rm --read-only --tmpfs /tmp:rw,nosuid,nodev,size=256m
      --cap-drop ALL --security-opt no-new-privileges
      -v "$volume:/models" -v "$manifest:/etc/preflight/manifest.yaml:ro")
if [[ -n "${DOCKER_NETWORK:-}" ]]; then
    args+=(--network "$DOCKER_NETWORK")
fi
if [[ -n "${HF_ENDPOINT:-}" ]]; then
    args+=(-e "HF_ENDPOINT=$HF_ENDPOINT")
fi
if [[ -n "${HF_TOKEN_FILE:-}" ]]; then
    # The container's uid (65532) must be able to read the token: hand it a private copy.
    staged="$(mktemp -d)"
    trap 'rm -rf "$staged"' EXIT
    install -m 0444 "$HF_TOKEN_FILE" "$staged/token"
    args+=(-v "$staged/token:/run/secrets/hf-token:ro"
           -e PREFLIGHT_TOKEN_FILE=/run/secrets/hf-token -e HF_TOKEN_PATH=/run/secrets/hf-token)
fi

docker run "${args[@]}" "${PREFLIGHT_IMAGE:-lane-preflight:latest}" sync "$@"
