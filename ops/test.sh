#!/usr/bin/env bash
# The test command: installs what the suite needs from this project's own files, then runs it.
#   bash ops/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Building the base image needs debootstrap; the image tests build it once and reuse it.
# loadfile: the engine tests of one file share a worker (their leftover checks see every container)
python3 -m pytest -n 2 --dist loadfile -q -p no:cacheprovider "$@"
