"""Fit before the download: `sync` reads config.json and the weight headers through ranged reads
(Hub, mirror, https, S3, OCI), refuses a lane the engine would refuse on this node before its
bytes move, and says why; `--no-fit` downloads it anyway; `lock` records what fit needs, so
`sync --locked` judges it with no request at all. Hostile headers cost a bounded read.

Every test runs the real command against real local servers and asserts the exit code, the
report, the files on the volume and the bytes the server sent."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.builders import write_sparse_llama_folder
from tests.hubserver import HubServer
from tests.llama_fit_oracle import write_model
from tests.test_sync import Volume

GPU_SMALL = "1x56MiB,cc=9.0"  # below weights + one 8192-token request of the test model
GPU_LARGE = "1x64MiB,cc=9.0"
DIMS = dict(hidden=512, inter=1536, layers=4, vocab=8000, heads=8, kv_heads=2, shards=3, max_len=8192)
SERVE = {"engine": "vllm", "args": "--max-model-len 8192 --enforce-eager"}


def sparse_repo(hub: HubServer, tmp: Path, repo: str, **dims: int) -> dict[str, Path]:
    folder = write_sparse_llama_folder(tmp / repo.replace("/", "--"), **{**DIMS, **dims})
    files = {p.name: p for p in sorted(folder.iterdir())}
    hub.add_repo(repo, files)
    return files


def weights_sent(hub: HubServer, repo: str, files: dict[str, Path]) -> dict[str, int]:
    """Bytes of each weight file the server sent (the file's own bytes: 206 and 200 answers, not redirects)."""
    return {rel: sum(r.bytes_sent for r in hub.requests if r.repo_id == repo and r.file == rel and r.status in (200, 206))
            for rel in files if rel.endswith(".safetensors")}


def chat_lane(**extra) -> dict:
    return {"name": "chat", "kind": "hf-dir", "path": "vllm/chat", "source": "hf://org/big@main", "serve": SERVE, **extra}


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def test_sync_refuses_a_lane_that_cannot_fit_before_its_bytes_move(tmp_path: Path, hub: HubServer) -> None:
    files = sparse_repo(hub, tmp_path, "org/big")
    vol = Volume(tmp_path / "v", hub)
    (tmp_path / "v").mkdir()
    vol.write([chat_lane()])
    run = vol.run("sync", "--accelerator", GPU_SMALL)
    assert run.code == 1, run.stderr
    lane = run.lane("chat")
    errors = [p["code"] for p in lane["problems"] if p["code"] != "missing"]
    assert errors == ["kv-cache-too-large"], lane["problems"]
    assert lane["fit"]["inputs_from"] == "source" and lane["fit"]["verdict"] == "does-not-fit"
    assert lane["fit"]["weights_bytes_per_gpu"] > 16 * 2**20 and lane["fit"]["kv_bytes_per_token"] == 2 * 2 * 64 * 2 * 4
    assert "not downloaded" in run.report["reason"] and "--max-model-len" in run.report["reason"]
    assert "--no-fit" in run.stderr  # the hint names the override
    assert not (vol.models / "vllm" / "chat").exists()
    sent = weights_sent(hub, "org/big", files)
    assert all(0 < n <= 8 * 1024 for n in sent.values()), sent  # one ranged read of each shard's header
    assert all(files[rel].stat().st_size > 4 * 2**20 for rel in sent)
    assert "3 ranged reads" not in run.stderr and "ranged reads" in run.stderr


def test_the_same_lane_fits_a_larger_node_and_no_fit_downloads_a_refused_one(tmp_path: Path, hub: HubServer) -> None:
    sparse_repo(hub, tmp_path, "org/big")
    (tmp_path / "v").mkdir()
    vol = Volume(tmp_path / "v", hub).write([chat_lane()])
    forced = vol.run("sync", "--accelerator", GPU_SMALL, "--no-fit", timeout=120)
    assert (vol.models / "vllm" / "chat" / "config.json").exists()  # downloaded anyway
    assert forced.code == 1 and forced.lane("chat")["fit"]["inputs_from"] in ("volume", "receipts")  # still judged: it will not start here
    assert [p["code"] for p in forced.lane("chat")["problems"]] == ["kv-cache-too-large"]
    env_forced = Volume(tmp_path / "v", hub)
    env_forced._runs = 10
    again = env_forced.run("sync", env=env_forced.env(PREFLIGHT_NO_FIT="1", PREFLIGHT_ACCELERATOR=GPU_SMALL))
    assert again.code == 1 and "not downloaded" not in (again.report.get("reason") or "")
    ok = vol.run("check", "--accelerator", GPU_LARGE)
    assert ok.code == 0, ok.stderr
    assert ok.lane("chat")["fit"]["verdict"] in ("fits", "tight")


def test_a_gguf_lane_is_judged_from_the_first_mib_of_its_header(tmp_path: Path, hub: HubServer) -> None:
    """100k-token vocabulary: the tokenizer arrays pass the read budget, the hyper-parameters come first."""
    path = write_model(tmp_path / "reader.gguf", n_embd=256, n_head=8, n_head_kv=2, n_layer=4, n_vocab=100_000, ctx=32768,
                       pad_bytes=24 * 2**20)
    hub.add_repo("org/reader", {"reader.gguf": path})
    (tmp_path / "v").mkdir()
    vol = Volume(tmp_path / "v", hub).write([{
        "name": "reader", "kind": "gguf", "path": "gguf/reader.gguf", "source": "hf://org/reader/reader.gguf@main",
        "serve": {"engine": "llama.cpp", "args": "-c 32768 -np 1 --no-mmap"}}])
    size = path.stat().st_size
    refused = vol.run("sync", "--accelerator", "cpu,memory_limit=24MiB")
    assert refused.code == 1, refused.stderr
    fit = refused.lane("reader")["fit"]
    assert fit["inputs_from"] == "source" and "key/values" in fit["inputs_partial"]
    assert [p["code"] for p in refused.lane("reader")["problems"] if p.get("severity", "error") == "error" and p["code"] != "missing"] == \
        ["memory-limit-exceeded"]
    assert hub.bytes_sent("org/reader", "reader.gguf") <= 2**20 < size
    assert not (vol.models / "gguf" / "reader.gguf").exists()
    ok = vol.run("sync", "--accelerator", "cpu,memory_limit=256MiB", timeout=120)
    assert ok.code == 0, ok.stderr
    after = ok.lane("reader")["fit"]
    assert after["inputs_from"] in ("volume", "receipts")  # the downloaded file's header (kept in the receipts once read)
    # the figures from the partial header before the download are the figures from the whole file after it
    assert after["kv_cache_bytes"] == fit["kv_cache_bytes"] and after["weights_bytes"] == fit["weights_bytes"] == size


def test_hostile_headers_cost_a_bounded_read_and_are_judged_after_download(tmp_path: Path, hub: HubServer) -> None:
    files = sparse_repo(hub, tmp_path, "org/big")
    liar = tmp_path / "liar.safetensors"  # claims a 1 TiB header in a 6 MiB file
    with open(liar, "wb") as f:
        f.write(struct.pack("<Q", 2**40) + b"{" + b" " * 100)
        f.truncate(6 * 2**20)
    bad = dict(files)
    bad["model-00002-of-00003.safetensors"] = liar
    hub.add_repo("org/big", bad)
    (tmp_path / "v").mkdir()
    vol = Volume(tmp_path / "v", hub).write([chat_lane()])
    hub.clear_requests()
    run = vol.run("sync", "--accelerator", GPU_SMALL, timeout=120)
    shard = "model-00002-of-00003.safetensors"
    fit_reads = [r for r in hub.requests if r.file == shard and r.range == "bytes=0-8191"]
    assert fit_reads and max(r.bytes_sent for r in fit_reads) <= 8192  # the header length is refused from the first read
    assert "header length field says 1099511627776 bytes" in run.stderr  # said before the download: fit not judged
    assert run.lane("chat").get("fit", {}).get("weights_bytes_per_gpu") is None
    # the download then meets the format check, which refuses the shard: exit 3, nothing published
    assert run.code == 3 and not (vol.models / "vllm" / "chat" / shard).exists()


def test_a_server_that_ignores_range_is_read_only_up_to_the_header(tmp_path: Path, hub: HubServer) -> None:
    files = sparse_repo(hub, tmp_path, "org/big")
    for rel in files:
        if rel.endswith(".safetensors"):
            hub.fault("org/big", rel).ignore_range()
    (tmp_path / "v").mkdir()
    vol = Volume(tmp_path / "v", hub).write([chat_lane()])
    run = vol.run("sync", "--accelerator", GPU_SMALL)
    assert run.code == 1 and run.lane("chat")["fit"]["inputs_from"] == "source"
    assert not (vol.models / "vllm" / "chat").exists()


def test_lock_records_fit_so_sync_locked_refuses_with_no_request(tmp_path: Path, hub: HubServer) -> None:
    sparse_repo(hub, tmp_path, "org/big")
    (tmp_path / "v").mkdir()
    vol = Volume(tmp_path / "v", hub).write([chat_lane()])
    locked = vol.run("lock")
    assert locked.code == 0, locked.stderr
    lock = json.loads((tmp_path / "v" / "lanes.lock.json").read_text())
    fit = lock["lanes"]["chat"]["fit"]
    assert fit["engine"] == "vllm" and fit["config"]["num_hidden_layers"] == 4 and len(fit["weights"]) > 4
    assert len(json.dumps(fit)) < 8 * 1024
    hub.clear_requests()
    run = vol.run("sync", "--locked", "--accelerator", GPU_SMALL)
    assert run.code == 1 and run.lane("chat")["fit"]["inputs_from"] == "lock"
    assert hub.requests == []  # listing, fit and refusal from the lock alone
    ok = vol.run("sync", "--locked", "--accelerator", GPU_LARGE, timeout=120)
    assert ok.code == 0, ok.stderr


def test_mirror_and_https_sources_read_ranges_too(tmp_path: Path, hub: HubServer) -> None:
    mirror = write_sparse_llama_folder(tmp_path / "mirror", **DIMS)
    gguf = write_model(tmp_path / "r.gguf", n_embd=256, n_head=8, n_head_kv=2, n_layer=4, ctx=32768, pad_bytes=8 * 2**20)
    import hashlib

    url = hub.add_url("r.gguf", gguf)
    (tmp_path / "v").mkdir()
    vol = Volume(tmp_path / "v", hub).write([
        {"name": "chat", "kind": "hf-dir", "path": "vllm/chat", "source": str(mirror), "serve": SERVE},
        {"name": "reader", "kind": "gguf", "path": "gguf/r.gguf", "source": url, "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
         "serve": {"engine": "llama.cpp", "args": "-c 32768 -np 1 -ngl 0 --no-mmap"}}])
    run = vol.run("sync", "--accelerator", "1x56MiB,cc=9.0,memory_limit=4MiB")
    assert run.code == 1, run.stderr
    assert run.lane("chat")["fit"]["inputs_from"] == "source" and run.lane("reader")["fit"]["inputs_from"] == "source"
    assert not (vol.models / "vllm" / "chat").exists() and not (vol.models / "gguf" / "r.gguf").exists()
    assert hub.bytes_sent(None, "r.gguf") < 2**20


def judged_from_ranged_reads(tmp_path: Path, server: Any, scheme: str, env: Callable[[Volume, str], dict[str, str]],
                             downloads: Callable[[Any], list]) -> None:
    """A folder lane in a bucket of `server` that does not fit the node: refused before its
    bytes move, judged from ranged reads of each safetensors header (`downloads(proxy)`: the
    object GETs the proxy saw)."""
    from tests.s3_proxy import S3Proxy

    proxy = S3Proxy(server.port).start()
    try:
        bucket = server.bucket("fit-models")
        folder = write_sparse_llama_folder(tmp_path / "llm", **DIMS)
        for p in folder.iterdir():
            server.put(bucket, f"llm/{p.name}", p.read_bytes())
        (tmp_path / "v").mkdir()
        vol = Volume(tmp_path / "v", None).write([{"name": "chat", "kind": "hf-dir", "path": "vllm/chat", "source": f"{scheme}://{bucket}/llm",
                                                    "serve": SERVE}])
        run = vol.run("sync", "--accelerator", GPU_SMALL, env=env(vol, proxy.endpoint))
        assert run.code == 1, run.stderr
        assert run.lane("chat")["fit"]["inputs_from"] == "source" and not (vol.models / "vllm" / "chat").exists()
        gets = [r for r in downloads(proxy) if r.path.endswith(".safetensors")]
        assert gets and all((r.range or "").startswith("bytes=0-") and r.bytes_sent <= 8192 for r in gets), gets
    finally:
        proxy.stop()


def test_s3_lanes_are_judged_from_ranged_object_reads(tmp_path: Path) -> None:
    from tests import s3_server
    from tests.test_s3 import s3_env

    if s3_server.binary() is None:
        pytest.skip("the S3 server is built by ops/s3-server.sh")
    server = s3_server.S3Server(tmp_path / "s3").start()
    try:
        judged_from_ranged_reads(tmp_path, server, "s3", s3_env, lambda proxy: [r for r in proxy.requests if r.method == "GET"])
    finally:
        server.stop()


def test_oci_raw_layers_are_read_in_part_and_tar_layers_wait_for_the_download(tmp_path: Path) -> None:
    from tests.oci_servers import Pusher, RegistryServer, tar_bytes
    from tests.repos import hf_model
    from tests.test_oci import OciVolume

    reg = RegistryServer(tmp_path / "registry", "htpasswd").start()
    try:
        p = Pusher(reg)
        gguf = write_model(tmp_path / "r.gguf", n_embd=256, n_head=8, n_head_kv=2, n_layer=4, ctx=32768, pad_bytes=8 * 2**20)
        p.artifact("dmr/reader", "q8", [("application/vnd.docker.ai.gguf.v3", gguf.read_bytes(), {})],
                   config=b'{"config": {"format": "gguf"}}', config_type="application/vnd.docker.ai.model.config.v0.1+json")
        model = hf_model()
        kit = tar_bytes([(f"llm/{k}", v) for k, v in model.items()], gzip_it=True)
        p.artifact("kit/llm", "v1", [("application/vnd.kitops.modelkit.model.v1.tar+gzip", kit, {})],
                   config=b'{"manifestVersion": "1.0.0"}', config_type="application/vnd.kitops.modelkit.config.v1+json")
        (tmp_path / "v").mkdir()
        vol = OciVolume(tmp_path / "v", reg).write([
            {"name": "reader", "kind": "gguf", "path": "g/reader.gguf", "source": f"oci://{reg.host}/dmr/reader:q8",
             "serve": {"engine": "llama.cpp", "args": "-c 32768 -np 1 -ngl 0 --no-mmap"}},
            {"name": "kit", "kind": "hf-dir", "path": "kit", "source": f"oci://{reg.host}/kit/llm:v1//llm",
             "serve": {"engine": "vllm", "args": "--max-model-len 2048"}}])
        run = vol.run("sync", "--accelerator", "1x56MiB,cc=9.0,memory_limit=4MiB")
        assert run.code == 1, run.stderr
        assert run.lane("reader")["fit"]["inputs_from"] == "source" and not (vol.models / "g" / "reader.gguf").exists()
        assert "memory-limit-exceeded" in run.codes("reader")
        assert "kit: fit not judged before the download" in run.stderr  # a member of a compressed tar layer
        assert run.lane("kit")["status"] == "ready" and run.lane("kit")["fit"]["inputs_from"] in ("volume", "receipts")
    finally:
        reg.stop()


def test_gcs_lanes_are_judged_from_ranged_media_reads(tmp_path: Path) -> None:
    from tests import gcs_server
    from tests.test_gcs import gs_env, media_gets

    if gcs_server.binary() is None:
        pytest.skip("the Cloud Storage server is built by the test script")
    server = gcs_server.GcsServer(tmp_path / "gcs").start()
    try:
        judged_from_ranged_reads(tmp_path, server, "gs", gs_env, media_gets)
    finally:
        server.stop()
