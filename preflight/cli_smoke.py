"""`preflight smoke`: the click command. The checks live in preflight.smoke, imported
only when the command runs, so `preflight --help` stays fast."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

DEFAULT_MANIFEST = "/etc/preflight/manifest.yaml"

EPILOG = """\b
Kinds and what is checked:
  vllm        GET /health, GET /v1/models lists MODEL, POST /v1/completions (max_tokens 1)
  llama.cpp   GET /health (503 "Loading model" while loading), GET /v1/models
              (or /props) names MODEL, POST /v1/completions (max_tokens 1)
  embeddings  GET /health, POST /v1/embeddings with one input
  http        GET URL exactly as given, expecting 2xx

\b
Examples:
  preflight smoke -e coder=vllm@http://vllm:8000#Qwen/Qwen2.5-Coder-7B-Instruct \\
                  -e reader=llama.cpp@http://llama:8080
  preflight smoke -m /etc/preflight/manifest.yaml --deadline 900 --json
  PREFLIGHT_SMOKE_ENDPOINT="coder=vllm@http://vllm:8000 tei=http@http://tei/health" \\
      preflight smoke --no-completion

\b
Manifest endpoints (top level; ${VAR} and ${VAR:-default} are expanded):
  endpoints:
    - {name: coder, kind: vllm, url: "http://vllm:${VLLM_PORT:-8000}", model: coder, lane: coder}
    - {name: reader, kind: llama.cpp, url: "http://llama:8080", api_key_env: LLAMA_API_KEY}

\b
An --endpoint with the name of a manifest endpoint replaces it. While a server loads
(connection refused, 502/503/504) it is polled until --deadline; one line per endpoint
every few seconds says what it waits for. An API key (vLLM --api-key) comes from the
environment: PREFLIGHT_SMOKE_API_KEY for every endpoint, or a manifest entry's api_key_env.

\b
Exit status: 0 every endpoint ready; 1 an endpoint answered but a check failed (wrong
model, failed completion); 2 usage or manifest error; 3 unreachable or not ready before
the deadline; 4 the endpoint refused the API key (401/403).
"""


def _opt(*decls: str, envvar: str | list[str], **kw: Any):
    return click.option(*decls, envvar=envvar, show_envvar=True, **kw)


@click.command("smoke", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_opt("--endpoint", "-e", "endpoint_specs", multiple=True, metavar="NAME=KIND@URL[#MODEL]", envvar="PREFLIGHT_SMOKE_ENDPOINT",
      help="An endpoint to check (repeatable; whitespace-separated in the variable). KIND: vllm, llama.cpp, embeddings, http.")
@_opt("--manifest", "-m", default=None, type=click.Path(dir_okay=False), envvar="PREFLIGHT_SMOKE_MANIFEST",
      help=f"Also check the manifest's `endpoints:` (default: $PREFLIGHT_MANIFEST, else {DEFAULT_MANIFEST}, "
           "when no --endpoint is given and the file exists).")
@_opt("--deadline", default=600.0, show_default=True, type=click.FloatRange(min=0), envvar="PREFLIGHT_SMOKE_DEADLINE",
      help="Seconds every endpoint has to become ready.")
@_opt("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.05), envvar="PREFLIGHT_SMOKE_INTERVAL",
      help="Seconds between polls of an endpoint that is not ready yet.")
@_opt("--request-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1), envvar="PREFLIGHT_SMOKE_REQUEST_TIMEOUT",
      help="Seconds one request may take (never past the deadline).")
@_opt("--completion/--no-completion", default=True, show_default=True, envvar="PREFLIGHT_SMOKE_COMPLETION",
      help="Ask for one token (one embedding); --no-completion checks health and the served model only.")
@_opt("--json", "as_json", is_flag=True, envvar=["PREFLIGHT_SMOKE_JSON", "PREFLIGHT_JSON"], help="Print the JSON report on stdout.")
@_opt("--report", default=None, type=click.Path(dir_okay=False), envvar="PREFLIGHT_SMOKE_REPORT", help="Also write the JSON report to this file.")
@_opt("--termination-log", default=None, envvar=["PREFLIGHT_SMOKE_TERMINATION_LOG", "PREFLIGHT_TERMINATION_LOG"],
      help="Write a short reason here on failure (default /dev/termination-log when it exists; '' disables).")
@_opt("--quiet", "-q", is_flag=True, envvar=["PREFLIGHT_SMOKE_QUIET", "PREFLIGHT_QUIET"], help="No progress lines or summary on stderr.")
@click.pass_context
def smoke(ctx: click.Context, **options: Any) -> None:
    """Check that inference endpoints are up and serve the expected models (post-deploy)."""
    ctx.exit(run_command(**options))


def run_command(
    endpoint_specs: tuple[str, ...],
    manifest: str | None,
    deadline: float,
    interval: float,
    request_timeout: float,
    completion: bool,
    as_json: bool,
    report: str | None,
    termination_log: str | None,
    quiet: bool,
) -> int:
    """Run the smoke checks and return the exit code; errors become messages, never tracebacks."""
    from .cli import _sigterm_to_interrupt, interrupt_reason
    from .errors import ExitCode, PreflightError
    from .report import write_termination_log

    _sigterm_to_interrupt()  # `docker stop` / pod deletion: end at once with 130, not after the grace period
    try:
        result = _smoke(endpoint_specs, manifest, deadline, interval, request_timeout, completion, quiet)
        if as_json:
            click.echo(result.to_json())
        if report:
            _write_report(report, result.to_json())
        if result.exit_code != ExitCode.READY:
            write_termination_log(termination_log, f"preflight smoke: {result.reason}")
        return int(result.exit_code)
    except PreflightError as exc:
        click.echo(f"preflight smoke: error: {exc}", err=True)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        write_termination_log(termination_log, f"preflight smoke: {exc}")
        return int(exc.exit_code)
    except KeyboardInterrupt as exc:
        reason = interrupt_reason(exc)
        click.echo(f"preflight smoke: {reason}", err=True)
        write_termination_log(termination_log, f"preflight smoke: {reason}")
        return int(ExitCode.INTERRUPTED)


def _smoke(specs: tuple[str, ...], manifest: str | None, deadline: float, interval: float, request_timeout: float,
           completion: bool, quiet: bool):
    from dataclasses import replace

    from .errors import UsageError
    from .smoke import API_KEY_ENV, SmokeReport, parse_endpoint_spec, read_smoke_manifest, render_human, run_smoke

    flagged = [parse_endpoint_spec(s) for s in specs]
    names = [e.name for e in flagged]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--endpoint name {twice[0]!r} is given twice")
    if manifest is None and not flagged:
        # the image sets PREFLIGHT_MANIFEST for sync; a smoke Job may mount no manifest at all
        candidate = os.environ.get("PREFLIGHT_MANIFEST") or DEFAULT_MANIFEST
        if os.path.exists(candidate):
            manifest = candidate
    listed, off = read_smoke_manifest(manifest) if manifest else ([], set())
    skipped = [e for e in listed if e.lane in off and e.name not in names]
    listed = [e for e in listed if e not in skipped]
    for e in skipped:
        if not quiet:
            click.echo(f"skip {e.name}: lane {e.lane} is disabled (enabled: false), so its endpoint is not checked", err=True)
    if skipped and not listed and not flagged:
        if not quiet:
            click.echo("preflight smoke: ready (every listed endpoint belongs to a disabled lane)", err=True)
        return SmokeReport([], skipped=[e.name for e in skipped])
    by_name = {e.name: e for e in flagged}
    endpoints = [by_name.pop(e.name, e) for e in listed] + [e for e in flagged if e.name in by_name]
    key = os.environ.get(API_KEY_ENV)
    if key:
        endpoints = [e if e.api_key else replace(e, api_key=key) for e in endpoints]
    if not endpoints and manifest:
        raise UsageError(f"no endpoints to check: {manifest} has no `endpoints:` list and no --endpoint was given")

    def log(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    result = run_smoke(endpoints, deadline_s=deadline, interval_s=interval, request_timeout_s=request_timeout,
                       completion=completion, log=log)
    result.skipped = [e.name for e in skipped]
    if not quiet:
        render_human(result, sys.stderr)
    return result


def _write_report(path: str, text: str) -> None:
    from pathlib import Path

    from .errors import UsageError
    from .volume import write_file_atomic

    try:
        from .redact import redact

        write_file_atomic(Path(path), redact(text).encode() + b"\n", fsync=False)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {path}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    smoke.main(prog_name="preflight smoke")
