#!/usr/bin/env bash
# Refresh ops/constraints.txt: the exact versions the test command installs.
#
#   bash ops/refresh-constraints.sh
#
# How the suite meets dependency drift: `bash ops/test.sh` installs the project and its
# test extra with `-c ops/constraints.txt`, so a fresh machine runs the suite on the
# versions it last passed on, not on whatever was released this morning. The pins move
# on purpose, with this script: it resolves the newest releases into a fresh virtual
# environment and writes what it got. Then run the suite on them
# (`bash ops/test.sh`) before committing the new file. To try the newest releases
# without changing the pins: `PREFLIGHT_CONSTRAINTS=none bash ops/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install --quiet --disable-pip-version-check -e '.[test,docker,s3,zstd,signing]'
{
    echo "# The versions ops/test.sh installs (pip -c). Refresh on purpose: bash ops/refresh-constraints.sh"
    echo "# Resolved for Python $("$python" -c 'import sys; print(".".join(map(str, sys.version_info[:2])))') on $(date -u +%Y-%m-%d)."
    "$venv/bin/pip" freeze --exclude-editable --disable-pip-version-check | grep -v '^-e ' | LC_ALL=C sort -f
} > ops/constraints.txt
echo "ops/constraints.txt: $(grep -vc '^#' ops/constraints.txt) pins"
