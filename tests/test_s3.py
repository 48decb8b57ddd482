"""s3:// lanes and `push --to s3://` end to end, against a real S3 server (s3s-fs on
127.0.0.1, built by ops/s3-server.sh), through a logging fault proxy where a test needs to
see or break requests. Every test runs the real command in a subprocess and asserts what
a user sees: the exit code, the report, the files on the volume, the requests made.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.objectstores import bucket_name, each_fails, killed_mid_object_then_rerun, lane, served, store_env, vol  # noqa: F401
from tests.repos import gguf_split, hf_model, write_tree
from tests.s3_proxy import S3Proxy
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.test_sync import Run, Volume, sha256
from tests.test_sync_faults import WEIGHTS, big_model


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from served(S3Server(tmp_path_factory.mktemp("s3") / "root"))


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3Proxy]:
    yield from served(S3Proxy(s3.port))


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.bucket(bucket_name())


def s3_env(vol: Volume, endpoint: str, **extra: str) -> dict[str, str]:
    """A user's environment: no AWS settings of the caller's, no ~/.aws, no instance metadata."""
    return store_env(vol, ("AWS_",), {"AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
                                      "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}, extra)


def object_gets(proxy: S3Proxy) -> list[str]:
    """GETs of objects (not listings: those are GET /bucket?list-type=2)."""
    return [r.path for r in proxy.requests if r.method == "GET" and r.path.count("/") >= 2]


def no_secret(*runs: Run) -> None:
    for r in runs:
        assert SECRET_KEY not in r.output and SECRET_KEY not in json.dumps(r.report) and SECRET_KEY not in (r.termination or "")
        assert "X-Amz-Signature" not in r.output and "Signature=" not in r.output


# --------------------------------------------------------------------------- pull


def test_folder_lane_byte_identical_resync_moves_nothing_corruption_repaired(vol: Volume, s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    files = hf_model(sharded=True)
    checked = {rel for rel in files if rel.endswith(".safetensors")}  # some objects carry a full-object sha256, some do not
    for rel, data in files.items():
        s3.put(bucket, f"llm/{rel}", data, checksum=rel in checked)
    s3.put(bucket, "llm-other/config.json", b"{}")  # beside the prefix, not under it
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/llm")])
    env = s3_env(vol, proxy.endpoint)

    first = vol.run("sync", env=env)
    assert first.code == 0, first.stderr
    assert vol.tree("vllm/llm") == files
    assert first.lane("llm")["fetched_files"] == len(files)
    assert "have no content digest" in first.stderr  # said once: the objects without a checksum
    assert first.stderr.count("have no content digest") == 1
    assert vol.debris() == []

    proxy.clear()
    again = vol.run("sync", env=env)
    assert again.code == 0, again.stderr
    assert object_gets(proxy) == []  # one listing, no bytes
    assert [q.method for q in proxy.requests] == ["GET"]  # the listing gives sizes and ETags: no HEAD per object

    weights = next(rel for rel in files if rel.endswith(".safetensors"))
    target = vol.models / "vllm/llm" / weights
    broken = bytearray(target.read_bytes())
    broken[-1] ^= 0xFF
    target.write_bytes(bytes(broken))
    proxy.clear()
    repaired = vol.run("sync", env=env)
    assert repaired.code == 0, repaired.stderr
    assert vol.tree("vllm/llm") == files
    assert object_gets(proxy) == [f"/{bucket}/llm/{weights}"]
    no_secret(first, again, repaired)


def test_gguf_key_finds_its_split_parts_and_a_file_lane_takes_the_lane_name(vol: Volume, s3: S3Server, bucket: str) -> None:
    parts = gguf_split("big", 3)
    s3.put_tree(bucket, "gguf", parts, checksum=True)
    s3.put(bucket, "gguf/readme.md", b"not part of the lane\n")
    vol.write([lane("big", "gguf/big-00001-of-00003.gguf", f"s3://{bucket}/gguf/big-00001-of-00003.gguf", kind="gguf"),
               lane("notes", "docs/README.md", f"s3://{bucket}/gguf/readme.md", kind="file")])
    r = vol.run("sync", env=s3_env(vol, s3.endpoint))
    assert r.code == 0, r.stderr
    assert r.lane("big")["files"] == 3
    assert vol.tree("gguf") == parts
    assert vol.tree("docs") == {"README.md": b"not part of the lane\n"}
    assert "no content digest" in r.stderr and r.stderr.count("no content digest") == 1  # the readme alone


def test_include_exclude_apply_to_names_below_the_prefix(vol: Volume, s3: S3Server, bucket: str) -> None:
    files = hf_model()
    s3.put_tree(bucket, "m/v1", {**files, "extra/notes.txt": b"x"})
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/m/v1", include=["*.json", "*.safetensors", "tokenizer*"], exclude=["extra/*"])])
    r = vol.run("sync", env=s3_env(vol, s3.endpoint))
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files


def test_missing_bucket_key_empty_prefix_and_a_key_naming_a_folder_exit_3_naming_it(vol: Volume, s3: S3Server, bucket: str) -> None:
    s3.put_tree(bucket, "m", hf_model())
    env = s3_env(vol, s3.endpoint)
    each_fails(vol, env, [
        (lane("a", "a", f"s3://no-such-bucket-{os.getpid()}/m"), f"bucket no-such-bucket-{os.getpid()} does not exist"),
        (lane("a", "a", f"s3://{bucket}/nothing-here"), "no objects under this prefix"),
        (lane("a", "a/x.gguf", f"s3://{bucket}/m/absent.gguf", kind="gguf"), f"s3://{bucket}/m/absent.gguf: no such object"),
        (lane("a", "a/x.gguf", f"s3://no-such-bucket-{os.getpid()}/m/absent.gguf", kind="gguf"), "does not exist"),
        (lane("a", "a/m", f"s3://{bucket}/m", kind="file"), f"s3://{bucket}/m is a folder"),
    ])


def test_wrong_credentials_exit_4_and_the_secret_is_never_shown(vol: Volume, s3: S3Server, bucket: str) -> None:
    s3.put_tree(bucket, "m", hf_model())
    wrong = "wrong-secret-5a8d0c7e1f2b3a49"
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/m"),
               lane("one", "one/config.json", f"s3://{bucket}/m/config.json", kind="file")])
    runs = [vol.run("sync", env=s3_env(vol, s3.endpoint, AWS_SECRET_ACCESS_KEY=wrong)),
            vol.run("sync", env=s3_env(vol, s3.endpoint, AWS_ACCESS_KEY_ID="NOSUCHKEY00000000000"))]
    for r in runs:
        assert r.code == 4, r.stderr
        assert "AWS_ACCESS_KEY_ID" in r.stderr  # the hint says where credentials come from
    for r in runs:
        assert wrong not in r.output and wrong not in json.dumps(r.report)
    no_secret(*runs)


def test_credentials_set_halfway_exit_2_naming_the_missing_variable(vol: Volume, s3: S3Server, bucket: str) -> None:
    s3.put_tree(bucket, "m", hf_model())
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/m")])
    token = vol.root / "token"
    token.write_text("eyJ.token.value")
    cases = [({"AWS_SECRET_ACCESS_KEY": ""}, "AWS_SECRET_ACCESS_KEY"),
             ({"AWS_ACCESS_KEY_ID": ""}, "AWS_ACCESS_KEY_ID"),
             ({"AWS_WEB_IDENTITY_TOKEN_FILE": str(token)}, "AWS_ROLE_ARN"),
             ({"AWS_ENDPOINT_URL": "minio:9000"}, "AWS_ENDPOINT_URL")]
    for extra, missing in cases:
        r = vol.run("sync", env=s3_env(vol, s3.endpoint, **extra))
        assert r.code == 2, (extra, r.stderr)
        assert missing in r.stderr and missing in r.report["reason"]
        assert not (vol.models / "vllm/llm").exists()
    no_secret(r)


def test_profile_from_the_shared_files_and_an_anonymous_public_bucket(vol: Volume, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    files = hf_model()
    s3.put_tree(bucket, "m", files)
    creds, config = tmp_path / "credentials", tmp_path / "config"
    creds.write_text(f"[team]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    config.write_text(f"[profile team]\nregion = eu-west-1\nendpoint_url = {s3.endpoint}\n")
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/m")])
    env = s3_env(vol, "", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_PROFILE="team",
                 AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(config))
    r = vol.run("sync", env=env)
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    no_secret(r)

    public = S3Server(tmp_path / "public-root", auth=False).start()
    try:
        public.bucket("open-models")
        public.put_tree("open-models", "m", files)
        other = Volume(tmp_path / "anon", None)
        other.root.mkdir()
        other.write([lane("llm", "vllm/llm", "s3://open-models/m")])
        anon = other.run("sync", env=s3_env(other, public.endpoint, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY=""))
        assert anon.code == 0, anon.stderr
        assert other.tree("vllm/llm") == files
    finally:
        public.stop()


class _Sts(http.server.BaseHTTPRequestHandler):
    """STS's AssumeRoleWithWebIdentity, as EKS's IRSA has pods call it: the token file's
    content for the role, answered with the S3 server's keys as temporary credentials."""

    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        from urllib.parse import parse_qs

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        type(self).seen.append(form)
        ok = form.get("Action") == "AssumeRoleWithWebIdentity" and form.get("WebIdentityToken") == "eyJ.pod-identity.token"
        if not ok:
            out = b"<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>no</Message></Error></ErrorResponse>"
            self.send_response(400)
        else:
            out = (f"<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
                   f"<AccessKeyId>{ACCESS_KEY}</AccessKeyId><SecretAccessKey>{SECRET_KEY}</SecretAccessKey>"
                   f"<SessionToken>session-token-3c9e1a7b5d</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>"
                   f"</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>").encode()
            self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


def test_web_identity_token_file_and_role_through_sts(vol: Volume, s3: S3Server, bucket: str) -> None:
    files = hf_model()
    s3.put_tree(bucket, "m", files)
    sts = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sts)
    threading.Thread(target=sts.serve_forever, daemon=True).start()
    try:
        token = vol.root / "token"
        token.write_text("eyJ.pod-identity.token")
        vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/m")])
        env = s3_env(vol, "", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_ENDPOINT_URL_S3=s3.endpoint,
                     AWS_ENDPOINT_URL_STS=f"http://127.0.0.1:{sts.server_address[1]}",
                     AWS_WEB_IDENTITY_TOKEN_FILE=str(token), AWS_ROLE_ARN="arn:aws:iam::123456789012:role/models-reader")
        r = vol.run("sync", env=env)
        assert r.code == 0, r.stderr
        assert vol.tree("vllm/llm") == files
        assert _Sts.seen and _Sts.seen[-1]["RoleArn"] == "arn:aws:iam::123456789012:role/models-reader"
        assert "session-token-3c9e1a7b5d" not in r.output

        token.write_text("eyJ.some.other.token")
        (vol.models / "vllm/llm/config.json").unlink()
        refused = vol.run("sync", env=env)
        assert refused.code == 4, refused.stderr
    finally:
        sts.shutdown()
        sts.server_close()


# --------------------------------------------------------------------------- the lock


def test_lock_pins_measured_sha256_and_an_overwritten_object_is_refused(vol: Volume, s3: S3Server, bucket: str) -> None:
    files = hf_model()
    s3.put_tree(bucket, "m", files)  # no checksums on the objects: the lock measures them
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/m")])
    env = s3_env(vol, s3.endpoint)
    locked = vol.run("lock", env=env)
    assert locked.code == 0, locked.stderr
    lock = json.loads((vol.root / "lanes.lock.json").read_text())["lanes"]["llm"]
    assert lock["source"] == f"s3://{bucket}/m"
    assert lock["files"] == {rel: {"size": len(data), "sha256": sha256(data)} for rel, data in files.items()}
    first = vol.run("sync", "--locked", env=env)
    assert first.code == 0, first.stderr
    assert vol.tree("vllm/llm") == files

    config = files["config.json"]
    changed = config.replace(b"{", b" {", 1)[:-1]  # same size, other bytes
    assert len(changed) == len(config) and changed != config
    s3.put(bucket, "m/config.json", changed)
    ready = vol.run("sync", "--locked", env=env)
    assert ready.code == 0, ready.stderr  # the volume holds the locked bytes: nothing to fetch
    (vol.models / "vllm/llm/config.json").unlink()
    refused = vol.run("sync", "--locked", env=env)
    assert refused.code == 3, refused.stderr
    assert f"s3://{bucket}/m/config.json changed on the server since the lock" in refused.stderr
    assert refused.stderr.count("GET") == 0 and "retry" not in refused.stderr  # refused once, not retried
    assert not (vol.models / "vllm/llm/config.json").exists()
    assert vol.debris() == []

    s3.put(bucket, "m/config.json", changed + b"\n")  # another size: refused before a byte moves
    refused = vol.run("sync", "--locked", env=env)
    assert refused.code == 3 and "the lock pins" in refused.stderr, refused.stderr


# --------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_killed_mid_object_then_rerun_resumes_with_range(vol: Volume, s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    files = big_model(1 << 20)
    s3.put_tree(bucket, "big", files, checksum=True)
    vol.write([lane("big", "vllm/big", f"s3://{bucket}/big")])
    env = s3_env(vol, proxy.endpoint)
    path = f"/{bucket}/big/{WEIGHTS}"
    r = killed_mid_object_then_rerun(vol, proxy, env, path, vol.models / "vllm/big" / WEIGHTS)
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/big") == files
    final = proxy.gets(path)
    assert [(q.range, q.status, q.bytes_sent) for q in final] == [("bytes=300000-", 206, len(files[WEIGHTS]) - 300_000)]
    assert vol.partials() == [] and vol.debris() == []


def test_dropped_and_refused_connections_are_retried_within_the_deadline(vol: Volume, s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    files = big_model(256 * 1024)
    s3.put_tree(bucket, "big", files)
    vol.write([lane("big", "vllm/big", f"s3://{bucket}/big")])
    path = f"/{bucket}/big/{WEIGHTS}"
    proxy.fault(f"/{bucket}", "refuse", times=1)  # the listing's first connection
    proxy.fault(path, "drop", after=100_000, times=1)
    proxy.fault(path, "refuse", times=1)
    r = vol.run("sync", "--deadline", "60", env=s3_env(vol, proxy.endpoint))
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/big") == files
    tries = proxy.gets(path)
    assert len(tries) == 3 and tries[-1].range == "bytes=100000-" and tries[-1].status == 206
    assert "retry" in r.stderr
    no_secret(r)


# --------------------------------------------------------------------------- push


def test_push_then_pull_identical_and_a_second_push_uploads_nothing(vol: Volume, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    files = hf_model()
    big = os.urandom(11 * 2**20 + 123)  # above the part size below: a multipart upload
    mirror = write_tree(tmp_path / "mirror", {**files, "blob/big.dat": big})
    vol.write([lane("llm", "vllm/llm", str(mirror))])
    assert vol.run("sync").code == 0
    env = s3_env(vol, s3.endpoint, PREFLIGHT_S3_PART_MIB="5")
    first = vol.run("push", "llm", "--to", f"s3://{bucket}/pushed/llm", env=env)
    assert first.code == 0, first.stderr
    expected = {**files, "blob/big.dat": big}
    assert s3.keys(bucket) == sorted(f"pushed/llm/{rel}" for rel in expected)
    assert f"pushed {len(expected)} file(s)" in first.stderr
    head = s3.head(bucket, "pushed/llm/config.json")
    assert head["Metadata"]["sha256"] == sha256(files["config.json"])
    assert s3.head(bucket, "pushed/llm/blob/big.dat")["ETag"].endswith('-3"')  # three parts
    assert s3.get(bucket, "pushed/llm/blob/big.dat") == big

    second = vol.run("push", "llm", "--to", f"s3://{bucket}/pushed/llm", env=env)
    assert second.code == 0, second.stderr
    assert f"pushed 0 file(s), 0 B ({len(expected)} already there" in second.stderr

    pulled = Volume(tmp_path / "pull", None)
    pulled.root.mkdir()
    pulled.write([lane("llm", "vllm/llm", f"s3://{bucket}/pushed/llm")])
    r = pulled.run("sync", env=s3_env(pulled, s3.endpoint))
    assert r.code == 0, r.stderr
    assert pulled.tree("vllm/llm") == expected
    assert "no content digest" not in r.stderr  # every pushed object carries its sha256
    no_secret(first, second, r)


# --------------------------------------------------------------------------- the warm path


def test_check_imports_neither_the_s3_module_nor_botocore(vol: Volume, s3: S3Server, bucket: str) -> None:
    s3.put_tree(bucket, "m", hf_model())
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/m")])
    env = s3_env(vol, s3.endpoint)
    assert vol.run("sync", env=env).code == 0
    probe = ("import sys\nfrom preflight.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, 'botocore' in sys.modules, 'preflight.sources.s3' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", probe, "check", "-m", str(vol.manifest), "--termination-log", ""],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.split()[-3:] == ["0", "False", "False"], p.stdout + p.stderr


# --------------------------------------------------------------------------- hostile listings

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def listing_page(keys: list[str], truncated: bool, token: str | None = None, prefix: str = "llm/") -> bytes:
    contents = "".join(f"<Contents><Key>{prefix}{k}</Key><Size>1</Size><ETag>&quot;e{k}&quot;</ETag></Contents>" for k in keys)
    tok = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {NS}><Name>b</Name><Prefix>{prefix}</Prefix>'
            f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{tok}{contents}</ListBucketResult>").encode()


def _counter() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


def _forever() -> Callable[[dict], bytes]:
    seq = _counter()
    return lambda q: listing_page([f"k{next(seq)}"], True, f"t{next(seq)}")


def _full_pages() -> Callable[[dict], bytes]:
    seq = _counter()

    def page(q: dict) -> bytes:
        n = next(seq)
        return listing_page([f"p{n}-{i}" for i in range(1000)], True, f"t{n}")
    return page


def _huge_body(q: dict) -> Iterator[bytes]:
    yield f"<ListBucketResult {NS}><Name>".encode()
    for _ in range(200):  # 200 MiB, sent without a length
        yield b"x" * (1 << 20)
    yield b"</Name></ListBucketResult>"


def _nested(q: dict) -> bytes:
    return f"<ListBucketResult {NS}>".encode() + b"<Contents>" * 100_000 + b"</Contents>" * 100_000 + b"</ListBucketResult>"


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
          b"<ListBucketResult><Name>&lol2;</Name><IsTruncated>false</IsTruncated></ListBucketResult>")

HOSTILE_LISTINGS: dict[str, tuple[Callable[[], Callable[[dict], object]], str, int | None]] = {
    # name: (the listing, what the error says, how many listing requests at most)
    "truncated forever": (_forever, "more than 200 listing pages", 200),
    "one token again": (lambda: lambda q: listing_page(["a"], True, "again"), "same continuation token twice", 2),
    "keys past the lane's bound": (_full_pages, "more than 20000 objects under this prefix", 21),
    "100k keys in one page": (lambda: lambda q: iter([listing_page([f"k{i}" for i in range(100_000)], False)]),  # no length sent
                              "more than the 1000 objects a page was asked for", 4),
    "a 200 MiB body": (lambda: _huge_body, "a listing page larger than", 4),
    "100k nested Contents": (lambda: _nested, "a <Contents> inside another element", 4),
    "a Contents without a Key": (lambda: lambda q: f"<ListBucketResult {NS}><Contents><Size>1</Size></Contents></ListBucketResult>".encode(), "a <Contents> without a <Key>", 4),
    "not XML": (lambda: lambda q: b"<ListBucketResult><Contents><Key>x</Key></Cont", "not well-formed XML", 4),
    "entities": (lambda: lambda q: LAUGHS, "entities are not accepted", 4),
}

MAX_CPU_S = 3.0  # the whole sync process, interpreter and botocore import included (about 0.5 to 1 s alone)


def measured_sync(vol: Volume, env: dict[str, str], timeout: float = 300) -> tuple[Run, float, float]:
    return vol.run_measured("sync", env=env, timeout=timeout)


@pytest.mark.parametrize("case", HOSTILE_LISTINGS)
def test_a_hostile_listing_is_refused_in_bounded_cost(vol: Volume, s3: S3Server, proxy: S3Proxy, bucket: str, case: str) -> None:
    make, says, most = HOSTILE_LISTINGS[case]
    proxy.listing = make()
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/llm")])
    r, cpu, rss = measured_sync(vol, s3_env(vol, proxy.endpoint))
    assert r.code == 3, r.stderr
    assert says in r.stderr and proxy.endpoint in r.stderr, r.stderr
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert r.lane("llm")["status"] == "missing" and says in json.dumps(r.report)
    assert proxy.listings <= (most or 1), proxy.listings
    assert cpu < MAX_CPU_S and rss < 100, (cpu, rss)
    assert not [q for q in proxy.requests if q.method == "HEAD"]  # no request per listed object


def test_a_listing_that_never_ends_is_stopped_without_a_deadline(vol: Volume, s3: S3Server, proxy: S3Proxy, bucket: str) -> None:
    """Pages that come slowly, each with a new token: the default bound on listing ends the run."""
    seq = _counter()

    def slow(q: dict) -> bytes:
        time.sleep(0.3)
        n = next(seq)
        return listing_page([f"k{n}"], True, f"t{n}")

    proxy.listing = slow
    vol.write([lane("llm", "vllm/llm", f"s3://{bucket}/llm")])
    started = time.monotonic()
    r = vol.run("sync", env=s3_env(vol, proxy.endpoint, PREFLIGHT_S3_LIST_SECONDS="2"))
    assert r.code == 3 and "did not end within 2s" in r.stderr, r.stderr
    assert time.monotonic() - started < 30 and proxy.listings < 20
