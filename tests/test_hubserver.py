"""The local Hub server, driven by the real huggingface_hub client and by plain http.client."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hubserver import HubServer, git_blob_sha1

REPO = "org/tiny-model"
CONFIG = b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}'
WEIGHTS = bytes(range(256)) * 1200  # 307200 bytes, LFS by its .safetensors suffix
TOKENIZER = b'{"model": {"type": "BPE"}}'
FILES = {"config.json": CONFIG, "model.safetensors": WEIGHTS, "tokenizer/tokenizer.json": TOKENIZER}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(REPO, FILES)
        yield server


def api(hub: HubServer, token: str | bool | None = None) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token if token is None else token)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET",
        timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def cdn_url(hub: HubServer, path: str = "model.safetensors") -> str:
    status, headers, _ = get(hub.file_url(REPO, path), {"Authorization": f"Bearer {hub.token}"}, "HEAD")
    assert status == 302
    return headers["Location"]


# --------------------------------------------------------------------------- metadata


def test_model_info_with_files_metadata_gives_sizes_blob_ids_and_lfs_sha256(hub: HubServer) -> None:
    sha = hub.add_repo(REPO, FILES)  # same tree again: a new commit on main
    info = api(hub).model_info(REPO, files_metadata=True)

    assert info.sha == sha
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(FILES)
    assert siblings["config.json"].size == len(CONFIG)
    assert siblings["config.json"].blob_id == git_blob_sha1(CONFIG)
    assert siblings["config.json"].lfs is None
    weights = siblings["model.safetensors"]
    assert weights.size == len(WEIGHTS)
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert weights.lfs.size == len(WEIGHTS)
    assert info.private is False and info.gated is False


def test_git_ids_are_the_ones_git_computes(hub: HubServer, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    for name, data in {"config.json": CONFIG, "tokenizer/tokenizer.json": TOKENIZER}.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    git = ["git", "-C", str(work)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    tree = subprocess.run([*git, "write-tree"], check=True, capture_output=True, text=True).stdout.strip()
    listing = subprocess.run([*git, "ls-tree", "-r", "-t", tree], check=True, capture_output=True, text=True)
    expected = {line.split("\t")[1]: line.split()[2] for line in listing.stdout.splitlines()}

    hub.add_repo("org/plain", {"config.json": CONFIG, "tokenizer/tokenizer.json": TOKENIZER})
    entries = {e.path: e for e in api(hub).list_repo_tree("org/plain", recursive=True)}

    assert {p: getattr(e, "blob_id", None) or e.tree_id for p, e in entries.items()} == expected


def test_list_repo_tree_recursive_lists_folders_and_files(hub: HubServer) -> None:
    entries = list(api(hub).list_repo_tree(REPO, recursive=True))

    kinds = {e.path: type(e).__name__ for e in entries}
    assert kinds == {"config.json": "RepoFile", "model.safetensors": "RepoFile",
                     "tokenizer": "RepoFolder", "tokenizer/tokenizer.json": "RepoFile"}
    weights = next(e for e in entries if e.path == "model.safetensors")
    assert weights.size == len(WEIGHTS)
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    top = [e.path for e in api(hub).list_repo_tree(REPO)]
    assert sorted(top) == ["config.json", "model.safetensors", "tokenizer"]
    inside = [e.path for e in api(hub).list_repo_tree(REPO, "tokenizer")]
    assert inside == ["tokenizer/tokenizer.json"]
    with pytest.raises(EntryNotFoundError):
        list(api(hub).list_repo_tree(REPO, "no-such-folder"))


def test_tree_pagination_follows_link_headers() -> None:
    files = {f"shard-{i:02d}.json": b"{}" for i in range(7)}
    with HubServer(tree_page_size=3) as hub:
        hub.add_repo(REPO, files)
        paths = [e.path for e in api(hub).list_repo_tree(REPO, recursive=True)]

        assert paths == sorted(files)
        assert hub.count(REPO, kind="api") == 3


def test_get_paths_info_returns_known_paths_and_skips_unknown(hub: HubServer) -> None:
    infos = api(hub).get_paths_info(REPO, ["config.json", "tokenizer", "missing.bin"], expand=True)

    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "config.json"), ("RepoFolder", "tokenizer")]
    assert infos[0].size == len(CONFIG)
    assert infos[0].last_commit is not None
    assert infos[0].last_commit.oid == api(hub).model_info(REPO).sha


# --------------------------------------------------------------------------- downloads


def test_hf_hub_download_small_file_and_lfs_file_through_the_cdn(hub: HubServer, tmp_path: Path) -> None:
    config = hf_hub_download(REPO, "config.json", endpoint=hub.url, token=hub.token, cache_dir=tmp_path)
    weights = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=hub.token, cache_dir=tmp_path)

    assert Path(config).read_bytes() == CONFIG
    assert Path(weights).read_bytes() == WEIGHTS
    cdn = [r for r in hub.requests if r.kind == "cdn"]
    assert len(cdn) == 1 and cdn[0].port == hub.cdn_port
    assert cdn[0].authorization is False  # the client drops the token for another origin
    assert cdn[0].bytes_sent == len(WEIGHTS)
    assert hub.count(REPO, "model.safetensors", "GET", kind="resolve") == 0


def test_file_metadata_as_the_hub_sends_it(hub: HubServer) -> None:
    small = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.url), token=hub.token)
    large = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors", endpoint=hub.url), token=hub.token)
    commit = api(hub).model_info(REPO).sha

    assert (small.etag, small.size, small.commit_hash) == (git_blob_sha1(CONFIG), len(CONFIG), commit)
    assert (large.etag, large.size, large.commit_hash) == (hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS), commit)
    assert urlsplit(large.location).port == hub.cdn_port


def test_revisions_branches_tags_and_commits(hub: HubServer, tmp_path: Path) -> None:
    first = api(hub).model_info(REPO).sha
    second = hub.add_repo(REPO, {**FILES, "config.json": b'{"v": 2}'}, tags=["v2"])
    hub.add_repo(REPO, {"config.json": b'{"dev": true}'}, revision="dev")

    def config_at(revision: str | None) -> bytes:
        path = hf_hub_download(REPO, "config.json", revision=revision, endpoint=hub.url, token=hub.token,
                               cache_dir=tmp_path)
        return Path(path).read_bytes()

    assert first != second and len(second) == 40
    assert config_at(first) == CONFIG
    assert config_at(None) == b'{"v": 2}'
    assert config_at("v2") == b'{"v": 2}'
    assert config_at("dev") == b'{"dev": true}'
    assert api(hub).model_info(REPO, revision=first).sha == first
    refs = api(hub).list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches}["main"] == second
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v2", second)]
    assert hub.set_ref(REPO, "main", first) == first
    assert api(hub).model_info(REPO).sha == first


def test_snapshot_download_into_a_local_dir(hub: HubServer, tmp_path: Path) -> None:
    hub.add_repo("org/data", {"train.csv": b"a,b\n1,2\n"}, repo_type="dataset")
    folder = Path(snapshot_download(REPO, endpoint=hub.url, token=hub.token, local_dir=tmp_path / "model"))
    data = hf_hub_download("org/data", "train.csv", repo_type="dataset", endpoint=hub.url, token=hub.token,
                           cache_dir=tmp_path / "cache")

    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.parts} == FILES
    assert Path(data).read_bytes() == b"a,b\n1,2\n"


def test_the_client_recovers_from_a_dropped_connection(hub: HubServer, tmp_path: Path) -> None:
    hub.fault(REPO, "model.safetensors").drop_after(100_000, times=1)

    path = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=hub.token, cache_dir=tmp_path)

    assert Path(path).read_bytes() == WEIGHTS
    cdn = [r for r in hub.requests if r.kind == "cdn"]
    assert [(r.outcome, r.bytes_sent) for r in cdn[:1]] == [("dropped", 100_000)]
    assert cdn[-1].outcome == "complete" and cdn[-1].status in (200, 206)


# --------------------------------------------------------------------------- errors


def test_unknown_repo_is_401_anonymous_and_404_authenticated(hub: HubServer) -> None:
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        api(hub, token=False).model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError) as authenticated:
        api(hub).model_info("org/missing")

    assert type(anonymous.value) is RepositoryNotFoundError
    assert anonymous.value.response.status_code == 401
    assert authenticated.value.response.status_code == 404
    assert authenticated.value.response.headers["X-Error-Code"] == "RepoNotFound"


def test_unknown_revision_and_unknown_file(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        api(hub).model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="0" * 40, endpoint=hub.url, token=hub.token,
                        cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json", endpoint=hub.url, token=hub.token, cache_dir=tmp_path)


def test_gated_repo_needs_a_token_with_access(hub: HubServer, tmp_path: Path) -> None:
    hub.add_repo("meta/gated", FILES, gated=True)
    hub.add_token("hf_not_approved", access=False)

    assert api(hub, token=False).model_info("meta/gated").gated == "auto"  # metadata stays public
    with pytest.raises(GatedRepoError) as anonymous:
        hf_hub_download("meta/gated", "config.json", endpoint=hub.url, token=False, cache_dir=tmp_path)
    with pytest.raises(GatedRepoError) as not_approved:
        hf_hub_download("meta/gated", "config.json", endpoint=hub.url, token="hf_not_approved", cache_dir=tmp_path)
    path = hf_hub_download("meta/gated", "config.json", endpoint=hub.url, token=hub.token, cache_dir=tmp_path)

    assert anonymous.value.response.status_code == 401
    assert "Access to model meta/gated is restricted" in str(anonymous.value)
    assert not_approved.value.response.status_code == 403
    assert Path(path).read_bytes() == CONFIG


def test_private_repo_is_not_found_without_access_and_bad_token_is_rejected(hub: HubServer) -> None:
    hub.add_repo("org/private", FILES, private=True)
    hub.add_token("hf_other_user", access=False)

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        api(hub, token=False).model_info("org/private")
    with pytest.raises(RepositoryNotFoundError) as other_user:
        api(hub, token="hf_other_user").model_info("org/private")
    with pytest.raises(HfHubHTTPError) as bad_token:
        api(hub, token="hf_wrong").model_info(REPO)

    assert anonymous.value.response.status_code == 401
    assert other_user.value.response.status_code == 404
    assert api(hub).model_info("org/private").private is True
    assert not isinstance(bad_token.value, RepositoryNotFoundError)
    assert bad_token.value.response.status_code == 401
    assert bad_token.value.response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"


# --------------------------------------------------------------------------- ranges and faults


def test_range_requests_on_resolve_and_cdn(hub: HubServer) -> None:
    auth = {"Authorization": f"Bearer {hub.token}"}
    cdn = cdn_url(hub)
    etag = f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'

    status, headers, body = get(cdn, {"Range": "bytes=100-199"})
    assert (status, body, headers["Content-Range"]) == (206, WEIGHTS[100:200], f"bytes 100-199/{len(WEIGHTS)}")
    status, headers, body = get(cdn, {"Range": "bytes=307000-"})
    assert (status, body, headers["Content-Length"]) == (206, WEIGHTS[307000:], "200")
    status, headers, _ = get(cdn, {"Range": f"bytes={len(WEIGHTS)}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(WEIGHTS)}")
    status, _, body = get(cdn, {"Range": "bytes=10-", "If-Range": etag})
    assert (status, body) == (206, WEIGHTS[10:])
    status, _, body = get(cdn, {"Range": "bytes=10-", "If-Range": '"something-else"'})
    assert (status, body) == (200, WEIGHTS)
    status, _, body = get(hub.file_url(REPO, "config.json"), {**auth, "Range": "bytes=-5"})
    assert (status, body) == (206, CONFIG[-5:])


def test_drop_after_closes_the_connection_mid_body(hub: HubServer) -> None:
    hub.fault(REPO, "model.safetensors").drop_after(5000)
    parts = urlsplit(cdn_url(hub))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", f"{parts.path}?{parts.query}")
    response = conn.getresponse()

    with pytest.raises(http.client.IncompleteRead) as error:
        response.read()
    assert response.getheader("Content-Length") == str(len(WEIGHTS))
    assert error.value.partial == WEIGHTS[:5000]
    conn.close()


def test_status_fault_fails_the_first_requests_then_serves(hub: HubServer) -> None:
    hub.fault(REPO, "config.json").status(503, times=2, headers={"Retry-After": "1"})
    url, auth = hub.file_url(REPO, "config.json"), {"Authorization": f"Bearer {hub.token}"}

    answers = [get(url, auth) for _ in range(3)]

    assert [status for status, _, _ in answers] == [503, 503, 200]
    assert answers[0][1]["Retry-After"] == "1"
    assert answers[2][2] == CONFIG
    assert hub.count(REPO, "config.json", status=503) == 2


def test_api_fault_makes_metadata_calls_fail(hub: HubServer) -> None:
    hub.api_fault(REPO).status(500, times=1)

    with pytest.raises(HfHubHTTPError) as error:
        api(hub).model_info(REPO)

    assert error.value.response.status_code == 500
    assert api(hub).model_info(REPO).id == REPO


def test_stopped_server_refuses_connections_and_restarts_on_the_same_port(hub: HubServer) -> None:
    url = hub.url
    hub.stop()
    with pytest.raises(ConnectionRefusedError):
        get(f"{url}/api/models/{REPO}")
    hub.start()

    assert hub.url == url
    assert get(f"{url}/api/models/{REPO}")[0] == 200


def test_stall_is_seen_as_a_client_timeout_and_stop_does_not_wait_for_it() -> None:
    with HubServer() as hub:
        hub.add_repo(REPO, FILES)
        hub.fault(REPO, "model.safetensors").stall(after_bytes=1000, seconds=30)
        parts = urlsplit(cdn_url(hub))
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=0.3)
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        received = response.read(1000)
        started = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout)):
            response.read(1)
        waited = time.monotonic() - started
        conn.close()
        stop_started = time.monotonic()

    assert received == WEIGHTS[:1000]
    assert 0.25 <= waited < 2
    assert time.monotonic() - stop_started < 2


def test_ignore_range_answers_200_with_the_whole_file(hub: HubServer) -> None:
    hub.fault(REPO, "model.safetensors").ignore_range(times=1)
    cdn = cdn_url(hub)

    first = get(cdn, {"Range": "bytes=1000-"})
    second = get(cdn, {"Range": "bytes=1000-"})

    assert (first[0], first[2]) == (200, WEIGHTS)
    assert "Content-Range" not in first[1]
    assert (second[0], second[2]) == (206, WEIGHTS[1000:])


def test_corrupt_flips_served_bytes_but_not_headers(hub: HubServer) -> None:
    clean = get(cdn_url(hub))
    hub.fault(REPO, "model.safetensors").corrupt(offset=4096, length=2)
    status, headers, body = get(cdn_url(hub))
    _, _, tail = get(cdn_url(hub), {"Range": "bytes=4097-4100"})

    assert status == 200 and len(body) == len(WEIGHTS)
    assert (headers["ETag"], headers["Content-Length"]) == (clean[1]["ETag"], clean[1]["Content-Length"])
    assert [i for i in range(len(body)) if body[i] != WEIGHTS[i]] == [4096, 4097]
    assert tail == bytes([WEIGHTS[4097] ^ 0xFF]) + WEIGHTS[4098:4101]


def test_static_urls_support_head_range_and_faults(hub: HubServer, tmp_path: Path) -> None:
    (tmp_path / "ViT-B-32.pt").write_bytes(WEIGHTS)
    url = hub.add_url("/models/ViT-B-32.pt", tmp_path / "ViT-B-32.pt")
    hub.url_fault("/models/ViT-B-32.pt").status(500, times=1)

    assert get(url)[0] == 500
    status, headers, body = get(url, method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(len(WEIGHTS)), b"")
    assert get(url, {"Range": "bytes=5-9"})[2] == WEIGHTS[5:10]
    assert hub.count(path="/models/ViT-B-32.pt") == 2
    assert hub.count(path="/models/ViT-B-32.pt", method="HEAD") == 1


def test_request_log_counts_what_the_client_did(hub: HubServer, tmp_path: Path) -> None:
    hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=hub.token, cache_dir=tmp_path)
    hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=hub.token, cache_dir=tmp_path)

    assert hub.count(REPO, "model.safetensors", "HEAD") == 2  # one metadata check per call
    assert hub.count(REPO, "model.safetensors", "GET", kind="cdn") == 1  # the second call used the cache
    assert hub.bytes_sent(REPO, "model.safetensors") == len(WEIGHTS)
    head = next(r for r in hub.requests if r.method == "HEAD")
    assert head.authorization and head.status == 302 and head.revision == "main"
    assert "authorization" not in {k.lower() for k in head.headers}


# --------------------------------------------------------------------------- command line


def test_runs_standalone_until_sigterm(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "tokenizer" / "tokenizer.json").write_bytes(TOKENIZER)
    (tmp_path / "small.pt").write_bytes(b"pickle bytes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hubserver", "--port", "0", "--repo", f"{REPO}={folder}",
         "--gated", REPO, "--url", f"files/small.pt={tmp_path / 'small.pt'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        info = json.loads(get(f"{url}/api/models/{REPO}?blobs=true")[2])
        static = get(f"{url}/files/small.pt")
        gated = get(f"{url}/{REPO}/resolve/main/config.json")
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()

    assert url.startswith("http://127.0.0.1:")
    assert sorted(s["rfilename"] for s in info["siblings"]) == ["config.json", "tokenizer/tokenizer.json"]
    assert static[2] == b"pickle bytes"
    assert (gated[0], gated[1]["X-Error-Code"]) == (401, "GatedRepo")
    assert returncode == 0
