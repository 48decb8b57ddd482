"""The registry-mirror example (ops/k8s/oci) and its compose profile: schema-valid offline,
wired together, and the manifests they carry parse and point at the registry they deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from preflight.manifest import load_manifest, parse_source
from tests.test_k8s_manifests import K8S_VERSION, no_network  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
OCI = ROOT / "ops" / "k8s" / "oci"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(OCI.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("name,doc", _docs(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_resource_validates_offline(name: str, doc: dict[str, Any], no_network: None) -> None:  # noqa: F811
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file() -> None:
    k = yaml.safe_load((OCI / "kustomization.yaml").read_text())
    assert set(k["resources"]) == {p.name for p in OCI.glob("*.yaml")} - {"kustomization.yaml"}


def _manifests(tmp_path: Path) -> dict[str, Any]:
    data = _one("ConfigMap", "lane-preflight-oci")["data"]
    out = {}
    for key, text in data.items():
        (tmp_path / key).write_text(text)
        out[key] = load_manifest(tmp_path / key)
    return out


def test_nodes_pull_what_the_mirror_pushes_from_the_registry_it_deploys(tmp_path: Path) -> None:
    manifests = _manifests(tmp_path)
    mirror, nodes = manifests["mirror.yaml"], manifests["nodes.yaml"]
    cron = _one("CronJob", "models-mirror")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (push,) = cron["containers"]
    to = parse_source(push["args"][push["args"].index("--to") + 1])
    service = _one("Service", "models-registry")
    assert to.host == f"{service['metadata']['name']}.models.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    for lane in mirror.lanes:
        node = nodes.lane(lane.name)
        src = node.source
        # `push --to oci://HOST/REPO` tags each lane with its name
        assert (src.scheme, src.host, src.repo, src.revision) == ("oci", to.host, to.repo, lane.name)
        assert (node.kind, node.path) == (lane.kind, lane.path)
    env = {e["name"]: e["value"] for e in push["env"]}
    assert env["PREFLIGHT_INSECURE_REGISTRY"] == to.host
    assert env["PREFLIGHT_REGISTRY_AUTH"].startswith("/var/run/secrets/registry/")
    pull = _one("Job", "models-pull-from-registry")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in pull["env"]}["PREFLIGHT_MANIFEST"] == "/etc/preflight/nodes.yaml"
    secret = _one("Secret", "models-registry-auth")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"


def test_compose_profile_parses_and_mirrors_into_the_registry_service() -> None:
    doc = yaml.safe_load((ROOT / "compose" / "docker-compose.oci.yml").read_text())
    services = doc["services"]
    assert {"models-registry", "models-mirror", "models-preflight"} <= set(services)
    mirror = services["models-mirror"]
    assert mirror["command"][0] == "push" and mirror["depends_on"]["models-registry"]["condition"] == "service_started"
    node = services["models-preflight"]
    assert node["depends_on"]["models-mirror"]["condition"] == "service_completed_successfully"
    assert "models-registry:5000" in node["environment"]["PREFLIGHT_INSECURE_REGISTRY"]
