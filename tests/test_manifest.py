"""The manifest as a user writes it: every field, variables, located errors, lane selection."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from preflight.cli import main
from preflight.errors import ManifestError
from preflight.manifest import FileExpect, load_manifest

SHA_A = "a" * 64
SHA_B = "b" * 64


def write(tmp_path: Path, text: str, name: str = "lanes.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def cli(args: list[str], env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, args, env=env or {}, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "internal error" not in result.output
    return result


FULL = """
version: 1
models_dir: ${MODELS_PATH:-/srv/models}
defaults:
  revision: v1
  include: ["*.json", "*.safetensors"]
  exclude: ["*.bin"]
  required: false
  allow_pickle: true
  serves_text: false
profiles:
  minimal: [tiny, tiny-gguf]
lock: pinned.lock.json
endpoints:
  - {name: vllm, kind: vllm, url: "http://127.0.0.1:8000"}
lanes:
  - name: tiny
    kind: hf-dir
    path: vllm/tiny/
    source: hf://org/tiny
    files:
      config.json: {sha256: "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", size: 10}
      tokenizer.json: {sha1: "0123456789abcdef0123456789abcdef01234567"}
    required: true
    serves_text: true
  - name: tiny-gguf
    kind: gguf
    path: gguf/./tiny.Q8_0.gguf
    source: hf://org/tiny-gguf/tiny.Q8_0.gguf@abc
    profiles: [extra]
    enabled: false
    vocab_only: true
  - name: clip
    kind: file
    path: clip/ViT-B-32.pt
    source: https://example.org/ViT-B-32.pt
    sha256: %s
    size: 353976522
    allow_pickle: false
  - name: lora
    kind: adapter
    path: adapters/lora
    base: tiny
    source: /mirror/lora
    include: adapter_*
    checksums: SHA256SUMS
  - name: embed
    kind: hf-cache
    path: hf-cache
    source: hf://datasets/org/embed
    revision: main
    endpoint: {kind: tei, url: "http://127.0.0.1:8080"}
""" % SHA_B


def test_every_field_is_read(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, FULL), env={})
    assert m.version == 1 and m.models_dir == "/srv/models" and m.lock == "pinned.lock.json"
    assert m.profiles == {"minimal": ("tiny", "tiny-gguf")}
    assert [lane.name for lane in m.lanes] == ["tiny", "tiny-gguf", "clip", "lora", "embed"]

    tiny = m.lane("tiny")
    assert (tiny.kind, tiny.path, tiny.required, tiny.serves_text) == ("hf-dir", "vllm/tiny", True, True)
    assert tiny.source.scheme == "hf" and tiny.source.repo == "org/tiny" and tiny.revision == "v1"
    assert tiny.include == ("*.json", "*.safetensors") and tiny.exclude == ("*.bin",) and tiny.allow_pickle
    assert tiny.files["config.json"] == FileExpect(10, "a" * 64, None)
    assert tiny.files["tokenizer.json"].sha1 == "0123456789abcdef0123456789abcdef01234567"

    gg = m.lane("tiny-gguf")
    assert gg.path == "gguf/tiny.Q8_0.gguf" and gg.source.path_in_repo == "tiny.Q8_0.gguf" and gg.revision == "abc"
    assert gg.profiles == ("extra",) and gg.enabled is False and gg.required is False and gg.serves_text is False
    assert gg.vocab_only is True and tiny.vocab_only is False

    clip = m.lane("clip")
    assert clip.source.scheme == "https" and clip.files == {"ViT-B-32.pt": FileExpect(353976522, SHA_B, None)}
    assert clip.allow_pickle is False

    lora = m.lane("lora")
    assert lora.base == "tiny" and lora.include == ("adapter_*",) and lora.checksums == "SHA256SUMS"
    assert lora.source.scheme == "local" and lora.source.local == "/mirror/lora"

    embed = m.lane("embed")
    assert embed.source.repo_type == "dataset" and embed.source.repo == "org/embed"
    assert {"name": "embed", "lane": "embed", "kind": "tei", "url": "http://127.0.0.1:8080"} in [dict(e) for e in m.endpoints]
    assert m.endpoints[0]["name"] == "vllm"


def test_json_is_yaml(tmp_path: Path) -> None:
    doc = {"version": 1, "models_dir": "/m", "lanes": [{"name": "a", "kind": "file", "path": "a.bin", "size": 3}]}
    m = load_manifest(write(tmp_path, json.dumps(doc), "lanes.json"), env={})
    assert m.lane("a").files == {"a.bin": FileExpect(3)}


def test_variables(tmp_path: Path) -> None:
    p = write(tmp_path, """
        version: 1
        models_dir: ${ROOT}/models
        lanes:
          - name: a
            kind: file
            path: "${SUB:-fallback}/${EMPTY-kept}/${EMPTY:-colon}/$${LITERAL}/cost$$"
            required: ${REQ:-false}
          - name: b
            kind: file
            path: b
            required: "false"
            enabled: ${ON}
    """)
    with pytest.raises(ManifestError, match="lanes\\[1\\].required: expected true or false, found str 'false'"):
        load_manifest(p, env={"ROOT": "/r", "EMPTY": "", "ON": "true"})  # a literal quoted "false" is a string, not a bool
    p.write_text(p.read_text().replace('required: "false"', "required: ${REQ:-true}"))
    m = load_manifest(p, env={"ROOT": "/r", "EMPTY": "", "ON": "false"})
    assert m.models_dir == "/r/models"
    assert m.lane("a").path == "fallback/colon/${LITERAL}/cost$"  # ${EMPTY-kept} keeps the empty value
    assert m.lane("a").required is False and m.lane("b").required is True and m.lane("b").enabled is False
    m = load_manifest(p, env={"ROOT": "/r", "SUB": "given", "EMPTY": "x", "ON": "true", "REQ": "true"})
    assert m.lane("a").path == "given/x/x/${LITERAL}/cost$" and m.lane("a").required is True


def test_unset_variable_without_default_is_exit_2_naming_file_line_field(tmp_path: Path) -> None:
    p = write(tmp_path, f"""
        version: 1
        models_dir: ${{MODELS_PATH:-{tmp_path}}}
        lanes:
          - name: a
            kind: file
            path: a.bin
            sha256: ${{CLIP_SHA}}
    """)
    r = cli(["check", "-m", str(p)])
    assert r.exit_code == 2
    assert f"{p}:7: lanes[0].sha256: environment variable CLIP_SHA is not set" in r.stderr
    assert "CLIP_SHA:-default" in r.stderr  # the hint says how to fix it
    r = cli(["check", "-m", str(p), "-q"], env={"CLIP_SHA": SHA_A})
    assert r.exit_code == 1  # now it loads; the file is simply missing


LANE = "  - name: a\n    kind: file\n    path: a.bin\n"

# (manifest text, line, field, message fragment)
BAD = {
    "yaml-syntax": ("lanes: [\n  {name: a\n", 3, None, "not valid YAML"),
    "yaml-tab": ("lanes:\n\t- name: a\n", 2, None, "not valid YAML"),
    "empty": ("# nothing\n", None, None, "the manifest is empty"),
    "top-level-list": ("- a\n", 1, None, "expected a mapping at the top level"),
    "unknown-top-key": ("lane:\n" + LANE, 1, "lane", "unknown top-level key 'lane' (did you mean 'lanes'?)"),
    "unknown-lane-key": ("lanes:\n" + LANE + "    requierd: false\n", 5, "lanes[0].requierd", "did you mean 'required'?"),
    "unknown-default-key": ("defaults: {revison: main}\nlanes:\n" + LANE, 1, "defaults.revison", "did you mean 'revision'?"),
    "unknown-file-key": ("lanes:\n" + LANE + "    files: {a.bin: {sha265: x}}\n", 5, "lanes[0].files.a.bin.sha265", "unknown file key"),
    "wrong-type-bool": ("lanes:\n" + LANE + "    required: yes please\n", 5, "lanes[0].required", "expected true or false"),
    "wrong-type-int": ("lanes:\n" + LANE + "    size: 12 MB\n", 5, "lanes[0].size", "expected an integer"),
    "bool-is-not-int": ("lanes:\n" + LANE + "    size: true\n", 5, "lanes[0].size", "expected an integer"),
    "negative-size": ("lanes:\n" + LANE + "    size: -1\n", 5, "lanes[0].size", "size must be >= 0"),
    "bad-sha256": ("lanes:\n" + LANE + "    sha256: abc\n", 5, "lanes[0].sha256", "expected 64 hex digits"),
    "bad-sha1": ("lanes:\n" + LANE + "    files: {a.bin: {sha1: xyz}}\n", 5, "lanes[0].files.a.bin.sha1", "40 hex digits"),
    "wrong-type-list": ("lanes:\n" + LANE + "    include: 5\n", 5, "lanes[0].include", "expected a list of strings"),
    "lanes-not-list": ("lanes: {a: 1}\n", 1, "lanes", "expected a list"),
    "lane-not-mapping": ("lanes:\n  - just-a-name\n", 2, "lanes[0]", "expected a lane mapping"),
    "no-lanes": ("lanes: []\n", 1, "lanes", "no lanes"),
    "missing-lanes": ("version: 1\n", None, None, "missing required field 'lanes'"),
    "missing-kind": ("lanes:\n  - name: a\n    path: a\n", 2, "lanes[0]", "missing required field 'kind'"),
    "missing-path": ("lanes:\n  - name: a\n    kind: file\n", 2, "lanes[0]", "missing required field 'path'"),
    "missing-name": ("lanes:\n  - kind: file\n    path: a\n", 2, "lanes[0]", "missing required field 'name'"),
    "duplicate-lane": ("lanes:\n" + LANE + "  - name: a\n    kind: file\n    path: b.bin\n", 5, "lanes[1].name", "duplicate lane name 'a' (first at line 2)"),
    "duplicate-key": ("lanes:\n  - name: a\n    kind: file\n    name: b\n    path: a\n", 4, "lanes[0].name", "duplicate key 'name'"),
    "bad-kind": ("lanes:\n  - name: a\n    kind: gguff\n    path: a\n", 3, "lanes[0].kind", "unknown kind 'gguff' (did you mean 'gguf'?)"),
    "bad-name": ("lanes:\n  - name: a/b\n    kind: file\n    path: a\n", 2, "lanes[0].name", "must be letters, digits"),
    "path-escape-dotdot": ("lanes:\n  - name: a\n    kind: file\n    path: x/../../a\n", 4, "lanes[0].path", "stay inside models_dir"),
    "path-absolute": ("lanes:\n  - name: a\n    kind: file\n    path: /etc/passwd\n", 4, "lanes[0].path", "stay inside models_dir"),
    "path-is-root": ("lanes:\n  - name: a\n    kind: hf-dir\n    path: ./\n", 4, "lanes[0].path", "stay inside models_dir"),
    "file-escapes-lane": ("lanes:\n  - name: a\n    kind: hf-dir\n    path: d\n    files: {../x: {size: 1}}\n", 5, "lanes[0].files.../x", "stay inside the lane"),
    "url-without-sha256": ("lanes:\n" + LANE + "    source: https://example.org/a.bin\n", 5, "lanes[0].source", "needs the file's sha256"),
    "bad-scheme": ("lanes:\n" + LANE + "    source: ftp://example.org/a\n", 5, "lanes[0].source", "unsupported source scheme ftp://"),
    "hf-without-repo": ("lanes:\n" + LANE + "    source: hf://org\n", 5, "lanes[0].source", "expected hf://ORG/REPO"),
    "revision-twice": ("lanes:\n" + LANE + "    source: hf://o/r@a\n    revision: b\n", 5, "lanes[0].source", "revision given twice"),
    "profile-unknown-lane": ("profiles:\n  small: [a, ghost]\nlanes:\n" + LANE, 2, "profiles.small[1]", "profile 'small' names unknown lane 'ghost'"),
    "profile-not-list": ("profiles:\n  small: a\nlanes:\n" + LANE, 2, "profiles.small", "expected a list of lane names"),
    "adapter-base-unknown": ("lanes:\n  - name: l\n    kind: adapter\n    path: l\n    base: llama\n", 5, "lanes[0].base", "base lane 'llama' is not defined"),
    "adapter-own-base": ("lanes:\n  - name: l\n    kind: adapter\n    path: l\n    base: l\n", 5, "lanes[0].base", "its own base"),
    "base-on-non-adapter": ("lanes:\n" + LANE + "    base: a\n", 5, "lanes[0].base", "applies to adapter lanes"),
    "vocab-only-on-non-gguf": ("lanes:\n" + LANE + "    vocab_only: true\n", 5, "lanes[0].vocab_only", "applies to gguf lanes"),
    "vocab-only-not-bool": ("lanes:\n  - {name: g, kind: gguf, path: g.gguf, vocab_only: maybe}\n", 2, "lanes[0].vocab_only", "expected true or false"),
    "digest-on-folder": ("lanes:\n  - name: a\n    kind: hf-dir\n    path: d\n    sha256: " + SHA_A + "\n", 5, "lanes[0].sha256", "give digests per file"),
    "hf-cache-needs-hf": ("lanes:\n  - name: a\n    kind: hf-cache\n    path: c\n", 2, "lanes[0].source", "needs an hf:// source"),
    "overlap": ("lanes:\n  - {name: a, kind: hf-dir, path: m}\n  - {name: b, kind: file, path: m/x.bin}\n", 3, "lanes[1].path", "overlap"),
    "version": ("version: 2\nlanes:\n" + LANE, 1, "version", "unsupported manifest version 2"),
    "explicit-tag": ("lanes:\n" + LANE + "    size: !!int twelve\n", 5, "lanes[0].size", "cannot read value"),
    "python-tag": ("lanes:\n" + LANE + "    size: !!python/name:os.system x\n", 5, "lanes[0].size", "cannot read value"),
    "merge-of-scalar": ("lanes:\n  - <<: 5\n    name: a\n", 2, "lanes[0]", "merge"),
    "recursive-alias": ("lanes: &x [*x]\n", 1, None, "alias"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_manifest_errors_exit_2_with_file_line_field(tmp_path: Path, case: str) -> None:
    text, line, field, fragment = BAD[case]
    p = write(tmp_path, text)
    r = cli(["check", "-m", str(p), "-d", str(tmp_path)])
    assert r.exit_code == 2, r.output
    first = r.stderr.splitlines()[0]
    where = f"preflight: error: {p}" + (f":{line}" if line else "") + ":"
    assert first.startswith(where), first
    if field:
        assert f": {field}: " in first, first
    assert fragment in r.stderr


def test_manifest_not_found_and_not_utf8(tmp_path: Path) -> None:
    r = cli(["check", "-m", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "manifest not found" in r.stderr and "PREFLIGHT_MANIFEST" in r.stderr
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"lanes:\n  - name: caf\xe9\n")
    r = cli(["check", "-m", str(p)])
    assert r.exit_code == 2 and "not UTF-8" in r.stderr


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = "a" if i == 1 else f"l{i - 1}"
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*{prev}"] * 10) + "]")
    p = write(tmp_path, "\n".join(lines) + "\n")
    r = cli(["check", "-m", str(p)])
    assert r.exit_code == 2 and "aliases expand too far" in r.stderr


# ---------------------------------------------------------------- selection on a real volume

SELECT = """
version: 1
models_dir: {models}
profiles:
  small: [a]
lanes:
  - {{name: a, kind: file, path: a.dat, size: 1}}
  - {{name: b, kind: file, path: b.dat, size: 1, profiles: [small, big]}}
  - {{name: c, kind: file, path: c.dat, size: 1, required: false}}
  - {{name: spare, kind: file, path: spare.dat, size: 1, enabled: false}}
"""


@pytest.fixture()
def volume(tmp_path: Path) -> tuple[Path, Path]:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b"):
        (models / f"{name}.dat").write_bytes(b"x")
    return write(tmp_path, SELECT.format(models=models)), models


def lanes_of(r) -> dict[str, str]:
    return {lane["name"]: lane["status"] for lane in json.loads(r.stdout)["lanes"]}


def test_optional_missing_lane_does_not_block_and_disabled_lane_is_skipped(volume) -> None:
    manifest, _models = volume
    r = cli(["check", "-m", str(manifest), "--json"])
    assert r.exit_code == 0, r.stderr
    assert lanes_of(r) == {"a": "ready", "b": "ready", "c": "missing"}
    assert "c.dat is missing" in r.stderr and "(optional)" in r.stderr
    assert json.loads(r.stdout)["status"] == "ready"


def test_profile_selects_listed_lanes_and_lanes_that_name_it(volume) -> None:
    manifest, models = volume
    r = cli(["check", "-m", str(manifest), "--json", "--profile", "small"])
    assert r.exit_code == 0 and lanes_of(r) == {"a": "ready", "b": "ready"}
    r = cli(["check", "-m", str(manifest), "--json"], env={"PREFLIGHT_PROFILE": "big"})
    assert r.exit_code == 0 and lanes_of(r) == {"b": "ready"}
    (models / "b.dat").unlink()
    r = cli(["check", "-m", str(manifest), "--json", "-p", "small"])
    assert r.exit_code == 1 and lanes_of(r) == {"a": "ready", "b": "missing"}


def test_lane_option_and_env_select_lanes(volume) -> None:
    manifest, _models = volume
    r = cli(["check", "-m", str(manifest), "--json", "--lane", "a", "-l", "c"])
    assert r.exit_code == 0 and lanes_of(r) == {"a": "ready", "c": "missing"}
    r = cli(["check", "-m", str(manifest), "--json"], env={"PREFLIGHT_LANES": "b,spare"})
    assert r.exit_code == 1  # naming a disabled lane selects it; its file is missing and it is required
    assert lanes_of(r) == {"b": "ready", "spare": "missing"}
    r = cli(["check", "-m", str(manifest), "--json", "-p", "small", "-l", "b"])
    assert lanes_of(r) == {"b": "ready"}


def test_unknown_lane_or_profile_is_exit_2(volume) -> None:
    manifest, _models = volume
    r = cli(["check", "-m", str(manifest), "--lane", "ghost"])
    assert r.exit_code == 2 and "no lane named 'ghost'" in r.stderr and "a, b, c, spare" in r.stderr
    r = cli(["check", "-m", str(manifest), "--profile", "huge"])
    assert r.exit_code == 2 and "no profile named 'huge'" in r.stderr and "big, small" in r.stderr


def test_every_lane_disabled_is_a_usage_error(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\nlanes:\n  - {name: a, kind: file, path: a, enabled: false}\n")
    r = cli(["check", "-m", str(p), "-d", str(tmp_path)])
    assert r.exit_code == 2 and "no lanes selected" in r.stderr
