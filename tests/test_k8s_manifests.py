"""The Kubernetes manifests in ops/k8s: schema-valid (offline) and wired together."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from preflight.manifest import load_manifest

K8S = Path(__file__).resolve().parent.parent / "ops" / "k8s"
K8S_VERSION = "1.29.0"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


# The Job that runs `preflight sync` (the smoke Job is checked on its own).
DEFAULT_NAME = {"Job": "models-prewarm"}


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    name = name or DEFAULT_NAME.get(kind)
    found = [d for _, d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod(kind: str) -> dict[str, Any]:
    return _one(kind)["spec"]["template"]["spec"]


def _preflight_container(kind: str) -> dict[str, Any]:
    pod = _pod(kind)
    containers = pod.get("initContainers", []) if kind == "Deployment" else pod["containers"]
    (container,) = [c for c in containers if c["image"].startswith("lane-preflight")]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _mount(container: dict[str, Any], volume: str) -> dict[str, Any]:
    (m,) = [m for m in container["volumeMounts"] if m["name"] == volume]
    return m


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (v,) = [v for v in pod["volumes"] if v["name"] == name]
    return v


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network use during offline validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name,doc", _docs(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_resource_validates_offline_against_bundled_schemas(name: str, doc: dict[str, Any], no_network: None) -> None:
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda pod: pod["initContainers"][0]["securityContext"].__setitem__("runAsUser", "nobody"),
        lambda pod: pod["initContainers"][0].__setitem__("volumeMount", []),
        lambda pod: pod["volumes"][0].__setitem__("persistentVolumeClaim", {"claim": "models"}),
    ],
    ids=["wrong-type", "misspelt-field", "missing-required-field"],
)
def test_validation_rejects_a_broken_deployment(breakage: Any, no_network: None) -> None:
    deployment = copy.deepcopy(_one("Deployment"))
    breakage(deployment["spec"]["template"]["spec"])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {i["name"] for i in kustomization["images"]} == {"lane-preflight"}


def test_init_container_and_server_share_the_rwx_claim() -> None:
    pod = _pod("Deployment")
    init = _preflight_container("Deployment")
    (server,) = pod["containers"]
    claim = _volume(pod, "models")["persistentVolumeClaim"]["claimName"]
    pvc = _one("PersistentVolumeClaim", claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert _mount(init, "models")["mountPath"] == _mount(server, "models")["mountPath"] == "/models"
    assert not _mount(init, "models").get("readOnly", False)
    assert _mount(server, "models")["readOnly"] is True
    assert _env(init)["PREFLIGHT_MODELS_DIR"] == "/models"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_preflight_runs_hardened(kind: str) -> None:
    container = _preflight_container(kind)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "emptyDir" in _volume(_pod(kind), _mount_at(container, "/tmp"))
    assert _pod(kind)["securityContext"]["fsGroup"] == 65532


def _mount_at(container: dict[str, Any], path: str) -> str:
    (m,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    return m["name"]


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_token_comes_from_a_read_only_secret_file(kind: str) -> None:
    pod = _pod(kind)
    container = _preflight_container(kind)
    mount = _mount(container, "hf-token")
    assert mount["readOnly"] is True
    secret_ref = _volume(pod, "hf-token")["secret"]
    secret = _one("Secret", secret_ref["secretName"])
    (item,) = secret_ref["items"]
    assert item["key"] in secret["stringData"]
    token_path = f"{mount['mountPath']}/{item['path']}"
    env = _env(container)
    assert env["PREFLIGHT_TOKEN_FILE"] == env["HF_TOKEN_PATH"] == token_path
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} & set(env)
    assert not any("valueFrom" in e for e in container["env"])
    assert secret_ref["defaultMode"] & 0o007 == 0, "token file must not be world-readable"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_manifest_comes_from_the_configmap_and_parses(kind: str, tmp_path: Path) -> None:
    pod = _pod(kind)
    container = _preflight_container(kind)
    mount = _mount(container, "manifest")
    assert mount["readOnly"] is True
    cm_ref = _volume(pod, "manifest")["configMap"]
    (item,) = cm_ref["items"]
    assert _env(container)["PREFLIGHT_MANIFEST"] == f"{mount['mountPath']}/{item['path']}"
    text = _one("ConfigMap", cm_ref["name"])["data"][item["key"]]
    (tmp_path / "manifest.yaml").write_text(text)
    manifest = load_manifest(tmp_path / "manifest.yaml", env={})
    assert manifest.models_dir == "/models"
    assert manifest.lanes


def test_server_reads_its_model_path_from_the_lane_through_the_env_file(tmp_path: Path) -> None:
    """No second copy of the path: the init container writes the lanes' `env:` paths once
    ready, the server sources them; the variable it serves is a required lane's."""
    import re
    import subprocess
    import sys

    pod = _pod("Deployment")
    (server,) = pod["containers"]
    init = _preflight_container("Deployment")
    env_file = _env(init)["PREFLIGHT_ENV_FILE"]
    assert _mount(init, "models-env")["mountPath"] == _mount(server, "models-env")["mountPath"] == str(Path(env_file).parent)
    assert _mount(server, "models-env").get("readOnly") is True
    script = server["args"][0]
    assert script.startswith(f". {env_file} &&") and server["command"] == ["/bin/sh", "-c"]
    (var,) = re.findall(r'"\$([A-Z_]+)"', script)
    text = _one("ConfigMap")["data"]["manifest.yaml"]
    (tmp_path / "manifest.yaml").write_text(text)
    manifest = load_manifest(tmp_path / "manifest.yaml", env={})
    (lane,) = [l for l in manifest.lanes if l.env == var]
    assert lane.required and lane.kind == "hf-dir"
    # what the server's shell gets from `preflight env` (the same lines sync --env-file writes)
    lines = subprocess.run([sys.executable, "-m", "preflight.cli", "env", "-m", str(tmp_path / "manifest.yaml")],
                           capture_output=True, text=True, check=True).stdout
    got = subprocess.run(["sh", "-c", f'. /dev/stdin && printf %s "${var}"'], input=lines, capture_output=True, text=True, check=True)
    assert got.stdout == f"{manifest.models_dir}/{lane.path}"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in server["env"]


def test_the_server_is_hardened_has_shared_memory_and_the_run_a_deadline() -> None:
    pod = _pod("Deployment")
    (server,) = pod["containers"]
    sc = server["securityContext"]
    assert sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert _volume(pod, _mount(server, "dshm")["name"])["emptyDir"]["medium"] == "Memory" and _mount(server, "dshm")["mountPath"] == "/dev/shm"
    for kind in ("Deployment", "Job"):
        assert float(_env(_preflight_container(kind))["PREFLIGHT_DEADLINE"]) > 0


def test_prewarm_job_fails_fast_on_manifest_and_auth_errors() -> None:
    job = _one("Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["containerName"] == _preflight_container("Job")["name"]
    assert sorted(rule["onExitCodes"]["values"]) == [2, 4]
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_job_and_init_container_run_the_same_preflight() -> None:
    """The same image, arguments, hardening and mounts; only what the server needs (the
    env file and its folder) and the run's deadline differ."""
    init, job = _preflight_container("Deployment"), _preflight_container("Job")
    server_only = {"PREFLIGHT_ENV_FILE", "PREFLIGHT_DEADLINE", "models-env", "dshm", "server-tmp"}
    for key in ("image", "args", "securityContext"):
        assert init[key] == job[key], key
    for key in ("env", "volumeMounts"):
        assert [e for e in init[key] if e["name"] not in server_only] == [e for e in job[key] if e["name"] not in server_only], key
    assert [v for v in _pod("Deployment")["volumes"] if v["name"] not in server_only] == _pod("Job")["volumes"]


def test_smoke_job_checks_the_served_model_after_deploy() -> None:
    job = _one("Job", "preflight-smoke")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "smoke"
    endpoint = _env(container)["PREFLIGHT_SMOKE_ENDPOINT"]
    service = _one("Service", "vllm")
    port = service["spec"]["ports"][0]["port"]
    import re

    served = re.findall(r"--served-model-name=(\S+)", _pod("Deployment")["containers"][0]["args"][0])
    assert endpoint == f"{served[0]}=vllm@http://vllm:{port}#{served[0]}"
    from preflight.smoke import parse_endpoint_spec

    assert parse_endpoint_spec(endpoint).kind == "vllm"
    # not-ready-yet (3) is retried; a wrong model or auth error fails at once
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert 3 not in rule["onExitCodes"]["values"] and {1, 4} <= set(rule["onExitCodes"]["values"])


def test_the_shipped_validation_script_checks_every_folder_offline(tmp_path: Path) -> None:
    """ops/validate-k8s.py is how a user validates the manifests (README): it passes on
    what ships, in a network namespace with no network at all, and fails naming a broken
    resource."""
    import shutil
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "ops" / "validate-k8s.py"
    isolate = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0 else []
    ok = subprocess.run([*isolate, sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 invalid" in ok.stdout and "ops/k8s/deployment.yaml: Deployment/vllm" in ok.stdout
    broken = tmp_path / "k8s"
    shutil.copytree(K8S, broken, ignore=shutil.ignore_patterns("oci", "s3", "signing"))
    text = (broken / "deployment.yaml").read_text().replace("containerPort: 8000", "containerPort: eight-thousand")
    (broken / "deployment.yaml").write_text(text)
    cm = (broken / "configmap.yaml").read_text().replace("kind: hf-dir", "kind: hf-dri", 1)
    (broken / "configmap.yaml").write_text(cm)
    bad = subprocess.run([*isolate, sys.executable, str(script), str(broken)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "INVALID" in bad.stdout and "Deployment/vllm" in bad.stdout and "unknown kind 'hf-dri'" in bad.stdout
