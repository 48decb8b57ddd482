"""oci:// against a real registry (the CNCF distribution registry, Debian's docker-registry):
push → sync round trips, artifacts made by other packers (olot, oras), every artifact
family's layout, auth (htpasswd basic, Docker config.json, the bearer-token flow), and
faults (a corrupted blob, a killed pull, 401, an unknown tag, a hostile tar, a registry
that is down). Every test runs the real command and asserts what a user sees."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.oci_servers import PASSWORD, USER, FaultProxy, Pusher, RegistryServer, free_port, tar_bytes
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
