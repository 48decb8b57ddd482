"""`preflight docker check|sync`: what it hands the engine, and real runs through the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from preflight.docker import MANIFEST_MOUNT, MODELS_MOUNT, RUN_LABEL, TOKEN_MOUNT, DockerRun, staged_token
from preflight.errors import UsageError
from tests.docker_fixtures import Setup, corrupt, make_setup, served_digests, write_tiny_gguf, write_tiny_hf_dir

SECRET = "hf_secret_value_never_in_config"


def preflight(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from preflight.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


_digests = served_digests


# --------------------------------------------------------------------------- without an engine


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path, ready=False)


def test_check_mounts_models_read_only_and_runs_hardened(setup: Setup) -> None:
    kw = DockerRun("check", image="img", host_dir=setup.models, manifest=setup.manifest, args=("--json",)).container_kwargs()
    assert kw["command"] == ["check", "--json"]
    assert kw["volumes"][str(setup.models.resolve())] == {"bind": MODELS_MOUNT, "mode": "ro"}
    assert kw["volumes"][str(setup.manifest.resolve())] == {"bind": MANIFEST_MOUNT, "mode": "ro"}
    assert kw["read_only"] is True and kw["cap_drop"] == ["ALL"] and "/tmp" in kw["tmpfs"]
    assert kw["environment"]["PREFLIGHT_MANIFEST"] == MANIFEST_MOUNT


def test_sync_mounts_a_named_volume_writable() -> None:
    kw = DockerRun("sync", volume="models", network="host").container_kwargs()
    assert kw["volumes"] == {"models": {"bind": MODELS_MOUNT, "mode": "rw"}}
    assert kw["network_mode"] == "host"


def test_token_travels_only_as_a_mounted_file(setup: Setup) -> None:
    token = setup.root / "token"
    token.write_text(SECRET)
    token.chmod(0o600)
    spec = DockerRun("sync", host_dir=setup.models, token_file=token)
    with staged_token(token) as staged:
        assert staged is not None and staged.read_text() == SECRET
        assert staged.stat().st_mode & 0o777 == 0o444
        assert staged.parent.stat().st_mode & 0o777 == 0o700
        kw = spec.container_kwargs(staged)
        assert kw["volumes"][str(staged)] == {"bind": TOKEN_MOUNT, "mode": "ro"}
    assert not staged.parent.exists()
    assert kw["environment"]["PREFLIGHT_TOKEN_FILE"] == kw["environment"]["HF_TOKEN_PATH"] == TOKEN_MOUNT
    assert SECRET not in json.dumps(kw)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of --host-dir and --volume"),
    ({"volume": "v", "host_dir": Path(".")}, "exactly one of --host-dir and --volume"),
    ({"volume": "v", "env": {"HF_TOKEN": SECRET}}, "must not travel as an environment value"),
    ({"volume": "v", "manifest": Path("no/such/manifest.yaml")}, "no such file"),
])
def test_bad_combinations_are_usage_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        DockerRun("check", **kwargs)
    assert info.value.exit_code == 2
    assert SECRET not in str(info.value)


def test_token_in_env_flag_is_refused_with_exit_2(setup: Setup) -> None:
    done = preflight("docker", "sync", "--host-dir", str(setup.models), "--env", f"HF_TOKEN={SECRET}")
    assert done.returncode == 2
    assert "--token-file" in done.stderr and SECRET not in done.stderr


def test_unreachable_engine_is_exit_2_with_a_reason(setup: Setup, tmp_path: Path) -> None:
    done = preflight("docker", "check", "--host-dir", str(setup.models),
                     env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert done.returncode == 2, done.stderr
    assert "cannot reach the Docker engine" in done.stderr


# --------------------------------------------------------------------------- on the engine


@pytest.fixture
def no_leftovers(docker_client: Any) -> Iterator[None]:
    yield
    left = docker_client.containers.list(all=True, filters={"label": RUN_LABEL})
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.fixture
def named_volume(docker_client: Any) -> Iterator[str]:
    name = f"lpftest-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        docker_client.volumes.get(name).remove(force=True)
    except Exception:  # never created: nothing to clean
        pass


def _hub_args(container_hub: Any) -> list[str]:
    return ["--network", "host", *[a for k, v in container_hub.env(token=False).items() for a in ("--env", f"{k}={v}")]]


@pytest.mark.docker
def test_missing_image_says_how_to_build_it(docker_client: Any, setup: Setup) -> None:
    done = preflight("docker", "check", "--host-dir", str(setup.models), "--image", "lane-preflight:no-such-tag")
    assert done.returncode == 2
    assert "not on this Docker engine" in done.stderr and "ops/build-image.sh" in done.stderr


@pytest.mark.docker
def test_check_host_dir_ready_then_corrupt(docker_client: Any, preflight_image: str, ready_setup: Setup,
                                           no_leftovers: None) -> None:
    args = ["docker", "check", "--image", preflight_image, "--host-dir", str(ready_setup.models),
            "--manifest", str(ready_setup.manifest)]
    ok = preflight(*args, "--", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "ready"
    corrupt(ready_setup)
    before = _digests(ready_setup.models)
    bad = preflight(*args)
    assert bad.returncode == 1, bad.stderr
    assert "tiny" in bad.stderr
    assert _digests(ready_setup.models) == before


@pytest.mark.docker
def test_sync_host_dir_from_the_hub(docker_client: Any, preflight_image: str, setup: Setup, container_hub: Any,
                                    tmp_path: Path, no_leftovers: None) -> None:
    done = preflight("docker", "sync", "--image", preflight_image, "--host-dir", str(setup.models),
                     "--manifest", str(setup.manifest), *_hub_args(container_hub))
    assert done.returncode == 0, done.stderr
    expected = tmp_path / "expected"
    write_tiny_hf_dir(expected / "vllm" / "tiny")
    write_tiny_gguf(expected / "gguf" / "tiny.gguf")
    assert _digests(setup.models) == _digests(expected)


@pytest.mark.docker
def test_sync_then_check_a_named_volume(docker_client: Any, preflight_image: str, setup: Setup, container_hub: Any,
                                        named_volume: str, no_leftovers: None) -> None:
    common = ["--image", preflight_image, "--volume", named_volume, "--manifest", str(setup.manifest)]
    missing = preflight("docker", "check", *common)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    synced = preflight("docker", "sync", *common, *_hub_args(container_hub))
    assert synced.returncode == 0, synced.stderr
    checked = preflight("docker", "check", *common, "--network", "none")
    assert checked.returncode == 0, checked.stderr


@pytest.mark.docker
def test_gated_repo_needs_the_token_file(docker_client: Any, preflight_image: str, setup: Setup, container_hub: Any,
                                         tmp_path: Path, no_leftovers: None) -> None:
    container_hub.add_repo("org/tiny", {p.name: p for p in write_tiny_hf_dir(tmp_path / "gated").iterdir()}, gated=True)
    common = ["docker", "sync", "--image", preflight_image, "--host-dir", str(setup.models),
              "--manifest", str(setup.manifest), *_hub_args(container_hub)]
    refused = preflight(*common)
    assert refused.returncode == 4, refused.stderr
    token = tmp_path / "token"
    token.write_text(container_hub.token + "\n")
    token.chmod(0o600)
    allowed = preflight(*common, "--token-file", str(token))
    assert allowed.returncode == 0, allowed.stderr
    assert container_hub.token not in allowed.stderr + allowed.stdout


@pytest.mark.docker
def test_manifest_error_in_the_container_is_exit_2(docker_client: Any, preflight_image: str, setup: Setup,
                                                    no_leftovers: None) -> None:
    setup.manifest.write_text("version: 1\nlanes:\n  - name: x\n    kind: no-such-kind\n    path: x\n")
    done = preflight("docker", "check", "--image", preflight_image, "--host-dir", str(setup.models),
                     "--manifest", str(setup.manifest), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no-such-kind" in done.stderr and "kind" in done.stderr
