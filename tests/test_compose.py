"""compose/docker-compose.yml: its wiring, and `docker-compose up` on the real engine with
stand-in inference services that record when they started and what they saw."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.docker_fixtures import (
    COMPOSE,
    TEST_LABEL,
    Setup,
    compose_bin,
    compose_config,
    compose_containers,
    corrupt,
    docker_time,
    mount,
)

SERVERS = ("vllm", "llamacpp")


def test_servers_wait_for_the_init_service_to_succeed() -> None:
    services = compose_config({})["services"]
    for name in SERVERS:
        assert services[name]["depends_on"] == {"models-preflight": {"condition": "service_completed_successfully"}}


def test_init_service_is_hardened_and_gets_the_token_as_a_secret_file() -> None:
    svc = compose_config({})["services"]["models-preflight"]
    assert svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"]
    assert "/tmp" in svc["tmpfs"]
    assert svc["secrets"] == [{"source": "hf_token"}] or svc["secrets"] == ["hf_token"]
    env = svc["environment"]
    assert env["PREFLIGHT_TOKEN_FILE"] == env["HF_TOKEN_PATH"] == "/run/secrets/hf_token"
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} & set(env)


def test_host_folder_images_and_files_follow_the_environment(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    config = compose_config({"MODELS_PATH": str(tmp_path), "PREFLIGHT_IMAGE": "pf:1", "VLLM_IMAGE": "v:1",
                      "LLAMACPP_IMAGE": "l:1", "HF_TOKEN_FILE": str(token), "PREFLIGHT_PROFILE": "minimal"})
    services = config["services"]
    assert (services["models-preflight"]["image"], services["vllm"]["image"], services["llamacpp"]["image"]) == ("pf:1", "v:1", "l:1")
    assert services["models-preflight"]["environment"]["PREFLIGHT_PROFILE"] == "minimal"
    for name in ("models-preflight", *SERVERS):
        mounts = [mount(v) for v in services[name]["volumes"]]
        assert [(src, ro) for src, dst, ro in mounts if dst == "/models"] == [(str(tmp_path), name != "models-preflight")], name
    assert config["secrets"]["hf_token"]["file"] == str(token)


def test_servers_serve_paths_of_the_minimal_profile() -> None:
    from preflight.manifest import load_manifest

    manifest = load_manifest(COMPOSE / "manifest.yaml", env={})
    minimal = {f"/models/{lane.path}" for lane in manifest.select("minimal")}
    services = compose_config({})["services"]
    assert any(arg.split("=", 1)[-1] in minimal for arg in services["vllm"]["command"])
    assert set(services["llamacpp"]["command"]) & minimal


def test_minimal_profile_adds_the_smoke_test() -> None:
    services = compose_config({}, profiles=("minimal",))["services"]
    assert [name for name, svc in services.items() if "minimal" in svc.get("profiles", ())] == ["smoke"]
    assert not any(svc.get("profiles") for name, svc in services.items() if name != "smoke")
    smoke = services["smoke"]
    assert smoke["command"] == ["smoke"]
    assert set(smoke["depends_on"]) == set(SERVERS)


# --------------------------------------------------------------------------- on the engine


def _stand_in_compose(path: Path) -> Path:
    """The shipped file with the servers swapped for stand-ins: no GPU reservation and no
    published ports (a test host has neither); each records its start and what it saw."""
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    for name in SERVERS:
        svc = doc["services"][name]
        svc.pop("deploy", None)
        svc.pop("ports", None)
        svc["entrypoint"] = ["/bin/sh", "-c",
                             f"date +%s.%N > /markers/{name}; ls -R /models > /markers/{name}.models", name]
        svc["command"] = []
        svc["volumes"] = [*svc["volumes"], "${MARKERS}:/markers"]
        svc["network_mode"] = "none"
    preflight = doc["services"]["models-preflight"]
    preflight["network_mode"] = "none"
    preflight["labels"] = {TEST_LABEL: "1"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def compose_project(docker_client: Any, preflight_image: str, base_image: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    project = f"lpftest{uuid.uuid4().hex[:8]}"
    markers = tmp_path / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    env = {"COMPOSE_PROJECT_NAME": project, "PREFLIGHT_IMAGE": preflight_image, "VLLM_IMAGE": base_image,
           "LLAMACPP_IMAGE": base_image, "HF_HUB_OFFLINE": "1", "MARKERS": str(markers),
           "VLLM_MODEL": "vllm/tiny", "LLAMACPP_MODEL": "gguf/tiny.gguf", "HF_TOKEN_FILE": str(COMPOSE / "no-token")}
    file = _stand_in_compose(tmp_path / "docker-compose.yml")
    yield {"project": project, "env": env, "file": file, "markers": markers}
    subprocess.run([compose_bin(), "-f", str(file), "down", "-v", "--remove-orphans", "-t", "1"],
                   env={**os.environ, **env}, capture_output=True, timeout=120, cwd=tmp_path)


def _up(cp: dict[str, Any], setup: Setup) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cp["env"], "MODELS_PATH": str(setup.models), "PREFLIGHT_MANIFEST_FILE": str(setup.manifest)}
    return subprocess.run([compose_bin(), "-f", str(cp["file"]), "up", "-d", "--no-color"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=cp["file"].parent)


def _wait_exited(containers: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        containers[name].wait(timeout=60)
        containers[name].reload()


@pytest.mark.docker
def test_servers_start_after_the_init_service_exits_0(docker_client: Any, compose_project: dict[str, Any],
                                                      ready_setup: Setup) -> None:
    up = _up(compose_project, ready_setup)
    assert up.returncode == 0, up.stderr
    containers = compose_containers(docker_client, compose_project["project"])
    _wait_exited(containers, ("models-preflight", *SERVERS))
    init = containers["models-preflight"].attrs["State"]
    assert init["ExitCode"] == 0
    for name in SERVERS:
        assert (compose_project["markers"] / name).exists(), f"{name} never started"
        started = docker_time(containers[name].attrs["State"]["StartedAt"])
        assert started >= docker_time(init["FinishedAt"]), f"{name} started before the init service finished"
    assert "tiny.gguf" in (compose_project["markers"] / "llamacpp.models").read_text()
    assert "config.json" in (compose_project["markers"] / "vllm.models").read_text()


@pytest.mark.docker
def test_servers_never_start_when_the_init_service_fails(docker_client: Any, compose_project: dict[str, Any],
                                                         ready_setup: Setup) -> None:
    corrupt(ready_setup)
    up = _up(compose_project, ready_setup)
    assert up.returncode != 0
    containers = compose_containers(docker_client, compose_project["project"])
    _wait_exited(containers, ("models-preflight",))
    assert containers["models-preflight"].attrs["State"]["ExitCode"] == 1
    assert "model.safetensors" in containers["models-preflight"].logs().decode("utf-8", "replace")
    assert not list(compose_project["markers"].iterdir())
    for name in SERVERS:
        if name in containers:
            containers[name].reload()
            assert containers[name].attrs["State"]["StartedAt"].startswith("0001-01-01"), f"{name} was started"
