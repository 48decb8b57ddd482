"""Manifest mistakes a user makes are caught at load time (exit 2), located, with the fix in the message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from preflight.cli import main
from preflight.errors import ExitCode, ManifestError, ManifestErrors
from preflight.manifest import FileExpect, load_manifest

SHA = "c" * 64


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def lane_error(tmp_path: Path, lane: str, env: dict[str, str] | None = None) -> ManifestError:
    p = write(tmp_path, "version: 1\nlanes:\n  - name: a\n    kind: file\n" + lane)
    with pytest.raises(ManifestError) as info:
        load_manifest(p, env=env or {})
    assert info.value.exit_code == ExitCode.USAGE
    return info.value


def load_lane(tmp_path: Path, lane: str, kind: str = "file"):
    p = write(tmp_path, f"version: 1\nlanes:\n  - name: a\n    kind: {kind}\n" + lane)
    return load_manifest(p, env={}).lane("a")


# ---------------------------------------------------------------- sources

TYPOS = {
    "hf:/org/repo": "did you mean 'hf://org/repo'?",
    "hf:org/repo": "did you mean 'hf://org/repo'?",
    "hf//org/repo": "did you mean 'hf://org/repo'?",
    "HF://org/repo@main": "did you mean 'hf://org/repo@main'?",
    "huggingface://org/repo": "did you mean 'hf://org/repo'?",
    "hff://org/repo": "did you mean 'hf://org/repo'?",
    "htps://example.org/a.bin": "did you mean 'https://example.org/a.bin'?",
    "https:/example.org/a.bin": "did you mean 'https://example.org/a.bin'?",
    "Https://example.org/a.bin": "did you mean 'https://example.org/a.bin'?",
    "http//example.org/a.bin": "did you mean 'http://example.org/a.bin'?",
    "file:/mnt/mirror/a.bin": "did you mean 'file:///mnt/mirror/a.bin'?",
    "file:mirror/a.bin": "or the plain path 'mirror/a.bin'",
    "C:\\models\\a.bin": "a Windows path",
    "c:/models/a.bin": "a Windows path",
    "S3://bucket/a.bin": "did you mean 's3://bucket/a.bin'?",
    "s3:/bucket/a.bin": "did you mean 's3://bucket/a.bin'?",
    "s3://b/a.bin": "'b' is not a bucket name",
    "OCI://registry/models/a:1": "did you mean 'oci://registry/models/a:1'?",
    "oci://registry/Models/a:1": "'Models/a' is not a repository name",
    "oci://registry/models/a:bad tag": "'bad tag' is not a tag",
    "oci://registry/models/a@sha256:abc": "is not a manifest digest",
    "oci://registry/models/a:1//../x": "must stay inside the artifact",
    "ftp://example.org/a": "unsupported source scheme ftp://",
    "https:///a.bin": "no host in the URL",
    "https://example.org/my model.bin": "cannot contain spaces",
    "https://huggingface.co/org/repo": "did you mean 'hf://org/repo'?",
    "hf://org/my repo": "is not a Hub organisation or repo name",
    "file://": "no path after file://",
    "   ": "the source is empty",
}


@pytest.mark.parametrize("source", list(TYPOS))
def test_a_misspelt_or_unsupported_source_is_exit_2_with_a_did_you_mean(tmp_path: Path, source: str) -> None:
    exc = lane_error(tmp_path, f"    path: a.bin\n    sha256: {SHA}\n    source: {json.dumps(source)}\n")
    assert exc.field == "lanes[0].source" and exc.line == 7
    assert TYPOS[source] in str(exc), str(exc)


@pytest.mark.parametrize("source, local", [
    ("./mirror/x", "./mirror/x"), ("/mnt/mirror", "/mnt/mirror"), ("mirror/a.bin", "mirror/a.bin"),
    ("file:///mnt/mirror", "/mnt/mirror"), ("mirror:v2/a.bin", "mirror:v2/a.bin"), ("hf/org/repo", "hf/org/repo"),
])
def test_a_plain_path_stays_a_local_mirror(tmp_path: Path, source: str, local: str) -> None:
    lane = load_lane(tmp_path, f"    path: a.bin\n    source: {json.dumps(source)}\n")
    assert lane.source.scheme == "local" and lane.source.local == local


def test_hub_sources_still_parse(tmp_path: Path) -> None:
    lane = load_lane(tmp_path, "    path: d\n    source: hf://Qwen/Qwen2.5-Coder-7B-Instruct/sub/w.safetensors@v1.0\n", kind="hf-dir")
    assert (lane.source.repo, lane.source.path_in_repo, lane.revision) == ("Qwen/Qwen2.5-Coder-7B-Instruct", "sub/w.safetensors", "v1.0")
    url = "https://huggingface.co/org/repo/resolve/main/a.bin"
    assert load_lane(tmp_path, f"    path: a.bin\n    sha256: {SHA}\n    source: {url}\n").source.url == url


def test_a_misspelt_source_through_the_cli_is_exit_2_not_a_missing_mirror(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\nlanes:\n  - {name: a, kind: hf-dir, path: a, source: 'hf:/org/repo'}\n")
    r = CliRunner().invoke(main, ["sync", "-m", str(p), "-d", str(tmp_path / "models"), "--termination-log", ""], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"preflight: error: {p}:3: lanes[0].source: bad source 'hf:/org/repo'")
    assert not (tmp_path / "models" / "a").exists()


# ---------------------------------------------------------------- version

def test_a_missing_version_is_exit_2_naming_the_field(tmp_path: Path) -> None:
    p = write(tmp_path, "lanes:\n  - {name: a, kind: file, path: a.bin}\n")
    r = CliRunner().invoke(main, ["check", "-m", str(p), "-d", str(tmp_path), "--termination-log", ""], env={})
    assert r.exit_code == 2
    assert r.stderr.startswith(f"preflight: error: {p}:1: version: missing required field 'version'")
    assert "`version: 1`" in r.stderr


def test_a_missing_version_comes_after_the_other_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "lanes:\n  - {name: a, kind: gguff, path: a.bin}\n")
    with pytest.raises(ManifestErrors) as info:
        load_manifest(p, env={})
    assert [e.field for e in info.value.errors] == ["lanes[0].kind", "version"]


@pytest.mark.parametrize("version, fragment", [("2", "unsupported manifest version 2"), ('"1"', "expected an integer, found str '1'")])
def test_a_wrong_version_stops_at_the_version(tmp_path: Path, version: str, fragment: str) -> None:
    p = write(tmp_path, f"version: {version}\nlanes:\n  - {{name: a, kind: gguff, path: a.bin}}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(p, env={})
    assert not isinstance(info.value, ManifestErrors) and fragment in str(info.value)


# ---------------------------------------------------------------- every error in one pass

MANY = """\
version: 1
models_dir: /models
lanes:
  - name: a
    kind: safetensors
    path: a
  - name: b/c
    kind: file
    path: ../b.bin
    requierd: false
  - name: d
    kind: file
    path: d.bin
    source: hf:/org/d
    size: big
  - name: e
    kind: file
    path: e.bin
profiles:
  small: [e, ghost]
"""


def test_every_independent_error_is_reported_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, MANY)
    with pytest.raises(ManifestErrors) as info:
        load_manifest(p, env={})
    exc = info.value
    assert [(e.line, e.field) for e in exc.errors] == [
        (5, "lanes[0].kind"), (7, "lanes[1].name"), (9, "lanes[1].path"), (10, "lanes[1].requierd"),
        (14, "lanes[2].source"), (15, "lanes[2].size"), (20, "profiles.small[1]"),
    ]
    # it reads as the first error, so callers that show str() or .line keep working
    assert (exc.file, exc.line, exc.field) == (str(p), 5, "lanes[0].kind")
    text = str(exc)
    assert text.startswith(f"{p}:5: lanes[0].kind: unknown kind 'safetensors'\n  hint: kinds: ")
    assert "6 more errors in this manifest:" in text
    for e in exc.errors[1:]:
        assert f"\n  {e}" in text


def test_every_error_reaches_the_cli_and_the_termination_log(tmp_path: Path) -> None:
    p = write(tmp_path, MANY)
    tlog = tmp_path / "tlog"
    r = CliRunner().invoke(main, ["check", "-m", str(p), "-d", str(tmp_path), "--termination-log", str(tlog)], env={})
    assert r.exit_code == 2
    assert r.stderr.startswith(f"preflight: error: {p}:5: lanes[0].kind: unknown kind 'safetensors'")
    assert f"{p}:20: profiles.small[1]: profile 'small' names unknown lane 'ghost'" in r.stderr
    assert f"{p}:14: lanes[2].source: bad source 'hf:/org/d'" in tlog.read_text()


def test_a_profile_naming_a_lane_that_has_errors_is_not_a_second_error(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\nprofiles: {small: [a]}\nlanes:\n  - {name: a, kind: gguff, path: a.bin}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(p, env={})
    assert not isinstance(info.value, ManifestErrors) and info.value.field == "lanes[0].kind"


# ---------------------------------------------------------------- JSON and variables

def test_json_manifests_can_take_flags_and_numbers_from_variables(tmp_path: Path) -> None:
    doc = {"version": 1, "defaults": {"required": "${REQUIRED:-false}"}, "lanes": [
        {"name": "a", "kind": "file", "path": "a.bin", "enabled": "${ENABLE_A:-true}", "size": "${A_SIZE:-12}"},
        {"name": "b", "kind": "file", "path": "b.bin", "allow_pickle": "${PICKLE-yes}"},
    ]}
    p = write(tmp_path, json.dumps(doc), "m.json")
    m = load_manifest(p, env={})
    a, b = m.lane("a"), m.lane("b")
    assert (a.enabled, a.required, a.files["a.bin"]) == (True, False, FileExpect(12))
    assert (b.required, b.allow_pickle) == (False, True)
    m = load_manifest(p, env={"REQUIRED": "true", "ENABLE_A": "false", "A_SIZE": "0x10"})
    assert (m.lane("a").enabled, m.lane("a").required, m.lane("a").files["a.bin"].size) == (False, True, 16)
    assert m.lane("b").path == "b.bin"  # a quoted path that looks like a number stays a string
    with pytest.raises(ManifestError, match=r"lanes\[0\].enabled: expected true or false, found str 'maybe'"):
        load_manifest(p, env={"ENABLE_A": "maybe"})


def test_a_literal_quoted_flag_is_still_a_string(tmp_path: Path) -> None:
    exc = lane_error(tmp_path, '    path: a.bin\n    required: "false"\n')
    assert "expected true or false, found str 'false'" in str(exc)


def test_defaults_are_checked_like_the_fields_they_stand_for(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\ndefaults: {required: maybe, include: 5}\nlanes:\n  - {name: a, kind: file, path: a.bin}\n")
    with pytest.raises(ManifestErrors) as info:
        load_manifest(p, env={})
    assert [e.field for e in info.value.errors] == ["defaults.required", "defaults.include"]


# ---------------------------------------------------------------- paths

@pytest.mark.parametrize("path, fragment", [
    (".preflight", "reserved name .preflight"),
    (".preflight/receipts.json", "reserved name .preflight"),
    ("vllm/.preflight/x", "reserved name .preflight"),
    ("./.PREFLIGHT/x", "reserved name .preflight"),
    ("a/../b.bin", "goes up with '..'"),
    ("../b.bin", "goes up with '..'"),
    ("/abs/b.bin", "it is absolute"),
    ("", "it is empty"),
    ("a\\b.bin", "write POSIX paths"),
    ("a\x00b", "control character"),
    ("a\nb", "control character"),
    (".", "models_dir itself"),
    ("d/" + "x" * 256, "a component is 256 bytes long (at most 255)"),
    ("é" * 128, "a component is 256 bytes long (at most 255)"),
    ("d/" * 2049 + "x", "bytes long (at most 4096)"),
])
def test_a_lane_path_outside_models_dir_or_unusable_is_refused(tmp_path: Path, path: str, fragment: str) -> None:
    exc = lane_error(tmp_path, f"    path: {json.dumps(path)}\n")
    assert exc.field == "lanes[0].path" and exc.line == 5
    assert fragment in str(exc), str(exc)
    assert len(str(exc)) < 400


@pytest.mark.parametrize("path, norm", [
    (".preflightx/a.bin", ".preflightx/a.bin"), ("a//b.bin", "a/b.bin"), ("./a/./b.bin", "a/b.bin"), ("d/", "d"), ("x" * 255, "x" * 255),
])
def test_harmless_lane_paths_are_normalised(tmp_path: Path, path: str, norm: str) -> None:
    assert load_lane(tmp_path, f"    path: {json.dumps(path)}\n").path == norm


def test_models_dir_and_path_together_must_fit_a_path(tmp_path: Path) -> None:
    models = "/" + "m/" * 1500
    p = write(tmp_path, f"version: 1\nmodels_dir: {models}\nlanes:\n  - {{name: a, kind: file, path: {'p/' * 600}x}}\n")
    with pytest.raises(ManifestError, match=r"lanes\[0\].path: models_dir and path together are 4202 bytes long"):
        load_manifest(p, env={})


@pytest.mark.parametrize("models_dir, fragment", [
    ('""', "it is empty"), ('"/models\\u0000x"', "control character"), ("/" + "m" * 300, "a component is 300 bytes long"),
    ("/" + "m/" * 2100, "bytes long (at most 4096)"),
])
def test_models_dir_must_be_a_usable_folder(tmp_path: Path, models_dir: str, fragment: str) -> None:
    p = write(tmp_path, f"version: 1\nmodels_dir: {models_dir}\nlanes:\n  - {{name: a, kind: file, path: a.bin}}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(p, env={})
    assert info.value.field == "models_dir" and info.value.line == 2 and fragment in str(info.value)


def test_a_file_path_with_a_nul_is_a_manifest_error_not_an_internal_error(tmp_path: Path) -> None:
    p = write(tmp_path, 'version: 1\nlanes:\n  - {name: a, kind: file, path: a.bin, checksums: "sums\\0.txt"}\n')
    r = CliRunner().invoke(main, ["check", "-m", str(p), "-d", str(tmp_path), "--termination-log", ""], env={})
    assert r.exit_code == 2 and "lanes[0].checksums: checksums 'sums\\x00.txt' is not a usable path" in r.stderr


def test_a_file_lane_inside_another_file_lane_overlaps(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\nlanes:\n  - {name: a, kind: file, path: x/a.bin}\n  - {name: b, kind: file, path: x/a.bin/b.bin}\n"
                        "  - {name: c, kind: hf-cache, path: hub, source: hf://o/c}\n  - {name: d, kind: hf-cache, path: hub, source: hf://o/d}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(p, env={})
    assert str(info.value) == f"{p}:4: lanes[1].path: lanes 'a' and 'b' overlap: x/a.bin/b.bin lies inside the file of lane 'a'"


# ---------------------------------------------------------------- YAML features

def test_merge_keys_let_the_lane_override_the_template(tmp_path: Path) -> None:
    p = write(tmp_path, """\
version: 1
lanes:
  - <<: &vllm {kind: hf-dir, include: ["*.json"], required: false}
    name: a
    path: a
    required: true
  - {<<: *vllm, name: b, path: b}
  - {<<: [{path: c}, *vllm], name: c, kind: file, size: true}
""")
    with pytest.raises(ManifestError) as info:
        load_manifest(p, env={})
    assert (info.value.line, info.value.field) == (8, "lanes[2].size")  # merged or not, every value is located
    p.write_text(p.read_text().replace("size: true", "size: 1"))
    m = load_manifest(p, env={})
    assert (m.lane("a").kind, m.lane("a").include, m.lane("a").required) == ("hf-dir", ("*.json",), True)
    assert (m.lane("b").kind, m.lane("b").required) == ("hf-dir", False)
    assert (m.lane("c").kind, m.lane("c").path, m.lane("c").include) == ("file", "c", ("*.json",))


@pytest.mark.parametrize("text, line, fragment", [
    ("version: 1\nlanes: [*x]\n", 2, "alias *x has no anchor &x before it"),
    ("version: 1\na: &x 1\nb: &x 2\nlanes: []\n", 3, "anchor &x is defined twice (first at line 2)"),
    ("version: 1\nlanes:\n  - &l {name: a, kind: file, path: a, more: *l}\n", 3, "an alias refers to a node that contains it"),
    ("version: 1\nlanes: []\n---\nversion: 1\n", 3, "expected a single document"),
])
def test_anchor_mistakes_are_located(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(p, env={})
    assert info.value.line == line and fragment in str(info.value), str(info.value)
