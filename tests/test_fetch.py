"""`preflight fetch SRC DEST` and `preflight SRC DEST`: the storage-initializer contract of
KServe and Seldon, with everything sync does. Real servers on 127.0.0.1 (the Hub stand-in,
s3s-fs, the distribution registry); every run is the real CLI in a child process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from preflight.fetchlane import detect_kind
from preflight.kserve import oci_settings, patterns, storage_config, storage_uri, url_headers
from tests.hubserver import HubServer
from tests.repos import gguf_file, hf_model, served, tar_gz

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Done:
    code: int
    stderr: str
    report: dict | None
    termination: str


def fetch(tmp: Path, *args: str, env: dict[str, str] | None = None, command: bool = False) -> Done:
    """`preflight SRC DEST …` (as KServe runs it), or `preflight fetch …` with `command`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFLIGHT_", "AWS_", "S3_", "STORAGE_"))}
    base.update(PYTHONPATH=str(REPO), HF_HOME=str(tmp / "hf-home"), HOME=str(tmp), AWS_EC2_METADATA_DISABLED="true",
                PREFLIGHT_MANIFEST="/etc/preflight/manifest.yaml", PREFLIGHT_MODELS_DIR="/models")  # the image's own settings
    base.update(env or {})
    tlog = tmp / "termination.log"
    tlog.write_text("")
    rep = tmp / "report.json"
    if rep.exists():
        rep.unlink()
    argv = [sys.executable, "-m", "preflight.cli", *(["fetch"] if command else []), *args]
    base.update(PREFLIGHT_REPORT=str(rep), PREFLIGHT_TERMINATION_LOG=str(tlog))
    p = subprocess.run(argv, env=base, capture_output=True, text=True, timeout=300, cwd=tmp)
    return Done(p.returncode, p.stderr, json.loads(rep.read_text()) if rep.exists() else None, tlog.read_text())


@pytest.fixture
def hub() -> HubServer:
    with HubServer() as server:
        yield server


# --------------------------------------------------------------------------- the rule, the URI forms, the environment


@pytest.mark.parametrize("source,kind", [
    ("hf://org/model", "hf-dir"), ("hf://org/model@main", "hf-dir"), ("hf://org/model/sub", "hf-dir"),
    ("hf://org/model/model.Q4_K_M.gguf", "gguf"), ("hf://org/model/model.safetensors", "file"),
    ("s3://bucket/prefix/llama", "hf-dir"), ("s3://bucket/model.tar.gz", "hf-dir"), ("s3://bucket/x/model.gguf", "gguf"),
    ("gs://bucket/prefix/llama", "hf-dir"), ("gs://bucket/model.zip", "hf-dir"), ("gs://bucket/x/model.gguf#1712345678901234", "gguf"),
    ("https://host/a/model.tar.gz", "hf-dir"), ("https://host/a/model.tgz?sig=1", "hf-dir"), ("https://host/a/model.zip", "hf-dir"),
    ("https://host/a/model.bin", "file"), ("https://host/download?id=3", "file"), ("file:///srv/mirror/coder", "hf-dir"),
    ("/srv/mirror/model.tar.zst", "hf-dir"), ("oci://reg:5000/models/coder:v1", "hf-dir"), ("oci://reg/m:v1//x/model.gguf", "gguf"),
])
def test_the_kind_comes_from_what_the_source_names(source: str, kind: str) -> None:
    assert detect_kind(source) == kind


def test_kserve_uri_forms() -> None:
    assert storage_uri("hf://org/model:v1.0") == ("hf://org/model@v1.0", None)
    assert storage_uri("hf://org/model") == ("hf://org/model", None)
    digest = "ab" * 32
    assert storage_uri(f"https://h/m.tar.gz#sha256={digest.upper()}") == ("https://h/m.tar.gz", digest)
    assert storage_uri("s3://b/k#notadigest") == ("s3://b/k#notadigest", None)


def test_kserve_storage_config_becomes_the_variables_its_initializer_sets() -> None:
    env = {"STORAGE_CONFIG": json.dumps({"type": "s3", "access_key_id": "AK", "secret_access_key": "SK", "endpoint_url": "http://m:9000",
                                         "region": "eu-west-1", "verify_ssl": "0", "anonymous": "false", "bucket": "b"}),
           "STORAGE_OVERRIDE_CONFIG": json.dumps({"type": "s3", "region": "us-east-2"})}
    assert storage_config(env) == {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_ENDPOINT_URL": "http://m:9000",
                                   "AWS_DEFAULT_REGION": "us-east-2", "S3_VERIFY_SSL": "0", "awsAnonymousCredential": "false"}
    assert storage_config({"STORAGE_CONFIG": json.dumps({"type": "hdfs", "x": "y"})}) == {}
    assert patterns({"STORAGE_ALLOW_PATTERNS": '["*.json", "*.safetensors"]'}, "STORAGE_ALLOW_PATTERNS") == ("*.json", "*.safetensors")
    assert patterns({"STORAGE_IGNORE_PATTERNS": "*.bin, original/*"}, "STORAGE_IGNORE_PATTERNS") == ("*.bin", "original/*")
    assert url_headers({"h.example-headers": '{"Authorization": "Bearer x"}'}, "h.example") == {"Authorization": "Bearer x"}
    assert oci_settings({"KSERVE_OCI_INSECURE_REGISTRY": "true"}, "oci://reg:5000/m:v1") == {"PREFLIGHT_INSECURE_REGISTRY": "reg:5000"}


# --------------------------------------------------------------------------- end to end


def test_a_uri_as_first_argument_fetches_a_hub_folder_into_dest(tmp_path: Path, hub: HubServer) -> None:
    files = hf_model()
    hub.add_repo("org/tiny", files)
    dest = tmp_path / "mnt" / "models"
    dest.mkdir(parents=True)
    done = fetch(tmp_path, "hf://org/tiny", str(dest), env=hub.env(token=False))
    assert done.code == 0, done.stderr
    assert served(dest) == {k: v for k, v in files.items()}
    assert done.report["command"] == "fetch" and done.report["lanes"][0]["kind"] == "hf-dir"
    from tests.test_schemas import validator

    assert not list(validator("report").iter_errors(done.report))
    assert json.loads((dest / ".preflight" / "ready.json").read_text())["status"] == "ready"
    # a restart of the init container: nothing fetched, nothing changed
    before = {p: p.stat().st_ino for p in dest.iterdir() if p.is_file()}
    hub.clear_requests()
    again = fetch(tmp_path, "hf://org/tiny", str(dest), env=hub.env(token=False))
    assert again.code == 0, again.stderr
    assert {p: p.stat().st_ino for p in dest.iterdir() if p.is_file()} == before
    assert not [r for r in hub.requests if r.kind in ("resolve", "cdn")]


def test_kserve_revision_syntax_and_a_single_gguf_file(tmp_path: Path, hub: HubServer) -> None:
    hub.add_repo("org/tiny-gguf", gguf_file("tiny.Q8_0.gguf"), revision="v1")
    dest = tmp_path / "models"
    done = fetch(tmp_path, "hf://org/tiny-gguf/tiny.Q8_0.gguf@v1", str(dest), env=hub.env(token=False))
    assert done.code == 0, done.stderr
    assert served(dest) == gguf_file("tiny.Q8_0.gguf")
    assert done.report["lanes"][0]["kind"] == "gguf"
    hub.add_repo("org/tiny", hf_model(), revision="v2")
    colon = fetch(tmp_path, "hf://org/tiny:v2", str(tmp_path / "other"), env=hub.env(token=False))
    assert colon.code == 0, colon.stderr
    assert colon.report["lanes"][0]["source"] == "hf://org/tiny@v2"


def test_an_https_archive_with_its_digest_in_the_uri(tmp_path: Path, hub: HubServer) -> None:
    files = hf_model()
    data = tar_gz(files)
    url = hub.add_url("releases/model.tar.gz", data)
    digest = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "models"
    done = fetch(tmp_path, f"{url}#sha256={digest}", str(dest))
    assert done.code == 0, done.stderr
    assert served(dest) == files
    assert all("#sha256" not in r.path and "sha256" not in r.query for r in hub.requests)  # the fragment stays here
    # a wrong digest: exit 3, the reason in the termination log, nothing in DEST
    bad = fetch(tmp_path, f"{url}#sha256={'ab' * 32}", str(tmp_path / "bad"))
    assert bad.code == 3, bad.stderr
    assert "sha256" in bad.termination and served(tmp_path / "bad") == {}
    # no digest at all: a usage error that says how to pin it, with the report and the reason left
    unpinned = fetch(tmp_path, url, str(tmp_path / "unpinned"))
    assert unpinned.code == 2 and "#sha256=" in unpinned.stderr
    assert unpinned.report["exit_code"] == 2 and unpinned.termination


def test_kserve_https_headers_reach_the_server_and_are_masked(tmp_path: Path, hub: HubServer) -> None:
    data = gguf_file("tiny.Q8_0.gguf")["tiny.Q8_0.gguf"]
    url = hub.add_url("private/tiny.Q8_0.gguf", data)
    secret = "Bearer s3cr3t-header-value"
    done = fetch(tmp_path, url, str(tmp_path / "models"), "--sha256", hashlib.sha256(data).hexdigest(), command=True,
                 env={"127.0.0.1-headers": json.dumps({"Authorization": secret, "X-Team": "ml"})})
    assert done.code == 0, done.stderr
    gets = [r for r in hub.requests if r.path == "/private/tiny.Q8_0.gguf" and r.method == "GET"]
    assert gets and all(r.authorization and r.headers.get("X-Team") == "ml" for r in gets)
    assert secret not in done.stderr and secret not in json.dumps(done.report)


def test_storage_allow_patterns_select_files(tmp_path: Path, hub: HubServer) -> None:
    files = hf_model(extra={"README.md": b"# tiny", "original/consolidated.pth": b"not wanted"})
    hub.add_repo("org/tiny", files)
    dest = tmp_path / "models"
    done = fetch(tmp_path, "hf://org/tiny", str(dest), env={**hub.env(token=False), "STORAGE_IGNORE_PATTERNS": '["original/*", "*.md"]'})
    assert done.code == 0, done.stderr
    assert set(served(dest)) == set(files) - {"README.md", "original/consolidated.pth"}


def test_failures_keep_the_contract(tmp_path: Path, hub: HubServer) -> None:
    hub.add_repo("org/gated", hf_model(), gated=True)
    missing = fetch(tmp_path, "hf://org/nope", str(tmp_path / "a"), env=hub.env(token=True))
    assert missing.code == 3 and missing.report["exit_code"] == 3 and "org/nope" in missing.termination
    gated = fetch(tmp_path, "hf://org/gated", str(tmp_path / "b"), env=hub.env(token=False))
    assert gated.code == 4 and gated.termination
    typo = fetch(tmp_path, "htps://org/x", str(tmp_path / "c"))
    assert typo.code == 2 and "did you mean" in typo.stderr
    dest = tmp_path / "d"
    (dest / ".preflight").mkdir(parents=True)
    (dest / ".preflight" / "lease.json").write_text(json.dumps({"owner": "another-host", "pid": 1, "token": "x"}))
    hub.add_repo("org/tiny", hf_model())
    held = fetch(tmp_path, "hf://org/tiny", str(dest), "--lease-wait", "0.5", "--lease-stale", "600", command=True,
                 env=hub.env(token=False))
    assert held.code == 6, held.stderr


def test_fetched_files_get_the_format_checks(tmp_path: Path, hub: HubServer) -> None:
    files = hf_model()
    files["model.safetensors"] = files["model.safetensors"][:-64]  # a truncated shard, as a broken upload would be
    hub.add_repo("org/broken", files)
    done = fetch(tmp_path, "hf://org/broken", str(tmp_path / "models"), env=hub.env(token=False))
    assert done.code in (1, 3), done.stderr
    assert "model.safetensors" in done.termination
    assert "model.safetensors" not in served(tmp_path / "models")


# --------------------------------------------------------------------------- s3 and oci


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    from tests.s3_server import S3Server, binary

    if binary() is None:
        if os.environ.get("CI"):
            pytest.fail("the S3 test server is not built (bash ops/s3-server.sh)")
        pytest.skip("the S3 test server is not built (bash ops/s3-server.sh)")
    server = S3Server(tmp_path_factory.mktemp("s3") / "root").start()
    yield server
    server.stop()


def test_s3_with_kserve_variables_and_a_storage_config_secret(tmp_path: Path, s3) -> None:
    from tests.s3_server import ACCESS_KEY, SECRET_KEY

    bucket = s3.bucket(f"kserve-{os.getpid()}")
    files = hf_model()
    s3.put_tree(bucket, "llama", files)
    host = s3.endpoint.split("://", 1)[1]
    # the variables KServe's webhook sets from an S3 secret and its annotations
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "S3_ENDPOINT": host, "S3_USE_HTTPS": "0",
           "AWS_DEFAULT_REGION": "us-east-1"}
    done = fetch(tmp_path, f"s3://{bucket}/llama", str(tmp_path / "a"), env=env)
    assert done.code == 0, done.stderr
    assert served(tmp_path / "a") == files
    # a storage-config entry (storageSpec), as KServe passes it
    config = json.dumps({"type": "s3", "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                         "endpoint_url": s3.endpoint, "region": "us-east-1", "bucket": bucket})
    done = fetch(tmp_path, f"s3://{bucket}/llama", str(tmp_path / "b"), env={"STORAGE_CONFIG": config})
    assert done.code == 0, done.stderr
    assert SECRET_KEY not in done.stderr and SECRET_KEY not in json.dumps(done.report)
    # an archive in the bucket: unpacked into DEST
    data = tar_gz(files)
    s3.put(bucket, "releases/model.tar.gz", data)
    done = fetch(tmp_path, f"s3://{bucket}/releases/model.tar.gz", str(tmp_path / "c"), env=env)
    assert done.code == 0, done.stderr
    assert served(tmp_path / "c") == files


def test_oci_modelcar_image_into_dest(tmp_path: Path) -> None:
    from tests.oci_servers import Pusher, RegistryServer, tar_bytes

    reg = RegistryServer(tmp_path / "registry", "none").start()
    try:
        files = hf_model()
        layer = tar_bytes([(f"models/{name}", data) for name, data in files.items()], gzip_it=True)
        Pusher(reg).artifact("models/tiny", "v1", [("application/vnd.oci.image.layer.v1.tar+gzip", layer, {})],
                             config=json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode(),
                             config_type="application/vnd.oci.image.config.v1+json")
        done = fetch(tmp_path, f"oci://{reg.host}/models/tiny:v1", str(tmp_path / "models"))
        assert done.code == 0, done.stderr
        assert served(tmp_path / "models") == files
    finally:
        reg.stop()


def test_an_https_archive_trusted_through_kserves_global_ca_bundle(tmp_path: Path) -> None:
    from tests.tls_server import TlsFileServer

    files = hf_model()
    data = tar_gz(files)
    with TlsFileServer(tmp_path / "tls", {"/releases/model.tar.gz": data}) as server:
        uri = f"{server.url('/releases/model.tar.gz')}#sha256={hashlib.sha256(data).hexdigest()}"
        untrusted = fetch(tmp_path, uri, str(tmp_path / "a"))
        assert untrusted.code == 3, untrusted.stderr
        assert "certificate" in untrusted.stderr.lower() and served(tmp_path / "a") == {}
        bundle = tmp_path / "custom-certs"
        bundle.mkdir()
        (bundle / "cabundle.crt").write_bytes(server.ca.read_bytes())
        trusted = fetch(tmp_path, uri, str(tmp_path / "b"),
                        env={"CA_BUNDLE_CONFIGMAP_NAME": "global-ca-bundle", "CA_BUNDLE_VOLUME_MOUNT_POINT": str(bundle)})
        assert trusted.code == 0, trusted.stderr
        assert served(tmp_path / "b") == files
