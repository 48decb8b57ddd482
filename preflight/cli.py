"""click commands → exit codes; nothing else."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import click

from .errors import ExitCode, PreflightError, UsageError

DEFAULT_MANIFEST = "/etc/preflight/manifest.yaml"
ENV = "PREFLIGHT_"


def _env(name: str) -> str:
    return ENV + name.upper().replace("-", "_")


def opt(*decls: str, **kw):
    """An option that also reads PREFLIGHT_<NAME> and says so in --help."""
    name = next(d for d in decls if d.startswith("--")).lstrip("-")
    kw.setdefault("envvar", _env(name))
    kw.setdefault("show_envvar", True)
    return click.option(*decls, **kw)


REPORTING = ("check", "sync", "lock", "fetch")  # every exit of these leaves a JSON report (--json, --report)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # `preflight SRC DEST`: a first argument that is a URI means fetch
_TRUE = ("1", "true", "t", "yes", "y", "on")  # click's spellings of a true flag


def leave(command: str | None, out, code: int, reason: str, hint: str | None = None, *,
          models_dir: str | None = None, started: float | None = None, errors: list[dict] | None = None) -> int:
    """Every early exit (an error, an interrupt, a usage error, a bug) of a reporting command
    leaves the report so far, with the exit code and the reason, on --json and --report;
    every command's reason reaches the termination log. Returns `code`."""
    from .report import Report, current, emit, write_termination_log

    report = current()
    if command not in REPORTING or (report is not None and report.emitted):
        write_termination_log(out.termination_log, reason)
        return int(code)
    if report is None or report.command != command:
        report = Report(command, models_dir)
    report.fail(int(code), reason, hint, errors)
    if started is not None:
        report.elapsed_s = time.monotonic() - started
    emit(report, out, human=False)  # the caller said why on stderr
    return int(code)


def _say(exc: PreflightError) -> None:
    click.echo(f"preflight: error: {exc}", err=True)
    if exc.hint:
        click.echo(f"  hint: {exc.hint}", err=True)


def _sigterm_to_interrupt() -> None:
    """Kubernetes stops a pod with SIGTERM: unwind (release the lease, keep partial bytes), exit 130."""

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (in-process tests)
        pass


def interrupt_reason(exc: KeyboardInterrupt) -> str:
    """'interrupted (SIGTERM)' when our handler raised it, else a Ctrl-C."""
    return f"interrupted ({exc.args[0] if exc.args else 'SIGINT'})"


def guarded(fn=None, *, report: str | None = None):
    """The one place a command's exceptions become exit codes (never a traceback unless asked).

    `@guarded(report="check")` marks a command whose every exit leaves a JSON report."""
    if fn is None:
        return functools.partial(guarded, report=report)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .report import Outputs, track

        _sigterm_to_interrupt()
        out = Outputs.from_options(kwargs)
        track(None)
        started = time.monotonic()

        def end(code: int, reason: str, hint: str | None = None, errors: list[dict] | None = None) -> int:
            return leave(report, out, code, reason, hint, models_dir=kwargs.get("models_dir") or kwargs.get("dest"), started=started, errors=errors)

        try:
            code = fn(*args, **kwargs)
        except PreflightError as exc:
            _say(exc)
            from .errors import ManifestError

            code = end(exc.exit_code, str(exc), exc.hint, exc.to_list() if isinstance(exc, ManifestError) else None)
        except KeyboardInterrupt as exc:
            reason = f"{interrupt_reason(exc)}; partial downloads are kept and a rerun resumes them"
            click.echo(f"preflight: {reason}", err=True)
            code = end(ExitCode.INTERRUPTED, reason)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # a bug: say so plainly, keep the contract's code
            reason = f"internal error: {type(exc).__name__}: {exc}"
            if os.environ.get("PREFLIGHT_TRACEBACK"):
                end(ExitCode.NOT_READY, reason)
                raise
            click.echo(f"preflight: {reason} (set PREFLIGHT_TRACEBACK=1 for details)", err=True)
            code = end(ExitCode.NOT_READY, reason)
        sys.exit(int(code or 0))

    return wrapper


def _arg(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` / `--name=VALUE` in argv (the last one wins, as with click)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == name and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def _termination_log_arg(argv: list[str]) -> str | None:
    """--termination-log from the command line or the environment, read without click (parsing failed)."""
    found = _arg(argv, "--termination-log")
    if found is not None:
        return found
    for var in ("PREFLIGHT_TERMINATION_LOG", "PREFLIGHT_SMOKE_TERMINATION_LOG"):
        if var in os.environ:
            return os.environ[var]
    return None


def outputs_from_argv(argv: list[str]):
    """Where the report goes, read without click (parsing failed): argv first, then PREFLIGHT_*."""
    from .report import Outputs

    words = argv[: argv.index("--")] if "--" in argv else argv
    as_json = "--json" in words or os.environ.get("PREFLIGHT_JSON", "").strip().lower() in _TRUE
    quiet = any(w in ("--quiet", "-q") for w in words) or os.environ.get("PREFLIGHT_QUIET", "").strip().lower() in _TRUE
    report = _arg(argv, "--report")
    if report is None:
        report = os.environ.get("PREFLIGHT_REPORT") or None
    return Outputs(as_json, report, _termination_log_arg(argv), quiet)


class LazyGroup(click.Group):
    """Subcommands whose modules import heavy things load only when used."""

    lazy = {
        "sync": ("preflight.cli_sync", "sync"),
        "fetch": ("preflight.cli_sync", "fetch"),
        "init": ("preflight.cli_init", "init_command"),
        "lock": ("preflight.cli_sync", "lock"),
        "push": ("preflight.cli_push", "push"),
        "status": ("preflight.cli_volume", "status"),
        "prune": ("preflight.cli_volume", "prune"),
        "smoke": ("preflight.cli_smoke", "smoke"),
        "docker": ("preflight.docker", "docker_group"),
        "env": ("preflight.cli_env", "env_command"),
        "perms": ("preflight.cli_perms", "perms"),
    }

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """As click's, with every secret masked on stdout and stderr, and a usage error found
        while parsing (unknown option, a token file that is a folder) reported like every
        other failure: the reason on the termination log, the report on --json/--report."""
        from .redact import redacting_streams, register_environment, reset

        reset()
        register_environment()
        if not standalone_mode:
            with redacting_streams():
                return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        if argv and _URI.match(argv[0]):
            argv = ["fetch", *argv]  # KServe and Seldon run their storage initializer with [SRC, DEST]
        command = argv[0] if argv and argv[0] in REPORTING else None
        try:
            with redacting_streams():
                from .report import track

                track(None)
                try:
                    rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
                except click.ClickException as exc:
                    exc.show()
                    sys.exit(leave(command, outputs_from_argv(argv), exc.exit_code, f"usage error: {exc.format_message()}"))
                except PreflightError as exc:  # raised while click converted an option
                    _say(exc)
                    sys.exit(leave(command, outputs_from_argv(argv), exc.exit_code, str(exc), exc.hint))
                except click.exceptions.Abort:
                    click.echo("preflight: interrupted", err=True)
                    sys.exit(leave(command, outputs_from_argv(argv), ExitCode.INTERRUPTED, "interrupted"))
                except Exception as exc:  # outside a command (loading it), or PREFLIGHT_TRACEBACK asked for it
                    reason = f"internal error: {type(exc).__name__}: {exc}"
                    if os.environ.get("PREFLIGHT_TRACEBACK"):
                        import traceback

                        traceback.print_exc()  # through the masking stream
                    else:
                        click.echo(f"preflight: {reason} (set PREFLIGHT_TRACEBACK=1 for details)", err=True)
                    sys.exit(leave(command, outputs_from_argv(argv), ExitCode.NOT_READY, reason))
            sys.exit(rv if isinstance(rv, int) else 0)
        finally:
            if args is None:  # the process's own command line (not a caller's, such as a test runner's)
                _before_exit()

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                if name == "docker":
                    from .errors import MissingExtra

                    raise click.ClickException(str(MissingExtra("`preflight docker`", "docker", getattr(exc, "name", None))))
                raise
        return super().get_command(ctx, name)


def _before_exit() -> None:
    """The command is done and the process ends next: the objects made so far move to the
    collector's permanent generation, so the interpreter's last collections at exit do not
    walk them again (10 ms of a 90 ms warm re-check; they are freed with the process).
    Finalizers still run as each module is torn down."""
    import gc

    gc.freeze()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lane-preflight", prog_name="preflight")
def main() -> None:
    """Make a model volume provably ready before inference starts.

    \b
    Exit codes: 0 ready, 1 not ready, 2 usage or manifest error, 3 fetch failed,
    4 authentication, 5 disk space, 6 volume held by another writer, 130 interrupted.

    \b
    Examples:
      preflight check --manifest lanes.yaml --models-dir /models
      preflight sync --manifest lanes.yaml --profile minimal
      preflight inspect /models/gguf/model.Q4_K_M.gguf
    """


def common_volume_options(fn):
    decorators = [
        opt("--manifest", "-m", default=DEFAULT_MANIFEST, show_default=True, type=click.Path(dir_okay=False), help="Manifest (YAML or JSON)."),
        opt("--models-dir", "-d", default=None, help="Models folder; overrides the manifest's models_dir."),
        opt("--profile", "-p", default=None, help="Act on the lanes of this profile only."),
        click.option("--lane", "-l", "lanes", multiple=True, envvar="PREFLIGHT_LANES", show_envvar=True, help="Act on this lane only (repeatable; env: comma-separated)."),
        opt("--lock", default=None, type=click.Path(dir_okay=False), help="Lock file (default: the manifest's `lock:` or <manifest>.lock.json when present)."),
        opt("--state-dir", default=None, type=click.Path(file_okay=False), help="Where receipts live (default <models-dir>/.preflight)."),
        opt("--verify", type=click.Choice(["auto", "full"]), default="auto", show_default=True, help="auto trusts receipts whose stat matches; full re-hashes every file with a known digest."),
        opt("--json", "as_json", is_flag=True, help="Print the JSON report on stdout."),
        opt("--report", default=None, type=click.Path(dir_okay=False), help="Also write the JSON report to this file."),
        opt("--termination-log", default=None, help="Write a short reason here on failure (default /dev/termination-log when it exists; '' disables)."),
        opt("--quiet", "-q", is_flag=True, help="No human summary on stderr."),
        opt("--accelerator", default=None, help="This node's accelerator for lanes with `serve:` (e.g. 2x80GiB,cc=9.0 or cpu,memory=16GiB); "
                                                 "wins over the manifest's `accelerator:` and over detection (NVML, sysfs, cgroup)."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


@main.command()
@common_volume_options
@guarded(report="check")
def check(**kw) -> int:
    """Validate the volume against the manifest (and lock). Never uses the network.

    \b
    Examples:
      preflight check -m lanes.yaml -d /models
      preflight check -m lanes.yaml --profile minimal --json
      preflight check -m lanes.yaml --verify full      # re-hash, ignore receipts
    """
    from .session import Session

    session = Session.open(command="check", **kw)
    return session.finish(session.check())


SCHEMAS = ("manifest", "lock", "report")


@main.command()
@click.argument("name", type=click.Choice(SCHEMAS))
def schema(name: str) -> None:
    """Print the JSON Schema of the manifest, the lock file or the JSON report.

    Editors complete and check a manifest against it (the YAML language server reads a
    first-line comment `# yaml-language-server: $schema=lanes.schema.json`).

    \b
    Examples:
      preflight schema manifest > lanes.schema.json
      preflight schema report | jq .properties.lanes
    """
    from importlib.resources import files

    click.echo(files("preflight").joinpath("schemas", f"{name}.schema.json").read_text(), nl=False)


@main.command()
@click.argument("path", type=click.Path(exists=False))
@opt("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@opt("--allow-pickle", is_flag=True, help="Scan pickle weights instead of refusing them.")
@opt("--serve", default=None, help="Judge fit as ENGINE[:ARGS] would serve it (vllm:'-tp 2 --max-model-len 32768', llama.cpp:'-c 8192').")
@opt("--accelerator", default=None, help="The node to judge fit on (e.g. 1x80GiB,cc=9.0); default: this machine.")
@guarded
def inspect(path: str, as_json: bool, allow_pickle: bool, serve: str | None = None, accelerator: str | None = None,
            termination_log: str | None = None) -> int:
    """Say what a file or folder is and every problem found. Never uses the network.

    \b
    Works on a .safetensors file, a sharded folder, a .gguf file (split too),
    an adapter folder or a Hugging Face model folder.
    \b
    Examples:
      preflight inspect /models/vllm/coder/bf16
      preflight inspect model-00001-of-00004.gguf --json
    """
    from .inspect import inspect_path, render_inspect

    p = Path(path)
    if not os.path.lexists(p):
        raise UsageError(f"{path}: no such file or folder")
    result = inspect_path(p, allow_pickle=allow_pickle)
    if serve:
        from .inspect import inspect_fit

        result["fit"] = inspect_fit(p, result, serve, accelerator)
    if as_json:
        from .report import SCHEMA_VERSION

        click.echo(json.dumps({"schema_version": SCHEMA_VERSION, **result}, indent=2))
    else:
        render_inspect(result, sys.stdout)
    return ExitCode.READY if not any(pr.get("severity", "error") == "error" for pr in result["problems"]) else ExitCode.NOT_READY


if __name__ == "__main__":
    main()
