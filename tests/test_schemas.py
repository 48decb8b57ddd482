"""The JSON Schemas of the manifest, the lock and the report (`preflight schema NAME`) say
what the program reads and writes: every key the manifest parser accepts is in the schema
and nothing else is; the example manifests and the README's validate; reports and locks
written by real runs validate; every JSON output carries schema_version."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.hubserver import HubServer
from tests.repos import hf_model
from tests.test_sync import Volume, hf_lane, vol  # noqa: F401

from preflight import manifest as M
from preflight.serving import accel

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "preflight" / "schemas"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    s = schema(name)
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def _enum(s: dict) -> list:
    """A property's enum, also when it takes a ${VAR} string besides."""
    return s["enum"] if "enum" in s else next(b["enum"] for b in s["anyOf"] if "enum" in b)


def _object(s: dict) -> dict:
    """The object branch of a property that may also be false or a ${VAR} string."""
    if "properties" in s:
        return s
    return next(b for b in s.get("anyOf", []) if isinstance(b, dict) and "properties" in b)


def test_the_manifest_schema_has_exactly_the_keys_the_parser_accepts() -> None:
    s = schema("manifest")
    lane = s["properties"]["lanes"]["items"]
    smoke_keys = set(__import__("preflight.smoke", fromlist=["_ENDPOINT_KEYS"])._ENDPOINT_KEYS)
    pairs = {
        "top-level": (set(s["properties"]), M._TOP_KEYS),
        "lane": (set(lane["properties"]), M._LANE_KEYS),
        "defaults": (set(s["properties"]["defaults"]["properties"]), M._DEFAULT_KEYS),
        "serve": (set(_object(lane["properties"]["serve"])["properties"]), M._SERVE_KEYS),
        "signature": (set(_object(lane["properties"]["signature"])["properties"]), M._SIGNATURE_KEYS),
        "file": (set(lane["properties"]["files"]["additionalProperties"]["properties"]), {"sha256", "sha1", "size"}),
        "endpoint": (set(s["properties"]["endpoints"]["items"]["properties"]), smoke_keys),
        "accelerator": (set(_object(s["properties"]["accelerator"])["properties"]), accel._KEYS),
    }
    for what, (in_schema, parsed) in pairs.items():
        assert in_schema == set(parsed), f"{what}: schema has {sorted(in_schema - set(parsed))} extra, lacks {sorted(set(parsed) - in_schema)}"
    assert tuple(_enum(lane["properties"]["kind"])) == M.KINDS
    assert tuple(_enum(_object(lane["properties"]["serve"])["properties"]["engine"])) == M.SERVE_ENGINES
    assert tuple(_enum(lane["properties"]["layout"])) == M.LAYOUTS


def _readme_manifests() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [m for m in re.findall(r"```yaml\n(.*?)```", text, re.S) if re.search(r"^(version|lanes):", m, re.M)]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "examples").glob("*/manifest.yaml")))
def test_every_example_manifest_validates(path: str) -> None:
    doc = yaml.safe_load((REPO / path).read_text())
    errors = list(validator("manifest").iter_errors(doc))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    M.load_manifest(REPO / path, env={"MISTRAL_GGUF_SHA256": "ab" * 32})  # and the parser agrees


def test_the_readme_manifests_validate() -> None:
    blocks = _readme_manifests()
    assert blocks
    for text in blocks:
        doc = yaml.safe_load(text)
        if "version" not in doc:  # a fragment (lanes only) shown in the prose
            doc = {"version": 1, **doc}
        errors = list(validator("manifest").iter_errors(doc))
        assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("bad", [
    {"version": 1, "lanes": [{"name": "a", "kind": "hf-dir", "path": "a", "soruce": "hf://x/y"}]},
    {"version": 1, "lanes": [{"name": "a", "kind": "ggfu", "path": "a"}]},
    {"version": 2, "lanes": [{"name": "a", "kind": "file", "path": "a"}]},
    {"version": 1, "lanes": []},
    {"version": 1, "lanes": [{"name": "a b", "kind": "file", "path": "a"}]},
    {"version": 1, "lanes": [{"name": "a", "kind": "file", "path": "a", "sha256": "xyz"}]},
])
def test_the_schema_refuses_what_the_parser_refuses(bad: dict, tmp_path: Path) -> None:
    assert list(validator("manifest").iter_errors(bad))
    p = tmp_path / "m.yaml"
    p.write_text(json.dumps(bad))
    with pytest.raises(M.ManifestError):
        M.load_manifest(p, env={})


def test_preflight_schema_prints_each_schema() -> None:
    for name in ("manifest", "lock", "report"):
        out = subprocess.run([sys.executable, "-m", "preflight.cli", "schema", name], capture_output=True, text=True, check=True).stdout
        assert json.loads(out) == schema(name)


def test_reports_and_locks_of_real_runs_validate(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.add_repo("org/llm", hf_model())
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main"), hf_lane("gone", "vllm/gone", "hf://org/missing@main", required=False)])
    report = validator("report")
    docs = []
    sync = vol.run("sync", "--json")
    docs.append(json.loads(sync.stdout))
    docs.append(json.loads(vol.run("check", "--json").stdout))
    docs.append(json.loads(vol.run("status", "--json").stdout))
    docs.append(json.loads(vol.run("prune", "--dry-run", "--json").stdout))
    (vol.models / "vllm/llm/config.json").write_text("{")  # not ready: problems in the report
    docs.append(json.loads(vol.run("check", "--json").stdout))
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlanes:\n  - name: a\n    kind: hf-dir\n     path: a\n")
    manifest_error = subprocess.run([sys.executable, "-m", "preflight.cli", "check", "-m", str(bad), "--json", "--termination-log", ""],
                                    capture_output=True, text=True)
    docs.append(json.loads(manifest_error.stdout))
    for doc in docs:
        errors = list(report.iter_errors(doc))
        assert not errors, (doc.get("command"), [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors])
        assert doc["schema_version"] == 1
    err = docs[-1]["errors"][0]
    assert (err["line"], err["column"]) == (5, 10) and err["file"] == str(bad) and err["hint"]
    lock = vol.run("lock", "--lane", "llm")
    assert lock.code == 0, lock.stderr
    lock_doc = json.loads((vol.root / "lanes.lock.json").read_text())
    assert not list(validator("lock").iter_errors(lock_doc)) and lock_doc["schema_version"] == 1


def test_every_json_output_carries_schema_version(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", hf_model())
    vol.write([{**hf_lane("llm", "vllm/llm", "hf://org/llm@main"), "env": "LLM_PATH"}])
    assert vol.run().code == 0
    outputs = {
        "env": vol.run("env", "--json").stdout,
        "perms": vol.run("perms", "--uid", "0", "--gid", "0", "--json").stdout,
        "inspect": subprocess.run([sys.executable, "-m", "preflight.cli", "inspect", str(vol.models / "vllm/llm"), "--json"],
                                  capture_output=True, text=True).stdout,
    }
    for name, out in outputs.items():
        assert json.loads(out)["schema_version"] == 1, name
