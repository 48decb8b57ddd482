"""The image as KServe runs its storage initializer: the arguments [SRC, /mnt/models] after the
image's ENTRYPOINT (`preflight`), /mnt/models an empty folder anyone may write (an emptyDir),
uid 65532, a read-only root filesystem with no /tmp of its own, no capabilities, the
variables KServe's webhook adds (HF_HUB_ENABLE_HF_TRANSFER, …, and per scheme the
credentials and endpoints), and /dev/termination-log. Sources: the Hub stand-in (hf://),
s3s-fs (s3://), fake-gcs-server (gs://, a prefix and a model.tar.gz), the distribution
registry (oci://) and an HTTPS server whose CA comes from KServe's global CA bundle
(https://…/model.tar.gz), all on 127.0.0.1 (host network)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.docker_fixtures import RUNTIME_UID, run_container
from tests.hubserver import HubServer
from tests.repos import gguf_file, hf_model, served, tar_gz

pytestmark = pytest.mark.docker

DEST = "/mnt/models"
# pkg/utils/storage.go AddDefaultHuggingFaceEnvVars: set on every storage initializer
KSERVE_DEFAULT_ENV = {"HF_HUB_ENABLE_HF_TRANSFER": "1", "HF_XET_HIGH_PERFORMANCE": "1", "HF_XET_NUM_CONCURRENT_RANGE_GETS": "8"}
AS_KSERVE: dict[str, Any] = {
    "read_only": True,  # and no tmpfs: a ClusterStorageContainer cannot add volumes to the pod
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "user": f"{RUNTIME_UID}:{RUNTIME_UID}",
    "network_mode": "host",
}


def empty_dir(root: Path) -> Path:
    """What kubelet gives an emptyDir: an empty folder, mode 0777."""
    root.mkdir(parents=True)
    os.chmod(root, 0o777)
    return root


def run_as_kserve(client: Any, image: str, tmp: Path, uri: str, env: dict[str, str], volumes: dict | None = None) -> tuple[int, str, str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    models = tmp / "models"
    if not models.exists():
        empty_dir(models)
    tlog = tmp / "termination-log"
    tlog.write_text("")
    os.chmod(tlog, 0o666)
    mounts = {str(models): {"bind": DEST, "mode": "rw"}, str(tlog): {"bind": "/dev/termination-log", "mode": "rw"}, **(volumes or {})}
    done = run_container(client, image, [uri, DEST], volumes=mounts, environment={**KSERVE_DEFAULT_ENV, **env}, **AS_KSERVE)
    return done.exit_code, done.logs, tlog.read_text(), models


def assert_ready(models: Path, files: dict[str, bytes]) -> None:
    assert served(models) == files
    assert json.loads((models / ".preflight" / "ready.json").read_text())["status"] == "ready"
    assert all(p.stat().st_uid == RUNTIME_UID for p in models.rglob("*"))
    assert not [p for p in (models / ".preflight" / "staging").iterdir()]


def test_hf_folder_and_a_restart_that_fetches_nothing(docker_client: Any, preflight_image: str, tmp_path: Path) -> None:
    files = hf_model()
    with HubServer("127.0.0.1") as hub:
        hub.add_repo("org/tiny", files, revision="v1")
        code, logs, reason, models = run_as_kserve(docker_client, preflight_image, tmp_path, "hf://org/tiny:v1", hub.env(token=False))
        assert code == 0, logs
        assert_ready(models, files)
        assert reason == ""
        hub.clear_requests()
        code, logs, _reason, _ = run_as_kserve(docker_client, preflight_image, tmp_path, "hf://org/tiny:v1", hub.env(token=False))
        assert code == 0, logs
        assert not [r for r in hub.requests if r.kind in ("resolve", "cdn")]  # a restarted pod re-checks by stat


def test_hf_single_gguf_file(docker_client: Any, preflight_image: str, tmp_path: Path) -> None:
    files = gguf_file("tiny.Q8_0.gguf")
    with HubServer("127.0.0.1") as hub:
        hub.add_repo("org/tiny-gguf", files)
        code, logs, _reason, models = run_as_kserve(docker_client, preflight_image, tmp_path, "hf://org/tiny-gguf/tiny.Q8_0.gguf",
                                                    hub.env(token=False))
        assert code == 0, logs
        assert_ready(models, files)


def test_s3_prefix_with_kserve_s3_variables(docker_client: Any, preflight_image: str, tmp_path: Path) -> None:
    from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server, binary

    if binary() is None:
        pytest.skip("the S3 test server is not built (bash ops/s3-server.sh)")
    server = S3Server(tmp_path / "s3").start()
    try:
        bucket = server.bucket("models")
        files = hf_model()
        server.put_tree(bucket, "llama/v1", files)
        # what KServe's webhook sets from an S3 secret with the s3-endpoint / s3-usehttps annotations
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "S3_ENDPOINT": f"127.0.0.1:{server.port}",
               "S3_USE_HTTPS": "0", "AWS_ENDPOINT_URL": server.endpoint, "AWS_DEFAULT_REGION": "us-east-1", "S3_VERIFY_SSL": "0"}
        code, logs, _reason, models = run_as_kserve(docker_client, preflight_image, tmp_path, f"s3://{bucket}/llama/v1", env)
        assert code == 0, logs
        assert_ready(models, files)
        assert SECRET_KEY not in logs
    finally:
        server.stop()


def test_gs_prefix_and_a_model_archive_in_a_bucket(docker_client: Any, preflight_image: str, tmp_path: Path) -> None:
    from tests.gcs_server import GcsServer, binary

    if binary() is None:
        pytest.skip("the Cloud Storage test server is not built (bash ops/gcs-server.sh)")
    server = GcsServer(tmp_path / "gcs").start()
    try:
        bucket = server.bucket("models")
        files = hf_model()
        server.put_tree(bucket, "llama/v1", files)
        server.put(bucket, "releases/model.tar.gz", tar_gz(files))
        env = {"STORAGE_EMULATOR_HOST": server.endpoint, "NO_GCE_CHECK": "True"}
        code, logs, _reason, models = run_as_kserve(docker_client, preflight_image, tmp_path / "prefix", f"gs://{bucket}/llama/v1", env)
        assert code == 0, logs
        assert_ready(models, files)
        code, logs, _reason, models = run_as_kserve(docker_client, preflight_image, tmp_path / "archive", f"gs://{bucket}/releases/model.tar.gz", env)
        assert code == 0, logs
        assert_ready(models, files)
    finally:
        server.stop()


def test_oci_modelcar_image(docker_client: Any, preflight_image: str, tmp_path: Path) -> None:
    from tests.oci_servers import Pusher, RegistryServer, tar_bytes

    reg = RegistryServer(tmp_path / "registry", "none").start()
    try:
        files = hf_model()
        layer = tar_bytes([(f"models/{name}", data) for name, data in files.items()], gzip_it=True)
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        Pusher(reg).artifact("models/tiny", "v1", [("application/vnd.oci.image.layer.v1.tar+gzip", layer, {})],
                             config=config, config_type="application/vnd.oci.image.config.v1+json")
        code, logs, _reason, models = run_as_kserve(docker_client, preflight_image, tmp_path, f"oci://{reg.host}/models/tiny:v1", {})
        assert code == 0, logs
        assert_ready(models, files)
    finally:
        reg.stop()


def test_https_model_archive_trusted_through_kserves_ca_bundle(docker_client: Any, preflight_image: str, tmp_path: Path) -> None:
    from tests.tls_server import TlsFileServer

    files = hf_model()
    data = tar_gz(files)
    digest = hashlib.sha256(data).hexdigest()
    with TlsFileServer(tmp_path / "tls", {"/releases/model.tar.gz": data}) as server:
        certs = tmp_path / "custom-certs"
        certs.mkdir()
        (certs / "cabundle.crt").write_bytes(server.ca.read_bytes())
        os.chmod(certs / "cabundle.crt", 0o644)
        env = {"CA_BUNDLE_CONFIGMAP_NAME": "global-ca-bundle", "CA_BUNDLE_VOLUME_MOUNT_POINT": "/etc/ssl/custom-certs"}
        volumes = {str(certs): {"bind": "/etc/ssl/custom-certs", "mode": "ro"}}
        uri = f"{server.url('/releases/model.tar.gz')}#sha256={digest}"
        code, logs, _reason, models = run_as_kserve(docker_client, preflight_image, tmp_path, uri, env, volumes)
        assert code == 0, logs
        assert_ready(models, files)
        # a digest that does not match: exit 3, the reason where `kubectl describe pod` shows it, nothing served
        bad = tmp_path / "bad"
        bad.mkdir()
        code, logs, reason, models = run_as_kserve(docker_client, preflight_image, bad, f"{server.url('/releases/model.tar.gz')}#sha256={'ab' * 32}",
                                                   env, volumes)
        assert code == 3, logs
        assert "sha256" in reason and len(reason) <= 4096
        assert served(models) == {}
