"""`preflight sync` and `preflight lock` (the commands that may use the network)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .cli import common_volume_options, guarded, opt
from .errors import ExitCode


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _readable(token_file: str) -> None:
    """An absent token file is an optional secret that was not mounted (Kubernetes
    `optional: true`): no token, said once. One that is there but cannot be read is a
    deployment mistake (owner, mode, fsGroup): `read_token` says so at once, whatever
    the lanes need."""
    from .sources.hf import read_token

    from .redact import register

    if not os.path.lexists(token_file):
        click.echo(f"note: token file {token_file} does not exist; continuing without a token", err=True)
        return
    try:
        with open(token_file, "rb") as f:
            register(f.read(4096))  # masked from here on, whatever read_token makes of it
    except OSError:
        pass
    register(read_token(token_file))


def _export(var: str):
    """An option whose value the OCI source reads from the environment (PREFLIGHT_*)."""

    def callback(_ctx, _param, value):
        if value:
            os.environ[var] = ",".join(value) if isinstance(value, tuple) else str(value)
        return value

    return callback


def registry_options(fn):
    decorators = [
        opt("--registry-auth", type=click.Path(dir_okay=False), default=None, expose_value=False, callback=_export("PREFLIGHT_REGISTRY_AUTH"),
            help="A Docker config.json with registry credentials (e.g. a mounted kubernetes.io/dockerconfigjson secret). "
                 "Else DOCKER_CONFIG/config.json, ~/.docker/config.json."),
        opt("--insecure-registry", multiple=True, expose_value=False, callback=_export("PREFLIGHT_INSECURE_REGISTRY"),
            help="HOST[:PORT] of a registry spoken to over plain HTTP on a trusted network (repeatable; env: comma-separated)."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def network_options(fn):
    decorators = [
        opt("--token-file", default=None, type=click.Path(dir_okay=False), help="Read the Hub token from this file (a mounted secret). Else HF_TOKEN, then HF_TOKEN_PATH."),
        opt("--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for a connection."),
        opt("--stall-timeout", type=float, default=60.0, show_default=True, help="Seconds without a byte before an attempt fails."),
        opt("--retries", type=click.IntRange(0, 20), default=3, show_default=True, help="Retries per file, with backoff."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return registry_options(fn)


@click.command()
@common_volume_options
@network_options
@opt("--offline", is_flag=True, help="Fetch nothing; behave as check (also HF_HUB_OFFLINE=1).")
@opt("--locked", is_flag=True, help="Use only the lock file; fail if a lane is not locked or its source changed.")
@opt("--workers", type=click.IntRange(1, 64), default=16, show_default=True, help="Files fetched at once (their connections share --connections).")
@opt("--connections", type=click.IntRange(1, 256), default=16, show_default=True,
     help="Connections open at once in the run: a large file is fetched as ranges over several, within this budget.")
@opt("--deadline", type=float, default=None, help="Give up (exit 3) when the whole run takes longer than this many seconds.")
@opt("--lease-wait", type=float, default=1800.0, show_default=True, help="Seconds to wait for another writer before exit 6.")
@opt("--lease-stale", type=float, default=60.0, show_default=True, help="A lease whose heartbeat stopped this long ago is taken over.")
@opt("--env-file", default=None, type=click.Path(dir_okay=False),
     help="Once ready, write each lane's `env: NAME` path here as NAME='path' lines (what `preflight env` prints), for the "
          "server's command to source; not written when not ready.")
@opt("--no-fit", is_flag=True, help="Download lanes even when fit says the engine would refuse them on this node (fit is still judged and reported).")
@guarded(report="sync")
def sync(offline, locked, token_file, connect_timeout, stall_timeout, retries, workers, connections, deadline, lease_wait, lease_stale,
         env_file=None, no_fit=False, **kw) -> int:
    """Check, fetch what is missing or broken, verify, publish, report.

    Exits 0 only when every required lane is ready. New bytes are staged under
    <models-dir>/.preflight/, verified (size, sha256 or git blob sha1, format)
    and renamed into place; a valid file is never deleted first.

    \b
    Examples:
      preflight sync -m lanes.yaml -d /models
      preflight sync -m lanes.yaml --profile minimal --token-file /run/secrets/hf-token
      HF_ENDPOINT=https://mirror.example preflight sync -m lanes.yaml --locked
      preflight sync -m lanes.yaml --env-file /run/preflight/models.env   # the server sources it
    """
    from .session import Session
    from .sources.http import Timeouts
    from .sync import Options, run_sync

    offline = offline or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    if token_file and not offline:
        _readable(token_file)
    session = Session.open(command="sync", **kw)
    opts = Options(
        offline=offline, locked=locked, token_file=token_file, timeouts=Timeouts(connect_timeout, stall_timeout),
        retries=retries, workers=workers, connections=connections, deadline=deadline, lease_wait=lease_wait, stale_after=lease_stale,
        no_fit=no_fit,
    )
    report = run_sync(session, opts)
    if env_file:
        _stale_env_file(env_file)  # a failed run leaves no paths behind for the server to start on
    code = session.finish(report, ready_file=True)
    if env_file and code == 0:
        from .cli_env import lane_env, render_env
        from .volume import write_file_atomic

        write_file_atomic(Path(env_file), render_env(lane_env(session.manifest, kw.get("models_dir"), kw.get("profile"),
                                                              chosen=list(session.lanes))).encode())  # the variants chosen here
    return code


def _stale_env_file(path: str) -> None:
    from .volume import write_file_atomic

    if Path(path).exists():
        write_file_atomic(Path(path), b"# not ready: see the init container's report\n")


@click.command()
@opt("--manifest", "-m", default="/etc/preflight/manifest.yaml", show_default=True, type=click.Path(dir_okay=False), help="Manifest (YAML or JSON).")
@opt("--output", "-o", default=None, type=click.Path(dir_okay=False), help="Where to write (default: the manifest's `lock:` or <manifest>.lock.json; '-' for stdout).")
@opt("--format", "fmt", type=click.Choice(["json", "sha256sum"]), default="json", show_default=True, help="json: the lock file; sha256sum: a `sha256sum -c` file of every file with a sha256.")
@click.option("--lane", "-l", "lanes", multiple=True, envvar="PREFLIGHT_LANES", show_envvar=True, help="Lock only these lanes (others are kept as they are).")
@opt("--token-file", default=None, type=click.Path(dir_okay=False), help="Read the Hub token from this file.")
@opt("--json", "as_json", is_flag=True, help="Print the JSON report on stdout (not with --output -).")
@opt("--report", default=None, type=click.Path(dir_okay=False), help="Also write the JSON report to this file.")
@opt("--termination-log", default=None, help="Write a short reason here on failure (default /dev/termination-log when it exists; '' disables).")
@registry_options
@guarded(report="lock")
def lock(manifest, output, fmt, lanes, token_file, as_json=False, report=None, termination_log=None) -> int:
    """Resolve every lane's source to a commit and each file's size and digest.

    \b
    Examples:
      preflight lock -m lanes.yaml                     # writes lanes.lock.json
      preflight lock -m lanes.yaml --format sha256sum -o - --lane coder
      preflight lock -m lanes.yaml --report lock-report.json
    """
    from .errors import UsageError
    from .locking import make_lock
    from .report import Outputs, emit

    if as_json and output == "-":
        from click.core import ParameterSource

        if click.get_current_context().get_parameter_source("as_json") == ParameterSource.ENVIRONMENT:
            as_json = False  # PREFLIGHT_JSON set for sync/check: stdout carries the lock here
        else:
            raise UsageError("--json and --output - would both write to stdout", hint="write the lock to a file (-o FILE), or leave out --json")
    if token_file:
        _readable(token_file)
    text, path = make_lock(manifest, output, fmt, lanes, token_file)
    if path is None:
        sys.stdout.write(text)
    else:
        click.echo(f"preflight lock: wrote {path}", err=True)
    emit(_lock_report(manifest, lanes, text if fmt == "json" else None, path), Outputs(as_json, report, termination_log), human=False)
    return ExitCode.READY


def _lock_report(manifest: str, lanes: tuple[str, ...], lock_text: str | None, path):
    """What `lock` pinned, as a report: one ready lane per locked lane, its commit as revision."""
    import json

    from .manifest import split_lanes
    from .manifest import load_manifest
    from .report import LaneResult, Report

    m = load_manifest(manifest)
    names = split_lanes(lanes)
    locked = json.loads(lock_text)["lanes"] if lock_text else {}
    report = Report("lock", None, extra={"output": str(path) if path is not None else "-"})
    for lane in m.select(None, names) if names else m.lanes:
        entry = locked.get(lane.name) or {}
        report.lanes.append(LaneResult(lane.name, lane.kind, lane.path, lane.required, files=len(entry.get("files") or {}),
                                       source=lane.source.display() if lane.source else None,
                                       revision=entry.get("commit") or (lane.source.revision if lane.source else None)))
    return report


def _apply_kserve_environment(uri: str) -> None:
    """KServe's storage-config entry (STORAGE_CONFIG, STORAGE_OVERRIDE_CONFIG) becomes the
    variables KServe's own initializer sets from it (its secret masked from then on), and
    its OCI fetch settings become preflight's registry settings."""
    from .kserve import oci_settings, storage_config
    from .redact import register

    for var, value in {**storage_config(os.environ), **oci_settings(os.environ, uri)}.items():
        os.environ[var] = value
        if var == "AWS_SECRET_ACCESS_KEY":
            register(value)


def _patterns(given: tuple[str, ...], kserve_var: str) -> tuple[str, ...]:
    from .kserve import patterns

    out: list[str] = []
    for item in given:
        out.extend(p.strip() for p in item.split(",") if p.strip())
    return tuple(out) or patterns(os.environ, kserve_var)


@click.command()
@click.argument("src")
@click.argument("dest", type=click.Path(file_okay=False))
@opt("--kind", type=click.Choice(["hf-dir", "adapter", "gguf", "file"]), default=None,
     help="What SRC holds (default: from its name: an archive or a folder → hf-dir, *.gguf → gguf, another file → file).")
@opt("--sha256", default=None, help="The sha256 of the file or archive SRC names (also a #sha256=<hex> fragment on SRC).")
@click.option("--include", multiple=True, envvar="PREFLIGHT_INCLUDE", show_envvar=True,
              help="Only files matching these globs (repeatable or comma-separated; else STORAGE_ALLOW_PATTERNS).")
@click.option("--exclude", multiple=True, envvar="PREFLIGHT_EXCLUDE", show_envvar=True,
              help="Leave out files matching these globs (repeatable or comma-separated; else STORAGE_IGNORE_PATTERNS).")
@opt("--allow-pickle", type=click.Choice(["false", "true", "torchscript"]), default="false", show_default=True,
     help="Pickles: refused (false), state dicts allowed (true), TorchScript archives too.")
@opt("--state-dir", default=None, type=click.Path(file_okay=False), help="Where receipts live (default <DEST>/.preflight).")
@opt("--verify", type=click.Choice(["auto", "full"]), default="auto", show_default=True, help="auto trusts receipts whose stat matches; full re-hashes.")
@opt("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@opt("--report", default=None, type=click.Path(dir_okay=False), help="Also write the JSON report to this file.")
@opt("--termination-log", default=None, help="Write a short reason here on failure (default /dev/termination-log when it exists; '' disables).")
@opt("--quiet", "-q", is_flag=True, help="No human summary on stderr.")
@network_options
@opt("--offline", is_flag=True, help="Fetch nothing; check DEST against what was fetched before.")
@opt("--workers", type=click.IntRange(1, 64), default=16, show_default=True, help="Files fetched at once.")
@opt("--connections", type=click.IntRange(1, 256), default=16, show_default=True, help="Connections open at once in the run.")
@opt("--deadline", type=float, default=None, help="Give up (exit 3) when the whole run takes longer than this many seconds.")
@opt("--lease-wait", type=float, default=1800.0, show_default=True, help="Seconds to wait for another writer before exit 6.")
@opt("--lease-stale", type=float, default=60.0, show_default=True, help="A lease whose heartbeat stopped this long ago is taken over.")
@guarded(report="fetch")
def fetch(src, dest, kind, sha256, include, exclude, allow_pickle, offline, token_file, connect_timeout, stall_timeout, retries,
          workers, connections, deadline, lease_wait, lease_stale, **kw) -> int:
    """Fetch one source into a folder, with everything sync does; no manifest.

    The storage-initializer contract of KServe and Seldon: `preflight SRC DEST`
    (a first argument that is a URI means fetch). A folder source, or an archive
    (.tar, .tar.gz, .tgz, .tar.zst, .zip), fills DEST itself; a single file lands
    as DEST/<its name>. Verified before it is published, resumable, with the lease,
    the report, the termination log and the exit codes of sync.

    \b
    Examples:
      preflight fetch hf://Qwen/Qwen2.5-0.5B-Instruct /mnt/models
      preflight s3://models/llama/ /mnt/models
      preflight 'https://host/model.tar.gz#sha256=<64 hex>' /mnt/models
      preflight fetch oci://registry:5000/models/coder:v1 /mnt/models
    """
    from .fetchlane import build
    from .kserve import storage_uri
    from .session import Session
    from .sources.http import Timeouts
    from .sync import Options, run_sync

    uri, pinned = storage_uri(src)
    _apply_kserve_environment(uri)
    if sha256 and pinned and sha256.lower() != pinned:
        from .errors import UsageError

        raise UsageError(f"--sha256 {sha256} and the URI's #sha256={pinned} disagree")
    digest = (sha256 or pinned or "").lower().removeprefix("sha256:") or None
    if digest is not None and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
        from .errors import UsageError

        raise UsageError(f"--sha256 {sha256!r} is not 64 hex digits")
    pickle = {"false": False, "true": True, "torchscript": "torchscript"}[allow_pickle]
    manifest = build(uri, dest, kind=kind, sha256=digest, include=_patterns(include, "STORAGE_ALLOW_PATTERNS"),
                     exclude=_patterns(exclude, "STORAGE_IGNORE_PATTERNS"), allow_pickle=pickle)
    offline = offline or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    if token_file and not offline:
        _readable(token_file)
    session = Session.open(command="fetch", manifest=manifest, models_dir=dest, profile=None, lanes=(), lock=None, **kw)
    opts = Options(
        offline=offline, locked=False, token_file=token_file, timeouts=Timeouts(connect_timeout, stall_timeout),
        retries=retries, workers=workers, connections=connections, deadline=deadline, lease_wait=lease_wait, stale_after=lease_stale,
    )
    report = run_sync(session, opts)
    return session.finish(report, ready_file=True)
