"""ops/k8s/signing: the overlay that makes the base deployment verify model signatures.
Its patches applied to the base (a strategic merge by name, as kustomize does) give objects
that validate offline; the trust ConfigMap is mounted read-only where the manifest looks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from preflight.manifest import load_manifest
from tests.test_k8s_manifests import K8S, K8S_VERSION, no_network  # noqa: F401  (fixture)

OVERLAY = K8S / "signing"
MOUNT = "/etc/preflight/trust"


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize applies it to these objects: mappings key by key, lists
    of named items by name, anything else replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = _merge(out[idx], item)
        return out
    return copy.deepcopy(patch)


def built() -> list[dict[str, Any]]:
    """The base's objects and the overlay's resources, with the overlay's patches applied."""
    docs = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _load(p)]
    k = _kustomization()
    docs += [d for r in k["resources"] if r != ".." for d in _load(OVERLAY / r)]
    for patch in k["patches"]:
        (p,) = _load(OVERLAY / patch["path"])
        targets = [i for i, d in enumerate(docs) if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"]]
        assert len(targets) == 1, f"{patch['path']} patches {p['kind']}/{p['metadata']['name']}, found {len(targets)}"
        docs[targets[0]] = _merge(docs[targets[0]], p)
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in built() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_kustomization_names_every_file_of_the_overlay() -> None:
    k = _kustomization()
    named = {r for r in k["resources"] if r != ".."} | {p["path"] for p in k["patches"]}
    assert named == {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    assert ".." in k["resources"]


@pytest.mark.parametrize("doc", built(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_built_object_validates_offline(doc: dict[str, Any], no_network: None) -> None:  # noqa: F811
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kind,name,field", [("Deployment", "vllm", "initContainers"), ("Job", "models-prewarm", "containers")])
def test_preflight_mounts_the_trust_configmap_read_only(kind: str, name: str, field: str) -> None:
    pod = _one(kind, name)["spec"]["template"]["spec"]
    (container,) = [c for c in pod[field] if c["image"].startswith("lane-preflight")]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-signing-trust"]
    assert mount["mountPath"] == MOUNT and mount["readOnly"] is True
    assert {m["name"] for m in container["volumeMounts"]} >= {"models", "manifest", "tmp"}  # the base's mounts kept
    (volume,) = [v for v in pod["volumes"] if v["name"] == "model-signing-trust"]
    assert volume["configMap"]["name"] == "model-signing-trust"


def test_every_lane_requires_a_signature_under_the_mounted_trust(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = _one("ConfigMap", "lane-preflight-manifest")["data"]["manifest.yaml"]
    (tmp_path / "manifest.yaml").write_text(text)
    manifest = load_manifest(tmp_path / "manifest.yaml")
    assert manifest.lanes and all(lane.signature is not None for lane in manifest.lanes)
    trust = _one("ConfigMap", "model-signing-trust")["data"]
    for lane in manifest.lanes:
        assert lane.signature.method == "key" and lane.signature.key == f"{MOUNT}/publisher.pub"
    load_pem_public_key(trust["publisher.pub"].encode())
    by_name = {lane.name: lane for lane in manifest.lanes}
    assert "model.sig" in by_name["tiny-llm"].include
