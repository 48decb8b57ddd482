"""`preflight docker check|sync`: run the preflight image against a host folder or a
named volume through the local Docker engine.

The container gets the hardening of the Kubernetes manifests (read-only root, tmpfs
/tmp, no capabilities, no privilege escalation, uid 65532 from the image), so a run
here predicts a run in the cluster. The Docker SDK is imported only when a command
runs: it is the optional `docker` extra.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
from dataclasses import field
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

import click

from .cli import guarded, opt
from .errors import UsageError
from .record import record

DEFAULT_IMAGE = "lane-preflight:latest"
MODELS_MOUNT = "/models"
MANIFEST_MOUNT = "/etc/preflight/manifest.yaml"
TOKEN_MOUNT = "/run/secrets/hf-token"
RUN_LABEL = "io.lane-preflight.run"
BUILD_HINT = (
    "build it from a checkout with ops/build-image.sh (no registry needed: it builds the base image with "
    "debootstrap on first use, as root, then tags lane-preflight:latest), or pass --image"
)
SECRET_ENV_NAMES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN"})


@record(frozen=True)
class DockerRun:
    """One `preflight <command>` run inside the image; what to mount and pass."""

    command: str
    image: str = DEFAULT_IMAGE
    host_dir: Path | None = None
    volume: str | None = None
    manifest: Path | None = None
    token_file: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    network: str | None = None
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.command not in ("check", "sync"):
            raise UsageError(f"unknown command {self.command!r}; expected check or sync")
        if (self.host_dir is None) == (self.volume is None):
            raise UsageError("give exactly one of --host-dir and --volume")
        if self.host_dir is not None and not self.host_dir.is_dir():
            raise UsageError(f"--host-dir {self.host_dir}: not a folder")
        if self.manifest is not None and not self.manifest.is_file():
            raise UsageError(f"--manifest {self.manifest}: no such file")
        if self.token_file is not None and not self.token_file.is_file():
            raise UsageError(f"--token-file {self.token_file}: no such file")
        leaked = sorted(SECRET_ENV_NAMES.intersection(self.env))
        if leaked:
            raise UsageError(
                f"--env {leaked[0]}=…: a token must not travel as an environment value",
                hint="pass it with --token-file FILE; it is mounted read-only into the container",
            )

    @property
    def read_only_models(self) -> bool:
        return self.command == "check"

    def container_kwargs(self, token_path: Path | None = None) -> dict[str, Any]:
        """Arguments for `client.containers.create`; `token_path` is the host file to mount."""
        mode = "ro" if self.read_only_models else "rw"
        source = str(self.host_dir.resolve()) if self.host_dir is not None else self.volume
        volumes: dict[str, dict[str, str]] = {source: {"bind": MODELS_MOUNT, "mode": mode}}
        environment = dict(self.env)
        environment["PREFLIGHT_MODELS_DIR"] = MODELS_MOUNT
        if self.manifest is not None:
            volumes[str(self.manifest.resolve())] = {"bind": MANIFEST_MOUNT, "mode": "ro"}
            environment["PREFLIGHT_MANIFEST"] = MANIFEST_MOUNT
        if token_path is not None:
            volumes[str(token_path)] = {"bind": TOKEN_MOUNT, "mode": "ro"}
            environment["PREFLIGHT_TOKEN_FILE"] = TOKEN_MOUNT
            environment["HF_TOKEN_PATH"] = TOKEN_MOUNT
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": [self.command, *self.args],
            "volumes": volumes,
            "environment": environment,
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=256m"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "labels": {RUN_LABEL: self.command},
            "detach": True,
        }
        if self.network:
            kwargs["network_mode"] = self.network
        return kwargs


def run(spec: DockerRun, *, client: Any = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the container to completion, streaming its output; returns its exit code.

    The output is decoded and written as text to sys.stdout / sys.stderr (by default),
    so it passes the CLI's secret masking like every other line. The container is
    removed afterwards whatever happens. On Ctrl-C it is stopped and KeyboardInterrupt
    propagates (the CLI turns it into exit code 130).
    """
    docker = _import_docker()
    client = client or connect()
    try:
        client.images.get(spec.image)
    except docker.errors.ImageNotFound:
        raise UsageError(f"image {spec.image} is not on this Docker engine", hint=BUILD_HINT) from None
    if spec.volume is not None and spec.command == "check":
        try:
            client.volumes.get(spec.volume)
        except docker.errors.NotFound:
            raise UsageError(f"volume {spec.volume} does not exist", hint="`preflight docker sync --volume` creates and fills it") from None
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    with staged_token(spec.token_file) as token_path:
        try:
            container = client.containers.create(**spec.container_kwargs(token_path))
        except docker.errors.APIError as exc:
            raise UsageError(f"the Docker engine refused the container: {exc.explanation or exc}") from None
        try:
            # Attached before start: attaching to a container that already exited never returns.
            output = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
            container.start()
            # A chunk may end inside a UTF-8 sequence; each stream keeps its own decoder.
            streams = ((out, codecs.getincrementaldecoder("utf-8")("replace")),
                       (err, codecs.getincrementaldecoder("utf-8")("replace")))
            for chunks in output:
                for (stream, decoder), chunk in zip(streams, chunks):
                    if chunk:
                        stream.write(decoder.decode(chunk))
                        stream.flush()
            for stream, decoder in streams:
                stream.write(decoder.decode(b"", final=True))
                stream.flush()
            return int(container.wait()["StatusCode"])
        except KeyboardInterrupt:
            container.stop(timeout=10)
            raise
        finally:
            container.remove(force=True)


def connect() -> Any:
    """A client for the engine named by DOCKER_HOST (default: the local socket)."""
    docker = _import_docker()
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "the local socket")
        raise UsageError(f"cannot reach the Docker engine at {where}: {exc}", hint="start the engine or set DOCKER_HOST") from None
    return client


@contextlib.contextmanager
def staged_token(token_file: Path | None) -> Iterator[Path | None]:
    """A private, world-readable copy of the token file, removed afterwards.

    The container runs as uid 65532, which cannot read a token file that is private to
    the calling user; the copy sits in a 0700 folder so only the container sees it.
    """
    if token_file is None:
        yield None
        return
    from .volume import private_copy

    copy, remove = private_copy(token_file.read_bytes(), "token", 0o444)
    try:
        yield copy
    finally:
        remove()


def _import_docker() -> Any:
    try:
        import docker
    except ImportError:
        from .errors import MissingExtra

        raise MissingExtra("`preflight docker`", "docker", "docker") from None
    return docker


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def _options(fn):
    decorators = [
        opt("--host-dir", type=click.Path(file_okay=False, path_type=Path), help="Host folder mounted at /models."),
        opt("--volume", default=None, help="Named Docker volume mounted at /models."),
        opt("--image", default=DEFAULT_IMAGE, show_default=True, help="The lane-preflight image."),
        opt("--manifest", "-m", default=None, type=click.Path(dir_okay=False, path_type=Path), help="Host manifest, mounted read-only at /etc/preflight/manifest.yaml."),
        opt("--token-file", default=None, type=click.Path(dir_okay=False, path_type=Path), help="Host file holding the Hub token; mounted read-only, never passed as a value."),
        click.option("--env", "-e", "env", multiple=True, metavar="NAME=VALUE", help="Environment for the container (repeatable)."),
        opt("--network", default=None, help="Docker network for the container (e.g. host)."),
        click.argument("args", nargs=-1, type=click.UNPROCESSED),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


@click.group("docker")
def docker_group() -> None:
    """Run the lane-preflight image against a host folder or a named volume.

    \b
    The container runs as uid 65532 with a read-only root, so a host folder must be
    writable by that uid for sync (e.g. `chown -R 65532:65532 DIR`). Arguments after
    `--` go to preflight inside the container.
    \b
    Examples:
      preflight docker check --host-dir /srv/models -m lanes.yaml
      preflight docker sync --volume models -m lanes.yaml --token-file ~/.cache/huggingface/token
      preflight docker sync --volume models -m lanes.yaml -- --profile minimal --json
    """


def _command(name: str, summary: str):
    @docker_group.command(name, help=summary, context_settings={"ignore_unknown_options": True})
    @_options
    @guarded
    def command(host_dir: Path | None, volume: str | None, image: str, manifest: Path | None,
                token_file: Path | None, env: tuple[str, ...], network: str | None, args: tuple[str, ...]) -> int:
        spec = DockerRun(name, image=image, host_dir=host_dir, volume=volume, manifest=manifest,
                         token_file=token_file, env=_parse_env(env), network=network, args=args)
        return run(spec)

    return command


docker_check = _command("check", "Check the volume in the image; the volume is mounted read-only.")
docker_sync = _command("sync", "Sync the volume in the image: fetch what is missing or broken.")
