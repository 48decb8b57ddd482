#!/usr/bin/env bash
# Check a host models folder with the image: read-only mount, no network, hardened.
# Exit status is preflight's (0 ready, 1 not ready, 2 manifest error, ...).
#
#   ops/check-host-dir.sh DIR MANIFEST [preflight check options...]
#   e.g. ops/check-host-dir.sh /srv/models compose/manifest.yaml --profile minimal --json
#
# Environment: PREFLIGHT_IMAGE (default lane-preflight:latest).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
[[ -d "$1" ]] || { echo "no such folder: $1" >&2; exit 2; }
[[ -f "$2" ]] || { echo "no such manifest: $2" >&2; exit 2; }
dir="$(cd "$1" && pwd)"
manifest="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
shift 2

exec docker run --rm \
    --read-only --tmpfs /tmp:rw,nosuid,nodev,size=256m \
    --cap-drop ALL --security-opt no-new-privileges \
    --network none \
    -v "$dir:/models:ro" \
    -v "$manifest:/etc/preflight/manifest.yaml:ro" \
    "${PREFLIGHT_IMAGE:-lane-preflight:latest}" check "$@"
