#!/usr/bin/env bash
# Install llama.cpp's Python bindings (llama-cpp-python), the oracle the GGUF tests
# compare preflight's verdicts with (tests/test_gguf_oracle.py).
#
#   bash ops/oracle-llama.sh
#
# PyPI ships llama-cpp-python as source only; building it takes about ten minutes
# on two cores. The wheel is built once, CPU only, and kept in a cache keyed by the
# version and the Python ABI; later runs install it from there in seconds.
# Cache folder: $PREFLIGHT_WHEEL_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/wheels.
#
# The sdist also carries llama.cpp's own vocabulary GGUFs (vendor/llama.cpp/models/ggml-vocab-*.gguf,
# written by its converter, 19 files, 75 MB): all are kept beside the wheel for the tests (one
# pass over the archive, once; a stamp file marks the set complete).
# `bash ops/oracle-llama.sh --print-vocab-dir` prints where they are.
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
python="${PYTHON:-python3}"
cache="${PREFLIGHT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lane-preflight/wheels}"
abi="$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
dir="$cache/llama-cpp-python-$version-$abi"
vocab="$cache/llama-cpp-python-$version-vocab"
if [ "${1:-}" = "--print-vocab-dir" ]; then
    echo "$vocab"
    exit 0
fi
mkdir -p "$dir"
# One build at a time: a second run (another checkout's test command) waits here, then
# finds the build done.
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9

sdist() {  # the source archive, downloaded once into the cache
    if ! ls "$cache"/llama_cpp_python-"$version".tar.gz >/dev/null 2>&1; then
        "$python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$cache" "llama-cpp-python==$version"
    fi
    echo "$cache/llama_cpp_python-$version.tar.gz"
}

if [ ! -f "$vocab/.complete" ]; then
    src="$(sdist)"
    tmpv="$(mktemp -d "$cache/vocab.XXXXXX")"
    tar -xzf "$src" -C "$tmpv" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*.gguf'
    mkdir -p "$vocab"
    mv "$tmpv"/*/vendor/llama.cpp/models/ggml-vocab-*.gguf "$vocab"/
    rm -rf "$tmpv"
    ls "$vocab" > "$vocab/.complete"
fi

if "$python" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$version')" 2>/dev/null; then
    echo "llama-cpp-python $version already installed; vocabulary files in $vocab"
    exit 0
fi

if ! ls "$dir"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $version (CPU only; about ten minutes on two cores)"
    # GGML_NATIVE=OFF: the wheel is reused on other machines of this kind, so no
    # instructions of this very CPU. No tests, examples, tools or server: the
    # bindings only need the libraries.
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
-DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
    tmp="$(mktemp -d "$dir/build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$tmp" "$(sdist)"
    mv "$tmp"/llama_cpp_python-"$version"-*.whl "$dir"/
fi

# The wheel's own dependencies (numpy, typing-extensions, diskcache, jinja2) come from the index,
# within the test command's constraints when it passes them.
"$python" -m pip install --quiet --disable-pip-version-check ${PREFLIGHT_PIP_CONSTRAINTS:+-c "$PREFLIGHT_PIP_CONSTRAINTS"} "$dir"/llama_cpp_python-"$version"-*.whl
echo "llama-cpp-python $version installed from $dir; vocabulary files in $vocab"
