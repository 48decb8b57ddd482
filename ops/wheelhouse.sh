#!/usr/bin/env bash
# Fill a wheelhouse with every wheel the image needs, so `docker build` can
# install with --no-index (no registry or index reachable from the build).
#
#   ops/wheelhouse.sh [DIR]        default DIR: wheelhouse/ in the repository root
#
# The host's Python must match the image's (3.11 for bookworm and python:3.11-slim).
# Re-running reuses the wheels already in DIR and only fetches what is missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/wheelhouse}"
python="${PYTHON:-python3}"
mkdir -p "$dir"

"$python" - "$repo/pyproject.toml" "${EXTRAS-s3 gcs signing}" >"$dir/requirements.txt" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
build = project["build-system"]["requires"]
extras = [d for e in sys.argv[2].split() for d in project["project"]["optional-dependencies"][e]]
print("\n".join([*project["project"]["dependencies"], *extras, *build, "wheel"]))
PY

if ! "$python" -m pip wheel --quiet --no-index --find-links "$dir" --wheel-dir "$dir" -r "$dir/requirements.txt" 2>/dev/null; then
    "$python" -m pip wheel --quiet --find-links "$dir" --wheel-dir "$dir" -r "$dir/requirements.txt"
fi
ls "$dir"/*.whl | wc -l | xargs echo "wheels in $dir:"
