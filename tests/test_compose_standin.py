"""compose/docker-compose.standin.yml: the shipped CPU stand-in stack.

Its wiring is compared with docker-compose.yml; its parts (mirror writer, stand-in
servers, manifest) run on the host against the real preflight; and the documented
command brings the whole stack up offline on the real engine.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.docker_fixtures import (
    BASE_IMAGE,
    COMPOSE,
    RUNTIME_UID,
    compose_bin,
    compose_config,
    compose_containers,
    docker_time,
    mount,
)

STANDIN = COMPOSE / "docker-compose.standin.yml"
STANDIN_DIR = COMPOSE / "standin"
MANIFEST = STANDIN_DIR / "manifest.yaml"
SERVERS = ("vllm", "llamacpp")
LOCAL_IMAGES = {"lane-preflight:latest", BASE_IMAGE}


def preflight(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from preflight.cli import main; main()", *args, "--termination-log", ""],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- wiring


def test_init_service_is_the_shipped_one_with_the_mirror_as_its_only_input() -> None:
    real = compose_config({})["services"]["models-preflight"]
    stand = compose_config({}, STANDIN)["services"]["models-preflight"]
    for key in ("image", "command", "read_only", "cap_drop", "security_opt", "tmpfs", "secrets", "restart"):
        assert stand[key] == real[key], key
    assert {k: v for k, v in stand["environment"].items() if k != "STANDIN_MIRROR"} == real["environment"]
    assert stand["network_mode"] == "none"
    assert stand["depends_on"] == {"mirror": {"condition": "service_completed_successfully"}}
    mounts = {dst: (src, ro) for src, dst, ro in map(mount, stand["volumes"])}
    assert mounts["/models"] == ("standin-models", False)
    assert mounts["/mirror"] == ("standin-mirror", True)
    assert mounts["/etc/preflight/manifest.yaml"] == (str(MANIFEST), True)


def test_stand_ins_wait_like_the_real_servers_and_need_no_gpu_or_registry(tmp_path: Path) -> None:
    real = compose_config({})["services"]
    config = compose_config({"MODELS_PATH": str(tmp_path)}, STANDIN)
    services = config["services"]
    assert {svc["image"] for svc in services.values()} <= LOCAL_IMAGES
    for name in SERVERS:
        svc = services[name]
        assert svc["depends_on"] == real[name]["depends_on"]
        assert "deploy" not in svc
        assert svc["user"] == f"{RUNTIME_UID}:{RUNTIME_UID}" and svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert (str(tmp_path), "/models", True) in [mount(v) for v in svc["volumes"]]
        assert [p["host_ip"] if isinstance(p, dict) else p.split(":")[0] for p in svc["ports"]] == ["127.0.0.1"], name
    assert set(services["smoke"]["depends_on"]) == set(SERVERS)
    assert services["mirror"]["network_mode"] == "none"


# --------------------------------------------------------------------------- parts, on the host


def _mirror(root: Path) -> Path:
    done = subprocess.run([sys.executable, str(STANDIN_DIR / "mirror.py"), str(root)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return root


def _listening(proc: subprocess.Popen[str], deadline_s: float = 60) -> int:
    """The port from the server's first line; fails with its stderr if it exits first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + deadline_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if not line:
                    break
                if " on 127.0.0.1:" in line:
                    return int(line.rsplit(":", 1)[1])
    proc.kill()
    pytest.fail(f"stand-in did not listen (exit {proc.wait()}): {proc.stderr.read() if proc.stderr else ''}")


@pytest.fixture
def synced(tmp_path: Path) -> tuple[dict[str, str], Path]:
    mirror = _mirror(tmp_path / "mirror")
    models = tmp_path / "models"
    models.mkdir()
    env = {"STANDIN_MIRROR": str(mirror), "MODELS_PATH": str(models)}
    done = preflight("sync", "-m", str(MANIFEST), env=env)
    assert done.returncode == 0, done.stderr
    return env, models


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(STANDIN_DIR / "server.py"), *args, "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def stand_ins(synced: tuple[dict[str, str], Path]) -> Iterator[dict[str, str]]:
    env, models = synced
    procs = [_serve("vllm", "--model", str(models / "vllm/tiny-llm"), "--served-model-name", "tiny-llm"),
             _serve("llama.cpp", "--model", str(models / "gguf/tiny.gguf"))]
    try:
        ports = [_listening(p) for p in procs]
        yield {**env, "VLLM_URL": f"http://127.0.0.1:{ports[0]}", "LLAMACPP_URL": f"http://127.0.0.1:{ports[1]}"}
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def test_mirror_output_passes_sync_with_the_pinned_digests(synced: tuple[dict[str, str], Path]) -> None:
    env, models = synced
    done = preflight("check", "-m", str(MANIFEST), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [lane["status"] for lane in json.loads(done.stdout)["lanes"]] == ["ready", "ready"]
    assert sorted(str(p.relative_to(models)) for p in [models / "gguf/tiny.gguf", *(models / "vllm/tiny-llm").iterdir()]) == [
        "gguf/tiny.gguf", "vllm/tiny-llm/config.json", "vllm/tiny-llm/model.safetensors",
        "vllm/tiny-llm/tokenizer.json", "vllm/tiny-llm/tokenizer_config.json"]
    assert (models / "vllm/tiny-llm").is_symlink()  # the folder lane is one revision, switched by one link


def test_mirror_models_load_in_the_real_loaders(tmp_path: Path) -> None:
    """The stand-ins only pretend to serve; the files are real models: llama.cpp loads the
    GGUF and generates from it, safetensors reads every tensor the config asks for."""
    from safetensors import safe_open

    mirror = _mirror(tmp_path / "mirror")
    config = json.loads((mirror / "tiny-llm/config.json").read_text())
    with safe_open(str(mirror / "tiny-llm/model.safetensors"), "np") as f:
        shapes = {name: f.get_tensor(name).shape for name in f.keys()}
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == (config["vocab_size"], config["hidden_size"])
    assert len([n for n in shapes if n.startswith("model.layers.")]) == 9 * config["num_hidden_layers"]

    pytest.importorskip("llama_cpp", reason="llama.cpp's bindings (ops/oracle-llama.sh) are not installed")
    probe = ("import json, sys, llama_cpp\n"
             "m = llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=False)\n"
             "out = m.create_completion('Hello world', max_tokens=1, temperature=0)\n"
             "print(json.dumps({'vocab': m.n_vocab(), 'choices': len(out['choices'])}))\n")
    # A subprocess: a model llama.cpp cannot load may abort the process rather than raise.
    done = subprocess.run([sys.executable, "-c", probe, str(mirror / "tiny.gguf")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"vocab": config["vocab_size"], "choices": 1}


def test_a_changed_mirror_byte_fails_the_sync(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path / "mirror")
    gguf = mirror / "tiny.gguf"
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    (tmp_path / "models").mkdir()
    done = preflight("sync", "-m", str(MANIFEST), "--json",
                     env={"STANDIN_MIRROR": str(mirror), "MODELS_PATH": str(tmp_path / "models")})
    assert done.returncode == 3, done.stderr  # the copy fails the pinned digest before it is published
    lanes = {lane["name"]: lane for lane in json.loads(done.stdout)["lanes"]}
    assert lanes["tiny-llm"]["status"] == "ready"
    assert "fetch-failed" in {p["code"] for p in lanes["tiny-gguf"]["problems"]}
    assert "the bytes copied from the mirror hash to sha256" in done.stderr and "pinned at" in done.stderr
    assert not (tmp_path / "models/gguf/tiny.gguf").exists()


def test_smoke_passes_against_the_stand_ins(stand_ins: dict[str, str]) -> None:
    done = preflight("smoke", "-m", str(MANIFEST), "--json", "--deadline", "60", "--interval", "0.2", env=stand_ins)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(e["name"], e["status"]) for e in report["endpoints"]] == [("tiny-llm", "ready"), ("tiny-gguf", "ready")]
    checks = {e["name"]: [c["name"] for c in e["checks"]] for e in report["endpoints"]}
    assert checks == {"tiny-llm": ["health", "models", "completion"], "tiny-gguf": ["health", "models", "completion"]}


def test_smoke_fails_when_the_stand_in_serves_another_model(stand_ins: dict[str, str]) -> None:
    done = preflight("smoke", "--endpoint", f"coder=vllm@{stand_ins['VLLM_URL']}#coder", "--json", "--deadline", "60")
    assert done.returncode == 1, done.stderr
    (endpoint,) = json.loads(done.stdout)["endpoints"]
    assert [p["code"] for p in endpoint["problems"]] == ["model-mismatch"]


@pytest.mark.parametrize("kind,target,damaged,damage,said", [
    ("vllm", "vllm/tiny-llm", "model.safetensors", lambda b: b[:-100], "the header describes"),
    ("vllm", "vllm/tiny-llm", "config.json", lambda b: b[:6], "config.json"),
    ("llama.cpp", "gguf/tiny.gguf", "", lambda b: b"PK\x03\x04" + b[4:], "not a GGUF file"),
])
def test_stand_in_refuses_a_broken_model_before_it_listens(synced: tuple[dict[str, str], Path], kind: str, target: str,
                                                          damaged: str, damage: Any, said: str) -> None:
    _env, models = synced
    path = models / target / damaged if damaged else models / target
    path.write_bytes(damage(path.read_bytes()))
    done = subprocess.run([sys.executable, str(STANDIN_DIR / "server.py"), kind, "--model", str(models / target),
                           "--host", "127.0.0.1", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot load the model" in done.stderr and said in done.stderr and str(path) in done.stderr
    assert "serving" not in done.stdout


# --------------------------------------------------------------------------- on the engine


@pytest.fixture
def standin_project(docker_client: Any, preflight_image: str, base_image: str) -> Iterator[dict[str, str]]:
    env = {"COMPOSE_PROJECT_NAME": f"lpfstandin{uuid.uuid4().hex[:8]}", "PREFLIGHT_IMAGE": preflight_image,
           "STANDIN_IMAGE": base_image, "VLLM_PORT": "0", "LLAMACPP_PORT": "0"}
    yield env
    subprocess.run([compose_bin(), "-f", str(STANDIN), "down", "-v", "--remove-orphans", "-t", "5"],
                   env={**os.environ, **env}, capture_output=True, timeout=180, cwd=COMPOSE)


def _run_smoke(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The documented command: `docker-compose -f docker-compose.standin.yml run --rm smoke`."""
    return subprocess.run([compose_bin(), "-f", STANDIN.name, "run", "--rm", "smoke"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600, cwd=COMPOSE)


@pytest.mark.docker
def test_documented_command_brings_the_wiring_up_offline_and_smoke_passes(docker_client: Any,
                                                                        standin_project: dict[str, str]) -> None:
    done = _run_smoke(standin_project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "preflight smoke: ready (2 endpoints" in done.stdout + done.stderr
    containers = compose_containers(docker_client, standin_project["COMPOSE_PROJECT_NAME"])
    assert set(containers) == {"mirror", "models-preflight", *SERVERS}
    init = containers["models-preflight"].attrs
    assert init["State"]["ExitCode"] == 0 and init["HostConfig"]["NetworkMode"] == "none"
    assert "preflight sync: ready (2 lanes" in containers["models-preflight"].logs().decode("utf-8", "replace")
    for name in SERVERS:
        state = containers[name].attrs["State"]
        assert state["Running"], f"{name} is not running"
        assert docker_time(state["StartedAt"]) >= docker_time(init["State"]["FinishedAt"]), f"{name} started before preflight finished"
    # The published ports answer from the host, as `up -d` leaves them for a user to try.
    port = containers["vllm"].attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"http://127.0.0.1:{port}/v1/models", timeout=30) as resp:
        assert [m["id"] for m in json.load(resp)["data"]] == ["tiny-llm"]

    # Again: preflight runs a second time, finds the volume ready and fetches nothing.
    again = _run_smoke(standin_project)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = containers["models-preflight"].logs().decode("utf-8", "replace").split("preflight sync: ready")
    assert len(runs) == 3 and "fetched" in runs[0] and "fetched" not in runs[1], runs


@pytest.mark.docker
def test_stand_ins_never_start_when_preflight_cannot_write_the_models_folder(docker_client: Any, standin_project: dict[str, str],
                                                                            tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    done = _run_smoke({**standin_project, "MODELS_PATH": str(models)})
    assert done.returncode != 0
    containers = compose_containers(docker_client, standin_project["COMPOSE_PROJECT_NAME"])
    init = containers["models-preflight"]
    init.reload()
    assert init.attrs["State"]["ExitCode"] not in (0, None)
    assert "/models" in init.logs().decode("utf-8", "replace")
    for name in SERVERS:
        if name in containers:
            containers[name].reload()
            assert containers[name].attrs["State"]["StartedAt"].startswith("0001-01-01"), f"{name} was started"
    assert not list(models.iterdir())
