"""Fixtures and helpers for tests that run the image on the real Docker engine.

conftest.py imports the fixtures from here. With no engine reachable the tests skip,
except under CI (CI set), where they fail: CI must not go green without running them.

The image is built once per session (base image if missing, wheelhouse, project
image); layers are reused, so only a code change rebuilds, and only the last layers.
The builder stage is kept as lane-preflight-builder:test for that reuse; no build
leaves an untagged image behind.
Containers reach the test Hub server through the host network namespace, so every
request stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose"
BASE_IMAGE = "lane-preflight-base:bookworm"
TEST_IMAGE = os.environ.get("PREFLIGHT_TEST_IMAGE", "lane-preflight:test")
BUILDER_IMAGE = "lane-preflight-builder:test"
STAGE_LABEL = "io.lane-preflight.stage"
TEST_LABEL = "io.lane-preflight.test"
RUNTIME_UID = 65532

MANIFEST = """\
version: 1
models_dir: ${MODELS_PATH:-/models}
lanes:
  - name: tiny
    kind: hf-dir
    path: vllm/tiny
    source: hf://org/tiny@main
  - name: tiny-gguf
    kind: gguf
    path: gguf/tiny.gguf
    source: hf://org/tiny-gguf/tiny.gguf@main
"""


def unavailable(reason: str) -> None:
    """Skip outside CI; fail under CI, where a missing engine is a broken setup."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so Docker tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        unavailable(f"no Docker engine reachable: {exc}")
    yield client
    client.close()


def _sh(args: list[str], timeout: float) -> str:
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _revision() -> str:
    try:
        return _sh(["git", "rev-parse", "HEAD"], 30).strip()
    except (RuntimeError, OSError):
        return "unknown"


@pytest.fixture(scope="session")
def base_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    if os.geteuid() != 0:
        unavailable(f"{BASE_IMAGE} is missing and building it (debootstrap) needs root")
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "preflight-base-image.lock")):
        _sh(["bash", "ops/base-image/build.sh", BASE_IMAGE], timeout=1200)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def preflight_image(docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project image, built from the working tree (cached layers make reruns fast)."""
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "preflight-image.lock")):
        _sh(["bash", "ops/wheelhouse.sh"], timeout=600)
        build = ["docker", "build", "-q", "--force-rm", "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", "VERSION=test",
                 "--build-arg", f"REVISION={_revision()}"]
        # The builder stage stays tagged, so the next session reuses its dependency layer;
        # what earlier builds left untagged (a superseded builder or test image) goes.
        _sh([*build, "--target", "builder", "-t", BUILDER_IMAGE, str(REPO)], timeout=1200)
        _sh([*build, "-t", TEST_IMAGE, str(REPO)], timeout=1200)
        _sh(["docker", "image", "prune", "-f", "--filter", f"label={STAGE_LABEL}"], timeout=300)
    return TEST_IMAGE


# --------------------------------------------------------------------------- model files


def write_tiny_hf_dir(folder: Path) -> Path:
    """A small but valid vLLM folder: config, tokenizer, one safetensors file."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
              "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 32, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = {"version": "1.0", "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(32)}, "merges": []}}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    rng = np.random.default_rng(0)
    save_file({"model.embed_tokens.weight": rng.standard_normal((32, 16), dtype=np.float32),
               "lm_head.weight": rng.standard_normal((32, 16), dtype=np.float32)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_tiny_gguf(path: Path) -> Path:
    """A complete one-block llama GGUF, as llama.cpp loads it (tests/builders.py)."""
    from tests.builders import write_gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(path)


def own_for_container(path: Path) -> None:
    """Hand a host tree to the container's uid, which must write state and staging there."""
    for p in [path, *path.rglob("*")]:
        os.chown(p, RUNTIME_UID, RUNTIME_UID, follow_symlinks=False)


@dataclass
class Setup:
    """A manifest and a models folder on the host, ready to mount."""

    root: Path
    manifest: Path
    models: Path

    def mounts(self, *, models_mode: str = "rw") -> dict[str, dict[str, str]]:
        return {str(self.models): {"bind": "/models", "mode": models_mode},
                str(self.manifest): {"bind": "/etc/preflight/manifest.yaml", "mode": "ro"}}


def make_setup(root: Path, *, ready: bool) -> Setup:
    models = root / "models"
    models.mkdir(parents=True)
    if ready:
        write_tiny_hf_dir(models / "vllm" / "tiny")
        write_tiny_gguf(models / "gguf" / "tiny.gguf")
    manifest = root / "manifest.yaml"
    manifest.write_text(MANIFEST)
    own_for_container(models)
    return Setup(root, manifest, models)


def corrupt(setup: Setup) -> None:
    """Truncate the safetensors file: a size check catches it, no hashing needed."""
    weights = setup.models / "vllm" / "tiny" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])


@pytest.fixture
def ready_setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path / "ready", ready=True)


@pytest.fixture
def empty_setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path / "empty", ready=False)


@pytest.fixture
def container_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The Hub test server on 127.0.0.1 serving org/tiny and org/tiny-gguf."""
    from tests.hubserver import HubServer

    src = tmp_path_factory.mktemp("hub-src")
    folder = write_tiny_hf_dir(src / "tiny")
    gguf_file = write_tiny_gguf(src / "tiny.gguf")
    with HubServer("127.0.0.1") as server:
        server.add_repo("org/tiny", {p.name: p for p in folder.iterdir()})
        server.add_repo("org/tiny-gguf", {"tiny.gguf": gguf_file})
        yield server


# --------------------------------------------------------------------------- running


@dataclass
class Finished:
    exit_code: int
    logs: str  # stdout and stderr as the engine interleaved them
    stdout: str = ""  # stdout alone (a JSON answer without stderr lines cut into it)


def run_container(client: Any, image: str, command: list[str] | None = None, *, timeout: float = 180,
                  **kwargs: Any) -> Finished:
    """Run to completion and remove; returns the exit code, the combined log and stdout alone."""
    labels = {TEST_LABEL: "1", **kwargs.pop("labels", {})}
    container = client.containers.create(image, command, labels=labels, detach=True, **kwargs)
    try:
        container.start()
        deadline = time.monotonic() + timeout
        status = container.wait(timeout=max(1.0, deadline - time.monotonic()))
        logs = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        return Finished(int(status["StatusCode"]), logs, stdout)
    finally:
        container.remove(force=True)


HARDENED: dict[str, Any] = {
    "read_only": True,
    "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "user": f"{RUNTIME_UID}:{RUNTIME_UID}",
}


# --------------------------------------------------------------------------- compose


def compose_bin() -> str:
    found = shutil.which("docker-compose")
    if not found:
        unavailable("docker-compose is not installed")
    return found


def compose_config(env: dict[str, str], *files: Path, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """`docker-compose config` of the files (default: the shipped docker-compose.yml), parsed."""
    import yaml

    args = [compose_bin()]
    for f in files or (COMPOSE / "docker-compose.yml",):
        args += ["-f", str(f)]
    for p in profiles:
        args += ["--profile", p]
    # Settings the caller's shell may have exported (PREFLIGHT_IMAGE, MODELS_PATH, …) would
    # change what `config` prints; only `env` sets them here.
    read = {name for f in COMPOSE.glob("docker-compose*.yml") for name in re.findall(r"\$\{(\w+)", f.read_text())}
    base = {k: v for k, v in os.environ.items() if k not in read}
    proc = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60,
                          env={**base, **env}, cwd=COMPOSE)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def mount(volume: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read-only) from either volume syntax `config` may print."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"], bool(volume.get("read_only", False))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def compose_containers(client: Any, project: str) -> dict[str, Any]:
    """The project's containers by service name (one-off `run` containers excluded)."""
    found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels["com.docker.compose.service"]: c for c in found if c.labels.get("com.docker.compose.oneoff") != "True"}


def docker_time(stamp: str) -> datetime:
    """A Docker timestamp (nanoseconds, Z) as a datetime, to compare start and finish."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")


def served_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file a server sees under `folder`, through the lane paths (a folder
    lane is a link to its revision; hidden revision folders and the state folder are not
    walked on their own)."""
    import hashlib

    out = {}
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return dict(sorted(out.items()))
