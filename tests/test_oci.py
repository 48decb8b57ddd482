"""oci:// against a real registry (the CNCF distribution registry, Debian's docker-registry):
push → sync round trips, artifacts made by other packers (olot, oras), every artifact
family's layout, auth (htpasswd basic, Docker config.json, the bearer-token flow), and
faults (a corrupted blob, a killed pull, 401, an unknown tag, a hostile tar, a registry
that is down). Every test runs the real command and asserts what a user sees."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.oci_servers import PASSWORD, USER, FaultProxy, Pusher, RegistryServer, free_port, many_entries_tar, tar_bytes
from tests.repos import gguf_file, gguf_split, hf_model, write_tree
from tests.test_sync import STATE, Volume, kill, sha256

MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory):
    reg = RegistryServer(tmp_path_factory.mktemp("registry"), "htpasswd").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory):
    reg = RegistryServer(tmp_path_factory.mktemp("token-registry"), "token").start()
    yield reg
    reg.stop()


class OciVolume(Volume):
    """A volume whose runs see credentials for the registry (DOCKER_CONFIG) and nothing else."""

    def __init__(self, root: Path, reg: RegistryServer | None) -> None:
        super().__init__(root, None)
        self.reg = reg
        self.docker = reg.docker_config(root / "docker") if reg is not None else None

    def env(self, token: bool = True, **extra: str) -> dict[str, str]:
        env = super().env(token)
        env.pop("DOCKER_CONFIG", None)
        env["HOME"] = str(self.root / "home")
        if self.docker is not None and token:
            env["DOCKER_CONFIG"] = str(self.docker)
        env.update(extra)
        return env


def _vol(tmp_path: Path, reg: RegistryServer | None, name: str = "v") -> OciVolume:
    root = tmp_path / name
    root.mkdir()
    return OciVolume(root, reg)


def mirror_lanes(mirror: Path) -> list[dict]:
    return [{"name": "llm", "kind": "hf-dir", "path": "vllm/llm", "source": str(mirror / "llm")},
            {"name": "reader", "kind": "gguf", "path": "gguf/reader.gguf", "source": str(mirror / "tiny.Q8_0.gguf")}]


@pytest.fixture
def pushed(tmp_path: Path, registry: RegistryServer) -> dict:
    """Two lanes synced from a local mirror, then pushed to the registry by `preflight push`."""
    model, gguf = hf_model(), gguf_file()
    mirror = tmp_path / "mirror"
    write_tree(mirror / "llm", model)
    write_tree(mirror, gguf)
    src = _vol(tmp_path, registry, "src").write(mirror_lanes(mirror))
    assert src.run("sync").code == 0
    repo = f"models/{tmp_path.name.lower().replace('_', '-')[:40]}"
    run = src.run("push", "llm", "--to", f"oci://{registry.host}/{repo}:v1")
    assert run.code == 0, run.stderr
    run2 = src.run("push", "reader", "--to", f"oci://{registry.host}/{repo}-gguf")
    assert run2.code == 0, run2.stderr
    return {"model": model, "gguf": gguf, "repo": repo, "src": src, "push": run, "push2": run2}


def test_push_then_sync_into_an_empty_volume_is_byte_identical(tmp_path: Path, registry: RegistryServer, pushed: dict) -> None:
    repo = pushed["repo"]
    assert "pushed 5 file(s)" in pushed["push"].stderr, pushed["push"].stderr
    vol = _vol(tmp_path, registry).write([
        {"name": "llm", "kind": "hf-dir", "path": "m/llm", "source": f"oci://{registry.host}/{repo}:v1"},
        {"name": "reader", "kind": "gguf", "path": "g/reader.gguf", "source": f"oci://{registry.host}/{repo}-gguf:reader"},
    ])
    run = vol.run("sync")
    assert run.code == 0, run.stderr
    assert vol.tree("m/llm") == pushed["model"]
    assert (vol.models / "g/reader.gguf").read_bytes() == next(iter(pushed["gguf"].values()))
    assert vol.debris() == []
    again = vol.run("sync")
    assert again.code == 0 and "fetched_files" not in again.lane("llm")


def test_a_second_push_uploads_nothing(tmp_path: Path, registry: RegistryServer, pushed: dict) -> None:
    run = pushed["src"].run("push", "llm", "--to", f"oci://{registry.host}/{pushed['repo']}:v1")
    assert run.code == 0, run.stderr
    assert "pushed 0 file(s)" in run.stderr
    # the same verified lane gives the same manifest digest
    digests = [line.split("@")[-1].split()[0] for line in (pushed["push"].stderr + run.stderr).splitlines() if "@sha256:" in line]
    assert len(set(digests)) == 1, digests


# --------------------------------------------------------------------------- other packers


def test_oras_reads_what_preflight_pushed(tmp_path: Path, token_registry: RegistryServer) -> None:
    from tests.oci_packers import oras_pull

    model = hf_model()
    write_tree(tmp_path / "mirror" / "llm", model)
    src = _vol(tmp_path, token_registry, "src").write(mirror_lanes(tmp_path / "mirror")[:1])
    assert src.run("sync").code == 0
    run = src.run("push", "llm", "--to", f"oci://{token_registry.host}/oras/llm:v1")
    assert run.code == 0, run.stderr
    out = tmp_path / "oras-out"
    oras_pull(f"{token_registry.host}/oras/llm:v1", out, USER, PASSWORD)
    assert (out / "model.safetensors").read_bytes() == model["model.safetensors"]
    import tarfile

    with tarfile.open(out / "config.tar") as tf:
        assert {m.name: tf.extractfile(m).read() for m in tf.getmembers()} == {k: v for k, v in model.items() if k.endswith(".json")}


def test_olot_modelcar_and_its_modelpack_manifest_sync(tmp_path: Path, token_registry: RegistryServer) -> None:
    registry = token_registry
    from tests.oci_packers import olot_modelcar, oras_push_layout

    model = hf_model()
    write_tree(tmp_path / "model", model)
    digests = olot_modelcar(tmp_path / "layout", tmp_path / "model")
    oras_push_layout(tmp_path / "layout", f"{registry.host}/olot/tiny:v1", USER, PASSWORD)
    base = f"oci://{registry.host}/olot/tiny"
    vol = _vol(tmp_path, registry).write([
        {"name": "by-tag", "kind": "hf-dir", "path": "a", "source": f"{base}:v1"},  # the index: its ModelPack manifest
        {"name": "modelcar", "kind": "hf-dir", "path": "b", "source": f"{base}@{digests['image']}"},
    ])
    run = vol.run("sync")
    assert run.code == 0, run.stderr
    assert vol.tree("a") == model and vol.tree("b") == model
    lock = vol.run("lock")
    assert lock.code == 0, lock.stderr
    locked = json.loads((vol.root / "lanes.lock.json").read_text())["lanes"]
    assert locked["by-tag"]["commit"] == digests["modelpack"]
    assert locked["modelcar"]["commit"] == digests["image"]


# --------------------------------------------------------------------------- layouts of each family


def test_modelcar_image_layers_apply_whiteouts(tmp_path: Path, registry: RegistryServer) -> None:
    model = hf_model()
    p = Pusher(registry)
    low = tar_bytes([("bin/sh", b"#!"), ("dev/console", "", "fifo"), ("models/old.bin", b"x" * 10), ("models/sub/x.txt", b"x")]
                    + [(f"/models/{k}", v) for k, v in model.items()], gzip_it=True)
    high = tar_bytes([("models/.wh.old.bin", b""), ("models/sub/.wh..wh..opq", b""), ("models/sub/y.txt", b"y"),
                      ("models/tokenizer-link.json", "tokenizer.json", "symlink")])
    p.artifact("img/car", "v1", [("application/vnd.oci.image.layer.v1.tar+gzip", low, {}),
                                 ("application/vnd.oci.image.layer.v1.tar", high, {})],
               config=json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode(),
               config_type="application/vnd.oci.image.config.v1+json")
    vol = _vol(tmp_path, registry).write([{"name": "car", "kind": "hf-dir", "path": "car", "source": f"oci://{registry.host}/img/car:v1"}])
    run = vol.run("sync")
    assert run.code == 0, run.stderr
    assert vol.tree("car") == {**model, "sub/y.txt": b"y", "tokenizer-link.json": model["tokenizer.json"]}


def test_an_image_link_out_of_the_model_folder_is_refused(tmp_path: Path, registry: RegistryServer) -> None:
    p = Pusher(registry)
    layer = tar_bytes([("etc/passwd", b"root:x:0:0"), ("models/config.json", b"{}"), ("models/passwd", "../etc/passwd", "symlink")])
    p.artifact("img/linkout", "v1", [("application/vnd.oci.image.layer.v1.tar", layer, {})],
               config=b'{"architecture": "amd64", "os": "linux"}', config_type="application/vnd.oci.image.config.v1+json")
    vol = _vol(tmp_path, registry).write([{"name": "car", "kind": "hf-dir", "path": "car", "source": f"oci://{registry.host}/img/linkout:v1"}])
    run = vol.run("sync")
    assert run.code == 1, run.stderr
    assert "path-escape" in run.codes("car") and "leaves the model folder" in run.stderr
    assert not (vol.models / "car").exists()


def test_docker_model_runner_split_gguf_and_kitops_targz(tmp_path: Path, registry: RegistryServer) -> None:
    p = Pusher(registry)
    parts = gguf_split("big", 3)
    names = sorted(parts)
    p.artifact("dmr/big", "q8", [("application/vnd.docker.ai.gguf.v3", parts[n], {}) for n in names] +
               [("application/vnd.docker.ai.license", b"MIT", {})],
               config=b'{"config": {"format": "gguf"}}', config_type="application/vnd.docker.ai.model.config.v0.1+json")
    model = hf_model()
    kit = tar_bytes([(f"llm/{k}", v) for k, v in model.items()], gzip_it=True)
    p.artifact("kit/llm", "v1", [("application/vnd.kitops.modelkit.model.v1.tar+gzip", kit, {}),
                                 ("application/vnd.kitops.modelkit.docs.v1.tar+gzip", tar_bytes([("README.md", b"doc")], gzip_it=True), {})],
               config=b'{"manifestVersion": "1.0.0"}', config_type="application/vnd.kitops.modelkit.config.v1+json")
    vol = _vol(tmp_path, registry).write([
        {"name": "big", "kind": "gguf", "path": "g/big-00001-of-00003.gguf", "source": f"oci://{registry.host}/dmr/big:q8"},
        {"name": "kit", "kind": "hf-dir", "path": "kit", "source": f"oci://{registry.host}/kit/llm:v1//llm"},
    ])
    run = vol.run("sync")
    assert run.code == 0, run.stderr
    assert {n: (vol.models / "g" / n).read_bytes() for n in names} == parts
    assert vol.tree("kit") == model  # the docs layer is left out unless the lane's include names it


def test_index_resolves_to_this_platform_and_the_lock_pins_the_digest(tmp_path: Path, registry: RegistryServer) -> None:
    p = Pusher(registry)
    gg = gguf_file()
    data = next(iter(gg.values()))
    one = p.artifact("idx/m", "amd", [(WEIGHT_RAW, data, {"org.cncf.model.filepath": "m.gguf"})], artifact_type=MODELPACK)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": one, "size": len(p._req("GET", f"/v2/idx/m/manifests/{one}", "idx/m").data),
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    p.manifest("idx/m", "multi", index, "application/vnd.oci.image.index.v1+json")
    vol = _vol(tmp_path, registry).write([{"name": "g", "kind": "gguf", "path": "g/m.gguf", "source": f"oci://{registry.host}/idx/m:multi"}])
    assert vol.run("lock").code == 0
    locked = json.loads((vol.root / "lanes.lock.json").read_text())["lanes"]["g"]
    assert locked["commit"] == one and locked["files"]["m.gguf"]["sha256"] == sha256(data)
    # the tag moves to another artifact: a locked sync still gets the pinned bytes
    p.artifact("idx/m", "multi", [(WEIGHT_RAW, b"other bytes", {"org.cncf.model.filepath": "m.gguf"})], artifact_type=MODELPACK)
    run = vol.run("sync", "--locked")
    assert run.code == 0, run.stderr
    assert (vol.models / "g/m.gguf").read_bytes() == data


# --------------------------------------------------------------------------- auth


def test_token_auth_registry_round_trip(tmp_path: Path, token_registry: RegistryServer) -> None:
    gg = gguf_file()
    mirror = tmp_path / "mirror"
    write_tree(mirror, gg)
    src = _vol(tmp_path, token_registry, "src").write([{"name": "r", "kind": "gguf", "path": "r.gguf", "source": str(mirror / "tiny.Q8_0.gguf")}])
    assert src.run("sync").code == 0
    push = src.run("push", "r", "--to", f"oci://{token_registry.host}/tok/r:v1")
    assert push.code == 0, push.stderr
    vol = _vol(tmp_path, token_registry).write([{"name": "r", "kind": "gguf", "path": "x/r.gguf", "source": f"oci://{token_registry.host}/tok/r:v1"}])
    run = vol.run("sync")
    assert run.code == 0, run.stderr
    assert (vol.models / "x/r.gguf").read_bytes() == next(iter(gg.values()))
    assert token_registry.token is not None and any(r["basic"] for r in token_registry.token.requests)
    assert PASSWORD not in run.output + push.output
    # no credentials: the token server gives a token without access, the registry says 401 → exit 4
    anon = _vol(tmp_path, token_registry, "anon").write([{"name": "r", "kind": "gguf", "path": "x/r.gguf",
                                                        "source": f"oci://{token_registry.host}/tok/r:v1"}])
    denied = anon.run("sync", token=False)
    assert denied.code == 4, denied.stderr
    assert token_registry.host in denied.stderr


def test_401_is_exit_4_naming_the_registry(tmp_path: Path, registry: RegistryServer, pushed: dict) -> None:
    vol = _vol(tmp_path, registry).write([{"name": "llm", "kind": "hf-dir", "path": "m", "source": f"oci://{registry.host}/{pushed['repo']}:v1"}])
    run = vol.run("sync", token=False)
    assert run.code == 4, run.stderr
    assert f"registry {registry.host}" in run.stderr and "anonymously" in run.stderr
    wrong = _vol(tmp_path, registry, "wrong")
    wrong.docker = registry.docker_config(wrong.root / "docker", password="not-it")
    wrong.write([{"name": "llm", "kind": "hf-dir", "path": "m", "source": f"oci://{registry.host}/{pushed['repo']}:v1"}])
    run = wrong.run("sync")
    assert run.code == 4 and "not-it" not in run.output
    assert not (wrong.models / "m").exists()


# --------------------------------------------------------------------------- faults


def test_unknown_tag_is_exit_3_naming_the_reference(tmp_path: Path, registry: RegistryServer, pushed: dict) -> None:
    ref = f"{registry.host}/{pushed['repo']}:no-such-tag"
    vol = _vol(tmp_path, registry).write([{"name": "llm", "kind": "hf-dir", "path": "m", "source": f"oci://{ref}"}])
    run = vol.run("sync", "--retries", "3")
    assert run.code == 3, run.stderr
    assert ref in run.stderr and "MANIFEST_UNKNOWN" in run.stderr
    assert run.seconds < 20  # a 404 is not retried


def test_a_corrupted_blob_in_the_registry_is_never_published(tmp_path: Path, registry: RegistryServer) -> None:
    p = Pusher(registry)
    good = next(iter(gguf_file().values()))
    cfg = json.dumps({"model_type": "llama"}).encode()
    p.artifact("bad/blob", "v1", [(WEIGHT_RAW, good, {"org.cncf.model.filepath": "m.gguf"}),
                                  ("application/vnd.cncf.model.weight.config.v1.tar", tar_bytes([("config.json", cfg)]), {})],
               artifact_type=MODELPACK)
    blob = registry.blob_path("sha256:" + sha256(good))
    original = blob.read_bytes()
    try:
        blob.write_bytes(original[:-4] + b"XXXX")  # same size, other bytes
        vol = _vol(tmp_path, registry).write([{"name": "g", "kind": "gguf", "path": "g/m.gguf", "source": f"oci://{registry.host}/bad/blob:v1//m.gguf"}])
        run = vol.run("sync", "--retries", "1")
        assert run.code == 3, run.stderr
        assert not (vol.models / "g/m.gguf").exists()
        assert vol.debris() == []
    finally:
        blob.write_bytes(original)


def test_a_tar_layer_with_dotdot_entries_is_refused_and_nothing_lands(tmp_path: Path, registry: RegistryServer) -> None:
    p = Pusher(registry)
    evil = tar_bytes([("config.json", b"{}"), ("../../escape.txt", b"owned")])
    p.artifact("evil/tar", "v1", [(WEIGHT_RAW, next(iter(gguf_file().values())), {"org.cncf.model.filepath": "m.gguf"}),
                                  ("application/vnd.cncf.model.weight.config.v1.tar", evil, {})], artifact_type=MODELPACK)
    vol = _vol(tmp_path, registry).write([{"name": "d", "kind": "hf-dir", "path": "d/e", "source": f"oci://{registry.host}/evil/tar:v1"}])
    run = vol.run("sync")
    assert run.code == 1, run.stderr
    assert "path-escape" in run.codes("d") and "'..'" in run.stderr
    assert not (vol.models / "d").exists() and not list(tmp_path.rglob("escape.txt"))


def test_unknown_media_type_and_no_model_layers_are_named(tmp_path: Path, registry: RegistryServer) -> None:
    p = Pusher(registry)
    p.artifact("odd/a", "v1", [("application/x-mystery", b"?", {})], artifact_type=MODELPACK)
    p.artifact("odd/b", "v1", [("application/vnd.cncf.model.doc.v1.raw", b"# readme", {"org.cncf.model.filepath": "README.md"})],
               artifact_type=MODELPACK)
    vol = _vol(tmp_path, registry).write([{"name": "a", "kind": "hf-dir", "path": "a", "source": f"oci://{registry.host}/odd/a:v1"},
                                          {"name": "b", "kind": "hf-dir", "path": "b", "source": f"oci://{registry.host}/odd/b:v1"}])
    run = vol.run("sync")
    assert run.code == 3, run.stderr
    assert "application/x-mystery" in run.stderr and "no model layers" in run.stderr


def test_a_registry_that_is_down_fails_with_3_within_the_deadline(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    vol = _vol(tmp_path, None).write([{"name": "g", "kind": "gguf", "path": "g.gguf", "source": f"oci://{host}/m/g:v1"}])
    run = vol.run("sync", "--retries", "2", "--deadline", "20")
    assert run.code == 3, run.stderr
    assert host in run.stderr and run.seconds < 30


def _mapped(vol: Volume) -> int:
    """Bytes the chunk maps of the staging folder record as written (the part a rerun keeps)."""
    total = 0
    for m in (vol.models / STATE / "staging").glob("*.map") if (vol.models / STATE / "staging").is_dir() else []:
        try:
            total += sum(b - a for a, b in json.loads(m.read_text())["done"])
        except (OSError, ValueError, KeyError):
            pass
    return total


def test_a_killed_pull_resumes_with_range(tmp_path: Path, registry: RegistryServer) -> None:
    p = Pusher(registry)
    big = os.urandom(24 * 2**20)
    p.artifact("big/raw", "v1", [(WEIGHT_RAW, big, {"org.cncf.model.filepath": "weights.bin"})], artifact_type=MODELPACK)
    proxy = FaultProxy(registry.port, rate=512 * 2**10)  # per connection: a 4 MiB piece takes seconds
    try:
        vol = _vol(tmp_path, registry).write([{"name": "f", "kind": "file", "path": "f/weights.bin", "sha256": sha256(big),
                                               "source": f"oci://{proxy.host}/big/raw:v1"}])
        vol.docker = registry.docker_config(vol.root / "docker", host=proxy.host)
        proc, argv = vol.spawn("sync")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _mapped(vol) < 2**20:
            time.sleep(0.05)
        kill(proc)
        assert _mapped(vol) >= 2**20
        assert vol.partials()
        proxy.rate = None
        before = len(proxy.log.ranges)
        run = vol.run("sync")
        assert run.code == 0, run.stderr
        assert (vol.models / "f/weights.bin").read_bytes() == big
        asked = proxy.log.ranges[before:]
        # the rerun asks only for what the killed run had not written (ranges, never the whole blob again)
        spans = [tuple(int(x) for x in r[6:].split("-")) for r in asked]
        assert spans and sum(b - a + 1 for a, b in spans) < len(big), asked
    finally:
        proxy.close()


def test_429_and_503_are_retried_with_retry_after(tmp_path: Path, registry: RegistryServer, pushed: dict) -> None:
    proxy = FaultProxy(registry.port)
    try:
        proxy.fail = [(503, {"Retry-After": "1"}), (429, {"Retry-After": "1"})]
        vol = _vol(tmp_path, registry).write([{"name": "g", "kind": "gguf", "path": "g/r.gguf", "source": f"oci://{proxy.host}/{pushed['repo']}-gguf:reader"}])
        vol.docker = registry.docker_config(vol.root / "docker", host=proxy.host)
        run = vol.run("sync", "--retries", "3")
        assert run.code == 0, run.stderr
        assert (vol.models / "g/r.gguf").read_bytes() == next(iter(pushed["gguf"].values()))
    finally:
        proxy.close()


def test_chunked_upload_and_cross_repo_mount(tmp_path: Path, registry: RegistryServer) -> None:
    big = os.urandom(300_000)
    mirror = tmp_path / "mirror"
    write_tree(mirror, {"w.bin": big})
    src = _vol(tmp_path, registry, "src").write([{"name": "w", "kind": "file", "path": "w.bin", "source": str(mirror / "w.bin")}])
    assert src.run("sync").code == 0
    run = src.run("push", "w", "--to", f"oci://{registry.host}/chunked/w:v1", env=src.env(PREFLIGHT_REGISTRY_CHUNK_MIB="0.1"))
    assert run.code == 0, run.stderr
    # a lane synced from that repository, pushed to another on the same registry: mounted, not uploaded
    mid = _vol(tmp_path, registry, "mid").write([{"name": "w", "kind": "file", "path": "w.bin", "source": f"oci://{registry.host}/chunked/w:v1"}])
    assert mid.run("sync").code == 0
    assert (mid.models / "w.bin").read_bytes() == big
    again = mid.run("push", "w", "--to", f"oci://{registry.host}/mounted/w:v1")
    assert again.code == 0, again.stderr
    assert "pushed 0 file(s)" in again.stderr and "1 already there" in again.stderr


# --------------------------------------------------------------------------- hostile layers and manifests

MAX_CPU_S = 3.0  # the whole sync process, interpreter included; the largest case takes about 1 s alone


def measured_sync(vol: Volume) -> tuple:
    return vol.run_measured("sync")


def _with_config_tar(p: Pusher, repo: str, layer: bytes) -> None:
    p.artifact(repo, "v1", [(WEIGHT_RAW, next(iter(gguf_file().values())), {"org.cncf.model.filepath": "m.gguf"}),
                            ("application/vnd.cncf.model.weight.config.v1.tar+gzip", layer, {})], artifact_type=MODELPACK)


@pytest.mark.parametrize("case", ["100,001 empty files", "100,001 directories", "99,999 directories",
                                  "33 MiB of names", "a 2 MiB extended header"])
def test_a_hostile_tar_layer_is_refused_early_and_cheaply(tmp_path: Path, registry: RegistryServer, case: str) -> None:
    from preflight.sources.oci_tar import MAX_ENTRIES, MAX_META, MAX_NAMES

    layer, says = {
        "100,001 empty files": (lambda: many_entries_tar(MAX_ENTRIES + 1), f"more than {MAX_ENTRIES} entries"),
        "100,001 directories": (lambda: many_entries_tar(MAX_ENTRIES + 1, "dir"), f"more than {MAX_ENTRIES} entries"),
        "99,999 directories": (lambda: many_entries_tar(MAX_ENTRIES - 1, "dir"), None),
        "33 MiB of names": (lambda: many_entries_tar(34, name_bytes=MAX_META - 4096), f"more than {MAX_NAMES} bytes of entry names"),
        "a 2 MiB extended header": (lambda: many_entries_tar(1, name_bytes=2 * MAX_META), f"extended header (at most {MAX_META})"),
    }[case]
    repo = "hostile/" + case.split()[0].replace(",", "").replace(".", "")
    _with_config_tar(Pusher(registry), repo, layer())
    vol = _vol(tmp_path, registry).write([{"name": "g", "kind": "gguf", "path": "g/m.gguf", "source": f"oci://{registry.host}/{repo}:v1"}])
    run, cpu, rss = measured_sync(vol)
    if says is None:
        assert run.code == 0, run.stderr
    else:
        assert run.code == 3, run.stderr
        assert says in run.stderr and "refused" in run.stderr, run.stderr
        assert not (vol.models / "g").exists()
    assert "Traceback" not in run.output and "internal error" not in run.output
    assert cpu < MAX_CPU_S and rss < 100, (case, cpu, rss)


def test_manifests_and_indexes_are_bounded(tmp_path: Path, registry: RegistryServer) -> None:
    from preflight.sources.oci import MAX_INDEX_ENTRIES, MAX_LAYERS

    p = Pusher(registry)
    gguf = p.blob("bounds/many", next(iter(gguf_file().values())))
    cfg = p.blob("bounds/many", b"{}")
    layer = {"mediaType": WEIGHT_RAW, **gguf, "annotations": {"org.cncf.model.filepath": "m.gguf"}}
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": MODELPACK,
           "config": {"mediaType": MODELPACK_CONFIG, **cfg}, "layers": [layer] * (MAX_LAYERS + 1)}
    p.manifest("bounds/many", "v1", doc)
    deep: object = "x"
    for _ in range(200):
        deep = [deep]
    p.manifest("bounds/many", "deep", {**doc, "layers": [layer], "annotations": {"x": "y"}, "subjectless": deep})
    one = p.manifest("bounds/many", "one", {**doc, "layers": [layer]})
    size = len(json.dumps({**doc, "layers": [layer]}).encode())
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": one, "size": size,
             "platform": {"os": "plan9", "architecture": "mips"}}
    p.manifest("bounds/many", "index", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                        "manifests": [entry] * (MAX_INDEX_ENTRIES + 1)}, "application/vnd.oci.image.index.v1+json")
    lanes = [{"name": n, "kind": "gguf", "path": f"{n}/m.gguf", "source": f"oci://{registry.host}/bounds/many:{t}"}
             for n, t in (("layers", "v1"), ("nested", "deep"), ("index", "index"), ("fine", "one"))]
    run = _vol(tmp_path, registry).write(lanes[:3]).run("sync")
    assert run.code == 3, run.stderr
    assert f"a manifest of {MAX_LAYERS + 1} layers (at most {MAX_LAYERS})" in run.stderr
    assert "nests deeper than 64 levels" in run.stderr
    assert f"an index of {MAX_INDEX_ENTRIES + 1} manifests (at most {MAX_INDEX_ENTRIES})" in run.stderr
    assert "retry" not in run.stderr and "Traceback" not in run.output  # the same bytes give the same answer
    assert _vol(tmp_path, registry, "fine").write(lanes[3:]).run("sync").code == 0
