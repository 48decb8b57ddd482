"""ops/k8s/kserve checked offline: the ClusterStorageContainer and the InferenceService
against the fields KServe's own CRDs define (tests/data/kserve_crd_fields.json, written by
ops/gen-kserve-crd-fields.py from a KServe checkout; the commit is in the file), the rest
against Kubernetes' bundled schemas, and the wiring between them (URI formats as KServe
matches them, the container as KServe finds and runs it)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from preflight.fetchlane import build, detect_kind
from preflight.kserve import storage_uri

KSERVE = Path(__file__).resolve().parent.parent / "ops" / "k8s" / "kserve"
TABLE = json.loads((Path(__file__).resolve().parent / "data" / "kserve_crd_fields.json").read_text())
K8S_VERSION = "1.29.0"
METADATA = {"name": str, "namespace": str, "labels": dict, "annotations": dict}


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(KSERVE.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "kustomizeconfig.yaml"):
            continue
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in _docs() if d["kind"] == kind]
    return doc


# --------------------------------------------------------------------------- the structural check

_TYPES = {"string": (str,), "integer": (int,), "boolean": (bool,), "object": (dict,), "array": (list,), "number": (int, float),
          "int-or-string": (int, str)}


def check(doc: dict[str, Any]) -> list[str]:
    """Every field of `doc` against the table of its kind: known, of its type, in its enum,
    with the fields its object requires. Returns the problems (empty: valid)."""
    kind = TABLE["kinds"].get(doc.get("kind"))
    if kind is None:
        return [f"kind {doc.get('kind')!r} is not in the table"]
    problems: list[str] = []
    if doc.get("apiVersion") != f"{TABLE_GROUP[doc['kind']]}/{kind['version']}":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}, expected {TABLE_GROUP[doc['kind']]}/{kind['version']}")
    _walk(doc, "", kind["fields"], problems)
    return problems


TABLE_GROUP = {k: v["group"] for k, v in TABLE["kinds"].items()}


def _walk(value: Any, path: str, fields: dict[str, dict], problems: list[str]) -> None:
    row = fields.get(path)
    shown = path or "(top)"
    if row is None:
        problems.append(f"{shown}: not a field of the CRD (or below what the table covers)")
        return
    kind = row["type"]
    if kind in _TYPES:
        ok = isinstance(value, _TYPES[kind]) and not (kind in ("integer", "number", "int-or-string") and isinstance(value, bool))
        if not ok:
            problems.append(f"{shown}: expected {kind}, found {type(value).__name__}")
            return
    if "enum" in row and value not in row["enum"]:
        problems.append(f"{shown}: {value!r} is not one of {row['enum']}")
    if path == ".metadata":
        for k, v in value.items():
            if k not in METADATA or not isinstance(v, METADATA[k]):
                problems.append(f".metadata.{k}: not an ObjectMeta field of that type")
        return
    if isinstance(value, dict):
        for req in row.get("required", []):
            if req not in value:
                problems.append(f"{shown}: missing required field {req!r}")
        if row.get("uncovered"):
            problems.append(f"{shown}: the table does not cover this object's fields (widen ops/gen-kserve-crd-fields.py)")
            return
        for k, v in value.items():
            child = f"{path}.{k}"
            if child in fields:
                _walk(v, child, fields, problems)
            elif f"{path}{{}}" in fields:
                _walk(v, f"{path}{{}}", fields, problems)
            elif not row.get("preserve"):
                problems.append(f"{child}: not a field of the CRD (or below what the table covers)")
    elif isinstance(value, list):
        for item in value:
            _walk(item, f"{path}[]", fields, problems)


def test_the_table_says_what_it_was_read_from() -> None:
    assert TABLE["source"] == "github.com/kserve/kserve" and re.fullmatch(r"[0-9a-f]{40}", TABLE["commit"])
    csc = TABLE["kinds"]["ClusterStorageContainer"]["fields"]
    assert csc[".spec"]["required"] == ["container", "supportedUriFormats"]
    assert ".spec.container.securityContext.readOnlyRootFilesystem" in csc
    isvc = TABLE["kinds"]["InferenceService"]["fields"]
    assert isvc[".spec"]["required"] == ["predictor"] and ".spec.predictor.model.storageUri" in isvc


@pytest.mark.parametrize("kind", ["ClusterStorageContainer", "InferenceService"])
def test_the_shipped_kserve_resources_match_their_crd(kind: str) -> None:
    assert check(_one(kind)) == []


@pytest.mark.parametrize("kind,breakage,expected", [
    ("ClusterStorageContainer", lambda d: d["spec"].__setitem__("supportedUriFormat", []), "supportedUriFormat: not a field"),
    ("ClusterStorageContainer", lambda d: d["spec"].pop("supportedUriFormats"), "missing required field 'supportedUriFormats'"),
    ("ClusterStorageContainer", lambda d: d["spec"]["container"]["securityContext"].__setitem__("runAsUser", "nobody"), "expected integer"),
    ("ClusterStorageContainer", lambda d: d["spec"]["container"].__setitem__("volumeMount", []), "volumeMount: not a field"),
    ("ClusterStorageContainer", lambda d: d["spec"].__setitem__("supportsMultiModelDownload", "no"), "expected boolean"),
    ("ClusterStorageContainer", lambda d: d.__setitem__("apiVersion", "serving.kserve.io/v1beta1"), "apiVersion"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].__setitem__("storageURI", "hf://a/b"), "storageURI: not a field"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"]["modelFormat"].pop("name"), "missing required field 'name'"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].__setitem__("args", "--backend=vllm"), "expected array"),
    ("InferenceService", lambda d: d["spec"].pop("predictor"), "missing required field 'predictor'"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"]["resources"]["limits"].__setitem__("memory", True), "expected int-or-string"),
    ("InferenceService", lambda d: d["spec"]["predictor"].__setitem__("affinity", {"nodeAffinity": {}}), "does not cover"),
])
def test_the_check_refuses_what_kserve_would_refuse(kind: str, breakage: Any, expected: str) -> None:
    doc = copy.deepcopy(_one(kind))
    breakage(doc)
    problems = check(doc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in _docs() if d["kind"] in ("Secret", "ServiceAccount")],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_the_kubernetes_resources_validate_against_bundled_schemas(name: str, doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_resource() -> None:
    kustomization = yaml.safe_load((KSERVE / "kustomization.yaml").read_text())
    files = {p.name for p in KSERVE.glob("*.yaml")} - {"kustomization.yaml", "kustomizeconfig.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["configurations"] == ["kustomizeconfig.yaml"]
    config = yaml.safe_load((KSERVE / "kustomizeconfig.yaml").read_text())
    assert {"path": "spec/container/image", "kind": "ClusterStorageContainer"} in config["images"]


# --------------------------------------------------------------------------- KServe's own rules


def supported(csc: dict[str, Any], uri: str) -> bool:
    """StorageContainerSpec.IsStorageUriSupported (pkg/apis/serving/v1alpha1/storage_container_types.go):
    a prefix, else a regexp that matches anywhere in the URI."""
    for fmt in csc["spec"]["supportedUriFormats"]:
        if fmt.get("prefix"):
            if uri.startswith(fmt["prefix"]):
                return True
        elif fmt.get("regex") and re.search(fmt["regex"], uri):
            return True
    return False


def test_the_storage_container_is_what_kserve_runs() -> None:
    csc = _one("ClusterStorageContainer")
    spec = csc["spec"]
    container = spec["container"]
    assert container["name"] == "storage-initializer"  # KServe recognises its init container by name
    assert spec["workloadType"] == "initContainer" and spec["supportsMultiModelDownload"] is False
    assert "args" not in container and "command" not in container  # KServe gives [SRC, DEST]; the image's entrypoint is preflight
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532 and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    for env in container.get("env", []):
        assert env["name"].startswith("PREFLIGHT_")


@pytest.mark.parametrize("uri,ours", [
    ("hf://Qwen/Qwen2.5-0.5B-Instruct", True), ("hf://org/model:v1", True), ("s3://models/llama", True),
    ("gs://models/llama", True), ("oci://registry:5000/models/coder:v1", True),
    (f"https://host/model.tar.gz#sha256={'ab' * 32}", True), (f"http://host:8080/x/model.gguf#sha256={'CD' * 32}", True),
    ("https://host/model.tar.gz", False), ("https://host/model.tar.gz#sha256=short", False), ("pvc://models/llama", False),
    ("hdfs://nn/models", False), ("modelscope://org/model", False),
])
def test_the_uri_formats_are_the_schemes_preflight_serves(uri: str, ours: bool) -> None:
    csc = _one("ClusterStorageContainer")
    assert supported(csc, uri) is ours
    if ours:
        source, pin = storage_uri(uri)
        build(source, "/mnt/models", sha256=pin)  # what fetch would run: no usage error


def test_the_inference_service_reaches_this_storage_container() -> None:
    isvc = _one("InferenceService")
    predictor = isvc["spec"]["predictor"]
    uri = predictor["model"]["storageUri"]
    assert predictor["storageContainerName"] == _one("ClusterStorageContainer")["metadata"]["name"]
    assert supported(_one("ClusterStorageContainer"), uri)
    source, pin = storage_uri(uri)
    assert source.startswith("hf://Qwen/Qwen2.5-Coder-7B-Instruct@") and detect_kind(source) == "hf-dir"
    build(source, "/mnt/models", sha256=pin)
    sa = _one("ServiceAccount")
    assert predictor["serviceAccountName"] == sa["metadata"]["name"]
    secret = _one("Secret")
    assert {"name": secret["metadata"]["name"]} in sa["secrets"] and "HF_TOKEN" in secret["stringData"]
