#!/usr/bin/env bash
# Install transformers with a CPU torch, the oracle the safetensors/folder campaign
# (tests/test_st_oracle.py) compares preflight's verdicts with. Test-only: none of this
# is a dependency of preflight.
#
#   bash ops/oracle-torch.sh          # prints the oracle's python on its last line
#
# Why not torch from PyPI: its Linux x86_64 wheel (540 MB) links libtorch_cuda.so
# against CUDA 13 libraries shipped as nvidia-* wheels (several GB); installed with
# --no-deps, `import torch` fails ("libcublasLt.so.* not found"). PyPI has no CPU-only
# torch for x86_64. Debian's python3-torch is a CPU build (193 MB download, about 40 s
# to install) for Debian's python3 (3.11 on bookworm), so the oracle is a venv of that
# interpreter that sees it, with transformers from PyPI in the venv. The tests run it
# as a separate process, so its interpreter need not be the one running pytest.
#
# Pinned: torch 1.13.1 (Debian bookworm), transformers 4.44.2 (the last release that
# loads with torch 1.13), safetensors 0.8.0 (the version the test environment uses).
# Folder: $PREFLIGHT_TORCH_ORACLE, else ${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/oracle-torch.
set -euo pipefail

transformers_version="4.44.2"
safetensors_version="0.8.0"
venv="${PREFLIGHT_TORCH_ORACLE:-${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/oracle-torch}"
probe="import torch, transformers, safetensors, sys; sys.exit(not (transformers.__version__ == '$transformers_version' and safetensors.__version__ == '$safetensors_version' and not torch.cuda.is_available()))"

# One build at a time: a second run (another checkout's test command) waits here, then
# finds the build done.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$probe" 2>/dev/null; then
    echo "oracle already installed"
    echo "$venv/bin/python"
    exit 0
fi

if ! /usr/bin/python3 -c "import torch" 2>/dev/null || ! /usr/bin/python3 -c "import ensurepip" 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends python3-torch python3-venv >/dev/null
fi

rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    "transformers==$transformers_version" "safetensors==$safetensors_version"
# CPU only, and it computes.
"$venv/bin/python" -c "$probe"
"$venv/bin/python" -c "import torch; assert (torch.ones(2, 2) @ torch.ones(2, 2)).sum().item() == 8"
echo "$venv/bin/python"
