"""Any text given as a manifest ends as a Manifest or a ManifestError (exit 2), quickly."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preflight.errors import ExitCode, ManifestError
from preflight.manifest import Manifest, parse_manifest
from preflight.yamlloc import load_yaml

ENV = {"SET": "value", "EMPTY": "", "BOOL": "true", "NUM": "12", "DATE": "2024-13-45"}
LIMIT_S = 2.0

VALID = """version: 1
models_dir: ${MODELS:-/models}
defaults: {revision: main, required: true}
profiles:
  small: [a]
lanes:
  - name: a
    kind: hf-dir
    path: vllm/a
    source: hf://org/a@main
    include: ["*.json"]
    files:
      config.json: {size: 10, sha256: "%s"}
  - name: b
    kind: gguf
    path: gguf/b.gguf
    required: ${BOOL}
  - name: c
    kind: adapter
    path: lora/c
    base: a
""" % ("0" * 64)

# Fragments a manifest is made of, so generated text is often almost valid.
TOKENS = [
    "version", "models_dir", "defaults", "profiles", "lanes", "name", "kind", "path", "source", "files", "sha256",
    "size", "required", "enabled", "base", "include", "hf-dir", "gguf", "adapter", "hf-cache", "file", "hf://o/r",
    "https://x/y", "../", "/abs", ":", ": ", "- ", "\n", "\n  ", "\n    ", "[", "]", "{", "}", ",", "&a ", "*a",
    "<<: ", "!!int ", "!!str ", "!!python/object ", "${SET}", "${UNSET}", "${UNSET:-d}", "${EMPTY-x}", "$$", "${",
    "'", '"', "#", "?", "|", ">", "\t", "~", "null", "true", "no", "0x1F", "1e9", "-1", "2024-01-01", "%YAML 1.1\n", "---\n",
    "\ufeff", "\x00", "\u2028",
]


def _load(text: str) -> Manifest | ManifestError:
    start = time.monotonic()
    try:
        result: Manifest | ManifestError = parse_manifest(load_yaml(text, "fuzz.yaml", ENV))
    except ManifestError as exc:
        assert exc.exit_code == ExitCode.USAGE
        assert exc.file == "fuzz.yaml" and str(exc).startswith("fuzz.yaml")
        result = exc
    assert time.monotonic() - start < LIMIT_S
    return result


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=400))
def test_any_text(text: str) -> None:
    _load(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_manifest_shaped_text(text: str) -> None:
    _load(text)


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.integers(0, 40), st.text(max_size=20))
def test_edits_of_a_valid_manifest(pos: int, cut: int, insert: str) -> None:
    result = _load(VALID[:pos] + insert + VALID[pos + cut :])
    if isinstance(result, Manifest):
        assert result.lanes and all(not lane.path.startswith(("/", "../")) and lane.path != ".." for lane in result.lanes)


def test_the_seed_manifest_is_valid() -> None:
    m = _load(VALID)
    assert isinstance(m, Manifest) and [lane.name for lane in m.lanes] == ["a", "b", "c"]
    assert m.lane("b").required is True
