"""The image on the real Docker engine: `docker run` against host folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from tests.docker_fixtures import (
    HARDENED,
    REPO,
    RUNTIME_UID,
    STAGE_LABEL,
    Setup,
    corrupt,
    run_container,
    served_digests,
    write_tiny_gguf,
    write_tiny_hf_dir,
)

pytestmark = pytest.mark.docker

# What the image adds to its base: at most 60 MB, docker's MB (10**6 bytes, as `docker images`
# prints them). ops/slim-venv.py keeps it there; README.md and bench/README.md say what each
# extra costs.
ADDED_LAYERS_LIMIT = 60 * 10**6


_digests = served_digests


def _host_check(setup: Setup) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from preflight.cli import main; main()", "check",
         "--manifest", str(setup.manifest), "--models-dir", str(setup.models), "--termination-log", ""],
        capture_output=True, text=True, timeout=120)


def test_image_contract(docker_client: Any, preflight_image: str, base_image: str) -> None:
    image = docker_client.images.get(preflight_image)
    config = image.attrs["Config"]
    assert config["User"] == f"{RUNTIME_UID}:{RUNTIME_UID}"
    assert config["Entrypoint"] == ["preflight"] and config["Cmd"] == ["sync"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PREFLIGHT_MANIFEST"] == "/etc/preflight/manifest.yaml"
    assert env["PREFLIGHT_MODELS_DIR"] == "/models"
    assert env["HOME"].startswith("/tmp") and env["HF_HOME"].startswith("/tmp")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    labels = config["Labels"]
    assert {"org.opencontainers.image.source", "org.opencontainers.image.version"} <= set(labels)
    assert len(labels["org.opencontainers.image.revision"]) == 40
    added = image.attrs["Size"] - docker_client.images.get(base_image).attrs["Size"]
    assert 0 < added <= ADDED_LAYERS_LIMIT, f"layers on top of the base: {added / 1e6:.1f} MB"


def test_runtime_venv_holds_only_runtime_dependencies(docker_client: Any, preflight_image: str) -> None:
    probe = (
        "import importlib.util as u, pathlib\n"
        "for m in ['pip', 'setuptools', 'numpy', 'gguf', 'safetensors', 'docker', 'hf_xet', 'picklescan']:\n"
        "    print(m, u.find_spec(m) is not None)\n"
        "for m in ['click', 'yaml', 'huggingface_hub', 'preflight.cli']:\n"
        "    print(m, u.find_spec(m) is not None)\n"
        "import preflight, sys\n"
        "pyc = list(pathlib.Path(preflight.__file__).parent.glob('__pycache__/cli.*.pyc'))\n"
        "print('pyc', bool(pyc))\n"
        "from preflight.formats import gguf_programs\n"  # package data: the GGUF load path
        "print('programs', len(gguf_programs.functions()) > 400)\n"
        "import os, botocore.httpsession as h\n"  # botocore's own CA bundle is gone: certifi's is used
        "print('ca', os.path.isfile(h.get_cert_path(True)))\n"
    )
    done = run_container(docker_client, preflight_image, ["-c", probe], entrypoint="python", network_mode="none", **HARDENED)
    assert done.exit_code == 0, done.logs
    found = dict(line.split() for line in done.stdout.split("\n") if line.strip())
    assert found == {
        "pip": "False", "setuptools": "False", "numpy": "False", "gguf": "False", "safetensors": "False",
        "docker": "False", "hf_xet": "False", "picklescan": "False", "click": "True", "yaml": "True", "huggingface_hub": "True",
        "preflight.cli": "True", "pyc": "True", "programs": "True", "ca": "True",
    }


def test_check_of_a_ready_folder_exits_0_without_network(docker_client: Any, preflight_image: str, ready_setup: Setup) -> None:
    done = run_container(docker_client, preflight_image, ["check"], volumes=ready_setup.mounts(models_mode="ro"),
                         network_mode="none", **HARDENED)
    assert done.exit_code == 0, done.logs
    assert "tiny" in done.logs


def test_default_command_syncs_a_ready_folder_offline(docker_client: Any, preflight_image: str, ready_setup: Setup) -> None:
    before = _digests(ready_setup.models)
    done = run_container(docker_client, preflight_image, volumes=ready_setup.mounts(), network_mode="none",
                         environment={"HF_HUB_OFFLINE": "1"}, **HARDENED)
    assert done.exit_code == 0, done.logs
    assert _digests(ready_setup.models) == before


def test_sync_fills_an_empty_folder_from_the_hub_hardened(docker_client: Any, preflight_image: str, empty_setup: Setup,
                                                         container_hub: Any, tmp_path: Path) -> None:
    done = run_container(docker_client, preflight_image, ["sync"], volumes=empty_setup.mounts(), network_mode="host",
                         environment=container_hub.env(token=False), **HARDENED)
    assert done.exit_code == 0, done.logs
    expected = tmp_path / "expected"
    write_tiny_hf_dir(expected / "vllm" / "tiny")
    write_tiny_gguf(expected / "gguf" / "tiny.gguf")
    assert _digests(empty_setup.models) == _digests(expected)
    assert all(p.stat().st_uid == RUNTIME_UID for p in empty_setup.models.rglob("*"))
    host = _host_check(empty_setup)
    assert host.returncode == 0, host.stderr
    assert not [p for p in empty_setup.models.rglob("*") if p.name.endswith((".part", ".tmp", ".incomplete"))]


def test_corrupt_folder_offline_fails_with_reason_in_termination_log(docker_client: Any, preflight_image: str,
                                                                    ready_setup: Setup) -> None:
    corrupt(ready_setup)
    tlog = ready_setup.root / "termination-log"
    tlog.touch()
    os.chown(tlog, RUNTIME_UID, RUNTIME_UID)
    volumes = {**ready_setup.mounts(), str(tlog): {"bind": "/dev/termination-log", "mode": "rw"}}
    done = run_container(docker_client, preflight_image, ["sync"], volumes=volumes, network_mode="none",
                         environment={"HF_HUB_OFFLINE": "1"}, **HARDENED)
    assert done.exit_code == 1, done.logs
    reason = tlog.read_text()
    assert reason.strip(), "termination log left empty"
    assert "tiny" in reason and len(reason) <= 4096
    assert (ready_setup.models / "vllm" / "tiny" / "model.safetensors").exists(), "a file was deleted"


def test_check_mounts_read_only_and_reports_not_ready(docker_client: Any, preflight_image: str, ready_setup: Setup) -> None:
    corrupt(ready_setup)
    before = _digests(ready_setup.models)
    done = run_container(docker_client, preflight_image, ["check"], volumes=ready_setup.mounts(models_mode="ro"),
                         network_mode="none", **HARDENED)
    assert done.exit_code == 1, done.logs
    assert "truncated" in done.logs or "size" in done.logs
    assert _digests(ready_setup.models) == before


def test_missing_manifest_is_a_usage_error(docker_client: Any, preflight_image: str, ready_setup: Setup) -> None:
    volumes = {str(ready_setup.models): {"bind": "/models", "mode": "ro"}}
    done = run_container(docker_client, preflight_image, ["check"], volumes=volumes, network_mode="none", **HARDENED)
    assert done.exit_code == 2, done.logs
    assert "/etc/preflight/manifest.yaml" in done.logs


def test_operator_scripts_check_a_host_dir_and_fill_a_volume(docker_client: Any, preflight_image: str,
                                                           ready_setup: Setup, empty_setup: Setup, container_hub: Any) -> None:
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PREFLIGHT_IMAGE": preflight_image}
    check = [str(repo / "ops" / "check-host-dir.sh"), str(ready_setup.models), str(ready_setup.manifest)]
    ok = subprocess.run(check, env=env, capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stderr
    corrupt(ready_setup)
    bad = subprocess.run(check, env=env, capture_output=True, text=True, timeout=180)
    assert bad.returncode == 1, bad.stderr

    volume = f"lpftest-{uuid.uuid4().hex[:8]}"
    try:
        synced = subprocess.run([str(repo / "ops" / "sync-volume.sh"), volume, str(empty_setup.manifest)],
                                env={**env, **container_hub.env(token=False), "DOCKER_NETWORK": "host"},
                                capture_output=True, text=True, timeout=180)
        assert synced.returncode == 0, synced.stderr
        listing = run_container(docker_client, preflight_image, ["-c", "find -L /models -name '.*' -prune -o \\( -name '*.gguf' -o -name '*.safetensors' \\) -print"],
                                entrypoint="sh", volumes={volume: {"bind": "/models", "mode": "ro"}}, network_mode="none")
        assert sorted(listing.stdout.split()) == ["/models/gguf/tiny.gguf", "/models/vllm/tiny/model.safetensors"]
    finally:
        docker_client.volumes.get(volume).remove(force=True)


def test_signed_lanes_verify_in_the_slimmed_image(docker_client: Any, preflight_image: str, tmp_path: Path) -> None:
    """The signing stack the image keeps verifies a key-signed and a certificate-signed lane, and
    a real keyless bundle through its whole chain (certificate, transparency log, identity):
    only its statement, a PyPI attestation, is refused. No network."""
    pytest.importorskip("model_signing")
    from tests.signing_fixtures import BUNDLE, IDENTITY, ISSUER
    from tests.signing_helpers import make_pki, sign_with_certificate, sign_with_key, sigstore_production_root
    from tests.test_signing import Signed

    def check(signed: Signed) -> dict:
        root = signed.root
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        done = run_container(docker_client, preflight_image,
                             ["check", "-m", "/signed/lanes.yaml", "-d", "/signed/models", "--json", "--termination-log", ""],
                             volumes={str(root): {"bind": "/signed", "mode": "ro"}}, network_mode="none", **HARDENED)
        assert "Traceback" not in done.logs, done.logs
        report = json.loads(done.stdout)  # stdout alone: the engine interleaves stderr lines into the combined log
        assert report["exit_code"] == done.exit_code
        return report

    key = Signed(tmp_path / "key")
    lane = key.folder()
    sign_with_key(lane, lane / "model.sig", key.key)
    report = check(key.policy("{method: key, key: keys/publisher.pub}"))
    assert report["exit_code"] == 0 and report["lanes"][0]["signature"]["policy"] == "key", report

    cert = Signed(tmp_path / "cert")
    lane = cert.folder()
    pki = make_pki(cert.root / "pki")
    sign_with_certificate(lane, lane / "model.sig", pki)
    report = check(cert.policy(f"{{method: certificate, certificate_chain: [{pki.root.relative_to(cert.root)}]}}"))
    assert report["exit_code"] == 0, report

    keyless = Signed(tmp_path / "keyless")
    lane = keyless.folder()
    (lane / "model.sig").write_text(BUNDLE)
    (keyless.root / "trusted_root.json").write_bytes(sigstore_production_root().read_bytes())
    report = check(keyless.policy(f'{{method: sigstore, identity: "{IDENTITY}", issuer: "{ISSUER}", trusted_root: trusted_root.json}}'))
    problems = report["lanes"][0]["problems"]
    assert report["exit_code"] == 1 and [p["code"] for p in problems] == ["signature-invalid"], report
    assert "Predicate type mismatch" in problems[0]["message"], problems


def _dangling(client: Any) -> set[str]:
    return {image.id for image in client.images.list(filters={"dangling": True})}


def test_a_test_build_leaves_no_untagged_image(docker_client: Any, preflight_image: str,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "preflight-image.lock")):
        left = docker_client.images.list(filters={"dangling": True, "label": STAGE_LABEL})
    assert not left, f"untagged images of this project: {[i.id for i in left]}"


def test_build_script_says_each_step_and_leaves_nothing_untagged(docker_client: Any, preflight_image: str, base_image: str,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    tag = f"lane-preflight:buildtest-{uuid.uuid4().hex[:8]}"
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "preflight-image.lock")):
        before = _dangling(docker_client)
        try:
            done = subprocess.run(["bash", str(REPO / "ops" / "build-image.sh"), tag], capture_output=True, text=True,
                                  timeout=1200, env={**os.environ, "BASE_IMAGE": base_image})
            after = _dangling(docker_client)
        finally:
            try:
                docker_client.images.remove(tag)
            except Exception:  # the build failed before tagging: nothing to remove
                pass
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [line for line in done.stdout.splitlines() if line.startswith("==> [")]
    assert [s.split("]")[0] for s in steps] == ["==> [1/4", "==> [2/4", "==> [3/4", "==> [4/4"], done.stdout
    assert "already exists" in done.stdout  # the base image is reused, not rebuilt
    assert any(line.startswith(("Step ", "#")) for line in done.stdout.splitlines()), "docker build printed no progress"
    assert f"{tag}: " in done.stdout and "added: " in done.stdout
    assert after <= before, f"new untagged images: {after - before}"
