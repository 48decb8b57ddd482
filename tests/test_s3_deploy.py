"""The S3 variants of the deployment files: compose/docker-compose.s3.yml (an override of
docker-compose.yml) and ops/k8s/s3/ (a Job with credentials from a Secret file or IRSA),
checked like the others: schema-valid offline, wired together, manifests that load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from preflight.manifest import load_manifest
from tests.docker_fixtures import COMPOSE, compose_config, mount
from tests.test_k8s_manifests import K8S_VERSION, no_network  # noqa: F401  (fixture)

S3_K8S = Path(__file__).resolve().parent.parent / "ops" / "k8s" / "s3"


def _docs() -> list[dict[str, Any]]:
    return [doc for p in sorted(S3_K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(p.read_text()) if doc]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("doc", _docs(), ids=lambda d: d["kind"])
def test_every_resource_validates_offline(doc: dict[str, Any], no_network: None) -> None:  # noqa: F811
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file_and_the_job_is_hardened() -> None:
    kustomization = yaml.safe_load((S3_K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in S3_K8S.glob("*.yaml")} - {"kustomization.yaml"}
    pod = _one("Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert pod["securityContext"]["fsGroup"] == 65532


def test_job_takes_credentials_from_a_secret_file_or_irsa_and_its_manifest_is_s3() -> None:
    job = _one("Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not any("valueFrom" in e for e in container["env"])  # no secret as an environment value
    creds = env["AWS_SHARED_CREDENTIALS_FILE"]
    (m,) = [m for m in container["volumeMounts"] if creds.startswith(m["mountPath"] + "/")]
    (vol,) = [v for v in pod["volumes"] if v["name"] == m["name"]]
    assert vol["secret"]["secretName"] == _one("Secret")["metadata"]["name"]
    assert vol["secret"]["optional"] is True  # IRSA needs no Secret
    assert creds.endswith("/" + vol["secret"]["items"][0]["path"])
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]
    assert "eks.amazonaws.com/role-arn" in _one("ServiceAccount")["metadata"]["annotations"]
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 4]
    cm = _one("ConfigMap")
    (cm_vol,) = [v for v in pod["volumes"] if "configMap" in v]
    assert cm_vol["configMap"]["name"] == cm["metadata"]["name"]


def test_manifests_load_and_every_lane_is_s3(tmp_path: Path) -> None:
    texts = {"k8s": _one("ConfigMap")["data"]["manifest.yaml"], "compose": (COMPOSE / "manifest.s3.yaml").read_text()}
    for name, text in texts.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        manifest = load_manifest(str(path))
        assert manifest.lanes and all(lane.source is not None and lane.source.scheme == "s3" for lane in manifest.lanes), name


def test_compose_override_gives_the_init_service_s3_settings_and_a_credentials_secret(tmp_path: Path) -> None:
    creds = tmp_path / "s3-credentials"
    creds.write_text("[default]\n")
    config = compose_config({"S3_ENDPOINT_URL": "http://minio:9000", "S3_CREDENTIALS_FILE": str(creds)},
                            COMPOSE / "docker-compose.yml", COMPOSE / "docker-compose.s3.yml")
    svc = config["services"]["models-preflight"]
    env = svc["environment"]
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/s3_credentials"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert config["secrets"]["s3_credentials"]["file"] == str(creds)
    sources = [s["source"] if isinstance(s, dict) else s for s in svc["secrets"]]
    assert "s3_credentials" in sources and "hf_token" in sources
    manifests = [src for src, dst, _ro in map(mount, svc["volumes"]) if dst == "/etc/preflight/manifest.yaml"]
    assert manifests == [str(COMPOSE / "manifest.s3.yaml")]
    for name in ("vllm", "llamacpp"):
        assert config["services"][name]["depends_on"] == {"models-preflight": {"condition": "service_completed_successfully"}}
