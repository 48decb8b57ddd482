"""gs:// lanes and `push --to gs://` end to end, against a real Cloud Storage server
(fake-gcs-server on 127.0.0.1, installed by ops/gcs-server.sh), through a logging fault
proxy where a test needs to see, break or refuse requests. Every test runs the real
command in a subprocess and asserts what a user sees: the exit code, the report, the files
on the volume, the requests made.

fake-gcs-server checks no credential. Where a test needs one checked, the proxy's gate
does it (a bearer token a local token endpoint or metadata server issued), and HMAC
signatures are checked by the real S3 server (s3s-fs verifies SigV4 as Cloud Storage's
XML API does).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.gcs_server import GcsServer
from tests.objectstores import bucket_name, each_fails, killed_mid_object_then_rerun, lane, served, store_env, vol  # noqa: F401
from tests.repos import gguf_split, hf_model, write_tree
from tests.s3_proxy import Request, S3Proxy
from tests.test_sync import Run, Volume, sha256
from tests.test_sync_faults import WEIGHTS, big_model


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    yield from served(GcsServer(tmp_path_factory.mktemp("gcs") / "root"))


@pytest.fixture
def proxy(gcs: GcsServer) -> Iterator[S3Proxy]:
    yield from served(S3Proxy(gcs.port))


@pytest.fixture
def bucket(gcs: GcsServer) -> str:
    return gcs.bucket(bucket_name())


_GOOGLE = ("GOOGLE_", "GS_", "CLOUDSDK_", "GCE_", "STORAGE_EMULATOR_HOST", "NO_GCE_CHECK", "AWS_")


def gs_env(vol: Volume, endpoint: str, **extra: str) -> dict[str, str]:
    """A user's environment: none of the caller's Google settings, no ~/.config/gcloud, and
    no metadata server probe (NO_GCE_CHECK: google-auth's switch) unless a test sets one."""
    return store_env(vol, _GOOGLE, {"STORAGE_EMULATOR_HOST": endpoint, "NO_GCE_CHECK": "True"}, extra)


def media_gets(proxy: S3Proxy) -> list[Request]:
    """Downloads of object bytes (alt=media, or the XML API's GET /bucket/object)."""
    return [r for r in proxy.requests if r.method == "GET" and ("alt=media" in r.query or not r.path.startswith("/storage/"))
            and r.path.count("/") >= 2]


def same_size_edit(config: bytes) -> bytes:
    """The same JSON with other bytes of the same length (a separator written another way)."""
    changed = config.replace(b", ", b",\n", 1)
    assert len(changed) == len(config) and changed != config
    return changed


def no_secret(*runs: Run, secrets: tuple[str, ...] = ()) -> None:
    for r in runs:
        text = r.output + json.dumps(r.report) + (r.termination or "")
        assert "X-Amz-Signature" not in text and "Bearer " not in text
        for s in secrets:
            assert s not in text, s


# --------------------------------------------------------------------------- pull


def test_folder_lane_byte_identical_by_generation_resync_moves_nothing_corruption_repaired(
        vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str) -> None:
    files = hf_model(sharded=True)
    made = gcs.put_tree(bucket, "llm", files)
    gcs.put(bucket, "llm-other/config.json", b"{}")  # beside the prefix, not under it
    gcs.put(bucket, "llm/", b"")  # a "folder" placeholder object, as the console writes
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/llm")])
    env = gs_env(vol, proxy.endpoint)

    first = vol.run("sync", env=env)
    assert first.code == 0, first.stderr
    assert vol.tree("vllm/llm") == files
    assert first.lane("llm")["fetched_files"] == len(files)
    assert "anonymous requests" in first.stderr and first.stderr.count("anonymous requests") == 1
    gets = media_gets(proxy)
    assert sorted(unquote(g.path).rsplit("/o/", 1)[1] for g in gets) == sorted(f"llm/{rel}" for rel in files)
    for g in gets:  # every download names the generation the listing saw
        rel = unquote(g.path).rsplit("/o/llm/", 1)[1]
        assert parse_qs(g.query)["generation"] == [made[rel]["generation"]]
    receipts = json.loads((vol.models / ".preflight/receipts.json").read_text())
    assert any("crc32c" in json.dumps(v) for v in receipts.values())  # the CRC32C checked is remembered
    assert vol.debris() == []

    proxy.clear()
    again = vol.run("sync", env=env)
    assert again.code == 0, again.stderr
    assert media_gets(proxy) == []  # one listing, no bytes

    weights = next(rel for rel in files if rel.endswith(".safetensors"))
    target = vol.models / "vllm/llm" / weights
    broken = bytearray(target.read_bytes())
    broken[-1] ^= 0xFF
    target.write_bytes(bytes(broken))
    proxy.clear()
    repaired = vol.run("sync", env=env)
    assert repaired.code == 0, repaired.stderr
    assert vol.tree("vllm/llm") == files
    assert [unquote(g.path).rsplit("/o/", 1)[1] for g in media_gets(proxy)] == [f"llm/{weights}"]

    changed = same_size_edit(files["config.json"])  # a new generation, another CRC32C

    gcs.put(bucket, "llm/config.json", changed)
    proxy.clear()
    updated = vol.run("sync", env=env)
    assert updated.code == 0, updated.stderr
    assert vol.tree("vllm/llm") == {**files, "config.json": changed}
    assert [unquote(g.path).rsplit("/o/", 1)[1] for g in media_gets(proxy)] == ["llm/config.json"]
    no_secret(first, again, repaired, updated)


def test_gguf_object_finds_its_split_parts_and_a_generation_pin_holds_after_an_overwrite(
        vol: Volume, gcs: GcsServer, proxy: S3Proxy) -> None:
    bucket = gcs.bucket(bucket_name("versioned"), versioning=True)
    parts = gguf_split("big", 3)
    gcs.put_tree(bucket, "gguf", parts)
    old = gcs.put(bucket, "gguf/readme.md", b"the first notes\n")
    gcs.put(bucket, "gguf/readme.md", b"notes written later\n")  # the live object now; the pin names the first
    vol.write([lane("big", "gguf/big-00001-of-00003.gguf", f"gs://{bucket}/gguf/big-00001-of-00003.gguf", kind="gguf"),
               lane("notes", "docs/README.md", f"gs://{bucket}/gguf/readme.md#{old['generation']}", kind="file")])
    r = vol.run("sync", env=gs_env(vol, proxy.endpoint))
    assert r.code == 0, r.stderr
    assert r.lane("big")["files"] == 3
    assert vol.tree("gguf") == parts
    assert vol.tree("docs") == {"README.md": b"the first notes\n"}
    notes = [g for g in media_gets(proxy) if g.path.endswith("readme.md")]
    assert [parse_qs(g.query)["generation"] for g in notes] == [[old["generation"]]]


def test_include_exclude_apply_to_names_below_the_prefix(vol: Volume, gcs: GcsServer, bucket: str) -> None:
    files = hf_model()
    gcs.put_tree(bucket, "m/v1", {**files, "extra/notes.txt": b"x"})
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/m/v1", include=["*.json", "*.safetensors", "tokenizer*"], exclude=["extra/*"])])
    r = vol.run("sync", env=gs_env(vol, gcs.endpoint))
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files


def test_missing_bucket_object_generation_empty_prefix_and_a_folder_exit_3_naming_it(vol: Volume, gcs: GcsServer, bucket: str) -> None:
    made = gcs.put_tree(bucket, "m", hf_model())
    gen = made["config.json"]["generation"]
    env = gs_env(vol, gcs.endpoint)
    pid = os.getpid()
    each_fails(vol, env, [
        (lane("a", "a", f"gs://no-such-bucket-{pid}/m"), f"bucket no-such-bucket-{pid} does not exist"),
        (lane("a", "a", f"gs://{bucket}/nothing-here"), "no objects under this prefix"),
        (lane("a", "a/x.gguf", f"gs://{bucket}/m/absent.gguf", kind="gguf"), f"gs://{bucket}/m/absent.gguf: no such object"),
        (lane("a", "a/x.gguf", f"gs://no-such-bucket-{pid}/m/absent.gguf", kind="gguf"), "does not exist"),
        (lane("a", "a/m", f"gs://{bucket}/m", kind="file"), f"gs://{bucket}/m is a folder"),
        (lane("a", "a/c.json", f"gs://{bucket}/m/config.json#{int(gen) - 1}", kind="file"), f"live object is generation {gen}"),
    ])


def test_gzip_encoded_object_is_refused_not_transcoded(vol: Volume, gcs: GcsServer, bucket: str) -> None:
    import gzip

    gcs.put(bucket, "m/config.json", gzip.compress(b'{"model_type": "llama"}'), content_encoding="gzip")
    vol.write([lane("a", "a/config.json", f"gs://{bucket}/m/config.json", kind="file")])
    r = vol.run("sync", "--retries", "0", env=gs_env(vol, gcs.endpoint))
    assert r.code == 3, r.stderr
    assert "Content-Encoding: gzip" in r.stderr
    assert not (vol.models / "a").exists()


# --------------------------------------------------------------------------- integrity and faults


def test_bytes_that_fail_the_crc32c_are_never_published_and_a_clean_retry_passes(
        vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str) -> None:
    files = big_model(1 << 20)
    gcs.put_tree(bucket, "big", files)
    vol.write([lane("big", "vllm/big", f"gs://{bucket}/big")])
    env = gs_env(vol, proxy.endpoint)
    path = f"/storage/v1/b/{bucket}/o/big/{WEIGHTS}"
    proxy.fault(path, "corrupt", after=500_000, times=2)  # every attempt of this run
    bad = vol.run("sync", "--retries", "1", env=env)
    assert bad.code == 3, bad.stderr
    assert "crc32c" in bad.stderr and "nothing was published" in bad.stderr
    assert not (vol.models / "vllm/big").exists()
    assert vol.partials() == [] and vol.debris() == []

    proxy.fault(path, "corrupt", after=500_000, times=1)  # one bad attempt, then good bytes
    good = vol.run("sync", "--retries", "2", env=env)
    assert good.code == 0, good.stderr
    assert vol.tree("vllm/big") == files
    assert "crc32c" in good.stderr and "retry" in good.stderr


@pytest.mark.slow
def test_killed_mid_object_then_rerun_resumes_the_same_generation_with_range(
        vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str) -> None:
    files = big_model(1 << 20)
    made = gcs.put_tree(bucket, "big", files)
    vol.write([lane("big", "vllm/big", f"gs://{bucket}/big")])
    env = gs_env(vol, proxy.endpoint)
    path = f"/storage/v1/b/{bucket}/o/big/{WEIGHTS}"
    r = killed_mid_object_then_rerun(vol, proxy, env, path, vol.models / "vllm/big" / WEIGHTS)
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/big") == files
    final = [g for g in media_gets(proxy) if g.path == path]
    assert [(q.range, q.status, q.bytes_sent) for q in final] == [("bytes=300000-", 206, len(files[WEIGHTS]) - 300_000)]
    assert parse_qs(final[0].query)["generation"] == [made[WEIGHTS]["generation"]]
    assert vol.partials() == [] and vol.debris() == []


def test_dropped_and_refused_connections_are_retried_within_the_deadline(vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str) -> None:
    files = big_model(256 * 1024)
    gcs.put_tree(bucket, "big", files)
    vol.write([lane("big", "vllm/big", f"gs://{bucket}/big")])
    path = f"/storage/v1/b/{bucket}/o/big/{WEIGHTS}"
    proxy.fault(f"/storage/v1/b/{bucket}/o", "refuse", times=1)  # the listing's first connection
    proxy.fault(path, "drop", after=100_000, times=1)
    proxy.fault(path, "refuse", times=1)
    r = vol.run("sync", "--deadline", "60", env=gs_env(vol, proxy.endpoint))
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/big") == files
    tries = [g for g in media_gets(proxy) if g.path == path]
    assert len(tries) == 3 and tries[-1].range == "bytes=100000-" and tries[-1].status == 206
    assert "retry" in r.stderr


# --------------------------------------------------------------------------- the lock


def test_lock_pins_generations_a_versioned_bucket_still_serves_them_an_overwritten_one_is_refused(
        vol: Volume, gcs: GcsServer, proxy: S3Proxy) -> None:
    files = hf_model()
    versioned = gcs.bucket(bucket_name("versioned"), versioning=True)
    plain = gcs.bucket(bucket_name("plain"))
    made = gcs.put_tree(versioned, "m", files)
    gcs.put_tree(plain, "m", files)
    vol.write([lane("kept", "vllm/kept", f"gs://{versioned}/m"), lane("gone", "vllm/gone", f"gs://{plain}/m")])
    env = gs_env(vol, proxy.endpoint)
    locked = vol.run("lock", env=env)
    assert locked.code == 0, locked.stderr
    doc = json.loads((vol.root / "lanes.lock.json").read_text())
    import jsonschema

    jsonschema.validate(doc, json.loads((Path(__file__).resolve().parent.parent / "preflight/schemas/lock.schema.json").read_text()))
    lock = doc["lanes"]
    assert lock["kept"]["source"] == f"gs://{versioned}/m"
    assert lock["kept"]["files"] == {rel: {"size": len(data), "sha256": sha256(data), "generation": made[rel]["generation"]}
                                     for rel, data in files.items()}

    changed = same_size_edit(files["config.json"])
    for b in (versioned, plain):
        gcs.put(b, "m/config.json", changed)
    proxy.clear()
    r = vol.run("sync", "--locked", env=env)
    assert r.code == 3, r.stderr
    assert vol.tree("vllm/kept") == files  # the locked generations, though the live config.json is another
    kept = [g for g in media_gets(proxy) if g.path.endswith(f"{versioned}/o/m/config.json")]
    assert [parse_qs(g.query)["generation"] for g in kept] == [[made["config.json"]["generation"]]]
    assert f"gs://{plain}/m/config.json#" in r.stderr and "changed on the server since the lock" in r.stderr
    assert "that generation no longer exists" in r.stderr
    assert r.lane("gone")["status"] != "ready" and not (vol.models / "vllm/gone/config.json").exists()
    assert "retry" not in r.stderr  # refused once, not retried
    assert vol.debris() == []

    relocked = vol.run("lock", env=env)  # accepting the new object is a new lock
    assert relocked.code == 0, relocked.stderr
    after = vol.run("sync", "--locked", env=env)
    assert after.code == 0, after.stderr
    assert vol.tree("vllm/gone") == {**files, "config.json": changed}


# --------------------------------------------------------------------------- credentials


class _Google(http.server.BaseHTTPRequestHandler):
    """A token endpoint (the JWT-bearer grant a service-account key makes: the assertion's
    RS256 signature checked with the key's public half) and a GCE/GKE metadata server
    (Metadata-Flavor: Google; the service account's info and its token), as google-auth
    calls them."""

    public_key: Any = None
    email = "models-reader@project.iam.gserviceaccount.com"
    issued = "ya29.local-token-6f1d3b8e2a9c4d07"
    seen: list[str] = []

    def _answer(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()).items()}
        type(self).seen.append("token")
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer" and self._valid(form.get("assertion", "")):
            self._answer(200, json.dumps({"access_token": self.issued, "expires_in": 3600, "token_type": "Bearer"}).encode())
        else:
            self._answer(400, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}')

    def _valid(self, jwt: str) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def unb64(s: str) -> bytes:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

        try:
            head, claims, sig = jwt.split(".")
            self.public_key.verify(unb64(sig), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature):
            return False
        body = json.loads(unb64(claims))
        return body.get("iss") == self.email and "devstorage" in body.get("scope", "")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if self.headers.get("Metadata-Flavor") != "Google":
            return self._answer(403, b"missing Metadata-Flavor")
        type(self).seen.append(path)
        if path == "/":
            return self._answer(200, b"", "application/text")
        if path.startswith("/computeMetadata/v1/instance/service-accounts/") and path.endswith("/token"):
            return self._answer(200, json.dumps({"access_token": self.issued, "expires_in": 3599, "token_type": "Bearer"}).encode())
        if path.startswith("/computeMetadata/v1/instance/service-accounts/"):
            return self._answer(200, json.dumps({"email": self.email, "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                                                 "aliases": ["default"]}).encode())
        if path == "/computeMetadata/v1/universe/universe-domain":
            return self._answer(200, b"googleapis.com", "application/text")
        return self._answer(404, b"not found", "text/plain")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def google(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(the token endpoint / metadata server's address, a service-account key file it
    accepts, one it refuses), keys generated here."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    _Google.public_key = keys[0].public_key()
    _Google.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Google)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    paths = []
    for i, key in enumerate(keys):
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        info = {"type": "service_account", "project_id": "models", "private_key_id": f"k{i}", "private_key": pem,
                "client_email": _Google.email, "client_id": "1", "token_uri": f"http://{host}/token"}
        path = tmp_path / f"sa-{i}.json"
        path.write_text(json.dumps(info))
        paths.append(path)
    try:
        yield host, paths[0], paths[1]
    finally:
        server.shutdown()
        server.server_close()


def bearer_gate(req: Request) -> tuple[int, bytes] | None:
    """The bucket's own check, which fake-gcs-server does not make: the token issued, or 401/403."""
    auth = req.headers.get("authorization", "")
    if auth == f"Bearer {_Google.issued}":
        return None
    return (401, b'{"error": {"code": 401, "message": "Invalid Credentials"}}') if auth else \
        (403, b'{"error": {"code": 403, "message": "Anonymous caller does not have storage.objects.list access"}}')


def test_service_account_key_file_gets_a_token_that_every_request_carries(
        vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str, google: tuple[str, Path, Path]) -> None:
    _host, good, refused_key = google
    files = hf_model()
    gcs.put_tree(bucket, "m", files)
    proxy.gate = bearer_gate
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/m"), lane("one", "one/config.json", f"gs://{bucket}/m/config.json", kind="file")])
    r = vol.run("sync", env=gs_env(vol, proxy.endpoint, GOOGLE_APPLICATION_CREDENTIALS=str(good)))
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert "token" in _Google.seen
    assert proxy.requests and all(q.headers.get("authorization") == f"Bearer {_Google.issued}" for q in proxy.requests)
    no_secret(r, secrets=(_Google.issued,))

    other = Volume(vol.root / "other", None)
    other.root.mkdir()
    other.write([lane("llm", "vllm/llm", f"gs://{bucket}/m")])
    runs = [other.run("sync", env=gs_env(other, proxy.endpoint, GOOGLE_APPLICATION_CREDENTIALS=str(refused_key))),  # the key refused
            other.run("sync", env=gs_env(other, proxy.endpoint))]  # anonymous: the bucket refuses
    for bad in runs:
        assert bad.code == 4, bad.stderr
        assert not (other.models / "vllm/llm").exists()
    assert "service account models-reader@project.iam.gserviceaccount.com" in runs[0].stderr and "invalid_grant" in runs[0].stderr
    assert "anonymous" in runs[1].stderr and "GOOGLE_APPLICATION_CREDENTIALS" in runs[1].stderr  # the hint says where credentials come from
    no_secret(*runs, secrets=(_Google.issued,))


def test_workload_identity_token_from_the_metadata_server(vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str,
                                                          google: tuple[str, Path, Path]) -> None:
    host, _good, _bad = google
    files = hf_model()
    gcs.put_tree(bucket, "m", files)
    proxy.gate = bearer_gate
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/m")])
    env = gs_env(vol, proxy.endpoint, NO_GCE_CHECK="", GCE_METADATA_HOST=host, GCE_METADATA_IP=host)
    r = vol.run("sync", env=env)
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert any(p.endswith("/token") for p in _Google.seen)  # google-auth's compute-engine credentials asked the metadata server
    no_secret(r, secrets=(_Google.issued,))


def test_anonymous_by_choice_and_settings_that_cannot_work_exit_2(vol: Volume, gcs: GcsServer, bucket: str, tmp_path: Path) -> None:
    files = hf_model()
    gcs.put_tree(bucket, "m", files)
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/m")])
    # gcloud's switch: anonymous, and no credential is looked up (not even a variable naming a missing file)
    r = vol.run("sync", env=gs_env(vol, gcs.endpoint, CLOUDSDK_AUTH_DISABLE_CREDENTIALS="true",
                                   GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "absent.json")))
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert "no Google credentials" not in r.stderr

    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "service_account"')
    cases = [({"GS_ACCESS_KEY_ID": "GOOG1EXAMPLE"}, "GS_SECRET_ACCESS_KEY"),
             ({"GS_SECRET_ACCESS_KEY": "hmac-secret-5b2e9d1c7a"}, "GS_ACCESS_KEY_ID"),
             ({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json")}, "GOOGLE_APPLICATION_CREDENTIALS"),
             ({"GOOGLE_APPLICATION_CREDENTIALS": str(broken)}, "GOOGLE_APPLICATION_CREDENTIALS"),
             ({"STORAGE_EMULATOR_HOST": "ftp://gcs:21"}, "STORAGE_EMULATOR_HOST")]
    shutil.rmtree(vol.models)
    for extra, named in cases:
        env = gs_env(vol, gcs.endpoint, **extra)
        r = vol.run("sync", env=env)
        assert r.code == 2, (extra, r.stderr)
        assert named in r.stderr and named in r.report["reason"], (extra, r.stderr)
        assert not (vol.models / "vllm/llm").exists()
        no_secret(r, secrets=("hmac-secret-5b2e9d1c7a",))


def test_hmac_keys_sign_xml_api_requests(vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str, tmp_path: Path) -> None:
    files = hf_model()
    made = gcs.put_tree(bucket, "m", files)
    secret = "hmac-secret-9c4f1e7b3a2d6058"
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/m")])
    r = vol.run("sync", env=gs_env(vol, proxy.endpoint, GS_ACCESS_KEY_ID="GOOG1EHMACKEYEXAMPLE", GS_SECRET_ACCESS_KEY=secret))
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert proxy.requests and not any(q.path.startswith("/storage/") for q in proxy.requests)  # the XML API only
    for q in proxy.requests:
        query = parse_qs(q.query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Credential"][0].startswith("GOOG1EHMACKEYEXAMPLE/")
    gets = media_gets(proxy)
    assert sorted(q.path for q in gets) == sorted(f"/{bucket}/m/{rel}" for rel in files)
    assert all(parse_qs(q.query)["generation"] == [made[q.path.split("/m/", 1)[1]]["generation"]] for q in gets)
    no_secret(r, secrets=(secret,))


def test_hmac_signatures_are_accepted_by_a_server_that_checks_them(vol: Volume, tmp_path: Path) -> None:
    """fake-gcs-server checks no signature; s3s-fs checks SigV4 as Cloud Storage's XML API
    does, so the signing is proven against it (an S3 server has no generations or
    x-goog-hash: the ETag guards a resume there, and the size and format are checked)."""
    from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server

    s3 = S3Server(tmp_path / "s3-root").start()
    try:
        s3.bucket("hmac-models")
        files = hf_model()
        s3.put_tree("hmac-models", "m", files, metadata={})
        vol.write([lane("llm", "vllm/llm", "gs://hmac-models/m")])
        ok = vol.run("sync", env=gs_env(vol, s3.endpoint, GS_ACCESS_KEY_ID=ACCESS_KEY, GS_SECRET_ACCESS_KEY=SECRET_KEY))
        assert ok.code == 0, ok.stderr
        assert vol.tree("vllm/llm") == files
        (vol.models / "vllm/llm/config.json").unlink()
        wrong = vol.run("sync", env=gs_env(vol, s3.endpoint, GS_ACCESS_KEY_ID=ACCESS_KEY, GS_SECRET_ACCESS_KEY="not-the-secret-3e8a1f"))
        assert wrong.code == 4, wrong.stderr
        assert "GS_ACCESS_KEY_ID/GS_SECRET_ACCESS_KEY" in wrong.stderr
        no_secret(ok, wrong, secrets=(SECRET_KEY, "not-the-secret-3e8a1f"))
    finally:
        s3.stop()


# --------------------------------------------------------------------------- hostile listings


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A JSON API listing endpoint that misbehaves as `mode` says."""

    mode = ""
    pages = 0

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        cls = type(self)
        cls.pages += 1
        item = {"name": "m/config.json", "size": "2", "generation": "1"}
        if cls.mode == "same-token":
            doc: Any = {"items": [item], "nextPageToken": "again"}
        elif cls.mode == "endless":
            doc = {"nextPageToken": f"t{cls.pages}"}
        elif cls.mode == "huge-page":
            doc = {"items": [{**item, "name": "m/" + "x" * 200 + f"{i}"} for i in range(90_000)]}
        elif cls.mode == "too-many":
            start = int(query.get("pageToken") or 0)
            doc = {"items": [{**item, "name": f"m/f{i}"} for i in range(start, start + 50_000)], "nextPageToken": str(start + 50_000)}
        elif cls.mode == "escape":
            doc = {"items": [item, {**item, "name": "m/../../etc/cron.d/x"}]}
        elif cls.mode == "bad-size":
            doc = {"items": [{**item, "size": "-5"}]}
        else:
            doc = {"items": [{**item, "name": "elsewhere/config.json"}]}
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_hostile_listings_are_refused_within_bounds(vol: Volume) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    vol.write([lane("llm", "vllm/llm", "gs://hostile/m")])
    cases = [("same-token", 3, "page token 'again' a second time"), ("endless", 3, "past 1000 pages"),
             ("huge-page", 3, "larger than 16 MiB"), ("too-many", 3, "more than 20000 objects"),
             ("escape", 1, "would leave the lane"), ("bad-size", 3, "no valid size"), ("outside", 3, "not under the prefix")]
    try:
        for mode, code, words in cases:
            _Hostile.mode, _Hostile.pages = mode, 0
            r, cpu, rss_mb = vol.run_measured("sync", "--retries", "2", env=gs_env(vol, endpoint), timeout=120)
            assert r.code == code, (mode, r.stderr)
            assert words in r.stderr, (mode, r.stderr)
            assert not (vol.models / "vllm").exists() and not list(vol.root.rglob("cron.d"))
            assert cpu < 30, (mode, cpu)  # CPU seconds, not wall time
            assert rss_mb < 100, (mode, rss_mb)  # the sync process's own peak: bounded, whatever was sent
            if mode != "endless":
                assert _Hostile.pages <= 5, (mode, _Hostile.pages)  # refused once, not retried
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- push


def test_push_then_pull_identical_and_a_second_push_uploads_nothing(vol: Volume, gcs: GcsServer, proxy: S3Proxy, bucket: str,
                                                                    tmp_path: Path) -> None:
    files = hf_model()
    big = os.urandom(9 * 2**20 + 123)  # above the one-request limit: a resumable upload in 1 MiB requests below
    mirror = write_tree(tmp_path / "mirror", {**files, "blob/big.dat": big})
    vol.write([lane("llm", "vllm/llm", str(mirror))])
    assert vol.run("sync").code == 0
    env = gs_env(vol, proxy.endpoint, PREFLIGHT_GCS_CHUNK_MIB="1")
    first = vol.run("push", "llm", "--to", f"gs://{bucket}/pushed/llm", env=env)
    assert first.code == 0, first.stderr
    expected = {**files, "blob/big.dat": big}
    assert gcs.names(bucket) == sorted(f"pushed/llm/{rel}" for rel in expected)
    assert f"pushed {len(expected)} file(s)" in first.stderr
    assert gcs.stat(bucket, "pushed/llm/config.json")["metadata"]["sha256"] == sha256(files["config.json"])
    assert gcs.stat(bucket, "pushed/llm/blob/big.dat")["metadata"]["sha256"] == sha256(big)
    chunks = [q for q in proxy.requests if q.method == "PUT" and "upload_id" in q.query]
    assert len(chunks) == 10 and all(q.headers["content-range"].endswith(f"/{len(big)}") for q in chunks)
    assert chunks[-1].headers["x-goog-hash"].startswith("crc32c=")  # the server checks the whole object's CRC32C
    assert gcs.get(bucket, "pushed/llm/blob/big.dat") == big

    second = vol.run("push", "llm", "--to", f"gs://{bucket}/pushed/llm", env=env)
    assert second.code == 0, second.stderr
    assert f"pushed 0 file(s), 0 B ({len(expected)} already there" in second.stderr

    pulled = Volume(tmp_path / "pull", None)
    pulled.root.mkdir()
    pulled.write([lane("llm", "vllm/llm", f"gs://{bucket}/pushed/llm")])
    r = pulled.run("sync", env=gs_env(pulled, gcs.endpoint))
    assert r.code == 0, r.stderr
    assert pulled.tree("vllm/llm") == expected
    receipts = json.loads((pulled.models / ".preflight/receipts.json").read_text())
    assert sha256(big) in json.dumps(receipts)  # verified against the sha256 push stored
    no_secret(first, second, r)


# --------------------------------------------------------------------------- parsing and the warm path


def test_gs_sources_parse_and_misspellings_are_named() -> None:
    from preflight.manifest import parse_source

    src = parse_source("gs://models-prod/gguf/reader.gguf#1712345678901234")
    assert (src.scheme, src.repo, src.path_in_repo, src.revision) == ("gs", "models-prod", "gguf/reader.gguf", "1712345678901234")
    assert parse_source("gs://models-prod/a@b/c").path_in_repo == "a@b/c"  # '@' is part of a name
    assert parse_source("gs://models-prod").path_in_repo is None
    for bad, words in [("gs://Models/x", "bucket name"), ("gs://models/x#v2", "generation"), ("gs://models/../x", "'..'"),
                       ("gs://models#12", "pins an object"), ("gcs://models/x", "gs://models/x"), ("gs:/models/x", "gs://models/x")]:
        with pytest.raises(ValueError) as info:
            parse_source(bad)
        assert words in str(info.value), (bad, str(info.value))


def test_a_folder_lane_cannot_pin_one_generation(vol: Volume) -> None:
    vol.write([lane("llm", "vllm/llm", "gs://models/llm#1712345678901234")])
    r = vol.run("check")
    assert r.code == 2 and "pins one object" in r.stderr, r.stderr


def test_a_missing_extra_says_how_to_install_it(vol: Volume, gcs: GcsServer, bucket: str) -> None:
    gcs.put_tree(bucket, "m", hf_model())
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/m")])
    for blocked in ("google_crc32c", "google.auth"):
        probe = (f"import sys\nsys.modules[{blocked!r}] = None\nfrom preflight.cli import main\nmain(sys.argv[1:])\n")
        p = subprocess.run([sys.executable, "-c", probe, "sync", "-m", str(vol.manifest), "--termination-log", ""],
                           env=gs_env(vol, gcs.endpoint), capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (blocked, p.stderr)
        assert "pip install 'lane-preflight[gcs]'" in p.stderr, (blocked, p.stderr)
        assert not (vol.models / "vllm/llm").exists()


def test_check_imports_neither_the_gcs_module_nor_google_auth(vol: Volume, gcs: GcsServer, bucket: str) -> None:
    gcs.put_tree(bucket, "m", hf_model())
    vol.write([lane("llm", "vllm/llm", f"gs://{bucket}/m")])
    env = gs_env(vol, gcs.endpoint)
    assert vol.run("sync", env=env).code == 0
    probe = ("import sys\nfrom preflight.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, 'google.auth' in sys.modules, 'google_crc32c' in sys.modules, 'preflight.sources.gcs' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", probe, "check", "-m", str(vol.manifest), "--termination-log", ""],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.split()[-4:] == ["0", "False", "False", "False"], p.stdout + p.stderr
